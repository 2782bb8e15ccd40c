"""Compact-3DGS colour field: contraction, shapes, per-camera evaluation, gradients, fitting, storage."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scenezip.errors import ScenezipError
from scenezip.fields.color_field import (
    ColorField,
    ColorFieldConfig,
    camera_centers_from_viewmats,
    contract,
)
from scenezip.fields.mlp import MLP, mlp_load_flat, mlp_to_flat
from scenezip.render.sh import SH_C0

TINY = ColorFieldConfig(log2_hashmap_size=10, n_levels=8)
BOUNDS = torch.tensor([[-2.0, -1.0, 0.0], [2.0, 3.0, 1.0]])


def _unit(lo_hi: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """World point whose box-normalised coordinate is u in [-1, 1]^3."""
    return lo_hi[0] + (u + 1.0) * 0.5 * (lo_hi[1] - lo_hi[0])


# --------------------------------------------------------------------------------- contraction


class TestContract:
    def test_known_values_l2(self):
        u = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, -4.0, 0.0], [3.0, 4.0, 0.0]])
        c = contract(_unit(BOUNDS, u), BOUNDS, "l2")
        # inside the unit ball: u / 4 + 0.5; outside: (2 - 1/r) u / r / 4 + 0.5
        expect = torch.tensor(
            [[0.5, 0.5, 0.5], [0.625, 0.5, 0.5], [0.875, 0.5, 0.5], [0.5, 0.5 - 1.75 / 4, 0.5],
             [0.5 + 1.8 * 0.6 / 4, 0.5 + 1.8 * 0.8 / 4, 0.5]]
        )  # fmt: skip
        torch.testing.assert_close(c, expect)

    @pytest.mark.parametrize("mode", ["l2", "linf", "none"])
    def test_affine_where_it_should_be(self, mode, gen):
        u = torch.rand(500, 3, generator=gen) * 2 - 1
        if mode == "l2":  # the ball inscribed in the box
            u = u / u.norm(dim=-1, keepdim=True).clamp_min(1.0)
        c = contract(_unit(BOUNDS, u), BOUNDS, mode)
        expect = (u + 1) / 2 if mode == "none" else u / 4 + 0.5
        torch.testing.assert_close(c, expect, atol=1e-6, rtol=0)

    @pytest.mark.parametrize("mode", ["l2", "linf", "none"])
    def test_monotone_along_rays_and_inside_unit_cube(self, mode, gen):
        dirs = F.normalize(torch.randn(20, 3, generator=gen), dim=-1)
        t = torch.logspace(-3, 6, 300)
        u = dirs[:, None, :] * t[None, :, None]  # [20, 300, 3] rays from the box centre
        c = contract(_unit(BOUNDS, u), BOUNDS, mode)
        assert bool((c >= 0).all()) and bool((c <= 1).all())
        along = ((c - 0.5) * dirs[:, None, :]).sum(-1)  # progress along each ray
        steps = along[:, 1:] - along[:, :-1]
        assert bool((steps >= -1e-6).all())
        if mode != "none":
            assert bool((steps[:, :150] > 0).all())  # strictly increasing before float32 saturates

    @pytest.mark.parametrize("mode", ["l2", "linf"])
    def test_far_points_land_on_the_unit_cube_shell(self, mode, gen):
        far = F.normalize(torch.randn(100, 3, generator=gen), dim=-1) * 1e7
        c = contract(far, BOUNDS, mode)
        assert bool((c >= 0).all()) and bool((c <= 1).all())
        norm = (c - 0.5).norm(dim=-1) if mode == "l2" else (c - 0.5).abs().amax(-1)
        torch.testing.assert_close(norm, torch.full((100,), 0.5), atol=1e-5, rtol=0)

    def test_none_clamps_outside(self):
        c = contract(torch.tensor([[100.0, -100.0, 0.5]]), BOUNDS, "none")
        assert c.tolist() == [[1.0, 0.0, 0.5]]

    @pytest.mark.parametrize("mode", ["l2", "linf"])
    def test_gradcheck(self, mode, gen):
        u = torch.tensor([[0.3, -0.2, 0.1], [1.7, 0.4, -0.9], [-3.0, 5.0, 2.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
        x = _unit(BOUNDS.double(), u).requires_grad_(True)
        assert torch.autograd.gradcheck(lambda p: contract(p, BOUNDS, mode), (x,))

    @pytest.mark.parametrize("shape", [(3,), (4, 3), (2, 5, 3)])
    def test_shapes(self, shape, gen):
        assert contract(torch.randn(shape, generator=gen), BOUNDS).shape == shape

    def test_errors(self):
        with pytest.raises(ValueError, match="x"):
            contract(torch.zeros(4, 2), BOUNDS)
        with pytest.raises(ValueError, match="bounds"):
            contract(torch.zeros(4, 3), torch.zeros(3))
        with pytest.raises(ValueError, match="bounds"):
            contract(torch.zeros(4, 3), torch.tensor([[0.0, 0, 0], [1.0, 0, 1]]))
        with pytest.raises(ValueError, match="mode"):
            contract(torch.zeros(4, 3), BOUNDS, "l1")


# --------------------------------------------------------------------------------- the field


def _field(**kw) -> ColorField:
    cfg = ColorFieldConfig(**{**TINY.__dict__, **kw})
    return ColorField(cfg, bounds=BOUNDS, backend="torch", seed=0)


def _points(gen, n=64):
    return _unit(BOUNDS, torch.rand(n, 3, generator=gen) * 2.4 - 1.2)


def _cameras(c: int) -> torch.Tensor:
    """World-to-camera matrices of cameras at distinct positions (rotations about y)."""
    mats = []
    for i in range(c):
        a = 0.7 * i
        R = torch.tensor([[math.cos(a), 0.0, math.sin(a)], [0.0, 1.0, 0.0], [-math.sin(a), 0.0, math.cos(a)]])
        center = torch.tensor([3.0 * math.sin(a), 0.5 * i, -3.0 * math.cos(a)])
        m = torch.eye(4)
        m[:3, :3] = R
        m[:3, 3] = -R @ center
        mats.append(m)
    return torch.stack(mats)


class TestColorField:
    def test_shapes_and_range(self, gen):
        f = _field()
        means = _points(gen)
        dirs = torch.randn(3, 64, 3, generator=gen)
        out_c = f(means, dirs)
        out_1 = f(means, dirs[0])
        assert out_c.shape == (3, 64, 3) and out_1.shape == (64, 3)
        assert out_c.dtype == torch.float32
        assert bool((out_c > 0).all()) and bool((out_c < 1).all())

    def test_per_camera_batch_matches_one_camera_at_a_time_and_naive_mlp(self, gen):
        f = _field()
        means = _points(gen)
        dirs = torch.randn(3, 64, 3, generator=gen)
        batched = f(means, dirs)
        for c in range(3):
            torch.testing.assert_close(batched[c], f(means, dirs[c]))
        feats = f.features(means)
        naive = torch.sigmoid(
            f.mlp(torch.cat([feats.expand(3, -1, -1), f.view_encoding(dirs)], -1))
        )  # the first layer on the concatenated input
        torch.testing.assert_close(batched, naive)

    def test_direction_length_does_not_matter(self, gen):
        f = _field()
        means = _points(gen)
        d = torch.randn(64, 3, generator=gen)
        torch.testing.assert_close(f(means, d), f(means, d * 7.5))

    def test_colors_for_cameras(self, gen):
        f = _field()
        means = _points(gen)
        viewmats = _cameras(3)
        centers = camera_centers_from_viewmats(viewmats)
        torch.testing.assert_close(centers[1], torch.tensor([3 * math.sin(0.7), 0.5, -3 * math.cos(0.7)]))
        out = f.colors_for_cameras(means, viewmats)
        torch.testing.assert_close(out, f(means, means[None] - centers[:, None]))
        cached = f.features(means).detach()
        torch.testing.assert_close(f.colors_for_cameras(means, viewmats, features=cached), out)

    def test_sh0_output_head(self, gen):
        f = _field(output="sh0")
        means = _points(gen)
        d = torch.randn(64, 3, generator=gen)
        raw = f.mlp.forward_split(f.features(means), f.view_encoding(d))
        torch.testing.assert_close(f(means, d), torch.clamp_min(SH_C0 * raw + 0.5, 0.0))

    def test_gradients_reach_grid_and_mlp_not_means(self, gen):
        f = _field()
        means = _points(gen).requires_grad_(True)
        dirs = torch.randn(2, 64, 3, generator=gen)
        v = torch.randn(2, 64, 3, generator=gen)
        (f(means, dirs) * v).sum().backward()
        assert f.grid.params.grad is not None and int((f.grid.params.grad != 0).sum()) > 100
        for p in f.mlp.parameters():
            assert p.grad is not None and bool((p.grad != 0).any())
        assert means.grad is None  # Compact-3DGS detaches the means

    def test_position_gradient_option(self, gen):
        f = _field(position_gradient=True)
        means = _points(gen).requires_grad_(True)
        f.colors_for_cameras(means, _cameras(2)).sum().backward()
        assert means.grad is not None and bool((means.grad != 0).any())

    def test_fp16_round_trip(self, gen):
        f = _field()
        means = _points(gen)
        d = torch.randn(64, 3, generator=gen)
        before = f(means, d).detach()
        flat = f.mlp_params_fp16()
        assert flat.dtype == torch.float16 and flat.shape == (f.mlp.n_params(),)
        assert flat.shape == (32 * 64 + 64 * 64 + 64 * 3,)  # tcnn-style MLP, no biases
        g = _field()
        with torch.no_grad():
            for p in g.mlp.parameters():
                p.zero_()
        g.load_fp16(flat)
        after = g(means, d).detach()
        assert float((after - before).abs().max()) < 1e-2
        assert not torch.equal(g.mlp.layers[1].weight, f.mlp.layers[1].weight)  # it did go through fp16
        torch.testing.assert_close(g.mlp.layers[1].weight, f.mlp.layers[1].weight, atol=1e-3, rtol=1e-3)

    def test_state_dict_round_trip_keeps_bounds(self, gen):
        f = _field()
        f.set_bounds(BOUNDS * 2)
        with torch.no_grad():
            f.grid.params.normal_(0, 0.1, generator=gen)
        g = ColorField(TINY, backend="torch", seed=5)
        g.load_state_dict(f.state_dict())
        torch.testing.assert_close(g.bounds, BOUNDS * 2)
        means, d = _points(gen), torch.randn(64, 3, generator=gen)
        torch.testing.assert_close(g(means, d), f(means, d), rtol=0, atol=0)

    def test_param_groups(self):
        f = _field()
        groups = f.param_groups(grid_lr=0.02, mlp_lr=0.003)
        assert [g["name"] for g in groups] == ["color_grid", "color_mlp"]
        assert [g["lr"] for g in groups] == [0.02, 0.003]
        ids = [id(p) for g in groups for p in g["params"]]
        assert sorted(ids) == sorted(id(p) for p in f.parameters()) and len(set(ids)) == len(ids)
        torch.optim.Adam(groups, eps=1e-15)  # usable as is

    def test_device(self, device, gen):
        f = _field()
        means, d = _points(gen), torch.randn(64, 3, generator=gen)
        ref = f(means, d).detach()
        out = f.to(device)(means.to(device), d.to(device))
        torch.testing.assert_close(out.cpu(), ref, atol=1e-5, rtol=1e-5)

    def test_input_errors(self, gen):
        f = _field()
        with pytest.raises(ValueError, match="means"):
            f(torch.zeros(4, 2), torch.zeros(4, 3))
        with pytest.raises(ValueError, match="view_dirs"):
            f(torch.zeros(4, 3), torch.zeros(5, 3))
        with pytest.raises(ValueError, match="view_dirs"):
            f(torch.zeros(4, 3), torch.zeros(1, 2, 4, 3))
        with pytest.raises(ValueError, match="flat"):
            f.load_fp16(torch.zeros(10))
        with pytest.raises(ScenezipError, match="view_sh_degree"):
            ColorFieldConfig(view_sh_degree=4)
        with pytest.raises(ScenezipError, match="contraction"):
            ColorFieldConfig(contraction="sphere")
        with pytest.raises(ScenezipError, match="log2_hashmap_size"):
            ColorFieldConfig(log2_hashmap_size=0)

    def test_default_config_is_compact_3dgs(self):
        cfg = ColorFieldConfig()
        grid = cfg.hashgrid()
        assert (grid.n_levels, grid.n_features_per_level) == (16, 2)
        assert (grid.log2_hashmap_size, grid.base_resolution) == (19, 16)
        assert grid.per_level_scale == pytest.approx(1.447)
        assert (cfg.view_sh_degree, cfg.hidden_dim, cfg.n_hidden_layers) == (3, 64, 2)


class TestMLP:
    def test_flat_round_trip_and_order(self, gen):
        mlp = MLP(5, 2, hidden_dim=4, n_hidden_layers=1, bias=True, seed=3)
        flat = mlp_to_flat(mlp)
        assert flat.shape == (5 * 4 + 4 + 4 * 2 + 2,)
        torch.testing.assert_close(flat[:20], mlp.layers[0].weight.detach().reshape(-1))  # row-major [out, in]
        other = MLP(5, 2, hidden_dim=4, n_hidden_layers=1, bias=True, seed=9)
        mlp_load_flat(other, flat)
        x = torch.randn(7, 5, generator=gen)
        torch.testing.assert_close(other(x), mlp(x), rtol=0, atol=0)

    def test_forward_split_equals_concatenation(self, gen):
        mlp = MLP(6, 3, hidden_dim=8, n_hidden_layers=2, bias=True, output_activation="Sigmoid")
        with torch.no_grad():
            for layer in mlp.layers:
                layer.bias.normal_(generator=gen)
        a = torch.randn(10, 4, generator=gen)
        b = torch.randn(3, 10, 2, generator=gen)
        torch.testing.assert_close(mlp.forward_split(a, b), mlp(torch.cat([a.expand(3, -1, -1), b], -1)))

    def test_errors(self):
        with pytest.raises(ValueError, match="hidden_dim"):
            MLP(3, 3, hidden_dim=0)
        with pytest.raises(ValueError, match="x"):
            MLP(3, 3)(torch.zeros(2, 4))


# --------------------------------------------------------------------------------- fitting


def _target(x: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """A smooth colour: channel 0 depends on the view (x component of the direction), channel 2 does not."""
    r = 0.5 + 0.25 * torch.sin(3 * x[..., 0]) * torch.cos(2 * x[..., 1]) + 0.15 * x[..., 2] + 0.2 * d[..., 0]
    g = 0.5 + 0.3 * torch.sin(2 * x[..., 2]) - 0.1 * d[..., 1]
    b = 0.4 + 0.2 * x[..., 0] * x[..., 1]
    return torch.stack([r, g, b], -1).clamp(0.02, 0.98)


def _sample(g: torch.Generator, n: int):
    x = torch.rand(n, 3, generator=g) * 2 - 1  # the default box [-1, 1]^3
    d = F.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return x, d, _target(x, d)


@pytest.fixture(scope="module")
def fitted():
    """A tiny field (2^10 table, 8 levels) fitted for 200 Adam steps of 256 fresh samples (about 2 s).

    Runs on one thread: these ops are far too small to gain from two, and on a busy 2-core machine
    two OpenMP threads made this loop 5-25x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _fit()
    finally:
        torch.set_num_threads(threads)


