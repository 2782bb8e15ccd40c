"""Compact-3DGS (Lee et al., CVPR 2024): the ``c3dgs`` model and its ``.scz`` stream contract.

Written by hand in scenezip's layouts from the paper's recipe, reusing :mod:`scenezip.quant` (masks,
scalar quantizers, residual VQ, codecs) and :class:`scenezip.fields.color_field.ColorField`:

- Gaussians keep ``means [N, 3]``, ``quats [N, 4]``, ``scales [N, 3]`` (log), ``opacities [N]`` (logit)
  and a mask logit ``masks [N]`` in ``model.splats`` (gsplat's names, like GaussianModel); the colour
  comes from a hash-grid colour field evaluated per camera, so one camera is rasterized per call.
- The hard mask multiplies the *activated* scales and opacities (:func:`scenezip.quant.mask.apply_mask`).
- Base colours (``sh0``, optional, ours): each Gaussian may keep a degree-0 SH colour that the field's
  output is added to before its head, so the field only learns the view-dependent rest. Measured on lego
  (100 px, a 37k-Gaussian 3dgs run): the higher SH bands are worth 1.55 dB, 3-stage R-VQ of the DC costs
  0.004 dB, and a field that must learn all of the colour lost 1.3-1.9 dB in short runs.
- With ``use_rvq``, the activated scales (``exp``) and the normalized quaternions go through residual VQ
  (Compact-3DGS quantizes ``get_scaling`` and ``get_rotation``, the activated values). The covariance
  only sees ``scale^2``, so a code sum that dips below zero does no harm.

Post-processing (:meth:`C3DGSModel.to_streams`, stream version 3), every step exact so the file decodes
bit for bit (version 2 files, without base colours, are read; version 1 files are refused with a message
saying so):

- masked Gaussians are dropped (``keep_indices``);
- positions: uniform per axis over the box of the kept means with ``position_bits`` bits (None: the fewest
  that keep the rounding error under 0.1 of the median smallest axis, :func:`auto_position_bits`), Gaussians
  sorted by Morton code, and the sorted codes stored as split Morton codes (:func:`encode_positions`:
  ``rans`` of the deltas of their high parts, the low bits packed): about ``3 bits - log2 N + 2`` bits a
  point. Demo scene (5976 Gaussians, 16 bits): 26.2 kB vs 35.9 kB raw (per-axis ``rans-delta`` was larger);
- opacities: 8-bit uniform on the *logit* over its range, ``rans``. The logit is what the model stores,
  so a decoded model holds exactly the dequantized value and renders exactly like the post-processed one
  (and 8 logit bits resolve opacities near 0 and 1 better than 8 linear bits);
- scales, rotations (and base colours, ``color_indices_k`` / ``color_codebooks``, stream version 3): R-VQ
  indices, one ``rans`` stream per stage (``scale_indices_0`` ...), whose tables
  follow each stage (the first stages are peaked, the last near uniform: one table for all stages cost
  21.9 kB instead of 12.7 kB for the demo's scale indices); codebooks float16 ``raw``. Indices are chosen
  against the float16-rounded codebooks, i.e. against what the file holds;
- colour field: the hash table by :func:`scenezip.fields.hash_codec.encode_hash_table` (per-level steps,
  masked entries, per-level ``rans``). A model trained with a hash codec (``hash_codec`` settings: the
  field reads its table through a :class:`~scenezip.fields.hash_codec.HashTableCompressor`, masked and
  quantized, with its rate term in the loss) stores the table it rendered with; otherwise values with
  ``|v| <= hash_zero_threshold`` are zeroed (Compact-3DGS: 0.1) and per-level 8-bit steps fitted. MLP
  float16 ``raw``.

A decoded (or :meth:`C3DGSModel.quantized_copy`) model is *frozen*: it holds the R-VQ indices as buffers
and renders the code sums directly, with every mask logit at the init value (all kept).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scenezip.errors import SceneFileError
from scenezip.fields.color_field import DEFAULT_BOUNDS, ColorField, ColorFieldConfig, contract
from scenezip.fields.hash_codec import HashTableCompressor, decode_hash_table, encode_hash_table
from scenezip.quant.codecs import dequantize_uniform, quantize_uniform
from scenezip.quant.mask import MASK_INIT_LOGIT, MASK_THRESHOLD, apply_mask, keep_indices
from scenezip.quant.morton import morton_encode, morton_order
from scenezip.quant.rvq import ResidualVQ, rvq_decode, rvq_encode
from scenezip.quant.scalar import zero_small
from scenezip.splatting.gaussians import GaussianModel, save_model_dict

METHOD = "c3dgs"
MODEL_FORMAT = "scenezip.c3dgs_model"
FORMAT_VERSION = 3  # 3: optional per-Gaussian base colour (2 is read: no base colour; 1 is not read)
READ_VERSIONS = (2, 3)
SPLAT_NAMES = ("means", "quats", "scales", "opacities", "masks")
DC_NAME = "sh0"  # the per-Gaussian base colour's splat name (a degree-0 SH coefficient, as in GaussianModel)
DC_STAGES = 3  # R-VQ stages of the base colour (lego, 37k Gaussians of a 3dgs run: 3 stages of 64 cost 0.004 dB)
POSITION_BITS = None  # None: auto_position_bits
POSITION_TOLERANCE = 0.1  # auto: the largest position error is at most this fraction of a typical Gaussian's size
POSITION_PERCENTILE = 50  # auto: the typical Gaussian (percentile of the smallest axis); 1 cost 16 bits on lego for nothing
MAX_POSITION_BITS = 21  # Morton codes of 3 x 21 bits fit 63 bits
OPACITY_BITS = 8
HASH_BITS = 8
HASH_ZERO_THRESHOLD = 0.1  # without a trained hash codec, |v| <= this is zeroed before coding (Compact-3DGS)
HASH_PREFIX = "hash"


def _range(x: np.ndarray, axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(min, max)``; a constant range is widened by 1e-6 (as UniformQuantizer.from_data)."""
    x64 = np.asarray(x, dtype=np.float64)
    lo, hi = x64.min(axis=axis), x64.max(axis=axis)
    return lo, np.where(hi > lo, hi, lo + 1e-6)


