"""Geometry tools: surfels on the procedural scene's true surfaces reproduce its ground-truth depth and
normals and mesh back to its surface; error metrics, Chamfer, mesh sampling and PLY writing."""

from __future__ import annotations

import sys

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from types import SimpleNamespace

from scenezip.cli_mesh import colorize_depth, colorize_normals, render_depth_normal_image, write_geometry_renders
from scenezip.errors import ScenezipError
from scenezip.scenes.loader import load_dataset
from scenezip.scenes.procedural import load_scene_json, make_scene, sample_surface, write_procedural_scene
from scenezip.splatting.gaussians import PARAM_NAMES, GaussianModel
from scenezip.splatting.geometry import (
    chamfer_distance,
    depth_error,
    geometry_errors,
    import_open3d,
    nearest_distances,
    normal_angle_error,
    render_depth_normals,
    sample_mesh_points,
    tsdf_mesh,
    write_mesh_ply,
)
from scenezip.splatting.surfels import FLAT_SCALE, SurfelModel, quats_from_normals

N_SURFELS = 800


@pytest.fixture(scope="module")
def flat_scene(tmp_path_factory):
    """A 32x32 capture of two boxes on the ground disk (only flat faces, so true normals are exact),
    surfels on its true surfaces (normalized space) and the ground truth of every view."""
    out = tmp_path_factory.mktemp("flat")
    scene = make_scene(0, n_spheres=0, n_boxes=2)
    write_procedural_scene(out, n_train=6, n_val=1, n_test=1, width=32, height=32, scene=scene)
    ds = load_dataset(out)
    pts, normals = sample_surface(load_scene_json(out), N_SURFELS, seed=1)
    T = ds.normalization
    means = torch.from_numpy((pts @ T[:3, :3].T + T[:3, 3]).astype(np.float32))
    sigma = np.sqrt(4.0 / N_SURFELS) * ds.scale  # about the sample spacing (surface area ~ 4 world units^2)
    scales = torch.log(torch.tensor([sigma, sigma, FLAT_SCALE], dtype=torch.float32)).expand(N_SURFELS, 3)
    model = SurfelModel(means, quats_from_normals(torch.from_numpy(normals)), scales, torch.full((N_SURFELS,), 4.0),
                        torch.zeros(N_SURFELS, 1, 3), torch.zeros(N_SURFELS, 0, 3))  # fmt: skip
    gt_depth, gt_normal, gt_alpha = [], [], []
    for p in ds.image_paths:
        gt_depth.append(np.load(p.with_name(p.stem + "_depth.npy")) * ds.scale)
        gt_normal.append(np.load(p.with_name(p.stem + "_normal.npy")))
        gt_alpha.append(iio.imread(p)[..., 3] / 255.0)
    gt = {"depth": np.stack(gt_depth), "normal": np.stack(gt_normal), "alpha": np.stack(gt_alpha)}
    surface = sample_surface(load_scene_json(out), 20000, seed=2)[0] @ T[:3, :3].T + T[:3, 3]
    return ds, model, gt, surface


def _face_interiors(gt, k: int = 2) -> np.ndarray:
    """Pixels whose (2k+1)^2 neighbourhood is opaque and lies on one flat face (no edge within k pixels)."""
    n = torch.from_numpy(gt["normal"]).permute(0, 3, 1, 2)
    ok = torch.from_numpy((gt["depth"] > 0) & (gt["alpha"] > 0.99))
    keep = ok.clone()
    for dy in range(-k, k + 1):
        for dx in range(-k, k + 1):
            keep &= ((n * torch.roll(n, (dy, dx), (2, 3))).sum(1) > 0.999) & torch.roll(ok, (dy, dx), (1, 2))
    return keep.numpy()


