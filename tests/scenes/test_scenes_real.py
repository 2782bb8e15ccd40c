"""The real captures in ../shared/data (skipped where absent): lego (Blender), fox (instant-ngp),
bird (COLMAP + LLFF). Metadata only, plus one image each, to stay fast."""

from __future__ import annotations

import numpy as np
import torch
from conftest import shared_scene

from scenezip.scenes.cameras import project_points
from scenezip.scenes.loader import load_dataset
from scenezip.scenes.normalize import nearest_point_to_axes
from scenezip.scenes.summary import format_summary


def test_lego():
    ds = load_dataset(shared_scene("lego"), n_random_points=1000)
    assert ds.format == "blender" and len(ds) == 400
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 100, "val": 100, "test": 200}
    assert set(ds.cameras.widths.tolist()) == {400} and set(ds.cameras.heights.tolist()) == {400}
    assert ds.background == (1.0, 1.0, 1.0) and ds.points_source == "random"
    # Cameras look at the world origin from radius 4.03; normalized: origin stays the centre, radius 1.
    c2w = ds.cameras.camtoworlds.numpy().astype(np.float64)
    p, _ = nearest_point_to_axes(c2w[:, :3, 3], c2w[:, :3, 2])
    np.testing.assert_allclose(p, 0.0, atol=1e-3)
    np.testing.assert_allclose(np.linalg.norm(c2w[:, :3, 3], axis=1), 1.0, atol=1e-3)
    assert abs(ds.scale - 1 / 4.0311) < 1e-3
    # Objects live in about [-1.5, 1.5]^3 of world space.
    np.testing.assert_allclose(ds.denormalize_points(ds.bounds), [[-1.45] * 3, [1.45] * 3], atol=0.03)
    img = ds.image(int(ds.splits["test"][0]))
    assert img.shape == (400, 400, 3) and float(img[:5, :5].min()) > 0.99  # composited on white
    s = format_summary(ds)
    assert "train 100, val 100, test 200" in s and "400x400" in s and "400, source model PINHOLE" in s


def test_fox():
    ds = load_dataset(shared_scene("fox"), n_random_points=1000)
    assert ds.format == "nerfstudio" and len(ds) == 67
    from PIL import Image

    w, h = Image.open(ds.image_paths[0]).size
    assert (w, h) == (540, 960)
    assert set(ds.cameras.widths.tolist()) == {540} and set(ds.cameras.heights.tolist()) == {960}
    assert ds.cameras.source_model == "OPENCV" and ds.distortion is not None
    np.testing.assert_allclose(ds.distortion[0], [0.0578421, -0.0805099, -0.000980296, 0.00015575], rtol=1e-6)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 58, "val": 9, "test": 9}
    assert ds.background is None
    img = ds.image(0)
    assert img.shape == (960, 540, 3)
    s = format_summary(ds)
    assert "67, source model OPENCV (undistorted at load)" in s and "540x960" in s


def test_bird_points_project_into_images():
    from scenezip.scenes.colmap import read_images_binary, read_points3d_binary

    root = shared_scene("bird")
    ds = load_dataset(root)
    assert ds.format == "colmap" and len(ds) == 184 and ds.points_source == "sfm" and len(ds.points) == 6271
    assert set(ds.cameras.widths.tolist()) == {544} and set(ds.cameras.heights.tolist()) == {960}
    # Every observation stored in images.bin is reproduced by the loaded camera within a pixel or two.
    ids, _, _ = read_points3d_binary(root / "sparse/0/points3D.bin")
    order = np.argsort(ids)
    images = {im.name: im for im in read_images_binary(root / "sparse/0/images.bin")}
    pts = torch.tensor(ds.points)
    inside, total, errs = 0, 0, []
    for i, path in enumerate(ds.image_paths):
        im = images[path.name]
        pos = np.clip(np.searchsorted(ids, im.point3d_ids, sorter=order), 0, len(ids) - 1)
        keep = ids[order[pos]] == im.point3d_ids
        sel = torch.from_numpy(order[pos[keep]])
        uv, depth = project_points(pts[sel], ds.cameras.viewmats[i : i + 1], ds.cameras.Ks[i : i + 1])
        uv, depth = uv[0].numpy(), depth[0].numpy()
        ok = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < 544) & (uv[:, 1] >= 0) & (uv[:, 1] < 960)
        inside += int(ok.sum())
        total += len(ok)
        errs.append(np.linalg.norm(uv - im.xys[keep], axis=1))
    assert total > 10_000
    assert inside / total > 0.95
    assert np.median(np.concatenate(errs)) < 2.0
    s = format_summary(ds)
    assert "184, source model SIMPLE_PINHOLE" in s and "6271 (sfm)" in s and "544x960" in s


def test_bird_llff_agrees_with_colmap():
    root = shared_scene("bird")
    dc = load_dataset(root, normalize=False, n_random_points=0)
    dl = load_dataset(root, format="llff", normalize=False, n_random_points=0)
    assert dl.format == "llff" and len(dl) == len(dc)
    # Same images; LLFF stores one focal length, COLMAP camera 1's; poses are COLMAP's up to a
    # similarity (LLFF recentres), so the rotation between the two is the same for every camera.
    assert [p.name for p in dl.image_paths] == [p.name for p in dc.image_paths]
    np.testing.assert_allclose(dl.cameras.Ks[:, 0, 0].numpy(), float(dc.cameras.Ks[0, 0, 0]), rtol=1e-5)
    rc = dc.cameras.camtoworlds[:, :3, :3].double()
    rl = dl.cameras.camtoworlds[:, :3, :3].double()
    rel = rl @ rc.transpose(1, 2)  # the world rotation between the two, the same for every camera
    torch.testing.assert_close(rel, rel[:1].expand_as(rel), atol=1e-3, rtol=0)