def _floats(v: Any) -> list[float] | float:
    a = np.asarray(v, dtype=np.float64)
    return float(a) if a.ndim == 0 else [float(t) for t in a]


_COMPACT = (
    (2, 0x10C30C30C30C30C3),
    (4, 0x100F00F00F00F00F),
    (8, 0x1F0000FF0000FF),
    (16, 0x1F00000000FFFF),
    (32, 0x1FFFFF),
)


def _compact_bits(v: np.ndarray) -> np.ndarray:
    """Inverse of Morton spreading: bits 0, 3, 6, ... of ``[N]`` uint64 -> ``[N]`` uint64 below 2^21."""
    v = v & np.uint64(0x1249249249249249)
    for shift, mask in _COMPACT:
        v = (v | (v >> np.uint64(shift))) & np.uint64(mask)
    return v


def morton_decode(codes: np.ndarray) -> np.ndarray:
    """Integer points ``[N, 3]`` uint64 of Morton codes ``[N]`` (inverse of ``quant.morton.morton_encode``)."""
    c = np.asarray(codes).astype(np.uint64)
    return np.stack([_compact_bits(c >> np.uint64(k)) for k in range(3)], axis=1)


def _pack_low(low: np.ndarray, n_low: int) -> np.ndarray:
    """``[N]`` uint64 values below ``2^n_low`` -> ``[ceil(N n_low / 8)]`` uint8, LSB first, pad bits 0."""
    if n_low == 0:
        return np.zeros(0, dtype=np.uint8)
    bits = ((low[:, None] >> np.arange(n_low, dtype=np.uint64)) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little")


def _unpack_low(packed: np.ndarray, n: int, n_low: int) -> np.ndarray:
    """Inverse of :func:`_pack_low`: ``[n]`` uint64."""
    if n_low == 0:
        return np.zeros(n, dtype=np.uint64)
    bits = np.unpackbits(packed, bitorder="little")[: n * n_low].reshape(n, n_low).astype(np.uint64)
    return (bits << np.arange(n_low, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)


def auto_position_bits(
    means: np.ndarray, scales: np.ndarray, tolerance: float = POSITION_TOLERANCE, percentile: float = POSITION_PERCENTILE
) -> int:
    """Fewest bits per axis (8..21) whose largest rounding error (half a step of the widest axis of the
    box of ``means [N, 3]``) is at most ``tolerance`` times the ``percentile`` of the Gaussians' smallest
    standard deviation (``scales [N, 3]``, not log). Measured on lego (100 px, 37k Gaussians of a 3dgs run,
    25 test views, everything else unquantized): 16 bits 30.6065 dB, 13 30.6065, 12 30.6052, 11 30.6042,
    10 30.6015; the 1st percentile (the rule until 2026-11-23) asked for 16, the median asks for 11.
    On the demo scene (48 px views) 11 bits decoded to the same PSNR as 16 bits."""
    m = np.asarray(means, dtype=np.float64)
    extent = float((m.max(0) - m.min(0)).max()) if m.size else 0.0
    small = float(np.percentile(np.asarray(scales, dtype=np.float64).min(1), percentile)) if m.size else 0.0
    if not (extent > 0 and small > 0 and np.isfinite(extent) and np.isfinite(small)):
        return 16
    bits = math.ceil(math.log2(max(extent / (2.0 * tolerance * small), 1.0)))
    return int(min(max(bits, 8), MAX_POSITION_BITS))


def encode_positions(q_pos: np.ndarray, bits: int) -> tuple[dict, dict[str, tuple[np.ndarray, str]]]:
    """Split-Morton coding of Morton-sorted integer points ``q_pos [N, 3]`` (each below ``2^bits``).

    The sorted codes ``c`` (``3 bits`` bits) are split at ``low_bits`` = L: the high parts ``c >> L``
    rise, so their deltas (first one 0, the first high part goes to the metadata) are small and go to
    ``rans`` (``position_high``, uint32); the low ``L`` bits are near uniform and are packed
    (``position_low``, uint8, ``raw`` unless ``rans`` of the bytes is smaller, as on lattices). This is Elias-Fano coding with an entropy-coded upper half: about
    ``3 bits - log2 N + 2`` bits a point instead of ``3 bits``. L is chosen by measured size.
    Returns ``(metadata, streams)``."""
    from scenezip.quant.codecs import get_codec

    codes = morton_encode(q_pos).astype(np.uint64)
    if codes.size > 1 and bool(np.any(codes[1:] < codes[:-1])):
        raise ValueError("q_pos must be sorted by Morton code")
    n, total = codes.size, 3 * bits
    centre = int(np.clip(np.floor(np.log2(max(2.0 ** total / max(n, 1), 1.0))), 0, total))
    best = None
    for n_low in range(max(0, centre - 3), min(total, centre + 3) + 1):
        high = codes >> np.uint64(n_low)
        delta = np.diff(high, prepend=high[:1])
        if delta.size and int(delta.max()) >= 1 << 32:
            continue
        d32 = delta.astype(np.uint32)
        low = _pack_low(codes & np.uint64((1 << n_low) - 1), n_low)
        low_codec = "rans" if low.size and len(get_codec("rans").encode(low)[0]) < low.size else "raw"
        size = len(get_codec("rans").encode(d32)[0]) + len(get_codec(low_codec).encode(low)[0])
        if best is None or size < best[0]:
            best = (size, n_low, int(high[0]) if n else 0, d32, low, low_codec)
    _, n_low, first, d32, low, low_codec = best
    meta = {"bits": bits, "low_bits": n_low, "first_high": first}
    return meta, {"position_high": (d32, "rans"), "position_low": (low, low_codec)}


def decode_positions(high_deltas: np.ndarray, low: np.ndarray, meta: dict, n: int, source: str) -> np.ndarray:
    """Inverse of :func:`encode_positions`: ``[n, 3]`` uint64 integer points; checks every count and range."""
    bits = meta["bits"]
    n_low, first = meta.get("low_bits"), meta.get("first_high")
    total = 3 * bits
    if not isinstance(n_low, int) or isinstance(n_low, bool) or not 0 <= n_low <= total:
        _fail(source, f"metadata positions.low_bits must be an integer in [0, {total}], got {n_low!r}")
    if not isinstance(first, int) or isinstance(first, bool) or not 0 <= first < 1 << (total - n_low):
        _fail(source, f"metadata positions.first_high must be an integer in [0, 2^{total - n_low}), got {first!r}")
    if high_deltas.shape != (n,) or high_deltas.dtype != np.uint32:
        _fail(source, f"stream 'position_high' must be uint32 [{n}], got {high_deltas.dtype.name} {list(high_deltas.shape)}")
    want = ((n * n_low + 7) // 8,)
    if low.shape != want or low.dtype != np.uint8:
        _fail(source, f"stream 'position_low' must be uint8 {list(want)}, got {low.dtype.name} {list(low.shape)}")
    if n_low and np.unpackbits(low, bitorder="little")[n * n_low :].any():
        _fail(source, "stream 'position_low' has pad bits set")
    if n and int(high_deltas[0]) != 0:
        _fail(source, "stream 'position_high' must start with 0")
    high = np.uint64(first) + np.cumsum(high_deltas.astype(np.uint64), dtype=np.uint64)  # n < 2^32: no overflow
    if n and int(high[-1]) >= 1 << (total - n_low):
        _fail(source, f"stream 'position_high' runs past {total} code bits")
    codes = (high << np.uint64(n_low)) | _unpack_low(low, n, n_low)
    return morton_decode(codes)


class C3DGSModel(nn.Module):
    """Compact-3DGS Gaussians (see the module docstring).

    Args:
        means: ``[N, 3]`` centres.
        quats: ``[N, 4]`` rotations (w, x, y, z, any norm).
        scales: ``[N, 3]`` log standard deviations.
        opacities: ``[N]`` opacity logits.
        masks: ``[N]`` mask logits, or None for ``MASK_INIT_LOGIT`` everywhere.
        color_config: colour-field settings.
        bounds: ``[2, 3]`` scene box of the colour field's contraction.
        use_rvq: quantize scales and rotations with residual VQ when rendering.
        rvq_stages, rvq_codebook_size: R-VQ shape (Compact-3DGS: 6 stages of 64 codes).
        rot_stages: R-VQ stages of the rotations (None: ``rvq_stages``); codebook size as the scales'.
        mask_threshold: hard-mask threshold on ``sigmoid(mask logit)``.
        backend: hash-grid backend of the colour field.
        seed: initialization seed of the colour field and the codebooks.
        hash_codec: settings of a :class:`~scenezip.fields.hash_codec.HashTableCompressor` the colour
            field reads its table through in training (``bits``, ``mask_start``, ``qat_start``), or None
            (plain table; coding then fits per-level steps to the trained table).
        position_bits: bits per axis of the stored positions (1..21), or None for :func:`auto_position_bits`.
        sh0: ``[N, 3]`` per-Gaussian base colours (degree-0 SH coefficients), or None for none. With a base
            colour the field is a correction added to it before the head (its last layer starts at zero);
            the base colour is R-VQ'd with ``dc_stages`` stages like scale and rotation.
    """

    def __init__(
        self,
        means: Tensor,
        quats: Tensor,
        scales: Tensor,
        opacities: Tensor,
        masks: Tensor | None = None,
        color_config: ColorFieldConfig | None = None,
        bounds: Tensor | Sequence = DEFAULT_BOUNDS,
        use_rvq: bool = True,
        rvq_stages: int = 6,
        rvq_codebook_size: int = 64,
        mask_threshold: float = MASK_THRESHOLD,
        backend: Literal["auto", "torch", "cuda"] = "auto",
        seed: int = 0,
        hash_codec: dict | None = None,
        position_bits: int | None = POSITION_BITS,
        sh0: Tensor | None = None,
        dc_stages: int = DC_STAGES,
        rot_stages: int | None = None,
    ) -> None:
        super().__init__()
        if position_bits is not None and (
            isinstance(position_bits, bool) or not isinstance(position_bits, int) or not 1 <= position_bits <= 21
        ):
            raise ValueError(f"position_bits must be an integer in [1, {MAX_POSITION_BITS}], got {position_bits!r}")
        if not isinstance(means, Tensor) or means.dim() != 2 or means.shape[1] != 3:
            raise ValueError(f"means must have shape [N, 3], got {tuple(getattr(means, 'shape', ()))}")
        n = means.shape[0]
        if masks is None:
            masks = torch.full((n,), MASK_INIT_LOGIT)
        given = {"quats": (quats, (n, 4)), "scales": (scales, (n, 3)), "opacities": (opacities, (n,)),
                 "masks": (masks, (n,))}  # fmt: skip
        if sh0 is not None:
            given[DC_NAME] = (sh0, (n, 3))
        for name, (t, shape) in given.items():
            if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {list(shape)}, got {tuple(getattr(t, 'shape', ()))}")
        tensors = {"means": means, **{k: given[k][0] for k in given}}
        self.splats = nn.ParameterDict(
            {k: nn.Parameter(t.detach().to(torch.float32).clone()) for k, t in tensors.items()}
        )
        self.color_field = ColorField(color_config, bounds, backend=backend, seed=seed)
        self.color_dc = sh0 is not None
        if self.color_dc:
            if isinstance(dc_stages, bool) or not isinstance(dc_stages, int) or dc_stages < 1:
                raise ValueError(f"dc_stages must be a positive integer, got {dc_stages!r}")
            self.color_field.zero_output_layer()
        self.dc_vq = ResidualVQ(3, int(dc_stages), rvq_codebook_size, seed=seed + 2) if self.color_dc else None
        self.scale_vq = ResidualVQ(3, rvq_stages, rvq_codebook_size, seed=seed)
        self.rot_vq = ResidualVQ(4, rvq_stages if rot_stages is None else rot_stages, rvq_codebook_size, seed=seed + 1)
        self.use_rvq = bool(use_rvq)
        self.mask_threshold = float(mask_threshold)
        self.position_bits = None if position_bits is None else int(position_bits)
        self.seed = int(seed)  # the R-VQ k-means seed when the codebooks are first fitted (kept for resumption)
        self.hash_codec_settings = None if hash_codec is None else dict(hash_codec)
        self.hash_codec = None
        if hash_codec is not None:
            allowed = {"bits", "mask_start", "qat_start"}
            if not isinstance(hash_codec, dict) or not set(hash_codec) <= allowed:
                raise ValueError(f"hash_codec must be a dict with keys among {sorted(allowed)}, got {hash_codec!r}")
            self.hash_codec = HashTableCompressor(self.color_field.grid, **hash_codec)
        # Frozen models (decoded / post-processed) hold their R-VQ indices; live models hold None.
        self.register_buffer("scale_indices", None)
        self.register_buffer("rot_indices", None)
        self.register_buffer("dc_indices", None)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_gaussians(
        cls,
        model: GaussianModel,
        color_config: ColorFieldConfig | None = None,
        bounds: Tensor | Sequence = DEFAULT_BOUNDS,
        init_rvq: bool = True,
        color_dc: bool = False,
        **kwargs: Any,
    ) -> "C3DGSModel":
        """Geometry of a :class:`GaussianModel`; with ``color_dc`` its DC colours become the base colours,
        otherwise its SH colours are dropped (the field learns colour). Higher SH bands are always dropped.

        With ``init_rvq`` (and ``use_rvq``), the codebooks are fitted by k-means to the activated scales
        and normalized rotations now; ``kwargs`` go to the constructor."""
        if not isinstance(model, GaussianModel):
            raise ValueError(f"model must be a GaussianModel, got {type(model).__name__}")
        sh0 = model.sh0.detach().cpu().reshape(len(model), 3) if color_dc else None
        m = cls(model.means.detach().cpu(), model.quats.detach().cpu(), model.scales.detach().cpu(),
                model.opacities.detach().cpu(), None, color_config, bounds, sh0=sh0, **kwargs)  # fmt: skip
        if init_rvq and m.use_rvq and len(m) > 0:
            m.init_rvq()
        return m.to(model.device)

    @torch.no_grad()
    def init_rvq(self) -> None:
        """Fit the R-VQ codebooks by k-means to the current activated scales, unit quaternions and base colours."""
        self.scale_vq.init_from(torch.exp(self.splats["scales"]))
        self.rot_vq.init_from(F.normalize(self.splats["quats"], dim=-1))
        if self.dc_vq is not None:
            self.dc_vq.init_from(self.splats[DC_NAME])

    # ------------------------------------------------------------------ accessors
    def __len__(self) -> int:
        return int(self.splats["means"].shape[0])

    @property
    def device(self) -> torch.device:
        return self.splats["means"].device

    @property
    def frozen(self) -> bool:
        """True for decoded / post-processed models (R-VQ indices fixed, codebooks read-only in use)."""
        return self.scale_indices is not None

    def activated(self) -> dict[str, Tensor]:
        """What the rasterizer takes (before colours): ``means``, ``quats``, masked ``scales`` and
        ``opacities``, the base colours ``sh0`` (None without), plus ``rvq_loss`` (0 unless the R-VQ ran in
        this call)."""
        s = self.splats
        loss = s["means"].new_zeros(())
        dc = s[DC_NAME] if self.color_dc else None
        if self.frozen:
            scales = rvq_decode(self.scale_indices, self.scale_vq.codebooks)
            quats = rvq_decode(self.rot_indices, self.rot_vq.codebooks)
            if dc is not None:
                dc = rvq_decode(self.dc_indices, self.dc_vq.codebooks)
        elif self.use_rvq:
            scales, _, l1 = self.scale_vq(torch.exp(s["scales"]))
            quats, _, l2 = self.rot_vq(F.normalize(s["quats"], dim=-1))
            loss = l1 + l2
            if dc is not None:
                dc, _, l3 = self.dc_vq(dc)
                loss = loss + l3
        else:
            scales, quats = torch.exp(s["scales"]), F.normalize(s["quats"], dim=-1)
        scales, opacities = apply_mask(scales, torch.sigmoid(s["opacities"]), s["masks"], self.mask_threshold)
        return {"means": s["means"], "quats": quats, "scales": scales, "opacities": opacities, DC_NAME: dc,
                "rvq_loss": loss}  # fmt: skip

    def colors(self, view_dirs: Tensor, index: Tensor | slice | None = None, activated: dict | None = None) -> Tensor:
        """Colours of the Gaussians ``index`` (all when None) seen along ``view_dirs`` (``[M, 3]`` or
        ``[C, M, 3]``, camera -> Gaussian): the field (through the training-time hash codec, if any) plus
        the base colours. ``activated``: a result of :meth:`activated` to reuse."""
        a = self.activated() if activated is None else activated
        sel = slice(None) if index is None else index
        means = a["means"][sel]
        feats = self.grid_features(means)
        if feats is None:
            feats = self.color_field.features(means)
        base = None if a[DC_NAME] is None else a[DC_NAME][sel]
        return self.color_field.colors_from_features(feats, view_dirs, base)

    # ------------------------------------------------------------------ rendering
    def grid_features(self, means: Tensor) -> Tensor | None:  # [N, 3] -> [N, n_levels * F] or None
        """Hash-grid features read through the training-time hash codec (masked, quantized as the file
        will hold the table), or None when there is none (the colour field reads its table itself)."""
        codec = self.hash_codec
        if codec is None or not codec.enabled or self.frozen:
            return None
        field = self.color_field
        grid = field.grid
        table = codec(grid.params)
        x = means if field.config.position_gradient else means.detach()
        u = contract(x.float(), field.bounds, field.config.contraction)
        return grid(u, table)

    def hash_rate_loss(self) -> Tensor:
        """Estimated bits per hash-table parameter of the coded table (0 without a hash codec)."""
        if self.hash_codec is None or self.frozen:
            return self.splats["means"].new_zeros(())
        return self.hash_codec.rate_loss(self.color_field.grid.params)

    def render(
        self,
        viewmats: Tensor,
        Ks: Tensor,
        width: int,
        height: int,
        backgrounds: Tensor | None = None,
        backend: Literal["auto", "torch", "cuda"] = "auto",
        render_mode: Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"] = "RGB",
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor, dict]:
        """Render C cameras, one rasterizer call per camera with that camera's field colours.

        Args:
            viewmats: ``[C, 4, 4]`` world-to-camera (OpenCV axes).
            Ks: ``[C, 3, 3]`` intrinsics in pixels.
            backgrounds: ``[C, 3]`` or None (black).
            kwargs: passed on to ``rasterization``.

        Returns:
            ``(colors [C, H, W, D], alphas [C, H, W, 1], meta)``; ``meta["cameras"]`` is the list of the
            per-camera meta dicts (``means2d`` there for densification), ``meta["rvq_loss"]`` the
            codebook loss of this call.
        """
        from scenezip.render.rasterization import rasterization

        if not isinstance(viewmats, Tensor) or viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
            raise ValueError(f"viewmats must have shape [C, 4, 4], got {tuple(getattr(viewmats, 'shape', ()))}")
        c = viewmats.shape[0]
        if not isinstance(Ks, Tensor) or tuple(Ks.shape) != (c, 3, 3):
            raise ValueError(f"Ks must have shape [{c}, 3, 3], got {tuple(getattr(Ks, 'shape', ()))}")
        if backgrounds is not None and (backgrounds.dim() != 2 or backgrounds.shape[0] != c):
            raise ValueError(f"backgrounds must have shape [{c}, D], got {tuple(backgrounds.shape)}")
        a = self.activated()
        colors = self.color_field.colors_for_cameras(a["means"], viewmats, self.grid_features(a["means"]), a[DC_NAME])
        outs, alphas, metas = [], [], []
        for i in range(c):
            col, alpha, meta = rasterization(
                a["means"], a["quats"], a["scales"], a["opacities"], colors[i], viewmats[i : i + 1], Ks[i : i + 1],
                int(width), int(height), backgrounds=None if backgrounds is None else backgrounds[i : i + 1],
                render_mode=render_mode, backend=backend, **kwargs,
            )  # fmt: skip
            outs.append(col)
            alphas.append(alpha)
            metas.append(meta)
        return torch.cat(outs, 0), torch.cat(alphas, 0), {"cameras": metas, "rvq_loss": a["rvq_loss"]}

    # ------------------------------------------------------------------ save / load (training state)
    def to_dict(self) -> dict[str, Any]:
        """Plain, device-independent dict of the live (or frozen) model, for checkpoints and ``model.pt``."""
        return {
            "format": MODEL_FORMAT,
            "version": FORMAT_VERSION,
            "n": len(self),
            "init": {
                "color_config": dataclasses.asdict(self.color_field.config),
                "use_rvq": self.use_rvq,
                "rvq_stages": self.scale_vq.n_stages,
                "rot_stages": self.rot_vq.n_stages,
                "rvq_codebook_size": self.scale_vq.codebook_size,
                "mask_threshold": self.mask_threshold,
                "hash_codec": self.hash_codec_settings,
                "position_bits": self.position_bits,
                "seed": self.seed,
                "color_dc": self.color_dc,
                "dc_stages": self.dc_vq.n_stages if self.dc_vq is not None else DC_STAGES,
            },
            "state": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_dict(cls, data: Any, device: torch.device | str = "cpu", source: str = "model") -> "C3DGSModel":
        """Inverse of :meth:`to_dict`; SceneFileError naming ``source`` for anything else."""
        if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
            raise SceneFileError(f"{source}: not a scenezip c3dgs model (format {MODEL_FORMAT!r} expected)")
        try:
            init, state, n = data["init"], dict(data["state"]), int(data["n"])
            z = torch.zeros
            dc = z(n, 3) if init.get("color_dc", False) else None
            model = cls(z(n, 3), z(n, 4), z(n, 3), z(n), None, ColorFieldConfig(**init["color_config"]),
                        use_rvq=bool(init["use_rvq"]), rvq_stages=int(init["rvq_stages"]),
                        rot_stages=int(init.get("rot_stages", init["rvq_stages"])),
                        rvq_codebook_size=int(init["rvq_codebook_size"]),
                        mask_threshold=float(init["mask_threshold"]), backend="torch",
                        hash_codec=init.get("hash_codec"),
                        position_bits=init.get("position_bits", POSITION_BITS),
                        seed=int(init.get("seed", 0)), sh0=dc,
                        dc_stages=int(init.get("dc_stages", DC_STAGES)))  # fmt: skip
            for name in ("scale_indices", "rot_indices", "dc_indices"):
                if name in state:
                    setattr(model, name, state[name].clone())
            model.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise SceneFileError(f"{source}: c3dgs model does not load ({type(e).__name__}: {e})") from None
        return model.to(device)

    def save(self, path: Any) -> Any:
        """Write :meth:`to_dict` with ``torch.save`` via a temporary name; returns the path."""
        return save_model_dict(self.to_dict(), path)

    # ------------------------------------------------------------------ post-processing and coding
    def size_scales(self, log_scales: Tensor) -> Tensor:  # [N, 3] -> [N, K]
        """The standard deviations that set the automatic position precision (all three axes here)."""
        return torch.exp(log_scales)

    @torch.no_grad()
    def _post_process(self, hash_zero_threshold: float) -> tuple[dict, dict[str, tuple[np.ndarray, str]]]:
        """``(metadata, streams)``: the integer codes and float16 tables a file stores, with their codecs
        (see the module docstring); shared by :meth:`to_streams` and :meth:`quantized_copy`."""
        if self.frozen:
            raise ValueError("this model is already post-processed (decoded); it has no float attributes to code")
        if self.scale_vq.codebook_size > 1 << 16:
            raise ValueError(f"codebook_size must be at most 65536 to be stored, got {self.scale_vq.codebook_size}")
        if not all(bool(vq.initted) for vq in (self.scale_vq, self.rot_vq, self.dc_vq) if vq is not None):
            self.init_rvq()
        s = {k: v.detach().cpu() for k, v in self.splats.items()}
        keep = keep_indices(s["masks"], self.mask_threshold)
        if keep.numel() == 0:
            raise ValueError("every Gaussian is masked out; nothing to store")
        means = s["means"][keep].numpy()
        p_lo, p_hi = _range(means, axis=0)
        bits = self.position_bits
        if bits is None:
            bits = auto_position_bits(means, self.size_scales(s["scales"][keep]).numpy())
        q_pos = quantize_uniform(means, p_lo, p_hi, bits)  # [K, 3]
        order = morton_order(q_pos)
        perm = keep[torch.from_numpy(order)]
        pos_meta, pos_streams = encode_positions(q_pos[order], bits)

        logits = s["opacities"][perm].numpy()
        o_lo, o_hi = _range(logits)
        q_opa = quantize_uniform(logits, o_lo, o_hi, OPACITY_BITS)

        idx_dtype = np.uint8 if self.scale_vq.codebook_size <= 256 else np.uint16
        cb_s = self.scale_vq.codebooks.detach().cpu().to(torch.float16)
        cb_r = self.rot_vq.codebooks.detach().cpu().to(torch.float16)
        i_s = rvq_encode(torch.exp(s["scales"][perm]), cb_s.float()).numpy().astype(idx_dtype)
        i_r = rvq_encode(F.normalize(s["quats"][perm], dim=-1), cb_r.float()).numpy().astype(idx_dtype)
        indices = {"scale_indices": i_s, "rotation_indices": i_r}
        if self.color_dc:
            cb_c = self.dc_vq.codebooks.detach().cpu().to(torch.float16)
            indices["color_indices"] = rvq_encode(s[DC_NAME][perm], cb_c.float()).numpy().astype(idx_dtype)

        table = self.color_field.grid.params.detach().cpu()
        codec = self.hash_codec
        if codec is None:  # plain table: per-level steps fitted now (absmax, nothing clipped), nothing masked
            codec = HashTableCompressor(self.color_field.grid.config, bits=HASH_BITS)
            if hash_zero_threshold > 0:
                table = torch.from_numpy(zero_small(table.numpy(), hash_zero_threshold))
        else:
            codec = codec.cpu()
        hash_meta, hash_streams = encode_hash_table(table, codec, prefix=HASH_PREFIX)
        if self.hash_codec is not None:
            self.hash_codec.to(self.device)
        mlp = self.color_field.mlp_params_fp16().numpy()

        cfg = self.color_field.config
        metadata = {
            "c3dgs_version": FORMAT_VERSION,
            "n_gaussians": int(perm.numel()),
            "mask_threshold": self.mask_threshold,
            "positions": {"lo": _floats(p_lo), "hi": _floats(p_hi), "order": "morton", **pos_meta},
            "opacities": {"bits": OPACITY_BITS, "domain": "logit", "lo": _floats(o_lo), "hi": _floats(o_hi)},
            "rvq": {
                "scales": {"dim": 3, "n_stages": self.scale_vq.n_stages, "codebook_size": self.scale_vq.codebook_size,
                           "domain": "exp"},
                "rotations": {"dim": 4, "n_stages": self.rot_vq.n_stages, "codebook_size": self.rot_vq.codebook_size,
                              "domain": "unit quaternion"},
            },  # fmt: skip
            "color_field": {
                "config": dataclasses.asdict(cfg),
                "bounds": self.color_field.bounds.detach().cpu().tolist(),
                "hash": {**hash_meta, "zero_threshold": float(hash_zero_threshold)},
                "mlp_n_params": int(mlp.size),
            },
        }
        if self.color_dc:
            metadata["rvq"]["colors"] = {"dim": 3, "n_stages": self.dc_vq.n_stages,
                                         "codebook_size": self.dc_vq.codebook_size, "domain": "sh0"}  # fmt: skip
        streams = {
            **pos_streams, "opacities": (q_opa, "rans"), "scale_codebooks": (cb_s.numpy(), "raw"),
            "rotation_codebooks": (cb_r.numpy(), "raw"), **hash_streams, "mlp": (mlp, "raw"),
        }  # fmt: skip
        # one rans table per stage: the first stages are peaked, the last near uniform, and one table for all
        # mixes them (demo scene, 5976 Gaussians: 21.9 kB for the scale indices with one table, 16.5 bits a
        # Gaussian = 12.3 kB order-0 per stage)
        if self.color_dc:
            streams["color_codebooks"] = (cb_c.numpy(), "raw")
        for name, idx in indices.items():
            for stage in range(idx.shape[1]):
                streams[f"{name}_{stage}"] = (np.ascontiguousarray(idx[:, stage]), "rans")
        return metadata, streams

    def to_streams(
        self, hash_zero_threshold: float = HASH_ZERO_THRESHOLD
    ) -> tuple[dict, dict[str, tuple[np.ndarray, str]]]:
        """``(metadata, streams)`` for :func:`scenezip.scenes.scz.write_scz` (method ``"c3dgs"``).

        Codebooks that were never fitted (``use_rvq=False`` so far) are fitted by k-means first, in place.
        ``hash_zero_threshold``: without a training-time hash codec, hash values with ``|v|`` at or below
        it are stored as 0 (a model trained with one stores its masked, quantized table as trained)."""
        return self._post_process(hash_zero_threshold)

    def quantized_copy(self, hash_zero_threshold: float = HASH_ZERO_THRESHOLD) -> "C3DGSModel":
        """The post-processed model (masked Gaussians dropped, Morton order, every attribute quantized)
        built in memory from the arrays :meth:`to_streams` would code; renders like the decoded file."""
        metadata, streams = self._post_process(hash_zero_threshold)
        arrays = {name: arr for name, (arr, _) in streams.items()}
        return c3dgs_from_streams(arrays, metadata, "quantized copy", cls=type(self)).to(self.device)


def _fail(source: str, msg: str):
    raise SceneFileError(f"{source}: c3dgs {msg}")


def _meta_int(d: Any, key: str, source: str, lo: int = 0) -> int:
    v = d.get(key) if isinstance(d, dict) else None
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        _fail(source, f"metadata {key!r} must be an integer >= {lo}, got {v!r}")
    return v


def _meta_range(d: Any, name: str, source: str, size: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    if not isinstance(d, dict):
        _fail(source, f"metadata {name!r} is missing")
    bits = _meta_int(d, "bits", source, 1)
    try:
        lo, hi = np.asarray(d["lo"], dtype=np.float64), np.asarray(d["hi"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        _fail(source, f"metadata {name!r} needs numeric lo and hi")
    want = () if size is None else (size,)
    if lo.shape != want or hi.shape != want or not (np.all(np.isfinite(lo)) and np.all(hi > lo)):
        _fail(source, f"metadata {name!r} lo/hi must be finite with hi > lo, shape {list(want)}")
    return lo, hi, bits


def c3dgs_from_streams(
    arrays: dict[str, np.ndarray], metadata: dict, source: str = "scene", cls: type[C3DGSModel] | None = None
) -> C3DGSModel:
    """Inverse of :meth:`C3DGSModel.to_streams`: a frozen model whose render is the decoded scene, of class
    ``cls`` (default :class:`C3DGSModel`; subclasses that share this stream contract pass their own).

    Every shape, dtype and count is checked against ``metadata``; SceneFileError naming ``source``."""
    if not isinstance(metadata, dict):
        _fail(source, "metadata must be an object")
    version = _meta_int(metadata, "c3dgs_version", source, 1)
    if version not in READ_VERSIONS:
        _fail(source, f"stream version {version} is not supported (this reader reads versions "
                      f"{', '.join(map(str, READ_VERSIONS))}"
                      f"{'; re-encode older files with scenezip compress' if version < min(READ_VERSIONS) else ''})")
    n = _meta_int(metadata, "n_gaussians", source, 1)
    p_lo, p_hi, p_bits = _meta_range(metadata.get("positions"), "positions", source, 3)
    if p_bits > MAX_POSITION_BITS:
        _fail(source, f"metadata positions bits must be at most {MAX_POSITION_BITS}, got {p_bits}")
    o_lo, o_hi, o_bits = _meta_range(metadata.get("opacities"), "opacities", source, None)
    rvq = metadata.get("rvq")
    if not (isinstance(rvq, dict) and isinstance(rvq.get("scales"), dict) and isinstance(rvq.get("rotations"), dict)):
        _fail(source, "metadata 'rvq' needs 'scales' and 'rotations'")
    shapes = {}
    for key, dim in (("scales", 3), ("rotations", 4)):
        d = rvq[key]
        if d.get("dim") != dim:
            _fail(source, f"metadata rvq {key} dim must be {dim}, got {d.get('dim')!r}")
        shapes[key] = (_meta_int(d, "n_stages", source, 1), _meta_int(d, "codebook_size", source, 1))
    if shapes["scales"][1] != shapes["rotations"][1] or (version < 3 and shapes["scales"] != shapes["rotations"]):
        _fail(source, f"R-VQ shapes of scales {shapes['scales']} and rotations {shapes['rotations']} do not match")
    n_stages, book = shapes["scales"]
    rot_stages = shapes["rotations"][0]
    if book > 1 << 16:
        _fail(source, f"codebook_size {book} exceeds 65536")
    dc_stages = 0
    if "colors" in rvq:
        d = rvq["colors"]
        if version < 3 or not isinstance(d, dict) or d.get("dim") != 3:
            _fail(source, "metadata rvq colors must be an object with dim 3 (stream version 3 and later)")
        dc_stages = _meta_int(d, "n_stages", source, 1)
        if _meta_int(d, "codebook_size", source, 1) != book:
            _fail(source, f"R-VQ codebook size of the colours {d.get('codebook_size')!r} differs from {book}")
    cf = metadata.get("color_field")
    if not isinstance(cf, dict) or not isinstance(cf.get("config"), dict):
        _fail(source, "metadata 'color_field' needs 'config'")
    try:
        config = ColorFieldConfig(**cf["config"])
    except Exception as e:  # noqa: BLE001 - unknown keys or invalid values alike mean a bad file
        _fail(source, f"colour-field config is invalid ({e})")
    if not isinstance(cf.get("hash"), dict):
        _fail(source, "metadata 'color_field.hash' is missing")
    try:
        threshold = float(metadata.get("mask_threshold", MASK_THRESHOLD))
        model = (cls or C3DGSModel)(torch.zeros(n, 3), torch.zeros(n, 4), torch.zeros(n, 3), torch.zeros(n), None, config,
                           cf.get("bounds"), True, n_stages, book, threshold, backend="torch", rot_stages=rot_stages,
                           sh0=torch.zeros(n, 3) if dc_stages else None, dc_stages=dc_stages or DC_STAGES)  # fmt: skip
    except (ValueError, TypeError) as e:
        _fail(source, f"metadata does not describe a model ({e})")
    n_mlp = model.color_field.mlp.n_params()
    if cf.get("mlp_n_params") != n_mlp:
        _fail(source, f"colour field holds {n_mlp} MLP parameters, metadata says {cf.get('mlp_n_params')!r}")
    ints = ("uint8", "uint16", "uint32")
    expect = {
        "opacities": ((n,), ints), "scale_codebooks": ((n_stages, book, 3), ("float16",)),
        "rotation_codebooks": ((rot_stages, book, 4), ("float16",)), "mlp": ((n_mlp,), ("float16",)),
        "position_high": ((n,), ("uint32",)), "position_low": (None, ("uint8",)),
    }  # fmt: skip
    idx_names = {key: [f"{key}_{stage}" for stage in range(k)]
                 for key, k in (("scale_indices", n_stages), ("rotation_indices", rot_stages))}  # fmt: skip
    if dc_stages:
        idx_names["color_indices"] = [f"color_indices_{stage}" for stage in range(dc_stages)]
        expect["color_codebooks"] = ((dc_stages, book, 3), ("float16",))
    all_idx = [name for names in idx_names.values() for name in names]
    for name in all_idx:
        expect[name] = ((n,), ("uint8", "uint16"))
    for name, (shape, dtypes) in expect.items():
        if name not in arrays:
            _fail(source, f"stream {name!r} is missing")
        a = arrays[name]
        if not isinstance(a, np.ndarray):
            _fail(source, f"stream {name!r} is not an array")
        if shape is not None and tuple(a.shape) != shape:
            _fail(source, f"stream {name!r} has shape {tuple(a.shape)}, expected {shape}")
        if a.dtype.name not in dtypes:
            _fail(source, f"stream {name!r} has dtype {a.dtype.name}, expected {' or '.join(dtypes)}")
    for name, bits in (("opacities", o_bits),):
        if bits > 32 or (arrays[name].size and int(arrays[name].max()) >= 1 << bits):
            _fail(source, f"stream {name!r} holds values beyond {bits} bits")
    for name in all_idx:
        if int(arrays[name].max()) >= book:
            _fail(source, f"stream {name!r} holds an index >= codebook_size {book}")
    for name in ("scale_codebooks", "rotation_codebooks", "mlp") + (("color_codebooks",) if dc_stages else ()):
        if not np.all(np.isfinite(arrays[name])):
            _fail(source, f"stream {name!r} holds non-finite values")
    q_pos = decode_positions(arrays["position_high"], arrays["position_low"], metadata["positions"], n, source)
    table = decode_hash_table(arrays, cf["hash"], config.hashgrid(), source)  # checks its own streams

    with torch.no_grad():
        s = model.splats
        s["means"].copy_(torch.from_numpy(dequantize_uniform(q_pos, p_lo, p_hi, p_bits)))
        s["opacities"].copy_(torch.from_numpy(dequantize_uniform(arrays["opacities"], o_lo, o_hi, o_bits)))
        model.scale_vq.codebooks.copy_(torch.from_numpy(arrays["scale_codebooks"].astype(np.float32)))
        model.rot_vq.codebooks.copy_(torch.from_numpy(arrays["rotation_codebooks"].astype(np.float32)))
        model.scale_vq.initted.fill_(True)
        model.rot_vq.initted.fill_(True)
        model.scale_indices, model.rot_indices = (
            torch.from_numpy(np.stack([arrays[k] for k in idx_names[key]], axis=1).astype(np.int64))
            for key in ("scale_indices", "rotation_indices")
        )
        if dc_stages:
            model.dc_vq.codebooks.copy_(torch.from_numpy(arrays["color_codebooks"].astype(np.float32)))
            model.dc_vq.initted.fill_(True)
            model.dc_indices = torch.from_numpy(
                np.stack([arrays[k] for k in idx_names["color_indices"]], axis=1).astype(np.int64)
            )
            s[DC_NAME].copy_(rvq_decode(model.dc_indices, model.dc_vq.codebooks))  # informative only
        scales = rvq_decode(model.scale_indices, model.scale_vq.codebooks)
        s["scales"].copy_(torch.log(scales.abs().clamp_min(1e-12)))  # informative only: render uses the codes
        s["quats"].copy_(rvq_decode(model.rot_indices, model.rot_vq.codebooks))
        model.color_field.grid.params.copy_(table)
        model.color_field.load_fp16(torch.from_numpy(arrays["mlp"]))
    return model
