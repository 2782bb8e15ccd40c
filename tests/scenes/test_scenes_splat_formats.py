"""Viewer formats: byte layouts field by field, round trips within each format's quantization, agreement
with independent readers (gsply for SPZ and SOG, pygltflib for glTF), malformed files -> SceneFileError.

Tolerances (why):
- .splat: positions exact (f32), log scales exact up to f32 exp/log (1e-5), colour and opacity within half
  an 8-bit step after the sigmoid / in RGB (0.5/255), quaternion components within 0.5/128 before
  renormalization (checked as |<q, q'>| >= 1 - 1e-3).
- SPZ: positions within half a fixed-point step (0.5 / 2^bits), log scales within 1/32, sigmoid opacity
  within 0.5/255, DC within 0.5 / (0.15 * 255), degree-1 SH within 4.5/128 (5-bit buckets of 8), degree 2-3
  within 8.5/128 (4-bit buckets of 16); v3 rotations |<q, q'>| >= 1 - 1e-5 (9-bit smallest three),
  v2 |<q, q'>| >= 1 - 2e-3 (8 bits, w rebuilt).
- SOG: positions within half a 16-bit step of the log-domain range, mapped back through exp; quaternion
  |<q, q'>| >= 1 - 1e-4 (8-bit smallest three); scales, DC and higher SH decode to the codebook entry nearest
  to the input (the codebook is the quantizer); sigmoid opacity within 0.5/255.
- GLB: float32 attributes, exact up to exp/log and sigmoid/logit round trips (1e-5).
"""

from __future__ import annotations

import gzip
import io
import json
import math
import struct
import zipfile

import numpy as np
import pytest

