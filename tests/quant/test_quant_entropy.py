"""rANS entropy coding with stored integer frequency tables (scenezip.quant.entropy)."""

from __future__ import annotations

import numpy as np
import pytest

from scenezip.errors import SceneFileError
from scenezip.quant import entropy as E


def _skewed(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.minimum(rng.geometric(0.25, size=n) - 1, 63)


def _reference_rans(idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """A plain-Python rANS coder (64-bit state, 32-bit words, 24-bit model) from integer weights alone."""
    cdf = np.concatenate([[0], np.cumsum(weights)])
    words, state = [], 0
    for s in idx[::-1]:
        w = int(weights[s])
        if (state >> 40) >= w:
            words.append(state & 0xFFFFFFFF)
            state >>= 32
        state = ((state // w) << 24) | ((state % w) + int(cdf[s]))
    while state:
        words.append(state & 0xFFFFFFFF)
        state >>= 32
    return np.array(words, dtype="<u4")


class TestFreqTable:
    def test_sums_to_power_of_two_and_used_symbols_positive(self):
        x = _skewed(10_000)
        for precision in (12, 16, 20):
            t = E.freq_table(x, 64, precision)
            assert t.shape == (64,) and t.dtype == np.int64
            assert int(t.sum()) == 1 << precision
            used = np.bincount(x, minlength=64) > 0
            assert np.all(t[used] >= 1) and np.all(t[~used] == 0)

    def test_proportional(self):
        x = np.repeat(np.arange(4), [1000, 2000, 3000, 2000])
        t = E.freq_table(x, 4, 16)
        np.testing.assert_array_equal(t, np.array([1, 2, 3, 2]) * (1 << 16) // 8)

    def test_rare_symbols_keep_frequency_one(self):
        x = np.concatenate([np.zeros(1_000_000, dtype=np.int64), np.arange(1, 300)])
        t = E.freq_table(x, 300, 12)
        assert int(t.sum()) == 1 << 12 and np.all(t >= 1)
        # the dominant symbol is capped so every symbol costs at least -log2(1 - 2^-12) bits
        assert t[0] <= (1 << 12) - 1

    def test_deterministic(self):
        x = _skewed(5000, seed=3)
        np.testing.assert_array_equal(E.freq_table(x, 64), E.freq_table(x.copy(), 64))

    def test_exceptions(self):
        with pytest.raises(ValueError, match="symbols must lie"):
            E.freq_table(np.array([0, 5]), 5)
        with pytest.raises(ValueError, match="symbols must lie"):
            E.freq_table(np.array([-1, 2]), 5)
        with pytest.raises(ValueError, match="must be integers"):
            E.freq_table(np.array([0.5]), 5)
        with pytest.raises(ValueError, match="precision"):
            E.freq_table(np.array([0, 1]), 2, precision=30)
        with pytest.raises(ValueError, match="do not fit precision"):
            E.freq_table(np.arange(5000), 5000, precision=12)
        with pytest.raises(ValueError, match="alphabet_size"):
            E.freq_table(np.array([0]), 0)


class TestCoder:
    def test_round_trip_and_rate(self):
        x = _skewed(100_000)
        table = E.sparse_freq_table(x, 64)
        data = E.encode(x, table)
        np.testing.assert_array_equal(E.decode(data, table, x.size), x)
        h = E.entropy_bits(x)
        table_bits = 8 * len(E.serialize_table(table))
        assert 8 * len(data) >= h - 64  # no coder beats the empirical entropy (up to the final state)
        assert 8 * len(data) <= 1.01 * h + 64
        assert table_bits < 0.01 * h

    def test_model_is_exactly_the_integer_table(self):
        """constriction's output equals a plain rANS coder that only sees the stored integers."""
        x = _skewed(3000, seed=1)
        table = E.sparse_freq_table(x, 64, precision=14)
        weights = E._model_weights(table)
        assert int(weights.sum()) == 1 << 24
        idx = np.searchsorted(table.symbols, x) + 1
        expected = _reference_rans(idx, weights)
        assert E.encode(x, table) == expected.tobytes()

    def test_dense_and_sparse_tables_agree(self):
        x = _skewed(2000)
        sparse = E.sparse_freq_table(x, 64)
        dense = E.freq_table(x, 64)
        assert E.encode(x, sparse) == E.encode(x, dense)
        np.testing.assert_array_equal(E.decode(E.encode(x, dense), dense, x.size), x)

    def test_empty(self):
        table = E.sparse_freq_table(np.zeros(0, dtype=np.int64), 5)
        assert table.num_used == 0
        assert E.encode(np.zeros(0, dtype=np.int64), table) == b""
        assert E.decode(b"", table, 0).shape == (0,)
        with pytest.raises(SceneFileError, match="left over"):
            E.decode(b"\x01\x00\x00\x00", table, 0)
        with pytest.raises(SceneFileError, match="empty table"):
            E.decode(b"", table, 3)

    @pytest.mark.parametrize("alphabet", [1, 7])
    def test_one_distinct_symbol(self, alphabet):
        x = np.full(100_000, alphabet - 1)
        table = E.sparse_freq_table(x, alphabet)
        data = E.encode(x, table)
        assert 0 < len(data) <= 32  # ~3.5e-4 bits per symbol
        np.testing.assert_array_equal(E.decode(data, table, x.size), x)
        assert x.size <= E.max_symbols(len(data))

    def test_large_alphabet(self):
        rng = np.random.default_rng(0)
        x = rng.integers(0, 65536, 50_000)
        table = E.sparse_freq_table(x, 65536)
        data = E.encode(x, table)
        parsed, end = E.parse_table(E.serialize_table(table))
        np.testing.assert_array_equal(E.decode(data, parsed, x.size), x)

    def test_sparse_huge_alphabet(self):
        x = np.array([0, 3, 2**40, 2**40, 2**61])
        table = E.sparse_freq_table(x, 2**62)
        blob = E.serialize_table(table)
        assert len(blob) < 64
        parsed, _ = E.parse_table(blob)
        np.testing.assert_array_equal(E.decode(E.encode(x, table), parsed, x.size), x)

    def test_symbol_outside_table(self):
        table = E.sparse_freq_table(np.array([0, 1, 1, 3]), 8)
        with pytest.raises(ValueError, match="symbol 2 is not in the table"):
            E.encode(np.array([0, 2]), table)
        with pytest.raises(ValueError, match="symbol 9 is not in the table"):
            E.encode(np.array([9]), table)
        with pytest.raises(ValueError, match="must be integers"):
            E.encode(np.array([0.0]), table)

    def test_corrupt_payload(self):
        x = _skewed(1000)
        table = E.sparse_freq_table(x, 64)
        data = E.encode(x, table)
        with pytest.raises(SceneFileError, match="32-bit words"):
            E.decode(data[:-1], table, x.size)
        with pytest.raises(SceneFileError):
            E.decode(data, table, x.size - 1)  # data left over
        with pytest.raises(SceneFileError):
            E.decode(data, table, x.size + 1)  # runs into the reserved symbol
        with pytest.raises(SceneFileError, match="cannot come from"):
            E.decode(data, table, 1 << 40)  # refused before allocating

    def test_entropy_bits(self):
        assert E.entropy_bits(np.zeros(10, dtype=np.int64)) == 0.0
        assert E.entropy_bits(np.array([0, 1, 2, 3])) == pytest.approx(8.0)
        assert E.entropy_bits(np.zeros(0, dtype=np.int64)) == 0.0


class TestSerialization:
    def test_varints_round_trip(self):
        v = np.array([0, 1, 127, 128, 300, 2**35, 2**62, 2**63 - 1], dtype=np.uint64)
        blob = E.encode_varints(v)
        out, end = E.decode_varints(blob + b"tail", 0, v.size)
        assert end == len(blob)
        np.testing.assert_array_equal(out.astype(np.uint64), v)
        assert E.encode_varints(np.array([5, 300])) == bytes([5, 0xAC, 0x02])

    def test_varints_malformed(self):
        with pytest.raises(SceneFileError, match="cannot fit"):
            E.decode_varints(b"\x01\x02", 0, 3)
        with pytest.raises(SceneFileError, match="ends inside"):
            E.decode_varints(b"\x01\x82", 0, 2)
        with pytest.raises(SceneFileError, match="canonical"):
            E.decode_varints(b"\x81\x00", 0, 1)
        with pytest.raises(SceneFileError, match="longer than"):
            E.decode_varints(b"\xff" * 9 + b"\x01", 0, 1)
        with pytest.raises(SceneFileError, match="longer than"):
            E.decode_varints(b"\x01" + b"\xff" * 9 + b"\x01", 0, 2)

    def test_table_round_trip_both_layouts(self):
        dense_like = E.sparse_freq_table(np.random.default_rng(0).integers(0, 64, 5000), 64)
        sparse_like = E.sparse_freq_table(np.array([5, 70_000, 70_000]), 1 << 20)
        for t in (dense_like, sparse_like):
            blob = E.serialize_table(t)
            parsed, end = E.parse_table(blob + b"xyz")
            assert end == len(blob)
            assert parsed.alphabet_size == t.alphabet_size and parsed.precision == t.precision
            np.testing.assert_array_equal(parsed.symbols, t.symbols)
            np.testing.assert_array_equal(parsed.freqs, t.freqs)
        assert E.serialize_table(dense_like)[0] == 0 and E.serialize_table(sparse_like)[0] == 1

    def test_table_parse_checks(self):
        def head(layout, precision, alphabet, k):
            return bytes([layout]) + E.encode_varints(np.array([precision, alphabet, k]))

        with pytest.raises(SceneFileError, match="missing"):
            E.parse_table(b"")
        with pytest.raises(SceneFileError, match="unknown layout"):
            E.parse_table(b"\x07\x10\x02\x02")
        with pytest.raises(SceneFileError, match="precision"):
            E.parse_table(head(1, 30, 4, 1) + b"\x00\x00")
        # a table claiming 2^40 symbols must be refused from its size, not allocated
        with pytest.raises(SceneFileError, match="cannot fit"):
            E.parse_table(head(0, 16, 1 << 40, 2) + b"\x00" * 16)
        with pytest.raises(SceneFileError, match="impossible"):
            E.parse_table(head(1, 12, 1 << 40, 1 << 40))
        # frequencies that do not sum to 2^precision
        with pytest.raises(SceneFileError, match="sum to"):
            E.parse_table(head(1, 12, 4, 2) + E.encode_varints(np.array([0, 10, 0, 10])))
        # a symbol beyond the alphabet
        with pytest.raises(SceneFileError, match="outside the alphabet"):
            E.parse_table(head(1, 12, 4, 1) + E.encode_varints(np.array([9, 4095])))
        # dense layout whose used count disagrees with the header
        with pytest.raises(SceneFileError, match="header says"):
            E.parse_table(head(0, 12, 2, 1) + E.encode_varints(np.array([2048, 2048])))
