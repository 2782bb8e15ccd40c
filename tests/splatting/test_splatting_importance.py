"""Blend-weight importance and weight-budget pruning (splatting/importance.py)."""

from __future__ import annotations

import math

import pytest
import torch

from scenezip.render.rasterization import rasterization_dense_reference
from scenezip.scenes.cameras import Cameras
from scenezip.splatting.gaussians import GaussianModel
from scenezip.splatting.importance import blend_weight_totals, gaussian_blend_weights, weight_budget_keep


def _camera(width: int = 32, height: int = 24, f: float = 30.0) -> Cameras:
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    return Cameras(torch.eye(4)[None], K[None], torch.tensor([width]), torch.tensor([height]))


def _model(means, scales, opacities) -> GaussianModel:
    n = len(means)
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1)
    return GaussianModel(torch.tensor(means), quats, torch.log(torch.tensor(scales)),
                         torch.logit(torch.tensor(opacities)), torch.zeros(n, 1, 3), torch.zeros(n, 0, 3))  # fmt: skip


def test_single_gaussian_weight_is_its_opacity_times_its_footprint():
    # one Gaussian well inside the image: sum over pixels of o * exp(-r^2/2) = o * 2 pi sx sy (pixel units);
    # the rasterizer adds 0.3 px^2 to each variance
    cam = _camera(64, 64, f=40.0)
    m = _model([[0.0, 0.0, 4.0]], [[0.2, 0.3, 0.1]], [0.7])
    w = gaussian_blend_weights(m, [cam], backend="torch")
    sx2, sy2 = (40.0 * 0.2 / 4.0) ** 2 + 0.3, (40.0 * 0.3 / 4.0) ** 2 + 0.3
    assert w.shape == (1,)
    assert float(w[0]) == pytest.approx(0.7 * 2 * math.pi * math.sqrt(sx2 * sy2), rel=0.02)


def test_weights_match_the_dense_reference_and_hidden_gaussians_get_little():
    torch.manual_seed(0)
    cam = _camera()
    # a near opaque Gaussian hides one right behind it; a third stands apart
    m = _model([[0.0, 0.0, 3.0], [0.0, 0.0, 3.5], [1.5, 0.8, 3.0]],
               [[0.6, 0.6, 0.05], [0.1, 0.1, 0.05], [0.1, 0.1, 0.05]], [0.99, 0.9, 0.5])  # fmt: skip
    w = gaussian_blend_weights(m, [cam, cam], backend="torch")
    a = {k: v.detach() for k, v in m.activated().items()}

    def dense(colors, viewmats, Ks, width, height):
        return rasterization_dense_reference(a["means"], a["quats"], a["scales"], a["opacities"], colors, viewmats,
                                             Ks, width, height)[0]  # fmt: skip

    ref = blend_weight_totals(dense, 3, [cam, cam], a["means"])
    torch.testing.assert_close(w, ref, rtol=1e-4, atol=1e-6)
    alone = gaussian_blend_weights(_model([[0.0, 0.0, 3.5]], [[0.1, 0.1, 0.05]], [0.9]), [cam, cam], backend="torch")
    assert float(w[1]) < 0.1 * float(alone[0])  # behind the opacity-0.99 Gaussian's core
    assert float(w[2]) > 0.0


def test_weight_budget_keep_drops_the_smallest_within_the_budget():
    w = torch.tensor([5.0, 0.1, 3.0, 0.2, 0.0, 1.7])  # total 10
    assert weight_budget_keep(w, 0.0).all()
    # 0.0 + 0.1 + 0.2 = 0.3 <= 3.5% of 10; adding 1.7 would exceed it
    assert weight_budget_keep(w, 0.035).tolist() == [True, False, True, False, False, True]
    assert weight_budget_keep(w, 0.02).tolist() == [True, False, True, True, False, True]
    assert weight_budget_keep(w, 0.999).sum() == 1  # never everything
    with pytest.raises(ValueError, match="budget"):
        weight_budget_keep(w, 1.0)
