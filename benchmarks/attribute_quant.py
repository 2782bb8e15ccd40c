"""What quantizing one attribute of a trained 3dgs model costs, attribute by attribute.

PSNR on evenly spaced test views with only that attribute replaced by its quantized value: R-VQ (k stages of 64
codes, k-means fitted) of the scales, rotations or DC colours, uniform steps of the log-scales, n-bit opacity
logits; and the order-0 entropy of its symbols in bits a Gaussian (what rANS streams cost, tables aside).
Gaussians below opacity 0.005 are dropped first, as ``scenezip compress`` does. One JSON line a setting.

    OMP_NUM_THREADS=1 python3 benchmarks/attribute_quant.py /tmp/scenezip_rd_gaussians/lego/3dgs --scene lego

The lego figures are quoted where ``scenezip compress`` sets its R-VQ stages (splatting/compress.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))


def entropy_bits(symbols: np.ndarray) -> float:
    """Order-0 empirical entropy of ``symbols`` in bits a symbol."""
    _, counts = np.unique(symbols, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="trained 3dgs run folder, checkpoint or PLY")
    ap.add_argument("--scene", default="lego", help="the capture the source was trained on: a folder of ../shared/data, or a path")
    ap.add_argument("--downscale", type=int, default=4)
    ap.add_argument("--test-views", type=int, default=25)
    args = ap.parse_args(argv)

    from prune_weight import capture_root, scores
    from rd_gaussians import evenly_spaced_test

    from scenezip.quant.rvq import ResidualVQ
    from scenezip.scenes.loader import load_dataset
    from scenezip.splatting.compress import load_trained
    from scenezip.splatting.gaussians import GaussianModel

    torch.set_num_threads(1)
    root = capture_root(args.scene)
    ds = load_dataset(root, downscale=args.downscale, n_random_points=2, seed=0)
    test = evenly_spaced_test(ds, args.test_views)
    splats = {k: v.detach() for k, v in load_trained(args.source).splats.items()}
    keep = torch.sigmoid(splats["opacities"]) >= 0.005
    s = {k: v[keep] for k, v in splats.items()}
    n = int(keep.sum())

    def psnr_with(**replaced: torch.Tensor) -> float:
        d = {**s, **replaced}
        model = GaussianModel(d["means"], d["quats"], d["scales"], d["opacities"], d["sh0"], d["shN"])
        return scores(model, ds, test)["psnr"]

    base = psnr_with()
    print(json.dumps({"n": n, "float_psnr": base}), flush=True)

    def report(name: str, value: float, bits: float, psnr: float) -> None:
        print(json.dumps({name: value, "bits_per_gaussian": bits, "kB": bits * n / 8e3, "psnr": psnr,
                          "dpsnr": psnr - base}), flush=True)  # fmt: skip

    def rvq(x: torch.Tensor, stages: int, seed: int) -> tuple[torch.Tensor, float]:
        vq = ResidualVQ(x.shape[1], stages, 64, seed=seed)
        vq.init_from(x)
        idx = vq.encode(x)
        return vq.decode(idx), sum(entropy_bits(idx[:, j].numpy()) for j in range(stages))

    log_scales = s["scales"]
    for k in (6, 4, 3, 2):
        rec, bits = rvq(torch.exp(log_scales), k, 0)
        report("scale_rvq_stages", k, bits, psnr_with(scales=rec.clamp_min(1e-8).log()))
    for step in (0.1, 0.2):
        q = torch.round(log_scales / step)
        report("log_scale_step", step, sum(entropy_bits(q[:, j].numpy()) for j in range(3)), psnr_with(scales=q * step))
    for k in (4, 3, 2):
        rec, bits = rvq(F.normalize(s["quats"], dim=-1), k, 1)
        report("rot_rvq_stages", k, bits, psnr_with(quats=rec))
    for k in (3, 2):
        rec, bits = rvq(s["sh0"].reshape(n, 3), k, 2)
        report("dc_rvq_stages", k, bits, psnr_with(sh0=rec.reshape(n, 1, 3)))
    lo, hi = s["opacities"].min(), s["opacities"].max()
    for b in (8, 6, 5, 4):
        levels = (1 << b) - 1
        q = torch.round((s["opacities"] - lo) / (hi - lo) * levels)
        report("opacity_bits", b, entropy_bits(q.numpy()), psnr_with(opacities=q / levels * (hi - lo) + lo))


if __name__ == "__main__":
    main()
