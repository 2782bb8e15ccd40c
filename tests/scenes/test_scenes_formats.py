"""Every reader on generated captures: poses (a drawn marker lands where the loaded camera projects it),
intrinsics, splits, downscaling, COLMAP binary == text, format detection and the summary."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scenezip.scenes import _fixtures as fx
from scenezip.scenes.cameras import project_points
from scenezip.scenes.loader import detect_format, load_dataset
from scenezip.scenes.normalize import transform_points
from scenezip.scenes.summary import format_summary

COLMAP_MODELS = ["PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV"] * 2


def marker_pixels(ds) -> np.ndarray:
    """``[N, 2]`` (col, row) of the reddest pixel of every loaded image."""
    out = []
    for i in range(len(ds)):
        img = ds.image(i)
        score = img[..., 0] - img[..., 1]
        r, c = divmod(int(score.argmax()), img.shape[1])
        out.append((c, r))
    return np.asarray(out)


def projected_pixels(ds, world_point: np.ndarray) -> np.ndarray:
    """``[N, 2]`` integer pixel containing the projection of a world point through the loaded cameras."""
    p = torch.tensor(transform_points(world_point[None], ds.normalization), dtype=torch.float32)
    uv, depth = project_points(p, ds.cameras.viewmats, ds.cameras.Ks)
    assert bool((depth > 0).all())
    return np.floor(uv[:, 0].numpy()).astype(int)


def assert_cameras_match(ds, rig, downscale: int = 1) -> None:
    """Loaded camera centres (denormalized) and intrinsics equal the rig's."""
    centers = ds.denormalize_points(ds.cameras.centers.numpy())
    np.testing.assert_allclose(centers, rig.c2w[:, :3, 3], atol=1e-4)
    # Optical axes agree: world direction of camera +z.
    z_loaded = ds.cameras.camtoworlds[:, :3, 2].numpy()
    np.testing.assert_allclose(z_loaded, rig.c2w[:, :3, 2], atol=1e-5)
    np.testing.assert_allclose(ds.cameras.Ks.numpy(), rig.Ks / np.array([downscale, downscale, 1.0])[:, None], rtol=1e-5)


def make(kind: str, root, *, downscale: int = 1, **rig_kw):
    if kind == "blender":
        rig = fx.make_rig(centered=True, **rig_kw)
        rig.Ks[:] = rig.Ks[0]  # one camera_angle_x per file
        fx.write_blender(root, rig, fx.render_images(rig, rgba=True))
    elif kind == "nerfstudio":
        rig = fx.make_rig(models="OPENCV", distortion=1e-3, **rig_kw)
        fx.write_nerfstudio(root, rig, fx.render_images(rig))
    elif kind in ("colmap-bin", "colmap-txt"):
        rig = fx.make_rig(models=COLMAP_MODELS, distortion=1e-3, **rig_kw)
        fx.write_colmap(root, rig, fx.render_images(rig), binary=kind == "colmap-bin")
    else:
        rig = fx.make_rig(centered=True, **rig_kw)
        fx.write_llff(root, rig, fx.render_images(rig))
    return rig, load_dataset(root, downscale=downscale, n_random_points=500)


KINDS = ["blender", "nerfstudio", "colmap-bin", "colmap-txt", "llff"]


@pytest.mark.parametrize("kind", KINDS)
def test_marker_lands_on_projection(tmp_path, kind):
    rig, ds = make(kind, tmp_path)
    assert ds.format == kind.split("-")[0]
    assert len(ds) == 10
    assert_cameras_match(ds, rig)
    got, want = marker_pixels(ds), projected_pixels(ds, rig.marker)
    np.testing.assert_array_equal(got, want)
    # The marker is off-centre in most views, so a mirrored axis would move it.
    assert np.mean(np.abs(want - np.array([8, 6])).sum(1) >= 2) > 0.5


@pytest.mark.parametrize("kind", ["blender", "colmap-bin", "llff"])
def test_downscale_scales_intrinsics_and_sizes(tmp_path, kind):
    rig, ds = make(kind, tmp_path, downscale=2)
    assert ds.downscale == 2
    assert ds.cameras.widths.tolist() == [8] * 10 and ds.cameras.heights.tolist() == [6] * 10
    assert_cameras_match(ds, rig, downscale=2)
    assert ds.image(0).shape == (6, 8, 3)
    np.testing.assert_array_equal(marker_pixels(ds), projected_pixels(ds, rig.marker))


