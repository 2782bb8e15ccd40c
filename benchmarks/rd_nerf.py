"""Rate-distortion of hash-grid NeRFs on NeRF-Synthetic lego: file size, PSNR, SSIM and train time.

Each method spec trains on the same capture with the same reduced schedule, writes its ``.scz`` file,
decodes it again and evaluates the *decoded* model on evenly spaced test views, so size and quality
describe the file a user gets. Method specs are ``name`` or ``name@rate`` (a rate penalty, for
compressed methods); runners live in ``RUNNERS``: ``ngp`` (lossless float32 file) and ``cngp`` (one
row per ``cngp@lambda``: the same schedule with the hash-table compressor in the loop, see
:class:`~scenezip.fields.ngp_config.CNGPConfig`; the row also says how the bytes split between the hash
table, the MLPs and the occupancy grid, and checks that the decoded model renders the pixels the trained
model rendered).

Writes ``benchmarks/results/rd_nerf.json`` (``{"protocol", "rows"}``, see DESIGN.md), ``rd_nerf.md`` and
``rd_nerf.png`` (PSNR against file size, log scale, drawn with Pillow).

    OMP_NUM_THREADS=1 python3 benchmarks/rd_nerf.py --steps 500 --methods ngp cngp@3e-5 cngp@1e-4 cngp@3e-4

Rows of one protocol may be trained by several processes (``--out`` to separate folders) and joined
afterwards with ``--merge A/rd_nerf.json B/rd_nerf.json`` (no training; the schedules must agree).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any, Callable

import torch

from PIL import Image, ImageDraw

from scenezip.fields.ngp_config import CNGPConfig, NGPConfig
from scenezip.fields.ngp_streams import METHOD as NGP, METHOD_CNGP, cngp_from_streams, ngp_from_streams, ngp_to_streams
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


def run_cngp(ds, args: argparse.Namespace, rate: float | None, work: Path) -> dict[str, Any]:
    """Train cngp at rate penalty ``rate`` on the shared schedule, write its .scz, decode it, check the
    decoded model renders the first test view exactly as the trained (quantized) model, and return it."""
    base = reduced_config(args, work / f"cngp-{rate}")
    config = CNGPConfig(**dataclasses.asdict(base), lambda_rate=0.0 if rate is None else rate,
                        qat_start=args.qat_start, mask_lr=args.mask_lr)  # fmt: skip
    result = train_ngp(config, dataset=ds)
    meta, streams = result.to_streams()
    path = work / f"cngp-{rate}.scz"
    size = write_scz(path, METHOD_CNGP, {**scene_metadata(ds), **meta}, streams)
    scene = read_scz(path)
    model = cngp_from_streams(decode_streams(scene), scene.metadata, str(path)).to(result.model.device)
    cam = ds.cameras[int(ds.indices("test")[0])]
    w, h = int(cam.widths[0]), int(cam.heights[0])
    backend = "torch" if args.device == "cpu" else "auto"
    with torch.no_grad():
        same = torch.equal(result.model.render(cam.viewmats, cam.Ks, w, h, backend=backend)[0],
                           model.render(cam.viewmats, cam.Ks, w, h, backend=backend)[0])  # fmt: skip
    nbytes = {name: rec.nbytes for name, rec in scene.streams.items()}
    split = {"hash": sum(v for k, v in nbytes.items() if k.startswith("hash_")),
             "mlp": nbytes["density_mlp"] + nbytes["color_mlp"], "occupancy": nbytes["occupancy"]}  # fmt: skip
    return {"model": model, "size_bytes": size, "n_primitives": len(model), "train_s": result.train_s,
            "streams": nbytes, "bytes_by_part": split, "decoded_renders_same": same,
            "kept_fraction": result.metrics["hash_kept_fraction"], "train_psnr_quantized": result.metrics["psnr"],
            "rate_proxy_bits_per_param": result.metrics["rate_bits_per_param"]}  # fmt: skip


# name -> runner(dataset, args, rate or None, work folder) -> {"model", "size_bytes", "n_primitives", "train_s", ...}
RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {"ngp": run_ngp, "cngp": run_cngp}


def plot(rows: list[dict], path: Path, title: str) -> None:
    """PSNR against file size (MB, log scale): one polyline per method over its rate penalties, drawn
    with Pillow (benchmarks/rd_image.py's helper plots bits per pixel on a linear axis, so not reused)."""
    w, h, m = 900, 600, 70
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    xs = [math.log10(r["size_bytes"] / 1e6) for r in rows]
    ys = [r["psnr"] for r in rows]
    x0, x1 = math.floor(min(xs) * 2) / 2, math.ceil(max(xs) * 2) / 2
    x1 = x1 if x1 > x0 else x0 + 0.5
    y0, y1 = math.floor(min(ys)) - 1, math.ceil(max(ys)) + 1
    px = lambda x: m + (x - x0) / (x1 - x0) * (w - 2 * m)  # noqa: E731
    py = lambda y: h - m - (y - y0) / (y1 - y0) * (h - 2 * m)  # noqa: E731
    d.rectangle([m, m, w - m, h - m], outline="black")
    for i in range(6):
        xv, yv = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        d.text((px(xv) - 14, h - m + 8), f"{10 ** xv:.2g}", fill="black")
        d.line([px(xv), h - m, px(xv), h - m + 4], fill="black")
        d.text((8, py(yv) - 6), f"{yv:.1f}", fill="black")
    d.text((w // 2 - 60, h - 30), "file size (MB, log scale)", fill="black")
    d.text((8, 20), f"PSNR (dB) - {title}", fill="black")
    target = math.log10(0.5)
    if x0 <= target <= x1:  # the size target, 0.5 MB
        for y in range(m, h - m, 8):
            d.line([px(target), y, px(target), y + 4], fill=(150, 150, 150))
        d.text((px(target) + 4, m + 4), "0.5 MB", fill=(120, 120, 120))
    colors = {"ngp": (30, 90, 200), "cngp": (200, 30, 30)}
    ly = m + 10
    for method in sorted({r["method"] for r in rows}):
        pts = sorted((math.log10(r["size_bytes"] / 1e6), r["psnr"], r["rate"]) for r in rows if r["method"] == method)
        xy = [(px(a), py(b)) for a, b, _ in pts]
        col = colors.get(method, (0, 0, 0))
        if len(xy) > 1:
            d.line(xy, fill=col, width=2)
        for i, ((x, y), (_, _, rate)) in enumerate(zip(xy, pts)):
            d.ellipse([x - 4, y - 4, x + 4, y + 4], outline=col, width=2)
            if rate is not None:  # labels alternate below / above so neighbours do not overlap
                d.text((x + 6, y + (4 if i % 2 == 0 else -18)), f"{rate:g}", fill=col)
        d.line([w - m - 120, ly + 6, w - m - 90, ly + 6], fill=col, width=2)
        d.text((w - m - 85, ly), method, fill="black")
        ly += 16
    img.save(path)


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
    p.add_argument("--qat-start", type=float, default=0.4, help="cngp: fraction of the run before quantization starts")
    p.add_argument("--mask-lr", type=float, default=0.05, help="cngp: Adam learning rate of the mask logits")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--progress", action="store_true", help="show training progress bars")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--merge", type=Path, nargs="+", help="join the rows of these rd_nerf.json files (same schedule) "
                   "and write the table and plot; nothing is trained")  # fmt: skip
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
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
                **{k: v for k, v in run.items() if k not in ("model", "size_bytes", "n_primitives", "train_s", "streams")},
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
        "cngp": {"qat_start": args.qat_start, "mask_lr": args.mask_lr, "hash_bits": 8, "mask_granularity": "entry",
                 "mlp_dtype": "float16", "rate": "lambda_rate of CNGPConfig (bits per table parameter in the loss)",
                 "rate_ramp": 0.1},  # fmt: skip
        "lpips": "VGG (LPIPS v0.1) where its weights are present, else null with the reason",
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "note": "reduced CPU schedule (hash grid and marching shrunk, few steps): not comparable with 800 px "
        "Instant-NGP figures; train s is the wall time of the training steps on a shared 2-core machine with "
        "other jobs running, so timings compare only roughly",
    }
    return write_results({"protocol": protocol, "rows": rows}, args.out)


def merge(paths: list[Path], out: Path) -> dict:
    """Join the rows of several ``rd_nerf.json`` files whose schedules and data agree."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    first = parts[0]["protocol"]
    for p, part in zip(paths, parts):
        for key in ("schedule", "data", "resolution", "split", "threads", "cngp"):
            if part["protocol"].get(key) != first.get(key):
                raise SystemExit(f"{p}: protocol {key!r} differs from {paths[0]}'s; cannot merge")
    protocol = {**first, "command": " ; ".join(part["protocol"]["command"] for part in parts),
                "merged_from": [str(p) for p in paths]}  # fmt: skip
    rows = sorted((r for part in parts for r in part["rows"]), key=lambda r: (r["method"] != "ngp", r["method"], r["rate"] or 0.0))
    return write_results({"protocol": protocol, "rows": rows}, out)


def write_results(result: dict, out: Path) -> dict:
    """Write ``rd_nerf.json``, ``rd_nerf.md`` and ``rd_nerf.png`` into ``out``."""
    protocol, rows = result["protocol"], result["rows"]
    sched = protocol["schedule"]
    w, h = protocol["resolution"]
    scene = Path(protocol["data"]).name
    out.mkdir(parents=True, exist_ok=True)
    (out / "rd_nerf.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# rd_nerf: hash-grid NeRF size vs quality", "",
        f"`{protocol['command']}` on {protocol['date']} ({rows[0]['device'] if rows else '?'}, "
        f"{protocol['threads']} thread(s)); {scene} at {w}x{h}, {sched['steps']} steps; {protocol['split']}.", "",
        "| method | rate | size (bytes) | PSNR | SSIM | LPIPS | hash entries | kept | hash / MLP / occupancy bytes | train s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---:|",
    ]  # fmt: skip
    for r in rows:
        lp = "n/a" if r["lpips"] is None else f"{r['lpips']:.4f}"
        kept = f"{r['kept_fraction']:.3f}" if "kept_fraction" in r else "-"
        parts = r.get("bytes_by_part")
        parts = f"{parts['hash']:,} / {parts['mlp']:,} / {parts['occupancy']:,}" if parts else "-"
        lines.append(f"| {r['method']} | {'' if r['rate'] is None else r['rate']} | {r['size_bytes']:,} | "
                     f"{r['psnr']:.2f} | {r['ssim']:.4f} | {lp} | {r['n_primitives']:,} | {kept} | {parts} | "
                     f"{r['train_s']} |")  # fmt: skip
    ngp = [r for r in rows if r["method"] == "ngp"]
    if ngp:
        ref = max(r["psnr"] for r in ngp)
        hits = [r for r in rows if r["method"] == "cngp" and r["size_bytes"] <= 500_000 and r["psnr"] >= ref - 0.5]
        lines += ["", f"Target (issue 4): cngp at most 0.5 MB within 0.5 dB of ngp ({ref:.2f} dB): "
                      + (", ".join(f"met by cngp@{r['rate']:g} ({r['size_bytes'] / 1e6:.3f} MB, {r['psnr']:.2f} dB)"
                                   for r in hits) if hits else "not met by any row of this run") + "."]  # fmt: skip
    if protocol.get("note"):
        lines += ["", f"Note: {protocol['note']}."]
    (out / "rd_nerf.md").write_text("\n".join(lines) + "\n")
    if rows:
        plot(rows, out / "rd_nerf.png", f"{scene} {w}x{h}, {sched['steps']} steps")
    return result


if __name__ == "__main__":
    main()
