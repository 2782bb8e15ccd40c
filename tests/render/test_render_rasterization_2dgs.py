"""Tests for render/rasterization_2dgs.py: the tiled torch surfel rasterizer against its dense reference,
analytic geometry (planes, normals, median depth, distortion, filter), invariances, gradients, and
parity with gsplat's CUDA kernels where a GPU is present."""

from __future__ import annotations

import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from scenezip.render._project import quat_to_rotmat
from scenezip.render.rasterization_2dgs import (
    project_surfels,
    rasterization_2dgs,
    rasterization_2dgs_reference,
)

OUT_NAMES = ("colors", "alphas", "normals", "normals_from_depth", "distort", "median")


def _cameras(C: int, W: int, H: int, f: float, dtype=torch.float32):
    viewmats = torch.eye(4, dtype=dtype).repeat(C, 1, 1)
    viewmats[:, 2, 3] = 4.0  # the world origin is 4 units in front of every camera
    if C > 1:
        viewmats[1, 0, 3] = 0.4
        viewmats[1, :3, :3] = quat_to_rotmat(torch.tensor([1.0, 0.0, 0.08, 0.03], dtype=dtype))
    Ks = torch.tensor([[f, 0.0, W / 2], [0.0, f, H / 2], [0.0, 0.0, 1.0]], dtype=dtype).repeat(C, 1, 1)
    return viewmats, Ks


def _scene(N=24, C=2, W=20, H=16, seed=0, dtype=torch.float32):
    """Seeded surfels in front of the cameras, tilted at most ~45 degrees, at least ~1.2 px wide.

    Wide enough that gsplat's 3.33-sigma screen box holds every pair above the alpha threshold, so the
    tiled path and the dense reference (which has no box) see the same pairs.
    """
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(N, 3, generator=g) * 2 - 1) * torch.tensor([0.9, 0.7, 0.8])
    quats = torch.cat([torch.ones(N, 1), 0.35 * torch.randn(N, 2, generator=g), torch.randn(N, 1, generator=g)], -1)
    scales = torch.rand(N, 3, generator=g) * 0.15 + 0.15
    opacities = torch.rand(N, generator=g) * 0.6 + 0.1
    colors = torch.rand(N, 3, generator=g)
    viewmats, Ks = _cameras(C, W, H, 30.0)
    tensors = [t.to(dtype) for t in (means, quats, scales, opacities, colors, viewmats.float(), Ks.float())]
    return tensors, W, H


def _single(mean, quat, scale, opacity=0.95, color=(1.0, 0.0, 0.0), dtype=torch.float32):
    """One surfel as the five per-surfel tensors."""
    return [
        torch.tensor([mean], dtype=dtype),
        torch.tensor([quat], dtype=dtype),
        torch.tensor([[scale, scale, 0.0]], dtype=dtype),
        torch.tensor([opacity], dtype=dtype),
        torch.tensor([color], dtype=dtype),
    ]


def _pixel_rays(W, H, K):
    """Camera-space rays ``[H, W, 3]`` with z = 1 through the pixel centres."""
    y, x = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    return torch.stack([(x + 0.5 - K[0, 2]) / K[0, 0], (y + 0.5 - K[1, 2]) / K[1, 1], torch.ones_like(x)], -1)


def _weights_like(outs, gen):
    return [torch.rand(o.shape, generator=gen, dtype=o.dtype) for o in outs]


def _loss(outs, weights):
    return sum((o * w).sum() for o, w in zip(outs, weights))


# ---------------------------------------------------------------------------------------------------


