"""Entropy coding of integer symbols with stored integer frequency tables (rANS via constriction).

Written by hand around ``constriction``'s ANS coder because the model has to be *bit-exact on every
machine*: the frequency table is quantized here, with integer arithmetic only, stored in the file,
and the coder's model is rebuilt from those stored integers. Nothing at decode time depends on a
floating-point model.

Why decoding is bit-exact. constriction 0.5 exposes no integer categorical model to Python; its
``Categorical(probabilities, perfect=False)`` turns float probabilities into a 24-bit CDF with
``cdf[i] = floor(sum(p[:i]) * scale) + i`` where ``scale = (2**24 - n) / sum(p)``. We pass
``p[i] = W[i] - 1`` for integer weights ``W`` summing to exactly ``2**24``. Every partial sum is then
an integer below ``2**24``, exactly representable in float64 (and float32), ``scale`` is exactly
``1.0``, and the CDF comes out as exactly ``cumsum(W)``: no rounding happens anywhere, so the model
is the stored integer table on every IEEE machine. ``tests/quant/test_quant_entropy.py`` checks the
coder's output word for word against a pure-Python rANS coder driven by the integer table alone.

The coding model. A table lists the K used symbols (sorted) with frequencies ``f >= 1`` summing to
``2**precision`` (``precision`` in [12, 20]). The coder's model has K + 1 entries: index 0 is a
reserved symbol that is never encoded (weight 1, taken from the largest weight; for K = 1 the split
is ``[2**12, 2**24 - 2**12]``), and index ``i + 1`` is the table's i-th symbol with weight
``f[i] << (24 - precision)``. The reserved entry makes every real symbol move the ANS state off zero,
and the table caps the largest frequency at ``2**precision * (1 - 2**-12)``; together they give every
coded symbol a cost of at least ``-log2(1 - 2**-12)`` bits, so a payload of B bytes can hold at most
``(8 B + 64) * 2840`` symbols. :func:`max_symbols` states that bound and :func:`decode` checks the
requested count against it before allocating anything, and a decoded reserved index means corrupt
data. The cap costs at most about 3.5e-4 bits per symbol (44 bytes for a constant stream of 1M
symbols).

Serialized table (all integers are LEB128 varints, canonical): a layout byte (0 dense, 1 sparse),
``precision``, ``alphabet_size``, K; then dense: ``alphabet_size`` frequencies (0 = unused), or
sparse: K pairs ``(gap to the previous used symbol minus one, f - 1)``. The writer picks the shorter
layout. :func:`parse_table` checks every count against the bytes that remain before allocating.
"""

from __future__ import annotations

from dataclasses import dataclass

import constriction
import numpy as np

from scenezip.errors import SceneFileError

MIN_PRECISION = 12
MAX_PRECISION = 20
CODER_PRECISION = 24  # constriction's default ANS model precision (u32 words, 24-bit CDF)
MAX_ALPHABET = 1 << 62  # symbols and offsets stay inside int64 arithmetic
_CAP_SHIFT = 12  # the largest frequency is at most 2**precision - 2**(precision - 12)
_SYMBOLS_PER_BIT = 2840  # >= 1 / -log2(1 - 2**-12) = 2838.9...
_MAX_VARINT_BYTES = 9  # 63 bits


@dataclass(frozen=True, eq=False)
class FreqTable:
    """A quantized frequency table over the alphabet ``{0, ..., alphabet_size - 1}``, stored sparsely.

    Attributes:
        alphabet_size: number of possible symbols.
        precision: the frequencies sum to ``2**precision``.
        symbols: ``[K]`` int64, the used symbols, strictly increasing, each ``< alphabet_size``.
        freqs: ``[K]`` int64, their frequencies, each ``>= 1``.
    """

    alphabet_size: int
    precision: int
    symbols: np.ndarray
    freqs: np.ndarray

    @property
    def num_used(self) -> int:
        return int(self.symbols.shape[0])

    def dense(self) -> np.ndarray:
        """``[alphabet_size]`` int64 frequencies, 0 for unused symbols."""
        out = np.zeros(self.alphabet_size, dtype=np.int64)
        out[self.symbols] = self.freqs
        return out

    @staticmethod
    def from_dense(table: np.ndarray) -> "FreqTable":
        """The sparse form of a dense ``[alphabet_size]`` table as :func:`freq_table` returns it."""
        table = np.asarray(table)
        if table.ndim != 1 or not np.issubdtype(table.dtype, np.integer):
            raise ValueError(f"table must be a 1-D integer array, got {table.dtype} {table.shape}")
        symbols = np.flatnonzero(table).astype(np.int64)
        freqs = table[symbols].astype(np.int64)
        total = int(freqs.sum()) if freqs.size else 0
        if symbols.size == 0:
            return FreqTable(int(table.shape[0]), MIN_PRECISION, symbols, freqs)
        precision = total.bit_length() - 1
        if total != 1 << precision:
            raise ValueError(f"table must sum to a power of two, got {total}")
        out = FreqTable(int(table.shape[0]), precision, symbols, freqs)
        _check_table(out, ValueError, "table")
        return out


