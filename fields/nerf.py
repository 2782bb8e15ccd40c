"""Instant-NGP's NeRF field: hash grid -> density MLP (+ geometry features) -> colour MLP with view SH.

Written by hand after Mueller et al. 2022 (section 5.4 and the ``base.json`` network of instant-ngp):
points in the scene box are mapped to ``[0, 1]^3`` and encoded by the multiresolution hash grid of
:mod:`scenezip.fields.hashgrid` (tcnn layout); a one-hidden-layer MLP of width 64 maps the encoding to
``1 + geo_features`` outputs, the first of which becomes the density through ``trunc_exp`` (``exp``
whose gradient uses ``exp(min(x, 15))``, as torch-ngp and nerfacc do, so early spikes do not blow up);
a two-hidden-layer MLP of width 64 maps the geometry features concatenated with the 16 real spherical
harmonics of the view direction (tcnn's ``SphericalHarmonics`` of degree 4, i.e. bands 0..3; the basis
of :func:`scenezip.render.sh.sh_basis`) to a sigmoid RGB. MLPs are :class:`scenezip.fields.mlp.MLP`
(bias-free, tcnn's shape), so their flat storage order is fixed.

``hash_transform`` is the hook compressed variants use: a callable applied to the flat hash-table
vector ``[n_params]`` before the encoding reads it (masking, fake quantization). It is identity when
None; it is not part of the field's saved parameters.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from scenezip._backend import Backend
from scenezip.fields.hashgrid import HashGrid, HashGridConfig, hash_encode
from scenezip.fields.mlp import MLP
from scenezip.render.sh import sh_basis

HashTransform = Callable[[Tensor], Tensor]  # flat hash table [n_params] -> [n_params]
DENSITY_SHIFT = -1.0  # density = trunc_exp(raw + shift): starts the field nearly empty (nerfacc's ngp)


class _TruncExp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    """``exp(x)`` whose gradient is ``exp(min(x, 15))`` (bounded for large ``x``)."""
    return _TruncExp.apply(x)


class NeRFField(nn.Module):
    """Density and view-dependent colour over the box ``aabb [2, 3]``.

    Args:
        aabb: scene box (min, max) in world units; points outside get zero density.
        grid: hash-grid settings (3D input).
        hidden_dim: width of both MLPs.
        geo_features: geometry features passed from the density MLP to the colour MLP (15 in instant-ngp).
        color_layers: hidden layers of the colour MLP.
        backend: hash-grid backend (``auto``/``torch``/``cuda``, see :class:`HashGrid`).
        seed: seeds the hash table and the MLP initialisations.
    """

    def __init__(
        self,
        aabb: Tensor,
        grid: HashGridConfig | None = None,
        hidden_dim: int = 64,
        geo_features: int = 15,
        color_layers: int = 2,
        backend: Backend = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__()
        aabb = torch.as_tensor(aabb, dtype=torch.float32)
        if aabb.shape != (2, 3) or not bool(torch.all(aabb[1] > aabb[0])):
            raise ValueError(f"aabb must be [2, 3] (min, max) with max > min, got {aabb.tolist()}")
        grid = grid if grid is not None else HashGridConfig()
        if grid.n_input_dims != 3:
            raise ValueError(f"grid.n_input_dims must be 3 for a NeRF field, got {grid.n_input_dims}")
        self.register_buffer("aabb", aabb.clone())
        self.grid = HashGrid(grid, backend=backend, seed=seed)
        self.geo_features = geo_features
        self.density_mlp = MLP(grid.n_output_dims, 1 + geo_features, hidden_dim, 1, seed=seed + 1)
        self.color_mlp = MLP(geo_features + 16, 3, hidden_dim, color_layers, output_activation="Sigmoid", seed=seed + 2)
        self.hash_transform: HashTransform | None = None

    @property
    def grid_config(self) -> HashGridConfig:
        return self.grid.config

    def normalize(self, x: Tensor) -> tuple[Tensor, Tensor]:  # [..., 3] -> [..., 3] in [0, 1], inside [...]
        u = (x - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        inside = ((u >= 0) & (u <= 1)).all(dim=-1)
        return u.clamp(0.0, 1.0), inside

    def hash_params(self) -> Tensor:  # [n_params]
        """The flat hash table as the encoding reads it (after ``hash_transform``)."""
        p = self.grid.params
        return p if self.hash_transform is None else self.hash_transform(p)

    def encode(self, u: Tensor) -> Tensor:  # [N, 3] in [0, 1] -> [N, n_levels * F]
        """Hash encoding of normalized points, through ``hash_transform`` when set."""
        if self.hash_transform is None:
            return self.grid(u)
        params = self.hash_params()
        if self.grid.backend == "cuda" and u.is_cuda:
            enc = self.grid._tcnn()
            enc._parameters["params"] = params  # tcnn reads self.params; hand it the transformed vector
            try:
                out = enc(u.reshape(-1, 3).float().contiguous())
            finally:
                enc._parameters["params"] = self.grid.params
            return out.float().reshape(*u.shape[:-1], -1)
        return hash_encode(u, params, self.grid.config, self.grid.chunk_size).float()

    def _density_and_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        u, inside = self.normalize(x)
        h = self.density_mlp(self.encode(u))
        sigma = trunc_exp(h[..., 0] + DENSITY_SHIFT) * inside.to(h.dtype)
        return sigma, h[..., 1:]

    def density(self, x: Tensor) -> Tensor:  # [N, 3] world -> [N]
        """Density at world points (0 outside the box)."""
        if x.shape[-1] != 3:
            raise ValueError(f"x must have shape [..., 3], got {tuple(x.shape)}")
        return self._density_and_features(x)[0]

    def forward(self, x: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:  # [N, 3], [N, 3] -> [N], [N, 3]
        """Density ``[N]`` and colour ``[N, 3]`` at world points seen along unit directions."""
        if x.shape[-1] != 3 or dirs.shape != x.shape:
            raise ValueError(f"x and dirs must both have shape [..., 3], got {tuple(x.shape)} and {tuple(dirs.shape)}")
        sigma, geo = self._density_and_features(x)
        rgb = self.color_mlp(torch.cat([geo, sh_basis(3, dirs)], dim=-1))
        return sigma, rgb
