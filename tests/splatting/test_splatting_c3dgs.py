"""c3dgs model and stream contract: masked render, post-processing, bit-exact .scz round trip, checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from scenezip.errors import SceneFileError
from scenezip.fields.color_field import ColorFieldConfig
from scenezip.quant.rvq import rvq_encode
from scenezip.scenes.scz import decode_streams, read_scz, write_scz
from scenezip.fields.hashgrid import level_offsets
from scenezip.quant.codecs import get_codec
from scenezip.quant.morton import morton_encode
from scenezip.splatting.c3dgs import (
    FORMAT_VERSION, METHOD, READ_VERSIONS, C3DGSModel, auto_position_bits, c3dgs_from_streams, decode_positions, encode_positions,
    morton_decode,
)
from scenezip.splatting.gaussians import GaussianModel
from scenezip.splatting.streams import gaussians_to_streams

CFG = ColorFieldConfig(n_levels=4, log2_hashmap_size=8, base_resolution=4, per_level_scale=2.0, hidden_dim=16)
BOUNDS = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))


def _gaussians(n: int, seed: int = 0) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(n, 3, generator=g) * 1.6 - 0.8
    gm = GaussianModel.from_points(pts, torch.rand(n, 3, generator=g), sh_degree=3)
    with torch.no_grad():
        gm.splats["quats"].copy_(torch.randn(n, 4, generator=g))
        gm.splats["scales"].add_(torch.randn(n, 3, generator=g) * 0.3)
        gm.splats["opacities"].copy_(torch.randn(n, generator=g) * 2.0)
    return gm


def _model(n: int = 120, n_masked: int = 17, seed: int = 0) -> C3DGSModel:
    m = C3DGSModel.from_gaussians(_gaussians(n, seed), CFG, BOUNDS, backend="torch", seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        m.color_field.grid.params.copy_(torch.randn(m.color_field.grid.params.shape, generator=g) * 0.3)
        m.splats["masks"][torch.randperm(n, generator=g)[:n_masked]] = -8.0  # sigmoid < 0.01: pruned
    return m


def _cameras() -> tuple[torch.Tensor, torch.Tensor]:
    vm = torch.eye(4).repeat(2, 1, 1)
    vm[:, 2, 3] = 3.0
    vm[1, 0, 3] = 0.4
    K = torch.tensor([[30.0, 0.0, 16.0], [0.0, 30.0, 12.0], [0.0, 0.0, 1.0]]).repeat(2, 1, 1)
    return vm, K


def _render(m: C3DGSModel) -> torch.Tensor:
    vm, K = _cameras()
    with torch.no_grad():
        return m.render(vm, K, 32, 24, backend="torch")[0]


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    m = _model()
    meta, streams = m.to_streams()
    path = tmp_path_factory.mktemp("c3dgs") / "scene.scz"
    write_scz(path, METHOD, meta, streams)
    return m, meta, streams, path


def test_render_shapes_and_mask_removes_gaussians():
    m = _model(n=64, n_masked=0)
    vm, K = _cameras()
    colors, alphas, meta = m.render(vm, K, 32, 24, backend="torch")
    assert colors.shape == (2, 24, 32, 3) and alphas.shape == (2, 24, 32, 1)
    assert len(meta["cameras"]) == 2
    assert float(alphas.detach().max()) > 0.1
    colors.sum().backward()  # gradients reach the colour field and the codebooks
    assert m.color_field.grid.params.grad.abs().sum() > 0
    assert m.scale_vq.codebooks.grad.abs().sum() > 0
    with torch.no_grad():
        m.splats["masks"].fill_(-8.0)
    assert float(m.render(vm, K, 32, 24, backend="torch")[1].abs().max()) == 0.0


def test_scz_round_trip_is_bit_exact_and_drops_masked(coded):
    m, meta, streams, path = coded
    assert meta["n_gaussians"] == 120 - 17
    scene = read_scz(path)
    assert scene.method == METHOD
    a1, a2 = decode_streams(scene), decode_streams(read_scz(path))
    for name, (arr, _) in streams.items():
        assert a1[name].dtype == arr.dtype and np.array_equal(a1[name], arr), name
        assert a1[name].tobytes() == a2[name].tobytes(), name
    d1 = c3dgs_from_streams(a1, scene.metadata, str(path))
    d2 = c3dgs_from_streams(a2, scene.metadata, str(path))
    assert len(d1) == 103
    for k, v in d1.state_dict().items():
        assert torch.equal(v, d2.state_dict()[k]), k


def test_decoded_render_equals_post_processed_and_is_close_to_original(coded):
    m, meta, _, path = coded
    scene = read_scz(path)
    decoded = c3dgs_from_streams(decode_streams(scene), scene.metadata, str(path))
    r_dec, r_q = _render(decoded), _render(m.quantized_copy())
    torch.testing.assert_close(r_dec, r_q, rtol=0, atol=0)
    # Quantization moves the picture only slightly (8-bit hash/opacity, 16-bit positions, fp16 codebooks).
    assert float((r_dec - _render(m)).abs().mean()) < 0.02
    assert float(r_dec.abs().max()) > 0.05  # something is drawn


def test_post_processed_values_respect_quantization_bounds(coded):
    m, meta, _, path = coded
    scene = read_scz(path)
    arrays = decode_streams(scene)
    d = c3dgs_from_streams(arrays, scene.metadata, str(path))
    keep = torch.sigmoid(m.splats["masks"].detach()) > 0.01
    means = m.splats["means"].detach()[keep]
    lo, hi = torch.tensor(meta["positions"]["lo"]), torch.tensor(meta["positions"]["hi"])
    bits = meta["positions"]["bits"]
    assert 8 <= bits <= 21  # auto: from the extent and the smallest Gaussians
    step = (hi - lo) / (2**bits - 1)
    # Every kept Gaussian has a decoded partner within half a step (the file is a permutation of them).
    dist = ((d.splats["means"].detach()[:, None] - means[None]).abs() <= step / 2 + 1e-7).all(-1)
    assert bool(dist.any(0).all()) and bool(dist.any(1).all())
    # Morton order: the decoded positions are sorted by their Morton code.
    q = decode_positions(arrays["position_high"], arrays["position_low"], meta["positions"], len(d), "t")
    assert np.all(np.diff(morton_encode(q.astype(np.int64))) >= 0)
    o = meta["opacities"]
    o_step = (o["hi"] - o["lo"]) / 255
    match = (d.splats["means"].detach()[:, None] - means[None]).abs().sum(-1).argmin(1)
    logits = m.splats["opacities"].detach()[keep][match]
    assert float((d.splats["opacities"].detach() - logits).abs().max()) <= o_step / 2 + 1e-5
    h = d.color_field.grid.params.detach()
    h_mean = m.color_field.grid.params.detach()
    small = h_mean.abs() <= 0.1  # no training-time codec: Compact-3DGS' zeroing, then per-level steps
    assert bool((h[small] == 0).all())
    offs = [o * CFG.n_features_per_level for o in level_offsets(CFG.hashgrid())]
    for level, step in enumerate(meta["color_field"]["hash"]["steps"]):
        sl = slice(offs[level], offs[level + 1])
        big = ~small[sl]
        assert float((h[sl][big] - h_mean[sl][big]).abs().max()) <= step / 2 + 1e-6


def test_rvq_indices_decode_to_the_quantized_scales_and_rotations(coded):
    m, _, _, path = coded
    scene = read_scz(path)
    arrays = decode_streams(scene)
    d = c3dgs_from_streams(arrays, scene.metadata, str(path))
    # Re-encode the original kept attributes in file order against the float16 codebooks.
    keep = torch.sigmoid(m.splats["masks"].detach()) > 0.01
    means_k = m.splats["means"].detach()[keep]
    match = ((d.splats["means"].detach()[:, None] - means_k[None]).abs().sum(-1)).argmin(1)
    scales = torch.exp(m.splats["scales"].detach()[keep][match])
    quats = F.normalize(m.splats["quats"].detach()[keep][match], dim=-1)
    cb_s = m.scale_vq.codebooks.detach().half().float()
    cb_r = m.rot_vq.codebooks.detach().half().float()
    i_s = np.stack([arrays[f"scale_indices_{k}"] for k in range(6)], 1)  # one stream (rans table) per stage
    i_r = np.stack([arrays[f"rotation_indices_{k}"] for k in range(6)], 1)
    assert torch.equal(rvq_encode(scales, cb_s), torch.from_numpy(i_s.astype(np.int64)))
    assert torch.equal(rvq_encode(quats, cb_r), torch.from_numpy(i_r.astype(np.int64)))
    a = d.activated()
    assert torch.equal(a["scales"], sum(cb_s[s][d.scale_indices[:, s]] for s in range(6)))
    assert float((a["scales"].detach() - scales).abs().mean()) < 0.1 * float(scales.abs().mean())
    assert float((F.normalize(a["quats"].detach(), dim=-1) - quats).abs().mean()) < 0.1


def test_file_is_far_smaller_than_3dgs(tmp_path):
    gm = _gaussians(2000, seed=3)
    m = C3DGSModel.from_gaussians(gm, CFG, BOUNDS, backend="torch")
    meta, streams = m.to_streams()
    size_c = write_scz(tmp_path / "c.scz", METHOD, meta, streams)
    size_3 = write_scz(tmp_path / "g.scz", "3dgs", *gaussians_to_streams(gm))
    # Measured 2026-11: 2000 scattered Gaussians, SH degree 3: 3dgs 472,853 B (raw float32) vs c3dgs
    # 41,233 B (11.5x): positions 12 kB (raw: uniform random points leave rans-delta nothing to gain),
    # R-VQ indices 2 x 9 kB (random rotations and scales, near 6 bits per stage), opacities 2.3 kB,
    # codebooks 5.4 kB, MLP 1.4 kB, header 2 kB. A trained scene's indices and positions code smaller.
    assert size_3 > 10 * size_c, (size_3, size_c)
    # Split Morton codes: about 48 - log2(2000) + 2 = 39 bits a point instead of 48 raw.
    pos_bytes = len(get_codec("rans").encode(streams["position_high"][0])[0])
    pos_bytes += streams["position_low"][0].nbytes
    assert pos_bytes < 0.88 * 2000 * 6, pos_bytes


def _corrupt(coded, edit):
    _, meta, streams, path = coded
    scene = read_scz(path)
    arrays = decode_streams(scene)
    md = __import__("copy").deepcopy(scene.metadata)
    edit(md, arrays)
    with pytest.raises(SceneFileError, match="scene.scz"):
        c3dgs_from_streams(arrays, md, str(path))


def test_corrupted_metadata_raises(coded):
    _corrupt(coded, lambda md, a: md.__setitem__("n_gaussians", md["n_gaussians"] + 1))
    _corrupt(coded, lambda md, a: md.__setitem__("n_gaussians", "many"))
    _corrupt(coded, lambda md, a: md["rvq"]["scales"].__setitem__("n_stages", 5))
    _corrupt(coded, lambda md, a: md["color_field"]["config"].__setitem__("log2_hashmap_size", 9))
    _corrupt(coded, lambda md, a: md["positions"].__setitem__("hi", md["positions"]["lo"]))
    _corrupt(coded, lambda md, a: a.pop("mlp"))
    _corrupt(coded, lambda md, a: a.__setitem__("scale_indices_0", a["scale_indices_0"].astype(np.float32)))
    _corrupt(coded, lambda md, a: a.pop("rotation_indices_5"))
    _corrupt(coded, lambda md, a: a["rotation_indices_2"].__setitem__(0, 64))  # index >= codebook_size
    _corrupt(coded, lambda md, a: md.__setitem__("c3dgs_version", min(READ_VERSIONS) - 1))  # old files fail cleanly
    _corrupt(coded, lambda md, a: md.__setitem__("c3dgs_version", FORMAT_VERSION + 1))
    _corrupt(coded, lambda md, a: md["positions"].__setitem__("low_bits", 99))
    _corrupt(coded, lambda md, a: md["positions"].__setitem__("first_high", -1))
    _corrupt(coded, lambda md, a: md["positions"].__setitem__("bits", 22))
    _corrupt(coded, lambda md, a: a.__setitem__("position_low", a["position_low"][:-1]))
    _corrupt(coded, lambda md, a: a.__setitem__("position_high", a["position_high"][1:]))
    _corrupt(coded, lambda md, a: a["position_high"].__setitem__(-1, 2**31))  # runs past the code bits
    _corrupt(coded, lambda md, a: a.pop(md["color_field"]["hash"]["value_streams"][0]))
    _corrupt(coded, lambda md, a: md["color_field"]["hash"].__setitem__("steps", [-1.0]))


def test_frozen_model_cannot_be_coded_again(coded):
    m = coded[0]
    with pytest.raises(ValueError, match="already post-processed"):
        m.quantized_copy().to_streams()


def test_auto_position_bits_follow_the_typical_gaussian():
    g = np.random.default_rng(1)
    means = g.uniform(-1, 1, size=(1000, 3))
    scales = np.full((1000, 3), 0.01)
    # extent 2, smallest sigma 0.01, tolerance 0.1: half a step <= 0.001 -> step <= 0.002 -> 2 / 2^b <= 0.002
    assert auto_position_bits(means, scales) == 10
    assert auto_position_bits(means, scales / 16) == 14  # 16x smaller Gaussians: 4 more bits
    assert auto_position_bits(means, scales * 1e-9) == 21 and auto_position_bits(means, scales * 1e3) == 8
    assert auto_position_bits(means[:1], scales[:1]) == 16  # no extent: the default
    # a few tiny Gaussians (invisible at any resolution that shows the rest) do not set the precision
    tiny = scales.copy()
    tiny[:20] = 1e-6
    assert auto_position_bits(means, tiny) == 10


def test_morton_decode_inverts_encode_and_positions_round_trip():
    g = np.random.default_rng(0)
    for bits in (1, 5, 16, 21):
        q = g.integers(0, 1 << bits, size=(500, 3)).astype(np.int64)
        q[:3] = [[0, 0, 0], [(1 << bits) - 1] * 3, [(1 << bits) - 1, 0, 0]]
        assert np.array_equal(morton_decode(morton_encode(q)).astype(np.int64), q)
        q = q[np.argsort(morton_encode(q), kind="stable")]
        q[10] = q[9]  # a duplicate point: a zero delta
        meta, streams = encode_positions(q, bits)
        assert meta["bits"] == bits and streams["position_high"][0][0] == 0
        back = decode_positions(streams["position_high"][0], streams["position_low"][0], meta, 500, "t")
        assert np.array_equal(back.astype(np.int64), q)
    with pytest.raises(ValueError, match="sorted"):
        encode_positions(q[::-1].copy(), 21)


def test_dense_positions_code_small_and_round_trip(tmp_path):
    # A 12^3 lattice (1728 points, log2 = 10.8): split Morton codes need about 48 - 10.8 + 2 bits a point.
    ax = torch.linspace(-0.5, 0.5, 12)
    pts = torch.stack(torch.meshgrid(ax, ax, ax, indexing="ij"), -1).reshape(-1, 3)
    gm = GaussianModel.from_points(pts, torch.full_like(pts, 0.5), sh_degree=0)
    m = C3DGSModel.from_gaussians(gm, CFG, BOUNDS, backend="torch", rvq_stages=2, rvq_codebook_size=16,
                                  position_bits=16)  # fmt: skip
    meta, streams = m.to_streams()
    assert meta["positions"]["bits"] == 16
    write_scz(tmp_path / "d.scz", METHOD, meta, streams)
    scene = read_scz(tmp_path / "d.scz")
    assert scene.streams["position_high"].nbytes + scene.streams["position_low"].nbytes < 12**3 * 6 * 0.85
    d = c3dgs_from_streams(decode_streams(scene), scene.metadata, "d.scz")
    assert len(d) == 12**3
    assert torch.equal(d.splats["means"].detach(), m.quantized_copy().splats["means"].detach())
    # The lattice is exactly representable on the 16-bit grid up to float32 rounding of its ends.
    assert float((d.splats["means"].detach().sort(0).values - pts.sort(0).values).abs().max()) < 1e-5


def test_cli_loader_opens_c3dgs_files_and_renders_the_decoded_scene(coded):
    from scenezip.scene import load_scene

    m, _, _, path = coded
    scene = load_scene(path)
    assert scene.method == METHOD and scene.n_primitives == 103 and scene.size_bytes == path.stat().st_size
    vm, K = _cameras()
    rgb, _ = scene.render(vm, K, 32, 24, backend="torch")
    torch.testing.assert_close(rgb, _render(m.quantized_copy()).clamp(0, 1), atol=0, rtol=0)


def test_trained_hash_codec_is_stored_as_trained(tmp_path):
    # A model that reads its table through a hash codec (masked + quantized) stores exactly that table.
    m = C3DGSModel.from_gaussians(_gaussians(80, seed=5), CFG, BOUNDS, backend="torch", seed=5,
                                  hash_codec={"bits": 6, "mask_start": 0, "qat_start": 0})  # fmt: skip
    with torch.no_grad():
        m.color_field.grid.params.copy_(torch.randn(m.color_field.grid.params.shape) * 0.3)
        m.hash_codec.mask_logits[::3] = -8.0  # every third entry masked
    vm, K = _cameras()
    m.render(vm, K, 32, 24, backend="torch")[0].sum().backward()
    assert m.hash_codec.mask_logits.grad is not None and float(m.hash_rate_loss()) > 0
    meta, streams = m.to_streams()
    write_scz(tmp_path / "h.scz", METHOD, meta, streams)
    scene = read_scz(tmp_path / "h.scz")
    d = c3dgs_from_streams(decode_streams(scene), scene.metadata, "h.scz")
    want = m.hash_codec.quantized_table(m.color_field.grid.params.detach())
    assert torch.equal(d.color_field.grid.params.detach(), want)
    assert bool((want.view(-1, 2)[::3] == 0).all())
    # The live model's features (through the codec) are the decoded model's features.
    means = d.splats["means"].detach()
    torch.testing.assert_close(m.grid_features(means), d.color_field.features(means), rtol=0, atol=0)
    # to_dict / from_dict keep the codec's state (resumption).
    back = C3DGSModel.from_dict(m.to_dict())
    assert back.hash_codec is not None and torch.equal(back.hash_codec.mask_logits, m.hash_codec.mask_logits)
    assert back.hash_codec.steps() == m.hash_codec.steps()


def test_post_hoc_conversion_distils_through_the_hash_codec(tmp_path):
    from scenezip.splatting.compress import gaussians_to_c3dgs

    gm = _gaussians(150, seed=7)
    with torch.no_grad():
        gm.splats["opacities"][:20] = -10.0  # invisible: pruned
    out = {}
    for lam in (0.0, 0.01, 1.0):
        m, rep = gaussians_to_c3dgs(gm, CFG, distill_steps=40, rvq_stages=2, rvq_codebook_size=8, progress=False,
                                    hash_rate_lambda=lam)  # fmt: skip
        assert rep["n_kept"] == len(m) == 130 and rep["distill_rms"] < 0.3
        assert (m.hash_codec is not None) == (lam > 0)
        meta, streams = m.to_streams()
        size = write_scz(tmp_path / f"p{lam}.scz", METHOD, meta, streams)
        scene = read_scz(tmp_path / f"p{lam}.scz")
        d = c3dgs_from_streams(decode_streams(scene), scene.metadata, "p.scz")
        torch.testing.assert_close(_render(d), _render(m.quantized_copy()), rtol=0, atol=0)
        out[lam] = sum(r.nbytes for name, r in scene.streams.items() if name.startswith("hash_")), size
    assert out[1.0][0] < out[0.01][0], out  # a larger rate term, a smaller stored table


def test_distillation_samples_where_it_is_told():
    from scenezip.splatting.compress import _sh_colors, gaussians_to_c3dgs

    gm = _gaussians(150, seed=9)
    with torch.no_grad():
        gm.splats["opacities"].fill_(2.0)
        gm.splats["shN"].copy_(torch.randn(gm.splats["shN"].shape, generator=torch.Generator().manual_seed(1)) * 0.5)
    origin = torch.tensor([[0.3, -0.2, 6.0]])
    favoured = torch.zeros(150)
    favoured[:30] = 1.0

    def err(m, idx):  # RMS colour error seen from ``origin`` on the Gaussians ``idx``
        d = torch.nn.functional.normalize(gm.splats["means"].detach()[idx] - origin, dim=-1)
        with torch.no_grad():
            return float(torch.sqrt(torch.mean((m.colors(d, idx) - _sh_colors(gm, idx, d)) ** 2)))

    kw = dict(distill_steps=300, rvq_stages=2, rvq_codebook_size=8, progress=False, hash_rate_lambda=0.0)
    plain, _ = gaussians_to_c3dgs(gm, CFG, **kw)
    steered, rep = gaussians_to_c3dgs(gm, CFG, view_origins=origin, gaussian_weights=favoured, **kw)
    few, rest = torch.arange(30), torch.arange(30, 150)
    assert err(steered, few) < 0.6 * err(plain, few)
    assert err(steered, few) < err(steered, rest)  # the unfavoured Gaussians were never sampled
    assert rep["distill_rms"] == pytest.approx(err(steered, few), rel=0.5)  # held out the same way
    with pytest.raises(ValueError, match="gaussian_weights"):
        gaussians_to_c3dgs(gm, CFG, gaussian_weights=torch.ones(7), **kw)


# ---------------------------------------------------------------------------------------------- base colour
CFG_DC = ColorFieldConfig(n_levels=4, log2_hashmap_size=8, base_resolution=4, per_level_scale=2.0, hidden_dim=16,
                          output="sh0")  # fmt: skip


@pytest.fixture(scope="module")
def coded_dc(tmp_path_factory):
    gm = _gaussians(150, seed=5)
    m = C3DGSModel.from_gaussians(gm, CFG_DC, BOUNDS, backend="torch", seed=5, color_dc=True)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        m.color_field.grid.params.copy_(torch.randn(m.color_field.grid.params.shape, generator=g) * 0.3)
        for p in m.color_field.mlp.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        m.splats["masks"][:9] = -8.0
    meta, streams = m.to_streams()
    path = tmp_path_factory.mktemp("c3dgs_dc") / "scene.scz"
    write_scz(path, METHOD, meta, streams)
    return gm, m, meta, streams, path


def test_base_colour_starts_as_the_dc_colour():
    """A fresh model with base colours renders exactly the source's DC colours (the field's last layer is 0)."""
    gm = _gaussians(80, seed=4)
    m = C3DGSModel.from_gaussians(gm, CFG_DC, BOUNDS, backend="torch", use_rvq=False, color_dc=True)
    dirs = torch.randn(80, 3)
    want = torch.clamp_min(0.28209479177387814 * gm.sh0.reshape(80, 3) + 0.5, 0.0)
    assert torch.allclose(m.colors(dirs), want, atol=1e-6)
    # the field then learns a view-dependent correction: gradients reach the MLP's last layer and the base
    m.colors(dirs).sum().backward()
    assert m.color_field.mlp.layers[-1].weight.grad.abs().sum() > 0
    assert m.splats["sh0"].grad.abs().sum() > 0


def test_base_colour_round_trip_and_rvq(coded_dc):
    gm, m, meta, streams, path = coded_dc
    assert meta["rvq"]["colors"]["n_stages"] == 3 and meta["c3dgs_version"] == FORMAT_VERSION
    assert {f"color_indices_{k}" for k in range(3)} | {"color_codebooks"} <= set(streams)
    scene = read_scz(path)
    d = c3dgs_from_streams(decode_streams(scene), scene.metadata, str(path))
    q = m.quantized_copy()
    assert d.color_dc and len(d) == 141
    vm, K = _cameras()
    with torch.no_grad():
        r1, r2 = d.render(vm, K, 32, 24, backend="torch")[0], q.render(vm, K, 32, 24, backend="torch")[0]
    assert torch.equal(r1, r2)
    # the decoded base colours are the 3-stage code sums of the kept Gaussians' DC colours, close to them
    a = d.activated()
    cb = torch.from_numpy(streams["color_codebooks"][0].astype(np.float32))
    assert torch.equal(a["sh0"], sum(cb[s][d.dc_indices[:, s]] for s in range(3)))
    kept_dc = gm.sh0.reshape(150, 3)[9:]
    err = (torch.sort(a["sh0"].norm(dim=1)).values - torch.sort(kept_dc.norm(dim=1)).values).abs().mean()
    assert float(err) < 0.1 * float(kept_dc.norm(dim=1).mean())
    # a saved live model keeps its base colour
    back = C3DGSModel.from_dict(m.to_dict())
    assert back.color_dc and torch.equal(back.splats["sh0"], m.splats["sh0"])


def test_base_colour_streams_are_checked(coded_dc):
    _, _, _, _, path = coded_dc
    c = (None, None, None, path)
    _corrupt(c, lambda md, a: a.pop("color_indices_2"))
    _corrupt(c, lambda md, a: a["color_indices_0"].__setitem__(0, 64))
    _corrupt(c, lambda md, a: a.__setitem__("color_codebooks", a["color_codebooks"][:2]))
    _corrupt(c, lambda md, a: md["rvq"]["colors"].__setitem__("dim", 4))
    _corrupt(c, lambda md, a: md["rvq"]["colors"].__setitem__("codebook_size", 32))
    _corrupt(c, lambda md, a: md.__setitem__("c3dgs_version", 2))  # version 2 files have no base colour
    arrays = decode_streams(read_scz(path))
    arrays["color_codebooks"] = arrays["color_codebooks"].copy()
    arrays["color_codebooks"][0, 0, 0] = np.inf
    with pytest.raises(SceneFileError, match="non-finite"):
        c3dgs_from_streams(arrays, read_scz(path).metadata, str(path))


def test_rotation_stages_may_differ_from_scale_stages(tmp_path):
    m = C3DGSModel.from_gaussians(_gaussians(90, seed=8), CFG, BOUNDS, backend="torch", rot_stages=4)
    meta, streams = m.to_streams()
    assert meta["rvq"]["rotations"]["n_stages"] == 4 and meta["rvq"]["scales"]["n_stages"] == 6
    assert "rotation_indices_3" in streams and "rotation_indices_4" not in streams
    write_scz(tmp_path / "r.scz", METHOD, meta, streams)
    scene = read_scz(tmp_path / "r.scz")
    d = c3dgs_from_streams(decode_streams(scene), scene.metadata, "r.scz")
    assert d.rot_vq.n_stages == 4 and d.rot_indices.shape == (90, 4)
    assert torch.equal(_render(d), _render(m.quantized_copy()))
    assert C3DGSModel.from_dict(m.to_dict()).rot_vq.n_stages == 4
    bad = __import__("copy").deepcopy(scene.metadata)
    bad["rvq"]["rotations"]["codebook_size"] = 32  # stage counts may differ, codebook sizes may not
    with pytest.raises(SceneFileError, match="r.scz"):
        c3dgs_from_streams(decode_streams(scene), bad, "r.scz")


def test_final_model_refits_damaged_codebooks():
    """The c3dgs recipe's last step refits the R-VQ codebooks to the final attributes (trained codebooks can drift
    far from them, see C3DGSRecipe.final_model), in place, so the saved model and the file agree."""
    from scenezip.splatting.config import C3DGSConfig
    from scenezip.splatting.recipes import C3DGSRecipe

    m = C3DGSModel.from_gaussians(_gaussians(200, seed=9), CFG, BOUNDS, backend="torch", color_dc=True)
    with torch.no_grad():
        for vq in (m.scale_vq, m.rot_vq, m.dc_vq):
            vq.codebooks.add_(torch.randn(vq.codebooks.shape, generator=torch.Generator().manual_seed(1)))
    from scenezip.quant.rvq import rvq_decode

    target = torch.exp(m.splats["scales"]).detach()

    def err() -> float:
        cb = m.scale_vq.codebooks.detach()
        return float((rvq_decode(rvq_encode(target, cb), cb) - target).abs().mean())

    damaged = err()
    q = C3DGSRecipe(C3DGSConfig(data=".")).final_model(m)
    assert err() < 0.2 * damaged, (err(), damaged)
    meta, streams = m.to_streams()  # the live model now holds the refitted codebooks the copy rendered with
    assert np.array_equal(streams["scale_codebooks"][0], q.scale_vq.codebooks.detach().to(torch.float16).numpy())
