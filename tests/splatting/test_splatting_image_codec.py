"""The image codec: bit-exact round trips, rate control, stream checks, and the fit itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scenezip.errors import SceneFileError
from scenezip.quant.morton import morton_order
from dataclasses import replace

from scenezip.scenes.scz import read_scz, write_scz
from scenezip.splatting.image_codec import (
    QuantConfig,
    STREAM,
    _Sizer,
    code_to_model,
    decode_image,
    encode_image,
    join_deltas,
    make_chol_range,
    morton2d,
    morton2d_decode,
    pack_code,
    quantize_model,
    read_code,
    render_code,
    split_deltas,
    unpack_code,
    write_code,
)
from scenezip.quant.entropy import decode_varints, encode_varints
from scenezip.splatting.image_gaussians import (
    FitConfig,
    ImageGaussians,
    detail_map,
    fit,
    init_from_image,
    psnr_of,
    spawn_at_error,
)


def synthetic_image(h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth gradients, a sharp disc and a little seeded noise: [H, W, 3] uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 120 + 90 * np.sin(xx / 6.0)
    g = 100 + 80 * np.cos(yy / 5.0 + xx / 13.0)
    b = np.where((xx - w * 0.6) ** 2 + (yy - h * 0.4) ** 2 < (h / 4) ** 2, 220.0, 40.0)
    img = np.stack([r, g, b], -1) + rng.normal(0, 3, (h, w, 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    torch.set_num_threads(1)
    img = synthetic_image()
    path = tmp_path_factory.mktemp("img") / "a.scz"
    result = encode_image(img, 6.0, path, steps=20, search=False, seed=0, progress=False)
    return img, path, result


def test_morton2d_round_trip_and_order():
    rng = np.random.default_rng(0)
    q = rng.integers(0, 1 << 12, size=(500, 2))
    codes = morton2d(q)
    np.testing.assert_array_equal(morton2d_decode(codes), q)
    order = morton_order(np.stack([q[:, 0], q[:, 1], np.zeros(500, dtype=np.int64)], -1))
    assert np.all(np.diff(codes[order]) >= 0)  # the 3D order with z = 0 sorts the 2D codes
    assert morton2d(np.array([[1, 0], [0, 1], [1, 1], [2, 0]])).tolist() == [1, 2, 3, 4]


def test_split_join_deltas_round_trip():
    d = np.array([0, 1, 2, 3, 7, 8, 255, 256, 1 << 30, 0, 5, (1 << 41) + 3], dtype=np.int64)
    e, packed, nbits = split_deltas(d)
    assert nbits == int(np.maximum(e.astype(np.int64) - 1, 0).sum())
    assert e.tolist()[:6] == [0, 1, 2, 2, 3, 4]
    np.testing.assert_array_equal(join_deltas(e, np.frombuffer(packed, np.uint8), "t"), d)
    with pytest.raises(SceneFileError, match="pos_mant"):
        join_deltas(e, np.frombuffer(packed, np.uint8)[:-1], "t")


def test_round_trip_is_bit_exact(encoded, tmp_path):
    img, path, result = encoded
    a, b = decode_image(path), decode_image(path)
    assert a.dtype == np.uint8 and a.shape == img.shape
    np.testing.assert_array_equal(a, b)
    # the file holds exactly the integers it was written from: re-writing them gives the same bytes
    code = read_code(path)
    assert code.n == result.n_gaussians
    assert _Sizer()(code) == path.stat().st_size  # the rate control's in-memory size is the file's size
    again = tmp_path / "b.scz"
    write_code(again, code)
    assert again.read_bytes() == path.read_bytes()
    # re-quantizing the decoded float parameters gives the same integers (decode is idempotent)
    assert code.color_alpha_q == QuantConfig().color_alpha_q > 0  # files have per-Gaussian colour steps
    assert code.blend == 6  # normalized blending, delta 2**-6 (the encoder's default)
    quant = QuantConfig(code.pos_frac_bits, code.chol_bits, code.color_step_q, code.color_alpha_q)
    re = quantize_model(code_to_model(code), quant, code.chol_range)
    assert re.equals(code)
    np.testing.assert_array_equal(render_code(re), a)


def test_encode_quality_and_reported_psnr(encoded):
    img, path, result = encoded
    dec = decode_image(path).astype(np.float64)
    psnr = 10 * np.log10(255.0**2 / np.mean((dec - img) ** 2))
    assert abs(psnr - result.psnr) < 1e-6
    flat = 10 * np.log10(255.0**2 / np.mean((img - img.reshape(-1, 3).mean(0)) ** 2))
    assert psnr > flat + 6.0  # the Gaussians represent the image, far better than its mean colour


@pytest.mark.parametrize("bpp,search", [(4.0, True), (8.0, False)])
def test_rate_control_within_ten_percent(tmp_path, bpp, search):
    torch.set_num_threads(1)
    img = synthetic_image(seed=1)
    r = encode_image(img, bpp, tmp_path / "r.scz", steps=10, search=search, seed=1, progress=False)
    assert abs(r.bpp - bpp) <= 0.1 * bpp, r.log
    assert r.nbytes == (tmp_path / "r.scz").stat().st_size
    assert abs(r.nbytes * 8 / (img.shape[0] * img.shape[1]) - r.bpp) < 1e-12


def _write(dst, data: bytes, method="image", metadata=None, extra=None):
    streams = {STREAM: (np.frombuffer(data, np.uint8), "raw")}
    streams.update(extra or {})
    write_scz(dst, method, metadata or {}, streams)
    return dst


def _with_head(data: bytes, index: int, value: int) -> bytes:
    """``data`` with header varint ``index`` (0 width, 1 height, 2 count, 5 colour step, 6 its area
    exponent, 7 blend; after the two layout varints) set to ``value``."""
    head, pos = decode_varints(data, 0, 16)
    head[2 + index] = value
    return encode_varints(head) + data[pos:]


def test_single_stream_and_small_header(encoded):
    _, path, result = encoded
    scene = read_scz(path)
    assert list(scene.streams) == [STREAM] and scene.metadata == {}
    assert scene.header_nbytes < 200  # the JSON header is a small fixed cost, not one record per array
    code = read_code(path)
    assert unpack_code(pack_code(code), "t").equals(code)


def test_decoder_checks_counts_and_shapes(encoded, tmp_path):
    _, path, _ = encoded
    code = read_code(path)
    data = pack_code(code)
    with pytest.raises(SceneFileError, match="bytes|symbols|truncated|left|corrupt"):
        read_code(_write(tmp_path / "n.scz", _with_head(data, 2, code.n + 1)))
    with pytest.raises(SceneFileError, match="truncated|left"):
        read_code(_write(tmp_path / "c.scz", data[:-3]))
    with pytest.raises(SceneFileError, match="unexpected bytes"):
        read_code(_write(tmp_path / "e.scz", data + b"\x00"))
    with pytest.raises(SceneFileError, match="color_step_q"):
        read_code(_write(tmp_path / "s.scz", _with_head(data, 5, 61)))
    with pytest.raises(SceneFileError, match="outside"):
        read_code(_write(tmp_path / "w.scz", _with_head(_with_head(data, 0, 1), 1, 1)))
    with pytest.raises(SceneFileError, match="not an image"):
        read_code(_write(tmp_path / "x.scz", data, method="3dgs"))
    with pytest.raises(SceneFileError, match="layout 1"):  # the unmarked layout before 2026-12-06
        read_code(_write(tmp_path / "l1.scz", data[2:]))
    with pytest.raises(SceneFileError, match="layout 5"):
        read_code(_write(tmp_path / "l5.scz", b"\x00\x05" + data[2:]))
    with pytest.raises(SceneFileError, match="blend"):
        read_code(_write(tmp_path / "b.scz", _with_head(data, 7, 25)))
    with pytest.raises(SceneFileError, match="color_alpha_q"):
        read_code(_write(tmp_path / "a.scz", _with_head(data, 6, 17)))
    with pytest.raises(SceneFileError, match="exactly one stream"):
        read_code(_write(tmp_path / "y.scz", data, extra={"more": (np.zeros(3, np.uint8), "raw")}))
    with pytest.raises(SceneFileError, match="metadata"):
        read_code(_write(tmp_path / "z.scz", data, metadata={"width": 3}))
    # a valid code with a different colour step decodes to different colours: the step is really read
    other = read_code(_write(tmp_path / "o.scz", pack_code(replace(code, color_step_q=code.color_step_q + 4))))
    assert not np.array_equal(render_code(other), render_code(code))
    file_bytes = path.read_bytes()
    (tmp_path / "t.scz").write_bytes(file_bytes[:-5])
    with pytest.raises(SceneFileError):
        decode_image(tmp_path / "t.scz")


def test_init_puts_gaussians_on_detail():
    """Left half flat, right half a fine checkerboard: most Gaussians start on the right."""
    h, w = 32, 64
    img = torch.full((h, w, 3), 0.5)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    img[:, w // 2 :] = ((xx[:, w // 2 :] // 2 + yy[:, w // 2 :] // 2) % 2).float()[..., None]
    assert float(detail_map(img)[:, : w // 2 - 2].max()) == 0.0
    m = init_from_image(img, 200, uniform_mix=0.3, seed=0)
    right = float((m.means[:, 0] >= w // 2).float().mean())
    assert right > 0.75
    assert m.means.shape == (200, 2) and torch.isfinite(m.colors).all()


def test_fit_improves_psnr():
    torch.set_num_threads(1)
    img = torch.from_numpy(synthetic_image(24, 32).astype(np.float32) / 255.0)
    m = init_from_image(img, 60, seed=0)
    before = psnr_of(m.render().detach(), img)
    after = fit(m, img, FitConfig(steps=40), progress=False)
    assert after > before + 2.0


def test_spawn_at_error_targets_the_wrong_region():
    """The model renders the left half right and misses a bright square on the right: new Gaussians
    land on the square, with the residual (positive, bright) as colour."""
    torch.set_num_threads(1)
    h, w = 32, 48
    img = torch.full((h, w, 3), 0.2)
    img[8:20, 30:42] = 0.9
    m = init_from_image(torch.full((h, w, 3), 0.2), 40, seed=0)
    fit(m, torch.full((h, w, 3), 0.2), FitConfig(steps=20), progress=False)
    means, chol_raw, colors = spawn_at_error(m, img, 30, seed=1)
    assert means.shape == (30, 2) and chol_raw.shape == (30, 3) and colors.shape == (30, 3)
    inside = (means[:, 0] >= 29) & (means[:, 0] <= 43) & (means[:, 1] >= 7) & (means[:, 1] <= 21)
    assert float(inside.float().mean()) > 0.8
    assert float(colors[inside].mean()) > 0.3
    torch.testing.assert_close(chol_raw[:, 1], torch.zeros(30))  # isotropic
    with pytest.raises(ValueError, match="k must be"):
        spawn_at_error(m, img, h * w + 1)
    # normalized: a new Gaussian paints the image colour at its pixel, not the residual
    mn = init_from_image(torch.full((h, w, 3), 0.2), 40, seed=0, delta=2.0**-6)
    means, _, colors = spawn_at_error(mn, img, 30, seed=1)
    px = means.floor().long()
    torch.testing.assert_close(colors, img[px[:, 1], px[:, 0]])
    assert float((colors[:, 0] == 0.9).float().mean()) > 0.6  # most land on the square, in its colour


def test_fit_grows_to_the_requested_count_and_helps():
    """Densifying from 30 to 90 Gaussians ends with 90 (all finite) and beats fitting the 30 alone;
    the optimizer keeps working on the grown parameters (the spawned ones move)."""
    torch.set_num_threads(1)
    img = torch.from_numpy(synthetic_image(24, 32).astype(np.float32) / 255.0)
    small = init_from_image(img, 30, seed=0)
    grown = init_from_image(img, 30, seed=0)
    p_small = fit(small, img, FitConfig(steps=40), progress=False)
    p_grown = fit(grown, img, FitConfig(steps=40, grow_to=90, grow_at=(0.1, 0.2, 0.3)), progress=False)
    assert grown.n == 90 and small.n == 30
    assert all(bool(torch.isfinite(p).all()) for p in grown.params())
    assert p_grown > p_small + 1.0
    assert grown.means.requires_grad and isinstance(grown.means, torch.nn.Parameter)
    with pytest.raises(ValueError, match="grow_to"):
        fit(init_from_image(img, 10, seed=0), img, FitConfig(steps=5, grow_to=20, grow_at=(1.5,)), progress=False)


def test_fit_with_frozen_quantized_covariances_moves_only_positions_and_colours():
    """The encoder's last fitting stage: Cholesky factors on the decoded grid and a zero learning rate
    stay bit-identical (the scale clamp must not move them) while positions and colours improve the fit."""
    from scenezip.splatting.image_codec import quantize_chol

    img = torch.from_numpy(synthetic_image(20, 24, seed=4).astype(np.float32) / 255.0)
    model = init_from_image(img, 30, seed=0)
    fit(model, img, FitConfig(steps=20), progress=False)
    cr = make_chol_range(model.chol_raw)
    with torch.no_grad():
        model.chol_raw.copy_(quantize_chol(model.chol_raw, cr, 4))
    chol0, means0 = model.chol_raw.detach().clone(), model.means.detach().clone()
    with torch.no_grad():
        before = psnr_of(model.render(), img)
    after = fit(model, img, FitConfig(steps=20, lr_chol=0.0), progress=False)
    assert torch.equal(model.chol_raw.detach(), chol0)
    assert not torch.equal(model.means.detach(), means0)
    assert after > before


def test_pack_round_trip_both_table_kinds():
    """Random integers: Laplace-like colours (geometric tables) and flat/bimodal Cholesky levels
    (4-bit tables) come back exactly; an empty code too."""
    rng = np.random.default_rng(3)
    n = 300
    q = np.stack([rng.integers(0, 4 * 50, n), rng.integers(0, 4 * 40, n)], -1)
    order = morton_order(np.stack([q[:, 0], q[:, 1], np.zeros(n, dtype=np.int64)], -1))
    chol = np.stack([rng.integers(0, 64, n), np.where(rng.random(n) < 0.5, 3, 60), rng.integers(10, 12, n)], -1)
    color = np.rint(rng.laplace(0, [8.0, 2.0, 0.7], size=(n, 3))).astype(np.int16)
    from scenezip.splatting.image_codec import ImageCode

    code = ImageCode(50, 40, 2, 6, 22, np.array([[-64, -5, -64], [200, 7, 190]]), q[order], chol.astype(np.uint8), color)
    data = pack_code(code)
    assert unpack_code(data, "t").equals(code)
    assert data[:3] == bytes([0, 4, 50]) and len(data) < n * (18 + 18 + 12) / 8  # layout, width; well under raw bits
    empty = ImageCode(5, 4, 2, 6, 22, code.chol_range, q[:0], chol[:0].astype(np.uint8), color[:0])
    assert unpack_code(pack_code(empty), "t").equals(empty)


@pytest.mark.parametrize("alpha_q,delta", [(0, None), (3, None), (3, 2.0**-6)])
def test_round_colors_beats_rounding_to_nearest(alpha_q, delta):
    """Least squares + error-feedback rounding: integers on the same steps (one, or one per Gaussian),
    clearly better in image error than rounding the fitted colours to nearest at a coarse step, geometry kept."""
    from scenezip.splatting.image_codec import round_colors

    torch.set_num_threads(1)
    img8 = synthetic_image(24, 32, seed=2)
    img = torch.from_numpy(img8.astype(np.float32) / 255.0)
    model = init_from_image(img, 120, seed=0, delta=delta)
    fit(model, img, FitConfig(steps=30), progress=False)
    quant = QuantConfig(pos_frac_bits=1, chol_bits=5, color_step_q=8 - 2 * alpha_q, color_alpha_q=alpha_q)  # coarse
    code = quantize_model(model, quant, make_chol_range(model.chol_raw))
    out = round_colors(code, img, block=50)  # blocks smaller than N: the cross-block path runs
    assert out.q_color.dtype == np.int16 and out.q_color.shape == code.q_color.shape
    np.testing.assert_array_equal(out.q_pos, code.q_pos)
    np.testing.assert_array_equal(out.q_chol, code.q_chol)

    def mse(c):
        return float(np.mean((render_code(c).astype(np.float64) / 255.0 - img.double().numpy()) ** 2))

    assert mse(out) < 0.8 * mse(code)
    # the result is a valid code: it packs and unpacks to the same integers
    assert unpack_code(pack_code(out), "test").equals(out)


def test_frozen_covariances_are_the_decoded_ones():
    """What the encoder freezes (:func:`quantize_chol`) is what the file decodes to, off-diagonal
    companding included (``l2 = u |u|``), and the companded grid is finer near ``l2 = 0``."""
    from scenezip.splatting.image_codec import code_to_params, quantize_chol

    gen = torch.Generator().manual_seed(5)
    n = 200
    cells = torch.randperm(128 * 128, generator=gen)[:n]  # distinct points of the 0.25 px grid of 32x32
    means = torch.stack([cells % 128, cells // 128], -1).to(torch.float32) / 4
    chol_raw = torch.stack([torch.randn(n, generator=gen), torch.randn(n, generator=gen) * 6,
                            torch.randn(n, generator=gen)], -1)  # fmt: skip
    model = ImageGaussians(means, chol_raw, torch.rand(n, 3, generator=gen), 32, 32)
    quant = QuantConfig(pos_frac_bits=2, chol_bits=5, color_step_q=22)
    cr = make_chol_range(model.chol_raw)
    frozen = quantize_chol(model.chol_raw, cr, quant.chol_bits)
    dec_means, dec_chol, _ = code_to_params(quantize_model(model, quant, cr))
    by_cell = {int(c): i for i, c in enumerate(cells)}  # the file stores Morton order: match by position
    idx = [by_cell[int(x * 4) + 128 * int(y * 4)] for x, y in dec_means.tolist()]
    torch.testing.assert_close(dec_chol, frozen[idx], atol=1e-6, rtol=1e-6)
    levels = np.unique(frozen[:, 1].numpy())
    steps, mid = np.diff(levels), np.abs(levels[1:] + levels[:-1]) / 2
    assert (mid < 1).any() and (mid > 8).any() and steps[mid < 1].max() < steps[mid > 8].min()


def test_fuzzed_code_streams_give_only_clean_errors(encoded):
    """The container's CRC stops corrupted files before the code stream is parsed, so the stream parser is
    fuzzed directly: flipped bits, inserted and deleted bytes, truncation. Every outcome is either a code
    (a corruption can stay valid) or a SceneFileError naming the input, never another exception."""
    _, path, _ = encoded
    data = pack_code(read_code(path))
    rng = np.random.default_rng(77)
    errors = 0
    for i in range(300):
        buf = bytearray(data)
        kind = i % 4
        pos = int(rng.integers(0, len(buf)))
        if kind == 0:
            for _ in range(int(rng.integers(1, 4))):
                buf[int(rng.integers(0, len(buf)))] ^= 1 << int(rng.integers(0, 8))
        elif kind == 1:
            buf[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 9))).astype(np.uint8).tobytes()
        elif kind == 2:
            del buf[pos : pos + int(rng.integers(1, 9))]
        else:
            del buf[pos:]
        try:
            code = unpack_code(bytes(buf), "fuzz")
        except SceneFileError as e:
            assert str(e).startswith("fuzz: ")
            errors += 1
            continue
        assert code.q_pos.shape[0] == code.n <= 8 * len(buf)
    assert errors > 200  # most corruptions are caught


def test_per_gaussian_colour_steps():
    """Step exponents ``color_step_q + round(4 alpha log2(l1 l3))`` from the stored levels, clipped; alpha 0
    is one step for all; the decoder uses them; a layout-2 stream (no exponent) reads as alpha 0."""
    from scenezip.splatting.image_codec import ImageCode, MAX_STEP_Q, code_to_params, color_step_qs, dequantize_colors

    chol_range = np.array([[0, -64, 0], [256, 64, 256]])  # log l1, log l3 levels 0, 4/3, 8/3, 4 at 2 bits
    q_chol = np.array([[0, 1, 0], [1, 2, 0], [3, 0, 3], [1, 1, 2]], dtype=np.uint8)
    log_area = (q_chol[:, 0] + q_chol[:, 2]) * 4.0 / 3.0
    for alpha_q in (1, 3, 8):
        expect = np.clip(10 + np.round(4 * (alpha_q / 8) * log_area / np.log(2)), 0, MAX_STEP_Q)
        np.testing.assert_array_equal(color_step_qs(q_chol, chol_range, 2, 10, alpha_q), expect)
    np.testing.assert_array_equal(color_step_qs(q_chol, chol_range, 2, 10, 0), [10] * 4)
    assert color_step_qs(q_chol, chol_range, 2, 50, 8)[2] == MAX_STEP_Q  # clipped (50 + 46)

    q_pos = np.array([[0, 0], [3, 1], [1, 5], [6, 6]])
    q_pos = q_pos[np.argsort(morton2d(q_pos), kind="stable")]
    q_color = np.array([[40, -3, 2], [40, -3, 2], [40, -3, 2], [40, -3, 2]], dtype=np.int16)
    flat = ImageCode(4, 4, 1, 2, 10, chol_range, q_pos, q_chol, q_color, 0)
    sized = replace(flat, color_alpha_q=3)
    steps = 2.0 ** (-color_step_qs(q_chol, chol_range, 2, 10, 3) / 4.0)
    np.testing.assert_array_equal(code_to_params(sized)[2].numpy(), dequantize_colors(q_color, steps))
    assert len(set(code_to_params(sized)[2][:, 0].tolist())) > 1  # same integers, different colours
    assert len(set(code_to_params(flat)[2][:, 0].tolist())) == 1
    for code in (flat, sized):
        assert unpack_code(pack_code(code), "t").equals(code)
    # layouts 2 and 3: the same header without the exponent and blend varints, or without the blend
    head, pos = decode_varints(pack_code(flat), 0, 10)
    assert head[1] == 4 and head[8] == 0 and head[9] == 0
    layout2 = encode_varints(np.concatenate([[0, 2], head[2:8]])) + pack_code(flat)[pos:]
    assert unpack_code(layout2, "t").equals(flat)
    layout3 = encode_varints(np.concatenate([[0, 3], head[2:9]])) + pack_code(flat)[pos:]
    assert unpack_code(layout3, "t").equals(flat)


def test_normalized_blend_in_the_file_and_the_model():
    """The blend integer names delta = 2**-k (others refused); a normalized model's code decodes to its
    own render; importance is the render change of removing a Gaussian: little for a copy of its
    neighbour (only in the tails, where the weights are near delta), much for a lone one."""
    from scenezip.splatting.image_codec import blend_delta, blend_of, code_to_model

    assert blend_of(None) == 0 and blend_of(2.0**-6) == 6 and blend_delta(6) == 2.0**-6 and blend_delta(0) is None
    for bad in (0.01, 0.0, 2.0**-30, 1.0):
        with pytest.raises(ValueError, match="delta"):
            blend_of(bad)
    with pytest.raises(ValueError, match="delta"):
        encode_image(synthetic_image(), 4.0, "unused.scz", steps=1, progress=False, delta=0.01)
    means = torch.tensor([[10.0, 10.0], [10.0, 10.0], [30.0, 20.0], [20.0, 30.0]])
    chol_raw = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0], [0.5, 0.3, 0.8], [1.5, 0.0, 1.2]])
    colors = torch.tensor([[0.2, 0.5, 0.9], [0.2, 0.5, 0.9], [0.9, 0.1, 0.1], [0.6, 0.6, 0.1]])
    model = ImageGaussians(means, chol_raw, colors, 40, 40, delta=2.0**-6)
    imp = model.importance()
    assert float(imp[0]) == pytest.approx(float(imp[1])) and float(imp[0]) < 0.1 * float(imp[2:].min())
    code = quantize_model(model, QuantConfig(pos_frac_bits=2, chol_bits=8, color_step_q=40, color_alpha_q=0),
                          make_chol_range(model.chol_raw))  # fmt: skip
    assert code.blend == 6 and code_to_model(code).delta == 2.0**-6
    dec = render_code(code).astype(np.float64) / 255.0
    ref = model.render().clamp(0, 1).detach().numpy()
    assert np.abs(dec - ref).max() < 0.03  # fine quantizers: the file renders the normalized model
    summed = render_code(replace(code, blend=0)).astype(np.float64) / 255.0
    assert np.abs(summed - ref).max() > 0.2  # the blend integer is really read
