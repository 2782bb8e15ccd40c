"""Rate-distortion of hash-grid NeRFs on NeRF-Synthetic lego: file size, PSNR, SSIM and train time.

Each method spec trains on the same capture with the same reduced schedule, writes its ``.scz`` file,
decodes it again and evaluates the *decoded* model on evenly spaced test views, so size and quality
describe the file a user gets. Method specs are ``name`` or ``name@rate`` (a rate penalty, for
compressed methods); runners live in ``RUNNERS`` (``ngp`` here; ``cngp`` registers beside it, one row
per ``cngp@lambda``).

Writes ``benchmarks/results/rd_nerf.json`` (``{"protocol", "rows"}``, see DESIGN.md) and ``rd_nerf.md``.

    OMP_NUM_THREADS=1 python3 benchmarks/rd_nerf.py              # reduced CPU run (see --help)
    python3 benchmarks/rd_nerf.py --methods ngp cngp@1e-4 cngp@1e-3 --threads 2
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
from typing import Any, Callable

import torch

from scenezip.fields.ngp_config import NGPConfig
from scenezip.fields.ngp_streams import METHOD as NGP, ngp_from_streams, ngp_to_streams
from scenezip.fields.ngp_trainer import evaluate_ngp, train_ngp
from scenezip.scene import scene_metadata
from scenezip.scenes.loader import load_dataset
from scenezip.scenes.scz import decode_streams, read_scz, write_scz

RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lego"


def reduced_config(args: argparse.Namespace, out: Path) -> NGPConfig:
    """The CPU-sized ngp schedule every method of a run shares (options as in ``--help``)."""
    return NGPConfig(
        data=args.data, out=out, steps=args.steps, downscale=args.downscale, seed=args.seed,
        rays_per_step=args.rays, n_levels=args.levels, log2_hashmap_size=args.log2_table,
        max_resolution=args.max_resolution, march_steps=args.march_steps, occ_resolution=args.occ_resolution,
        occ_warmup=min(256, args.steps // 4), eval_images=1, checkpoint_every=0, progress=args.progress,
        backend="torch" if args.device == "cpu" else "auto", device=args.device,
    )  # fmt: skip


def run_ngp(ds, args: argparse.Namespace, rate: float | None, work: Path) -> dict[str, Any]:
    """Train ngp, write its lossless float32 .scz, decode it and evaluate the decoded model."""
    if rate is not None:
        raise ValueError("ngp takes no rate penalty (use 'ngp', not 'ngp@...')")
    result = train_ngp(reduced_config(args, work / "ngp"), dataset=ds)
    meta, streams = ngp_to_streams(result.model)
    path = work / "ngp.scz"
    size = write_scz(path, NGP, {**scene_metadata(ds), **meta}, streams)
    scene = read_scz(path)
    model = ngp_from_streams(decode_streams(scene), scene.metadata, str(path)).to(result.model.device)
    return {"model": model, "size_bytes": size, "n_primitives": len(model), "train_s": result.train_s,
            "streams": {name: rec.nbytes for name, rec in scene.streams.items()}}  # fmt: skip


# name -> runner(dataset, args, rate or None, work folder) -> {"model", "size_bytes", "n_primitives", "train_s", ...}
RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {"ngp": run_ngp}


def parse_spec(spec: str) -> tuple[str, float | None]:
    name, _, rate = spec.partition("@")
    if name not in RUNNERS:
        raise SystemExit(f"unknown method {name!r}; available: {', '.join(sorted(RUNNERS))}")
    try:
        return name, float(rate) if rate else None
    except ValueError:
        raise SystemExit(f"bad rate in {spec!r}: expected name@number") from None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DATA, help="Blender capture (default ../shared/data/lego)")
    p.add_argument("--methods", nargs="+", default=["ngp"], help="method specs: name or name@rate")
    p.add_argument("--downscale", type=int, default=4, help="image downscale at load (lego copy: 400 px / 4 = 100 px)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--rays", type=int, default=1024, help="rays per step")
    p.add_argument("--levels", type=int, default=8, help="hash-grid levels")
    p.add_argument("--log2-table", type=int, default=16, help="log2 hash-table size per level")
    p.add_argument("--max-resolution", type=int, default=256, help="finest hash-grid resolution")
    p.add_argument("--march-steps", type=int, default=256, help="marching steps across the box diagonal")
    p.add_argument("--occ-resolution", type=int, default=64, help="occupancy cells per axis")
    p.add_argument("--eval-images", type=int, default=25, help="evenly spaced test views evaluated (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--progress", action="store_true", help="show training progress bars")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    specs = [parse_spec(s) for s in args.methods]
    torch.set_num_threads(args.threads)
    ds = load_dataset(args.data, downscale=args.downscale, n_random_points=1)
    w, h = int(ds.cameras.widths[0]), int(ds.cameras.heights[0])
    rows = []
    with tempfile.TemporaryDirectory(prefix="rd_nerf-") as tmp:
        for name, rate in specs:
            t0 = time.perf_counter()
            run = RUNNERS[name](ds, args, rate, Path(tmp))
            m = evaluate_ngp(run["model"], ds, "test", background=tuple(ds.background or (0.0, 0.0, 0.0)),
                             backend="torch" if args.device == "cpu" else "auto", max_images=args.eval_images)  # fmt: skip
            row = {
                "method": name, "rate": rate, "scene": Path(args.data).name, "resolution": [w, h],
                "steps": args.steps, "size_bytes": run["size_bytes"], "psnr": m["psnr"], "ssim": m["ssim"],
                "lpips": m["lpips"], "lpips_note": m["lpips_note"], "n_primitives": run["n_primitives"],
                "train_s": round(run["train_s"], 1), "wall_s": round(time.perf_counter() - t0, 1),
                "device": args.device, "n_eval_images": m["n_images"], "streams": run.get("streams", {}),
            }  # fmt: skip
            rows.append(row)
            print(f"{name}{'' if rate is None else '@' + str(rate)}: {row['size_bytes']:,} bytes, PSNR {row['psnr']:.2f} "
                  f"SSIM {row['ssim']:.4f}, train {row['train_s']} s", flush=True)  # fmt: skip
    protocol = {
        "date": date.today().isoformat(),
        "command": "python3 benchmarks/rd_nerf.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "data": str(args.data),
        "resolution": [w, h],
        "downscale": args.downscale,
        "split": f"test split of the capture, {args.eval_images or 'all'} evenly spaced views, decoded file rendered",
        "background": list(ds.background) if ds.background else None,
        "schedule": {k: getattr(args, k) for k in ("steps", "rays", "levels", "log2_table", "max_resolution",
                                                    "march_steps", "occ_resolution", "seed")},  # fmt: skip
        "lpips": "VGG (LPIPS v0.1) where its weights are present, else null with the reason",
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "note": "reduced CPU schedule (hash grid and marching shrunk, few steps): not comparable with 800 px "
        "Instant-NGP figures",
    }
    result = {"protocol": protocol, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "rd_nerf.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# rd_nerf: hash-grid NeRF size vs quality", "",
        f"`{protocol['command']}` on {protocol['date']} ({args.device}, {args.threads} thread(s)); "
        f"{Path(args.data).name} at {w}x{h}, {args.steps} steps; {protocol['split']}.", "",
        "| method | rate | size (bytes) | PSNR | SSIM | LPIPS | hash entries | train s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        lp = "n/a" if r["lpips"] is None else f"{r['lpips']:.4f}"
        lines.append(f"| {r['method']} | {'' if r['rate'] is None else r['rate']} | {r['size_bytes']:,} | "
                     f"{r['psnr']:.2f} | {r['ssim']:.4f} | {lp} | {r['n_primitives']:,} | {r['train_s']} |")  # fmt: skip
    (args.out / "rd_nerf.md").write_text("\n".join(lines) + "\n")
    return result


if __name__ == "__main__":
    main()