def test_downscale_floor_of_size(tmp_path):
    rig = fx.make_rig(centered=True)
    fx.write_llff(tmp_path, rig, fx.render_images(rig))
    ds = load_dataset(tmp_path, downscale=5, n_random_points=10)
    assert ds.cameras.widths.tolist() == [3] * 10 and ds.cameras.heights.tolist() == [2] * 10
    assert ds.image(3).shape == (2, 3, 3)
    np.testing.assert_allclose(ds.cameras.Ks[:, 0, 2].numpy(), 8 / 5, rtol=1e-6)


def test_blender_composites_on_background(tmp_path):
    rig = fx.make_rig(centered=True)
    fx.write_blender(tmp_path, rig, fx.render_images(rig, rgba=True))
    for bg in [(1.0, 1.0, 1.0), (0.0, 0.25, 0.5)]:
        ds = load_dataset(tmp_path, background=bg, n_random_points=10)
        assert ds.background == bg
        img = ds.image(0)
        red = img[..., 0] - img[..., 1] > 0.5
        assert int(red.sum()) == 1
        torch.testing.assert_close(img[~red], torch.tensor(bg).expand(int((~red).sum()), 3))


def test_blender_uses_own_split(tmp_path):
    rig = fx.make_rig(centered=True)
    splits = fx.write_blender(tmp_path, rig, fx.render_images(rig, rgba=True), split_sizes=(5, 3, 2))
    ds = load_dataset(tmp_path, n_random_points=10)
    for k in ("train", "val", "test"):
        assert ds.splits[k].tolist() == splits[k]
    assert ds.image_paths[0].name == "r_0.png"  # extension added to file_path "./train/r_0"


def test_split_every_nth_after_sorting(tmp_path):
    rig = fx.make_rig(n=17, models="OPENCV")
    fx.write_nerfstudio(tmp_path, rig, fx.render_images(rig))  # frames listed shuffled
    ds = load_dataset(tmp_path, n_random_points=10)
    names = [p.name for p in ds.image_paths]
    assert names == sorted(names)
    assert ds.splits["test"].tolist() == [0, 8, 16]
    assert ds.splits["val"].tolist() == [0, 8, 16]
    assert ds.splits["train"].tolist() == [i for i in range(17) if i % 8]
    ds4 = load_dataset(tmp_path, test_every=4, n_random_points=10)
    assert ds4.splits["test"].tolist() == [0, 4, 8, 12, 16]


def test_nerfstudio_filenames_split_and_global_intrinsics(tmp_path):
    rig = fx.make_rig(models="PINHOLE")
    rig.Ks[:] = rig.Ks[0]  # one global camera
    split = {"train": [1, 2, 3, 5, 6, 7, 9], "val": [4], "test": [0, 8]}
    fx.write_nerfstudio(tmp_path, rig, fx.render_images(rig), per_frame=False, split=split)
    ds = load_dataset(tmp_path / "transforms.json", n_random_points=10)
    for k in split:
        assert ds.splits[k].tolist() == split[k]
    assert ds.distortion is None and ds.cameras.source_model == "PINHOLE"
    np.testing.assert_array_equal(marker_pixels(ds), projected_pixels(ds, rig.marker))


def test_nerfstudio_val_defaults_to_test(tmp_path):
    rig = fx.make_rig(models="PINHOLE")
    fx.write_nerfstudio(tmp_path, rig, fx.render_images(rig), split={"train": list(range(1, 10)), "test": [0]})
    ds = load_dataset(tmp_path, n_random_points=10)
    assert ds.splits["val"].tolist() == [0] and ds.splits["test"].tolist() == [0]


def test_instant_ngp_aabb_becomes_bounds(tmp_path):
    rig = fx.make_rig(models="PINHOLE")
    fx.write_nerfstudio(tmp_path, rig, fx.render_images(rig), extra={"aabb_scale": 2, "scale": 0.5, "offset": [0.5, 0.3, 0.5]})
    ds = load_dataset(tmp_path, n_random_points=1000)
    # ngp cube [-0.5, 1.5]^3 -> world (ngp - offset) / scale.
    world = np.array([[-2.0, -1.6, -2.0], [2.0, 2.4, 2.0]])
    np.testing.assert_allclose(ds.denormalize_points(ds.bounds), world, atol=1e-5)
    assert ds.points_source == "random" and len(ds.points) == 1000
    assert np.all(ds.points >= ds.bounds[0] - 1e-6) and np.all(ds.points <= ds.bounds[1] + 1e-6)


