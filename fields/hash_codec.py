"""Compression of a multiresolution hash table: learned masks, learned-step quantization, per-level rANS.

Written by hand because the training transform and the file format are one contract: what the model
renders with at the end of training (:meth:`HashTableCompressor.quantized_table`) is, bit for bit,
what :func:`decode_hash_table` returns from a file. The ideas are those of HollowNeRF / Masked Wavelet
NeRF (a learnable mask that sparsifies the table, trained against a rate term) and of Compact-3DGS'
masks (:mod:`scenezip.quant.mask`), with LSQ quantization (:mod:`scenezip.quant.scalar`) and the
stored-integer-table rANS coder (:mod:`scenezip.quant.entropy`).

Training transform (``HashTableCompressor.forward(flat) -> flat'``, usable as a ``hash_transform``):

1. **mask**: one logit per table entry (``mask_granularity="entry"``: the ``F`` features of an entry
   together) or per parameter (``"feature"``); the value is multiplied by the hard mask
   ``1[sigmoid(m) > threshold]`` with the straight-through gradient of ``sigmoid(m)``;
2. **quantize**: per level ``l``, ``x_hat = step_l * clamp(round(x / step_l), -Q, Q)`` with
   ``Q = 2**(bits-1) - 1`` and a learned ``step_l`` (LSQ gradients). The steps start, when
   quantization first runs, at ``max|x| / Q`` over the level (``step_init="absmax"``: nothing is
   clipped at the start) or LSQ's ``2 mean|x| / sqrt(Q)`` (``"lsq"``).

Masking starts at training step ``mask_start`` and quantization at ``qat_start`` (call
:meth:`HashTableCompressor.set_step` every step); before that the transform is the identity.

Rate term (``rate_loss()``, in estimated bits per table parameter): ``sum_u M_u * b_u / n_params`` over
mask units ``u``, where ``M_u`` is the hard mask with the straight-through gradient of ``sigmoid(m_u)``
(so the value counts exactly the kept units, as the file does; weighting by the soft mask instead
under-counted the coded size 3-6x once surviving logits sank towards the threshold) and ``b_u`` is the
estimated cost of coding the unit's values. Before quantization starts ``b_u = F * prior_bits`` (a constant, so the
term has the gradient of Compact-3DGS' mean soft mask, scaled). Once it runs, ``b_u`` is the code length of the
unit's values ``y = x / step_l`` under a discretized Laplace model of the level (scale: the mean
``|round(y)|`` of the level's kept values, held fixed per step), differentiable in ``x``, the step
and the logits: the rate gradient lowers the masks of costly entries, pulls values towards zero and
widens the steps, and the loss on the rendering holds them back. The mask stream itself (about
``H(keep fraction)`` bits per unit) is not part of the proxy.

File format (``encode_hash_table`` / ``decode_hash_table``), all streams named ``{prefix}_...``. A masked
value decodes to 0, exactly like a kept value that rounds to 0, so each level picks (``"auto"``, by
measured size) one of two layouts: **mask** (its keep bits go to the keep stream and only its kept
values are coded) or **zeros** (every value is coded, masked ones as 0; no keep bits). On tables with
randomly scattered masked entries (hashed levels) "zeros" usually wins: the order-0 cost of a keep bit
is ``H(keep fraction)``, often more than what the extra zero symbols cost.

- ``{prefix}_keep`` (only when some level uses the mask layout): the keep bits over the units
  (entries or parameters, flat order) of those levels, either packed 8 to a byte (``np.packbits``,
  little bit order, pad bits zero; ``rans`` or ``zlib``) or one ``bool`` per unit (``rans``, a
  two-symbol table: the order-0 cost), whichever of the three is smallest for this table;
- ``{prefix}_q{a:02d}`` or ``{prefix}_q{a:02d}-{b:02d}``: the integers ``round(x / step_l)`` of the
  coded values of levels ``a..b`` in flat order, one ``rans`` stream (with its stored integer
  frequency table) per level; consecutive levels are coded as one group when that is measured to be
  smaller (tiny coarse levels, where a table costs more than it saves);
- metadata: granularity, bits, the per-level steps as exact floats (float32 values), the per-level
  layout (``masked_levels``) and coded unit counts (``kept``), the groups and the stream names.

Decoding checks every count, dtype, shape and value range against the grid config and the metadata
before allocating and raises :class:`~scenezip.errors.SceneFileError` naming the source otherwise.
A decoded value is ``float32(q * step_l)`` with the product taken in float64 (exact), 0 where masked.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from scenezip.errors import SceneFileError
from scenezip.fields.hashgrid import HashGrid, HashGridConfig, level_offsets, n_params
from scenezip.quant import entropy
from scenezip.quant.codecs import get_codec
from scenezip.quant.mask import MASK_INIT_LOGIT, MASK_THRESHOLD, hard_mask, keep_mask
from scenezip.quant.scalar import LearnedStepQuantizer, dequantize, quantize_to_int

MaskGranularity = Literal["entry", "feature"]
StepInit = Literal["absmax", "lsq"]
CODEC_VERSION = 1
_LN2 = math.log(2.0)
_MIN_SCALE = 0.05  # smallest Laplace scale (in steps) of the rate model
_MIN_PROB = 1e-9  # the rate model never charges more than -log2(1e-9) ~ 30 bits per value
DEFAULT_MIN_GROUP_SYMBOLS = 1 << 14  # levels with fewer kept values try to share a table with a neighbour


# ------------------------------------------------------------------------------------ helpers


def _config_of(grid_or_config: HashGrid | HashGridConfig) -> HashGridConfig:
    if isinstance(grid_or_config, HashGrid):
        return grid_or_config.config
    if isinstance(grid_or_config, HashGridConfig):
        return grid_or_config
    raise ValueError(f"grid_or_config must be a HashGrid or HashGridConfig, got {type(grid_or_config).__name__}")


def _unit_bounds(config: HashGridConfig, granularity: str) -> list[int]:
    """``n_levels + 1`` offsets of each level's mask units (entries or parameters)."""
    off = level_offsets(config)
    f = 1 if granularity == "entry" else config.n_features_per_level
    return [o * f for o in off]


