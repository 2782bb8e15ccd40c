"""Tile bucketing and chunked evaluation shared by the pure-PyTorch rasterizers.

Written by hand: no library buckets splats into tiles for a differentiable CPU rasterizer. The
scheme mirrors gsplat's (``isect_tiles`` + per-tile front-to-back compositing) with bounded memory:

1. :func:`isect_tiles` lists every (tile, Gaussian) overlap and sorts them by tile, then depth.
2. :func:`rasterize_tiles` groups tiles of similar Gaussian counts into chunks of at most
   ``chunk_pairs`` pixel-Gaussian pairs, pads each chunk to a dense ``[T, K]`` index matrix and calls a
   rasterizer-specific ``pixel_fn`` on it. A tile whose list alone exceeds the budget is split into
   groups of pixels. Under autograd each chunk is checkpointed, so the backward pass recomputes it
   instead of storing it: memory stays bounded by the chunk size, not by the scene.

There is no Python loop over Gaussians or pixels; the only loop is over chunks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

DEFAULT_TILE_SIZE = 8
DEFAULT_CHUNK_PAIRS = 1 << 18


@dataclass
class TileIntersections:
    """Sorted (tile, Gaussian) overlaps of C images.

    Attributes:
        flatten_ids: ``[M]`` int64 index into the flattened ``[C * N]`` Gaussians, sorted by
            (tile key, depth).
        tile_keys: ``[M]`` int64 ``image * tiles_per_image + tile_y * tile_width + tile_x``.
        tile_width, tile_height: tiles per image row / column.
        tile_size: tile side in pixels.
        n_images: C.
    """

    flatten_ids: Tensor
    tile_keys: Tensor
    tile_width: int
    tile_height: int
    tile_size: int
    n_images: int


def isect_tiles(
    means2d: Tensor,  # [C, N, 2]
    radii: Tensor,  # [C, N, 2] pixel half-extents (x, y); 0 marks an invisible Gaussian
    depths: Tensor,  # [C, N]
    width: int,
    height: int,
    tile_size: int = DEFAULT_TILE_SIZE,
) -> TileIntersections:
    """List the tiles each Gaussian's screen-space box touches; mirrors ``gsplat.isect_tiles``."""
    C, N = depths.shape
    tw, th = math.ceil(width / tile_size), math.ceil(height / tile_size)
    with torch.no_grad():
        m = means2d.detach()
        r = radii.detach().to(m.dtype)
        visible = (r > 0).all(dim=-1)
        x0 = ((m[..., 0] - r[..., 0]) / tile_size).floor().clamp(0, tw).long()
        x1 = ((m[..., 0] + r[..., 0]) / tile_size).ceil().clamp(0, tw).long()
        y0 = ((m[..., 1] - r[..., 1]) / tile_size).floor().clamp(0, th).long()
        y1 = ((m[..., 1] + r[..., 1]) / tile_size).ceil().clamp(0, th).long()
        nx, ny = (x1 - x0).clamp_min(0), (y1 - y0).clamp_min(0)
        counts = torch.where(visible, nx * ny, torch.zeros_like(nx)).reshape(-1)  # [C*N]
        flat = torch.repeat_interleave(torch.arange(C * N, device=m.device), counts)
        if flat.numel() == 0:
            empty = torch.zeros(0, dtype=torch.long, device=m.device)
            return TileIntersections(empty, empty, tw, th, tile_size, C)
        starts = torch.cumsum(counts, 0) - counts
        local = torch.arange(flat.numel(), device=m.device) - starts[flat]
        nxf = nx.reshape(-1)[flat]
        tx = x0.reshape(-1)[flat] + local % nxf
        ty = y0.reshape(-1)[flat] + torch.div(local, nxf, rounding_mode="floor")
        image = torch.div(flat, N, rounding_mode="floor")
        keys = image * (tw * th) + ty * tw + tx
        # sort by depth, then stably by tile: within a tile the list is front to back
        order = torch.argsort(depths.detach().reshape(-1)[flat], stable=True)
        order = order[torch.argsort(keys[order], stable=True)]
    return TileIntersections(flat[order], keys[order], tw, th, tile_size, C)


def _chunks(counts: np.ndarray, pixels: int, budget: int) -> list[tuple[int, int]]:
    """Split tiles (sorted by ascending count) into [start, end) ranges of at most ``budget`` pairs.

    A range pads every tile to its last (largest) count, so its cost is ``len * counts[end-1] * pixels``.
    """
    out, i, n = [], 0, len(counts)
    while i < n:
        j = np.arange(i, n)
        cost = (j - i + 1) * counts[i:] * pixels
        end = i + max(1, int(np.searchsorted(cost, budget, side="right")))
        out.append((i, end))
        i = end
    return out


