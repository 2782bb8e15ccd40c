"""Detect a capture's format and load it into a :class:`~scenezip.scenes.dataset.Dataset`.

Each format reader (``blender.py``, ``nerfstudio.py``, ``colmap.py``, ``llff.py``) parses its files
into a :class:`Capture`: world-space OpenCV camera-to-world matrices and full-resolution intrinsics,
exactly as stored. This module then does everything the formats share, once: downscaling the
intrinsics, the name-sorted test split, scene normalization (``normalize.py``), bounds, and the random
initial points. Written by hand: the readers are small and the formats are simple, and owning the
parsers lets every malformed input end in one :class:`~scenezip.errors.DatasetError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from scenezip.errors import DatasetError, ScenezipError
from scenezip.scenes.cameras import Cameras
from scenezip.scenes.dataset import Dataset

Format = Literal["auto", "blender", "nerfstudio", "colmap", "llff"]

FORMATS = ("blender", "nerfstudio", "colmap", "llff")


@dataclass
class Capture:
    """What a format reader returns: the capture as stored, before downscale and normalization.

    Attributes:
        format: reader name (``"blender"``, ...).
        root: capture folder.
        image_paths: one path per camera, in camera order.
        c2w: ``[N, 4, 4]`` float64 camera-to-world in OpenCV axes, capture world space.
        Ks: ``[N, 3, 3]`` float64 full-resolution intrinsics (pixel centres at +0.5).
        widths, heights: ``[N]`` int64 full-resolution image sizes.
        models: per-camera source model names (``PINHOLE``, ``OPENCV``, ...).
        distortion: ``[N, 4]`` float64 (k1, k2, p1, p2), or None when every camera is pinhole.
        splits: the capture's own split (indices into the cameras), or None to use every ``test_every``-th.
        points: ``[P, 3]`` float64 SfM points in world space, or None.
        point_colors: ``[P, 3]`` uint8, or None.
        near_far: ``[N, 2]`` float64 per-camera depth range in world units (LLFF), or None.
        world_bounds: ``[2, 3]`` float64 box stated by the capture (instant-ngp ``aabb_scale``), or None.
        rgba: whether the images carry alpha to composite on the background.
    """

    format: str
    root: Path
    image_paths: list[Path]
    c2w: np.ndarray
    Ks: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    models: list[str]
    distortion: np.ndarray | None = None
    splits: dict[str, np.ndarray] | None = None
    points: np.ndarray | None = None
    point_colors: np.ndarray | None = None
    near_far: np.ndarray | None = None
    world_bounds: np.ndarray | None = None
    rgba: bool = False
    extra: dict = field(default_factory=dict)

    def check(self) -> None:
        """Raise DatasetError when the arrays disagree in length (a reader bug or a broken capture)."""
        n = len(self.image_paths)
        if n == 0:
            raise DatasetError(f"{self.root}: the capture lists no images")
        for name in ("c2w", "Ks", "widths", "heights"):
            if len(getattr(self, name)) != n:
                raise DatasetError(f"{self.root}: {n} images but {len(getattr(self, name))} {name}")
        if len(self.models) != n:
            raise DatasetError(f"{self.root}: {n} images but {len(self.models)} camera models")
        for name, arr in (("camera poses", self.c2w), ("intrinsics", self.Ks), ("distortion", self.distortion)):
            if arr is not None and not (np.all(np.isfinite(arr)) and np.abs(arr).max() < 1e12):
                raise DatasetError(f"{self.root}: {name} contain NaN, infinity or absurdly large values")
        if np.any(self.Ks[:, 0, 0] < 1e-6) or np.any(self.Ks[:, 1, 1] < 1e-6):
            raise DatasetError(f"{self.root}: focal lengths must be positive")
        if self.points is not None and not (np.all(np.isfinite(self.points)) and np.abs(self.points).max(initial=0) < 1e12):
            raise DatasetError(f"{self.root}: 3D points contain NaN, infinity or absurdly large values")
        if np.any(self.widths <= 0) or np.any(self.heights <= 0):
            raise DatasetError(f"{self.root}: image sizes must be positive")
        from scenezip.scenes.images import image_size

        w, h = image_size(self.image_paths[0])  # one header: catches cameras meant for other image copies
        if (w, h) != (int(self.widths[0]), int(self.heights[0])):
            raise DatasetError(
                f"{self.image_paths[0]}: image is {w}x{h} but its camera expects "
                f"{int(self.widths[0])}x{int(self.heights[0])}"
            )


def detect_format(path: Path) -> tuple[str, Path]:
    """Return ``(format, root)`` of the capture at ``path`` (a folder, or a transforms JSON inside one).

    Rules, in order: ``transforms_train.json`` -> blender; ``transforms.json`` -> nerfstudio;
    ``sparse/0/`` or ``sparse/`` holding ``cameras.bin``/``cameras.txt`` -> colmap; ``poses_bounds.npy``
    -> llff (COLMAP wins when a folder has both).
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if path.is_file():
        if path.name.startswith("transforms_") and path.suffix == ".json" and (path.parent / "transforms_train.json").is_file():
            return "blender", path.parent
        if path.suffix == ".json":
            return "nerfstudio", path
        if path.name == "poses_bounds.npy":
            return "llff", path.parent
        raise DatasetError(f"{path}: not a capture folder or a transforms JSON file")
    if (path / "transforms_train.json").is_file():
        return "blender", path
    if (path / "transforms.json").is_file():
        return "nerfstudio", path / "transforms.json"
    from scenezip.scenes.colmap import find_sparse_dir

    if find_sparse_dir(path) is not None:
        return "colmap", path
    if (path / "poses_bounds.npy").is_file():
        return "llff", path
    raise DatasetError(
        f"{path}: no capture found; looked for transforms_train.json (Blender), transforms.json "
        "(nerfstudio/instant-ngp), sparse/0/ or sparse/ with cameras.bin or cameras.txt (COLMAP) and "
        "poses_bounds.npy (LLFF)"
    )


