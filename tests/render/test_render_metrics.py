"""Tests for render/metrics.py: PSNR, SSIM, MS-SSIM against independent float64 references, LPIPS plumbing."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import scipy.ndimage
import scipy.signal
import torch

from scenezip.errors import ScenezipError
from scenezip.render import metrics as M


def _rand(gen, *shape, dtype=torch.float32):
    return torch.rand(*shape, generator=gen, dtype=torch.float64).to(dtype)


def _noisy(x, gen, sigma):
    return (x + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype)).clamp(0, 1)


# ---------------------------------------------------------------------------------------------------
# PSNR


class TestPsnr:
    def test_identical_is_inf(self, gen):
        x = _rand(gen, 8, 9, 3)
        assert math.isinf(M.psnr(x, x).item()) and M.psnr(x, x).item() > 0

    def test_constant_offset(self, gen):
        x = _rand(gen, 10, 12, 3) * 0.8
        assert M.psnr(x + 0.1, x).item() == pytest.approx(20.0, abs=1e-4)
        assert M.psnr(x + 0.01, x).item() == pytest.approx(40.0, abs=1e-3)

    def test_mean_over_channels(self, gen):
        x = torch.zeros(4, 4, 3)
        y = x.clone()
        y[..., 0] = 0.3  # mse = 0.09 / 3 = 0.03
        assert M.psnr(y, x).item() == pytest.approx(-10 * math.log10(0.03), abs=1e-4)

    @pytest.mark.parametrize("batch", [(), (2,), (1, 2)])
    def test_batch_shapes(self, gen, batch):
        x = _rand(gen, *batch, 8, 7, 3)
        y = _rand(gen, *batch, 8, 7, 3)
        out = M.psnr(x, y)
        assert out.shape == batch
        flat_x, flat_y = x.reshape(-1, 8, 7, 3), y.reshape(-1, 8, 7, 3)
        for i, v in enumerate(out.reshape(-1)):
            assert v.item() == pytest.approx(M.psnr(flat_x[i], flat_y[i]).item(), rel=1e-6)

    def test_exceptions(self, gen):
        x = _rand(gen, 8, 8, 3)
        with pytest.raises(ValueError, match="img must have shape"):
            M.psnr(x[..., :2], x[..., :2])
        with pytest.raises(ValueError, match="same shape"):
            M.psnr(x, x[:4])
        with pytest.raises(ValueError, match="floating-point"):
            M.psnr((x * 255).to(torch.uint8), (x * 255).to(torch.uint8))
        with pytest.raises(ValueError, match="img must have shape"):
            M.psnr(x[0], x[0])


# ---------------------------------------------------------------------------------------------------
# SSIM


def _ssim_reference(x: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Straightforward float64 SSIM: scipy Gaussian filter, sigma 1.5, radius 5 (11 taps), zero padding."""
    def blur(a):
        return scipy.ndimage.gaussian_filter(a, sigma=1.5, truncate=5 / 1.5, mode="constant", cval=0.0)

    maps = []
    for c in range(3):
        a, b = x[..., c], y[..., c]
        mu_a, mu_b = blur(a), blur(b)
        va = blur(a * a) - mu_a**2
        vb = blur(b * b) - mu_b**2
        cov = blur(a * b) - mu_a * mu_b
        c1, c2 = 0.01**2, 0.03**2
        maps.append(((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (va + vb + c2)))
    m = np.stack(maps, axis=-1)
    return float(m.mean()), m


class TestSsim:
    def test_identical_is_one(self, gen):
        x = _rand(gen, 20, 17, 3)
        assert M.ssim(x, x).item() == pytest.approx(1.0, abs=1e-6)

    def test_decreases_with_noise(self, gen):
        x = _rand(gen, 32, 32, 3)
        noise = torch.randn(x.shape, generator=gen)
        vals = [M.ssim((x + s * noise).clamp(0, 1), x).item() for s in (0.0, 0.02, 0.05, 0.1, 0.3)]
        assert all(a > b for a, b in zip(vals, vals[1:])), vals

    def test_matches_scipy_reference(self, device):
        # smooth-ish images so that the local statistics, not just noise, drive the value
        base = scipy.ndimage.gaussian_filter(np.random.default_rng(1).random((37, 29, 3)), (2, 2, 0))
        x = np.clip(base, 0, 1)
        y = np.clip(x + 0.05 * np.random.default_rng(2).standard_normal(x.shape), 0, 1)
        ref_val, ref_map = _ssim_reference(x, y)
        tx, ty = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        torch.testing.assert_close(M.ssim_map(tx, ty).cpu(), torch.from_numpy(ref_map), rtol=1e-9, atol=1e-9)
        assert M.ssim(tx, ty).item() == pytest.approx(ref_val, abs=1e-10)
        # float32 inputs agree to float32 precision
        assert M.ssim(tx.float(), ty.float()).item() == pytest.approx(ref_val, abs=2e-5)
        # the window has the 3DGS weights: exp(-d^2 / 4.5), normalized, 11 taps
        w = M.gaussian_window(dtype=torch.float64)
        d = torch.arange(11, dtype=torch.float64) - 5
        torch.testing.assert_close(w, torch.exp(-(d**2) / 4.5) / torch.exp(-(d**2) / 4.5).sum())

    def test_matches_2d_conv_formulation(self, gen):
        # 3DGS filters with one 11x11 conv2d (padding 5, groups=3); our separable filter must equal it
        x, y = _rand(gen, 1, 3, 23, 19, dtype=torch.float64), _rand(gen, 1, 3, 23, 19, dtype=torch.float64)
        g = M.gaussian_window(dtype=torch.float64)
        win = (g[:, None] @ g[None, :]).expand(3, 1, 11, 11)

        def conv(a):
            return torch.nn.functional.conv2d(a, win, padding=5, groups=3)

        mu1, mu2 = conv(x), conv(y)
        s1, s2, s12 = conv(x * x) - mu1**2, conv(y * y) - mu2**2, conv(x * y) - mu1 * mu2
        m = ((2 * mu1 * mu2 + 1e-4) * (2 * s12 + 9e-4)) / ((mu1**2 + mu2**2 + 1e-4) * (s1 + s2 + 9e-4))
        ours = M.ssim(x[0].permute(1, 2, 0), y[0].permute(1, 2, 0))
        assert ours.item() == pytest.approx(m.mean().item(), abs=1e-12)

    @pytest.mark.parametrize("batch", [(), (2,), (1, 2)])
    def test_batch_shapes(self, gen, batch):
        x = _rand(gen, *batch, 16, 13, 3)
        y = _rand(gen, *batch, 16, 13, 3)
        out = M.ssim(x, y)
        assert out.shape == batch
        assert M.ssim_map(x, y).shape == x.shape
        flat_x, flat_y = x.reshape(-1, 16, 13, 3), y.reshape(-1, 16, 13, 3)
        for i, v in enumerate(out.reshape(-1)):
            assert v.item() == pytest.approx(M.ssim(flat_x[i], flat_y[i]).item(), abs=1e-6)

    def test_gradients(self, gen):
        x = _rand(gen, 2, 12, 10, 3).requires_grad_(True)
        y = _rand(gen, 2, 12, 10, 3)
        (1 - M.ssim(x, y)).sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
        # at the optimum the gradient vanishes
        z = y.clone().requires_grad_(True)
        M.ssim(z, y).sum().backward()
        assert z.grad.abs().max() < 1e-4

    def test_gradcheck(self, gen):
        x = _rand(gen, 7, 6, 3, dtype=torch.float64).requires_grad_(True)
        y = _rand(gen, 7, 6, 3, dtype=torch.float64)
        assert torch.autograd.gradcheck(lambda a: M.ssim(a, y), (x,), fast_mode=True)

    def test_exceptions(self, gen):
        x = _rand(gen, 8, 8, 3)
        with pytest.raises(ValueError, match="same shape"):
            M.ssim(x, x[:, :7])
        with pytest.raises(ValueError, match="ref must have shape"):
            M.ssim(x, x[..., :2])
        with pytest.raises(ValueError, match="dtype and device"):
            M.ssim(x, x.double())


# ---------------------------------------------------------------------------------------------------
# MS-SSIM


def _ms_ssim_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Wang et al. 2003 as pytorch_msssim computes it, derived here in float64 numpy/scipy.

    Per channel c and scale j: valid 11x11 Gaussian filtering (sigma 1.5); cs_j = mean of
    (2 cov + C2) / (var_x + var_y + C2); at the last scale s_5 = mean of luminance * cs; between scales
    2x2 block means after zero-padding odd dimensions by 1 on both sides.
    MS-SSIM = mean_c prod_j max(cs_j, 0)^w_j (j < 5) * max(s_5, 0)^w_5.
    """
    weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333]
    d = np.arange(11) - 5
    g = np.exp(-(d**2) / (2 * 1.5**2))
    g /= g.sum()
    win = np.outer(g, g)

    def filt(a):
        return scipy.signal.correlate2d(a, win, mode="valid")

    def down(a):
        ph, pw = a.shape[0] % 2, a.shape[1] % 2
        a = np.pad(a, ((ph, ph), (pw, pw)))
        h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
        a = a[:h, :w]
        return a.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))

    per_channel = []
    for c in range(3):
        a, b = x[..., c], y[..., c]
        val = 1.0
        for j, wj in enumerate(weights):
            mu_a, mu_b = filt(a), filt(b)
            va, vb = filt(a * a) - mu_a**2, filt(b * b) - mu_b**2
            cov = filt(a * b) - mu_a * mu_b
            cs = (2 * cov + 0.03**2) / (va + vb + 0.03**2)
            if j < 4:
                val *= max(cs.mean(), 0.0) ** wj
                a, b = down(a), down(b)
            else:
                lum = (2 * mu_a * mu_b + 0.01**2) / (mu_a**2 + mu_b**2 + 0.01**2)
                val *= max((lum * cs).mean(), 0.0) ** wj
        per_channel.append(val)
    return float(np.mean(per_channel))


class TestMsSsim:
    def test_identical_is_one(self, gen):
        x = _rand(gen, 161, 170, 3)
        assert M.ms_ssim(x, x).item() == pytest.approx(1.0, abs=1e-5)

    def test_monotone_in_noise(self, gen):
        x = torch.from_numpy(
            scipy.ndimage.gaussian_filter(np.random.default_rng(3).random((176, 176, 3)), (3, 3, 0))
        ).float()
        noise = torch.randn(x.shape, generator=gen)
        vals = [M.ms_ssim((x + s * noise).clamp(0, 1), x).item() for s in (0.0, 0.01, 0.03, 0.1)]
        assert all(a > b for a, b in zip(vals, vals[1:])), vals

    @pytest.mark.parametrize("size", [(176, 176), (173, 181)])  # even and odd sides at every scale
    def test_matches_reference_formula(self, size):
        rng = np.random.default_rng(4)
        x = scipy.ndimage.gaussian_filter(rng.random((*size, 3)), (2, 2, 0))
        y = np.clip(x + 0.04 * rng.standard_normal(x.shape), 0, 1)
        ref = _ms_ssim_reference(x, y)
        ours = M.ms_ssim(torch.from_numpy(x), torch.from_numpy(y)).item()
        assert ours == pytest.approx(ref, abs=1e-10)
        assert M.ms_ssim(torch.from_numpy(x).float(), torch.from_numpy(y).float()).item() == pytest.approx(
            ref, abs=1e-4
        )

    @pytest.mark.parametrize("batch", [(), (2,), (1, 2)])
    def test_batch_shapes(self, gen, batch):
        x = _rand(gen, *batch, 161, 161, 3)
        y = (x + 0.05).clamp(0, 1)
        out = M.ms_ssim(x, y)
        assert out.shape == batch
        assert M.ms_ssim(x.reshape(-1, 161, 161, 3)[-1], y.reshape(-1, 161, 161, 3)[-1]).item() == pytest.approx(
            out.reshape(-1)[-1].item(), abs=1e-6
        )

    def test_too_small(self, gen):
        x = _rand(gen, 160, 200, 3)
        with pytest.raises(ValueError, match="at least 161x161"):
            M.ms_ssim(x, x)


# ---------------------------------------------------------------------------------------------------
# LPIPS


def _random_vgg_state(gen) -> dict:
    """Random weights in torchvision's vgg16 state-dict layout (features.* plus a token classifier key)."""
    sd = {}
    for convs in M.VGG16_STAGES:
        for idx, cin, cout in convs:
            sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * math.sqrt(2.0 / (9 * cin))
            sd[f"features.{idx}.bias"] = 0.01 * torch.randn(cout, generator=gen)
    sd["classifier.6.bias"] = torch.zeros(1000)  # unrelated keys in the file are ignored
    return sd


def _random_lin_state(gen) -> dict:
    return {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1, generator=gen) for k, c in enumerate(M.LPIPS_CHANNELS)}


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    gen = torch.Generator().manual_seed(7)
    folder = tmp_path_factory.mktemp("lpips")
    vgg, lin = _random_vgg_state(gen), _random_lin_state(gen)
    torch.save(vgg, folder / "vgg16.pth")
    torch.save(lin, folder / "lin.pth")
    return folder / "vgg16.pth", folder / "lin.pth", vgg, lin