def rasterize_tiles(
    pixel_fn: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    isect: TileIntersections,
    width: int,
    height: int,
    out_dim: int,
    chunk_pairs: int = DEFAULT_CHUNK_PAIRS,
    checkpoint_chunks: bool = True,
) -> Tensor:
    """Evaluate ``pixel_fn`` on every non-empty tile and assemble ``[C, H, W, out_dim]`` images.

    ``pixel_fn(pix, ids, valid, *inputs) -> [T, P, out_dim]`` gets pixel centres ``pix`` ``[T, P, 2]``
    (``x + 0.5, y + 0.5``), the tiles' depth-sorted Gaussian lists ``ids`` ``[T, K]`` (indices into
    the flattened ``[C * N]`` Gaussians, padded with 0) and ``valid`` ``[T, K]``. It must composite
    front to back over ``K`` and return what each pixel accumulates; tiles with no Gaussian give 0.
    ``inputs`` are the differentiable per-Gaussian tensors it reads; gradients flow to them.
    ``checkpoint_chunks=False`` skips the checkpointing, for a ``pixel_fn`` whose autograd graph already
    keeps no per-pair tensor (e.g. a custom ``autograd.Function`` that recomputes in its backward).
    """
    ts = isect.tile_size
    tw, th, C = isect.tile_width, isect.tile_height, isect.n_images
    n_tiles = C * tw * th
    device = isect.flatten_ids.device
    dtype = next((t.dtype for t in inputs if t.is_floating_point()), torch.float32)
    P = ts * ts
    out = torch.zeros(n_tiles, P, out_dim, dtype=dtype, device=device)
    if isect.flatten_ids.numel() == 0:
        return _assemble(out, C, th, tw, ts, width, height, out_dim)

    keys, counts = torch.unique_consecutive(isect.tile_keys, return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    order = torch.argsort(counts, stable=True)
    keys, counts, starts = keys[order], counts[order], starts[order]
    counts_np = counts.cpu().numpy()

    local = torch.arange(P, device=device)
    base_px = torch.stack([(local % ts).to(dtype), torch.div(local, ts, rounding_mode="floor").to(dtype)], -1) + 0.5
    grad = checkpoint_chunks and torch.is_grad_enabled() and any(t.requires_grad for t in inputs)

    def run(pix: Tensor, ids: Tensor, valid: Tensor) -> Tensor:
        if grad:
            return checkpoint(pixel_fn, pix, ids, valid, *inputs, use_reentrant=False)
        return pixel_fn(pix, ids, valid, *inputs)

    results, result_keys = [], []
    for a, b in _chunks(counts_np, P, chunk_pairs):
        k_max = int(counts_np[b - 1])
        ck, cs = keys[a:b], starts[a:b]
        kk = torch.arange(k_max, device=device)
        valid = kk[None, :] < counts[a:b, None]
        ids = isect.flatten_ids[(cs[:, None] + kk[None, :]).clamp_max(isect.flatten_ids.numel() - 1)]
        ids = torch.where(valid, ids, torch.zeros_like(ids))
        tile = ck % (tw * th)
        origin = torch.stack([(tile % tw) * ts, torch.div(tile, tw, rounding_mode="floor") * ts], -1).to(dtype)
        pix = origin[:, None, :] + base_px[None]  # [T, P, 2]
        if k_max * P <= chunk_pairs or b - a > 1:
            results.append(run(pix, ids, valid))
        else:  # one tile deeper than the budget: split its pixels into groups
            group = max(1, chunk_pairs // k_max)
            parts = [run(pix[:, g : g + group], ids, valid) for g in range(0, P, group)]
            results.append(torch.cat(parts, dim=1))
        result_keys.append(ck)
    out = out.index_copy(0, torch.cat(result_keys), torch.cat(results))
    return _assemble(out, C, th, tw, ts, width, height, out_dim)


def _assemble(out: Tensor, C: int, th: int, tw: int, ts: int, width: int, height: int, d: int) -> Tensor:
    img = out.reshape(C, th, tw, ts, ts, d).permute(0, 1, 3, 2, 4, 5).reshape(C, th * ts, tw * ts, d)
    return img[:, :height, :width]
