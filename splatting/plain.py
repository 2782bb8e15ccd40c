"""Decode any Gaussian model to plain per-Gaussian attributes, the common input of every exporter.

Written by hand for scenezip. Viewers know only per-Gaussian position, rotation, scale, opacity and SH
colour, so :func:`to_plain` turns each of our models into a :class:`PlainSplats` in gsplat's parameter
layout (``means``, unit ``quats`` (w, x, y, z), log ``scales``, logit ``opacities``, ``sh0``, ``shN``):

- :class:`~scenezip.splatting.gaussians.GaussianModel`: a copy (quaternions normalized), optionally with
  fewer SH bands.
- :class:`~scenezip.splatting.c3dgs.C3DGSModel`: the geometry the model renders (``activated()``: R-VQ
  code sums for frozen or R-VQ models), masked Gaussians dropped; the neural colour field is evaluated at
  every Gaussian for ``n_dirs`` view directions (a Fibonacci lattice on the sphere, randomly rotated by
  ``seed``), and the SH coefficients of the chosen degree are fitted by least squares to
  ``field colour - 0.5`` (gsplat renders ``max(SH(d) + 0.5, 0)``). All Gaussians share the directions,
  so the per-Gaussian least-squares problems share one design matrix and are solved with one
  pseudo-inverse. ``fit_error`` is the RMS over those directions, Gaussians and channels of
  ``max(SH(d) + 0.5, 0) - field colour``.
- anything with a ``to_plain(sh_degree)`` method (2D surfel models), which returns a PlainSplats.

``splats.arrays()`` is the plain mapping the exporters in :mod:`scenezip.scenes` take (``scenes``
knows no model).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scenezip.render.sh import SH_C0, num_sh_bases, sh_basis, sh_degree_from_bases

FIT_CHUNK = 1 << 14  # Gaussians per colour-field evaluation (x n_dirs directions each)


@dataclass
class PlainSplats:
    """Per-Gaussian attributes in gsplat's layout (numpy, float32).

    Attributes:
        means: ``[N, 3]`` centres.
        quats: ``[N, 4]`` unit rotations (w, x, y, z).
        scales: ``[N, 3]`` log standard deviations.
        opacities: ``[N]`` opacity logits.
        sh0: ``[N, 1, 3]`` DC SH coefficients (colour ``0.5 + SH_C0 * sh0``).
        shN: ``[N, K-1, 3]`` higher SH bands, ``K = (degree + 1)^2`` (``K - 1`` may be 0).
        surfel: True for 2D Gaussian surfels (the third scale is degenerate).
        fit_error: RMS colour error of the SH bake when the colours came from a neural field, else None.
    """

    means: np.ndarray
    quats: np.ndarray
    scales: np.ndarray
    opacities: np.ndarray
    sh0: np.ndarray
    shN: np.ndarray
    surfel: bool = False
    fit_error: float | None = None

    def __post_init__(self) -> None:
        for f in ("means", "quats", "scales", "opacities", "sh0", "shN"):
            setattr(self, f, np.ascontiguousarray(np.asarray(getattr(self, f), dtype=np.float32)))
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        if self.means.ndim != 2 or self.means.shape[1] != 3:
            raise ValueError(f"means must have shape [N, 3], got {self.means.shape}")
        expect = {"quats": (n, 4), "scales": (n, 3), "opacities": (n,), "sh0": (n, 1, 3)}
        for name, shape in expect.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"{name} must have shape {list(shape)}, got {getattr(self, name).shape}")
        if self.shN.ndim != 3 or self.shN.shape[0] != n or self.shN.shape[2] != 3:
            raise ValueError(f"shN must have shape [{n}, K-1, 3], got {self.shN.shape}")
        if self.shN.shape[1] not in (0, 3, 8, 15):
            raise ValueError(f"shN must hold K-1 = 0, 3, 8 or 15 bands (SH degree 0..3), got {self.shN.shape[1]}")

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        """SH degree of the colours (0..3)."""
        return sh_degree_from_bases(self.shN.shape[1] + 1)

    def rgb(self) -> np.ndarray:
        """``[N, 3]`` base (view-independent) colour in [0, 1] from ``sh0``."""
        return np.clip(0.5 + SH_C0 * self.sh0[:, 0, :], 0.0, 1.0).astype(np.float32)

    def arrays(self) -> dict[str, np.ndarray]:
        """The attributes as a plain mapping (``means, quats, scales, opacities, sh0, shN``) for the
        exporters of :mod:`scenezip.scenes`."""
        return {k: getattr(self, k) for k in ("means", "quats", "scales", "opacities", "sh0", "shN")}

    def with_sh_degree(self, sh_degree: int) -> "PlainSplats":
        """A copy keeping SH bands up to ``sh_degree`` (at most the current degree)."""
        if not 0 <= int(sh_degree) <= self.sh_degree:
            raise ValueError(f"sh_degree must be in 0..{self.sh_degree}, got {sh_degree}")
        k = num_sh_bases(int(sh_degree))
        return dataclasses.replace(self, shN=self.shN[:, : k - 1].copy())

    def to_gaussian_model(self, device: torch.device | str = "cpu"):
        """A :class:`~scenezip.splatting.gaussians.GaussianModel` holding these attributes (surfels
        become flat 3D Gaussians)."""
        from scenezip.splatting.gaussians import GaussianModel

        t = {k: torch.from_numpy(v.copy()) for k, v in self.arrays().items()}
        return GaussianModel(t["means"], t["quats"], t["scales"], t["opacities"], t["sh0"], t["shN"]).to(device)


def _unit_quats(q: torch.Tensor) -> torch.Tensor:
    """Normalize ``[N, 4]`` quaternions; zero ones become the identity."""
    q = q.to(torch.float32)
    norm = q.norm(dim=-1, keepdim=True)
    ident = torch.zeros_like(q)
    ident[:, 0] = 1.0
    return torch.where(norm > 1e-12, q / norm.clamp_min(1e-12), ident)


def fit_directions(n_dirs: int, seed: int = 0) -> torch.Tensor:  # -> [n_dirs, 3]
    """``n_dirs`` unit directions spread evenly over the sphere: a Fibonacci lattice turned by a random
    rotation drawn from ``seed`` (so different seeds give held-out directions)."""
    if n_dirs < 1:
        raise ValueError(f"n_dirs must be >= 1, got {n_dirs}")
    i = torch.arange(n_dirs, dtype=torch.float64) + 0.5
    z = 1.0 - 2.0 * i / n_dirs
    r = torch.sqrt((1.0 - z * z).clamp_min(0.0))
    phi = i * math.pi * (3.0 - math.sqrt(5.0))
    d = torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], dim=-1)
    g = torch.Generator().manual_seed(int(seed))
    q, rr = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(rr))[None, :]
    return (d @ q.T).to(torch.float32)


@torch.no_grad()
def bake_sh(color_fn, means: torch.Tensor, sh_degree: int = 3, n_dirs: int = 64, seed: int = 0,
            chunk: int = FIT_CHUNK, pass_rows: bool = False) -> tuple[torch.Tensor, float]:  # fmt: skip
    """Least-squares SH coefficients of a view-dependent colour function.

    Args:
        color_fn: ``color_fn(means [M, 3], dirs [D, M, 3]) -> [D, M, 3]`` colours for unit view
            directions (camera -> Gaussian, gsplat's convention); with ``pass_rows``,
            ``color_fn(means, dirs, rows)`` also gets the ``slice`` of the Gaussians in ``means``.
        means: ``[N, 3]`` Gaussian centres.
        sh_degree: SH degree of the fit (0..3); needs ``n_dirs >= (sh_degree + 1)^2``.
        n_dirs: directions sampled per Gaussian (see :func:`fit_directions`).

    Returns:
        ``(coeffs [N, K, 3], rms)``: coefficients with ``max(SH(d) + 0.5, 0)`` close to the colours, and
        the RMS of that difference over all directions, Gaussians and channels.
    """
    if not 0 <= sh_degree <= 3:
        raise ValueError(f"sh_degree must be in 0..3, got {sh_degree}")
    k = num_sh_bases(sh_degree)
    if n_dirs < k:
        raise ValueError(f"n_dirs must be at least {k} for SH degree {sh_degree}, got {n_dirs}")
    dirs = fit_directions(n_dirs, seed).to(means.device)
    basis = sh_basis(sh_degree, dirs).to(torch.float64)  # [D, K]
    pinv = torch.linalg.pinv(basis)  # [K, D]
    n = means.shape[0]
    out = means.new_zeros((n, k, 3))
    sq, count = 0.0, 0
    for a in range(0, n, chunk):
        m = means[a : a + chunk].to(torch.float32)
        d = dirs[:, None, :].expand(n_dirs, m.shape[0], 3)
        target = (color_fn(m, d, slice(a, a + m.shape[0])) if pass_rows else color_fn(m, d)).to(torch.float64)
        coeffs = torch.einsum("kd,dmc->mkc", pinv, target - 0.5)  # [M, K, 3]
        fit = (torch.einsum("dk,mkc->dmc", basis, coeffs) + 0.5).clamp_min(0.0)
        sq += float(((fit - target) ** 2).sum())
        count += target.numel()
        out[a : a + chunk] = coeffs.to(out.dtype)
    return out, math.sqrt(sq / max(count, 1))


@torch.no_grad()
def to_plain(model: Any, sh_degree: int | None = None, n_dirs: int = 64, seed: int = 0) -> PlainSplats:
    """Plain per-Gaussian attributes of ``model`` (see the module docstring).

    Args:
        model: a GaussianModel, a C3DGSModel, or an object with ``to_plain(sh_degree)``.
        sh_degree: SH degree of the result; default: the model's own (GaussianModel) or 3 (baked fields).
            A GaussianModel can only lower its degree.
        n_dirs: view directions per Gaussian for the SH bake of a colour field.
        seed: seed of the bake's direction lattice rotation.
    """
    from scenezip.splatting.c3dgs import C3DGSModel
    from scenezip.splatting.gaussians import GaussianModel

    if sh_degree is not None and not 0 <= int(sh_degree) <= 3:
        raise ValueError(f"sh_degree must be in 0..3, got {sh_degree}")
    fn = getattr(model, "to_plain", None)
    if callable(fn):  # first: surfel models subclass GaussianModel and must keep surfel=True
        out = fn(sh_degree)
        if not isinstance(out, PlainSplats):
            raise ValueError(f"{type(model).__name__}.to_plain must return PlainSplats, got {type(out).__name__}")
        return out
    if isinstance(model, GaussianModel):
        degree = model.sh_degree if sh_degree is None else int(sh_degree)
        if degree > model.sh_degree:
            raise ValueError(f"sh_degree must be at most the model's degree {model.sh_degree}, got {sh_degree}")
        k = num_sh_bases(degree)
        s = {name: v.detach().cpu().clone() for name, v in model.splats.items()}  # never alias the model
        return PlainSplats(s["means"].numpy(), _unit_quats(s["quats"]).numpy(), s["scales"].numpy(),
                           s["opacities"].numpy(), s["sh0"].numpy(), s["shN"][:, : k - 1].numpy())  # fmt: skip
    if isinstance(model, C3DGSModel):
        from scenezip.quant.mask import keep_indices

        degree = 3 if sh_degree is None else int(sh_degree)
        a = model.activated()
        keep = keep_indices(model.splats["masks"].detach(), model.mask_threshold)
        means = a["means"].detach()[keep]
        quats = _unit_quats(a["quats"].detach()[keep])
        scales = torch.log(a["scales"].detach()[keep].abs().clamp_min(1e-12))
        logits = model.splats["opacities"].detach()[keep]

        def color_fn(m, d, rows):
            return model.colors(d, keep[rows], a)

        coeffs, rms = bake_sh(color_fn, means, degree, n_dirs, seed, pass_rows=True)
        c = coeffs.cpu()
        return PlainSplats(means.cpu().numpy(), quats.cpu().numpy(), scales.cpu().numpy(), logits.cpu().numpy(),
                           c[:, :1].numpy(), c[:, 1:].numpy(), fit_error=rms)  # fmt: skip
    raise ValueError(f"to_plain cannot decode a {type(model).__name__} (GaussianModel, C3DGSModel or an object "
                     f"with to_plain(sh_degree) expected)")  # fmt: skip


__all__ = ["PlainSplats", "to_plain", "bake_sh", "fit_directions"]
