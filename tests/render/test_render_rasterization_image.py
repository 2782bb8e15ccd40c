"""Accumulated-sum 2D Gaussian rasterizer: tiled path against the dense per-pixel reference."""

from __future__ import annotations

import math

import pytest
import torch

from scenezip.render.rasterization_image import CUTOFF, rasterize_image, rasterize_image_dense


def _gaussians(n: int, w: int, h: int, gen: torch.Generator, dtype=torch.float64):
    means = torch.rand(n, 2, generator=gen, dtype=dtype) * torch.tensor([w, h], dtype=dtype)
    l1 = torch.rand(n, generator=gen, dtype=dtype) * 2.5 + 0.6
    l3 = torch.rand(n, generator=gen, dtype=dtype) * 2.5 + 0.6
    l2 = torch.randn(n, generator=gen, dtype=dtype)
    colors = torch.randn(n, 3, generator=gen, dtype=dtype)
    return means, torch.stack([l1, l2, l3], -1), colors


def test_matches_direct_sum_at_single_pixels(gen):
    """A few pixels computed by hand (a Python sum over Gaussians, no tensor tricks) match the render."""
    w, h = 13, 9
    means, chol, colors = _gaussians(20, w, h, gen)
    img = rasterize_image(means, chol, colors, w, h, tile_size=4)
    for (u, v) in [(0, 0), (6, 4), (12, 8), (3, 7)]:
        want = [0.0, 0.0, 0.0]
        for (mx, my), (l1, l2, l3), col in zip(means.tolist(), chol.tolist(), colors.tolist()):
            z1 = (u + 0.5 - mx) / l1
            z2 = (v + 0.5 - my - l2 * z1) / l3
            s = 0.5 * (z1 * z1 + z2 * z2)
            if s <= math.log(255.0):
                for c in range(3):
                    want[c] += col[c] * math.exp(-s)
        torch.testing.assert_close(img[v, u], torch.tensor(want, dtype=torch.float64), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tile_size,chunk_pairs", [(8, 1 << 18), (4, 500), (16, 64)])
def test_tiled_matches_dense(gen, tile_size, chunk_pairs):
    w, h = 37, 23  # not a multiple of any tile size
    means, chol, colors = _gaussians(60, w, h, gen)
    means[:3] = torch.tensor([[-2.0, 5.0], [40.0, 10.0], [18.0, 25.0]], dtype=torch.float64)  # centres outside
    a = rasterize_image(means, chol, colors, w, h, tile_size=tile_size, chunk_pairs=chunk_pairs)
    b = rasterize_image_dense(means, chol, colors, w, h)
    assert a.shape == (h, w, 3)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert b.abs().max() > 0.5  # not an empty image


def test_tile_with_more_than_256_gaussians(gen):
    """600 Gaussians all covering one 16x16 tile: every one of them must be summed (no 256 cap)."""
    w = h = 16
    n = 600
    means = 4.0 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 8.0
    chol = torch.stack([torch.full((n,), 3.0), torch.zeros(n), torch.full((n,), 3.0)], -1).to(torch.float64)
    colors = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    for chunk in (1 << 18, 3000):  # one chunk, and the tile split into pixel groups
        a = rasterize_image(means, chol, colors, w, h, tile_size=16, chunk_pairs=chunk)
        b = rasterize_image_dense(means, chol, colors, w, h)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    capped = rasterize_image_dense(means[:256], chol[:256], colors[:256], w, h)
    assert (a - capped).abs().max() > 1.0  # the first 256 alone give a visibly different image


def test_gradients_match_dense(gen):
    w, h = 21, 17
    means, chol, colors = _gaussians(40, w, h, gen)
    ins_a = [t.clone().requires_grad_() for t in (means, chol, colors)]
    ins_b = [t.clone().requires_grad_() for t in (means, chol, colors)]
    a = rasterize_image(*ins_a, w, h, tile_size=8, chunk_pairs=700)
    b = rasterize_image_dense(*ins_b, w, h)
    v = torch.randn(a.shape, generator=gen, dtype=torch.float64)
    ga = torch.autograd.grad((a * v).sum(), ins_a)
    gb = torch.autograd.grad((b * v).sum(), ins_b)
    for x, y, name in zip(ga, gb, ("means", "chol", "colors")):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10, msg=name)
        assert (y.abs() > 0).float().mean() > 0.5, name  # gradients that should be non-zero are