def test_colmap_binary_and_text_agree(tmp_path):
    rig = fx.make_rig(models=COLMAP_MODELS, distortion=0.05)
    imgs = fx.render_images(rig)
    fx.write_colmap(tmp_path / "b", rig, imgs, binary=True)
    fx.write_colmap(tmp_path / "t", rig, imgs, binary=False)
    db, dt = load_dataset(tmp_path / "b"), load_dataset(tmp_path / "t")
    torch.testing.assert_close(db.cameras.viewmats, dt.cameras.viewmats)
    torch.testing.assert_close(db.cameras.Ks, dt.cameras.Ks)
    np.testing.assert_allclose(db.distortion, dt.distortion)
    np.testing.assert_allclose(db.points, dt.points)
    np.testing.assert_array_equal(db.point_colors, dt.point_colors)
    assert db.points_source == "sfm" and len(db.points) == len(rig.points)
    np.testing.assert_array_equal(db.point_colors, rig.colors)
    np.testing.assert_allclose(db.denormalize_points(db.points), rig.points, atol=1e-5)
    assert db.cameras.source_model == "OPENCV+PINHOLE+RADIAL+SIMPLE_PINHOLE+SIMPLE_RADIAL"
    # Distortion per model: only the terms the model has.
    np.testing.assert_allclose(db.distortion, rig.dist.astype(np.float32))
    assert np.all(db.distortion[[0, 1, 5, 6]] == 0) and np.all(db.distortion[[2, 7], 1:] == 0)


def test_colmap_observations_match_projection(tmp_path):
    """The keypoints stored in images.bin/.txt are where the loaded camera + distortion put the points."""
    from scenezip.scenes.colmap import read_images_binary, read_images_text
    from scenezip.scenes.images import distort_normalized

    rig = fx.make_rig(models=COLMAP_MODELS, distortion=0.05)
    fx.write_colmap(tmp_path / "b", rig, fx.render_images(rig), binary=True)
    fx.write_colmap(tmp_path / "t", rig, None, binary=False)
    imgs_b = {im.name: im for im in read_images_binary(tmp_path / "b/sparse/0/images.bin")}
    imgs_t = {im.name: im for im in read_images_text(tmp_path / "t/sparse/0/images.txt")}
    ds = load_dataset(tmp_path / "b", n_random_points=0)
    pts = torch.tensor(ds.points, dtype=torch.float32)
    for i, path in enumerate(ds.image_paths):
        im = imgs_b[path.name]
        assert im.point3d_ids[0] == -1
        if len(imgs_t[path.name].xys):
            np.testing.assert_allclose(imgs_t[path.name].xys, im.xys)
        cam = (pts @ ds.cameras.viewmats[i, :3, :3].T + ds.cameras.viewmats[i, :3, 3]).double()
        xd, yd = distort_normalized(cam[:, 0] / cam[:, 2], cam[:, 1] / cam[:, 2], torch.as_tensor(ds.distortion[i]))
        K = ds.cameras.Ks[i].double()
        uv = torch.stack([xd * K[0, 0] + K[0, 2], yd * K[1, 1] + K[1, 2]], -1).numpy()
        np.testing.assert_allclose(uv[im.point3d_ids[1:] - 1], im.xys[1:], atol=1e-3)


def test_colmap_sparse_without_zero_and_no_points(tmp_path):
    rig = fx.make_rig()
    fx.write_colmap(tmp_path, rig, fx.render_images(rig), binary=False, sparse="sparse")
    (tmp_path / "sparse" / "points3D.txt").unlink()
    ds = load_dataset(tmp_path, n_random_points=321, seed=3)
    assert ds.format == "colmap" and ds.points_source == "random" and ds.points.shape == (321, 3)
    ds2 = load_dataset(tmp_path, n_random_points=321, seed=3)
    np.testing.assert_array_equal(ds.points, ds2.points)
    assert np.all(ds.points >= ds.bounds[0]) and np.all(ds.points <= ds.bounds[1])


