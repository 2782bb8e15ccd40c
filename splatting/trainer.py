"""Training loop of 3D Gaussian splatting (Kerbl et al. 2023), on the torch rasterizer or gsplat.

Written by hand from the 3DGS paper and gsplat's documented trainer defaults: one training image per
step in a seeded random order (a fresh permutation per pass), loss ``(1 - l) * L1 + l * (1 - SSIM)``
with ``l = 0.2``, one Adam per parameter (eps 1e-15) with the paper's learning rates, the means' rate
scaled by the scene extent (1.1 x the largest camera distance from the cameras' centroid) and decayed
log-linearly to its final value over the run, the SH degree raised on a schedule and adaptive density
control from :mod:`scenezip.splatting.densify`.

Interruption and resumption: ``ckpt_XXXXX.pt`` holds the model, every optimizer state, the densification
statistics, the split RNG state, the step and the config. Image order and random backgrounds are derived
from ``(seed, step)``, so nothing else needs saving, and a resumed run reproduces an uninterrupted one.
Ctrl-C finishes the current step, writes a checkpoint and re-raises ``KeyboardInterrupt``; a second
Ctrl-C stops at once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from scenezip._backend import resolve_backend
from scenezip.errors import BackendError, ScenezipError
from scenezip.render.metrics import psnr, ssim
from scenezip.scenes.cameras import Cameras
from scenezip.scenes.dataset import Dataset
from scenezip.splatting.config import GaussianTrainConfig
from scenezip.splatting.densify import DensityController
from scenezip.splatting.recipes import recipe_for, scaled_steps

CHECKPOINT_FORMAT = "scenezip.train3dgs"
CHECKPOINT_VERSION = 1
CHECKPOINT_RE = re.compile(r"^ckpt_(\d+)\.pt$")
MODEL_FILE = "gaussians.pt"
METRICS_FILE = "metrics.json"
# Config fields that do not change the result of training (may differ between a run and its resumption).
# A resumption may also move to another backend or device (the result is then close, not identical).
_RUNTIME_FIELDS = {
    "data", "out", "resume", "progress", "checkpoint_every", "keep_checkpoints", "eval_every", "backend", "device",
}  # fmt: skip


@dataclass
class TrainResult:
    """What :func:`train` produced.

    Attributes:
        out_dir: the output folder.
        model_path: final model (``gaussians.pt`` for 3dgs, ``model.pt`` for c3dgs: the model class's ``load``).
        metrics_path: ``metrics.json``.
        checkpoint_path: the last checkpoint written.
        metrics: final evaluation (``psnr``, ``ssim``, ``lpips`` or None, ``split``, ``n_images``, ...).
        n_gaussians: final Gaussian count.
        train_s: seconds spent in training steps (evaluation and checkpoint writing excluded), summed
            over resumptions.
        steps: steps trained in total.
        model: the trained model (c3dgs: before post-processing; ``to_streams`` codes it).
    """

    out_dir: Path
    model_path: Path
    metrics_path: Path
    checkpoint_path: Path
    metrics: dict
    n_gaussians: int
    train_s: float
    steps: int
    model: Any = None


# ---------------------------------------------------------------------------------------------- helpers
def scene_extent(cameras: Cameras) -> float:
    """3DGS scene extent: 1.1 x the largest distance of a camera centre from the centres' mean.

    Falls back to 1.0 when all cameras coincide (a single view).
    """
    c = cameras.centers.double()
    radius = float((c - c.mean(dim=0)).norm(dim=-1).max()) if len(cameras) else 0.0
    return 1.1 * radius if radius > 1e-8 else 1.0


def means_lr(config: GaussianTrainConfig, step: int, extent: float) -> float:
    """Learning rate of the means at ``step`` (1-based): log-linear from ``lr_means`` to ``lr_means_final``."""
    t = min(max(step / config.steps, 0.0), 1.0)
    return extent * math.exp((1.0 - t) * math.log(config.lr_means) + t * math.log(config.lr_means_final))


def image_order(seed: int, step: int, train_ids: np.ndarray) -> int:
    """Training image of ``step`` (1-based): pass ``p`` visits a permutation seeded by ``(seed, p)``."""
    n = len(train_ids)
    p, k = divmod(step - 1, n)
    perm = np.random.default_rng((seed, p)).permutation(n)
    return int(train_ids[perm[k]])


def _config_dict(config: GaussianTrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def checkpoint_paths(out_dir: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``ckpt_XXXXX.pt`` in ``out_dir``, oldest first."""
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if (m := CHECKPOINT_RE.match(p.name))]
    return sorted(found)


