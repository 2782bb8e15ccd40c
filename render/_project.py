"""Projection helpers shared by the pure-PyTorch 3DGS and 2DGS rasterizers.

Written by hand (plain tensor algebra, differentiable by autograd). The conventions are gsplat's, so the
torch path and the gsplat CUDA path agree: quaternions are ``(w, x, y, z)`` and normalized here;
``viewmats`` are world-to-camera 4x4 matrices in OpenCV axes (x right, y down, z forward); ``Ks`` are
3x3 pinhole intrinsics in pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices of quaternions; mirrors gsplat's ``_quat_to_rotmat``.

    Args:
        quats: ``[..., 4]`` quaternions ``(w, x, y, z)``, any norm (normalized here).

    Returns:
        ``[..., 3, 3]`` rotation matrices.
    """
    w, x, y, z = F.normalize(quats, p=2, dim=-1).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z),
        2 * (x * y - w * z),
        2 * (x * z + w * y),
        2 * (x * y + w * z),
        1 - 2 * (x * x + z * z),
        2 * (y * z - w * x),
        2 * (x * z - w * y),
        2 * (y * z + w * x),
        1 - 2 * (x * x + y * y),
    )
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def quat_scale_to_covar(quats: Tensor, scales: Tensor) -> Tensor:
    """World-space covariances ``R diag(s^2) R^T``.

    Args:
        quats: ``[..., 4]`` quaternions ``(w, x, y, z)``.
        scales: ``[..., 3]`` activated (not log) standard deviations along the local axes.

    Returns:
        ``[..., 3, 3]`` covariances.
    """
    m = quat_to_rotmat(quats) * scales[..., None, :]  # R S
    return m @ m.transpose(-1, -2)


def world_to_cam(means: Tensor, viewmats: Tensor) -> Tensor:
    """Points in every camera's frame.

    Args:
        means: ``[N, 3]`` world-space points.
        viewmats: ``[C, 4, 4]`` world-to-camera matrices.

    Returns:
        ``[C, N, 3]`` camera-space points (``z`` is the depth along the optical axis).
    """
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    return torch.einsum("cij,nj->cni", R, means) + t[:, None, :]


def covar_world_to_cam(covars: Tensor, viewmats: Tensor) -> Tensor:
    """Covariances in every camera's frame, ``R Sigma R^T``.

    Args:
        covars: ``[N, 3, 3]`` world-space covariances.
        viewmats: ``[C, 4, 4]`` world-to-camera matrices.

    Returns:
        ``[C, N, 3, 3]``.
    """
    R = viewmats[:, :3, :3]
    return torch.einsum("cij,njk,clk->cnil", R, covars, R)


def camera_centers(viewmats: Tensor) -> Tensor:
    """World-space camera centres ``-R^T t`` of world-to-camera matrices ``[C, 4, 4]``; returns ``[C, 3]``."""
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    return -torch.einsum("cji,cj->ci", R, t)


def check_splat_inputs(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    sh_degree: int | None,
) -> int:
    """Shape checks shared by the 3DGS and 2DGS rasterizers; each message names the argument.

    Returns the number of colour channels ``D`` the render will have.
    """
    if not isinstance(means, Tensor) or means.ndim != 2 or means.shape[-1] != 3:
        raise ValueError(f"means must have shape [N, 3], got {tuple(getattr(means, 'shape', ()))}")
    N = means.shape[0]
    for name, t, tail in (("quats", quats, (4,)), ("scales", scales, (3,)), ("opacities", opacities, ())):
        shape = (N, *tail)
        if tuple(t.shape) != shape:
            generic = "[N" + "".join(f", {d}" for d in tail) + "]"
            raise ValueError(f"{name} must have shape {generic} = {list(shape)}, got {tuple(t.shape)}")
    if viewmats.ndim != 3 or viewmats.shape[-2:] != (4, 4):
        raise ValueError(f"viewmats must have shape [C, 4, 4], got {tuple(viewmats.shape)}")
    C = viewmats.shape[0]
    if Ks.shape != (C, 3, 3):
        raise ValueError(f"Ks must have shape [C, 3, 3] = [{C}, 3, 3], got {tuple(Ks.shape)}")
    if sh_degree is None:
        if colors.ndim != 2 or colors.shape[0] != N or colors.shape[1] < 1:
            raise ValueError(f"colors must have shape [N, D] = [{N}, D] when sh_degree is None, got {tuple(colors.shape)}")
        return int(colors.shape[1])
    if isinstance(sh_degree, bool) or not isinstance(sh_degree, int) or not 0 <= sh_degree <= 3:
        raise ValueError(f"sh_degree must be None or an int in 0..3, got {sh_degree!r}")
    k = (sh_degree + 1) ** 2
    if colors.ndim != 3 or colors.shape[0] != N or colors.shape[2] != 3 or colors.shape[1] < k:
        raise ValueError(
            f"colors must have shape [N, K, 3] = [{N}, K>={k}, 3] SH coefficients for sh_degree={sh_degree}, "
            f"got {tuple(colors.shape)}"
        )
    return 3


def view_colors(means: Tensor, colors: Tensor, viewmats: Tensor, sh_degree: int | None) -> Tensor:
    """Per-camera colours ``[C, N, D]``: SH evaluated along camera-to-Gaussian directions (+0.5, clamped at
    0, as 3DGS and gsplat do) or the given ``[N, D]`` colours for every camera."""
    C = viewmats.shape[0]
    if sh_degree is None:
        return colors[None].expand(C, -1, -1)
    from scenezip.render.sh import spherical_harmonics

    dirs = means[None, :, :] - camera_centers(viewmats)[:, None, :]  # [C, N, 3]
    return torch.clamp_min(spherical_harmonics(sh_degree, dirs, colors[None].expand(C, -1, -1, -1)) + 0.5, 0.0)
