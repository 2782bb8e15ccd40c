"""Scalar quantizers for every codec: a fixed-range uniform quantizer, a learned-step (LSQ) quantizer,
straight-through rounding, uniform-noise training, and integer conversion for the entropy coder.

Written by hand so that what a model sees while training is what a file decodes to:

- **Integer grid** (:func:`quantize_to_int` / :func:`dequantize`): ``q = round(x / step)`` with
  round-half-to-even, computed in float64; decoding is ``float32(q * step)`` with the product taken
  in float64, which is exact, so the result is the correctly rounded product on every machine
  (numpy or torch, CPU or GPU). Re-quantizing a decoded value gives the same integer for
  ``|q| < 2**23`` (so ``dequantize(quantize(.))`` is idempotent there).
- **Fixed range** (:class:`UniformQuantizer`): ``2**bits`` levels over ``[lo, hi]``, the exact
  arithmetic of :func:`scenezip.quant.codecs.quantize_uniform` / ``dequantize_uniform`` (the
  integers it returns can be written with any integer codec). Compact-3DGS quantizes opacities and
  hash-grid values this way (8 bits, ``lo, hi = min, max`` of the tensor, after zeroing hash values
  with ``|v| <= 0.1``, see :func:`zero_small`).
- **Quantization-aware training** follows CompressAI's two modes: ``"ste"`` rounds in the forward
  pass and passes the gradient through unchanged (``ste_round``), so the forward value equals the
  decoded value bit for bit; ``"noise"`` adds uniform noise of one step width instead (a smooth proxy,
  CompressAI's ``"noise"``); ``"round"`` is plain rounding with no gradient trick (evaluation).
- **Learned step** (:class:`LearnedStepQuantizer`): LSQ (Esser et al., ICLR 2020). Symmetric integer
  levels ``[-Q, Q]`` with ``Q = 2**(bits-1) - 1`` (or unbounded with ``bits=None``, for values that
  go to the entropy coder); ``x_hat = step * clamp(round(x / step), -Q, Q)``. The step is an
  ``nn.Parameter``; its gradient is LSQ's ``round(x/s) - x/s`` inside the range and ``+-Q`` outside,
  scaled by ``g = 1 / sqrt(numel * Q)`` (``Q = 1`` when unbounded) so the step learns at a rate
  comparable to the weights.
"""

from __future__ import annotations

import math
from typing import Literal, Union

import numpy as np
import torch
from torch import Tensor, nn

from scenezip.quant.codecs import dequantize_uniform, quantize_uniform

QatMode = Literal["ste", "noise", "round"]
QAT_MODES = ("ste", "noise", "round")
ArrayLike = Union[Tensor, np.ndarray]

_INT32_MAX = 2**31 - 1


# ------------------------------------------------------------------------------------ functions


