"""Real spherical harmonics up to degree 3, in the basis and sign convention of 3DGS and gsplat.

Mirrors ``gsplat.spherical_harmonics``: colours are ``sum_k basis_k(dir) * coeffs[..., k, :]``; the
rasterizers then add 0.5 and clamp at 0, as 3DGS does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def num_sh_bases(degree: int) -> int:
    """Number of coefficients of an SH expansion of ``degree`` (1, 4, 9, 16)."""
    return (degree + 1) ** 2


def sh_degree_from_bases(k: int) -> int:
    """Inverse of :func:`num_sh_bases`; raises ValueError for a count that is not a square up to 16."""
    for d in range(4):
        if num_sh_bases(d) == k:
            return d
    raise ValueError(f"number of SH coefficients must be 1, 4, 9 or 16, got {k}")


def sh_basis(degree: int, dirs: Tensor) -> Tensor:
    """Evaluate the SH basis at unit directions ``[..., 3]``; returns ``[..., (degree+1)^2]``."""
    if not 0 <= degree <= 3:
        raise ValueError(f"degree must be in 0..3, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [
            SH_C2[0] * xy,
            SH_C2[1] * yz,
            SH_C2[2] * (2.0 * zz - xx - yy),
            SH_C2[3] * xz,
            SH_C2[4] * (xx - yy),
        ]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3.0 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4.0 * zz - xx - yy),
            SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            SH_C3[4] * x * (4.0 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3.0 * yy),
        ]
    return torch.stack(out, dim=-1)


def spherical_harmonics(degree: int, dirs: Tensor, coeffs: Tensor) -> Tensor:
    """Colour from SH coefficients; mirrors ``gsplat.spherical_harmonics``.

    Args:
        degree: SH degree to use (0..3); coefficients beyond it are ignored.
        dirs: ``[..., 3]`` view directions (normalized here).
        coeffs: ``[..., K, D]`` coefficients with ``K >= (degree+1)^2``.

    Returns:
        ``[..., D]`` colours (before the +0.5 offset).
    """
    k = num_sh_bases(degree)
    if coeffs.shape[-2] < k:
        raise ValueError(f"coeffs must have at least {k} bases for degree {degree}, got shape {tuple(coeffs.shape)}")
    if dirs.shape[-1] != 3:
        raise ValueError(f"dirs must have shape [..., 3], got {tuple(dirs.shape)}")
    basis = sh_basis(degree, F.normalize(dirs, dim=-1))  # [..., k]
    return (basis.unsqueeze(-1) * coeffs[..., :k, :]).sum(dim=-2)


def rgb_to_sh0(rgb: Tensor) -> Tensor:
    """DC coefficient that renders as ``rgb`` (inverse of ``SH_C0 * c + 0.5``)."""
    return (rgb - 0.5) / SH_C0


def sh0_to_rgb(sh0: Tensor) -> Tensor:
    return sh0 * SH_C0 + 0.5
