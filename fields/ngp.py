"""The ``ngp`` representation: NeRF field + occupancy grid + scene box, rendered by ray marching.

Written by hand to give hash-grid NeRFs the interface every scenezip method has: ``render(viewmats,
Ks, width, height, backgrounds=None, backend="auto") -> (colors, alphas, meta)``, ``to_dict`` /
``from_dict`` for checkpoints and ``len()`` (here the number of hash-table entries). Rendering marches
the rays of all cameras in chunks of ``chunk`` rays (bounded memory): samples every
``step_size`` inside the box, empty cells skipped by the occupancy grid, rays stopped once their
transmittance falls below ``early_stop_eps``, then the field is evaluated on the kept samples and
composited with :func:`scenezip.render.volume.composite` (packed form).

The compressed variant (``cngp``) is this model plus a transform of the flat hash table:
:meth:`NGPModel.set_hash_transform` installs a callable the encoding reads the table through
(identity by default), so masks and fake quantization need no copy of the model.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from scenezip._backend import Backend, resolve_backend
from scenezip.errors import ScenezipError
from scenezip.fields.hashgrid import HashGridConfig
from scenezip.fields.nerf import HashTransform, NeRFField
from scenezip.fields.occupancy import OccupancyGrid, RaySamples, default_step_size, march_rays
from scenezip.render.volume import camera_rays, composite

MODEL_FORMAT = "scenezip.ngp"
MODEL_VERSION = 1


@dataclasses.dataclass(frozen=True)
class NGPArch:
    """Everything that fixes an :class:`NGPModel`'s shapes and rendering (stored in files and checkpoints).

    Attributes:
        aabb: scene box ``((xmin, ymin, zmin), (xmax, ymax, zmax))`` in normalized world units.
        grid: hash-grid settings.
        hidden_dim: width of the density and colour MLPs.
        geo_features: geometry features from the density MLP to the colour MLP.
        color_layers: hidden layers of the colour MLP.
        occ_resolution: occupancy cells per axis.
        march_steps: marching steps across the box diagonal (step size = diagonal / march_steps).
    """

    aabb: tuple[tuple[float, float, float], tuple[float, float, float]]
    grid: HashGridConfig = HashGridConfig()
    hidden_dim: int = 64
    geo_features: int = 15
    color_layers: int = 2
    occ_resolution: int = 128
    march_steps: int = 1024

    def to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["aabb"] = [list(map(float, self.aabb[0])), list(map(float, self.aabb[1]))]
        return d

    @classmethod
    def from_json(cls, d: Any) -> "NGPArch":
        """Rebuild from :meth:`to_json`; raises ScenezipError (or its subclasses' callers wrap it) on bad input."""
        if not isinstance(d, dict):
            raise ScenezipError(f"ngp architecture must be a dict, got {type(d).__name__}")
        fields = {f.name for f in dataclasses.fields(cls)}
        gfields = {f.name for f in dataclasses.fields(HashGridConfig)}
        if set(d) != fields or not isinstance(d.get("grid"), dict) or set(d["grid"]) != gfields:
            raise ScenezipError(f"ngp architecture must have keys {sorted(fields)} (grid: {sorted(gfields)})")
        try:
            aabb = tuple(tuple(float(v) for v in row) for row in d["aabb"])
            if len(aabb) != 2 or any(len(r) != 3 for r in aabb):
                raise ValueError("aabb must be 2 rows of 3 numbers")
            ints = {k: d[k] for k in ("hidden_dim", "geo_features", "color_layers", "occ_resolution", "march_steps")}
            for k, v in ints.items():
                if isinstance(v, bool) or not isinstance(v, int) or v < (0 if k == "color_layers" else 1):
                    raise ValueError(f"{k} must be a positive integer, got {v!r}")
            if ints["occ_resolution"] > 1024:
                raise ValueError(f"occ_resolution must be <= 1024, got {ints['occ_resolution']}")
            grid = HashGridConfig(**d["grid"])
        except (TypeError, ValueError) as e:
            raise ScenezipError(f"bad ngp architecture: {e}") from None
        if grid.n_input_dims != 3 or not all(hi > lo for lo, hi in zip(*aabb)):
            raise ScenezipError("bad ngp architecture: needs a 3D grid and a box with max > min")
        return cls(aabb=aabb, grid=grid, **ints)


class NGPModel(nn.Module):
    """Instant-NGP-style NeRF: :class:`NeRFField` + :class:`OccupancyGrid` over one scene box."""

    def __init__(self, arch: NGPArch, backend: Backend = "auto", seed: int = 0) -> None:
        super().__init__()
        self.arch = arch
        aabb = torch.tensor(arch.aabb, dtype=torch.float32)
        self.field = NeRFField(aabb, arch.grid, arch.hidden_dim, arch.geo_features, arch.color_layers, backend, seed)
        self.occupancy = OccupancyGrid(aabb, arch.occ_resolution)
        self.step_size = default_step_size(aabb, arch.march_steps)

    # ------------------------------------------------------------------------------------ basics
    @property
    def aabb(self) -> Tensor:
        return self.field.aabb

    @property
    def device(self) -> torch.device:
        return self.field.aabb.device

    def __len__(self) -> int:
        """Number of hash-table entries (all levels)."""
        return self.field.grid.params.numel() // self.arch.grid.n_features_per_level

    @property
    def hash_transform(self) -> HashTransform | None:
        """The callable the encoding reads the flat hash table through (None: identity)."""
        return self.field.hash_transform

    def set_hash_transform(self, fn: HashTransform | None) -> None:
        """Install (or remove, with None) the hash-table transform. An ``nn.Module`` transform becomes a
        submodule (moved by ``.to``, its parameters in ``parameters()``) but is never saved by
        :meth:`to_dict`; its owner saves it."""
        if fn is not None and not callable(fn):
            raise ValueError(f"hash transform must be callable or None, got {type(fn).__name__}")
        self.field._modules.pop("hash_transform", None)
        self.field.__dict__.pop("hash_transform", None)
        self.field.hash_transform = fn

    def hash_params(self) -> Tensor:  # [n_params]
        """The flat hash table the encoding reads (after the transform)."""
        return self.field.hash_params()

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by kind: ``grid`` (hash table) and ``mlp`` (both MLPs)."""
        return {
            "grid": [self.field.grid.params],
            "mlp": list(self.field.density_mlp.parameters()) + list(self.field.color_mlp.parameters()),
        }

    # ---------------------------------------------------------------------------------- rendering
    def sample(
        self, origins: Tensor, dirs: Tensor, *, jitter: Tensor | None = None, early_stop_eps: float = 1e-4,
        alpha_thresh: float = 0.0, near: float = 0.0, use_occupancy: bool = True, prune: bool = True,
    ) -> RaySamples:  # fmt: skip
        """March rays ``[R, 3]`` through the box; ``prune`` evaluates densities (no gradient) to stop early."""
        return march_rays(
            origins, dirs, self.aabb, self.step_size, self.occupancy if use_occupancy else None, near=near,
            sigma_fn=self.field.density if prune else None, early_stop_eps=early_stop_eps,
            alpha_thresh=alpha_thresh, jitter=jitter,
        )  # fmt: skip

    def render_rays(
        self,
        origins: Tensor,  # [R, 3]
        dirs: Tensor,  # [R, 3] unit
        backgrounds: Tensor | None = None,  # [3] or [R, 3]
        *,
        jitter: Tensor | None = None,
        **sample_kw: Any,
    ) -> dict[str, Tensor]:
        """Differentiable render of a batch of rays: ``rgb [R, 3]`` (background blended), ``opacity
        [R, 1]``, ``depth [R, 1]`` and ``n_samples`` (0-dim)."""
        s = self.sample(origins, dirs, jitter=jitter, **sample_kw)
        R = origins.shape[0]
        if s.ray_indices.numel() == 0:
            rgb = origins.new_zeros(R, 3)
            opacity = origins.new_zeros(R, 1)
            depth = origins.new_zeros(R, 1)
            if backgrounds is not None:
                rgb = rgb + backgrounds.to(rgb)
            return {"rgb": rgb, "opacity": opacity, "depth": depth, "n_samples": torch.tensor(0)}
        pts = s.positions(origins, dirs)
        sigmas, rgbs = self.field(pts, dirs[s.ray_indices])
        rgb, opacity, depth, _ = composite(
            sigmas, rgbs, s.t_starts, s.t_ends, s.ray_indices, R, backgrounds=backgrounds
        )
        return {"rgb": rgb, "opacity": opacity, "depth": depth, "n_samples": torch.tensor(s.ray_indices.numel())}

    @torch.no_grad()
    def render_rays_inference(
        self,
        origins: Tensor,  # [R, 3]
        dirs: Tensor,  # [R, 3] unit
        backgrounds: Tensor | None = None,  # [3] or [R, 3]
        *,
        early_stop_eps: float = 1e-4,
        near: float = 0.0,
        segment: int = 32,
    ) -> dict[str, Tensor]:
        """:meth:`render_rays` without gradients, in one pass: rays are marched ``segment`` steps at a
        time, the field is evaluated once per kept sample and composited at once, and rays whose
        transmittance falls below ``early_stop_eps`` leave the loop. Same samples and weights as
        :meth:`render_rays` (samples behind the early-stop point get no weight in either)."""
        from scenezip.fields.occupancy import _segment_candidates
        from scenezip.render.volume import blend_background, packed_exclusive_sum

        R, dev = origins.shape[0], origins.device
        trans = torch.ones(R, device=dev)
        rgb = torch.zeros(R, 3, device=dev)
        depth = torch.zeros(R, 1, device=dev)
        acc = torch.zeros(R, 1, device=dev)
        n = 0
        for ray, _, t0, t1, pts, alive in _segment_candidates(
            origins, dirs, self.aabb, self.step_size, self.occupancy, near=near, segment=segment
        ):
            if ray.numel():
                sig, col = self.field(pts, dirs[ray])
                tau = sig * (t1 - t0)
                before = trans[ray] * torch.exp(-packed_exclusive_sum(tau, ray, R))
                w = before * (1.0 - torch.exp(-tau)) * (before >= early_stop_eps)
                rgb.index_add_(0, ray, w[:, None] * col)
                acc.index_add_(0, ray, w[:, None])
                depth.index_add_(0, ray, (w * (t0 + t1) * 0.5)[:, None])
                trans = trans * torch.exp(-torch.zeros(R, device=dev).index_add(0, ray, tau))
                n += ray.numel()
            alive &= trans >= early_stop_eps
        if backgrounds is not None:
            rgb = blend_background(rgb, acc, backgrounds)
        return {"rgb": rgb, "opacity": acc, "depth": depth, "n_samples": torch.tensor(n)}

    def render(
        self,
        viewmats: Tensor,  # [C, 4, 4]
        Ks: Tensor,  # [C, 3, 3]
        width: int,
        height: int,
        backgrounds: Tensor | None = None,  # [C, 3]
        backend: str = "auto",
        *,
        chunk: int = 4096,
        early_stop_eps: float = 1e-4,
        near: float = 0.0,
        **_: Any,
    ) -> tuple[Tensor, Tensor, dict]:  # colors [C, H, W, 3], alphas [C, H, W, 1], meta
        """Render ``C`` cameras in chunks of ``chunk`` rays; ``meta`` holds ``depths [C, H, W, 1]`` and
        ``n_samples`` (field evaluations). ``backend`` picks the hash-grid path (``auto``, ``torch``,
        ``cuda``); other keyword arguments of other methods' renderers are ignored."""
        if backgrounds is not None and backgrounds.shape != (viewmats.shape[0], 3):
            raise ValueError(f"backgrounds must have shape [C, 3] = [{viewmats.shape[0]}, 3], got {tuple(backgrounds.shape)}")
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        dev = self.device
        resolved = resolve_backend(backend, "tcnn")
        old = self.field.grid.backend
        self.field.grid.backend = resolved if resolved == "torch" or dev.type == "cuda" else "torch"
        try:
            o, d = camera_rays(viewmats.to(dev, torch.float32), Ks.to(dev, torch.float32), width, height)
            C, H, W = o.shape[:3]
            o, d = o.reshape(-1, 3), d.reshape(-1, 3)
            bg = None if backgrounds is None else backgrounds.to(dev, torch.float32).repeat_interleave(H * W, dim=0)
            rgbs, alphas, depths, n = [], [], [], 0
            fn = self.render_rays if torch.is_grad_enabled() else self.render_rays_inference
            for s0 in range(0, o.shape[0], chunk):
                out = fn(
                    o[s0 : s0 + chunk], d[s0 : s0 + chunk], None if bg is None else bg[s0 : s0 + chunk],
                    early_stop_eps=early_stop_eps, near=near,
                )  # fmt: skip
                rgbs.append(out["rgb"])
                alphas.append(out["opacity"])
                depths.append(out["depth"])
                n += int(out["n_samples"])
        finally:
            self.field.grid.backend = old
        colors = torch.cat(rgbs).reshape(C, H, W, 3)
        meta = {"depths": torch.cat(depths).reshape(C, H, W, 1), "n_samples": n}
        return colors, torch.cat(alphas).reshape(C, H, W, 1), meta

    # ------------------------------------------------------------------------------- checkpoints
    def to_dict(self) -> dict[str, Any]:
        """Architecture and every tensor (CPU), without the hash transform's own state."""
        state = {k: v.detach().cpu().clone() for k, v in self.state_dict().items() if not k.startswith("field.hash_transform.")}
        return {"format": MODEL_FORMAT, "version": MODEL_VERSION, "arch": self.arch.to_json(), "state": state}

    @classmethod
    def from_dict(
        cls, d: dict[str, Any], device: str | torch.device = "cpu", backend: Backend = "auto", source: str = "model"
    ) -> "NGPModel":
        """Inverse of :meth:`to_dict`; raises ScenezipError naming ``source`` when ``d`` is not one."""
        if not isinstance(d, dict) or d.get("format") != MODEL_FORMAT or d.get("version") != MODEL_VERSION:
            raise ScenezipError(f"{source}: not a scenezip ngp model (format {MODEL_FORMAT} v{MODEL_VERSION})")
        try:
            arch = NGPArch.from_json(d["arch"])
        except ScenezipError as e:
            raise ScenezipError(f"{source}: {e}") from None
        model = cls(arch, backend=backend)
        try:
            model.load_state_dict(d["state"], strict=True)
        except (RuntimeError, KeyError, TypeError) as e:
            raise ScenezipError(f"{source}: model tensors do not match the architecture ({e})") from None
        return model.to(device)
