"""Tests for render/rasterization.py: the tiled torch 3DGS rasterizer against the dense per-Gaussian
reference (forward and gradients), against closed-form renders of single Gaussians, and against gsplat
on CUDA where present."""

from __future__ import annotations

import importlib.util
import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from scenezip.render import _project
from scenezip.render.rasterization import (
    ALPHA_THRESHOLD,
    project_gaussians,
    rasterization,
    rasterization_dense_reference,
)
from scenezip.render.sh import spherical_harmonics

W, H = 32, 24
MODES = ["RGB", "D", "ED", "RGB+D", "RGB+ED"]


def _look_at(eye, target=(0.0, 0.0, 0.0), dtype=torch.float32) -> torch.Tensor:
    """World-to-camera 4x4 (OpenCV axes: x right, y down, z forward) of a camera at ``eye``."""
    eye, target = torch.tensor(eye, dtype=torch.float64), torch.tensor(target, dtype=torch.float64)
    z = torch.nn.functional.normalize(target - eye, dim=0)
    x = torch.nn.functional.normalize(torch.linalg.cross(z, torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)), dim=0)
    y = torch.linalg.cross(z, x)
    R = torch.stack([x, y, z])  # rows: camera axes in world coordinates
    m = torch.eye(4, dtype=torch.float64)
    m[:3, :3], m[:3, 3] = R, -R @ eye
    return m.to(dtype)


def _intrinsics(C: int, f: float = 30.0, w: int = W, h: int = H, dtype=torch.float32) -> torch.Tensor:
    K = torch.tensor([[f, 0.0, w / 2], [0.0, f, h / 2], [0.0, 0.0, 1.0]], dtype=dtype)
    return K.expand(C, 3, 3).clone()


def _scene(N=48, C=2, dtype=torch.float32, sh_degree=None, seed=0):
    """N Gaussians in a unit ball seen by C cameras about 4 units away."""
    g = torch.Generator().manual_seed(seed)

    def r(*s):
        return torch.rand(*s, generator=g, dtype=torch.float64)

    means = (r(N, 3) * 2 - 1) * 0.9
    quats = torch.randn(N, 4, generator=g, dtype=torch.float64)
    scales = 0.04 + 0.2 * r(N, 3)
    opacities = 0.1 + 0.85 * r(N)
    if sh_degree is None:
        colors = r(N, 3)
    else:
        colors = 0.4 * torch.randn(N, (sh_degree + 1) ** 2, 3, generator=g, dtype=torch.float64)
    eyes = [(0.3, -0.2, -4.0), (-1.5, 0.4, -3.6), (2.0, 1.0, 3.2)][:C]
    viewmats = torch.stack([_look_at(e, dtype=torch.float64) for e in eyes])
    Ks = _intrinsics(C, dtype=torch.float64)
    out = [t.to(dtype) for t in (means, quats, scales, opacities, colors, viewmats, Ks)]
    return out


def _leaves(scene):
    return [t.clone().requires_grad_(True) for t in scene[:5]]


# ---------------------------------------------------------------------------------------------------
# helpers


