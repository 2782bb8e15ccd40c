"""Residual VQ: stage-wise error, exact encode/decode, straight-through gradients, k-means init
and codebook learning."""

from __future__ import annotations

import pytest
import torch

from scenezip.quant.rvq import ResidualVQ, kmeans, nearest_code, rvq_decode, rvq_encode


def clustered(gen: torch.Generator, n_clusters: int = 8, per: int = 100, dim: int = 7, noise: float = 0.05):
    centers = torch.randn(n_clusters, dim, generator=gen) * 3.0
    x = centers.repeat_interleave(per, 0) + noise * torch.randn(n_clusters * per, dim, generator=gen)
    return x


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b) ** 2).mean().item()


def test_nearest_code_matches_brute_force(gen):
    x = torch.randn(500, 7, generator=gen)
    cb = torch.randn(33, 7, generator=gen)
    expected = torch.cdist(x.double(), cb.double()).argmin(1)
    assert torch.equal(nearest_code(x, cb), expected)
    assert torch.equal(nearest_code(x, cb, chunk_size=3), expected)


def test_error_never_grows_with_stages(gen):
    x = torch.randn(1500, 7, generator=gen)
    vq = ResidualVQ(7, n_stages=6, codebook_size=16, kmeans_init=False)
    vq.init_from(x)
    idx = vq.encode(x)
    errors = [mse(x, torch.zeros_like(x))]
    for s in range(1, 7):
        partial = rvq_decode(idx[:, :s], vq.codebooks[:s].detach())
        errors.append(mse(x, partial))
    assert all(b <= a + 1e-7 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 0.5 * errors[1] < 0.5 * errors[0]


def test_decode_of_encode_equals_forward(gen):
    x = torch.randn(300, 4, generator=gen)
    vq = ResidualVQ(4, n_stages=3, codebook_size=8)
    vq.train()
    x_q, indices, loss = vq(x)
    assert indices.shape == (300, 3) and indices.dtype == torch.int64
    assert x_q.shape == (300, 4) and loss.dim() == 0 and loss.item() > 0
    assert torch.equal(vq.encode(x), indices)
    assert torch.equal(vq.decode(indices), x_q.detach())
    assert torch.equal(rvq_encode(x, vq.codebooks), indices)
    assert int(indices.min()) >= 0 and int(indices.max()) < 8


def test_straight_through_gradient(gen):
    x = torch.randn(200, 5, generator=gen)
    vq = ResidualVQ(5, n_stages=2, codebook_size=4, kmeans_init=False)
    vq.init_from(x)
    xr = x.clone().requires_grad_()
    x_q, indices, _ = vq(xr)
    v = torch.randn(200, 5, generator=gen)
    (x_q * v).sum().backward()
    assert torch.equal(xr.grad, v)
    # the task gradient reaches the selected codes: code k of stage s gets the sum of v over its points
    for s in range(2):
        expected = torch.zeros(4, 5).index_add_(0, indices[:, s], v)
        torch.testing.assert_close(vq.codebooks.grad[s], expected)


def test_commitment_loss_reaches_input_only_when_weighted(gen):
    x = torch.randn(100, 3, generator=gen)
    for weight, expect_grad in ((0.0, False), (0.25, True)):
        vq = ResidualVQ(3, n_stages=2, codebook_size=4, commitment_weight=weight, kmeans_init=False)
        vq.init_from(x)
        xr = x.clone().requires_grad_()
        _, _, loss = vq(xr)
        loss.backward()
        assert (xr.grad is not None and xr.grad.abs().sum().item() > 0) == expect_grad


def test_kmeans_init_beats_random_init(gen):
    x = clustered(gen)
    wins = 0
    for seed in range(3):
        g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        km = kmeans(x, 8, n_iters=10, generator=g1)
        rnd = kmeans(x, 8, n_iters=0, seeding="random", generator=g2)
        e_km = mse(x, km[nearest_code(x, km)])
        e_rnd = mse(x, rnd[nearest_code(x, rnd)])
        assert e_km < 0.01  # one code per cluster: error is the noise level (0.05^2)
        wins += e_km < 0.5 * e_rnd
    assert wins == 3
    # the module: init_from on the data beats the module's random start by far
    vq = ResidualVQ(7, n_stages=2, codebook_size=8, kmeans_init=False)
    before = mse(x, vq.decode(vq.encode(x)))
    vq.init_from(x)
    assert mse(x, vq.decode(vq.encode(x))) < 0.01 * before


def test_kmeanspp_seeding_covers_clusters(gen):
    x = clustered(gen)
    covered = []
    for seed in range(3):
        seeds = kmeans(x, 8, n_iters=0, generator=torch.Generator().manual_seed(seed))
        labels = nearest_code(seeds, x).div(100, rounding_mode="floor")  # cluster of each seed
        covered.append(len(set(labels.tolist())))
    assert covered == [8, 8, 8]


def test_codebook_learning_reduces_error(gen):
    x = torch.randn(400, 7, generator=gen)
    vq = ResidualVQ(7, n_stages=2, codebook_size=8, kmeans_init=False)
    vq.init_from(x, n_iters=0, seeding="random")
    start = mse(x, vq.decode(vq.encode(x)))
    opt = torch.optim.Adam(vq.parameters(), lr=2e-2)
    for _ in range(40):
        opt.zero_grad()
        _, _, loss = vq(x)
        loss.backward()
        opt.step()
    assert mse(x, vq.decode(vq.encode(x))) < 0.8 * start


def test_task_loss_alone_trains_codebooks(gen):
    x = torch.randn(400, 3, generator=gen)
    vq = ResidualVQ(3, n_stages=1, codebook_size=8, codebook_weight=0.0, kmeans_init=False)
    vq.init_from(x, n_iters=0, seeding="random")
    start = mse(x, vq.decode(vq.encode(x)))
    opt = torch.optim.Adam(vq.parameters(), lr=2e-2)
    for _ in range(40):
        opt.zero_grad()
        x_q, _, loss = vq(x)
        assert loss.item() == 0.0
        ((x_q - x) ** 2).mean().backward()
        opt.step()
    assert mse(x, vq.decode(vq.encode(x))) < 0.8 * start


def test_lazy_kmeans_init_once(gen):
    x = clustered(gen)
    vq = ResidualVQ(7, n_stages=2, codebook_size=8)
    vq.eval()
    vq(x)
    assert not bool(vq.initted)  # eval never fits
    vq.train()
    x_q, _, _ = vq(x)
    assert bool(vq.initted) and mse(x, x_q.detach()) < 0.01
    fitted = vq.codebooks.detach().clone()
    vq(x * 5.0)
    assert torch.equal(vq.codebooks.detach(), fitted)  # no refit
    fresh = ResidualVQ(7, n_stages=2, codebook_size=8)
    fresh.load_state_dict(vq.state_dict())
    fresh.train()
    fresh(x * 5.0)
    assert torch.equal(fresh.codebooks.detach(), fitted)


def test_init_deterministic_and_subsampled(gen):
    x = torch.randn(3000, 4, generator=gen)
    a, b = ResidualVQ(4, 2, 8), ResidualVQ(4, 2, 8)
    a.init_from(x, max_points=500, seed=7)
    b.init_from(x, max_points=500, seed=7)
    assert torch.equal(a.codebooks, b.codebooks)
    b.init_from(x, max_points=500, seed=8)
    assert not torch.equal(a.codebooks, b.codebooks)


def test_exceptions(gen):
    vq = ResidualVQ(7, n_stages=3, codebook_size=4)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 7\]"):
        vq(torch.randn(10, 6))
    with pytest.raises(ValueError, match=r"x must have shape \[N, 7\]"):
        vq(torch.randn(7))
    with pytest.raises(ValueError, match="floating-point"):
        vq.encode(torch.zeros(3, 7, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"indices must have shape \[N, 3\]"):
        vq.decode(torch.zeros(5, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="integer"):
        vq.decode(torch.zeros(5, 3))
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 4\)"):
        vq.decode(torch.full((5, 3), 4))
    with pytest.raises(ValueError, match="x must have shape"):
        vq.init_from(torch.randn(10, 5))
    with pytest.raises(ValueError, match="codebook_size"):
        ResidualVQ(7, codebook_size=0)
    with pytest.raises(ValueError, match="n_stages"):
        ResidualVQ(7, n_stages=0)
    with pytest.raises(ValueError, match=r"x must have shape \[N, 3\]"):
        nearest_code(torch.randn(4, 2), torch.randn(5, 3))
    with pytest.raises(ValueError, match="seeding"):
        kmeans(torch.randn(10, 2), 3, seeding="forgy")


def test_lloyd_iterations_reduce_error(gen):
    x = torch.randn(2000, 3, generator=gen)
    seeds = kmeans(x, 16, n_iters=0, generator=torch.Generator().manual_seed(0))
    fitted = kmeans(x, 16, n_iters=10, generator=torch.Generator().manual_seed(0))
    e0 = mse(x, seeds[nearest_code(x, seeds)])
    e10 = mse(x, fitted[nearest_code(x, fitted)])
    assert e10 < 0.8 * e0
    # near a fixed point, every centre is close to the mean of the points it wins
    idx = nearest_code(x, fitted)
    means = torch.zeros_like(fitted).index_add_(0, idx, x) / torch.bincount(idx, minlength=16)[:, None]
    assert (means - fitted).norm(dim=1).max().item() < 0.1


def test_on_device(device, gen):
    x = torch.randn(700, 7, generator=gen)
    vq = ResidualVQ(7, n_stages=3, codebook_size=16).to(device)
    vq.train()
    x_q, indices, loss = vq(x.to(device))
    assert x_q.device.type == device.type and indices.device.type == device.type
    assert torch.equal(vq.decode(vq.encode(x.to(device))), x_q.detach())
    assert mse(x, x_q.detach().cpu()) < 0.5 * mse(x, torch.zeros_like(x))
