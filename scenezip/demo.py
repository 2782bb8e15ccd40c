"""``scenezip demo``: the main job end to end on a built-in procedural scene, on any machine.

Writes a procedural capture (analytic ray tracing, :mod:`scenezip.scenes.procedural`), trains ``3dgs``
and ``c3dgs`` on it with the same schedule, writes both ``.scz`` files, decodes them back, evaluates the
decoded files on the test views, checks that the c3dgs file decodes to the same pixels twice and in a
second Python process, and writes renders (ground truth | 3dgs | c3dgs) and a table. The defaults fit in
about five minutes on two CPU cores.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from scenezip.errors import ScenezipError


@dataclass
class DemoArgs:
    """Run the main job on a built-in procedural scene: train 3dgs and c3dgs, code, decode, evaluate, compare."""

    out: Path = Path("scenezip_demo")
    """Output folder (capture, runs, .scz files, renders, demo.json); must be empty or a previous demo's."""
    steps: int = 300
    """Training steps of each method."""
    size: int = 48
    """Width and height of the procedural views in pixels."""
    views: int = 12
    """Training views (plus 3 test views)."""
    max_gaussians: int = 6000
    """Cap on the Gaussian count of both runs."""
    backend: Literal["auto", "torch", "cuda"] = "auto"
    """Rasterizer backend."""
    seed: int = 0
    """Seed of the scene and of training."""
    progress: bool = True
    """Show progress bars."""


_SECOND_PROCESS = """
import hashlib, sys, torch
from scenezip.scene import load_scene
scene = load_scene(sys.argv[1])
vm = torch.load(sys.argv[2], weights_only=True)
rgb, _ = scene.render(vm["viewmats"], vm["Ks"], int(vm["w"]), int(vm["h"]), backgrounds=vm["bg"], backend="torch")
print(hashlib.sha256((rgb.numpy() * 255.0 + 0.5).astype("uint8").tobytes()).hexdigest())
"""


def _digest(rgb: torch.Tensor) -> str:
    return hashlib.sha256((rgb.cpu().numpy() * 255.0 + 0.5).astype(np.uint8).tobytes()).hexdigest()


