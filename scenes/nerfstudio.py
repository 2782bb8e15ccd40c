"""nerfstudio and instant-ngp captures: one ``transforms.json``.

Intrinsics are global keys or per-frame overrides: ``fl_x``/``fl_y``/``cx``/``cy``/``w``/``h`` (or
``camera_angle_x``/``camera_angle_y`` for the focal length), ``camera_model`` and the OPENCV
distortion ``k1 k2 p1 p2``. ``k3``/``k4`` and fisheye/equirectangular models are refused with a clear
error when non-zero (scenezip's cameras carry k1 k2 p1 p2 only). ``transform_matrix`` is
camera-to-world in OpenGL axes, converted to OpenCV here. Frames are sorted by file name; the split
comes from ``train_filenames``/``val_filenames``/``test_filenames`` when present.

instant-ngp keys: ``scale`` and ``offset`` only map the capture into instant-ngp's unit cube
(``ngp = cycle_xyz->yzx(world * scale + offset)``, defaults 0.33 and 0.5); scenezip normalizes the scene
itself, so they do not move the cameras. ``aabb_scale`` says the scene fills the cube of side
``aabb_scale`` centred on (0.5, 0.5, 0.5) in that space; it is mapped back to world space and becomes
the scene bounds when the capture has no points. nerfstudio's ``ply_file_path`` (SfM points with
colours) gives the initial points. Written by hand: the format is a few JSON keys.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from scenezip.errors import DatasetError
from scenezip.scenes.blender import frame_matrix, read_json, resolve_image
from scenezip.scenes.cameras import intrinsics_matrix, opengl_to_opencv_c2w
from scenezip.scenes.images import image_has_alpha, image_size
from scenezip.scenes.loader import Capture

SUPPORTED_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")
NGP_DEFAULT_SCALE = 0.33
NGP_DEFAULT_OFFSET = (0.5, 0.5, 0.5)


def _num(v, key: str, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise DatasetError(f"{where}: '{key}' must be a finite number, got {v!r}")
    return float(v)


def _frame_camera(meta: dict, frame: dict, img: Path, jp: Path, i: int) -> tuple[np.ndarray, int, int, str, np.ndarray]:
    """Intrinsics ``[3, 3]``, width, height, model and distortion ``[4]`` of frame ``i``."""
    where = f"{jp} (frame {i})"

    def get(key, default=None):
        return frame[key] if key in frame else meta.get(key, default)

    model = get("camera_model")
    if get("is_fisheye", False):
        model = "OPENCV_FISHEYE"
    if model is not None and model not in SUPPORTED_MODELS:
        raise DatasetError(
            f"{where}: camera_model {model!r} is not supported (supported: {', '.join(SUPPORTED_MODELS)}); "
            "undistort the images to pinhole first"
        )
    for key in ("k3", "k4"):
        if key in frame or key in meta:
            if _num(get(key), key, where) != 0.0:
                raise DatasetError(
                    f"{where}: distortion {key}={get(key)} is not supported (only OPENCV k1 k2 p1 p2); "
                    "undistort the images first"
                )
    w, h = get("w"), get("h")
    if w is None or h is None:
        w, h = image_size(img)
    w, h = _num(w, "w", where), _num(h, "h", where)
    if w != int(w) or h != int(h) or w < 1 or h < 1:
        raise DatasetError(f"{where}: image size w={w}, h={h} must be positive integers")
    w, h = int(w), int(h)
    if get("fl_x") is not None:
        fx = _num(get("fl_x"), "fl_x", where)
    elif get("camera_angle_x") is not None:
        fx = 0.5 * w / math.tan(0.5 * _num(get("camera_angle_x"), "camera_angle_x", where))
    else:
        raise DatasetError(f"{where}: no focal length (looked for 'fl_x' and 'camera_angle_x')")
    if get("fl_y") is not None:
        fy = _num(get("fl_y"), "fl_y", where)
    elif get("camera_angle_y") is not None and get("fl_x") is None:
        fy = 0.5 * h / math.tan(0.5 * _num(get("camera_angle_y"), "camera_angle_y", where))
    else:
        fy = fx
    if fx <= 0 or fy <= 0:
        raise DatasetError(f"{where}: focal lengths must be positive, got fl_x={fx}, fl_y={fy}")
    cx = _num(get("cx", 0.5 * w), "cx", where)
    cy = _num(get("cy", 0.5 * h), "cy", where)
    dist = np.array([_num(get(k, 0.0), k, where) for k in ("k1", "k2", "p1", "p2")])
    if model is None:
        model = "OPENCV" if np.any(dist != 0) else "PINHOLE"
    elif model != "OPENCV" and np.any(dist != 0):
        raise DatasetError(f"{where}: camera_model {model} has distortion coefficients {dist.tolist()}")
    return intrinsics_matrix(fx, fy, cx, cy), w, h, model, dist


def ngp_world_bounds(meta: dict, jp: Path) -> np.ndarray | None:
    """World box ``[2, 3]`` of instant-ngp's ``aabb_scale`` cube, or None when the file has none."""
    if "aabb_scale" not in meta:
        return None
    a = _num(meta["aabb_scale"], "aabb_scale", str(jp))
    s = _num(meta.get("scale", NGP_DEFAULT_SCALE), "scale", str(jp))
    off = meta.get("offset", NGP_DEFAULT_OFFSET)
    try:
        off = np.asarray(off, dtype=np.float64).reshape(3)
    except (TypeError, ValueError):
        raise DatasetError(f"{jp}: 'offset' must be 3 numbers, got {meta.get('offset')!r}") from None
    if a <= 0 or s <= 0:
        raise DatasetError(f"{jp}: 'aabb_scale' and 'scale' must be positive, got {a} and {s}")
    # The cube [0.5 - a/2, 0.5 + a/2]^3 is the same on every axis, so undoing the axis cycle is a no-op.
    lo = (0.5 - 0.5 * a - off) / s
    hi = (0.5 + 0.5 * a - off) / s
    return np.stack([np.minimum(lo, hi), np.maximum(lo, hi)])


