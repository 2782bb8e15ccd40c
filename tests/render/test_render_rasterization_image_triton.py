"""The Triton image kernel against the torch reference, run in Triton's CPU interpreter.

Triton reads ``TRITON_INTERPRET`` when it is first imported, so the kernel runs in a child process
with that variable set; the child writes its renders to an ``.npz`` and the checks happen here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scenezip.render.rasterization_image import rasterize_image_dense

pytest.importorskip("triton", reason="Triton is not installed (pip install triton; Linux x86_64)")

CHILD = r"""
import sys
import numpy as np
import torch
from scenezip.render.rasterization_image_triton import available, rasterize_image_triton
from scenezip.splatting.image_codec import read_code, render_code

assert available("cpu"), "TRITON_INTERPRET=1 should make CPU tensors renderable"
inp = np.load(sys.argv[1])
out = {}
for name in ("random", "deep"):
    m, l, c = (torch.from_numpy(inp[f"{name}_{k}"]) for k in ("means", "chol", "colors"))
    w, h = (int(v) for v in inp[f"{name}_size"])
    out[name] = rasterize_image_triton(m, l, c, w, h).numpy()
    out[name + "_normalized"] = rasterize_image_triton(m, l, c, w, h, delta=0.01).numpy()
code = read_code(sys.argv[3])
out["decoded_triton"] = render_code(code, device="cpu", backend="triton")
out["decoded_torch"] = render_code(code)
np.savez(sys.argv[2], **out)
"""


def _case(gen: torch.Generator, n: int, w: int, h: int, spread: float) -> dict[str, np.ndarray]:
    means = torch.rand(n, 2, generator=gen) * torch.tensor([w * spread, h * spread])
    chol = torch.stack([torch.rand(n, generator=gen) * 3 + 0.4, torch.randn(n, generator=gen) * 2,
                        torch.rand(n, generator=gen) * 3 + 0.4], -1)  # fmt: skip
    colors = torch.randn(n, 3, generator=gen)
    return {"means": means.numpy(), "chol": chol.numpy(), "colors": colors.numpy(), "size": np.array([w, h])}


@pytest.fixture(scope="module")
def triton_run(tmp_path_factory):
    from scenezip.splatting.image_codec import encode_image

    tmp = tmp_path_factory.mktemp("triton")
    gen = torch.Generator().manual_seed(0)
    cases = {"random": _case(gen, 60, 45, 37, 1.0),  # tiles at the borders are partial (45 = 2*16 + 13)
             "deep": _case(gen, 600, 16, 16, 0.5)}  # 600 Gaussians over one 16x16 tile  # fmt: skip
    flat = {f"{name}_{k}": v for name, case in cases.items() for k, v in case.items()}
    np.savez(tmp / "in.npz", **flat)
    rng = np.random.default_rng(1)
    img = np.clip(rng.normal(128, 40, (24, 30, 3)), 0, 255).astype(np.uint8)
    encode_image(img, 4.0, tmp / "img.scz", steps=10, search=False, progress=False)
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp / "in.npz"), str(tmp / "out.npz"), str(tmp / "img.scz")],
                          env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cases, dict(np.load(tmp / "out.npz"))


def _reference(case: dict[str, np.ndarray], n: int | None = None, delta: float | None = None) -> np.ndarray:
    m, l, c = (torch.from_numpy(case[k][:n]) for k in ("means", "chol", "colors"))
    w, h = (int(v) for v in case["size"])
    return rasterize_image_dense(m.double(), l.double(), c.double(), w, h, delta=delta).numpy()


def test_triton_kernel_matches_the_dense_reference(triton_run):
    cases, out = triton_run
    ref = _reference(cases["random"])
    assert out["random"].shape == ref.shape
    np.testing.assert_allclose(out["random"], ref, atol=1e-5, rtol=1e-5)
    assert np.abs(ref).max() > 0.5  # the case renders something


def test_triton_kernel_normalized_blend_matches_the_dense_reference(triton_run):
    cases, out = triton_run
    for name in ("random", "deep"):
        ref = _reference(cases[name], delta=0.01)
        np.testing.assert_allclose(out[name + "_normalized"], ref, atol=1e-5, rtol=1e-5)
        assert not np.allclose(ref, _reference(cases[name]), atol=1e-2)  # the normalization is really applied


def test_triton_kernel_sums_more_than_256_gaussians_in_a_tile(triton_run):
    """GaussianImage's kernel sums the first 256 Gaussians of a tile; this one must sum all 600."""
    cases, out = triton_run
    full = _reference(cases["deep"])
    np.testing.assert_allclose(out["deep"], full, atol=1e-4, rtol=1e-5)
    capped = _reference(cases["deep"], n=256)
    assert np.abs(out["deep"] - capped).max() > 1.0


def test_triton_decode_matches_the_torch_decode(triton_run):
    """Same integers, same sum: the 8-bit images may differ only where a float32 sum in another order
    lands on the other side of a rounding boundary (at most one level)."""
    _, out = triton_run
    a, b = out["decoded_triton"].astype(np.int16), out["decoded_torch"].astype(np.int16)
    assert a.shape == b.shape == (24, 30, 3)
    assert np.abs(a - b).max() <= 1
    assert (a == b).mean() > 0.99
