"""Blend-weight pruning before ``scenezip compress``: size and quality against the weight budget.

A trained 3dgs scene (run folder, checkpoint or PLY) is pruned with
:func:`scenezip.splatting.importance.weight_budget_keep` at each ``--budgets`` value (the weights are
measured once, on the training views), then converted and coded exactly as ``scenezip compress`` does
(no fine-tuning). Reported for every budget: Gaussians kept, PSNR/SSIM of the pruned *uncompressed* model
and of the decoded ``.scz`` file on evenly spaced test views, and the file size.

    OMP_NUM_THREADS=1 python3 benchmarks/prune_weight.py /tmp/scenezip_rd_gaussians/lego/3dgs --scene lego

Writes ``benchmarks/results/prune_weight_<scene>.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))


def scores(model, ds, test_ids) -> dict:
    from scenezip.render.metrics import psnr, ssim

    bg = torch.tensor(ds.background if ds.background is not None else (0.0, 0.0, 0.0), dtype=torch.float32)
    p, s = [], []
    with torch.no_grad():
        for i in test_ids.tolist():
            cam = ds.cameras[i]
            rgb, _, _ = model.render(cam.viewmats, cam.Ks, int(cam.widths[0]), int(cam.heights[0]),
                                     backgrounds=bg[None], backend="torch")  # fmt: skip
            ref = ds.image(i)
            p.append(float(psnr(rgb[0].clamp(0, 1), ref)))
            s.append(float(ssim(rgb[0].clamp(0, 1), ref)))
    return {"psnr": float(np.mean(p)), "ssim": float(np.mean(s))}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="trained 3dgs run folder, checkpoint or PLY")
    ap.add_argument("--scene", default="lego", help="the capture it was trained on: a folder of ../shared/data, or a path")
    ap.add_argument("--downscale", type=int, default=4)
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.0, 0.002, 0.005, 0.01, 0.02, 0.04])
    ap.add_argument("--rvq-stages", type=int, default=6, help="scale R-VQ stages (scenezip compress --rvq-stages)")
    ap.add_argument("--rot-stages", type=int, default=4, help="rotation R-VQ stages (scenezip compress --rot-stages)")
    ap.add_argument("--no-views", action="store_true", help="distil uniformly (scenezip compress --no-distill-from-views)")
    ap.add_argument("--test-views", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from rd_gaussians import evaluate_file

    from scenezip.scene import scene_metadata
    from scenezip.scenes.loader import load_dataset
    from scenezip.scenes.scz import read_scz, write_scz
    from scenezip.splatting.compress import auto_color_config, gaussians_to_c3dgs, load_trained
    from scenezip.splatting.gaussians import GaussianModel
    from scenezip.splatting.importance import gaussian_blend_weights, weight_budget_keep

    torch.set_num_threads(1)
    root = Path(args.scene) if Path(args.scene).is_dir() else DATA / args.scene
    ds = load_dataset(root, downscale=args.downscale, n_random_points=2, seed=args.seed)
    test = ds.indices("test")
    test = test[np.linspace(0, len(test) - 1, min(args.test_views, len(test))).round().astype(int)]
    model = load_trained(args.source)
    if not isinstance(model, GaussianModel):
        raise SystemExit(f"{args.source}: not a 3dgs model")
    t0 = time.perf_counter()
    train = ds.indices("train")
    w = gaussian_blend_weights(model, [ds.cameras[int(i)] for i in train], backend="torch", progress=True)
    origins = ds.cameras.centers[torch.as_tensor(train)].float()
    weights_s = time.perf_counter() - t0
    rows = []
    for b in args.budgets:
        keep = weight_budget_keep(w, b)
        s = model.splats
        pruned = GaussianModel(*(s[k].detach()[keep] for k in ("means", "quats", "scales", "opacities", "sh0", "shN")))
        float_scores = scores(pruned, ds, test)
        t1 = time.perf_counter()
        guide = {} if args.no_views else {"gaussian_weights": w[keep].float(), "view_origins": origins}
        c3, conv = gaussians_to_c3dgs(pruned, auto_color_config(len(pruned)), rvq_stages=args.rvq_stages,
                                      rot_stages=args.rot_stages, seed=args.seed, progress=False, **guide)  # fmt: skip
        meta, streams = c3.to_streams()
        with tempfile.TemporaryDirectory() as tmp:
            scz = Path(tmp) / "s.scz"
            write_scz(scz, "c3dgs", {**scene_metadata(ds), **meta}, streams)
            ev = evaluate_file(scz, ds, test, lpips_on=False)
            groups: dict[str, int] = {}  # bytes by stream family (scale_indices_0.. -> scale_indices)
            for rec in read_scz(scz).streams.values():
                key = "hash" if rec.name.startswith("hash") else rec.name.rstrip("0123456789").rstrip("_")
                groups[key] = groups.get(key, 0) + rec.nbytes
        rows.append({"budget": b, "n_input": len(model), "n_kept": int(keep.sum()), "n_coded": ev["n_primitives"],
                     "weight_dropped": float(w[~keep].sum() / w.sum()), "float_psnr": float_scores["psnr"],
                     "float_ssim": float_scores["ssim"], "psnr": ev["psnr"], "ssim": ev["ssim"],
                     "size_bytes": ev["size_bytes"], "stream_bytes": groups, "convert_s": time.perf_counter() - t1})  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    protocol = {
        "command": "OMP_NUM_THREADS=1 python3 benchmarks/prune_weight.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": date.today().isoformat(), "machine": f"{platform.machine()} CPU, torch {torch.__version__}, 1 thread",
        "scene": args.scene, "downscale": args.downscale, "source": str(args.source),
        "resolution": [int(ds.cameras.widths[0]), int(ds.cameras.heights[0])],
        "weights": f"summed blend weights over the {len(ds.indices('train'))} training views ({weights_s:.0f} s)",
        "test": f"{len(test)} evenly spaced test views; float = the pruned 3dgs model, psnr = the decoded .scz",
        "compress": f"scenezip compress --rvq-stages {args.rvq_stages} --rot-stages {args.rot_stages}"
                    f"{' --no-distill-from-views' if args.no_views else ''}, no fine-tuning",
    }  # fmt: skip
    out = {"protocol": protocol, "rows": rows}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"prune_weight_{root.name}_s{args.rvq_stages}r{args.rot_stages}" + ("_uniform" if args.no_views else "")
    path = RESULTS / f"{stem}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    md = [f"# prune_weight on {args.scene}", "", f"`{protocol['command']}` on {protocol['date']} ({protocol['machine']}); "
          f"{protocol['resolution'][0]}x{protocol['resolution'][1]} px; weights: {protocol['weights']}; "
          f"test: {protocol['test']}; compress: {protocol['compress']}.", "",
          "| budget | weight dropped | Gaussians kept | float PSNR | file PSNR | file SSIM | size (bytes) |",
          "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        md.append(f"| {r['budget']:g} | {r['weight_dropped']:.2%} | {r['n_kept']:,} / {r['n_input']:,} | "
                  f"{r['float_psnr']:.2f} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['size_bytes']:,} |")  # fmt: skip
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return out


if __name__ == "__main__":
    main()
