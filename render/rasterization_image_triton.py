"""Triton forward kernel of the image renderer: the GPU fast path of ``scenezip image decode``.

Written by hand (no library renders GaussianImage's accumulated sum; GaussianImage's own CUDA kernel
sums at most the first 256 Gaussians of a tile, see :mod:`scenezip.render.rasterization_image`). It
computes exactly the sum of :func:`~scenezip.render.rasterization_image.rasterize_image`, its
reference: the same tile lists (:func:`~scenezip.render.rasterization_image.image_tiles`), the same
per-pair ``s = 0.5 (a dx^2 + c dy^2) + b dx dy`` and cutoff ``s <= CUTOFF``. One Triton program per
tile holds the tile's pixels in registers and walks the tile's whole Gaussian list in a loop, so
there is no per-tile batch and no cap on how many Gaussians a tile sums. Forward only: decoding needs
no gradients, and fitting uses the differentiable torch renderers, which also run on CUDA. With
``delta`` it also sums the weights and returns the normalized blend (one division per pixel).

Triton compiles the kernel for NVIDIA GPUs; with ``TRITON_INTERPRET=1`` in the environment before the
kernel is defined it runs, slowly, on CPU tensors, which is how the tests check it against the
reference on a machine without a GPU. :func:`available` says whether a tensor on ``device`` can be
rendered here.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from scenezip.render.rasterization_image import CUTOFF, _check_delta, _check_inputs, chol_to_conics, image_tiles

try:  # optional: Triton ships with CUDA builds of torch
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

TILE = 16  # pixels per tile side: 256 pixels per program


def available(device: torch.device | str) -> bool:
    """Whether :func:`rasterize_image_triton` can render tensors on ``device`` (Triton installed and
    either a CUDA device or the Triton interpreter for CPU tensors)."""
    if triton is None:
        return False
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available()
    return dev.type == "cpu" and os.environ.get("TRITON_INTERPRET", "0") == "1"


if triton is not None:

    @triton.jit
    def _accumulate_kernel(
        means_ptr, conics_ptr, colors_ptr, offsets_ptr, ids_ptr, out_ptr,
        width, height, tiles_x, cutoff, delta,
        TS: tl.constexpr, NORMALIZE: tl.constexpr,
    ):  # fmt: skip
        tile = tl.program_id(0)
        p = tl.arange(0, TS * TS)
        px = (tile % tiles_x) * TS + p % TS
        py = (tile // tiles_x) * TS + p // TS
        cx = px.to(tl.float32) + 0.5
        cy = py.to(tl.float32) + 0.5
        acc_r = tl.zeros((TS * TS,), dtype=tl.float32)
        acc_g = tl.zeros((TS * TS,), dtype=tl.float32)
        acc_b = tl.zeros((TS * TS,), dtype=tl.float32)
        acc_w = tl.zeros((TS * TS,), dtype=tl.float32)
        start = tl.load(offsets_ptr + tile)
        end = tl.load(offsets_ptr + tile + 1)
        for k in range(start, end):  # every Gaussian of the tile, however many
            g = tl.load(ids_ptr + k)
            dx = cx - tl.load(means_ptr + 2 * g)
            dy = cy - tl.load(means_ptr + 2 * g + 1)
            a = tl.load(conics_ptr + 3 * g)
            b = tl.load(conics_ptr + 3 * g + 1)
            c = tl.load(conics_ptr + 3 * g + 2)
            s = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
            w = tl.where(s <= cutoff, tl.exp(-tl.maximum(s, 0.0)), 0.0)
            acc_r += w * tl.load(colors_ptr + 3 * g)
            acc_g += w * tl.load(colors_ptr + 3 * g + 1)
            acc_b += w * tl.load(colors_ptr + 3 * g + 2)
            if NORMALIZE:
                acc_w += w
        if NORMALIZE:  # the weighted mean of the colours (normalized blending)
            acc_r = acc_r / (acc_w + delta)
            acc_g = acc_g / (acc_w + delta)
            acc_b = acc_b / (acc_w + delta)
        inside = (px < width) & (py < height)
        o = (py * width + px) * 3
        tl.store(out_ptr + o, acc_r, mask=inside)
        tl.store(out_ptr + o + 1, acc_g, mask=inside)
        tl.store(out_ptr + o + 2, acc_b, mask=inside)


@torch.no_grad()
def rasterize_image_triton(
    means: Tensor,  # [N, 2] pixels
    chol: Tensor,  # [N, 3] Cholesky factor (l1, l2, l3), pixels
    colors: Tensor,  # [N, 3]
    width: int,
    height: int,
    delta: float | None = None,
) -> Tensor:  # [H, W, 3] float32, unclamped
    """The accumulated sum of :func:`~scenezip.render.rasterization_image.rasterize_image` (float32,
    not differentiable) by the Triton kernel, or with ``delta`` the normalized blend; every tensor on
    one device (see :func:`available`)."""
    _check_inputs(means, chol, colors, width, height)
    _check_delta(delta)
    if colors.shape[1] != 3:
        raise ValueError(f"colors must have 3 channels, got {colors.shape[1]}")
    if not available(means.device):
        raise RuntimeError(f"the Triton image renderer cannot run on {means.device} here "
                           "(needs Triton and a CUDA device, or TRITON_INTERPRET=1 for CPU tensors)")  # fmt: skip
    means, chol, colors = (t.to(torch.float32).contiguous() for t in (means, chol, colors))
    conics, cov = chol_to_conics(chol)
    isect = image_tiles(means, cov, width, height, TILE)
    n_tiles = isect.tile_width * isect.tile_height
    counts = torch.bincount(isect.tile_keys, minlength=n_tiles)
    offsets = torch.zeros(n_tiles + 1, dtype=torch.int64, device=means.device)
    offsets[1:] = torch.cumsum(counts, 0)
    out = torch.zeros(height, width, 3, dtype=torch.float32, device=means.device)
    if n_tiles and isect.flatten_ids.numel():
        _accumulate_kernel[(n_tiles,)](
            means, conics.contiguous(), colors, offsets, isect.flatten_ids.contiguous(), out,
            width, height, isect.tile_width, float(CUTOFF), float(delta or 0.0), TS=TILE, NORMALIZE=delta is not None,
        )  # fmt: skip
    return out
