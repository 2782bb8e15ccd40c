"""Compressed 2D Gaussian surfels: the ``c2dgs`` method (ours; no paper compresses 2DGS).

Written by hand for scenezip as a composition of two existing pieces, so it adds almost no code of its own:

* the Compact-3DGS toolbox of :class:`~scenezip.splatting.c3dgs.C3DGSModel` (learnable mask, hash-grid
  colour field with optional per-Gaussian base colour, residual VQ of scale and rotation, entropy-coded
  streams; stream version, checks and bit-exact decoding unchanged), and
* the surfels of :class:`~scenezip.splatting.surfels.SurfelModel` (Huang et al. 2024): three log-scales
  whose third, normal axis stays at ``FLAT_SCALE``, PCA-oriented initialization, the 2DGS rasterizer
  (:func:`scenezip.render.rasterization_2dgs.rasterization_2dgs`) and its normal-consistency and
  depth-distortion losses (:meth:`SurfelModel.extra_loss`).

:class:`C2DGSModel` subclasses ``C3DGSModel`` and replaces only what the primitive changes: ``render``
(one 2DGS rasterizer call per camera with that camera's field colours, returning the meta
``SurfelModel.render`` returns, so the surfel losses, ``scenezip render --mode depth|normal`` and
``scenezip mesh`` work on it unchanged), ``to_plain`` (the colour field baked into SH, ``surfel=True``),
and two details of coding:

* the stream metadata carries ``"surfel": true``; :func:`c2dgs_from_streams` refuses files without it;
* automatic position bits are chosen from the smaller *tangent* scale. ``C3DGSModel`` uses the smallest
  of the three axes, which for a surfel is the flat one (1e-6), and would always ask for the 21-bit
  maximum; a surfel's size in its plane is what the position error must stay below. Procedural scene
  (32 px, 300 steps, 2995 surfels): 9 bits, 63.1 kB, 20.238 dB; the c3dgs rule: 21 bits, 76.5 kB, 20.236 dB.

Measured on the procedural scene (32 px, 16 train / 4 test views, 2000 random points, 300 steps, CPU, torch
rasterizer, defaults otherwise): 2dgs 708 kB at 20.30 dB, c2dgs 63.5 kB (11.2x smaller) at 20.24 dB.

The R-VQ codes all three scales as ``C3DGSModel`` does; the flat axis is near 0 for every surfel, costs
the codebooks nothing measurable, and the rasterizer ignores it.

:class:`C2DGSRecipe` is :class:`~scenezip.splatting.recipes.C3DGSRecipe` (mask, colour-field schedule,
R-VQ switch, hash-codec rate, mask pruning, post-processed final model) plus the surfel losses and
initialization of :class:`~scenezip.splatting.recipes.SurfelRecipe`. Importing this module registers it
in ``recipes.RECIPES`` (see :data:`RECIPES`), because ``recipes.py`` cannot import this module (it
subclasses recipes defined there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from scenezip.errors import SceneFileError, ScenezipError
from scenezip.fields.color_field import DEFAULT_BOUNDS, ColorFieldConfig
from scenezip.quant.mask import keep_indices
from scenezip.scenes.dataset import Dataset
from scenezip.splatting.c3dgs import C3DGSModel, c3dgs_from_streams
from scenezip.splatting.config import C3DGSConfig
from scenezip.splatting.recipes import RECIPES, C3DGSRecipe, SurfelRecipe
from scenezip.splatting.surfels import FLAT_SCALE, SurfelLossConfig, SurfelModel, default_surfel_depth

METHOD = "c2dgs"
MODEL_FORMAT = "scenezip.c2dgs_model"
SURFEL_KEY = "surfel"  # stream metadata marker: the c3dgs streams describe 2D surfels
_IMAGE_KEYS = ("render_alphas", "render_normals", "render_normals_from_depth", "render_distort", "render_median",
               "render_depth")  # fmt: skip


class C2DGSModel(C3DGSModel):
    """2D Gaussian surfels with the Compact-3DGS parameters and stream contract (see the module docstring).

    Construction, ``activated``, ``colors``, ``to_streams``, ``quantized_copy`` and saving are
    :class:`C3DGSModel`'s; ``scales`` is ``[N, 3]`` log with the third (normal) axis at ``log(FLAT_SCALE)``.
    """

    METHOD = METHOD
    GRAD_KEY = SurfelModel.GRAD_KEY
    is_surfel = True

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_surfels(
        cls,
        model: SurfelModel,
        color_config: ColorFieldConfig | None = None,
        bounds: Tensor | Sequence = DEFAULT_BOUNDS,
        init_rvq: bool = True,
        color_dc: bool = False,
        **kwargs: Any,
    ) -> "C2DGSModel":
        """Geometry of a :class:`SurfelModel` (as :meth:`C3DGSModel.from_gaussians`: with ``color_dc`` its DC
        colours become the base colours, higher SH bands are dropped; ``kwargs`` go to the constructor)."""
        if not isinstance(model, SurfelModel):
            raise ValueError(f"model must be a SurfelModel, got {type(model).__name__}")
        return cls.from_gaussians(model, color_config, bounds, init_rvq=init_rvq, color_dc=color_dc, **kwargs)

    # ------------------------------------------------------------------ rendering
    def render(
        self,
        viewmats: Tensor,
        Ks: Tensor,
        width: int,
        height: int,
        backgrounds: Tensor | None = None,
        backend: Literal["auto", "torch", "cuda"] = "auto",
        render_mode: Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"] = "RGB",
        near_plane: float = 0.01,
        far_plane: float = 1e10,
        rasterize_mode: Literal["classic"] = "classic",
        distloss: bool = False,
        depth_mode: Literal["expected", "median"] = "expected",
        surfel_depth: Optional[Literal["center", "intersection"]] = None,
        sh_degree: int | None = None,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor, dict]:
        """Render C cameras with the 2DGS rasterizer, one call per camera with that camera's field colours.

        Args:
            viewmats: ``[C, 4, 4]`` world-to-camera (OpenCV axes).
            Ks: ``[C, 3, 3]`` intrinsics in pixels.
            width, height: image size in pixels.
            backgrounds: ``[C, 3]`` colours behind the surfels, or None (black; none for ``D``/``ED``).
            render_mode, distloss, depth_mode, surfel_depth, near_plane, far_plane: as
                :meth:`SurfelModel.render` (depth-only modes skip the colour field).
            rasterize_mode: only ``"classic"`` (accepted for the shared trainer's sake).
            sh_degree: ignored (colours come from the field); accepted for the shared evaluation.
            kwargs: passed on to :func:`rasterization_2dgs` (``radius_clip``, ``eps2d``, ``tile_size``, ...).

        Returns:
            ``(colors [C, H, W, X], alphas [C, H, W, 1], meta)``. ``meta`` holds the images of
            :meth:`SurfelModel.render` for all C cameras (``render_alphas``, ``render_normals``,
            ``render_normals_from_depth``, ``render_distort``, ``render_median``, ``render_depth``) and its
            flags ``distloss``, ``depth_mode``; ``meta["cameras"]``, one such meta per camera, each with its
            rasterizer entries (``meta[GRAD_KEY]`` for densification, ``radii``, ...); ``meta["rvq_loss"]``,
            the codebook loss of this call. For one camera the top level also holds that camera's
            rasterizer entries, so it is exactly the meta :meth:`SurfelModel.extra_loss` reads.
        """
        from scenezip.render.rasterization_2dgs import rasterization_2dgs

        if not isinstance(viewmats, Tensor) or viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
            raise ValueError(f"viewmats must have shape [C, 4, 4], got {tuple(getattr(viewmats, 'shape', ()))}")
        c = viewmats.shape[0]
        if not isinstance(Ks, Tensor) or tuple(Ks.shape) != (c, 3, 3):
            raise ValueError(f"Ks must have shape [{c}, 3, 3], got {tuple(getattr(Ks, 'shape', ()))}")
        if backgrounds is not None and (backgrounds.dim() != 2 or backgrounds.shape[0] != c):
            raise ValueError(f"backgrounds must have shape [{c}, D], got {tuple(backgrounds.shape)}")
        if rasterize_mode != "classic":
            raise ValueError(f"rasterize_mode must be 'classic' for 2D surfels, got {rasterize_mode!r}")
        if surfel_depth is None:
            surfel_depth = default_surfel_depth(self.device, backend)
        inner = "RGB+ED" if render_mode == "RGB" else render_mode
        a = self.activated()
        means = a["means"]
        if render_mode in ("D", "ED"):  # no colour channels: the rasterizer only checks the shape
            colors = means.new_zeros(1, means.shape[0], 3).expand(c, -1, -1)
        else:
            colors = self.color_field.colors_for_cameras(means, viewmats, self.grid_features(means), a["sh0"])
        outs, alphas, metas = [], [], []
        for i in range(c):
            out, alpha, normals, from_depth, distort, median, meta = rasterization_2dgs(
                means, a["quats"], a["scales"], a["opacities"], colors[i], viewmats[i : i + 1], Ks[i : i + 1],
                int(width), int(height), near_plane=near_plane, far_plane=far_plane,
                backgrounds=None if backgrounds is None else backgrounds[i : i + 1], render_mode=inner,
                distloss=distloss, depth_mode=depth_mode, surfel_depth=surfel_depth, backend=backend, **kwargs,
            )  # fmt: skip
            depth = out[..., -1:]
            if inner in ("D", "RGB+D"):  # accumulated depth: divided by alpha, as SurfelModel.render does
                depth = depth / alpha.clamp_min(1e-10)
            outs.append(out[..., :-1] if render_mode == "RGB" else out)
            alphas.append(alpha)
            images = (alpha, normals, from_depth, distort, median, depth)
            metas.append(dict(meta, **dict(zip(_IMAGE_KEYS, images)), distloss=bool(distloss), depth_mode=depth_mode))
        top = dict(metas[0]) if c == 1 else {k: torch.cat([m[k] for m in metas], 0) for k in _IMAGE_KEYS}
        top.update(distloss=bool(distloss), depth_mode=depth_mode, cameras=metas, rvq_loss=a["rvq_loss"])
        return torch.cat(outs, 0), torch.cat(alphas, 0), top

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def to_plain(self, sh_degree: int | None = None, n_dirs: int = 64, seed: int = 0):
        """:class:`scenezip.splatting.plain.PlainSplats` with ``surfel=True``: the geometry the model renders
        (R-VQ code sums where active), masked surfels dropped, the flat axis at ``log(FLAT_SCALE)``, and
        the colour field (plus base colour) baked into SH of ``sh_degree`` (default 3) by least squares over
        ``n_dirs`` directions (:func:`scenezip.splatting.plain.bake_sh`; RMS error in ``fit_error``)."""
        from scenezip.splatting.plain import PlainSplats, bake_sh

        degree = 3 if sh_degree is None else int(sh_degree)
        if not 0 <= degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3, got {sh_degree}")
        a = self.activated()
        keep = keep_indices(self.splats["masks"].detach(), self.mask_threshold)
        means = a["means"].detach()[keep]
        scales = torch.log(a["scales"].detach()[keep].abs().clamp_min(1e-12))
        scales[:, 2] = math.log(FLAT_SCALE)

        def color_fn(m: Tensor, d: Tensor, rows: slice) -> Tensor:
            return self.colors(d, keep[rows], a)

        coeffs, rms = bake_sh(color_fn, means, degree, n_dirs, seed, pass_rows=True)
        c = coeffs.cpu()
        return PlainSplats(
            means.cpu().numpy(), F.normalize(a["quats"].detach()[keep], dim=-1).cpu().numpy(), scales.cpu().numpy(),
            self.splats["opacities"].detach()[keep].cpu().numpy(), c[:, :1].numpy(), c[:, 1:].numpy(),
            surfel=True, fit_error=rms,
        )  # fmt: skip

    # ------------------------------------------------------------------ coding
    def size_scales(self, log_scales: Tensor) -> Tensor:  # [N, 3] -> [N, 2]
        """The tangent standard deviations: the flat axis would always ask for 21 position bits (see the
        module docstring)."""
        return torch.exp(log_scales[:, :2])

    @torch.no_grad()
    def _post_process(self, hash_zero_threshold: float) -> tuple[dict, dict[str, tuple[np.ndarray, str]]]:
        """:meth:`C3DGSModel._post_process` with the surfel marker in the metadata."""
        metadata, streams = super()._post_process(hash_zero_threshold)
        return {**metadata, SURFEL_KEY: True}, streams

    # ------------------------------------------------------------------ save / load (training state)
    def to_dict(self) -> dict[str, Any]:
        """As :meth:`C3DGSModel.to_dict`, with the c2dgs format name."""
        return dict(super().to_dict(), format=MODEL_FORMAT)

    @classmethod
    def from_dict(cls, data: Any, device: torch.device | str = "cpu", source: str = "model") -> "C2DGSModel":
        """Inverse of :meth:`to_dict`; SceneFileError naming ``source`` for anything else."""
        from scenezip.splatting.c3dgs import MODEL_FORMAT as C3DGS_FORMAT

        if not isinstance(data, Mapping) or data.get("format") != MODEL_FORMAT:
            raise SceneFileError(f"{source}: not a scenezip c2dgs model (format {MODEL_FORMAT!r} expected)")
        return super().from_dict(dict(data, format=C3DGS_FORMAT), device=device, source=source)


# ---------------------------------------------------------------------------------------------- streams
def c2dgs_to_streams(
    model: C2DGSModel, hash_zero_threshold: float | None = None
) -> tuple[dict, dict[str, tuple[np.ndarray, str]]]:
    """``(metadata, streams)`` for :func:`scenezip.scenes.scz.write_scz` (method ``"c2dgs"``): the c3dgs
    streams of :meth:`C2DGSModel.to_streams` with ``surfel: true`` in the metadata."""
    if not isinstance(model, C2DGSModel):
        raise ValueError(f"model must be a C2DGSModel, got {type(model).__name__}")
    return model.to_streams() if hash_zero_threshold is None else model.to_streams(hash_zero_threshold)


def c2dgs_from_streams(arrays: dict[str, np.ndarray], metadata: dict, source: str = "scene") -> C2DGSModel:
    """Inverse of :func:`c2dgs_to_streams`: a frozen :class:`C2DGSModel`; SceneFileError naming ``source``
    when the surfel marker is missing or any c3dgs check fails."""
    if not isinstance(metadata, Mapping) or metadata.get(SURFEL_KEY) is not True:
        raise SceneFileError(f"{source}: c2dgs metadata must say {SURFEL_KEY}: true")
    try:
        return c3dgs_from_streams(arrays, dict(metadata), source, cls=C2DGSModel)
    except SceneFileError as e:  # the shared checks name the c3dgs layout; this file is a c2dgs one
        raise SceneFileError(str(e).replace(": c3dgs ", ": c2dgs ", 1)) from None


# ---------------------------------------------------------------------------------------------- training
@dataclass
class C2DGSConfig(C3DGSConfig):
    """Train compressed 2D Gaussian surfels (c2dgs): 2DGS surfels (Huang et al. 2024) with their normal-consistency
    and depth-distortion losses, compressed with the c3dgs toolbox (learned mask, hash-grid colour field, residual
    VQ of scale and rotation), then coded into a compact .scz file."""

    out: Path = Path("runs/c2dgs")
    """Output folder: checkpoints ckpt_XXXXX.pt, the final model.pt, scene.scz and metrics.json."""
    recipe: Literal["joint"] = "joint"
    """c2dgs trains mask, colour field and R-VQ jointly (the distill recipe is c3dgs's)."""
    lr_quats: float = 1e-2
    """Learning rate of the quaternions; a surfel's rotation is its normal and must turn where a 3D Gaussian can
    flatten by its scales instead (as 2dgs: 1e-3 left normals at 44 degrees after 300 steps, 1e-2 at 31)."""
    surfel: SurfelLossConfig = field(default_factory=SurfelLossConfig)
    """Surfel regularization (normal consistency, depth distortion) and its schedule."""


class C2DGSRecipe(C3DGSRecipe):
    """Compressed surfels (the ``c2dgs`` method): :class:`C3DGSRecipe` with the initialization, losses and
    densification gradient of :class:`SurfelRecipe`."""

    method = METHOD
    grad_key = SurfelModel.GRAD_KEY
    loss_config: SurfelLossConfig | None = None

    prepare = SurfelRecipe.prepare  # resolves config.surfel from the capture's layout into self.loss_config

    def init_model(self, ds: Dataset, device: torch.device) -> Any:
        c = self.config
        s = SurfelModel.from_points(ds.points, ds.point_colors, 0, c.init_opacity, c.init_scale, seed=c.seed)
        return C2DGSModel.from_surfels(s, **self.model_options(ds)).to(device)

    def model_from_dict(self, data: Mapping[str, Any], device: torch.device, source: str) -> Any:
        return C2DGSModel.from_dict(dict(data), device=device, source=source)

    def render(self, model: Any, cam: Any, width: int, height: int, bg: Tensor, step: int, sh_degree: int,
               render_kw: Mapping[str, Any]) -> tuple[Tensor, Mapping[str, Any], Tensor | None]:  # fmt: skip
        """C3DGSRecipe's render and terms (mask, R-VQ, hash rate) plus the surfel losses of the step."""
        if self.loss_config is None:
            raise ScenezipError("C2DGSRecipe.prepare(dataset) must run before render")
        total = self.config.steps
        kw = {k: v for k, v in render_kw.items() if k != "rasterize_mode"}
        kw.update(SurfelModel.loss_render_kwargs(step, total, self.loss_config))
        img, meta, extra = super().render(model, cam, width, height, bg, step, sh_degree, kw)
        surfel_loss, _ = SurfelModel.extra_loss(meta, step, total, self.loss_config)
        return img, meta, extra + surfel_loss


# recipes.py cannot import this module (it subclasses recipes defined there), so it registers itself: a
# C2DGSConfig exists only once this module is imported, and recipe_for would otherwise take C3DGSRecipe.
RECIPES.setdefault(C2DGSConfig, C2DGSRecipe)


__all__ = [
    "METHOD",
    "C2DGSConfig",
    "C2DGSModel",
    "C2DGSRecipe",
    "c2dgs_from_streams",
    "c2dgs_to_streams",
]
