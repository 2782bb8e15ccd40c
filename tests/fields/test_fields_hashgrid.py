"""Hash-grid encoding: the torch path against a slow per-point, per-corner reference written from
tiny-cuda-nn's rules, gradients, parameter counts, continuity, and parity with tinycudann."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from scenezip._backend import tcnn_available
from scenezip.errors import BackendError, ScenezipError
from scenezip.fields.hashgrid import (
    HashGrid,
    HashGridConfig,
    hash_encode,
    level_is_hashed,
    level_offsets,
    level_param_slices,
    level_resolutions,
    n_params,
    resolved_per_level_scale,
    tcnn_encoding_config,
)

PRIMES = (1, 2654435761, 805459861)


# ------------------------------------------------------------------------------------------------
# the obviously-correct reference: explicit integer math, one point and one corner at a time


def expected_levels(cfg: HashGridConfig):
    """(scale, resolution, offset, size) per level by tcnn's documented rule."""
    if cfg.per_level_scale is not None:
        pls = cfg.per_level_scale
    elif cfg.max_resolution is not None:
        pls = math.exp((math.log(cfg.max_resolution) - math.log(cfg.base_resolution)) / (cfg.n_levels - 1))
    else:
        pls = 2.0
    log2_pls = np.log2(np.float32(pls))
    out, offset = [], 0
    for level in range(cfg.n_levels):
        scale = np.float32(np.exp2(np.float32(level) * log2_pls) * np.float32(cfg.base_resolution) - np.float32(1))
        res = int(math.ceil(float(scale))) + 1
        dense = res**cfg.n_input_dims
        if dense > 2**31:
            dense = 2**31 - 1
        size = min((dense + 7) // 8 * 8, 2**cfg.log2_hashmap_size)
        out.append((float(scale), res, offset, size))
        offset += size
    return out


def reference_encode(x: np.ndarray, params: np.ndarray, cfg: HashGridConfig) -> np.ndarray:
    d, f = cfg.n_input_dims, cfg.n_features_per_level
    out = np.zeros((x.shape[0], cfg.n_levels * f))
    for level, (scale, res, offset, size) in enumerate(expected_levels(cfg)):
        for i in range(x.shape[0]):
            pos = [float(np.float32(float(x[i, k]) * scale + 0.5)) for k in range(d)]  # fma, rounded once
            cell = [math.floor(p) for p in pos]
            frac = [p - c for p, c in zip(pos, cell)]
            if cfg.interpolation == "Smoothstep":
                frac = [t * t * (3 - 2 * t) for t in frac]
            corners = [0] if cfg.interpolation == "Nearest" else range(2**d)
            for corner in corners:
                weight, coord = 1.0, []
                for k in range(d):
                    if (corner >> k) & 1:
                        weight *= frac[k]
                        coord.append(cell[k] + 1)
                    else:
                        weight *= 1.0 if cfg.interpolation == "Nearest" else 1.0 - frac[k]
                        coord.append(cell[k])
                if res**d <= size:
                    index = sum(coord[k] * res**k for k in range(d)) % 2**32
                else:
                    index = 0
                    for k in range(d):
                        index ^= (coord[k] * PRIMES[k]) % 2**32
                index %= size
                for j in range(f):
                    out[i, level * f + j] += weight * params[(offset + index) * f + j]
    return out


CONFIGS = {
    # 3D: dense levels (res <= 10) then hashed ones in a 2^10 table
    "3d": HashGridConfig(n_input_dims=3, n_levels=6, n_features_per_level=2, log2_hashmap_size=10,
                         base_resolution=4, per_level_scale=1.6),
    # 2D with per_level_scale derived from max_resolution
    "2d": HashGridConfig(n_input_dims=2, n_levels=5, n_features_per_level=2, log2_hashmap_size=8,
                         base_resolution=6, max_resolution=64),
    # odd feature counts take the generic gather path
    "3d_f1": HashGridConfig(n_input_dims=3, n_levels=4, n_features_per_level=1, log2_hashmap_size=9,
                            base_resolution=3, per_level_scale=2.0),
    "2d_f4_smooth": HashGridConfig(n_input_dims=2, n_levels=4, n_features_per_level=4, log2_hashmap_size=7,
                                   base_resolution=5, per_level_scale=1.9, interpolation="Smoothstep"),
    "3d_nearest": HashGridConfig(n_input_dims=3, n_levels=4, n_features_per_level=2, log2_hashmap_size=9,
                                 base_resolution=5, per_level_scale=1.7, interpolation="Nearest"),
}


def random_points(cfg: HashGridConfig, n: int, gen: torch.Generator) -> torch.Tensor:
    x = torch.rand(n, cfg.n_input_dims, generator=gen)
    x[0] = 0.0  # faces of the unit cube: the top face reads wrapped dense rows in tcnn
    x[1] = 1.0
    x[2, 0] = 1.0
    return x


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_reference(name, device, gen):
    cfg = CONFIGS[name]
    hashed = level_is_hashed(cfg)
    if name in ("3d", "2d"):
        assert any(hashed) and not all(hashed), "fixture must mix dense and hashed levels"
    params = torch.randn(n_params(cfg), generator=gen)
    x = random_points(cfg, 40, gen)
    expected = reference_encode(x.double().numpy(), params.double().numpy(), cfg)
    got = hash_encode(x.to(device), params.to(device), cfg)
    assert got.dtype == torch.float32 and got.shape == (40, cfg.n_output_dims)
    torch.testing.assert_close(got.cpu().double(), torch.from_numpy(expected), rtol=1e-5, atol=1e-5)


def test_hash_indexing_is_exercised(gen):
    """Dense and hashed levels must both read entries a wrong index rule would miss: zeroing every
    entry the reference never touches leaves the output unchanged, and the hashed levels touch
    entries far apart (not a dense row-major walk)."""
    cfg = CONFIGS["3d"]
    params = torch.randn(n_params(cfg), generator=gen)
    x = random_points(cfg, 30, gen)
    out = hash_encode(x, params, cfg)
    # sensitivity: gradient wrt params marks the entries read
    p = params.clone().requires_grad_()
    hash_encode(x, p, cfg).sum().backward()
    touched = p.grad != 0
    masked = torch.where(touched, params, torch.zeros_like(params))
    torch.testing.assert_close(hash_encode(x, masked, cfg), out)
    last = level_param_slices(cfg)[-1]
    used = touched[last].view(-1, 2).any(-1).nonzero().flatten()
    assert used.numel() > 8 and (used.max() - used.min()) > 0.5 * (last.stop - last.start) / 2


@pytest.mark.parametrize("shape", [(), (2,), (1, 2)])
def test_leading_dims(shape, gen):
    cfg = CONFIGS["2d"]
    params = torch.randn(n_params(cfg), generator=gen)
    x = torch.rand(*shape, 5, 2, generator=gen)
    out = hash_encode(x, params, cfg)
    assert out.shape == (*shape, 5, cfg.n_output_dims)
    torch.testing.assert_close(out.reshape(-1, cfg.n_output_dims), hash_encode(x.reshape(-1, 2), params, cfg))


def test_chunking_is_invisible(gen):
    cfg = CONFIGS["3d"]
    params = torch.randn(n_params(cfg), generator=gen)
    x = torch.rand(53, 3, generator=gen, requires_grad=True)
    v = torch.randn(53, cfg.n_output_dims, generator=gen)
    grads = []
    outs = []
    for chunk in (7, 1 << 14):
        p = params.clone().requires_grad_()
        out = hash_encode(x, p, cfg, chunk_size=chunk)
        gx, gp = torch.autograd.grad((out * v).sum(), (x, p))
        outs.append(out)
        grads.append((gx, gp))
    torch.testing.assert_close(outs[0], outs[1])
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])


