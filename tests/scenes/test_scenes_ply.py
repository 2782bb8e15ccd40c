"""INRIA 3DGS PLY: exact property order read by plyfile, channel-major f_rest, import of degree 0..3 from
other tools' layouts, malformed files -> SceneFileError naming the file."""

from __future__ import annotations

import numpy as np
import pytest
from plyfile import PlyData, PlyElement

from scenezip.errors import SceneFileError
from scenezip.scenes.ply import ply_property_names, read_ply, write_ply


def gaussians(n: int, krest: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(n, 4))
    return {
        "means": rng.normal(size=(n, 3)).astype(np.float32),
        "quats": (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32),
        "scales": rng.uniform(-6, 0, size=(n, 3)).astype(np.float32),
        "opacities": rng.normal(size=n).astype(np.float32),
        "sh0": rng.normal(size=(n, 1, 3)).astype(np.float32),
        "shN": rng.normal(size=(n, krest, 3)).astype(np.float32) * 0.3,
    }


@pytest.mark.parametrize("krest", [0, 3, 8, 15])
def test_plyfile_reads_exact_property_order_and_values(tmp_path, krest):
    g = gaussians(7, krest)
    path = write_ply(tmp_path / "s.ply", g)
    ply = PlyData.read(str(path))
    assert ply.text is False and ply.byte_order == "<"
    assert [e.name for e in ply.elements] == ["vertex"]
    v = ply["vertex"]
    names = [p.name for p in v.properties]
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(3 * krest)]
    expected += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert names == expected == ply_property_names(krest)
    assert all(p.val_dtype in ("f4", "float32") for p in v.properties)
    d = v.data
    np.testing.assert_array_equal(np.stack([d["x"], d["y"], d["z"]], 1), g["means"])
    np.testing.assert_array_equal(d["nx"], 0)
    np.testing.assert_array_equal(d["opacity"], g["opacities"])
    np.testing.assert_array_equal(np.stack([d[f"rot_{i}"] for i in range(4)], 1), g["quats"])  # w x y z
    np.testing.assert_array_equal(np.stack([d[f"scale_{i}"] for i in range(3)], 1), g["scales"])
    for c in range(3):  # channel-major: f_rest_{c (K-1) + k} is band k+1 of channel c
        np.testing.assert_array_equal(d[f"f_dc_{c}"], g["sh0"][:, 0, c])
        for k in range(krest):
            np.testing.assert_array_equal(d[f"f_rest_{c * krest + k}"], g["shN"][:, k, c])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.ply"]  # no temporary file left


@pytest.mark.parametrize("krest", [0, 3, 8, 15])
def test_round_trip_is_exact(tmp_path, krest):
    g = gaussians(11, krest, seed=krest)
    back = read_ply(write_ply(tmp_path / "s.ply", g))
    assert back["shN"].shape == (11, krest, 3)
    for k in g:
        np.testing.assert_array_equal(back[k], g[k])


def _foreign_ply(path, g, text=False, extra=True, shuffle=True):
    """A PLY as other tools write it: extra properties (normals, colours, ids), another order, maybe ASCII."""
    n, krest = g["means"].shape[0], g["shN"].shape[1]
    cols = {"x": g["means"][:, 0], "y": g["means"][:, 1], "z": g["means"][:, 2], "opacity": g["opacities"]}
    for c in range(3):
        cols[f"f_dc_{c}"] = g["sh0"][:, 0, c]
        for k in range(krest):
            cols[f"f_rest_{c * krest + k}"] = g["shN"][:, k, c]
    for i in range(3):
        cols[f"scale_{i}"] = g["scales"][:, i]
    for i in range(4):
        cols[f"rot_{i}"] = g["quats"][:, i]
    names = list(cols)
    if shuffle:
        names = names[::-1]
    dtype = [(k, "<f4") for k in names]
    if extra:
        dtype += [("red", "u1"), ("segment_id", "<i4")]
    arr = np.zeros(n, dtype=dtype)
    for k in names:
        arr[k] = cols[k]
    PlyData([PlyElement.describe(arr, "vertex")], text=text).write(str(path))