def _int_dtype(qmax: int) -> np.dtype:
    return np.dtype(np.int8 if qmax <= 127 else np.int16 if qmax <= 32767 else np.int32)


def laplace_bits(y: Tensor, scale: Tensor | float) -> Tensor:  # [...] -> [...]
    """Code length in bits of ``round(y)`` under a Laplace density of ``scale`` (in steps) integrated over
    the unit bin around ``y``: ``-log2(P(|t - y| <= 1/2))``. Differentiable in ``y`` and ``scale``;
    roughly ``|y| / (scale ln 2)`` plus a constant for ``|y| >= 1/2`` (an L1 pull towards zero)."""
    a = y.abs()
    b = torch.as_tensor(scale, dtype=y.dtype, device=y.device)
    # |y| >= 1/2: P = exp(-|y| / b) * sinh(1 / (2b));  |y| < 1/2: P = 1 - exp(-1 / (2b)) * cosh(y / b)
    log_sinh = torch.log(-torch.expm1(-1.0 / b)) + 0.5 / b - _LN2  # log(sinh(1/(2b))), stable
    outer = a / b - log_sinh
    inner_p = 1.0 - torch.exp(-0.5 / b) * torch.cosh(torch.clamp(a, max=0.5) / b)
    inner = -torch.log(torch.clamp(inner_p, min=_MIN_PROB))
    nats = torch.where(a >= 0.5, outer, inner)
    return torch.clamp(nats, max=-math.log(_MIN_PROB)) / _LN2


# ------------------------------------------------------------------------------------ module


