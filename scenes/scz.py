"""The ``.scz`` container: named, coded array streams behind a JSON header.

Written by hand to the layout in DESIGN.md ("The .scz file"); little-endian throughout::

    offset 0   8 bytes   magic b"SCENEZIP"
           8   u16       format version (1)
          10   u16       flags (0; any other value is refused by this version)
          12   u32       header length H
          16   H bytes   UTF-8 JSON header
        16+H   ...       stream payloads

The header is ``{"method": str, "metadata": {...}, "streams": [record, ...]}`` and each record is
``{"name", "codec", "dtype", "shape", "offset", "nbytes", "crc32", "params"}``. ``offset`` counts from
the start of the payload section (byte ``16 + H``) so the header does not depend on its own length;
``crc32`` is ``zlib.crc32`` of the payload; ``codec`` is a fixed ID of ``scenezip.quant.codecs``.
Payloads may not overlap, and the file ends where the last payload ends.

Layering: a representation turns itself into named arrays, ``quant.codecs`` codes each one, and this
module does the file I/O. :func:`write_scz` is the convenience that codes and writes;
:func:`write_scz_encoded` writes payloads that are already coded. ``scenes`` imports ``quant``'s
codec registry (never the other way round).

Reading checks everything before trusting it, and every count against the file size before
allocating: any malformed file raises :class:`~scenezip.errors.SceneFileError` with one message
naming the file and the fault. Writing goes to a temporary file in the target folder that is renamed
over the target, so a failed write leaves neither a half-written file nor the temporary behind.
"""

from __future__ import annotations

import json
import os
import secrets
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from scenezip.errors import SceneFileError
from scenezip.quant.codecs import DTYPES, get_codec, shape_count

MAGIC = b"SCENEZIP"
FORMAT_VERSION = 1
PREAMBLE = struct.Struct("<8sHHI")  # magic, version, flags, header length: 16 bytes
_HEADER_KEYS = ("method", "metadata", "streams")
_STREAM_KEYS = ("name", "codec", "dtype", "shape", "offset", "nbytes", "crc32", "params")


@dataclass(frozen=True)
class StreamRecord:
    """One stream as the header describes it (``offset`` counts from the payload section)."""

    name: str
    codec: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    crc32: int
    params: dict


@dataclass(frozen=True)
class EncodedStream:
    """A coded payload ready to be written: what :func:`write_scz_encoded` takes per stream name."""

    payload: bytes
    codec: str
    dtype: str
    shape: tuple[int, ...]
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SceneFile:
    """A parsed ``.scz`` file: header fields plus access to the (CRC-checked) payloads."""

    path: str
    version: int
    flags: int
    method: str
    metadata: dict
    streams: dict[str, StreamRecord]
    header_nbytes: int  # JSON header only
    file_nbytes: int
    _payloads: bytes = field(repr=False)

    def record(self, name: str) -> StreamRecord:
        if name not in self.streams:
            raise SceneFileError(
                f"{self.path}: no stream named {name!r} (streams: {', '.join(self.streams) or 'none'})"
            )
        return self.streams[name]

    def payload(self, name: str) -> bytes:
        """The coded bytes of stream ``name``."""
        rec = self.record(name)
        return self._payloads[rec.offset : rec.offset + rec.nbytes]

    def decode(self, name: str) -> np.ndarray:
        """The array of stream ``name``, with the dtype and shape the header states."""
        rec = self.record(name)
        try:
            arr = get_codec(rec.codec).decode(self.payload(name), rec.dtype, rec.shape, rec.params)
        except SceneFileError as e:
            raise SceneFileError(f"{self.path}: stream {name!r}: {e}") from None
        if arr.dtype.name != rec.dtype or tuple(arr.shape) != rec.shape:
            raise SceneFileError(
                f"{self.path}: stream {name!r}: decoded {arr.dtype.name} {list(arr.shape)}, "
                f"header says {rec.dtype} {list(rec.shape)}"
            )
        return arr


# ------------------------------------------------------------------------------------ writing


def _json_default(o: Any) -> Any:
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"{type(o).__name__} is not JSON-serializable")