class TestProjectHelpers:
    def test_quat_to_rotmat_orthonormal_and_normalizing(self, gen):
        q = torch.randn(10, 4, generator=gen)
        R = _project.quat_to_rotmat(q)
        torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3).expand(10, 3, 3), atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.linalg.det(R), torch.ones(10), atol=1e-5, rtol=0)
        torch.testing.assert_close(_project.quat_to_rotmat(3.0 * q), R)

    def test_quat_to_rotmat_known_rotation(self):
        # 90 degrees about z: x -> y
        h = math.sqrt(0.5)
        R = _project.quat_to_rotmat(torch.tensor([h, 0.0, 0.0, h]))
        torch.testing.assert_close(R @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]))

    def test_world_to_cam_and_centres(self):
        vm = torch.stack([_look_at((0.0, 0.0, -4.0)), _look_at((3.0, 1.0, 2.0))])
        pts = _project.world_to_cam(torch.zeros(1, 3), vm)  # the target lies straight ahead
        torch.testing.assert_close(pts[:, 0, :2], torch.zeros(2, 2), atol=1e-6, rtol=0)
        torch.testing.assert_close(pts[:, 0, 2], torch.tensor([4.0, math.sqrt(14.0)]))
        torch.testing.assert_close(_project.camera_centers(vm), torch.inverse(vm)[:, :3, 3], atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------
# rasterization


class TestRasterizationSmoke:
    @pytest.mark.parametrize("mode,channels", [("RGB", 3), ("D", 1), ("ED", 1), ("RGB+D", 4), ("RGB+ED", 4)])
    def test_shapes(self, mode, channels):
        s = _scene()
        colors, alphas, meta = rasterization(*s, W, H, render_mode=mode)
        assert colors.shape == (2, H, W, channels) and alphas.shape == (2, H, W, 1)
        assert colors.dtype == torch.float32 and torch.isfinite(colors).all()
        assert meta["radii"].shape == (2, 48, 2) and meta["radii"].dtype == torch.int32
        assert meta["means2d"].shape == (2, 48, 2) and meta["depths"].shape == (2, 48)
        assert meta["conics"].shape == (2, 48, 3) and meta["opacities"].shape == (2, 48)
        assert meta["backend"] == "torch"
        assert 0.05 < alphas.mean() < 1.0 and alphas.max() <= 1.0 and alphas.min() >= 0.0

    def test_auto_backend_on_cpu_takes_torch(self):
        _, _, meta = rasterization(*_scene(), W, H, backend="auto")
        assert meta["backend"] == "torch"

    def test_float64(self):
        colors, alphas, _ = rasterization(*_scene(dtype=torch.float64), W, H)
        assert colors.dtype == torch.float64 and alphas.dtype == torch.float64

    def test_nothing_visible(self):
        s = _scene()
        s[0] = s[0] - torch.tensor([0.0, 0.0, 100.0])  # behind camera 0
        colors, alphas, meta = rasterization(*s[:5], s[5][:1], s[6][:1], W, H)
        assert (meta["radii"] == 0).all() and (colors == 0).all() and (alphas == 0).all()


class TestRasterizationExceptions:
    def _call(self, **over):
        names = ["means", "quats", "scales", "opacities", "colors", "viewmats", "Ks"]
        args = dict(zip(names, _scene()))
        kwargs = {k: over.pop(k) for k in list(over) if k not in names + ["width", "height"]}
        args.update(over)
        width, height = args.pop("width", W), args.pop("height", H)
        return rasterization(*[args[n] for n in names], width, height, **kwargs)

    def test_means_shape(self):
        with pytest.raises(ValueError, match=r"means must have shape \[N, 3\]"):
            self._call(means=torch.zeros(48, 2))

    def test_quats_shape(self):
        with pytest.raises(ValueError, match="quats must have shape"):
            self._call(quats=torch.zeros(48, 3))

    def test_scales_shape(self):
        with pytest.raises(ValueError, match="scales must have shape"):
            self._call(scales=torch.zeros(47, 3))

    def test_opacities_shape(self):
        with pytest.raises(ValueError, match="opacities must have shape"):
            self._call(opacities=torch.zeros(48, 1))

    def test_viewmats_shape(self):
        with pytest.raises(ValueError, match="viewmats must have shape"):
            self._call(viewmats=torch.zeros(2, 3, 4))

    def test_Ks_shape(self):
        with pytest.raises(ValueError, match="Ks must have shape"):
            self._call(Ks=torch.zeros(1, 3, 3))

    def test_colors_shape(self):
        with pytest.raises(ValueError, match=r"colors must have shape \[N, D\]"):
            self._call(colors=torch.zeros(48, 4, 3))

    def test_sh_colors_shape(self):
        with pytest.raises(ValueError, match=r"colors must have shape \[N, K, 3\]"):
            self._call(colors=torch.zeros(48, 4, 3), sh_degree=2)

    def test_sh_degree(self):
        with pytest.raises(ValueError, match="sh_degree must be"):
            self._call(colors=torch.zeros(48, 25, 3), sh_degree=4)

    @pytest.mark.parametrize("name", ["width", "height", "tile_size", "chunk_pairs"])
    def test_positive_ints(self, name):
        with pytest.raises(ValueError, match=f"{name} must be a positive int"):
            self._call(**{name: 0})

    def test_render_mode(self):
        with pytest.raises(ValueError, match="render_mode must be one of"):
            self._call(render_mode="RGBD")

    def test_rasterize_mode(self):
        with pytest.raises(ValueError, match="rasterize_mode must be one of"):
            self._call(rasterize_mode="mip")

    def test_backend(self):
        with pytest.raises(ValueError, match="backend must be one of"):
            self._call(backend="gsplat")

    def test_backgrounds_shape(self):
        with pytest.raises(ValueError, match="backgrounds must have shape"):
            self._call(backgrounds=torch.zeros(2, 4))

    def test_dtype(self):
        with pytest.raises(ValueError, match="opacities must be a floating-point tensor"):
            self._call(opacities=torch.ones(48, dtype=torch.int64))

    def test_device_mismatch(self):
        with pytest.raises(ValueError, match="Ks is on meta but means is on cpu"):
            self._call(Ks=torch.zeros(2, 3, 3, device="meta"))

    def test_cuda_backend_needs_float32(self):
        s = [t.double() for t in _scene()]
        if torch.cuda.is_available():
            s = [t.cuda() for t in s]
        with pytest.raises(ValueError, match="needs (float32|CUDA) tensors"):
            rasterization(*s, W, H, backend="cuda")

    def test_cuda_backend_needs_cuda_tensors(self):
        with pytest.raises(ValueError, match="backend 'cuda' needs CUDA tensors"):
            self._call(backend="cuda")


class TestRasterizationCorrectness:
    @pytest.mark.parametrize("mode", MODES)
    @pytest.mark.parametrize("rasterize_mode", ["classic", "antialiased"])
    def test_tiled_matches_dense(self, mode, rasterize_mode):
        s = _scene()
        bg = torch.tensor([[0.1, 0.5, 0.9], [1.0, 0.0, 0.3]])
        kw = dict(render_mode=mode, rasterize_mode=rasterize_mode, backgrounds=bg)
        c1, a1, _ = rasterization(*s, W, H, **kw)
        c2, a2 = rasterization_dense_reference(*s, W, H, **kw)
        tol = dict(atol=2e-5, rtol=2e-5) if "ED" in mode else dict(atol=2e-6, rtol=1e-5)
        torch.testing.assert_close(c1, c2, **tol)
        torch.testing.assert_close(a1, a2, atol=2e-6, rtol=1e-5)

    @pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
    def test_sh_tiled_matches_dense(self, sh_degree):
        s = _scene(sh_degree=sh_degree)
        c1, a1, _ = rasterization(*s, W, H, sh_degree=sh_degree)
        c2, a2 = rasterization_dense_reference(*s, W, H, sh_degree=sh_degree)
        torch.testing.assert_close(c1, c2, atol=2e-6, rtol=1e-5)

    @pytest.mark.parametrize("chunk_pairs,tile_size", [(1 << 18, 16), (4096, 8), (16, 8), (200, 4), (1 << 12, 5)])
    def test_independent_of_chunks_and_tiles(self, chunk_pairs, tile_size):
        # chunk_pairs=16 is smaller than any tile's list: every tile takes the per-pixel split path
        s = _scene(N=48, seed=3)
        ref_c, ref_a, _ = rasterization(*s, W, H, render_mode="RGB+ED")
        c, a, meta = rasterization(*s, W, H, render_mode="RGB+ED", chunk_pairs=chunk_pairs, tile_size=tile_size)
        assert meta["tile_size"] == tile_size
        torch.testing.assert_close(c, ref_c, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a, ref_a, atol=1e-6, rtol=1e-5)

    def test_saturated_pixels_stop(self):
        # 40 opaque Gaussians stacked on the axis: transmittance falls below 1e-4, the rest is ignored
        N = 40
        means = torch.zeros(N, 3)
        means[:, 2] = torch.linspace(0.0, 1.0, N)
        quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(N, 4)
        scales = torch.full((N, 3), 0.5)
        opac = torch.full((N,), 0.95)
        colors = torch.rand(N, 3, generator=torch.Generator().manual_seed(1))
        # principal point on the centre of pixel (16, 12): there every alpha is exactly 0.95
        vm = _look_at((0.0, 0.0, -4.0))[None]
        K = torch.tensor([[[30.0, 0.0, 16.5], [0.0, 30.0, 12.5], [0.0, 0.0, 1.0]]])
        c1, a1, _ = rasterization(means, quats, scales, opac, colors, vm, K, W, H)
        c2, a2 = rasterization_dense_reference(means, quats, scales, opac, colors, vm, K, W, H)
        torch.testing.assert_close(c1, c2, atol=2e-6, rtol=1e-5)
        # transmittance 0.05^3 = 1.25e-4 after three Gaussians; the fourth would take it to 6e-6 <= 1e-4,
        # so the pixel stops there: exactly three count (without the rule alpha would be ~1 - 0.05^40)
        assert a1[0, H // 2, W // 2, 0].item() == pytest.approx(1 - 0.05**3, rel=1e-6)
        w = 0.95 * torch.tensor([1.0, 0.05, 0.05**2])
        torch.testing.assert_close(c1[0, H // 2, W // 2], (w[:, None] * colors[:3]).sum(0), atol=1e-5, rtol=1e-4)

    def test_single_red_gaussian_png(self, tmp_path):
        # isotropic Gaussian at the origin, camera 4 units away, principal point on pixel (16, 12)'s
        # centre: the 2D std is sqrt((f s / z)^2 + eps2d) = 2 px exactly
        f, z = 30.0, 4.0
        s = math.sqrt(4.0 - 0.3) * z / f
        means, quats = torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0, 0.0]])
        scales, opac, red = torch.full((1, 3), s), torch.tensor([0.8]), torch.tensor([[1.0, 0.0, 0.0]])
        K = torch.tensor([[[f, 0.0, 16.5], [0.0, f, 12.5], [0.0, 0.0, 1.0]]])
        vm = _look_at((0.0, 0.0, -z))[None]
        bg = torch.tensor([[0.0, 0.0, 1.0]])
        img, alpha, meta = rasterization(means, quats, scales, opac, red, vm, K, W, H, backgrounds=bg)
        img = img[0]
        torch.testing.assert_close(meta["means2d"][0, 0], torch.tensor([16.5, 12.5]))
        # box half-size: ceil(2 px * sqrt(2 ln(255 * 0.8))) = ceil(6.52)
        assert torch.equal(meta["radii"][0, 0], torch.tensor([7, 7], dtype=torch.int32))
        peak = torch.nonzero(img[..., 0] == img[..., 0].max())
        assert peak.tolist() == [[12, 16]]  # row 12, column 16
        assert img[12, 16, 0].item() == pytest.approx(0.8, abs=1e-6)
        # 1 sigma = 2 px away, along either axis: exp(-0.5) of the peak
        for y, x in [(12, 18), (12, 14), (10, 16), (14, 16)]:
            assert img[y, x, 0].item() == pytest.approx(0.8 * math.exp(-0.5), rel=1e-5)
        assert img[12, 16, 1] == 0 and img[12, 16, 2].item() == pytest.approx(0.2, abs=1e-6)
        torch.testing.assert_close(img[0, 0], torch.tensor([0.0, 0.0, 1.0]))  # background far away
        path = tmp_path / "red.png"
        iio.imwrite(path, (img.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
        png = iio.imread(path).astype(np.int64)
        assert png.shape == (H, W, 3)
        assert png[12, 16].tolist() == [204, 0, 51]
        assert (png[..., 1] == 0).all()
        assert (png[..., 0] + png[..., 2] >= 254).all()  # red + blue = alpha + (1 - alpha)
        assert (png[..., 0] > 0).sum() < 15 * 15 and (png[:3, :, 2] == 255).all()

    def test_expected_depth_of_fronto_parallel_gaussian(self):
        z = 3.0
        means = torch.tensor([[0.0, 0.0, 0.0], [0.2, 0.1, 5.0]])  # a second Gaussian far behind the first
        quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).expand(2, 4)
        scales = torch.tensor([[0.6, 0.6, 1e-4], [0.5, 0.5, 1e-4]])
        opac = torch.tensor([0.99, 0.8])
        vm, K = _look_at((0.0, 0.0, -z))[None], _intrinsics(1)
        out, alpha, _ = rasterization(means[:1], quats[:1], scales[:1], opac[:1], torch.ones(1, 3), vm, K, W, H, render_mode="RGB+ED")
        mask = alpha[0, ..., 0] > 0.5
        assert mask.sum() > 50
        torch.testing.assert_close(out[0, ..., 3][mask], torch.full((int(mask.sum()),), z), atol=1e-5, rtol=1e-5)
        d, alpha_d, _ = rasterization(means[:1], quats[:1], scales[:1], opac[:1], torch.ones(1, 3), vm, K, W, H, render_mode="D")
        torch.testing.assert_close(d, alpha_d * z, atol=1e-5, rtol=1e-5)
        # with a Gaussian behind, the expected depth lies strictly between the two depths
        ed, alpha2, _ = rasterization(means, quats, scales, opac, torch.ones(2, 3), vm, K, W, H, render_mode="ED")
        inner = ed[0, ..., 0][alpha2[0, ..., 0] > 0.5]
        assert (inner >= z - 1e-5).all() and (inner <= z + 5 + 1e-5).all() and (inner > z + 1e-3).any()

    @pytest.mark.parametrize("sh_degree", [0, 1, 2, 3])
    def test_sh_colour_follows_view_direction(self, sh_degree):
        coeffs = 0.3 * torch.randn(1, 16, 3, generator=torch.Generator().manual_seed(sh_degree))
        means, quats = torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0, 0.0]])
        scales, opac = torch.full((1, 3), 0.3), torch.tensor([0.7])
        eyes = torch.tensor([[0.0, 0.0, -4.0], [3.0, -1.0, 2.0]])
        vm = torch.stack([_look_at(tuple(e.tolist())) for e in eyes])
        img, alpha, _ = rasterization(means, quats, scales, opac, coeffs, vm, _intrinsics(2), W, H, sh_degree=sh_degree)
        centre = img[:, H // 2, W // 2] / alpha[:, H // 2, W // 2]  # colour of the one Gaussian
        expected = (spherical_harmonics(sh_degree, means - eyes, coeffs.expand(2, 16, 3)) + 0.5).clamp_min(0)
        torch.testing.assert_close(centre, expected, atol=1e-5, rtol=1e-5)
        if sh_degree == 0:
            torch.testing.assert_close(centre[0], centre[1])
        else:
            assert (centre[0] - centre[1]).abs().max() > 1e-2

    def test_antialiased_darkens_tiny_gaussians(self):
        f, z = 30.0, 4.0
        px = 0.2  # std of the Gaussian in pixels before the eps2d blur
        means, quats = torch.zeros(1, 3), torch.tensor([[1.0, 0.0, 0.0, 0.0]])
        scales, opac, white = torch.full((1, 3), px * z / f), torch.tensor([0.8]), torch.ones(1, 3)
        K = torch.tensor([[[f, 0.0, 16.5], [0.0, f, 12.5], [0.0, 0.0, 1.0]]])
        vm = _look_at((0.0, 0.0, -z))[None]
        classic, _, m1 = rasterization(means, quats, scales, opac, white, vm, K, W, H)
        aa, _, m2 = rasterization(means, quats, scales, opac, white, vm, K, W, H, rasterize_mode="antialiased")
        comp = px**2 / (px**2 + 0.3)  # sqrt(det / det_blur) of an isotropic 2D covariance
        assert m2["opacities"][0, 0].item() == pytest.approx(0.8 * comp, rel=1e-4)
        assert m1["opacities"][0, 0].item() == pytest.approx(0.8)
        torch.testing.assert_close(aa[0, 12, 16], classic[0, 12, 16] * comp, atol=1e-6, rtol=1e-4)
        # a large Gaussian is barely affected
        big, _, _ = rasterization(means, quats, scales * 40, opac, white, vm, K, W, H, rasterize_mode="antialiased")
        assert big[0, 12, 16, 0].item() == pytest.approx(0.8, rel=0.01)

    @pytest.mark.parametrize(
        "where,kw",
        [((0.0, 0.0, -6.0), {}), ((0.0, 0.0, 50.0), {"far_plane": 40.0}), ((0.3, -0.2, -3.995), {"near_plane": 0.01})],
        ids=["behind", "beyond-far", "before-near"],
    )
    def test_culled_gaussians_contribute_nothing(self, where, kw):
        s = _scene(N=8, C=1)
        leaves = _leaves(s)
        extra = torch.tensor([where])  # the camera sits at (0.3, -0.2, -4) looking at the origin
        means = torch.cat([leaves[0], extra.requires_grad_(True)])
        big = [torch.cat([leaves[1], torch.tensor([[1.0, 0.0, 0.0, 0.0]])]), torch.cat([leaves[2], torch.full((1, 3), 2.0)])]
        opac = torch.cat([leaves[3], torch.tensor([0.99])])
        colors = torch.cat([leaves[4], torch.ones(1, 3)])
        img, alpha, meta = rasterization(means, *big, opac, colors, s[5], s[6], W, H, **kw)
        ref, ref_alpha, _ = rasterization(*s, W, H, **kw)
        assert (meta["radii"][0, -1] == 0).all()
        torch.testing.assert_close(img, ref)
        torch.testing.assert_close(alpha, ref_alpha)
        img.sum().backward()
        assert extra.grad is None or (extra.grad == 0).all()


class TestRasterizationGradients:
    @pytest.mark.parametrize(
        "kw,dtype",
        [
            ({"render_mode": "RGB+ED", "rasterize_mode": "antialiased"}, torch.float64),
            ({"render_mode": "RGB+D", "sh_degree": 3}, torch.float64),
            ({"render_mode": "RGB+D", "sh_degree": 3}, torch.float32),
            ({"render_mode": "D", "chunk_pairs": 1024, "tile_size": 4}, torch.float64),
        ],
        ids=["aa-ED-f64", "sh3-D-f64", "sh3-D-f32", "depth-tiny-chunks-f64"],
    )
    def test_tiled_matches_dense(self, kw, dtype):
        # float64 checks the hand-written backward to rounding; float32 with loose tolerances (expected
        # depth divides by small alphas, which float32 cannot resolve to 1e-4, hence float64 there)
        s = _scene(sh_degree=kw.get("sh_degree"), dtype=dtype)
        bg = None if kw.get("render_mode") == "D" else torch.tensor([[0.2, 0.3, 0.4], [0.9, 0.1, 0.0]], dtype=dtype)
        tol = 1e-4 if dtype == torch.float32 else 1e-9
        grads, outs = [], []
        for fn in (rasterization, rasterization_dense_reference):
            leaves = _leaves(s)
            dense_kw = {k: v for k, v in kw.items() if k not in ("chunk_pairs", "tile_size")}
            res = fn(*leaves, *s[5:], W, H, backgrounds=bg, **(kw if fn is rasterization else dense_kw))
            colors, alphas = res[0], res[1]
            g = torch.Generator().manual_seed(7)
            v = torch.randn(colors.shape, generator=g, dtype=dtype)
            va = torch.randn(alphas.shape, generator=g, dtype=dtype)
            ((colors * v).sum() + (alphas * va).sum()).backward()
            grads.append([t.grad for t in leaves])
            outs.append(colors)
        torch.testing.assert_close(outs[0], outs[1], atol=tol, rtol=tol)
        for name, a, b in zip(["means", "quats", "scales", "opacities", "colors"], *grads):
            if name == "colors" and kw["render_mode"] == "D":
                assert a is None and b is None  # depth alone does not read the colours
                continue
            scale = b.abs().max()
            torch.testing.assert_close(a, b, atol=0.1 * tol * scale, rtol=tol, msg=lambda m: f"{name}: {m}")
            # every visible Gaussian gets a gradient (a kernel that zeroes one would pass loose tolerances)
            assert (a.abs().reshape(a.shape[0], -1).amax(1) > 0).float().mean() > 0.9, name

    def test_means2d_retain_grad_for_densification(self):
        s = _scene()
        s[0][:8, 0] += 10.0  # out of both views
        leaves = _leaves(s)
        colors, _, meta = rasterization(*leaves, *s[5:], W, H)
        meta["means2d"].retain_grad()
        colors.square().sum().backward()
        g = meta["means2d"].grad
        visible = (meta["radii"] > 0).all(-1)
        assert g.shape == (2, 48, 2) and visible.any() and (~visible).any()
        assert (g[~visible] == 0).all()
        assert (g[visible].abs().amax(-1) > 0).float().mean() > 0.9

    def test_gradcheck_float64(self):
        # 3 Gaussians on an 8x6 image; opacities below the 0.999 clamp so the function is smooth
        means = torch.tensor([[0.0, 0.0, 0.0], [0.15, -0.1, 0.3], [-0.2, 0.05, -0.2]], dtype=torch.float64)
        quats = torch.tensor([[1.0, 0.1, 0.2, 0.0], [0.9, -0.3, 0.1, 0.4], [0.5, 0.5, -0.2, 0.1]], dtype=torch.float64)
        scales = torch.tensor([[0.3, 0.2, 0.25], [0.2, 0.35, 0.1], [0.15, 0.25, 0.3]], dtype=torch.float64)
        opac = torch.tensor([0.7, 0.5, 0.8], dtype=torch.float64)
        colors = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.8, 0.3], [0.2, 0.3, 0.9]], dtype=torch.float64)
        vm = _look_at((0.1, 0.0, -3.0), dtype=torch.float64)[None]
        K = _intrinsics(1, f=8.0, w=8, h=6, dtype=torch.float64)
        bg = torch.tensor([[0.3, 0.2, 0.1]], dtype=torch.float64)

        def fn(m, q, s, o, c):
            out, alpha, _ = rasterization(
                m, q, s, o, c, vm, K, 8, 6, backgrounds=bg, render_mode="RGB+ED", tile_size=4, chunk_pairs=64
            )
            return out, alpha

        inputs = [t.clone().requires_grad_(True) for t in (means, quats, scales, opac, colors)]
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


