"""The ``image`` codec: an image as 2D Gaussians (GaussianImage, Zhang et al., ECCV 2024), quantized,
entropy coded and written as a ``.scz`` file, with rate control to a requested bits per pixel.

Written by hand on scenezip's own toolbox (``quant.morton``, ``quant.scalar``, ``quant.codecs``,
``scenes.scz``). The bitstream, and why each part differs from GaussianImage's:

- **Positions** (GaussianImage: fp16, 32 bits per Gaussian): clamped to the image and rounded to a
  grid of ``2**-pos_frac_bits`` pixels, sorted by their 2D Morton code (Z-order; the order comes from
  :func:`scenezip.quant.morton.morton_order` with ``z = 0``), and the non-negative differences ``d`` of
  consecutive codes are split Elias-gamma style into an exponent ``e = bit_length(d)`` (stream
  ``pos_exp``, ``rans`` with a stored integer table) and the ``e - 1`` bits below the leading one
  (stream ``pos_mant``, packed most significant bit first, ``raw``: those bits are close to uniform, so
  an entropy coder would gain nothing and its table would cost bytes). Sorting discards the order of the
  Gaussians, which the sum does not need, and that saves ``log2(N!) / N`` bits per Gaussian. A ``rans``
  table over the raw deltas would hold nearly one entry per Gaussian, so the split is what makes the
  deltas codeable.
- **Covariance** (GaussianImage: 6-bit Cholesky entries after training): the raw Cholesky factors
  ``(log l1, l2, log l3)`` are quantized with :class:`scenezip.quant.scalar.UniformQuantizer`
  (``chol_bits`` levels per channel over the range seen when quantization-aware training starts) in
  ``"ste"`` mode, so the last training steps see exactly the decoded values; stream ``chol``, ``rans``.
- **Colour** (GaussianImage: 2-stage residual VQ): scalar quantization with a fixed step in an
  orthonormal luma/chroma basis ``M`` (rows ``(1,1,1)/sqrt3, (1,0,-1)/sqrt2, (1,-2,1)/sqrt6``), with
  straight-through rounding in training. ``M`` is orthonormal, so the quantization error in RGB is the
  same as with a step of the same size in RGB, while the decorrelated coordinates cost fewer bits;
  the step is the rate controller's second knob. Stream ``color``, ``rans``. (Learning the step, as
  LSQ does, would minimise distortion only: with no rate term in the loss it drives the step down.)
- **Rate control**: the Gaussian count is the main knob. It is chosen from the target (bits per
  Gaussian assumed at first), the model is fitted with 30% more Gaussians than that, then the least
  important ones (smallest integrated colour mass) are dropped, bisecting on the count against the
  exact size of the file that would be written. Quantization-aware fine-tuning follows, and a final
  bisection trims what the fine-tuning added. If even every Gaussian stays more than the tolerance
  under the target, the colour step is refined (no refit) until the size is within it.

Decoding (:func:`decode_image`) reads only integers and the float64 constants stored in the header,
checks every count and shape against the metadata (``SceneFileError`` otherwise), and dequantizes
with fixed float64 arithmetic, so the decoded parameters are bit-identical on every machine; the
pixels are the float32 render of those parameters clamped and rounded to 8 bits.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from scenezip.errors import SceneFileError
from scenezip.quant.morton import MORTON_BITS, morton_encode, morton_order
from scenezip.quant.scalar import UniformQuantizer
from scenezip.render.rasterization_image import rasterize_image
from scenezip.scenes.scz import SceneFile, read_scz, write_scz
from scenezip.splatting.image_gaussians import FitConfig, ImageGaussians, Params, chol_from_raw, fit, init_from_image

METHOD = "image"
STREAMS = ("pos_exp", "pos_mant", "chol", "color")
MAX_SIDE = 1 << 16
MAX_GAUSSIANS = 1 << 24
MAX_FRAC_BITS = 4
MAX_STEP_Q = 60  # colour step down to 2**-15
CHOL_RANGE_UNIT = 64  # the Cholesky quantizer range is stored in units of 1/64 (integers in the header)
_S3, _S2, _S6 = math.sqrt(3.0), math.sqrt(2.0), math.sqrt(6.0)
COLOR_BASIS = (  # orthonormal rows: luma, two chroma differences (float64 constants)
    (1.0 / _S3, 1.0 / _S3, 1.0 / _S3),
    (1.0 / _S2, 0.0, -1.0 / _S2),
    (1.0 / _S6, -2.0 / _S6, 1.0 / _S6),
)


@dataclass
class QuantConfig:
    """Quantizer settings of the ``image`` codec."""

    pos_frac_bits: int = 2
    """Positions are rounded to a grid of 2**-pos_frac_bits pixels (0..4)."""
    chol_bits: int = 6
    """Levels 2**chol_bits per Cholesky channel (log l1, l2, log l3), 1..8."""
    color_step_q: int = 22
    """Colour quantization step 2**(-color_step_q / 4) in the orthonormal luma/chroma basis (image values
    in [0, 1]); 22 gives 0.022. Stored as this integer, so the header stays short."""

    @property
    def color_step(self) -> float:
        return color_step_from_q(self.color_step_q)

    def __post_init__(self) -> None:
        if not (isinstance(self.pos_frac_bits, int) and 0 <= self.pos_frac_bits <= MAX_FRAC_BITS):
            raise ValueError(f"pos_frac_bits must be an integer in [0, {MAX_FRAC_BITS}], got {self.pos_frac_bits!r}")
        if not (isinstance(self.chol_bits, int) and 1 <= self.chol_bits <= 8):
            raise ValueError(f"chol_bits must be an integer in [1, 8], got {self.chol_bits!r}")
        if not (isinstance(self.color_step_q, int) and 0 <= self.color_step_q <= MAX_STEP_Q):
            raise ValueError(f"color_step_q must be an integer in [0, {MAX_STEP_Q}], got {self.color_step_q!r}")


@dataclass
class ImageCode:
    """The integer content of an ``image`` file (what the streams hold, before entropy coding).

    Attributes:
        width, height: image size in pixels.
        pos_frac_bits, chol_bits, color_step_q: the quantizer settings (see QuantConfig).
        chol_range: ``[2, 3]`` int64 range (lo, hi) of the Cholesky quantizer per channel, in units of
            ``1 / CHOL_RANGE_UNIT``.
        q_pos: ``[N, 2]`` int64 grid positions (x, y), sorted by 2D Morton code.
        q_chol: ``[N, 3]`` uint8 Cholesky levels.
        q_color: ``[N, 3]`` int16 colour integers in the luma/chroma basis.
    """

    width: int
    height: int
    pos_frac_bits: int
    chol_bits: int
    color_step_q: int
    chol_range: np.ndarray
    q_pos: np.ndarray
    q_chol: np.ndarray
    q_color: np.ndarray

    @property
    def n(self) -> int:
        return int(self.q_pos.shape[0])

    def equals(self, other: "ImageCode") -> bool:
        """Same settings and the same integers."""
        return (
            (self.width, self.height, self.pos_frac_bits, self.chol_bits, self.color_step_q)
            == (other.width, other.height, other.pos_frac_bits, other.chol_bits, other.color_step_q)
            and np.array_equal(self.chol_range, other.chol_range)
            and np.array_equal(self.q_pos, other.q_pos) and np.array_equal(self.q_chol, other.q_chol)
            and np.array_equal(self.q_color, other.q_color)
        )  # fmt: skip


@dataclass
class EncodeResult:
    """What :func:`encode_image` wrote."""

    path: Path
    nbytes: int
    bpp: float
    target_bpp: float
    n_gaussians: int
    psnr: float
    """PSNR (dB) of the decoded 8-bit image against the input."""
    encode_s: float
    steps: int
    quant: QuantConfig
    log: list[str] = field(default_factory=list)


# ------------------------------------------------------------------------------ Morton + bit packing


def morton2d(q_xy: np.ndarray) -> np.ndarray:  # [N, 2] int -> [N] int64
    """2D Morton code ``sum_k x_k 4^k + y_k 2 4^k`` of grid points (x, y) in ``[0, 2^21)``.

    Computed as the 3D code of ``(x, y, 0)`` (:func:`scenezip.quant.morton.morton_encode`) with the
    always-zero z bits squeezed out, so the order is the same and the deltas carry no empty bits."""
    q = np.asarray(q_xy, dtype=np.int64)
    c3 = morton_encode(np.stack([q[:, 0], q[:, 1], np.zeros_like(q[:, 0])], -1)).astype(np.uint64)
    out = np.zeros(q.shape[0], dtype=np.uint64)
    for k in range(MORTON_BITS):
        for axis in range(2):
            bit = (c3 >> np.uint64(3 * k + axis)) & np.uint64(1)
            out |= bit << np.uint64(2 * k + axis)
    return out.astype(np.int64)


def morton2d_decode(code: np.ndarray) -> np.ndarray:  # [N] int64 -> [N, 2] int64
    """Inverse of :func:`morton2d`."""
    c = np.asarray(code, dtype=np.int64).astype(np.uint64)
    xy = np.zeros((c.shape[0], 2), dtype=np.uint64)
    for k in range(MORTON_BITS):
        for axis in range(2):
            xy[:, axis] |= ((c >> np.uint64(2 * k + axis)) & np.uint64(1)) << np.uint64(k)
    return xy.astype(np.int64)


def _bit_length(d: np.ndarray) -> np.ndarray:  # [N] int64 >= 0 -> [N] int64
    e = np.zeros(d.shape, dtype=np.int64)
    for k in range(63):
        e += (d >> k) > 0
    return e


def split_deltas(d: np.ndarray) -> tuple[np.ndarray, bytes, int]:
    """Non-negative ``d`` ``[N]`` -> (exponents ``[N]`` uint8, packed mantissa bits, bit count)."""
    d = np.asarray(d, dtype=np.int64)
    e = _bit_length(d)
    length = np.maximum(e - 1, 0)
    mant = np.where(e > 0, d - (np.int64(1) << np.maximum(e - 1, 0)), 0)
    total = int(length.sum())
    idx = np.repeat(np.arange(d.shape[0]), length)
    local = np.arange(total) - np.repeat(np.cumsum(length) - length, length)
    bits = (mant[idx] >> (length[idx] - 1 - local)) & 1
    return e.astype(np.uint8), np.packbits(bits.astype(np.uint8)).tobytes(), total


def join_deltas(e: np.ndarray, packed: np.ndarray, what: str) -> np.ndarray:
    """Inverse of :func:`split_deltas`; SceneFileError (prefixed ``what``) if the bits do not fit."""
    e = np.asarray(e, dtype=np.int64)
    if e.size and int(e.max()) > 2 * MORTON_BITS:
        raise SceneFileError(f"{what}: position exponent {int(e.max())} exceeds {2 * MORTON_BITS}")
    length = np.maximum(e - 1, 0)
    total = int(length.sum())
    if packed.shape[0] != (total + 7) // 8:
        raise SceneFileError(f"{what}: stream 'pos_mant' has {packed.shape[0]} bytes, the exponents need {(total + 7) // 8}")
    bits = np.unpackbits(packed.astype(np.uint8))
    if bits[total:].any():
        raise SceneFileError(f"{what}: stream 'pos_mant' has non-zero padding bits")
    idx = np.repeat(np.arange(e.shape[0]), length)
    local = np.arange(total) - np.repeat(np.cumsum(length) - length, length)
    mant = np.zeros(e.shape[0], dtype=np.int64)
    np.add.at(mant, idx, bits[:total].astype(np.int64) << (length[idx] - 1 - local))
    return np.where(e > 0, (np.int64(1) << np.maximum(e - 1, 0)) + mant, 0)


# ------------------------------------------------------------------------------------ quantizers


def _color_forward(c: Tensor) -> Tensor:  # [N, 3] RGB -> [N, 3] basis coordinates (float64)
    c = c.to(torch.float64)
    return torch.stack([c[:, 0] * m[0] + c[:, 1] * m[1] + c[:, 2] * m[2] for m in COLOR_BASIS], -1)


def dequantize_colors(q: np.ndarray, step: float) -> np.ndarray:  # [N, 3] int -> [N, 3] float32
    """RGB colours ``M^T (q * step)``: float64, elementwise in a fixed order (bit-exact everywhere)."""
    y = np.asarray(q, dtype=np.float64) * float(step)
    m = COLOR_BASIS
    rgb = [y[:, 0] * m[0][j] + y[:, 1] * m[1][j] + y[:, 2] * m[2][j] for j in range(3)]
    return np.stack(rgb, -1).astype(np.float32)


def quantize_colors(c: Tensor, step: float) -> np.ndarray:  # [N, 3] -> [N, 3] int16
    q = torch.round(_color_forward(c.detach().cpu()) / float(step))
    if q.numel() and float(q.abs().max()) > 32767:
        raise ValueError(f"colour step {step} too small: colours need more than 16 bits")
    return q.numpy().astype(np.int16)


def _pos_grid(code_w: int, code_h: int, frac: int) -> tuple[int, int]:
    return code_w << frac, code_h << frac


def quantize_positions(means: Tensor, width: int, height: int, frac: int) -> np.ndarray:  # [N, 2] -> int64
    """Grid positions ``clamp(round(x 2^frac), 0, W 2^frac - 1)`` (and y)."""
    gw, gh = _pos_grid(width, height, frac)
    m = means.detach().cpu().to(torch.float64) * float(1 << frac)
    q = torch.round(m)
    q[:, 0].clamp_(0, gw - 1)
    q[:, 1].clamp_(0, gh - 1)
    return q.numpy().astype(np.int64)


def color_step_from_q(q: int) -> float:
    """Colour step ``2**(-q / 4)`` (exact in float64 for every stored integer)."""
    return 2.0 ** (-q / 4.0)


def chol_quantizer(chol_range: np.ndarray, bits: int) -> UniformQuantizer:
    """The Cholesky quantizer of a stored range ``[2, 3]`` (integers in units of 1/CHOL_RANGE_UNIT)."""
    r = np.asarray(chol_range, dtype=np.float64) / CHOL_RANGE_UNIT
    return UniformQuantizer(torch.from_numpy(r[0]), torch.from_numpy(r[1]), bits=bits, mode="ste")


def make_chol_range(chol_raw: Tensor) -> np.ndarray:  # [N, 3] -> [2, 3] int64
    """Per-channel range of ``chol_raw`` rounded outwards to multiples of 1/CHOL_RANGE_UNIT."""
    x = chol_raw.detach().cpu().to(torch.float64).numpy()
    lo = np.floor(x.min(0) * CHOL_RANGE_UNIT).astype(np.int64)
    hi = np.maximum(np.ceil(x.max(0) * CHOL_RANGE_UNIT).astype(np.int64), lo + 1)
    return np.stack([lo, hi])


def qat_transform(width: int, height: int, quant: QuantConfig, chol_range: np.ndarray):
    """``(means, chol_raw, colors) -> decoded values`` with straight-through gradients (the training forward)."""
    frac = quant.pos_frac_bits
    gw, gh = _pos_grid(width, height, frac)
    scale = float(1 << frac)
    step = float(quant.color_step)
    chol_q = chol_quantizer(chol_range, quant.chol_bits)
    basis = torch.tensor(COLOR_BASIS, dtype=torch.float64)

    def transform(p: Params) -> Params:
        means, chol_raw, colors = p
        lim = means.new_tensor([(gw - 1) / scale, (gh - 1) / scale])
        mc = torch.minimum(torch.maximum(means, torch.zeros_like(lim)), lim)
        mq = (torch.round(mc.detach() * scale) / scale).to(means.dtype) + (mc - mc.detach())
        cq = chol_q(chol_raw)
        y = torch.round(_color_forward(colors.detach()) / step) * step
        rgb = torch.stack([y[:, 0] * basis[0, j] + y[:, 1] * basis[1, j] + y[:, 2] * basis[2, j] for j in range(3)], -1)
        colq = rgb.to(colors.dtype) + (colors - colors.detach())
        return mq, cq, colq

    return transform


def quantize_model(model: ImageGaussians, quant: QuantConfig, chol_range: np.ndarray) -> ImageCode:
    """The integers a file stores for ``model`` (Gaussians sorted by 2D Morton code of their grid position)."""
    q_pos = quantize_positions(model.means, model.width, model.height, quant.pos_frac_bits)
    order = morton_order(np.stack([q_pos[:, 0], q_pos[:, 1], np.zeros_like(q_pos[:, 0])], -1))
    chol_q = chol_quantizer(chol_range, quant.chol_bits)
    q_chol = chol_q.quantize(model.chol_raw.detach().cpu()).numpy().astype(np.uint8)
    q_color = quantize_colors(model.colors, quant.color_step)
    return ImageCode(
        model.width, model.height, quant.pos_frac_bits, quant.chol_bits, quant.color_step_q,
        np.asarray(chol_range, dtype=np.int64).reshape(2, 3),
        q_pos[order], q_chol[order], q_color[order],
    )  # fmt: skip


def code_to_params(code: ImageCode) -> tuple[Tensor, Tensor, Tensor]:
    """Decoded ``means [N, 2]``, ``chol_raw [N, 3]``, ``colors [N, 3]`` (float32; bit-exact everywhere)."""
    means = (code.q_pos.astype(np.float64) / float(1 << code.pos_frac_bits)).astype(np.float32)
    levels = float((1 << code.chol_bits) - 1)
    r = code.chol_range.astype(np.float64) / CHOL_RANGE_UNIT
    lo, hi = r[0][None, :], r[1][None, :]
    chol_raw = (lo + code.q_chol.astype(np.float64) * ((hi - lo) / levels)).astype(np.float32)
    colors = dequantize_colors(code.q_color, color_step_from_q(code.color_step_q))
    return torch.from_numpy(means), torch.from_numpy(chol_raw), torch.from_numpy(colors)


def code_to_model(code: ImageCode) -> ImageGaussians:
    return ImageGaussians(*code_to_params(code), code.width, code.height)


def render_code(code: ImageCode) -> np.ndarray:  # -> [H, W, 3] uint8
    """The decoded image: the render of the decoded parameters, clamped, rounded to 8 bits."""
    means, chol_raw, colors = code_to_params(code)
    with torch.no_grad():
        img = rasterize_image(means, chol_from_raw(chol_raw), colors, code.width, code.height)
    return torch.round(img.clamp(0.0, 1.0) * 255.0).to(torch.uint8).numpy()


# ---------------------------------------------------------------------------------------- streams


def code_to_streams(code: ImageCode) -> tuple[dict, dict[str, tuple]]:
    """``(metadata, streams)`` for :func:`scenezip.scenes.scz.write_scz`."""
    codes = morton2d(code.q_pos)
    d = codes.copy()
    d[1:] -= codes[:-1]
    if d.size and int(d.min()) < 0:
        raise ValueError("q_pos must be sorted by 2D Morton code (quantize_model does that)")
    exps, packed, _ = split_deltas(d)
    meta = {
        "width": code.width, "height": code.height, "n_gaussians": code.n,
        "pos_frac_bits": code.pos_frac_bits, "chol_bits": code.chol_bits,
        "chol_range": [int(v) for v in code.chol_range.reshape(-1)], "color_step_q": code.color_step_q,
    }  # fmt: skip
    streams = {
        "pos_exp": (exps, "rans"),
        "pos_mant": (np.frombuffer(packed, dtype=np.uint8), "raw"),
        "chol": (code.q_chol.astype(np.uint8), "rans"),
        "color": (code.q_color.astype(np.int16), "rans"),
    }
    return meta, streams


def write_code(path: str | os.PathLike, code: ImageCode) -> int:
    """Write ``code`` as an ``image`` ``.scz`` file (atomically); returns the bytes written."""
    meta, streams = code_to_streams(code)
    return write_scz(path, METHOD, meta, streams)


def _meta_int(meta: Mapping, key: str, lo: int, hi: int, what: str) -> int:
    v = meta.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise SceneFileError(f"{what}: metadata {key!r} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _meta_ints(meta: Mapping, key: str, n: int, bound: int, what: str) -> np.ndarray:
    v = meta.get(key)
    if not isinstance(v, list) or len(v) != n or not all(
        isinstance(x, int) and not isinstance(x, bool) and abs(x) <= bound for x in v
    ):
        raise SceneFileError(f"{what}: metadata {key!r} must be a list of {n} integers in [-{bound}, {bound}], got {v!r}")
    return np.asarray(v, dtype=np.int64)


def _expect_stream(scene: SceneFile, name: str, dtype: str, shape: tuple[int, ...] | None, what: str) -> None:
    rec = scene.record(name)
    if rec.dtype != dtype or (shape is not None and tuple(rec.shape) != shape) or (shape is None and len(rec.shape) != 1):
        want = f"{dtype} {list(shape)}" if shape is not None else f"{dtype} [M]"
        raise SceneFileError(f"{what}: stream {name!r} is {rec.dtype} {list(rec.shape)}, expected {want}")


def scene_to_code(scene: SceneFile) -> ImageCode:
    """Check an ``image`` file's metadata and streams against each other and decode its integers."""
    what = scene.path
    if scene.method != METHOD:
        raise SceneFileError(f"{what}: holds method {scene.method!r}, not an image ({METHOD!r})")
    meta = scene.metadata
    width = _meta_int(meta, "width", 1, MAX_SIDE, what)
    height = _meta_int(meta, "height", 1, MAX_SIDE, what)
    n = _meta_int(meta, "n_gaussians", 0, MAX_GAUSSIANS, what)
    frac = _meta_int(meta, "pos_frac_bits", 0, MAX_FRAC_BITS, what)
    chol_bits = _meta_int(meta, "chol_bits", 1, 8, what)
    chol_range = _meta_ints(meta, "chol_range", 6, 1 << 20, what).reshape(2, 3)
    if not np.all(chol_range[1] > chol_range[0]):
        raise SceneFileError(f"{what}: metadata 'chol_range' must have hi > lo per channel, got {chol_range.tolist()}")
    step_q = _meta_int(meta, "color_step_q", 0, MAX_STEP_Q, what)
    extra = sorted(set(scene.streams) - set(STREAMS))
    if extra:
        raise SceneFileError(f"{what}: unexpected streams {extra} in an image file")
    _expect_stream(scene, "pos_exp", "uint8", (n,), what)
    _expect_stream(scene, "pos_mant", "uint8", None, what)
    _expect_stream(scene, "chol", "uint8", (n, 3), what)
    _expect_stream(scene, "color", "int16", (n, 3), what)
    exps, packed = scene.decode("pos_exp"), scene.decode("pos_mant")
    d = join_deltas(exps, packed, what)
    codes = np.cumsum(d)
    gw, gh = _pos_grid(width, height, frac)
    if codes.size and int(codes[-1]) >= 1 << (2 * MORTON_BITS):
        raise SceneFileError(f"{what}: position codes exceed the Morton range")
    q_pos = morton2d_decode(codes)
    if q_pos.size and (int(q_pos[:, 0].max()) >= gw or int(q_pos[:, 1].max()) >= gh):
        raise SceneFileError(f"{what}: positions fall outside the {width}x{height} image")
    q_chol = scene.decode("chol")
    if q_chol.size and int(q_chol.max()) >= 1 << chol_bits:
        raise SceneFileError(f"{what}: Cholesky levels exceed {chol_bits} bits")
    q_color = scene.decode("color")
    return ImageCode(width, height, frac, chol_bits, step_q, chol_range, q_pos, q_chol, q_color)


