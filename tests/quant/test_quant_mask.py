"""Learnable masks: binary straight-through forward, sigmoid backward, thresholds, pruning, rate term."""

from __future__ import annotations

import math

import pytest
import torch

from scenezip.quant.mask import (
    MASK_THRESHOLD,
    apply_mask,
    hard_mask,
    keep_indices,
    keep_mask,
    mask_loss,
    mask_values,
    soft_mask,
)


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class TestHardMask:
    @pytest.mark.parametrize("shape", [(), (5,), (2, 3), (4, 1)])
    def test_forward_is_binary_and_thresholded(self, shape, gen, device):
        m = (torch.randn(shape, generator=gen) * 6.0).to(device)
        out = hard_mask(m)
        assert out.shape == m.shape and out.dtype == m.dtype
        assert bool(((out == 0.0) | (out == 1.0)).all())  # exactly binary, not 0.99999994
        torch.testing.assert_close(out, (torch.sigmoid(m) > MASK_THRESHOLD).float(), rtol=0, atol=0)

    def test_gradient_is_sigmoid_derivative_times_upstream(self, gen, device):
        m = (torch.randn(64, generator=gen) * 4.0).to(device).requires_grad_(True)
        v = torch.randn(64, generator=gen).to(device)
        (hard_mask(m) * v).sum().backward()
        s = torch.sigmoid(m.detach())
        torch.testing.assert_close(m.grad, v * s * (1.0 - s))
        assert bool((m.grad != 0).all())  # every logit learns, masked or not

    def test_threshold_behaviour(self):
        t = 0.01
        m = torch.tensor([_logit(t) - 1e-3, _logit(t) + 1e-3, -10.0, 10.0])
        assert hard_mask(m, t).tolist() == [0.0, 1.0, 0.0, 1.0]
        # a larger threshold drops more: sigmoid(m) > 0.5 <=> m > 0
        m2 = torch.tensor([-0.1, 0.1, 2.0, -3.0])
        assert hard_mask(m2, 0.5).tolist() == [0.0, 1.0, 1.0, 0.0]
        assert hard_mask(m2, 0.01).tolist() == [1.0, 1.0, 1.0, 1.0]

    @pytest.mark.parametrize("threshold", [0.0, 1.0, -0.5, 2.0, True])
    def test_bad_threshold_raises(self, threshold):
        with pytest.raises(ValueError, match="threshold"):
            hard_mask(torch.zeros(3), threshold)

    def test_non_float_logits_raise(self):
        with pytest.raises(ValueError, match="mask_logits"):
            hard_mask(torch.zeros(3, dtype=torch.int64))


class TestKeep:
    def test_keep_indices_rows_of_column_logits(self):
        m = torch.tensor([[3.0], [-9.0], [0.0], [-4.5], [-4.7]])  # sigmoid(-4.5) = 0.011 > 0.01 > sigmoid(-4.7)
        assert keep_indices(m).tolist() == [0, 2, 3]
        assert keep_mask(m).shape == (5, 1)

    def test_keep_indices_flat_over_any_shape(self, gen):
        m = torch.randn(3, 4, generator=gen) * 5
        idx = keep_indices(m, 0.3)
        expect = torch.nonzero((torch.sigmoid(m) > 0.3).reshape(-1))[:, 0]
        assert idx.dtype == torch.int64 and idx.tolist() == expect.tolist()

    def test_keep_agrees_with_hard_mask(self, gen):
        m = torch.randn(100, generator=gen) * 5
        assert keep_mask(m).tolist() == hard_mask(m).bool().tolist()


class TestApplyMask:
    @pytest.mark.parametrize("opacity_shape", ["flat", "column"])
    def test_masked_rows_vanish_and_kept_rows_are_unchanged(self, opacity_shape, gen, device):
        n = 16
        scales = torch.rand(n, 3, generator=gen).to(device).requires_grad_(True)
        opac = torch.rand(n if opacity_shape == "flat" else (n, 1), generator=gen).to(device).requires_grad_(True)
        m = torch.where(torch.arange(n) % 3 == 0, -8.0, 2.0).to(device).requires_grad_(True)
        s_out, o_out = apply_mask(scales, opac, m)
        assert s_out.shape == scales.shape and o_out.shape == opac.shape
        drop = (torch.arange(n) % 3 == 0).to(device)
        assert bool((s_out[drop] == 0).all()) and bool((o_out.reshape(n)[drop] == 0).all())
        torch.testing.assert_close(s_out[~drop], scales[~drop], rtol=0, atol=0)
        (s_out.sum() + o_out.sum()).backward()
        assert bool((m.grad != 0).all())  # straight-through: dropped items can come back
        assert bool((scales.grad[drop] == 0).all()) and bool((scales.grad[~drop] == 1).all())

    def test_column_logits_accepted(self, gen):
        s, o = apply_mask(torch.ones(4, 3), torch.ones(4), torch.tensor([[5.0], [-9.0], [5.0], [-9.0]]))
        assert o.tolist() == [1.0, 0.0, 1.0, 0.0]

    def test_shape_errors_name_the_argument(self):
        with pytest.raises(ValueError, match="mask_logits"):
            apply_mask(torch.ones(4, 3), torch.ones(4), torch.ones(5))
        with pytest.raises(ValueError, match="opacities_act"):
            apply_mask(torch.ones(4, 3), torch.ones(3), torch.ones(4))
        with pytest.raises(ValueError, match="scales_act"):
            apply_mask(torch.ones(4), torch.ones(4), torch.ones(4))


class TestMaskValues:
    def test_hash_table_entries(self, gen):
        table = torch.randn(10, 2, generator=gen)
        m = torch.where(torch.arange(10) < 4, -10.0, 3.0)
        out = mask_values(table, m)
        assert bool((out[:4] == 0).all())
        torch.testing.assert_close(out[4:], table[4:], rtol=0, atol=0)
        torch.testing.assert_close(mask_values(table, m[:, None]), out, rtol=0, atol=0)

    def test_per_parameter_mask(self, gen):
        flat = torch.randn(32, generator=gen)
        m = torch.randn(32, generator=gen) * 5
        torch.testing.assert_close(mask_values(flat, m), flat * (torch.sigmoid(m) > MASK_THRESHOLD), rtol=0, atol=0)

    def test_shape_mismatch_raises(self):
        with pytest.raises(ValueError, match="mask_logits"):
            mask_values(torch.ones(10, 2), torch.ones(9))


class TestMaskLoss:
    def test_value_is_mean_soft_mask(self, gen):
        m = torch.randn(7, 1, generator=gen)
        torch.testing.assert_close(mask_loss(m), torch.sigmoid(m).mean())
        torch.testing.assert_close(soft_mask(m), torch.sigmoid(m))

    def test_gradient_pushes_logits_down(self, gen, device):
        m = torch.randn(50, generator=gen).to(device).requires_grad_(True)
        mask_loss(m).backward()
        assert bool((m.grad > 0).all())  # descent lowers every logit
        s = torch.sigmoid(m.detach())
        torch.testing.assert_close(m.grad, s * (1 - s) / 50)
        with torch.no_grad():
            stepped = m - 10.0 * m.grad
        assert float(mask_loss(stepped)) < float(mask_loss(m.detach()))

    def test_empty(self):
        assert float(mask_loss(torch.zeros(0))) == 0.0
