"""Open a ``.scz`` file whatever its method, and render it: the one path every CLI command uses.

Each method registers how to rebuild its model from decoded streams; commands (``render``, ``eval``,
``info``) then work the same on every method.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from scenezip.errors import SceneFileError


@dataclass
class LoadedScene:
    """A decoded scene file.

    Attributes:
        path: the file.
        method: the method name stored in the file.
        metadata: the file's metadata (scene facts and the method's own entries).
        model: the rebuilt representation (an ``nn.Module``).
        n_primitives: Gaussians (or hash entries) the model holds.
        size_bytes: size of the file.
    """

    path: Path
    method: str
    metadata: dict
    model: Any
    n_primitives: int
    size_bytes: int

    def render(self, viewmats: Tensor, Ks: Tensor, width: int, height: int, backgrounds: Tensor | None = None,
               backend: str = "auto") -> tuple[Tensor, Tensor]:  # fmt: skip
        """Render ``[C, H, W, 3]`` colours and ``[C, H, W, 1]`` alphas for C cameras."""
        with torch.no_grad():
            colors, alphas, _ = self.model.render(viewmats, Ks, width, height, backgrounds=backgrounds, backend=backend)
        return colors.clamp(0.0, 1.0), alphas


# method -> (module, function) rebuilding its model from decoded arrays: ``fn(arrays, metadata, source)``.
LOADERS: dict[str, tuple[str, str]] = {
    "3dgs": ("scenezip.splatting.streams", "gaussians_from_streams"),
    "c3dgs": ("scenezip.splatting.c3dgs", "c3dgs_from_streams"),
    "2dgs": ("scenezip.splatting.surfels", "surfels_from_streams"),
    "c2dgs": ("scenezip.splatting.c2dgs", "c2dgs_from_streams"),
    "ngp": ("scenezip.fields.ngp_streams", "ngp_from_streams"),
    "cngp": ("scenezip.fields.ngp_streams", "cngp_from_streams"),
}


def _rebuild(method: str, arrays: dict[str, np.ndarray], metadata: dict, source: str) -> Any:
    import importlib

    module, fn = LOADERS[method]
    return getattr(importlib.import_module(module), fn)(arrays, metadata, source)


def load_scene(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedScene:
    """Read, check and decode a ``.scz`` file; raises SceneFileError for anything malformed or unknown."""
    from scenezip.scenes.scz import decode_streams, read_scz

    path = Path(path)
    scene = read_scz(path)
    if scene.method not in LOADERS:
        raise SceneFileError(f"{path}: unknown method {scene.method!r} (this scenezip reads {', '.join(sorted(LOADERS))})")
    model = _rebuild(scene.method, decode_streams(scene), scene.metadata, str(path))
    return LoadedScene(path, scene.method, scene.metadata, model.to(device), len(model), scene.file_nbytes)


def scene_metadata(ds) -> dict:
    """Scene facts a file keeps so renders and exports need no capture: bounds, normalization, image
    size, camera model and background."""
    return {
        "scene": {
            "format": ds.format,
            "name": Path(ds.root).name,
            "bounds": np.asarray(ds.bounds, dtype=float).tolist(),
            "normalization": np.asarray(ds.normalization, dtype=float).tolist(),
            "image_size": [int(ds.cameras.widths[0]), int(ds.cameras.heights[0])],
            "camera_model": ds.cameras.source_model,
            "background": None if ds.background is None else [float(c) for c in ds.background],
        }
    }
