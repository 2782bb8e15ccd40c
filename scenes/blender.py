"""Blender / NeRF-Synthetic captures: ``transforms_{train,val,test}.json`` beside the image folders.

Each JSON holds ``camera_angle_x`` (horizontal field of view, radians) and ``frames`` with ``file_path``
(relative to the capture folder, extension often missing: ``.png`` is tried) and ``transform_matrix``
(camera-to-world, OpenGL axes), converted here to OpenCV. Principal point is the image centre, pixels
are square. Images are RGBA and get composited on the background at load. Cameras are ordered
train, val, test, each in file order, and the dataset's own split is used. Written by hand: the
format is a few JSON keys.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from scenezip.errors import DatasetError
from scenezip.scenes.cameras import intrinsics_matrix, opengl_to_opencv_c2w
from scenezip.scenes.images import image_has_alpha, image_size
from scenezip.scenes.loader import Capture

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG")


def read_json(path: Path) -> dict:
    """Parse a JSON object file; DatasetError naming the file when it cannot be read or parsed."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"{path}: file is missing") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: cannot read ({e})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}: invalid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    return data


def resolve_image(root: Path, file_path: str, json_path: Path) -> Path:
    """Path of a frame's image: ``root / file_path``, trying common extensions when it has none."""
    if not isinstance(file_path, str) or not file_path:
        raise DatasetError(f"{json_path}: a frame has no usable 'file_path' ({file_path!r})")
    p = root / file_path
    if p.is_file():
        return p
    if p.suffix.lower() not in IMAGE_EXTENSIONS:
        for ext in IMAGE_EXTENSIONS:
            q = p.with_name(p.name + ext)
            if q.is_file():
                return q
    raise DatasetError(f"{p}: image file is missing (listed in {json_path.name})")


def frame_matrix(frame: dict, json_path: Path, i: int) -> np.ndarray:
    """``[4, 4]`` float64 ``transform_matrix`` of frame ``i``, validated."""
    m = frame.get("transform_matrix") if isinstance(frame, dict) else None
    try:
        arr = np.asarray(m, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.shape not in ((4, 4), (3, 4)):
        raise DatasetError(f"{json_path}: frame {i} has no 4x4 'transform_matrix'")
    if arr.shape == (3, 4):
        arr = np.concatenate([arr, [[0.0, 0.0, 0.0, 1.0]]])
    if not np.all(np.isfinite(arr)):
        raise DatasetError(f"{json_path}: frame {i} 'transform_matrix' has NaN or infinity")
    return arr


def read_blender(root: Path) -> Capture:
    """Parse a Blender capture folder into a :class:`Capture` (OpenCV axes, world space)."""
    root = Path(root)
    paths, c2ws, Ks, sizes = [], [], [], []
    splits: dict[str, np.ndarray] = {}
    size0 = None
    for split in ("train", "val", "test"):
        jp = root / f"transforms_{split}.json"
        if not jp.is_file():
            continue
        meta = read_json(jp)
        frames = meta.get("frames")
        if not isinstance(frames, list) or not frames:
            raise DatasetError(f"{jp}: 'frames' must be a non-empty list")
        angle = meta.get("camera_angle_x")
        if not isinstance(angle, (int, float)) or not 0.0 < angle < math.pi:
            raise DatasetError(f"{jp}: 'camera_angle_x' must be a field of view in (0, pi) radians, got {angle!r}")
        start = len(paths)
        for i, fr in enumerate(frames):
            if not isinstance(fr, dict):
                raise DatasetError(f"{jp}: frame {i} is not an object")
            p = resolve_image(root, fr.get("file_path"), jp)
            if size0 is None:
                size0 = image_size(p)
            w, h = size0
            focal = 0.5 * w / math.tan(0.5 * float(angle))
            paths.append(p)
            c2ws.append(opengl_to_opencv_c2w(frame_matrix(fr, jp, i)))
            Ks.append(intrinsics_matrix(focal, focal, 0.5 * w, 0.5 * h))
            sizes.append((w, h))
        splits[split] = np.arange(start, len(paths), dtype=np.int64)
    if "train" not in splits:
        raise DatasetError(f"{root}: transforms_train.json is missing")
    if "test" not in splits:
        splits = None  # the loader falls back to every test_every-th image
    sizes_a = np.asarray(sizes, dtype=np.int64)
    return Capture(
        format="blender",
        root=root,
        image_paths=paths,
        c2w=np.stack(c2ws),
        Ks=np.stack(Ks),
        widths=sizes_a[:, 0],
        heights=sizes_a[:, 1],
        models=["PINHOLE"] * len(paths),
        splits=splits,
        rgba=image_has_alpha(paths[0]),
    )
