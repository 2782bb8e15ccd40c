"""LLFF captures: ``poses_bounds.npy`` beside ``images/``.

``poses_bounds.npy`` is ``[N, 17]``: a 3x5 matrix per image (row-major) whose first three columns are
the camera axes (down, right, back) in world space, the fourth the camera centre and the fifth
(H, W, focal), followed by the near and far scene depths. Images are the files of ``images/`` sorted by
name, one per pose. When the images on disk have another size than the stored H, W (a downsampled
copy), the focal length is rescaled by the width ratio. Principal point is the image centre. Written
by hand: the format is one array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from scenezip.errors import DatasetError
from scenezip.scenes.images import image_has_alpha, image_size
from scenezip.scenes.loader import Capture

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def list_images(folder: Path) -> list[Path]:
    """Image files of ``folder`` sorted by name."""
    if not folder.is_dir():
        raise DatasetError(f"{folder}: image folder is missing")
    return sorted((p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()), key=lambda p: p.name)


def llff_to_opencv_c2w(poses: np.ndarray) -> np.ndarray:
    """``[N, 3, 5]`` LLFF poses (columns down, right, back, centre, hwf) to ``[N, 4, 4]`` OpenCV c2w."""
    n = len(poses)
    c2w = np.zeros((n, 4, 4))
    c2w[:, :3, 0] = poses[:, :, 1]  # x right
    c2w[:, :3, 1] = poses[:, :, 0]  # y down
    c2w[:, :3, 2] = -poses[:, :, 2]  # z forward = -back
    c2w[:, :3, 3] = poses[:, :, 3]
    c2w[:, 3, 3] = 1.0
    return c2w


def read_llff(root: Path) -> Capture:
    """Parse an LLFF capture folder into a :class:`Capture`."""
    root = Path(root)
    pb_path = root / "poses_bounds.npy"
    try:
        arr = np.load(pb_path, allow_pickle=False)
    except FileNotFoundError:
        raise DatasetError(f"{pb_path}: file is missing") from None
    except Exception as e:
        raise DatasetError(f"{pb_path}: cannot read ({e})") from None
    if arr.ndim != 2 or arr.shape[1] != 17 or arr.shape[0] == 0 or arr.dtype.kind not in "fiu":
        raise DatasetError(f"{pb_path}: expected a numeric [N, 17] array, got {arr.dtype} {tuple(arr.shape)}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise DatasetError(f"{pb_path}: contains NaN or infinity")
    poses = arr[:, :15].reshape(-1, 3, 5)
    near_far = arr[:, 15:17]
    paths = list_images(root / "images")
    if len(paths) != len(arr):
        raise DatasetError(f"{pb_path}: {len(arr)} poses but {root / 'images'} holds {len(paths)} images")
    H, W, focal = poses[:, 0, 4], poses[:, 1, 4], poses[:, 2, 4]
    if np.any(H <= 0) or np.any(W <= 0) or np.any(focal <= 0):
        raise DatasetError(f"{pb_path}: image size and focal length (column 5) must be positive")
    w, h = image_size(paths[0])
    ratio_w, ratio_h = w / W, h / H
    if np.any(np.abs(ratio_w - ratio_h) > 0.02 * ratio_w):
        raise DatasetError(
            f"{paths[0]}: image is {w}x{h} but {pb_path.name} stores {int(W[0])}x{int(H[0])}, a different aspect ratio"
        )
    f = focal * ratio_w
    n = len(arr)
    Ks = np.zeros((n, 3, 3))
    Ks[:, 0, 0] = f
    Ks[:, 1, 1] = f
    Ks[:, 0, 2] = 0.5 * w
    Ks[:, 1, 2] = 0.5 * h
    Ks[:, 2, 2] = 1.0
    return Capture(
        format="llff",
        root=root,
        image_paths=paths,
        c2w=llff_to_opencv_c2w(poses),
        Ks=Ks,
        widths=np.full(n, w, dtype=np.int64),
        heights=np.full(n, h, dtype=np.int64),
        models=["PINHOLE"] * n,
        near_far=near_far,
        rgba=image_has_alpha(paths[0]),
    )
