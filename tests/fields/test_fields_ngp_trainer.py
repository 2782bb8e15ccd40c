"""ngp training on a tiny procedural capture: the loss falls, PSNR clears a bound, resume is exact,
and the ngp stream contract round-trips bit-exactly and rejects malformed input."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from scenezip.errors import SceneFileError, ScenezipError
from scenezip.fields.ngp_config import NGPConfig
from scenezip.fields.ngp_streams import METHOD, ngp_from_streams, ngp_to_streams
from scenezip.fields.ngp_trainer import lr_factor, train_ngp
from scenezip.scenes.loader import load_dataset
from scenezip.scenes.procedural import write_procedural_scene
from scenezip.scenes.scz import decode_streams, read_scz, write_scz


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ngp") / "proc"
    return write_procedural_scene(root, n_train=10, n_val=1, n_test=2, width=20, height=20, samples_per_side=2)


def _config(data: Path, out: Path, steps: int, **kw) -> NGPConfig:
    base = dict(
        data=data, out=out, steps=steps, rays_per_step=128, n_levels=4, log2_hashmap_size=12, base_resolution=8,
        max_resolution=96, hidden_dim=32, march_steps=48, occ_resolution=16, occ_update_every=8, occ_warmup=48,
        lr_warmup=10, checkpoint_every=0, progress=False, backend="torch", device="cpu", seed=5,
    )  # fmt: skip
    base.update(kw)
    return NGPConfig(**base)


@pytest.fixture(scope="module")
def trained(capture, tmp_path_factory):
    ds = load_dataset(capture)
    losses: list[float] = []
    cfg = _config(capture, tmp_path_factory.mktemp("run"), 150)
    result = train_ngp(cfg, dataset=ds, on_step=lambda s, info: losses.append(info["loss"]))
    return ds, result, losses


def test_training_reduces_loss_and_reaches_psnr(trained):
    ds, result, losses = trained
    assert len(losses) == 150
    assert np.mean(losses[-20:]) < 0.3 * np.mean(losses[:10])
    m = result.metrics
    assert m["split"] == "test" and m["n_images"] == 2
    # a blank render (background only) is the floor; the trained field must be far above it
    blank = np.mean([float(-10 * torch.log10(((img - 1.0) ** 2).mean())) for img in ds.images("test")])
    assert m["psnr"] > 17.0 and m["psnr"] > blank + 5.0, (m, blank)
    assert m["lpips"] is None or m["lpips"] >= 0
    assert result.n_primitives == len(result.model) > 0
    assert result.checkpoint_path.is_file() and result.metrics_path.is_file()
    assert 0.0 < result.model.occupancy.occupancy_fraction() < 0.9  # the grid learned empty space


def test_streams_round_trip_bit_exactly(trained, tmp_path):
    ds, result, _ = trained
    model = result.model
    meta, streams = ngp_to_streams(model)
    path = tmp_path / "scene.scz"
    write_scz(path, METHOD, meta, streams)
    scene = read_scz(path)
    assert scene.method == "ngp"
    back = ngp_from_streams(decode_streams(scene), scene.metadata, str(path))
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items()):
        if k != "occupancy.density":  # the moving average is training state; files keep the bits
            assert torch.equal(a.cpu(), b.cpu()), k
    cam = ds.cameras[int(ds.indices("test")[0])]
    with torch.no_grad():
        c1, _, _ = model.render(cam.viewmats, cam.Ks, 20, 20, backend="torch")
        c2, _, _ = back.render(cam.viewmats, cam.Ks, 20, 20, backend="torch")
    assert c1.shape == (1, 20, 20, 3) and torch.equal(c1, c2)
    # float16 storage halves the table and changes renders only slightly
    meta16, s16 = ngp_to_streams(model, hash_dtype="float16", mlp_dtype="float16")
    assert s16["hash_table"][0].nbytes * 2 == streams["hash_table"][0].nbytes
    back16 = ngp_from_streams({k: v[0] for k, v in s16.items()}, meta16)
    with torch.no_grad():
        c3, _, _ = back16.render(cam.viewmats, cam.Ks, 20, 20, backend="torch")
    assert (c3 - c1).abs().max() < 0.05


def test_streams_reject_malformed_input(trained):
    model = trained[1].model
    meta, streams = ngp_to_streams(model)
    arrays = {k: v[0] for k, v in streams.items()}
    with pytest.raises(SceneFileError, match="missing"):
        ngp_from_streams({k: v for k, v in arrays.items() if k != "color_mlp"}, meta, "f.scz")
    with pytest.raises(SceneFileError, match="shape"):
        ngp_from_streams({**arrays, "hash_table": arrays["hash_table"][:-2]}, meta, "f.scz")
    with pytest.raises(SceneFileError, match="dtype"):
        ngp_from_streams({**arrays, "occupancy": arrays["occupancy"].astype(np.int32)}, meta, "f.scz")
    bad = np.array(arrays["density_mlp"])
    bad[0] = np.nan
    with pytest.raises(SceneFileError, match="non-finite"):
        ngp_from_streams({**arrays, "density_mlp": bad}, meta, "f.scz")
    with pytest.raises(SceneFileError, match="metadata"):
        ngp_from_streams(arrays, {}, "f.scz")
    wrong = {"ngp": {**meta["ngp"], "n_hash_params": 7}}
    with pytest.raises(SceneFileError, match="hash parameters"):
        ngp_from_streams(arrays, wrong, "f.scz")
    broken = {"ngp": {**meta["ngp"], "arch": {**meta["ngp"]["arch"], "occ_resolution": "big"}}}
    with pytest.raises(SceneFileError, match="f.scz"):
        ngp_from_streams(arrays, broken, "f.scz")


def test_resume_reproduces_uninterrupted_run(capture, tmp_path):
    ds = load_dataset(capture)
    ref = train_ngp(_config(capture, tmp_path / "a", 24, eval_images=1), dataset=ds)

    def interrupt(step, info):
        if step == 13:
            signal.raise_signal(signal.SIGINT)

    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        train_ngp(_config(capture, out, 24, eval_images=1), dataset=ds, on_step=interrupt)
    assert (out / "ckpt_00013.pt").is_file()
    resumed = train_ngp(_config(capture, out, 24, eval_images=1, resume=True), dataset=ds)
    a, b = ref.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.metrics["psnr"] == ref.metrics["psnr"]
    with pytest.raises(ScenezipError, match="differ"):
        train_ngp(_config(capture, out, 24, lr=5e-3, resume=True), dataset=ds)
    with pytest.raises(ScenezipError, match="no ckpt"):
        train_ngp(_config(capture, tmp_path / "empty", 24, resume=True), dataset=ds)


def test_lr_schedule_and_config_checks(tmp_path):
    cfg = NGPConfig(data=tmp_path, steps=100, lr_warmup=10)
    assert lr_factor(cfg, 1) == pytest.approx(0.01 + 0.099)
    assert lr_factor(cfg, 10) == 1.0 and lr_factor(cfg, 50) == 1.0
    assert lr_factor(cfg, 51) == pytest.approx(0.33) and lr_factor(cfg, 91) == pytest.approx(0.33**3)
    with pytest.raises(ScenezipError, match="rays_per_step"):
        train_ngp(NGPConfig(data=tmp_path, rays_per_step=0))