def decode_check(scz: Path, cams, background: torch.Tensor, workdir: Path) -> dict:
    """Decode ``scz`` twice here and once in a fresh Python process; render the cameras with the torch
    path each time and compare the 8-bit pixels by SHA-256. Returns the three digests and ``identical``."""
    from scenezip.scene import load_scene

    w, h = int(cams.widths[0]), int(cams.heights[0])
    bg = background[None].expand(len(cams), 3).contiguous()
    digests = []
    for _ in range(2):
        scene = load_scene(scz)
        rgb, _ = scene.render(cams.viewmats, cams.Ks, w, h, backgrounds=bg, backend="torch")
        digests.append(_digest(rgb))
    vm_path = workdir / "decode_check_cameras.pt"
    torch.save({"viewmats": cams.viewmats, "Ks": cams.Ks, "w": w, "h": h, "bg": bg}, vm_path)
    res = subprocess.run([sys.executable, "-c", _SECOND_PROCESS, str(scz), str(vm_path)], capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    if res.returncode != 0:
        raise ScenezipError(f"decode check: the second process failed: {res.stderr.strip().splitlines()[-1:]}")
    digests.append(res.stdout.strip().splitlines()[-1])
    vm_path.unlink(missing_ok=True)
    return {"digests": digests, "identical": len(set(digests)) == 1}


def run_demo(args: DemoArgs) -> dict:
    """Do the demo's work (see the module docstring); returns what ``demo.json`` holds."""
    import imageio.v3 as iio

    from scenezip.cli import train_and_write
    from scenezip.render.metrics import psnr, ssim
    from scenezip.scene import load_scene
    from scenezip.scenes.loader import load_dataset
    from scenezip.scenes.procedural import write_procedural_scene
    from scenezip.splatting.config import C3DGSConfig, DensifyConfig, TrainConfig

    if args.steps < 1 or args.size < 8 or args.views < 2 or args.max_gaussians < 100:
        raise ScenezipError("demo needs steps >= 1, size >= 8, views >= 2 and max_gaussians >= 100")
    out = args.out.resolve()
    if out.exists() and any(out.iterdir()) and not (out / "demo.json").is_file() and not (out / "data").is_dir():
        raise ScenezipError(f"{out}: folder is not empty and holds no earlier demo")
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    data = write_procedural_scene(out / "data", n_train=args.views, n_val=1, n_test=3, width=args.size,
                                  height=args.size, seed=args.seed, overwrite=True)  # fmt: skip
    common = dict(data=data, steps=args.steps, random_points=max(500, args.max_gaussians // 3), backend=args.backend,
                  progress=args.progress, checkpoint_every=0, keep_checkpoints=1, seed=args.seed,
                  densify=DensifyConfig(max_gaussians=args.max_gaussians))  # fmt: skip
    configs = {"3dgs": TrainConfig(out=out / "3dgs", **common), "c3dgs": C3DGSConfig(out=out / "c3dgs", **common)}
    ds = load_dataset(data, n_random_points=common["random_points"], seed=args.seed)
    rows, files = [], {}
    for method, config in configs.items():
        print(f"training {method} ({args.steps} steps on {args.views} views of {args.size}x{args.size})")
        result, scz, nbytes = train_and_write(config, ds)
        files[method] = scz
        rows.append({"method": method, "size_bytes": nbytes, "n_primitives": result.n_gaussians,
                     "train_s": result.train_s, "steps": args.steps})  # fmt: skip

    # evaluate the decoded files (not the in-memory models) on the test views
    background = torch.tensor(ds.background if ds.background is not None else (0.0, 0.0, 0.0), dtype=torch.float32)
    test_ids = ds.indices("test")
    renders_dir = out / "renders"
    renders_dir.mkdir(exist_ok=True)
    panels: dict[int, list[np.ndarray]] = {int(i): [(ds.image(int(i)).numpy() * 255 + 0.5).astype(np.uint8)]
                                           for i in test_ids}  # fmt: skip
    for row in rows:
        scene = load_scene(files[row["method"]])
        ps, ss = [], []
        for i in test_ids.tolist():
            cam = ds.cameras[i]
            rgb, _ = scene.render(cam.viewmats, cam.Ks, args.size, args.size, backgrounds=background[None],
                                  backend="torch")  # the reference path: the same pixels on every machine
            ref = ds.image(i)
            ps.append(float(psnr(rgb[0], ref)))
            ss.append(float(ssim(rgb[0], ref)))
            panels[i].append((rgb[0].cpu().numpy() * 255 + 0.5).astype(np.uint8))
        row.update(psnr=float(np.mean(ps)), ssim=float(np.mean(ss)))
    for i, imgs in panels.items():
        iio.imwrite(renders_dir / f"test_{i:03d}_truth_3dgs_c3dgs.png", np.concatenate(imgs, axis=1))
    ref = rows[0]
    for row in rows:
        row["ratio_vs_3dgs"] = ref["size_bytes"] / row["size_bytes"]
        row["psnr_delta_db"] = row["psnr"] - ref["psnr"]
    check = decode_check(files["c3dgs"], ds.cameras[test_ids], background, out)
    summary = {
        "protocol": {"scene": "procedural (scenezip.scenes.procedural, seed %d)" % args.seed,
                     "resolution": [args.size, args.size], "train_views": args.views, "test_views": len(test_ids),
                     "steps": args.steps, "max_gaussians": args.max_gaussians,
                     "metrics": "PSNR/SSIM of the decoded .scz files on the test views"},  # fmt: skip
        "rows": rows,
        "decode_check": check,
        "total_s": time.perf_counter() - t_start,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def format_table(summary: dict) -> str:
    lines = [
        f"{'method':<7} {'size (bytes)':>13} {'vs 3dgs':>8} {'PSNR (dB)':>10} {'SSIM':>7} {'Gaussians':>10} {'train s':>8}",
    ]
    for r in summary["rows"]:
        lines.append(f"{r['method']:<7} {r['size_bytes']:>13,} {r['ratio_vs_3dgs']:>7.1f}x {r['psnr']:>10.2f} "
                     f"{r['ssim']:>7.4f} {r['n_primitives']:>10,} {r['train_s']:>8.1f}")  # fmt: skip
    return "\n".join(lines)


def cmd_demo(args: DemoArgs) -> None:
    summary = run_demo(args)
    print()
    print(format_table(summary))
    check = summary["decode_check"]
    verdict = "identical" if check["identical"] else "DIFFERENT"
    print(f"\nc3dgs file decoded twice here and once in a second process: pixels {verdict} "
          f"(sha256 {check['digests'][0][:16]}...)")  # fmt: skip
    out = args.out
    print(f"wrote {out / '3dgs' / 'scene.scz'}, {out / 'c3dgs' / 'scene.scz'}, renders in {out / 'renders'} and "
          f"{out / 'demo.json'} ({summary['total_s']:.0f} s)")  # fmt: skip
    if not check["identical"]:
        raise ScenezipError("the c3dgs file did not decode to the same pixels every time")
