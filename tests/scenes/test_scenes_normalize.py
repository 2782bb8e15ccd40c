"""Scene normalization: the focus point, layout detection, invertibility, bounds rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scenezip.scenes import _fixtures as fx
from scenezip.scenes.cameras import project_points
from scenezip.scenes.normalize import (
    camera_bounds,
    nearest_point_to_axes,
    robust_bounds,
    scene_layout,
    similarity_from_cameras,
    transform_bounds,
    transform_c2w,
    transform_points,
)


def test_nearest_point_to_axes_finds_common_target():
    rig = fx.make_rig(n=12, target=(1.0, -2.0, 0.5))
    p, eig = nearest_point_to_axes(rig.c2w[:, :3, 3], rig.c2w[:, :3, 2])
    np.testing.assert_allclose(p, [1.0, -2.0, 0.5], atol=1e-9)
    assert eig > 0.1


def test_layout_object_vs_forward():
    obj = fx.make_rig(n=10, target=(0.3, 0.2, -0.1))
    kind, centre = scene_layout(obj.c2w)
    assert kind == "object"
    np.testing.assert_allclose(centre, [0.3, 0.2, -0.1], atol=1e-9)
    fwd = fx.make_rig(n=10, forward=True)
    kind, centre = scene_layout(fwd.c2w)
    assert kind == "forward"
    np.testing.assert_allclose(centre, fwd.c2w[:, :3, 3].mean(0))


def test_similarity_is_invertible_and_keeps_projections():
    rig = fx.make_rig(n=10, radius=7.0)
    T, kind = similarity_from_cameras(rig.c2w)
    assert kind == "object"
    c2w_n = transform_c2w(rig.c2w, T)
    # Farthest camera at distance 1 from the centre (the origin of normalized space), rotations kept.
    assert np.linalg.norm(c2w_n[:, :3, 3], axis=1).max() == pytest.approx(1.0)
    np.testing.assert_allclose(c2w_n[:, :3, :3], rig.c2w[:, :3, :3], atol=1e-12)
    pts_n = transform_points(rig.points, T)
    back = (pts_n - T[:3, 3]) / T[0, 0]
    np.testing.assert_allclose(back, rig.points, atol=1e-12)
    # Same pixels before and after.
    Ks = torch.tensor(rig.Ks, dtype=torch.float64)
    uv_w, d_w = project_points(torch.tensor(rig.points), torch.tensor(np.linalg.inv(rig.c2w)), Ks)
    uv_n, d_n = project_points(torch.tensor(pts_n), torch.tensor(np.linalg.inv(c2w_n)), Ks)
    torch.testing.assert_close(uv_w, uv_n)
    torch.testing.assert_close(d_n, d_w * T[0, 0])


def test_dataset_denormalize_round_trip(tmp_path):
    from scenezip.scenes.loader import load_dataset

    rig = fx.make_rig(models="PINHOLE", target=(5.0, 1.0, -3.0), radius=9.0)
    fx.write_colmap(tmp_path, rig, fx.render_images(rig, "pattern"))
    ds = load_dataset(tmp_path)
    np.testing.assert_allclose(ds.denormalize_points(ds.points), rig.points, atol=1e-4)
    assert ds.scale == pytest.approx(1 / 9.0, rel=1e-6)
    np.testing.assert_allclose(ds.normalization[:3, 3], -np.array([5.0, 1.0, -3.0]) / 9.0, atol=1e-9)


def test_transform_bounds_of_rotation_contains_corners():
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    out = transform_bounds(np.array([[0.0, 0, 0], [1, 2, 3]]), T)
    np.testing.assert_allclose(out, [[-2, 0, 0], [0, 1, 3]])


def test_robust_bounds_ignores_outliers():
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(-1, 1, (2000, 3)), [[100.0, 100, 100], [-50, -50, -50]]])
    b = robust_bounds(pts)
    assert np.all(b[0] > -1.3) and np.all(b[1] < 1.3) and np.all(b[0] < -1.0) and np.all(b[1] > 1.0)


def test_object_camera_bounds_match_blender_rule():
    # NeRF-Synthetic-like rig: radius 4.03, 40-degree FOV -> half-size about 1.47 around the target.
    rig = fx.make_rig(n=20, width=800, height=800, focal=1111.1, radius=4.0311, centered=True, target=(0.0, 0.0, 0.0))
    b = camera_bounds(rig.c2w, rig.Ks, np.full(20, 800), np.full(20, 800), kind="object")
    np.testing.assert_allclose(b, [[-1.451] * 3, [1.451] * 3], atol=0.01)