def _to_json(obj: Any, what: str) -> Any:
    """``obj`` as plain JSON values (numpy scalars and arrays converted); ValueError naming ``what``."""
    try:
        return json.loads(json.dumps(obj, default=_json_default, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} is not JSON-serializable: {e}") from None


def encode_streams(
    streams: Mapping[str, tuple],
) -> dict[str, EncodedStream]:
    """Code every ``name -> (array, codec)`` or ``(array, codec, codec_params)`` with ``quant.codecs``."""
    out: dict[str, EncodedStream] = {}
    for name, spec in streams.items():
        if not isinstance(spec, tuple) or len(spec) not in (2, 3):
            raise ValueError(f"stream {name!r} must be (array, codec) or (array, codec, params), got {spec!r}")
        array, codec = np.asarray(spec[0]), spec[1]
        params = spec[2] if len(spec) == 3 and spec[2] is not None else {}
        payload, stored = get_codec(codec).encode(array, **params)
        out[name] = EncodedStream(payload, codec, array.dtype.name, tuple(array.shape), stored)
    return out


def _header_bytes(method: str, metadata: dict, encoded: Mapping[str, EncodedStream]) -> tuple[bytes, list[bytes]]:
    if not isinstance(method, str) or not method:
        raise ValueError(f"method must be a non-empty string, got {method!r}")
    if not isinstance(metadata, dict):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    records, payloads, offset = [], [], 0
    for name, s in encoded.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"stream names must be non-empty strings, got {name!r}")
        if not isinstance(s, EncodedStream):
            raise ValueError(f"stream {name!r} must be an EncodedStream, got {type(s).__name__}")
        codec = get_codec(s.codec)
        if s.dtype not in codec.dtypes:
            raise ValueError(f"stream {name!r}: codec {s.codec!r} cannot hold dtype {s.dtype!r}")
        payload = bytes(s.payload)
        shape = [int(d) for d in s.shape]
        params = _to_json(s.params, f"params of stream {name!r}")
        try:
            codec.check(len(payload), s.dtype, shape, params)
        except SceneFileError as e:
            raise ValueError(f"stream {name!r}: {e}") from None
        records.append(
            {
                "name": name,
                "codec": s.codec,
                "dtype": s.dtype,
                "shape": shape,
                "offset": offset,
                "nbytes": len(payload),
                "crc32": zlib.crc32(payload),
                "params": params,
            }
        )
        payloads.append(payload)
        offset += len(payload)
    header = {"method": method, "metadata": _to_json(metadata, "metadata"), "streams": records}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    if len(text) >= 1 << 32:
        raise ValueError(f"header of {len(text)} bytes does not fit the u32 header length")
    return text, payloads


def _atomic_write(path: str | os.PathLike, chunks: list[bytes]) -> int:
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise SceneFileError(f"{path}: folder {folder} does not exist")
    tmp = folder / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    total = 0
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            for c in chunks:
                f.write(c)
                total += len(c)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return total


def write_scz_encoded(
    path: str | os.PathLike, method: str, metadata: dict, encoded: Mapping[str, EncodedStream]
) -> int:
    """Write already-coded streams (in mapping order) to ``path`` atomically; returns the bytes written."""
    header, payloads = _header_bytes(method, metadata, encoded)
    preamble = PREAMBLE.pack(MAGIC, FORMAT_VERSION, 0, len(header))
    return _atomic_write(path, [preamble, header, *payloads])


def write_scz(
    path: str | os.PathLike,
    method: str,
    metadata: dict,
    streams: Mapping[str, tuple],
) -> int:
    """Code and write a scene: ``streams`` maps names to ``(array, codec)`` or ``(array, codec, codec_params)``.

    Every stream is coded in memory first, so a codec error leaves no file (and no temporary) behind.
    Returns the number of bytes written.
    """
    return write_scz_encoded(path, method, metadata, encode_streams(streams))


