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
