"""Occupancy grid (Instant-NGP style) and the ray marcher that skips empty space and stops early.

Written by hand after the Instant-NGP paper (Mueller et al. 2022, section 5.3 "accelerated ray marching")
and nerfacc's ``OccGridEstimator`` defaults, in plain torch so it runs on CPUs. One cascade, one box:

- each of the ``R^3`` cells keeps an exponential moving average of the optical thickness of one
  marching step, ``density * step_size``, measured at a random point in the cell;
  :meth:`OccupancyGrid.update` decays the sampled cells by ``decay`` (0.95) and takes the maximum with
  the new measurement; during ``warmup_steps`` every cell is measured, afterwards a random
  ``fraction`` of all cells plus as many cells drawn from the occupied ones;
- a cell is occupied when its value exceeds ``min(threshold, mean of all cells)`` (``threshold`` 0.01);
  a fresh grid is fully occupied;
- cells are numbered C-order over ``[ix, iy, iz]`` (``flat = (ix * R + iy) * R + iz``) and
  :func:`pack_bits` stores the occupancy 8 cells per byte, cell ``8 j + k`` in bit ``k`` of byte ``j``.

:func:`march_rays` places samples every ``step_size`` along each ray inside the box (from a per-ray
jittered start when asked), keeps those whose midpoint lies in an occupied cell and, given a density
function, drops the samples behind the point where the transmittance falls below ``early_stop_eps``.
It walks the rays in segments of ``segment`` steps and only keeps alive rays in the next segment, so
memory is bounded by ``rays x segment`` and rays that hit a surface stop costing anything.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from scenezip.render.volume import packed_exclusive_sum, ray_aabb

DensityFn = Callable[[Tensor], Tensor]  # points [N, 3] (world) -> densities [N]


def pack_bits(mask: Tensor) -> Tensor:  # [n] bool -> [ceil(n / 8)] uint8
    """Pack a flat boolean tensor 8 to a byte, element ``8 j + k`` in bit ``k`` of byte ``j``."""
    if mask.dtype != torch.bool or mask.dim() != 1:
        raise ValueError(f"mask must be a 1-D bool tensor, got {mask.dtype} with shape {tuple(mask.shape)}")
    n = mask.numel()
    padded = torch.zeros(-(-n // 8) * 8, dtype=torch.uint8, device=mask.device)
    padded[:n] = mask.to(torch.uint8)
    weights = (1 << torch.arange(8, device=mask.device, dtype=torch.int32)).to(torch.uint8)
    return (padded.view(-1, 8) * weights).sum(dim=1, dtype=torch.int32).to(torch.uint8)


def unpack_bits(data: Tensor, n: int) -> Tensor:  # [m] uint8 -> [n] bool
    """Inverse of :func:`pack_bits`; ``data`` must hold exactly ``ceil(n / 8)`` bytes."""
    if data.dtype != torch.uint8 or data.dim() != 1 or data.numel() != -(-n // 8):
        raise ValueError(f"data must be [{-(-n // 8)}] uint8 for {n} bits, got {data.dtype} {tuple(data.shape)}")
    bits = (data[:, None].to(torch.int32) >> torch.arange(8, device=data.device, dtype=torch.int32)) & 1
    return bits.reshape(-1)[:n].bool()


class OccupancyGrid(nn.Module):
    """``resolution^3`` occupancy over the box ``aabb [2, 3]`` (buffers: ``aabb``, ``density``, ``binary``)."""

    def __init__(self, aabb: Tensor, resolution: int = 128) -> None:
        super().__init__()
        aabb = torch.as_tensor(aabb, dtype=torch.float32)
        if aabb.shape != (2, 3) or not bool(torch.all(aabb[1] > aabb[0])):
            raise ValueError(f"aabb must be [2, 3] (min, max) with max > min, got {aabb.tolist()}")
        if isinstance(resolution, bool) or not isinstance(resolution, int) or not 1 <= resolution <= 1024:
            raise ValueError(f"resolution must be an integer in [1, 1024], got {resolution!r}")
        self.resolution = resolution
        n = resolution**3
        self.register_buffer("aabb", aabb.clone())
        self.register_buffer("density", torch.zeros(n, dtype=torch.float32))
        self.register_buffer("binary", torch.ones(n, dtype=torch.bool))

    @property
    def n_cells(self) -> int:
        return self.resolution**3

    def cell_index(self, points: Tensor) -> tuple[Tensor, Tensor]:  # [..., 3] -> flat index [...], inside [...]
        """Flat cell index of world points (clamped into the grid) and whether they lie in the box."""
        u = (points - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        inside = ((u >= 0) & (u <= 1)).all(dim=-1)
        r = self.resolution
        ijk = (u * r).floor().long().clamp(0, r - 1)
        return (ijk[..., 0] * r + ijk[..., 1]) * r + ijk[..., 2], inside

    def occupied(self, points: Tensor) -> Tensor:  # [..., 3] -> [...] bool
        """True for points inside the box whose cell is occupied."""
        idx, inside = self.cell_index(points)
        return self.binary[idx] & inside

    def cell_points(self, cells: Tensor, generator: torch.Generator | None = None) -> Tensor:  # [n] -> [n, 3]
        """A uniformly random world point inside each cell (the cell centre when ``generator`` is None)."""
        r = self.resolution
        ijk = torch.stack([cells // (r * r), (cells // r) % r, cells % r], dim=-1).float()
        if generator is None:
            off = torch.full_like(ijk, 0.5)
        else:
            off = torch.rand(ijk.shape, generator=generator, device=generator.device).to(ijk.device)
        return self.aabb[0] + (ijk + off) / r * (self.aabb[1] - self.aabb[0])

    @torch.no_grad()
    def update(
        self,
        step: int,
        density_fn: DensityFn,
        step_size: float,
        *,
        generator: torch.Generator | None = None,
        warmup_steps: int = 256,
        fraction: float = 0.25,
        decay: float = 0.95,
        threshold: float = 0.01,
        chunk: int = 1 << 16,
    ) -> int:
        """Measure cells (all of them while ``step < warmup_steps``), update the moving average and
        the occupancy; returns the number of cells measured."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        dev = self.density.device
        gdev = generator.device if generator is not None else dev
        if step < warmup_steps:
            cells = torch.arange(self.n_cells, device=dev)
        else:
            n = max(1, int(self.n_cells * fraction))
            uniform = torch.randint(self.n_cells, (n,), generator=generator, device=gdev).to(dev)
            occ = self.binary.nonzero()[:, 0]
            if occ.numel():
                pick = torch.randint(occ.numel(), (n,), generator=generator, device=gdev).to(dev)
                cells = torch.cat([uniform, occ[pick]])
            else:
                cells = uniform
        values = []
        for start in range(0, cells.numel(), chunk):
            pts = self.cell_points(cells[start : start + chunk], generator)
            values.append(density_fn(pts).reshape(-1).float() * step_size)
        measured = torch.cat(values)
        unique = torch.unique(cells)
        new = self.density.clone()
        new[unique] = new[unique] * decay
        new.scatter_reduce_(0, cells, measured, reduce="amax")
        self.density.copy_(new)
        thre = min(threshold, float(self.density.mean()))
        self.binary.copy_(self.density > thre)
        return int(cells.numel())

    def occupancy_fraction(self) -> float:
        return float(self.binary.float().mean())

    def packed(self) -> Tensor:  # [ceil(R^3 / 8)] uint8
        """The occupancy bits (see :func:`pack_bits`)."""
        return pack_bits(self.binary.cpu())

    def load_packed(self, data: Tensor) -> None:
        """Set the occupancy from :meth:`packed` bytes (the moving average becomes the threshold
        where occupied and 0 elsewhere, enough to render and to resume updating)."""
        bits = unpack_bits(data.cpu(), self.n_cells).to(self.binary.device)
        self.binary.copy_(bits)
        self.density.copy_(bits.float() * 0.01)

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, aabb={self.aabb.tolist()}"


