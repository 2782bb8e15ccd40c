"""``scenezip image encode/decode`` through image_main: round trip, conversions and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from scenezip.cli_image import image_main


def _img(h=32, w=40):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([xx * 6, yy * 7, (xx + yy) * 3], -1).clip(0, 255).astype(np.uint8)


def test_encode_decode_png(tmp_path, capsys):
    torch.set_num_threads(1)
    src = tmp_path / "in.png"
    Image.fromarray(_img()).save(src)
    assert image_main(["encode", str(src), "-o", str(tmp_path / "a.scz"), "--bpp", "6", "--steps", "10", "--no-search", "--quiet"]) == 0
    assert "bpp" in capsys.readouterr().out
    assert image_main(["decode", str(tmp_path / "a.scz"), "-o", str(tmp_path / "out.png")]) == 0
    out = Image.open(tmp_path / "out.png")
    assert out.mode == "RGB" and out.size == (40, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.scz", "in.png", "out.png"]  # no temporaries


def test_blend_option(tmp_path, capsys):
    """--blend sum writes GaussianImage's accumulated sum, the default the normalized blend; both decode."""
    from scenezip.splatting.image_codec import read_code

    torch.set_num_threads(1)
    src = tmp_path / "in.png"
    Image.fromarray(_img()).save(src)
    for blend, stored in (("sum", 0), ("normalized", 6)):
        out = tmp_path / f"{blend}.scz"
        args = ["encode", str(src), "-o", str(out), "--bpp", "6", "--steps", "5", "--no-search", "--quiet"]
        assert image_main(args + (["--blend", blend] if blend == "sum" else [])) == 0
        assert read_code(out).blend == stored
        assert image_main(["decode", str(out), "-o", str(tmp_path / f"{blend}.png")]) == 0


def test_rgba_and_grey_are_converted_with_a_note(tmp_path, capsys):
    torch.set_num_threads(1)
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([_img(), np.full((32, 40), 200, np.uint8)]), mode="RGBA").save(rgba)
    grey = tmp_path / "grey.jpg"
    Image.fromarray(_img()[..., 0]).save(grey, quality=95)
    for src in (rgba, grey):
        assert image_main(["encode", str(src), "-o", str(tmp_path / "x.scz"), "--bpp", "6", "--steps", "2", "--no-search", "--quiet"]) == 0
        err = capsys.readouterr().err
        assert "converted to RGB" in err and str(src) in err


@pytest.mark.parametrize("make,needle", [
    (lambda p: p.write_bytes(b"not an image at all"), "not a readable image"),
    (lambda p: Image.fromarray(_img()).save(p, format="BMP"), "unsupported image format BMP"),
    (lambda p: None, "no such file"),
])  # fmt: skip
def test_bad_inputs_are_one_line_errors(tmp_path, capsys, make, needle):
    src = tmp_path / "bad.png"
    make(src)
    out = tmp_path / "o.scz"
    assert image_main(["encode", str(src), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("scenezip image: error:") and needle in err and "\n" not in err
    assert not out.exists()


def test_decode_errors(tmp_path, capsys):
    bad = tmp_path / "bad.scz"
    bad.write_bytes(b"SCENEZIP" + b"\x00" * 5)
    out = tmp_path / "o.png"
    assert image_main(["decode", str(bad), "-o", str(out)]) == 2
    assert capsys.readouterr().err.startswith("scenezip image: error:")
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]
    assert image_main(["decode", str(bad), "-o", str(tmp_path / "o.jpg")]) == 2
    assert ".png" in capsys.readouterr().err
    assert image_main(["frobnicate"]) == 2
    assert image_main(["encode", "--help"]) == 0
    assert "--bpp" in capsys.readouterr().out


def test_decode_device_and_backend_options(tmp_path, capsys, monkeypatch):
    """--device cpu --backend torch decodes; an unknown backend, a missing GPU and Triton where it cannot
    run are one-line errors that write nothing."""
    torch.set_num_threads(1)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    src = tmp_path / "in.png"
    Image.fromarray(_img()).save(src)
    scz = tmp_path / "a.scz"
    assert image_main(["encode", str(src), "-o", str(scz), "--bpp", "6", "--steps", "4", "--no-search", "--quiet"]) == 0
    assert image_main(["decode", str(scz), "-o", str(tmp_path / "t.png"), "--device", "cpu", "--backend", "torch"]) == 0
    capsys.readouterr()
    out = tmp_path / "o.png"
    for extra, needle in ((["--backend", "cuda"], "--backend must be one of"),
                          (["--device", "nonsense"], "--device 'nonsense'"),
                          (["--device", "cpu", "--backend", "triton"], "--backend triton cannot run on cpu")):  # fmt: skip
        assert image_main(["decode", str(scz), "-o", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err.startswith("scenezip image: error:") and needle in err and err.count("\n") == 1
        assert not out.exists()
    if not torch.cuda.is_available():
        assert image_main(["decode", str(scz), "-o", str(out), "--device", "cuda"]) == 2
        assert "no CUDA device" in capsys.readouterr().err