def _fit():
    g = torch.Generator().manual_seed(0)
    f = ColorField(TINY, backend="torch", seed=0)
    xt, dt, yt = _sample(g, 2048)
    with torch.no_grad():
        mse0 = float(((f(xt, dt) - yt) ** 2).mean())
    opt = torch.optim.Adam(f.param_groups(1e-2, 1e-2), eps=1e-15)
    for _ in range(200):
        x, d, y = _sample(g, 256)
        loss = ((f(x, d) - y) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mse1 = float(((f(xt, dt) - yt) ** 2).mean())
    return f, mse0, mse1


def test_fitting_reduces_held_out_error(fitted):
    _, mse0, mse1 = fitted
    assert mse1 < mse0 / 10  # measured: 0.037 -> 0.0006


def test_view_dependence_is_learned(fitted):
    f, _, _ = fitted
    p = torch.tensor([[0.1, -0.2, 0.3], [-0.4, 0.2, 0.0]])
    with torch.no_grad():
        plus = f(p, torch.tensor([[1.0, 0.0, 0.0]]).expand(2, 3))
        minus = f(p, torch.tensor([[-1.0, 0.0, 0.0]]).expand(2, 3))
    diff = plus - minus
    assert bool((diff[:, 0] > 0.2).all())  # target difference 0.4
    assert bool((diff[:, 2].abs() < 0.1).all())  # the blue channel is view-independent