class TestSmoke:
    @pytest.mark.parametrize("mode,channels", [("RGB", 3), ("D", 1), ("ED", 1), ("RGB+D", 4), ("RGB+ED", 4)])
    def test_shapes_and_ranges(self, mode, channels):
        args, W, H = _scene()
        out = rasterization_2dgs(*args, W, H, render_mode=mode, distloss=True)
        C = args[5].shape[0]
        assert out[0].shape == (C, H, W, channels)
        for t, d in zip(out[1:6], (1, 3, 3, 1, 1)):
            assert t.shape == (C, H, W, d) and torch.isfinite(t).all()
        assert (out[1] >= 0).all() and (out[1] < 1).all() and out[1].max() > 0.5
        assert out[4].min() >= -1e-6 and out[4].max() > 0  # overlapping surfels distort
        meta = out[6]
        assert meta["backend"] == "torch" and meta["radii"].shape == (C, args[0].shape[0], 2)
        assert meta["ray_transforms"].shape == (C, args[0].shape[0], 3, 3)

    def test_sh_degree_zero_is_dc_colour(self):
        args, W, H = _scene(C=1)
        sh = torch.zeros(args[0].shape[0], 4, 3)
        sh[:, 0] = (args[4] - 0.5) / 0.28209479177387814
        sh[:, 1:] = torch.randn(args[0].shape[0], 3, 3, generator=torch.Generator().manual_seed(1))
        with_sh = rasterization_2dgs(*args[:4], sh, *args[5:], W, H, sh_degree=0)
        plain = rasterization_2dgs(*args, W, H)
        torch.testing.assert_close(with_sh[0], plain[0], atol=1e-5, rtol=1e-5)
        higher = rasterization_2dgs(*args[:4], sh, *args[5:], W, H, sh_degree=1)
        assert (higher[0] - plain[0]).abs().max() > 1e-2  # the degree-1 bands are used when asked

    def test_no_visible_surfel_renders_background(self):
        args, W, H = _scene(C=1)
        args[0] = args[0] - torch.tensor([0.0, 0.0, 10.0])  # every centre behind the camera
        bg = torch.tensor([[0.2, 0.4, 0.6]])
        out = rasterization_2dgs(*args, W, H, backgrounds=bg, render_mode="RGB+D")
        assert (out[6]["radii"] == 0).all()
        assert (out[1] == 0).all()
        torch.testing.assert_close(out[0][..., :3], bg[:, None, None, :].expand(1, H, W, 3))
        empty = rasterization_2dgs(*[a[:0] for a in args[:5]], *args[5:], W, H)
        assert empty[0].shape == (1, H, W, 3) and (empty[0] == 0).all()

    def test_auto_with_cpu_tensors_uses_torch(self):
        args, W, H = _scene(C=1)
        assert rasterization_2dgs(*args, W, H, backend="auto")[6]["backend"] == "torch"


class TestExceptions:
    @pytest.mark.parametrize(
        "change,match",
        [
            (lambda a: a.update(means=a["means"][:, :2]), "means must have shape"),
            (lambda a: a.update(means=a["means"].long()), "means must be a floating-point"),
            (lambda a: a.update(quats=a["quats"][:-1]), "quats must have shape"),
            (lambda a: a.update(scales=a["scales"][:, :2]), "scales must have shape"),
            (lambda a: a.update(opacities=a["opacities"][:, None]), "opacities must have shape"),
            (lambda a: a.update(colors=a["colors"][:-1]), r"colors must have shape \[N, D\] = \[24, D\]"),
            (lambda a: a.update(sh_degree=4), "sh_degree must be"),
            (lambda a: a.update(sh_degree=1), r"colors must have shape \[N, K, 3\] = \[24, K>=4, 3\]"),
            (lambda a: a.update(viewmats=a["viewmats"][:, :3]), "viewmats must have shape"),
            (lambda a: a.update(Ks=a["Ks"][:1]), "Ks must have shape"),
            (lambda a: a.update(colors=a["colors"].double()), "colors must have the dtype and device"),
            (lambda a: a.update(width=0), "width and height must be positive"),
            (lambda a: a.update(near_plane=2.0, far_plane=1.0), "near_plane and far_plane"),
            (lambda a: a.update(radius_clip=-1.0), "radius_clip must be"),
            (lambda a: a.update(eps2d=0.0), "eps2d must be"),
            (lambda a: a.update(render_mode="RGBD"), "render_mode must be one of"),
            (lambda a: a.update(depth_mode="mean"), "depth_mode must be one of"),
            (lambda a: a.update(surfel_depth="ray"), "surfel_depth must be one of"),
            (lambda a: a.update(backgrounds=torch.zeros(2, 4)), "backgrounds must have shape"),
            (lambda a: a.update(backgrounds=torch.zeros(2, 3), render_mode="ED"), "has none"),
            (lambda a: a.update(tile_size=0), "tile_size must be"),
            (lambda a: a.update(chunk_pairs=0), "chunk_pairs must be"),
            (lambda a: a.update(backend="metal"), "backend must be one of"),
            (lambda a: a.update(backend="cuda"), "needs CUDA tensors"),
        ],
    )
    def test_bad_input_names_the_argument(self, change, match):
        (means, quats, scales, opacities, colors, viewmats, Ks), W, H = _scene()
        kwargs = dict(means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
                      viewmats=viewmats, Ks=Ks, width=W, height=H)
        change(kwargs)
        with pytest.raises(ValueError, match=match):
            rasterization_2dgs(**kwargs)


