"""2D Gaussian surfels (Huang et al., SIGGRAPH 2024, "2D Gaussian Splatting for Geometrically Accurate
Radiance Fields"): the ``2dgs`` model, its two geometric losses and its stream contract.

Written by hand for scenezip, from the 2DGS paper and the constants of gsplat's 2DGS trainer:

* The parameter layout is :class:`~scenezip.splatting.gaussians.GaussianModel`'s (gsplat's names), so
  densification, the trainer's optimizers and the stream contract of ``3dgs`` apply unchanged.
  ``scales`` stays ``[N, 3]`` as gsplat's 2DGS keeps it: the rasterizer reads only the two tangent
  scales; the third is initialized to ``log(FLAT_SCALE)``, receives no gradient and so stays tiny, which
  keeps densification's split samples in the surfel's plane and its size tests on the tangent scales.
* :meth:`SurfelModel.from_points` orients each initial surfel by the points around it: its normal is the
  direction of least spread (PCA) of the point and its nearest neighbours; tangent scales are the 3DGS
  kNN scale. (gsplat draws random rotations; a point cloud already says where surfaces are.)
* Losses (:meth:`SurfelModel.extra_loss`), both from the paper, with gsplat's rasterizer outputs:

  - normal consistency ``sum_i w_i (1 - n_i . N)`` per pixel (paper Eq. 14), ``N`` the normal of the
    rendered depth, ``n_i`` the surfel normals; with ``render_normals = sum_i w_i n_i`` and the alpha
    ``sum_i w_i`` that is ``alpha - render_normals . N``: non-negative, zero on a consistent surface and
    on the background. (gsplat writes ``1 - render_normals . (alpha N)``, which adds 1 per background
    pixel and pulls alphas up; the paper's form has no such offset.) Weight 0.05 from step 7000 of 30000.
  - depth distortion ``sum_ij w_i w_j |m_i - m_j|`` on the paper's depth mapping
    ``m(z) = far / (far - near) * (1 - near / z)``. The rasterizers give the distortion in camera z, in
    gsplat's L1 form; near the pixel's surface ``|m_i - m_j| = near / z^2 |z_i - z_j|`` (far >> near), so
    each pixel's value is scaled by ``near / z^2`` at its (detached) median depth. ``near`` is the paper's
    0.2 with cameras about 4 units out, i.e. 0.05 of the camera distance (scenezip's normalized scenes
    put the farthest camera at 1); the mapped depth is then the same number in both frames.

    The weights are *not* the paper's 1000 / 10. The 2DGS code's distortion is the squared form
    ``sum_ij w_i w_j (m_i - m_j)^2``; on the L1 form here a weight of 1000 is about 2000 times stronger
    at a spread of 0.01 scene units (``|dm| = 5e-4``) and drove the procedural scene from 22 dB (3dgs) to
    12.6 dB. The two forms have equal gradients where ``lambda_L1 = 2 lambda_sq |dm|``: 1000 at a spread
    of 0.01 gives 1, the object default here; unbounded scenes keep the paper's ratio (x 1/100). Measured
    on the 48 px procedural scene (300 steps): weights up to about 10 cost < 0.5 dB, 100 costs 1 dB.
    On from step 3000 of 30000 (2DGS).

  Surfel depth (:func:`default_surfel_depth`): on the torch rasterizer every surfel contributes the depth
  where the pixel's ray meets its plane (2DGS), not its centre's z (gsplat's kernels, the only choice on
  CUDA). Centre depth is constant over a surfel's footprint, so the median depth is a staircase, its
  normals (the normal loss's target) were 55-58 degrees off the truth on the 48 px procedural scene, and
  the normal loss pulled the surfels' rotations toward them.

  Normals of the rendered depth come from the expected depth for every scene type. The 2DGS code
  differentiates the median depth for object scenes (``depth_ratio`` 1 for DTU, 0 for Mip-NeRF 360), but
  on the 48 px procedural object scene (1000 steps, seed 0) the median's normals were 36-40 degrees off
  the truth against 23-27 for the expected depth's, and following them left the surfels' own normals
  worse: 2dgs scored 23.0 degrees (median) against 18.6 (expected), 3dgs 20.6, with relative depth
  errors 0.021 / 0.019 (3dgs 0.022) and mesh Chamfer 0.0093 / 0.0088 (3dgs 0.0131).
  Start steps scale with the run length, as the densification schedule does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, Mapping, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from scenezip.errors import SceneFileError
from scenezip.render.sh import num_sh_bases, rgb_to_sh0
from scenezip.splatting import gaussians as _gaussians
from scenezip.splatting.gaussians import PARAM_NAMES, GaussianModel, knn_mean_distance

METHOD = "2dgs"
FORMAT = "scenezip.surfels2d"
FORMAT_VERSION = 1
FLAT_SCALE = 1e-6  # the third (normal-axis) scale of every surfel; the rasterizer ignores it
PCA_NEIGHBOURS = 8  # points (the point itself included) whose spread orients an initial surfel

SceneType = Literal["auto", "object", "unbounded"]
DIST_LAMBDAS = {"object": 1.0, "unbounded": 0.01}  # L1 form: the 2DGS squared-form 1000 / 10 matched (see above)


@dataclass
class SurfelLossConfig:
    """Geometric regularizers of 2D Gaussian splatting (normal consistency and depth distortion).

    Step fields are for a run of ``reference_steps`` and scale with the run's length.
    """

    normal_lambda: float = 0.05
    """Weight of the normal consistency loss (2DGS paper: 0.05)."""
    normal_start: int = 7000
    """The normal loss starts after this step (reference-run steps; 2DGS: 7000 of 30000)."""
    dist_lambda: Optional[float] = None
    """Weight of the L1 depth distortion on the paper's depth mapping; None: 1 for object scenes, 0.01 for
    unbounded or forward-facing ones (the 2DGS paper's 1000 / 10 are for its squared form, far stronger here)."""
    dist_start: int = 3000
    """The distortion loss starts after this step (reference-run steps; 2DGS: 3000 of 30000)."""
    dist_near: float = 0.05
    """Near depth of the paper's depth mapping in normalized scene units (2DGS: 0.2 with cameras about 4 out)."""
    scene_type: SceneType = "auto"
    """object (bounded, cameras around it) or unbounded (360 or forward-facing); auto follows the capture's layout."""
    depth_mode: Literal["median", "expected"] = "expected"
    """Depth whose normals the normal loss compares with (the 2DGS code's median for object scenes measured worse, see the module notes)."""
    reference_steps: int = 30_000
    """Run length the step fields are written for."""
    surfel_depth: Optional[Literal["center", "intersection"]] = None
    """Depth each surfel contributes in training renders: the ray-plane intersection (2DGS) or its centre's z
    (gsplat's kernels, the only one they have); None: intersection on the torch rasterizer, centre on gsplat."""

    def resolved(self, layout: str | None) -> "SurfelLossConfig":
        """A copy with ``scene_type`` fixed from a dataset layout (``Dataset.meta["layout"]``:
        ``"object"`` or ``"forward"``); a set ``scene_type`` is kept."""
        if self.scene_type != "auto":
            return dataclasses.replace(self)
        if layout not in ("object", "forward"):
            raise ValueError(f"layout must be 'object' or 'forward' to resolve scene_type 'auto', got {layout!r}")
        return dataclasses.replace(self, scene_type="object" if layout == "object" else "unbounded")

    def _scene(self) -> str:
        if self.scene_type not in ("object", "unbounded"):
            raise ValueError(
                f"scene_type must be 'object' or 'unbounded' here, got {self.scene_type!r}; call resolved(layout) first"
            )
        return self.scene_type

    def dist_weight(self) -> float:
        """The distortion weight this config means."""
        return DIST_LAMBDAS[self._scene()] if self.dist_lambda is None else float(self.dist_lambda)

    def normal_depth_mode(self) -> str:
        """``median`` or ``expected``: the depth the normal loss differentiates."""
        if self.depth_mode not in ("median", "expected"):
            raise ValueError(f"depth_mode must be 'median' or 'expected', got {self.depth_mode!r}")
        return self.depth_mode

    def start_steps(self, total_steps: int) -> tuple[int, int]:
        """``(normal_start, dist_start)`` scaled to a run of ``total_steps``; each loss runs at ``step > start``."""
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if self.reference_steps < 1:
            raise ValueError(f"reference_steps must be >= 1, got {self.reference_steps}")
        s = total_steps / self.reference_steps
        return int(round(self.normal_start * s)), int(round(self.dist_start * s))


# ---------------------------------------------------------------------------------------------- functions
def default_surfel_depth(device: torch.device | str, backend: str = "auto") -> str:
    """``intersection`` (the 2DGS paper's per-pixel ray-plane depth) wherever the torch rasterizer runs,
    ``center`` where gsplat's kernels would (CUDA tensors, backend ``auto`` or ``cuda``): they composite
    only centre depths. Centre depth is constant over a surfel's footprint, so its median depth is a
    staircase whose gradients (the normal loss's target) point anywhere; see the module notes."""
    return "center" if torch.device(device).type == "cuda" and backend != "torch" else "intersection"


def quats_from_normals(normals: Tensor) -> Tensor:
    """Unit quaternions ``[N, 4]`` (w, x, y, z) of the shortest rotations taking +z onto ``normals`` ``[N, 3]``."""
    if normals.ndim != 2 or normals.shape[1] != 3:
        raise ValueError(f"normals must have shape [N, 3], got {tuple(normals.shape)}")
    n = F.normalize(normals.to(torch.float32), dim=-1)
    w = 1.0 + n[:, 2:3]  # 1 + z . n
    axis = torch.stack([-n[:, 1], n[:, 0], torch.zeros_like(n[:, 0])], -1)  # z x n
    q = torch.cat([w, axis], -1)
    opposite = w[:, 0] < 1e-6  # n = -z: half a turn about x
    q[opposite] = torch.tensor([0.0, 1.0, 0.0, 0.0], device=q.device)
    return F.normalize(q, dim=-1)


def pca_normals(points: np.ndarray | Tensor, k: int = PCA_NEIGHBOURS) -> np.ndarray:
    """Unit normals ``[P, 3]`` of points ``[P, 3]``: the least-spread direction of each point's ``k`` nearest
    points (itself included). Sign is arbitrary (surfels are two-sided)."""
    from scipy.spatial import cKDTree

    pts = points.detach().cpu().numpy() if isinstance(points, Tensor) else np.asarray(points)
    pts = pts.astype(np.float64, copy=False)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f"points must have shape [P, 3], got {tuple(pts.shape)}")
    if pts.shape[0] < 3:
        raise ValueError(f"points needs at least 3 points to fit planes, got {pts.shape[0]}")
    kk = min(int(k), pts.shape[0])
    _, idx = cKDTree(pts).query(pts, k=kk, workers=-1)
    nb = torch.from_numpy(pts[idx])  # [P, k, 3]
    centred = nb - nb.mean(1, keepdim=True)
    cov = centred.transpose(1, 2) @ centred  # [P, 3, 3]
    _, vecs = torch.linalg.eigh(cov)  # ascending eigenvalues
    return vecs[:, :, 0].to(torch.float32).numpy()


