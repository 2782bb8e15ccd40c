"""What differs between the Gaussian methods inside one training loop: model, optimizers, loss terms.

:func:`scenezip.splatting.trainer.train` owns everything the methods share (image order, backgrounds,
L1 + D-SSIM, densification, checkpoints, resumption, evaluation); a *recipe* supplies the rest. The
recipe is chosen from the config's type (:func:`recipe_for`), so a new Gaussian method is one class here
and one config dataclass, not a copy of the trainer.

``Gaussian3DRecipe`` (``3dgs``) is Kerbl et al. 2023. ``C3DGSRecipe`` (``c3dgs --recipe joint``) adds the
Compact-3DGS recipe (Lee et al. 2024), written by hand from the paper and its published hyper-parameters
(the default ``c3dgs`` recipe, ``distill``, is the 3dgs recipe followed by a conversion:
:func:`scenezip.splatting.compress.train_distilled`):

- a mask logit per Gaussian (Adam, lr 0.01), the hard mask applied by straight-through estimation to
  scale and opacity inside :class:`~scenezip.splatting.c3dgs.C3DGSModel`, and ``mask_lambda`` times the mean
  soft mask added to the loss; masked Gaussians are pruned at every refinement and, after densification
  stops, every ``mask_prune_every`` steps;
- the hash-grid colour field (one Adam for table and MLP, lr 0.01, a 100-step linear warm-up from 1% and
  x0.33 at 1/6, 1/2 and 5/6 of the run: the paper's 5k/15k/25k of 30k) in place of SH;
- residual VQ of the activated scale and the unit quaternion from ``rvq_start`` (29k of 30k), codebooks
  initialized by k-means on first use and trained by their codebook loss (Adam, ``lr_codebooks``).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from scenezip.errors import ScenezipError
from scenezip.scenes.dataset import Dataset
from scenezip.splatting.config import C3DGSConfig, GaussianTrainConfig, SurfelTrainConfig, TrainConfig


def _adam(params: list, lr: float, name: str) -> torch.optim.Adam:
    return torch.optim.Adam([{"params": params, "lr": lr, "name": name}], eps=1e-15, betas=(0.9, 0.999))


class Gaussian3DRecipe:
    """3D Gaussian splatting with SH colours (the ``3dgs`` method)."""

    method = "3dgs"
    model_file = "gaussians.pt"
    grad_key = "means2d"

    def __init__(self, config: GaussianTrainConfig, schedule_steps: Callable[[int], int] | None = None) -> None:
        self.config = config
        self.scaled = schedule_steps or (lambda v: v)

    # ------------------------------------------------------------------ checks and models
    def prepare(self, ds: Dataset) -> None:
        """Settle what depends on the capture (called once the dataset is loaded, before any model)."""

    def check(self) -> None:
        c = self.config
        if not 0 <= c.sh_degree <= 3:
            raise ScenezipError(f"sh_degree must be in 0..3, got {c.sh_degree}")
        for name in ("lr_sh0", "lr_shN"):
            if not getattr(c, name) > 0:
                raise ScenezipError(f"{name} must be > 0, got {getattr(c, name)}")

    def init_model(self, ds: Dataset, device: torch.device) -> Any:
        from scenezip.splatting.gaussians import GaussianModel

        c = self.config
        return GaussianModel.from_points(
            ds.points, ds.point_colors, c.sh_degree, c.init_opacity, c.init_scale, device=device
        )

    def model_from_dict(self, data: Mapping[str, Any], device: torch.device, source: str) -> Any:
        from scenezip.splatting.gaussians import GaussianModel

        return GaussianModel.from_dict(data, device=device, source=source)

    def optimizers(self, model: Any, extent: float) -> dict[str, torch.optim.Adam]:
        """One Adam per parameter (as 3DGS and gsplat), eps 1e-15."""
        c = self.config
        lrs = {"means": c.lr_means * extent, "quats": c.lr_quats, "scales": c.lr_scales,
               "opacities": c.lr_opacities, "sh0": c.lr_sh0, "shN": c.lr_shN}  # fmt: skip
        return {name: _adam([model.splats[name]], lr, name) for name, lr in lrs.items()}

    def prune_fn(self, model: Any) -> Callable | None:
        return None

    # ------------------------------------------------------------------ one step
    def before_step(self, model: Any, optimizers: Mapping[str, torch.optim.Optimizer], step: int) -> None:
        """Learning-rate schedules and switches that depend on the step (the means' rate is the trainer's)."""

    def render(self, model: Any, cam: Any, width: int, height: int, bg: Tensor, step: int, sh_degree: int,
               render_kw: Mapping[str, Any]) -> tuple[Tensor, Mapping[str, Any], Tensor | None]:  # fmt: skip
        """``(image [H, W, 3], meta for densification, extra loss or None)`` of one training camera."""
        colors, _, meta = model.render(cam.viewmats, cam.Ks, width, height, sh_degree=sh_degree,
                                       backgrounds=bg[None], **render_kw)  # fmt: skip
        return colors[0, ..., :3], meta, None

    def after_step(self, model: Any, optimizers: Mapping[str, torch.optim.Optimizer], step: int,
                   controller: Any) -> dict[str, int]:  # fmt: skip
        """Work after the densification step (e.g. mask pruning); returns counts for the progress info."""
        return {}

    def final_model(self, model: Any) -> Any:
        """The model whose quality the run reports: what the method's file will hold."""
        return model


