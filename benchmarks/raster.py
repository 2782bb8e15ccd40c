"""Speed of the 3DGS rasterizer: forward + backward of the torch path and, on a GPU, of gsplat.

For every Gaussian count x square resolution, renders a seeded random scene (Gaussians filling the view
frustum between depths 3 and 5, log-uniform sizes) and times ``rasterization(...)`` followed by
``backward()`` of a random linear loss on colours and alphas: the median of ``--repeats`` runs after one
warm-up. The number of pixel-Gaussian pairs evaluated (tile intersections x tile pixels) normalizes the
CPU figure to nanoseconds per pair. On CUDA, gsplat runs on the same inputs in the same process, and the
table gives the gsplat/torch time ratio.

Writes ``benchmarks/results/raster.json`` (``{"protocol", "rows"}``, see DESIGN.md) and ``raster.md``.

    python3 benchmarks/raster.py                      # CPU, 1k..50k Gaussians, 64..256 px
    python3 benchmarks/raster.py --tcmalloc           # re-run itself with tcmalloc preloaded
    python3 benchmarks/raster.py --device cuda        # torch path and gsplat side by side
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

from scenezip.render.rasterization import rasterization

TCMALLOC = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
RESULTS = Path(__file__).resolve().parent / "results"


def make_scene(n: int, size: int, device: torch.device, seed: int = 0) -> dict:
    """Seeded random Gaussians that fill a ``size`` x ``size`` view (focal 1.2 * size)."""
    g = torch.Generator().manual_seed(seed)
    depth = 3.0 + 2.0 * torch.rand(n, generator=g)
    half = depth / 1.2 * 0.5  # half-width of the frustum at that depth
    xy = (torch.rand(n, 2, generator=g) * 2 - 1) * half[:, None]
    scene = {
        "means": torch.cat([xy, depth[:, None]], 1),
        "quats": torch.randn(n, 4, generator=g),
        "scales": 10 ** (torch.rand(n, 3, generator=g) - 2.2),
        "opacities": 0.05 + 0.9 * torch.rand(n, generator=g),
        "colors": torch.rand(n, 3, generator=g),
        "viewmats": torch.eye(4)[None],
        "Ks": torch.tensor([[1.2 * size, 0.0, size / 2], [0.0, 1.2 * size, size / 2], [0.0, 0.0, 1.0]])[None],
    }
    return {k: v.to(device) for k, v in scene.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_backend(scene: dict, size: int, backend: str, repeats: int) -> dict:
    """Median forward and forward+backward seconds of one backend, after one warm-up run."""
    device = scene["means"].device
    leaves = {k: v.clone().requires_grad_(k not in ("viewmats", "Ks")) for k, v in scene.items()}
    g = torch.Generator(device=device).manual_seed(1)
    v = torch.randn(1, size, size, 3, generator=g, device=device)
    va = torch.randn(1, size, size, 1, generator=g, device=device)
    fwd, total, cpu, meta = [], [], [], {}
    for i in range(repeats + 1):
        for t in leaves.values():
            t.grad = None
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        colors, alphas, meta = rasterization(**leaves, width=size, height=size, backend=backend)
        _sync(device)
        t1 = time.perf_counter()
        ((colors * v).sum() + (alphas * va).sum()).backward()
        _sync(device)
        t2 = time.perf_counter()
        if i > 0:  # the first run is the warm-up (allocations, gsplat's kernel compilation)
            fwd.append(t1 - t0)
            total.append(t2 - t0)
            cpu.append(time.process_time() - c0)
    out = {"fwd_s": statistics.median(fwd), "fwd_bwd_s": statistics.median(total), "cpu_s": statistics.median(cpu)}
    if "flatten_ids" in meta:
        out["pairs"] = int(meta["flatten_ids"].numel()) * meta["tile_size"] ** 2
        out["visible"] = int((meta["radii"] > 0).all(-1).sum())
    return out


def _allocator() -> str:
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    return "tcmalloc" if "tcmalloc" in maps else "default (glibc malloc)"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--counts", type=int, nargs="+", default=[1000, 5000, 20000, 50000], help="Gaussian counts")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256], help="square image sizes in pixels")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per point (median), after one warm-up")
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (cuda when available)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--tcmalloc", action="store_true", help=f"re-run with LD_PRELOAD={TCMALLOC}")
    p.add_argument("--no-gsplat", action="store_true", help="on CUDA, time only the torch path")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for raster.json and raster.md")
    args = p.parse_args(argv)

    if args.tcmalloc and "tcmalloc" not in os.environ.get("LD_PRELOAD", ""):
        if not Path(TCMALLOC).exists():
            p.error(f"{TCMALLOC} is missing (Debian: apt-get install libtcmalloc-minimal4)")
        env = dict(os.environ, LD_PRELOAD=(TCMALLOC + " " + os.environ.get("LD_PRELOAD", "")).strip())
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else args.device)
    if device.type == "auto":
        device = torch.device("cpu")
    with_gsplat = device.type == "cuda" and not args.no_gsplat
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}"

    load = os.getloadavg()[0]
    rows = []
    for size in args.sizes:
        for n in args.counts:
            scene = make_scene(n, size, device)
            r = time_backend(scene, size, "torch", args.repeats)
            row = {
                "method": "3dgs-rasterization-torch",
                "scene": f"random-{n}",
                "resolution": size,
                "n_primitives": n,
                "device": str(device),
                "fwd_s": r["fwd_s"],
                "fwd_bwd_s": r["fwd_bwd_s"],
                "fwd_bwd_cpu_s": r["cpu_s"],
                "pairs": r["pairs"],
                "visible": r["visible"],
                "ns_per_pair": 1e9 * r["fwd_bwd_s"] / max(1, r["pairs"]),
            }
            if with_gsplat:
                gs = time_backend(scene, size, "cuda", args.repeats)
                row.update(gsplat_fwd_s=gs["fwd_s"], gsplat_fwd_bwd_s=gs["fwd_bwd_s"])
                row["gsplat_over_torch"] = gs["fwd_bwd_s"] / r["fwd_bwd_s"]
            rows.append(row)
            line = f"{size:4d}px {n:6d} G  fwd {r['fwd_s']:.3f}s  fwd+bwd {r['fwd_bwd_s']:.3f}s  "
            line += f"{r['pairs'] / 1e6:6.2f}M pairs  {row['ns_per_pair']:6.1f} ns/pair"
            if with_gsplat:
                line += f"  gsplat {row['gsplat_fwd_bwd_s'] * 1e3:.2f} ms  ratio {row['gsplat_over_torch']:.4f}"
            print(line, flush=True)

    protocol = {
        "what": "forward + backward of scenezip.render.rasterization (RGB, classic, tile 8, chunk 2^18) on one camera",
        "scene": "seeded random Gaussians filling the frustum at depths 3-5, scales 10^U(-2.2,-1.2), opacity U(0.05,0.95)",
        "loss": "sum(colors * v) + sum(alphas * v_a) with seeded normal v",
        "timing": f"median of {args.repeats} runs after 1 warm-up, wall clock (CUDA synchronized); "
        "fwd_bwd_cpu_s is process CPU time (all threads), a check on machines shared with other work",
        "load_average_1min": load,
        "pairs": "tile intersections x tile pixels (the pixel-Gaussian pairs the torch path evaluates)",
        "device": str(device),
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "allocator": _allocator(),
        "torch": torch.__version__,
        "date": date.today().isoformat(),
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "quality_fields": "speed only: psnr/ssim/lpips/size_bytes/steps/train_s are null",
    }
    for row in rows:
        row.update(steps=None, size_bytes=None, psnr=None, ssim=None, lpips=None, train_s=None)
    result = {"protocol": protocol, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "raster.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "raster.md").write_text(_markdown(result, with_gsplat))
    print(f"wrote {args.out / 'raster.json'} and {args.out / 'raster.md'}")
    return result


def _markdown(result: dict, with_gsplat: bool) -> str:
    pr = result["protocol"]
    lines = [
        "# 3DGS rasterizer speed",
        "",
        f"{pr['what']}. Scene: {pr['scene']}. Timing: {pr['timing']}.",
        f"Device: {pr['device_name']} ({pr['device']}), {pr['threads']} threads, allocator {pr['allocator']}, "
        f"torch {pr['torch']}, {pr['date']}, load average {pr['load_average_1min']:.1f} at the start. "
        f"Command: `{pr['command']}`.",
        "",
    ]
    head = "| resolution | Gaussians | visible | pairs (M) | fwd (s) | fwd+bwd (s) | fwd+bwd CPU (s) | ns / pair |"
    rule = "|---:|---:|---:|---:|---:|---:|---:|---:|"
    if with_gsplat:
        head += " gsplat fwd+bwd (ms) | gsplat / torch |"
        rule += "---:|---:|"
    lines += [head, rule]
    for r in result["rows"]:
        line = (
            f"| {r['resolution']} | {r['n_primitives']} | {r['visible']} | {r['pairs'] / 1e6:.2f} | {r['fwd_s']:.3f} "
            f"| {r['fwd_bwd_s']:.3f} | {r['fwd_bwd_cpu_s']:.3f} | {r['ns_per_pair']:.1f} |"
        )
        if with_gsplat:
            line += f" {r['gsplat_fwd_bwd_s'] * 1e3:.2f} | {r['gsplat_over_torch']:.4f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