def ste_round(x: Tensor) -> Tensor:  # [...] -> [...]
    """``round(x)`` (half to even) in the forward pass, identity gradient in the backward pass.

    Written ``sg(round(x)) + (x - sg(x))`` so the value is exactly the rounded one."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    return torch.round(x).detach() + (x - x.detach())


def _grad_scale(x: Tensor, scale: float) -> Tensor:
    """Value ``x``, gradient multiplied by ``scale`` (LSQ's gradient scaling)."""
    y = x * scale
    return (x - y).detach() + y


def _check_step(step) -> None:
    if isinstance(step, Tensor):
        if not step.is_floating_point() or not bool(torch.all(step > 0)) or not bool(torch.all(torch.isfinite(step))):
            raise ValueError("step must be finite and > 0 everywhere")
    else:
        s = np.asarray(step, dtype=np.float64)
        if not (np.all(np.isfinite(s)) and np.all(s > 0)):
            raise ValueError(f"step must be finite and > 0 everywhere, got {step!r}")


def quantize_to_int(x: ArrayLike, step: float | ArrayLike) -> ArrayLike:  # [...] -> [...] int32
    """``round(x / step)`` as int32 (half to even, float64 arithmetic; ``step`` broadcasts).

    A torch tensor gives a torch tensor on its device, anything else a numpy array. Raises
    ValueError for NaN or for integers outside int32."""
    _check_step(step)
    if isinstance(x, Tensor):
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
        s = step.detach().to(x.device, torch.float64) if isinstance(step, Tensor) else float(step)
        t = torch.round(x.detach().to(torch.float64) / s)
        if bool(torch.isnan(t).any()):
            raise ValueError("x contains NaN")
        if t.numel() and float(t.abs().max()) > _INT32_MAX:
            raise ValueError(f"x / step exceeds the int32 range (max |x / step| = {float(t.abs().max()):.3g})")
        return t.to(torch.int32)
    s = np.asarray(step.detach().cpu() if isinstance(step, Tensor) else step, dtype=np.float64)
    t = np.rint(np.asarray(x, dtype=np.float64) / s)
    if np.isnan(t).any():
        raise ValueError("x contains NaN")
    if t.size and float(np.abs(t).max()) > _INT32_MAX:
        raise ValueError(f"x / step exceeds the int32 range (max |x / step| = {float(np.abs(t).max()):.3g})")
    return t.astype(np.int32)


def dequantize(q: ArrayLike, step: float | ArrayLike) -> ArrayLike:  # [...] -> [...] float32
    """``float32(q * step)``, the product taken in float64 (exact, so the result is bit-identical
    everywhere). Torch in, torch out; otherwise numpy."""
    _check_step(step)
    if isinstance(q, Tensor):
        s = step.detach().to(q.device, torch.float64) if isinstance(step, Tensor) else float(step)
        return (q.to(torch.float64) * s).to(torch.float32)
    s = np.asarray(step.detach().cpu() if isinstance(step, Tensor) else step, dtype=np.float64)
    return (np.asarray(q, dtype=np.float64) * s).astype(np.float32)


def fake_quantize(
    x: Tensor,  # [...]
    step: float | Tensor,
    mode: QatMode = "ste",
    generator: torch.Generator | None = None,
) -> Tensor:  # [...]
    """Differentiable stand-in for ``dequantize(quantize_to_int(x, step), step)`` on the unbounded grid.

    ``"ste"``: exactly the decoded value, identity gradient; ``"noise"``: ``x + step * u`` with ``u``
    uniform in ``[-0.5, 0.5)`` (``generator`` on ``x``'s device, or None); ``"round"``: the decoded
    value with no gradient to ``x``. ``step`` is not trained here (see LearnedStepQuantizer)."""
    if mode not in QAT_MODES:
        raise ValueError(f"mode must be one of {QAT_MODES}, got {mode!r}")
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
    if mode == "noise":
        _check_step(step)
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) - 0.5
        s = step.to(x.device, x.dtype) if isinstance(step, Tensor) else step
        return x + u * s
    decoded = dequantize(quantize_to_int(x, step), step).to(x.dtype)
    if mode == "round":
        return decoded
    return decoded + (x - x.detach())


def zero_small(x: ArrayLike, threshold: float) -> ArrayLike:  # [...] -> [...]
    """``x`` with entries of ``|x| <= threshold`` set to 0 (Compact-3DGS does this with 0.1 to the
    hash-grid values before 8-bit quantization, so zeros dominate the entropy-coded stream).
    Differentiable for tensors (gradient 1 where kept, 0 where zeroed)."""
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"threshold must be a number >= 0, got {threshold!r}")
    if isinstance(x, Tensor):
        return x * (x.detach().abs() > threshold).to(x.dtype)
    a = np.asarray(x)
    return np.where(np.abs(a) > threshold, a, np.zeros_like(a))


# ------------------------------------------------------------------------------------ modules


