"""3D Gaussian splatting rasterizer: EWA projection, a tiled pure-PyTorch path and gsplat's CUDA path.

:func:`rasterization` mirrors ``gsplat.rasterization`` (gsplat 1.5, ``packed=False``, pinhole cameras)
argument for argument and output for output. With CUDA tensors and gsplat installed it calls gsplat;
otherwise it runs the torch reference written here by hand, which is the specification the CUDA path is
tested against. The torch path is written from gsplat's documented conventions and its CUDA kernels'
constants, not translated from its code:

* projection (:func:`project_gaussians`): world->camera, EWA Jacobian with the camera-space point
  clamped to 1.3x the field of view, ``eps2d`` added to the 2D covariance, the antialiasing
  compensation ``sqrt(det(cov) / det(cov + eps2d I))``, a ``3.33``-sigma box tightened by the opacity
  (``sqrt(2 ln(255 opacity))``, so the box holds every pixel whose alpha can reach 1/255), culling
  outside ``[near_plane, far_plane]``, outside the image and at or below ``radius_clip``;
* compositing: pixel centres at ``+0.5``, ``alpha = min(0.999, opacity * exp(-power))``, pairs with
  ``alpha < 1/255`` skipped, front to back, a pixel stops (exclusively) at the first Gaussian that
  would take its transmittance to ``1e-4`` or below; background added as ``(1 - alpha) * bg``.

The tiled torch path (:func:`_pixel_fn` on :mod:`scenezip.render._tiles`) evaluates a ``[T, P, K]``
block of pixel-Gaussian pairs per chunk with a cumulative product instead of the kernel's sequential
loop (the stop rule is a monotone mask on the running transmittance) and recomputes chunks in the
backward pass, so memory is bounded by ``chunk_pairs``. :func:`rasterization_dense_reference` is the
literal per-Gaussian loop of the CUDA kernel over every pixel, for tiny checks only.

Screen-space gradients for densification: ``meta["means2d"]`` (``[C, N, 2]``) is an intermediate of
the autograd graph on both backends; call ``meta["means2d"].retain_grad()`` before ``backward()`` and
read ``meta["means2d"].grad`` afterwards (gsplat's ``absgrad`` is not offered: the torch path cannot
produce per-pixel absolute gradients cheaply).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from scenezip._backend import BACKENDS, import_gsplat, resolve_backend
from scenezip.render._project import (
    check_splat_inputs,
    covar_world_to_cam,
    quat_scale_to_covar,
    view_colors,
    world_to_cam,
)
from scenezip.render._tiles import DEFAULT_CHUNK_PAIRS, DEFAULT_TILE_SIZE, isect_tiles, rasterize_tiles

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
RasterizeMode = Literal["classic", "antialiased"]
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
RASTERIZE_MODES = ("classic", "antialiased")

ALPHA_THRESHOLD = 1.0 / 255.0  # pairs below this alpha are skipped (gsplat's ALPHA_THRESHOLD)
MAX_ALPHA = 0.999  # alpha is clamped here so transmittance never reaches 0
T_MIN = 1e-4  # a pixel stops before the Gaussian that would take its transmittance to this or below
SIGMA_EXTENT = 3.33  # box half-size in standard deviations for a fully opaque Gaussian
GSPLAT_TILE_SIZE = 16  # tile size of the CUDA path (gsplat's default and only tested value)


def project_gaussians(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    calc_compensations: bool = False,
) -> dict[str, Tensor]:
    """EWA projection of 3D Gaussians into C pinhole cameras; mirrors ``gsplat.fully_fused_projection``
    (``packed=False``, with ``opacities`` for the tight box).

    Returns a dict of:
        ``radii`` ``[C, N, 2]`` int32 box half-sizes in pixels (0 = culled), ``means2d`` ``[C, N, 2]``,
        ``depths`` ``[C, N]`` camera-space z, ``conics`` ``[C, N, 3]`` upper triangle ``(a, b, c)`` of the
        inverse 2D covariance (``power = a dx^2 / 2 + b dx dy + c dy^2 / 2``), ``compensations``
        ``[C, N]`` (ones unless ``calc_compensations``), ``opacities`` ``[C, N]`` (times the
        compensation when it is computed), and ``valid`` ``[C, N]`` bool: every cull except the
        image-bounds test (used by the dense reference to check that the box test is exact).
    Culled Gaussians get zero means2d, conics and depths (finite values, zero gradients).
    """
    C, N = viewmats.shape[0], means.shape[0]
    means_c = world_to_cam(means, viewmats)  # [C, N, 3]
    covars_c = covar_world_to_cam(quat_scale_to_covar(quats, scales), viewmats)  # [C, N, 3, 3]
    x, y, z = means_c.unbind(-1)
    in_depth = (z >= near_plane) & (z <= far_plane)
    z = torch.where(in_depth, z, torch.ones_like(z))  # culled ones: keep the algebra finite

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # [C, 1]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # the Jacobian is evaluated at the point clamped to 1.3x the field of view (gsplat, 3DGS)
    lim_x_pos = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_x_neg = cx / fx + 0.3 * (0.5 * width / fx)
    lim_y_pos = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_y_neg = cy / fy + 0.3 * (0.5 * height / fy)
    tx = z * torch.clamp(x / z, min=-lim_x_neg, max=lim_x_pos)
    ty = z * torch.clamp(y / z, min=-lim_y_neg, max=lim_y_pos)
    zeros = torch.zeros_like(z)
    J = torch.stack([fx / z, zeros, -fx * tx / (z * z), zeros, fy / z, -fy * ty / (z * z)], -1)
    J = J.reshape(C, N, 2, 3)
    cov2d = J @ covars_c @ J.transpose(-1, -2)  # [C, N, 2, 2]
    means2d = torch.stack([fx * x / z + cx, fy * y / z + cy], -1)  # [C, N, 2]

    c00, c01, c10, c11 = cov2d[..., 0, 0], cov2d[..., 0, 1], cov2d[..., 1, 0], cov2d[..., 1, 1]
    det_orig = c00 * c11 - c01 * c10
    c00, c11 = c00 + eps2d, c11 + eps2d
    det = c00 * c11 - c01 * c10
    ok = in_depth & (det > 0)
    det_safe = torch.where(ok, det, torch.ones_like(det))
    if calc_compensations:
        # clamped away from 0 so sqrt's derivative stays finite (gsplat's backward adds 1e-6 likewise)
        comp = torch.sqrt(torch.clamp(det_orig / det_safe, min=1e-12))
        opac = opacities[None, :] * comp
    else:
        comp = torch.ones_like(det)
        opac = opacities[None, :].expand(C, N)
    conics = torch.stack([c11 / det_safe, -0.5 * (c01 + c10) / det_safe, c00 / det_safe], -1)

    with torch.no_grad():
        o = opac.detach()
        ok = ok & (o >= ALPHA_THRESHOLD)
        extent = torch.sqrt(2.0 * torch.log(o.clamp_min(ALPHA_THRESHOLD) / ALPHA_THRESHOLD)).clamp_max(SIGMA_EXTENT)
        rx = torch.ceil(extent * torch.sqrt(c00.detach().clamp_min(0)))
        ry = torch.ceil(extent * torch.sqrt(c11.detach().clamp_min(0)))
        ok = ok & ~((rx <= radius_clip) & (ry <= radius_clip))
        m = means2d.detach()
        inside = (m[..., 0] + rx > 0) & (m[..., 0] - rx < width) & (m[..., 1] + ry > 0) & (m[..., 1] - ry < height)
        visible = ok & inside
        radii = torch.where(visible[..., None], torch.stack([rx, ry], -1), torch.zeros_like(m)).to(torch.int32)

    keep = ok[..., None]
    return {
        "radii": radii,
        "means2d": torch.where(keep, means2d, torch.zeros_like(means2d)),
        "depths": torch.where(ok, means_c[..., 2], torch.zeros_like(z)),
        "conics": torch.where(keep, conics, torch.zeros_like(conics)),
        "compensations": comp,
        "opacities": opac,
        "valid": ok,
    }


def _check_inputs(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    sh_degree: int | None,
    backgrounds: Tensor | None,
    render_mode: str,
    rasterize_mode: str,
    tile_size: int,
    chunk_pairs: int,
    backend: str,
) -> None:
    """Validate shapes and options once, before any kernel; every message names the argument."""
    n_channels = check_splat_inputs(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree)
    C = viewmats.shape[0]
    for name, v in (("width", width), ("height", height), ("tile_size", tile_size), ("chunk_pairs", chunk_pairs)):
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if rasterize_mode not in RASTERIZE_MODES:
        raise ValueError(f"rasterize_mode must be one of {RASTERIZE_MODES}, got {rasterize_mode!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backgrounds is not None and backgrounds.shape != (C, n_channels):
        raise ValueError(f"backgrounds must have shape [C, D] = [{C}, {n_channels}], got {tuple(backgrounds.shape)}")
    named = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors}
    named.update({"viewmats": viewmats, "Ks": Ks})
    if backgrounds is not None:
        named["backgrounds"] = backgrounds
    for name, t in named.items():
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
        if t.device != means.device:
            raise ValueError(f"{name} is on {t.device} but means is on {means.device}; put all inputs on one device")


def _gaussian_values(
    means: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    proj: dict[str, Tensor],
    sh_degree: int | None,
    backgrounds: Tensor | None,
    render_mode: str,
) -> tuple[Tensor, Tensor | None]:
    """Per-camera values to composite ``[C, N, D']`` (colours and/or depth) and matching backgrounds."""
    C, N = proj["depths"].shape
    if render_mode in ("D", "ED"):
        bg = None if backgrounds is None else backgrounds.new_zeros(C, 1)
        return proj["depths"][..., None], bg
    rgb = view_colors(means, colors, viewmats, sh_degree)
    if render_mode == "RGB":
        return rgb, backgrounds
    bg = None if backgrounds is None else torch.cat([backgrounds, backgrounds.new_zeros(C, 1)], -1)
    return torch.cat([rgb, proj["depths"][..., None]], -1), bg


def _finish(
    acc: Tensor, alphas: Tensor, backgrounds: Tensor | None, render_mode: str
) -> tuple[Tensor, Tensor]:
    """Add the background and turn accumulated depth into expected depth where asked."""
    if backgrounds is not None:
        acc = acc + (1.0 - alphas) * backgrounds[:, None, None, :]
    if render_mode in ("ED", "RGB+ED"):
        acc = torch.cat([acc[..., :-1], acc[..., -1:] / alphas.clamp_min(1e-10)], -1)
    return acc, alphas


def _composite_terms(feats: Tensor, coeffs: Tensor, opac: Tensor) -> tuple[Tensor, ...]:
    """Per-pair alphas and front-to-back weights of one chunk (shared by forward and backward).

    ``-power = feats @ coeffs``: ``feats`` ``[T, P, 6]`` are ``(1, x, y, x^2, xy, y^2)`` of pixel
    centres relative to a per-tile reference point and ``coeffs`` ``[T, 6, K]`` the matching
    coefficients of each Gaussian's negated quadratic form, so the whole Gaussian evaluation is one
    batched matrix product. The conics are positive definite by construction, so gsplat's
    ``power < 0`` test only guards rounding and is not needed here. Runs without autograd (inside
    :class:`_Composite`), so it works in place to spare allocations.

    Returns:
        ``alpha`` ``[T, P, K]`` (0 where skipped), ``clamped`` (bool, alpha hit ``MAX_ALPHA``),
        ``stopped`` (bool, the pair comes at or after the pixel's stop), ``trans_ext``
        ``[T, P, K + 1]`` transmittance before each Gaussian and after the last, and ``weights``
        ``alpha * transmittance`` (0 where skipped or stopped).
    """
    T, P, K = feats.shape[0], feats.shape[1], coeffs.shape[2]
    alpha = torch.bmm(feats, coeffs).exp_().mul_(opac[:, None, :])  # [T, P, K]
    clamped = alpha > MAX_ALPHA
    alpha.clamp_max_(MAX_ALPHA).masked_fill_(alpha < ALPHA_THRESHOLD, 0.0)
    trans_ext = torch.empty(T, P, K + 1, dtype=alpha.dtype, device=alpha.device)
    trans_ext[..., 0] = 1.0
    torch.cumprod(1.0 - alpha, dim=-1, out=trans_ext[..., 1:])  # transmittance after each Gaussian
    # exclusive stop: a Gaussian counts only while the transmittance after it stays above T_MIN; the
    # transmittance never grows, so the counted pairs are a prefix of each pixel's list
    stopped = trans_ext[..., 1:] <= T_MIN
    weights = (trans_ext[..., :-1] - trans_ext[..., 1:]).masked_fill_(stopped, 0.0)  # alpha * before
    return alpha, clamped, stopped, trans_ext, weights


class _Composite(torch.autograd.Function):
    """Front-to-back compositing of one chunk with a hand-written backward that recomputes the pairs.

    Only the chunk's per-Gaussian inputs are saved (never a ``[T, P, K]`` tensor), so memory stays
    bounded without checkpointing and the backward costs one recomputation plus a few batched products.
    The backward is gsplat's: with ``w_k = alpha_k T_k`` and ``g_k = dL/dw_k``,
    ``dL/dalpha_k = T_k g_k - sum_{j>k} g_j w_j / (1 - alpha_k)`` over counted pairs.
    """

    @staticmethod
    def forward(ctx, feats: Tensor, coeffs: Tensor, opac: Tensor, values: Tensor) -> Tensor:
        ctx.save_for_backward(feats, coeffs, opac, values)
        weights = _composite_terms(feats, coeffs, opac)[-1]
        ext = torch.cat([values, torch.ones_like(values[..., :1])], -1)  # last channel: alpha
        return torch.bmm(weights, ext)  # [T, P, D + 1]

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        feats, coeffs, opac, values = ctx.saved_tensors
        alpha, clamped, stopped, trans_ext, weights = _composite_terms(feats, coeffs, opac)
        grad_out = grad_out.contiguous()
        ext = torch.cat([values, torch.ones_like(values[..., :1])], -1)
        grad_w = torch.bmm(grad_out, ext.transpose(1, 2))  # [T, P, K]
        grad_values = torch.bmm(weights.transpose(1, 2), grad_out[..., :-1])  # [T, K, D]
        q = weights.mul_(grad_w)  # weights are no longer needed
        later = q.flip(-1).cumsum_(-1).flip(-1).sub_(q)  # sum over j > k of g_j w_j
        # dL/dalpha = T_k g_k - later_k / (1 - alpha_k), then d alpha / d(-power) = alpha where the pair
        # counts and alpha was not clamped (skipped pairs have alpha = 0 already)
        grad_np = grad_w.mul_(trans_ext[..., :-1]).sub_(later.div_(1.0 - alpha)).mul_(alpha)
        grad_np.masked_fill_(stopped | clamped, 0.0)  # [T, P, K]
        grad_coeffs = torch.bmm(feats.transpose(1, 2), grad_np)  # [T, 6, K]
        # d alpha / d opac = alpha / opac, and sum_p grad_np is row 0 of grad_coeffs (feature 1)
        safe = torch.where(opac > 0, opac, torch.ones_like(opac))
        grad_opac = torch.where(opac > 0, grad_coeffs[:, 0] / safe, torch.zeros_like(opac))
        return None, grad_coeffs, grad_opac, grad_values


def _pixel_fn(pix: Tensor, ids: Tensor, valid: Tensor, packed: Tensor) -> Tensor:
    """Composite one chunk of tiles front to back; the ``pixel_fn`` of :func:`rasterize_tiles`.

    Args:
        pix: ``[T, P, 2]`` pixel centres.
        ids: ``[T, K]`` depth-sorted indices into the flattened ``[C * N]`` Gaussians.
        valid: ``[T, K]`` False on padding.
        packed: ``[C * N, 6 + D]`` per-Gaussian ``(mean x, mean y, conic a, b, c, opacity, values...)``.

    Returns:
        ``[T, P, D + 1]``: accumulated values, then accumulated alpha.
    """
    g = packed[ids]  # [T, K, 6 + D]
    ref = pix.detach().mean(dim=1, keepdim=True)  # [T, 1, 2]: small local coordinates keep float32 exact
    x, y = (pix - ref).unbind(-1)  # [T, P]
    feats = torch.stack([torch.ones_like(x), x, y, x * x, x * y, y * y], -1)  # [T, P, 6]
    mx, my = g[..., 0] - ref[..., 0], g[..., 1] - ref[..., 1]  # [T, K]
    a, b, c = g[..., 2], g[..., 3], g[..., 4]
    coeffs = torch.stack(
        [-(0.5 * a * mx * mx + b * mx * my + 0.5 * c * my * my), a * mx + b * my, b * mx + c * my, -0.5 * a, -b, -0.5 * c],
        1,
    )  # [T, 6, K]: -power = sum_f feats[f] * coeffs[f]
    opac = torch.where(valid, g[..., 5], torch.zeros_like(g[..., 5]))
    return _Composite.apply(feats, coeffs, opac, g[..., 6:])


def _rasterize_torch(
    means, quats, scales, opacities, colors, viewmats, Ks, width, height,
    near_plane, far_plane, radius_clip, eps2d, sh_degree, backgrounds, render_mode, rasterize_mode,
    tile_size, chunk_pairs,
) -> tuple[Tensor, Tensor, dict]:  # fmt: skip
    C, N = viewmats.shape[0], means.shape[0]
    proj = project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height,
        near_plane, far_plane, radius_clip, eps2d, calc_compensations=rasterize_mode == "antialiased",
    )  # fmt: skip
    values, bg = _gaussian_values(means, colors, viewmats, proj, sh_degree, backgrounds, render_mode)
    D = values.shape[-1]
    isect = isect_tiles(proj["means2d"], proj["radii"], proj["depths"], width, height, tile_size)
    packed = torch.cat([proj["means2d"], proj["conics"], proj["opacities"][..., None], values], -1)
    out = rasterize_tiles(
        _pixel_fn, (packed.reshape(C * N, 6 + D),), isect, width, height, D + 1, chunk_pairs, checkpoint_chunks=False
    )
    render, alphas = _finish(out[..., :D], out[..., D:], bg, render_mode)
    meta = {k: proj[k] for k in ("radii", "means2d", "depths", "conics", "opacities", "compensations")}
    meta.update(
        backend="torch",
        width=width,
        height=height,
        n_cameras=C,
        tile_size=tile_size,
        tile_width=isect.tile_width,
        tile_height=isect.tile_height,
        flatten_ids=isect.flatten_ids,
        isect_tile_keys=isect.tile_keys,
    )
    return render, alphas, meta


