"""Decode to plain splats: 3DGS copies, SH degree lowering, c3dgs colour-field bake (held-out directions and
renders), masked Gaussians dropped, other types refused.

Bake tolerances: the tiny random colour field below is smooth in the view direction, so a degree-3 SH fit
over 64 directions reproduces it to an RMS of about 0.013 (measured); we assert RMS <= 0.02 on held-out
directions (another rotation of the direction lattice) and PSNR >= 40 dB (measured 44.3) between renders
of the baked 3DGS model and the c3dgs model on a 32x24 camera. Measured for wrong bakes: higher bands with
flipped signs give RMS 0.044 / 29.7 dB, a degree-0 bake RMS 0.025 / 36.1 dB; both fail.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scenezip.fields.color_field import ColorFieldConfig
from scenezip.render.sh import SH_C0, sh_basis, spherical_harmonics
from scenezip.splatting.c3dgs import C3DGSModel
from scenezip.splatting.gaussians import GaussianModel
from scenezip.splatting.plain import PlainSplats, bake_sh, fit_directions, to_plain

CFG = ColorFieldConfig(n_levels=4, log2_hashmap_size=8, base_resolution=4, per_level_scale=2.0, hidden_dim=16)


def _gaussians(n: int = 80, degree: int = 3, seed: int = 0) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, 3, generator=g) * 1.2 - 0.6
    gm = GaussianModel.from_points(pts, torch.rand(n, 3, generator=g), sh_degree=degree)
    with torch.no_grad():
        gm.splats["quats"].copy_(torch.randn(n, 4, generator=g) * 3.0)  # not unit: to_plain normalizes
        gm.splats["scales"].add_(torch.randn(n, 3, generator=g) * 0.2)
        gm.splats["opacities"].copy_(torch.randn(n, generator=g) + 1.0)
        gm.splats["shN"].copy_(torch.randn(gm.shN.shape, generator=g) * 0.1)
    return gm


def _c3dgs(n: int = 80, n_masked: int = 9, seed: int = 0) -> C3DGSModel:
    m = C3DGSModel.from_gaussians(_gaussians(n, 0, seed), CFG, ((-1, -1, -1), (1, 1, 1)), backend="torch", seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        m.color_field.grid.params.copy_(torch.randn(m.color_field.grid.params.shape, generator=g) * 0.3)
        m.splats["masks"][torch.arange(n_masked) * 5] = -8.0  # pruned
    return m


def test_gaussian_model_is_copied_with_unit_quats():
    gm = _gaussians()
    p = to_plain(gm)
    assert isinstance(p, PlainSplats) and len(p) == 80 and p.sh_degree == 3 and p.fit_error is None
    np.testing.assert_allclose(np.linalg.norm(p.quats, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(p.quats, torch.nn.functional.normalize(gm.quats, dim=-1).detach().numpy(), atol=1e-6)
    np.testing.assert_array_equal(p.means, gm.means.detach().numpy())
    np.testing.assert_array_equal(p.shN, gm.shN.detach().numpy())
    p.means[:] = 0.0  # a copy: the model is untouched
    assert float(gm.means.detach().abs().sum()) > 0
    assert all(getattr(p, k).dtype == np.float32 for k in ("means", "quats", "scales", "opacities", "sh0", "shN"))
    np.testing.assert_allclose(p.rgb(), np.clip(0.5 + SH_C0 * p.sh0[:, 0], 0, 1), atol=1e-7)


@pytest.mark.parametrize("degree", [0, 1, 2])
def test_lower_degree(degree):
    gm = _gaussians()
    p = to_plain(gm, sh_degree=degree)
    assert p.sh_degree == degree and p.shN.shape == (80, (degree + 1) ** 2 - 1, 3)
    np.testing.assert_array_equal(p.shN, gm.shN.detach().numpy()[:, : (degree + 1) ** 2 - 1])


def test_refusals():
    with pytest.raises(ValueError, match="at most the model's degree 1"):
        to_plain(_gaussians(degree=1), sh_degree=2)
    with pytest.raises(ValueError, match="dict"):
        to_plain({"means": 1})
    with pytest.raises(ValueError, match="shN"):
        PlainSplats(np.zeros((2, 3)), np.zeros((2, 4)), np.zeros((2, 3)), np.zeros(2), np.zeros((2, 1, 3)),
                    np.zeros((2, 5, 3)))  # fmt: skip


def test_object_with_to_plain_is_used():
    base = to_plain(_gaussians(10))

    class Surfels:
        def to_plain(self, sh_degree):
            return PlainSplats(**{**base.arrays(), "surfel": True}).with_sh_degree(sh_degree or 0)

    p = to_plain(Surfels(), sh_degree=1)
    assert p.surfel and p.sh_degree == 1


def test_bake_recovers_an_exact_sh_function():
    g = torch.Generator().manual_seed(3)
    coeffs = torch.randn(50, 9, 3, generator=g) * 0.1
    coeffs[:, 0] = 0.2

    def color_fn(m, d):  # the SH colour itself, inside (0, 1) so the clamp is inactive
        idx = ((m[:, 0] * 1000).round().long() % 50)
        return spherical_harmonics(2, d, coeffs[idx][None].expand(d.shape[0], -1, -1, -1)) + 0.5

    means = torch.zeros(50, 3)
    means[:, 0] = torch.arange(50) / 1000.0
    out, rms = bake_sh(color_fn, means, sh_degree=2, n_dirs=40)
    assert rms < 1e-5
    torch.testing.assert_close(out, coeffs, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="n_dirs must be at least 16"):
        bake_sh(color_fn, means, sh_degree=3, n_dirs=10)


def test_fit_directions_are_unit_and_seeded():
    a, b = fit_directions(64, 0), fit_directions(64, 1)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(64))
    torch.testing.assert_close(a, fit_directions(64, 0))
    assert float((a - b).abs().max()) > 0.1
    assert float(a.mean(0).norm()) < 0.05  # spread over the whole sphere


@pytest.fixture(scope="module")
def baked():
    m = _c3dgs()
    return m, to_plain(m, sh_degree=3, n_dirs=64, seed=0)


def test_c3dgs_bake_drops_masked_and_keeps_geometry(baked):
    m, p = baked
    assert len(p) == 80 - 9 and p.sh_degree == 3
    a = m.activated()
    keep = torch.sigmoid(m.splats["masks"]) > m.mask_threshold
    np.testing.assert_allclose(p.means, a["means"][keep].detach().numpy(), atol=0)
    np.testing.assert_allclose(np.exp(p.scales), a["scales"][keep].detach().abs().numpy(), rtol=1e-5)
    np.testing.assert_allclose(p.opacities, m.splats["opacities"][keep].detach().numpy())
    assert p.fit_error is not None and 0 <= p.fit_error < 0.02


def test_c3dgs_bake_matches_field_on_held_out_directions(baked):
    m, p = baked
    dirs = fit_directions(32, seed=123)
    means = torch.from_numpy(p.means)
    with torch.no_grad():
        field = m.color_field(means, dirs[:, None, :].expand(32, len(p), 3))  # [D, N, 3]
    coeffs = torch.from_numpy(np.concatenate([p.sh0, p.shN], 1))
    ours = (torch.einsum("dk,nkc->dnc", sh_basis(3, dirs), coeffs) + 0.5).clamp_min(0.0)
    rms = float(((ours - field) ** 2).mean().sqrt())
    assert rms <= 0.02
    assert rms <= 3 * p.fit_error + 1e-3
    # degree 0 cannot follow the view dependence: its error must be larger
    p0 = to_plain(m, sh_degree=0)
    assert p0.fit_error > p.fit_error


def test_baked_render_matches_c3dgs_render(baked):
    m, p = baked
    vm = torch.eye(4)[None]
    vm[0, 2, 3] = 2.5
    K = torch.tensor([[[30.0, 0.0, 16.0], [0.0, 30.0, 12.0], [0.0, 0.0, 1.0]]])
    with torch.no_grad():
        ref = m.render(vm, K, 32, 24, backend="torch")[0]
        gm = p.to_gaussian_model()
        img = gm.render(vm, K, 32, 24, backend="torch")[0]
    mse = float(((img.clamp(0, 1) - ref.clamp(0, 1)) ** 2).mean())
    psnr = -10 * np.log10(max(mse, 1e-12))
    assert float(ref.mean()) > 0.05  # the scene is visible
    assert psnr >= 40.0, psnr


def test_subclass_with_its_own_to_plain_wins():
    class Flat(GaussianModel):  # as SurfelModel: a GaussianModel subclass that decodes itself
        def to_plain(self, sh_degree=None):
            return PlainSplats(**{**to_plain_base(self).arrays(), "surfel": True})

    def to_plain_base(m):
        return PlainSplats(*(getattr(m, k).detach().numpy().copy() for k in ("means", "quats", "scales", "opacities",
                                                                                "sh0", "shN")))  # fmt: skip

    gm = _gaussians(6)
    flat = Flat(gm.means, gm.quats, gm.scales, gm.opacities, gm.sh0, gm.shN)
    assert to_plain(flat).surfel