class UniformQuantizer(nn.Module):
    """``2**bits`` uniform levels over ``[lo, hi]`` (``lo``/``hi`` scalars or tensors broadcasting
    against the input, e.g. per channel ``[D]``); values outside are clipped.

    ``step = (hi - lo) / (2**bits - 1)``. :meth:`quantize` / :meth:`dequantize` are exactly
    :func:`scenezip.quant.codecs.quantize_uniform` / ``dequantize_uniform`` in torch (unsigned
    integers in ``[0, 2**bits - 1]``, int64 here). :meth:`forward` is the training-time stand-in
    (``mode``: ``"ste"``, ``"noise"`` or ``"round"``): with ``"ste"`` and ``"round"`` its value is
    exactly ``dequantize(quantize(x))``; gradients reach ``x`` inside the range only.

    Args:
        lo, hi: range ends, finite, ``hi > lo`` everywhere.
        bits: 1..32.
        mode: quantization-aware training mode of :meth:`forward`.
    """

    def __init__(self, lo: float | Tensor, hi: float | Tensor, bits: int = 8, mode: QatMode = "ste") -> None:
        super().__init__()
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32:
            raise ValueError(f"bits must be an integer in [1, 32], got {bits!r}")
        if mode not in QAT_MODES:
            raise ValueError(f"mode must be one of {QAT_MODES}, got {mode!r}")
        lo_t = torch.as_tensor(lo.detach().cpu() if isinstance(lo, Tensor) else lo, dtype=torch.float64)
        hi_t = torch.as_tensor(hi.detach().cpu() if isinstance(hi, Tensor) else hi, dtype=torch.float64)
        if not (bool(torch.isfinite(lo_t).all()) and bool(torch.isfinite(hi_t).all()) and bool((hi_t > lo_t).all())):
            raise ValueError("lo and hi must be finite with hi > lo everywhere")
        self.bits = bits
        self.mode = mode
        self.register_buffer("lo", lo_t.clone())
        self.register_buffer("hi", hi_t.clone())

    @classmethod
    def from_data(cls, x: Tensor, bits: int = 8, mode: QatMode = "ste", dim: int | None = None) -> "UniformQuantizer":
        """Range ``[min(x), max(x)]`` (over all of ``x``, or per index of dimension ``dim``), as
        Compact-3DGS' post-training quantization; a constant range is widened by 1e-6 (absolute)."""
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.numel() == 0:
            raise ValueError("x must be a non-empty floating-point tensor")
        xd = x.detach().to(torch.float64)
        if dim is None:
            lo, hi = xd.min(), xd.max()
        else:
            moved = xd.movedim(dim, -1).reshape(-1, xd.shape[dim])
            lo, hi = moved.min(0).values, moved.max(0).values
            shape = [1] * (x.dim() - dim - 1) if dim >= 0 else [1] * (-dim - 1)
            lo, hi = lo.reshape(-1, *shape), hi.reshape(-1, *shape)
        hi = torch.where(hi > lo, hi, lo + 1e-6)
        return cls(lo.cpu(), hi.cpu(), bits, mode)

    @property
    def levels(self) -> int:
        return (1 << self.bits) - 1

    @property
    def step(self) -> Tensor:
        """``(hi - lo) / (2**bits - 1)``, float64."""
        return (self.hi - self.lo) / float(self.levels)

    def quantize(self, x: Tensor) -> Tensor:  # [...] -> [...] int64 in [0, 2**bits - 1]
        """Integer levels (the arithmetic of ``codecs.quantize_uniform``, float64)."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        x64 = x.detach().to(torch.float64)
        if bool(torch.isnan(x64).any()):
            raise ValueError("x contains NaN")
        lo, hi = self.lo.to(x.device), self.hi.to(x.device)
        t = (torch.minimum(torch.maximum(x64, lo), hi) - lo) / (hi - lo) * float(self.levels)
        return torch.clamp(torch.round(t), 0, self.levels).to(torch.int64)

    def dequantize(self, q: Tensor) -> Tensor:  # [...] int -> [...] float32
        """``float32(lo + q * step)`` (the arithmetic of ``codecs.dequantize_uniform``)."""
        lo, hi = self.lo.to(q.device), self.hi.to(q.device)
        return (lo + q.to(torch.float64) * ((hi - lo) / float(self.levels))).to(torch.float32)

    def to_numpy_codes(self, x: Tensor) -> np.ndarray:
        """``codecs.quantize_uniform(x, lo, hi, bits)`` itself (uint8/16/32 numpy), for writing streams."""
        return quantize_uniform(x.detach().cpu().numpy(), self.lo.numpy(), self.hi.numpy(), self.bits)

    def from_numpy_codes(self, q: np.ndarray) -> np.ndarray:
        """``codecs.dequantize_uniform(q, lo, hi, bits)`` (float32 numpy), for reading streams."""
        return dequantize_uniform(q, self.lo.cpu().numpy(), self.hi.cpu().numpy(), self.bits)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:  # [...] -> [...]
        lo = self.lo.to(x.device, x.dtype)
        hi = self.hi.to(x.device, x.dtype)
        xc = torch.minimum(torch.maximum(x, lo), hi)  # gradient 1 inside, 0 outside
        if self.mode == "noise":
            u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device) - 0.5
            return xc + u * self.step.to(x.device, x.dtype)
        decoded = self.dequantize(self.quantize(x)).to(x.dtype)
        if self.mode == "round":
            return decoded
        return decoded + (xc - xc.detach())

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode!r}, lo shape={tuple(self.lo.shape)}"


class LearnedStepQuantizer(nn.Module):
    """LSQ: symmetric integer levels with a learned step (see the module docstring).

    Args:
        init_step: initial step (> 0), a number or a tensor broadcasting against the input
            (e.g. ``[D]`` for one step per channel).
        bits: levels ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` (2..32), or None for an unbounded
            integer grid (values then go to an entropy coder).
        min_step: the step is clamped below at this value in every use.
    """

    def __init__(self, init_step: float | Tensor, bits: int | None = 8, min_step: float = 1e-8) -> None:
        super().__init__()
        if bits is not None and (isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32):
            raise ValueError(f"bits must be None or an integer in [2, 32], got {bits!r}")
        if not min_step > 0:
            raise ValueError(f"min_step must be > 0, got {min_step!r}")
        init = init_step.detach().cpu() if isinstance(init_step, Tensor) else init_step
        s = torch.as_tensor(init, dtype=torch.float32)
        _check_step(s)
        self.bits = bits
        self.min_step = float(min_step)
        self.step = nn.Parameter(s.clone())

    @classmethod
    def from_data(cls, x: Tensor, bits: int | None = 8) -> "LearnedStepQuantizer":
        """LSQ's initialisation ``step = 2 mean|x| / sqrt(Q)`` (``Q = 1`` when unbounded)."""
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.numel() == 0:
            raise ValueError("x must be a non-empty floating-point tensor")
        q = 1 if bits is None else 2 ** (bits - 1) - 1
        mean_abs = float(x.detach().abs().mean())
        return cls(max(2.0 * mean_abs / math.sqrt(q), 1e-6), bits)

    @property
    def qmax(self) -> int | None:
        """Largest level ``Q`` (None when unbounded)."""
        return None if self.bits is None else 2 ** (self.bits - 1) - 1

    def current_step(self) -> Tensor:
        """The step in use (clamped at ``min_step``), float32, with gradient."""
        return self.step.clamp_min(self.min_step)

    def quantize(self, x: Tensor) -> Tensor:  # [...] -> [...] int32
        """``clamp(round(x / step), -Q, Q)`` as int32 (float64 arithmetic)."""
        q = quantize_to_int(x, self.current_step().detach())
        return q if self.qmax is None else q.clamp(-self.qmax, self.qmax)

    def dequantize(self, q: Tensor) -> Tensor:  # [...] -> [...] float32
        return dequantize(q, self.current_step().detach())

    def forward(self, x: Tensor) -> Tensor:  # [...] -> [...]
        """``dequantize(quantize(x))`` exactly, with LSQ gradients to ``x`` (1 inside the range,
        0 outside) and to the step."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {getattr(x, 'dtype', type(x).__name__)}")
        qmax = self.qmax
        g = 1.0 / math.sqrt(max(x.numel(), 1) * (1 if qmax is None else qmax))
        s = _grad_scale(self.current_step().to(x.device), g)
        q = self.quantize(x).to(x.dtype)
        v = x / s
        if qmax is not None:
            v = v.clamp(-qmax, qmax)
        surrogate = s * (q + (v - v.detach()))  # d/ds = q - x/s inside, +-Q outside; d/dx = 1 inside
        decoded = self.dequantize(q).to(x.dtype)
        return decoded + (surrogate - surrogate.detach())

    def extra_repr(self) -> str:
        return f"bits={self.bits}, step shape={tuple(self.step.shape)}"
