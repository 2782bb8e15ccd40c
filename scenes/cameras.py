"""Pinhole cameras in the conventions every scenezip module uses.

``viewmats`` are world-to-camera 4x4 matrices in OpenCV axes (x right, y down, z forward); ``Ks`` are
3x3 intrinsics in pixels. Datasets in other axes are converted once, at load: OpenGL (Blender,
nerfstudio) by :func:`opengl_to_opencv_c2w`, LLFF's (down, right, back) by its reader. Images are undistorted at load, so every camera here is a
pinhole camera; ``source_model`` records what the capture used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


@dataclass
class Cameras:
    """A set of N pinhole cameras.

    Attributes:
        viewmats: ``[N, 4, 4]`` world-to-camera, OpenCV axes.
        Ks: ``[N, 3, 3]`` intrinsics in pixels.
        widths: ``[N]`` int64 image widths in pixels.
        heights: ``[N]`` int64 image heights in pixels.
        source_model: camera model of the capture before undistortion (``PINHOLE``, ``OPENCV``, ...).
    """

    viewmats: Tensor
    Ks: Tensor
    widths: Tensor
    heights: Tensor
    source_model: str = "PINHOLE"
    distortion: Tensor | None = field(default=None)  # [N, 4] k1 k2 p1 p2 of the source, for reference

    def __post_init__(self) -> None:
        n = self.viewmats.shape[0]
        if self.viewmats.shape != (n, 4, 4):
            raise ValueError(f"viewmats must have shape [N, 4, 4], got {tuple(self.viewmats.shape)}")
        if self.Ks.shape != (n, 3, 3):
            raise ValueError(f"Ks must have shape [{n}, 3, 3], got {tuple(self.Ks.shape)}")
        if self.widths.shape != (n,) or self.heights.shape != (n,):
            raise ValueError(f"widths and heights must have shape [{n}]")

    def __len__(self) -> int:
        return int(self.viewmats.shape[0])

    def __getitem__(self, index) -> "Cameras":
        idx = torch.as_tensor(index, dtype=torch.long).reshape(-1)
        return Cameras(
            viewmats=self.viewmats[idx],
            Ks=self.Ks[idx],
            widths=self.widths[idx],
            heights=self.heights[idx],
            source_model=self.source_model,
            distortion=None if self.distortion is None else self.distortion[idx],
        )

    @property
    def camtoworlds(self) -> Tensor:
        """``[N, 4, 4]`` camera-to-world, OpenCV axes."""
        return torch.linalg.inv(self.viewmats)

    @property
    def centers(self) -> Tensor:
        """``[N, 3]`` camera centres in world space."""
        return self.camtoworlds[:, :3, 3]

    def to(self, device: torch.device | str) -> "Cameras":
        return Cameras(
            self.viewmats.to(device),
            self.Ks.to(device),
            self.widths.to(device),
            self.heights.to(device),
            self.source_model,
            None if self.distortion is None else self.distortion.to(device),
        )


def opengl_to_opencv_c2w(c2w: np.ndarray) -> np.ndarray:
    """Convert camera-to-world matrices ``[..., 4, 4]`` from OpenGL (x right, y up, z back) to OpenCV axes."""
    out = np.array(c2w, dtype=np.float64, copy=True)
    out[..., :3, 1:3] *= -1.0
    return out


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """``[3, 3]`` pinhole intrinsics."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def project_points(points: Tensor, viewmats: Tensor, Ks: Tensor) -> tuple[Tensor, Tensor]:
    """Project world points ``[P, 3]`` into cameras ``[N, 4, 4]``/``[N, 3, 3]``.

    Returns pixel coordinates ``[N, P, 2]`` (pixel centres at +0.5) and camera-space depth ``[N, P]``.
    """
    pts_h = torch.cat([points, torch.ones_like(points[:, :1])], dim=-1)  # [P, 4]
    cam = torch.einsum("nij,pj->npi", viewmats, pts_h)[..., :3]  # [N, P, 3]
    depth = cam[..., 2]
    uvw = torch.einsum("nij,npj->npi", Ks, cam)
    uv = uvw[..., :2] / uvw[..., 2:3].clamp_min(1e-12)
    return uv, depth
