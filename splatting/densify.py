"""Adaptive density control of Kerbl et al. 2023: clone, split, prune and opacity reset.

Written by hand against the facts of the 3DGS paper and gsplat's ``DefaultStrategy`` (thresholds,
normalization of the screen-space gradient, order of operations). It works on a mutable mapping of
``nn.Parameter``s (a ``dict`` or ``nn.ParameterDict``) and the optimizers that hold them, not on one model
class, so 2D surfels and masked Gaussians reuse it: any extra per-Gaussian parameter (a mask logit, a
feature) is copied, repeated or dropped row-wise along with the others.

Required parameters: ``means [N, 3]``, ``quats [N, 4]``, ``scales [N, S]`` (log; ``S`` is 3, or 2 for
surfels, whose third axis is flat) and ``opacities [N]`` (logit). Optimizer surgery: every optimizer state
tensor with ``N`` rows (Adam's ``exp_avg``, ``exp_avg_sq``) follows its parameter; new rows get zero
moments, kept rows keep theirs, removed rows are dropped; scalar state (``step``) is kept.

Schedule (1-based step numbers, i.e. the number of optimizer steps taken so far, as 3DGS counts):

- screen-space gradient norms are accumulated while ``step < refine_stop``;
- refinement at ``refine_start < step < refine_stop`` with ``step % refine_every == 0``: clone small
  Gaussians with a high mean gradient, split large ones, then prune transparent ones (and, once
  ``step > reset_every``, ones larger than ``prune_scale * extent``), then clear the statistics;
- opacity reset at ``step % reset_every == 0`` while ``step < refine_stop``. (gsplat 1.5.3's
  ``DefaultStrategy`` writes this test as ``step % reset_every == 0 & step > 0``, which Python parses as
  a chained comparison that is always false, so gsplat never resets; we follow the paper.)
- the rendered SH degree is ``min(max_degree, step // sh_degree_every)``.

All step numbers are multiplied by ``schedule_scale`` (default ``total_steps / 30000``), rounded, and kept
at least 1, so a short run keeps the shape of the 30k-step schedule: at 1500 steps refinement runs every 5
steps from 25 to 750 and opacities reset every 150 steps. Refinement then averages gradients over fewer
views, and Gaussians have fewer steps to settle between refinements; that is the price of a short run.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Mapping, MutableMapping

import torch
from torch import Tensor, nn

from scenezip.render._project import quat_to_rotmat
from scenezip.splatting.config import DensifyConfig

Params = MutableMapping[str, nn.Parameter]
Optimizers = Mapping[str, torch.optim.Optimizer]


# ---------------------------------------------------------------------------------------------- schedule
@dataclass(frozen=True)
class DensifySchedule:
    """Resolved integer steps of a run (see the module docstring)."""

    refine_start: int
    refine_stop: int
    refine_every: int
    reset_every: int
    sh_degree_every: int

    @classmethod
    def from_config(cls, config: DensifyConfig, total_steps: int) -> "DensifySchedule":
        """Scale the reference-run steps of ``config`` to a run of ``total_steps``."""
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1, got {total_steps}")
        if config.reference_steps < 1:
            raise ValueError(f"reference_steps must be >= 1, got {config.reference_steps}")
        s = config.schedule_scale if config.schedule_scale is not None else total_steps / config.reference_steps
        if not s > 0:
            raise ValueError(f"schedule_scale must be > 0, got {config.schedule_scale}")

        def scaled(v: int, lo: int = 1) -> int:
            return max(lo, int(round(v * s)))

        return cls(
            refine_start=scaled(config.refine_start, lo=0),
            refine_stop=scaled(config.refine_stop),
            refine_every=scaled(config.refine_every),
            reset_every=scaled(config.reset_every),
            sh_degree_every=scaled(config.sh_degree_every),
        )

    def accumulates(self, step: int) -> bool:
        return step < self.refine_stop

    def refines(self, step: int) -> bool:
        return self.refine_start < step < self.refine_stop and step % self.refine_every == 0

    def resets(self, step: int) -> bool:
        return 0 < step < self.refine_stop and step % self.reset_every == 0

    def prunes_large(self, step: int) -> bool:
        return step > self.reset_every

    def sh_degree(self, step: int, max_degree: int) -> int:
        return min(int(max_degree), step // self.sh_degree_every)


# ---------------------------------------------------------------------------------------------- surgery
def _row_tensor(v: Any, n: int) -> bool:
    return isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == n


@torch.no_grad()
def update_rows(
    params: Params,
    optimizers: Optimizers,
    param_fn: Callable[[str, Tensor], Tensor],
    state_fn: Callable[[str, Tensor], Tensor],
    names: list[str] | None = None,
) -> None:
    """Replace ``params[name]`` by ``param_fn(name, old)`` and rewrite optimizer state to match.

    Every optimizer in ``optimizers`` that holds the old parameter (found by identity, in any param
    group) is pointed at the new one; its per-row state tensors become ``state_fn(key, old_state)``.
    """
    for name in list(params.keys()) if names is None else names:
        old = params[name]
        n = old.shape[0]
        new = nn.Parameter(param_fn(name, old.data), requires_grad=old.requires_grad)
        for opt in optimizers.values():
            for group in opt.param_groups:
                for i, p in enumerate(group["params"]):
                    if p is old:
                        group["params"][i] = new
                        st = opt.state.pop(old, None)
                        if st is not None:
                            opt.state[new] = {k: state_fn(k, v) if _row_tensor(v, n) else v for k, v in st.items()}
        params[name] = new


def _update_stats(stats: MutableMapping[str, Any] | None, n: int, fn: Callable[[Tensor], Tensor]) -> None:
    if stats is None:
        return
    for k, v in list(stats.items()):
        if _row_tensor(v, n):
            stats[k] = fn(v)


def _n(params: Params) -> int:
    return int(params["means"].shape[0])


@torch.no_grad()
def duplicate(
    params: Params, optimizers: Optimizers, mask: Tensor, stats: MutableMapping[str, Any] | None = None
) -> int:
    """Clone the Gaussians where ``mask [N]`` is true; copies are appended with zero optimizer moments."""
    n = _n(params)
    sel = torch.nonzero(mask, as_tuple=True)[0]
    if sel.numel() == 0:
        return 0
    update_rows(
        params,
        optimizers,
        lambda _, p: torch.cat([p, p[sel]]),
        lambda _, v: torch.cat([v, v.new_zeros((len(sel), *v.shape[1:]))]),
    )
    _update_stats(stats, n, lambda v: torch.cat([v, v.new_zeros((len(sel), *v.shape[1:]))]))
    return int(sel.numel())


@torch.no_grad()
def split(
    params: Params,
    optimizers: Optimizers,
    mask: Tensor,
    stats: MutableMapping[str, Any] | None = None,
    n_samples: int = 2,
    scale_div: float = 1.6,
    generator: torch.Generator | None = None,
) -> int:
    """Replace each Gaussian where ``mask [N]`` is true by ``n_samples`` children.

    Children's means are drawn from the parent Gaussian (``mean + R diag(s) z``, ``z ~ N(0, I)``), their
    scales are the parent's divided by ``scale_div``, every other parameter is copied. Parents are
    removed; children are appended (sample-major) with zero optimizer moments.
    """
    n = _n(params)
    sel = torch.nonzero(mask, as_tuple=True)[0]
    rest = torch.nonzero(~mask, as_tuple=True)[0]
    m = int(sel.numel())
    if m == 0:
        return 0
    scales = torch.exp(params["scales"][sel])  # [M, S]
    if scales.shape[1] < 3:  # surfels: flat third axis
        scales3 = torch.cat([scales, scales.new_zeros(m, 3 - scales.shape[1])], dim=1)
    else:
        scales3 = scales
    rot = quat_to_rotmat(params["quats"][sel])  # [M, 3, 3]
    z = torch.randn((n_samples, m, 3), generator=generator, device=scales.device, dtype=scales.dtype)
    offsets = torch.einsum("mij,mj,bmj->bmi", rot, scales3, z)  # [B, M, 3]

    def param_fn(name: str, p: Tensor) -> Tensor:
        if name == "means":
            child = (p[sel][None] + offsets).reshape(-1, p.shape[1])
        elif name == "scales":
            child = torch.log(scales / scale_div).repeat(n_samples, 1)
        else:
            child = p[sel].repeat(n_samples, *([1] * (p.dim() - 1)))
        return torch.cat([p[rest], child])

    def zeros_fn(_: str, v: Tensor) -> Tensor:
        return torch.cat([v[rest], v.new_zeros((n_samples * m, *v.shape[1:]))])

    update_rows(params, optimizers, param_fn, zeros_fn)
    _update_stats(stats, n, lambda v: zeros_fn("", v))
    return m


@torch.no_grad()
def remove(params: Params, optimizers: Optimizers, mask: Tensor, stats: MutableMapping[str, Any] | None = None) -> int:
    """Drop the Gaussians where ``mask [N]`` is true, with their optimizer state."""
    n = _n(params)
    keep = torch.nonzero(~mask, as_tuple=True)[0]
    removed = n - int(keep.numel())
    if removed == 0:
        return 0
    update_rows(params, optimizers, lambda _, p: p[keep], lambda _, v: v[keep])
    _update_stats(stats, n, lambda v: v[keep])
    return removed


@torch.no_grad()
def reset_opacities(params: Params, optimizers: Optimizers, value: float, name: str = "opacities") -> None:
    """Clamp opacities to at most ``value`` (logits to ``logit(value)``) and zero their optimizer moments."""
    if not 0.0 < value < 1.0:
        raise ValueError(f"value must be in (0, 1), got {value}")
    cap = math.log(value / (1.0 - value))
    update_rows(params, optimizers, lambda _, p: p.clamp(max=cap), lambda _, v: torch.zeros_like(v), names=[name])


# ---------------------------------------------------------------------------------------------- controller
class DensityController:
    """Runs the 3DGS densification schedule on a dict of parameters.

    Usage per step (``step`` 1-based)::

        colors, alphas, meta = rasterization(...)
        controller.retain_grads(meta)
        loss.backward(); optimizer.step()...
        controller.step(params, optimizers, step, meta)

    Args:
        config: thresholds and reference-run schedule.
        total_steps: length of the run (scales the schedule).
        scene_extent: scene scale the clone and prune scale thresholds are relative to.
        grad_key: key of the screen-space means in the rasterizer's ``meta``.
        prune_fn: optional ``params -> [N] bool`` extra prune criterion (e.g. a learned mask), applied at
            every refinement.
        generator: RNG for split sampling (default: torch's global RNG).
    """

    def __init__(
        self,
        config: DensifyConfig,
        total_steps: int,
        scene_extent: float,
        grad_key: str = "means2d",
        prune_fn: Callable[[Params], Tensor] | None = None,
        generator: torch.Generator | None = None,
    ):
        if not scene_extent > 0:
            raise ValueError(f"scene_extent must be > 0, got {scene_extent}")
        if config.split_samples < 2:
            raise ValueError(f"split_samples must be >= 2, got {config.split_samples}")
        self.config = config
        self.schedule = DensifySchedule.from_config(config, total_steps)
        self.scene_extent = float(scene_extent)
        self.grad_key = grad_key
        self.prune_fn = prune_fn
        self.generator = generator
        self.stats: dict[str, Tensor | None] = {"grad2d": None, "count": None}

    # -------------------------------------------------------------- statistics
    def retain_grads(self, meta: Mapping[str, Any]) -> None:
        """Ask autograd to keep the gradient of the screen-space means (call before backward)."""
        t = meta.get(self.grad_key)
        if t is None:
            raise KeyError(f"rasterizer meta has no {self.grad_key!r}; densification needs it")
        if t.requires_grad:
            t.retain_grad()

    @torch.no_grad()
    def accumulate(self, meta: Mapping[str, Any], n_gaussians: int) -> None:
        """Add this step's screen-space gradient norms (normalized to NDC, as gsplat does) to the stats."""
        means2d = meta[self.grad_key]
        grad = means2d.grad
        if grad is None:
            return
        grad = grad.detach().clone()
        C = grad.shape[0]
        width, height = float(meta["width"]), float(meta["height"])
        grad[..., 0] *= width / 2.0 * C
        grad[..., 1] *= height / 2.0 * C
        radii = meta["radii"]
        visible = (radii > 0).all(dim=-1) if radii.dim() == grad.dim() else radii > 0  # [C, N]
        ids = torch.nonzero(visible, as_tuple=True)[1]
        norms = grad[visible].norm(dim=-1)
        dev = grad.device
        if self.stats["grad2d"] is None or self.stats["grad2d"].shape[0] != n_gaussians:
            self.stats["grad2d"] = torch.zeros(n_gaussians, device=dev)
            self.stats["count"] = torch.zeros(n_gaussians, device=dev)
        self.stats["grad2d"].index_add_(0, ids, norms.to(torch.float32))
        self.stats["count"].index_add_(0, ids, torch.ones_like(norms, dtype=torch.float32))

    # -------------------------------------------------------------- one step
    @torch.no_grad()
    def step(self, params: Params, optimizers: Optimizers, step: int, meta: Mapping[str, Any]) -> dict[str, int]:
        """Accumulate statistics and refine / reset when the schedule says so (call after backward).

        Returns counts ``{"cloned", "split", "pruned", "reset"}`` of what happened at this step.
        """
        out = {"cloned": 0, "split": 0, "pruned": 0, "reset": 0}
        sch = self.schedule
        if not sch.accumulates(step):
            return out
        if self.config.enabled:
            self.accumulate(meta, _n(params))
            if sch.refines(step) and self.stats["grad2d"] is not None:
                out["cloned"], out["split"] = self.grow(params, optimizers)
                out["pruned"] = self.prune(params, optimizers, large=sch.prunes_large(step))
                self.stats["grad2d"].zero_()
                self.stats["count"].zero_()
        if sch.resets(step):
            reset_opacities(params, optimizers, self.config.reset_opacity)
            out["reset"] = 1
        return out

    @torch.no_grad()
    def grow(self, params: Params, optimizers: Optimizers) -> tuple[int, int]:
        """Clone small and split large Gaussians whose mean gradient exceeds the threshold."""
        cfg = self.config
        grads = self.stats["grad2d"] / self.stats["count"].clamp_min(1)
        high = grads > cfg.grad_threshold
        small = torch.exp(params["scales"]).max(dim=-1).values <= cfg.clone_scale * self.scene_extent
        clone = high & small
        splits = high & ~small
        if cfg.max_gaussians > 0:
            clone, splits = self._cap(grads, clone, splits, _n(params))
        n_clone = duplicate(params, optimizers, clone, self.stats)
        splits = torch.cat([splits, splits.new_zeros(n_clone)])  # clones are not split
        n_split = split(
            params,
            optimizers,
            splits,
            self.stats,
            n_samples=cfg.split_samples,
            scale_div=cfg.split_scale_div,
            generator=self.generator,
        )
        return n_clone, n_split

    def _cap(self, grads: Tensor, clone: Tensor, splits: Tensor, n: int) -> tuple[Tensor, Tensor]:
        """Keep the highest-gradient growth candidates that fit under ``max_gaussians``."""
        budget = self.config.max_gaussians - n
        cost = clone.long() + splits.long() * (self.config.split_samples - 1)
        if int(cost.sum()) <= budget:
            return clone, splits
        keep = torch.zeros_like(clone)
        if budget > 0:
            cand = torch.nonzero(cost > 0, as_tuple=True)[0]
            order = cand[torch.argsort(grads[cand], descending=True, stable=True)]
            fits = torch.cumsum(cost[order], 0) <= budget
            keep[order[fits]] = True
        return clone & keep, splits & keep

    @torch.no_grad()
    def prune(self, params: Params, optimizers: Optimizers, large: bool) -> int:
        """Remove transparent Gaussians, and too-large ones when ``large``; keeps at least one Gaussian."""
        cfg = self.config
        mask = torch.sigmoid(params["opacities"].flatten()) < cfg.prune_opacity
        if large:
            mask |= torch.exp(params["scales"]).max(dim=-1).values > cfg.prune_scale * self.scene_extent
        if self.prune_fn is not None:
            mask |= self.prune_fn(params).to(mask.device).bool()
        if bool(mask.all()):
            msg = "densify: every Gaussian met a prune criterion; pruning skipped"
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            return 0
        return remove(params, optimizers, mask, self.stats)

    # -------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {k: None if v is None else v.detach().cpu().clone() for k, v in self.stats.items()}

    def load_state_dict(self, state: Mapping[str, Any], device: torch.device | str = "cpu") -> None:
        self.stats = {k: None if state.get(k) is None else state[k].to(device) for k in ("grad2d", "count")}
