"""Stream codecs with fixed string IDs, and uniform scalar quantization.

Written by hand: each codec turns one numpy array into bytes plus a small JSON-able ``params`` dict
and back, bit-exactly, so a representation can store any named array in a ``.scz`` file. Codec IDs
are fixed strings (never positions in a registry), so files stay readable when codecs are added.

| ID           | input                         | payload                                                    |
|--------------|-------------------------------|------------------------------------------------------------|
| ``raw``      | any supported dtype           | little-endian element bytes                                |
| ``zlib``     | any supported dtype           | zlib (deflate) of the ``raw`` bytes                        |
| ``rans``     | integers / bool (not uint64)  | frequency table + rANS words of ``x - offset``             |
| ``rans-delta`` | integers (not uint64)       | ``rans`` of the deltas along axis 0 (sorted / Morton-ordered data) |

Every decoder checks the element count against what its payload could hold *before* allocating,
and raises SceneFileError for anything malformed; encoders raise ValueError for bad arguments.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from scenezip.errors import SceneFileError
from scenezip.quant import entropy

DTYPES = (
    "bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64",
    "float16", "float32", "float64",
)  # fmt: skip
INT_DTYPES = ("bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "int64")  # rans-able
MAX_NDIM = 32
_DEFLATE_MAX_RATIO = 1100  # deflate cannot expand data by more than ~1032x
_INT64_MAX = (1 << 63) - 1

Params = dict[str, Any]


@dataclass(frozen=True)
class Codec:
    """A stream codec.

    Attributes:
        name: the fixed ID stored in files.
        encode: ``(array, **params) -> (payload bytes, params dict)``.
        decode: ``(payload, dtype, shape, params) -> array`` with exactly that dtype and shape.
        check: ``(nbytes, dtype, shape, params) -> None``; cheap checks without decoding.
        dtypes: dtype names the codec accepts.
    """

    name: str
    encode: Callable[..., tuple[bytes, Params]]
    decode: Callable[[bytes, Any, Sequence[int], Params], np.ndarray]
    check: Callable[[int, Any, Sequence[int], Params], None]
    dtypes: tuple[str, ...]


# ------------------------------------------------------------------------------------ helpers


def dtype_from_name(name: Any) -> np.dtype:
    """The numpy dtype of a supported dtype name; SceneFileError for anything else."""
    if not isinstance(name, str) or name not in DTYPES:
        raise SceneFileError(f"unsupported dtype {name!r} (supported: {', '.join(DTYPES)})")
    return np.dtype(name)


def _dtype_arg(dtype: Any) -> np.dtype:
    if isinstance(dtype, np.dtype):
        dtype = dtype.name
    elif isinstance(dtype, type) and issubclass(dtype, np.generic):
        dtype = np.dtype(dtype).name
    return dtype_from_name(dtype)


def shape_count(shape: Any) -> int:
    """Number of elements of a shape given as a sequence of non-negative ints; SceneFileError if not one."""
    if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM:
        raise SceneFileError(f"shape must be a list of at most {MAX_NDIM} integers, got {shape!r}")
    for s in shape:
        if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or s < 0:
            raise SceneFileError(f"shape must hold non-negative integers, got {list(shape)!r}")
    return math.prod(int(s) for s in shape)


def _dtype_range(dt: np.dtype) -> tuple[int, int]:
    if dt == np.bool_:
        return 0, 1
    info = np.iinfo(dt)
    return int(info.min), int(info.max)


def _check_params(params: Any, allowed: dict[str, bool], codec: str) -> Params:
    """``allowed`` maps each key to whether it is required."""
    if not isinstance(params, dict):
        raise SceneFileError(f"{codec}: params must be an object, got {type(params).__name__}")
    for key in params:
        if key not in allowed:
            raise SceneFileError(f"{codec}: unknown parameter {key!r}")
    for key, required in allowed.items():
        if required and key not in params:
            raise SceneFileError(f"{codec}: missing parameter {key!r}")
    return params


def _int_param(params: Params, key: str, lo: int, hi: int, codec: str) -> int:
    v = params[key]
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise SceneFileError(f"{codec}: parameter {key!r} must be an integer in [{lo}, {hi}], got {v!r}")
    return v


def _encode_input(array: Any, dtypes: Sequence[str], codec: str) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype.name not in dtypes:
        raise ValueError(f"codec {codec!r} does not take dtype {a.dtype} (takes: {', '.join(dtypes)})")
    if a.ndim > MAX_NDIM:
        raise ValueError(f"array has {a.ndim} dimensions; at most {MAX_NDIM}")
    return a


def _decode_args(
    dtype: Any, shape: Sequence[int], codec: str, dtypes: Sequence[str]
) -> tuple[np.dtype, tuple[int, ...], int]:
    dt = _dtype_arg(dtype)
    if dt.name not in dtypes:
        raise SceneFileError(f"codec {codec!r} cannot hold dtype {dt.name}")
    n = shape_count(shape)
    return dt, tuple(int(s) for s in shape), n


def _le_bytes(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


def _from_le_bytes(data: bytes, dt: np.dtype, shape: tuple[int, ...], codec: str) -> np.ndarray:
    if dt == np.bool_:
        raw = np.frombuffer(data, dtype=np.uint8)
        if raw.size and int(raw.max()) > 1:
            raise SceneFileError(f"{codec}: bool payload holds a byte other than 0 or 1")
        return raw.astype(np.bool_).reshape(shape)
    return np.frombuffer(data, dtype=dt.newbyteorder("<")).astype(dt).reshape(shape)


# ---------------------------------------------------------------------------------------- raw


def _raw_check(nbytes: int, dtype: Any, shape: Sequence[int], params: Params) -> None:
    dt, shape, n = _decode_args(dtype, shape, "raw", DTYPES)
    _check_params(params, {}, "raw")
    if nbytes != n * dt.itemsize:
        raise SceneFileError(f"raw: payload has {nbytes} bytes, expected {n * dt.itemsize} for {dt.name} {list(shape)}")


def _raw_encode(array: Any) -> tuple[bytes, Params]:
    a = _encode_input(array, DTYPES, "raw")
    return _le_bytes(a), {}


def _raw_decode(data: bytes, dtype: Any, shape: Sequence[int], params: Params) -> np.ndarray:
    _raw_check(len(data), dtype, shape, params)
    dt, shape, _ = _decode_args(dtype, shape, "raw", DTYPES)
    return _from_le_bytes(bytes(data), dt, shape, "raw")


# --------------------------------------------------------------------------------------- zlib


def _zlib_check(nbytes: int, dtype: Any, shape: Sequence[int], params: Params) -> None:
    dt, shape, n = _decode_args(dtype, shape, "zlib", DTYPES)
    _check_params(params, {"level": False}, "zlib")
    if "level" in params:
        _int_param(params, "level", -1, 9, "zlib")
    expected = n * dt.itemsize
    if expected > _DEFLATE_MAX_RATIO * nbytes + 64:
        raise SceneFileError(f"zlib: {nbytes} bytes cannot inflate to {expected} bytes for {dt.name} {list(shape)}")


def _zlib_encode(array: Any, level: int = 9) -> tuple[bytes, Params]:
    a = _encode_input(array, DTYPES, "zlib")
    if not isinstance(level, int) or not -1 <= level <= 9:
        raise ValueError(f"level must be an integer in [-1, 9], got {level!r}")
    return zlib.compress(_le_bytes(a), level), {"level": level}


def _zlib_decode(data: bytes, dtype: Any, shape: Sequence[int], params: Params) -> np.ndarray:
    _zlib_check(len(data), dtype, shape, params)
    dt, shape, n = _decode_args(dtype, shape, "zlib", DTYPES)
    expected = n * dt.itemsize
    d = zlib.decompressobj()
    try:
        out = d.decompress(bytes(data), expected + 1)  # bounded: never inflates past expected + 1
    except zlib.error as e:
        raise SceneFileError(f"zlib: corrupt payload ({e})") from None
    if len(out) != expected or not d.eof or d.unused_data or d.unconsumed_tail:
        raise SceneFileError(f"zlib: payload does not inflate to exactly {expected} bytes")
    return _from_le_bytes(out, dt, shape, "zlib")


# --------------------------------------------------------------------------------------- rans


def _rans_symbols(x: np.ndarray, precision: int | None, codec: str) -> tuple[bytes, int]:
    """``x`` ``[n]`` int64 -> (table + rANS payload, offset)."""
    if x.size == 0:
        lo, hi = 0, 0
    else:
        lo, hi = int(x.min()), int(x.max())
    if hi - lo >= entropy.MAX_ALPHABET:
        raise ValueError(f"{codec}: value range [{lo}, {hi}] is wider than 2^62; use 'zlib' or 'raw'")
    symbols = x - np.int64(lo)
    table = entropy.sparse_freq_table(symbols, hi - lo + 1, precision)
    return entropy.serialize_table(table) + entropy.encode(symbols, table), lo


def _rans_parse(data: bytes, n: int, params: Params, codec: str) -> tuple[np.ndarray, int]:
    """Payload -> (``[n]`` int64 symbols, offset); the symbols are not yet shifted by the offset."""
    try:
        table, pos = entropy.parse_table(data, 0)
        offset = params["offset"]
        if offset + table.alphabet_size - 1 > _INT64_MAX:
            raise SceneFileError(f"offset {offset} + alphabet {table.alphabet_size} overflows int64")
        return entropy.decode(data[pos:], table, n), offset
    except SceneFileError as e:
        raise SceneFileError(f"{codec}: {e}") from None


def _rans_check_params(params: Params, codec: str) -> None:
    _check_params(params, {"offset": True}, codec)
    _int_param(params, "offset", -(1 << 63), _INT64_MAX, codec)


def _rans_check(nbytes: int, dtype: Any, shape: Sequence[int], params: Params) -> None:
    _decode_args(dtype, shape, "rans", INT_DTYPES)
    _rans_check_params(params, "rans")
    lo, hi = _dtype_range(_dtype_arg(dtype))
    if not lo <= params["offset"] <= hi:
        raise SceneFileError(f"rans: offset {params['offset']} outside the {_dtype_arg(dtype).name} range")


def _rans_encode(array: Any, precision: int | None = None) -> tuple[bytes, Params]:
    a = _encode_input(array, INT_DTYPES, "rans")
    payload, offset = _rans_symbols(a.reshape(-1).astype(np.int64), precision, "rans")
    return payload, {"offset": offset}


def _rans_decode(data: bytes, dtype: Any, shape: Sequence[int], params: Params) -> np.ndarray:
    _rans_check(len(data), dtype, shape, params)
    dt, shape, n = _decode_args(dtype, shape, "rans", INT_DTYPES)
    symbols, offset = _rans_parse(bytes(data), n, params, "rans")
    lo, hi = _dtype_range(dt)
    if n and offset + int(symbols.max()) > hi:
        raise SceneFileError(f"rans: decoded values exceed the {dt.name} range")
    return (symbols + np.int64(offset)).astype(dt).reshape(shape)


# --------------------------------------------------------------------------------- rans-delta


def _rows(a: np.ndarray) -> np.ndarray:
    if a.ndim == 0:
        return a.reshape(1, 1)
    return a.reshape(a.shape[0], math.prod(a.shape[1:]))


def _delta_check(nbytes: int, dtype: Any, shape: Sequence[int], params: Params) -> None:
    _decode_args(dtype, shape, "rans-delta", INT_DTYPES)
    _rans_check_params(params, "rans-delta")


def _delta_encode(array: Any, precision: int | None = None) -> tuple[bytes, Params]:
    a = _encode_input(array, INT_DTYPES, "rans-delta")
    x = _rows(a.astype(np.int64))
    if x.size and int(x.max()) - int(x.min()) >= 1 << 61:
        raise ValueError("rans-delta: value range is wider than 2^61; use 'zlib' or 'raw'")
    d = x.copy()
    d[1:] -= x[:-1]
    payload, offset = _rans_symbols(d.reshape(-1), precision, "rans-delta")
    return payload, {"offset": offset}


def _delta_decode(data: bytes, dtype: Any, shape: Sequence[int], params: Params) -> np.ndarray:
    _delta_check(len(data), dtype, shape, params)
    dt, shape, n = _decode_args(dtype, shape, "rans-delta", INT_DTYPES)
    symbols, offset = _rans_parse(bytes(data), n, params, "rans-delta")
    if n == 0:
        return np.zeros(shape, dtype=dt)
    d = symbols + np.int64(offset)  # fits int64: checked in _rans_parse
    rows = shape[0] if len(shape) else 1
    d = d.reshape(rows, -1)
    bound = max(abs(int(d.min())), abs(int(d.max())))
    if bound * rows >= 1 << 62:  # the running sum could wrap int64: look before summing exactly
        if float(np.abs(np.cumsum(d.astype(np.float64), axis=0)).max()) >= 2.0**62:
            raise SceneFileError("rans-delta: running sum overflows")
    x = np.cumsum(d, axis=0)
    lo, hi = _dtype_range(dt)
    if int(x.min()) < lo or int(x.max()) > hi:
        raise SceneFileError(f"rans-delta: decoded values exceed the {dt.name} range")
    return x.astype(dt).reshape(shape)


# ----------------------------------------------------------------------------------- registry

CODECS: dict[str, Codec] = {
    "raw": Codec("raw", _raw_encode, _raw_decode, _raw_check, DTYPES),
    "zlib": Codec("zlib", _zlib_encode, _zlib_decode, _zlib_check, DTYPES),
    "rans": Codec("rans", _rans_encode, _rans_decode, _rans_check, INT_DTYPES),
    "rans-delta": Codec("rans-delta", _delta_encode, _delta_decode, _delta_check, INT_DTYPES),
}


def entropy_bytes(array: Any, codec: str) -> float | None:
    """Order-0 empirical entropy, in bytes, of the symbols ``codec`` models for ``array``: the values for
    ``rans``, the row deltas for ``rans-delta`` (one table for all columns, as the codec); None for codecs
    without a symbol model (``raw``, ``zlib``). The coded size can only approach this plus its table."""
    a = np.asarray(array)
    if codec not in ("rans", "rans-delta") or a.dtype.kind not in "iub":
        return None
    x = _rows(a.astype(np.int64)) if codec == "rans-delta" else a.reshape(-1).astype(np.int64)
    if codec == "rans-delta":
        d = x.copy()
        d[1:] -= x[:-1]
        x = d.reshape(-1)
    if x.size == 0:
        return 0.0
    _, counts = np.unique(x, return_counts=True)
    p = counts / x.size
    return float(-(counts * np.log2(p)).sum() / 8.0)


def get_codec(name: Any) -> Codec:
    """The codec with ID ``name``; SceneFileError naming the known IDs otherwise."""
    if not isinstance(name, str) or name not in CODECS:
        raise SceneFileError(f"unknown codec {name!r} (known: {', '.join(CODECS)})")
    return CODECS[name]


# ------------------------------------------------------------------------ uniform quantization


def _uint_dtype(bits: int) -> np.dtype:
    if not isinstance(bits, (int, np.integer)) or isinstance(bits, bool) or not 1 <= bits <= 32:
        raise ValueError(f"bits must be an integer in [1, 32], got {bits!r}")
    return np.dtype(np.uint8 if bits <= 8 else np.uint16 if bits <= 16 else np.uint32)


def _lo_hi(lo: Any, hi: Any) -> tuple[np.ndarray, np.ndarray]:
    lo64, hi64 = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    if not (np.all(np.isfinite(lo64)) and np.all(np.isfinite(hi64)) and np.all(hi64 > lo64)):
        raise ValueError("lo and hi must be finite with hi > lo everywhere")
    return lo64, hi64


def quantize_uniform(x: Any, lo: Any, hi: Any, bits: int) -> np.ndarray:
    """Round ``x`` ``[...]`` to ``2**bits`` levels spanning ``[lo, hi]`` (broadcast); values outside are clipped.

    Returns unsigned integers (uint8 / uint16 / uint32 by ``bits``) with the shape of the broadcast.
    For ``lo <= x <= hi``, ``|dequantize_uniform(q) - x| <= step / 2`` with
    ``step = (hi - lo) / (2**bits - 1)``.
    """
    dt = _uint_dtype(bits)
    lo64, hi64 = _lo_hi(lo, hi)
    x64 = np.asarray(x, dtype=np.float64)
    if np.isnan(x64).any():
        raise ValueError("x contains NaN")
    levels = float((1 << bits) - 1)
    t = (np.clip(x64, lo64, hi64) - lo64) / (hi64 - lo64) * levels
    return np.clip(np.rint(t), 0, levels).astype(dt)


def dequantize_uniform(q: Any, lo: Any, hi: Any, bits: int) -> np.ndarray:
    """Inverse of :func:`quantize_uniform`: float32 ``lo + q * (hi - lo) / (2**bits - 1)``."""
    _uint_dtype(bits)
    lo64, hi64 = _lo_hi(lo, hi)
    q64 = np.asarray(q, dtype=np.float64)
    return (lo64 + q64 * ((hi64 - lo64) / float((1 << bits) - 1))).astype(np.float32)
