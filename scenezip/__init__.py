"""scenezip: train neural scene representations, compress them into .scz files, render and export them.

Subpackages (each a top-level folder of the repository):
``scenezip.scenes`` (datasets, cameras, procedural scenes, file formats),
``scenezip.render`` (rasterizers, volume rendering, metrics),
``scenezip.fields``, ``scenezip.splatting``, ``scenezip.quant``.
Importing scenezip never imports a CUDA extension.
"""

from scenezip.errors import BackendError, DatasetError, SceneFileError, ScenezipError

__version__ = "0.1.0"

__all__ = ["BackendError", "DatasetError", "SceneFileError", "ScenezipError", "__version__"]