def test_backward_cache_matches_recompute(gen):
    """Table gradients are the same whether the forward pass kept indices/weights or not."""
    cfg = CONFIGS["2d_f4_smooth"]
    params = torch.randn(n_params(cfg), generator=gen)
    x = torch.rand(37, 2, generator=gen)
    v = torch.randn(37, cfg.n_output_dims, generator=gen)
    grads = []
    for cache_bytes in (0, 1 << 28):
        p = params.clone().requires_grad_()
        (g,) = torch.autograd.grad((hash_encode(x, p, cfg, chunk_size=10, cache_bytes=cache_bytes) * v).sum(), p)
        grads.append(g)
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    assert grads[0].abs().sum() > 0


# ------------------------------------------------------------------------------------------------
# gradients


TINY = HashGridConfig(n_input_dims=3, n_levels=3, n_features_per_level=2, log2_hashmap_size=8,
                      base_resolution=2, per_level_scale=2.0)


@pytest.mark.parametrize("interpolation", ["Linear", "Smoothstep"])
def test_gradcheck_float64(interpolation, gen):
    cfg = dataclasses.replace(TINY, interpolation=interpolation)
    assert level_is_hashed(cfg) == [False, False, True]
    params = torch.randn(n_params(cfg), generator=gen, dtype=torch.float64, requires_grad=True)
    x = (0.05 + 0.9 * torch.rand(6, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda xx, pp: hash_encode(xx, pp, cfg), (x, params), eps=1e-6, atol=1e-6, fast_mode=True
    )


def test_gradcheck_2d_params_only(gen):
    cfg = HashGridConfig(n_input_dims=2, n_levels=3, n_features_per_level=4, log2_hashmap_size=8,
                         base_resolution=4, per_level_scale=3.0)
    params = torch.randn(n_params(cfg), generator=gen, dtype=torch.float64, requires_grad=True)
    x = torch.rand(9, 2, generator=gen, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda pp: hash_encode(x, pp, cfg), (params,), eps=1e-6, atol=1e-6, fast_mode=True)


def test_param_grad_is_the_interpolation_weight(gen):
    """d out / d params is exactly the trilinear weights: each point's weights sum to one per level
    and feature, and gradients are non-zero where the point reads."""
    cfg = CONFIGS["3d"]
    params = torch.randn(n_params(cfg), generator=gen, requires_grad=True)
    x = torch.rand(1, 3, generator=gen)
    out = hash_encode(x, params, cfg)
    for level, sl in enumerate(level_param_slices(cfg)):
        (g,) = torch.autograd.grad(out[0, level * 2], params, retain_graph=True)
        assert g[sl].view(-1, 2)[:, 0].sum().item() == pytest.approx(1.0, abs=1e-5)
        assert g[sl].view(-1, 2)[:, 1].abs().sum().item() == 0.0  # feature 0 reads feature 0 only
        assert (g[sl] != 0).sum() >= 1
        outside = torch.ones_like(g, dtype=torch.bool)
        outside[sl] = False
        assert g[outside].abs().sum().item() == 0.0


def test_input_grad_is_zero_for_nearest(gen):
    cfg = CONFIGS["3d_nearest"]
    params = torch.randn(n_params(cfg), generator=gen)
    x = torch.rand(5, 3, generator=gen, requires_grad=True)
    hash_encode(x, params, cfg).sum().backward()
    assert torch.count_nonzero(x.grad) == 0


# ------------------------------------------------------------------------------------------------
# layout


@pytest.mark.parametrize(
    "cfg",
    [
        HashGridConfig(),
        HashGridConfig(n_input_dims=2, n_levels=8, log2_hashmap_size=15, base_resolution=16, max_resolution=2048),
        HashGridConfig(n_input_dims=3, n_levels=16, n_features_per_level=4, log2_hashmap_size=19,
                       base_resolution=16, max_resolution=4096),
        HashGridConfig(n_input_dims=2, n_levels=1, base_resolution=3),
    ],
)
def test_param_count_matches_rule(cfg):
    levels = expected_levels(cfg)
    total = sum(size for _, _, _, size in levels) * cfg.n_features_per_level
    assert n_params(cfg) == total
    assert level_offsets(cfg) == [o for _, _, o, _ in levels] + [levels[-1][2] + levels[-1][3]]
    assert level_resolutions(cfg) == [r for _, r, _, _ in levels]


def test_param_count_hand_computed():
    # 16^3 + 32^3 entries of 2 floats; one 3x3 2D level rounds 9 entries up to 16
    assert n_params(HashGridConfig(n_levels=2, base_resolution=16, per_level_scale=2.0)) == (4096 + 32768) * 2
    assert n_params(HashGridConfig(n_input_dims=2, n_levels=1, base_resolution=3)) == 16 * 2
    # default instant-ngp grid: 16^3, 32^3, 64^3 dense, then 13 hashed levels of 2^19
    assert n_params(HashGridConfig()) == (16**3 + 32**3 + 64**3 + 13 * 2**19) * 2
    assert level_resolutions(HashGridConfig(max_resolution=2048))[-1] == 2048
    assert resolved_per_level_scale(HashGridConfig(n_levels=1, max_resolution=64)) == 1.0


def test_continuity_across_cell_boundaries(gen):
    """Just below and above a cell face of every level the encoding agrees to first order."""
    cfg = HashGridConfig(n_input_dims=3, n_levels=5, log2_hashmap_size=10, base_resolution=4, per_level_scale=1.7)
    params = torch.randn(n_params(cfg), generator=gen, dtype=torch.float64)
    base = 0.1 + 0.8 * torch.rand(3, generator=gen, dtype=torch.float64)
    eps = 1e-9
    for scale in (lv[0] for lv in expected_levels(cfg)):
        for dim in range(3):
            k = math.floor(base[dim].item() * scale + 0.5) + 1  # next integer position
            p = base.clone()
            p[dim] = (k - 0.5) / scale
            lo, hi = p.clone(), p.clone()
            lo[dim] -= eps
            hi[dim] += eps
            out = hash_encode(torch.stack([lo, hi]), params, cfg)
            assert (out[0] - out[1]).abs().max().item() < 1e-6
    # and the check bites: a step of one cell changes the encoding by O(1)
    out = hash_encode(torch.stack([base, base + 0.05]), params, cfg)
    assert (out[0] - out[1]).abs().max().item() > 1e-2


# ------------------------------------------------------------------------------------------------
# module and errors


def test_module_init_and_state():
    cfg = CONFIGS["3d"]
    grid = HashGrid(cfg, backend="torch", seed=3)
    assert list(grid.state_dict()) == ["params"]
    assert grid.params.shape == (sum(size for *_, size in expected_levels(cfg)) * 2,)
    assert grid.params.dtype == torch.float32
    assert grid.params.abs().max().item() <= 1e-4 and grid.params.std().item() > 3e-5
    torch.testing.assert_close(grid.params, HashGrid(cfg, backend="torch", seed=3).params)
    assert not torch.equal(grid.params, HashGrid(cfg, backend="torch", seed=4).params)
    table = grid.level_table(2)
    assert table.shape == (expected_levels(cfg)[2][3], 2)
    with torch.no_grad():
        table[0, 1] = 5.0
    assert grid.params[level_offsets(cfg)[2] * 2 + 1].item() == 5.0
    out = grid(torch.rand(4, 3))
    assert out.shape == (4, cfg.n_output_dims) and out.dtype == torch.float32


def test_tcnn_config_dict():
    cfg = HashGridConfig(max_resolution=2048)
    d = tcnn_encoding_config(cfg)
    assert d["otype"] == "HashGrid" and d["n_levels"] == 16 and d["hash"] == "CoherentPrime"
    assert d["per_level_scale"] == pytest.approx(math.exp(math.log(2048 / 16) / 15))


def test_exceptions():
    cfg = CONFIGS["3d"]
    params = torch.zeros(n_params(cfg))
    with pytest.raises(ValueError, match="x must have shape"):
        hash_encode(torch.rand(4, 2), params, cfg)
    with pytest.raises(ValueError, match="floating-point"):
        hash_encode(torch.zeros(4, 3, dtype=torch.int64), params, cfg)
    with pytest.raises(ValueError, match="params must have shape"):
        hash_encode(torch.rand(4, 3), params[:-1], cfg)
    with pytest.raises(ValueError, match="chunk_size"):
        hash_encode(torch.rand(4, 3), params, cfg, chunk_size=0)
    with pytest.raises(ScenezipError, match="n_input_dims"):
        HashGridConfig(n_input_dims=4)
    with pytest.raises(ScenezipError, match="n_features_per_level"):
        HashGridConfig(n_features_per_level=3)
    with pytest.raises(ScenezipError, match="interpolation"):
        HashGridConfig(interpolation="Cubic")
    with pytest.raises(ScenezipError, match="max_resolution"):
        HashGridConfig(base_resolution=16, max_resolution=8)
    with pytest.raises(ScenezipError, match="backend"):
        HashGrid(cfg, backend="metal")


@pytest.mark.skipif(tcnn_available(), reason="tiny-cuda-nn is installed here")
def test_cuda_backend_missing_raises():
    with pytest.raises(BackendError, match="backend 'cuda'"):
        HashGrid(CONFIGS["3d"], backend="cuda")


# ------------------------------------------------------------------------------------------------
# parity with tiny-cuda-nn (GPU machines with tinycudann only)

needs_tcnn = pytest.mark.skipif(
    not (torch.cuda.is_available() and tcnn_available()),
    reason="needs an NVIDIA GPU and tinycudann (pip install git+https://github.com/NVlabs/tiny-cuda-nn/"
    "#subdirectory=bindings/torch)",
)


@needs_tcnn
@pytest.mark.parametrize("name", ["3d", "2d", "2d_f4_smooth", "3d_f1"])
def test_tcnn_parity_forward_backward(name):
    cfg = CONFIGS[name]
    gen = torch.Generator().manual_seed(0)
    grid = HashGrid(cfg, backend="cuda", cuda_dtype=torch.float32).cuda()
    with torch.no_grad():
        grid.params.copy_(torch.randn(grid.params.shape, generator=gen))
    x = torch.rand(1000, cfg.n_input_dims, generator=gen).cuda().requires_grad_()
    v = torch.randn(1000, cfg.n_output_dims, generator=gen).cuda()
    out_cuda = grid(x)
    gx_cuda, gp_cuda = torch.autograd.grad((out_cuda * v).sum(), (x, grid.params))
    out_torch = hash_encode(x, grid.params, cfg)
    gx_torch, gp_torch = torch.autograd.grad((out_torch * v).sum(), (x, grid.params))
    torch.testing.assert_close(out_cuda, out_torch, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gp_cuda, gp_torch, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx_cuda, gx_torch, rtol=1e-3, atol=1e-2)
    assert gp_torch.abs().sum() > 0 and gx_torch.abs().sum() > 0


@needs_tcnn
def test_tcnn_table_read_by_torch_and_back():
    """A table trained by tcnn is read by the torch path on the CPU, and vice versa."""
    cfg = CONFIGS["3d"]
    gen = torch.Generator().manual_seed(1)
    cuda_grid = HashGrid(cfg, backend="cuda", cuda_dtype=torch.float32).cuda()
    x = torch.rand(512, 3, generator=gen)
    target = torch.randn(512, cfg.n_output_dims, generator=gen)
    opt = torch.optim.Adam(cuda_grid.parameters(), lr=1e-2)
    for _ in range(5):
        opt.zero_grad()
        ((cuda_grid(x.cuda()) - target.cuda()) ** 2).mean().backward()
        opt.step()
    cpu_grid = HashGrid(cfg, backend="torch")
    cpu_grid.load_state_dict({k: v.cpu() for k, v in cuda_grid.state_dict().items()})
    torch.testing.assert_close(cpu_grid(x), cuda_grid(x.cuda()).cpu(), rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        cpu_grid.params.mul_(-2.0)
    cuda_grid.load_state_dict(cpu_grid.state_dict())
    torch.testing.assert_close(cuda_grid(x.cuda()).cpu(), cpu_grid(x), rtol=1e-4, atol=1e-4)


@needs_tcnn
def test_tcnn_half_precision_close():
    cfg = CONFIGS["3d"]
    grid = HashGrid(cfg, backend="cuda").cuda()  # tcnn's preferred precision (fp16 on most GPUs)
    with torch.no_grad():
        grid.params.uniform_(-1, 1)
    x = torch.rand(256, 3, device="cuda")
    out = grid(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, hash_encode(x, grid.params, cfg), rtol=0, atol=5e-3)