def test_gradcheck_float64(gen):
    w, h = 6, 5
    means, chol, colors = _gaussians(2, w, h, gen)
    chol[:, 0::2] += 1.0
    ins = tuple(t.clone().requires_grad_() for t in (means, chol, colors))
    assert torch.autograd.gradcheck(lambda m, c, k: rasterize_image(m, c, k, w, h, tile_size=4), ins, atol=1e-6)


def test_cutoff_is_per_pixel():
    """A Gaussian contributes exactly where s <= ln 255 and nowhere else."""
    means = torch.tensor([[8.0, 8.0]], dtype=torch.float64)
    chol = torch.tensor([[2.0, 0.0, 2.0]], dtype=torch.float64)
    img = rasterize_image(means, chol, torch.ones(1, 1, dtype=torch.float64), 16, 16)[..., 0]
    ys, xs = torch.meshgrid(torch.arange(16) + 0.5, torch.arange(16) + 0.5, indexing="ij")
    s = 0.5 * ((xs - 8) ** 2 + (ys - 8) ** 2) / 4.0
    assert torch.equal(img > 0, s <= CUTOFF)
    assert float(img.min()) == 0.0


def test_input_checks():
    m, c, k = torch.zeros(3, 2), torch.ones(3, 3), torch.zeros(3, 3)
    with pytest.raises(ValueError, match="means"):
        rasterize_image(torch.zeros(3, 3), c, k, 4, 4)
    with pytest.raises(ValueError, match="chol"):
        rasterize_image(m, torch.ones(2, 3), k, 4, 4)
    with pytest.raises(ValueError, match="colors"):
        rasterize_image(m, c, torch.zeros(2, 3), 4, 4)
    with pytest.raises(ValueError, match="width"):
        rasterize_image(m, c, k, 0, 4)
    assert rasterize_image(torch.zeros(0, 2), torch.ones(0, 3), torch.zeros(0, 3), 5, 4).shape == (4, 5, 3)


@pytest.mark.parametrize("chunk_pairs", [1 << 17, 100, 1])
def test_image_weights_reproduce_the_render(gen, chunk_pairs):
    """W @ colors equals the render, every pair appears once, and weights are within (1/255, 1];
    in one chunk or many, centres outside the image included."""
    from scenezip.render.rasterization_image import image_weights

    w, h = 23, 17
    means, chol, colors = _gaussians(60, w, h, gen)
    means[:2] = torch.tensor([[-2.0, 5.0], [25.0, 8.0]], dtype=means.dtype)
    rows, cols, vals = image_weights(means, chol, w, h, chunk_pairs=chunk_pairs)
    assert rows.dtype == torch.int64 and cols.dtype == torch.int64 and vals.dtype == means.dtype
    assert int(rows.min()) >= 0 and int(rows.max()) < h * w
    out = torch.zeros(h * w, 3, dtype=colors.dtype).index_add_(0, rows, vals[:, None] * colors[cols])
    torch.testing.assert_close(out.reshape(h, w, 3), rasterize_image_dense(means, chol, colors, w, h))
    assert torch.unique(rows * 60 + cols).numel() == rows.numel()
    assert float(vals.min()) >= 1.0 / 255.0 - 1e-12 and float(vals.max()) <= 1.0


@pytest.mark.parametrize("chunk_pairs,keep_pairs", [(1 << 17, 1 << 23), (50, 1 << 23), (50, 0), (1, 0)])
def test_pairs_match_dense_with_gradients(gen, chunk_pairs, keep_pairs):
    """The pair-list renderer: same image and gradients as the dense reference, whether the pairs sit
    in one chunk or many, kept for the backward or recomputed; centres outside the image included."""
    w, h = 37, 23
    means, chol, colors = _gaussians(60, w, h, gen)
    means[:3] = torch.tensor([[-2.0, 5.0], [40.0, 10.0], [18.0, 25.0]], dtype=torch.float64)
    _assert_pairs_match_dense(gen, means, chol, colors, w, h, chunk_pairs=chunk_pairs, keep_pairs=keep_pairs)


def _assert_pairs_match_dense(gen, means, chol, colors, w, h, delta=None, **kw) -> torch.Tensor:
    """The pair-list render equals the dense reference's, and so do the gradients of a random projection
    of it (most of them non-zero); returns the dense render."""
    from scenezip.render.rasterization_image import rasterize_image_pairs

    ins_a = [t.clone().requires_grad_() for t in (means, chol, colors)]
    ins_b = [t.clone().requires_grad_() for t in (means, chol, colors)]
    a = rasterize_image_pairs(*ins_a, w, h, delta=delta, **kw)
    b = rasterize_image_dense(*ins_b, w, h, delta=delta)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    v = torch.randn(a.shape, generator=gen, dtype=torch.float64)
    ga = torch.autograd.grad((a * v).sum(), ins_a)
    gb = torch.autograd.grad((b * v).sum(), ins_b)
    for x, y, name in zip(ga, gb, ("means", "chol", "colors")):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-10, msg=name)
        assert (y.abs() > 0).float().mean() > 0.5, name
    return b.detach()


