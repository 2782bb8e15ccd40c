"""Speed of the building blocks shared by c3dgs and the hash-grid NeRF: the torch hash-grid encoding
(forward, table backward) and the residual VQ (k-means init, encode, decode).

Writes benchmarks/results/hashgrid.json and a markdown table beside it. Timings are the best of
``repeats`` runs (wall clock). On a machine with CUDA and tinycudann it also times tcnn on the same
inputs.

    python3 benchmarks/hashgrid.py --n-points 65536 --rvq-points 1000000
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path

import torch
import tyro

from scenezip._backend import tcnn_available
from scenezip.fields.hashgrid import HashGrid, HashGridConfig
from scenezip.quant.rvq import ResidualVQ


@dataclasses.dataclass
class Args:
    n_points: int = 1 << 16  # points encoded per hash-grid timing
    rvq_points: int = 1_000_000  # vectors encoded per RVQ timing
    rvq_dim: int = 7  # RVQ vector size (3 scales + 4 rotation, as in Compact-3DGS)
    repeats: int = 3  # timings keep the best of this many runs
    threads: int = 0  # torch threads (0: leave torch's default)
    out: Path = Path(__file__).parent / "results" / "hashgrid.json"  # JSON output path


def best_of(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def bench_hashgrid(args: Args, device: torch.device, backend: str) -> dict:
    cfg = HashGridConfig()
    grid = HashGrid(cfg, backend=backend, cuda_dtype=torch.float32 if backend == "cuda" else None).to(device)
    x = torch.rand(args.n_points, 3, generator=torch.Generator().manual_seed(0)).to(device)

    def fwd():
        with torch.no_grad():
            grid(x)

    def fwd_bwd():
        grid.params.grad = None
        grid(x).sum().backward()

    t_fwd = best_of(fwd, args.repeats)
    t_fb = best_of(fwd_bwd, args.repeats)
    return {
        "method": f"hashgrid-{backend}",
        "n_points": args.n_points,
        "n_params": grid.params.numel(),
        "forward_s": t_fwd,
        "forward_backward_s": t_fb,
        "us_per_point_forward": 1e6 * t_fwd / args.n_points,
        "us_per_point_forward_backward": 1e6 * t_fb / args.n_points,
        "device": str(device),
    }


def bench_rvq(args: Args, device: torch.device) -> dict:
    x = torch.randn(args.rvq_points, args.rvq_dim, generator=torch.Generator().manual_seed(0)).to(device)
    vq = ResidualVQ(args.rvq_dim, n_stages=6, codebook_size=64, kmeans_init=False).to(device)
    t_init = best_of(lambda: vq.init_from(x), 1)
    t_enc = best_of(lambda: vq.encode(x), args.repeats)
    idx = vq.encode(x)
    t_dec = best_of(lambda: vq.decode(idx), args.repeats)
    err = ((vq.decode(idx) - x) ** 2).mean().item()
    return {
        "method": "rvq-6x64",
        "n_points": args.rvq_points,
        "dim": args.rvq_dim,
        "init_s": t_init,
        "encode_s": t_enc,
        "decode_s": t_dec,
        "mse_unit_gaussian": err,
        "device": str(device),
    }


def main(args: Args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [bench_hashgrid(args, torch.device("cpu"), "torch"), bench_rvq(args, torch.device("cpu"))]
    if torch.cuda.is_available():
        rows.append(bench_hashgrid(args, torch.device("cuda"), "torch"))
        if tcnn_available():
            rows.append(bench_hashgrid(args, torch.device("cuda"), "cuda"))
        rows.append(bench_rvq(args, torch.device("cuda")))
    protocol = {
        "hashgrid": dataclasses.asdict(HashGridConfig()),
        "rvq": {"n_stages": 6, "codebook_size": 64, "data": "unit Gaussian", "init_points": 1 << 16},
        "timing": f"best of {args.repeats}, wall clock",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"protocol": protocol, "rows": rows}, indent=2))
    lines = ["| method | device | points | figures |", "|---|---|---|---|"]
    for r in rows:
        figures = ", ".join(f"{k}={v:.4g}" for k, v in r.items() if k.endswith(("_s", "point_forward", "backward")))
        lines.append(f"| {r['method']} | {r['device']} | {r['n_points']} | {figures} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(tyro.cli(Args))
