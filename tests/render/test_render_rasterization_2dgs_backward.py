"""Tests for the hand-written backward of render/rasterization_2dgs.py (``_Composite2DGS``): forward outputs
to the bit and gradients of every input (and of ``gradient_2dgs``) against autograd through the reference
``pixel_fn``, on seeded tiny scenes that reach each branch: plane and centre depth, distortion on and
off, surfels seen nearly edge-on, clamped alphas, the early stop and pixels without a median."""

from __future__ import annotations

import math

import pytest
import torch

import scenezip.render.rasterization_2dgs as r2
from scenezip.render._project import quat_to_rotmat

PARAMS = ("means", "quats", "scales", "opacities", "colors")


def _cameras(W: int, H: int, f: float, dtype):
    viewmats = torch.eye(4, dtype=dtype).repeat(2, 1, 1)
    viewmats[:, 2, 3] = 4.0
    viewmats[1, 0, 3] = 0.3
    viewmats[1, :3, :3] = quat_to_rotmat(torch.tensor([1.0, 0.05, 0.1, 0.02], dtype=dtype))
    Ks = torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]], dtype=dtype).repeat(2, 1, 1)
    return viewmats, Ks


def _scene(kind: str, seed: int, dtype=torch.float64, N: int = 20, W: int = 18, H: int = 14):
    """Seeded surfels for one branch of the compositing; two cameras."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(N, 3, generator=g, dtype=dtype) * 2 - 1) * torch.tensor([0.8, 0.6, 0.7], dtype=dtype)
    quats = torch.cat([torch.ones(N, 1, dtype=dtype), 0.4 * torch.randn(N, 3, generator=g, dtype=dtype)], -1)
    scales = torch.rand(N, 3, generator=g, dtype=dtype) * 0.15 + 0.12
    opacities = torch.rand(N, generator=g, dtype=dtype) * 0.6 + 0.2
    colors = torch.rand(N, 3, generator=g, dtype=dtype)
    if kind == "edge_on":  # normals almost perpendicular to the view: the filter and centre depth take over
        angle = math.pi / 2 - torch.rand(N, generator=g, dtype=dtype) * 0.08
        axis = torch.nn.functional.normalize(torch.randn(N, 2, generator=g, dtype=dtype), dim=-1)
        quats = torch.cat([torch.cos(angle / 2)[:, None], torch.sin(angle / 2)[:, None] * axis,
                           torch.zeros(N, 1, dtype=dtype)], -1)  # fmt: skip
        opacities = opacities.clamp_min(0.6)
    elif kind == "clamped":  # opacities near 1: the centres clamp at MAX_ALPHA
        opacities = 0.995 + 0.0049 * torch.rand(N, generator=g, dtype=dtype)
        scales = scales * 1.5
    elif kind == "stop":  # a deep stack of dense surfels: transmittance reaches T_MIN
        means[:, :2] *= 0.15
        opacities = 0.85 + 0.1 * torch.rand(N, generator=g, dtype=dtype)
        scales = scales * 2.0
    elif kind == "sparse":  # few faint surfels: many pixels with no pair, hence no median
        means, quats, scales, colors = means[:5], quats[:5], scales[:5] * 0.6, colors[:5]
        opacities = opacities[:5] * 0.5
    viewmats, Ks = _cameras(W, H, 26.0, dtype)
    return [means, quats, scales, opacities, colors, viewmats, Ks], W, H


def _run(monkeypatch, mode: str, args, W: int, H: int, **kw):
    """Forward outputs and the gradients of a random weighting of them w.r.t. the inputs and gradient_2dgs."""
    monkeypatch.setattr(r2, "COMPOSITE_BACKWARD", mode)
    params = [a.clone().requires_grad_() for a in args[:5]]
    *outs, meta = r2.rasterization_2dgs(*params, *args[5:], W, H, backend="torch", **kw)
    gen = torch.Generator().manual_seed(11)
    loss = sum((o * torch.rand(o.shape, generator=gen, dtype=o.dtype)).sum() for o in outs)
    grads = torch.autograd.grad(loss, params + [meta["gradient_2dgs"]])
    return outs, grads


def _assert_parity(monkeypatch, args, W, H, rtol, **kw):
    outs_a, grads_a = _run(monkeypatch, "autograd", args, W, H, **kw)
    outs_h, grads_h = _run(monkeypatch, "hand", args, W, H, **kw)
    for i, (a, h) in enumerate(zip(outs_a, outs_h)):
        assert torch.equal(a, h), f"output {i} differs by {(a - h).abs().max().item()}"
    for name, a, h in zip(PARAMS + ("gradient_2dgs",), grads_a, grads_h):
        torch.testing.assert_close(h, a, atol=rtol * a.abs().max().item(), rtol=rtol, msg=lambda m, n=name: f"{n}: {m}")
        assert h.abs().max() > 0, f"{name}: zero gradient"
    return outs_h


@pytest.mark.parametrize("surfel_depth", ["center", "intersection"])
@pytest.mark.parametrize("distloss", [False, True])
@pytest.mark.parametrize("kind", ["plain", "edge_on", "clamped", "stop", "sparse"])
def test_hand_backward_matches_autograd(monkeypatch, kind, distloss, surfel_depth):
    args, W, H = _scene(kind, seed=3)
    outs = _assert_parity(monkeypatch, args, W, H, 1e-9, render_mode="RGB+ED", distloss=distloss,
                          surfel_depth=surfel_depth, depth_mode="median")  # fmt: skip
    alphas, median = outs[1], outs[5]
    # each scene reaches the branch it is for
    if kind == "clamped":
        assert alphas.max() > 0.998
    if kind == "stop":  # the early stop is reached: without it the colours change
        monkeypatch.setattr(r2, "T_MIN", 0.0)
        unstopped = r2.rasterization_2dgs(*args, W, H, render_mode="RGB+ED", surfel_depth=surfel_depth)[0]
        assert (unstopped - outs[0]).abs().max() > 1e-5
    if kind == "sparse":
        assert (median == 0).any() and (median != 0).any()
    if distloss:
        assert outs[4].max() > 0


def test_edge_on_scene_is_seen_edge_on():
    """The edge-on scene is what it claims: the surfels' normals are nearly perpendicular to the rays."""
    args, W, H = _scene("edge_on", seed=3)
    *_, meta = r2.rasterization_2dgs(*args, W, H, surfel_depth="intersection")
    means_c = args[0] + torch.tensor([0.0, 0.0, 4.0], dtype=args[0].dtype)  # camera 0: identity rotation
    cos = (meta["normals"][0] * torch.nn.functional.normalize(means_c, dim=-1)).sum(-1).abs()
    seen = meta["radii"][0].gt(0).all(-1)
    assert seen.sum() >= 10 and cos[seen].max() < 0.35 and cos[seen].median() < 0.2


