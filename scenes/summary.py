"""A human-readable summary of a loaded :class:`~scenezip.scenes.dataset.Dataset` (``scenezip data``)."""

from __future__ import annotations

from collections import Counter

import numpy as np


def _fmt_vec(v) -> str:
    return "(" + ", ".join(f"{float(x):.3g}" for x in v) + ")"


def format_summary(ds) -> str:
    """Multi-line summary: format, root, cameras and model, resolutions, splits, points, bounds, scale, background."""
    sizes = Counter(zip(ds.cameras.widths.tolist(), ds.cameras.heights.tolist()))
    res = ", ".join(f"{w}x{h} ({n})" if len(sizes) > 1 else f"{w}x{h}" for (w, h), n in sorted(sizes.items()))
    fx = ds.cameras.Ks[:, 0, 0].numpy()
    focal = f"{fx.min():.1f}" if np.ptp(fx) < 0.05 else f"{fx.min():.1f}-{fx.max():.1f}"
    model = ds.cameras.source_model
    if ds.distortion is not None:
        model += " (undistorted at load)"
    splits = ", ".join(f"{k} {len(v)}" for k, v in ds.splits.items())
    lo, hi = ds.bounds
    norm = "identity (world space)" if np.allclose(ds.normalization, np.eye(4)) else (
        f"scale {ds.scale:.4g}, centre {_fmt_vec(-ds.normalization[:3, 3] / ds.scale)} (world)"
    )
    bg = "none (RGB images)" if ds.background is None else _fmt_vec(ds.background)
    rows = [
        ("format", ds.format),
        ("root", str(ds.root)),
        ("cameras", f"{len(ds)}, source model {model}"),
        ("resolution", res + (f" (downscaled by {ds.downscale})" if ds.downscale > 1 else "")),
        ("focal (px)", focal),
        ("splits", splits),
        ("points", f"{len(ds.points)} ({ds.points_source})"),
        ("bounds", f"{_fmt_vec(lo)} .. {_fmt_vec(hi)} (normalized)"),
        ("normalization", norm),
        ("background", bg),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
