"""Reading capture images into scenezip's conventions: ``[H, W, 3]`` float32 in [0, 1], pinhole.

Written by hand, with Pillow only for decoding: alpha compositing, integer area downscaling and the
undistortion remap are a few array operations each, and doing them here keeps the dependency list to
Pillow (no OpenCV). The undistortion remap runs the forward OpenCV/COLMAP distortion model
(k1, k2, p1, p2) for every output pixel to find where it came from in the distorted image, then
samples there bilinearly; pixels whose source falls outside the image take the nearest edge pixel.
The undistorted image keeps the camera's intrinsics and size, so ``Dataset.cameras`` describes it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from scenezip.errors import DatasetError


def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file, from its header only."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file is missing") from None
    except Exception as e:  # Pillow raises many types for garbage
        raise DatasetError(f"{path}: cannot read image ({e})") from None


def image_has_alpha(path: Path) -> bool:
    """Whether the image file carries an alpha channel (header only)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (im.mode == "P" and "transparency" in im.info)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file is missing") from None
    except Exception as e:
        raise DatasetError(f"{path}: cannot read image ({e})") from None


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to ``[H, W, 3]`` or ``[H, W, 4]`` (RGBA) float32 in [0, 1]."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float32) / 65535.0
                return np.repeat(np.clip(a, 0.0, 1.0)[..., None], 3, axis=-1)
            if mode == "F":
                a = np.asarray(im, dtype=np.float32)
                return np.repeat(np.clip(a, 0.0, 1.0)[..., None], 3, axis=-1)
            alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info)
            arr = np.asarray(im.convert("RGBA" if alpha else "RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file is missing") from None
    except Exception as e:
        raise DatasetError(f"{path}: cannot read image ({e})") from None
    return arr


def composite(rgba: np.ndarray, background: tuple[float, float, float]) -> np.ndarray:
    """Composite straight-alpha ``[H, W, 4]`` over a constant ``background`` RGB; returns ``[H, W, 3]``."""
    a = rgba[..., 3:4]
    return rgba[..., :3] * a + np.asarray(background, dtype=np.float32) * (1.0 - a)


def downscale_image(img: np.ndarray, factor: int) -> np.ndarray:
    """Area-average ``[H, W, C]`` by an integer ``factor`` to ``[H // factor, W // factor, C]``.

    The right and bottom remainders are cropped, so pixel centres stay at ``(i + 0.5) * factor``.
    """
    if factor == 1:
        return img
    h, w = img.shape[0] // factor, img.shape[1] // factor
    crop = img[: h * factor, : w * factor]
    return crop.reshape(h, factor, w, factor, -1).mean(axis=(1, 3), dtype=np.float64).astype(np.float32)


def distort_normalized(x: Tensor, y: Tensor, dist: Tensor) -> tuple[Tensor, Tensor]:
    """Forward OpenCV distortion of normalized coordinates ``x, y`` with ``dist = (k1, k2, p1, p2)``."""
    k1, k2, p1, p2 = (float(v) for v in dist)
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + k2 * r2)
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return xd, yd


def bilinear_sample(img: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """Sample ``[H, W, C]`` at continuous pixel positions ``u, v`` (``[...]``, centres at +0.5); edge-clamped."""
    H, W = img.shape[:2]
    x = (u - 0.5).clamp(0.0, W - 1.0)
    y = (v - 0.5).clamp(0.0, H - 1.0)
    x0 = x.floor().long().clamp(max=W - 1)
    y0 = y.floor().long().clamp(max=H - 1)
    x1 = (x0 + 1).clamp(max=W - 1)
    y1 = (y0 + 1).clamp(max=H - 1)
    wx = (x - x0).unsqueeze(-1)
    wy = (y - y0).unsqueeze(-1)
    top = img[y0, x0] * (1 - wx) + img[y0, x1] * wx
    bot = img[y1, x0] * (1 - wx) + img[y1, x1] * wx
    return top * (1 - wy) + bot * wy


def undistort_image(img: Tensor, K: Tensor, dist: Tensor) -> Tensor:
    """Undistort ``[H, W, C]`` taken by a camera with intrinsics ``K`` ``[3, 3]`` and ``dist`` ``[4]``.

    The output has the same size and intrinsics, as a pinhole image: each output pixel centre is
    unprojected with ``K``, distorted with (k1, k2, p1, p2), projected back with ``K`` and sampled.
    """
    H, W = img.shape[:2]
    fx, fy, cx, cy = float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2])
    v, u = torch.meshgrid(
        torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5, indexing="ij"
    )
    xd, yd = distort_normalized((u - cx) / fx, (v - cy) / fy, dist)
    return bilinear_sample(img, (xd * fx + cx).float(), (yd * fy + cy).float())


def load_capture_image(ds, index: int) -> Tensor:
    """Image ``index`` of Dataset ``ds`` as ``[H, W, 3]`` float32 in [0, 1].

    RGBA images are composited on ``ds.background`` (alpha is dropped when it is None), downscaled by
    ``ds.downscale`` with area averaging, and undistorted when ``ds.distortion`` is set for the camera.
    """
    n = len(ds.image_paths)
    if not 0 <= index < n:
        raise IndexError(f"index must be in [0, {n}), got {index}")
    path = Path(ds.image_paths[index])
    img = read_image(path)
    w, h = int(ds.cameras.widths[index]), int(ds.cameras.heights[index])
    f = int(ds.downscale)
    if img.shape[1] // f != w or img.shape[0] // f != h:
        raise DatasetError(
            f"{path}: image is {img.shape[1]}x{img.shape[0]} but its camera expects "
            f"{w * f}x{h * f}" + (f" (downscaled by {f} to {w}x{h})" if f > 1 else "")
        )
    if img.shape[-1] == 4:
        img = composite(img, ds.background) if ds.background is not None else img[..., :3]
    img = downscale_image(np.ascontiguousarray(img), f)
    out = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))
    if ds.distortion is not None and np.any(ds.distortion[index] != 0):
        out = undistort_image(out, ds.cameras.Ks[index], torch.as_tensor(ds.distortion[index]))
    return out.clamp_(0.0, 1.0)
