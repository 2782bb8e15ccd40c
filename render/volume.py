"""Volume rendering for NeRF-style fields: camera rays, ray/box intersection, weights and compositing.

Written by hand from the NeRF quadrature (Max 1995; Mildenhall et al. 2020) in plain torch, because the
product must train and render on CPUs and its maths is a few lines. For samples ``i`` of one ray with
density ``sigma_i`` over a segment of length ``delta_i``::

    alpha_i = 1 - exp(-sigma_i * delta_i)
    T_i     = exp(-sum_{j < i} sigma_j * delta_j)        (transmittance before sample i)
    w_i     = T_i * alpha_i
    colour  = sum_i w_i c_i + (1 - sum_i w_i) * background

Two input forms share that meaning (as in nerfacc): *padded* samples ``[R, S]`` with an optional mask
(the reference, and what the per-ray loop in the tests checks), and *packed* samples ``[N]`` with a
sorted ``ray_indices [N]`` (only the samples that exist, what the occupancy-grid marcher produces).
The packed path computes every ray's running sum with one float64 cumulative sum over all samples minus
the sum at the ray's first sample, so there is no Python loop over rays; float64 keeps the difference
exact enough for millions of samples.

Cameras follow the rasterizers: ``viewmats [C, 4, 4]`` world-to-camera in OpenCV axes (x right, y down,
z forward) and ``Ks [C, 3, 3]`` in pixels with pixel centres at ``+0.5``. Ray directions are unit
vectors in world space, so ray parameters ``t`` are world distances. This module takes and returns
tensors only; it knows nothing of fields or datasets.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Layout = Literal["padded", "packed"]


# --------------------------------------------------------------------------------------------- rays
def _check_cameras(viewmats: Tensor, Ks: Tensor) -> None:
    if not isinstance(viewmats, Tensor) or viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        raise ValueError(f"viewmats must have shape [C, 4, 4], got {tuple(getattr(viewmats, 'shape', ()))}")
    if not isinstance(Ks, Tensor) or Ks.shape != (viewmats.shape[0], 3, 3):
        raise ValueError(f"Ks must have shape [C, 3, 3] with C = {viewmats.shape[0]}, got {tuple(getattr(Ks, 'shape', ()))}")


def pixel_rays(
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    camera_ids: Tensor,  # [R] int64
    pixels: Tensor,  # [R, 2] (column, row), integer or float pixel indices
) -> tuple[Tensor, Tensor]:  # origins [R, 3], unit directions [R, 3]
    """World-space rays through pixel centres ``(column + 0.5, row + 0.5)`` of the given cameras."""
    _check_cameras(viewmats, Ks)
    if camera_ids.dim() != 1 or pixels.shape != (camera_ids.shape[0], 2):
        raise ValueError(
            f"camera_ids must be [R] and pixels [R, 2], got {tuple(camera_ids.shape)} and {tuple(pixels.shape)}"
        )
    dtype = viewmats.dtype if viewmats.is_floating_point() else torch.float32
    R = viewmats[camera_ids, :3, :3].to(dtype)  # [R, 3, 3] world -> camera
    t = viewmats[camera_ids, :3, 3].to(dtype)
    K = Ks[camera_ids].to(dtype)
    uv = pixels.to(dtype) + 0.5
    x = (uv[:, 0] - K[:, 0, 2]) / K[:, 0, 0]
    y = (uv[:, 1] - K[:, 1, 2]) / K[:, 1, 1]
    d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
    dirs = torch.einsum("rji,rj->ri", R, d_cam)  # R^T d_cam
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = -torch.einsum("rji,rj->ri", R, t)  # -R^T t
    return origins, dirs


def camera_rays(
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
) -> tuple[Tensor, Tensor]:  # origins [C, H, W, 3], unit directions [C, H, W, 3]
    """Rays through every pixel centre of ``C`` cameras (row-major pixels)."""
    _check_cameras(viewmats, Ks)
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"width and height must be >= 1, got {width}, {height}")
    C, W, H = viewmats.shape[0], int(width), int(height)
    dev = viewmats.device
    rows, cols = torch.meshgrid(torch.arange(H, device=dev), torch.arange(W, device=dev), indexing="ij")
    pix = torch.stack([cols, rows], dim=-1).reshape(1, -1, 2).expand(C, -1, -1).reshape(-1, 2)
    cams = torch.arange(C, device=dev).repeat_interleave(H * W)
    o, d = pixel_rays(viewmats, Ks, cams, pix)
    return o.reshape(C, H, W, 3), d.reshape(C, H, W, 3)


def ray_aabb(
    origins: Tensor,  # [..., 3]
    dirs: Tensor,  # [..., 3]
    aabb: Tensor,  # [2, 3] (min, max)
    near: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor]:  # t_near [...], t_far [...], hit [...] bool
    """Slab-test entry and exit distances of rays through an axis-aligned box.

    ``t_near`` is clamped to at least ``near`` (so cameras inside the box start at ``near``); ``hit`` is
    False where the ray misses the box or the box lies behind ``near``. Components of ``dirs`` that are
    exactly 0 are treated as parallel to the slab (inside it or not).
    """
    if origins.shape[-1] != 3 or dirs.shape != origins.shape:
        raise ValueError(f"origins and dirs must have the same shape [..., 3], got {tuple(origins.shape)}, {tuple(dirs.shape)}")
    if aabb.shape != (2, 3):
        raise ValueError(f"aabb must have shape [2, 3], got {tuple(aabb.shape)}")
    aabb = aabb.to(origins)
    safe = torch.where(dirs == 0, torch.full_like(dirs, 1e-30), dirs)
    inv = 1.0 / safe
    t0 = (aabb[0] - origins) * inv
    t1 = (aabb[1] - origins) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp_min(near)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    return t_near, t_far, t_far > t_near


# --------------------------------------------------------------------------------------------- weights
def render_weights(
    sigmas: Tensor,  # [..., S] (padded) or [N] (packed)
    deltas: Tensor,  # same shape as sigmas
    ray_indices: Tensor | None = None,  # [N] int64, sorted, for packed samples
    n_rays: int | None = None,
    mask: Tensor | None = None,  # [..., S] bool, padded only: False marks padding
) -> tuple[Tensor, Tensor, Tensor]:  # weights, transmittance (before each sample), alphas; shape of sigmas
    """Per-sample compositing weights ``w_i = T_i (1 - exp(-sigma_i delta_i))``.

    Padded form (``ray_indices`` None): samples run along the last dimension; masked-out samples get
    zero weight and do not attenuate. Packed form: ``ray_indices`` gives each sample's ray, sorted (all
    samples of a ray contiguous, in order of increasing ``t``).
    """
    if deltas.shape != sigmas.shape:
        raise ValueError(f"deltas must have the shape of sigmas {tuple(sigmas.shape)}, got {tuple(deltas.shape)}")
    tau = sigmas * deltas
    if ray_indices is None:
        if sigmas.dim() < 1:
            raise ValueError("padded sigmas must have shape [..., S]")
        if mask is not None:
            if mask.shape != sigmas.shape:
                raise ValueError(f"mask must have the shape of sigmas {tuple(sigmas.shape)}, got {tuple(mask.shape)}")
            tau = torch.where(mask, tau, torch.zeros_like(tau))
        excl = torch.cumsum(tau, dim=-1) - tau
        trans = torch.exp(-excl)
    else:
        if sigmas.dim() != 1 or ray_indices.shape != sigmas.shape:
            raise ValueError(
                f"packed sigmas and ray_indices must both be [N], got {tuple(sigmas.shape)} and {tuple(ray_indices.shape)}"
            )
        if mask is not None:
            raise ValueError("mask is for padded samples only")
        trans = torch.exp(-packed_exclusive_sum(tau, ray_indices, n_rays))
    alphas = 1.0 - torch.exp(-tau)
    return trans * alphas, trans, alphas


def _ray_starts(ray_indices: Tensor, n_rays: int | None) -> tuple[Tensor, int]:
    """Index of every ray's first sample (``[n_rays]``; meaningless for rays without samples)."""
    n = int(ray_indices.max()) + 1 if n_rays is None and ray_indices.numel() else int(n_rays or 0)
    counts = torch.bincount(ray_indices, minlength=n)
    return torch.cumsum(counts, 0) - counts, n