def rasterization(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D] or [N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,  # [C, D]
    render_mode: RenderMode = "RGB",
    rasterize_mode: RasterizeMode = "classic",
    tile_size: int = DEFAULT_TILE_SIZE,
    chunk_pairs: int = DEFAULT_CHUNK_PAIRS,
    backend: Literal["auto", "torch", "cuda"] = "auto",
) -> tuple[Tensor, Tensor, dict]:  # [C, H, W, D'], [C, H, W, 1], meta
    """Render N 3D Gaussians into C pinhole cameras; mirrors ``gsplat.rasterization`` (``packed=False``).

    Args:
        means: ``[N, 3]`` world-space centres.
        quats: ``[N, 4]`` rotations ``(w, x, y, z)``, any norm.
        scales: ``[N, 3]`` activated (not log) standard deviations.
        opacities: ``[N]`` activated opacities in ``[0, 1]``.
        colors: ``[N, D]`` activated values, or ``[N, K, 3]`` SH coefficients when ``sh_degree`` is
            given (``K >= (sh_degree + 1)^2``; the colour is ``max(SH(mean - camera centre) + 0.5, 0)``).
        viewmats: ``[C, 4, 4]`` world-to-camera, OpenCV axes.
        Ks: ``[C, 3, 3]`` intrinsics in pixels.
        width, height: image size in pixels.
        near_plane, far_plane: Gaussians whose camera depth lies outside are culled.
        radius_clip: Gaussians whose pixel box half-sizes are both at most this are culled.
        eps2d: added to the diagonal of every 2D covariance (a minimum pixel footprint).
        sh_degree: None for plain colours, else the SH degree (0..3) to evaluate.
        backgrounds: ``[C, D]`` colours blended in as ``(1 - alpha) * bg`` (zero for the depth channel).
        render_mode: ``"RGB"``; ``"D"`` accumulated depth ``sum w_i z_i``; ``"ED"`` expected depth
            ``sum w_i z_i / alpha``; ``"RGB+D"``, ``"RGB+ED"`` append the depth channel to the colours.
        rasterize_mode: ``"antialiased"`` scales opacities by ``sqrt(det(cov) / det(cov + eps2d I))``.
        tile_size: tile side of the torch path (the CUDA path uses gsplat's 16).
        chunk_pairs: pixel-Gaussian pairs per chunk of the torch path (bounds its memory).
        backend: ``"auto"`` takes gsplat for float32 CUDA tensors when it is installed and the torch
            path otherwise (always for CPU tensors); ``"cuda"`` requires float32 CUDA tensors and gsplat.

    Returns:
        ``render_colors`` ``[C, H, W, D']`` (``D' = D``, 1 or ``D + 1`` by mode), ``render_alphas``
        ``[C, H, W, 1]``, and ``meta`` with at least ``radii`` ``[C, N, 2]`` (int32, 0 = culled),
        ``means2d`` ``[C, N, 2]``, ``depths`` ``[C, N]``, ``conics`` ``[C, N, 3]``, ``opacities``
        ``[C, N]`` (after compensation), ``width``, ``height``, ``tile_size``, ``n_cameras`` and
        ``backend``. For densification, call ``meta["means2d"].retain_grad()`` before ``backward()``;
        its ``.grad`` then holds the screen-space gradients.
    """
    _check_inputs(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, backgrounds,
        render_mode, rasterize_mode, tile_size, chunk_pairs, backend,
    )  # fmt: skip
    on_cuda = means.device.type == "cuda"
    if backend == "cuda" and not on_cuda:
        raise ValueError(f"backend 'cuda' needs CUDA tensors, but means is on {means.device}")
    if backend == "cuda" and means.dtype != torch.float32:
        raise ValueError(f"backend 'cuda' (gsplat) needs float32 tensors, got {means.dtype}")
    # gsplat runs float32 CUDA tensors only; anything else takes the torch path
    use = resolve_backend(backend, "gsplat") if on_cuda and means.dtype == torch.float32 else "torch"
    if use == "torch":
        return _rasterize_torch(
            means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
            radius_clip, eps2d, sh_degree, backgrounds, render_mode, rasterize_mode, tile_size, chunk_pairs,
        )  # fmt: skip
    gsplat = import_gsplat()
    render, alphas, meta = gsplat.rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
        sh_degree=sh_degree, packed=False, tile_size=GSPLAT_TILE_SIZE, backgrounds=backgrounds,
        render_mode=render_mode, rasterize_mode=rasterize_mode,
    )  # fmt: skip
    meta["backend"] = "cuda"
    meta["n_cameras"] = viewmats.shape[0]
    return render, alphas, meta