class HashTableCompressor(nn.Module):
    """Learnable mask + per-level learned-step quantization of a flat hash table (see the module docstring).

    Args:
        grid_or_config: the :class:`HashGrid` (or its config) whose flat ``params`` this transforms.
        bits: integer levels ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` (2..16).
        mask_granularity: ``"entry"`` (one logit per table entry, ``F`` values) or ``"feature"``.
        mask_threshold: a unit is kept where ``sigmoid(logit) > mask_threshold``.
        init_logit: starting mask logit (Compact-3DGS: 1.0).
        mask_start: training step from which the mask applies (and the rate term is non-zero).
        qat_start: training step from which values are quantized (steps initialised then).
        step_init: ``"absmax"`` (``max|x| / Q`` per level) or ``"lsq"`` (``2 mean|x| / sqrt(Q)``).
        prior_bits: bits per value the rate term charges a kept unit before quantization starts.
    """

    def __init__(
        self,
        grid_or_config: HashGrid | HashGridConfig,
        bits: int = 8,
        mask_granularity: MaskGranularity = "entry",
        mask_threshold: float = MASK_THRESHOLD,
        init_logit: float = MASK_INIT_LOGIT,
        mask_start: int = 0,
        qat_start: int = 0,
        step_init: StepInit = "absmax",
        prior_bits: float = 4.0,
    ) -> None:
        super().__init__()
        config = _config_of(grid_or_config)
        if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
            raise ValueError(f"bits must be an integer in [2, 16], got {bits!r}")
        if mask_granularity not in ("entry", "feature"):
            raise ValueError(f"mask_granularity must be 'entry' or 'feature', got {mask_granularity!r}")
        if not isinstance(mask_threshold, (int, float)) or not 0.0 < mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be in (0, 1), got {mask_threshold!r}")
        if step_init not in ("absmax", "lsq"):
            raise ValueError(f"step_init must be 'absmax' or 'lsq', got {step_init!r}")
        if not prior_bits >= 0:
            raise ValueError(f"prior_bits must be >= 0, got {prior_bits!r}")
        for name, v in (("mask_start", mask_start), ("qat_start", qat_start)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        self.config = config
        self.bits = bits
        self.qmax = (1 << (bits - 1)) - 1
        self.mask_granularity = mask_granularity
        self.mask_threshold = float(mask_threshold)
        self.mask_start = mask_start
        self.qat_start = qat_start
        self.step_init = step_init
        self.prior_bits = float(prior_bits)
        self.n_params = n_params(config)
        self.unit_bounds = _unit_bounds(config, mask_granularity)
        self.param_bounds = [o * config.n_features_per_level for o in level_offsets(config)]
        self.mask_logits = nn.Parameter(torch.full((self.unit_bounds[-1],), float(init_logit)))
        self.quantizers = nn.ModuleList(LearnedStepQuantizer(1.0, bits) for _ in range(config.n_levels))
        self.register_buffer("steps_initialized", torch.zeros((), dtype=torch.bool))
        self.enabled = True  # master switch: False makes forward the identity and the rate term zero
        self.mask_active = mask_start == 0
        self.quant_active = qat_start == 0
        self._last_input: Tensor | None = None

    # ------------------------------------------------------------------ schedule
    def set_step(self, step: int) -> None:
        """Turn the mask and the quantization on from ``mask_start`` / ``qat_start`` (call every step)."""
        self.mask_active = step >= self.mask_start
        self.quant_active = step >= self.qat_start

    def param_groups(self, lr_mask: float = 1e-2, lr_step: float = 1e-3) -> list[dict]:
        """Optimizer groups: the mask logits and the quantization steps (their own learning rates)."""
        return [
            {"params": [self.mask_logits], "lr": lr_mask, "name": "hash_mask"},
            {"params": [q.step for q in self.quantizers], "lr": lr_step, "name": "hash_step"},
        ]

    # ------------------------------------------------------------------ pieces
    def _check_flat(self, flat: Tensor) -> None:
        if not isinstance(flat, Tensor) or flat.shape != (self.n_params,) or not flat.is_floating_point():
            shape = tuple(flat.shape) if isinstance(flat, Tensor) else type(flat).__name__
            raise ValueError(f"flat_params must be a float tensor of shape [{self.n_params}], got {shape}")

    def steps(self) -> list[float]:
        """The per-level steps in use (float32 values as Python floats, exact)."""
        return [float(q.current_step().detach().cpu()) for q in self.quantizers]

    @torch.no_grad()
    def init_steps(self, flat_params: Tensor) -> None:
        """Set every level's step from the (masked) values of ``flat_params`` ``[n_params]``."""
        self._check_flat(flat_params)
        x = self._apply_mask(flat_params.detach(), hard=True)
        for level, q in enumerate(self.quantizers):
            v = x[self.param_bounds[level] : self.param_bounds[level + 1]].abs()
            v = v[v > 0]
            if v.numel() == 0:
                s = 1e-3
            elif self.step_init == "absmax":
                s = float(v.max()) / self.qmax
            else:
                s = 2.0 * float(v.mean()) / math.sqrt(self.qmax)
            q.step.fill_(max(s, 1e-6))
        self.steps_initialized.fill_(True)

    def _apply_mask(self, flat: Tensor, hard: bool = False) -> Tensor:
        """``flat`` with masked units set to 0: straight-through (``hard=False``) or plain (no gradient)."""
        logits = self.mask_logits.to(flat.device)
        if hard:
            m = keep_mask(logits, self.mask_threshold).to(flat.dtype)
        else:
            m = hard_mask(logits, self.mask_threshold).to(flat.dtype)
        if self.mask_granularity == "entry":
            return (flat.view(-1, self.config.n_features_per_level) * m[:, None]).reshape(-1)
        return flat * m

    def _quantize(self, flat: Tensor) -> Tensor:
        parts = [
            q(flat[self.param_bounds[level] : self.param_bounds[level + 1]]) for level, q in enumerate(self.quantizers)
        ]
        return torch.cat(parts)

    # ------------------------------------------------------------------ training
    def forward(self, flat_params: Tensor) -> Tensor:  # [n_params] -> [n_params]
        """The table the encoding reads: masked (from ``mask_start``), then quantized (from ``qat_start``).

        With both active the value equals :meth:`quantized_table` bit for bit."""
        self._check_flat(flat_params)
        object.__setattr__(self, "_last_input", flat_params)  # never registered (it may be a Parameter)
        if not self.enabled:
            return flat_params
        x = flat_params
        if self.mask_active:
            x = self._apply_mask(x)
        if self.quant_active:
            if not bool(self.steps_initialized):
                self.init_steps(flat_params)
            x = self._quantize(x)
        return x

    def _level_scales(self, flat: Tensor, keep_units: Tensor) -> list[float]:
        """Per level, the Laplace scale (in steps) of the rate model: mean |round(x / step)| of kept values."""
        f = self.config.n_features_per_level
        keep_p = keep_units.repeat_interleave(f) if self.mask_granularity == "entry" else keep_units
        out = []
        for level, q in enumerate(self.quantizers):
            sl = slice(self.param_bounds[level], self.param_bounds[level + 1])
            v = flat[sl][keep_p[sl]]
            if v.numel() == 0:
                out.append(1.0)
                continue
            ints = torch.round(v.detach() / q.current_step().detach().to(v.device)).abs()
            out.append(max(float(ints.clamp(max=self.qmax).mean()), _MIN_SCALE))
        return out

    def unit_bits(self, flat_params: Tensor) -> Tensor:  # [n_params] -> [n_units]
        """Estimated bits of coding each mask unit's values (differentiable in values and steps);
        ``F * prior_bits`` (or ``prior_bits`` per feature) before quantization runs."""
        self._check_flat(flat_params)
        n_units = self.unit_bounds[-1]
        per_unit = self.config.n_features_per_level if self.mask_granularity == "entry" else 1
        if not (self.quant_active and bool(self.steps_initialized)):
            return torch.full((n_units,), per_unit * self.prior_bits, device=flat_params.device)
        keep = keep_mask(self.mask_logits, self.mask_threshold).to(flat_params.device)
        scales = self._level_scales(flat_params, keep)
        parts = []
        for level, q in enumerate(self.quantizers):
            sl = slice(self.param_bounds[level], self.param_bounds[level + 1])
            y = flat_params[sl] / q.current_step().to(flat_params.device)
            parts.append(laplace_bits(y.clamp(-self.qmax - 0.5, self.qmax + 0.5), scales[level]))
        bits = torch.cat(parts)
        if self.mask_granularity == "entry":
            bits = bits.view(-1, self.config.n_features_per_level).sum(1)
        return bits

    def rate_loss(self, flat_params: Tensor | None = None) -> Tensor:  # -> []
        """Differentiable proxy of the coded size in bits per table parameter (see the module docstring).

        Uses the ``flat_params`` last passed to :meth:`forward` unless given. Zero while the mask is
        inactive or the compressor is disabled."""
        flat = self._last_input if flat_params is None else flat_params
        if flat is None:
            raise ValueError("rate_loss needs flat_params (or a forward call first)")
        if not (self.enabled and self.mask_active):
            return torch.zeros((), device=flat.device)
        m = hard_mask(self.mask_logits.to(flat.device), self.mask_threshold)
        return (m * self.unit_bits(flat)).sum() / self.n_params

    # ------------------------------------------------------------------ what a file stores
    @torch.no_grad()
    def codes(self, flat_params: Tensor) -> tuple[np.ndarray, list[np.ndarray]]:
        """``(keep [n_units] bool, per level the int32 codes of the kept values in flat order)``.

        Initialises the steps from ``flat_params`` when quantization never ran."""
        self._check_flat(flat_params)
        if not bool(self.steps_initialized):
            self.init_steps(flat_params)
        x = self._apply_mask(flat_params.detach(), hard=True)
        keep = keep_mask(self.mask_logits, self.mask_threshold).cpu()
        f = self.config.n_features_per_level
        keep_p = keep.repeat_interleave(f) if self.mask_granularity == "entry" else keep
        out = []
        for level, q in enumerate(self.quantizers):
            sl = slice(self.param_bounds[level], self.param_bounds[level + 1])
            ints = q.quantize(x[sl]).cpu()  # the same integers the forward pass dequantizes
            out.append(ints[keep_p[sl]].numpy().astype(np.int32))
        return keep.numpy(), out

    @torch.no_grad()
    def quantized_table(self, flat_params: Tensor) -> Tensor:  # [n_params] -> [n_params] float32 (CPU)
        """The table a file stores and :func:`decode_hash_table` returns, bit for bit: masked units 0,
        kept values ``float32(round(x / step_l) * step_l)``. Equals :meth:`forward` with both the mask and
        quantization active."""
        keep, ints = self.codes(flat_params)
        return _assemble(self.config, self.mask_granularity, keep, ints, self.steps())

    def extra_repr(self) -> str:
        return (
            f"n_params={self.n_params}, bits={self.bits}, mask={self.mask_granularity!r}, "
            f"threshold={self.mask_threshold}, mask_start={self.mask_start}, qat_start={self.qat_start}"
        )


def _assemble(
    config: HashGridConfig, granularity: str, keep: np.ndarray, ints: list[np.ndarray], steps: list[float]
) -> Tensor:
    """Decoded flat table ``[n_params]`` float32 from the keep mask, per-level codes and steps."""
    f = config.n_features_per_level
    keep_p = np.repeat(keep, f) if granularity == "entry" else keep
    out = np.zeros(n_params(config), dtype=np.float32)
    bounds = [o * f for o in level_offsets(config)]
    for level in range(config.n_levels):
        sl = slice(bounds[level], bounds[level + 1])
        view = out[sl]
        view[keep_p[sl]] = dequantize(ints[level], steps[level])
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------------ encoding


def _payload_size(array: np.ndarray, codec: str) -> int:
    return len(get_codec(codec).encode(array)[0])


def _binary_entropy_bits(n: int, k: int) -> float:
    """Order-0 cost in bits of ``n`` mask bits of which ``k`` are set."""
    if k in (0, n):
        return 0.0
    p = k / n
    return -n * (p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _group_levels(ints: list[np.ndarray], dtype: np.dtype, min_symbols: int) -> list[list[int]]:
    """Consecutive level groups: a level joins the previous group when either holds fewer than
    ``min_symbols`` values and one rANS stream of both is measured smaller than two."""
    groups: list[list[int]] = []
    sizes: list[int] = []
    for level, a in enumerate(ints):
        own = _payload_size(a.astype(dtype), "rans")
        if groups:
            prev = np.concatenate([ints[i] for i in groups[-1]])
            if min(prev.size, a.size) < min_symbols:
                joint = _payload_size(np.concatenate([prev, a]).astype(dtype), "rans")
                if joint <= sizes[-1] + own:
                    groups[-1].append(level)
                    sizes[-1] = joint
                    continue
        groups.append([level])
        sizes.append(own)
    return groups


def _group_name(prefix: str, group: list[int]) -> str:
    return f"{prefix}_q{group[0]:02d}" if len(group) == 1 else f"{prefix}_q{group[0]:02d}-{group[-1]:02d}"


def encode_hash_table(
    flat_params: Tensor,  # [n_params]
    compressor: HashTableCompressor,
    config: HashGridConfig | None = None,
    prefix: str = "hash",
    min_group_symbols: int = DEFAULT_MIN_GROUP_SYMBOLS,
    level_layout: Literal["auto", "mask", "zeros"] = "auto",
) -> tuple[dict, dict[str, tuple[np.ndarray, str]]]:
    """``(metadata, streams)`` of the compressed table; ``streams`` maps names to ``(array, codec)`` for
    :func:`scenezip.scenes.scz.write_scz`. ``config`` (default: the compressor's) must match the compressor's.
    The decoded table is exactly ``compressor.quantized_table(flat_params)``.

    ``level_layout``: per level, ``"mask"`` sends the level's keep bits in the keep stream and codes the
    kept values only; ``"zeros"`` codes every value of the level, masked ones as 0 (they decode to 0
    either way, so no keep bits are needed); ``"auto"`` picks per level the smaller of the two (each level
    measured alone), then keeps whichever of that mix, all-"mask" and all-"zeros" codes smallest."""
    if not isinstance(compressor, HashTableCompressor):
        raise ValueError(f"compressor must be a HashTableCompressor, got {type(compressor).__name__}")
    config = compressor.config if config is None else config
    if config != compressor.config:
        raise ValueError(f"config {config} does not match the compressor's {compressor.config}")
    if not isinstance(prefix, str) or not prefix:
        raise ValueError(f"prefix must be a non-empty string, got {prefix!r}")
    if level_layout not in ("auto", "mask", "zeros"):
        raise ValueError(f"level_layout must be 'auto', 'mask' or 'zeros', got {level_layout!r}")
    keep, kept_ints = compressor.codes(flat_params)
    dtype = _int_dtype(compressor.qmax)
    per_unit = config.n_features_per_level if compressor.mask_granularity == "entry" else 1
    bounds = compressor.unit_bounds
    level_keep = [keep[bounds[i] : bounds[i + 1]] for i in range(config.n_levels)]
    full_ints = []
    for k, ints in zip(level_keep, kept_ints):
        full = np.zeros((k.size, per_unit), dtype=np.int32)
        full[k] = ints.reshape(-1, per_unit)
        full_ints.append(full.reshape(-1))
    partial = [not bool(k.all()) for k in level_keep]
    if level_layout != "auto":
        choices = [[p and level_layout == "mask" for p in partial]]
    else:
        # per level, the smaller of (keep bits + kept values) and (all values), each measured alone; then
        # that mix, all-mask and all-zeros measured as whole files, the smallest kept
        mix = []
        for k, ints, full, p in zip(level_keep, kept_ints, full_ints, partial):
            if not p:
                mix.append(False)
                continue
            with_mask = _payload_size(ints.astype(dtype), "rans") + _keep_stream(k)[2]
            mix.append(with_mask < _payload_size(full.astype(dtype), "rans"))
        choices = [mix, partial, [False] * config.n_levels]
    best = None
    for masked_levels in choices:
        level_ints = [kept_ints[i] if m else full_ints[i] for i, m in enumerate(masked_levels)]
        kept = [int(level_keep[i].sum()) if m else int(level_keep[i].size) for i, m in enumerate(masked_levels)]
        streams: dict[str, tuple[np.ndarray, str]] = {}
        keep_name = None
        if any(masked_levels):
            keep_name = f"{prefix}_keep"
            bits, codec, _ = _keep_stream(np.concatenate([k for k, m in zip(level_keep, masked_levels) if m]))
            streams[keep_name] = (bits, codec)
        groups = _group_levels(level_ints, dtype, int(min_group_symbols))
        names = []
        for group in groups:
            name = _group_name(prefix, group)
            streams[name] = (np.concatenate([level_ints[i] for i in group]).astype(dtype), "rans")
            names.append(name)
        size = sum(_payload_size(a, c) for a, c in streams.values()) if len(choices) > 1 else 0
        if best is None or size < best[0]:
            best = (size, masked_levels, kept, groups, keep_name, names, streams)
    _, masked_levels, kept, groups, keep_name, names, streams = best
    metadata = {
        "hash_codec_version": CODEC_VERSION,
        "n_params": compressor.n_params,
        "n_levels": config.n_levels,
        "n_features_per_level": config.n_features_per_level,
        "mask_granularity": compressor.mask_granularity,
        "bits": compressor.bits,
        "steps": compressor.steps(),
        "masked_levels": [bool(m) for m in masked_levels],
        "kept": kept,
        "groups": groups,
        "keep_stream": keep_name,
        "value_streams": names,
    }
    return metadata, streams


def smallest_bit_stream(bits: np.ndarray) -> tuple[np.ndarray, str]:
    """``(array, codec)`` of the smallest coding of a flat bit vector ``bits [n]`` bool: packed 8 to a byte
    (``np.packbits``, little bit order, pad bits zero) with ``rans`` or ``zlib``, or one ``bool`` per bit
    with ``rans``. A reader tells them apart by dtype (uint8 ``[ceil(n / 8)]`` or bool ``[n]``)."""
    bits = np.asarray(bits)
    if bits.dtype != np.bool_ or bits.ndim != 1:
        raise ValueError(f"bits must be a 1-D bool array, got {bits.dtype} with shape {bits.shape}")
    array, codec, _ = _keep_stream(bits)
    return array, codec


def _keep_stream(bits: np.ndarray) -> tuple[np.ndarray, str, int]:
    """The smallest coding of keep bits ``[n]`` bool: ``(array, codec, payload bytes)`` among packed bytes
    with ``rans`` or ``zlib`` and one bool per unit with ``rans``."""
    packed = np.packbits(bits, bitorder="little")
    sized = [(a, c, _payload_size(a, c)) for a, c in ((packed, "rans"), (packed, "zlib"), (bits, "rans"))]
    return min(sized, key=lambda t: t[2])


# ------------------------------------------------------------------------------------ decoding


def _fail(source: str, msg: str):
    raise SceneFileError(f"{source}: hash table {msg}")


def _meta_int(meta: dict, key: str, source: str, lo: int, hi: int) -> int:
    v = meta.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        _fail(source, f"metadata {key!r} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def decode_hash_table(
    arrays: Mapping[str, np.ndarray],
    metadata: Any,
    config: HashGridConfig,
    source: str = "scene",
) -> Tensor:  # [n_params] float32
    """Inverse of :func:`encode_hash_table`: the flat table ``[n_params(config)]`` float32 (CPU).

    Every field of ``metadata`` and every stream's dtype, shape and values are checked against ``config``
    before the table is allocated; SceneFileError naming ``source`` otherwise."""
    if not isinstance(config, HashGridConfig):
        raise ValueError(f"config must be a HashGridConfig, got {type(config).__name__}")
    if not isinstance(metadata, dict):
        _fail(source, f"metadata must be an object, got {type(metadata).__name__}")
    version = _meta_int(metadata, "hash_codec_version", source, 1, 1 << 30)
    if version > CODEC_VERSION:
        _fail(source, f"codec version {version} is newer than this reader's {CODEC_VERSION}")
    total = n_params(config)
    n_levels, f = config.n_levels, config.n_features_per_level
    for key, want in (("n_params", total), ("n_levels", n_levels), ("n_features_per_level", f)):
        got = metadata.get(key)
        if isinstance(got, bool) or got != want:
            _fail(source, f"metadata {key!r} is {got!r} but the grid config has {want}")
    granularity = metadata.get("mask_granularity")
    if granularity not in ("entry", "feature"):
        _fail(source, f"metadata 'mask_granularity' must be 'entry' or 'feature', got {granularity!r}")
    bits = _meta_int(metadata, "bits", source, 2, 16)
    qmax = (1 << (bits - 1)) - 1
    bounds = _unit_bounds(config, granularity)
    unit_counts = [bounds[i + 1] - bounds[i] for i in range(n_levels)]
    per_unit = f if granularity == "entry" else 1

    steps = metadata.get("steps")
    if not isinstance(steps, list) or len(steps) != n_levels:
        _fail(source, f"metadata 'steps' must be a list of {n_levels} numbers")
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (math.isfinite(s) and s > 0):
            _fail(source, f"metadata 'steps' must hold finite numbers > 0, got {s!r}")
        if float(np.float32(s)) != float(s):
            _fail(source, f"metadata step {s!r} is not a float32 value")
    kept = metadata.get("kept")
    if not isinstance(kept, list) or len(kept) != n_levels:
        _fail(source, f"metadata 'kept' must be a list of {n_levels} integers")
    for level, (k, n) in enumerate(zip(kept, unit_counts)):
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
            _fail(source, f"metadata 'kept' of level {level} must be an integer in [0, {n}], got {k!r}")
    masked_levels = metadata.get("masked_levels")
    if not isinstance(masked_levels, list) or len(masked_levels) != n_levels or not all(
            isinstance(m, bool) for m in masked_levels):  # fmt: skip
        _fail(source, f"metadata 'masked_levels' must be a list of {n_levels} booleans")
    for level in range(n_levels):
        if not masked_levels[level] and kept[level] != unit_counts[level]:
            _fail(source, f"metadata 'kept' of unmasked level {level} must be {unit_counts[level]}, got {kept[level]}")
    groups = metadata.get("groups")
    flat_levels = [lv for g in groups for lv in g] if isinstance(groups, list) and all(
        isinstance(g, list) and g for g in groups) else None  # fmt: skip
    if flat_levels != list(range(n_levels)):
        _fail(source, f"metadata 'groups' must split levels 0..{n_levels - 1} into consecutive non-empty lists")
    names = metadata.get("value_streams")
    if not isinstance(names, list) or len(names) != len(groups) or not all(isinstance(n, str) for n in names):
        _fail(source, f"metadata 'value_streams' must name one stream per group ({len(groups)})")
    keep_name = metadata.get("keep_stream")
    if any(masked_levels) != isinstance(keep_name, str):
        _fail(source, "metadata 'keep_stream' must name a stream exactly when some level is masked")
    all_names = names + ([keep_name] if keep_name is not None else [])
    if len(set(all_names)) != len(all_names):
        _fail(source, "metadata names one stream twice")
    for name in all_names:
        if name not in arrays:
            _fail(source, f"stream {name!r} is missing")

    keep = np.ones(bounds[-1], dtype=bool)
    if keep_name is not None:
        packed = arrays[keep_name]
        n_bits = sum(unit_counts[lv] for lv in range(n_levels) if masked_levels[lv])
        want = ((n_bits + 7) // 8,)
        if isinstance(packed, np.ndarray) and packed.dtype == np.bool_ and packed.shape == (n_bits,):
            mask_bits = packed
        elif isinstance(packed, np.ndarray) and packed.dtype == np.uint8 and packed.shape == want:
            mask_bits = np.unpackbits(packed, bitorder="little").astype(bool)
        else:
            got = (packed.dtype.name, list(packed.shape)) if isinstance(packed, np.ndarray) else type(packed).__name__
            _fail(source, f"stream {keep_name!r} must be uint8 {list(want)} (packed) or bool [{n_bits}], got {got}")
        if mask_bits[n_bits:].any():
            _fail(source, f"stream {keep_name!r} has pad bits set past {n_bits} mask bits")
        start = 0
        for level in range(n_levels):
            if not masked_levels[level]:
                continue
            part = mask_bits[start : start + unit_counts[level]]
            start += unit_counts[level]
            if int(part.sum()) != kept[level]:
                _fail(source, f"keep mask holds {int(part.sum())} units at level {level}, metadata 'kept' "
                              f"says {kept[level]}")  # fmt: skip
            keep[bounds[level] : bounds[level + 1]] = part

    ints: list[np.ndarray] = []
    for name, group in zip(names, groups):
        a = arrays[name]
        n_vals = sum(kept[lv] for lv in group) * per_unit
        if not isinstance(a, np.ndarray) or a.dtype.name not in ("int8", "int16", "int32") or a.shape != (n_vals,):
            got = (a.dtype.name, list(a.shape)) if isinstance(a, np.ndarray) else type(a).__name__
            _fail(source, f"stream {name!r} must be int8/int16/int32 [{n_vals}], got {got}")
        if a.size and (int(a.min()) < -qmax or int(a.max()) > qmax):
            _fail(source, f"stream {name!r} holds values outside [-{qmax}, {qmax}] ({bits} bits)")
        start = 0
        for lv in group:
            n = kept[lv] * per_unit
            ints.append(a[start : start + n].astype(np.int32))
            start += n
    return _assemble(config, granularity, keep, ints, [float(s) for s in steps])


# ------------------------------------------------------------------------------------ reporting


def coding_report(streams: Mapping[str, tuple[np.ndarray, str]]) -> list[dict]:
    """Per stream of :func:`encode_hash_table`: the coded size against the empirical entropy.

    Each row: ``name, codec, n_symbols, payload_bytes, table_bytes`` (the stored frequency table, rans
    only), ``coded_bits`` (payload without the table), ``entropy_bits`` (order-0 empirical entropy of
    the stored symbols), ``bits_per_symbol`` and ``overhead`` (``coded_bits / entropy_bits - 1``). The
    keep stream adds ``mask_units``, ``kept_units`` and ``mask_entropy_bits`` (``units * H(keep fraction)``,
    the order-0 cost of the unpacked mask)."""
    rows = []
    for name, (array, codec) in streams.items():
        a = np.asarray(array)
        payload, _ = get_codec(codec).encode(a)
        table_bytes = 0
        if codec == "rans":
            _, table_bytes = entropy.parse_table(payload, 0)
        ent = abs(entropy.entropy_bits(a)) if a.dtype.kind in "biu" else float("nan")
        coded = 8 * (len(payload) - table_bytes)
        row = {
            "name": name,
            "codec": codec,
            "n_symbols": int(a.size),
            "payload_bytes": len(payload),
            "table_bytes": int(table_bytes),
            "coded_bits": coded,
            "entropy_bits": ent,
            "bits_per_symbol": coded / a.size if a.size else 0.0,
            "overhead": coded / ent - 1.0 if ent > 0 else float("nan"),
        }
        if name.endswith("_keep") and a.dtype in (np.uint8, np.bool_):
            bits = np.unpackbits(a, bitorder="little") if a.dtype == np.uint8 else a
            n, k = int(bits.size), int(bits.sum())
            row.update({"mask_units": n, "kept_units": k, "mask_entropy_bits": _binary_entropy_bits(n, k)})
        rows.append(row)
    return rows