# ------------------------------------------------------------------------------------ reading


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    v = float(text)
    if not np.isfinite(v):
        raise ValueError(f"number {text[:20]} overflows a float")
    return v


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _parse_record(r: Any, i: int, fail) -> StreamRecord:
    if not isinstance(r, dict):
        fail(f"stream record {i} is not an object")
    missing = [k for k in _STREAM_KEYS if k not in r]
    if missing:
        fail(f"stream record {i} lacks {', '.join(missing)}")
    extra = [k for k in r if k not in _STREAM_KEYS]
    if extra:
        fail(f"stream record {i} has unknown keys {', '.join(map(repr, extra))}")
    name = r["name"]
    if not isinstance(name, str) or not name:
        fail(f"stream record {i}: name must be a non-empty string, got {name!r}")
    where = f"stream {name!r}"
    if not isinstance(r["codec"], str):
        fail(f"{where}: codec must be a string, got {r['codec']!r}")
    try:
        get_codec(r["codec"])
    except SceneFileError as e:
        fail(f"{where}: {e}")
    if not isinstance(r["dtype"], str) or r["dtype"] not in DTYPES:
        fail(f"{where}: unsupported dtype {r['dtype']!r}")
    try:
        shape_count(r["shape"])
    except SceneFileError as e:
        fail(f"{where}: {e}")
    for key in ("offset", "nbytes"):
        if not _is_int(r[key]) or r[key] < 0:
            fail(f"{where}: {key} must be a non-negative integer, got {r[key]!r}")
    if not _is_int(r["crc32"]) or not 0 <= r["crc32"] < 1 << 32:
        fail(f"{where}: crc32 must be an integer in [0, 2^32), got {r['crc32']!r}")
    if not isinstance(r["params"], dict):
        fail(f"{where}: params must be an object, got {r['params']!r}")
    return StreamRecord(
        name, r["codec"], r["dtype"], tuple(r["shape"]), r["offset"], r["nbytes"], r["crc32"], r["params"]
    )


def parse_scz(data: bytes, path: str = "<bytes>") -> SceneFile:
    """Parse and check a whole ``.scz`` file held in memory (payload CRCs included)."""

    def fail(msg: str):
        raise SceneFileError(f"{path}: {msg}")

    data = bytes(data)
    size = len(data)
    if size < PREAMBLE.size:
        if MAGIC.startswith(data[:8]):
            fail(f"truncated: {size} bytes, shorter than the {PREAMBLE.size}-byte preamble")
        fail(f"not a .scz file (wrong magic {data[:8]!r}, expected {MAGIC!r})")
    magic, version, flags, hlen = PREAMBLE.unpack_from(data, 0)
    if magic != MAGIC:
        fail(f"not a .scz file (wrong magic {magic!r}, expected {MAGIC!r})")
    if version != FORMAT_VERSION:
        fail(f"unsupported format version {version} (this scenezip reads version {FORMAT_VERSION})")
    if flags != 0:
        fail(f"unknown flags 0x{flags:04x} (format version {FORMAT_VERSION} defines none)")
    if hlen > size - PREAMBLE.size:
        fail(f"header length {hlen} runs past the end of the file ({size} bytes): truncated?")
    try:
        text = data[PREAMBLE.size : PREAMBLE.size + hlen].decode("utf-8")
    except UnicodeDecodeError as e:
        fail(f"header is not valid UTF-8 ({e.reason} at byte {e.start})")
    try:
        header = json.loads(
            text, parse_constant=_reject_constant, parse_float=_finite_float, object_pairs_hook=_unique_pairs
        )
    except RecursionError:
        fail("header is not valid JSON (nested too deeply)")
    except ValueError as e:
        fail(f"header is not valid JSON ({e})")
    if not isinstance(header, dict):
        fail(f"header must be a JSON object, got {type(header).__name__}")
    missing = [k for k in _HEADER_KEYS if k not in header]
    if missing:
        fail(f"header lacks {', '.join(missing)}")
    extra = [k for k in header if k not in _HEADER_KEYS]
    if extra:
        fail(f"header has unknown keys {', '.join(map(repr, extra))}")
    method, metadata, stream_list = header["method"], header["metadata"], header["streams"]
    if not isinstance(method, str) or not method:
        fail(f"method must be a non-empty string, got {method!r}")
    if not isinstance(metadata, dict):
        fail(f"metadata must be an object, got {type(metadata).__name__}")
    if not isinstance(stream_list, list):
        fail(f"streams must be a list, got {type(stream_list).__name__}")

    streams: dict[str, StreamRecord] = {}
    for i, r in enumerate(stream_list):
        rec = _parse_record(r, i, fail)
        if rec.name in streams:
            fail(f"two streams are named {rec.name!r}")
        streams[rec.name] = rec

    start = PREAMBLE.size + hlen
    section = size - start
    end_max = 0
    for rec in sorted(streams.values(), key=lambda r: (r.offset, r.nbytes)):
        if rec.offset + rec.nbytes > section:
            fail(
                f"stream {rec.name!r} (bytes {rec.offset}..{rec.offset + rec.nbytes} of the payload section) "
                f"runs past the end of the file ({section} payload bytes): truncated?"
            )
        if rec.offset < end_max:
            fail(f"stream {rec.name!r} overlaps another stream (offset {rec.offset} < {end_max})")
        end_max = rec.offset + rec.nbytes
    if end_max != section:
        fail(f"{section - end_max} unexpected bytes after the last stream")

    payloads = data[start:]
    for rec in streams.values():
        try:
            get_codec(rec.codec).check(rec.nbytes, rec.dtype, list(rec.shape), rec.params)
        except SceneFileError as e:
            fail(f"stream {rec.name!r}: {e}")
        crc = zlib.crc32(payloads[rec.offset : rec.offset + rec.nbytes])
        if crc != rec.crc32:
            fail(f"stream {rec.name!r}: bad CRC32 (stored {rec.crc32:08x}, computed {crc:08x})")
    return SceneFile(str(path), version, flags, method, metadata, streams, hlen, size, payloads)


