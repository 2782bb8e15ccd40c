"""c3dgs training (C3DGSRecipe in the shared loop, recipe joint): mask pruning, the R-VQ switch, resumption,
and the file written after training; recipe distill (the 3dgs loop, then the conversion); on a tiny in-memory
scene rendered from known Gaussians (torch, CPU)."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from scenezip.render.rasterization import rasterization
from scenezip.scenes.cameras import Cameras
from scenezip.scenes.dataset import Dataset
from scenezip.scenes.scz import decode_streams, read_scz, write_scz
from scenezip.splatting.c3dgs import METHOD, C3DGSModel, c3dgs_from_streams
from scenezip.errors import ScenezipError
from scenezip.splatting.compress import SH_STAGE_DIR, sh_stage_config
from scenezip.splatting.config import C3DGSConfig, DensifyConfig, DistillConfig, TrainConfig
from scenezip.splatting.gaussians import GaussianModel
from scenezip.splatting.trainer import checkpoint_paths, train

W, H = 24, 16


def _look_at(eye: np.ndarray) -> np.ndarray:
    f = -eye / np.linalg.norm(eye)
    r = np.cross(f, [0.0, 0.0, 1.0])
    r /= np.linalg.norm(r)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = r, np.cross(f, r), f, eye
    return np.linalg.inv(c2w)


@pytest.fixture(scope="module")
def scene() -> Dataset:
    """6 views (every 3rd a test view) of 48 known Gaussians; init points are their noisy means."""
    g = torch.Generator().manual_seed(0)
    n, n_views = 48, 6
    means = (torch.rand(n, 3, generator=g) - 0.5) * 0.8
    quats, scales = torch.randn(n, 4, generator=g), torch.rand(n, 3, generator=g) * 0.08 + 0.05
    opac, rgb = torch.rand(n, generator=g) * 0.3 + 0.6, torch.rand(n, 3, generator=g)
    ang = np.linspace(0, 2 * np.pi, n_views, endpoint=False)
    eyes = np.stack([2.5 * np.cos(ang), 2.5 * np.sin(ang), 0.6 + 0.3 * np.sin(3 * ang)], -1)
    viewmats = torch.from_numpy(np.stack([_look_at(e) for e in eyes])).float()
    Ks = torch.tensor([[30.0, 0.0, W / 2], [0.0, 30.0, H / 2], [0.0, 0.0, 1.0]]).expand(n_views, 3, 3).clone()
    with torch.no_grad():
        imgs, _, _ = rasterization(means, quats, scales, opac, rgb, viewmats, Ks, W, H, backend="torch")
    idx = np.arange(n_views)
    rng = np.random.default_rng(0)
    ds = Dataset(
        format="memory", root=Path("memory"), image_paths=[Path(f"memory/{i}.png") for i in idx],
        cameras=Cameras(viewmats, Ks, torch.full((n_views,), W), torch.full((n_views,), H)),
        splits={"train": idx[idx % 3 != 0], "val": idx[idx % 3 == 0], "test": idx[idx % 3 == 0]},
        points=means.numpy() + rng.normal(scale=0.03, size=(n, 3)).astype(np.float32),
        point_colors=rng.integers(0, 256, size=(n, 3), dtype=np.uint8), points_source="random",
        bounds=np.array([[-0.5] * 3, [0.5] * 3], dtype=np.float32), normalization=np.eye(4),
    )  # fmt: skip
    for i in idx:
        ds._cache[int(i)] = imgs[i].clamp(0, 1)
    return ds


def _config(out: Path, steps: int = 16, **kw) -> C3DGSConfig:
    """Steps are literal (schedule_scale 1): refinement at 3, 6, 9; masks pruned every 4 steps after 10."""
    densify = DensifyConfig(refine_start=2, refine_every=3, reset_every=1000, refine_stop=10, schedule_scale=1.0,
                            max_gaussians=120)  # fmt: skip
    base = dict(data=Path("memory"), out=out, steps=steps, densify=densify, backend="torch", progress=False,
                checkpoint_every=0, seed=1, color_levels=4, color_log2_hashmap_size=8, color_view_sh_degree=1,
                rvq_stages=2, rvq_codebook_size=8, rvq_start=12, mask_prune_every=4, hash_qat_start=8,
                lr_masks=0.5, color_warmup=2, recipe="joint")  # fmt: skip
    base.update(kw)
    return C3DGSConfig(**base)


@pytest.fixture(scope="module")
def full_run(scene, tmp_path_factory):
    """The reference run (default mask_lambda, hash codec on), a checkpoint after every step."""
    out = tmp_path_factory.mktemp("c3dgs_train") / "full"
    return train(_config(out, checkpoint_every=1, keep_checkpoints=0), scene)


def test_mask_loss_removes_gaussians(scene, tmp_path, full_run):
    strong = train(_config(tmp_path / "strong", mask_lambda=0.5), scene)
    assert strong.n_gaussians < full_run.n_gaussians, (strong.n_gaussians, full_run.n_gaussians)
    assert strong.n_gaussians < 0.8 * len(scene.points)
    # the masked ones are gone from the model itself, not only hidden
    assert len(strong.model) == strong.n_gaussians


def test_rvq_runs_only_from_rvq_start(full_run):
    ckpts = dict(checkpoint_paths(full_run.out_dir))
    states = {s: torch.load(ckpts[s], weights_only=True)["model"]["state"] for s in (11, 12, 16)}
    assert not bool(states[11]["scale_vq.initted"]) and not bool(states[11]["rot_vq.initted"])
    assert bool(states[12]["scale_vq.initted"]) and bool(states[12]["rot_vq.initted"])
    # From then on the codebooks learn (codebook loss, Adam) and the live model renders the code sums.
    assert not torch.equal(states[12]["scale_vq.codebooks"], states[16]["scale_vq.codebooks"])
    assert full_run.model.use_rvq
    with torch.no_grad():
        assert float(full_run.model.activated()["rvq_loss"]) > 0


def test_interrupt_then_resume_matches_uninterrupted_run(scene, tmp_path, full_run):
    def interrupt_at_9(step, info):
        if step == 9:
            signal.raise_signal(signal.SIGINT)  # as Ctrl-C: the step finishes, a checkpoint is written

    cfg = _config(tmp_path / "cut", checkpoint_every=4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, scene, on_step=interrupt_at_9)
    assert [s for s, _ in checkpoint_paths(tmp_path / "cut")] == [4, 8, 9]
    cfg.resume = True
    resumed = train(cfg, scene)
    a = C3DGSModel.from_dict(torch.load(full_run.model_path, weights_only=True))
    b = C3DGSModel.from_dict(torch.load(resumed.model_path, weights_only=True))
    assert len(a) == len(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and any(k.startswith("hash_codec.") for k in sa)
    for k in sa:  # R-VQ k-means (step 12) and mask pruning (12, 16) happen after the cut
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    assert resumed.metrics["psnr"] == pytest.approx(full_run.metrics["psnr"], abs=1e-9)


@pytest.mark.parametrize("hash_codec", [True, False])
def test_written_file_decodes_to_the_quantized_copy(scene, tmp_path, full_run, hash_codec):
    cfg = _config(tmp_path / "w", hash_codec=hash_codec)
    res = full_run if hash_codec else train(cfg, scene)
    meta, streams = res.model.to_streams(cfg.hash_zero_threshold)
    write_scz(tmp_path / "w.scz", METHOD, meta, streams)
    f = read_scz(tmp_path / "w.scz")
    decoded = c3dgs_from_streams(decode_streams(f), f.metadata, "w.scz")
    expected = res.model.quantized_copy(cfg.hash_zero_threshold)
    assert len(decoded) == len(expected) == res.n_gaussians
    cams = scene.cameras
    with torch.no_grad():
        r_dec = decoded.render(cams.viewmats, cams.Ks, W, H, backend="torch")[0]
        r_exp = expected.render(cams.viewmats, cams.Ks, W, H, backend="torch")[0]
    torch.testing.assert_close(r_dec, r_exp, rtol=0, atol=0)
    assert float(r_dec.max()) > 0.1
    if hash_codec:  # the table in the file is the one the training loop rendered with at the end
        model = res.model
        table = model.hash_codec.quantized_table(model.color_field.grid.params.detach())
        assert torch.equal(decoded.color_field.grid.params.detach(), table)


def _distill_config(out: Path, **kw) -> C3DGSConfig:
    distill = DistillConfig(steps=30, prune_weight=0.01)
    densify = DensifyConfig(refine_start=2, refine_every=3, reset_every=1000, refine_stop=10, schedule_scale=1.0,
                            max_gaussians=120, sh_degree_every=5)  # SH degree 1 from step 5: a view-dependent rest
    return _config(out, **{"recipe": "distill", "distill": distill, "rvq_codebook_size": 8, "sh_degree": 1,
                            "densify": densify, **kw})


@pytest.fixture(scope="module")
def distill_run(scene, tmp_path_factory):
    return train(_distill_config(tmp_path_factory.mktemp("c3dgs_distill") / "run"), scene)


def test_distill_recipe_is_the_3dgs_loop_then_the_conversion(scene, tmp_path, distill_run):
    cfg = _distill_config(distill_run.out_dir)
    sh_cfg = sh_stage_config(cfg)
    assert type(sh_cfg) is TrainConfig and sh_cfg.out == distill_run.out_dir / SH_STAGE_DIR and sh_cfg.sh_degree == 1
    # the SH stage is a plain 3dgs run: the same options train the same Gaussians bit for bit
    plain = train(TrainConfig(**{**vars(sh_cfg), "out": tmp_path / "plain"}), scene)
    stage = GaussianModel.from_dict(torch.load(distill_run.out_dir / SH_STAGE_DIR / "gaussians.pt", weights_only=True))
    for k, v in plain.model.splats.items():
        torch.testing.assert_close(stage.splats[k], v.detach(), rtol=0, atol=0, msg=k)
    m = distill_run.metrics
    assert m["recipe"] == "distill" and m["sh_stage_gaussians"] == len(plain.model)
    assert m["sh_stage_psnr"] == pytest.approx(plain.metrics["psnr"], abs=1e-9)
    # pruned by blend weight, converted: a c3dgs model with R-VQ on and fitted codebooks
    model = distill_run.model
    assert isinstance(model, C3DGSModel) and model.use_rvq and bool(model.scale_vq.initted)
    assert model.scale_vq.n_stages == 3 and model.rot_vq.n_stages == 3
    assert m["n_after_weight_prune"] < m["sh_stage_gaussians"]
    assert len(model) == m["n_kept"] == distill_run.n_gaussians <= m["n_after_weight_prune"]
    assert 0 < m["distill_rms"] < 0.5 and np.isfinite(m["psnr"]) and m["psnr"] > 10
    assert distill_run.train_s >= plain.train_s * 0.5 and m["convert_s"] > 0
    assert (distill_run.out_dir / "model.pt").is_file() and (distill_run.out_dir / "metrics.json").is_file()


def test_distill_file_decodes_to_the_reported_quality(scene, tmp_path, distill_run):
    from scenezip.splatting.trainer import evaluate

    meta, streams = distill_run.model.to_streams()
    write_scz(tmp_path / "d.scz", METHOD, meta, streams)
    f = read_scz(tmp_path / "d.scz")
    decoded = c3dgs_from_streams(decode_streams(f), f.metadata, "d.scz")
    m = evaluate(decoded, scene, "test", background=(0.0, 0.0, 0.0), backend="torch")
    assert m["psnr"] == pytest.approx(distill_run.metrics["psnr"], abs=1e-4)


def test_distill_resume_of_a_finished_run_gives_the_same_model(scene, distill_run):
    cfg = _distill_config(distill_run.out_dir, resume=True)
    again = train(cfg, scene)
    a, b = distill_run.model.state_dict(), again.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_distill_refuses_bad_options_and_a_starting_model(scene, tmp_path, distill_run):
    with pytest.raises(ScenezipError, match="prune_weight"):
        train(_config(tmp_path / "a", recipe="distill", distill=DistillConfig(prune_weight=1.0)), scene)
    with pytest.raises(ScenezipError, match="recipe joint"):
        train(_distill_config(tmp_path / "b"), scene, init_model=distill_run.model)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("kw,match", [({"sh_degree": 4}, "sh_degree"), ({"position_bits": 30}, "position_bits"),
                                      ({"color_log2_hashmap_size": 30}, "color_log2_hashmap_size")])
def test_distill_checks_shared_and_sh_options_before_training(scene, tmp_path, kw, match):
    with pytest.raises(ScenezipError, match=match):
        train(_distill_config(tmp_path / "c", **kw), scene)
    assert not (tmp_path / "c").exists()
