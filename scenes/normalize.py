"""Scene normalization: one similarity transform from capture world space into normalized space.

Written by hand (a few lines of linear algebra). The transform is translation + uniform scale, no
rotation, so world axes are kept and the normalized box of a world box is the same box scaled:

- centre: for object-centric captures, the point nearest all camera optical axes in the least-squares
  sense (``sum_i |(I - d_i d_i^T)(p - c_i)|^2`` minimized); when the axes are near parallel
  (forward-facing captures, where that point is ill-conditioned or behind the cameras), the mean
  camera centre;
- scale: the farthest camera ends at distance 1 from the centre.

``x_norm = T @ x_world`` with ``T = [[s I, -s c], [0, 1]]``; :meth:`Dataset.denormalize_points` inverts it.

Bounds (always in normalized space):
- with SfM points: the 1st-99th percentile box of the points, padded by 10% of its size on each side;
- object-centric without points: a cube centred on the focus point whose half-size is the median over
  cameras of ``distance_to_centre * tan(half of the narrower field of view)``, the half-width a camera
  sees at the centre; for NeRF-Synthetic (cameras at 4.03, 40 degree FOV) that is 1.45 world units,
  matching the [-1.5, 1.5]^3 where the objects live;
- forward-facing without points: the box of the camera frusta between the near and far depths the
  capture stores (LLFF), or between depth 0 and 2 (twice the camera rig radius) when it stores none.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

Layout = Literal["object", "forward"]

# The smallest eigenvalue of mean(I - d d^T) is about the mean squared sine of the angle between the
# optical axes and their common direction; below this (axes within about 10 degrees) they are parallel.
PARALLEL_EIGEN = 0.01


def nearest_point_to_axes(centers: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, float]:
    """Least-squares point nearest the lines ``centers[i] + t * dirs[i]`` (``[N, 3]`` each).

    Returns the point ``[3]`` and the smallest eigenvalue of ``mean_i(I - d_i d_i^T)`` (0 when parallel).
    """
    d = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
    P = np.eye(3)[None] - d[:, :, None] * d[:, None, :]  # [N, 3, 3] projectors orthogonal to each axis
    A = P.sum(0)
    b = np.einsum("nij,nj->i", P, centers)
    eig = float(np.linalg.eigvalsh(A / len(d))[0])
    point = np.linalg.lstsq(A, b, rcond=None)[0]
    return point, eig


def scene_layout(c2w: np.ndarray) -> tuple[Layout, np.ndarray]:
    """Classify cameras ``[N, 4, 4]`` (OpenCV c2w) as ``object``-centric or ``forward``-facing; return the centre."""
    centers = c2w[:, :3, 3]
    dirs = c2w[:, :3, 2]
    if len(c2w) >= 2:
        point, eig = nearest_point_to_axes(centers, dirs)
        depth = np.einsum("ni,ni->n", point[None] - centers, dirs / np.linalg.norm(dirs, axis=-1, keepdims=True))
        if eig > PARALLEL_EIGEN and np.median(depth) > 0:
            return "object", point
    return "forward", centers.mean(0)


def camera_layout(c2w: np.ndarray) -> Layout:
    return scene_layout(c2w)[0]


def similarity_from_cameras(c2w: np.ndarray) -> tuple[np.ndarray, Layout]:
    """``[4, 4]`` float64 similarity into normalized space for cameras ``[N, 4, 4]``, and the layout."""
    kind, center = scene_layout(c2w)
    dist = np.linalg.norm(c2w[:, :3, 3] - center, axis=-1).max()
    s = 1.0 / dist if dist > 1e-9 else 1.0
    T = np.eye(4)
    T[:3, :3] *= s
    T[:3, 3] = -s * center
    return T, kind


def similarity_scale(T: np.ndarray) -> float:
    """Uniform scale of a similarity ``[4, 4]``."""
    return float(np.cbrt(abs(np.linalg.det(T[:3, :3]))))


def transform_c2w(c2w: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Apply similarity ``T`` to camera-to-world ``[N, 4, 4]``; rotations stay orthonormal (scale removed)."""
    out = T[None] @ c2w
    out[:, :3, :3] /= similarity_scale(T)
    out[:, 3, :] = (0.0, 0.0, 0.0, 1.0)
    return out


def transform_points(points: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Apply ``T`` to points ``[P, 3]``."""
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    return pts @ T[:3, :3].T + T[:3, 3]


def transform_bounds(bounds: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Axis-aligned box ``[2, 3]`` of the image of box ``bounds`` under ``T``."""
    lo, hi = np.asarray(bounds, dtype=np.float64)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    c = transform_points(corners, T)
    return np.stack([c.min(0), c.max(0)])


def robust_bounds(points: np.ndarray, lo_pct: float = 1.0, hi_pct: float = 99.0, pad: float = 0.1) -> np.ndarray:
    """Percentile box ``[2, 3]`` of points ``[P, 3]``, padded by ``pad`` times its size on each side."""
    lo = np.percentile(points, lo_pct, axis=0)
    hi = np.percentile(points, hi_pct, axis=0)
    size = np.maximum(hi - lo, 1e-6)
    return np.stack([lo - pad * size, hi + pad * size])


def frustum_corners(c2w: np.ndarray, Ks: np.ndarray, widths: np.ndarray, heights: np.ndarray, near: np.ndarray, far: np.ndarray) -> np.ndarray:
    """World positions ``[N, 8, 3]`` of each camera frustum's corners at depths ``near[i]`` and ``far[i]``."""
    n = len(c2w)
    us = np.stack([np.zeros(n), widths, widths, np.zeros(n)], 1)
    vs = np.stack([np.zeros(n), np.zeros(n), heights, heights], 1)
    x = (us - Ks[:, 0, 2, None]) / Ks[:, 0, 0, None]
    y = (vs - Ks[:, 1, 2, None]) / Ks[:, 1, 1, None]
    rays = np.stack([x, y, np.ones_like(x)], -1)  # [N, 4, 3], z = 1
    pts = np.concatenate([rays * near[:, None, None], rays * far[:, None, None]], 1)  # [N, 8, 3]
    return np.einsum("nij,nkj->nki", c2w[:, :3, :3], pts) + c2w[:, None, :3, 3]


def camera_bounds(
    c2w: np.ndarray,
    Ks: np.ndarray,
    widths: np.ndarray,
    heights: np.ndarray,
    *,
    kind: Layout,
    near_far: np.ndarray | None = None,
) -> np.ndarray:
    """Scene box ``[2, 3]`` derived from cameras alone (see the module docstring for the rule)."""
    if kind == "object":
        _, center = scene_layout(c2w)
        dist = np.linalg.norm(c2w[:, :3, 3] - center, axis=-1)
        half_x = np.arctan2(np.maximum(Ks[:, 0, 2], widths - Ks[:, 0, 2]), Ks[:, 0, 0])
        half_y = np.arctan2(np.maximum(Ks[:, 1, 2], heights - Ks[:, 1, 2]), Ks[:, 1, 1])
        half = float(np.median(dist * np.tan(np.minimum(half_x, half_y))))
        return np.stack([center - half, center + half])
    if near_far is not None:
        near, far = near_far[:, 0], near_far[:, 1]
    else:
        near, far = np.zeros(len(c2w)), np.full(len(c2w), 2.0)
    c = frustum_corners(c2w, Ks, widths.astype(np.float64), heights.astype(np.float64), near, far).reshape(-1, 3)
    return np.stack([c.min(0), c.max(0)])