def test_pairs_sum_every_gaussian_and_cut_per_pixel(gen):
    """600 Gaussians over one 16x16 patch are all summed; a lone Gaussian is non-zero exactly where
    s <= ln 255 (a row span computed too short or too long breaks one of the two)."""
    from scenezip.render.rasterization_image import rasterize_image_pairs

    n = 600
    means = 4.0 + torch.rand(n, 2, generator=gen, dtype=torch.float64) * 8.0
    chol = torch.stack([torch.full((n,), 3.0), torch.randn(n, generator=gen), torch.full((n,), 2.0)], -1).to(torch.float64)
    colors = torch.rand(n, 3, generator=gen, dtype=torch.float64)
    a = rasterize_image_pairs(means, chol, colors, 16, 16, chunk_pairs=700)
    torch.testing.assert_close(a, rasterize_image_dense(means, chol, colors, 16, 16), rtol=1e-12, atol=1e-12)
    m1 = torch.tensor([[8.3, 7.6]], dtype=torch.float64)
    c1 = torch.tensor([[2.0, 1.5, 1.2]], dtype=torch.float64)  # rotated, anisotropic
    img = rasterize_image_pairs(m1, c1, torch.ones(1, 1, dtype=torch.float64), 16, 16)[..., 0]
    ref = rasterize_image_dense(m1, c1, torch.ones(1, 1, dtype=torch.float64), 16, 16)[..., 0]
    assert torch.equal(img > 0, ref > 0) and int((ref > 0).sum()) > 20


def test_pairs_gradcheck_float64(gen):
    from scenezip.render.rasterization_image import rasterize_image_pairs

    w, h = 6, 5
    means, chol, colors = _gaussians(2, w, h, gen)
    chol[:, 0::2] += 1.0
    ins = tuple(t.clone().requires_grad_() for t in (means, chol, colors))
    assert torch.autograd.gradcheck(lambda m, c, k: rasterize_image_pairs(m, c, k, w, h, chunk_pairs=7), ins, atol=1e-6)


@pytest.mark.parametrize("delta", [0.01, 1.0])
def test_normalized_blend_matches_dense_with_gradients(gen, delta):
    """Normalized blending: the pair-list renderer (sum of [c, 1], divided) gives the dense reference's
    weighted mean of the colours, with the same gradients; W from image_weights(delta) reproduces it;
    a constant colour renders as that colour times sum_w / (sum_w + delta) and nothing where no Gaussian
    reaches."""
    from scenezip.render.rasterization_image import image_weights, rasterize_image_pairs

    w, h = 29, 19
    means, chol, colors = _gaussians(40, w, h, gen)
    means[:2] = torch.tensor([[-2.0, 5.0], [31.0, 10.0]], dtype=torch.float64)
    b = _assert_pairs_match_dense(gen, means, chol, colors, w, h, delta=delta, chunk_pairs=64)
    rows, cols, vals = image_weights(means, chol, w, h, delta=delta)
    out = torch.zeros(h * w, 3, dtype=colors.dtype).index_add_(0, rows, vals[:, None] * colors[cols])
    torch.testing.assert_close(out.reshape(h, w, 3), b)
    wsum = rasterize_image_dense(means, chol, torch.ones(40, 1, dtype=torch.float64), w, h)
    grey = rasterize_image_pairs(means, chol, torch.full((40, 3), 0.7, dtype=torch.float64), w, h, delta=delta)
    torch.testing.assert_close(grey, 0.7 * wsum / (wsum + delta) * torch.ones(1, 1, 3, dtype=torch.float64))
    one = [torch.tensor([[3.0, 3.0]]), torch.tensor([[1.0, 0.0, 1.0]]), torch.ones(1, 3)]
    lone = rasterize_image_pairs(*(t.to(torch.float64) for t in one), w, h, delta=delta)
    assert float(lone[15:, 20:].abs().max()) == 0.0  # far from the only Gaussian: 0, not 0/0
    with pytest.raises(ValueError, match="delta"):
        rasterize_image_pairs(means, chol, colors, w, h, delta=0.0)