class TestCorrectness:
    @pytest.mark.parametrize("surfel_depth", ["center", "intersection"])
    @pytest.mark.parametrize("depth_mode", ["expected", "median"])
    def test_tiled_matches_dense_reference(self, surfel_depth, depth_mode):
        args, W, H = _scene()
        kw = dict(render_mode="RGB+D", distloss=True, surfel_depth=surfel_depth, depth_mode=depth_mode,
                  backgrounds=torch.tensor([[0.1, 0.2, 0.3], [0.0, 0.5, 1.0]]))
        tiled = rasterization_2dgs(*args, W, H, **kw)
        dense = rasterization_2dgs_reference(*args, W, H, **kw)
        for name, a, b in zip(OUT_NAMES, tiled[:6], dense[:6]):
            torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        assert tiled[1].max() > 0.9 and tiled[4].max() > 0.05  # the scene overlaps enough to test something

    def test_expected_depth_is_accumulated_over_alpha(self):
        args, W, H = _scene(C=1)
        acc = rasterization_2dgs(*args, W, H, render_mode="D")
        exp = rasterization_2dgs(*args, W, H, render_mode="ED")
        mask = acc[1] > 1e-3
        torch.testing.assert_close(exp[0][mask], (acc[0] / acc[1])[mask])

    def test_tiled_matches_dense_reference_gradients(self):
        args, W, H = _scene()
        params = [a.clone().requires_grad_() for a in args[:5]]
        kw = dict(render_mode="RGB+ED", distloss=True, surfel_depth="intersection")
        tiled = rasterization_2dgs(*params, *args[5:], W, H, **kw)[:6]
        weights = _weights_like(tiled, torch.Generator().manual_seed(3))
        g_tiled = torch.autograd.grad(_loss(tiled, weights), params)
        dense = rasterization_2dgs_reference(*params, *args[5:], W, H, **kw)[:6]
        g_dense = torch.autograd.grad(_loss(dense, weights), params)
        for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), g_tiled, g_dense):
            scale = b.abs().max()
            torch.testing.assert_close(a, b, atol=1e-4 * scale, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")
            assert (a.abs().sum(-1) if a.dim() > 1 else a.abs()).gt(0).float().mean() > 0.5, name
        # the ignored third scale gets no gradient, as in gsplat
        assert (g_tiled[2][:, 2] == 0).all() and (g_tiled[2][:, :2] != 0).any()

    def test_tile_size_and_chunk_size_do_not_change_the_result(self):
        args, W, H = _scene()
        params = [a.clone().requires_grad_() for a in args[:5]]
        kw = dict(render_mode="RGB+ED", distloss=True, depth_mode="median")
        results = []
        for tile_size, chunk_pairs in [(8, 1 << 18), (4, 1 << 12), (16, 1 << 11), (8, 1000)]:
            out = rasterization_2dgs(*params, *args[5:], W, H, tile_size=tile_size, chunk_pairs=chunk_pairs, **kw)[:6]
            weights = _weights_like(out, torch.Generator().manual_seed(5))
            results.append((out, torch.autograd.grad(_loss(out, weights), params)))
        for out, grads in results[1:]:
            for a, b in zip(out, results[0][0]):
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
            for a, b in zip(grads, results[0][1]):
                torch.testing.assert_close(a, b, atol=1e-4 * b.abs().max(), rtol=1e-4)

    def test_projection_of_a_fronto_parallel_surfel(self):
        viewmats, Ks = _cameras(1, 40, 30, 50.0)
        means, quats, scales, _, _ = _single([0.2, -0.1, 1.0], [1.0, 0.0, 0.0, 0.0], 0.1)
        radii, means2d, depths, rays, normals = project_surfels(means, quats, scales, viewmats, Ks, 40, 30)
        z = 5.0
        torch.testing.assert_close(means2d[0, 0], torch.tensor([20 + 50 * 0.2 / z, 15 - 50 * 0.1 / z]))
        assert depths[0, 0].item() == pytest.approx(z)
        assert radii[0, 0].tolist() == [math.ceil(3.33 * 50 * 0.1 / z)] * 2
        torch.testing.assert_close(normals[0, 0], torch.tensor([0.0, 0.0, -1.0]))  # toward the camera
        # the ray transform maps the surfel's local (u, v, 1) to homogeneous pixels
        p = rays[0, 0] @ torch.tensor([1.0, 0.0, 1.0])
        torch.testing.assert_close(p[:2] / p[2], torch.tensor([20 + 50 * 0.3 / z, 15 - 50 * 0.1 / z]))

    @pytest.mark.parametrize("surfel_depth", ["center", "intersection"])
    def test_fronto_parallel_surfel_depth_and_normal_from_a_rotated_camera(self, surfel_depth):
        W, H, f, z = 24, 20, 20.0, 3.0
        q = torch.tensor([0.9, 0.2, -0.3, 0.25])
        R_wc = quat_to_rotmat(q)  # camera-to-world rotation
        eye = torch.tensor([1.0, -2.0, 0.5])
        viewmats = torch.eye(4)[None].clone()
        viewmats[0, :3, :3] = R_wc.T
        viewmats[0, :3, 3] = -R_wc.T @ eye
        Ks = torch.tensor([[[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]])
        forward = R_wc[:, 2]
        # the surfel has the camera's rotation, so it is parallel to the image plane, z ahead
        surfel = _single((eye + z * forward).tolist(), q.tolist(), 2.0, opacity=0.9)
        colors, alphas, normals, from_depth, distort, median, _ = rasterization_2dgs(
            *surfel, viewmats, Ks, W, H, render_mode="RGB+ED", distloss=True, surfel_depth=surfel_depth
        )
        mask = alphas[0, ..., 0] > 0.5
        assert mask.sum() > 100
        torch.testing.assert_close(colors[0, ..., 3][mask], torch.full_like(colors[0, ..., 3][mask], z))
        torch.testing.assert_close(median[0, ..., 0][mask], torch.full_like(median[0, ..., 0][mask], z))
        toward_camera = -forward  # world space
        unit = normals[0][mask] / alphas[0][mask]
        torch.testing.assert_close(unit, toward_camera.expand_as(unit), atol=1e-5, rtol=1e-5)
        inner = torch.zeros_like(mask)  # central differences need all four neighbours on the surfel
        inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
        fd = from_depth[0][inner]
        torch.testing.assert_close(fd, toward_camera.expand_as(fd), atol=1e-3, rtol=1e-3)
        assert distort.abs().max() < 1e-6  # one surfel cannot distort

    @pytest.mark.parametrize("fn", [rasterization_2dgs, rasterization_2dgs_reference])
    def test_edge_on_surfel_filter_pixels_take_centre_depth(self, fn):
        # Seen almost edge-on, a surfel shows mostly through the screen-space filter; there the ray meets
        # its plane far from the surfel (here up to ~1e3 units away, or behind the camera). 2DGS's kernel
        # gives such pixels the centre's depth; the plane's depth only where the surfel's Gaussian wins.
        W, H, f = 24, 20, 30.0
        theta = math.radians(89.9)
        viewmats, Ks = torch.eye(4)[None], torch.tensor([[[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]])
        quat = [math.cos(theta / 2), math.sin(theta / 2), 0.0, 0.0]  # normal nearly perpendicular to the view axis
        surfel = _single([0.0, 0.05, 4.0], quat, 0.5, opacity=0.95)
        depth, alpha, *_ = fn(*surfel, viewmats, Ks, W, H, render_mode="ED", surfel_depth="intersection")
        seen = alpha[0, ..., 0] > 1e-3
        assert seen.sum() >= 10
        z = depth[0, ..., 0][seen]
        assert torch.isfinite(z).all()
        assert (z - 4.0).abs().max() < 3.4 * 0.5  # within the surfel's visible extent (alpha >= 1/255) in depth

    def test_tilted_surfel_renders_its_plane(self):
        W, H, f = 40, 32, 40.0
        theta = math.radians(40.0)
        viewmats, Ks = torch.eye(4)[None], torch.tensor([[[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]])
        mu = torch.tensor([0.1, 0.0, 4.0], dtype=torch.float64)
        quat = [math.cos(theta / 2), math.sin(theta / 2), 0.0, 0.0]  # about the x axis
        surfel = _single(mu.tolist(), quat, 1.5, opacity=0.95)
        out = rasterization_2dgs(*surfel, viewmats, Ks, W, H, render_mode="ED", surfel_depth="intersection",
                                 depth_mode="median")
        n = torch.tensor([0.0, -math.sin(theta), math.cos(theta)], dtype=torch.float64)  # R e_z
        rays = _pixel_rays(W, H, Ks[0].double())
        plane_z = (n @ mu) / (rays @ n)  # ray-plane intersection, z because rays have z = 1
        mask = out[1][0, ..., 0] > 0.5
        assert mask.sum() > 200 and plane_z[mask].max() - plane_z[mask].min() > 1.0  # really tilted
        torch.testing.assert_close(out[0][0, ..., 0][mask].double(), plane_z[mask], atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(out[5][0, ..., 0][mask].double(), plane_z[mask], atol=1e-4, rtol=1e-5)
        facing = (-n).float()  # n . mu > 0, so the normal toward the camera is -n
        unit = out[2][0][mask] / out[1][0][mask]
        torch.testing.assert_close(unit, facing.expand_as(unit), atol=1e-5, rtol=1e-5)
        inner = torch.zeros_like(mask)
        inner[1:-1, 1:-1] = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
        fd = out[3][0][inner]
        torch.testing.assert_close(fd, facing.expand_as(fd), atol=2e-3, rtol=1e-3)
        # gsplat's convention composites the centre depth: flat, whatever the tilt
        center = rasterization_2dgs(*surfel, viewmats, Ks, W, H, render_mode="ED")
        torch.testing.assert_close(center[0][0, ..., 0][mask], torch.full_like(center[0][0, ..., 0][mask], 4.0))

    def test_alpha_is_max_of_ray_kernel_and_screen_filter(self):
        W, H, f = 32, 24, 30.0
        viewmats, Ks = torch.eye(4)[None], torch.tensor([[[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]])
        mu = torch.tensor([0.05, -0.1, 3.0], dtype=torch.float64)
        theta = math.radians(60.0)
        quat = [math.cos(theta / 2), 0.0, math.sin(theta / 2), 0.0]  # about the y axis
        scale = 0.4
        surfel = _single(mu.tolist(), quat, scale, opacity=0.7)
        # one tile covers the image: every pixel meets the surfel, gsplat's screen box truncates nothing
        alphas = rasterization_2dgs(*surfel, viewmats, Ks, W, H, tile_size=32)[1][0, ..., 0].double()
        # independent evaluation: intersect each pixel ray with the plane, express it in (u, v)
        R = quat_to_rotmat(torch.tensor(quat, dtype=torch.float64))
        rays = _pixel_rays(W, H, Ks[0].double())
        t = (R[:, 2] @ mu) / (rays @ R[:, 2])
        rel = t[..., None] * rays - mu
        u, v = rel @ R[:, 0] / scale, rel @ R[:, 1] / scale
        _, means2d, *_ = project_surfels(*surfel[:3], viewmats, Ks, W, H)
        y, x = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        d2 = (x - means2d[0, 0, 0]) ** 2 + (y - means2d[0, 0, 1]) ** 2
        kernel = torch.maximum(torch.exp(-0.5 * (u * u + v * v)), torch.exp(-d2.double()))
        expected = (0.7 * kernel).clamp_max(0.999)
        expected = torch.where(expected >= 1 / 255, expected, torch.zeros_like(expected))
        torch.testing.assert_close(alphas, expected, atol=1e-5, rtol=1e-4)

    @pytest.mark.parametrize("eps2d", [0.3, 0.6])
    def test_low_pass_filter_keeps_a_subpixel_surfel_visible(self, eps2d):
        W = H = 16
        viewmats, Ks = torch.eye(4)[None], torch.tensor([[[20.0, 0, 4.0], [0, 20.0, 4.0], [0, 0, 1]]])
        surfel = _single([0.0, 0.0, 2.0], [1.0, 0.0, 0.0, 0.0], 1e-3, opacity=0.8)  # 0.01 px wide
        alphas = rasterization_2dgs(*surfel, viewmats, Ks, W, H, eps2d=eps2d)[1][0, ..., 0]
        y, x = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        d2 = (x - 4.0) ** 2 + (y - 4.0) ** 2
        expected = 0.8 * torch.exp(-(0.3 / eps2d) * d2)  # eps2d=0.3: 2DGS's exp(-d^2)
        expected = torch.where(expected >= 1 / 255, expected, torch.zeros_like(expected))
        torch.testing.assert_close(alphas, expected, atol=1e-6, rtol=1e-5)

    @pytest.mark.parametrize("front_opacity,median_is_front", [(0.4, False), (0.7, True)])
    def test_two_surfels_distortion_and_median(self, front_opacity, median_is_front):
        W, H, f, s = 16, 12, 20.0, 3.0
        viewmats, Ks = torch.eye(4)[None], torch.tensor([[[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]])
        z1, z2, o2 = 3.0, 5.0, 0.8
        a, b = _single([0, 0, z1], [1, 0, 0, 0], s, front_opacity), _single([0, 0, z2], [1, 0, 0, 0], s, o2)
        both = [torch.cat([p, q]) for p, q in zip(b, a)]  # given back to front: the sort must fix it
        out = rasterization_2dgs(*both, viewmats, Ks, W, H, render_mode="D", distloss=True)
        r, c = 6, 8  # the pixel centre (8.5, 6.5) is half a pixel off the optical axis in x and y
        g1 = math.exp(-0.5 * 2 * (z1 * 0.5 / f / s) ** 2)
        g2 = math.exp(-0.5 * 2 * (z2 * 0.5 / f / s) ** 2)
        w1 = front_opacity * g1
        w2 = o2 * g2 * (1 - w1)
        assert out[4][0, r, c, 0].item() == pytest.approx(2 * w1 * w2 * (z2 - z1), rel=1e-5)
        assert out[4][0].min() >= 0 and out[4][0].max() > 0
        assert out[5][0, r, c, 0].item() == pytest.approx(z1 if median_is_front else z2)
        assert out[0][0, r, c, 0].item() == pytest.approx(w1 * z1 + w2 * z2, rel=1e-5)
        alone = rasterization_2dgs(*a, viewmats, Ks, W, H, render_mode="D", distloss=True)
        assert alone[4].abs().max() == 0

    def test_compositing_stops_before_transmittance_reaches_1e_4(self):
        W, H, f = 8, 8, 20.0
        viewmats, Ks = torch.eye(4)[None], torch.tensor([[[f, 0, 4.0], [0, f, 4.0], [0, 0, 1]]])
        front = _single([0, 0, 2.0], [1, 0, 0, 0], 100.0, opacity=1.0, color=(1.0, 0.0, 0.0))
        back = _single([0, 0, 3.0], [1, 0, 0, 0], 100.0, opacity=1.0, color=(0.0, 1.0, 0.0))
        both = [torch.cat([p, q]) for p, q in zip(front, back)]
        colors, alphas, *_ = rasterization_2dgs(*both, viewmats, Ks, W, H)
        # the front surfel is clamped to alpha 0.999 (T = 1e-3); the back one would take T to 1e-6 <= 1e-4
        torch.testing.assert_close(alphas, torch.full_like(alphas, 0.999))
        assert (colors[..., 1] == 0).all()
        dense = rasterization_2dgs_reference(*both, viewmats, Ks, W, H)
        torch.testing.assert_close(dense[0], colors)

    def test_gradient_2dgs_is_the_screen_space_gradient(self):
        W, H, f, z = 32, 32, 40.0, 4.0
        viewmats, Ks = torch.eye(4)[None], torch.tensor([[[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]])
        surfel = _single([0.1, -0.05, z], [1, 0, 0, 0], 0.3, opacity=0.8)  # sigma 3 px, centre (17, 15.5)
        means = surfel[0].requires_grad_()
        _, alphas, *_, meta = rasterization_2dgs(means, *surfel[1:], viewmats, Ks, W, H)
        xs = torch.arange(W, dtype=torch.float32) + 0.5
        (alphas[0, ..., 0] * xs).sum().backward()
        g = meta["gradient_2dgs"].grad[0, 0]
        # moving the footprint right by one pixel moves every alpha one pixel: d/dx = sum(alpha), less
        # about 2.5% here for the rim where alpha drops from 1/255 to 0 (a jump, no gradient)
        assert g[0].item() == pytest.approx(alphas.sum().item(), rel=0.04)
        assert abs(g[1].item()) < 1e-3 * abs(g[0].item())
        # and it is the gradient of the surfel centre in pixels (the screen filter is negligible here)
        assert g[0].item() == pytest.approx(means.grad[0, 0].item() * z / f, rel=1e-3)
        untracked = _single([0.1, -0.05, z], [1, 0, 0, 0], 0.3)  # no input requires grad: nothing to track
        assert not rasterization_2dgs(*untracked, viewmats, Ks, W, H)[6]["gradient_2dgs"].requires_grad

    def test_float64_gradcheck(self):
        args, W, H = _scene(N=3, C=1, W=8, H=6, seed=2, dtype=torch.float64)
        args[5], args[6] = args[5].double(), args[6].double()
        args[0] = args[0] * 0.3
        gen = torch.Generator().manual_seed(7)
        weights = None

        def fn(means, quats, scales, opacities, colors):
            nonlocal weights
            out = rasterization_2dgs(means, quats, scales, opacities, colors, args[5], args[6], W, H,
                                     render_mode="RGB+ED", distloss=True, surfel_depth="intersection")[:6]
            if weights is None:
                weights = _weights_like(out, gen)
            return torch.stack([(o * w).sum() for o, w in zip(out, weights)])

        inputs = tuple(a.clone().requires_grad_() for a in args[:5])
        assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4)


class TestVisual:
    def test_red_surfel_lands_on_its_pixel(self, tmp_path):
        W, H, f = 32, 24, 24.0
        viewmats, Ks = torch.eye(4)[None], torch.tensor([[[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]])
        col, row, z = 9, 17, 3.0  # target pixel centre (9.5, 17.5)
        mean = [(col + 0.5 - W / 2) * z / f, (row + 0.5 - H / 2) * z / f, z]
        surfel = _single(mean, [1, 0, 0, 0], 0.25, opacity=0.95, color=(1.0, 0.0, 0.0))
        colors = rasterization_2dgs(*surfel, viewmats, Ks, W, H, backgrounds=torch.ones(1, 3))[0][0]
        path = tmp_path / "red_surfel.png"
        iio.imwrite(path, (colors.clamp(0, 1) * 255).round().to(torch.uint8).numpy())
        img = iio.imread(path).astype(np.float64) / 255
        assert img.shape == (H, W, 3)
        redness = img[..., 0] - img[..., 1]
        assert np.unravel_index(redness.argmax(), redness.shape) == (row, col)
        assert img[row, col, 0] > 0.95 and img[row, col, 1] < 0.1 and img[row, col, 2] < 0.1
        ys, xs = np.mgrid[:H, :W]
        assert (redness * xs).sum() / redness.sum() == pytest.approx(col, abs=0.05)
        assert (redness * ys).sum() / redness.sum() == pytest.approx(row, abs=0.05)
        assert (img[:3, :3] == 1).all() and (img[:, -3:] == 1).all()  # far from it: white background
        assert 5 < (redness > 0.5).sum() < 40  # about pi * (24 * 0.25 / 3 * 1.2)^2 pixels


def _gsplat_or_skip():
    if not torch.cuda.is_available():
        pytest.skip("parity with gsplat needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    try:
        import gsplat  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"gsplat does not import here: {exc}")


class TestGsplatParity:
    @pytest.mark.parametrize("render_mode,depth_mode", [("RGB", "expected"), ("RGB+ED", "median"), ("D", "expected")])
    def test_forward_and_gradients_match_gsplat(self, render_mode, depth_mode):
        _gsplat_or_skip()
        args, W, H = _scene(N=200, C=2, W=64, H=48)
        args = [a.cuda() for a in args]
        bg = None if render_mode == "D" else torch.tensor([[0.1, 0.2, 0.3], [1.0, 1.0, 1.0]], device="cuda")
        kw = dict(render_mode=render_mode, depth_mode=depth_mode, distloss=True, backgrounds=bg, tile_size=16)
        results = {}
        for backend in ("cuda", "torch"):
            params = [a.clone().requires_grad_() for a in args[:5]]
            out = rasterization_2dgs(*params, *args[5:], W, H, backend=backend, **kw)
            assert out[6]["backend"] == backend
            outs = list(out[:6])
            weights = _weights_like([o.cpu() for o in outs], torch.Generator().manual_seed(11))
            weights = [w.cuda() for w in weights]
            weights[5] = torch.zeros_like(weights[5])  # the median's gradient flows through one surfel only
            grads = torch.autograd.grad(_loss(outs, weights), params)
            results[backend] = ([o.detach() for o in outs], grads)
        (out_c, g_c), (out_t, g_t) = results["cuda"], results["torch"]
        for name, a, b in zip(OUT_NAMES, out_c, out_t):
            if name == "median":  # a pixel whose transmittance sits at 0.5 may pick a neighbour
                assert (a - b).abs().gt(1e-3).float().mean() < 0.01, name
                continue
            if name == "normals_from_depth":  # finite differences of depth amplify float32 noise
                assert (a - b).abs().gt(1e-2).float().mean() < 0.01, name
                continue
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")
        for name, a, b in zip(("means", "quats", "scales", "opacities", "colors"), g_c, g_t):
            torch.testing.assert_close(a, b, atol=1e-3 * b.abs().max(), rtol=1e-2, msg=lambda m, n=name: f"{n}: {m}")
