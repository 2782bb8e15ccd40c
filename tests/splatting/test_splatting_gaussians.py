"""GaussianModel: 3DGS initialization from points, rendering through the rasterizer, save/load."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scenezip.errors import SceneFileError
from scenezip.render.sh import sh0_to_rgb
from scenezip.splatting.gaussians import GaussianModel, knn_mean_distance


def _points(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pts = rng.uniform(-0.5, 0.5, size=(n, 3)).astype(np.float32)
    cols = rng.integers(0, 256, size=(n, 3), dtype=np.uint8)
    return pts, cols


def _camera(width: int = 32, height: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0  # camera at z = -3 looking down +z at the origin
    K = torch.tensor([[30.0, 0.0, width / 2], [0.0, 30.0, height / 2], [0.0, 0.0, 1.0]])
    return viewmat[None], K[None]


class TestFromPoints:
    def test_knn_scale_matches_brute_force(self):
        pts, _ = _points(50)
        d = np.linalg.norm(pts[:, None] - pts[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        nearest3 = np.sort(d, axis=1)[:, :3]
        expected = np.sqrt((nearest3**2).mean(axis=1))
        np.testing.assert_allclose(knn_mean_distance(pts), expected, rtol=1e-5)

    def test_grid_spacing_gives_log_spacing_scales(self):
        g = np.arange(5, dtype=np.float32) * 0.1
        pts = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
        m = GaussianModel.from_points(pts, np.zeros_like(pts, dtype=np.uint8), sh_degree=0, init_scale=2.0)
        interior = np.all((pts > 0.05) & (pts < 0.35), axis=1)
        torch.testing.assert_close(
            m.scales[torch.from_numpy(interior)], torch.full((int(interior.sum()), 3), math.log(0.2))
        )

    def test_initial_values(self):
        pts, cols = _points()
        m = GaussianModel.from_points(pts, cols, sh_degree=3, init_opacity=0.1)
        assert len(m) == 64 and m.sh_degree == 3
        assert m.shN.shape == (64, 15, 3) and torch.all(m.shN == 0)
        torch.testing.assert_close(torch.sigmoid(m.opacities), torch.full((64,), 0.1))
        torch.testing.assert_close(m.quats, torch.tensor([1.0, 0, 0, 0]).expand(64, 4))
        torch.testing.assert_close(sh0_to_rgb(m.sh0[:, 0]), torch.from_numpy(cols).float() / 255.0)
        assert torch.equal(m.means, torch.from_numpy(pts))
        assert all(p.dtype == torch.float32 and p.requires_grad for p in m.parameters())

    def test_float_colours_and_errors(self):
        pts, _ = _points(8)
        m = GaussianModel.from_points(pts, np.full((8, 3), 0.25), sh_degree=1)
        torch.testing.assert_close(sh0_to_rgb(m.sh0), torch.full((8, 1, 3), 0.25))
        with pytest.raises(ValueError, match="points must have shape"):
            GaussianModel.from_points(pts[:, :2], np.zeros((8, 2)))
        with pytest.raises(ValueError, match="colors must have shape"):
            GaussianModel.from_points(pts, np.zeros((7, 3)))
        with pytest.raises(ValueError, match="sh_degree"):
            GaussianModel.from_points(pts, np.zeros((8, 3)), sh_degree=4)
        with pytest.raises(ValueError, match="init_opacity"):
            GaussianModel.from_points(pts, np.zeros((8, 3)), init_opacity=1.0)

    def test_constructor_checks_shapes(self):
        n = 4
        shapes = [(n, 3), (n, 4), (n, 3), (n,), (n, 1, 3), (n, 2, 3)]
        args = [torch.zeros(s) for s in shapes]
        with pytest.raises(ValueError, match="must be 1, 4, 9 or 16"):
            GaussianModel(*args)
        args[5] = torch.zeros(n, 3, 3)
        args[3] = torch.zeros(n, 1)
        with pytest.raises(ValueError, match="opacities must have shape"):
            GaussianModel(*args)


class TestRender:
    def test_render_shapes_and_gradients(self):
        pts, cols = _points()
        m = GaussianModel.from_points(pts * 0.5, cols, sh_degree=1)
        with torch.no_grad():  # anisotropic, so rotations matter
            m.scales[:, 0] += 0.7
        vm, K = _camera()
        colors, alphas, meta = m.render(vm, K, 32, 24, sh_degree=1, backgrounds=torch.ones(1, 3), backend="torch")
        assert colors.shape == (1, 24, 32, 3) and alphas.shape == (1, 24, 32, 1)
        assert meta["means2d"].shape == (1, 64, 2)
        assert float(alphas.detach().max()) > 0.5  # the points are in view
        colors.mean().backward()
        for name in ("means", "quats", "scales", "opacities", "sh0", "shN"):
            assert m.splats[name].grad is not None and m.splats[name].grad.abs().sum() > 0, name

    def test_sh_degree_bound(self):
        pts, cols = _points(8)
        m = GaussianModel.from_points(pts, cols, sh_degree=1)
        vm, K = _camera()
        with pytest.raises(ValueError, match="sh_degree must be in 0..1"):
            m.render(vm, K, 32, 24, sh_degree=2)


class TestSaveLoad:
    def _trained_like(self) -> GaussianModel:
        pts, cols = _points()
        m = GaussianModel.from_points(pts, cols, sh_degree=2)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(1)) * 0.01)
        return m

    def test_round_trip(self, tmp_path):
        m = self._trained_like()
        path = m.save(tmp_path / "sub" / "g.pt")
        back = GaussianModel.load(path)
        assert back.sh_degree == 2 and len(back) == 64
        for k in m.splats:
            assert torch.equal(back.splats[k], m.splats[k]), k
        vm, K = _camera()
        a = m.render(vm, K, 32, 24, backend="torch")[0]
        b = back.render(vm, K, 32, 24, backend="torch")[0]
        assert torch.equal(a, b)
        assert not list(tmp_path.glob("**/*.tmp"))

    def test_load_state_dict_resizes(self):
        m = self._trained_like()
        small = GaussianModel.from_points(*_points(5), sh_degree=2)
        small.load_state_dict(m.state_dict())
        assert len(small) == 64 and torch.equal(small.means, m.means)
        small2 = GaussianModel.from_points(*_points(5), sh_degree=2)
        small2.load_state_dict(m.to_dict())
        assert torch.equal(small2.shN, m.shN)

    def test_bad_files(self, tmp_path):
        with pytest.raises(SceneFileError, match="no such model file"):
            GaussianModel.load(tmp_path / "missing.pt")
        (tmp_path / "junk.pt").write_bytes(b"not a torch file")
        with pytest.raises(SceneFileError, match="cannot read a model"):
            GaussianModel.load(tmp_path / "junk.pt")
        torch.save({"format": "other"}, tmp_path / "other.pt")
        with pytest.raises(SceneFileError, match="not a scenezip 3D Gaussian model"):
            GaussianModel.load(tmp_path / "other.pt")

    def test_gpu_model_loads_on_cpu(self, tmp_path, cuda_device):
        m = self._trained_like().to(cuda_device)
        m.save(tmp_path / "g.pt")
        back = GaussianModel.load(tmp_path / "g.pt", device="cpu")
        assert back.device.type == "cpu"
        assert torch.equal(back.means, m.means.cpu())
