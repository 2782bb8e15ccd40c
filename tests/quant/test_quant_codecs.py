"""Stream codecs, uniform quantization and Morton order (scenezip.quant.codecs, scenezip.quant.morton)."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from scenezip.errors import SceneFileError
from scenezip.quant import entropy
from scenezip.quant.codecs import (
    CODECS,
    DTYPES,
    INT_DTYPES,
    dequantize_uniform,
    get_codec,
    quantize_uniform,
)
from scenezip.quant.morton import morton_encode, morton_order

SHAPES = [(), (5,), (0, 3), (17, 3), (4, 2, 3)]


def _sample(dtype: str, shape: tuple, rng: np.random.Generator) -> np.ndarray:
    if dtype == "bool":
        return np.asarray(rng.random(shape) > 0.3)
    if dtype.startswith("float"):
        x = rng.standard_normal(shape).astype(dtype)
        if x.size:
            x.reshape(-1)[0] = -0.0  # the sign of zero must survive
        return np.asarray(x)
    info = np.iinfo(dtype)
    x = rng.integers(max(int(info.min), -300), min(int(info.max), 300), shape, endpoint=True)
    x = np.asarray(x).astype(dtype)
    if x.size >= 2:  # the extremes of the dtype must survive too
        x.reshape(-1)[0], x.reshape(-1)[-1] = info.min, info.max
    return x


@pytest.mark.parametrize("name", list(CODECS))
@pytest.mark.parametrize("shape", SHAPES)
def test_round_trip_bit_exact(name, shape):
    codec = get_codec(name)
    rng = np.random.default_rng(len(shape))
    for dtype in codec.dtypes:
        if name.startswith("rans") and dtype == "int64":  # rans codes value ranges up to 2^61 / 2^62 wide
            x = np.asarray(rng.integers(-(2**40), 2**40, shape))
        else:
            x = _sample(dtype, shape, rng)
        payload, params = codec.encode(x)
        assert isinstance(payload, bytes) and isinstance(params, dict)
        y = codec.decode(payload, dtype, list(shape), params)
        assert y.dtype == x.dtype and y.shape == x.shape, (name, dtype)
        assert y.tobytes() == x.tobytes(), (name, dtype)


def test_registry_ids_are_fixed_names():
    assert set(CODECS) >= {"raw", "rans", "rans-delta", "zlib"}
    for name, codec in CODECS.items():
        assert codec.name == name
    with pytest.raises(SceneFileError, match="unknown codec 'lzma'"):
        get_codec("lzma")
    with pytest.raises(SceneFileError, match="unknown codec"):
        get_codec(0)


def test_raw_is_little_endian_bytes():
    x = np.array([1.5, -2.0], dtype=np.float32)
    payload, params = get_codec("raw").encode(x)
    assert payload == x.astype("<f4").tobytes() and params == {}
    big = x.astype(">f4")
    assert get_codec("raw").encode(big)[0] == payload


def test_zlib_is_plain_zlib():
    x = np.arange(1000, dtype=np.int32)
    payload, params = get_codec("zlib").encode(x, level=6)
    assert zlib.decompress(payload) == x.astype("<i4").tobytes()
    assert params == {"level": 6}


def test_rans_compresses_skewed_ints_near_entropy():
    rng = np.random.default_rng(0)
    x = (np.minimum(rng.geometric(0.3, size=100_000) - 1, 40) - 7).astype(np.int16)  # negative values
    payload, params = get_codec("rans").encode(x)
    assert params == {"offset": int(x.min())}
    h = entropy.entropy_bits(x)
    assert 8 * len(payload) <= 1.01 * h + 8 * 200
    np.testing.assert_array_equal(get_codec("rans").decode(payload, "int16", [x.size], params), x)


def test_rans_delta_beats_rans_on_sorted_positions():
    rng = np.random.default_rng(1)
    q = quantize_uniform(rng.random((5000, 3)), 0.0, 1.0, 12).astype(np.int32)
    q = q[morton_order(q)]
    d_payload, d_params = get_codec("rans-delta").encode(q)
    r_payload, _ = get_codec("rans").encode(q)
    assert len(d_payload) < len(r_payload)
    out = get_codec("rans-delta").decode(d_payload, "int32", [5000, 3], d_params)
    np.testing.assert_array_equal(out, q)


def test_encode_rejects_wrong_inputs():
    with pytest.raises(ValueError, match="does not take dtype float32"):
        get_codec("rans").encode(np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match="does not take dtype"):
        get_codec("rans-delta").encode(np.zeros(3, dtype=np.uint64))
    with pytest.raises(ValueError, match="does not take dtype"):
        get_codec("raw").encode(np.array(["a"]))
    with pytest.raises(ValueError, match="wider than 2"):
        get_codec("rans").encode(np.array([-(2**62), 2**62]))
    with pytest.raises(ValueError, match="level"):
        get_codec("zlib").encode(np.zeros(3), level=12)


class TestDecodeChecks:
    def test_raw_size_mismatch(self):
        with pytest.raises(SceneFileError, match="expected 12"):
            get_codec("raw").decode(b"\x00" * 8, "float32", [3], {})

    def test_bad_dtype_and_shape(self):
        with pytest.raises(SceneFileError, match="unsupported dtype 'object'"):
            get_codec("raw").decode(b"", "object", [0], {})
        with pytest.raises(SceneFileError, match="cannot hold dtype float32"):
            get_codec("rans").decode(b"", "float32", [0], {"offset": 0})
        with pytest.raises(SceneFileError, match="non-negative integers"):
            get_codec("raw").decode(b"", "uint8", [-1], {})
        with pytest.raises(SceneFileError, match="shape must be a list"):
            get_codec("raw").decode(b"", "uint8", "3", {})

    def test_params_checked(self):
        payload, params = get_codec("rans").encode(np.arange(10, dtype=np.int32))
        with pytest.raises(SceneFileError, match="missing parameter 'offset'"):
            get_codec("rans").decode(payload, "int32", [10], {})
        with pytest.raises(SceneFileError, match="unknown parameter 'x'"):
            get_codec("rans").decode(payload, "int32", [10], {"offset": 0, "x": 1})
        with pytest.raises(SceneFileError, match="must be an integer"):
            get_codec("rans").decode(payload, "int32", [10], {"offset": "0"})
        with pytest.raises(SceneFileError, match="outside the uint8 range"):
            get_codec("rans").decode(payload, "uint8", [10], {"offset": -5})

    def test_rans_values_outside_dtype(self):
        payload, params = get_codec("rans").encode(np.array([0, 200, 255], dtype=np.int32))
        with pytest.raises(SceneFileError, match="exceed the int8 range"):
            get_codec("rans").decode(payload, "int8", [3], params)

    def test_huge_counts_refused_before_allocating(self):
        payload, params = get_codec("rans").encode(np.zeros(10, dtype=np.int32))
        with pytest.raises(SceneFileError, match="cannot come from"):
            get_codec("rans").decode(payload, "int32", [1 << 40], params)
        z, zp = get_codec("zlib").encode(np.zeros(10, dtype=np.float32))
        with pytest.raises(SceneFileError, match="cannot inflate"):
            get_codec("zlib").decode(z, "float32", [1 << 40], zp)

    def test_zlib_corrupt_and_wrong_length(self):
        z, zp = get_codec("zlib").encode(np.arange(100, dtype=np.float32))
        with pytest.raises(SceneFileError, match="corrupt"):
            get_codec("zlib").decode(b"\x00" + z[1:], "float32", [100], zp)
        with pytest.raises(SceneFileError, match="exactly"):
            get_codec("zlib").decode(z, "float32", [99], zp)
        with pytest.raises(SceneFileError, match="exactly"):
            get_codec("zlib").decode(z, "float32", [101], zp)

    def test_bool_payload_must_be_zero_or_one(self):
        with pytest.raises(SceneFileError, match="0 or 1"):
            get_codec("raw").decode(b"\x00\x02", "bool", [2], {})


class TestQuantizeUniform:
    @pytest.mark.parametrize("bits", [1, 8, 11, 16, 24])
    def test_error_at_most_half_a_step(self, bits):
        rng = np.random.default_rng(bits)
        lo, hi = np.array([-2.0, 0.0, 10.0]), np.array([3.0, 1.0, 10.5])
        x = (lo + (hi - lo) * rng.random((1000, 3))).astype(np.float32)
        q = quantize_uniform(x, lo, hi, bits)
        assert q.dtype == (np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32)
        assert int(q.max()) <= (1 << bits) - 1
        y = dequantize_uniform(q, lo, hi, bits)
        assert y.dtype == np.float32
        step = (hi - lo) / ((1 << bits) - 1)
        err = np.abs(y.astype(np.float64) - x.astype(np.float64))
        assert np.all(err <= step / 2 * (1 + 1e-6) + 4 * np.finfo(np.float32).eps * np.abs(x))
        # requantizing a dequantized value is the identity
        np.testing.assert_array_equal(quantize_uniform(y, lo, hi, bits), q)

    def test_clips_and_hits_ends(self):
        q = quantize_uniform(np.array([-5.0, 0.0, 1.0, 7.0]), 0.0, 1.0, 8)
        np.testing.assert_array_equal(q, [0, 0, 255, 255])

    def test_exceptions(self):
        with pytest.raises(ValueError, match="bits"):
            quantize_uniform(np.zeros(2), 0.0, 1.0, 0)
        with pytest.raises(ValueError, match="bits"):
            quantize_uniform(np.zeros(2), 0.0, 1.0, 33)
        with pytest.raises(ValueError, match="hi > lo"):
            quantize_uniform(np.zeros(2), 1.0, 1.0, 8)
        with pytest.raises(ValueError, match="NaN"):
            quantize_uniform(np.array([np.nan]), 0.0, 1.0, 8)


class TestMorton:
    def test_matches_bit_by_bit_interleave(self):
        rng = np.random.default_rng(0)
        q = rng.integers(0, 1 << 21, (50, 3))
        q[0] = (1 << 21) - 1
        codes = morton_encode(q)
        for p, c in zip(q, codes):
            ref = 0
            for b in range(21):
                for axis in range(3):
                    ref |= ((int(p[axis]) >> b) & 1) << (3 * b + axis)
            assert int(c) == ref
        assert codes.dtype == np.int64 and int(codes.min()) >= 0

    def test_is_permutation_and_groups_neighbours(self):
        rng = np.random.default_rng(1)
        q = rng.integers(0, 1 << 10, (4000, 3))
        perm = morton_order(q)
        np.testing.assert_array_equal(np.sort(perm), np.arange(4000))
        sorted_codes = morton_encode(q)[perm]
        assert np.all(np.diff(sorted_codes) >= 0)
        step_morton = np.linalg.norm(np.diff(q[perm].astype(float), axis=0), axis=1).mean()
        step_random = np.linalg.norm(np.diff(q[rng.permutation(4000)].astype(float), axis=0), axis=1).mean()
        assert step_morton < 0.25 * step_random

    def test_exceptions(self):
        with pytest.raises(ValueError, match=r"\[N, 3\]"):
            morton_order(np.zeros((4, 2), dtype=np.int64))
        with pytest.raises(ValueError, match="integers"):
            morton_order(np.zeros((4, 3), dtype=np.float32))
        with pytest.raises(ValueError, match=r"\[0, 2\^21\)"):
            morton_order(np.array([[0, 0, 1 << 21]]))
        with pytest.raises(ValueError, match=r"\[0, 2\^21\)"):
            morton_order(np.array([[0, -1, 0]]))
        assert morton_order(np.zeros((0, 3), dtype=np.int64)).shape == (0,)


def test_dtype_lists_consistent():
    assert set(INT_DTYPES) <= set(DTYPES)
    assert "uint64" not in INT_DTYPES  # rans arithmetic stays inside int64


def test_entropy_bytes_is_the_bound_the_coder_approaches():
    from scenezip.quant.codecs import entropy_bytes, get_codec

    rng = np.random.default_rng(0)
    x = rng.integers(0, 4, size=40_000).astype(np.uint8)  # 2 bits a symbol
    h = entropy_bytes(x, "rans")
    assert h == pytest.approx(10_000, rel=1e-3)
    coded = len(get_codec("rans").encode(x)[0])
    assert h <= coded <= 1.01 * h + 64
    ramp = np.arange(1000, dtype=np.uint16)  # its deltas are all 1 but the first: almost no information
    assert entropy_bytes(ramp, "rans-delta") < 2.0 < entropy_bytes(ramp, "rans")
    assert entropy_bytes(x, "raw") is None and entropy_bytes(x.astype(np.float32), "rans") is None