def load_resume_checkpoint(
    out: Path, fmt: str, kind: str, method: str, default_method: str, config: dict[str, Any], runtime_fields: set[str]
) -> tuple[dict[str, Any], Path]:
    """The newest ``ckpt_XXXXX.pt`` in ``out`` and its path, checked: readable, of format ``fmt`` and
    ``method``, and trained with the same options as ``config`` (a plain dict) except ``runtime_fields``.
    ``kind`` names the trainer in messages; ``default_method`` is assumed for checkpoints that name none."""
    ckpts = checkpoint_paths(out)
    if not ckpts:
        raise ScenezipError(f"{out}: resume requested but the folder holds no ckpt_XXXXX.pt")
    ckpt_path = ckpts[-1][1]
    try:
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise ScenezipError(f"{ckpt_path}: cannot read the checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise ScenezipError(f"{ckpt_path}: not a scenezip {kind} training checkpoint")
    if ckpt.get("method", default_method) != method:
        raise ScenezipError(
            f"{ckpt_path}: a {ckpt.get('method', default_method)} checkpoint cannot resume a {method} run"
        )
    changed = sorted(k for k, v in config.items() if k not in runtime_fields and ckpt["config"].get(k) != v)
    if changed:
        raise ScenezipError(f"{ckpt_path}: options {changed} differ from the checkpoint's; resume with the same ones")
    return ckpt, ckpt_path


def write_checkpoint(out: Path, step: int, state: dict[str, Any], keep: int) -> Path:
    """Write ``state`` as ``out/ckpt_XXXXX.pt`` (atomically) and delete all but the newest ``keep``
    checkpoints (0 keeps all); returns the path."""
    path = out / f"ckpt_{step:05d}.pt"
    _save_atomic(state, path)
    if keep > 0:
        for _, old in checkpoint_paths(out)[:-keep]:
            old.unlink(missing_ok=True)
    return path


def _save_atomic(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _check_config(config: GaussianTrainConfig) -> None:
    def bad(msg: str) -> None:
        raise ScenezipError(msg)

    if config.steps < 1:
        bad(f"steps must be >= 1, got {config.steps}")
    if not 0.0 <= config.ssim_lambda <= 1.0:
        bad(f"ssim_lambda must be in [0, 1], got {config.ssim_lambda}")
    if config.background is not None and (
        len(config.background) != 3 or not all(0.0 <= float(c) <= 1.0 for c in config.background)
    ):
        bad(f"background must be 3 values in [0, 1], got {config.background!r}")
    for name in ("lr_means", "lr_means_final", "lr_opacities", "lr_scales", "lr_quats"):
        if not getattr(config, name) > 0:
            bad(f"{name} must be > 0, got {getattr(config, name)}")
    for name in ("checkpoint_every", "keep_checkpoints", "eval_every"):
        if getattr(config, name) < 0:
            bad(f"{name} must be >= 0, got {getattr(config, name)}")
    if not 0.0 < config.init_opacity < 1.0:
        bad(f"init_opacity must be in (0, 1), got {config.init_opacity}")
    if config.random_points < 2:
        bad(f"random_points must be >= 2, got {config.random_points}")
    if not config.init_scale > 0:
        bad(f"init_scale must be > 0, got {config.init_scale}")


def load_capture(config: GaussianTrainConfig) -> Dataset:
    """The capture of ``config`` as every Gaussian trainer loads it."""
    from scenezip.scenes.loader import load_dataset

    return load_dataset(
        config.data,
        downscale=config.downscale,
        test_every=config.test_every,
        n_random_points=config.random_points,
        seed=config.seed,
        background=tuple(config.background) if config.background is not None else (1.0, 1.0, 1.0),
    )


def background_of(config: GaussianTrainConfig, ds: Dataset) -> tuple[float, float, float]:
    """The background the run trains and evaluates on: the config's, else the capture's, else black."""
    if config.background is not None:
        return tuple(float(c) for c in config.background)
    if ds.background is not None:
        return tuple(float(c) for c in ds.background)
    return (0.0, 0.0, 0.0)


def eval_settings(config: GaussianTrainConfig, ds: Dataset, backend: str) -> dict[str, Any]:
    """Keyword arguments of :func:`evaluate` for a run of ``config`` on ``ds``."""
    return dict(background=background_of(config, ds), sh_degree=None, backend=backend,
                rasterize_mode=config.rasterize_mode, near_plane=config.near_plane,
                far_plane=config.far_plane)  # fmt: skip


def _resolve_device(config: GaussianTrainConfig) -> tuple[str, torch.device]:
    backend = resolve_backend(config.backend, "gsplat")
    if config.device == "auto":
        device = torch.device("cuda" if backend == "cuda" else "cpu")
    else:
        device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendError("device 'cuda' requested but no CUDA GPU is visible to torch")
    if backend == "cuda" and device.type != "cuda":
        raise BackendError("backend 'cuda' (gsplat) needs device 'cuda' or 'auto'")
    return backend, device


def _load_alpha(ds: Dataset, index: int) -> Tensor | None:
    """``[H, W, 1]`` alpha of image ``index`` as the loader saw it (downscaled, undistorted), or None."""
    from scenezip.scenes.images import downscale_image, read_image, undistort_image

    img = read_image(Path(ds.image_paths[index]))
    if img.shape[-1] != 4:
        return None
    a = torch.from_numpy(np.ascontiguousarray(downscale_image(np.ascontiguousarray(img[..., 3:4]), int(ds.downscale))))
    if ds.distortion is not None and np.any(ds.distortion[index] != 0):
        a = undistort_image(a, ds.cameras.Ks[index], torch.as_tensor(ds.distortion[index]))
    return a.clamp(0.0, 1.0)


class _Images:
    """Training images (and alphas, for random backgrounds) cached on the training device."""

    def __init__(self, ds: Dataset, device: torch.device, need_alpha: bool):
        self.ds, self.device, self.need_alpha = ds, device, need_alpha
        self._rgb: dict[int, Tensor] = {}
        self._alpha: dict[int, Tensor | None] = {}

    def rgb(self, i: int) -> Tensor:
        if i not in self._rgb:
            self._rgb[i] = self.ds.image(i).to(self.device, torch.float32)
        return self._rgb[i]

    def alpha(self, i: int) -> Tensor | None:
        if i not in self._alpha:
            a = _load_alpha(self.ds, i) if self.need_alpha and self.ds.background is not None else None
            self._alpha[i] = None if a is None else a.to(self.device)
        return self._alpha[i]


@torch.no_grad()
def evaluate_views(
    render_view: Callable[[Cameras, int, int], Tensor], ds: Dataset, split: str = "test", max_images: int = 0,
    device: torch.device | str = "cpu",
) -> dict[str, Any]:
    """Mean PSNR / SSIM (and LPIPS where its weights are present) of ``render_view(camera, width, height)``
    (``[H, W, 3]``, clamped here) against ``split``: the evaluation every trainer shares.

    At most ``max_images`` evenly spaced images when > 0. Falls back to the train split when ``split`` is
    empty (and says so in ``split``).
    """
    from scenezip.render.metrics import lpips, lpips_available

    ids = ds.indices(split)
    if len(ids) == 0:
        split, ids = "train", ds.indices("train")
    if max_images and len(ids) > max_images:
        ids = ids[np.floor(np.arange(max_images) * len(ids) / max_images).astype(np.int64)]
    use_lpips, note = lpips_available()
    rows = []
    for i in ids.tolist():
        cam = ds.cameras[i].to(device)
        w, h = int(cam.widths[0]), int(cam.heights[0])
        img = render_view(cam, w, h)[..., :3].clamp(0.0, 1.0)
        ref = ds.image(i).to(device)
        row = {"psnr": float(psnr(img, ref)), "ssim": float(ssim(img, ref))}
        if use_lpips and min(w, h) >= 16:
            row["lpips"] = float(lpips(img, ref))
        rows.append(row)
    out: dict[str, Any] = {
        "split": split,
        "n_images": len(rows),
        "psnr": float(np.mean([r["psnr"] for r in rows])),
        "ssim": float(np.mean([r["ssim"] for r in rows])),
    }
    if use_lpips and all("lpips" in r for r in rows):
        out["lpips"], out["lpips_note"] = float(np.mean([r["lpips"] for r in rows])), note
    else:
        out["lpips"], out["lpips_note"] = None, f"LPIPS unavailable: {note}" if not use_lpips else "images under 16 px"
    return out


@torch.no_grad()
def evaluate(
    model: Any,
    ds: Dataset,
    split: str = "test",
    *,
    sh_degree: int | None = None,
    background: tuple[float, float, float] = (0.0, 0.0, 0.0),
    backend: str = "auto",
    rasterize_mode: str = "classic",
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> dict[str, Any]:
    """:func:`evaluate_views` of a Gaussian model's renders on ``split``."""
    bg = torch.tensor(background, dtype=torch.float32, device=model.device)[None]

    def render_view(cam: Cameras, w: int, h: int) -> Tensor:
        colors, _, _ = model.render(
            cam.viewmats, cam.Ks, w, h, sh_degree=sh_degree, backgrounds=bg, backend=backend,
            rasterize_mode=rasterize_mode, near_plane=near_plane, far_plane=far_plane,
        )  # fmt: skip
        return colors[0]

    return evaluate_views(render_view, ds, split, device=model.device)


class _Interrupt:
    """Defers the first Ctrl-C to the end of the current step; a second one interrupts at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: Any = None
        self._active = threading.current_thread() is threading.main_thread()

    def _handler(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_Interrupt":
        if self._active:
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        if self._active:
            signal.signal(signal.SIGINT, self._old)


# ---------------------------------------------------------------------------------------------- train
def train(
    config: GaussianTrainConfig,
    dataset: Dataset | None = None,
    on_step: Callable[[int, dict[str, Any]], None] | None = None,
    init_model: Any = None,
) -> TrainResult:
    """Train Gaussians on ``config.data`` (or on ``dataset`` when given) and write results to ``config.out``.

    Args:
        config: every option; its class picks the method (:class:`TrainConfig`: 3dgs, :class:`C3DGSConfig`:
            c3dgs; see :mod:`scenezip.splatting.recipes`).
        dataset: an already loaded dataset; ``config.data``, ``downscale`` and ``test_every`` are then unused.
        on_step: called after every step with ``(step, info)``; ``info`` has ``loss``, ``n_gaussians`` and
            the densification counts (a Python float/int each; reading ``loss`` syncs the GPU).
        init_model: start from this model (of the method's class) instead of the capture's points, e.g. to
            fine-tune a converted model; ignored when resuming (the checkpoint holds the model).

    Returns:
        :class:`TrainResult`. Writes ``ckpt_XXXXX.pt`` every ``checkpoint_every`` steps and at the end,
        the final model (``gaussians.pt`` for 3dgs, ``model.pt`` for c3dgs) and ``metrics.json``. For
        c3dgs the metrics are those of the post-processed (quantized) model, i.e. of the file it codes to.

    Raises:
        ScenezipError: a bad option, an unreadable capture, or ``resume`` without a checkpoint.
        KeyboardInterrupt: after Ctrl-C, once the checkpoint of the last finished step is written.
    """
    from tqdm.auto import tqdm

    _check_config(config)
    if getattr(config, "recipe", "joint") == "distill":  # c3dgs: the SH loop below, then a conversion
        if init_model is not None:
            raise ScenezipError("recipe distill trains from the capture's points; continue a model with recipe joint")
        from scenezip.splatting.compress import train_distilled

        return train_distilled(config, dataset, on_step)
    recipe = recipe_for(config, scaled_steps(config))
    recipe.check()
    backend, device = _resolve_device(config)
    ds = dataset if dataset is not None else load_capture(config)
    train_ids = ds.indices("train")
    if len(train_ids) == 0:
        raise ScenezipError(f"{ds.root}: the capture has no training images")
    if len(ds.points) < 2:
        raise ScenezipError(f"{ds.root}: need at least 2 initial points, got {len(ds.points)}")
    bg_color = background_of(config, ds)
    out = Path(config.out)
    extent = scene_extent(ds.cameras[train_ids])
    recipe.prepare(ds)

    # ---- state: fresh or from the newest checkpoint
    gen = torch.Generator(device=device)
    gen.manual_seed(config.seed)
    start, train_s = 0, 0.0
    if config.resume:
        ckpt, ckpt_path = load_resume_checkpoint(
            out, CHECKPOINT_FORMAT, "Gaussian", recipe.method, "3dgs", _config_dict(config), _RUNTIME_FIELDS
        )
        model = recipe.model_from_dict(ckpt["model"], device, str(ckpt_path))
        optimizers = recipe.optimizers(model, extent)
        for name, opt in optimizers.items():
            opt.load_state_dict(ckpt["optimizers"][name])
        start, train_s = int(ckpt["step"]), float(ckpt["train_s"])
        if ckpt["rng"].get("device_type") == device.type:
            gen.set_state(ckpt["rng"]["split"])
        else:  # RNG states do not transfer between CPU and CUDA generators
            gen.manual_seed(config.seed + start)
    else:
        torch.manual_seed(config.seed)
        model = recipe.init_model(ds, device) if init_model is None else init_model.to(device)
        optimizers = recipe.optimizers(model, extent)
        ckpt = None
    controller = DensityController(
        config.densify, config.steps, extent, grad_key=recipe.grad_key, prune_fn=recipe.prune_fn(model), generator=gen
    )
    if ckpt is not None:
        controller.load_state_dict(ckpt["densify"], device=device)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(_config_dict(config), indent=2) + "\n")

    def save_checkpoint(step: int) -> Path:
        return write_checkpoint(
            out,
            step,
            {
                "format": CHECKPOINT_FORMAT,
                "version": CHECKPOINT_VERSION,
                "method": recipe.method,
                "step": step,
                "train_s": train_s,
                "model": model.to_dict(),
                "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                "densify": controller.state_dict(),
                "rng": {"split": gen.get_state(), "device_type": device.type},
                "config": _config_dict(config),
            },
            config.keep_checkpoints,
        )

    images = _Images(ds, device, need_alpha=config.random_background)
    base_bg = torch.tensor(bg_color, dtype=torch.float32, device=device)
    render_kw = dict(
        backend=backend, rasterize_mode=config.rasterize_mode, near_plane=config.near_plane, far_plane=config.far_plane
    )
    eval_kw = eval_settings(config, ds, backend)
    lam = config.ssim_lambda
    last_ckpt: Path | None = None
    bar = tqdm(total=config.steps, initial=start, disable=not config.progress, dynamic_ncols=True, desc=recipe.method)

    step = start
    with _Interrupt() as interrupt:
        try:
            for step in range(start + 1, config.steps + 1):
                t0 = time.perf_counter()
                idx = image_order(config.seed, step, train_ids)
                gt = images.rgb(idx)
                cam = ds.cameras[idx].to(device)
                w, h = int(cam.widths[0]), int(cam.heights[0])
                if config.random_background:
                    rng = np.random.default_rng((config.seed, step, 1))
                    bg = torch.tensor(rng.random(3), dtype=torch.float32, device=device)
                    alpha = images.alpha(idx)
                    if alpha is not None:  # re-composite the capture's alpha on the same colour
                        gt = gt + (bg - base_bg) * (1.0 - alpha)
                else:
                    bg = base_bg
                optimizers["means"].param_groups[0]["lr"] = means_lr(config, step, extent)
                recipe.before_step(model, optimizers, step)
                sh = controller.schedule.sh_degree(step, getattr(config, "sh_degree", 0))
                img, meta, extra = recipe.render(model, cam, w, h, bg, step, sh, render_kw)
                if config.densify.enabled and controller.schedule.accumulates(step):
                    controller.retain_grads(meta)
                l1 = (img - gt).abs().mean()
                loss = (1.0 - lam) * l1 + lam * (1.0 - ssim(img, gt)) if lam > 0 else l1
                if extra is not None:
                    loss = loss + extra
                loss.backward()
                for opt in optimizers.values():
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                counts = controller.step(model.splats, optimizers, step, meta)
                counts.update(recipe.after_step(model, optimizers, step, controller))
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                train_s += time.perf_counter() - t0

                bar.update(1)
                if step % 10 == 0 or step == config.steps:
                    mse = float(((img.detach() - gt) ** 2).mean())
                    psnr_step = -10.0 * math.log10(max(mse, 1e-10))
                    bar.set_postfix(loss=f"{float(loss.detach()):.4f}", psnr=f"{psnr_step:.2f}", n=str(len(model)))
                if on_step is not None:
                    on_step(step, {"loss": float(loss.detach()), "n_gaussians": len(model), **counts})
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    last_ckpt = save_checkpoint(step)
                if config.eval_every and step % config.eval_every == 0 and step < config.steps:
                    m = evaluate(model, ds, "test", **eval_kw)
                    bar.write(
                        f"step {step}: {m['split']} PSNR {m['psnr']:.2f} SSIM {m['ssim']:.4f} ({len(model)} Gaussians)"
                    )
                if interrupt.requested:
                    last_ckpt = save_checkpoint(step)
                    bar.write(f"interrupted: wrote {last_ckpt}; continue with resume")
                    raise KeyboardInterrupt
        finally:
            bar.close()

    if last_ckpt is None or not last_ckpt.name.endswith(f"{config.steps:05d}.pt"):
        last_ckpt = save_checkpoint(config.steps)
    final = recipe.final_model(model)
    metrics = evaluate(final, ds, "test", **eval_kw)
    metrics.update(
        n_gaussians=len(final),
        train_s=train_s,
        steps=config.steps,
        device=str(device),
        backend=backend,
        method=recipe.method,
    )
    model_path = model.save(out / recipe.model_file)
    metrics_path = out / METRICS_FILE
    tmp = metrics_path.with_name(METRICS_FILE + ".tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    os.replace(tmp, metrics_path)
    return TrainResult(
        out_dir=out,
        model_path=model_path,
        metrics_path=metrics_path,
        checkpoint_path=last_ckpt,
        metrics=metrics,
        n_gaussians=len(final),
        train_s=train_s,
        steps=config.steps,
        model=model,
    )