class C3DGSRecipe(Gaussian3DRecipe):
    """Compact-3DGS (the ``c3dgs`` method); see the module docstring. Taken further here:

    - with ``hash_codec`` the colour field reads its hash table through a
      :class:`~scenezip.fields.hash_codec.HashTableCompressor` (entry masks from the start, per-level
      learned-step quantization from ``hash_qat_start``; its own Adam) and ``hash_rate_lambda`` times its
      estimated bits per parameter joins the loss, so the file stores the table the loop rendered with;
    - the colour field's warm-up is ``color_warmup`` actual steps and its decay points are fractions of the
      run (``color_lr_decay_at``); the colour MLP is 32 wide on small captures.
    """

    method = "c3dgs"
    model_file = "model.pt"

    def check(self) -> None:
        c = self.config
        if c.mask_lambda < 0:
            raise ScenezipError(f"mask_lambda must be >= 0, got {c.mask_lambda}")
        for name in ("lr_masks", "lr_color_grid", "lr_color_mlp", "lr_codebooks"):
            if not getattr(c, name) > 0:
                raise ScenezipError(f"{name} must be > 0, got {getattr(c, name)}")
        if c.rvq_stages < 1 or not 1 <= c.rvq_codebook_size <= 65536:
            raise ScenezipError(
                f"rvq_stages must be >= 1 and rvq_codebook_size in 1..65536, got {c.rvq_stages}, {c.rvq_codebook_size}"
            )
        if c.color_log2_hashmap_size is not None and not 8 <= c.color_log2_hashmap_size <= 24:
            raise ScenezipError(f"color_log2_hashmap_size must be in 8..24, got {c.color_log2_hashmap_size}")
        if c.mask_prune_every < 1:
            raise ScenezipError(f"mask_prune_every must be >= 1, got {c.mask_prune_every}")
        if c.hash_zero_threshold < 0:
            raise ScenezipError(f"hash_zero_threshold must be >= 0, got {c.hash_zero_threshold}")
        if c.hash_rate_lambda < 0 or not 2 <= c.hash_bits <= 16 or c.hash_qat_start < 0 or c.color_warmup < 0:
            raise ScenezipError(
                f"hash_rate_lambda, hash_qat_start and color_warmup must be >= 0 and hash_bits in 2..16, got "
                f"{c.hash_rate_lambda}, {c.hash_qat_start}, {c.color_warmup}, {c.hash_bits}"
            )
        for name in ("lr_hash_mask", "lr_hash_step"):
            if not getattr(c, name) > 0:
                raise ScenezipError(f"{name} must be > 0, got {getattr(c, name)}")
        if c.color_hidden_dim is not None and c.color_hidden_dim < 1:
            raise ScenezipError(f"color_hidden_dim must be >= 1, got {c.color_hidden_dim}")
        if c.position_bits is not None and not 1 <= c.position_bits <= 21:
            raise ScenezipError(f"position_bits must be in 1..21, got {c.position_bits}")

    def color_config(self, ds: Dataset) -> Any:
        from scenezip.fields.color_field import ColorFieldConfig

        c = self.config
        log2 = c.color_log2_hashmap_size
        pixels = int(ds.cameras.widths[0]) * int(ds.cameras.heights[0])
        if log2 is None:
            log2 = 14 if pixels < 65536 else 16 if ds.meta.get("layout") == "object" else 19
        hidden = c.color_hidden_dim if c.color_hidden_dim is not None else 32 if pixels < 65536 else 64
        return ColorFieldConfig(n_levels=c.color_levels, log2_hashmap_size=int(log2),
                                view_sh_degree=c.color_view_sh_degree, hidden_dim=int(hidden),
                                output="sh0" if c.color_dc else "sigmoid")  # fmt: skip

    def init_model(self, ds: Dataset, device: torch.device) -> Any:
        from scenezip.splatting.c3dgs import C3DGSModel
        from scenezip.splatting.gaussians import GaussianModel

        c = self.config
        g = GaussianModel.from_points(ds.points, ds.point_colors, 0, c.init_opacity, c.init_scale)
        return C3DGSModel.from_gaussians(g, **self.model_options(ds)).to(device)

    def model_options(self, ds: Dataset) -> dict[str, Any]:
        """Keyword arguments of a fresh model of this config (colour field, bounds, R-VQ, codecs), shared by
        the recipes whose models subclass :class:`~scenezip.splatting.c3dgs.C3DGSModel`."""
        c = self.config
        return dict(
            color_config=self.color_config(ds), bounds=torch.as_tensor(np.asarray(ds.bounds, dtype=np.float32)),
            init_rvq=False, use_rvq=False, rvq_stages=c.rvq_stages, rvq_codebook_size=c.rvq_codebook_size,
            backend="auto", seed=c.seed, hash_codec=self.hash_codec_settings(), position_bits=c.position_bits,
            color_dc=c.color_dc, dc_stages=c.dc_stages, rot_stages=c.rot_stages,
        )  # fmt: skip

    def hash_codec_settings(self) -> dict | None:
        """Settings of the model's training-time hash codec (None without ``hash_codec``)."""
        c = self.config
        if not c.hash_codec:
            return None
        return {"bits": c.hash_bits, "mask_start": 0, "qat_start": self.scaled(c.hash_qat_start)}

    def model_from_dict(self, data: Mapping[str, Any], device: torch.device, source: str) -> Any:
        from scenezip.splatting.c3dgs import C3DGSModel

        return C3DGSModel.from_dict(dict(data), device=device, source=source)

    def optimizers(self, model: Any, extent: float) -> dict[str, torch.optim.Adam]:
        c = self.config
        lrs = {"means": c.lr_means * extent, "quats": c.lr_quats, "scales": c.lr_scales,
               "opacities": c.lr_opacities, "masks": c.lr_masks, "sh0": c.lr_sh0}  # fmt: skip
        opts = {name: _adam([model.splats[name]], lr, name) for name, lr in lrs.items() if name in model.splats}
        opts["color"] = torch.optim.Adam(
            model.color_field.param_groups(c.lr_color_grid, c.lr_color_mlp), eps=1e-15, betas=(0.9, 0.999)
        )
        books = [vq.codebooks for vq in (model.scale_vq, model.rot_vq, model.dc_vq) if vq is not None]
        opts["codebooks"] = _adam(books, c.lr_codebooks, "codebooks")
        if getattr(model, "hash_codec", None) is not None:
            opts["hash_codec"] = torch.optim.Adam(
                model.hash_codec.param_groups(c.lr_hash_mask, c.lr_hash_step), eps=1e-15, betas=(0.9, 0.999)
            )
        return opts

    def prune_fn(self, model: Any) -> Callable:
        from scenezip.quant.mask import keep_mask

        return lambda params: ~keep_mask(params["masks"], model.mask_threshold)

    def color_lr_factor(self, step: int) -> float:
        """Compact-3DGS' colour-field schedule at ``step``: warm-up, then x0.33 at 1/6, 1/2 and 5/6."""
        total = self.config.steps
        warmup = self.config.color_warmup
        warm = min(1.0, 0.01 + 0.99 * step / warmup) if warmup > 0 else 1.0
        drops = sum(step >= round(total * f) for f in self.config.color_lr_decay_at)
        return warm * 0.33**drops

    def rvq_active(self, step: int) -> bool:
        return step >= self.scaled(self.config.rvq_start)

    def before_step(self, model: Any, optimizers: Mapping[str, torch.optim.Optimizer], step: int) -> None:
        c = self.config
        f = self.color_lr_factor(step)
        for group in optimizers["color"].param_groups:
            group["lr"] = (c.lr_color_grid if group["name"] == "color_grid" else c.lr_color_mlp) * f
        model.use_rvq = self.rvq_active(step)
        if getattr(model, "hash_codec", None) is not None:
            model.hash_codec.set_step(step)

    def render(self, model: Any, cam: Any, width: int, height: int, bg: Tensor, step: int, sh_degree: int,
               render_kw: Mapping[str, Any]) -> tuple[Tensor, Mapping[str, Any], Tensor | None]:  # fmt: skip
        from scenezip.quant.mask import soft_mask

        colors, _, meta = model.render(cam.viewmats, cam.Ks, width, height, backgrounds=bg[None], **render_kw)
        extra = self.config.mask_lambda * soft_mask(model.splats["masks"]).mean() + meta["rvq_loss"]
        if self.config.hash_rate_lambda > 0 and getattr(model, "hash_codec", None) is not None:
            extra = extra + self.config.hash_rate_lambda * model.hash_rate_loss()
        return colors[0, ..., :3], meta["cameras"][0], extra

    def after_step(self, model: Any, optimizers: Mapping[str, torch.optim.Optimizer], step: int,
                   controller: Any) -> dict[str, int]:  # fmt: skip
        from scenezip.quant.mask import keep_mask
        from scenezip.splatting.densify import remove

        sch = controller.schedule
        every = max(1, self.scaled(self.config.mask_prune_every))
        if step <= sch.refine_stop or step % every != 0:
            return {}
        drop = ~keep_mask(model.splats["masks"], model.mask_threshold)
        if bool(drop.all()) or not bool(drop.any()):
            return {}
        return {"mask_pruned": remove(model.splats, optimizers, drop, controller.stats)}

    def final_model(self, model: Any) -> Any:
        # The R-VQ codebooks are refitted by k-means to the final attributes before coding (in place, so the
        # saved model and the file agree). Measured on lego (100 px, 2000 steps, 25 test views): the codebooks
        # trained in the run's last 1/30 decode to 28.31 dB, refitted ones to 29.92 dB (the float model: 29.91);
        # the Adam step of the codebooks (1e-3) is as large as the scales themselves in normalized scene units.
        model.init_rvq()
        return model.quantized_copy(self.config.hash_zero_threshold)