# ---------------------------------------------------------------------------------------------------
# parity with gsplat (CUDA)


def _gsplat_ready() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "needs an NVIDIA GPU (torch.cuda.is_available() is False)"
    if importlib.util.find_spec("gsplat") is None:
        return False, 'gsplat is not installed (pip install "scenezip[cuda]")'
    return True, ""


@pytest.mark.skipif(not _gsplat_ready()[0], reason=_gsplat_ready()[1])
class TestGsplatParity:
    @pytest.mark.parametrize(
        "kw",
        [
            {},
            {"render_mode": "RGB+ED", "rasterize_mode": "antialiased"},
            {"sh_degree": 3, "render_mode": "RGB+D"},
        ],
        ids=["rgb", "aa-ED", "sh3-D"],
    )
    def test_forward_and_gradients(self, kw):
        s = [t.cuda() for t in _scene(N=200, C=2, sh_degree=kw.get("sh_degree"), seed=5)]
        bg = torch.tensor([[0.2, 0.3, 0.4], [0.9, 0.1, 0.0]], device="cuda")
        results = {}
        for backend in ("cuda", "torch"):
            leaves = _leaves(s)
            colors, alphas, meta = rasterization(*leaves, *s[5:], W, H, backgrounds=bg, backend=backend, **kw)
            assert meta["backend"] == backend
            meta["means2d"].retain_grad()
            g = torch.Generator(device="cuda").manual_seed(11)
            v = torch.randn(colors.shape, generator=g, device="cuda")
            va = torch.randn(alphas.shape, generator=g, device="cuda")
            ((colors * v).sum() + (alphas * va).sum()).backward()
            results[backend] = (colors, alphas, meta, [t.grad for t in leaves])
        (c_cu, a_cu, m_cu, g_cu), (c_t, a_t, m_t, g_t) = results["cuda"], results["torch"]
        torch.testing.assert_close(a_cu, a_t, atol=1e-4, rtol=1e-3)
        torch.testing.assert_close(c_cu, c_t, atol=1e-3 if "ED" in kw.get("render_mode", "") else 1e-4, rtol=1e-3)
        vis = (m_t["radii"] > 0).all(-1)
        assert torch.equal((m_cu["radii"] > 0).all(-1), vis)
        assert (m_cu["radii"][vis] - m_t["radii"][vis]).abs().max() <= 1
        for key in ("means2d", "depths", "conics", "opacities"):
            torch.testing.assert_close(m_cu[key][vis], m_t[key][vis], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(
            m_cu["means2d"].grad[vis], m_t["means2d"].grad[vis], atol=1e-3 * m_t["means2d"].grad.abs().max(), rtol=1e-2
        )
        for name, a, b in zip(["means", "quats", "scales", "opacities", "colors"], g_cu, g_t):
            torch.testing.assert_close(a, b, atol=1e-3 * b.abs().max(), rtol=1e-2, msg=lambda m: f"{name}: {m}")


def test_projection_alpha_threshold_culls_faint_gaussians():
    s = _scene(N=4, C=1)
    opaque = project_gaussians(s[0], s[1], s[2], torch.full((4,), 0.9), s[5], s[6], W, H)
    faint = torch.tensor([0.9, ALPHA_THRESHOLD * 0.99, ALPHA_THRESHOLD * 1.5, 0.9])
    proj = project_gaussians(s[0], s[1], s[2], faint, s[5], s[6], W, H)
    assert (opaque["radii"][0] > 0).all()
    assert proj["radii"][0, 1].eq(0).all() and not proj["valid"][0, 1]
    # the box of a faint Gaussian shrinks to where its alpha can still reach 1/255
    assert proj["valid"][0, 2] and (proj["radii"][0, 2] < opaque["radii"][0, 2]).all()
    assert torch.equal(proj["radii"][0, [0, 3]], opaque["radii"][0, [0, 3]])
