"""Multiresolution hash encoding (Instant-NGP) in tiny-cuda-nn's exact parameter layout.

Written by hand because the layout is the contract: a table trained with tiny-cuda-nn on a GPU must
load, render and compress on a CPU, and a `.scz` file must decode the same everywhere. The pure-torch
path below is the specification; :class:`HashGrid` with ``backend="cuda"`` calls
``tinycudann.Encoding`` on the same flat parameter vector, and parity tests compare the two.

The rules mirror tiny-cuda-nn's ``GridEncodingTemplated`` (``encodings/grid.h`` and the helpers
``grid_scale``, ``grid_resolution``, ``pos_fract`` and ``grid_index`` in ``common_device.h``):

- level ``l`` has ``scale = exp2(l * log2(per_level_scale)) * base_resolution - 1`` (float32
  arithmetic) and ``resolution = ceil(scale) + 1`` vertices per axis;
- its table holds ``min(next_multiple(resolution**D, 8), 2**log2_hashmap_size)`` entries (a dense
  count above ``2**31`` is clamped first), tables are stored level after level, and each entry holds
  ``n_features_per_level`` consecutive floats: flat index ``(offset[l] + entry) * F + feature``;
- a point ``x`` in ``[0, 1]^D`` sits at ``pos = x * scale + 0.5``; ``floor(pos)`` is the cell's lower
  corner and ``pos - floor(pos)`` the interpolation fraction (``Smoothstep`` maps it through
  ``t*t*(3-2t)``; ``Nearest`` reads the lower corner only);
- a corner is indexed densely, ``sum_d c_d * resolution**d`` (uint32, may wrap into the next row at
  the top face, as in tiny-cuda-nn), when ``resolution**D`` fits the level's table, and otherwise by
  the spatial hash ``XOR_d (c_d * prime_d)`` with primes ``(1, 2654435761, 805459861)`` (tcnn's
  ``CoherentPrime``, its default); either index is taken modulo the table size;
- the ``2**D`` corners are visited with dimension 0 as the lowest bit and weighted by the product of
  ``1 - t_d`` / ``t_d``; parameters start uniform in ``[-1e-4, 1e-4]``.

Precision: tiny-cuda-nn keeps the parameters in float32 but, with its default (preferred) precision,
casts them to float16 and computes and returns the encoding in float16 on most GPUs; gradients are
accumulated in float16 too. Pass ``cuda_dtype=torch.float32`` to :class:`HashGrid` for float32 compute
(slower, matches the torch path to float32 rounding). :class:`HashGrid` always returns float32.

The torch path is a custom autograd function: the forward pass runs in chunks of points with no
graph, and the backward pass recomputes indices and weights chunk by chunk and scatters gradients
into one buffer, so memory stays bounded for millions of points. It gives first derivatives with
respect to the table and the positions (no double backward; tcnn's eikonal-style second derivatives
are not mirrored).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from scenezip._backend import Backend, import_tcnn, resolve_backend
from scenezip.errors import BackendError, ScenezipError

Interpolation = Literal["Nearest", "Linear", "Smoothstep"]

# tcnn's CoherentPrime factors (the first is 1 on purpose: neighbouring x share cache lines).
HASH_PRIMES = (1, 2654435761, 805459861)
_U32 = 0xFFFFFFFF
_MAX_DENSE = 2**31  # tcnn clamps dense counts above this (as float) to 2**31 - 1 before rounding up
DEFAULT_CHUNK = 1 << 14  # points per chunk: a few MB of int64 corner indices at 3D
DEFAULT_CACHE_BYTES = 1 << 28  # forward-pass indices/weights kept for the backward pass, at most


@dataclasses.dataclass(frozen=True)
class HashGridConfig:
    """Multiresolution hash grid settings, named as in tiny-cuda-nn's ``HashGrid`` encoding."""

    n_input_dims: int = 3  # dimensions of the input points (2 or 3)
    n_levels: int = 16  # number of resolution levels
    n_features_per_level: int = 2  # features stored per table entry (1, 2, 4 or 8)
    log2_hashmap_size: int = 19  # log2 of the largest table size per level, in entries
    base_resolution: int = 16  # vertices per axis of the coarsest level
    per_level_scale: float | None = None  # growth per level; None: from max_resolution, else 2.0
    max_resolution: int | None = None  # vertices per axis of the finest level, used when per_level_scale is None
    interpolation: Interpolation = "Linear"  # "Linear", "Smoothstep" or "Nearest"

    def __post_init__(self) -> None:
        if self.n_input_dims not in (2, 3):
            raise ScenezipError(f"HashGridConfig.n_input_dims must be 2 or 3, got {self.n_input_dims}")
        if not 1 <= self.n_levels <= 32:
            raise ScenezipError(f"HashGridConfig.n_levels must be in [1, 32], got {self.n_levels}")
        if self.n_features_per_level not in (1, 2, 4, 8):
            raise ScenezipError(
                f"HashGridConfig.n_features_per_level must be 1, 2, 4 or 8, got {self.n_features_per_level}"
            )
        if not 1 <= self.log2_hashmap_size <= 30:
            raise ScenezipError(f"HashGridConfig.log2_hashmap_size must be in [1, 30], got {self.log2_hashmap_size}")
        if self.base_resolution < 1:
            raise ScenezipError(f"HashGridConfig.base_resolution must be >= 1, got {self.base_resolution}")
        if self.per_level_scale is not None and not self.per_level_scale >= 1.0:
            raise ScenezipError(f"HashGridConfig.per_level_scale must be >= 1, got {self.per_level_scale}")
        if self.max_resolution is not None and self.max_resolution < self.base_resolution:
            raise ScenezipError(
                f"HashGridConfig.max_resolution ({self.max_resolution}) must be >= base_resolution "
                f"({self.base_resolution})"
            )
        if self.interpolation not in ("Nearest", "Linear", "Smoothstep"):
            raise ScenezipError(
                f"HashGridConfig.interpolation must be 'Nearest', 'Linear' or 'Smoothstep', got {self.interpolation!r}"
            )

    @property
    def n_output_dims(self) -> int:
        return self.n_levels * self.n_features_per_level


