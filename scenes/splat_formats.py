"""Viewer formats for Gaussian splats: antimatter15 ``.splat``, Niantic SPZ, PlayCanvas SOG v2 and glTF
``KHR_gaussian_splatting`` (``.glb``), each written and read back to its published byte layout.

Written by hand from the published layouts (no code from the reference implementations), because none of
the writers is a maintained Python package we may depend on. Every function takes and returns the plain
mapping of :mod:`scenezip.scenes.ply` (``means [N, 3], quats [N, 4] (w, x, y, z), scales [N, 3] (log),
opacities [N] (logit), sh0 [N, 1, 3], shN [N, K-1, 3]``); this module knows no model. Coordinates are
written as stored (no axis conversion), like the INRIA PLY, so every export of one scene lines up with
its PLY in a viewer.

``.splat`` (antimatter15/splat ``convert.py``): 32 bytes per splat, little-endian, no header: position
``f32 x3``, *linear* scale ``f32 x3``, colour ``u8 x4`` (RGB ``(0.5 + SH_C0 sh0) 255``, A
``sigmoid(opacity) 255``), rotation ``u8 x4`` (``q / |q| 128 + 128``, w x y z), splats sorted by
decreasing ``exp(sum of log scales) * sigmoid(opacity)``. SH degree 0 only. We round where the reference
truncates (both decode the same way).

SPZ (nianticlabs/spz ``load-spz.cc``): gzip of a 16-byte header (``u32`` magic ``0x5053474e`` "NGSP",
``u32`` version, ``u32`` count, ``u8`` SH degree, ``u8`` fractional bits, ``u8`` flags, ``u8`` 0) and then
the attribute arrays in this order: positions as 24-bit signed fixed point (``round(p 2^bits)``),
alphas ``round(sigmoid 255)``, colours ``round(sh0 0.15 255 + 127.5)``, scales ``round((log + 10) 16)``,
rotations, SH ``round(c 128) + 128`` snapped to 5-bit (degree 1) / 4-bit (degrees 2, 3) buckets,
coefficient-major with RGB inner. Rotations: version 3 packs the "smallest three" of the (x, y, z, w)
quaternion in a ``u32`` (2-bit index of the largest, then 10 bits per other component: sign bit and
9-bit magnitude of ``|c| / sqrt(1/2)``, first component highest); version 2 stores ``x, y, z`` as
``round(c 127.5 + 127.5)`` with ``w >= 0`` implied. We **write version 3** (or 2 on request) with
12 fractional bits, fewer when the scene extends beyond the 24-bit range, and **read versions 2 and 3**
(no extensions; version 1's float16 positions and the flag-0x2 extension block raise a clear error).

SOG v2 (PlayCanvas spec, developer.playcanvas.com "The SOG Format"): a zip (stored, not deflated) of
``meta.json`` and lossless WebP RGBA images of ``W x H`` (``W = 4 ceil(sqrt(N) / 4)``,
``H = 4 ceil(N / W / 4)``, splat ``i`` at pixel ``(i % W, i // W)``), splats in Morton order: positions
``sign(p) ln(|p| + 1)`` quantized to 16 bits over the per-axis range, low bytes in ``means_l.webp`` and
high bytes in ``means_u.webp``; ``quats.webp`` the three smallest of (w, x, y, z) (largest made
positive) as ``round(255 (c sqrt2 / 2 + 1/2))`` with ``A = 252 + index of the largest``; ``scales.webp``
and ``sh0.webp`` indices into 256-entry codebooks (1D k-means over all log scales / all DC
coefficients), ``sh0`` alpha ``round(sigmoid 255)``; higher SH through a palette: ``shN_labels.webp``
holds a 16-bit palette index (R low byte, G high), ``shN_centroids.webp`` (``64 K' x ceil(count / 64)``
pixels, ``K'`` coefficients per channel) holds for palette entry ``l`` and coefficient ``j`` at pixel
``((l % 64) K' + j, l // 64)`` the codebook indices of the red, green and blue coefficient. Palettes of
at most ``sh_palette`` entries: exact (one entry per splat) when ``N`` is at most that, k-means otherwise.
Pillow writes the WebP files with ``exact=True`` so RGB under a zero alpha survives, at ``quality=50`` (for
lossless WebP the quality is the encoder effort: 100 took 50x longer on noisy planes for <1% smaller files).

glTF (Khronos ``KHR_gaussian_splatting``, ratified text): one ``POINTS`` primitive whose attributes are
``POSITION`` (with min/max), ``KHR_gaussian_splatting:ROTATION`` (VEC4 float, x y z w),
``KHR_gaussian_splatting:SCALE`` (VEC3 float, linear), ``KHR_gaussian_splatting:OPACITY`` (SCALAR float,
after the sigmoid), ``KHR_gaussian_splatting:SH_DEGREE_l_COEF_n`` (VEC3 float, ``n = 0..2l`` in the order
``m = -l..l``, which is gsplat's coefficient order; degree 0 is the raw DC coefficient) and a fallback
``COLOR_0`` (VEC4 float, base colour and opacity); the extension object says ``kernel: ellipse``,
``colorSpace: srgb_rec709_display``. The GLB container is written by hand: 12-byte header (``glTF``,
version 2, total length), a JSON chunk padded with spaces and a BIN chunk padded with zeros, both to
4 bytes, every buffer view 4-byte aligned.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Callable, Literal, Mapping

import numpy as np

from scenezip.errors import SceneFileError
from scenezip.scenes.ply import check_gaussians, read_ply, write_atomic, write_ply

SH_C0 = 0.28209479177387814
SplatFormat = Literal["ply", "splat", "spz", "sog", "glb"]
FORMATS: tuple[str, ...] = ("ply", "splat", "spz", "sog", "glb")

SPZ_MAGIC = 0x5053474E
SPZ_COLOR_SCALE = 0.15
SPZ_MAX_POINTS = 10_000_000  # the reference loader's limit
SOG_PALETTE = 2048  # CPU k-means cost grows with it; PlayCanvas uses up to 65536
GLB_MAGIC = 0x46546C67
GLB_JSON = 0x4E4F534A
GLB_BIN = 0x004E4942
KHR = "KHR_gaussian_splatting"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-x.astype(np.float64)))).astype(np.float32)


def _logit(p: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    p = np.clip(p.astype(np.float64), eps, 1.0 - eps)
    return np.log(p / (1.0 - p)).astype(np.float32)


def _unit(q: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    ident = np.zeros_like(q)
    ident[..., 0] = 1.0
    return np.where(n > 1e-12, q / np.maximum(n, 1e-12), ident).astype(np.float32)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _empty_sh(n: int) -> np.ndarray:
    return np.zeros((n, 0, 3), np.float32)


# ---------------------------------------------------------------------------------------------- .splat
def splat_order(splats: Mapping[str, np.ndarray]) -> np.ndarray:
    """``[N]`` indices in ``.splat`` order: decreasing ``exp(sum log scales) * sigmoid(opacity)`` (stable)."""
    g = check_gaussians(splats)
    key = np.exp(g["scales"].astype(np.float64).sum(axis=1)) * _sigmoid(g["opacities"])
    return np.argsort(-key, kind="stable")


def encode_splat(splats: Mapping[str, np.ndarray]) -> bytes:
    """``.splat`` bytes (32 per splat, see the module docstring); higher SH bands are dropped."""
    g = check_gaussians(splats)
    order = splat_order(g)
    n = order.size
    rec = np.zeros(n, dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    rec["pos"] = g["means"][order]
    rec["scale"] = np.exp(g["scales"][order])
    rgb = 255.0 * (0.5 + SH_C0 * g["sh0"][order, 0, :])
    rec["rgba"][:, :3] = _u8(rgb)
    rec["rgba"][:, 3] = _u8(255.0 * _sigmoid(g["opacities"][order]))
    rec["rot"] = _u8(_unit(g["quats"][order]) * 128.0 + 128.0)
    return rec.tobytes()


def decode_splat(data: bytes, source: str = ".splat") -> dict[str, np.ndarray]:
    """Inverse of :func:`encode_splat` (degree-0 SH; opacity and colour within their 8-bit steps)."""
    if len(data) % 32:
        raise SceneFileError(f"{source}: .splat size {len(data)} is not a multiple of 32 bytes")
    rec = np.frombuffer(data, dtype=[("pos", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rot", "u1", 4)])
    n = rec.size
    if not (np.all(np.isfinite(rec["pos"])) and np.all(rec["scale"] > 0) and np.all(np.isfinite(rec["scale"]))):
        raise SceneFileError(f"{source}: .splat holds non-finite positions or non-positive scales")
    rgba = rec["rgba"].astype(np.float32) / 255.0
    return {
        "means": rec["pos"].astype(np.float32),
        "quats": _unit((rec["rot"].astype(np.float32) - 128.0) / 128.0),
        "scales": np.log(rec["scale"]).astype(np.float32),
        "opacities": _logit(rgba[:, 3]),
        "sh0": ((rgba[:, None, :3] - 0.5) / SH_C0).astype(np.float32),
        "shN": _empty_sh(n),
    }


# ---------------------------------------------------------------------------------------------- SPZ
def _spz_fractional_bits(means: np.ndarray, max_bits: int = 12) -> int:
    """12 (the reference's choice) unless the scene extends beyond the 24-bit range, then fewer."""
    extent = float(np.abs(means).max()) if means.size else 0.0
    bits = max_bits
    while bits > 0 and extent * (1 << bits) >= (1 << 23) - 1:
        bits -= 1
    return bits


def _pack_smallest_three(q_xyzw: np.ndarray) -> np.ndarray:  # [N, 4] -> [N, 4] uint8
    n = q_xyzw.shape[0]
    q = _unit(q_xyzw).astype(np.float64)
    big = np.argmax(np.abs(q), axis=1)
    q = np.where(q[np.arange(n), big][:, None] < 0, -q, q)
    comp = big.astype(np.uint32)
    c_mask = (1 << 9) - 1
    for i in range(4):
        keep = big != i
        mag = np.minimum(np.floor(c_mask * np.abs(q[:, i]) / math.sqrt(0.5) + 0.5), c_mask).astype(np.uint32)
        neg = (q[:, i] < 0).astype(np.uint32)
        comp = np.where(keep, (comp << np.uint32(10)) | (neg << np.uint32(9)) | mag, comp)
    return comp.astype("<u4").view(np.uint8).reshape(n, 4)


def _unpack_smallest_three(b: np.ndarray) -> np.ndarray:  # [N, 4] uint8 -> [N, 4] xyzw
    comp = np.ascontiguousarray(b).view("<u4").reshape(-1).astype(np.uint32)
    n = comp.size
    big = (comp >> np.uint32(30)).astype(np.int64)
    q = np.zeros((n, 4), np.float64)
    work = comp.copy()
    c_mask = np.uint32((1 << 9) - 1)
    for i in range(3, -1, -1):
        keep = big != i
        mag = (work & c_mask).astype(np.float64)
        neg = ((work >> np.uint32(9)) & np.uint32(1)).astype(bool)
        val = math.sqrt(0.5) * mag / float(c_mask)
        q[:, i] = np.where(keep, np.where(neg, -val, val), 0.0)
        work = np.where(keep, work >> np.uint32(10), work)
    q[np.arange(n), big] = np.sqrt(np.maximum(0.0, 1.0 - (q * q).sum(axis=1)))
    return q.astype(np.float32)


def _spz_sh_quantize(sh: np.ndarray) -> np.ndarray:  # [N, K-1, 3] -> uint8, buckets per band
    q = np.rint(sh.astype(np.float64) * 128.0) + 128.0
    out = np.empty(q.shape, np.uint8)
    for k in range(q.shape[1]):
        bucket = 8 if k < 3 else 16  # 5 bits for degree 1, 4 bits for degrees 2 and 3
        v = np.floor((q[:, k] + bucket // 2) / bucket) * bucket
        out[:, k] = np.clip(v, 0, 255).astype(np.uint8)
    return out


def encode_spz(splats: Mapping[str, np.ndarray], version: Literal[2, 3] = 3, antialiased: bool = False) -> bytes:
    """SPZ bytes (gzip), version 3 (smallest-three rotations) or 2 (see the module docstring)."""
    if version not in (2, 3):
        raise ValueError(f"version must be 2 or 3, got {version!r}")
    g = check_gaussians(splats)
    n = g["means"].shape[0]
    if n > SPZ_MAX_POINTS:
        raise ValueError(f"SPZ holds at most {SPZ_MAX_POINTS} splats, got {n}")
    krest = g["shN"].shape[1]
    degree = {0: 0, 3: 1, 8: 2, 15: 3}[krest]
    bits = _spz_fractional_bits(g["means"])
    fixed = np.rint(g["means"].astype(np.float64) * (1 << bits)).astype(np.int64)
    fixed = np.clip(fixed, -(1 << 23), (1 << 23) - 1) & 0xFFFFFF
    pos = np.stack([(fixed >> s) & 0xFF for s in (0, 8, 16)], axis=-1).astype(np.uint8)  # [N, 3, 3]
    alphas = _u8(_sigmoid(g["opacities"]) * 255.0)
    colors = _u8(g["sh0"][:, 0, :].astype(np.float64) * (SPZ_COLOR_SCALE * 255.0) + 127.5)
    scales = _u8((g["scales"].astype(np.float64) + 10.0) * 16.0)
    q_xyzw = np.roll(_unit(g["quats"]), -1, axis=1)
    if version == 3:
        rots = _pack_smallest_three(q_xyzw)
    else:
        q = np.where(q_xyzw[:, 3:4] < 0, -q_xyzw, q_xyzw)
        rots = _u8(q[:, :3].astype(np.float64) * 127.5 + 127.5)
    sh = _spz_sh_quantize(g["shN"])
    header = struct.pack("<IIIBBBB", SPZ_MAGIC, version, n, degree, bits, 1 if antialiased else 0, 0)
    body = b"".join(a.tobytes() for a in (pos, alphas, colors, scales, rots, sh))
    return gzip.compress(header + body, compresslevel=6, mtime=0)


def decode_spz(data: bytes, source: str = ".spz") -> dict[str, np.ndarray]:
    """Read SPZ versions 2 and 3 (gzip container, no extensions)."""
    try:
        raw = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as e:
        raise SceneFileError(f"{source}: not a gzip-compressed SPZ file ({e})") from None
    if len(raw) < 16:
        raise SceneFileError(f"{source}: SPZ header is truncated ({len(raw)} bytes)")
    magic, version, n, degree, bits, flags, _ = struct.unpack("<IIIBBBB", raw[:16])
    if magic != SPZ_MAGIC:
        raise SceneFileError(f"{source}: wrong SPZ magic 0x{magic:08x} (expected 0x{SPZ_MAGIC:08x} 'NGSP')")
    if version not in (2, 3):
        raise SceneFileError(f"{source}: SPZ version {version} is not supported (this reader reads 2 and 3)")
    if degree > 3:
        raise SceneFileError(f"{source}: SPZ SH degree {degree} is not supported (0..3)")
    if flags & 0x2:
        raise SceneFileError(f"{source}: SPZ extensions (flag 0x2) are not supported")
    if bits > 23:
        raise SceneFileError(f"{source}: SPZ fractional bits {bits} exceed the 24-bit positions")
    krest = (degree + 1) ** 2 - 1
    rot_b = 4 if version == 3 else 3
    sizes = [9 * n, n, 3 * n, 3 * n, rot_b * n, 3 * krest * n]
    if len(raw) - 16 != sum(sizes):
        raise SceneFileError(f"{source}: SPZ body holds {len(raw) - 16} bytes; {n} splats of degree {degree} "
                             f"need {sum(sizes)}")  # fmt: skip
    buf = np.frombuffer(raw, np.uint8, offset=16)
    parts, off = [], 0
    for s in sizes:
        parts.append(buf[off : off + s])
        off += s
    pos = parts[0].reshape(n, 3, 3).astype(np.int32)
    fixed = pos[..., 0] | (pos[..., 1] << 8) | (pos[..., 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    if version == 3:
        q_xyzw = _unpack_smallest_three(parts[4].reshape(n, 4))
    else:
        xyz = parts[4].reshape(n, 3).astype(np.float64) / 127.5 - 1.0
        w = np.sqrt(np.maximum(0.0, 1.0 - (xyz * xyz).sum(axis=1)))
        q_xyzw = np.concatenate([xyz, w[:, None]], axis=1).astype(np.float32)
    return {
        "means": (fixed.astype(np.float64) / (1 << bits)).astype(np.float32),
        "quats": _unit(np.roll(q_xyzw, 1, axis=1)),
        "scales": (parts[3].reshape(n, 3).astype(np.float32) / 16.0 - 10.0).astype(np.float32),
        "opacities": _logit(parts[1].astype(np.float32) / 255.0),
        "sh0": ((parts[2].reshape(n, 1, 3).astype(np.float32) / 255.0 - 0.5) / SPZ_COLOR_SCALE).astype(np.float32),
        "shN": ((parts[5].reshape(n, krest, 3).astype(np.float32) - 128.0) / 128.0).astype(np.float32),
    }


# ---------------------------------------------------------------------------------------------- SOG
def kmeans_1d(values: np.ndarray, k: int = 256, iters: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Scalar k-means: ``(codebook [k] ascending float32, labels uint8/uint16 like values)``.

    Initialized at quantiles; each Lloyd step assigns by binary search between sorted centroids."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return np.zeros(k, np.float32), np.zeros(np.shape(values), np.uint8)
    cb = np.quantile(v, (np.arange(k) + 0.5) / k)
    for _ in range(iters):
        cb = np.sort(cb)
        lab = np.searchsorted((cb[1:] + cb[:-1]) / 2.0, v)
        sums = np.bincount(lab, weights=v, minlength=k)
        cnt = np.bincount(lab, minlength=k)
        cb = np.where(cnt > 0, sums / np.maximum(cnt, 1), cb)
    cb = np.sort(cb).astype(np.float32)
    lab = np.searchsorted((cb[1:].astype(np.float64) + cb[:-1]) / 2.0, v)
    dtype = np.uint8 if k <= 256 else np.uint16
    return cb, lab.astype(dtype).reshape(np.shape(values))


def kmeans(
    x: np.ndarray, k: int, iters: int = 5, seed: int = 0, fit_max: int = 32768
) -> tuple[np.ndarray, np.ndarray]:
    """Vector k-means ``[M, D] -> (centroids [k, D] float32, labels [M] int64)``; fitted on a random
    subset of at most ``fit_max`` rows (torch matmul distances in chunks), then every row assigned."""
    import torch

    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    m = xt.shape[0]
    g = torch.Generator().manual_seed(seed)
    fit = xt[torch.randperm(m, generator=g)[: max(k, min(m, fit_max))]]
    cent = fit[torch.randperm(fit.shape[0], generator=g)[:k]].clone()

    def assign(pts: torch.Tensor) -> torch.Tensor:
        out = torch.empty(pts.shape[0], dtype=torch.int64)
        c2 = (cent * cent).sum(1)
        step = max(1, (1 << 24) // max(k, 1))
        for a in range(0, pts.shape[0], step):
            p = pts[a : a + step]
            out[a : a + step] = (c2[None, :] - 2.0 * p @ cent.T).argmin(1)
        return out

    for _ in range(iters):
        lab = assign(fit)
        sums = torch.zeros_like(cent).index_add_(0, lab, fit)
        cnt = torch.bincount(lab, minlength=k).to(fit.dtype)
        cent = torch.where(cnt[:, None] > 0, sums / cnt.clamp_min(1)[:, None], cent)
    return cent.numpy(), assign(xt).numpy()


def _webp(rgba: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgba, dtype=np.uint8), "RGBA").save(
        buf, format="WEBP", lossless=True, quality=50, method=4, exact=True
    )
    return buf.getvalue()


def _sog_size(n: int) -> tuple[int, int]:
    w = max(4, int(math.ceil(math.sqrt(max(n, 1)) / 4.0)) * 4)
    h = max(4, int(math.ceil(max(n, 1) / w / 4.0)) * 4)
    return w, h


def sog_order(means: np.ndarray) -> np.ndarray:
    """Morton order of the means over their bounding box (10 bits per axis), as SOG writers use."""
    from scenezip.quant.morton import morton_order

    m = np.asarray(means, np.float64)
    if m.shape[0] == 0:
        return np.zeros(0, np.int64)
    lo, hi = m.min(0), m.max(0)
    q = np.floor((m - lo) / np.where(hi > lo, hi - lo, 1.0) * 1023.0 + 0.5).astype(np.uint16)
    return np.asarray(morton_order(q), dtype=np.int64)


def encode_sog(splats: Mapping[str, np.ndarray], sh_palette: int = SOG_PALETTE, kmeans_iters: int = 10,
               seed: int = 0) -> bytes:  # fmt: skip
    """SOG v2 bundle bytes (zip of meta.json + lossless WebP; see the module docstring).

    Args:
        sh_palette: maximum palette entries for the higher SH bands (at most 65536).
        kmeans_iters: Lloyd iterations of the 256-entry codebooks (the palette k-means runs at most 5).
    """
    if not 1 <= sh_palette <= 65536:
        raise ValueError(f"sh_palette must be in 1..65536, got {sh_palette}")
    g = check_gaussians(splats)
    order = sog_order(g["means"])
    g = {k: v[order] for k, v in g.items()}
    n = g["means"].shape[0]
    w, h = _sog_size(n)

    def image(cols: np.ndarray, alpha: np.ndarray | int = 255) -> np.ndarray:
        img = np.zeros((w * h, 4), np.uint8)
        img[:n, : cols.shape[1]] = cols
        img[:n, 3] = alpha
        img[n:, 3] = 255
        return img.reshape(h, w, 4)

    files: dict[str, bytes] = {}
    lg = np.sign(g["means"].astype(np.float64)) * np.log1p(np.abs(g["means"].astype(np.float64)))
    lo, hi = (lg.min(0), lg.max(0)) if n else (np.zeros(3), np.zeros(3))
    code = np.rint(65535.0 * (lg - lo) / np.where(hi > lo, hi - lo, 1.0)).astype(np.int64)
    code = np.clip(code, 0, 65535)
    files["means_l.webp"] = _webp(image((code & 0xFF).astype(np.uint8)))
    files["means_u.webp"] = _webp(image((code >> 8).astype(np.uint8)))

    q = _unit(g["quats"]).astype(np.float64)
    big = np.argmax(np.abs(q), axis=1) if n else np.zeros(0, np.int64)
    q = np.where(q[np.arange(n), big][:, None] < 0, -q, q)
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[big]
    small = np.take_along_axis(q, others, axis=1) if n else np.zeros((0, 3))
    files["quats.webp"] = _webp(image(_u8(255.0 * (small * math.sqrt(2.0) * 0.5 + 0.5)), (252 + big).astype(np.uint8)))

    scale_cb, scale_lab = kmeans_1d(g["scales"], 256, kmeans_iters)
    files["scales.webp"] = _webp(image(scale_lab))
    dc_cb, dc_lab = kmeans_1d(g["sh0"][:, 0, :], 256, kmeans_iters)
    files["sh0.webp"] = _webp(image(dc_lab, _u8(_sigmoid(g["opacities"]) * 255.0)))

    meta = {
        "version": 2,
        "asset": {"generator": "scenezip"},
        "count": int(n),
        "means": {"mins": lo.tolist(), "maxs": hi.tolist(), "files": ["means_l.webp", "means_u.webp"]},
        "scales": {"codebook": scale_cb.tolist(), "files": ["scales.webp"]},
        "quats": {"files": ["quats.webp"]},
        "sh0": {"codebook": dc_cb.tolist(), "files": ["sh0.webp"]},
    }
    krest = g["shN"].shape[1]
    if krest and n:
        rest = g["shN"].transpose(0, 2, 1).reshape(n, 3 * krest)  # channel-major, as PLY f_rest
        if n <= sh_palette:
            centroids, labels = rest, np.arange(n)
        else:
            centroids, labels = kmeans(rest, sh_palette, min(kmeans_iters, 5), seed)
        count = centroids.shape[0]
        sh_cb, sh_lab = kmeans_1d(centroids, 256, kmeans_iters)  # [count, 3 K'] uint8
        rows = int(math.ceil(count / 64))
        cimg = np.zeros((rows * 64 * krest, 4), np.uint8)
        lab3 = sh_lab.reshape(count, 3, krest).transpose(0, 2, 1)  # [count, K', 3]: R, G, B index
        idx = np.arange(count)
        pix = ((idx // 64) * (64 * krest) + (idx % 64) * krest)[:, None] + np.arange(krest)[None, :]
        cimg[pix.reshape(-1), :3] = lab3.reshape(-1, 3)
        cimg[:, 3] = 255
        files["shN_centroids.webp"] = _webp(cimg.reshape(rows, 64 * krest, 4))
        lab16 = labels.astype(np.int64)
        files["shN_labels.webp"] = _webp(image(np.stack([lab16 & 0xFF, lab16 >> 8], 1).astype(np.uint8)))
        meta["shN"] = {"count": int(count), "bands": {3: 1, 8: 2, 15: 3}[krest], "codebook": sh_cb.tolist(),
                       "files": ["shN_centroids.webp", "shN_labels.webp"]}  # fmt: skip
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("meta.json", json.dumps(meta))
        for name, blob in files.items():
            z.writestr(name, blob)
    return buf.getvalue()


def _read_webp(blob: bytes, name: str, source: str) -> np.ndarray:
    from PIL import Image

    try:
        img = Image.open(io.BytesIO(blob))
        img.load()
        return np.asarray(img.convert("RGBA"), dtype=np.uint8)
    except Exception as e:  # noqa: BLE001 - any decoder failure means a bad member
        raise SceneFileError(f"{source}: SOG image {name!r} cannot be decoded ({type(e).__name__}: {e})") from None


def decode_sog(data: bytes, source: str = ".sog") -> dict[str, np.ndarray]:
    """Read a SOG v2 bundle (zip) into the plain mapping."""
    try:
        z = zipfile.ZipFile(io.BytesIO(data))
        members = {i.filename: i for i in z.infolist()}
    except (zipfile.BadZipFile, OSError) as e:
        raise SceneFileError(f"{source}: not a SOG bundle (zip) ({e})") from None

    def load(name) -> bytes:
        if not isinstance(name, str) or name not in members:
            raise SceneFileError(f"{source}: SOG bundle has no member {name!r}")
        try:
            return z.read(name)
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise SceneFileError(f"{source}: SOG member {name!r} is corrupt ({e})") from None

    try:
        meta = json.loads(load("meta.json"))
        n = int(meta["count"])
        version = meta.get("version")
        mins = np.asarray(meta["means"]["mins"], np.float64)
        maxs = np.asarray(meta["means"]["maxs"], np.float64)
        fm, fq = meta["means"]["files"], meta["quats"]["files"]
        scale_cb = np.asarray(meta["scales"]["codebook"], np.float32)
        dc_cb = np.asarray(meta["sh0"]["codebook"], np.float32)
        fs, f0 = meta["scales"]["files"], meta["sh0"]["files"]
    except SceneFileError:
        raise
    except Exception as e:  # noqa: BLE001 - missing keys, wrong types, bad JSON alike
        raise SceneFileError(f"{source}: SOG meta.json is malformed ({type(e).__name__}: {e})") from None
    if version != 2:
        raise SceneFileError(f"{source}: SOG version {version!r} is not supported (this reader reads 2)")
    if n < 0 or mins.shape != (3,) or maxs.shape != (3,) or scale_cb.ndim != 1 or dc_cb.ndim != 1:
        raise SceneFileError(f"{source}: SOG meta.json has a bad count, means range or codebook")
    if not (np.all(np.isfinite(mins)) and np.all(np.isfinite(maxs)) and np.all(np.isfinite(scale_cb))
            and np.all(np.isfinite(dc_cb))):  # fmt: skip
        raise SceneFileError(f"{source}: SOG meta.json holds non-finite numbers")

    def img(name) -> np.ndarray:
        a = _read_webp(load(name), name, source).reshape(-1, 4)
        if a.shape[0] < n:
            raise SceneFileError(f"{source}: SOG image {name!r} holds {a.shape[0]} pixels for {n} splats")
        return a[:n].astype(np.int64)

    lo_, hi_ = img(fm[0]), img(fm[1])
    code = lo_[:, :3] | (hi_[:, :3] << 8)
    rng = np.where(maxs > mins, maxs - mins, 1.0)
    lg = mins + rng * code / 65535.0
    means = (np.sign(lg) * np.expm1(np.abs(lg))).astype(np.float32)

    qa = img(fq[0])
    tag = qa[:, 3] - 252
    if np.any((tag < 0) | (tag > 3)):
        raise SceneFileError(f"{source}: SOG quats.webp holds an alpha tag outside 252..255")
    small = (qa[:, :3] / 255.0 * 2.0 - 1.0) / math.sqrt(2.0)
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[tag]
    q = np.zeros((n, 4), np.float64)
    np.put_along_axis(q, others, small, axis=1)
    q[np.arange(n), tag] = np.sqrt(np.maximum(0.0, 1.0 - (small * small).sum(1)))

    sa, ca = img(fs[0]), img(f0[0])
    if sa[:, :3].max(initial=0) >= scale_cb.size or ca[:, :3].max(initial=0) >= dc_cb.size:
        raise SceneFileError(f"{source}: SOG codebook index beyond the codebook")
    out = {
        "means": means,
        "quats": _unit(q.astype(np.float32)),
        "scales": scale_cb[sa[:, :3]],
        "opacities": _logit(ca[:, 3].astype(np.float32) / 255.0),
        "sh0": dc_cb[ca[:, :3]][:, None, :],
        "shN": _empty_sh(n),
    }
    if "shN" in meta:
        try:
            s = meta["shN"]
            bands, count = int(s["bands"]), int(s["count"])
            sh_cb = np.asarray(s["codebook"], np.float32)
            fc, fl = s["files"]
        except Exception as e:  # noqa: BLE001
            raise SceneFileError(f"{source}: SOG meta.json shN entry is malformed ({e})") from None
        if bands not in (1, 2, 3) or count < 1 or sh_cb.ndim != 1 or not np.all(np.isfinite(sh_cb)):
            raise SceneFileError(f"{source}: SOG shN has bands {bands} (1..3 expected) or a bad palette/codebook")
        krest = (bands + 1) ** 2 - 1
        cimg = _read_webp(load(fc), fc, source)
        if cimg.shape[1] != 64 * krest or cimg.shape[0] * 64 < count:
            raise SceneFileError(f"{source}: SOG shN_centroids.webp is {cimg.shape[1]}x{cimg.shape[0]}, "
                                 f"expected width {64 * krest} and {count} entries")  # fmt: skip
        if cimg[..., :3].max(initial=0) >= sh_cb.size:
            raise SceneFileError(f"{source}: SOG shN codebook index beyond the codebook")
        la = img(fl)
        labels = la[:, 0] | (la[:, 1] << 8)
        flat = cimg.reshape(-1, 4)
        pix = ((labels // 64) * (64 * krest) + (labels % 64) * krest)[:, None] + np.arange(krest)[None, :]
        pix = np.minimum(pix, flat.shape[0] - 1)
        vals = sh_cb[flat[pix][..., :3]]  # [n, K', 3]
        vals[labels >= count] = 0.0
        out["shN"] = vals.astype(np.float32)
    return out


# ---------------------------------------------------------------------------------------------- glTF
def glb_attribute_names(krest: int) -> list[str]:
    """SH attribute semantics for ``K - 1 = krest`` higher bands, degree 0 first (gsplat coefficient order)."""
    names = [f"{KHR}:SH_DEGREE_0_COEF_0"]
    degree = {0: 0, 3: 1, 8: 2, 15: 3}[krest]
    for l in range(1, degree + 1):  # noqa: E741 - the SH degree
        names += [f"{KHR}:SH_DEGREE_{l}_COEF_{n}" for n in range(2 * l + 1)]
    return names


def encode_glb(splats: Mapping[str, np.ndarray]) -> bytes:
    """glTF 2.0 binary with one ``KHR_gaussian_splatting`` point primitive (see the module docstring)."""
    g = check_gaussians(splats)
    n, krest = g["means"].shape[0], g["shN"].shape[1]
    sh = np.concatenate([g["sh0"], g["shN"]], axis=1)  # [N, K, 3]
    rgb = np.clip(0.5 + SH_C0 * g["sh0"][:, 0, :], 0.0, 1.0)
    opacity = _sigmoid(g["opacities"])
    attrs: list[tuple[str, np.ndarray, str]] = [
        ("POSITION", g["means"], "VEC3"),
        (f"{KHR}:ROTATION", np.roll(_unit(g["quats"]), -1, axis=1), "VEC4"),
        (f"{KHR}:SCALE", np.exp(g["scales"]), "VEC3"),
        (f"{KHR}:OPACITY", opacity[:, None], "SCALAR"),
    ]
    attrs += [(name, sh[:, k, :], "VEC3") for k, name in enumerate(glb_attribute_names(krest))]
    attrs.append(("COLOR_0", np.concatenate([rgb, opacity[:, None]], axis=1), "VEC4"))
    blobs, views, accessors, attributes, offset = [], [], [], {}, 0
    for i, (name, arr, kind) in enumerate(attrs):
        a = np.ascontiguousarray(arr, dtype="<f4")
        blob = a.tobytes()
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(blob), "target": 34962})
        acc = {"bufferView": i, "componentType": 5126, "count": int(n), "type": kind}
        if name == "POSITION":
            acc["min"] = a.min(0).tolist() if n else [0.0, 0.0, 0.0]
            acc["max"] = a.max(0).tolist() if n else [0.0, 0.0, 0.0]
        accessors.append(acc)
        attributes[name] = i
        blobs.append(blob)
        offset += len(blob)  # float32 arrays keep every view 4-byte aligned
    doc = {
        "asset": {"version": "2.0", "generator": "scenezip"},
        "extensionsUsed": [KHR],
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": attributes, "mode": 0, "extensions": {
            KHR: {"kernel": "ellipse", "colorSpace": "srgb_rec709_display", "projection": "perspective",
                  "sortingMethod": "cameraDistance"}}}]}],
        "accessors": accessors,
        "bufferViews": views,
        "buffers": [{"byteLength": offset}],
    }  # fmt: skip
    js = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    js += b" " * (-len(js) % 4)
    binary = b"".join(blobs)
    binary += b"\x00" * (-len(binary) % 4)
    total = 12 + 8 + len(js) + 8 + len(binary)
    return b"".join([struct.pack("<III", GLB_MAGIC, 2, total), struct.pack("<II", len(js), GLB_JSON), js,
                     struct.pack("<II", len(binary), GLB_BIN), binary])  # fmt: skip


def decode_glb(data: bytes, source: str = ".glb") -> dict[str, np.ndarray]:
    """Read the first ``KHR_gaussian_splatting`` primitive of a GLB with float attributes."""
    if len(data) < 20:
        raise SceneFileError(f"{source}: GLB is truncated ({len(data)} bytes)")
    magic, version, total = struct.unpack("<III", data[:12])
    if magic != GLB_MAGIC or version != 2:
        raise SceneFileError(f"{source}: not a glTF 2.0 binary (magic 0x{magic:08x}, version {version})")
    if total != len(data):
        raise SceneFileError(f"{source}: GLB header says {total} bytes, the file holds {len(data)}")
    chunks, off = {}, 12
    while off + 8 <= len(data):
        length, kind = struct.unpack("<II", data[off : off + 8])
        if off + 8 + length > len(data):
            raise SceneFileError(f"{source}: GLB chunk at byte {off} runs past the end of the file")
        chunks.setdefault(kind, data[off + 8 : off + 8 + length])
        off += 8 + length
    if GLB_JSON not in chunks:
        raise SceneFileError(f"{source}: GLB has no JSON chunk")
    binary = chunks.get(GLB_BIN, b"")
    try:
        doc = json.loads(chunks[GLB_JSON])
        prims = [p for m in doc.get("meshes", []) for p in m.get("primitives", []) if KHR in p.get("extensions", {})]
    except Exception as e:  # noqa: BLE001
        raise SceneFileError(f"{source}: GLB JSON chunk is malformed ({e})") from None
    if not prims:
        raise SceneFileError(f"{source}: GLB has no {KHR} primitive")
    attrs = prims[0].get("attributes", {})
    widths = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}

    def get(name: str) -> np.ndarray:
        if name not in attrs:
            raise SceneFileError(f"{source}: GLB primitive has no attribute {name!r}")
        try:
            acc = doc["accessors"][attrs[name]]
            view = doc["bufferViews"][acc["bufferView"]]
            if acc["componentType"] != 5126 or view.get("byteStride", 0) not in (0, 4 * widths[acc["type"]]):
                raise SceneFileError(f"{source}: GLB attribute {name!r} is not tightly packed float32")
            w, cnt = widths[acc["type"]], int(acc["count"])
            start = int(view.get("byteOffset", 0)) + int(acc.get("byteOffset", 0))
            nbytes = 4 * w * cnt
        except SceneFileError:
            raise
        except Exception as e:  # noqa: BLE001
            raise SceneFileError(f"{source}: GLB accessor for {name!r} is malformed ({e})") from None
        if start < 0 or start + nbytes > len(binary):
            raise SceneFileError(f"{source}: GLB attribute {name!r} runs past the binary chunk")
        return np.frombuffer(binary, "<f4", count=w * cnt, offset=start).reshape(cnt, w).astype(np.float32)

    means = get("POSITION")
    n = means.shape[0]
    krest = 0
    for d, k in ((1, 3), (2, 8), (3, 15)):
        if f"{KHR}:SH_DEGREE_{d}_COEF_0" in attrs:
            krest = k
    sh = np.stack([get(nm) for nm in glb_attribute_names(krest)], axis=1)  # [N, K, 3]
    scale = get(f"{KHR}:SCALE")
    parts = {"rotation": get(f"{KHR}:ROTATION"), "scale": scale, "opacity": get(f"{KHR}:OPACITY")}
    if any(p.shape[0] != n for p in parts.values()) or sh.shape[0] != n:
        raise SceneFileError(f"{source}: GLB attributes have different counts")
    if np.any(scale <= 0):
        raise SceneFileError(f"{source}: GLB {KHR}:SCALE holds non-positive values (it is linear)")
    return {
        "means": means,
        "quats": _unit(np.roll(parts["rotation"], 1, axis=1)),
        "scales": np.log(scale).astype(np.float32),
        "opacities": _logit(parts["opacity"][:, 0]),
        "sh0": sh[:, :1].copy(),
        "shN": sh[:, 1:].copy(),
    }


# ---------------------------------------------------------------------------------------------- dispatch
ENCODERS: dict[str, Callable[[Mapping[str, np.ndarray]], bytes]] = {
    "splat": encode_splat, "spz": encode_spz, "sog": encode_sog, "glb": encode_glb,
}  # fmt: skip
DECODERS: dict[str, Callable[[bytes, str], dict[str, np.ndarray]]] = {
    "splat": decode_splat, "spz": decode_spz, "sog": decode_sog, "glb": decode_glb,
}  # fmt: skip


def write_splats(path: str | os.PathLike, splats: Mapping[str, np.ndarray], fmt: SplatFormat, **options) -> Path:
    """Write Gaussians in ``fmt`` (``ply``, ``splat``, ``spz``, ``sog``, ``glb``) to ``path`` atomically.

    ``options`` go to the encoder (``version`` for SPZ; ``sh_palette``, ``kmeans_iters`` for SOG)."""
    if fmt == "ply":
        return write_ply(path, splats)
    if fmt not in ENCODERS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    return write_atomic(path, ENCODERS[fmt](splats, **options))


def read_splats(path: str | os.PathLike, fmt: SplatFormat | None = None) -> dict[str, np.ndarray]:
    """Read a file written in any of :data:`FORMATS` (``fmt`` from the suffix when None)."""
    path = Path(path)
    fmt = fmt or path.suffix.lower().lstrip(".")
    if fmt == "ply":
        return read_ply(path)
    if fmt not in DECODERS:
        raise SceneFileError(f"{path}: unknown splat format {fmt!r} (known: {', '.join(FORMATS)})")
    if not path.is_file():
        raise SceneFileError(f"{path}: no such file")
    return DECODERS[fmt](path.read_bytes(), str(path))


def flatten_surfels(scales: np.ndarray, ratio: float = 1e-3, floor: float = -13.8) -> np.ndarray:
    """Log scales of 2D surfels with a finite third axis, the convention surfel exports use for 3DGS
    viewers: the degenerate third axis becomes ``ratio`` times the smaller of the other two (a thin disc),
    never below ``exp(floor) ~ 1e-6``: ``s2 = max(min(s0, s1) + ln(ratio), floor)``."""
    s = np.array(scales, dtype=np.float32, copy=True)
    s[:, 2] = np.maximum(np.minimum(s[:, 0], s[:, 1]) + np.float32(math.log(ratio)), floor)
    return s


__all__ = [
    "FORMATS", "SplatFormat", "write_splats", "read_splats", "encode_splat", "decode_splat", "splat_order",
    "encode_spz", "decode_spz", "encode_sog", "decode_sog", "encode_glb", "decode_glb", "glb_attribute_names",
    "kmeans_1d", "kmeans", "sog_order", "flatten_surfels",
]  # fmt: skip
