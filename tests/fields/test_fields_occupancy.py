"""Occupancy grid: bit packing, updates, and marching that skips empty cells and stops early."""

from __future__ import annotations

import pytest
import torch

from scenezip.fields.occupancy import OccupancyGrid, march_rays, pack_bits, unpack_bits
from scenezip.render.volume import composite

AABB = torch.tensor([[-1.0, -1, -1], [1, 1, 1]])


def test_pack_bits_roundtrip_and_bit_order():
    g = torch.Generator().manual_seed(0)
    for n in (1, 8, 13, 4097):
        m = torch.rand(n, generator=g) < 0.3
        p = pack_bits(m)
        assert p.dtype == torch.uint8 and p.numel() == -(-n // 8)
        assert torch.equal(unpack_bits(p, n), m)
    m = torch.zeros(16, dtype=torch.bool)
    m[0] = m[9] = True
    assert pack_bits(m).tolist() == [1, 2]  # element 8j + k is bit k of byte j
    with pytest.raises(ValueError, match="bool"):
        pack_bits(torch.zeros(4))
    with pytest.raises(ValueError, match="bytes|uint8"):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 8)


def _box_density(x):
    """Density 30 inside [-0.25, 0.25]^3 (aligned with the cells of an 8^3 grid over AABB), else 0."""
    return 30.0 * (x.abs() <= 0.25).all(dim=-1).float()


def _box_color(x):
    return torch.stack([x[:, 0] * 0 + 0.8, (x[:, 1] + 1) / 2, (x[:, 2] + 1) / 2], dim=-1)


def test_update_marks_exactly_the_dense_cells():
    grid = OccupancyGrid(AABB, resolution=8)
    assert grid.binary.all()  # fresh grid: everything occupied
    n = grid.update(0, _box_density, 0.01, generator=torch.Generator().manual_seed(0), warmup_steps=10)
    assert n == 512
    idx = torch.arange(512)
    centres = grid.cell_points(idx)
    inside = (centres.abs() <= 0.25).all(-1)
    assert torch.equal(grid.binary, inside) and inside.sum() == 8
    before = grid.density.clone()
    grid.update(20, lambda x: torch.zeros(x.shape[0]), 0.01, generator=torch.Generator().manual_seed(1),
                warmup_steps=10, fraction=1.0)  # fmt: skip
    assert torch.all(grid.density <= before) and grid.density.max() > 0  # decayed, not reset
    packed = grid.packed()
    other = OccupancyGrid(AABB, resolution=8)
    other.load_packed(packed)
    assert torch.equal(other.binary, grid.binary)


def _rays(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g)
    o = o / o.norm(dim=-1, keepdim=True) * 2.5
    target = (torch.rand(n, 3, generator=g) - 0.5) * 0.6
    d = target - o
    return o, d / d.norm(dim=-1, keepdim=True)


def _render(samples, o, d):
    pts = samples.positions(o, d)
    c, a, _, _ = composite(_box_density(pts), _box_color(pts), samples.t_starts, samples.t_ends,
                           samples.ray_indices, samples.n_rays, backgrounds=torch.ones(3))  # fmt: skip
    return c, a


def test_skipping_empty_cells_leaves_the_render_unchanged():
    grid = OccupancyGrid(AABB, resolution=8)
    grid.update(0, _box_density, 0.01, warmup_steps=10)
    o, d = _rays()
    step = 0.02
    full = march_rays(o, d, AABB, step, None)
    skip = march_rays(o, d, AABB, step, grid)
    assert skip.ray_indices.numel() < 0.3 * full.ray_indices.numel()
    c_full, a_full = _render(full, o, d)
    c_skip, a_skip = _render(skip, o, d)
    assert a_full.max() > 0.9  # the box is seen
    torch.testing.assert_close(c_skip, c_full)
    torch.testing.assert_close(a_skip, a_full)
    assert torch.all(skip.ray_indices[1:] >= skip.ray_indices[:-1])  # sorted by ray
    same = skip.ray_indices[1:] == skip.ray_indices[:-1]
    assert torch.all(skip.t_starts[1:][same] > skip.t_starts[:-1][same])  # then by distance


def test_early_stop_drops_samples_behind_opaque_surfaces():
    o, d = _rays(seed=1)
    step = 0.02
    full = march_rays(o, d, AABB, step, None)
    stop = march_rays(o, d, AABB, step, None, sigma_fn=_box_density, early_stop_eps=1e-3)
    assert stop.ray_indices.numel() < full.ray_indices.numel()
    c_full, a_full = _render(full, o, d)
    c_stop, a_stop = _render(stop, o, d)
    assert (c_full - c_stop).abs().max() < 2e-3
    # every ray keeps a prefix of its samples, and what it drops carries at most eps of weight
    pts = full.positions(o, d)
    _, _, _, w = composite(_box_density(pts), _box_color(pts), full.t_starts, full.t_ends, full.ray_indices, full.n_rays)
    kept = torch.bincount(stop.ray_indices, minlength=full.n_rays)
    starts = torch.cumsum(torch.bincount(full.ray_indices, minlength=full.n_rays), 0) - torch.bincount(full.ray_indices, minlength=full.n_rays)
    slot = torch.arange(full.ray_indices.numel()) - starts[full.ray_indices]
    dropped = slot >= kept[full.ray_indices]
    assert dropped.any()
    lost = torch.zeros(full.n_rays).index_add(0, full.ray_indices, w * dropped)
    assert lost.max() <= 1e-3 + 1e-6


def test_jitter_shifts_first_sample_and_march_checks():
    o = torch.tensor([[-3.0, 0.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0]])
    s0 = march_rays(o, d, AABB, 0.5, None)
    s1 = march_rays(o, d, AABB, 0.5, None, jitter=torch.tensor([0.5]))
    torch.testing.assert_close(s0.t_starts[:2], torch.tensor([2.0, 2.5]))
    torch.testing.assert_close(s1.t_starts[:2], torch.tensor([2.25, 2.75]))
    assert s0.t_ends.max() <= 4.0 + 1e-6 and s1.t_ends.max() <= 4.0 + 1e-6
    with pytest.raises(ValueError, match="step_size"):
        march_rays(o, d, AABB, 0.0, None)
    with pytest.raises(ValueError, match="origins"):
        march_rays(o[0], d[0], AABB, 0.1, None)
    with pytest.raises(ValueError, match="resolution"):
        OccupancyGrid(AABB, resolution=0)
