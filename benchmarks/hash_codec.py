"""Hash-table compression: coded size vs fit error over rate penalties, against the c3dgs scheme.

A HashGrid (torch path) + small bias-free MLP is fitted to a seeded synthetic 3D signal: a dozen
Gaussian blobs in one half of the unit cube, modulated by a high-frequency ripple so the fine levels
matter, zero elsewhere (the empty space a NeRF's hash table also has to represent). Points are drawn
half uniformly in the cube, half near the blobs. Every run starts from the same seed and sees the same
points.

- ``c3dgs`` rows: the table of the uncompressed run (no mask, no quantization during training)
  coded as ``splatting/c3dgs.py`` codes its colour field today: values with ``|v| <= 0.1`` set to 0,
  8-bit uniform over ``[min, max]``, one ``rans`` stream (and, as a second row, the same without the
  zeroing).
- ``cngp`` rows: the same training with :class:`~scenezip.fields.hash_codec.HashTableCompressor` in
  the loop (masks from step 0, QAT from ``--qat-frac`` of the steps) and loss ``mse + lambda * rate``,
  coded with :func:`~scenezip.fields.hash_codec.encode_hash_table`; the error is measured on the
  decoded table (which equals ``quantized_table``; the script checks it).

Size is the hash table only: the coded payloads plus the JSON metadata the scheme needs (the MLP is the
same for every row and left out). Fit error is PSNR over held-out points (peak 1: the signal lies in
[0, 1]) and relative to the float table of the same run. Single thread.

Writes ``benchmarks/results/hash_codec.json`` (``{"protocol", "rows"}``) and ``hash_codec.md``.

    python3 benchmarks/hash_codec.py               # defaults: 400 steps, 5 rate penalties
    python3 benchmarks/hash_codec.py --steps 150   # a quick look
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from scenezip.fields.hash_codec import HashTableCompressor, coding_report, decode_hash_table, encode_hash_table
from scenezip.fields.hashgrid import HashGrid, HashGridConfig, hash_encode, n_params
from scenezip.fields.mlp import MLP
from scenezip.quant.codecs import dequantize_uniform, get_codec, quantize_uniform
from scenezip.quant.scalar import zero_small

RESULTS = Path(__file__).resolve().parent / "results"
CONFIG = HashGridConfig(n_levels=10, n_features_per_level=2, log2_hashmap_size=15, base_resolution=8,
                        per_level_scale=1.4)  # fmt: skip


class Signal:
    """Seeded blobs in ``[0.1, 0.55]^3`` with a ripple; values in [0, 1], 0 away from the blobs."""

    def __init__(self, seed: int, n_blobs: int = 12) -> None:
        g = torch.Generator().manual_seed(seed)
        self.centers = 0.1 + 0.45 * torch.rand(n_blobs, 3, generator=g)
        self.sigmas = 0.02 + 0.04 * torch.rand(n_blobs, generator=g)
        self.freq = 2 * math.pi * (4 + 8 * torch.rand(3, generator=g))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N]
        d2 = ((x[:, None, :] - self.centers[None]) ** 2).sum(-1)
        v = torch.exp(-d2 / (2 * self.sigmas**2)).amax(-1)
        ripple = 0.75 + 0.25 * torch.sin(x * self.freq).prod(-1)
        v = v * ripple
        return torch.where(v > 1e-2, v, torch.zeros_like(v))

    def sample(self, g: torch.Generator, n: int) -> torch.Tensor:
        near = self.centers[torch.randint(0, len(self.centers), (n // 2,), generator=g)]
        near = near + 0.06 * torch.randn(n // 2, 3, generator=g)
        return torch.cat([torch.rand(n - n // 2, 3, generator=g), near]).clamp(0, 1)


def train(signal: Signal, args, lambda_rate: float | None) -> dict:
    """``lambda_rate`` None: plain training (no compressor)."""
    g = torch.Generator().manual_seed(args.seed + 1)
    grid = HashGrid(CONFIG, backend="torch", seed=args.seed)
    mlp = MLP(CONFIG.n_output_dims, 1, hidden_dim=64, n_hidden_layers=1, seed=args.seed)
    groups = [{"params": [grid.params], "lr": 1e-2}, {"params": list(mlp.parameters()), "lr": 1e-2}]
    comp = None
    if lambda_rate is not None:
        comp = HashTableCompressor(grid, bits=8, qat_start=int(args.qat_frac * args.steps))
        groups += comp.param_groups(lr_mask=args.lr_mask, lr_step=args.lr_step)
    opt = torch.optim.Adam(groups, eps=1e-15)
    t0 = time.perf_counter()
    for step in range(args.steps):
        x = signal.sample(g, args.points)
        table = grid.params
        if comp is not None:
            comp.set_step(step)
            table = comp(grid.params)
        loss = ((mlp(hash_encode(x, table, CONFIG))[:, 0] - signal(x)) ** 2).mean()
        if comp is not None and lambda_rate > 0:
            loss = loss + lambda_rate * comp.rate_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"grid": grid, "mlp": mlp, "comp": comp, "train_s": time.perf_counter() - t0}


def psnr(run: dict, table: torch.Tensor, signal: Signal, x: torch.Tensor) -> float:
    with torch.no_grad():
        mse = float(((run["mlp"](hash_encode(x, table, CONFIG))[:, 0] - signal(x)) ** 2).mean())
    return -10 * math.log10(max(mse, 1e-20))


def c3dgs_scheme(params: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int, int]:
    """(decoded table, payload bytes, metadata bytes) of zero-small + 8-bit uniform + one rans stream."""
    table = zero_small(params.numpy(), threshold)
    lo, hi = float(table.min()), float(table.max())
    if not hi > lo:
        hi = lo + 1e-6
    q = quantize_uniform(table, lo, hi, 8)
    payload, stored = get_codec("rans").encode(q)
    meta = {"bits": 8, "lo": lo, "hi": hi, "zero_threshold": threshold, "n_params": int(q.size), **stored}
    return torch.from_numpy(dequantize_uniform(q, lo, hi, 8)), len(payload), len(json.dumps(meta))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--points", type=int, default=2048, help="sample points per step")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 3e-5, 1e-4, 3e-4, 1e-3])
    ap.add_argument("--qat-frac", type=float, default=0.5, help="QAT starts at this fraction of the steps")
    ap.add_argument("--lr-mask", type=float, default=0.05)
    ap.add_argument("--lr-step", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(1)
    signal = Signal(args.seed)
    x_eval = signal.sample(torch.Generator().manual_seed(args.seed + 99), 1 << 15)
    n = n_params(CONFIG)
    rows = []

    def row(method: str, run: dict, table: torch.Tensor, size: int, meta_bytes: int, **extra) -> dict:
        p = psnr(run, table, signal, x_eval)
        r = {"method": method, "scene": f"synthetic-blobs-seed{args.seed}", "resolution": None, "steps": args.steps,
             "size_bytes": size + meta_bytes, "payload_bytes": size, "metadata_bytes": meta_bytes,
             "bits_per_param": 8.0 * (size + meta_bytes) / n, "psnr": p,
             "psnr_float": psnr(run, run["grid"].params.detach(), signal, x_eval),
             "ssim": None, "lpips": None, "n_primitives": n, "train_s": run["train_s"], "device": "cpu", **extra}  # fmt: skip
        r["psnr_drop"] = r["psnr_float"] - p
        rows.append(r)
        print(f"{method:8s} {json.dumps({k: v for k, v in extra.items() if not isinstance(v, list)})} "
              f"{r['size_bytes']:8d} B  {p:6.2f} dB (float {r['psnr_float']:.2f})", flush=True)  # fmt: skip
        return r

    base = train(signal, args, None)
    params = base["grid"].params.detach()
    row("float32", base, params, 4 * n, 0)
    for threshold in (0.1, 0.0):
        decoded, size, meta = c3dgs_scheme(params, threshold)
        row("c3dgs", base, decoded, size, meta, zero_threshold=threshold)
    for lam in args.lambdas:
        run = train(signal, args, lam)
        comp, p = run["comp"], run["grid"].params.detach()
        metadata, streams = encode_hash_table(p, comp)
        report = coding_report(streams)
        decoded = decode_hash_table({k: a for k, (a, _) in streams.items()}, metadata, CONFIG, "benchmark")
        if not torch.equal(decoded, comp.quantized_table(p)):
            raise RuntimeError("decoded table differs from quantized_table")
        keep_frac = float(torch.sigmoid(comp.mask_logits.detach()).gt(comp.mask_threshold).float().mean())
        size = sum(r["payload_bytes"] for r in report)
        row("cngp", run, decoded, size, len(json.dumps(metadata)), lambda_rate=lam, kept_fraction=keep_frac,
            rate_proxy_bits_per_param=float(comp.rate_loss(p).detach()), masked_levels=metadata["masked_levels"],
            streams=[{k: r[k] for k in ("name", "codec", "payload_bytes", "table_bytes", "coded_bits", "entropy_bits")}
                     for r in report])  # fmt: skip

    protocol = {
        "signal": "12 Gaussian blobs in [0.1, 0.55]^3 with a sinusoidal ripple, 0 elsewhere; values in [0, 1]",
        "grid": {k: getattr(CONFIG, k) for k in ("n_levels", "n_features_per_level", "log2_hashmap_size",
                                                 "base_resolution", "per_level_scale")},  # fmt: skip
        "n_params": n, "mlp": "12*2 -> 64 -> 1, ReLU, no biases", "steps": args.steps, "points_per_step": args.points,
        "optimizer": "Adam eps 1e-15; table and MLP lr 1e-2; mask lr %g; step lr %g" % (args.lr_mask, args.lr_step),
        "qat_start": int(args.qat_frac * args.steps), "bits": 8, "eval": "PSNR (peak 1) on 32768 held-out points",
        "size": "hash table only: coded payloads + JSON metadata", "threads": 1, "seed": args.seed,
        "date": str(date.today()), "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "hash_codec.json").write_text(json.dumps({"protocol": protocol, "rows": rows}, indent=1))
    lines = [
        "# Hash-table compression: size vs fit error",
        "",
        f"Synthetic 3D signal (seed {args.seed}), hash grid {protocol['grid']} ({n} parameters), "
        f"{args.steps} steps x {args.points} points, 1 thread, CPU, {protocol['date']}. "
        "Size: the hash table's payloads + metadata; PSNR on held-out points (peak 1). "
        "`c3dgs`: the uncompressed run's table coded as splatting/c3dgs.py does (zero |v| <= threshold, 8-bit "
        "uniform, one rans stream). `cngp`: masks + learned-step QAT in the loop, per-level rans.",
        "",
        "| method | setting | size (B) | bits/param | PSNR (dB) | PSNR, raw float table | drop | kept | rate proxy (bits/param) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]  # fmt: skip
    for r in rows:
        setting = (f"lambda {r['lambda_rate']:g}" if "lambda_rate" in r else
                   f"zero {r['zero_threshold']:g}" if "zero_threshold" in r else "-")  # fmt: skip
        kept = f"{r['kept_fraction']:.3f}" if "kept_fraction" in r else "-"
        proxy = f"{r['rate_proxy_bits_per_param']:.2f}" if "rate_proxy_bits_per_param" in r else "-"
        lines.append(f"| {r['method']} | {setting} | {r['size_bytes']:,} | {r['bits_per_param']:.2f} | {r['psnr']:.2f} | "
                     f"{r['psnr_float']:.2f} | {r['psnr_drop']:.2f} | {kept} | {proxy} |")  # fmt: skip
    lam = " ".join(f"{v:g}" for v in args.lambdas)
    lines += ["", f"Command: `OMP_NUM_THREADS=1 python3 benchmarks/hash_codec.py --steps {args.steps} "
                  f"--points {args.points} --lambdas {lam}`", ""]  # fmt: skip
    (args.out / "hash_codec.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