@dataclass
class RaySamples:
    """Packed samples, sorted by ray and then by distance.

    Attributes:
        ray_indices: ``[N]`` int64 ray of each sample.
        t_starts, t_ends: ``[N]`` segment of each sample along its (unit-direction) ray.
        n_rays: number of rays marched.
    """

    ray_indices: Tensor
    t_starts: Tensor
    t_ends: Tensor
    n_rays: int

    def positions(self, origins: Tensor, dirs: Tensor) -> Tensor:  # [N, 3]
        """Midpoints of the samples in world space."""
        t = ((self.t_starts + self.t_ends) * 0.5)[:, None]
        return origins[self.ray_indices] + dirs[self.ray_indices] * t


def _segment_candidates(
    origins: Tensor,
    dirs: Tensor,
    aabb: Tensor,
    step_size: float,
    occupancy: OccupancyGrid | None,
    *,
    near: float = 0.0,
    jitter: Tensor | None = None,
    segment: int = 64,
):
    """Walk rays ``segment`` steps at a time; yields ``(ray [n], step [n], t0 [n], t1 [n], points [n, 3],
    alive [R])`` for the occupied samples of each segment (sorted by ray, then step). ``alive`` is the
    marcher's own mask: a consumer may clear rays in place (``alive &= ...``) to stop them."""
    if origins.dim() != 2 or origins.shape[-1] != 3 or dirs.shape != origins.shape:
        raise ValueError(f"origins and dirs must be [R, 3], got {tuple(origins.shape)} and {tuple(dirs.shape)}")
    if not step_size > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if segment < 1:
        raise ValueError(f"segment must be >= 1, got {segment}")
    R, dev = origins.shape[0], origins.device
    t_near, t_far, hit = ray_aabb(origins, dirs, aabb, near)
    t_first = t_near if jitter is None else t_near + jitter.to(t_near) * step_size
    n_steps = torch.ceil((t_far - t_first) / step_size).clamp_min(0).long()
    n_steps = torch.where(hit, n_steps, torch.zeros_like(n_steps))
    total = int(n_steps.max()) if R else 0
    alive = n_steps > 0
    for s0 in range(0, total, segment):
        ids = alive.nonzero()[:, 0]
        if ids.numel() == 0:
            return
        k = torch.arange(s0, min(s0 + segment, total), device=dev)
        ts = t_first[ids, None] + k[None, :].to(t_first) * step_size  # [A, K]
        te = torch.minimum(ts + step_size, t_far[ids, None])
        valid = k[None, :] < n_steps[ids, None]
        mid = (ts + te) * 0.5
        pts = origins[ids, None, :] + dirs[ids, None, :] * mid[..., None]
        keep = valid if occupancy is None else valid & occupancy.occupied(pts)
        ai, ki = keep.nonzero(as_tuple=True)
        yield ids[ai], k[ki], ts[ai, ki], te[ai, ki], pts[ai, ki], alive
        alive &= n_steps > s0 + segment


