"""The 3DGS trainer on tiny in-memory scenes rendered from a known Gaussian set (torch backend, CPU)."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from scenezip.errors import ScenezipError
from scenezip.render.rasterization import rasterization
from scenezip.scenes.cameras import Cameras
from scenezip.scenes.dataset import Dataset
from scenezip.splatting.config import DensifyConfig, TrainConfig
from scenezip.splatting.gaussians import GaussianModel
from scenezip.splatting.trainer import checkpoint_paths, image_order, means_lr, scene_extent, train

W, H = 32, 24


def _look_at(eye: np.ndarray) -> np.ndarray:
    """World-to-camera (OpenCV axes) of a camera at ``eye`` looking at the origin, z up."""
    f = -eye / np.linalg.norm(eye)
    r = np.cross(f, [0.0, 0.0, 1.0])
    r /= np.linalg.norm(r)
    d = np.cross(f, r)  # y down
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = r, d, f, eye
    return np.linalg.inv(c2w)


def _scene(n_views: int = 8, n_gauss: int = 64, seed: int = 0) -> Dataset:
    """Views of a known Gaussian set; every 4th view is a test view; init points are noisy means."""
    g = torch.Generator().manual_seed(seed)
    means = (torch.rand(n_gauss, 3, generator=g) - 0.5) * 0.8
    quats = torch.randn(n_gauss, 4, generator=g)
    scales = torch.rand(n_gauss, 3, generator=g) * 0.08 + 0.04
    opac = torch.rand(n_gauss, generator=g) * 0.3 + 0.6
    rgb = torch.rand(n_gauss, 3, generator=g)
    ang = np.linspace(0, 2 * np.pi, n_views, endpoint=False)
    eyes = np.stack([2.5 * np.cos(ang), 2.5 * np.sin(ang), 0.8 + 0.3 * np.sin(3 * ang)], -1)
    viewmats = torch.from_numpy(np.stack([_look_at(e) for e in eyes])).float()
    K = torch.tensor([[40.0, 0.0, W / 2], [0.0, 40.0, H / 2], [0.0, 0.0, 1.0]])
    Ks = K.expand(n_views, 3, 3).clone()
    with torch.no_grad():
        imgs, _, _ = rasterization(means, quats, scales, opac, rgb, viewmats, Ks, W, H, backend="torch")
    cams = Cameras(viewmats, Ks, torch.full((n_views,), W), torch.full((n_views,), H))
    idx = np.arange(n_views)
    rng = np.random.default_rng(seed)
    pts = means.numpy() + rng.normal(scale=0.05, size=(n_gauss, 3)).astype(np.float32)
    ds = Dataset(
        format="memory",
        root=Path("memory"),
        image_paths=[Path(f"memory/{i}.png") for i in idx],
        cameras=cams,
        splits={"train": idx[idx % 4 != 0], "val": idx[idx % 4 == 0], "test": idx[idx % 4 == 0]},
        points=pts,
        point_colors=rng.integers(0, 256, size=(n_gauss, 3), dtype=np.uint8),
        points_source="random",
        bounds=np.array([[-0.5] * 3, [0.5] * 3], dtype=np.float32),
        normalization=np.eye(4),
    )
    for i in idx:  # images live in the dataset's cache: no files needed
        ds._cache[int(i)] = imgs[i].clamp(0, 1)
    return ds


def _config(out: Path, steps: int = 18, **kw) -> TrainConfig:
    densify = DensifyConfig(
        refine_start=3, refine_every=3, reset_every=12, refine_stop=16, sh_degree_every=8, schedule_scale=1.0,
        max_gaussians=300,
    )  # fmt: skip
    return TrainConfig(
        data=Path("memory"), out=out, steps=steps, sh_degree=1, densify=densify, backend="torch",
        progress=False, checkpoint_every=kw.pop("checkpoint_every", 0), seed=3, **kw,
    )  # fmt: skip


@pytest.fixture(scope="module")
def scene() -> Dataset:
    return _scene()


def test_loss_decreases_and_outputs_are_written(scene, tmp_path):
    losses: list[float] = []
    cfg = _config(tmp_path, steps=40)
    cfg.densify = DensifyConfig(enabled=False, reset_every=1000, sh_degree_every=10, schedule_scale=1.0)
    res = train(cfg, scene, on_step=lambda s, i: losses.append(i["loss"]))
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    m = json.loads(res.metrics_path.read_text())
    assert m["split"] == "test" and m["n_images"] == 2 and m["steps"] == 40
    assert math.isfinite(m["psnr"]) and m["psnr"] > 18.0 and 0.0 < m["ssim"] <= 1.0
    assert m["n_gaussians"] == res.n_gaussians and res.train_s > 0
    back = GaussianModel.load(res.model_path)
    assert len(back) == res.n_gaussians and back.sh_degree == 1
    assert res.checkpoint_path.name == "ckpt_00040.pt" and res.checkpoint_path.is_file()


def test_interrupt_then_resume_matches_uninterrupted_run(scene, tmp_path):
    counts: list[int] = []
    full = train(_config(tmp_path / "full"), scene, on_step=lambda s, i: counts.append(i["n_gaussians"]))
    assert len(set(counts[10:])) > 1, "densification must change the model after the interruption"
    assert max(counts) <= 300

    def interrupt_at_10(step, info):
        if step == 10:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C: the step finishes, a checkpoint is written

    cfg = _config(tmp_path / "cut", checkpoint_every=4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, scene, on_step=interrupt_at_10)
    assert [s for s, _ in checkpoint_paths(tmp_path / "cut")] == [4, 8, 10]
    cfg.resume = True
    resumed = train(cfg, scene)
    a, b = GaussianModel.load(full.model_path), GaussianModel.load(resumed.model_path)
    assert len(a) == len(b)
    for k in a.splats:
        torch.testing.assert_close(a.splats[k], b.splats[k], rtol=0, atol=0)
    assert resumed.metrics["psnr"] == pytest.approx(full.metrics["psnr"], abs=1e-9)
    assert [s for s, _ in checkpoint_paths(tmp_path / "cut")] == [12, 16, 18]  # keep_checkpoints=3


def test_resume_errors(scene, tmp_path):
    with pytest.raises(ScenezipError, match="holds no ckpt_XXXXX.pt"):
        train(_config(tmp_path, resume=True), scene)
    train(_config(tmp_path, steps=4, checkpoint_every=2), scene)
    with pytest.raises(ScenezipError, match=r"options \['ssim_lambda'\] differ"):
        train(_config(tmp_path, steps=4, resume=True, ssim_lambda=0.5), scene)
    (tmp_path / "ckpt_00099.pt").write_bytes(b"truncated")
    with pytest.raises(ScenezipError, match="ckpt_00099.pt: cannot read the checkpoint"):
        train(_config(tmp_path, steps=4, resume=True), scene)


def test_bad_options(scene, tmp_path):
    with pytest.raises(ScenezipError, match="steps must be >= 1"):
        train(_config(tmp_path, steps=0), scene)
    with pytest.raises(ScenezipError, match="background must be 3 values"):
        train(_config(tmp_path, background=(2.0, 0.0, 0.0)), scene)


def test_schedule_helpers():
    cfg = TrainConfig(data=Path("x"), steps=1000)
    assert means_lr(cfg, 0, 2.0) == pytest.approx(1.6e-4 * 2.0)
    assert means_lr(cfg, 1000, 2.0) == pytest.approx(1.6e-6 * 2.0)
    assert means_lr(cfg, 500, 1.0) == pytest.approx(math.sqrt(1.6e-4 * 1.6e-6))  # log-linear
    ids = np.array([1, 2, 3, 5, 6])
    first_pass = [image_order(0, s, ids) for s in range(1, 6)]
    second_pass = [image_order(0, s, ids) for s in range(6, 11)]
    assert sorted(first_pass) == sorted(second_pass) == ids.tolist() and first_pass != second_pass


def test_scene_extent():
    eyes = np.array([[1.0, 0, 0], [-1.0, 0, 0], [0, 3.0, 0]])
    vm = torch.from_numpy(np.stack([_look_at(e) for e in eyes])).float()
    cams = Cameras(vm, torch.eye(3).expand(3, 3, 3), torch.ones(3, dtype=torch.long), torch.ones(3, dtype=torch.long))
    centre = eyes.mean(0)
    expected = 1.1 * np.linalg.norm(eyes - centre, axis=1).max()
    assert scene_extent(cams) == pytest.approx(expected, rel=1e-5)
    assert scene_extent(cams[[0]]) == 1.0


def test_random_background_recomposites_rgba_captures(tmp_path):
    from scenezip.scenes.loader import load_dataset
    from scenezip.scenes.procedural import write_procedural_scene
    from scenezip.splatting.trainer import _load_alpha

    root = write_procedural_scene(tmp_path / "scene", n_train=3, n_val=1, n_test=1, width=16, height=16, seed=1)
    ds = load_dataset(root, n_random_points=200, background=(1.0, 1.0, 1.0))
    alpha = _load_alpha(ds, 0)
    assert alpha is not None and alpha.shape == (16, 16, 1)
    assert 0 < float(alpha.mean()) < 1  # object and background both in view
    empty = alpha[..., 0] == 0
    assert torch.all(ds.image(0)[empty] == 1.0)  # composited on white where alpha is 0
    res = train(_config(tmp_path / "run", steps=4, random_background=True), ds)
    assert math.isfinite(res.metrics["psnr"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["random_background"] is True