from scenezip.errors import SceneFileError
from scenezip.scenes.splat_formats import (
    FORMATS, SH_C0, decode_glb, decode_sog, decode_splat, decode_spz, encode_glb, encode_sog, encode_splat,
    encode_spz, flatten_surfels, glb_attribute_names, read_splats, sog_order, splat_order, write_splats,
)  # fmt: skip


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def gaussians(n: int, krest: int, seed: int = 0, extent: float = 2.0) -> dict[str, np.ndarray]:
    """Seeded Gaussians inside every format's representable range (colours in [0.05, 0.95], |shN| < 0.8)."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    return {
        "means": rng.uniform(-extent, extent, size=(n, 3)).astype(np.float32),
        "quats": (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32),
        "scales": rng.uniform(-6, 1, size=(n, 3)).astype(np.float32),
        "opacities": rng.normal(scale=2.0, size=n).astype(np.float32),
        "sh0": ((rng.uniform(0.05, 0.95, size=(n, 1, 3)) - 0.5) / SH_C0).astype(np.float32),
        "shN": rng.uniform(-0.8, 0.8, size=(n, krest, 3)).astype(np.float32),
    }


def qdot(a, b):
    return np.abs((a.astype(np.float64) * b).sum(1))


def nearest_entry(values, codebook):
    cb = np.asarray(codebook, np.float64)
    v = np.asarray(values, np.float64)
    return cb[np.abs(v[..., None] - cb).argmin(-1)]


# ---------------------------------------------------------------------------------------------- .splat
def test_splat_byte_layout_two_splats():
    g = gaussians(2, 3, seed=1)
    g["scales"][:] = np.log([[0.1, 0.2, 0.3], [1.0, 2.0, 0.5]])  # splat 1 is larger: it comes first
    g["opacities"][:] = [0.0, 0.0]
    blob = encode_splat(g)
    assert len(blob) == 64
    for row, i in enumerate([1, 0]):
        f = struct.unpack("<3f3f4B4B", blob[32 * row : 32 * (row + 1)])
        np.testing.assert_array_equal(f[0:3], g["means"][i])
        np.testing.assert_allclose(f[3:6], np.exp(g["scales"][i]), rtol=1e-6)
        rgb = np.clip(np.rint(255 * (0.5 + SH_C0 * g["sh0"][i, 0])), 0, 255)
        assert f[6:9] == tuple(int(c) for c in rgb)
        assert f[9] == 128  # sigmoid(0) * 255 = 127.5 -> 128
        assert f[10:14] == tuple(int(c) for c in np.clip(np.rint(g["quats"][i] * 128 + 128), 0, 255))


def test_splat_round_trip_and_order():
    g = gaussians(200, 8, seed=2)
    order = splat_order(g)
    key = np.exp(g["scales"].astype(np.float64).sum(1)) * sigmoid(g["opacities"])
    assert np.all(np.diff(key[order]) <= 0)
    r = decode_splat(encode_splat(g))
    assert r["shN"].shape == (200, 0, 3)
    np.testing.assert_array_equal(r["means"], g["means"][order])
    np.testing.assert_allclose(r["scales"], g["scales"][order], atol=1e-5)
    assert np.abs(sigmoid(r["opacities"]) - sigmoid(g["opacities"][order])).max() <= 0.5 / 255 + 1e-6
    rgb = lambda s: 0.5 + SH_C0 * s[:, 0]  # noqa: E731
    assert np.abs(rgb(r["sh0"]) - rgb(g["sh0"][order])).max() <= 0.5 / 255 + 1e-6
    assert qdot(r["quats"], g["quats"][order]).min() >= 1 - 1e-3
    with pytest.raises(SceneFileError, match="multiple of 32"):
        decode_splat(encode_splat(g)[:-3], "x.splat")


# ---------------------------------------------------------------------------------------------- SPZ
def test_spz_header_and_byte_layout_one_splat():
    g = gaussians(1, 3, seed=3)
    g["means"][0] = [1.5, -0.25, 0.001]
    g["quats"][0] = np.array([0.9, 0.1, -0.3, 0.2]) / np.linalg.norm([0.9, 0.1, -0.3, 0.2])
    raw = gzip.decompress(encode_spz(g))
    magic, version, n, degree, bits, flags, reserved = struct.unpack("<IIIBBBB", raw[:16])
    assert raw[:4] == b"NGSP" and magic == 0x5053474E
    assert (version, n, degree, bits, flags, reserved) == (3, 1, 1, 12, 0, 0)
    body = raw[16:]
    assert len(body) == 9 + 1 + 3 + 3 + 4 + 9
    for a in range(3):  # 24-bit little-endian two's complement, 12 fractional bits
        v = int.from_bytes(body[3 * a : 3 * a + 3], "little", signed=True)
        assert v == round(float(g["means"][0, a]) * 4096)
    assert body[9] == round(sigmoid(g["opacities"][0]) * 255)
    np.testing.assert_array_equal(list(body[10:13]), np.rint(g["sh0"][0, 0] * 0.15 * 255 + 127.5))
    np.testing.assert_array_equal(list(body[13:16]), np.clip(np.rint((g["scales"][0] + 10) * 16), 0, 255))
    comp = int.from_bytes(body[16:20], "little")
    assert comp >> 30 == 3  # (x, y, z, w): w = 0.9/|q| is the largest
    x, y, z = (g["quats"][0, 1:]).tolist()
    fields = [(comp >> 20) & 1023, (comp >> 10) & 1023, comp & 1023]  # x first (highest), then y, z
    for val, fld in zip((x, y, z), fields):
        assert (fld >> 9) == (val < 0)
        assert fld & 511 == int(511 * abs(val) / math.sqrt(0.5) + 0.5)
    sh = np.frombuffer(body[20:29], np.uint8).reshape(3, 3)  # coefficient-major, RGB inner
    expect = np.clip(np.floor((np.rint(g["shN"][0] * 128) + 128 + 4) / 8) * 8, 0, 255)
    np.testing.assert_array_equal(sh, expect)


@pytest.mark.parametrize("krest", [0, 3, 8, 15])
@pytest.mark.parametrize("version", [3, 2])
def test_spz_round_trip_within_quantization(krest, version):
    g = gaussians(300, krest, seed=krest + version)
    if version == 2:  # w is rebuilt from 8-bit x, y, z: keep it away from 0 where that is ill-conditioned
        g["quats"][:, 0] = np.abs(g["quats"][:, 0]) + 0.5
        g["quats"] /= np.linalg.norm(g["quats"], axis=1, keepdims=True)
    r = decode_spz(encode_spz(g, version=version))
    assert np.abs(r["means"] - g["means"]).max() <= 0.5 / 4096 + 1e-7
    assert np.abs(r["scales"] - g["scales"]).max() <= 1 / 32 + 1e-6
    assert np.abs(sigmoid(r["opacities"]) - sigmoid(g["opacities"])).max() <= 0.5 / 255 + 1e-6
    assert np.abs(r["sh0"] - g["sh0"]).max() <= 0.5 / (0.15 * 255) + 1e-6
    if krest:
        assert np.abs(r["shN"][:, :3] - g["shN"][:, :3]).max() <= 4.5 / 128 + 1e-6
        assert np.abs(r["shN"][:, 3:] - g["shN"][:, 3:]).max(initial=0) <= 8.5 / 128 + 1e-6
    assert qdot(r["quats"], g["quats"]).min() >= (1 - 1e-5 if version == 3 else 1 - 2e-3)


def test_spz_independent_reader_gsply(tmp_path):
    gsply = pytest.importorskip("gsply")
    g = gaussians(100, 15, seed=9)
    path = write_splats(tmp_path / "s.spz", g, "spz")
    d, ours = gsply.read_spz(str(path)), read_splats(path)
    np.testing.assert_allclose(np.asarray(d.means), ours["means"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(d.quats), ours["quats"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(d.scales), ours["scales"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(d.opacities).reshape(-1), ours["opacities"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(d.sh0).reshape(-1, 3), ours["sh0"][:, 0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(d.shN).reshape(100, 15, 3), ours["shN"], atol=1e-6)
    assert np.abs(np.asarray(d.means) - g["means"]).max() <= 0.5 / 4096 + 1e-6


def test_spz_large_scene_uses_fewer_fractional_bits():
    g = gaussians(50, 0, seed=4, extent=5000.0)
    raw = encode_spz(g)
    bits = gzip.decompress(raw)[13]
    assert bits < 12 and 5000 * 2**bits < 2**23
    r = decode_spz(raw)
    assert np.abs(r["means"] - g["means"]).max() <= 0.5 / 2**bits + 1e-3


def test_spz_malformed():
    good = gzip.decompress(encode_spz(gaussians(5, 3)))
    cases = {
        "not gzip": (b"hello world", "gzip"),
        "magic": (gzip.compress(b"XXXX" + good[4:]), "magic"),
        "version": (gzip.compress(good[:4] + struct.pack("<I", 4) + good[8:]), "version 4"),
        "truncated": (gzip.compress(good[:-5]), "body holds"),
        "extensions": (gzip.compress(good[:14] + b"\x02" + good[15:]), "extensions"),
        "short": (gzip.compress(good[:10]), "truncated"),
    }
    for name, (blob, msg) in cases.items():
        with pytest.raises(SceneFileError, match=rf"bad\.spz.*{msg}"):
            decode_spz(blob, "bad.spz")


# ---------------------------------------------------------------------------------------------- SOG
def _members(blob: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    from PIL import Image

    z = zipfile.ZipFile(io.BytesIO(blob))
    meta = json.loads(z.read("meta.json"))
    imgs = {n: np.asarray(Image.open(io.BytesIO(z.read(n))).convert("RGBA")) for n in z.namelist() if n != "meta.json"}
    for info in z.infolist():
        assert info.compress_type == zipfile.ZIP_STORED
    return meta, imgs


def test_sog_layout_two_splats():
    g = gaussians(2, 3, seed=5)
    g["quats"][0] = np.array([0.1, -0.8, 0.3, 0.2]) / np.linalg.norm([0.1, -0.8, 0.3, 0.2])
    meta, imgs = _members(encode_sog(g))
    assert meta["version"] == 2 and meta["count"] == 2
    assert set(imgs) == {"means_l.webp", "means_u.webp", "quats.webp", "scales.webp", "sh0.webp",
                         "shN_centroids.webp", "shN_labels.webp"}  # fmt: skip
    for name in ("means_l.webp", "quats.webp", "sh0.webp", "shN_labels.webp"):
        assert imgs[name].shape == (4, 4, 4)  # W = 4 ceil(sqrt(2)/4), H = 4 ceil(2/W/4)
    assert imgs["shN_centroids.webp"].shape == (1, 64 * 3, 4)
    assert meta["shN"]["bands"] == 1 and meta["shN"]["count"] == 2
    assert len(meta["scales"]["codebook"]) == 256 and len(meta["sh0"]["codebook"]) == 256
    order = sog_order(g["means"])
    for px, i in enumerate(order):  # pixel px holds splat order[px] (row-major, 4 wide)
        y, x = divmod(px, 4)
        lg = np.sign(g["means"][i]) * np.log1p(np.abs(g["means"][i]))
        lo, hi = np.array(meta["means"]["mins"]), np.array(meta["means"]["maxs"])
        code = imgs["means_l.webp"][y, x, :3].astype(int) | (imgs["means_u.webp"][y, x, :3].astype(int) << 8)
        np.testing.assert_array_equal(code, np.rint(65535 * (lg - lo) / np.where(hi > lo, hi - lo, 1)))
        q = g["quats"][i].astype(np.float64)
        big = int(np.argmax(np.abs(q)))
        q = q if q[big] >= 0 else -q
        assert imgs["quats.webp"][y, x, 3] == 252 + big
        rest = np.delete(q, big)
        np.testing.assert_array_equal(imgs["quats.webp"][y, x, :3], np.rint(255 * (rest * math.sqrt(2) * 0.5 + 0.5)))
        assert imgs["sh0.webp"][y, x, 3] == round(sigmoid(g["opacities"][i]) * 255)
        cb = np.array(meta["scales"]["codebook"])
        np.testing.assert_allclose(cb[imgs["scales.webp"][y, x, :3]], nearest_entry(g["scales"][i], cb), atol=1e-6)
        label = int(imgs["shN_labels.webp"][y, x, 0]) | int(imgs["shN_labels.webp"][y, x, 1]) << 8
        cbn = np.array(meta["shN"]["codebook"])
        for j in range(3):
            cpx = imgs["shN_centroids.webp"][label // 64, (label % 64) * 3 + j, :3]
            np.testing.assert_allclose(cbn[cpx], nearest_entry(g["shN"][i, j], cbn), atol=1e-6)


@pytest.mark.parametrize("krest", [0, 3, 15])
def test_sog_round_trip_within_quantization(krest):
    g = gaussians(150, krest, seed=6 + krest)
    blob = encode_sog(g)
    meta, _ = _members(blob)
    r = decode_sog(blob)
    o = sog_order(g["means"])
    g = {k: v[o] for k, v in g.items()}
    lo, hi = np.array(meta["means"]["mins"]), np.array(meta["means"]["maxs"])
    lg = np.sign(g["means"]) * np.log1p(np.abs(g["means"]))
    step = (hi - lo) / 65535.0
    assert np.all(np.abs(np.sign(r["means"]) * np.log1p(np.abs(r["means"])) - lg) <= 0.5 * step + 1e-6)
    assert qdot(r["quats"], g["quats"]).min() >= 1 - 1e-4
    assert np.abs(sigmoid(r["opacities"]) - sigmoid(g["opacities"])).max() <= 0.5 / 255 + 1e-6
    np.testing.assert_allclose(r["scales"], nearest_entry(g["scales"], meta["scales"]["codebook"]), atol=1e-6)
    np.testing.assert_allclose(r["sh0"], nearest_entry(g["sh0"], meta["sh0"]["codebook"]), atol=1e-6)
    assert np.abs(r["scales"] - g["scales"]).mean() < 0.02  # 256 codes over a range of 7
    if krest:  # N <= palette: one palette entry per splat, so only the codebook quantizes
        np.testing.assert_allclose(r["shN"], nearest_entry(g["shN"], meta["shN"]["codebook"]), atol=1e-6)
    else:
        assert "shN" not in meta and r["shN"].shape == (150, 0, 3)


def test_sog_palette_kmeans_when_more_splats_than_entries():
    g = gaussians(600, 8, seed=8)
    g["shN"][300:] = g["shN"][:300]  # every coefficient vector appears twice
    blob = encode_sog(g, sh_palette=300, kmeans_iters=15)
    meta, imgs = _members(blob)
    assert meta["shN"]["count"] == 300 and meta["shN"]["bands"] == 2
    assert imgs["shN_centroids.webp"].shape[:2] == (math.ceil(300 / 64), 64 * 8)
    r = decode_sog(blob)
    o = sog_order(g["means"])
    err = np.abs(r["shN"] - g["shN"][o])
    assert err.mean() < 0.5 * np.abs(g["shN"]).mean()  # the palette keeps most of the signal


def test_sog_independent_reader_gsply(tmp_path):
    gsply = pytest.importorskip("gsply")
    pytest.importorskip("imagecodecs", reason="gsply decodes SOG WebP images with imagecodecs")
    g = gaussians(120, 15, seed=10)
    path = write_splats(tmp_path / "s.sog", g, "sog")
    d, ours = gsply.sogread(str(path)), read_splats(path)
    np.testing.assert_allclose(np.asarray(d.means), ours["means"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(d.quats), ours["quats"], atol=1e-5)
    np.testing.assert_allclose(np.asarray(d.scales), ours["scales"], atol=1e-6)
    np.testing.assert_allclose(np.asarray(d.opacities).reshape(-1), ours["opacities"], atol=1e-4)
    np.testing.assert_allclose(np.asarray(d.sh0).reshape(-1, 3), ours["sh0"][:, 0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(d.shN).reshape(120, 15, 3), ours["shN"], atol=1e-6)


def test_sog_malformed():
    blob = encode_sog(gaussians(10, 3))
    z = zipfile.ZipFile(io.BytesIO(blob))

    def rebuild(drop=None, meta_edit=None):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as out:
            for n in z.namelist():
                if n == drop:
                    continue
                data = z.read(n)
                if n == "meta.json" and meta_edit:
                    m = json.loads(data)
                    meta_edit(m)
                    data = json.dumps(m).encode()
                out.writestr(n, data)
        return buf.getvalue()

    with pytest.raises(SceneFileError, match=r"b\.sog.*zip"):
        decode_sog(b"not a zip", "b.sog")
    with pytest.raises(SceneFileError, match=r"b\.sog.*quats\.webp"):
        decode_sog(rebuild(drop="quats.webp"), "b.sog")
    with pytest.raises(SceneFileError, match=r"b\.sog.*version 3"):
        decode_sog(rebuild(meta_edit=lambda m: m.update(version=3)), "b.sog")
    with pytest.raises(SceneFileError, match=r"b\.sog.*pixels for 100 splats"):
        decode_sog(rebuild(meta_edit=lambda m: m.update(count=100)), "b.sog")
    with pytest.raises(SceneFileError, match=r"b\.sog.*meta\.json"):
        decode_sog(rebuild(meta_edit=lambda m: m.pop("scales")), "b.sog")


# ---------------------------------------------------------------------------------------------- glTF
def test_glb_container_layout_and_pygltflib(tmp_path):
    g = gaussians(3, 8, seed=11)
    blob = encode_glb(g)
    magic, version, total = struct.unpack("<III", blob[:12])
    assert blob[:4] == b"glTF" and version == 2 and total == len(blob)
    jlen, jtype = struct.unpack("<II", blob[12:20])
    assert jtype == 0x4E4F534A and jlen % 4 == 0
    doc = json.loads(blob[20 : 20 + jlen])
    blen, btype = struct.unpack("<II", blob[20 + jlen : 28 + jlen])
    assert btype == 0x004E4942 and blen % 4 == 0 and 28 + jlen + blen == len(blob)
    assert doc["extensionsUsed"] == ["KHR_gaussian_splatting"]
    prim = doc["meshes"][0]["primitives"][0]
    assert prim["mode"] == 0
    assert prim["extensions"]["KHR_gaussian_splatting"]["kernel"] == "ellipse"
    assert prim["extensions"]["KHR_gaussian_splatting"]["colorSpace"] == "srgb_rec709_display"
    expected = ["POSITION", "KHR_gaussian_splatting:ROTATION", "KHR_gaussian_splatting:SCALE",
                "KHR_gaussian_splatting:OPACITY"] + glb_attribute_names(8) + ["COLOR_0"]  # fmt: skip
    assert list(prim["attributes"]) == expected
    assert glb_attribute_names(8)[1:4] == [f"KHR_gaussian_splatting:SH_DEGREE_1_COEF_{i}" for i in range(3)]
    assert len(glb_attribute_names(15)) == 16 and glb_attribute_names(15)[-1].endswith("SH_DEGREE_3_COEF_6")
    for v in doc["bufferViews"]:
        assert v["byteOffset"] % 4 == 0

    pygltflib = pytest.importorskip("pygltflib")
    path = tmp_path / "s.glb"
    path.write_bytes(blob)
    gl = pygltflib.GLTF2().load(str(path))
    binary = gl.binary_blob()
    p = gl.meshes[0].primitives[0]
    raw = json.loads(gl.to_json())["meshes"][0]["primitives"][0]["attributes"]  # names with ':' by key
    assert dict(p.extensions)["KHR_gaussian_splatting"]["kernel"] == "ellipse"

    def get(name):
        acc = gl.accessors[raw[name]]
        view = gl.bufferViews[acc.bufferView]
        w = {"SCALAR": 1, "VEC3": 3, "VEC4": 4}[acc.type]
        assert acc.componentType == pygltflib.FLOAT and acc.count == 3
        return np.frombuffer(binary, "<f4", count=acc.count * w, offset=view.byteOffset).reshape(acc.count, w)

    pos_acc = gl.accessors[p.attributes.POSITION]
    np.testing.assert_allclose(pos_acc.min, g["means"].min(0), rtol=1e-6)
    np.testing.assert_allclose(pos_acc.max, g["means"].max(0), rtol=1e-6)
    np.testing.assert_array_equal(get("POSITION"), g["means"])
    np.testing.assert_allclose(get("KHR_gaussian_splatting:SCALE"), np.exp(g["scales"]), rtol=1e-6)
    np.testing.assert_allclose(get("KHR_gaussian_splatting:ROTATION"), np.roll(g["quats"], -1, 1), atol=1e-6)
    np.testing.assert_allclose(get("KHR_gaussian_splatting:OPACITY")[:, 0], sigmoid(g["opacities"]), atol=1e-6)
    np.testing.assert_array_equal(get("KHR_gaussian_splatting:SH_DEGREE_0_COEF_0"), g["sh0"][:, 0])
    np.testing.assert_array_equal(get("KHR_gaussian_splatting:SH_DEGREE_2_COEF_4"), g["shN"][:, 7])
    color = get("COLOR_0")
    np.testing.assert_allclose(color[:, :3], 0.5 + SH_C0 * g["sh0"][:, 0], atol=1e-6)


@pytest.mark.parametrize("krest", [0, 3, 8, 15])
def test_glb_round_trip(krest):
    g = gaussians(40, krest, seed=12)
    r = decode_glb(encode_glb(g))
    np.testing.assert_array_equal(r["means"], g["means"])
    np.testing.assert_array_equal(r["sh0"], g["sh0"])
    np.testing.assert_array_equal(r["shN"], g["shN"])
    np.testing.assert_allclose(r["scales"], g["scales"], atol=1e-5)
    np.testing.assert_allclose(r["opacities"], g["opacities"], atol=1e-4)
    np.testing.assert_allclose(r["quats"], g["quats"], atol=1e-6)


def test_glb_malformed():
    blob = encode_glb(gaussians(4, 0))
    with pytest.raises(SceneFileError, match=r"b\.glb.*says"):
        decode_glb(blob[:-8], "b.glb")
    with pytest.raises(SceneFileError, match=r"b\.glb.*not a glTF"):
        decode_glb(b"GLTF" + blob[4:], "b.glb")
    bad = blob.replace(b'"KHR_gaussian_splatting:SCALE"', b'"KHR_gaussian_splatting:SCALX"')
    with pytest.raises(SceneFileError, match=r"b\.glb.*SCALE"):
        decode_glb(bad, "b.glb")


# ---------------------------------------------------------------------------------------------- dispatch
def test_write_read_every_format(tmp_path):
    g = gaussians(30, 3, seed=13)
    for fmt in FORMATS:
        path = write_splats(tmp_path / f"s.{fmt}", g, fmt)
        r = read_splats(path)
        assert r["means"].shape == (30, 3)
        assert set(r) == set(g)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"s.{f}" for f in FORMATS)  # no temporaries
    with pytest.raises(ValueError, match="fmt"):
        write_splats(tmp_path / "s.xyz", g, "xyz")
    with pytest.raises(SceneFileError, match="unknown splat format"):
        read_splats(tmp_path / "s.xyz")


def test_flatten_surfels():
    s = np.log(np.array([[0.2, 0.1, 1e-30], [1.0, 2.0, 0.5]], np.float32))
    s[0, 2] = -np.inf
    f = flatten_surfels(s)
    np.testing.assert_allclose(f[:, :2], s[:, :2])
    np.testing.assert_allclose(np.exp(f[0, 2]), 0.1 * 1e-3, rtol=1e-5)  # -inf becomes a thin, finite disc
    assert flatten_surfels(np.log([[1e-5, 1e-5, 1e-5]]))[0, 2] == np.float32(-13.8)  # floor
    np.testing.assert_allclose(np.exp(f[1, 2]), 1.0 * 1e-3, rtol=1e-5)
    assert np.all(np.isfinite(f))