class SurfelRecipe(Gaussian3DRecipe):
    """2D Gaussian surfels (the ``2dgs`` method, Huang et al. 2024): the 3DGS loop with the 2DGS
    rasterizer and the normal-consistency and depth-distortion losses of
    :class:`~scenezip.splatting.surfels.SurfelModel`, on the schedule of :class:`SurfelLossConfig`."""

    method = "2dgs"
    model_file = "surfels.pt"

    def __init__(self, config: GaussianTrainConfig, schedule_steps: Callable[[int], int] | None = None) -> None:
        from scenezip.splatting.surfels import SurfelModel

        super().__init__(config, schedule_steps)
        self.grad_key = SurfelModel.GRAD_KEY
        self.loss_config = None

    def prepare(self, ds: Dataset) -> None:
        cfg = self.config.surfel
        layout = ds.meta.get("layout", "object" if ds.format == "blender" else "forward")
        try:
            self.loss_config = cfg.resolved(layout if layout in ("object", "forward") else "forward")
        except ValueError as e:
            raise ScenezipError(str(e)) from None

    def init_model(self, ds: Dataset, device: torch.device) -> Any:
        from scenezip.splatting.surfels import SurfelModel

        c = self.config
        return SurfelModel.from_points(
            ds.points, ds.point_colors, c.sh_degree, c.init_opacity, c.init_scale, device=device, seed=c.seed
        )

    def model_from_dict(self, data: Mapping[str, Any], device: torch.device, source: str) -> Any:
        from scenezip.splatting.surfels import SurfelModel

        return SurfelModel.from_dict(data, device=device, source=source)

    def render(self, model: Any, cam: Any, width: int, height: int, bg: Tensor, step: int, sh_degree: int,
               render_kw: Mapping[str, Any]) -> tuple[Tensor, Mapping[str, Any], Tensor | None]:  # fmt: skip
        total = self.config.steps
        kw = {k: v for k, v in render_kw.items() if k != "rasterize_mode"}
        colors, _, meta = model.render(cam.viewmats, cam.Ks, width, height, sh_degree=sh_degree, backgrounds=bg[None],
                                       **kw, **model.loss_render_kwargs(step, total, self.loss_config))  # fmt: skip
        extra, _ = model.extra_loss(meta, step, total, self.loss_config)
        return colors[0, ..., :3], meta, extra


RECIPES: dict[type, type[Gaussian3DRecipe]] = {
    TrainConfig: Gaussian3DRecipe, C3DGSConfig: C3DGSRecipe, SurfelTrainConfig: SurfelRecipe,
}  # fmt: skip


def recipe_for(config: GaussianTrainConfig, schedule_steps: Callable[[int], int] | None = None) -> Gaussian3DRecipe:
    """The recipe of ``config``'s class (or of its nearest registered base class)."""
    for cls in type(config).__mro__:
        if cls in RECIPES:
            return RECIPES[cls](config, schedule_steps)
    raise ScenezipError(f"no training recipe for {type(config).__name__}")


def scaled_steps(config: GaussianTrainConfig) -> Callable[[int], int]:
    """Map a reference-run step count (30k schedule) to this run, as the densification schedule does."""
    d = config.densify
    factor = d.schedule_scale if d.schedule_scale is not None else config.steps / d.reference_steps
    return lambda v: max(1, int(round(v * factor)))