@pytest.fixture
def use_weights(monkeypatch, weight_files):
    vgg_path, lin_path, vgg, lin = weight_files
    monkeypatch.setenv(M.LPIPS_ENV_VGG, str(vgg_path))
    monkeypatch.setenv(M.LPIPS_ENV_LIN, str(lin_path))
    return vgg, lin


def _lpips_reference(x, y, vgg_sd, lin_sd):
    """LPIPS written independently: torchvision's VGG16 `features` Sequential, loaded by key, sliced at 4/9/16/23/30."""
    layers, cin = [], 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]:
        if v == "M":
            layers.append(torch.nn.MaxPool2d(2, 2))
        else:
            layers += [torch.nn.Conv2d(cin, v, 3, padding=1), torch.nn.ReLU()]
            cin = v
    feats = torch.nn.Sequential(*layers)
    feats.load_state_dict({k[len("features."):]: t for k, t in vgg_sd.items() if k.startswith("features.")})
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(img):
        h = ((img.permute(2, 0, 1)[None] * 2 - 1) - shift) / scale
        out, start = [], 0
        for end in (4, 9, 16, 23, 30):
            h = feats[start:end](h)
            out.append(h)
            start = end
        return out

    total = 0.0
    for k, (a, b) in enumerate(zip(taps(x), taps(y))):
        na = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        nb = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        total = total + ((na - nb) ** 2 * lin_sd[f"lin{k}.model.1.weight"]).sum(dim=1).mean()
    return total


