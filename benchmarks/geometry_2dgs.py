"""Geometry of 2D surfels against 3D Gaussians on the procedural scene, whose true surfaces are known.

Both methods train on the same capture with the same schedule (``scenezip.cli.train_and_write``, so the
``.scz`` file is written and decoded as a user gets it); the *decoded* models are then scored on the
test views against the scene's exact ground truth:

* depth error: mean |rendered z - true z| (normalized scene units, the farthest camera 1 from the
  centre) and its mean relative value, over test pixels fully covered by the scene (alpha 1);
* normal error: mean angle in degrees between rendered and true world-space normals on the same pixels
  (surfels: their own composited normals; 3D Gaussians: the usual shortest-axis stand-in);
* Chamfer distance between the TSDF mesh fused from the training views' depth (open3d,
  ``splatting.geometry.tsdf_mesh``) and the true surface (``scenes.procedural.sample_surface``),
  both sampled with 20k points, in normalized units.

Depth is what :func:`scenezip.splatting.geometry.render_depth_normals` renders by default, expected
depth for every method (the same estimator; surfels contribute their ray-plane intersection depth, the
torch rasterizer's default since the centre depth of gsplat's kernels was found to make a staircase).
The surfels' median depth (the 2DGS paper's choice for object scenes) is reported beside it: its depth
error and the Chamfer distance of a mesh fused from it. Normals are compared signed: rendered normals
face the camera, as the scene's true normals do. Writes ``--out`` (``benchmarks/results/geometry_2dgs.json``
by default; ``{"protocol", "rows"}``, DESIGN.md) and the markdown beside it.

    OMP_NUM_THREADS=1 python3 benchmarks/geometry_2dgs.py --size 48 --steps 1000 --out benchmarks/results/geometry_2dgs_1000.json

About 10 minutes a method on one CPU thread; ``--methods`` runs a subset, keeping the other rows of the
same protocol, so methods can run in parallel processes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scenezip.cli import train_and_write
from scenezip.scene import load_scene
from scenezip.scenes.loader import load_dataset
from scenezip.scenes.procedural import load_scene_json, read_ground_truth, sample_surface, write_procedural_scene
from scenezip.splatting.config import DensifyConfig, SurfelTrainConfig, TrainConfig
from scenezip.splatting.geometry import (chamfer_distance, depth_error, geometry_errors, render_depth_normals,
                                         sample_mesh_points, tsdf_mesh)
from scenezip.splatting.surfels import SurfelLossConfig

RESULTS = Path(__file__).resolve().parent / "results"
N_SURFACE = 20_000


def surface_points(data: Path, ds: Any, n: int = N_SURFACE) -> np.ndarray:
    """``[n, 3]`` samples of the true surface in the dataset's normalized frame."""
    pts, _ = sample_surface(load_scene_json(data), n, seed=1)
    return pts @ ds.normalization[:3, :3].T + ds.normalization[:3, 3]


def score(model: Any, ds: Any, data: Path, voxel: float) -> dict[str, float]:
    """Depth / normal errors on the test views and the TSDF mesh's Chamfer distance to the true surface."""
    test = ds.indices("test")
    depth, normals, mask = read_ground_truth(ds, test)
    out = geometry_errors(model, ds.cameras[test], depth, normals, mask, backend="torch")  # expected depth
    v, t = tsdf_mesh(model, ds.cameras[ds.indices("train")], voxel_size=voxel, backend="torch")
    out["chamfer"] = chamfer_distance(sample_mesh_points(v, t, N_SURFACE), surface_points(data, ds)) if len(t) else None
    out["mesh_triangles"] = int(len(t))
    out["depth_rel_median"] = out["chamfer_median"] = None
    if getattr(model, "is_surfel", False):  # the surfels' median depth, for reference
        r = render_depth_normals(model, ds.cameras[test], depth="median", backend="torch")
        out["depth_rel_median"] = depth_error(r["depth"], depth, mask)["rel"]
        v, t = tsdf_mesh(model, ds.cameras[ds.indices("train")], voxel_size=voxel, depth="median", backend="torch")
        out["chamfer_median"] = chamfer_distance(sample_mesh_points(v, t, N_SURFACE), surface_points(data, ds)) if len(t) else None
    return out


def configs(args: argparse.Namespace, data: Path, work: Path) -> dict[str, Any]:
    """The 3dgs and 2dgs configs of one run: one schedule, the surfel losses at their defaults unless set."""
    common = dict(data=data, steps=args.steps, random_points=args.random_points, seed=args.seed, progress=False,
                  checkpoint_every=0, backend="torch", device="cpu",
                  densify=DensifyConfig(max_gaussians=args.max_gaussians))  # fmt: skip
    surfel = SurfelLossConfig()
    if args.dist_lambda is not None:
        surfel = dataclasses.replace(surfel, dist_lambda=args.dist_lambda)
    extra = {} if args.surfel_lr_quats is None else {"lr_quats": args.surfel_lr_quats}
    from scenezip.splatting.c2dgs import C2DGSConfig

    return {
        "3dgs": TrainConfig(out=work / "3dgs", **common),
        "2dgs": SurfelTrainConfig(out=work / "2dgs", surfel=surfel, **common, **extra),
        "c2dgs": C2DGSConfig(out=work / "c2dgs", surfel=surfel, **common, **extra),
    }


