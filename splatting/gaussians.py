"""The 3D Gaussian model of Kerbl et al. 2023 in gsplat's parameter layout.

Written by hand: a thin container of ``nn.Parameter``s plus the initialization of 3DGS (one Gaussian per
point, isotropic scale from the mean distance to the 3 nearest neighbours, identity rotation, opacity 0.1,
DC colour from the point colour) and a device-independent save format. Rendering goes through
:func:`scenezip.render.rasterization.rasterization`, which picks the torch reference or gsplat's CUDA kernels,
so a model trained on a GPU loads and renders on a CPU.

Parameters live in ``model.splats`` (an ``nn.ParameterDict``) under gsplat's names, stored raw:
``means [N, 3]``, ``quats [N, 4]`` (w, x, y, z, any norm), ``scales [N, 3]`` (log), ``opacities [N]``
(logit), ``sh0 [N, 1, 3]`` and ``shN [N, K-1, 3]`` with ``K = (sh_degree + 1)^2``. Densification
(:mod:`scenezip.splatting.densify`) replaces entries of that dict in place.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from scenezip.errors import SceneFileError
from scenezip.render.sh import num_sh_bases, rgb_to_sh0, sh_degree_from_bases

PARAM_NAMES = ("means", "quats", "scales", "opacities", "sh0", "shN")
FORMAT = "scenezip.gaussians3d"
FORMAT_VERSION = 1


def save_model_dict(data: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` a model's plain dict to ``path`` via a temporary name and a rename (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(data), tmp)
    os.replace(tmp, path)
    return path


def knn_mean_distance(points: np.ndarray | Tensor, k: int = 3) -> np.ndarray:
    """Root of the mean squared distance of every point to its ``k`` nearest other points.

    This is the 3DGS initial scale (``sqrt(distCUDA2)``). Coincident points get a tiny positive distance.

    Args:
        points: ``[P, 3]`` points, ``P >= 2``.

    Returns:
        ``[P]`` float32 distances.
    """
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().numpy() if isinstance(points, Tensor) else np.asarray(points)
    pts = pts.astype(np.float64, copy=False)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape [P, 3], got {tuple(pts.shape)}")
    if pts.shape[0] < 2:
        raise ValueError(f"points needs at least 2 points for a nearest-neighbour scale, got {pts.shape[0]}")
    kk = min(k, pts.shape[0] - 1)
    dist, _ = cKDTree(pts).query(pts, k=kk + 1, workers=-1)  # column 0 is the point itself
    d2 = np.square(dist[:, 1:]).mean(axis=1)
    return np.sqrt(np.maximum(d2, 1e-7)).astype(np.float32)


class GaussianModel(nn.Module):
    """3D Gaussians with spherical-harmonic colour (see the module docstring for the layout).

    Args:
        means: ``[N, 3]`` centres.
        quats: ``[N, 4]`` rotations (w, x, y, z).
        scales: ``[N, 3]`` log standard deviations.
        opacities: ``[N]`` opacity logits.
        sh0: ``[N, 1, 3]`` DC SH coefficients.
        shN: ``[N, K-1, 3]`` higher-order SH coefficients (``K - 1`` is 0, 3, 8 or 15).
    """

    def __init__(self, means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, sh0: Tensor, shN: Tensor):
        super().__init__()
        n = means.shape[0]
        expect = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,), "sh0": (n, 1, 3)}
        given = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "sh0": sh0}
        if means.ndim != 2:
            raise ValueError(f"means must have shape [N, 3], got {tuple(means.shape)}")
        for name, shape in expect.items():
            if tuple(given[name].shape) != shape:
                raise ValueError(f"{name} must have shape {list(shape)}, got {tuple(given[name].shape)}")
        if shN.ndim != 3 or shN.shape[0] != n or shN.shape[2] != 3:
            raise ValueError(f"shN must have shape [{n}, K-1, 3], got {tuple(shN.shape)}")
        sh_degree_from_bases(shN.shape[1] + 1)  # raises for a count that is not 1, 4, 9 or 16
        self.splats = nn.ParameterDict(
            {
                name: nn.Parameter(t.detach().to(torch.float32).clone())
                for name, t in zip(PARAM_NAMES, (means, quats, scales, opacities, sh0, shN))
            }
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_points(
        cls,
        points: np.ndarray | Tensor,
        colors: np.ndarray | Tensor,
        sh_degree: int = 3,
        init_opacity: float = 0.1,
        init_scale: float = 1.0,
        device: torch.device | str = "cpu",
    ) -> "GaussianModel":
        """One Gaussian per point, initialized as in 3DGS.

        Args:
            points: ``[P, 3]`` positions.
            colors: ``[P, 3]`` colours, uint8 in 0..255 or float in [0, 1].
            sh_degree: maximum SH degree (0..3); higher-order coefficients start at 0.
            init_opacity: initial opacity (after the sigmoid).
            init_scale: factor on the kNN scale (the root mean squared distance to the 3 nearest points).
        """
        pts = torch.as_tensor(np.asarray(points) if not isinstance(points, Tensor) else points)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"points must have shape [P, 3], got {tuple(pts.shape)}")
        cols = colors if isinstance(colors, Tensor) else torch.as_tensor(np.asarray(colors))
        if tuple(cols.shape) != tuple(pts.shape):
            raise ValueError(f"colors must have shape {list(pts.shape)}, got {tuple(cols.shape)}")
        if not 0 <= sh_degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3, got {sh_degree}")
        if not 0.0 < init_opacity < 1.0:
            raise ValueError(f"init_opacity must be in (0, 1), got {init_opacity}")
        cols = cols.to(torch.float32) / 255.0 if cols.dtype == torch.uint8 else cols.to(torch.float32)
        n = pts.shape[0]
        dist = torch.from_numpy(knn_mean_distance(pts))
        scales = torch.log(dist * init_scale)[:, None].repeat(1, 3)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        opacities = torch.full((n,), float(torch.logit(torch.tensor(init_opacity))))
        sh0 = rgb_to_sh0(cols.clamp(0.0, 1.0))[:, None, :]
        shN = torch.zeros(n, num_sh_bases(sh_degree) - 1, 3)
        return cls(pts.to(torch.float32), quats, scales, opacities, sh0, shN).to(device)

    # ------------------------------------------------------------------ accessors
    @property
    def means(self) -> Tensor:
        return self.splats["means"]

    @property
    def quats(self) -> Tensor:
        return self.splats["quats"]

    @property
    def scales(self) -> Tensor:
        return self.splats["scales"]

    @property
    def opacities(self) -> Tensor:
        return self.splats["opacities"]

    @property
    def sh0(self) -> Tensor:
        return self.splats["sh0"]

    @property
    def shN(self) -> Tensor:
        return self.splats["shN"]

    @property
    def sh_degree(self) -> int:
        """Maximum SH degree the model stores."""
        return sh_degree_from_bases(self.splats["shN"].shape[1] + 1)

    @property
    def device(self) -> torch.device:
        return self.splats["means"].device

    def __len__(self) -> int:
        return int(self.splats["means"].shape[0])

    @property
    def num_gaussians(self) -> int:
        return len(self)

    def colors(self) -> Tensor:
        """``[N, K, 3]`` all SH coefficients (``sh0`` then ``shN``)."""
        return torch.cat([self.splats["sh0"], self.splats["shN"]], dim=1)

    def subset(self, keep: Tensor) -> "GaussianModel":
        """A new model of the Gaussians ``keep`` selects (a ``[N]`` bool mask or indices), detached copies."""
        return GaussianModel(*(self.splats[k].detach()[keep] for k in PARAM_NAMES))

    def activated(self) -> dict[str, Tensor]:
        """What the rasterizer takes: normalized quats, ``exp`` scales, ``sigmoid`` opacities, SH coefficients."""
        return {
            "means": self.splats["means"],
            "quats": torch.nn.functional.normalize(self.splats["quats"], dim=-1),
            "scales": torch.exp(self.splats["scales"]),
            "opacities": torch.sigmoid(self.splats["opacities"]),
            "colors": self.colors(),
        }

    # ------------------------------------------------------------------ rendering
    def render(
        self,
        viewmats: Tensor,
        Ks: Tensor,
        width: int,
        height: int,
        sh_degree: int | None = None,
        backgrounds: Tensor | None = None,
        render_mode: Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"] = "RGB",
        backend: Literal["auto", "torch", "cuda"] = "auto",
        near_plane: float = 0.01,
        far_plane: float = 1e10,
        rasterize_mode: Literal["classic", "antialiased"] = "classic",
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor, dict]:
        """Render C cameras.

        Args:
            viewmats: ``[C, 4, 4]`` world-to-camera (OpenCV axes).
            Ks: ``[C, 3, 3]`` intrinsics in pixels.
            width, height: image size in pixels.
            sh_degree: SH degree to evaluate (default: all the model stores).
            backgrounds: ``[C, 3]`` colours composited behind the Gaussians, or None (black).
            kwargs: passed on to ``rasterization`` (e.g. ``packed``, ``absgrad``).

        Returns:
            ``(colors [C, H, W, D], alphas [C, H, W, 1], meta)`` as :func:`rasterization` returns them.
        """
        from scenezip.render.rasterization import rasterization

        degree = self.sh_degree if sh_degree is None else int(sh_degree)
        if not 0 <= degree <= self.sh_degree:
            raise ValueError(f"sh_degree must be in 0..{self.sh_degree}, got {sh_degree}")
        a = self.activated()
        return rasterization(
            a["means"],
            a["quats"],
            a["scales"],
            a["opacities"],
            a["colors"],
            viewmats,
            Ks,
            int(width),
            int(height),
            near_plane=near_plane,
            far_plane=far_plane,
            sh_degree=degree,
            backgrounds=backgrounds,
            render_mode=render_mode,
            rasterize_mode=rasterize_mode,
            backend=backend,
            **kwargs,
        )

    # ------------------------------------------------------------------ save / load
    def to_dict(self) -> dict[str, Any]:
        """Plain, device-independent dict: ``{"format", "version", "sh_degree", "n", "params": {name: cpu tensor}}``."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "sh_degree": self.sh_degree,
            "n": len(self),
            "params": {k: v.detach().cpu().clone() for k, v in self.splats.items()},
        }

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], device: torch.device | str = "cpu", source: str = "model"
    ) -> "GaussianModel":
        """Inverse of :meth:`to_dict`; ``source`` names the file in error messages."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise SceneFileError(f"{source}: not a scenezip 3D Gaussian model (format {FORMAT!r} expected)")
        if int(data.get("version", -1)) > FORMAT_VERSION:
            raise SceneFileError(f"{source}: model format version {data.get('version')} is newer than {FORMAT_VERSION}")
        params = data.get("params", {})
        missing = [k for k in PARAM_NAMES if k not in params]
        if missing:
            raise SceneFileError(f"{source}: model is missing parameters {missing}")
        try:
            model = cls(*(params[k] for k in PARAM_NAMES))
        except ValueError as e:
            raise SceneFileError(f"{source}: {e}") from None
        return model.to(device)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Load parameters, resizing to the stored Gaussian count (densification changes N).

        Accepts ``nn.Module.state_dict()`` output (``splats.<name>``) or :meth:`to_dict` output.
        """
        if "params" in state_dict and "format" in state_dict:
            params = state_dict["params"]
        else:
            params = {k.split(".", 1)[1]: v for k, v in state_dict.items() if k.startswith("splats.")}
        missing = [k for k in PARAM_NAMES if k not in params]
        if strict and missing:
            raise KeyError(f"state_dict is missing parameters {missing}")
        fresh = GaussianModel(*(params[k] for k in PARAM_NAMES))
        dev = self.device
        for k in PARAM_NAMES:
            self.splats[k] = nn.Parameter(fresh.splats[k].data.to(dev))
        return nn.modules.module._IncompatibleKeys([], [])

    def save(self, path: str | os.PathLike) -> Path:
        """Write :meth:`to_dict` with ``torch.save`` (via a temporary name, then rename)."""
        return save_model_dict(self.to_dict(), path)

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> "GaussianModel":
        """Read a model written by :meth:`save`, or the ``model`` entry of a training checkpoint."""
        path = Path(path)
        if not path.is_file():
            raise SceneFileError(f"{path}: no such model file")
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
            raise SceneFileError(f"{path}: cannot read a model ({type(e).__name__}: {e})") from None
        if isinstance(data, Mapping) and "model" in data and isinstance(data["model"], Mapping):
            data = data["model"]
        return cls.from_dict(data, device=device, source=str(path))