class TestLpips:
    def test_unavailable_when_files_missing(self, monkeypatch, tmp_path, gen):
        monkeypatch.setenv(M.LPIPS_ENV_VGG, str(tmp_path / "missing_vgg.pth"))
        monkeypatch.setenv(M.LPIPS_ENV_LIN, str(tmp_path / "missing_lin.pth"))
        ok, reason = M.lpips_available()
        assert not ok and "missing_vgg.pth" in reason
        x = _rand(gen, 32, 32, 3)
        with pytest.raises(M.LpipsUnavailableError, match="missing_vgg.pth"):
            M.lpips(x, x)
        assert issubclass(M.LpipsUnavailableError, ScenezipError)
        out = M.image_metrics(x, x)
        assert out["lpips"] is None and "missing_vgg.pth" in out["lpips_note"]
        assert math.isinf(out["psnr"]) and out["ssim"] == pytest.approx(1.0, abs=1e-6)

    def test_unavailable_names_missing_heads(self, monkeypatch, tmp_path, weight_files):
        monkeypatch.setenv(M.LPIPS_ENV_VGG, str(weight_files[0]))
        monkeypatch.setenv(M.LPIPS_ENV_LIN, str(tmp_path / "nope_lin.pth"))
        ok, reason = M.lpips_available()
        assert not ok and "nope_lin.pth" in reason and M.LPIPS_ENV_LIN in reason

    def test_default_locations(self, monkeypatch, tmp_path, weight_files):
        # no env vars: VGG from torch hub's checkpoints dir, heads from an installed `lpips` package
        monkeypatch.delenv(M.LPIPS_ENV_VGG, raising=False)
        monkeypatch.delenv(M.LPIPS_ENV_LIN, raising=False)
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
        monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)
        ok, reason = M.lpips_available()
        assert not ok and str(tmp_path / "torch_home") in reason
        ckpt = tmp_path / "torch_home" / "hub" / "checkpoints"
        ckpt.mkdir(parents=True)
        (ckpt / M.VGG16_HUB_FILENAME).write_bytes(weight_files[0].read_bytes())
        pkg = tmp_path / "site" / "lpips"
        (pkg / "weights" / "v0.1").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
        (pkg / "weights" / "v0.1" / "vgg.pth").write_bytes(weight_files[1].read_bytes())
        monkeypatch.syspath_prepend(str(tmp_path / "site"))
        monkeypatch.delitem(sys.modules, "lpips", raising=False)
        ok, reason = M.lpips_available()
        assert ok, reason
        assert M.VGG16_HUB_FILENAME in reason and str(pkg / "weights" / "v0.1" / "vgg.pth") in reason

    def test_values(self, use_weights, gen, device):
        vgg, lin = use_weights
        x = _rand(gen, 32, 40, 3)
        y = _rand(gen, 32, 40, 3)
        ok, where = M.lpips_available()
        assert ok, where
        xd, yd = x.to(device), y.to(device)
        d_xx, d_xy, d_yx = M.lpips(xd, xd), M.lpips(xd, yd), M.lpips(yd, xd)
        assert d_xx.item() == 0.0
        assert d_xy.item() > 0
        assert d_xy.item() == pytest.approx(d_yx.item(), rel=1e-5)
        with torch.no_grad():
            ref = _lpips_reference(x, y, vgg, lin)
        assert d_xy.item() == pytest.approx(ref.item(), rel=1e-4)
        # a closer image is closer
        assert M.lpips(_noisy(x, gen, 0.02), x).item() < M.lpips(_noisy(x, gen, 0.2), x).item()
        out = M.image_metrics(y, x)
        assert out["lpips"] == pytest.approx(d_yx.item(), rel=1e-5) and "scaling=lpips" in out["lpips_note"]

    def test_3dgs_scaling_differs(self, use_weights, gen):
        x, y = _rand(gen, 16, 16, 3), _rand(gen, 16, 16, 3)
        vgg, lin = use_weights
        a = M.lpips(x, y, scaling="3dgs")
        # the 3DGS script feeds [0, 1] images where LPIPS expects [-1, 1]: same as mapping (x + 1) / 2 first
        b = M.lpips((x + 1) / 2, (y + 1) / 2)
        assert a.item() == pytest.approx(b.item(), rel=1e-5)
        assert a.item() != pytest.approx(M.lpips(x, y).item(), rel=1e-3)

    @pytest.mark.parametrize("batch", [(), (2,), (1, 2)])
    def test_batch_shapes(self, use_weights, gen, batch):
        x, y = _rand(gen, *batch, 16, 24, 3), _rand(gen, *batch, 16, 24, 3)
        out = M.lpips(x, y)
        assert out.shape == batch
        last = M.lpips(x.reshape(-1, 16, 24, 3)[-1], y.reshape(-1, 16, 24, 3)[-1])
        assert out.reshape(-1)[-1].item() == pytest.approx(last.item(), rel=1e-5)

    def test_gradients(self, use_weights, gen):
        x = _rand(gen, 16, 16, 3).requires_grad_(True)
        M.lpips(x, _rand(gen, 16, 16, 3)).backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0

    def test_rejects_malformed_files(self, monkeypatch, tmp_path, weight_files, gen):
        vgg_path, lin_path, vgg, lin = weight_files
        monkeypatch.setenv(M.LPIPS_ENV_LIN, str(lin_path))
        x = _rand(gen, 16, 16, 3)
        bad_shape = dict(vgg)
        bad_shape["features.0.weight"] = torch.zeros(64, 3, 5, 5)
        torch.save(bad_shape, tmp_path / "bad_shape.pth")
        monkeypatch.setenv(M.LPIPS_ENV_VGG, str(tmp_path / "bad_shape.pth"))
        with pytest.raises(M.LpipsUnavailableError, match=r"bad_shape\.pth.*'features\.0\.weight' has shape"):
            M.lpips(x, x)
        missing = {k: v for k, v in vgg.items() if k != "features.28.bias"}
        torch.save(missing, tmp_path / "missing_key.pth")
        monkeypatch.setenv(M.LPIPS_ENV_VGG, str(tmp_path / "missing_key.pth"))
        ok, reason = M.lpips_available()
        assert not ok and "missing key 'features.28.bias'" in reason
        (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
        monkeypatch.setenv(M.LPIPS_ENV_VGG, str(tmp_path / "garbage.pth"))
        with pytest.raises(M.LpipsUnavailableError, match=r"garbage\.pth: cannot read"):
            M.lpips(x, x)
        # heads in the wrong layout (e.g. a module without the Dropout at index 0)
        monkeypatch.setenv(M.LPIPS_ENV_VGG, str(vgg_path))
        torch.save({k.replace("model.1", "model.0"): v for k, v in lin.items()}, tmp_path / "lin0.pth")
        monkeypatch.setenv(M.LPIPS_ENV_LIN, str(tmp_path / "lin0.pth"))
        with pytest.raises(M.LpipsUnavailableError, match="missing key 'lin0.model.1.weight'"):
            M.lpips(x, x)

    def test_exceptions(self, use_weights, gen):
        x = _rand(gen, 15, 32, 3)
        with pytest.raises(ValueError, match="at least 16x16"):
            M.lpips(x, x)
        out = M.image_metrics(x, x)  # eval reports it instead of failing
        assert out["lpips"] is None and "16x16" in out["lpips_note"] and math.isinf(out["psnr"])
        with pytest.raises(ValueError, match="net must be 'vgg'"):
            M.lpips(x, x, net="alex")
        y = _rand(gen, 16, 16, 3)
        with pytest.raises(ValueError, match="scaling must be"):
            M.lpips(y, y, scaling="tf")