def _check_table(t: FreqTable, exc: type[Exception], what: str) -> None:
    """Every invariant of a table; raises ``exc`` naming ``what``."""
    if not MIN_PRECISION <= t.precision <= MAX_PRECISION:
        raise exc(f"{what}: precision {t.precision} outside [{MIN_PRECISION}, {MAX_PRECISION}]")
    if not 0 <= t.alphabet_size <= MAX_ALPHABET:
        raise exc(f"{what}: alphabet size {t.alphabet_size} outside [0, 2^62]")
    k = t.num_used
    if t.freqs.shape != (k,):
        raise exc(f"{what}: {k} symbols but {t.freqs.shape} frequencies")
    if k == 0:
        return
    if k > (1 << t.precision):
        raise exc(f"{what}: {k} used symbols do not fit precision {t.precision}")
    if t.symbols[0] < 0 or t.symbols[-1] >= t.alphabet_size or np.any(np.diff(t.symbols) <= 0):
        raise exc(f"{what}: used symbols are not strictly increasing inside the alphabet")
    if np.any(t.freqs < 1):
        raise exc(f"{what}: a used symbol has frequency < 1")
    total = 1 << t.precision
    if int(t.freqs.sum()) != total:
        raise exc(f"{what}: frequencies sum to {int(t.freqs.sum())}, expected 2^{t.precision}")
    if k >= 2 and int(t.freqs.max()) > total - (total >> _CAP_SHIFT):
        raise exc(f"{what}: largest frequency {int(t.freqs.max())} exceeds the cap")


def _auto_precision(k: int) -> int:
    return min(MAX_PRECISION, max(16, k.bit_length() + 10))