def resolved_per_level_scale(config: HashGridConfig) -> float:
    """The per-level growth factor: given, derived from ``max_resolution`` (Instant-NGP's
    ``exp((ln N_max - ln N_min) / (L - 1))``), or tcnn's default 2.0."""
    if config.per_level_scale is not None:
        return float(config.per_level_scale)
    if config.max_resolution is not None:
        if config.n_levels == 1:
            return 1.0
        return math.exp((math.log(config.max_resolution) - math.log(config.base_resolution)) / (config.n_levels - 1))
    return 2.0


def tcnn_encoding_config(config: HashGridConfig) -> dict:
    """The ``encoding_config`` dict that makes ``tinycudann.Encoding`` compute this encoding."""
    return {
        "otype": "HashGrid",
        "n_levels": config.n_levels,
        "n_features_per_level": config.n_features_per_level,
        "log2_hashmap_size": config.log2_hashmap_size,
        "base_resolution": config.base_resolution,
        "per_level_scale": resolved_per_level_scale(config),
        "interpolation": config.interpolation,
        "hash": "CoherentPrime",
    }


@dataclasses.dataclass(frozen=True)
class _Level:
    scale: float  # float32 value, held as a Python float (exact)
    resolution: int
    offset: int  # first entry of the level's table
    size: int  # entries in the level's table
    hashed: bool