def write_markdown(path: Path, protocol: dict, rows: list[dict]) -> None:
    """The results table of ``rows`` under ``protocol`` as markdown."""
    lines = [
        "# geometry_2dgs: 2D surfels vs 3D Gaussians against the procedural scene's true geometry", "",
        f"`{protocol['command']}` on {protocol['date']} (cpu, 1 thread); {protocol['resolution'][0]}x{protocol['resolution'][0]} px, "
        f"{protocol['views']['train']} training / {protocol['views']['test']} test views, {protocol['steps']} steps, the same schedule for every method. "
        "Depth and normal errors on the test views' fully covered pixels; Chamfer distance of the TSDF mesh "
        "(training views) to the true surface. Lengths in normalized units (farthest camera at 1).", "",
        "Depth is the expected depth for every method; the median columns are the surfels' median depth "
        "(its relative error, and the Chamfer distance of a mesh fused from it).", "",
        "| method | PSNR | SSIM | Gaussians | size (bytes) | depth abs | depth rel | normal (deg) | Chamfer "
        "| median depth rel | median Chamfer | train s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip

    def f4(x: float | None) -> str:
        return f"{x:.4f}" if x is not None else "n/a"

    for r in rows:
        lines.append(f"| {r['method']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['n_primitives']:,} | {r['size_bytes']:,} | "
                     f"{r['depth_abs']:.4f} | {r['depth_rel']:.4f} | {r['normal_deg']:.1f} | {f4(r['chamfer'])} | "
                     f"{f4(r.get('depth_rel_median'))} | {f4(r.get('chamfer_median'))} | {r['train_s']:.1f} |")  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=48, help="image width and height of the procedural views")
    ap.add_argument("--train", type=int, default=12, help="training views")
    ap.add_argument("--test", type=int, default=3, help="test views")
    ap.add_argument("--steps", type=int, default=1000, help="training steps of every method")
    ap.add_argument("--random-points", type=int, default=2000, help="initial random points in the scene bounds")
    ap.add_argument("--max-gaussians", type=int, default=6000, help="densification cap")
    ap.add_argument("--dist-lambda", type=float, default=None, help="2dgs distortion weight (default: the config's)")
    ap.add_argument("--surfel-lr-quats", type=float, default=None, help="2dgs rotation learning rate (default: the config's)")
    ap.add_argument("--voxel", type=float, default=0.004, help="TSDF voxel size, normalized units")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=["3dgs", "2dgs", "c2dgs"], choices=["3dgs", "2dgs", "c2dgs"],
                    help="methods to run; rows of other methods already in --out with the same protocol are kept")
    ap.add_argument("--out", type=Path, default=RESULTS / "geometry_2dgs.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    rows = []
    with tempfile.TemporaryDirectory(prefix="geometry_2dgs-") as tmp:
        data = write_procedural_scene(Path(tmp) / "data", n_train=args.train, n_val=1, n_test=args.test,
                                      width=args.size, height=args.size, seed=args.seed)  # fmt: skip
        ds = load_dataset(data, n_random_points=args.random_points, seed=args.seed, background=(1.0, 1.0, 1.0))
        for method, cfg in configs(args, data, Path(tmp)).items():
            if method not in args.methods:
                continue
            t0 = time.perf_counter()
            result, scz, nbytes = train_and_write(cfg, ds)
            scene = load_scene(scz)
            geo = score(scene.model, ds, data, args.voxel)
            m = result.metrics
            rows.append({
                "method": method, "scene": f"procedural(seed={args.seed})", "resolution": [args.size, args.size],
                "steps": args.steps, "size_bytes": int(nbytes), "psnr": m["psnr"], "ssim": m["ssim"], "lpips": None,
                "n_primitives": int(scene.n_primitives), "train_s": result.train_s, "device": "cpu",
                **geo, "total_s": time.perf_counter() - t0,
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)

    protocol = {
        "command": "OMP_NUM_THREADS=1 python3 benchmarks/geometry_2dgs.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": date.today().isoformat(), "device": "cpu", "threads": 1, "python": platform.python_version(),
        "torch": torch.__version__, "scene": "scenezip.scenes.procedural.make_scene(seed), Blender layout",
        "resolution": [args.size, args.size], "views": {"train": args.train, "val": 1, "test": args.test},
        "steps": args.steps, "random_points": args.random_points, "max_gaussians": args.max_gaussians,
        "split": "test views of the capture (depth, normals); training views fused for the mesh",
        "depth": "expected z-depth for every method (surfels: ray-plane intersection depth per surfel), normalized "
                 "units (farthest camera 1 from the centre); surfels' median depth in the *_median fields",
        "normals": "signed angle; rendered normals (2dgs: surfel normals; 3dgs: shortest axis) and true ones face the camera",
        "mask": "test pixels with alpha 255 and a true depth",
        "chamfer": f"TSDF mesh (voxel {args.voxel}) vs true surface, {N_SURFACE} samples each, normalized units",
        "surfel_losses": dataclasses.asdict(configs(args, Path("."), Path("."))["2dgs"].surfel),
        "lpips": "not computed (backbone weights unavailable offline)",
        "decoded": "figures are of the models decoded from the written .scz files",
    }  # fmt: skip
    if args.out.is_file():  # keep the other methods' rows of the same protocol (runs of one method at a time)
        old = json.loads(args.out.read_text())
        same = {k: v for k, v in old.get("protocol", {}).items() if k not in ("command", "date")} == {
            k: v for k, v in protocol.items() if k not in ("command", "date")}  # fmt: skip
        if same:
            mine = {r["method"] for r in rows}
            rows = [r for r in old.get("rows", []) if r["method"] not in mine] + rows
            rows.sort(key=lambda r: ["3dgs", "2dgs", "c2dgs"].index(r["method"]))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"protocol": protocol, "rows": rows}, indent=2) + "\n")
    write_markdown(args.out.with_suffix(".md"), protocol, rows)
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