def _quantize_counts(counts: np.ndarray, precision: int) -> np.ndarray:
    """``[K]`` positive counts -> ``[K]`` int64 frequencies >= 1 summing to ``2**precision``.

    Integer arithmetic only: floor of the proportional share, then the largest remainders (ties by
    index) absorb the rounding, then the largest frequency is capped (see the module docstring).
    """
    k = counts.shape[0]
    total = 1 << precision
    if k == 1:
        return np.array([total], dtype=np.int64)
    n = int(counts.sum())
    scaled = counts * total  # < 2^40 * 2^20, inside int64
    f = np.maximum(scaled // n, 1)
    rem = scaled % n
    diff = total - int(f.sum())
    if diff > 0:  # floors lost less than K units
        order = np.argsort(-rem, kind="stable")
        f[order[:diff]] += 1
    elif diff < 0:  # the bumps to 1 overshot: take the excess from the weights above 1, in proportion
        excess = -diff
        spare = f - 1
        pool = int(spare.sum())  # >= excess because K <= 2^precision
        share = spare * excess
        take = share // pool
        f -= take
        left = excess - int(take.sum())
        if left > 0:
            order = np.argsort(-(share % pool), kind="stable")
            f[order[:left]] -= 1
    cap = total - (total >> _CAP_SHIFT)
    top = int(np.argmax(f))
    if f[top] > cap:
        over = int(f[top]) - cap
        f[top] = cap
        others = f.copy()
        others[top] = -1
        f[int(np.argmax(others))] += over
    return f.astype(np.int64)


def _as_symbols(symbols: np.ndarray, what: str = "symbols") -> np.ndarray:
    symbols = np.asarray(symbols)
    if symbols.dtype == np.bool_:
        symbols = symbols.astype(np.int64)
    if not np.issubdtype(symbols.dtype, np.integer):
        raise ValueError(f"{what} must be integers, got dtype {symbols.dtype}")
    if symbols.dtype == np.uint64 and symbols.size and int(symbols.max()) >= MAX_ALPHABET:
        raise ValueError(f"{what} must be < 2^62")
    return symbols.reshape(-1).astype(np.int64, copy=False)


def sparse_freq_table(
    symbols: np.ndarray, alphabet_size: int, precision: int | None = None
) -> FreqTable:
    """The quantized frequency table of ``symbols`` ``[n]`` (any shape, flattened) over ``alphabet_size``.

    ``precision`` defaults to ``min(20, max(16, bit_length(K) + 10))`` for K distinct symbols.
    Raises ValueError for symbols outside ``[0, alphabet_size)`` or K > ``2**precision``.
    """
    s = _as_symbols(symbols)
    alphabet_size = int(alphabet_size)
    if not 1 <= alphabet_size <= MAX_ALPHABET:
        raise ValueError(f"alphabet_size must be in [1, 2^62], got {alphabet_size}")
    if s.size and (int(s.min()) < 0 or int(s.max()) >= alphabet_size):
        raise ValueError(
            f"symbols must lie in [0, {alphabet_size}), got range [{int(s.min())}, {int(s.max())}]"
        )
    if s.size >= 1 << 40:
        raise ValueError(f"at most 2^40 symbols per table, got {s.size}")
    if alphabet_size <= max(1 << 16, s.size):
        counts = np.bincount(s, minlength=0)
        used = np.flatnonzero(counts).astype(np.int64)
        counts = counts[used].astype(np.int64)
    else:
        used, counts = np.unique(s, return_counts=True)
        used, counts = used.astype(np.int64), counts.astype(np.int64)
    k = int(used.shape[0])
    if precision is None:
        precision = _auto_precision(k)
    if not MIN_PRECISION <= precision <= MAX_PRECISION:
        raise ValueError(f"precision must be in [{MIN_PRECISION}, {MAX_PRECISION}], got {precision}")
    if k > (1 << precision):
        raise ValueError(f"{k} distinct symbols do not fit precision {precision}; raise precision")
    freqs = _quantize_counts(counts, precision) if k else np.zeros(0, dtype=np.int64)
    return FreqTable(alphabet_size, int(precision), used, freqs)


def freq_table(symbols: np.ndarray, alphabet_size: int, precision: int | None = None) -> np.ndarray:
    """Dense quantized frequency table ``[alphabet_size]`` int64 of ``symbols`` (0 for unused symbols).

    Used symbols get frequency >= 1; the table sums to ``2**precision`` (see :func:`sparse_freq_table`).
    """
    return sparse_freq_table(symbols, alphabet_size, precision).dense()


def _as_table(table: FreqTable | np.ndarray) -> FreqTable:
    if isinstance(table, FreqTable):
        return table
    return FreqTable.from_dense(table)


def _model_weights(t: FreqTable) -> np.ndarray:
    """``[K + 1]`` int64 weights summing to ``2**24``: reserved index 0, then the table's symbols."""
    full = 1 << CODER_PRECISION
    if t.num_used == 1:
        return np.array([1 << _CAP_SHIFT, full - (1 << _CAP_SHIFT)], dtype=np.int64)
    w = t.freqs << (CODER_PRECISION - t.precision)
    w[int(np.argmax(w))] -= 1
    return np.concatenate([np.ones(1, dtype=np.int64), w])


def _model(t: FreqTable):
    # p = W - 1: integer partial sums below 2^24 make constriction's CDF exactly cumsum(W).
    w = _model_weights(t)
    return constriction.stream.model.Categorical((w - 1).astype(np.float64), perfect=False)


def max_symbols(nbytes: int) -> int:
    """The most symbols an rANS payload of ``nbytes`` bytes (without its table) can hold."""
    return (8 * int(nbytes) + 64) * _SYMBOLS_PER_BIT


def encode(symbols: np.ndarray, table: FreqTable | np.ndarray) -> bytes:
    """rANS-code ``symbols`` ``[n]`` (any shape, flattened) with ``table``; returns the payload bytes.

    Every symbol must be a used symbol of the table (frequency >= 1), else ValueError. The payload
    is a sequence of little-endian u32 words; empty input gives ``b""``.
    """
    t = _as_table(table)
    s = _as_symbols(symbols)
    if s.size == 0:
        return b""
    if t.num_used == 0:
        raise ValueError("table has no used symbols but symbols is not empty")
    idx = np.searchsorted(t.symbols, s)
    np.minimum(idx, t.num_used - 1, out=idx)
    bad = t.symbols[idx] != s
    if np.any(bad):
        first = int(s[np.argmax(bad)])
        raise ValueError(f"symbol {first} is not in the table (frequency 0 or outside the alphabet)")
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse((idx + 1).astype(np.int32), _model(t))
    return coder.get_compressed().astype("<u4").tobytes()


def decode(data: bytes, table: FreqTable | np.ndarray, n: int) -> np.ndarray:
    """Inverse of :func:`encode`: ``n`` symbols ``[n]`` int64 from the payload ``data``.

    Raises SceneFileError when ``data`` cannot be a payload of ``n`` symbols under ``table``
    (length not a multiple of 4, a count beyond :func:`max_symbols`, reserved symbol decoded,
    data left over).
    """
    t = _as_table(table)
    n = int(n)
    data = bytes(data)
    if n < 0:
        raise SceneFileError(f"rANS payload: negative symbol count {n}")
    if len(data) % 4:
        raise SceneFileError(f"rANS payload: {len(data)} bytes is not a whole number of 32-bit words")
    if n == 0:
        if data:
            raise SceneFileError(f"rANS payload: {len(data)} bytes left over after 0 symbols")
        return np.zeros(0, dtype=np.int64)
    if t.num_used == 0:
        raise SceneFileError(f"rANS payload: {n} symbols requested from an empty table")
    if n > max_symbols(len(data)):
        raise SceneFileError(
            f"rANS payload: {n} symbols cannot come from {len(data)} bytes "
            f"(at most {max_symbols(len(data))})"
        )
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
    except ValueError as e:
        raise SceneFileError(f"rANS payload: {e}") from None
    idx = coder.decode(_model(t), n)
    if idx.size != n or int(idx.min()) == 0:
        raise SceneFileError("rANS payload is corrupt (decoded a reserved symbol)")
    if not coder.is_empty():
        raise SceneFileError(f"rANS payload is corrupt (data left over after {n} symbols)")
    return t.symbols[idx.astype(np.int64) - 1]


def entropy_bits(symbols: np.ndarray) -> float:
    """Empirical entropy of ``symbols`` ``[n]`` in bits, total: ``-sum(c * log2(c / n))`` over counts c."""
    s = _as_symbols(symbols)
    if s.size == 0:
        return 0.0
    _, counts = np.unique(s, return_counts=True)
    c = counts.astype(np.float64)
    return float(-(c * np.log2(c / s.size)).sum())


# ---------------------------------------------------------------- varints and table serialization


def encode_varints(values: np.ndarray) -> bytes:
    """LEB128 varints of non-negative integers ``[n]`` (< 2^63), concatenated."""
    v = np.asarray(values).reshape(-1)
    if v.size == 0:
        return b""
    if np.issubdtype(v.dtype, np.signedinteger) and int(v.min()) < 0:
        raise ValueError("varints must be non-negative")
    v = v.astype(np.uint64)
    if int(v.max()) >= 1 << 63:
        raise ValueError("varints must be < 2^63")
    lengths = np.ones(v.shape, dtype=np.int64)
    for j in range(1, _MAX_VARINT_BYTES):
        lengths += v >= np.uint64(1 << (7 * j))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    out = np.zeros(int(ends[-1]), dtype=np.uint8)
    for j in range(int(lengths.max())):
        m = lengths > j
        byte = (v[m] >> np.uint64(7 * j)) & np.uint64(0x7F)
        cont = (lengths[m] > j + 1).astype(np.uint64) << np.uint64(7)
        out[starts[m] + j] = (byte | cont).astype(np.uint8)
    return out.tobytes()


def decode_varints(data: bytes, offset: int, count: int, what: str = "varints") -> tuple[np.ndarray, int]:
    """``count`` canonical varints from ``data[offset:]`` -> (``[count]`` int64, offset after them).

    Raises SceneFileError (naming ``what``) when the data ends early or a varint is overlong.
    Never reads or allocates more than ``9 * count`` bytes, and checks ``count`` against the bytes
    left first.
    """
    count = int(count)
    left = len(data) - offset
    if count < 0 or count > left:
        raise SceneFileError(f"{what}: {count} values cannot fit in the {max(left, 0)} bytes left")
    if count == 0:
        return np.zeros(0, dtype=np.int64), offset
    window = np.frombuffer(data, dtype=np.uint8, count=min(left, _MAX_VARINT_BYTES * count), offset=offset)
    ends = np.flatnonzero(window < 0x80)[:count]
    if ends.shape[0] < count:
        if window.shape[0] < left:  # stopped at the 9-bytes-per-value window, not at the data's end
            raise SceneFileError(f"{what}: a value is longer than {_MAX_VARINT_BYTES} bytes")
        raise SceneFileError(f"{what}: data ends inside value {ends.shape[0]} of {count}")
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if int(lengths.max()) > _MAX_VARINT_BYTES:
        raise SceneFileError(f"{what}: a value is longer than {_MAX_VARINT_BYTES} bytes")
    if np.any((lengths > 1) & (window[ends] == 0)):
        raise SceneFileError(f"{what}: a value is not canonically encoded")
    used = window[: int(ends[-1]) + 1].astype(np.uint64)
    pos = np.arange(used.shape[0]) - np.repeat(starts, lengths)
    parts = (used & np.uint64(0x7F)) << (np.uint64(7) * pos.astype(np.uint64))
    values = np.add.reduceat(parts, starts)
    return values.astype(np.int64), offset + int(ends[-1]) + 1


def serialize_table(table: FreqTable | np.ndarray) -> bytes:
    """Compact bytes of ``table`` (dense or sparse layout, whichever is shorter)."""
    t = _as_table(table)
    _check_table(t, ValueError, "table")
    head = [t.precision, t.alphabet_size, t.num_used]
    gaps = np.diff(t.symbols, prepend=-1) - 1
    sparse = np.empty(2 * t.num_used, dtype=np.int64)
    sparse[0::2], sparse[1::2] = gaps, t.freqs - 1
    body = bytes([1]) + encode_varints(np.array(head)) + encode_varints(sparse)
    if t.alphabet_size <= len(body):  # a dense body needs at least one byte per symbol
        dense = bytes([0]) + encode_varints(np.array(head)) + encode_varints(t.dense())
        if len(dense) < len(body):
            return dense
    return body


def parse_table(data: bytes, offset: int = 0) -> tuple[FreqTable, int]:
    """Inverse of :func:`serialize_table`: (table, offset after it). Raises SceneFileError naming the fault."""
    if offset >= len(data):
        raise SceneFileError("frequency table: missing (no bytes left)")
    layout = data[offset]
    if layout not in (0, 1):
        raise SceneFileError(f"frequency table: unknown layout {layout}")
    (precision, alphabet_size, k), pos = decode_varints(data, offset + 1, 3, "frequency table header")
    precision, alphabet_size, k = int(precision), int(alphabet_size), int(k)
    if not MIN_PRECISION <= precision <= MAX_PRECISION:
        raise SceneFileError(f"frequency table: precision {precision} outside [{MIN_PRECISION}, {MAX_PRECISION}]")
    if alphabet_size > MAX_ALPHABET or k > alphabet_size or k > (1 << precision):
        raise SceneFileError(
            f"frequency table: {k} used symbols impossible for alphabet {alphabet_size}, precision {precision}"
        )
    if layout == 0:
        dense, pos = decode_varints(data, pos, alphabet_size, "frequency table (dense)")
        symbols = np.flatnonzero(dense).astype(np.int64)
        freqs = dense[symbols]
        if symbols.shape[0] != k:
            raise SceneFileError(f"frequency table: header says {k} used symbols, dense table has {symbols.shape[0]}")
    else:
        pairs, pos = decode_varints(data, pos, 2 * k, "frequency table (sparse)")
        gaps, freqs = pairs[0::2], pairs[1::2] + 1
        if k and int(gaps.max()) >= alphabet_size:
            raise SceneFileError("frequency table: a symbol lies outside the alphabet")
        if k and float(np.sum(gaps.astype(np.float64) + 1.0)) > 2.0 * MAX_ALPHABET:
            raise SceneFileError("frequency table: symbols run past the alphabet")
        symbols = np.cumsum(gaps + 1) - 1  # total checked above: no int64 overflow
    t = FreqTable(alphabet_size, precision, symbols.astype(np.int64), freqs.astype(np.int64))
    _check_table(t, SceneFileError, "frequency table")
    return t, pos
