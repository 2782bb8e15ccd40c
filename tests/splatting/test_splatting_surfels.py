"""SurfelModel: initialization, render meta, the 2DGS losses (values, gradients, schedule, an optimisation),
the 2dgs stream contract, save format and PlainSplats export."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scenezip.errors import SceneFileError
from scenezip.render._project import quat_to_rotmat
from scenezip.splatting.gaussians import PARAM_NAMES, GaussianModel
from scenezip.splatting.surfels import (
    FLAT_SCALE,
    SurfelLossConfig,
    SurfelModel,
    default_surfel_depth,
    depth_distortion,
    normal_consistency,
    quats_from_normals,
    surfels_from_streams,
    surfels_to_streams,
)

W = H = 24


def _camera(dist: float = 3.0):
    vm = torch.eye(4)[None]
    vm[0, 2, 3] = dist  # the world origin sits `dist` in front of the camera, plane z = 0 faces it
    K = torch.tensor([[[30.0, 0.0, W / 2], [0.0, 30.0, H / 2], [0.0, 0.0, 1.0]]])
    return vm, K


def _plane(n_side: int = 12, tilt_deg: float = 0.0, z: float = 0.0, seed: int = 0) -> SurfelModel:
    """An opaque grid of surfels on the plane z (facing the camera), normals tilted by ``tilt_deg`` about x."""
    g = torch.linspace(-1.2, 1.2, n_side)
    yy, xx = torch.meshgrid(g, g, indexing="ij")
    n = n_side * n_side
    means = torch.stack([xx.flatten(), yy.flatten(), torch.full((n,), z)], -1)
    t = math.radians(tilt_deg)
    normals = torch.tensor([0.0, math.sin(t), -math.cos(t)]).expand(n, 3)
    scales = torch.log(torch.tensor([0.2, 0.2, FLAT_SCALE])).expand(n, 3)
    gen = torch.Generator().manual_seed(seed)
    sh0 = torch.rand(n, 1, 3, generator=gen) - 0.5
    return SurfelModel(means, quats_from_normals(normals), scales, torch.full((n,), 5.0), sh0, torch.zeros(n, 3, 3))


def _resolved(**kw) -> SurfelLossConfig:
    return SurfelLossConfig(scene_type="object", **kw)


# ---------------------------------------------------------------------------------------------- init
def test_from_points_orients_surfels_along_the_point_cloud():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (300, 3)).astype(np.float32)
    pts[:, 2] = 0.3 * pts[:, 0]  # the plane z = 0.3 x, normal ~ (-0.3, 0, 1)
    m = SurfelModel.from_points(pts, np.full((300, 3), 128, np.uint8), sh_degree=2)
    normal = quat_to_rotmat(torch.nn.functional.normalize(m.quats, dim=-1))[:, :, 2]
    truth = torch.nn.functional.normalize(torch.tensor([-0.3, 0.0, 1.0]), dim=0)
    assert (normal @ truth).abs().min() > 0.99
    assert torch.allclose(m.scales[:, 2], torch.full((300,), math.log(FLAT_SCALE)))
    assert torch.allclose(m.scales[:, 0], m.scales[:, 1]) and bool((m.scales[:, 0] > -6).all())
    assert m.sh_degree == 2 and torch.allclose(torch.sigmoid(m.opacities), torch.full((300,), 0.1))
    rand = SurfelModel.from_points(pts, np.full((300, 3), 128, np.uint8), orient="random")
    n_rand = quat_to_rotmat(torch.nn.functional.normalize(rand.quats, dim=-1))[:, :, 2]
    assert (n_rand @ truth).abs().mean() < 0.8
    with pytest.raises(ValueError, match="orient"):
        SurfelModel.from_points(pts, np.zeros((300, 3)), orient="flat")
    with pytest.raises(ValueError, match="colors"):
        SurfelModel.from_points(pts, np.zeros((10, 3)))


def test_quats_from_normals_map_z_onto_the_normals():
    n = torch.nn.functional.normalize(torch.randn(50, 3, generator=torch.Generator().manual_seed(1)), dim=-1)
    n = torch.cat([n, torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]])])
    assert torch.allclose(quat_to_rotmat(quats_from_normals(n))[:, :, 2], n, atol=1e-5)


# ---------------------------------------------------------------------------------------------- render
def test_render_meta_holds_loss_images_and_densification_gradient():
    m = _plane()
    vm, K = _camera()
    colors, alphas, meta = m.render(vm, K, W, H, backend="torch", distloss=True, depth_mode="median")
    assert colors.shape == (1, H, W, 3) and alphas.shape == (1, H, W, 1)
    for key, ch in [("render_normals", 3), ("render_normals_from_depth", 3), ("render_distort", 1),
                    ("render_median", 1), ("render_depth", 1), ("render_alphas", 1)]:  # fmt: skip
        assert meta[key].shape == (1, H, W, ch), key
    centre = (slice(None), slice(6, 18), slice(6, 18))
    assert torch.allclose(meta["render_depth"][centre], torch.full((1, 12, 12, 1), 3.0), atol=1e-3)
    assert torch.allclose(meta["render_median"][centre], torch.full((1, 12, 12, 1), 3.0), atol=1e-3)
    # normals face the camera (-z in world here)
    assert torch.allclose(meta["render_normals"][centre][..., 2], -alphas[centre][..., 0], atol=1e-3)
    assert torch.allclose(meta["render_normals_from_depth"][centre][..., 2], torch.full((1, 12, 12), -1.0), atol=1e-3)
    grad_t = meta[SurfelModel.GRAD_KEY]
    assert grad_t.shape == (1, len(m), 2)
    grad_t.retain_grad()
    (colors * torch.rand_like(colors)).sum().backward()
    assert grad_t.grad is not None and grad_t.grad.abs().sum() > 0
    # every mode: depth stays the expected depth, colour channels follow the mode
    d_only, _, meta_d = m.render(vm, K, W, H, render_mode="D", backend="torch")
    assert d_only.shape == (1, H, W, 1)
    assert torch.allclose(meta_d["render_depth"][centre], meta["render_depth"][centre], atol=1e-4)
    with pytest.raises(ValueError, match="rasterize_mode"):
        m.render(vm, K, W, H, rasterize_mode="antialiased")


# ---------------------------------------------------------------------------------------------- losses
def test_losses_vanish_on_a_consistent_surface_and_grow_when_perturbed():
    vm, K = _camera()
    cfg = _resolved()
    kw = SurfelModel.loss_render_kwargs(30_000, 30_000, cfg)
    assert kw == {"distloss": True, "depth_mode": "expected", "surfel_depth": None}
    flat = _plane()
    _, _, meta = flat.render(vm, K, W, H, backend="torch", **kw)
    loss_flat, logs_flat = SurfelModel.extra_loss(meta, 30_000, 30_000, cfg)
    assert logs_flat["normal"] < 1e-4 and logs_flat["distort"] < 1e-6

    tilted = _plane(tilt_deg=35.0)
    _, _, meta_t = tilted.render(vm, K, W, H, backend="torch", **kw)
    loss_t, logs_t = SurfelModel.extra_loss(meta_t, 30_000, 30_000, cfg)
    assert logs_t["normal"] > 0.05  # about 1 - cos(35 deg) over the covered pixels
    loss_t.backward()
    assert tilted.quats.grad is not None and tilted.quats.grad.abs().sum() > 0

    # two half-transparent layers 0.5 apart: distortion appears
    a, b = _plane(z=0.0), _plane(z=0.5)
    two = SurfelModel(*(torch.cat([a.splats[k], b.splats[k]]).detach() for k in PARAM_NAMES))
    two.splats["opacities"].data.fill_(0.0)
    _, _, meta2 = two.render(vm, K, W, H, backend="torch", **kw)
    _, logs2 = SurfelModel.extra_loss(meta2, 30_000, 30_000, cfg)
    assert logs2["distort"] > 1e-4
    l_d = depth_distortion(meta2["render_distort"], meta2["render_median"], meta2["render_depth"], 0.05)
    l_d.backward()
    assert two.means.grad.abs().sum() > 0


def test_normal_consistency_formula():
    n = torch.nn.functional.normalize(torch.randn(1, 4, 4, 3), dim=-1)
    alpha = torch.rand(1, 4, 4, 1)
    assert normal_consistency(n * alpha, n, alpha).abs() < 1e-6
    assert torch.isclose(normal_consistency(-n * alpha, n, alpha), 2 * alpha.mean())
    assert normal_consistency(n * alpha, torch.zeros_like(n), alpha) == 0  # undefined normals count 0
    with pytest.raises(ValueError, match="alphas"):
        normal_consistency(n, n, alpha[..., 0])


def test_loss_schedule_and_config_resolution():
    cfg = _resolved()
    assert cfg.start_steps(3000) == (700, 300)
    vm, K = _camera()
    m = _plane(tilt_deg=30.0)
    _, _, meta = m.render(vm, K, W, H, backend="torch", **SurfelModel.loss_render_kwargs(3000, 3000, cfg))
    loss, logs = SurfelModel.extra_loss(meta, 300, 3000, cfg)  # both still off
    assert float(loss) == 0.0 and logs == {"normal": 0.0, "distort": 0.0}
    loss, logs = SurfelModel.extra_loss(meta, 701, 3000, cfg)
    assert logs["normal"] > 0 and float(loss.detach()) > 0
    assert SurfelModel.loss_render_kwargs(300, 3000, cfg)["distloss"] is False
    _, _, meta_nd = m.render(vm, K, W, H, backend="torch", distloss=False)
    with pytest.raises(ValueError, match="distortion"):
        SurfelModel.extra_loss(meta_nd, 400, 3000, cfg)
    obj = SurfelLossConfig().resolved("object")
    fwd = SurfelLossConfig().resolved("forward")
    assert (obj.dist_weight(), obj.normal_depth_mode()) == (1.0, "expected")
    assert (fwd.dist_weight(), fwd.normal_depth_mode()) == (0.01, "expected")
    assert SurfelLossConfig(depth_mode="median").normal_depth_mode() == "median"
    with pytest.raises(ValueError, match="depth_mode"):
        SurfelLossConfig(depth_mode="mean").normal_depth_mode()
    # the L1 weights stand for the paper's squared-form 1000 / 10: far below them (1000 cost 10 dB)
    assert obj.dist_weight() <= 10.0 and fwd.dist_weight() < obj.dist_weight()
    assert SurfelLossConfig(dist_lambda=0.0, scene_type="object").dist_weight() == 0.0
    with pytest.raises(ValueError, match="resolved"):
        SurfelLossConfig().dist_weight()
    with pytest.raises(ValueError, match="layout"):
        SurfelLossConfig().resolved("sideways")


def test_normal_loss_alone_turns_perturbed_surfels_toward_the_surface():
    """A plain Adam loop (10 steps) on the rotations with only the normal loss lowers the normal error."""
    torch.manual_seed(0)
    vm, K = _camera()
    m = _plane(n_side=8)
    truth = torch.tensor([0.0, 0.0, -1.0])
    gen = torch.Generator().manual_seed(3)
    axis = torch.nn.functional.normalize(torch.randn(len(m), 3, generator=gen) * torch.tensor([1.0, 1.0, 0.0]), dim=-1)
    half = math.radians(25.0) / 2
    dq = torch.cat([torch.full((len(m), 1), math.cos(half)), axis * math.sin(half)], -1)
    w1, v1 = dq[:, :1], dq[:, 1:]
    q = m.quats.detach()
    w2, v2 = q[:, :1], q[:, 1:]
    m.splats["quats"].data = torch.cat([w1 * w2 - (v1 * v2).sum(-1, keepdim=True),
                                        w1 * v2 + w2 * v1 + torch.cross(v1, v2, dim=-1)], -1)  # fmt: skip

    def angle_error() -> float:
        n = quat_to_rotmat(torch.nn.functional.normalize(m.quats.detach(), dim=-1))[:, :, 2]
        return float(torch.rad2deg(torch.arccos((n @ truth).abs().clamp(max=1.0))).mean())

    before = angle_error()
    opt = torch.optim.Adam([m.splats["quats"]], lr=0.06)
    cfg = _resolved(dist_lambda=0.0)
    for _ in range(10):
        _, _, meta = m.render(vm, K, W, H, backend="torch", **SurfelModel.loss_render_kwargs(10, 10, cfg))
        loss, _ = SurfelModel.extra_loss(meta, 10, 10, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = angle_error()
    assert before > 20.0 and after < 0.5 * before, (before, after)


# ---------------------------------------------------------------------------------------------- files
def test_streams_round_trip_exactly_and_refuse_mismatches():
    m = _plane(n_side=5)
    meta, streams = surfels_to_streams(m)
    assert meta["surfel"] is True and meta["n_gaussians"] == 25
    arrays = {k: v.copy() for k, (v, codec) in streams.items()}
    assert all(codec == "raw" for _, codec in streams.values())
    back = surfels_from_streams(arrays, meta, "s.scz")
    assert isinstance(back, SurfelModel)
    for k in m.splats:
        assert torch.equal(back.splats[k], m.splats[k]), k
    with pytest.raises(SceneFileError, match="surfel"):
        surfels_from_streams(arrays, {**meta, "surfel": False}, "s.scz")
    bad = dict(arrays, means=arrays["means"][:3])
    with pytest.raises(SceneFileError, match="s.scz: 2dgs stream 'means'"):
        surfels_from_streams(bad, meta, "s.scz")
    with pytest.raises(ValueError, match="SurfelModel"):
        surfels_to_streams(GaussianModel(*(m.splats[k].detach() for k in PARAM_NAMES)))


def test_save_format_and_plain_export(tmp_path):
    m = _plane(n_side=4)
    path = m.save(tmp_path / "surfels.pt")
    back = SurfelModel.load(path)
    assert isinstance(back, SurfelModel) and torch.equal(back.means, m.means)
    with pytest.raises(SceneFileError, match="3D Gaussian"):
        GaussianModel.load(path)
    with pytest.raises(SceneFileError, match="surfel"):
        SurfelModel.from_dict(GaussianModel(*(m.splats[k].detach() for k in PARAM_NAMES)).to_dict())
    plain = m.to_plain()
    assert plain.surfel is True and len(plain) == 16 and plain.sh_degree == 1
    assert np.allclose(np.linalg.norm(plain.quats, axis=1), 1.0)
    assert np.array_equal(plain.means, m.means.detach().numpy())
    assert m.to_plain(sh_degree=0).shN.shape == (16, 0, 3)
    with pytest.raises(ValueError, match="sh_degree"):
        m.to_plain(sh_degree=2)


def test_surfel_depth_defaults_to_the_plane_on_the_torch_rasterizer():
    # Centre depth is one value over a surfel's footprint: a tilted surfel's median depth is then flat, and
    # its depth normals (the normal loss's target) face the camera instead of following the plane.
    assert default_surfel_depth("cpu") == "intersection"
    assert default_surfel_depth("cuda", "auto") == "center"  # gsplat's kernels composite centre depths only
    assert default_surfel_depth("cuda", "torch") == "intersection"
    vm, K = _camera()
    m = _plane(tilt_deg=40.0)
    with torch.no_grad():
        _, alpha, meta = m.render(vm, K, W, H, backend="torch", render_mode="ED", depth_mode="median")
        _, _, meta_i = m.render(vm, K, W, H, backend="torch", render_mode="ED", depth_mode="median",
                                surfel_depth="intersection")  # fmt: skip
    torch.testing.assert_close(meta["render_median"], meta_i["render_median"])
    covered = alpha[0, ..., 0] > 0.5
    median = meta["render_median"][0, ..., 0][covered]
    assert float(median.max() - median.min()) > 0.1  # the tilted plane's depth varies across the image
