"""Procedural scene: exact geometry against closed forms, Blender folder layout, determinism, shading."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from scenezip.errors import DatasetError, ScenezipError
from scenezip.scenes.procedural import (
    DEFAULT_FOV_X,
    Box,
    Ground,
    ProceduralScene,
    Sphere,
    camera_split,
    hemisphere_poses,
    load_scene_json,
    look_at_opengl,
    make_scene,
    render_views,
    sample_surface,
    surface_distance,
    trace_rays,
    write_procedural_scene,
)


def _pixel_dirs_cam(W: int, H: int, fov_x: float) -> np.ndarray:
    """``[H, W, 3]`` camera-space (OpenGL) directions through pixel centres, z = -1, float64."""
    f = 0.5 * W / math.tan(0.5 * fov_x)
    j, i = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    return np.stack([(j - W / 2) / f, -(i - H / 2) / f, -np.ones_like(j)], axis=-1)


def _backproject(depth: np.ndarray, c2w: np.ndarray, fov_x: float) -> np.ndarray:
    """World points ``[H, W, 3]`` from z-depth ``[H, W]`` and an OpenGL camera-to-world ``[4, 4]``."""
    H, W = depth.shape
    cam = _pixel_dirs_cam(W, H, fov_x) * depth[..., None]
    return cam @ c2w[:3, :3].T + c2w[:3, 3]


def _one_sphere(**kw) -> ProceduralScene:
    return ProceduralScene(spheres=(Sphere((0.0, 0.0, 0.0), 0.5, (0.9, 0.1, 0.1)),), ground=None, **kw)


# ------------------------------------------------------------------------------------------------
# Scene generation


def test_make_scene_deterministic_and_sensible():
    a, b, c = make_scene(0), make_scene(0), make_scene(1)
    assert a == b
    assert a != c
    assert len(a.spheres) == 3 and len(a.boxes) == 2 and a.ground is not None
    g = a.ground
    foot = [(np.array(s.center[:2]), s.radius) for s in a.spheres]
    foot += [(np.array(x.center[:2]), float(np.hypot(*x.half_extents[:2]))) for x in a.boxes]
    for k, (xy, r) in enumerate(foot):
        assert np.hypot(*xy) + r <= g.radius  # every object stands on the disk
        for xy2, r2 in foot[k + 1 :]:
            assert np.hypot(*(xy - xy2)) >= r + r2  # no two objects overlap
    for s in a.spheres:
        assert s.center[2] - s.radius >= g.height - 1e-12  # resting on or above the ground
        assert all(abs(v) <= 1.0 for v in s.center) and s.center[2] + s.radius <= 1.0
    for x in a.boxes:
        assert x.center[2] - x.half_extents[2] == pytest.approx(g.height)  # resting on the ground
        R = np.array(x.rotation)
        np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    colors = np.array([s.color for s in a.spheres] + [x.color for x in a.boxes])
    assert np.ptp(colors, axis=0).max() > 0.3  # colours differ between objects


def test_scene_dict_round_trip():
    s = make_scene(3)
    assert ProceduralScene.from_dict(json.loads(json.dumps(s.to_dict()))) == s


# ------------------------------------------------------------------------------------------------
# Geometry against closed forms


def test_sphere_depth_matches_closed_form():
    W, H, D, r = 33, 31, 3.0, 0.5
    scene = _one_sphere()
    eye = D * np.array([1.0, 2.0, 2.0]) / 3.0
    c2w = look_at_opengl(eye)
    out = render_views(scene, c2w[None], W, H, DEFAULT_FOV_X, samples_per_side=1)
    depth = out["depth"][0].astype(np.float64)
    # Closed form: a unit ray at angle theta to the axis through the centre hits at D cos - sqrt(r^2 - D^2 sin^2).
    dcam = _pixel_dirs_cam(W, H, DEFAULT_FOV_X)
    cos = 1.0 / np.linalg.norm(dcam, axis=-1)
    sin2 = 1.0 - cos**2
    disc = r * r - D * D * sin2
    clear = np.abs(disc) > 1e-3  # leave out pixels that graze the silhouette
    hit = disc > 0
    assert hit.sum() > 50 and (~hit).sum() > 50
    np.testing.assert_array_equal((depth > 0)[clear], hit[clear])
    expected = (D * cos - np.sqrt(np.maximum(disc, 0))) * cos
    np.testing.assert_allclose(depth[hit & clear], expected[hit & clear], atol=2e-5)
    assert depth[H // 2, W // 2] == pytest.approx(D - r, abs=1e-5)  # the centre pixel is the axis ray
    np.testing.assert_array_equal(out["alpha"][0] > 0, depth > 0)  # no supersampling: alpha is the hit


def test_rotated_box_face_depth():
    yaw = math.radians(30.0)
    R = ((math.cos(yaw), -math.sin(yaw), 0.0), (math.sin(yaw), math.cos(yaw), 0.0), (0.0, 0.0, 1.0))
    h = (0.3, 0.2, 0.25)
    scene = ProceduralScene(boxes=(Box((0.1, -0.2, 0.05), h, R, (0.2, 0.6, 0.9)),), ground=None)
    axis = np.array(R)[:, 0]  # the box's local +x in world space
    eye = np.array([0.1, -0.2, 0.05]) + 3.0 * axis
    c2w = look_at_opengl(eye, target=(0.1, -0.2, 0.05))
    out = render_views(scene, c2w[None], 21, 21, DEFAULT_FOV_X, samples_per_side=1)
    assert out["depth"][0, 10, 10] == pytest.approx(3.0 - h[0], abs=1e-5)
    np.testing.assert_allclose(out["normal"][0, 10, 10], axis, atol=1e-6)
    face = out["alpha"][0] == 1
    np.testing.assert_allclose(out["depth"][0][face], 3.0 - h[0], atol=1e-5)  # a face seen head-on is flat


def test_depth_backprojects_onto_surfaces_and_normals_face_camera():
    scene = make_scene(0)
    poses = hemisphere_poses(5)
    out = render_views(scene, poses, 40, 36, DEFAULT_FOV_X)
    for k in range(len(poses)):
        depth, normal, alpha = out["depth"][k], out["normal"][k], out["alpha"][k]
        fg = depth > 0
        assert fg.mean() > 0.2
        pts = _backproject(depth, poses[k], DEFAULT_FOV_X)
        assert surface_distance(scene, pts[fg].reshape(-1, 3)).max() < 2e-4
        # Moving the point off the surface by a little is detected (the check above can fail).
        assert surface_distance(scene, pts[fg].reshape(-1, 3) * 1.01).max() > 1e-3
        full = alpha == 1
        assert full.sum() > 100
        np.testing.assert_allclose(np.linalg.norm(normal[full], axis=-1), 1.0, atol=1e-5)
        to_cam = poses[k][:3, 3] - pts[full]
        assert ((normal[full] * to_cam).sum(-1) > 0).all()
        assert (depth[alpha == 0] == 0).all() and (normal[alpha == 0] == 0).all()
        assert (out["rgb"][k][alpha == 0] == 0).all()


def test_surface_distance_known_points():
    yaw = math.radians(45.0)
    R = ((math.cos(yaw), -math.sin(yaw), 0.0), (math.sin(yaw), math.cos(yaw), 0.0), (0.0, 0.0, 1.0))
    scene = ProceduralScene(
        spheres=(Sphere((0.5, 0.0, 0.0), 0.2, (1, 0, 0)),),
        boxes=(Box((-0.5, 0.0, 0.0), (0.1, 0.2, 0.3), R, (0, 1, 0)),),
        ground=Ground(height=-0.3, radius=1.0),
    )
    pts = np.array(
        [
            [0.5, 0.0, 0.0],  # sphere centre: r away
            [0.5, 0.0, 0.2],  # sphere top
            [-0.5, 0.0, 0.3],  # box top
            [-0.5, 0.0, 0.0],  # box centre: smallest half extent away
            [0.0, 0.9, 0.1],  # above the disk: height above the plane
            [2.0, 0.0, -0.3],  # in the plane, beyond the rim: distance to the rim
        ]
    )
    np.testing.assert_allclose(surface_distance(scene, pts), [0.2, 0.0, 0.0, 0.1, 0.4, 1.0], atol=1e-12)


# ------------------------------------------------------------------------------------------------
# Shading


def test_specular_makes_shading_view_dependent():
    scene = _one_sphere(light_dir=(0.0, 0.0, 1.0))
    p = np.array([0.0, 0.0, 0.5])  # top of the sphere, normal (0, 0, 1), lit head-on
    eyes = np.stack([p + 3.0 * np.array([0.0, 0.0, 1.0]), p + 3.0 * np.array([math.sin(1.0), 0.0, math.cos(1.0)])])
    for spec, differs in ((0.35, True), (0.0, False)):
        out = trace_rays(replace(scene, specular=spec, texture_contrast=0.0), eyes, p - eyes)
        assert out["hit"].all() and (out["primitive"] == 0).all()
        np.testing.assert_allclose(out["points"], np.stack([p, p]), atol=1e-5)  # the same surface point
        gap = np.abs(out["rgb"][0] - out["rgb"][1]).max()
        assert (gap > 0.2) if differs else (gap < 1e-5)
    # Whole views change too: the highlight is the only difference.
    c2w = look_at_opengl(np.array([0.0, 0.0, 3.0]), up=(0.0, 1.0, 0.0))[None]
    on = render_views(scene, c2w, 25, 25, DEFAULT_FOV_X)["rgb"]
    off = render_views(replace(scene, specular=0.0), c2w, 25, 25, DEFAULT_FOV_X)["rgb"]
    assert np.abs(on - off).max() > 0.2 and np.abs(on - off).mean() < 0.05


def test_ground_normal_faces_the_ray_from_either_side():
    scene = ProceduralScene(ground=Ground(height=-0.25, radius=1.0))
    o = np.array([[0.1, 0.2, 2.0], [0.1, 0.2, -2.0]])
    out = trace_rays(scene, o, np.array([[0.0, 0.3, -1.0], [0.0, 0.3, 1.0]]))
    assert out["hit"].all()
    np.testing.assert_allclose(out["normal"], [[0, 0, 1], [0, 0, -1]])
    np.testing.assert_allclose(out["points"][:, 2], -0.25, atol=1e-6)
    miss = trace_rays(scene, o[:1], np.array([[1.0, 0.0, -0.1]]))  # passes beyond the rim
    assert not miss["hit"].any() and np.isinf(miss["t"]).all() and miss["primitive"][0] == -1


def test_shadow_darkens_the_ground_under_a_sphere():
    scene = ProceduralScene(
        spheres=(Sphere((0.0, 0.0, 0.3), 0.2, (0.5, 0.5, 0.5)),),
        ground=Ground(height=-0.25, radius=1.0, color_a=(0.8, 0.8, 0.8), color_b=(0.8, 0.8, 0.8)),
    )
    L = np.array(scene.light_dir) / np.linalg.norm(scene.light_dir)
    under = np.array([0.0, 0.0, 0.3]) - L * (0.55 / L[2])  # where the light ray through the centre meets z = -0.25
    away = np.array([-0.5, -0.6, -0.25])
    target = np.stack([under, away])
    eye = np.array([0.0, -2.0, 3.0])
    for shadows in (True, False):
        out = trace_rays(replace(scene, shadows=shadows), np.stack([eye, eye]), target - eye)
        assert (out["primitive"] == 1).all()
        dark = out["rgb"][1].mean() - out["rgb"][0].mean()
        assert (dark > 0.3) if shadows else (abs(dark) < 1e-2)


def test_adaptive_antialiasing_matches_full_supersampling():
    scene = make_scene(0)
    poses = hemisphere_poses(3)
    full = render_views(scene, poses, 32, 32, DEFAULT_FOV_X, antialias="full")
    fast = render_views(scene, poses, 32, 32, DEFAULT_FOV_X, antialias="adaptive")
    one = render_views(scene, poses, 32, 32, DEFAULT_FOV_X, samples_per_side=1)
    assert ((full["alpha"] > 0) & (full["alpha"] < 1)).sum() > 50  # silhouettes are antialiased
    assert set(np.unique(one["alpha"])) <= {0.0, 1.0}
    np.testing.assert_allclose(fast["alpha"], full["alpha"], atol=1e-6)
    premul = lambda o: o["rgb"] * o["alpha"][..., None]  # noqa: E731
    assert np.abs(premul(fast) - premul(full)).mean() < 2e-3
    assert np.abs(premul(one) - premul(full)).mean() > 5 * np.abs(premul(fast) - premul(full)).mean()
    for k in ("depth", "normal"):  # geometry is the pixel-centre ray in every mode
        np.testing.assert_array_equal(fast[k], one[k])


# ------------------------------------------------------------------------------------------------
# Surface samples


def test_sample_surface_lies_on_surfaces_and_is_area_uniform():
    scene = ProceduralScene(
        spheres=(Sphere((-0.5, 0.0, 0.0), 0.2, (1, 0, 0)), Sphere((0.5, 0.0, 0.0), 0.4, (0, 1, 0))), ground=None
    )
    pts, nrm = sample_surface(scene, 20000, seed=0)
    assert pts.shape == (20000, 3) and nrm.shape == (20000, 3) and pts.dtype == np.float32
    assert surface_distance(scene, pts).max() < 1e-6
    big = pts[:, 0] > 0
    assert abs(big.mean() - 0.8) < 0.02  # areas 0.16 : 0.64
    centres = np.where(big[:, None], [0.5, 0.0, 0.0], [-0.5, 0.0, 0.0])
    radii = np.where(big, 0.4, 0.2)[:, None]
    np.testing.assert_allclose(nrm, (pts - centres) / radii, atol=1e-5)
    for centre, r, sel in ((-0.5, 0.2, ~big), (0.5, 0.4, big)):  # Archimedes: z is uniform on a sphere
        hist = np.histogram(pts[sel, 2] / r, bins=8, range=(-1, 1))[0] / sel.sum()
        assert np.abs(hist - 1 / 8).max() < 0.012
    disk, dn = sample_surface(ProceduralScene(ground=Ground(radius=1.0)), 20000, seed=0)
    assert (dn == [0, 0, 1]).all() and np.abs(disk[:, 2] - Ground().height).max() < 1e-6
    assert abs((np.hypot(disk[:, 0], disk[:, 1]) < 0.5).mean() - 0.25) < 0.012  # area-uniform on the disk
    yaw = 0.3
    R = ((math.cos(yaw), -math.sin(yaw), 0.0), (math.sin(yaw), math.cos(yaw), 0.0), (0.0, 0.0, 1.0))
    h = np.array([0.1, 0.2, 0.3])
    box = ProceduralScene(boxes=(Box((0.1, 0.0, 0.2), tuple(h), R, (1, 1, 1)),), ground=None)
    bp, bn = sample_surface(box, 20000, seed=0)
    local_n = bn @ np.array(R)  # face normals in box axes
    face = np.argmax(np.abs(local_n), axis=1)
    assert np.abs(np.bincount(face, minlength=3) / len(face) - np.array([0.48, 0.24, 0.16]) / 0.88).max() < 0.012
    local = (bp - np.array([0.1, 0.0, 0.2])) @ np.array(R)
    hist = np.histogram(local[face == 0, 1] / h[1], bins=8, range=(-1, 1))[0] / (face == 0).sum()
    assert np.abs(hist - 1 / 8).max() < 0.015  # uniform across a face
    a, _ = sample_surface(scene, 100, seed=1)
    b, _ = sample_surface(scene, 100, seed=1)
    c, _ = sample_surface(scene, 100, seed=2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_sample_surface_skips_covered_faces():
    scene = make_scene(0)
    pts, nrm = sample_surface(scene, 30000, seed=0)
    assert pts.shape == (30000, 3)
    assert surface_distance(scene, pts).max() < 1e-5
    np.testing.assert_allclose(np.linalg.norm(nrm, axis=1), 1.0, atol=1e-6)
    g = scene.ground
    on_ground = np.abs(pts[:, 2] - g.height) < 1e-6
    assert on_ground.sum() > 5000 and (nrm[on_ground] == [0, 0, 1]).all()
    for x in scene.boxes:
        local = (pts - np.array(x.center)) @ np.array(x.rotation)
        inside_foot = (np.abs(local[:, :2]) < np.array(x.half_extents[:2]) - 1e-3).all(axis=1)
        assert not (inside_foot & on_ground).any()  # neither the ground under a box nor its bottom face
        top = inside_foot & (np.abs(local[:, 2] - x.half_extents[2]) < 1e-5)
        assert top.sum() > 20  # top faces are sampled


# ------------------------------------------------------------------------------------------------
# Cameras and the written folder


def test_cameras_on_hemisphere_and_splits_interleave():
    poses = hemisphere_poses(36)
    eyes = poses[:, :3, 3]
    np.testing.assert_allclose(np.linalg.norm(eyes, axis=1), 3.5, atol=1e-9)
    assert (eyes[:, 2] > 0.5).all()
    R = poses[:, :3, :3]
    np.testing.assert_allclose(R @ R.transpose(0, 2, 1), np.broadcast_to(np.eye(3), R.shape), atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(R), 1.0, atol=1e-12)
    np.testing.assert_allclose(-R[:, :, 2], -eyes / 3.5, atol=1e-12)  # -z (view axis) points at the origin
    assert (R[:, 2, 1] > 0).all()  # camera up has a positive world-z component: no camera is upside down
    sp = camera_split(24, 4, 8)
    allidx = np.concatenate([sp["train"], sp["val"], sp["test"]])
    np.testing.assert_array_equal(np.sort(allidx), np.arange(36))
    assert len(sp["train"]) == 24 and len(sp["val"]) == 4 and len(sp["test"]) == 8
    assert np.diff(sp["test"]).min() >= 3  # test views are spread over the spiral, not bunched


def test_written_folder_has_blender_layout(tmp_path: Path):
    W, H = 24, 20
    out = write_procedural_scene(tmp_path / "scene", n_train=5, n_val=2, n_test=3, width=W, height=H, seed=0)
    assert out == tmp_path / "scene"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]  # no temporary folder left behind
    counts = {"train": 5, "val": 2, "test": 3}
    eyes = {}
    for split, n in counts.items():
        meta = json.loads((out / f"transforms_{split}.json").read_text())
        assert meta["camera_angle_x"] == pytest.approx(DEFAULT_FOV_X)
        assert len(meta["frames"]) == n
        for k, fr in enumerate(meta["frames"]):
            assert fr["file_path"] == f"./{split}/r_{k}"
            M = np.array(fr["transform_matrix"])
            assert M.shape == (4, 4)
            np.testing.assert_allclose(M[3], [0, 0, 0, 1])
            img = Image.open(out / f"{fr['file_path']}.png")
            assert img.mode == "RGBA" and img.size == (W, H)
            a = np.asarray(img)[..., 3]
            depth = np.load(out / fr["depth_file_path"])
            normal = np.load(out / fr["normal_file_path"])
            assert depth.shape == (H, W) and depth.dtype == np.float32
            assert normal.shape == (H, W, 3) and normal.dtype == np.float32
            assert (a[depth == 0] < 255).all() and (a[depth > 0] > 0).all()
            assert a.min() == 0 and a.max() == 255
        eyes[split] = np.array([np.array(fr["transform_matrix"])[:3, 3] for fr in meta["frames"]])
    dist = np.linalg.norm(eyes["test"][:, None] - eyes["train"][None], axis=-1)
    assert dist.min() > 0.1  # test views are novel
    desc = json.loads((out / "scene.json").read_text())
    assert desc["format"] == "scenezip-procedural" and desc["render"]["width"] == W
    assert load_scene_json(out) == make_scene(0)


def test_written_png_of_a_red_sphere(tmp_path: Path):
    scene = _one_sphere(specular=0.0)
    out = write_procedural_scene(tmp_path, n_train=1, n_val=0, n_test=0, width=33, height=33, scene=scene)
    rgba = np.asarray(Image.open(out / "train" / "r_0.png")).astype(np.int64)
    r, g, b, a = rgba[16, 16]
    assert a == 255 and r > 120 and r > 3 * g and r > 3 * b  # the centre pixel sees the red sphere
    assert (rgba[0, :, 3] == 0).all() and (rgba[:, 0, 3] == 0).all()  # the border is background
    assert (rgba[rgba[..., 3] == 0][:, :3] == 0).all()
    covered = (rgba[..., 3] > 0).mean()
    f = 0.5 * 33 / math.tan(0.5 * DEFAULT_FOV_X)
    expected = math.pi * (f * math.tan(math.asin(0.5 / 3.5))) ** 2 / 33**2  # projected disk of the sphere
    assert abs(covered - expected) < 0.03


def test_write_is_deterministic(tmp_path: Path):
    kw = dict(n_train=2, n_val=1, n_test=1, width=16, height=16)
    a = write_procedural_scene(tmp_path / "a", seed=0, **kw)
    b = write_procedural_scene(tmp_path / "b", seed=0, **kw)
    c = write_procedural_scene(tmp_path / "c", seed=1, **kw)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 1 + 3 + 4 * 3  # scene.json, 3 transforms, png + depth + normal per view
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert (a / "train" / "r_0.png").read_bytes() != (c / "train" / "r_0.png").read_bytes()
    assert (a / "scene.json").read_bytes() != (c / "scene.json").read_bytes()


# ------------------------------------------------------------------------------------------------
# Errors


def test_bad_inputs_raise(tmp_path: Path):
    scene = make_scene(0)
    with pytest.raises(ValueError, match="c2w_opengl"):
        render_views(scene, np.eye(4), 8, 8, DEFAULT_FOV_X)
    with pytest.raises(ValueError, match="fov_x"):
        render_views(scene, np.eye(4)[None], 8, 8, 4.0)
    with pytest.raises(ValueError, match="antialias"):
        render_views(scene, np.eye(4)[None], 8, 8, 1.0, antialias="none")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dirs"):
        trace_rays(scene, np.zeros((2, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="n_train"):
        camera_split(0, 1, 1)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(ScenezipError, match="not empty"):
        write_procedural_scene(busy, n_train=1, n_val=0, n_test=0, width=8, height=8)
    with pytest.raises(ScenezipError, match="no procedural scene.json"):
        write_procedural_scene(busy, n_train=1, n_val=0, n_test=0, width=8, height=8, overwrite=True)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"]
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "something-else"}')
    with pytest.raises(DatasetError, match="bad.json"):
        load_scene_json(bad)
    with pytest.raises(DatasetError, match="no such file"):
        load_scene_json(tmp_path / "missing")


def test_overwrite_replaces_a_procedural_folder(tmp_path: Path):
    out = write_procedural_scene(tmp_path / "s", n_train=1, n_val=0, n_test=0, width=8, height=8, seed=0)
    write_procedural_scene(out, n_train=2, n_val=0, n_test=0, width=8, height=8, seed=1, overwrite=True)
    assert load_scene_json(out) == make_scene(1)
    assert len(json.loads((out / "transforms_train.json").read_text())["frames"]) == 2
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        f"r_{k}{ext}" for k in range(2) for ext in (".png", "_depth.npy", "_normal.npy")
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]  # nothing old or temporary left beside it


def test_read_ground_truth_in_the_normalized_frame(tmp_path):
    from scenezip.scenes.loader import load_dataset
    from scenezip.scenes.procedural import read_ground_truth

    data = write_procedural_scene(tmp_path / "d", n_train=2, n_val=1, n_test=2, width=20, height=20, seed=0)
    ds = load_dataset(data, n_random_points=10, seed=0)
    depth, normals, mask = read_ground_truth(ds, ds.indices("test"))
    assert depth.shape == (2, 20, 20) and normals.shape == (2, 20, 20, 3) and mask.dtype == bool
    assert mask.any() and (depth[mask] > 0).all()
    raw = np.load(Path(ds.image_paths[int(ds.indices("test")[0])]).with_name("r_0_depth.npy"))
    assert np.allclose(depth[0], raw * ds.scale)  # lengths follow the capture's normalization
    assert np.allclose(np.linalg.norm(normals[mask], axis=-1), 1.0, atol=1e-4)  # a rotation keeps unit normals