@pytest.mark.parametrize("render_mode,chunk_pairs", [("RGB", 1500), ("RGB+D", 1 << 18)])
def test_hand_backward_matches_autograd_float32(monkeypatch, render_mode, chunk_pairs):
    """Float32, one chunk or many (1500 pairs also splits deep tiles into groups of pixels)."""
    args, W, H = _scene("plain", seed=5, dtype=torch.float32)
    _assert_parity(monkeypatch, args, W, H, 2e-4, render_mode=render_mode, distloss=True,
                   surfel_depth="intersection", depth_mode="expected", chunk_pairs=chunk_pairs)  # fmt: skip


def test_hand_backward_gradcheck_centre_depth():
    args, W, H = _scene("plain", seed=2, N=3, W=8, H=6)
    args[0] = args[0] * 0.3
    viewmats, Ks = args[5][:1], args[6][:1]
    gen = torch.Generator().manual_seed(7)
    weights = None

    def fn(*params):
        nonlocal weights
        out = r2.rasterization_2dgs(*params, viewmats, Ks, W, H, render_mode="RGB+D", distloss=True,
                                    surfel_depth="center", depth_mode="median")[:6]  # fmt: skip
        if weights is None:
            weights = [torch.rand(o.shape, generator=gen, dtype=o.dtype) for o in out]
        return torch.stack([(o * w).sum() for o, w in zip(out, weights)])

    assert r2.COMPOSITE_BACKWARD == "hand"
    inputs = tuple(a.clone().requires_grad_() for a in args[:5])
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_second_backward_through_the_same_graph_gives_the_same_gradients():
    """The chunks accumulate the row gradients in one shared buffer, which each backward must start afresh."""
    args, W, H = _scene("plain", seed=4, dtype=torch.float32)
    params = [a.clone().requires_grad_() for a in args[:5]]
    out = r2.rasterization_2dgs(*params, *args[5:], W, H, render_mode="RGB+ED", distloss=True,
                                surfel_depth="intersection", chunk_pairs=5000)  # fmt: skip
    loss = out[0].sum() + out[4].sum() + out[5].sum()
    first = torch.autograd.grad(loss, params, retain_graph=True)
    second = torch.autograd.grad(loss, params)
    for a, b in zip(first, second):
        assert torch.equal(a, b) and a.abs().max() > 0
