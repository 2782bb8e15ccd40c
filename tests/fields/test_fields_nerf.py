"""NeRF field and NGPModel: activations, box, the hash-transform hook, rendering and checkpoints."""

from __future__ import annotations

import pytest
import torch

from scenezip.errors import ScenezipError
from scenezip.fields.hashgrid import HashGridConfig, hash_encode
from scenezip.fields.nerf import NeRFField, trunc_exp
from scenezip.fields.ngp import NGPArch, NGPModel

GRID = HashGridConfig(n_levels=4, log2_hashmap_size=8, base_resolution=4, max_resolution=32)
AABB = torch.tensor([[-0.5, -0.5, -0.5], [0.5, 0.5, 0.5]])


def _arch(**kw):
    return NGPArch(aabb=((-0.5,) * 3, (0.5,) * 3), grid=GRID, hidden_dim=16, occ_resolution=8, march_steps=32, **kw)


def _camera(W=12, H=10):
    vm = torch.eye(4)
    vm[2, 3] = 2.0  # camera at z = -2 looking along +z
    K = torch.tensor([[12.0, 0, W / 2], [0, 12.0, H / 2], [0, 0, 1]])
    return vm[None], K[None], W, H


def test_trunc_exp_value_and_clamped_gradient():
    x = torch.tensor([0.0, 2.0, 20.0], requires_grad=True)
    y = trunc_exp(x)
    torch.testing.assert_close(y, torch.exp(x.detach()))
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(g, torch.exp(torch.tensor([0.0, 2.0, 15.0])))


def test_field_shapes_box_and_gradients():
    f = NeRFField(AABB, GRID, hidden_dim=16, backend="torch", seed=1)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(50, 3, generator=g) - 0.5
    d = torch.nn.functional.normalize(torch.randn(50, 3, generator=g), dim=-1)
    sig, rgb = f(x, d)
    assert sig.shape == (50,) and rgb.shape == (50, 3)
    assert torch.all(sig > 0) and torch.all((rgb > 0) & (rgb < 1))
    outside = torch.tensor([[0.7, 0.0, 0.0], [0.0, -0.51, 0.0]])
    assert torch.all(f.density(outside) == 0)
    (sig.sum() + rgb.sum()).backward()
    assert f.grid.params.grad.abs().sum() > 0 and f.color_mlp.layers[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="dirs"):
        f(x, d[:, :2])
    with pytest.raises(ValueError, match="aabb"):
        NeRFField(torch.zeros(2, 3), GRID)


def test_hash_transform_hook_reads_table_through_callable():
    m = NGPModel(_arch(), backend="torch", seed=0)
    with torch.no_grad():
        m.field.grid.params.normal_(0, 0.1, generator=torch.Generator().manual_seed(3))
    x = torch.rand(20, 3, generator=torch.Generator().manual_seed(4)) - 0.5
    u, _ = m.field.normalize(x)
    ref = m.field.encode(u)
    torch.testing.assert_close(ref, hash_encode(u, m.field.grid.params, GRID).float())
    mask = torch.zeros_like(m.field.grid.params)
    mask[: mask.numel() // 2] = 1
    m.set_hash_transform(lambda p: p * mask)
    out = m.field.encode(u)
    torch.testing.assert_close(out, hash_encode(u, m.field.grid.params * mask, GRID).float())
    assert not torch.allclose(out, ref)
    torch.testing.assert_close(m.hash_params(), m.field.grid.params * mask)

    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.s = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, p):
            return p * self.s

    t = Scale()
    m.set_hash_transform(t)
    assert any(p is t.s for p in m.parameters())  # a module transform is trained with the model
    m.field.density(x).sum().backward()
    assert t.s.grad is not None and t.s.grad.abs() > 0
    assert not any(k.startswith("field.hash_transform") for k in m.to_dict()["state"])
    m.set_hash_transform(None)
    torch.testing.assert_close(m.field.encode(u), ref)


def test_render_shapes_background_and_checkpoint_roundtrip():
    m = NGPModel(_arch(), backend="torch", seed=0)
    vm, K, W, H = _camera()
    bg = torch.tensor([[0.1, 0.6, 0.3]])
    with torch.no_grad():
        c, a, meta = m.render(vm, K, W, H, backgrounds=bg, backend="torch")
    assert c.shape == (1, H, W, 3) and a.shape == (1, H, W, 1) and meta["depths"].shape == (1, H, W, 1)
    assert meta["n_samples"] > 0 and a.max() > 0
    corner = (0, 0, 0)  # the corner ray misses the box: pure background
    assert a[corner].item() == 0.0 and torch.allclose(c[corner], bg[0])
    # the grad-enabled (training) path renders the same image
    c2, a2, _ = m.render(vm, K, W, H, backgrounds=bg, backend="torch")
    torch.testing.assert_close(c2.detach(), c, atol=1e-5, rtol=0)
    m.occupancy.binary[::3] = False
    m2 = NGPModel.from_dict(m.to_dict())
    assert len(m2) == len(m) == m.field.grid.params.numel() // 2
    with torch.no_grad():
        c3, _, _ = m2.render(vm, K, W, H, backgrounds=bg, backend="torch")
        c4, _, _ = m.render(vm, K, W, H, backgrounds=bg, backend="torch")
    assert torch.equal(c3, c4)
    with pytest.raises(ScenezipError, match="not a scenezip ngp model"):
        NGPModel.from_dict({"format": "x"})
    bad = m.to_dict()
    bad["arch"]["hidden_dim"] = 0
    with pytest.raises(ScenezipError, match="hidden_dim"):
        NGPModel.from_dict(bad)
    with pytest.raises(ValueError, match="backgrounds"):
        m.render(vm, K, W, H, backgrounds=torch.ones(3))
