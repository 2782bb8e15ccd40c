"""Volume rendering: padded and packed weights against a per-ray loop, rays, ray/box, compositing."""

from __future__ import annotations

import math

import pytest
import torch

from scenezip.render.volume import (
    accumulate,
    blend_background,
    camera_rays,
    composite,
    packed_to_padded,
    pixel_rays,
    ray_aabb,
    render_weights,
)


def _loop_reference(sigmas, deltas, rgbs, t_mid, bg):
    """Obviously-correct per-ray, per-sample loop: returns colour [R, 3], opacity [R, 1], depth [R, 1]."""
    cols, ops, deps = [], [], []
    for r in range(sigmas.shape[0]):
        T = torch.ones((), dtype=sigmas.dtype)
        c = torch.zeros(3, dtype=sigmas.dtype)
        o = torch.zeros((), dtype=sigmas.dtype)
        d = torch.zeros((), dtype=sigmas.dtype)
        for i in range(sigmas.shape[1]):
            a = 1 - torch.exp(-sigmas[r, i] * deltas[r, i])
            w = T * a
            c, o, d = c + w * rgbs[r, i], o + w, d + w * t_mid[r, i]
            T = T * (1 - a)
        cols.append(c + (1 - o) * bg)
        ops.append(o[None])
        deps.append(d[None])
    return torch.stack(cols), torch.stack(ops), torch.stack(deps)


def _samples(R=5, S=7, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    sig = (torch.rand(R, S, generator=g, dtype=dtype) * 8).requires_grad_()
    rgb = torch.rand(R, S, 3, generator=g, dtype=dtype).requires_grad_()
    steps = torch.rand(R, S, generator=g, dtype=dtype) * 0.2 + 0.05
    t_end = torch.cumsum(steps, dim=1) + 1.0
    t_start = t_end - steps
    return sig, rgb, t_start, t_end


def test_padded_matches_loop_forward_and_backward():
    sig, rgb, t0, t1 = _samples()
    bg = torch.tensor([0.2, 0.5, 0.9])
    c, o, d, _ = composite(sig, rgb, t0, t1, backgrounds=bg)
    rc, ro, rd = _loop_reference(sig, t1 - t0, rgb, (t0 + t1) / 2, bg)
    torch.testing.assert_close(c, rc)
    torch.testing.assert_close(o, ro)
    torch.testing.assert_close(d, rd)
    v = torch.randn(c.shape, generator=torch.Generator().manual_seed(1))
    g1 = torch.autograd.grad((c * v).sum() + o.sum() + d.sum(), [sig, rgb])
    g2 = torch.autograd.grad((rc * v).sum() + ro.sum() + rd.sum(), [sig, rgb])
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b)
        assert a.abs().sum() > 0


def test_packed_matches_padded_with_empty_rays():
    sig, rgb, t0, t1 = _samples(R=6, S=9, seed=2)
    g = torch.Generator().manual_seed(3)
    counts = torch.tensor([9, 0, 3, 1, 0, 6])
    mask = torch.arange(9)[None] < counts[:, None]
    ray, slot = mask.nonzero(as_tuple=True)
    c_pad, o_pad, d_pad, w_pad = composite(sig, rgb, t0, t1, mask=mask, backgrounds=torch.ones(3))
    sig_p, rgb_p = sig[ray, slot], rgb[ray, slot]
    c_pk, o_pk, d_pk, w_pk = composite(sig_p, rgb_p, t0[ray, slot], t1[ray, slot], ray, 6, backgrounds=torch.ones(3))
    torch.testing.assert_close(c_pk, c_pad)
    torch.testing.assert_close(o_pk, o_pad)
    torch.testing.assert_close(d_pk, d_pad)
    torch.testing.assert_close(w_pk, w_pad[ray, slot])
    assert torch.all(w_pad[~mask] == 0)
    assert torch.allclose(c_pk[1], torch.ones(3)) and o_pk[1].item() == 0.0  # empty ray shows the background
    v = torch.randn(6, 3, generator=g)
    ga = torch.autograd.grad((c_pad * v).sum() + d_pad.sum(), [sig, rgb])
    gb = torch.autograd.grad((c_pk * v).sum() + d_pk.sum(), [sig, rgb])
    torch.testing.assert_close(ga[0], gb[0])
    torch.testing.assert_close(ga[1], gb[1])
    assert torch.all(ga[0][~mask] == 0) and ga[0][mask].abs().sum() > 0