def read_capture(path: Path | str, format: Format = "auto") -> Capture:
    """Parse the capture at ``path`` with the reader of ``format`` (``auto`` detects it)."""
    path = Path(path)
    if format == "auto":
        fmt, target = detect_format(path)
    elif format in FORMATS:
        if not path.exists():
            raise DatasetError(f"{path}: no such file or folder")
        fmt = format
        target = path / "transforms.json" if fmt == "nerfstudio" and path.is_dir() else path
        if fmt != "nerfstudio" and path.is_file():
            target = path.parent
    else:
        raise ScenezipError(f"format must be one of {('auto',) + FORMATS}, got {format!r}")
    if fmt == "blender":
        from scenezip.scenes.blender import read_blender

        cap = read_blender(target)
    elif fmt == "nerfstudio":
        from scenezip.scenes.nerfstudio import read_nerfstudio

        cap = read_nerfstudio(target)
    elif fmt == "colmap":
        from scenezip.scenes.colmap import read_colmap

        cap = read_colmap(target)
    else:
        from scenezip.scenes.llff import read_llff

        cap = read_llff(target)
    cap.check()
    return cap


def split_every(n: int, test_every: int) -> dict[str, np.ndarray]:
    """Every ``test_every``-th camera (index % test_every == 0) is test, the rest train; val = test."""
    idx = np.arange(n, dtype=np.int64)
    test = idx[idx % test_every == 0]
    train = idx[idx % test_every != 0]
    return {"train": train, "val": test.copy(), "test": test}


def load_dataset(
    path: Path | str,
    *,
    format: Format = "auto",
    downscale: int = 1,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    test_every: int = 8,
    normalize: bool = True,
    n_random_points: int = 100_000,
    seed: int = 0,
) -> Dataset:
    """Load a Blender, nerfstudio/instant-ngp, COLMAP or LLFF capture.

    Only metadata is read here (image files are checked to exist and one header is read where a format
    does not store sizes); pixels are read by :meth:`Dataset.image`.

    Args:
        path: capture folder, or a ``transforms.json`` inside one.
        format: reader to use; ``auto`` detects it (see :func:`detect_format`).
        downscale: integer factor; sizes become ``floor(W / downscale)``, intrinsics are divided by it.
        background: RGB in [0, 1] that RGBA images are composited on.
        test_every: every N-th image after sorting by name is a test image, unless the capture ships a split.
        normalize: map the scene into normalized space (see ``normalize.py``); False keeps world space.
        n_random_points: number of random initial points when the capture has no SfM points.
        seed: seed of the random initial points.
    """
    if not isinstance(downscale, (int, np.integer)) or downscale < 1:
        raise ScenezipError(f"downscale must be an integer >= 1, got {downscale!r}")
    if not isinstance(test_every, (int, np.integer)) or test_every < 2:
        raise ScenezipError(f"test_every must be an integer >= 2, got {test_every!r}")
    if len(background) != 3 or not all(0.0 <= float(c) <= 1.0 for c in background):
        raise ScenezipError(f"background must be 3 values in [0, 1], got {background!r}")
    if n_random_points < 0:
        raise ScenezipError(f"n_random_points must be >= 0, got {n_random_points}")
    cap = read_capture(path, format)
    return build_dataset(
        cap,
        downscale=int(downscale),
        background=tuple(float(c) for c in background),
        test_every=int(test_every),
        normalize=normalize,
        n_random_points=n_random_points,
        seed=seed,
    )


