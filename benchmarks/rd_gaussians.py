"""Rate-distortion of the Gaussian methods on ../shared/data scenes: 3dgs, c3dgs, 2dgs, and post-hoc c3dgs.

``c3dgs`` is ``scenezip train --method c3dgs`` at its defaults (recipe ``distill``: the 3dgs loop, then the
conversion); ``c3dgs-joint`` the same method with ``--recipe joint`` (Lee et al.'s joint training).

Every method is trained with the same schedule on the same downscaled capture, written to its ``.scz``
file, and that *file* is decoded and evaluated on the test views (PSNR, SSIM, LPIPS when its weights are
present). ``c3dgs-posthoc`` is the interchange path of issue 7: the trained 3dgs scene is exported to an
INRIA PLY, then ``scenezip compress scene.ply --data DATA --steps N`` converts and fine-tunes it; its
ratio is quoted against the PLY's size.

Run (CPU, reduced protocol; state it with every figure)::

    OMP_NUM_THREADS=1 python3 benchmarks/rd_gaussians.py --scenes lego --downscale 4 --steps 2000

Writes ``benchmarks/results/rd_gaussians.{json,md,png}``; the markdown ends with
``rd_gaussians.notes.md`` (hand-written notes on the rows) when that file exists. ``--methods`` selects rows;
rows of a previous run for other (scene, method) pairs are kept, so methods can be (re)run one at a time.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "benchmarks" / "results"
SCENE_NOTES = {"lego": "lego is NeRF-Synthetic at half resolution, white background",
               "bird": "bird is a COLMAP capture, 544x960, real background",
               "fox": "fox is an instant-ngp capture, 540x960, real background"}  # fmt: skip
METHODS = ("3dgs", "c3dgs", "c3dgs-joint", "2dgs", "c2dgs", "c3dgs-posthoc")


def evenly_spaced_test(ds, n: int) -> np.ndarray:
    """Indices of at most ``n`` evenly spaced test views of ``ds`` (the views every Gaussian benchmark scores)."""
    test = ds.indices("test")
    return test[np.linspace(0, len(test) - 1, min(n, len(test))).round().astype(int)]


def evaluate_file(scz: Path, ds, test_ids: np.ndarray, lpips_on: bool) -> dict[str, Any]:
    """Mean PSNR / SSIM / LPIPS of the decoded file on ``test_ids`` and its render time."""
    from scenezip.render.metrics import lpips, lpips_available, psnr, ssim
    from scenezip.scene import load_scene

    scene = load_scene(scz)
    bg = torch.tensor(ds.background if ds.background is not None else (0.0, 0.0, 0.0), dtype=torch.float32)
    use_lpips, note = lpips_available() if lpips_on else (False, "disabled")
    rows, render_s = [], 0.0
    for i in test_ids.tolist():
        cam = ds.cameras[i]
        t0 = time.perf_counter()
        rgb, _ = scene.render(cam.viewmats, cam.Ks, int(cam.widths[0]), int(cam.heights[0]), backgrounds=bg[None],
                              backend="torch")  # fmt: skip
        render_s += time.perf_counter() - t0
        ref = ds.image(i)
        r = {"psnr": float(psnr(rgb[0], ref)), "ssim": float(ssim(rgb[0], ref))}
        if use_lpips:
            r["lpips"] = float(lpips(rgb[0], ref))
        rows.append(r)
    out = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim")}
    out["lpips"] = float(np.mean([r["lpips"] for r in rows])) if use_lpips else None
    out["lpips_note"] = note
    out["render_s_per_view"] = render_s / max(len(rows), 1)
    out["size_bytes"] = scz.stat().st_size
    out["n_primitives"] = scene.n_primitives
    return out


def run_method(method: str, ds, args: argparse.Namespace, work: Path, runs: dict[str, Any]) -> dict[str, Any]:
    from scenezip.cli import train_and_write
    from scenezip.splatting.config import C3DGSConfig, DensifyConfig, SurfelTrainConfig, TrainConfig

    common = dict(data=Path(ds.root), steps=args.steps, downscale=args.downscale, random_points=args.random_points,
                  densify=DensifyConfig(max_gaussians=args.max_gaussians), checkpoint_every=0, keep_checkpoints=1,
                  backend="torch", progress=not args.no_progress, seed=args.seed)  # fmt: skip
    if method == "c3dgs-posthoc":
        from scenezip.cli_compress import CompressArgs, compress_scene
        from scenezip.scenes.ply import write_ply
        from scenezip.splatting.compress import load_trained
        from scenezip.splatting.plain import to_plain

        src = work / "3dgs"
        if not (src / "gaussians.pt").is_file():
            raise SystemExit("c3dgs-posthoc needs the 3dgs run of this scene first (run --methods 3dgs)")
        ply = work / "3dgs_export.ply"
        write_ply(ply, to_plain(load_trained(src)).arrays())
        out = work / "c3dgs-posthoc.scz"
        t0 = time.perf_counter()
        rep = compress_scene(CompressArgs(source=ply, out=out, data=Path(ds.root), steps=args.posthoc_steps,
                                          downscale=args.downscale, backend="torch",
                                          progress=not args.no_progress, seed=args.seed))  # fmt: skip
        return {"scz": out, "train_s": time.perf_counter() - t0, "ply_bytes": ply.stat().st_size,
                "finetune_steps": args.posthoc_steps, "distill_rms": rep.get("distill_rms")}  # fmt: skip
    from scenezip.splatting.c2dgs import C2DGSConfig

    if method == "c3dgs-joint":
        common["recipe"] = "joint"
    cls = {"3dgs": TrainConfig, "c3dgs": C3DGSConfig, "c3dgs-joint": C3DGSConfig, "2dgs": SurfelTrainConfig,
           "c2dgs": C2DGSConfig}[method]  # fmt: skip
    config = cls(out=work / method, **common)
    result, scz, _ = train_and_write(config, ds)
    return {"scz": scz, "train_s": result.train_s}


def plot(rows: list[dict], path: Path) -> None:
    """Size (log) vs PSNR, one marker per (scene, method), drawn with Pillow."""
    from PIL import Image, ImageDraw

    pts = [(r["size_bytes"], r["psnr"], f"{r['scene']}:{r['method']}") for r in rows if r.get("psnr") is not None]
    if not pts:
        return
    W, H, M = 720, 480, 70
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    xs = np.log10([p[0] for p in pts])
    ys = np.array([p[1] for p in pts])
    x0, x1 = xs.min() - 0.2, xs.max() + 0.2
    y0, y1 = ys.min() - 1.0, ys.max() + 1.0

    def xy(x: float, y: float) -> tuple[float, float]:
        return M + (x - x0) / (x1 - x0) * (W - 2 * M), H - M - (y - y0) / (y1 - y0) * (H - 2 * M)

    d.rectangle([M, M, W - M, H - M], outline="black")
    for e in range(int(np.floor(x0)), int(np.ceil(x1)) + 1):
        if x0 <= e <= x1:
            px, _ = xy(e, y0)
            d.line([px, H - M, px, H - M + 5], fill="black")
            d.text((px - 12, H - M + 8), f"1e{e}", fill="black")
    for t in np.linspace(y0, y1, 5):
        _, py = xy(x0, t)
        d.text((8, py - 6), f"{t:.1f}", fill="black")
    colours = {"3dgs": "blue", "c3dgs": "red", "c3dgs-joint": "brown", "2dgs": "green", "c2dgs": "orange",
               "c3dgs-posthoc": "purple"}  # fmt: skip
    for (s, p, label), x, y in zip(pts, xs, ys):
        px, py = xy(x, y)
        d.ellipse([px - 5, py - 5, px + 5, py + 5], fill=colours.get(label.split(":")[1], "black"))
        d.text((px + 8, py - 6), label, fill="black")
    d.text((W // 2 - 60, H - 30), "file size (bytes, log)", fill="black")
    d.text((8, 20), "PSNR (dB) of the decoded file on the test views", fill="black")
    img.save(path)


def write_report(name: str, out: dict) -> None:
    """``RESULTS/<name>.md`` and ``.png`` from the results ``out``, ending with ``<name>.notes.md`` if present."""
    protocol, rows = out["protocol"], out["rows"]
    md = [f"# {name}", "", "Protocol: " + ", ".join(f"{k}={v}" for k, v in protocol.items()), "",
          "| scene | method | resolution | steps | size (bytes) | vs 3dgs | PSNR | SSIM | LPIPS | primitives | train s |",
          "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in rows:
        base = next((b for b in rows if b["scene"] == r["scene"] and b["method"] == "3dgs"), None)
        ratio = f"{base['size_bytes'] / r['size_bytes']:.1f}x" if base else "-"
        lp = f"{r['lpips']:.4f}" if r.get("lpips") is not None else "n/a"
        md.append(f"| {r['scene']} | {r['method']} | {r['resolution'][0]}x{r['resolution'][1]} | {r['steps']} | "
                  f"{r['size_bytes']:,} | {ratio} | {r['psnr']:.2f} | {r['ssim']:.4f} | {lp} | {r['n_primitives']:,} | "
                  f"{r['train_s']:.0f} |")  # fmt: skip
    for r in rows:
        if r["method"] == "c3dgs-posthoc" and r.get("ply_bytes"):
            md.append(f"\n{r['scene']}: the 3dgs PLY export is {r['ply_bytes']:,} bytes; `scenezip compress` of it "
                      f"(+{r['finetune_steps']} fine-tuning steps) is {r['ply_bytes'] / r['size_bytes']:.1f}x smaller.")  # fmt: skip
    notes = RESULTS / f"{name}.notes.md"  # hand-written notes on the rows, kept across reruns
    if notes.is_file():
        md += ["", notes.read_text().rstrip()]
    (RESULTS / f"{name}.md").write_text("\n".join(md) + "\n")
    plot(rows, RESULTS / f"{name}.png")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--scenes", nargs="+", default=["lego"], help="folders of ../shared/data")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--downscale", type=int, default=4, help="image downscale of the capture (lego is 400 px)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--posthoc-steps", type=int, default=0,
                   help="fine-tuning steps of c3dgs-posthoc (0: none; 500 measured worse on lego, see the results notes)")
    p.add_argument("--max-gaussians", type=int, default=40_000)
    p.add_argument("--random-points", type=int, default=20_000, help="initial points when the capture has none")
    p.add_argument("--test-views", type=int, default=25, help="evaluate this many evenly spaced test views")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-lpips", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--work", type=Path, default=Path("/tmp/scenezip_rd_gaussians"))
    p.add_argument("--name", default="rd_gaussians", help="results file stem under benchmarks/results")
    p.add_argument("--report", action="store_true",
                   help="train nothing: rewrite <name>.md and .png from <name>.json (after editing the notes)")
    args = p.parse_args(argv)
    json_path = RESULTS / f"{args.name}.json"
    if args.report:
        if not json_path.is_file():
            raise SystemExit(f"{json_path}: not found (run the benchmark first)")
        out = json.loads(json_path.read_text())
        write_report(args.name, out)
        return out

    from scenezip.scenes.loader import load_dataset

    RESULTS.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    for scene in args.scenes:
        root = DATA / scene
        if not root.is_dir():
            raise SystemExit(f"{root}: not found (this benchmark needs ../shared/data)")
        ds = load_dataset(root, downscale=args.downscale, n_random_points=args.random_points, seed=args.seed)
        test = evenly_spaced_test(ds, args.test_views)
        work = args.work / scene
        work.mkdir(parents=True, exist_ok=True)
        for method in args.methods:
            print(f"== {scene} {method}", flush=True)
            run = run_method(method, ds, args, work, {})
            ev = evaluate_file(run.pop("scz"), ds, test, not args.no_lpips)
            row = {"method": method, "scene": scene,
                   "resolution": [int(ds.cameras.widths[0]), int(ds.cameras.heights[0])], "steps": args.steps,
                   **ev, **run, "device": "cpu", "threads": torch.get_num_threads()}  # fmt: skip
            rows.append(row)
            print(json.dumps({k: row[k] for k in ("method", "size_bytes", "psnr", "ssim", "n_primitives", "train_s")}),
                  flush=True)  # fmt: skip
    # merge with the rows on disk *now*, so runs of other methods in parallel processes are kept
    old = json.loads(json_path.read_text()) if json_path.is_file() else {"rows": []}
    mine = {(r["scene"], r["method"]) for r in rows}
    rows = [r for r in old.get("rows", []) if (r["scene"], r["method"]) not in mine] + rows
    rows.sort(key=lambda r: (r["scene"], METHODS.index(r["method"])))
    protocol = {
        "data": "../shared/data (see its README: " + "; ".join(SCENE_NOTES.get(s, s) for s in args.scenes) + ")",
        "downscale": args.downscale, "steps": args.steps, "posthoc_finetune_steps": args.posthoc_steps,
        "max_gaussians": args.max_gaussians, "random_points": args.random_points,
        "split": f"test, {args.test_views} evenly spaced views", "metrics": "of the decoded .scz file, torch rasterizer",
        "lpips": "VGG, published scaling, when weights are present; else null", "seed": args.seed,
        "machine": f"{platform.machine()} CPU, torch {torch.__version__}, {torch.get_num_threads()} thread(s)",
        "command": "python3 benchmarks/rd_gaussians.py " + " ".join(sys.argv[1:] if argv is None else argv),
    }  # fmt: skip
    out = {"protocol": protocol, "rows": rows}
    json_path.write_text(json.dumps(out, indent=2) + "\n")
    write_report(args.name, out)
    return out


if __name__ == "__main__":
    main()
