"""The ``3dgs`` method's stream contract: a :class:`GaussianModel` as named arrays and back.

``3dgs`` is the uncompressed reference, so every attribute is stored losslessly as raw little-endian
float32 (the sizes in ``scenezip info`` are then the honest baseline the compressed methods are
measured against). Decoding checks every shape against the Gaussian count in the metadata.
"""

from __future__ import annotations

import numpy as np
import torch

from scenezip.errors import SceneFileError
from scenezip.render.sh import num_sh_bases
from scenezip.splatting.gaussians import PARAM_NAMES, GaussianModel

METHOD = "3dgs"


def gaussians_to_streams(model: GaussianModel) -> tuple[dict, dict[str, tuple[np.ndarray, str]]]:
    """``(metadata, streams)`` of a model: raw float32 arrays under gsplat's parameter names."""
    streams = {
        name: (model.splats[name].detach().cpu().to(torch.float32).numpy(), "raw") for name in PARAM_NAMES
    }
    return {"n_gaussians": len(model), "sh_degree": model.sh_degree}, streams


def gaussians_from_streams(arrays: dict[str, np.ndarray], metadata: dict, source: str = "scene") -> GaussianModel:
    """Inverse of :func:`gaussians_to_streams`; raises SceneFileError naming ``source`` on any mismatch."""
    n, degree = metadata.get("n_gaussians"), metadata.get("sh_degree")
    if not isinstance(n, int) or n < 0 or degree not in (0, 1, 2, 3):
        raise SceneFileError(f"{source}: 3dgs metadata needs integer n_gaussians and sh_degree 0..3")
    k = num_sh_bases(degree)
    expect = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,), "sh0": (n, 1, 3), "shN": (n, k - 1, 3)}
    for name, shape in expect.items():
        if name not in arrays:
            raise SceneFileError(f"{source}: 3dgs stream {name!r} is missing")
        if tuple(arrays[name].shape) != shape:
            raise SceneFileError(f"{source}: 3dgs stream {name!r} has shape {tuple(arrays[name].shape)}, expected {shape}")
        if not np.all(np.isfinite(arrays[name])):
            raise SceneFileError(f"{source}: 3dgs stream {name!r} holds non-finite values")
    return GaussianModel(*(torch.from_numpy(np.ascontiguousarray(arrays[k_], dtype=np.float32)) for k_ in PARAM_NAMES))
