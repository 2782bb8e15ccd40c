"""Training loop of the ``ngp`` method (Instant-NGP-style hash-grid NeRF), on CPU or GPU.

Written by hand after Instant-NGP (Mueller et al. 2022) and nerfacc's reproduction of it: each step
draws ``rays_per_step`` pixels uniformly over all training images, marches their rays through the
occupancy grid (:mod:`scenezip.fields.occupancy`), renders them with :class:`~scenezip.fields.ngp.NGPModel`
and minimizes the L2 (or Huber) colour error with one Adam (betas 0.9/0.99, eps 1e-15; weight decay on
the MLPs only) under a linear warm-up and step decay. RGBA captures are trained on a random background
colour per ray (the image re-composited on it), so empty space has to stay transparent. The occupancy
grid is updated every ``occ_update_every`` steps.

The same loop trains ``cngp`` when given a :class:`~scenezip.fields.ngp_config.CNGPConfig`: a
:class:`~scenezip.fields.hash_codec.HashTableCompressor` (learned per-entry masks with straight-through
gradients, per-level learned-step quantization from ``qat_start``) sits between the hash table and the
encoding, its mask logits and steps join the Adam, and the loss gains ``lambda_rate`` (ramped in over
``rate_ramp`` of the run) times the compressor's rate proxy (estimated bits per table parameter). The
transformed table is computed once per step and shared by the occupancy update, the pruning pass and
the differentiable pass. At the end the MLP weights are rounded to the file's ``mlp_dtype`` and the model
reads the final quantized table, so the final metrics are those of the file
(:meth:`NGPTrainResult.to_streams` codes it; decoding gives the same table bit for bit).

Interruption and resumption mirror the 3DGS trainer: ``ckpt_XXXXX.pt`` holds the model (with the
occupancy grid), the compressor's state (cngp), the optimizer state, the step and the config. Pixel batches, marching jitter, random
backgrounds and occupancy updates are drawn from generators seeded by ``(seed, step)``, so nothing else
needs saving and a resumed run reproduces an uninterrupted one bit for bit on the same device. Ctrl-C
finishes the current step, writes a checkpoint and re-raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from scenezip._backend import resolve_backend
from scenezip.errors import BackendError, ScenezipError
from scenezip.fields.hash_codec import HashTableCompressor
from scenezip.fields.hashgrid import HashGridConfig
from scenezip.fields.ngp import NGPArch, NGPModel
from scenezip.fields.ngp_config import CNGPConfig, NGPConfig
from scenezip.render.volume import pixel_rays
from scenezip.scenes.dataset import Dataset
from scenezip.splatting.trainer import (
    _config_dict, _Interrupt, _load_alpha, load_resume_checkpoint, write_checkpoint,
)  # fmt: skip

CHECKPOINT_FORMAT = "scenezip.trainngp"
CHECKPOINT_VERSION = 1
METRICS_FILE = "metrics.json"
METHOD = "ngp"
METHOD_CNGP = "cngp"
# Config fields that do not change the result of training (may differ between a run and its resumption).
_RUNTIME_FIELDS = {
    "data", "out", "resume", "progress", "checkpoint_every", "keep_checkpoints", "eval_every", "eval_images",
    "backend", "device",
}  # fmt: skip


@dataclass
class NGPTrainResult:
    """What :func:`train_ngp` produced.

    Attributes:
        out_dir: the output folder.
        model: the trained model (on the training device; ``ngp_to_streams`` turns it into a file).
        metrics: final evaluation (``psnr``, ``ssim``, ``lpips`` or None with ``lpips_note``, ``split``,
            ``n_images``, ...), also written to ``metrics.json``.
        train_s: seconds spent in training steps (evaluation and checkpoints excluded), over resumptions.
        steps: steps trained in total.
        n_primitives: hash-table entries (``len(model)``).
        checkpoint_path: the last checkpoint written.
        metrics_path: ``metrics.json``.
        method: ``"ngp"`` or ``"cngp"`` (the method name the file is written under).
        compressor: cngp only: the trained :class:`HashTableCompressor` (``model`` then reads the final
            quantized table through a fixed hash transform, and its MLP weights are rounded to
            ``mlp_dtype``).
        mlp_dtype: how :meth:`to_streams` stores the MLPs (``float32`` for ngp, the config's for cngp).
    """

    out_dir: Path
    model: NGPModel
    metrics: dict
    train_s: float
    steps: int
    n_primitives: int
    checkpoint_path: Path
    metrics_path: Path
    method: str = METHOD
    compressor: HashTableCompressor | None = None
    mlp_dtype: str = "float32"

    def to_streams(self) -> tuple[dict, dict[str, tuple[np.ndarray, str]]]:
        """``(metadata, streams)`` of the file for this run, for either method: write them with
        ``write_scz(path, self.method, {**scene_metadata(ds), **metadata}, streams)``. ngp:
        :func:`~scenezip.fields.ngp_streams.ngp_to_streams` (lossless float32); cngp:
        :func:`~scenezip.fields.ngp_streams.cngp_to_streams`, which decodes to exactly the model the
        final metrics were measured on."""
        from scenezip.fields.ngp_streams import cngp_to_streams, ngp_to_streams

        if self.compressor is None:
            return ngp_to_streams(self.model)
        return cngp_to_streams(self.model, self.compressor, self.mlp_dtype)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------- helpers
def lr_factor(config: NGPConfig, step: int) -> float:
    """Learning-rate multiplier at ``step`` (1-based): linear warm-up from 0.01, then ``lr_decay`` per
    passed fraction in ``lr_decay_at``."""
    warm = 1.0 if config.lr_warmup <= 0 else min(1.0, 0.01 + 0.99 * step / config.lr_warmup)
    passed = sum(step > f * config.steps for f in config.lr_decay_at)
    return warm * config.lr_decay**passed


def scene_box(bounds: np.ndarray, box_scale: float = 1.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The model's box: ``bounds [2, 3]`` scaled by ``box_scale`` about their centre."""
    b = np.asarray(bounds, dtype=np.float64)
    c, h = (b[0] + b[1]) / 2, (b[1] - b[0]) / 2 * box_scale
    return tuple(map(float, c - h)), tuple(map(float, c + h))


def make_arch(config: NGPConfig, bounds: np.ndarray) -> NGPArch:
    """The model architecture a config asks for, over the dataset's bounds."""
    grid = HashGridConfig(
        n_levels=config.n_levels, n_features_per_level=config.n_features_per_level,
        log2_hashmap_size=config.log2_hashmap_size, base_resolution=config.base_resolution,
        max_resolution=max(config.max_resolution, config.base_resolution),
    )  # fmt: skip
    return NGPArch(
        aabb=scene_box(bounds, config.box_scale), grid=grid, hidden_dim=config.hidden_dim,
        geo_features=config.geo_features, occ_resolution=config.occ_resolution, march_steps=config.march_steps,
    )  # fmt: skip


def base_lrs(config: NGPConfig) -> dict[str, float]:
    """Peak learning rate of each optimizer group, by group name (the schedule scales them all)."""
    lrs = {"grid": config.lr, "mlp": config.lr}
    if isinstance(config, CNGPConfig):
        lrs.update(hash_mask=config.mask_lr, hash_step=config.step_lr)
    return lrs


def make_compressor(model: NGPModel, config: CNGPConfig) -> HashTableCompressor:
    """The cngp hash-table compressor for ``model`` (on its device): masks from step 1, QAT from
    ``qat_start * steps``."""
    return HashTableCompressor(
        model.field.grid, bits=config.hash_bits, mask_granularity=config.mask_granularity,
        qat_start=int(round(config.qat_start * config.steps)),
    ).to(model.device)  # fmt: skip


def make_optimizer(
    model: NGPModel, config: NGPConfig, compressor: HashTableCompressor | None = None
) -> torch.optim.Adam:
    """Instant-NGP's Adam: betas (0.9, 0.99), eps 1e-15, weight decay on the MLPs only; with a
    ``compressor``, its mask logits and steps as groups ``hash_mask`` and ``hash_step``."""
    groups = model.param_groups()
    param_groups = [
        {"params": groups["grid"], "lr": config.lr, "weight_decay": 0.0, "name": "grid"},
        {"params": groups["mlp"], "lr": config.lr, "weight_decay": config.weight_decay, "name": "mlp"},
    ]
    if compressor is not None:
        lrs = base_lrs(config)
        for g in compressor.param_groups(lr_mask=lrs["hash_mask"], lr_step=lrs["hash_step"]):
            param_groups.append({**g, "weight_decay": 0.0})
    return torch.optim.Adam(param_groups, betas=(0.9, 0.99), eps=1e-15)


class _FixedTable:
    """A hash transform that returns one precomputed table ``[n_params]`` whatever it is given: this
    step's compressed table (computed once, read by every field evaluation of the step) or the final
    quantized one."""

    def __init__(self, table: Tensor) -> None:
        self.table = table

    def __call__(self, flat: Tensor) -> Tensor:
        return self.table


def rate_weight(config: CNGPConfig, step: int) -> float:
    """``lambda_rate`` at ``step`` (1-based), ramped linearly from 0 over ``rate_ramp`` of the run."""
    ramp_steps = config.rate_ramp * config.steps
    return config.lambda_rate * (1.0 if ramp_steps <= 0 else min(1.0, step / ramp_steps))


def _mlp_params(model: NGPModel) -> int:
    return model.field.density_mlp.n_params() + model.field.color_mlp.n_params()


def _check_config(config: NGPConfig) -> None:
    def bad(msg: str) -> None:
        raise ScenezipError(msg)

    for name in ("steps", "rays_per_step", "n_levels", "log2_hashmap_size", "base_resolution", "max_resolution",
                 "hidden_dim", "geo_features", "march_steps", "occ_resolution", "occ_update_every"):  # fmt: skip
        if getattr(config, name) < 1:
            bad(f"{name} must be >= 1, got {getattr(config, name)}")
    for name in ("checkpoint_every", "keep_checkpoints", "eval_every", "eval_images", "occ_warmup", "lr_warmup"):
        if getattr(config, name) < 0:
            bad(f"{name} must be >= 0, got {getattr(config, name)}")
    for name in ("lr", "box_scale", "occ_threshold"):
        if not getattr(config, name) > 0:
            bad(f"{name} must be > 0, got {getattr(config, name)}")
    if not 0.0 < config.lr_decay <= 1.0 or not 0.0 < config.occ_decay < 1.0:
        bad(f"lr_decay must be in (0, 1] and occ_decay in (0, 1), got {config.lr_decay}, {config.occ_decay}")
    if not 0.0 <= config.early_stop_eps < 1.0:
        bad(f"early_stop_eps must be in [0, 1), got {config.early_stop_eps}")
    if config.weight_decay < 0:
        bad(f"weight_decay must be >= 0, got {config.weight_decay}")
    if config.background is not None and (
        len(config.background) != 3 or not all(0.0 <= float(c) <= 1.0 for c in config.background)
    ):
        bad(f"background must be 3 values in [0, 1], got {config.background!r}")
    if config.occ_resolution > 1024:
        bad(f"occ_resolution must be <= 1024, got {config.occ_resolution}")
    if isinstance(config, CNGPConfig):
        if not config.lambda_rate >= 0:
            bad(f"lambda_rate must be >= 0, got {config.lambda_rate}")
        if not 0.0 <= config.rate_ramp <= 1.0 or not 0.0 <= config.qat_start <= 1.0:
            bad(f"rate_ramp and qat_start must be fractions in [0, 1], got {config.rate_ramp}, {config.qat_start}")
        if config.rate_every < 1:
            bad(f"rate_every must be >= 1, got {config.rate_every}")
        if isinstance(config.hash_bits, bool) or not 2 <= config.hash_bits <= 16:
            bad(f"hash_bits must be in [2, 16], got {config.hash_bits}")
        if not config.mask_lr > 0 or not config.step_lr > 0:
            bad(f"mask_lr and step_lr must be > 0, got {config.mask_lr}, {config.step_lr}")
        if config.mask_granularity not in ("entry", "feature") or config.mlp_dtype not in ("float16", "float32"):
            bad(f"mask_granularity must be entry|feature and mlp_dtype float16|float32, got "
                f"{config.mask_granularity!r}, {config.mlp_dtype!r}")  # fmt: skip


def _resolve_device(config: NGPConfig) -> tuple[str, torch.device]:
    backend = resolve_backend(config.backend, "tcnn")
    if config.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendError("device 'cuda' requested but no CUDA GPU is visible to torch")
    if backend == "cuda" and device.type != "cuda":
        raise BackendError("backend 'cuda' (tiny-cuda-nn) needs device 'cuda' or 'auto'")
    return backend, device


def _step_rng(seed: int, step: int, stream: int) -> np.random.Generator:
    return np.random.default_rng((seed, step, stream))


class _Pixels:
    """Every training pixel (colour, and alpha for RGBA captures) flattened on the training device."""

    def __init__(self, ds: Dataset, ids: np.ndarray, device: torch.device, need_alpha: bool) -> None:
        rgb, alpha, sizes = [], [], []
        self.has_alpha = need_alpha and ds.background is not None
        for i in ids.tolist():
            img = ds.image(int(i))
            rgb.append(img.reshape(-1, 3))
            sizes.append((img.shape[1], img.shape[0]))
            if self.has_alpha:
                a = _load_alpha(ds, int(i))
                if a is None:
                    self.has_alpha = False
                else:
                    alpha.append(a.reshape(-1, 1))
        self.rgb = torch.cat(rgb).to(device, torch.float32)
        self.alpha = torch.cat(alpha).to(device, torch.float32) if self.has_alpha else None
        counts = np.array([w * h for w, h in sizes], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        self.widths = np.array([w for w, _ in sizes], dtype=np.int64)
        self.ids = np.asarray(ids, dtype=np.int64)
        self.device = device

    @property
    def n(self) -> int:
        return int(self.offsets[-1])

    def batch(self, rng: np.random.Generator, n: int) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """``camera ids [n]`` (dataset indices), ``pixels [n, 2]`` (col, row), ``rgb [n, 3]``, ``alpha [n, 1]``."""
        flat = rng.integers(0, self.n, size=n)
        img = np.searchsorted(self.offsets, flat, side="right") - 1
        local = flat - self.offsets[img]
        row, col = np.divmod(local, self.widths[img])
        idx = torch.from_numpy(flat).to(self.device)
        cams = torch.from_numpy(self.ids[img]).to(self.device)
        pix = torch.from_numpy(np.stack([col, row], -1)).to(self.device)
        return cams, pix, self.rgb[idx], None if self.alpha is None else self.alpha[idx]


@torch.no_grad()
def evaluate_ngp(
    model: NGPModel,
    ds: Dataset,
    split: str = "test",
    *,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
    backend: str = "auto",
    max_images: int = 0,
    early_stop_eps: float = 1e-4,
) -> dict[str, Any]:
    """:func:`~scenezip.splatting.trainer.evaluate_views` of the model's renders over ``split`` (at most
    ``max_images`` evenly spaced images when > 0); falls back to train when ``split`` is empty."""
    from scenezip.splatting.trainer import evaluate_views

    bg = torch.tensor(background, dtype=torch.float32, device=model.device)[None]

    def render_view(cam, w: int, h: int) -> torch.Tensor:
        colors, _, _ = model.render(cam.viewmats, cam.Ks, w, h, backgrounds=bg, backend=backend,
                                    early_stop_eps=early_stop_eps)  # fmt: skip
        return colors[0]

    return evaluate_views(render_view, ds, split, max_images, device=model.device)


def keep_fraction(compressor: HashTableCompressor) -> float:
    """Fraction of the compressor's mask units that are kept."""
    from scenezip.quant.mask import keep_mask

    return float(keep_mask(compressor.mask_logits.detach(), compressor.mask_threshold).float().mean())


@torch.no_grad()
def finalize_cngp(model: NGPModel, compressor: HashTableCompressor, config: CNGPConfig) -> None:
    """Make ``model`` render exactly what :func:`~scenezip.fields.ngp_streams.cngp_to_streams` stores:
    mask and quantization on, the hash transform fixed to ``compressor.quantized_table`` of the raw
    table (moved to the model's device), and the MLP weights rounded to ``config.mlp_dtype``."""
    compressor.set_step(max(config.steps, compressor.qat_start, compressor.mask_start))
    table = compressor.quantized_table(model.field.grid.params.detach()).to(model.device)
    model.set_hash_transform(_FixedTable(table))
    dt = getattr(torch, config.mlp_dtype)
    for p in list(model.field.density_mlp.parameters()) + list(model.field.color_mlp.parameters()):
        p.copy_(p.to(dt).to(torch.float32))


def _photometric(pred: Tensor, gt: Tensor, kind: str) -> Tensor:
    if kind == "huber":
        return F.huber_loss(pred, gt, delta=0.1)
    return F.mse_loss(pred, gt)


# ---------------------------------------------------------------------------------------------- train
def train_ngp(
    config: NGPConfig,
    dataset: Dataset | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
) -> NGPTrainResult:
    """Train an ``ngp`` model (or ``cngp``, when ``config`` is a :class:`CNGPConfig`) on ``config.data``
    (or ``dataset`` when given) and write to ``config.out``.

    Args:
        config: every option (see :class:`NGPConfig` and :class:`CNGPConfig`).
        dataset: an already loaded dataset; ``config.data``, ``downscale`` and ``test_every`` are then unused.
        on_step: called after every step with ``(step, info)``; ``info`` has ``loss`` (photometric),
            ``psnr`` (of the batch), ``n_samples`` and ``occupancy`` (fraction of occupied cells), and
            for cngp ``rate`` (the rate proxy in bits per table parameter, the last one computed),
            ``kept`` (fraction of kept mask units) and ``est_bytes`` (hash table by the proxy, MLPs and
            raw occupancy bits), Python numbers.

    Returns:
        :class:`NGPTrainResult`. Writes ``ckpt_XXXXX.pt`` every ``checkpoint_every`` steps and at the
        end, ``config.json`` and ``metrics.json``.

    Raises:
        ScenezipError: a bad option, an unreadable capture, or ``resume`` without a usable checkpoint.
        KeyboardInterrupt: after Ctrl-C, once the checkpoint of the last finished step is written.
    """
    from tqdm.auto import tqdm

    _check_config(config)
    backend, device = _resolve_device(config)
    if dataset is None:
        from scenezip.scenes.loader import load_dataset

        dataset = load_dataset(
            config.data, downscale=config.downscale, test_every=config.test_every, n_random_points=1,
            seed=config.seed,
            background=tuple(config.background) if config.background is not None else (1.0, 1.0, 1.0),
        )  # fmt: skip
    ds = dataset
    train_ids = ds.indices("train")
    if len(train_ids) == 0:
        raise ScenezipError(f"{ds.root}: the capture has no training images")
    if config.background is not None:
        bg_color = tuple(float(c) for c in config.background)
    elif ds.background is not None:
        bg_color = tuple(float(c) for c in ds.background)
    else:
        bg_color = (0.0, 0.0, 0.0)
    out = Path(config.out)
    cngp = isinstance(config, CNGPConfig)
    method = METHOD_CNGP if cngp else METHOD
    comp: HashTableCompressor | None = None

    # ---- state: fresh or from the newest checkpoint
    start, train_s = 0, 0.0
    if config.resume:
        ckpt, ckpt_path = load_resume_checkpoint(
            out, CHECKPOINT_FORMAT, "ngp", method, METHOD, _config_dict(config), _RUNTIME_FIELDS
        )
        model = NGPModel.from_dict(ckpt["model"], device=device, backend=backend, source=str(ckpt_path))
        if cngp:
            comp = make_compressor(model, config)  # type: ignore[arg-type]
            try:
                comp.load_state_dict(ckpt["compressor"])
            except (RuntimeError, KeyError, TypeError) as e:
                raise ScenezipError(f"{ckpt_path}: compressor state does not match ({e})") from None
        optimizer = make_optimizer(model, config, comp)
        optimizer.load_state_dict(ckpt["optimizer"])
        start, train_s = int(ckpt["step"]), float(ckpt["train_s"])
    else:
        torch.manual_seed(config.seed)
        model = NGPModel(make_arch(config, ds.bounds), backend=backend, seed=config.seed).to(device)
        if cngp:
            comp = make_compressor(model, config)  # type: ignore[arg-type]
        optimizer = make_optimizer(model, config, comp)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(_config_dict(config), indent=2) + "\n")

    def save_checkpoint(step: int) -> Path:
        return write_checkpoint(
            out,
            step,
            {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "step": step,
                "train_s": train_s,
                "method": method,
                "model": model.to_dict(),
                **({"compressor": {k: v.detach().cpu().clone() for k, v in comp.state_dict().items()}} if comp else {}),
                "optimizer": optimizer.state_dict(),
                "config": _config_dict(config),
            },
            config.keep_checkpoints,
        )

    pixels = _Pixels(ds, train_ids, device, need_alpha=config.random_background)
    viewmats = ds.cameras.viewmats.to(device, torch.float32)
    Ks = ds.cameras.Ks.to(device, torch.float32)
    base_bg = torch.tensor(bg_color, dtype=torch.float32, device=device)
    eval_kw = dict(background=bg_color, backend=backend, max_images=config.eval_images,
                   early_stop_eps=config.early_stop_eps)  # fmt: skip
    last_ckpt: Path | None = None
    bar = tqdm(total=config.steps, initial=start, disable=not config.progress, dynamic_ncols=True, desc=method)
    lrs = base_lrs(config)
    fixed_bytes = _mlp_params(model) * (2 if cngp and config.mlp_dtype == "float16" else 4)  # type: ignore[attr-defined]
    fixed_bytes += -(-model.occupancy.n_cells // 8)
    rate_bits = float("nan")

    def density_fn(x: Tensor) -> Tensor:
        return model.field.density(x)

    def compressed_table(grad: bool) -> Tensor:
        with torch.set_grad_enabled(grad):
            return comp(model.field.grid.params)  # type: ignore[misc]

    step = start
    with _Interrupt() as interrupt:
        try:
            for step in range(start + 1, config.steps + 1):
                t0 = time.perf_counter()
                model.train()
                for group in optimizer.param_groups:
                    group["lr"] = lrs[group["name"]] * lr_factor(config, step)
                if comp is not None:
                    comp.set_step(step)
                    model.set_hash_transform(_FixedTable(compressed_table(True)))
                if step % config.occ_update_every == 0 or step == 1:
                    gen = torch.Generator().manual_seed(int(_step_rng(config.seed, step, 2).integers(2**62)))
                    model.occupancy.update(
                        step, density_fn, model.step_size, generator=gen, warmup_steps=config.occ_warmup,
                        decay=config.occ_decay, threshold=config.occ_threshold,
                    )  # fmt: skip
                rng = _step_rng(config.seed, step, 0)
                cams, pix, gt, alpha = pixels.batch(rng, config.rays_per_step)
                origins, dirs = pixel_rays(viewmats, Ks, cams, pix)
                jitter = torch.from_numpy(rng.random(config.rays_per_step, dtype=np.float32)).to(device)
                if pixels.has_alpha and config.random_background:
                    bg = torch.from_numpy(rng.random((config.rays_per_step, 3), dtype=np.float32)).to(device)
                    gt = gt + (bg - base_bg) * (1.0 - alpha)
                else:
                    bg = base_bg
                out_rays = model.render_rays(
                    origins, dirs, bg, jitter=jitter, early_stop_eps=config.early_stop_eps, prune=config.train_prune
                )
                loss = photo = _photometric(out_rays["rgb"], gt, config.loss)
                if comp is not None:
                    lam = rate_weight(config, step)  # type: ignore[arg-type]
                    every = config.rate_every  # type: ignore[attr-defined]
                    if lam > 0 and step % every == 0:
                        rate = comp.rate_loss(model.field.grid.params)
                        loss = loss + (lam * every) * rate
                        rate_bits = float(rate.detach())
                    elif step % 10 == 0 or step == config.steps or math.isnan(rate_bits):
                        with torch.no_grad():
                            rate_bits = float(comp.rate_loss(model.field.grid.params))
                optimizer.zero_grad(set_to_none=True)
                if loss.requires_grad:
                    loss.backward()
                    optimizer.step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                train_s += time.perf_counter() - t0

                mse = float(F.mse_loss(out_rays["rgb"].detach(), gt))
                batch_psnr = -10.0 * math.log10(max(mse, 1e-10))
                n_samples = int(out_rays["n_samples"])
                info = {"loss": float(photo.detach()), "psnr": batch_psnr, "n_samples": n_samples,
                        "occupancy": model.occupancy.occupancy_fraction()}  # fmt: skip
                if comp is not None:
                    info["rate"] = rate_bits
                    info["kept"] = keep_fraction(comp)
                    info["est_bytes"] = rate_bits * comp.n_params / 8.0 + fixed_bytes
                bar.update(1)
                if step % 10 == 0 or step == config.steps:
                    post = {"loss": f"{info['loss']:.4f}", "psnr": f"{batch_psnr:.2f}", "samples": str(n_samples)}
                    if comp is not None:
                        post.update(size=f"~{info['est_bytes'] / 1e6:.3f}MB", kept=f"{info['kept']:.2f}")
                    bar.set_postfix(post)
                if on_step is not None:
                    on_step(step, info)
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    last_ckpt = save_checkpoint(step)
                if config.eval_every and step % config.eval_every == 0 and step < config.steps:
                    if comp is not None:
                        model.set_hash_transform(_FixedTable(compressed_table(False)))
                    m = evaluate_ngp(model, ds, "test", **eval_kw)
                    bar.write(f"step {step}: {m['split']} PSNR {m['psnr']:.2f} SSIM {m['ssim']:.4f}")
                if interrupt.requested:
                    last_ckpt = save_checkpoint(step)
                    bar.write(f"interrupted: wrote {last_ckpt}; continue with resume")
                    raise KeyboardInterrupt
        finally:
            bar.close()

    if last_ckpt is None or not last_ckpt.name.endswith(f"{config.steps:05d}.pt"):
        last_ckpt = save_checkpoint(config.steps)
    model.eval()
    extra: dict[str, Any] = {}
    if comp is not None:
        finalize_cngp(model, comp, config)  # type: ignore[arg-type]
        with torch.no_grad():
            rate_bits = float(comp.rate_loss(model.field.grid.params))
        extra = {"hash_kept_fraction": float(keep_fraction(comp)), "rate_bits_per_param": rate_bits,
                 "lambda_rate": config.lambda_rate, "hash_steps": comp.steps()}  # type: ignore[attr-defined]  # fmt: skip
    metrics = evaluate_ngp(model, ds, "test", **eval_kw)
    metrics.update(n_primitives=len(model), train_s=train_s, steps=config.steps, device=str(device),
                   backend=backend, method=method, occupancy=model.occupancy.occupancy_fraction(), **extra)  # fmt: skip
    metrics_path = out / METRICS_FILE
    tmp = metrics_path.with_name(METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, metrics_path)
    return NGPTrainResult(
        out_dir=out, model=model, metrics=metrics, train_s=train_s, steps=config.steps, n_primitives=len(model),
        checkpoint_path=last_ckpt, metrics_path=metrics_path, method=method, compressor=comp,
        mlp_dtype=config.mlp_dtype if cngp else "float32",  # type: ignore[attr-defined]
    )  # fmt: skip