@functools.lru_cache(maxsize=64)
def _levels(config: HashGridConfig) -> tuple[_Level, ...]:
    d = config.n_input_dims
    log2_pls = np.log2(np.float32(resolved_per_level_scale(config)))  # float32, like std::log2(float)
    levels = []
    offset = 0
    for level in range(config.n_levels):
        scale = np.exp2(np.float32(level) * log2_pls) * np.float32(config.base_resolution) - np.float32(1.0)
        scale = np.float32(scale)
        resolution = int(np.ceil(scale)) + 1
        dense = resolution**d
        if dense > _MAX_DENSE:
            dense = _MAX_DENSE - 1
        size = min(-(-dense // 8) * 8, 1 << config.log2_hashmap_size)
        levels.append(_Level(float(scale), resolution, offset, size, resolution**d > size))
        offset += size
    return tuple(levels)


def level_offsets(config: HashGridConfig) -> list[int]:
    """tcnn's offset table: ``n_levels + 1`` entry offsets; level ``l`` owns entries
    ``[off[l], off[l+1])``, i.e. floats ``[off[l] * F, off[l+1] * F)`` of the flat parameters."""
    levels = _levels(config)
    return [lv.offset for lv in levels] + [levels[-1].offset + levels[-1].size]


def level_param_slices(config: HashGridConfig) -> list[slice]:
    """Per level, the slice of the flat parameter vector holding its table (``[size * F]``)."""
    f = config.n_features_per_level
    off = level_offsets(config)
    return [slice(off[i] * f, off[i + 1] * f) for i in range(config.n_levels)]


def level_resolutions(config: HashGridConfig) -> list[int]:
    """Vertices per axis of every level (``ceil(scale) + 1``)."""
    return [lv.resolution for lv in _levels(config)]


def level_scales(config: HashGridConfig) -> list[float]:
    """The float32 ``scale`` of every level (positions are ``x * scale + 0.5``)."""
    return [lv.scale for lv in _levels(config)]


def level_is_hashed(config: HashGridConfig) -> list[bool]:
    """True for levels indexed by the spatial hash, False for dense levels."""
    return [lv.hashed for lv in _levels(config)]


def n_params(config: HashGridConfig) -> int:
    """Length of the flat parameter vector (tcnn's ``n_params``)."""
    return level_offsets(config)[-1] * config.n_features_per_level


def init_params(config: HashGridConfig, generator: torch.Generator | None = None) -> Tensor:
    """Fresh parameters, uniform in ``[-1e-4, 1e-4]`` like tcnn. Returns ``[n_params]`` float32."""
    return torch.rand(n_params(config), generator=generator, dtype=torch.float32) * 2e-4 - 1e-4


# --------------------------------------------------------------------------------------------------
# torch reference


def _fraction(x: Tensor, scale: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """tcnn's ``pos_fract``: ``pos = fma(scale, x, 0.5)``; returns (lower corner [n, D] as uint32
    values in int64, fraction [n, D] in ``dtype``). For float32, pos is rounded once to float32 as
    the fused multiply-add does."""
    pos = (x * scale + 0.5).to(dtype)
    cell = torch.floor(pos)
    return cell.to(torch.int64) & _U32, pos - cell


def _interp(t: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """Interpolation weight of the upper corner and its derivative, both [n, D]."""
    if mode == "Smoothstep":
        return t * t * (3.0 - 2.0 * t), 6.0 * t * (1.0 - t)
    return t, torch.ones_like(t)


def _combine(parts: list[Tensor], op) -> Tensor:
    """Combine per-dimension pairs ``[n, 2]`` (lower, upper corner) into ``[n, 2**D]`` over all
    corners, dimension 0 being the lowest bit of the corner number (tcnn's order). ``op(a, b)`` is
    applied as ``op(earlier dims, next dim)``."""
    out = parts[0]
    for part in parts[1:]:
        out = op(out[:, None, :], part[:, :, None]).reshape(out.shape[0], -1)
    return out


def _corner_index(cell: Tensor, lv: _Level, n_corners: int) -> Tensor:
    """Entry index within the level's table of every corner. cell [n, D] int64 -> [n, C] int64."""
    d = cell.shape[-1]
    if n_corners == 1:
        pairs = [cell[:, i : i + 1] for i in range(d)]
    else:
        pairs = [torch.stack([cell[:, i], (cell[:, i] + 1) & _U32], dim=-1) for i in range(d)]
    if lv.hashed:
        # XOR of uint32 products; the table size is a power of two here, so reducing each term
        # modulo the size first gives the same index and keeps the numbers small.
        size_mask = lv.size - 1 if lv.size & (lv.size - 1) == 0 else _U32
        parts = [(p * HASH_PRIMES[i]) & size_mask for i, p in enumerate(pairs)]
        index = _combine(parts, torch.bitwise_xor)
        return index if size_mask != _U32 else index % lv.size
    parts = [p * lv.resolution**i for i, p in enumerate(pairs)]
    index = _combine(parts, torch.add)
    return (index & _U32) % lv.size


def _corner_weights(u: Tensor, n_corners: int, skip: int = -1) -> Tensor:
    """Product over dimensions (in order 0..D-1, as tcnn) of ``1 - u_d`` (lower) or ``u_d`` (upper)
    per corner. With ``skip = d``, dimension d contributes -1 / +1 instead (the derivative with
    respect to ``u_d``). u [n, D] -> [n, C]."""
    if n_corners == 1:
        return torch.ones(u.shape[0], 1, dtype=u.dtype, device=u.device)
    pairs = []
    for i in range(u.shape[-1]):
        if i == skip:
            pairs.append(torch.tensor([-1.0, 1.0], dtype=u.dtype, device=u.device).expand(u.shape[0], 2))
        else:
            pairs.append(torch.stack([1.0 - u[:, i], u[:, i]], dim=-1))
    return _combine(pairs, torch.mul)


def _chunk_level(x64: Tensor, lv: _Level, config: HashGridConfig, dtype: torch.dtype):
    """Entry indices [n, C] (within the level), weights [n, C] and (u, du) [n, D] for one chunk of
    points (``x64``: float64 positions) at one level."""
    cell, t = _fraction(x64, lv.scale, dtype)
    if config.interpolation == "Nearest":
        idx = _corner_index(cell, lv, 1)
        return idx, torch.ones(idx.shape, dtype=dtype, device=idx.device), None, None
    n_corners = 1 << config.n_input_dims
    u, du = _interp(t, config.interpolation)
    return _corner_index(cell, lv, n_corners), _corner_weights(u, n_corners), u, du


def _flat_index(lv: _Level, idx: Tensor, f: int) -> Tensor:
    """Positions in the flat parameter vector of every feature of every corner: [n * C * F]."""
    base = (idx + lv.offset) * f
    if f == 1:
        return base.reshape(-1)
    return (base[..., None] + torch.arange(f, device=idx.device)).reshape(-1)


def _gather(flat: Tensor, lv: _Level, idx: Tensor, f: int) -> Tensor:
    """Corner features [n, C, F] from the flat parameters. When one entry is 8 bytes (2 x float32,
    tcnn's default), entries are gathered as int64 words: a 1-D gather is ~10x faster on CPU than
    gathering rows of a 2-D table."""
    n, c = idx.shape
    if f * flat.element_size() == 8 and (flat.storage_offset() * flat.element_size()) % 8 == 0:
        words = flat.view(torch.int64)[lv.offset : lv.offset + lv.size]
        return words.index_select(0, idx.reshape(-1)).view(flat.dtype).view(n, c, f)
    return flat.index_select(0, _flat_index(lv, idx, f)).view(n, c, f)


class _HashEncode(torch.autograd.Function):
    """Chunked forward with no graph. When only the table needs gradients and the corner indices
    and weights of all points fit ``cache_bytes``, the forward pass keeps them for the backward
    pass; otherwise the backward pass recomputes them chunk by chunk (bounded memory)."""

    @staticmethod
    def forward(ctx, x: Tensor, params: Tensor, config: HashGridConfig, chunk: int, cache_bytes: int) -> Tensor:
        f = config.n_features_per_level
        flat = params.detach()
        levels = _levels(config)
        n = x.shape[0]
        n_corners = 1 if config.interpolation == "Nearest" else 1 << config.n_input_dims
        need_x, need_p = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        cache = None
        if need_p and not need_x and n * len(levels) * n_corners * (8 + params.element_size()) <= cache_bytes:
            cache = (
                torch.empty(len(levels), n, n_corners, dtype=torch.int64, device=params.device),
                torch.empty(len(levels), n, n_corners, dtype=params.dtype, device=params.device),
            )
        out = torch.empty(n, config.n_output_dims, dtype=params.dtype, device=params.device)
        for start in range(0, n, chunk):
            x64 = x[start : start + chunk].detach().to(torch.float64)
            for li, lv in enumerate(levels):
                idx, w, _, _ = _chunk_level(x64, lv, config, params.dtype)
                vals = _gather(flat, lv, idx, f)  # [n, C, F]
                out[start : start + chunk, li * f : (li + 1) * f] = torch.bmm(w[:, None, :], vals)[:, 0]
                if cache is not None:
                    cache[0][li, start : start + chunk] = idx
                    cache[1][li, start : start + chunk] = w
        ctx.save_for_backward(x, params)
        ctx.cache = cache
        ctx.config = config
        ctx.chunk = chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        x, params = ctx.saved_tensors
        config: HashGridConfig = ctx.config
        chunk: int = ctx.chunk
        cache = ctx.cache
        ctx.cache = None
        f = config.n_features_per_level
        d = config.n_input_dims
        need_x, need_p = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_x = need_x and config.interpolation != "Nearest"  # piecewise constant in x
        grad_p = torch.zeros_like(params) if need_p else None
        grad_x = torch.zeros(x.shape, dtype=params.dtype, device=x.device) if ctx.needs_input_grad[0] else None
        grad_out = grad_out.to(params.dtype)
        for start in range(0, x.shape[0], chunk):
            x64 = None if cache is not None else x[start : start + chunk].detach().to(torch.float64)
            for li, lv in enumerate(_levels(config)):
                g = grad_out[start : start + chunk, li * f : (li + 1) * f]  # [n, F]
                if cache is not None:
                    idx, w = cache[0][li, start : start + chunk], cache[1][li, start : start + chunk]
                else:
                    idx, w, u, du = _chunk_level(x64, lv, config, params.dtype)
                if need_p:
                    # one strided 1-D scatter per feature: several times faster than 2-D index_add_
                    rows = grad_p.view(-1, f)[lv.offset : lv.offset + lv.size]
                    flat_idx = idx.reshape(-1)
                    for k in range(f):
                        rows[:, k].scatter_add_(0, flat_idx, (w * g[:, k : k + 1]).reshape(-1))
                if need_x:
                    vals = _gather(params, lv, idx, f)
                    vg = torch.bmm(vals, g[:, :, None])[..., 0]  # [n, C]
                    for k in range(d):
                        dw = _corner_weights(u, idx.shape[1], skip=k)
                        grad_x[start : start + chunk, k] += lv.scale * du[:, k] * (dw * vg).sum(1)
        if grad_x is not None:
            grad_x = grad_x.to(x.dtype)
        return grad_x, grad_p, None, None, None


def hash_encode(
    x: Tensor,  # [..., D] in [0, 1]
    params: Tensor,  # [n_params], tcnn's flat layout
    config: HashGridConfig,
    chunk_size: int = DEFAULT_CHUNK,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
) -> Tensor:  # [..., n_levels * n_features_per_level]
    """Pure-torch multiresolution hash encoding, the reference for ``tinycudann.Encoding``.

    Output features are level-major (level 0's F features first) in ``params.dtype``; differentiable
    with respect to ``params`` and ``x`` (first order). Points are processed ``chunk_size`` at a time
    in both passes. For table-only gradients, corner indices and weights are kept from the forward
    pass when they fit ``cache_bytes`` (about 1.5 KB per 3D point at 16 levels), which makes the
    backward pass about twice as fast; beyond that they are recomputed, so memory stays bounded.
    Points outside ``[0, 1]`` are encoded as tcnn does (unsigned wraparound), which is rarely useful.
    """
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] != config.n_input_dims:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must have shape [..., {config.n_input_dims}] (config.n_input_dims), got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    expected = n_params(config)
    if not isinstance(params, Tensor) or params.shape != (expected,):
        shape = tuple(params.shape) if isinstance(params, Tensor) else type(params).__name__
        raise ValueError(f"params must have shape [{expected}] for this config, got {shape}")
    if not params.is_floating_point():
        raise ValueError(f"params must be a floating-point tensor, got {params.dtype}")
    if x.device != params.device:
        raise ValueError(f"x and params must be on the same device, got {x.device} and {params.device}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    lead = x.shape[:-1]
    flat = x.reshape(-1, config.n_input_dims)
    if not params.is_contiguous():
        params = params.contiguous()
    out = _HashEncode.apply(flat, params, config, int(chunk_size), int(cache_bytes))
    return out.reshape(*lead, config.n_output_dims)


# --------------------------------------------------------------------------------------------------
# module


class HashGrid(nn.Module):
    """A hash-grid encoding holding ONE flat float32 parameter vector ``params`` in tcnn's layout.

    ``backend``: ``"torch"`` runs :func:`hash_encode`; ``"cuda"`` runs ``tinycudann.Encoding`` on the
    same parameters (CUDA tensors only); ``"auto"`` takes CUDA when tiny-cuda-nn is installed and
    the input is on a GPU, and the torch path otherwise. ``cuda_dtype`` is tcnn's compute precision
    (None: tcnn's preferred one, float16 on most GPUs; torch.float32 for exact-ish parity). The
    output is always float32.
    """

    def __init__(
        self,
        config: HashGridConfig | None = None,
        backend: Backend = "auto",
        seed: int = 1337,
        cuda_dtype: torch.dtype | None = None,
        chunk_size: int = DEFAULT_CHUNK,
    ) -> None:
        super().__init__()
        self.config = config if config is not None else HashGridConfig()
        self.requested_backend = backend
        self.backend = resolve_backend(backend, "tcnn")
        if cuda_dtype not in (None, torch.float16, torch.float32):
            raise ValueError(f"cuda_dtype must be None, torch.float16 or torch.float32, got {cuda_dtype}")
        self.cuda_dtype = cuda_dtype
        self.seed = seed
        self.chunk_size = chunk_size
        gen = torch.Generator().manual_seed(seed)
        self.params = nn.Parameter(init_params(self.config, gen))
        object.__setattr__(self, "_tcnn_encoding", None)  # not a submodule: state_dict holds only params

    @property
    def n_output_dims(self) -> int:
        return self.config.n_output_dims

    def level_table(self, level: int) -> Tensor:
        """View of level ``level``'s table, ``[entries, n_features_per_level]`` (shares storage)."""
        if not 0 <= level < self.config.n_levels:
            raise ValueError(f"level must be in [0, {self.config.n_levels}), got {level}")
        return self.params[level_param_slices(self.config)[level]].view(-1, self.config.n_features_per_level)

    def _tcnn(self):
        enc = self._tcnn_encoding
        if enc is None:
            tcnn = import_tcnn()
            enc = tcnn.Encoding(
                self.config.n_input_dims, tcnn_encoding_config(self.config), seed=self.seed, dtype=self.cuda_dtype
            )
            theirs = int(enc.native_tcnn_module.n_params())
            if theirs != self.params.numel():
                raise BackendError(
                    f"tiny-cuda-nn's hash grid has {theirs} parameters but scenezip's layout has "
                    f"{self.params.numel()} for {self.config}; this tinycudann version is not supported"
                )
            object.__setattr__(self, "_tcnn_encoding", enc)
        enc.params = self.params  # share the one parameter vector (tcnn casts it per call)
        return enc

    def forward(self, x: Tensor, params: Tensor | None = None) -> Tensor:  # [..., D] -> [..., n_levels * F]
        """Encode points in ``[0, 1]^D``; float32 output.

        ``params`` ``[n_params]`` (default: ``self.params``) is the flat table to read, e.g. a masked or
        fake-quantized version of ``self.params``; gradients flow into it on both paths."""
        if params is None:
            params = self.params
        elif not isinstance(params, Tensor) or params.shape != self.params.shape or not params.is_floating_point():
            got = tuple(params.shape) if isinstance(params, Tensor) else type(params).__name__
            raise ValueError(f"params must be a float tensor of shape [{self.params.numel()}], got {got}")
        use_cuda = self.backend == "cuda" and x.is_cuda
        if self.requested_backend == "cuda" and not x.is_cuda:
            raise ValueError(f"backend 'cuda' needs x on a CUDA device, got {x.device}")
        if not use_cuda:
            return hash_encode(x, params, self.config, self.chunk_size).float()
        if x.shape[-1] != self.config.n_input_dims:
            raise ValueError(f"x must have shape [..., {self.config.n_input_dims}], got {tuple(x.shape)}")
        if not params.is_cuda:
            raise ValueError(f"params must be on the GPU with x, got {params.device}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.config.n_input_dims).float().contiguous()
        if flat.shape[0] == 0:
            return x.new_zeros(*lead, self.n_output_dims, dtype=torch.float32)
        enc = self._tcnn()
        if params is self.params:
            out = enc(flat)
        else:
            # tcnn's Module.forward reads ``self.params`` (cast to its precision) and passes it to its
            # autograd function, so a given tensor is handed in by swapping the entry for this call;
            # the gradient then flows through the cast into ``params`` (and on to whatever made it).
            enc._parameters["params"] = params
            try:
                out = enc(flat)
            finally:
                enc._parameters["params"] = self.params
        return out.float().reshape(*lead, self.n_output_dims)

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tcnn_encoding"] = None
        return state

    def extra_repr(self) -> str:
        return f"config={self.config}, backend={self.backend!r}, n_params={self.params.numel()}"