def test_surfels_on_true_surfaces_render_true_depth_and_normals(flat_scene):
    ds, model, gt, _ = flat_scene
    mask = _face_interiors(gt)
    assert mask.sum() > 200
    exact = render_depth_normals(model, ds.cameras, surfel_depth="intersection", backend="torch")
    assert exact["depth"].shape == (len(ds), 32, 32) and exact["normals"].shape == (len(ds), 32, 32, 3)
    assert normal_angle_error(exact["normals"], gt["normal"], mask) < 2.0
    assert depth_error(exact["depth"], gt["depth"], mask)["rel"] < 0.01
    # gsplat's centre depth: the nearest surfel's centre wins, biased forward on grazing surfaces
    centre = render_depth_normals(model, ds.cameras[[0, 1, 2, 3]], backend="torch")
    assert depth_error(centre["depth"], gt["depth"][:4], mask[:4])["rel"] < 0.03
    # a wrong answer fails: normals with their axes swapped, depths of the next camera
    swapped = exact["normals"][..., [2, 0, 1]]
    assert normal_angle_error(swapped, gt["normal"], mask) > 30.0
    assert depth_error(exact["depth"].roll(1, 0), gt["depth"], mask)["rel"] > 0.03


def test_gaussians_render_shortest_axis_normals(flat_scene):
    ds, model, gt, _ = flat_scene
    params = {k: model.splats[k].detach().clone() for k in PARAM_NAMES}
    params["scales"][:, 2] = params["scales"][:, 0] - 3.0  # flat 3D Gaussians along the surfels
    g = GaussianModel(*(params[k] for k in PARAM_NAMES))
    out = render_depth_normals(g, ds.cameras[[0, 1]], backend="torch")
    mask = _face_interiors(gt)[:2]
    gt2 = {k: v[:2] for k, v in gt.items()}
    assert normal_angle_error(out["normals"], gt2["normal"], mask) < 3.0
    assert depth_error(out["depth"], gt2["depth"], mask)["rel"] < 0.03
    with pytest.raises(ValueError, match="median"):
        render_depth_normals(g, ds.cameras[[0]], depth="median")


def test_depth_and_normal_images(flat_scene):
    ds, model, _, _ = flat_scene
    depth_img = render_depth_normal_image(model, ds.cameras[[0]], "depth", backend="torch")
    normal_img = render_depth_normal_image(model, ds.cameras[[0]], "normal", backend="torch")
    assert depth_img.shape == normal_img.shape == (32, 32, 3) and depth_img.dtype == np.uint8
    assert (depth_img[0, 0] == 0).all() and len(np.unique(depth_img.reshape(-1, 3), axis=0)) > 10
    d = np.array([[1.0, 2.0], [3.0, 0.0]])
    img = colorize_depth(d, d > 0, lo=1.0, hi=3.0)
    assert img[0, 0].tolist() == [68, 1, 84] and img[1, 0].tolist() == [253, 231, 37] and (img[1, 1] == 0).all()
    n = np.zeros((1, 2, 3))
    n[0, 0] = [0.0, 0.0, 1.0]
    assert colorize_normals(n, np.array([[True, False]])).tolist() == [[[128, 128, 255], [0, 0, 0]]]


def test_geometry_errors_and_geometry_render_files(flat_scene, tmp_path):
    ds, model, gt, _ = flat_scene
    mask = _face_interiors(gt)[:2]
    e = geometry_errors(model, ds.cameras[[0, 1]], gt["depth"][:2], gt["normal"][:2], mask, backend="torch",
                        surfel_depth="intersection")  # fmt: skip
    assert e["normal_deg"] < 2.0 and e["depth_rel"] < 0.01 and e["n_pixels"] == int(mask.sum())
    wrong = geometry_errors(model, ds.cameras[[1, 0]], gt["depth"][:2], gt["normal"][:2], mask, backend="torch")
    assert wrong["depth_rel"] > 0.03
    paths = write_geometry_renders(SimpleNamespace(model=model), ds, [0, 1], "normal", tmp_path / "n",
                                   backend="torch", progress=False)  # fmt: skip
    assert [p.name for p in paths] == [ds.image_paths[0].stem + ".png", ds.image_paths[1].stem + ".png"]
    img = iio.imread(paths[1])
    assert img.shape == (32, 32, 3) and np.array_equal(img, render_depth_normal_image(model, ds.cameras[[1]], "normal",
                                                                                      backend="torch"))  # fmt: skip
    assert not list((tmp_path / "n").glob("*.tmp.png"))
    with pytest.raises(ScenezipError, match="mode"):
        write_geometry_renders(SimpleNamespace(model=model), ds, [0], "rgb", tmp_path / "x", progress=False)
    with pytest.raises(ScenezipError, match="ngp scenes"):
        write_geometry_renders(SimpleNamespace(model=torch.nn.Linear(1, 1), method="ngp"), ds, [0], "depth",
                               tmp_path / "x", progress=False)  # fmt: skip


