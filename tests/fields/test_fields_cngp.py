"""cngp on a tiny procedural capture: training with the hash-table compressor reduces the loss, a larger
rate penalty gives a smaller file, the file decodes bit-exactly to the model the final metrics measured,
malformed streams raise SceneFileError, and an interrupted run resumes to the same state."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from scenezip.errors import SceneFileError, ScenezipError
from scenezip.fields.hashgrid import HashGrid, HashGridConfig, hash_encode
from scenezip.fields.ngp_config import CNGPConfig
from scenezip.fields.ngp_streams import METHOD_CNGP, cngp_from_streams, cngp_to_streams
from scenezip.fields.ngp_trainer import evaluate_ngp, rate_weight, train_ngp
from scenezip.scenes.loader import load_dataset
from scenezip.scenes.procedural import write_procedural_scene
from scenezip.scenes.scz import decode_streams, read_scz, write_scz

STEPS = 120


@pytest.fixture(scope="module")
def capture(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cngp") / "proc"
    return write_procedural_scene(root, n_train=10, n_val=1, n_test=2, width=20, height=20, samples_per_side=2)


def _config(data: Path, out: Path, steps: int, **kw) -> CNGPConfig:
    base = dict(
        data=data, out=out, steps=steps, rays_per_step=128, n_levels=4, log2_hashmap_size=12, base_resolution=8,
        max_resolution=96, hidden_dim=32, march_steps=48, occ_resolution=16, occ_update_every=8, occ_warmup=48,
        lr_warmup=10, checkpoint_every=0, progress=False, backend="torch", device="cpu", seed=5,
        lambda_rate=0.0, mask_lr=0.2,
    )  # fmt: skip
    base.update(kw)
    return CNGPConfig(**base)


@pytest.fixture(scope="module")
def runs(capture, tmp_path_factory):
    """Two runs on the same capture: no rate penalty and a strong one."""
    torch.set_num_threads(1)
    ds = load_dataset(capture)
    out = {}
    for lam in (0.0, 1e-2):
        losses: list[dict] = []
        cfg = _config(capture, tmp_path_factory.mktemp(f"run{lam}"), STEPS, lambda_rate=lam)
        result = train_ngp(cfg, dataset=ds, on_step=lambda s, info: losses.append(info))
        out[lam] = (result, losses)
    return ds, out


def _write(result, path: Path) -> int:
    meta, streams = result.to_streams()
    return write_scz(path, result.method, meta, streams)


def test_cngp_trains_and_reduces_loss(runs):
    ds, out = runs
    result, losses = out[0.0]
    assert result.method == METHOD_CNGP and result.compressor is not None
    assert len(losses) == STEPS
    photo = [i["loss"] for i in losses]
    assert np.mean(photo[-20:]) < 0.4 * np.mean(photo[:10])
    blank = np.mean([float(-10 * torch.log10(((img - 1.0) ** 2).mean())) for img in ds.images("test")])
    assert result.metrics["psnr"] > blank + 4.0, (result.metrics, blank)
    assert result.metrics["method"] == "cngp" and 0.0 < result.metrics["hash_kept_fraction"] <= 1.0
    # the progress info estimates the size; it is finite and positive once the rate is known
    assert all(np.isfinite(i["est_bytes"]) and i["est_bytes"] > 0 for i in losses[1:])
    # quantization ran: the model reads integers times the per-level steps
    table = result.model.hash_params()
    steps = result.compressor.steps()
    lv0 = table[: result.model.field.grid.level_table(0).numel()]
    assert torch.allclose(lv0 / steps[0], torch.round(lv0 / steps[0]), atol=1e-3)


def test_higher_rate_penalty_gives_smaller_file(runs, tmp_path):
    _, out = runs
    low, high = out[0.0][0], out[1e-2][0]
    n_low, n_high = _write(low, tmp_path / "low.scz"), _write(high, tmp_path / "high.scz")
    assert n_high < 0.8 * n_low, (n_low, n_high)
    assert high.metrics["rate_bits_per_param"] < low.metrics["rate_bits_per_param"]
    assert high.metrics["hash_kept_fraction"] <= low.metrics["hash_kept_fraction"]
    # the rate weight ramps in over the first rate_ramp of the run
    cfg = _config(Path("."), Path("."), 100, lambda_rate=1e-3, rate_ramp=0.1)
    assert rate_weight(cfg, 5) == pytest.approx(5e-4) and rate_weight(cfg, 10) == rate_weight(cfg, 90) == 1e-3


def test_cngp_file_decodes_bit_exactly(runs, tmp_path):
    ds, out = runs
    result = out[1e-2][0]
    path = tmp_path / "scene.scz"
    _write(result, path)
    scene = read_scz(path)
    assert scene.method == "cngp"
    assert "hash_table" not in scene.streams and any(k.startswith("hash_q") for k in scene.streams)
    assert scene.streams["density_mlp"].dtype == "float16"
    a = cngp_from_streams(decode_streams(scene), scene.metadata, str(path))
    b = cngp_from_streams(decode_streams(read_scz(path)), scene.metadata, str(path))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.hash_transform is None
    # the decoded table is the compressor's quantized table of the trained raw table, bit for bit
    raw = result.model.field.grid.params.detach()
    assert torch.equal(a.field.grid.params.detach(), result.compressor.quantized_table(raw))
    assert not torch.equal(a.field.grid.params.detach(), raw.cpu())
    cam = ds.cameras[int(ds.indices("test")[0])]
    with torch.no_grad():
        c_trained, _, _ = result.model.render(cam.viewmats, cam.Ks, 20, 20, backend="torch")
        c_decoded, _, _ = a.render(cam.viewmats, cam.Ks, 20, 20, backend="torch")
    assert torch.equal(c_trained, c_decoded)
    # the final metrics are those of the file
    m = evaluate_ngp(a, ds, "test", background=tuple(ds.background or (0.0, 0.0, 0.0)), backend="torch")
    assert m["psnr"] == result.metrics["psnr"] and m["ssim"] == result.metrics["ssim"]


def test_cngp_streams_reject_malformed_input(runs):
    result = runs[1][0.0][0]
    meta, streams = cngp_to_streams(result.model, result.compressor)
    arrays = {k: v[0] for k, v in streams.items()}
    model = cngp_from_streams(arrays, meta, "f.scz")  # the unmodified streams decode
    n_cells = model.occupancy.n_cells
    qname = meta["hash"]["value_streams"][0]
    with pytest.raises(SceneFileError, match="missing"):
        cngp_from_streams({k: v for k, v in arrays.items() if k != qname}, meta, "f.scz")
    with pytest.raises(SceneFileError, match="f.scz"):
        cngp_from_streams(arrays, {"ngp": meta["ngp"]}, "f.scz")
    with pytest.raises(SceneFileError, match="outside"):
        cngp_from_streams({**arrays, qname: arrays[qname].astype(np.int16) + 300}, meta, "f.scz")
    with pytest.raises(SceneFileError, match="must be"):
        cngp_from_streams({**arrays, qname: arrays[qname][:-1]}, meta, "f.scz")
    bad_steps = {**meta, "hash": {**meta["hash"], "steps": [-1.0] * len(meta["hash"]["steps"])}}
    with pytest.raises(SceneFileError, match="steps"):
        cngp_from_streams(arrays, bad_steps, "f.scz")
    with pytest.raises(SceneFileError, match="occupancy"):
        cngp_from_streams({**arrays, "occupancy": np.zeros(n_cells - 1, dtype=bool)}, meta, "f.scz")
    with pytest.raises(SceneFileError, match="missing"):
        cngp_from_streams({k: v for k, v in arrays.items() if k != "color_mlp"}, meta, "f.scz")
    with pytest.raises(SceneFileError, match="metadata"):
        cngp_from_streams(arrays, {}, "f.scz")
    # either occupancy coding decodes to the same grid; packed pad bits must be zero
    bits = model.occupancy.binary.numpy().reshape(-1)
    as_bool = cngp_from_streams({**arrays, "occupancy": bits}, meta, "f.scz")
    as_bytes = cngp_from_streams({**arrays, "occupancy": np.packbits(bits, bitorder="little")}, meta, "f.scz")
    assert torch.equal(as_bool.occupancy.binary, as_bytes.occupancy.binary)
    assert torch.equal(as_bool.occupancy.binary, result.model.occupancy.binary.cpu())
    odd = dataclasses.replace(model.arch, occ_resolution=5)  # 125 cells: 3 pad bits in the last byte
    odd_meta = {**meta, "ngp": {**meta["ngp"], "arch": odd.to_json()}}
    packed = np.packbits(np.zeros(125, dtype=bool), bitorder="little")
    packed[-1] = 0x80
    with pytest.raises(SceneFileError, match="pad bits"):
        cngp_from_streams({**arrays, "occupancy": packed}, odd_meta, "f.scz")


def test_cngp_resume_reproduces_uninterrupted_run(capture, tmp_path):
    ds = load_dataset(capture)
    kw = dict(eval_images=1, lambda_rate=3e-3, qat_start=0.5)
    ref = train_ngp(_config(capture, tmp_path / "a", 24, **kw), dataset=ds)

    def interrupt(step, info):
        if step == 9:  # before quantization starts (step 12): the resumed run initialises the steps
            signal.raise_signal(signal.SIGINT)

    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        train_ngp(_config(capture, out, 24, **kw), dataset=ds, on_step=interrupt)
    assert (out / "ckpt_00009.pt").is_file()
    resumed = train_ngp(_config(capture, out, 24, resume=True, **kw), dataset=ds)
    a, b = ref.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca, cb = ref.compressor.state_dict(), resumed.compressor.state_dict()
    assert all(torch.equal(ca[k], cb[k]) for k in ca)
    assert resumed.metrics["psnr"] == ref.metrics["psnr"]
    ma, _ = ref.to_streams()
    mb, _ = resumed.to_streams()
    assert ma["hash"] == mb["hash"]
    # an ngp checkpoint does not resume a cngp run, and cngp options are checked
    from scenezip.fields.ngp_config import NGPConfig

    plain = {f.name: getattr(_config(capture, tmp_path / "c", 4), f.name) for f in dataclasses.fields(NGPConfig)}
    train_ngp(NGPConfig(**plain), dataset=ds)
    with pytest.raises(ScenezipError, match="cannot resume"):
        train_ngp(_config(capture, tmp_path / "c", 4, resume=True), dataset=ds)
    with pytest.raises(ScenezipError, match="lambda_rate"):
        train_ngp(_config(capture, tmp_path / "d", 4, lambda_rate=-1.0), dataset=ds)
    with pytest.raises(ScenezipError, match="hash_bits"):
        train_ngp(_config(capture, tmp_path / "d", 4, hash_bits=1), dataset=ds)


def test_hashgrid_reads_a_given_table():
    cfg = HashGridConfig(n_levels=3, n_features_per_level=2, log2_hashmap_size=8, base_resolution=4, per_level_scale=2.0)
    grid = HashGrid(cfg, backend="torch", seed=3)
    x = torch.rand(50, 3, generator=torch.Generator().manual_seed(0))
    other = (torch.randn(grid.params.shape, generator=torch.Generator().manual_seed(1))).requires_grad_(True)
    out = grid(x, params=other)
    assert torch.equal(out, hash_encode(x, other, cfg).float())
    assert not torch.equal(out, grid(x))
    v = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * v).sum().backward()
    assert other.grad is not None and other.grad.abs().sum() > 0 and grid.params.grad is None
    with pytest.raises(ValueError, match="params"):
        grid(x, params=other[:-1])