def read_ply_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``[P, 3]`` float64 positions and ``[P, 3]`` uint8 colours of a point-cloud PLY."""
    from plyfile import PlyData

    try:
        v = PlyData.read(str(path))["vertex"]
        xyz = np.stack([np.asarray(v[k], dtype=np.float64) for k in ("x", "y", "z")], -1)
        names = v.data.dtype.names
        if all(k in names for k in ("red", "green", "blue")):
            rgb = np.stack([np.asarray(v[k]) for k in ("red", "green", "blue")], -1)
            if rgb.dtype.kind == "f":
                rgb = np.clip(rgb * 255.0 + 0.5, 0, 255)
            rgb = rgb.astype(np.uint8)
        else:
            rgb = np.full((len(xyz), 3), 128, dtype=np.uint8)
    except FileNotFoundError:
        raise DatasetError(f"{path}: point cloud file is missing") from None
    except Exception as e:
        raise DatasetError(f"{path}: cannot read point cloud PLY ({e})") from None
    return xyz, rgb


def read_nerfstudio(json_path: Path) -> Capture:
    """Parse a nerfstudio / instant-ngp ``transforms.json`` into a :class:`Capture`."""
    jp = Path(json_path)
    root = jp.parent
    meta = read_json(jp)
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise DatasetError(f"{jp}: 'frames' must be a non-empty list")
    entries = []
    for i, fr in enumerate(frames):
        if not isinstance(fr, dict):
            raise DatasetError(f"{jp}: frame {i} is not an object")
        fp = fr.get("file_path")
        entries.append((str(fp), i, fr))
    entries.sort(key=lambda e: e[0])
    paths, c2ws, Ks, ws, hs, models, dists = [], [], [], [], [], [], []
    for fp, i, fr in entries:
        img = resolve_image(root, fr.get("file_path"), jp)
        K, w, h, model, dist = _frame_camera(meta, fr, img, jp, i)
        paths.append(img)
        c2ws.append(opengl_to_opencv_c2w(frame_matrix(fr, jp, i)))
        Ks.append(K)
        ws.append(w)
        hs.append(h)
        models.append(model)
        dists.append(dist)

    splits = None
    if any(f"{s}_filenames" in meta for s in ("train", "val", "test")):
        by_path = {os.path.normpath(str(p)): k for k, p in enumerate(paths)}
        by_raw = {os.path.normpath(str(root / e[0])): k for k, e in enumerate(entries)}
        splits = {}
        for s in ("train", "val", "test"):
            names = meta.get(f"{s}_filenames", [])
            if not isinstance(names, list):
                raise DatasetError(f"{jp}: '{s}_filenames' must be a list of file names")
            idx = []
            for name in names:
                key = os.path.normpath(str(root / str(name)))
                k = by_path.get(key, by_raw.get(key))
                if k is None:
                    raise DatasetError(f"{jp}: '{s}_filenames' lists {name!r}, which is not a frame")
                idx.append(k)
            splits[s] = np.asarray(sorted(idx), dtype=np.int64)
        if len(splits["train"]) == 0:
            raise DatasetError(f"{jp}: 'train_filenames' is missing or empty while other splits are given")
        if len(splits["test"]) == 0:
            splits["test"] = splits["val"].copy()
        if len(splits["test"]) == 0:
            raise DatasetError(f"{jp}: neither 'test_filenames' nor 'val_filenames' lists any image")

    points = colors = None
    if meta.get("ply_file_path"):
        points, colors = read_ply_points(root / str(meta["ply_file_path"]))

    dist_a = np.stack(dists)
    return Capture(
        format="nerfstudio",
        root=root,
        image_paths=paths,
        c2w=np.stack(c2ws),
        Ks=np.stack(Ks),
        widths=np.asarray(ws, dtype=np.int64),
        heights=np.asarray(hs, dtype=np.int64),
        models=models,
        distortion=dist_a if np.any(dist_a != 0) else None,
        splits=splits,
        points=points,
        point_colors=colors,
        world_bounds=ngp_world_bounds(meta, jp),
        rgba=image_has_alpha(paths[0]),
        extra={k: meta[k] for k in ("aabb_scale", "scale", "offset") if k in meta},
    )