def test_tsdf_mesh_of_true_surfels_lies_on_the_true_surface(flat_scene, tmp_path):
    pytest.importorskip("open3d", reason='open3d is optional (pip install -e ".[mesh]")')
    ds, model, _, surface = flat_scene
    vertices, triangles = tsdf_mesh(model, ds.cameras[[0, 1, 2, 3, 4, 5]], voxel_size=0.008, depth_trunc=3.0, backend="torch",
                                    surfel_depth="intersection")  # fmt: skip
    assert len(triangles) > 1000 and vertices.dtype == np.float32 and triangles.dtype == np.int32
    points = sample_mesh_points(vertices, triangles, 20000, seed=0)
    near = np.median(nearest_distances(points, surface))
    assert near < 0.006, near  # under a voxel
    assert chamfer_distance(points, surface) < 0.015
    assert chamfer_distance(points + np.array([0.0, 0.0, 0.05], np.float32), surface) > 0.03
    path = write_mesh_ply(tmp_path / "m.ply", vertices, triangles)
    from plyfile import PlyData

    ply = PlyData.read(str(path))
    assert len(ply["vertex"]) == len(vertices) and len(ply["face"]) == len(triangles)
    assert not list(tmp_path.glob("*.tmp"))


def test_missing_open3d_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "open3d", None)
    with pytest.raises(ScenezipError, match=r'pip install -e "\.\[mesh\]"'):
        import_open3d()


def test_metrics_on_known_values():
    gt = np.array([[1.0, 2.0], [4.0, 5.0]])
    pred = gt + np.array([[0.1, -0.2], [0.0, 9.0]])
    mask = np.array([[True, True], [True, False]])
    err = depth_error(pred, gt, mask)
    assert err["abs"] == pytest.approx(0.1) and err["rel"] == pytest.approx((0.1 + 0.1 + 0.0) / 3) and err["n"] == 3
    with pytest.raises(ValueError, match="mask selects no pixels"):
        depth_error(pred, gt, np.zeros((2, 2), bool))
    with pytest.raises(ValueError, match="gt must be > 0"):
        depth_error(pred, gt * 0, mask)
    n_gt = np.tile([0.0, 0.0, 1.0], (2, 1))
    n_pred = np.array([[0.0, 1.0, 1.0], [0.0, 0.0, 3.0]])  # 45 and 0 degrees (lengths do not matter)
    assert normal_angle_error(n_pred, n_gt, np.array([True, True])) == pytest.approx(22.5)
    with pytest.raises(ValueError, match=r"\[\.\.\., 3\]"):
        normal_angle_error(n_pred[:, :2], n_gt[:, :2], np.array([True, True]))


def test_chamfer_and_mesh_sampling():
    rng = np.random.default_rng(0)
    a = rng.uniform(size=(500, 3))
    assert chamfer_distance(a, a) == 0.0
    plane = a * np.array([1.0, 1.0, 0.0])
    assert chamfer_distance(plane, plane + np.array([0.0, 0.0, 0.1])) == pytest.approx(0.1)
    b = np.zeros((1, 3))
    assert chamfer_distance(a, b) == pytest.approx(0.5 * (np.linalg.norm(a, axis=1).mean() + np.linalg.norm(a, axis=1).min()))
    square_v = np.array([[0, 0, 0], [2, 0, 0], [2, 1, 0], [0, 1, 0]], np.float32)
    square_t = np.array([[0, 1, 2], [0, 2, 3]])
    pts = sample_mesh_points(square_v, square_t, 4000, seed=1)
    assert pts.shape == (4000, 3) and np.all(pts[:, 2] == 0)
    assert np.all((pts[:, 0] >= 0) & (pts[:, 0] <= 2) & (pts[:, 1] >= 0) & (pts[:, 1] <= 1))
    assert np.allclose(pts[:, :2].mean(0), [1.0, 0.5], atol=0.05)
    with pytest.raises(ValueError, match="triangles index"):
        sample_mesh_points(square_v, np.array([[0, 1, 7]]), 10)