@torch.no_grad()
def march_rays(
    origins: Tensor,  # [R, 3]
    dirs: Tensor,  # [R, 3] unit
    aabb: Tensor,  # [2, 3]
    step_size: float,
    occupancy: OccupancyGrid | None = None,
    *,
    near: float = 0.0,
    sigma_fn: DensityFn | None = None,
    early_stop_eps: float = 1e-4,
    alpha_thresh: float = 0.0,
    jitter: Tensor | None = None,  # [R] in [0, 1)
    segment: int = 64,
) -> RaySamples:
    """Samples every ``step_size`` inside ``aabb`` whose midpoints lie in occupied cells.

    With ``sigma_fn``, sample densities are evaluated (no gradient) segment by segment and samples
    are kept only while the transmittance before them is at least ``early_stop_eps`` and their alpha
    at least ``alpha_thresh``; rays whose transmittance falls below ``early_stop_eps`` are not marched
    further. ``jitter`` shifts each ray's first sample by ``jitter * step_size`` (training).
    """
    R, dev = origins.shape[0], origins.device
    trans = torch.ones(R, dtype=torch.float32, device=dev)
    out_ray, out_k, out_t0, out_t1 = [], [], [], []
    for ray, k, t0, t1, pts, alive in _segment_candidates(
        origins, dirs, aabb, step_size, occupancy, near=near, jitter=jitter, segment=segment
    ):
        if sigma_fn is not None and ray.numel():
            tau = sigma_fn(pts).reshape(-1).float() * (t1 - t0)
            before = trans[ray] * torch.exp(-packed_exclusive_sum(tau, ray, R))
            sel = (before >= early_stop_eps) & (1.0 - torch.exp(-tau) >= alpha_thresh)
            trans = trans * torch.exp(-torch.zeros(R, device=dev, dtype=tau.dtype).index_add(0, ray, tau))
            ray, k, t0, t1 = ray[sel], k[sel], t0[sel], t1[sel]
            alive &= trans >= early_stop_eps
        out_ray.append(ray)
        out_k.append(k)
        out_t0.append(t0)
        out_t1.append(t1)
    if not out_ray:
        empty = torch.zeros(0, dtype=torch.float32, device=dev)
        return RaySamples(torch.zeros(0, dtype=torch.long, device=dev), empty, empty.clone(), R)
    ray, kk = torch.cat(out_ray), torch.cat(out_k)
    order = torch.argsort(ray * (int(kk.max()) + 1 if kk.numel() else 1) + kk)
    return RaySamples(ray[order], torch.cat(out_t0)[order], torch.cat(out_t1)[order], R)


def default_step_size(aabb: Tensor, n_steps: int) -> float:
    """Instant-NGP's marching step: the box diagonal divided by ``n_steps`` (1024 in the paper)."""
    return float(torch.linalg.norm(aabb[1] - aabb[0])) / n_steps if n_steps > 0 else math.inf