@pytest.mark.parametrize("krest", [0, 3, 8, 15])
@pytest.mark.parametrize("text", [False, True])
def test_import_other_tools_layouts(tmp_path, krest, text):
    g = gaussians(9, krest, seed=3)
    _foreign_ply(tmp_path / "f.ply", g, text=text)
    back = read_ply(tmp_path / "f.ply")
    for k in g:
        np.testing.assert_allclose(back[k], g[k], rtol=1e-6, atol=1e-6)


def test_independent_reader_gsply_agrees(tmp_path):
    gsply = pytest.importorskip("gsply")
    g = gaussians(20, 15, seed=5)
    path = write_ply(tmp_path / "s.ply", g)
    d = gsply.plyread(str(path))
    np.testing.assert_array_equal(np.asarray(d.means), g["means"])
    np.testing.assert_array_equal(np.asarray(d.quats), g["quats"])
    np.testing.assert_array_equal(np.asarray(d.scales), g["scales"])
    np.testing.assert_array_equal(np.asarray(d.opacities).reshape(-1), g["opacities"])
    np.testing.assert_array_equal(np.asarray(d.sh0).reshape(-1, 3), g["sh0"][:, 0])
    np.testing.assert_array_equal(np.asarray(d.shN).reshape(20, 15, 3), g["shN"])


def test_missing_property_names_file_and_property(tmp_path):
    arr = np.zeros(4, dtype=[(k, "<f4") for k in ply_property_names(0) if k != "rot_3"])
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "m.ply"))
    with pytest.raises(SceneFileError, match=r"m\.ply.*rot_3"):
        read_ply(tmp_path / "m.ply")


def test_bad_rest_count(tmp_path):
    arr = np.zeros(3, dtype=[(k, "<f4") for k in ply_property_names(0) + [f"f_rest_{i}" for i in range(12)]])
    PlyData([PlyElement.describe(arr, "vertex")]).write(str(tmp_path / "b.ply"))
    with pytest.raises(SceneFileError, match=r"b\.ply.*12 f_rest"):
        read_ply(tmp_path / "b.ply")


def test_truncated_and_lying_counts(tmp_path):
    path = write_ply(tmp_path / "t.ply", gaussians(50, 3))
    blob = path.read_bytes()
    (tmp_path / "cut.ply").write_bytes(blob[:-10])
    with pytest.raises(SceneFileError, match=r"cut\.ply.*truncated"):
        read_ply(tmp_path / "cut.ply")
    # a header that claims a billion vertices must be refused before anything is allocated
    (tmp_path / "big.ply").write_bytes(blob.replace(b"element vertex 50", b"element vertex 1000000000", 1))
    with pytest.raises(SceneFileError, match=r"big\.ply.*1000000000"):
        read_ply(tmp_path / "big.ply")
    (tmp_path / "ascii.ply").write_text("ply\nformat ascii 1.0\nelement vertex 100000\n"
                                        + "".join(f"property float {p}\n" for p in ply_property_names(0))
                                        + "end_header\n1 2 3\n")
    with pytest.raises(SceneFileError, match=r"ascii\.ply.*truncated"):
        read_ply(tmp_path / "ascii.ply")


def test_not_a_ply_and_missing_file(tmp_path):
    (tmp_path / "x.ply").write_bytes(b"\x89PNG....")
    with pytest.raises(SceneFileError, match=r"x\.ply.*not a PLY"):
        read_ply(tmp_path / "x.ply")
    (tmp_path / "h.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 3\n")
    with pytest.raises(SceneFileError, match=r"h\.ply.*end_header"):
        read_ply(tmp_path / "h.ply")
    (tmp_path / "f.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement face 0\n"
                                     b"property list uchar int vertex_indices\nend_header\n")
    with pytest.raises(SceneFileError, match=r"f\.ply.*no 'vertex'"):
        read_ply(tmp_path / "f.ply")
    with pytest.raises(SceneFileError, match=r"nope\.ply"):
        read_ply(tmp_path / "nope.ply")


def test_write_checks_shapes(tmp_path):
    g = gaussians(3, 3)
    g["shN"] = g["shN"][:, :2]
    with pytest.raises(ValueError, match="shN"):
        write_ply(tmp_path / "s.ply", g)
    assert not (tmp_path / "s.ply").exists()
