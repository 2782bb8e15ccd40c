"""One dataset type for every capture format.

Readers (``blender.py``, ``nerfstudio.py``, ``colmap.py``, ``llff.py``) return a :class:`Dataset`;
:func:`load_dataset` detects the format of a folder and dispatches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import Tensor

from scenezip.scenes.cameras import Cameras


@dataclass
class Dataset:
    """A capture loaded into scenezip's conventions (OpenCV cameras, normalized world space).

    Attributes:
        format: ``"blender"``, ``"nerfstudio"``, ``"colmap"`` or ``"llff"``.
        root: the folder the capture was read from.
        image_paths: one path per camera, in camera order (sorted by name where the format has no order).
        cameras: all cameras, after downscaling; pinhole (images are undistorted at load).
        splits: camera indices per split, ``{"train": [...], "val": [...], "test": [...]}`` (int64 arrays).
        points: ``[P, 3]`` float32 initial points in normalized space (COLMAP points3D, or random in bounds).
        point_colors: ``[P, 3]`` uint8 colours of ``points``.
        points_source: ``"sfm"`` when points come from the capture, ``"random"`` otherwise.
        bounds: ``[2, 3]`` float32 axis-aligned box (min, max) of the scene in normalized space.
        normalization: ``[4, 4]`` float64 similarity that maps capture world space to normalized space
            (``x_norm = normalization @ x_world``); :meth:`denormalize_points` undoes it on export.
        background: RGB in [0, 1] that RGBA images were composited on, or None for RGB captures.
        downscale: integer factor the images were downscaled by.
        distortion: per-camera source distortion ``[N, 4]`` (k1, k2, p1, p2) in the *downscaled*
            intrinsics, or None; images are undistorted by :meth:`image`.
        meta: format-specific facts a method may use: ``layout`` (``"object"`` or ``"forward"``),
            ``near_far`` (``[N, 2]`` per-camera depth range in normalized units, LLFF) and what the
            reader kept of the capture (e.g. instant-ngp's ``aabb_scale``).
    """

    format: str
    root: Path
    image_paths: list[Path]
    cameras: Cameras
    splits: dict[str, np.ndarray]
    points: np.ndarray
    point_colors: np.ndarray
    points_source: str
    bounds: np.ndarray
    normalization: np.ndarray
    background: tuple[float, float, float] | None = None
    downscale: int = 1
    distortion: np.ndarray | None = None
    meta: dict = field(default_factory=dict)
    _cache: dict[int, Tensor] = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def scale(self) -> float:
        """Uniform scale factor of :attr:`normalization` (normalized units per world unit)."""
        return float(np.cbrt(abs(np.linalg.det(self.normalization[:3, :3]))))

    def denormalize_points(self, points: np.ndarray) -> np.ndarray:
        """Map ``[P, 3]`` points from normalized space back to the capture's world space."""
        inv = np.linalg.inv(self.normalization)
        pts = np.asarray(points, dtype=np.float64)
        return (pts @ inv[:3, :3].T + inv[:3, 3]).astype(np.float32)

    def indices(self, split: str) -> np.ndarray:
        """Camera indices of ``split`` (``train``, ``val``, ``test`` or ``all``)."""
        if split == "all":
            return np.arange(len(self), dtype=np.int64)
        if split not in self.splits:
            from scenezip.errors import DatasetError

            raise DatasetError(f"{self.root}: no split {split!r}; splits are {sorted(self.splits)} and 'all'")
        return self.splits[split]

    def image(self, index: int) -> Tensor:
        """Image ``index`` as ``[H, W, 3]`` float32 in [0, 1]: composited, downscaled, undistorted; cached."""
        if index not in self._cache:
            from scenezip.scenes.images import load_capture_image

            self._cache[index] = load_capture_image(self, index)
        return self._cache[index]

    def images(self, split: str = "train") -> list[Tensor]:
        return [self.image(int(i)) for i in self.indices(split)]