def packed_exclusive_sum(values: Tensor, ray_indices: Tensor, n_rays: int | None) -> Tensor:
    """Per-ray exclusive running sum of packed ``values [N]`` (float64 internally)."""
    if values.numel() == 0:
        return values
    v64 = values.double()
    excl = torch.cumsum(v64, 0) - v64
    starts, _ = _ray_starts(ray_indices, n_rays)
    offset = excl[starts.clamp(max=values.numel() - 1)]  # the running sum where each ray begins
    return (excl - offset[ray_indices]).to(values.dtype)


def accumulate(
    weights: Tensor,  # [..., S] or [N]
    values: Tensor | None = None,  # [..., S, D] or [N, D]; None accumulates the weights themselves
    ray_indices: Tensor | None = None,  # [N] for packed samples
    n_rays: int | None = None,
) -> Tensor:  # [..., D] or [n_rays, D] (D = 1 when values is None)
    """Weighted sum along each ray: ``sum_i w_i v_i``."""
    src = weights[..., None] if values is None else weights[..., None] * values
    if ray_indices is None:
        return src.sum(dim=-2)
    if n_rays is None:
        raise ValueError("n_rays is required for packed samples")
    out = torch.zeros(n_rays, src.shape[-1], dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


def composite(
    sigmas: Tensor,  # [R, S] padded or [N] packed
    rgbs: Tensor,  # [R, S, 3] or [N, 3]
    t_starts: Tensor,  # [R, S] or [N]
    t_ends: Tensor,  # [R, S] or [N]
    ray_indices: Tensor | None = None,  # [N] for packed samples
    n_rays: int | None = None,
    mask: Tensor | None = None,  # [R, S] for padded samples
    backgrounds: Tensor | None = None,  # [3] or [R, 3]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # colours [R, 3], opacities [R, 1], depths [R, 1], weights
    """Composite samples into per-ray colour, opacity and expected depth (``sum_i w_i t_mid_i``, not
    normalized by opacity), blending ``backgrounds`` behind: ``c + (1 - opacity) * bg``."""
    weights, _, _ = render_weights(sigmas, t_ends - t_starts, ray_indices, n_rays, mask)
    if ray_indices is not None and n_rays is None:
        raise ValueError("n_rays is required for packed samples")
    colors = accumulate(weights, rgbs, ray_indices, n_rays)
    opacities = accumulate(weights, None, ray_indices, n_rays)
    depths = accumulate(weights, ((t_starts + t_ends) * 0.5)[..., None], ray_indices, n_rays)
    if backgrounds is not None:
        colors = blend_background(colors, opacities, backgrounds)
    return colors, opacities, depths, weights


def blend_background(colors: Tensor, opacities: Tensor, backgrounds: Tensor) -> Tensor:
    """``colors [..., 3] + (1 - opacities [..., 1]) * backgrounds`` (background ``[3]`` or ``[..., 3]``)."""
    if backgrounds.shape[-1] != 3:
        raise ValueError(f"backgrounds must have shape [3] or [..., 3], got {tuple(backgrounds.shape)}")
    return colors + (1.0 - opacities) * backgrounds.to(colors)


def packed_to_padded(
    values: Tensor,  # [N, ...]
    ray_indices: Tensor,  # [N] sorted
    n_rays: int,
    fill: float = 0.0,
) -> tuple[Tensor, Tensor]:  # padded [n_rays, S_max, ...], mask [n_rays, S_max]
    """Scatter packed samples into a padded ``[n_rays, S_max]`` layout (the reference form)."""
    starts, _ = _ray_starts(ray_indices, n_rays)
    counts = torch.bincount(ray_indices, minlength=n_rays)
    s_max = int(counts.max()) if counts.numel() else 0
    slot = torch.arange(values.shape[0], device=values.device) - starts[ray_indices]
    out = torch.full((n_rays, s_max, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
    out = out.index_put((ray_indices, slot), values)
    mask = torch.zeros(n_rays, s_max, dtype=torch.bool, device=values.device)
    mask[ray_indices, slot] = True
    return out, mask
