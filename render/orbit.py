"""Orbit camera paths and video files (``scenezip render --orbit``).

Written by hand (a few lines of geometry): an orbit is a circle of camera centres around a target point,
every camera looking at the target with a fixed up direction; it is fitted to a capture's cameras (their
mean distance, height and up vector around the point their optical axes pass closest to) or built from a
scene box. Video goes through imageio's PyAV plugin (H.264 ``.mp4``); ``.gif`` uses Pillow.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """``[4, 4]`` world-to-camera (OpenCV axes: x right, y down, z forward) of a camera at ``eye``."""
    f = np.asarray(target, float) - np.asarray(eye, float)
    f /= max(np.linalg.norm(f), 1e-12)
    r = np.cross(f, up)
    if np.linalg.norm(r) < 1e-9:  # looking along up: pick any perpendicular
        r = np.cross(f, [1.0, 0.0, 0.0] if abs(f[0]) < 0.9 else [0.0, 1.0, 0.0])
    r /= np.linalg.norm(r)
    d = np.cross(f, r)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = r, d, f, eye
    return np.linalg.inv(c2w)


def orbit(
    target: np.ndarray, radius: float, height: float, up: np.ndarray, n_frames: int, start_dir: np.ndarray | None = None
) -> Tensor:
    """``[F, 4, 4]`` world-to-camera matrices on a circle of ``radius`` at ``height`` above ``target``
    (along ``up``), starting in the direction ``start_dir`` (projected onto the orbit plane)."""
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    up = np.asarray(up, float) / max(np.linalg.norm(up), 1e-12)
    a = np.asarray(start_dir if start_dir is not None else [1.0, 0.0, 0.0], float)
    a = a - up * (a @ up)
    if np.linalg.norm(a) < 1e-9:
        a = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    a /= np.linalg.norm(a)
    b = np.cross(up, a)
    mats = []
    for t in np.linspace(0.0, 2.0 * math.pi, n_frames, endpoint=False):
        eye = np.asarray(target, float) + radius * (math.cos(t) * a + math.sin(t) * b) + height * up
        mats.append(look_at(eye, target, up))
    return torch.from_numpy(np.stack(mats)).float()


def orbit_from_cameras(viewmats: Tensor, n_frames: int) -> Tensor:
    """An orbit fitted to world-to-camera ``viewmats [C, 4, 4]``: around the least-squares point closest to
    every optical axis, at the cameras' mean distance and height, with their mean up vector."""
    v = viewmats.detach().double().cpu().numpy()
    R, t = v[:, :3, :3], v[:, :3, 3]
    centers = -np.einsum("cji,cj->ci", R, t)
    fwd = R[:, 2, :]  # camera z axis in world coordinates
    up = -R[:, 1, :].mean(axis=0)  # OpenCV y points down
    up /= max(np.linalg.norm(up), 1e-12)
    # point minimizing the squared distance to every axis: sum (I - f f^T) (p - c) = 0
    A = np.zeros((3, 3))
    b = np.zeros(3)
    for c, f in zip(centers, fwd):
        P = np.eye(3) - np.outer(f, f)
        A += P
        b += P @ c
    target = np.linalg.lstsq(A, b, rcond=None)[0] if np.linalg.matrix_rank(A) == 3 else centers.mean(0)
    rel = centers - target
    height = float(np.mean(rel @ up))
    flat = rel - np.outer(rel @ up, up)
    radius = float(np.mean(np.linalg.norm(flat, axis=1)))
    if radius < 1e-6:
        radius = max(float(np.mean(np.linalg.norm(rel, axis=1))), 1e-3)
    return orbit(target, radius, height, up, n_frames, start_dir=flat[0] if len(flat) else None)


def orbit_from_bounds(bounds: np.ndarray, n_frames: int, up: np.ndarray = np.array([0.0, 0.0, 1.0])) -> Tensor:
    """An orbit around a ``[2, 3]`` scene box: radius 1.5x its half diagonal, 30 degrees above it."""
    lo, hi = np.asarray(bounds, float)
    half = float(np.linalg.norm(hi - lo)) / 2.0
    dist = 1.5 * max(half, 1e-3)
    return orbit((lo + hi) / 2.0, dist * math.cos(math.pi / 6), dist * math.sin(math.pi / 6), up, n_frames)


def pinhole(width: int, height: int, fov_x_deg: float = 50.0) -> Tensor:
    """``[3, 3]`` intrinsics with principal point at the centre and the given horizontal field of view."""
    fx = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2.0)
    return torch.tensor([[fx, 0.0, width / 2.0], [0.0, fx, height / 2.0], [0.0, 0.0, 1.0]], dtype=torch.float32)


def write_video(path: str | os.PathLike, frames: list[np.ndarray] | np.ndarray, fps: int = 30) -> Path:
    """Write uint8 ``[F, H, W, 3]`` frames to ``.mp4`` (H.264 via PyAV) or ``.gif`` atomically."""
    import imageio.v3 as iio

    path = Path(path)
    arr = np.asarray(frames)
    if arr.ndim != 4 or arr.shape[-1] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {arr.dtype} {arr.shape}")
    suffix = path.suffix.lower()
    tmp = path.with_name(path.name + ".tmp" + suffix)
    if suffix == ".gif":
        from PIL import Image

        imgs = [Image.fromarray(f) for f in arr]
        imgs[0].save(tmp, save_all=True, append_images=imgs[1:], duration=int(1000 / fps), loop=0)
    elif suffix == ".mp4":
        if arr.shape[1] % 2 or arr.shape[2] % 2:  # yuv420p needs even sizes
            arr = np.pad(arr, ((0, 0), (0, arr.shape[1] % 2), (0, arr.shape[2] % 2), (0, 0)), mode="edge")
        iio.imwrite(tmp, arr, plugin="pyav", codec="libx264", fps=fps, out_pixel_format="yuv420p")
    else:
        raise ValueError(f"{path}: video must end in .mp4 or .gif")
    os.replace(tmp, path)
    return path
