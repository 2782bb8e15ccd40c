"""Hash-table compression: masks under a rate penalty, QAT, per-level rANS and the checked bit-exact decoder.

A HashGrid + tiny MLP is fitted to a seeded 3D function (three Gaussian blobs in one corner of the unit
cube, zero elsewhere) with the compressor in the loop, once per rate penalty (module fixture)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from scenezip.errors import SceneFileError
from scenezip.fields.hash_codec import (
    HashTableCompressor,
    coding_report,
    decode_hash_table,
    encode_hash_table,
    laplace_bits,
)
from scenezip.fields.hashgrid import HashGrid, HashGridConfig, hash_encode, level_offsets, level_resolutions
from scenezip.fields.hashgrid import level_scales, n_params
from scenezip.fields.mlp import MLP
from scenezip.quant.mask import keep_mask
from scenezip.scenes.scz import decode_streams, read_scz, write_scz

# levels 0-3 dense (res 4, 7, 11, 17), 4-5 hashed into 2^13 entries
CFG = HashGridConfig(n_levels=6, n_features_per_level=2, log2_hashmap_size=13, base_resolution=4, per_level_scale=1.6)
CENTERS = torch.tensor([[0.25, 0.3, 0.3], [0.35, 0.25, 0.35], [0.3, 0.35, 0.22]])
SIGMA = 0.05
STEPS, QAT_START = 160, 60
LAMBDAS = (0.0, 3e-4, 3e-3)


def target(x: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N]
    d2 = ((x[:, None, :] - CENTERS[None]) ** 2).sum(-1)
    v = torch.exp(-d2 / (2 * SIGMA**2)).sum(-1)
    return torch.where(v > 1e-2, v, torch.zeros_like(v))


def sample(g: torch.Generator, n_uniform: int = 512, n_near: int = 256) -> torch.Tensor:
    near = CENTERS[torch.randint(0, 3, (n_near,), generator=g)] + 0.08 * torch.randn(n_near, 3, generator=g)
    return torch.cat([torch.rand(n_uniform, 3, generator=g), near]).clamp(0, 1)


def fit(lambda_rate: float, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    grid = HashGrid(CFG, backend="torch", seed=seed)
    mlp = MLP(CFG.n_output_dims, 1, hidden_dim=32, n_hidden_layers=1, seed=seed)
    comp = HashTableCompressor(grid, bits=8, qat_start=QAT_START)
    groups = [{"params": [grid.params], "lr": 1e-2}, {"params": list(mlp.parameters()), "lr": 1e-2}]
    opt = torch.optim.Adam(groups + comp.param_groups(lr_mask=0.15, lr_step=1e-4), eps=1e-15)
    for step in range(STEPS):
        comp.set_step(step)
        x = sample(g)
        pred = mlp(hash_encode(x, comp(grid.params), CFG))[:, 0]
        loss = ((pred - target(x)) ** 2).mean() + lambda_rate * comp.rate_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {"grid": grid, "mlp": mlp, "comp": comp}


@pytest.fixture(scope="module")
def runs() -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: a second thread only adds synchronisation on a loaded machine
    try:
        return {lam: fit(lam) for lam in LAMBDAS}
    finally:
        torch.set_num_threads(threads)


def eval_mse(run: dict, table: torch.Tensor) -> float:
    x = sample(torch.Generator().manual_seed(123), 2048, 1024)
    with torch.no_grad():
        return float(((run["mlp"](hash_encode(x, table, CFG))[:, 0] - target(x)) ** 2).mean())


def dense_vertex_distance(level: int) -> torch.Tensor:  # [entries] distance of each vertex to the nearest centre
    res, scale = level_resolutions(CFG)[level], level_scales(CFG)[level]
    off = level_offsets(CFG)
    n = off[level + 1] - off[level]
    idx = torch.arange(n)
    ijk = torch.stack([idx % res, (idx // res) % res, idx // res**2], -1).float()
    pos = (ijk - 0.5) / scale  # pos = x * scale + 0.5 at vertex ijk
    d = torch.cdist(pos, CENTERS).min(1).values
    d[idx >= res**3] = float("nan")  # padding entries (table rounded up to a multiple of 8)
    return d


# ------------------------------------------------------------------------------------ training


def test_rate_penalty_masks_empty_space_first(runs):
    masked = {lam: 1.0 - float(keep_mask(r["comp"].mask_logits).float().mean()) for lam, r in runs.items()}
    assert masked[0.0] < 0.02, masked
    assert masked[0.0] < masked[LAMBDAS[1]] < masked[LAMBDAS[2]], masked
    assert masked[LAMBDAS[2]] > 0.3, masked
    # at the finest dense level, vertices far from the blobs go first
    level = 3
    off = level_offsets(CFG)
    d = dense_vertex_distance(level)
    keep = keep_mask(runs[LAMBDAS[2]]["comp"].mask_logits)[off[level] : off[level + 1]]
    far, near = d > 0.3, d < 0.1
    far_masked = 1.0 - float(keep[far].float().mean())
    near_masked = 1.0 - float(keep[near].float().mean())
    assert far_masked > 0.8, (far_masked, near_masked)
    assert far_masked > near_masked + 0.3, (far_masked, near_masked)


def test_qat_forward_equals_quantized_table_and_error_is_bounded(runs):
    for lam, run in runs.items():
        comp, params = run["comp"], run["grid"].params.detach()
        table = comp.quantized_table(params)
        with torch.no_grad():
            rendered = comp(params)
        assert torch.equal(rendered.view(torch.int32), table.view(torch.int32)), lam  # bit for bit
        keep = keep_mask(comp.mask_logits).repeat_interleave(CFG.n_features_per_level)
        assert bool((table[~keep] == 0).all())
        f = CFG.n_features_per_level
        for level, step in enumerate(comp.steps()):
            sl = slice(level_offsets(CFG)[level] * f, level_offsets(CFG)[level + 1] * f)
            inside = keep[sl] & (params[sl].abs() <= comp.qmax * step)
            err = (table[sl] - params[sl])[inside].abs()
            assert float(err.max()) <= 0.5 * step * (1 + 1e-5), (lam, level)
    # the quantized field fits nearly as well as the float one (rate 0: quantization error only)
    run = runs[0.0]
    float_mse = eval_mse(run, run["grid"].params.detach())
    quant_mse = eval_mse(run, run["comp"].quantized_table(run["grid"].params.detach()))
    assert quant_mse < 2e-4, quant_mse
    assert quant_mse < 1.5 * float_mse + 1e-5, (quant_mse, float_mse)
    # a higher rate penalty costs some fit but stays bounded
    heavy = runs[LAMBDAS[2]]
    assert eval_mse(heavy, heavy["comp"].quantized_table(heavy["grid"].params.detach())) < 1e-3


def test_higher_rate_penalty_gives_smaller_files(runs):
    sizes = []
    for run in runs.values():
        _, streams = encode_hash_table(run["grid"].params.detach(), run["comp"])
        sizes.append(sum(r["payload_bytes"] for r in coding_report(streams)))
    assert sizes[0] > sizes[1] > sizes[2], sizes


# ------------------------------------------------------------------------------------ file round trip


@pytest.mark.parametrize("layout", ["auto", "mask", "zeros"])
def test_encode_write_read_decode_is_bit_exact(runs, tmp_path, layout):
    run = runs[LAMBDAS[2]]
    params, comp = run["grid"].params.detach(), run["comp"]
    meta, streams = encode_hash_table(params, comp, CFG, prefix="h", level_layout=layout)
    if layout == "mask":
        assert any(meta["masked_levels"]) and "h_keep" in streams
    if layout == "zeros":
        assert not any(meta["masked_levels"]) and "h_keep" not in streams
    path = tmp_path / "t.scz"
    write_scz(path, "cngp", {"hash": meta}, streams)
    scene = read_scz(path)
    decoded = decode_hash_table(decode_streams(scene), scene.metadata["hash"], CFG, str(path))
    expected = comp.quantized_table(params)
    assert decoded.dtype == torch.float32 and decoded.shape == (n_params(CFG),)
    assert torch.equal(decoded.view(torch.int32), expected.view(torch.int32))


def test_auto_layout_is_no_larger_than_either_fixed_layout(runs):
    run = runs[LAMBDAS[2]]
    total = {}
    for layout in ("auto", "mask", "zeros"):
        _, streams = encode_hash_table(run["grid"].params.detach(), run["comp"], level_layout=layout)
        total[layout] = sum(r["payload_bytes"] for r in coding_report(streams))
    assert total["auto"] <= min(total["mask"], total["zeros"]) * 1.02 + 64, total


def test_per_feature_masks_round_trip(tmp_path):
    g = torch.Generator().manual_seed(3)
    comp = HashTableCompressor(CFG, bits=6, mask_granularity="feature")
    params = torch.randn(n_params(CFG), generator=g) * 0.3
    with torch.no_grad():
        comp.mask_logits.copy_(torch.randn(comp.mask_logits.shape, generator=g) * 4)
    assert comp.mask_logits.shape == (n_params(CFG),)
    table = comp.quantized_table(params)
    with torch.no_grad():
        assert torch.equal(comp(params), table)
    assert int((comp.codes(params)[1][0].__abs__()).max()) <= 31  # 6 bits: [-31, 31]
    meta, streams = encode_hash_table(params, comp, level_layout="mask")
    write_scz(tmp_path / "f.scz", "cngp", meta, streams)
    scene = read_scz(tmp_path / "f.scz")
    decoded = decode_hash_table(decode_streams(scene), scene.metadata, CFG, "f.scz")
    assert torch.equal(decoded, table)
    keep = keep_mask(comp.mask_logits)
    assert bool((decoded[~keep] == 0).all()) and bool((decoded[keep] != 0).any())


# ------------------------------------------------------------------------------------ coding efficiency


def test_coded_size_is_entropy_plus_table(runs):
    run = runs[LAMBDAS[1]]
    meta, streams = encode_hash_table(run["grid"].params.detach(), run["comp"])
    rows = {r["name"]: r for r in coding_report(streams)}
    assert set(rows) == set(streams)
    for name in meta["value_streams"]:
        r = rows[name]
        assert r["codec"] == "rans" and r["table_bytes"] > 0
        assert r["coded_bits"] <= 1.02 * r["entropy_bits"] + 64, r
        assert r["coded_bits"] >= r["entropy_bits"] - 64, r  # no coder beats the empirical entropy
        assert r["payload_bytes"] == r["table_bytes"] + r["coded_bits"] // 8
    assert sum(len(g) for g in meta["groups"]) == CFG.n_levels
    # tiny coarse levels share a table: level 0 (64 entries) is never alone
    assert len(meta["groups"][0]) > 1


def test_laplace_bits_is_a_code_length():
    for scale in (0.05, 0.7, 3.0):
        q = torch.arange(-400, 401, dtype=torch.float64)
        p = torch.exp2(-laplace_bits(q, scale))
        assert abs(float(p.sum()) - 1.0) < 1e-6, scale
        assert float(laplace_bits(torch.tensor([0.0]), scale)) < float(laplace_bits(torch.tensor([1.0]), scale))
    y = torch.tensor([0.3, 2.0], requires_grad=True)
    laplace_bits(y, 1.0).sum().backward()
    assert bool((y.grad > 0).all())  # the rate pulls values towards zero


# ------------------------------------------------------------------------------------ schedule and checks


def test_schedule_identity_before_start_and_rate_gradients():
    params = torch.randn(n_params(CFG), generator=torch.Generator().manual_seed(1)).requires_grad_()
    comp = HashTableCompressor(CFG, mask_start=5, qat_start=10)
    comp.set_step(0)
    assert comp(params) is params
    assert float(comp.rate_loss()) == 0.0
    comp.set_step(5)
    out = comp(params)
    assert torch.equal(out, params)  # every mask starts on; no quantization yet
    rate = comp.rate_loss()
    # before quantization every kept entry costs F * prior_bits bits: prior_bits (4) per parameter
    assert float(rate.detach()) == pytest.approx(4.0)
    rate.backward()
    assert bool((comp.mask_logits.grad > 0).all())
    comp.set_step(10)
    q = comp(params)
    assert bool(comp.steps_initialized) and not torch.equal(q, params)
    assert torch.equal(q.detach(), comp.quantized_table(params.detach()))
    comp.mask_logits.grad = None
    rate = comp.rate_loss()
    rate.backward()
    assert bool((comp.mask_logits.grad > 0).all()) and comp.quantizers[0].step.grad is not None
    comp.enabled = False
    assert comp(params) is params and float(comp.rate_loss()) == 0.0


def test_constructor_and_encoder_argument_checks():
    with pytest.raises(ValueError, match="bits"):
        HashTableCompressor(CFG, bits=1)
    with pytest.raises(ValueError, match="mask_granularity"):
        HashTableCompressor(CFG, mask_granularity="level")
    with pytest.raises(ValueError, match="qat_start"):
        HashTableCompressor(CFG, qat_start=-1)
    with pytest.raises(ValueError, match="grid_or_config"):
        HashTableCompressor({"n_levels": 2})
    comp = HashTableCompressor(CFG)
    with pytest.raises(ValueError, match="flat_params"):
        comp(torch.zeros(7))
    other = HashGridConfig(n_levels=5, n_features_per_level=2, log2_hashmap_size=13, base_resolution=4,
                           per_level_scale=1.6)  # fmt: skip
    with pytest.raises(ValueError, match="config"):
        encode_hash_table(torch.zeros(n_params(CFG)), comp, other)


# ------------------------------------------------------------------------------------ malformed input


@pytest.fixture(scope="module")
def encoded(runs):
    run = runs[LAMBDAS[2]]
    meta, streams = encode_hash_table(run["grid"].params.detach(), run["comp"], level_layout="mask")
    return meta, {k: a for k, (a, _) in streams.items()}


def _mutations(meta: dict, arrays: dict) -> list[tuple[str, dict, dict]]:
    name = meta["value_streams"][-1]
    keep = meta["keep_stream"]
    masked_level = meta["masked_levels"].index(True)
    out = []

    def case(what, m=None, a=None):
        mm, aa = copy.deepcopy(meta), dict(arrays)
        if m:
            m(mm)
        if a:
            a(aa)
        out.append((what, mm, aa))

    case("version", m=lambda m: m.update(hash_codec_version=99))
    case("n_params", m=lambda m: m.update(n_params=m["n_params"] + 2))
    case("n_levels", m=lambda m: m.update(n_levels=5))
    case("features", m=lambda m: m.update(n_features_per_level=4))
    case("granularity", m=lambda m: m.update(mask_granularity="level"))
    case("bits", m=lambda m: m.update(bits=40))
    case("steps count", m=lambda m: m.update(steps=m["steps"][:-1]))
    case("step negative", m=lambda m: m["steps"].__setitem__(0, -1.0))
    case("step nan", m=lambda m: m["steps"].__setitem__(0, math.nan))
    case("step not float32", m=lambda m: m["steps"].__setitem__(0, 0.1))
    case("kept count", m=lambda m: m["kept"].__setitem__(masked_level, m["kept"][masked_level] + 1))
    case("kept range", m=lambda m: m["kept"].__setitem__(0, 10**9))
    case("kept type", m=lambda m: m["kept"].__setitem__(0, "3"))
    case("masked_levels", m=lambda m: m.update(masked_levels=[True]))
    case("groups", m=lambda m: m.update(groups=[[0], [2]]))
    case("groups order", m=lambda m: m.update(groups=[[lv] for lv in reversed(range(CFG.n_levels))]))
    case("stream names", m=lambda m: m.update(value_streams=m["value_streams"][:-1]))
    case("keep stream name", m=lambda m: m.update(keep_stream=None))
    case("missing stream", a=lambda a: a.pop(name))
    case("missing keep", a=lambda a: a.pop(keep))
    case("truncated values", a=lambda a: a.update({name: a[name][:-1]}))
    case("truncated keep", a=lambda a: a.update({keep: a[keep][:-1]}))
    case("keep dtype", a=lambda a: a.update({keep: a[keep].astype(np.int16)}))
    case("keep length", a=lambda a: a.update({keep: np.zeros(a[keep].size + 1, dtype=a[keep].dtype)}))
    case("values dtype", a=lambda a: a.update({name: a[name].astype(np.float32)}))
    case("values 2-D", a=lambda a: a.update({name: a[name].reshape(1, -1)}))

    def out_of_range(a):
        v = a[name].astype(np.int16)
        v[0] = 200
        a[name] = v

    case("value range", a=out_of_range)

    def flip_keep(a):
        k = a[keep].copy()
        k[0] = not k[0] if k.dtype == np.bool_ else k[0] ^ 1
        a[keep] = k

    case("keep bit count", a=flip_keep)

    return out


def test_malformed_metadata_and_streams_raise(encoded):
    meta, arrays = encoded
    decode_hash_table(arrays, meta, CFG, "ok.scz")  # the unmodified input decodes
    for what, m, a in _mutations(meta, arrays):
        with pytest.raises(SceneFileError, match="bad.scz"):
            decode_hash_table(a, m, CFG, "bad.scz")
            pytest.fail(f"no error for {what}")
    with pytest.raises(SceneFileError, match="n_params"):
        decode_hash_table(arrays, meta, HashGridConfig(n_levels=6, n_features_per_level=2, log2_hashmap_size=12,
                                                       base_resolution=4, per_level_scale=1.6), "bad.scz")  # fmt: skip
    with pytest.raises(SceneFileError, match="metadata must be an object"):
        decode_hash_table(arrays, [], CFG, "bad.scz")


def test_truncated_file_raises(runs, tmp_path):
    run = runs[LAMBDAS[1]]
    meta, streams = encode_hash_table(run["grid"].params.detach(), run["comp"])
    path = tmp_path / "t.scz"
    write_scz(path, "cngp", meta, streams)
    data = path.read_bytes()
    path.write_bytes(data[:-5])
    with pytest.raises(SceneFileError, match="t.scz"):
        read_scz(path)
