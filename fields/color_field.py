"""Neural colour field of Compact-3DGS (Lee et al., CVPR 2024): hash grid + view SH + tiny MLP.

Written by hand after the Compact-3DGS recipe, in scenezip's layouts. Every Gaussian's colour is

    rgb = head(MLP([hashgrid(contract(mean)), SH_3(view_dir)]))

instead of 48 stored SH coefficients per Gaussian; only the hash table and the MLP are stored.

- ``contract`` (see its docstring for the formula): Compact-3DGS' ``contract_to_unisphere`` (L2 norm)
  by default, with a box given by the caller (Compact-3DGS fixes it at ``[-1, 1]^3`` world units).
- Hash grid (:class:`scenezip.fields.hashgrid.HashGrid`, tiny-cuda-nn's layout): 16 levels, 2 features,
  ``log2_hashmap_size`` 19 (Compact-3DGS uses 16 for NeRF-synthetic; pick smaller for small scenes),
  base resolution 16, ``per_level_scale`` 1.447 (Compact-3DGS' value): the finest level has 4085
  vertices per axis of the contracted cube, so about 2040 across the scene box, which the default
  contraction maps to ``[0.25, 0.75]^3``.
- View encoding: real SH of degree 3 (16 values) of the unit direction camera -> Gaussian, in the
  basis of :func:`scenezip.render.sh.sh_basis` (3DGS / gsplat signs). Compact-3DGS feeds ``[-1, 1]``
  directions to tcnn's SH encoding, which expects ``[0, 1]`` inputs and maps them by ``2x - 1``;
  we encode the true unit direction instead (only the MLP sees this, so nothing else changes).
- MLP: 2 hidden layers of 64, ReLU, no biases (tcnn ``FullyFusedMLP`` as in Compact-3DGS), 3 outputs.
  Input order: grid features (level-major), then the SH values. Output head ``"sigmoid"`` (default,
  RGB in ``(0, 1)``) or ``"sh0"``: Compact-3DGS treats the MLP output as a degree-0 SH coefficient,
  i.e. ``rgb = max(0.28209479 * out + 0.5, 0)`` (unbounded above).
- Compact-3DGS detaches the means before the field (the colour does not move the Gaussians);
  ``position_gradient=False`` (default) does the same.

Backends: the hash grid runs tcnn on CUDA where installed (``backend``), the MLP is always torch
(:mod:`scenezip.fields.mlp` says why), so parameters have one layout everywhere and a model trained
on a GPU evaluates on a CPU.

Per-camera colours: the view direction differs per camera, so colours are ``[C, N, 3]``. The grid
features do not depend on the camera: :meth:`ColorField.features` computes them once, and
:meth:`ColorField.colors_from_features` evaluates the MLP per camera (the grid part of the first
layer is multiplied once). scenezip's :func:`scenezip.render.rasterization.rasterization` takes
``colors [N, D]`` for all cameras of a call, so render one camera per call with that camera's
``[N, 3]`` colours (gsplat itself also accepts ``[C, N, D]``).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scenezip._backend import Backend
from scenezip.errors import ScenezipError
from scenezip.fields.hashgrid import HashGrid, HashGridConfig
from scenezip.fields.mlp import MLP, mlp_load_flat, mlp_to_flat
from scenezip.render.sh import SH_C0, num_sh_bases, sh_basis

Contraction = Literal["l2", "linf", "none"]
CONTRACTIONS = ("l2", "linf", "none")
OutputHead = Literal["sigmoid", "sh0"]

DEFAULT_BOUNDS = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))  # Compact-3DGS' fixed box, world units


def _as_bounds(bounds: Tensor | Sequence, device=None) -> Tensor:
    b = torch.as_tensor(bounds.detach() if isinstance(bounds, Tensor) else bounds, dtype=torch.float32, device=device)
    b = b.clone()  # never alias the caller's tensor (the module's buffer is written in place)
    if b.shape != (2, 3):
        raise ValueError(f"bounds must have shape [2, 3] (min row, max row), got {tuple(b.shape)}")
    if not bool(torch.isfinite(b).all()) or not bool((b[1] > b[0]).all()):
        raise ValueError(f"bounds must be finite with max > min on every axis, got {b.tolist()}")
    return b


def contract(
    x: Tensor,  # [..., 3]
    bounds: Tensor | Sequence = DEFAULT_BOUNDS,  # [2, 3]: min, max
    mode: Contraction = "l2",
) -> Tensor:  # [..., 3] in [0, 1]
    """Map world points into the unit cube for the hash grid.

    With ``u = 2 (x - min) / (max - min) - 1`` (the box becomes ``[-1, 1]^3``) and ``r = |u|``:

    - ``"l2"`` (Compact-3DGS' ``contract_to_unisphere``, Mip-NeRF 360's contraction):
      ``c = u`` if ``r <= 1`` else ``(2 - 1 / r) u / r`` with the Euclidean ``r``, then ``c / 4 + 0.5``.
      The ball inscribed in the box maps affinely to the ball of radius 1/4 around the centre; the
      box corners (``r = sqrt 3``) are already mildly contracted; everything else, out to infinity,
      lands in the ball of radius 1/2. Always inside ``[0, 1]^3``.
    - ``"linf"``: the same with ``r = max_i |u_i|``: the whole box maps affinely onto
      ``[0.25, 0.75]^3``, the rest of space into the shell out to the cube ``[0, 1]^3``.
    - ``"none"``: ``(x - min) / (max - min)`` clamped to ``[0, 1]`` (bounded object scenes: the
      grid's full resolution spans the box; points outside stick to its faces).

    Monotone along every ray from the box centre. Differentiable (no NaN gradients at the centre).
    """
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[-1] != 3 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a floating-point tensor of shape [..., 3], got {shape}")
    if mode not in CONTRACTIONS:
        raise ValueError(f"mode must be one of {CONTRACTIONS}, got {mode!r}")
    b = _as_bounds(bounds, x.device).to(x.dtype)
    lo, hi = b[0], b[1]
    if mode == "none":
        return ((x - lo) / (hi - lo)).clamp(0.0, 1.0)
    u = 2.0 * (x - lo) / (hi - lo) - 1.0
    r = u.norm(dim=-1, keepdim=True) if mode == "l2" else u.abs().amax(dim=-1, keepdim=True)
    outside = r > 1.0
    r_safe = torch.where(outside, r, torch.ones_like(r))
    c = torch.where(outside, (2.0 - 1.0 / r_safe) * (u / r_safe), u)
    return c * 0.25 + 0.5


def camera_centers_from_viewmats(viewmats: Tensor) -> Tensor:  # [C, 4, 4] -> [C, 3]
    """World-space camera centres of world-to-camera matrices: ``-R^T t``."""
    if not isinstance(viewmats, Tensor) or viewmats.dim() != 3 or viewmats.shape[-2:] != (4, 4):
        shape = tuple(viewmats.shape) if isinstance(viewmats, Tensor) else type(viewmats).__name__
        raise ValueError(f"viewmats must have shape [C, 4, 4], got {shape}")
    R, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    return -torch.einsum("cji,cj->ci", R, t)


@dataclasses.dataclass(frozen=True)
class ColorFieldConfig:
    """Compact-3DGS colour field settings (defaults: the paper's real-scene configuration)."""

    n_levels: int = 16  # hash-grid levels
    n_features_per_level: int = 2  # features per hash-table entry
    log2_hashmap_size: int = 19  # log2 entries per level table (Compact-3DGS: 19 real scenes, 16 NeRF-synthetic)
    base_resolution: int = 16  # vertices per axis of the coarsest level
    per_level_scale: float | None = 1.447  # growth per level (Compact-3DGS); finest level 4085 vertices per axis
    max_resolution: int | None = None  # finest vertices per axis, used only when per_level_scale is None
    view_sh_degree: int = 3  # SH degree of the view-direction encoding (0..3; 3 -> 16 values)
    hidden_dim: int = 64  # MLP hidden width
    n_hidden_layers: int = 2  # MLP hidden layers (ReLU)
    mlp_bias: bool = False  # biases in the MLP (tcnn's FullyFusedMLP, used by Compact-3DGS, has none)
    output: OutputHead = "sigmoid"  # "sigmoid": rgb = sigmoid(out); "sh0": rgb = max(SH_C0 * out + 0.5, 0)
    contraction: Contraction = "l2"  # scene contraction into the grid's unit cube, see contract()
    position_gradient: bool = False  # let colour gradients move the means (Compact-3DGS: no, detached)

    def __post_init__(self) -> None:
        if not 0 <= self.view_sh_degree <= 3:
            raise ScenezipError(f"ColorFieldConfig.view_sh_degree must be in 0..3, got {self.view_sh_degree}")
        if self.hidden_dim < 1 or self.n_hidden_layers < 0:
            raise ScenezipError(
                f"ColorFieldConfig.hidden_dim must be >= 1 and n_hidden_layers >= 0, got {self.hidden_dim}, "
                f"{self.n_hidden_layers}"
            )
        if self.output not in ("sigmoid", "sh0"):
            raise ScenezipError(f"ColorFieldConfig.output must be 'sigmoid' or 'sh0', got {self.output!r}")
        if self.contraction not in CONTRACTIONS:
            raise ScenezipError(f"ColorFieldConfig.contraction must be one of {CONTRACTIONS}, got {self.contraction!r}")
        self.hashgrid()  # validates the grid fields

    def hashgrid(self) -> HashGridConfig:
        """The hash-grid part as a :class:`HashGridConfig` (3D, linear interpolation)."""
        return HashGridConfig(
            n_input_dims=3,
            n_levels=self.n_levels,
            n_features_per_level=self.n_features_per_level,
            log2_hashmap_size=self.log2_hashmap_size,
            base_resolution=self.base_resolution,
            per_level_scale=self.per_level_scale,
            max_resolution=self.max_resolution,
        )


class ColorField(nn.Module):
    """View-dependent colour of Gaussians from their means (see the module docstring).

    Args:
        config: field settings (default: Compact-3DGS' real-scene configuration).
        bounds: ``[2, 3]`` scene box (min row, max row) for :func:`contract`; a buffer, saved in the
            state dict. Compact-3DGS uses ``[-1, 1]^3``.
        backend: hash-grid backend (``"auto"``, ``"torch"``, ``"cuda"`` = tiny-cuda-nn); the MLP is torch.
        seed: initialisation seed of the grid and the MLP.
        cuda_dtype: tcnn compute precision of the grid (None: tcnn's default, float16 on most GPUs).
    """

    def __init__(
        self,
        config: ColorFieldConfig | None = None,
        bounds: Tensor | Sequence = DEFAULT_BOUNDS,
        backend: Backend = "auto",
        seed: int = 0,
        cuda_dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.config = config if config is not None else ColorFieldConfig()
        self.grid = HashGrid(self.config.hashgrid(), backend=backend, seed=seed, cuda_dtype=cuda_dtype)
        self.n_view_dims = num_sh_bases(self.config.view_sh_degree)
        self.mlp = MLP(
            self.grid.n_output_dims + self.n_view_dims, 3, self.config.hidden_dim, self.config.n_hidden_layers,
            bias=self.config.mlp_bias, output_activation="None", seed=seed,
        )  # fmt: skip
        self.register_buffer("bounds", _as_bounds(bounds))

    # ------------------------------------------------------------------ evaluation
    def set_bounds(self, bounds: Tensor | Sequence) -> None:
        """Replace the scene box (``[2, 3]``); do this before training, the grid is tied to it."""
        self.bounds.copy_(_as_bounds(bounds, self.bounds.device))

    def features(self, means: Tensor) -> Tensor:  # [N, 3] -> [N, n_levels * F]
        """Hash-grid features of the contracted means (view-independent; cache them for many cameras)."""
        if not isinstance(means, Tensor) or means.dim() != 2 or means.shape[-1] != 3:
            shape = tuple(means.shape) if isinstance(means, Tensor) else type(means).__name__
            raise ValueError(f"means must have shape [N, 3], got {shape}")
        x = means if self.config.position_gradient else means.detach()
        return self.grid(contract(x.float(), self.bounds, self.config.contraction))

    def view_encoding(self, view_dirs: Tensor) -> Tensor:  # [..., N, 3] -> [..., N, K]
        """SH basis (degree ``view_sh_degree``) of the normalised directions."""
        return sh_basis(self.config.view_sh_degree, F.normalize(view_dirs.float(), dim=-1, eps=1e-12))

    def colors_from_features(self, features: Tensor, view_dirs: Tensor, base: Tensor | None = None) -> Tensor:
        """Colours from cached grid features ``[N, n_levels * F]`` and directions ``[N, 3]`` or
        ``[C, N, 3]`` (camera -> Gaussian, any length). Returns ``[N, 3]`` or ``[C, N, 3]``.

        ``base [N, 3]`` (optional) is added to the MLP output before the head: a per-Gaussian colour the
        field corrects (with the ``"sh0"`` head, a degree-0 SH coefficient; with ``"sigmoid"``, a logit)."""
        n_feat = self.grid.n_output_dims
        if not isinstance(features, Tensor) or features.dim() != 2 or features.shape[-1] != n_feat:
            shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
            raise ValueError(f"features must have shape [N, {n_feat}], got {shape}")
        n = features.shape[0]
        if not isinstance(view_dirs, Tensor) or view_dirs.dim() not in (2, 3) or view_dirs.shape[-2:] != (n, 3):
            shape = tuple(view_dirs.shape) if isinstance(view_dirs, Tensor) else type(view_dirs).__name__
            raise ValueError(f"view_dirs must have shape [N, 3] or [C, N, 3] with N = {n}, got {shape}")
        out = self.mlp.forward_split(features, self.view_encoding(view_dirs))
        if base is not None:
            if not isinstance(base, Tensor) or tuple(base.shape) != (n, 3):
                shape = tuple(base.shape) if isinstance(base, Tensor) else type(base).__name__
                raise ValueError(f"base must have shape [{n}, 3], got {shape}")
            out = out + base.to(out.dtype)
        if self.config.output == "sigmoid":
            return torch.sigmoid(out)
        return torch.clamp_min(SH_C0 * out + 0.5, 0.0)

    def forward(self, means: Tensor, view_dirs: Tensor) -> Tensor:
        """Colours ``[N, 3]`` (``view_dirs [N, 3]``) or ``[C, N, 3]`` (``view_dirs [C, N, 3]``).

        ``view_dirs`` point from the camera to the Gaussian (``means - camera_center``); they are
        normalised here."""
        return self.colors_from_features(self.features(means), view_dirs)

    def colors_for_cameras(
        self, means: Tensor, viewmats: Tensor, features: Tensor | None = None, base: Tensor | None = None
    ) -> Tensor:  # [N, 3], [C, 4, 4] -> [C, N, 3]
        """Per-camera colours for world-to-camera ``viewmats``; pass cached ``features`` to skip the grid
        (``base``: see :meth:`colors_from_features`)."""
        feats = self.features(means) if features is None else features
        centers = camera_centers_from_viewmats(viewmats.to(means.dtype))
        m = means if self.config.position_gradient else means.detach()
        dirs = m[None] - centers[:, None, :]
        return self.colors_from_features(feats, dirs, base)

    # ------------------------------------------------------------------ storage and training
    def mlp_params_fp16(self) -> Tensor:  # [P] float16
        """The MLP's parameters as one float16 vector (storage order of :func:`mlp_to_flat`), on the CPU."""
        return mlp_to_flat(self.mlp, torch.float16)

    @torch.no_grad()
    def zero_output_layer(self) -> None:
        """Zero the MLP's last layer, so the field starts as a zero correction of a ``base`` colour."""
        last = self.mlp.layers[-1]
        last.weight.zero_()
        if last.bias is not None:
            last.bias.zero_()

    def load_fp16(self, flat: Tensor) -> None:
        """Load MLP parameters from a vector written by :meth:`mlp_params_fp16` (any float dtype)."""
        mlp_load_flat(self.mlp, flat)

    def param_groups(self, grid_lr: float = 1e-2, mlp_lr: float = 1e-2) -> list[dict]:
        """Optimizer groups ``[{"params", "lr", "name": "color_grid"}, {..., "name": "color_mlp"}]``.

        Compact-3DGS trains both with one Adam (``lr`` 0.01, ``eps`` 1e-15; 1e-3 for NeRF-synthetic),
        a 100-step linear warm-up from 1% and x0.33 steps at 5k, 15k and 25k iterations."""
        for name, v in (("grid_lr", grid_lr), ("mlp_lr", mlp_lr)):
            if not v >= 0:
                raise ValueError(f"{name} must be >= 0, got {v!r}")
        return [
            {"params": [self.grid.params], "lr": float(grid_lr), "name": "color_grid"},
            {"params": list(self.mlp.parameters()), "lr": float(mlp_lr), "name": "color_mlp"},
        ]

    def extra_repr(self) -> str:
        return f"bounds={self.bounds.tolist()}, contraction={self.config.contraction!r}, output={self.config.output!r}"
