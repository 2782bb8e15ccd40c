"""The .scz container (scenezip.scenes.scz): round trips, every malformation, atomic writes, fuzzing."""

from __future__ import annotations

import json
import os
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest

from scenezip.errors import SceneFileError
from scenezip.quant.codecs import quantize_uniform
from scenezip.quant.morton import morton_order
from scenezip.scenes import scz
from scenezip.scenes.scz import (
    EncodedStream,
    decode_streams,
    encode_streams,
    parse_scz,
    read_scz,
    scz_info,
    write_scz,
    write_scz_encoded,
)

METADATA = {"sh_degree": 1, "bounds": [[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]], "image_size": [32, 24]}


def _streams(n: int = 64, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    q = quantize_uniform(rng.random((n, 3)), 0.0, 1.0, 12).astype(np.int32)
    q = q[morton_order(q)]
    return {
        "means_q": (q, "rans-delta"),
        "quats": (rng.standard_normal((n, 4)).astype(np.float16), "raw"),
        "opacities": (rng.integers(0, 16, n).astype(np.uint8), "rans"),
        "sh0": (rng.standard_normal((n, 3)).astype(np.float32), "zlib", {"level": 9}),
        "codes": (rng.integers(-3, 40, (n, 2)).astype(np.int16), "rans", {"precision": 14}),
        "mask": (rng.random(n) > 0.2, "rans"),
        "empty": (np.zeros((0, 3), dtype=np.float32), "raw"),
    }


@pytest.fixture
def scene_path(tmp_path: Path) -> Path:
    path = tmp_path / "scene.scz"
    write_scz(path, "c3dgs", METADATA, _streams())
    return path


def _split(data: bytes) -> tuple[tuple, dict, bytes]:
    magic, version, flags, hlen = struct.unpack_from("<8sHHI", data, 0)
    header = json.loads(data[16 : 16 + hlen])
    return (magic, version, flags), header, data[16 + hlen :]


def _join(preamble: tuple, header, payloads: bytes, header_bytes: bytes | None = None) -> bytes:
    text = header_bytes if header_bytes is not None else json.dumps(header).encode()
    return struct.pack("<8sHHI", *preamble, len(text)) + text + payloads


def _edit(data: bytes, fn) -> bytes:
    """Apply ``fn(header)`` to the parsed header and re-serialize the file."""
    pre, header, payloads = _split(data)
    fn(header)
    return _join(pre, header, payloads)


def _stream(header: dict, name: str) -> dict:
    return next(s for s in header["streams"] if s["name"] == name)


class TestRoundTrip:
    def test_every_stream_bit_exact(self, scene_path: Path):
        streams = _streams()
        scene = read_scz(scene_path)
        assert scene.method == "c3dgs" and scene.metadata == METADATA and scene.version == 1
        assert list(scene.streams) == list(streams)  # insertion order is kept
        decoded = decode_streams(scene)
        for name, (array, codec, *_) in streams.items():
            assert scene.streams[name].codec == codec
            assert decoded[name].dtype == array.dtype and decoded[name].shape == array.shape
            assert decoded[name].tobytes() == array.tobytes(), name

    def test_layout_matches_design(self, scene_path: Path):
        data = scene_path.read_bytes()
        assert data[:8] == b"SCENEZIP"
        (magic, version, flags), header, payloads = _split(data)
        assert (version, flags) == (1, 0)
        assert set(header) == {"method", "metadata", "streams"}
        end = 0
        for rec in header["streams"]:
            assert set(rec) == {"name", "codec", "dtype", "shape", "offset", "nbytes", "crc32", "params"}
            assert rec["offset"] == end  # offsets count from the payload section, contiguous
            assert zlib.crc32(payloads[rec["offset"] : rec["offset"] + rec["nbytes"]]) == rec["crc32"]
            end += rec["nbytes"]
        assert end == len(payloads)

    def test_returns_bytes_written(self, tmp_path: Path):
        n = write_scz(tmp_path / "a.scz", "3dgs", {}, {"x": (np.arange(5, dtype=np.int32), "raw")})
        assert n == os.path.getsize(tmp_path / "a.scz")

    def test_numpy_metadata_and_encoded_streams(self, tmp_path: Path):
        meta = {"sh_degree": np.int64(3), "scale": np.float32(0.5), "bounds": np.zeros(3), "ok": np.bool_(True)}
        enc = encode_streams({"x": (np.arange(10, dtype=np.int32), "rans")})
        assert isinstance(enc["x"], EncodedStream) and enc["x"].params == {"offset": 0}
        write_scz_encoded(tmp_path / "b.scz", "3dgs", meta, enc)
        scene = read_scz(tmp_path / "b.scz")
        assert scene.metadata == {"sh_degree": 3, "scale": 0.5, "bounds": [0.0, 0.0, 0.0], "ok": True}
        np.testing.assert_array_equal(scene.decode("x"), np.arange(10))
        assert scene.payload("x") == enc["x"].payload

    def test_unknown_stream_name(self, scene_path: Path):
        with pytest.raises(SceneFileError, match="no stream named 'colors'"):
            read_scz(scene_path).decode("colors")

    def test_info_lists_every_stream(self, scene_path: Path):
        text = scz_info(scene_path)
        size = os.path.getsize(scene_path)
        assert f"{size:,}" in text and "c3dgs" in text
        shares = 0.0
        for name, (array, codec, *_) in _streams().items():
            line = next(ln for ln in text.splitlines() if ln.startswith(name + " "))
            assert codec in line and array.dtype.name in line
            assert ("x".join(map(str, array.shape))) in line
            share = next(v for v in line.split() if v.endswith("%"))
            shares += float(share.rstrip("%"))
            last = line.split()[-1]
            if codec in ("rans", "rans-delta") and not last.endswith("%") and last != "-":
                assert float(last) >= 1.0  # coded/H: the coded size is at least the empirical entropy
        header_line = next(ln for ln in text.splitlines() if ln.startswith("(header)"))
        shares += float(header_line.split()[-1].rstrip("%"))
        assert shares == pytest.approx(100.0, abs=0.6)


class TestWriteErrors:
    def test_encoding_error_leaves_nothing(self, tmp_path: Path):
        path = tmp_path / "scene.scz"
        streams = {"a": (np.arange(4, dtype=np.int32), "raw"), "b": (np.zeros(4, dtype=np.float32), "rans")}
        with pytest.raises(ValueError, match="does not take dtype float32"):
            write_scz(path, "3dgs", {}, streams)
        assert list(tmp_path.iterdir()) == []

    def test_failed_write_keeps_old_file_and_no_temp(self, tmp_path: Path, monkeypatch):
        path = tmp_path / "scene.scz"
        write_scz(path, "3dgs", {}, {"a": (np.arange(4, dtype=np.int32), "raw")})
        before = path.read_bytes()

        def boom(*args, **kwargs):
            raise OSError("disk full")

        monkeypatch.setattr(scz.os, "replace", boom)
        with pytest.raises(OSError, match="disk full"):
            write_scz(path, "3dgs", {}, {"a": (np.arange(8, dtype=np.int32), "raw")})
        assert path.read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == ["scene.scz"]

    def test_bad_arguments(self, tmp_path: Path):
        x = {"a": (np.arange(4, dtype=np.int32), "raw")}
        with pytest.raises(SceneFileError, match="does not exist"):
            write_scz(tmp_path / "missing" / "s.scz", "3dgs", {}, x)
        with pytest.raises(ValueError, match="method"):
            write_scz(tmp_path / "s.scz", "", {}, x)
        with pytest.raises(ValueError, match="metadata is not JSON"):
            write_scz(tmp_path / "s.scz", "3dgs", {"v": float("nan")}, x)
        with pytest.raises(ValueError, match="metadata must be a dict"):
            write_scz(tmp_path / "s.scz", "3dgs", [1], x)
        with pytest.raises(SceneFileError, match="unknown codec 'png'"):
            write_scz(tmp_path / "s.scz", "3dgs", {}, {"a": (np.arange(4), "png")})
        with pytest.raises(ValueError, match="non-empty strings"):
            write_scz(tmp_path / "s.scz", "3dgs", {}, {"": (np.arange(4), "raw")})
        assert list(tmp_path.iterdir()) == []


class TestMalformed:
    """Each malformation raises SceneFileError with a message naming the file and the fault."""

    def _raises(self, data: bytes, match: str, decode: bool = False):
        with pytest.raises(SceneFileError, match=match) as info:
            scene = parse_scz(data, "bad.scz")
            if decode:
                decode_streams(scene)
        assert str(info.value).startswith("bad.scz: ")

    def test_preamble(self, scene_path: Path):
        data = scene_path.read_bytes()
        self._raises(b"PK\x03\x04" + data[4:], "wrong magic")
        self._raises(b"", "truncated")
        self._raises(data[:11], "truncated")
        self._raises(b"hello", "wrong magic")
        self._raises(data[:8] + struct.pack("<H", 2) + data[10:], "unsupported format version 2")
        self._raises(data[:10] + struct.pack("<H", 1) + data[12:], "unknown flags")
        self._raises(data[:12] + struct.pack("<I", len(data)) + data[16:], "runs past the end")

    def test_header_encoding(self, scene_path: Path):
        pre, header, payloads = _split(scene_path.read_bytes())
        text = json.dumps(header).encode()
        self._raises(_join(pre, None, payloads, b"\xff" + text[1:]), "not valid UTF-8")
        self._raises(_join(pre, None, payloads, text[:-1] + b" "), "not valid JSON")
        nan = text.replace(b'"sh_degree": 1', b'"sh_degree": NaN')
        self._raises(_join(pre, None, payloads, nan), "NaN is not valid JSON")
        big = text.replace(b'"sh_degree": 1', b'"sh_degree": 1e999')
        self._raises(_join(pre, None, payloads, big), "overflows a float")
        dup = text.replace(b'"sh_degree": 1', b'"sh_degree": 1, "sh_degree": 2')
        self._raises(_join(pre, None, payloads, dup), "duplicate key 'sh_degree'")
        self._raises(_join(pre, None, payloads, b"[" * 100_000), "not valid JSON")
        self._raises(_join(pre, [1, 2], payloads), "must be a JSON object")

    def test_header_keys_and_types(self, scene_path: Path):
        data = scene_path.read_bytes()
        self._raises(_edit(data, lambda h: h.pop("streams")), "header lacks streams")
        self._raises(_edit(data, lambda h: h.update(extra=1)), "unknown keys 'extra'")
        self._raises(_edit(data, lambda h: h.update(method=3)), "method must be a non-empty string")
        self._raises(_edit(data, lambda h: h.update(metadata=[])), "metadata must be an object")
        self._raises(_edit(data, lambda h: h.update(streams={})), "streams must be a list")
        self._raises(_edit(data, lambda h: h["streams"].append(5)), "stream record 7 is not an object")
        self._raises(_edit(data, lambda h: h["streams"][0].pop("crc32")), "lacks crc32")
        self._raises(_edit(data, lambda h: h["streams"][0].update(x=0)), "unknown keys 'x'")
        self._raises(_edit(data, lambda h: h["streams"][0].update(name="")), "name must be a non-empty string")
        self._raises(_edit(data, lambda h: h["streams"][1].update(name="means_q")), "two streams are named")

    @pytest.mark.parametrize(
        "key, value, match",
        [
            ("codec", "lzma", "unknown codec 'lzma'"),
            ("codec", 3, "codec must be a string"),
            ("dtype", "complex64", "unsupported dtype 'complex64'"),
            ("dtype", "O", "unsupported dtype 'O'"),
            ("shape", [64, -3], "non-negative integers"),
            ("shape", [64, True], "non-negative integers"),
            ("shape", "64", "shape must be a list"),
            ("offset", -1, "offset must be a non-negative integer"),
            ("nbytes", 1.5, "nbytes must be a non-negative integer"),
            ("crc32", 1 << 32, "crc32 must be an integer"),
            ("params", [], "params must be an object"),
        ],
    )
    def test_record_fields(self, scene_path: Path, key, value, match):
        data = scene_path.read_bytes()
        self._raises(_edit(data, lambda h: _stream(h, "quats").update({key: value})), match)

    def test_offsets_and_sizes(self, scene_path: Path):
        data = scene_path.read_bytes()
        self._raises(data[:-1], "runs past the end of the file")
        self._raises(data + b"\x00", "1 unexpected bytes after the last stream")
        self._raises(_edit(data, lambda h: _stream(h, "quats").update(offset=1 << 40)), "runs past the end")
        self._raises(_edit(data, lambda h: _stream(h, "sh0").update(offset=0)), "overlaps")
        # a raw stream whose shape disagrees with its byte count
        self._raises(_edit(data, lambda h: _stream(h, "quats").update(shape=[64, 5])), "expected 640")
        self._raises(_edit(data, lambda h: _stream(h, "quats").update(dtype="float32")), "expected 1024")

    def test_bad_crc(self, scene_path: Path):
        data = bytearray(scene_path.read_bytes())
        data[-1] ^= 0x01  # last byte of the last non-empty payload
        self._raises(bytes(data), "bad CRC32")
        zero_crc = _edit(scene_path.read_bytes(), lambda h: _stream(h, "sh0").update(crc32=0))
        self._raises(zero_crc, "'sh0': bad CRC32")

    def test_codec_params_and_counts(self, scene_path: Path):
        data = scene_path.read_bytes()
        self._raises(_edit(data, lambda h: _stream(h, "opacities").update(params={})), "missing parameter 'offset'")
        self._raises(_edit(data, lambda h: _stream(h, "sh0").update(params={"level": "x"})), "'level'")
        # counts that no payload of this size could hold are refused before anything is allocated
        huge = _edit(data, lambda h: _stream(h, "opacities").update(shape=[1 << 40]))
        self._raises(huge, "'opacities'.*cannot come from", decode=True)
        huge = _edit(data, lambda h: _stream(h, "sh0").update(shape=[1 << 40, 3]))
        self._raises(huge, "cannot inflate")
        # a count that fits the bound but not the data
        longer = _edit(data, lambda h: _stream(h, "means_q").update(shape=[65, 3]))
        self._raises(longer, "'means_q'.*corrupt", decode=True)

    def test_files_on_disk(self, tmp_path: Path):
        with pytest.raises(SceneFileError, match="no such file"):
            read_scz(tmp_path / "nope.scz")
        with pytest.raises(SceneFileError, match="is a folder"):
            read_scz(tmp_path)


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    """One random corruption: bit flips, inserted or deleted bytes, truncation, or a digit changed."""
    buf = bytearray(data)
    kind = int(rng.integers(0, 5))
    hlen = struct.unpack_from("<I", data, 12)[0]
    where = lambda: int(rng.integers(0, 16 + hlen if rng.random() < 0.8 else len(buf)))  # noqa: E731
    if kind == 0:
        for _ in range(int(rng.integers(1, 4))):
            buf[where()] ^= 1 << int(rng.integers(0, 8))
    elif kind == 1:
        pos = where()
        buf[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 9))).astype(np.uint8).tobytes()
    elif kind == 2:
        pos = where()
        del buf[pos : pos + int(rng.integers(1, 9))]
    elif kind == 3:
        del buf[int(rng.integers(0, len(buf))) :]
    else:
        digits = [i for i in range(16, 16 + hlen) if 48 <= buf[i] <= 57]
        buf[digits[int(rng.integers(0, len(digits)))]] = int(rng.integers(48, 58))
    return bytes(buf)


def test_fuzz_only_clean_scene_file_errors(scene_path: Path):
    data = scene_path.read_bytes()
    rng = np.random.default_rng(1234)
    errors, ok = 0, 0
    tracemalloc.start()
    try:
        for _ in range(300):
            bad = _mutate(data, rng)
            try:
                decode_streams(parse_scz(bad, "fuzz.scz"))
                ok += 1
            except SceneFileError as e:
                assert str(e).startswith("fuzz.scz: ")
                errors += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert errors + ok == 300 and errors > 200  # most corruptions must be detected
    assert peak < 64 * 2**20  # no case allocated anything near what a corrupted count claims