def rasterization_dense_reference(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D] or [N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = 0.3,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,
    render_mode: RenderMode = "RGB",
    rasterize_mode: RasterizeMode = "classic",
) -> tuple[Tensor, Tensor]:  # [C, H, W, D'], [C, H, W, 1]
    """Every pixel against every Gaussian, in a plain loop over depth-sorted Gaussians.

    The obviously-correct check of :func:`rasterization`'s tiled path: no tiles, no boxes (only the
    culls that do not depend on the image bounds), the per-pixel loop of gsplat's forward kernel
    written out step by step. Costs ``O(C * H * W * N)`` with a Python loop over Gaussians: tiny cases
    only. Arguments as :func:`rasterization`.
    """
    _check_inputs(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height, sh_degree, backgrounds,
        render_mode, rasterize_mode, DEFAULT_TILE_SIZE, DEFAULT_CHUNK_PAIRS, "torch",
    )  # fmt: skip
    proj = project_gaussians(
        means, quats, scales, opacities, viewmats, Ks, width, height,
        near_plane, far_plane, radius_clip, eps2d, calc_compensations=rasterize_mode == "antialiased",
    )  # fmt: skip
    values, bg = _gaussian_values(means, colors, viewmats, proj, sh_degree, backgrounds, render_mode)
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=means.dtype, device=means.device),
        torch.arange(width, dtype=means.dtype, device=means.device),
        indexing="ij",
    )
    px, py = xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5  # [H * W]
    renders, alphas = [], []
    for cam in range(viewmats.shape[0]):
        order = torch.argsort(proj["depths"][cam].detach(), stable=True).tolist()
        T = torch.ones_like(px)
        acc = torch.zeros(px.shape[0], values.shape[-1], dtype=means.dtype, device=means.device)
        done = torch.zeros_like(px, dtype=torch.bool)
        for i in order:
            if not bool(proj["valid"][cam, i]):
                continue
            mx, my = proj["means2d"][cam, i]
            a, b, c = proj["conics"][cam, i]
            dx, dy = mx - px, my - py
            power = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
            alpha = torch.clamp_max(proj["opacities"][cam, i] * torch.exp(-power), MAX_ALPHA)
            skip = (power < 0) | (alpha < ALPHA_THRESHOLD) | done
            next_T = T * (1.0 - alpha)
            stop = ~skip & (next_T <= T_MIN)
            done = done | stop
            use = ~skip & ~stop
            acc = acc + torch.where(use[:, None], (alpha * T)[:, None] * values[cam, i], torch.zeros_like(acc))
            T = torch.where(use, next_T, T)
        renders.append(acc.reshape(height, width, -1))
        alphas.append((1.0 - T).reshape(height, width, 1))
    return _finish(torch.stack(renders), torch.stack(alphas), bg, render_mode)