def test_llff_rescales_focal_for_smaller_images(tmp_path):
    rig = fx.make_rig(centered=True)
    fx.write_llff(tmp_path, rig, fx.render_images(rig), stored_scale=4.0)
    ds = load_dataset(tmp_path, n_random_points=10)
    assert ds.cameras.widths[0] == 16
    np.testing.assert_allclose(ds.cameras.Ks.numpy(), rig.Ks, rtol=1e-5)
    np.testing.assert_array_equal(marker_pixels(ds), projected_pixels(ds, rig.marker))


def test_colmap_wins_over_llff_and_detection(tmp_path):
    rig = fx.make_rig(centered=True)
    imgs = fx.render_images(rig)
    fx.write_llff(tmp_path, rig, imgs)
    assert detect_format(tmp_path) == ("llff", tmp_path)
    fx.write_colmap(tmp_path, rig, imgs)
    assert detect_format(tmp_path)[0] == "colmap"
    assert load_dataset(tmp_path, format="llff", n_random_points=10).format == "llff"
    ns = tmp_path / "ns"
    fx.write_nerfstudio(ns, rig, imgs)
    assert detect_format(ns) == ("nerfstudio", ns / "transforms.json")
    assert detect_format(ns / "transforms.json") == ("nerfstudio", ns / "transforms.json")


def test_normalize_false_keeps_world(tmp_path):
    rig = fx.make_rig(models="OPENCV", distortion=1e-3)
    fx.write_nerfstudio(tmp_path, rig, fx.render_images(rig))
    ds = load_dataset(tmp_path, normalize=False, n_random_points=10)
    np.testing.assert_array_equal(ds.normalization, np.eye(4))
    np.testing.assert_allclose(ds.cameras.camtoworlds.numpy(), rig.c2w, atol=1e-5)
    dn = load_dataset(tmp_path, n_random_points=10)
    assert dn.scale == pytest.approx(1 / 4.0, rel=1e-3)  # cameras at radius 4 around the target
    assert np.linalg.norm(dn.cameras.centers.numpy(), axis=1).max() == pytest.approx(1.0, abs=1e-5)


def test_summary_lists_everything(tmp_path):
    rig = fx.make_rig(models=COLMAP_MODELS, distortion=0.01)
    fx.write_colmap(tmp_path, rig, fx.render_images(rig))
    ds = load_dataset(tmp_path, downscale=2)
    s = format_summary(ds)
    for text in ("colmap", str(tmp_path), "10", "SIMPLE_RADIAL", "undistorted", "8x6", "downscaled by 2",
                 "train 8", "test 2", f"{len(rig.points)} (sfm)", "bounds", f"{ds.scale:.4g}", "none"):
        assert text in s, (text, s)
    rig2 = fx.make_rig(n=9, centered=True, width=20, height=10)
    fx.write_blender(tmp_path / "bl", rig2, fx.render_images(rig2, rgba=True), split_sizes=(5, 2, 2))
    s2 = format_summary(load_dataset(tmp_path / "bl", n_random_points=7))
    assert "20x10" in s2 and "7 (random)" in s2 and "(1, 1, 1)" in s2 and "blender" in s2


def test_forward_facing_centres_on_mean_camera(tmp_path):
    rig = fx.make_rig(forward=True, centered=True)
    fx.write_llff(tmp_path, rig, None)
    for i in range(len(rig)):
        fx.save_png(tmp_path / "images" / f"img_{i:03d}.png", np.zeros((12, 16, 3), np.uint8))
    ds = load_dataset(tmp_path, n_random_points=10)
    centre_world = -ds.normalization[:3, 3] / ds.scale
    np.testing.assert_allclose(centre_world, rig.c2w[:, :3, 3].mean(0), atol=1e-6)
    # Bounds come from the frusta between LLFF near and far: every rig point is inside.
    pts = transform_points(rig.points, ds.normalization)
    assert np.all(pts >= ds.bounds[0] - 1e-5) and np.all(pts <= ds.bounds[1] + 1e-5)
    assert math.isclose(np.linalg.norm(ds.cameras.centers.numpy(), axis=1).max(), 1.0, rel_tol=1e-5)
