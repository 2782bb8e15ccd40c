"""Scalar quantizers: error bounds, straight-through gradients, LSQ step learning, exact decode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scenezip.quant.codecs import dequantize_uniform, quantize_uniform
from scenezip.quant.scalar import (
    LearnedStepQuantizer,
    UniformQuantizer,
    dequantize,
    fake_quantize,
    quantize_to_int,
    ste_round,
    zero_small,
)


class TestSteRound:
    def test_value_and_identity_gradient(self, gen, device):
        x = (torch.randn(100, generator=gen) * 5).to(device).requires_grad_(True)
        v = torch.randn(100, generator=gen).to(device)
        y = ste_round(x)
        torch.testing.assert_close(y, torch.round(x.detach()), rtol=0, atol=0)
        (y * v).sum().backward()
        torch.testing.assert_close(x.grad, v, rtol=0, atol=0)

    def test_rejects_integers(self):
        with pytest.raises(ValueError, match="x"):
            ste_round(torch.arange(3))


class TestIntegerGrid:
    @pytest.mark.parametrize("step", [0.01, 0.37, 3.0])
    def test_error_at_most_half_step(self, step, gen):
        x = torch.randn(10_000, generator=gen) * 20
        y = dequantize(quantize_to_int(x, step), step)
        err = (y.double() - x.double()).abs()
        assert float(err.max()) <= step / 2 + 4e-6  # plus float32 rounding of the decoded value
        assert y.dtype == torch.float32

    def test_round_half_to_even(self):
        q = quantize_to_int(torch.tensor([0.125, 0.375, 0.625, -0.125]), 0.25)
        assert q.tolist() == [0, 2, 2, 0] and q.dtype == torch.int32

    def test_idempotent(self, gen):
        x = torch.randn(5000, generator=gen) * 100
        for step in (1e-3, 0.1, 7.0):
            q = quantize_to_int(x, step)
            y = dequantize(q, step)
            assert torch.equal(quantize_to_int(y, step), q)
            assert torch.equal(dequantize(quantize_to_int(y, step), step), y)

    def test_numpy_and_torch_agree_bitwise(self, gen):
        x = torch.randn(3000, 3, generator=gen) * 4
        step = torch.tensor([0.1, 0.03, 0.7])
        qt = quantize_to_int(x, step)
        qn = quantize_to_int(x.numpy(), step.numpy())
        assert isinstance(qn, np.ndarray) and qn.dtype == np.int32
        np.testing.assert_array_equal(qt.numpy(), qn)
        np.testing.assert_array_equal(dequantize(qt, step).numpy(), dequantize(qn, step.numpy()))

    def test_per_channel_step_broadcasts(self, gen):
        x = torch.randn(100, 2, generator=gen)
        q = quantize_to_int(x, torch.tensor([0.1, 1.0]))
        assert torch.equal(q[:, 0], quantize_to_int(x[:, 0], 0.1))
        assert torch.equal(q[:, 1], quantize_to_int(x[:, 1], 1.0))

    def test_device(self, device, gen):
        x = torch.randn(100, generator=gen)
        q = quantize_to_int(x.to(device), 0.05)
        assert q.device.type == device.type
        assert torch.equal(q.cpu(), quantize_to_int(x, 0.05))
        assert torch.equal(dequantize(q, 0.05).cpu(), dequantize(q.cpu(), 0.05))

    def test_errors(self):
        with pytest.raises(ValueError, match="step"):
            quantize_to_int(torch.ones(3), 0.0)
        with pytest.raises(ValueError, match="step"):
            dequantize(torch.ones(3, dtype=torch.int32), -1.0)
        with pytest.raises(ValueError, match="NaN"):
            quantize_to_int(torch.tensor([float("nan")]), 1.0)
        with pytest.raises(ValueError, match="int32"):
            quantize_to_int(torch.tensor([1e10]), 1.0)
        with pytest.raises(ValueError, match="int32"):
            quantize_to_int(np.array([-1e10]), 1.0)


class TestFakeQuantize:
    def test_ste_mode_is_decoded_value_with_identity_gradient(self, gen):
        x = torch.randn(200, generator=gen).requires_grad_(True)
        y = fake_quantize(x, 0.1, "ste")
        assert torch.equal(y.detach(), dequantize(quantize_to_int(x, 0.1), 0.1))
        y.sum().backward()
        assert bool((x.grad == 1).all())

    def test_noise_mode_stays_within_half_step(self):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(2000, generator=g).requires_grad_(True)
        y = fake_quantize(x, 0.2, "noise", generator=g)
        d = (y - x).detach()
        assert float(d.abs().max()) <= 0.1 + 1e-6
        assert float(d.std()) > 0.04  # uniform on [-0.1, 0.1): std 0.058, not rounding
        y.sum().backward()
        assert bool((x.grad == 1).all())

    def test_round_mode_has_no_gradient_path(self):
        x = torch.randn(10).requires_grad_(True)
        assert not fake_quantize(x, 0.1, "round").requires_grad

    def test_bad_mode(self):
        with pytest.raises(ValueError, match="mode"):
            fake_quantize(torch.ones(2), 0.1, "floor")


class TestZeroSmall:
    def test_torch_and_numpy(self):
        x = torch.tensor([-0.2, -0.1, 0.05, 0.1, 0.11, 3.0], requires_grad=True)
        y = zero_small(x, 0.1)
        assert y.tolist() == pytest.approx([-0.2, 0.0, 0.0, 0.0, 0.11, 3.0])
        y.sum().backward()
        assert x.grad.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0, 1.0]
        np.testing.assert_array_equal(zero_small(x.detach().numpy(), 0.1), y.detach().numpy())

    def test_bad_threshold(self):
        with pytest.raises(ValueError, match="threshold"):
            zero_small(torch.ones(2), -1.0)


class TestUniformQuantizer:
    @pytest.mark.parametrize("bits", [1, 4, 8, 12])
    def test_matches_codecs_bit_for_bit(self, bits, gen):
        x = torch.randn(4000, generator=gen) * 2  # some values outside [-3, 2.5] get clipped
        uq = UniformQuantizer(-3.0, 2.5, bits)
        q = uq.quantize(x)
        ref = quantize_uniform(x.numpy(), -3.0, 2.5, bits)
        np.testing.assert_array_equal(q.numpy(), ref.astype(np.int64))
        np.testing.assert_array_equal(uq.to_numpy_codes(x), ref)
        np.testing.assert_array_equal(uq.dequantize(q).numpy(), dequantize_uniform(ref, -3.0, 2.5, bits))
        np.testing.assert_array_equal(uq.from_numpy_codes(ref), dequantize_uniform(ref, -3.0, 2.5, bits))
        assert int(q.min()) >= 0 and int(q.max()) <= 2**bits - 1

    def test_error_bound_inside_range(self, gen):
        x = torch.rand(5000, generator=gen) * 4 - 2
        uq = UniformQuantizer(-2.0, 2.0, 6)
        err = (uq.dequantize(uq.quantize(x)).double() - x.double()).abs()
        assert float(err.max()) <= float(uq.step) / 2 + 1e-6
        y = uq.dequantize(uq.quantize(x))
        assert torch.equal(uq.dequantize(uq.quantize(y)), y)  # idempotent

    def test_ste_forward_value_and_gradient(self, gen):
        x = (torch.randn(300, generator=gen) * 2).requires_grad_(True)
        uq = UniformQuantizer(-1.5, 1.5, 5, mode="ste")
        y = uq(x)
        assert torch.equal(y.detach(), uq.dequantize(uq.quantize(x)))  # what the file will hold
        y.sum().backward()
        inside = (x.detach() > -1.5) & (x.detach() < 1.5)
        assert bool((x.grad[inside] == 1).all()) and bool((x.grad[~inside] == 0).all())
        assert bool((~inside).any())

    def test_noise_mode(self, gen):
        x = torch.rand(1000, generator=gen) * 2 - 1
        uq = UniformQuantizer(-1.0, 1.0, 4, mode="noise")
        y = uq(x, generator=torch.Generator().manual_seed(3))
        d = (y - x).abs()
        assert float(d.max()) <= float(uq.step) / 2 + 1e-6
        assert not torch.equal(y, uq.dequantize(uq.quantize(x)))

    def test_per_channel_from_data(self, gen):
        x = torch.randn(500, 3, generator=gen) * torch.tensor([1.0, 10.0, 0.01])
        uq = UniformQuantizer.from_data(x, 8, dim=1)
        assert uq.lo.shape == (3,)
        torch.testing.assert_close(uq.lo.float(), x.min(0).values)
        q = uq.quantize(x)
        assert bool((q.min(0).values == 0).all()) and bool((q.max(0).values == 255).all())
        err = (uq.dequantize(q) - x).abs()
        assert bool((err <= uq.step.float() / 2 + 1e-6).all())
        by_rows = UniformQuantizer.from_data(x.t().contiguous(), 8, dim=0)
        assert by_rows.lo.shape == (3, 1)

    def test_constant_data(self):
        uq = UniformQuantizer.from_data(torch.full((10,), 0.3), 8)
        assert torch.equal(uq.dequantize(uq.quantize(torch.full((10,), 0.3))), torch.full((10,), 0.3))

    def test_buffers_follow_the_module(self, device):
        uq = UniformQuantizer(-1.0, 1.0, 8).to(device)
        x = torch.linspace(-1, 1, 11, device=device)
        assert uq.quantize(x).device.type == device.type
        assert dict(uq.state_dict()).keys() == {"lo", "hi"}

    def test_errors(self):
        with pytest.raises(ValueError, match="bits"):
            UniformQuantizer(0.0, 1.0, 0)
        with pytest.raises(ValueError, match="lo and hi"):
            UniformQuantizer(1.0, 1.0, 8)
        with pytest.raises(ValueError, match="mode"):
            UniformQuantizer(0.0, 1.0, 8, mode="soft")
        with pytest.raises(ValueError, match="NaN"):
            UniformQuantizer(0.0, 1.0, 8).quantize(torch.tensor([float("nan")]))


class TestLearnedStep:
    def test_forward_equals_decode_and_levels_are_symmetric(self, gen):
        x = torch.randn(1000, generator=gen)
        lsq = LearnedStepQuantizer(0.1, bits=4)
        q = lsq.quantize(x)
        assert int(q.min()) == -7 and int(q.max()) == 7
        assert torch.equal(lsq(x).detach(), lsq.dequantize(q))

    def test_step_gradient_is_lsq(self):
        # two values inside the range and one clipped at +Q = 7
        x = torch.tensor([0.26, -0.14, 5.0], requires_grad=True)
        s = 0.1
        lsq = LearnedStepQuantizer(s, bits=4)
        lsq(x).sum().backward()
        g = 1.0 / (3 * 7) ** 0.5
        expect = g * ((3 - 2.6) + (-1 - (-1.4)) + 7)
        assert float(lsq.step.grad) == pytest.approx(expect, rel=1e-5)
        assert x.grad.tolist() == [1.0, 1.0, 0.0]

    def test_unbounded_never_clips(self):
        lsq = LearnedStepQuantizer(0.5, bits=None)
        x = torch.tensor([1000.2, -777.7])
        assert lsq.quantize(x).tolist() == [2000, -1555]
        assert lsq.qmax is None

    @pytest.mark.parametrize("init", [0.5, 1e-3])
    def test_fitting_the_step_reduces_mse(self, init):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1024, generator=g) * 0.1
        lsq = LearnedStepQuantizer(init, bits=4)
        opt = torch.optim.Adam(lsq.parameters(), lr=2e-2)
        with torch.no_grad():
            mse0 = float(((lsq(x) - x) ** 2).mean())
        for _ in range(80):
            loss = ((lsq(x) - x) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            assert lsq.step.grad is not None and torch.isfinite(lsq.step.grad).all()
            opt.step()
        with torch.no_grad():
            mse1 = float(((lsq(x) - x) ** 2).mean())
        assert mse1 < mse0 / 10  # both a too-coarse and a too-fine (clipping) start recover

    def test_per_channel_step(self, gen):
        x = torch.randn(256, 2, generator=gen) * torch.tensor([1.0, 0.01])
        lsq = LearnedStepQuantizer(torch.tensor([0.2, 0.002]), bits=6)
        lsq(x).pow(2).sum().backward()
        assert lsq.step.grad.shape == (2,) and bool((lsq.step.grad != 0).all())

    def test_from_data(self, gen):
        x = torch.randn(1000, generator=gen)
        lsq = LearnedStepQuantizer.from_data(x, 8)
        assert float(lsq.step.detach()) == pytest.approx(2 * float(x.abs().mean()) / 127**0.5, rel=1e-5)

    def test_errors(self):
        with pytest.raises(ValueError, match="bits"):
            LearnedStepQuantizer(0.1, bits=1)
        with pytest.raises(ValueError, match="step"):
            LearnedStepQuantizer(0.0)
        with pytest.raises(ValueError, match="x"):
            LearnedStepQuantizer(0.1)(torch.arange(3))
