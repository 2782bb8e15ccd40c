"""Adaptive density control: clone / split / prune / reset on hand-made models, optimizer surgery, schedule."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from scenezip.render._project import quat_to_rotmat
from scenezip.splatting.config import DensifyConfig
from scenezip.splatting.densify import (
    DensifySchedule,
    DensityController,
    duplicate,
    remove,
    reset_opacities,
    split,
)


def _model(n: int = 4, seed: int = 0, scale_dim: int = 3) -> dict[str, nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return {
        "means": nn.Parameter(torch.randn(n, 3, generator=g)),
        "quats": nn.Parameter(torch.randn(n, 4, generator=g)),
        "scales": nn.Parameter(torch.log(torch.rand(n, scale_dim, generator=g) * 0.05 + 0.01)),
        "opacities": nn.Parameter(torch.logit(torch.rand(n, generator=g) * 0.8 + 0.1)),
        "sh0": nn.Parameter(torch.randn(n, 1, 3, generator=g)),
        "shN": nn.Parameter(torch.randn(n, 3, 3, generator=g)),
        "mask": nn.Parameter(torch.randn(n, generator=g)),  # an extra per-Gaussian parameter
    }


def _optimizers(params) -> dict[str, torch.optim.Adam]:
    """Adams with non-zero moments: take two steps on a random objective."""
    opts = {k: torch.optim.Adam([p], lr=1e-3, eps=1e-15) for k, p in params.items()}
    g = torch.Generator().manual_seed(7)
    for _ in range(2):
        loss = sum((p * torch.randn(p.shape, generator=g)).sum() for p in params.values())
        loss.backward()
        for o in opts.values():
            o.step()
            o.zero_grad()
    return opts


def _snapshot(params, opts):
    return (
        {k: p.detach().clone() for k, p in params.items()},
        {k: {s: v.clone() for s, v in opts[k].state[params[k]].items()} for k in params},
    )


def _check_consistent(params, opts):
    n = params["means"].shape[0]
    for k, p in params.items():
        assert p.shape[0] == n, k
        (held,) = opts[k].param_groups[0]["params"]
        assert held is p, f"optimizer of {k} does not hold the new parameter"
        st = opts[k].state[p]
        assert st["exp_avg"].shape == p.shape and st["exp_avg_sq"].shape == p.shape, k
        assert float(st["step"]) == 2.0, k  # scalar state is kept


class TestSurgery:
    def test_duplicate(self):
        params = _model()
        opts = _optimizers(params)
        p0, s0 = _snapshot(params, opts)
        mask = torch.tensor([True, False, False, True])
        assert duplicate(params, opts, mask) == 2
        _check_consistent(params, opts)
        for k, p in params.items():
            assert torch.equal(p[:4], p0[k]) and torch.equal(p[4:], p0[k][[0, 3]]), k
            st = opts[k].state[p]
            for s in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(st[s][:4], s0[k][s]), (k, s)  # old rows keep their moments
                assert torch.all(st[s][4:] == 0), (k, s)  # new rows start at zero
            assert torch.any(s0[k]["exp_avg"] != 0)

    def test_split_rows_scales_and_moments(self):
        params = _model()
        opts = _optimizers(params)
        p0, s0 = _snapshot(params, opts)
        mask = torch.tensor([False, True, False, False])
        assert split(params, opts, mask, generator=torch.Generator().manual_seed(0)) == 1
        _check_consistent(params, opts)
        assert params["means"].shape[0] == 5
        keep = [0, 2, 3]
        for k, p in params.items():
            assert torch.equal(p[:3], p0[k][keep]), k
            st = opts[k].state[p]
            assert torch.equal(st["exp_avg"][:3], s0[k]["exp_avg"][keep]) and torch.all(st["exp_avg"][3:] == 0), k
        torch.testing.assert_close(params["scales"][3:], (p0["scales"][1] - math.log(1.6)).expand(2, 3))
        for k in ("quats", "opacities", "sh0", "shN", "mask"):
            assert torch.equal(params[k][3], p0[k][1]) and torch.equal(params[k][4], p0[k][1]), k
        assert not torch.equal(params["means"][3], p0["means"][1])

    def test_split_samples_follow_the_gaussian(self):
        """Children of many copies of one anisotropic, rotated Gaussian have its covariance."""
        n = 4000
        q = torch.tensor([0.9, 0.2, -0.3, 0.25])
        s = torch.tensor([0.3, 0.1, 0.02])
        params = {
            "means": nn.Parameter(torch.zeros(n, 3)),
            "quats": nn.Parameter(q.expand(n, 4).clone()),
            "scales": nn.Parameter(torch.log(s).expand(n, 3).clone()),
            "opacities": nn.Parameter(torch.zeros(n)),
        }
        split(params, {}, torch.ones(n, dtype=torch.bool), generator=torch.Generator().manual_seed(0))
        x = params["means"].detach().double()
        R = quat_to_rotmat(q).double()
        expected = R @ torch.diag(s.double() ** 2) @ R.T
        torch.testing.assert_close(x.T @ x / x.shape[0], expected, atol=2e-3, rtol=0.05)

    def test_split_surfels_stay_in_their_plane(self):
        params = _model(n=3, scale_dim=2)
        split(params, {}, torch.ones(3, dtype=torch.bool), generator=torch.Generator().manual_seed(0))
        normal = quat_to_rotmat(params["quats"].detach())[:, :, 2]  # third local axis
        parent = _model(n=3, scale_dim=2)["means"].detach().repeat(2, 1)
        offsets = params["means"].detach() - parent
        assert offsets.abs().max() > 1e-4
        torch.testing.assert_close((offsets * normal).sum(-1), torch.zeros(6), atol=1e-6, rtol=0)

    def test_remove(self):
        params = _model()
        opts = _optimizers(params)
        p0, s0 = _snapshot(params, opts)
        assert remove(params, opts, torch.tensor([False, True, True, False])) == 2
        _check_consistent(params, opts)
        for k, p in params.items():
            assert torch.equal(p, p0[k][[0, 3]])
            assert torch.equal(opts[k].state[p]["exp_avg_sq"], s0[k]["exp_avg_sq"][[0, 3]])

    def test_reset_opacities(self):
        params = _model()
        with torch.no_grad():
            params["opacities"][0] = torch.logit(torch.tensor(0.001))
        opts = _optimizers(params)
        p0, s0 = _snapshot(params, opts)
        reset_opacities(params, opts, 0.01)
        _check_consistent(params, opts)
        op = torch.sigmoid(params["opacities"].detach())
        assert torch.all(op <= 0.01 + 1e-6)
        assert torch.equal(params["opacities"][0], p0["opacities"][0])  # already below: untouched
        torch.testing.assert_close(op[1:], torch.full((3,), 0.01))
        st = opts["opacities"].state[params["opacities"]]
        assert torch.all(st["exp_avg"] == 0) and torch.all(st["exp_avg_sq"] == 0)
        assert torch.equal(opts["means"].state[params["means"]]["exp_avg"], s0["means"]["exp_avg"])
        assert torch.equal(params["means"], p0["means"])

    def test_optimizer_with_several_groups(self):
        params = _model()
        opt = torch.optim.Adam([{"params": [params["means"]]}, {"params": [params["scales"], params["sh0"]]}])
        loss = params["means"].sum() + params["scales"].sum() + params["sh0"].sum()
        loss.backward()
        opt.step()
        duplicate(params, {"all": opt}, torch.tensor([True, False, False, False]))
        assert opt.param_groups[1]["params"][0] is params["scales"]
        assert opt.state[params["sh0"]]["exp_avg"].shape == (5, 1, 3)


def _meta(n: int, grad_ndc: torch.Tensor, width: int = 40, height: int = 20, visible=None) -> dict:
    """Fake rasterizer meta whose means2d gradient normalizes (as gsplat does) to ``grad_ndc`` [n] along x."""
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    g = torch.zeros(1, n, 2)
    g[0, :, 0] = grad_ndc / (width / 2.0)
    means2d.grad = g
    radii = torch.full((1, n, 2), 3, dtype=torch.int32)
    if visible is not None:
        radii[0, ~visible] = 0
    return {"means2d": means2d, "radii": radii, "width": width, "height": height, "n_cameras": 1}


def _controlled_model() -> dict[str, nn.Parameter]:
    """0: small, high gradient; 1: large, high gradient; 2: low gradient; 3: transparent; 4: huge."""
    params = _model(5)
    with torch.no_grad():
        params["scales"][:] = math.log(0.005)
        params["scales"][1, 0] = math.log(0.05)
        params["scales"][4] = math.log(0.5)
        params["opacities"][:] = 0.0
        params["opacities"][3] = torch.logit(torch.tensor(0.001))
    return params


class TestController:
    cfg = DensifyConfig(refine_start=2, refine_every=2, reset_every=6, refine_stop=20, schedule_scale=1.0)

    def test_clone_split_prune_decisions(self):
        params = _controlled_model()
        opts = _optimizers(params)
        ctl = DensityController(self.cfg, 20, scene_extent=1.0, generator=torch.Generator().manual_seed(0))
        grads = torch.tensor([3e-4, 3e-4, 1e-4, 1e-4, 1e-4])
        means_before = params["means"].detach().clone()
        counts = ctl.step(params, opts, 4, _meta(5, grads))
        assert counts == {"cloned": 1, "split": 1, "pruned": 1, "reset": 0}
        # 5 - 1 (split parent) - 1 (pruned) + 1 (clone) + 2 (children); the huge one survives before any reset
        assert params["means"].shape[0] == 6
        m = params["means"].detach()
        for i in (0, 2, 4):
            assert any(torch.equal(row, means_before[i]) for row in m), i
        assert not any(torch.equal(row, means_before[3]) for row in m)  # transparent: pruned
        assert not any(torch.equal(row, means_before[1]) for row in m)  # split: parent replaced
        assert sum(torch.equal(row, means_before[0]) for row in m) == 2  # cloned in place
        for k, p in params.items():
            assert opts[k].param_groups[0]["params"][0] is p and opts[k].state[p]["exp_avg"].shape == p.shape
        assert torch.all(ctl.stats["grad2d"] == 0) and ctl.stats["grad2d"].shape == (6,)

    def test_gradient_is_averaged_over_visible_steps(self):
        params = _controlled_model()
        opts = _optimizers(params)
        ctl = DensityController(self.cfg, 20, scene_extent=1.0)
        vis = torch.tensor([True, False, True, True, True])
        ctl.step(params, opts, 3, _meta(5, torch.full((5,), 3e-4), visible=vis))
        counts = ctl.step(params, opts, 4, _meta(5, torch.tensor([0.9e-4, 3e-4, 0, 0, 0])))
        # Gaussian 0: mean (3e-4 + 0.9e-4) / 2 < 2e-4, not above the threshold; 1: seen once at 3e-4
        assert counts["cloned"] == 0 and counts["split"] == 1

    def test_large_gaussians_pruned_only_after_first_reset(self):
        params = _controlled_model()
        opts = _optimizers(params)
        ctl = DensityController(self.cfg, 20, scene_extent=1.0)
        zero = torch.zeros(5)
        assert ctl.step(params, opts, 6, _meta(5, zero)) == {"cloned": 0, "split": 0, "pruned": 1, "reset": 1}
        assert torch.all(torch.sigmoid(params["opacities"]) <= 0.01 + 1e-6)
        with torch.no_grad():
            params["opacities"][:] = 0.0
        assert ctl.step(params, opts, 8, _meta(4, torch.zeros(4)))["pruned"] == 1  # the huge one
        assert torch.exp(params["scales"]).max() < 0.1

    def test_no_refinement_outside_the_window(self):
        params = _controlled_model()
        opts = _optimizers(params)
        ctl = DensityController(self.cfg, 20, scene_extent=1.0)
        high = torch.full((5,), 1e-3)
        for step in (1, 2, 3, 5, 20, 22):
            counts = ctl.step(params, opts, step, _meta(5, high))
            assert counts["cloned"] == counts["split"] == counts["pruned"] == 0, step
        assert params["means"].shape[0] == 5

    def test_max_gaussians_keeps_highest_gradients(self):
        params = _controlled_model()
        opts = _optimizers(params)
        cfg = dataclasses.replace(self.cfg, max_gaussians=6)
        ctl = DensityController(cfg, 20, scene_extent=1.0)
        counts = ctl.step(params, opts, 4, _meta(5, torch.tensor([3e-4, 5e-4, 1e-4, 1e-4, 1e-4])))
        assert counts["split"] == 1 and counts["cloned"] == 0  # only the split (cost 1) fits

    def test_prune_fn_hook(self):
        params = _controlled_model()
        opts = _optimizers(params)
        ctl = DensityController(self.cfg, 20, scene_extent=1.0, prune_fn=lambda p: torch.sigmoid(p["mask"]) < 2.0)
        with pytest.warns(RuntimeWarning, match="pruning skipped"):
            ctl.step(params, opts, 4, _meta(5, torch.zeros(5)))
        assert params["means"].shape[0] == 5

    def test_state_dict_round_trip(self):
        params = _controlled_model()
        opts = _optimizers(params)
        ctl = DensityController(self.cfg, 20, scene_extent=1.0)
        ctl.step(params, opts, 3, _meta(5, torch.full((5,), 1e-4)))
        other = DensityController(self.cfg, 20, scene_extent=1.0)
        other.load_state_dict(ctl.state_dict())
        assert torch.equal(other.stats["grad2d"], ctl.stats["grad2d"]) and float(other.stats["count"].sum()) == 5


def _steps(s: DensifySchedule) -> tuple[int, ...]:
    return (s.refine_start, s.refine_stop, s.refine_every, s.reset_every, s.sh_degree_every)


class TestSchedule:
    def test_reference_numbers(self):
        s = DensifySchedule.from_config(DensifyConfig(), 30_000)
        assert _steps(s) == (500, 15000, 100, 3000, 1000)
        assert not s.refines(500) and s.refines(600) and not s.refines(650) and not s.refines(15000)
        assert s.resets(3000) and s.resets(12000) and not s.resets(15000) and not s.resets(0)
        assert not s.prunes_large(3000) and s.prunes_large(3001)
        assert [s.sh_degree(k, 3) for k in (1, 999, 1000, 2500, 3000, 29999)] == [0, 0, 1, 2, 3, 3]

    def test_scales_with_run_length(self):
        s = DensifySchedule.from_config(DensifyConfig(), 3000)
        assert _steps(s) == (50, 1500, 10, 300, 100)
        fixed = DensifySchedule.from_config(DensifyConfig(schedule_scale=1.0), 3000)
        assert fixed.refine_every == 100 and fixed.refine_stop == 15000
        tiny = DensifySchedule.from_config(DensifyConfig(), 30)
        assert tiny.refine_every == 1 and tiny.sh_degree_every == 1 and tiny.refine_start == 0

    def test_errors(self):
        with pytest.raises(ValueError, match="total_steps"):
            DensifySchedule.from_config(DensifyConfig(), 0)
        with pytest.raises(ValueError, match="schedule_scale"):
            DensifySchedule.from_config(DensifyConfig(schedule_scale=-1.0), 10)
        with pytest.raises(ValueError, match="scene_extent"):
            DensityController(DensifyConfig(), 10, scene_extent=0.0)
        with pytest.raises(ValueError, match="between 0 and 1|in \\(0, 1\\)"):
            reset_opacities(_model(), {}, 1.5)