def read_code(path: str | os.PathLike) -> ImageCode:
    """The integers of the ``image`` file at ``path`` (SceneFileError if it is not a valid one)."""
    return scene_to_code(read_scz(path))


def decode_image(path: str | os.PathLike) -> np.ndarray:  # -> [H, W, 3] uint8
    """Decode an ``image`` ``.scz`` file to 8-bit RGB pixels."""
    return render_code(read_code(path))


# ----------------------------------------------------------------------------------- rate control


def _as_image(img: Any) -> Tensor:
    a = img.detach().cpu().numpy() if isinstance(img, Tensor) else np.asarray(img)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"img must be a uint8 array of shape [H, W, 3], got {a.dtype} {tuple(a.shape)}")
    if a.shape[0] > MAX_SIDE or a.shape[1] > MAX_SIDE:
        raise ValueError(f"img sides must be at most {MAX_SIDE}, got {a.shape[1]}x{a.shape[0]}")
    return torch.from_numpy(np.array(a, dtype=np.float32) / 255.0)


class _Sizer:
    """Exact file size of candidate codes (written to a private temporary folder)."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="scenezip-image-")
        self.path = Path(self._dir.name) / "probe.scz"

    def __call__(self, code: ImageCode) -> int:
        return write_code(self.path, code)

    def close(self) -> None:
        self._dir.cleanup()


def _prune_to(model: ImageGaussians, order: Tensor, quant: QuantConfig, chol_q: np.ndarray,
              target: int, sizer: _Sizer) -> tuple[int, int]:  # fmt: skip
    """Largest count ``k`` (keeping ``order[:k]``, the most important first) whose file fits ``target``
    bytes, by bisection; returns ``(k, size)`` (``k = 1`` if nothing fits)."""

    def size(k: int) -> int:
        return sizer(quantize_model(model.keep(order[:k]), quant, chol_q))

    lo, hi = 1, model.n
    s_hi = size(hi)
    if s_hi <= target:
        return hi, s_hi
    s_lo = size(lo)
    if s_lo > target:
        return lo, s_lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        s = size(mid)
        if s <= target:
            lo, s_lo = mid, s
        else:
            hi = mid
    return lo, s_lo


def encode_image(
    img: Any,  # [H, W, 3] uint8 (numpy or torch)
    bpp: float,
    path: str | os.PathLike,
    steps: int = 600,
    quant: QuantConfig | None = None,
    fit_config: FitConfig | None = None,
    bits_per_gaussian: float = 36.0,
    oversample: float = 1.3,
    qat_fraction: float = 0.35,
    tolerance: float = 0.1,
    seed: int = 0,
    progress: bool = True,
) -> EncodeResult:
    """Fit, quantize and write ``img`` as an ``image`` ``.scz`` file of about ``bpp`` bits per pixel.

    The whole file (header included) counts. See the module docstring for the rate control; the result
    lands within ``tolerance`` of the target unless the target is below what one Gaussian costs (the
    file then holds one Gaussian) or above what ``oversample`` times the first estimate can reach at
    the finest colour step tried. ``steps`` are split into float fitting and ``qat_fraction`` of
    quantization-aware fine-tuning.
    """
    t0 = time.perf_counter()
    target_img = _as_image(img)
    if not (isinstance(bpp, (int, float)) and math.isfinite(bpp) and bpp > 0):
        raise ValueError(f"bpp must be a finite number > 0, got {bpp!r}")
    if steps < 0 or not 0.0 <= qat_fraction <= 1.0 or oversample < 1.0 or not 0 < tolerance < 1:
        raise ValueError("steps must be >= 0, qat_fraction in [0, 1], oversample >= 1, tolerance in (0, 1)")
    quant = quant or QuantConfig()
    fcfg = fit_config or FitConfig()
    h, w = target_img.shape[0], target_img.shape[1]
    target = int(bpp * h * w / 8.0)
    log: list[str] = []
    sizer = _Sizer()
    try:
        # 1. count from the target: the bytes past a one-Gaussian file, at bits_per_gaussian each
        probe = init_from_image(target_img, 1, seed=seed)
        overhead = sizer(quantize_model(probe, quant, make_chol_range(probe.chol_raw)))
        n_est = max(1, int((target - overhead) * 8 / bits_per_gaussian))
        n_fit = int(min(h * w, max(1, math.ceil(n_est * oversample))))
        log.append(f"target {target} B: estimate {n_est} Gaussians, fitting {n_fit}")
        model = init_from_image(target_img, n_fit, seed=seed)
        # 2. float fit
        float_steps = int(round(steps * (1 - qat_fraction)))
        fit(model, target_img, replace(fcfg, steps=float_steps), progress=progress, desc=f"fit {n_fit} Gaussians")
        # 3. prune to the target, refining the colour step while even every Gaussian is too small a file
        chol_q = make_chol_range(model.chol_raw)
        order = torch.argsort(model.importance(), descending=True, stable=True)
        k, size = _prune_to(model, order, quant, chol_q, target, sizer)
        while size < (1 - tolerance / 2) * target and k == model.n and quant.color_step_q < MAX_STEP_Q:
            quant = replace(quant, color_step_q=quant.color_step_q + 2)
            k, size = _prune_to(model, order, quant, chol_q, target, sizer)
            log.append(f"under target with all Gaussians: colour step {quant.color_step:.5f}")
        model = model.keep(order[:k])
        log.append(f"pruned to {k} Gaussians ({size} B)")
        # 4. quantization-aware fine-tuning of the kept Gaussians
        qat_steps = steps - float_steps
        if qat_steps > 0:
            transform = qat_transform(w, h, quant, chol_q)
            qcfg = replace(fcfg, steps=qat_steps, lr_means=fcfg.lr_means * 0.3, lr_chol=fcfg.lr_chol * 0.3,
                           lr_colors=fcfg.lr_colors * 0.3)  # fmt: skip
            fit(model, target_img, qcfg, transform=transform, progress=progress, desc=f"QAT {k} Gaussians")
        # 5. final trim (fine-tuning moves the entropy a little), then write
        order = torch.argsort(model.importance(), descending=True, stable=True)
        k, size = _prune_to(model, order, quant, chol_q, target, sizer)
        while size < (1 - tolerance) * target and k == model.n and quant.color_step_q < MAX_STEP_Q:
            quant = replace(quant, color_step_q=quant.color_step_q + 2)
            k, size = _prune_to(model, order, quant, chol_q, target, sizer)
            log.append(f"under target after fine-tuning: colour step {quant.color_step:.5f}")
        code = quantize_model(model.keep(order[:k]), quant, chol_q)
        nbytes = write_code(path, code)
    finally:
        sizer.close()
    decoded = torch.from_numpy(render_code(code).astype(np.float32) / 255.0)
    mse = float(torch.mean((decoded - target_img) ** 2))
    psnr = 10 * math.log10(1 / mse) if mse > 0 else float("inf")
    log.append(f"wrote {code.n} Gaussians, {nbytes} B")
    return EncodeResult(Path(path), nbytes, nbytes * 8.0 / (h * w), float(bpp), code.n, psnr,
                        time.perf_counter() - t0, steps, quant, log)  # fmt: skip