# ---------------------------------------------------------------------------------------------- model
class SurfelModel(GaussianModel):
    """2D Gaussian surfels in gsplat's parameter layout (see the module docstring).

    ``render`` goes through :func:`scenezip.render.rasterization_2dgs.rasterization_2dgs`; its ``meta``
    holds every image the losses need, and ``meta[GRAD_KEY]`` is the tensor whose ``.grad`` drives
    densification.
    """

    METHOD = METHOD
    GRAD_KEY = "gradient_2dgs"
    is_surfel = True

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
        orient: Literal["pca", "random"] = "pca",
        seed: int = 0,
    ) -> "SurfelModel":
        """One surfel per point: tangent scales from the kNN distance (as 3DGS), a flat third axis, the
        normal from the neighbours' spread (``orient="pca"``) or a random rotation (``"random"``,
        gsplat's 2DGS; drawn from ``seed``).

        Args:
            points: ``[P, 3]`` positions (``P >= 3``).
            colors: ``[P, 3]`` colours, uint8 or float in [0, 1].
            sh_degree: maximum SH degree (0..3).
            init_opacity: initial opacity (after the sigmoid).
            init_scale: factor on the kNN scale.
        """
        pts = points.detach().cpu() if isinstance(points, Tensor) else torch.as_tensor(np.asarray(points))
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"points must have shape [P, 3], got {tuple(pts.shape)}")
        cols = colors.detach().cpu() if isinstance(colors, Tensor) else torch.as_tensor(np.asarray(colors))
        if tuple(cols.shape) != tuple(pts.shape):
            raise ValueError(f"colors must have shape {list(pts.shape)}, got {tuple(cols.shape)}")
        if not 0 <= sh_degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3, got {sh_degree}")
        if not 0.0 < init_opacity < 1.0:
            raise ValueError(f"init_opacity must be in (0, 1), got {init_opacity}")
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        if orient not in ("pca", "random"):
            raise ValueError(f"orient must be 'pca' or 'random', got {orient!r}")
        cols = cols.to(torch.float32) / 255.0 if cols.dtype == torch.uint8 else cols.to(torch.float32)
        n = pts.shape[0]
        dist = torch.from_numpy(knn_mean_distance(pts))
        tangent = torch.log(dist * init_scale)[:, None].repeat(1, 2)
        scales = torch.cat([tangent, torch.full((n, 1), math.log(FLAT_SCALE))], 1)
        if orient == "pca":
            quats = quats_from_normals(torch.from_numpy(pca_normals(pts)))
        else:
            quats = F.normalize(torch.randn(n, 4, generator=torch.Generator().manual_seed(seed)), dim=-1)
        opacities = torch.full((n,), math.log(init_opacity / (1.0 - init_opacity)))
        sh0 = rgb_to_sh0(cols.clamp(0.0, 1.0))[:, None, :]
        shN = torch.zeros(n, num_sh_bases(sh_degree) - 1, 3)
        return cls(pts.to(torch.float32), quats, scales, opacities, sh0, shN).to(device)

    @classmethod
    def from_gaussians(cls, model: GaussianModel) -> "SurfelModel":
        """Surfels with the parameters of ``model`` (copied; the third scale is taken as is)."""
        return cls(*(model.splats[k].detach() for k in PARAM_NAMES)).to(model.device)

    # ------------------------------------------------------------------ rendering
    def render(
        self,
        viewmats: Tensor,
        Ks: Tensor,
        width: int,
        height: int,
        sh_degree: int | None = None,
        backgrounds: Tensor | None = None,
        backend: Literal["auto", "torch", "cuda"] = "auto",
        render_mode: Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"] = "RGB",
        near_plane: float = 0.01,
        far_plane: float = 1e10,
        rasterize_mode: Literal["classic"] = "classic",
        distloss: bool = False,
        depth_mode: Literal["expected", "median"] = "expected",
        surfel_depth: Optional[Literal["center", "intersection"]] = None,
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor, dict]:
        """Render C cameras with the 2DGS rasterizer.

        Args:
            viewmats: ``[C, 4, 4]`` world-to-camera (OpenCV axes).
            Ks: ``[C, 3, 3]`` intrinsics in pixels.
            width, height: image size in pixels.
            sh_degree: SH degree to evaluate (default: all the model stores).
            backgrounds: ``[C, 3]`` colours behind the surfels, or None (black).
            render_mode: as :func:`rasterization_2dgs`.
            rasterize_mode: accepted for the 3DGS trainer's sake; surfels have only ``"classic"``.
            distloss: compute the depth distortion (needed by :meth:`extra_loss` once it is on).
            depth_mode: which depth ``render_normals_from_depth`` differentiates.
            surfel_depth: ``intersection`` (2DGS paper, torch only) or ``center`` (gsplat, both backends);
                None: :func:`default_surfel_depth` (intersection unless gsplat renders).
            kwargs: passed on to :func:`rasterization_2dgs` (``radius_clip``, ``eps2d``, ``tile_size``, ...).

        Returns:
            ``(colors [C, H, W, X], alphas [C, H, W, 1], meta)``; ``meta`` is the rasterizer's plus
            ``render_alphas`` ``[C, H, W, 1]``, ``render_normals`` ``[C, H, W, 3]`` (world space, weighted
            by alpha), ``render_normals_from_depth`` ``[C, H, W, 3]`` (unit, zero border),
            ``render_distort`` ``[C, H, W, 1]`` (zeros unless ``distloss``), ``render_median`` and
            ``render_depth`` (expected depth) ``[C, H, W, 1]``, and the flags ``distloss``, ``depth_mode``.
            ``meta[GRAD_KEY]`` (``gradient_2dgs``, ``[C, N, 2]``) carries the densification gradient.
        """
        from scenezip.render.rasterization_2dgs import rasterization_2dgs

        if rasterize_mode != "classic":
            raise ValueError(f"rasterize_mode must be 'classic' for 2D surfels, got {rasterize_mode!r}")
        degree = self.sh_degree if sh_degree is None else int(sh_degree)
        if not 0 <= degree <= self.sh_degree:
            raise ValueError(f"sh_degree must be in 0..{self.sh_degree}, got {sh_degree}")
        inner = "RGB+ED" if render_mode == "RGB" else render_mode
        if surfel_depth is None:
            surfel_depth = default_surfel_depth(self.means.device, backend)
        a = self.activated()
        out, alphas, normals, normals_from_depth, distort, median, meta = rasterization_2dgs(
            a["means"], a["quats"], a["scales"], a["opacities"], a["colors"], viewmats, Ks, int(width), int(height),
            near_plane=near_plane, far_plane=far_plane, sh_degree=degree, backgrounds=backgrounds,
            render_mode=inner, distloss=distloss, depth_mode=depth_mode, surfel_depth=surfel_depth,
            backend=backend, **kwargs,
        )  # fmt: skip
        depth = out[..., -1:]
        if inner in ("D", "RGB+D"):  # accumulated depth: divide by alpha as the rasterizer's expected depth does
            depth = depth / alphas.clamp_min(1e-10)
        colors = out[..., :-1] if render_mode == "RGB" else out
        meta = dict(
            meta,
            render_alphas=alphas,
            render_normals=normals,
            render_normals_from_depth=normals_from_depth,
            render_distort=distort,
            render_median=median,
            render_depth=depth,
            distloss=bool(distloss),
            depth_mode=depth_mode,
        )
        return colors, alphas, meta

    # ------------------------------------------------------------------ losses
    @staticmethod
    def loss_render_kwargs(step: int, total_steps: int, config: SurfelLossConfig) -> dict[str, Any]:
        """The :meth:`render` options :meth:`extra_loss` needs at ``step`` (1-based): ``distloss`` and
        ``depth_mode``. ``config`` must be resolved (:meth:`SurfelLossConfig.resolved`)."""
        _, dist_start = config.start_steps(total_steps)
        return {
            "distloss": config.dist_weight() > 0 and step > dist_start,
            "depth_mode": config.normal_depth_mode(),
            "surfel_depth": config.surfel_depth,  # None: SurfelModel.render picks by device and backend
        }

    @staticmethod
    def extra_loss(
        meta: Mapping[str, Any], step: int, total_steps: int, config: SurfelLossConfig
    ) -> tuple[Tensor, dict[str, float]]:
        """Normal consistency + depth distortion of one render (see the module docstring).

        Args:
            meta: the ``meta`` of :meth:`render` called with :meth:`loss_render_kwargs`.
            step: 1-based step; each loss is on once ``step`` passes its scaled start step.
            total_steps: length of the run (scales the start steps).
            config: a resolved :class:`SurfelLossConfig`.

        Returns:
            ``(loss, logs)``: the weighted sum (0-d tensor, differentiable) and ``{"normal", "distort"}``
            unweighted values (0.0 while a loss is off).
        """
        normal_start, dist_start = config.start_steps(total_steps)
        w_normal = float(config.normal_lambda) if step > normal_start else 0.0
        w_dist = config.dist_weight() if step > dist_start else 0.0
        alphas = meta["render_alphas"]
        loss = alphas.new_zeros(())
        logs = {"normal": 0.0, "distort": 0.0}
        if w_normal > 0:
            l_n = normal_consistency(meta["render_normals"], meta["render_normals_from_depth"], alphas)
            loss = loss + w_normal * l_n
            logs["normal"] = float(l_n.detach())
        if w_dist > 0:
            if not meta.get("distloss", False):
                raise ValueError("the depth distortion loss is on but the render has none: render with "
                                 "SurfelModel.loss_render_kwargs(step, total_steps, config)")  # fmt: skip
            l_d = depth_distortion(meta["render_distort"], meta["render_median"], meta["render_depth"], config.dist_near)
            loss = loss + w_dist * l_d
            logs["distort"] = float(l_d.detach())
        return loss, logs

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def to_plain(self, sh_degree: int | None = None):
        """:class:`scenezip.splatting.plain.PlainSplats` with ``surfel=True`` (unit quats; SH bands up to
        ``sh_degree``, default all)."""
        from scenezip.splatting.plain import PlainSplats

        degree = self.sh_degree if sh_degree is None else int(sh_degree)
        if not 0 <= degree <= self.sh_degree:
            raise ValueError(f"sh_degree must be in 0..{self.sh_degree}, got {sh_degree}")
        s = {k: v.detach().cpu().to(torch.float32) for k, v in self.splats.items()}
        return PlainSplats(
            s["means"].numpy(), F.normalize(s["quats"], dim=-1).numpy(), s["scales"].numpy(), s["opacities"].numpy(),
            s["sh0"].numpy(), s["shN"][:, : num_sh_bases(degree) - 1].numpy(), surfel=True,
        )  # fmt: skip

    # ------------------------------------------------------------------ save / load
    def to_dict(self) -> dict[str, Any]:
        """As :meth:`GaussianModel.to_dict`, with the surfel format name."""
        return dict(super().to_dict(), format=FORMAT, version=FORMAT_VERSION)

    @classmethod
    def from_dict(
        cls, data: Mapping[str, Any], device: torch.device | str = "cpu", source: str = "model"
    ) -> "SurfelModel":
        """Inverse of :meth:`to_dict`; ``source`` names the file in error messages."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise SceneFileError(f"{source}: not a scenezip 2D surfel model (format {FORMAT!r} expected)")
        if int(data.get("version", -1)) > FORMAT_VERSION:
            raise SceneFileError(f"{source}: model format version {data.get('version')} is newer than {FORMAT_VERSION}")
        as_3d = dict(data, format=_gaussians.FORMAT, version=_gaussians.FORMAT_VERSION)
        return super().from_dict(as_3d, device=device, source=source)  # builds cls


# ---------------------------------------------------------------------------------------------- losses
def normal_consistency(render_normals: Tensor, normals_from_depth: Tensor, alphas: Tensor) -> Tensor:
    """Mean over pixels of ``sum_i w_i (1 - n_i . N) = alpha - render_normals . N`` (2DGS Eq. 14).

    Args:
        render_normals: ``[..., H, W, 3]`` alpha-weighted surfel normals.
        normals_from_depth: ``[..., H, W, 3]`` unit normals of the rendered depth (zero where undefined:
            those pixels count 0).
        alphas: ``[..., H, W, 1]``.
    """
    if render_normals.shape != normals_from_depth.shape or render_normals.shape[-1] != 3:
        raise ValueError(f"render_normals and normals_from_depth must have one shape [..., H, W, 3], got "
                         f"{tuple(render_normals.shape)} and {tuple(normals_from_depth.shape)}")  # fmt: skip
    if alphas.shape != render_normals.shape[:-1] + (1,):
        raise ValueError(f"alphas must have shape {list(render_normals.shape[:-1]) + [1]}, got {tuple(alphas.shape)}")
    defined = (normals_from_depth.detach().norm(dim=-1) > 0.5).to(alphas.dtype)
    per_pixel = alphas[..., 0] - (render_normals * normals_from_depth).sum(-1)
    return (per_pixel * defined).mean()


def depth_distortion(distort: Tensor, median: Tensor, expected: Tensor, near: float) -> Tensor:
    """Mean over pixels of the distortion on the 2DGS depth mapping: ``distort * near / z^2`` with ``z`` the
    detached median depth (expected depth where no median exists), at least ``near``.

    Args:
        distort: ``[..., H, W, 1]`` ``sum_ij w_i w_j |z_i - z_j|`` in camera z.
        median, expected: ``[..., H, W, 1]`` depths.
        near: near depth of the mapping (> 0).
    """
    if not near > 0:
        raise ValueError(f"near must be > 0, got {near}")
    if distort.shape != median.shape or distort.shape != expected.shape:
        raise ValueError(f"distort, median and expected must have one shape, got {tuple(distort.shape)}, "
                         f"{tuple(median.shape)}, {tuple(expected.shape)}")  # fmt: skip
    z = torch.where(median > 0, median, expected).detach().clamp_min(near)
    return (distort * (near / (z * z))).mean()


# ---------------------------------------------------------------------------------------------- streams
def surfels_to_streams(model: SurfelModel) -> tuple[dict, dict[str, tuple[np.ndarray, str]]]:
    """``(metadata, streams)`` of a surfel model: the ``3dgs`` streams (raw float32) and ``surfel: true``."""
    from scenezip.splatting.streams import gaussians_to_streams

    if not isinstance(model, SurfelModel):
        raise ValueError(f"model must be a SurfelModel, got {type(model).__name__}")
    metadata, streams = gaussians_to_streams(model)
    return dict(metadata, surfel=True), streams


def surfels_from_streams(arrays: dict[str, np.ndarray], metadata: dict, source: str = "scene") -> SurfelModel:
    """Inverse of :func:`surfels_to_streams`; raises SceneFileError naming ``source`` on any mismatch."""
    from scenezip.splatting.streams import gaussians_from_streams

    if not isinstance(metadata, Mapping) or metadata.get("surfel") is not True:
        raise SceneFileError(f"{source}: 2dgs metadata must say surfel: true")
    try:
        model = gaussians_from_streams(arrays, dict(metadata), source)
    except SceneFileError as e:  # the shared checks name the 3dgs layout; this file is a 2dgs one
        raise SceneFileError(str(e).replace(": 3dgs ", ": 2dgs ", 1)) from None
    return SurfelModel.from_gaussians(model)


__all__ = [
    "FLAT_SCALE",
    "METHOD",
    "SurfelLossConfig",
    "SurfelModel",
    "default_surfel_depth",
    "depth_distortion",
    "normal_consistency",
    "pca_normals",
    "quats_from_normals",
    "surfels_from_streams",
    "surfels_to_streams",
]
