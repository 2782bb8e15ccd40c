"""Blend-weight pruning before ``scenezip compress``: size and quality against the weight budget.

A trained 3dgs scene (run folder, checkpoint or PLY) is pruned with
:func:`scenezip.splatting.importance.weight_budget_keep` at each ``--budgets`` value (the weights are
measured once, on the training views), then converted and coded exactly as ``scenezip compress`` does
(no fine-tuning). Reported for every budget: Gaussians kept, PSNR/SSIM of the pruned *uncompressed* model
and of the decoded ``.scz`` file on evenly spaced test views, and the file size.

    OMP_NUM_THREADS=1 python3 benchmarks/prune_weight.py /tmp/scenezip_rd_gaussians/lego/3dgs --scene lego

Writes ``benchmarks/results/prune_weight_<scene>.{json,md}``, keeping the rows of other settings measured
on the same source.
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

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))


def capture_root(scene: str) -> Path:
    """A capture folder given as a path, or by its name under ../shared/data."""
    return Path(scene) if Path(scene).is_dir() else DATA / scene


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


def write_markdown(path: Path, out: dict) -> None:
    p, rows = out["protocol"], out["rows"]
    md = [f"# prune_weight on {p['scene']}", "", f"{p['machine']}; {p['resolution'][0]}x{p['resolution'][1]} px; source "
          f"{p['source']}; weights: {p['weights']}; test: {p['test']}; compress: {p['compress']}.", "",
          "| scale / rot stages | guided | hash rate | MLP | distill steps | budget | weight dropped | Gaussians kept | "
          "float PSNR | file PSNR | file SSIM | size (bytes) |",
          "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        st = r["settings"]
        md.append(f"| {st['rvq_stages']} / {st['rot_stages']} | {'yes' if st['views'] else 'no'} | "
                  f"{st['hash_rate_lambda'] or 'default'} | {st['hidden_dim'] or 'auto'} | "
                  f"{st.get('distill_steps', 1000)} | {r['budget']:g} | "
                  f"{r['weight_dropped']:.2%} | {r['n_kept']:,} / {r['n_input']:,} | {r['float_psnr']:.2f} | {r['psnr']:.2f} | "
                  f"{r['ssim']:.4f} | {r['size_bytes']:,} |")  # fmt: skip
    md += ["", "Commands:", *sorted({f"- `{r['command']}` ({r['date']})" for r in rows})]
    path.write_text("\n".join(md) + "\n")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="trained 3dgs run folder, checkpoint or PLY")
    ap.add_argument("--scene", default="lego", help="the capture it was trained on: a folder of ../shared/data, or a path")
    ap.add_argument("--downscale", type=int, default=4)
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.0, 0.002, 0.005, 0.01, 0.02, 0.04])
    ap.add_argument("--rvq-stages", type=int, default=6, help="scale R-VQ stages (scenezip compress --rvq-stages)")
    ap.add_argument("--rot-stages", type=int, default=4, help="rotation R-VQ stages (scenezip compress --rot-stages)")
    ap.add_argument("--no-views", action="store_true", help="distil uniformly (scenezip compress --no-distill-from-views)")
    ap.add_argument("--hash-rate-lambda", type=float, default=None, help="scenezip compress --hash-rate-lambda")
    ap.add_argument("--hidden-dim", type=int, default=None, help="colour MLP width (default: compress's automatic one)")
    ap.add_argument("--distill-steps", type=int, default=1000, help="scenezip compress --distill-steps")
    ap.add_argument("--name", default=None, help="results file stem (default: prune_weight_<scene>)")
    ap.add_argument("--test-views", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from rd_gaussians import evaluate_file, evenly_spaced_test

    from scenezip.scene import scene_metadata
    from scenezip.scenes.loader import load_dataset
    from scenezip.scenes.scz import read_scz, write_scz
    from scenezip.splatting.compress import auto_color_config, gaussians_to_c3dgs, load_trained
    from scenezip.splatting.gaussians import GaussianModel
    from scenezip.splatting.importance import gaussian_blend_weights, weight_budget_keep

    torch.set_num_threads(1)
    root = capture_root(args.scene)
    ds = load_dataset(root, downscale=args.downscale, n_random_points=2, seed=args.seed)
    test = evenly_spaced_test(ds, args.test_views)
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
        pruned = model.subset(keep)
        float_scores = scores(pruned, ds, test)
        t1 = time.perf_counter()
        guide = {} if args.no_views else {"gaussian_weights": w[keep].float(), "view_origins": origins}
        cfg = auto_color_config(len(pruned))
        if args.hidden_dim is not None:
            cfg = dataclasses.replace(cfg, hidden_dim=args.hidden_dim)
        c3, conv = gaussians_to_c3dgs(pruned, cfg, distill_steps=args.distill_steps, rvq_stages=args.rvq_stages,
                                      rot_stages=args.rot_stages, seed=args.seed, progress=False,
                                      hash_rate_lambda=args.hash_rate_lambda, **guide)  # fmt: skip
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
    settings = {"rvq_stages": args.rvq_stages, "rot_stages": args.rot_stages, "views": not args.no_views,
                "hash_rate_lambda": args.hash_rate_lambda, "hidden_dim": args.hidden_dim,
                "distill_steps": args.distill_steps}  # fmt: skip
    command = "OMP_NUM_THREADS=1 python3 benchmarks/prune_weight.py " + " ".join(sys.argv[1:] if argv is None else argv)
    for r in rows:
        r.update(settings=settings, command=command, date=date.today().isoformat())
    protocol = {
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}, 1 thread",
        "scene": root.name, "downscale": args.downscale, "source": str(args.source),
        "resolution": [int(ds.cameras.widths[0]), int(ds.cameras.heights[0])],
        "weights": f"summed blend weights over the {len(ds.indices('train'))} training views ({weights_s:.0f} s)",
        "test": f"{len(test)} evenly spaced test views; float = the pruned 3dgs model, file = the decoded .scz",
        "compress": "as scenezip compress with --data, no fine-tuning; per row: scale and rotation R-VQ stages, "
                    "distillation guided by the training views or uniform, hash rate weight (None: the default), "
                    "colour MLP width (None: automatic)",
    }  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{args.name or 'prune_weight_' + root.name}.json"
    if path.is_file():  # keep the rows of other settings measured on the same source
        old = json.loads(path.read_text())
        if old.get("protocol", {}).get("source") == protocol["source"]:
            mine = {(r["budget"], json.dumps(r["settings"], sort_keys=True)) for r in rows}
            rows = [r for r in old["rows"] if (r["budget"], json.dumps(r["settings"], sort_keys=True)) not in mine] + rows
    out = {"protocol": protocol, "rows": rows}
    path.write_text(json.dumps(out, indent=2) + "\n")
    write_markdown(path.with_suffix(".md"), out)
    print(f"wrote {path} and {path.with_suffix('.md')}")
    return out


if __name__ == "__main__":
    main()