def test_packed_to_padded_roundtrip():
    ray = torch.tensor([0, 0, 2, 2, 2, 3])
    vals = torch.arange(6.0)
    pad, mask = packed_to_padded(vals, ray, 4, fill=-1)
    assert pad.shape == (4, 3) and mask.sum() == 6
    assert pad[0, :2].tolist() == [0, 1] and pad[2].tolist() == [2, 3, 4] and pad[1].tolist() == [-1, -1, -1]


def test_weights_gradcheck_float64():
    sig, _, t0, t1 = _samples(R=2, S=4, dtype=torch.float64)
    ray = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    flat = sig.detach().reshape(-1)[:8].clone().requires_grad_()
    d = (t1 - t0).reshape(-1)[:8]
    assert torch.autograd.gradcheck(lambda s: render_weights(s, d, ray, 2)[0], (flat,))
    assert torch.autograd.gradcheck(lambda s: render_weights(s, t1 - t0)[0], (sig.detach().clone().requires_grad_(),))


def test_pixel_rays_pass_through_pixel_centres():
    g = torch.Generator().manual_seed(0)
    # a camera turned about y and shifted: world-to-camera [R | t]
    a = 0.4
    R = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    vm = torch.eye(4)
    vm[:3, :3], vm[:3, 3] = R, torch.tensor([0.1, -0.2, 2.0])
    K = torch.tensor([[30.0, 0, 16.5], [0, 28.0, 11.0], [0, 0, 1]])
    pix = torch.randint(0, 20, (10, 2), generator=g)
    o, d = pixel_rays(vm[None], K[None], torch.zeros(10, dtype=torch.long), pix)
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(10))
    p = o + 3.0 * d
    cam = p @ R.T + vm[:3, 3]
    uv = cam[:, :2] / cam[:, 2:] * torch.tensor([30.0, 28.0]) + torch.tensor([16.5, 11.0])
    torch.testing.assert_close(uv, pix.float() + 0.5, atol=1e-4, rtol=0)
    oo, dd = camera_rays(vm[None].expand(2, 4, 4), K[None].expand(2, 3, 3), 5, 4)
    assert oo.shape == (2, 4, 5, 3) and dd.shape == (2, 4, 5, 3)
    o2, d2 = pixel_rays(vm[None], K[None], torch.zeros(1, dtype=torch.long), torch.tensor([[3, 2]]))
    torch.testing.assert_close(dd[1, 2, 3], d2[0])


def test_ray_aabb():
    aabb = torch.tensor([[-1.0, -1, -1], [1, 1, 1]])
    o = torch.tensor([[-3.0, 0, 0], [-3.0, 2, 0], [0.0, 0, 0], [3.0, 0, 0]])
    d = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0.0, 0, 1], [1.0, 0, 0]])
    tn, tf, hit = ray_aabb(o, d, aabb, near=0.1)
    assert hit.tolist() == [True, False, True, False]
    torch.testing.assert_close(tn[[0, 2]], torch.tensor([2.0, 0.1]))
    torch.testing.assert_close(tf[[0, 2]], torch.tensor([4.0, 1.0]))


def test_background_blending_and_accumulate():
    c = torch.tensor([[0.5, 0.0, 0.0]])
    o = torch.tensor([[0.5]])
    torch.testing.assert_close(blend_background(c, o, torch.tensor([0.0, 1.0, 1.0])), torch.tensor([[0.5, 0.5, 0.5]]))
    w = torch.tensor([[0.25, 0.5]])
    torch.testing.assert_close(accumulate(w), torch.tensor([[0.75]]))


def test_input_checks():
    with pytest.raises(ValueError, match="viewmats"):
        camera_rays(torch.eye(4), torch.eye(3)[None], 4, 4)
    with pytest.raises(ValueError, match="Ks"):
        camera_rays(torch.eye(4)[None], torch.eye(3)[None].expand(2, 3, 3), 4, 4)
    with pytest.raises(ValueError, match="deltas"):
        render_weights(torch.ones(3, 4), torch.ones(3, 5))
    with pytest.raises(ValueError, match="aabb"):
        ray_aabb(torch.zeros(2, 3), torch.ones(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="n_rays"):
        accumulate(torch.ones(3), torch.ones(3, 3), torch.zeros(3, dtype=torch.long))
