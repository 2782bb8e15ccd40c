"""Broken captures end in one DatasetError naming the file and the problem; truncated or corrupted
COLMAP binaries never raise anything else and never allocate from a garbage count."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from scenezip.errors import DatasetError, ScenezipError
from scenezip.scenes import _fixtures as fx
from scenezip.scenes.colmap import read_cameras_binary, read_images_binary, read_points3d_binary
from scenezip.scenes.loader import load_dataset


def colmap_capture(tmp_path, binary=True, models=("PINHOLE", "OPENCV", "SIMPLE_RADIAL")):
    rig = fx.make_rig(n=6, models=list(models) * 2, distortion=0.01)
    fx.write_colmap(tmp_path, rig, fx.render_images(rig), binary=binary)
    return tmp_path / "sparse" / "0"


def test_unknown_folder_names_what_was_looked_for(tmp_path):
    (tmp_path / "stuff.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"no capture found; looked for transforms_train\.json.*poses_bounds\.npy"):
        load_dataset(tmp_path)
    with pytest.raises(DatasetError, match="no such file or folder"):
        load_dataset(tmp_path / "nope")


def test_bad_options_are_user_errors(tmp_path):
    with pytest.raises(ScenezipError, match="downscale must be an integer >= 1"):
        load_dataset(tmp_path, downscale=0)
    with pytest.raises(ScenezipError, match="test_every must be"):
        load_dataset(tmp_path, test_every=1)
    with pytest.raises(ScenezipError, match="format must be one of"):
        load_dataset(tmp_path, format="ply")


def test_unreadable_json(tmp_path):
    rig = fx.make_rig(models="PINHOLE")
    fx.write_nerfstudio(tmp_path, rig, fx.render_images(rig))
    (tmp_path / "transforms.json").write_text('{"frames": [')
    with pytest.raises(DatasetError, match=r"transforms\.json: invalid JSON"):
        load_dataset(tmp_path)
    (tmp_path / "transforms.json").write_text("[1, 2]")
    with pytest.raises(DatasetError, match=r"transforms\.json: expected a JSON object"):
        load_dataset(tmp_path)


def _edit_json(path, fn):
    meta = json.loads(path.read_text())
    fn(meta)
    path.write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda m: m["frames"][0].pop("transform_matrix"), "frame 0 has no 4x4 'transform_matrix'"),
        (lambda m: m["frames"][0].update(camera_model="OPENCV_FISHEYE"), "camera_model 'OPENCV_FISHEYE' is not supported"),
        (lambda m: m["frames"][0].update(k3=0.01), "distortion k3=0.01 is not supported"),
        (lambda m: [f.pop("fl_x") for f in m["frames"]], "no focal length"),
        (lambda m: m["frames"][0].update(file_path="images/gone.png"), r"gone\.png: image file is missing"),
        (lambda m: m.update(frames=[]), "'frames' must be a non-empty list"),
        (lambda m: m.update(test_filenames=["images/other.png"]), "'test_filenames' lists 'images/other.png'"),
    ],
)
def test_broken_nerfstudio(tmp_path, edit, message):
    rig = fx.make_rig(models="OPENCV", distortion=0.01)
    fx.write_nerfstudio(tmp_path, rig, fx.render_images(rig))
    _edit_json(tmp_path / "transforms.json", edit)
    with pytest.raises(DatasetError, match=message) as e:
        load_dataset(tmp_path, n_random_points=0)
    assert "transforms.json" in str(e.value) or "gone.png" in str(e.value)


def test_k3_zero_is_accepted(tmp_path):
    rig = fx.make_rig(models="OPENCV", distortion=0.01)
    fx.write_nerfstudio(tmp_path, rig, fx.render_images(rig), extra={"k3": 0.0, "k4": 0.0})
    assert len(load_dataset(tmp_path, n_random_points=0)) == 10


def test_broken_blender(tmp_path):
    rig = fx.make_rig(centered=True)
    rig.Ks[:] = rig.Ks[0]
    fx.write_blender(tmp_path, rig, fx.render_images(rig, rgba=True))
    _edit_json(tmp_path / "transforms_val.json", lambda m: m.pop("camera_angle_x"))
    with pytest.raises(DatasetError, match=r"transforms_val\.json: 'camera_angle_x' must be"):
        load_dataset(tmp_path)
    _edit_json(tmp_path / "transforms_val.json", lambda m: m.update(camera_angle_x=0.9))
    (tmp_path / "test" / "r_9.png").unlink()
    with pytest.raises(DatasetError, match=r"r_9: image file is missing \(listed in transforms_test\.json\)"):
        load_dataset(tmp_path)


def test_unknown_colmap_model(tmp_path):
    sp = colmap_capture(tmp_path, binary=False)
    text = (sp / "cameras.txt").read_text().replace(" PINHOLE ", " FANCY_CAM ", 1)
    (sp / "cameras.txt").write_text(text)
    with pytest.raises(DatasetError, match=r"cameras\.txt: unknown camera model 'FANCY_CAM'"):
        load_dataset(tmp_path)
    text = text.replace(" FANCY_CAM ", " FULL_OPENCV ", 1)
    (sp / "cameras.txt").write_text(text)
    with pytest.raises(DatasetError, match=r"cameras\.txt: camera 1 \(FULL_OPENCV\) needs 12 parameters"):
        load_dataset(tmp_path)
    fields = text.splitlines()
    first = fields[1].split()
    fields[1] = " ".join(first[:1] + ["FULL_OPENCV"] + first[2:4] + ["100", "100", "8", "6"] + ["0"] * 8)
    (sp / "cameras.txt").write_text("\n".join(fields) + "\n")
    with pytest.raises(DatasetError, match=r"cameras\.txt: camera 1 uses model FULL_OPENCV, which is not supported"):
        load_dataset(tmp_path)


def test_colmap_mismatches(tmp_path):
    sp = colmap_capture(tmp_path, binary=False)
    lines = (sp / "images.txt").read_text().splitlines()
    header = lines[1].split()
    lines[1] = " ".join(header[:8] + ["99"] + header[9:])
    (sp / "images.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"images\.txt: image 'img_\d+\.png' refers to camera 99"):
        load_dataset(tmp_path)
    colmap_capture(tmp_path, binary=False)
    (tmp_path / "images" / "img_004.png").unlink()
    with pytest.raises(DatasetError, match=r"img_004\.png: image file is missing \(listed in images\.txt\)"):
        load_dataset(tmp_path)


def test_colmap_image_size_disagrees_with_camera(tmp_path):
    colmap_capture(tmp_path)
    fx.save_png(tmp_path / "images" / "img_002.png", np.zeros((24, 32, 3), np.uint8))
    ds = load_dataset(tmp_path)
    with pytest.raises(DatasetError, match=r"img_002\.png: image is 32x24 but its camera expects 16x12"):
        ds.image(2)
    fx.save_png(tmp_path / "images" / "img_000.png", np.zeros((24, 32, 3), np.uint8))  # checked at load
    with pytest.raises(DatasetError, match=r"img_000\.png: image is 32x24 but its camera expects 16x12"):
        load_dataset(tmp_path)


def test_llff_broken(tmp_path):
    rig = fx.make_rig(centered=True)
    fx.write_llff(tmp_path, rig, fx.render_images(rig))
    (tmp_path / "images" / "img_009.png").unlink()
    with pytest.raises(DatasetError, match=r"poses_bounds\.npy: 10 poses but .*images holds 9 images"):
        load_dataset(tmp_path)
    np.save(tmp_path / "poses_bounds.npy", np.zeros((9, 15)))
    with pytest.raises(DatasetError, match=r"poses_bounds\.npy: expected a numeric \[N, 17\] array"):
        load_dataset(tmp_path)
    (tmp_path / "poses_bounds.npy").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match=r"poses_bounds\.npy: cannot read"):
        load_dataset(tmp_path)


READERS = {"cameras.bin": read_cameras_binary, "images.bin": read_images_binary, "points3D.bin": read_points3d_binary}


@pytest.mark.parametrize("name", sorted(READERS))
def test_truncated_colmap_binaries_raise_dataset_error(tmp_path, name):
    sp = colmap_capture(tmp_path)
    data = (sp / name).read_bytes()
    READERS[name](sp / name)  # the intact file parses
    offsets = sorted(set(np.linspace(0, len(data) - 1, 80).astype(int).tolist()) | set(range(0, 40)))
    for k in offsets:
        (sp / name).write_bytes(data[:k])
        with pytest.raises(DatasetError, match=name):
            READERS[name](sp / name)
    (sp / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=name):
        load_dataset(tmp_path)


@pytest.mark.parametrize("name", sorted(READERS))
def test_garbage_counts_are_checked_before_allocation(tmp_path, name):
    sp = colmap_capture(tmp_path)
    data = bytearray((sp / name).read_bytes())
    data[:8] = struct.pack("<Q", 1 << 60)
    (sp / name).write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"count 1152921504606846976 needs at least"):
        READERS[name](sp / name)


@pytest.mark.parametrize("name", sorted(READERS))
def test_corrupted_colmap_binaries_only_raise_dataset_error(tmp_path, name):
    sp = colmap_capture(tmp_path)
    data = (sp / name).read_bytes()
    rng = np.random.default_rng(0)
    for _ in range(150):
        buf = bytearray(data)
        for pos in rng.integers(0, len(buf), rng.integers(1, 4)):
            buf[pos] = int(rng.integers(0, 256))
        (sp / name).write_bytes(bytes(buf))
        try:
            load_dataset(tmp_path, n_random_points=10)
        except DatasetError as e:
            assert name in str(e) or "images" in str(e) or ".png" in str(e)


def test_trailing_bytes_rejected(tmp_path):
    sp = colmap_capture(tmp_path)
    (sp / "cameras.bin").write_bytes((sp / "cameras.bin").read_bytes() + b"\0\0")
    with pytest.raises(DatasetError, match=r"cameras\.bin: 2 unexpected trailing bytes"):
        load_dataset(tmp_path)
