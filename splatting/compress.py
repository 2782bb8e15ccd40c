"""Compress trained Gaussians after the fact: any 3dgs model (ours, or a PLY from another tool) to c3dgs.

``scenezip compress`` takes a training run, a checkpoint, a model file or an INRIA-layout PLY. A c3dgs
model is coded as it is; a 3dgs model is converted here, written by hand for lack of a library that does
it:

1. prune: Gaussians with opacity below ``prune_opacity`` are dropped (they are invisible);
2. colour: a hash-grid colour field (:class:`~scenezip.fields.color_field.ColorField`) is *distilled* from
   the SH colours: random (Gaussian, view direction) pairs, Adam on the mean squared difference between
   the field's colour and the clamped SH colour ``max(SH(d) + 0.5, 0)`` the rasterizer would use; the
   RMS error on held-out pairs is reported. By default (``color_dc``) each Gaussian keeps its DC colour as
   the c3dgs base colour (R-VQ'd, 3 stages) and the field only learns the view-dependent rest: on lego
   (100 px, 37k Gaussians) dropping the higher SH bands costs 1.55 dB and 3-stage R-VQ of the DC 0.004 dB,
   while a field that learns all of the colour lost 1.3-1.9 dB. The field reads its table through the model's hash codec
   (:mod:`scenezip.fields.hash_codec`: entry masks, per-level quantization from half-way) with
   ``rate_lambda`` times its estimated bits per parameter added to the loss, so the table is stored as
   distilled and costs what the rate term allowed;
3. geometry: R-VQ codebooks for scale, rotation (and base colour) fitted by k-means (at coding time);
4. optional fine-tuning on the capture (``--data``): the c3dgs trainer continues from the converted
   model without densification, with R-VQ active in the second half and the codebooks refitted by k-means
   at the end (as every c3dgs run, see ``C3DGSRecipe.final_model``); the hash table's rate term is off by
   default (``scenezip compress --finetune-hash-rate-lambda``).

Everything is then coded by :meth:`~scenezip.splatting.c3dgs.C3DGSModel.to_streams`.

:func:`train_distilled` is the ``c3dgs`` training recipe ``distill``: the 3dgs loop with SH colours, then
this conversion guided by the capture's training views (:func:`view_guidance`), written as a c3dgs run.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scenezip.errors import ScenezipError, SceneFileError
from scenezip.fields.color_field import ColorFieldConfig
from scenezip.render.sh import spherical_harmonics
from scenezip.splatting.c3dgs import DC_STAGES, MODEL_FORMAT, C3DGSModel
from scenezip.splatting.gaussians import FORMAT as GAUSSIANS_FORMAT
from scenezip.splatting.gaussians import GaussianModel


# Weight of the hash table's bits per parameter against the colour MSE when distilling. Measured on lego (100 px,
# a 37k-Gaussian 3dgs PLY that renders 30.61 dB on 25 test views; no fine-tuning, 16-bit positions): with base
# colours, 3e-3 -> 29.61 dB in 580 kB (the table shrinks to 1 kB), 1e-3 (2^16 table) -> 30.16 dB in 601 kB,
# 1e-4 -> 30.29 dB in 623 kB (a 44 kB table). The field alone (no base colours) needs the stronger 3e-3.
DISTILL_RATE_LAMBDA = 1e-4
DISTILL_RATE_LAMBDA_NO_DC = 3e-3
# With samples guided by the training views (blend weights, camera directions) the same weight keeps a larger
# table (lego, the 40k-Gaussian run at 30.82 dB, 3 + 3 R-VQ stages, 2% of the blend weight pruned: 1e-4 -> 383 kB at
# 30.54 dB, 2e-4 -> 312 kB at 30.47 dB); 2e-4 is the better trade there (benchmarks/results/prune_weight_lego.md).
DISTILL_RATE_LAMBDA_GUIDED = 2e-4
# R-VQ stages of scale and rotation for a conversion. On the same lego run, each attribute alone quantized in the
# float 3dgs model: scale 6 stages 31.7 bits a Gaussian (-0.000 dB), 4: 21.7 (-0.002), 3: 16.4 (-0.011), 2: 11.2
# (-0.082); rotation 4 stages 21.4 bits (-0.005 dB), 3: 16.2 (-0.013), 2: 10.9 (-0.062) (benchmarks/attribute_quant.py).
CONVERT_SCALE_STAGES = 3
CONVERT_ROT_STAGES = 3


def load_trained(path: str | os.PathLike, device: str | torch.device = "cpu") -> Any:
    """A trained model from a run folder (``model.pt``, ``gaussians.pt`` or the newest checkpoint), a
    checkpoint or model file, or an INRIA-layout ``.ply``: a :class:`GaussianModel` or :class:`C3DGSModel`."""
    path = Path(path)
    if path.is_dir():
        from scenezip.splatting.trainer import checkpoint_paths

        for name in ("model.pt", "gaussians.pt"):
            if (path / name).is_file():
                return load_trained(path / name, device)
        ckpts = checkpoint_paths(path)
        if not ckpts:
            raise ScenezipError(f"{path}: no model.pt, gaussians.pt or ckpt_XXXXX.pt in this folder")
        return load_trained(ckpts[-1][1], device)
    if not path.is_file():
        raise ScenezipError(f"{path}: no such file or folder")
    if path.suffix.lower() == ".ply":
        from scenezip.scenes.ply import read_ply_gaussians

        a = read_ply_gaussians(path)
        t = {k: torch.from_numpy(np.ascontiguousarray(a[k], dtype=np.float32))
             for k in ("means", "quats", "scales", "opacities", "sh0", "shN")}  # fmt: skip
        return GaussianModel(t["means"], t["quats"], t["scales"], t["opacities"], t["sh0"], t["shN"]).to(device)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise SceneFileError(f"{path}: cannot read a model ({type(e).__name__}: {e})") from None
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = data["model"]  # a training checkpoint
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == GAUSSIANS_FORMAT:
        return GaussianModel.from_dict(data, device=device, source=str(path))
    if fmt == MODEL_FORMAT:
        return C3DGSModel.from_dict(data, device=device, source=str(path))
    raise SceneFileError(f"{path}: not a scenezip model or checkpoint (format {fmt!r})")


def auto_color_config(n_gaussians: int, levels: int = 16, log2_hashmap_size: int | None = None,
                      color_dc: bool = True) -> ColorFieldConfig:  # fmt: skip
    """Colour field for a post-hoc conversion: the table grows with the Gaussian count (2^10 .. 2^19 a level);
    the MLP is 32 wide under 16384 Gaussians (its float16 bytes, 14.7 kB at width 64, matter there), else 64.
    With ``color_dc`` the field corrects the kept DC colours, so its head is ``"sh0"`` (3DGS' DC formula)."""
    if log2_hashmap_size is None:
        log2_hashmap_size = int(min(19, max(10, round(math.log2(max(n_gaussians, 2))) - 1)))
    hidden = 32 if n_gaussians < 16384 else 64
    return ColorFieldConfig(n_levels=levels, log2_hashmap_size=log2_hashmap_size, hidden_dim=hidden,
                            output="sh0" if color_dc else "sigmoid")  # fmt: skip


def robust_bounds(means: torch.Tensor, lo_q: float = 0.01, hi_q: float = 0.99) -> torch.Tensor:
    """``[2, 3]`` box of the central quantiles of the means (outliers are contracted by the field)."""
    m = means.detach().float().cpu()
    if m.shape[0] > 1 << 20:
        m = m[torch.randperm(m.shape[0], generator=torch.Generator().manual_seed(0))[: 1 << 20]]
    lo, hi = torch.quantile(m, lo_q, dim=0), torch.quantile(m, hi_q, dim=0)
    pad = (hi - lo).clamp_min(1e-3) * 0.05
    return torch.stack([lo - pad, hi + pad])


def _sh_colors(source: GaussianModel, idx: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    coeffs = torch.cat([source.splats["sh0"][idx], source.splats["shN"][idx]], dim=1).detach()
    return torch.clamp_min(spherical_harmonics(source.sh_degree, dirs, coeffs) + 0.5, 0.0)


def distill_color_field(
    model: C3DGSModel,
    source: GaussianModel,
    steps: int = 1000,
    batch: int = 1 << 14,
    lr: float = 1e-2,
    seed: int = 0,
    progress: bool = True,
    rate_lambda: float = 0.0,
    gaussian_weights: torch.Tensor | None = None,
    view_origins: torch.Tensor | None = None,
) -> float:
    """Fit ``model.color_field`` to the SH colours of ``source`` (same Gaussians, same order); with a hash
    codec on ``model``, through it, plus ``rate_lambda`` times its rate term.

    Pairs (Gaussian, view direction) are drawn at random: Gaussians uniformly, or in proportion to
    ``gaussian_weights`` ``[N]`` (e.g. their blend weights in the training views, so the field spends its
    capacity where the images need it); directions uniformly on the sphere, or from one of
    ``view_origins`` ``[V, 3]`` (camera centres) to the Gaussian, the directions it is seen from.

    Returns the RMS colour error (0..1 units) on 4096 held-out pairs drawn the same way, with the table as
    the file will hold it."""
    from tqdm.auto import tqdm

    if len(model) != len(source):
        raise ValueError(f"model and source hold {len(model)} and {len(source)} Gaussians")
    dev = model.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    field = model.color_field
    codec = model.hash_codec
    groups = field.param_groups(lr, lr) + ([] if codec is None else codec.param_groups(1e-2, 1e-4))
    opt = torch.optim.Adam(groups, eps=1e-15)
    n = len(model)

    def colors(idx: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        return model.colors(d, idx)

    probs = None
    if gaussian_weights is not None:
        if gaussian_weights.shape != (n,):
            raise ValueError(f"gaussian_weights must have shape [{n}], got {tuple(gaussian_weights.shape)}")
        probs = gaussian_weights.detach().double().clamp_min(0).cpu()
        probs = probs / probs.sum() if float(probs.sum()) > 0 else None
    origins = None if view_origins is None else view_origins.detach().float().cpu().reshape(-1, 3)
    means = source.splats["means"].detach().float().cpu()

    def pairs(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if probs is None:
            idx = torch.randint(0, n, (k,), generator=gen)
        else:
            idx = torch.multinomial(probs, k, replacement=True, generator=gen)
        if origins is None or origins.shape[0] == 0:
            d = torch.randn(k, 3, generator=gen)
        else:
            d = means[idx] - origins[torch.randint(0, origins.shape[0], (k,), generator=gen)]
        return idx.to(dev), torch.nn.functional.normalize(d, dim=-1).to(dev)

    for step in tqdm(range(steps), desc="distil colour", disable=not progress, dynamic_ncols=True):
        for g in opt.param_groups:
            if g["name"].startswith("color_"):
                g["lr"] = lr * (0.1 ** (step / max(steps, 1)))
        if codec is not None:
            codec.set_step(step)
        idx, d = pairs(min(batch, max(n, 1) * 4))
        loss = torch.mean((colors(idx, d) - _sh_colors(source, idx, d)) ** 2)
        if codec is not None and rate_lambda > 0:
            loss = loss + rate_lambda * model.hash_rate_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        idx, d = pairs(4096)
        if codec is not None:
            codec.set_step(max(steps, codec.qat_start))  # the table as stored: masked and quantized
        err = torch.sqrt(torch.mean((colors(idx, d) - _sh_colors(source, idx, d)) ** 2))
    return float(err)


def gaussians_to_c3dgs(
    source: GaussianModel,
    color_config: ColorFieldConfig | None = None,
    prune_opacity: float = 0.005,
    distill_steps: int = 1000,
    rvq_stages: int = CONVERT_SCALE_STAGES,
    rvq_codebook_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    hash_rate_lambda: float | None = None,
    color_dc: bool = True,
    rot_stages: int | None = CONVERT_ROT_STAGES,
    gaussian_weights: torch.Tensor | None = None,
    view_origins: torch.Tensor | None = None,
    dc_stages: int = DC_STAGES,
) -> tuple[C3DGSModel, dict[str, Any]]:
    """Convert a 3dgs model to c3dgs (see the module docstring). Returns ``(model, report)`` with the
    counts before and after pruning and the distillation RMS error. ``hash_rate_lambda`` weighs the hash
    table's rate term in the distillation (0: no training-time codec; the table is then coded with
    Compact-3DGS' zeroing of small values; None: :data:`DISTILL_RATE_LAMBDA` (:data:`DISTILL_RATE_LAMBDA_GUIDED`
    with guided samples), or :data:`DISTILL_RATE_LAMBDA_NO_DC`
    without base colours). ``color_dc``: keep each Gaussian's DC colour (R-VQ'd, ``dc_stages`` stages) and
    distil only the view-dependent rest into the field. ``gaussian_weights`` (``[N]``, of ``source``'s
    Gaussians) and ``view_origins`` steer the distillation's samples (:func:`distill_color_field`)."""
    if not isinstance(source, GaussianModel):
        raise ValueError(f"source must be a GaussianModel, got {type(source).__name__}")
    n0 = len(source)
    keep = torch.sigmoid(source.splats["opacities"].detach()) >= prune_opacity
    if not bool(keep.any()):
        raise ScenezipError(f"every Gaussian has opacity below prune_opacity={prune_opacity}")
    kept = source.subset(keep)
    cfg = color_config or auto_color_config(len(kept), color_dc=color_dc)
    if hash_rate_lambda is None:
        guided = gaussian_weights is not None or view_origins is not None
        hash_rate_lambda = (DISTILL_RATE_LAMBDA_GUIDED if guided else DISTILL_RATE_LAMBDA) if color_dc else DISTILL_RATE_LAMBDA_NO_DC
    codec = {"bits": 8, "mask_start": 0, "qat_start": distill_steps // 2} if hash_rate_lambda > 0 else None
    model = C3DGSModel.from_gaussians(kept, cfg, robust_bounds(kept.means), init_rvq=False, use_rvq=False,
                                      rvq_stages=rvq_stages, rvq_codebook_size=rvq_codebook_size, rot_stages=rot_stages,
                                      backend="auto", seed=seed, hash_codec=codec, color_dc=color_dc,
                                      dc_stages=dc_stages)  # fmt: skip
    if gaussian_weights is not None and tuple(gaussian_weights.shape) != (n0,):
        raise ValueError(f"gaussian_weights must have shape [{n0}], got {tuple(gaussian_weights.shape)}")
    weights = None if gaussian_weights is None else gaussian_weights.detach().cpu()[keep.cpu()]
    rms = distill_color_field(model, kept, steps=distill_steps, seed=seed, progress=progress,
                              rate_lambda=hash_rate_lambda, gaussian_weights=weights, view_origins=view_origins)  # fmt: skip
    model.init_rvq()
    model.use_rvq = True
    return model, {"n_input": n0, "n_kept": len(kept), "distill_rms": rms,
                   "color_log2_hashmap_size": cfg.log2_hashmap_size}  # fmt: skip


def view_guidance(model: GaussianModel, ds: Any, prune_weight: float, from_views: bool, backend: str = "auto",
                  progress: bool = True) -> tuple[GaussianModel, torch.Tensor | None, torch.Tensor | None]:  # fmt: skip
    """``(model, weights, origins)`` for a 3dgs ``model`` and the capture ``ds``: the model without the
    Gaussians holding the smallest ``prune_weight`` share of the training views' blend weight, the kept
    Gaussians' blend weights and the training camera centres (None unless ``from_views``)."""
    from scenezip.splatting.importance import gaussian_blend_weights, weight_budget_keep

    if ds is None or not (prune_weight > 0 or from_views):
        return model, None, None
    train_ids = ds.indices("train")
    w = gaussian_blend_weights(model, [ds.cameras[int(i)] for i in train_ids], backend=backend, progress=progress)
    if prune_weight > 0:
        keep = weight_budget_keep(w, prune_weight)
        share = float(w[~keep].sum() / w.sum())
        print(f"pruned {int((~keep).sum()):,} of {len(model):,} Gaussians holding {share:.2%} of the training views' "
              "blend weight")  # fmt: skip
        model = model.subset(keep)
        w = w[keep]
    if not from_views:
        return model, None, None
    return model, w.float(), ds.cameras.centers[torch.as_tensor(train_ids)].float()


SH_STAGE_DIR = "sh"  # recipe distill: the SH stage's run folder inside the c3dgs run folder


def sh_stage_config(config: Any) -> Any:
    """The 3dgs :class:`~scenezip.splatting.config.TrainConfig` of a distill run's SH stage: every shared option
    of ``config`` (a :class:`~scenezip.splatting.config.C3DGSConfig`), the SH ones, and ``out/sh``."""
    from scenezip.splatting.config import GaussianTrainConfig, TrainConfig

    shared = {f.name: getattr(config, f.name) for f in fields(GaussianTrainConfig)}
    shared["out"] = Path(config.out) / SH_STAGE_DIR
    return TrainConfig(**shared, sh_degree=config.sh_degree, lr_sh0=config.lr_sh0, lr_shN=config.lr_shN)


def train_distilled(config: Any, dataset: Any = None, on_step: Any = None) -> Any:
    """Recipe ``distill`` of ``c3dgs``: train 3D Gaussians with SH colours (the 3dgs loop, in ``out/sh``, with
    its checkpoints and ``resume``), then convert them as ``scenezip compress --data`` does: prune by blend
    weight, distil the colour field on samples drawn as the training views see the scene, fit the R-VQ
    codebooks. Writes ``model.pt``, ``config.json`` and ``metrics.json`` (of the quantized model, i.e. of the
    file) into ``out``; returns a :class:`~scenezip.splatting.trainer.TrainResult` whose ``train_s`` counts
    both stages."""
    import json

    from scenezip.splatting.recipes import C3DGSRecipe, Gaussian3DRecipe
    from scenezip.splatting.trainer import (METRICS_FILE, TrainResult, _config_dict, _resolve_device, evaluate,
                                            eval_settings, load_capture, train)  # fmt: skip

    d = config.distill
    if not 0.0 <= d.prune_weight < 1.0:
        raise ScenezipError(f"distill.prune_weight must be in [0, 1), got {d.prune_weight}")
    if d.steps < 1 or d.scale_stages < 1 or d.rot_stages < 1:
        raise ScenezipError(f"distill.steps, scale_stages and rot_stages must be >= 1, got {d.steps}, "
                            f"{d.scale_stages}, {d.rot_stages}")  # fmt: skip
    sh_config = sh_stage_config(config)
    C3DGSRecipe(config).check()  # the options both recipes share (and the joint ones, at their values)
    Gaussian3DRecipe(sh_config).check()  # the SH stage's
    backend, device = _resolve_device(config)
    ds = dataset if dataset is not None else load_capture(config)
    sh = train(sh_config, dataset=ds, on_step=on_step)
    t0 = time.perf_counter()
    if config.progress:
        print(f"SH stage done ({len(sh.model):,} Gaussians, test PSNR {sh.metrics['psnr']:.2f} dB); "
              "converting to c3dgs")
    model, weights, origins = view_guidance(sh.model, ds, d.prune_weight, d.from_views, backend, config.progress)
    cfg = auto_color_config(len(model), config.color_levels, config.color_log2_hashmap_size, config.color_dc)
    if config.color_hidden_dim is not None:
        cfg = replace(cfg, hidden_dim=config.color_hidden_dim)
    c3, conv = gaussians_to_c3dgs(model, cfg, d.prune_opacity, d.steps, d.scale_stages, config.rvq_codebook_size,
                                  config.seed, config.progress, hash_rate_lambda=d.hash_rate_lambda,
                                  color_dc=config.color_dc, rot_stages=d.rot_stages, gaussian_weights=weights,
                                  view_origins=origins, dc_stages=config.dc_stages)  # fmt: skip
    if config.position_bits is not None:
        c3.position_bits = int(config.position_bits)
    convert_s = time.perf_counter() - t0
    final = c3.quantized_copy(config.hash_zero_threshold)
    metrics = evaluate(final, ds, "test", **eval_settings(config, ds, backend))
    train_s = sh.train_s + convert_s
    metrics.update(n_gaussians=len(final), train_s=train_s, steps=config.steps, device=str(device), backend=backend,
                   method="c3dgs", recipe="distill", sh_stage_psnr=sh.metrics["psnr"], sh_stage_gaussians=len(sh.model),
                   convert_s=convert_s, n_after_weight_prune=len(model), **conv)  # fmt: skip
    out = Path(config.out)
    (out / "config.json").write_text(json.dumps(_config_dict(config), indent=2) + "\n")
    model_path = c3.save(out / "model.pt")
    metrics_path = out / METRICS_FILE
    tmp = metrics_path.with_name(METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, metrics_path)
    return TrainResult(out_dir=out, model_path=model_path, metrics_path=metrics_path,
                       checkpoint_path=sh.checkpoint_path, metrics=metrics, n_gaussians=len(final),
                       train_s=train_s, steps=config.steps, model=c3)  # fmt: skip