def read_scz(path: str | os.PathLike) -> SceneFile:
    """Read and check the ``.scz`` file at ``path``; SceneFileError naming the file and fault otherwise."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise SceneFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SceneFileError(f"{path}: is a folder, not a .scz file") from None
    except OSError as e:
        raise SceneFileError(f"{path}: cannot read ({e.strerror})") from None
    return parse_scz(data, str(path))


def decode_streams(scene: SceneFile, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Decode the named streams (all of them by default) of ``scene`` into arrays."""
    return {name: scene.decode(name) for name in (scene.streams if names is None else names)}


# --------------------------------------------------------------------------------------- info


def _fmt_bytes(n: int) -> str:
    return f"{n:,}"


def scz_info(path: str | os.PathLike | SceneFile) -> str:
    """A table of every stream: name, codec, dtype, shape, bytes, share of the file and, for entropy-coded
    streams, the order-0 empirical entropy of the coded symbols and the ratio coded bytes / entropy
    (``scenezip info``; the excess is the stored frequency table and the coder's overhead)."""
    scene = path if isinstance(path, SceneFile) else read_scz(path)
    size = scene.file_nbytes

    def share(n: int) -> str:
        return f"{100.0 * n / size:.1f}%" if size else "-"

    from scenezip.quant.codecs import entropy_bytes

    rows = [("stream", "codec", "dtype", "shape", "bytes", "share", "entropy", "coded/H")]
    for rec in scene.streams.values():
        h = entropy_bytes(scene.decode(rec.name), rec.codec) if rec.codec in ("rans", "rans-delta") else None
        ent = ("", "") if h is None else (_fmt_bytes(int(round(h))), f"{rec.nbytes / h:.3f}" if h > 0 else "-")
        rows.append((rec.name, rec.codec, rec.dtype, "x".join(map(str, rec.shape)) or "scalar",
                     _fmt_bytes(rec.nbytes), share(rec.nbytes), *ent))  # fmt: skip
    head = PREAMBLE.size + scene.header_nbytes
    rows.append(("(header)", "json", "", "", _fmt_bytes(head), share(head), "", ""))
    rows.append(("total", "", "", "", _fmt_bytes(size), "100.0%" if size else "-", "", ""))
    widths = [max(len(r[c]) for r in rows) for c in range(8)]
    right = {4, 5, 6, 7}

    def line(r: tuple) -> str:
        return "  ".join(v.rjust(w) if c in right else v.ljust(w) for c, (v, w) in enumerate(zip(r, widths))).rstrip()

    meta = json.dumps(scene.metadata, separators=(", ", ": "))
    if len(meta) > 200:
        meta = meta[:197] + "..."
    out = [
        f"{scene.path}: method {scene.method}, format version {scene.version}, "
        f"{_fmt_bytes(size)} bytes, {len(scene.streams)} streams",
        f"metadata: {meta}",
        line(rows[0]),
        line(tuple("-" * w for w in widths)),
        *(line(r) for r in rows[1:-1]),
        line(tuple("-" * w for w in widths)),
        line(rows[-1]),
    ]
    return "\n".join(out)