def build_dataset(
    cap: Capture,
    *,
    downscale: int = 1,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    test_every: int = 8,
    normalize: bool = True,
    n_random_points: int = 100_000,
    seed: int = 0,
) -> Dataset:
    """Turn a parsed :class:`Capture` into a :class:`Dataset` (downscale, split, normalize, bounds, points)."""
    from scenezip.scenes import normalize as nz

    n = len(cap.image_paths)
    widths = cap.widths.astype(np.int64) // downscale
    heights = cap.heights.astype(np.int64) // downscale
    if np.any(widths < 1) or np.any(heights < 1):
        raise DatasetError(
            f"{cap.root}: downscale {downscale} leaves an empty image (smallest image is "
            f"{int(cap.widths.min())}x{int(cap.heights.min())})"
        )
    Ks = cap.Ks.copy()
    Ks[:, :2, :] /= downscale  # pixel centres at +0.5: cropping right/bottom keeps the origin
    Ks[:, 2, :] = (0.0, 0.0, 1.0)

    if cap.splits is not None:
        splits = {k: np.asarray(v, dtype=np.int64) for k, v in cap.splits.items()}
        if "val" not in splits or len(splits["val"]) == 0:
            splits["val"] = splits["test"].copy()
    else:
        splits = split_every(n, test_every)

    c2w = cap.c2w.astype(np.float64)
    if normalize:
        T, kind = nz.similarity_from_cameras(c2w)
    else:
        T, kind = np.eye(4), nz.camera_layout(c2w)
    c2w_n = nz.transform_c2w(c2w, T)
    s = nz.similarity_scale(T)

    if cap.points is not None and len(cap.points) > 0:
        points = nz.transform_points(cap.points, T)
        colors = np.asarray(cap.point_colors, dtype=np.uint8)
        source = "sfm"
        bounds = nz.robust_bounds(points)
    else:
        if cap.world_bounds is not None:
            bounds = nz.transform_bounds(cap.world_bounds, T)
        else:
            near_far = None if cap.near_far is None else cap.near_far * s
            bounds = nz.camera_bounds(c2w_n, Ks, widths, heights, kind=kind, near_far=near_far)
        rng = np.random.default_rng(seed)
        points = rng.uniform(bounds[0], bounds[1], size=(n_random_points, 3))
        colors = rng.integers(0, 256, size=(n_random_points, 3), dtype=np.uint8)
        source = "random"

    viewmats = np.linalg.inv(c2w_n)
    viewmats[:, 3, :] = (0.0, 0.0, 0.0, 1.0)
    distortion = None
    if cap.distortion is not None and np.any(cap.distortion != 0):
        distortion = np.asarray(cap.distortion, dtype=np.float32)
    models = sorted(set(cap.models))
    cameras = Cameras(
        viewmats=torch.from_numpy(viewmats.astype(np.float32)),
        Ks=torch.from_numpy(Ks.astype(np.float32)),
        widths=torch.from_numpy(widths),
        heights=torch.from_numpy(heights),
        source_model="+".join(models),
        distortion=None if distortion is None else torch.from_numpy(distortion),
    )
    return Dataset(
        format=cap.format,
        root=cap.root,
        image_paths=list(cap.image_paths),
        cameras=cameras,
        splits=splits,
        points=np.asarray(points, dtype=np.float32).reshape(-1, 3),
        point_colors=np.asarray(colors, dtype=np.uint8).reshape(-1, 3),
        points_source=source,
        bounds=np.asarray(bounds, dtype=np.float32),
        normalization=np.asarray(T, dtype=np.float64),
        background=tuple(background) if cap.rgba else None,
        downscale=downscale,
        distortion=distortion,
        meta={
            **cap.extra,
            "layout": kind,
            "near_far": None if cap.near_far is None else np.asarray(cap.near_far * s, dtype=np.float32),
        },
    )
