"""A user's path through the CLI on a tiny procedural capture: data, train, info, eval, render."""

from __future__ import annotations

import json
import subprocess
import sys

import imageio.v3 as iio
import pytest

from scenezip.scenes.procedural import write_procedural_scene


def run(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "scenezip.cli", *args], capture_output=True, text=True, timeout=600,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    if ok:
        assert out.returncode == 0, out.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    data = write_procedural_scene(root / "data", n_train=6, n_val=1, n_test=2, width=32, height=32, seed=0)
    out = root / "run"
    run("train", str(data), "--out", str(out), "--steps", "40", "--random-points", "400", "--sh-degree", "1",
        "--densify.max-gaussians", "1500", "--no-progress")  # fmt: skip
    return data, out


def test_data_summary(trained):
    data, _ = trained
    text = run("data", str(data)).stdout
    assert "blender" in text and "train 6, val 1, test 2" in text and "32x32" in text


def test_train_writes_scene_and_metrics(trained):
    _, out = trained
    metrics = json.loads((out / "metrics.json").read_text())
    assert 5.0 < metrics["psnr"] < 60.0
    assert (out / "scene.scz").stat().st_size > 0


def test_info_lists_every_stream(trained):
    _, out = trained
    text = run("info", str(out / "scene.scz")).stdout
    for name in ("means", "quats", "scales", "opacities", "sh0", "shN", "total"):
        assert name in text
    assert "method 3dgs" in text


def test_eval_matches_training_metrics(trained, tmp_path):
    data, out = trained
    report = tmp_path / "eval.json"
    text = run("eval", str(out / "scene.scz"), str(data), "--json", str(report), "--backend", "torch").stdout
    result = json.loads(report.read_text())
    train_metrics = json.loads((out / "metrics.json").read_text())
    # the file stores the trained parameters losslessly, so eval on the file reproduces training's figures
    assert result["psnr"] == pytest.approx(train_metrics["psnr"], abs=1e-3)
    assert result["n_images"] == 2 and result["size_bytes"] == (out / "scene.scz").stat().st_size
    assert "LPIPS" in text and (result["lpips"] is not None or "unavailable" in text)


def test_render_writes_one_png_per_test_view(trained, tmp_path):
    data, out = trained
    run("render", str(out / "scene.scz"), "--data", str(data), "--out", str(tmp_path / "r"), "--backend", "torch")
    pngs = sorted((tmp_path / "r").glob("*.png"))
    assert len(pngs) == 2
    img = iio.imread(pngs[0])
    assert img.shape == (32, 32, 3) and img.std() > 5  # not a blank frame


def test_corrupt_file_is_one_line_error(trained, tmp_path):
    data, out = trained
    bad = tmp_path / "bad.scz"
    raw = bytearray((out / "scene.scz").read_bytes())
    raw[-5] ^= 0xFF  # flip a payload byte: the stream CRC must catch it
    bad.write_bytes(bytes(raw))
    for cmd in (["eval", str(bad), str(data)], ["info", str(bad)]):
        res = run(*cmd, ok=False)
        assert res.returncode == 2, res.stderr
        errors = [x for x in res.stderr.splitlines() if "error" in x]
        assert "Traceback" not in res.stderr, res.stderr
        assert len(errors) == 1 and "bad CRC32" in errors[0] and "shN" in errors[0], res.stderr


@pytest.mark.parametrize("recipe", ["distill", "joint"])
def test_c3dgs_recipes_write_a_file_whose_eval_matches_the_run(trained, tmp_path, recipe):
    data, _ = trained
    out = tmp_path / recipe
    run("train", str(data), "--method", "c3dgs", "--recipe", recipe, "--out", str(out), "--steps", "30",
        "--random-points", "300", "--densify.max-gaussians", "600", "--distill.steps", "40", "--no-progress")  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "sh" / "gaussians.pt").is_file() == (recipe == "distill")
    assert metrics.get("recipe", "joint") == recipe
    text = run("info", str(out / "scene.scz")).stdout
    assert "method c3dgs" in text
    report = tmp_path / "eval.json"
    run("eval", str(out / "scene.scz"), str(data), "--json", str(report), "--backend", "torch")
    # the metrics of a c3dgs run are those of its quantized model, i.e. of the file
    assert json.loads(report.read_text())["psnr"] == pytest.approx(metrics["psnr"], abs=1e-3)
