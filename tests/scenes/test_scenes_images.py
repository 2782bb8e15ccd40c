"""Image loading: undistortion recovers the pinhole image, area downscaling, compositing, bad images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scenezip.errors import DatasetError
from scenezip.scenes import _fixtures as fx
from scenezip.scenes.images import (
    bilinear_sample,
    composite,
    distort_normalized,
    downscale_image,
    read_image,
    undistort_image,
)
from scenezip.scenes.loader import load_dataset


def pinhole_truth(ds, i: int) -> np.ndarray:
    """The analytic pattern as the loaded pinhole camera ``i`` sees it, ``[H, W, 3]``."""
    K = ds.cameras.Ks[i].double().numpy()
    H, W = int(ds.cameras.heights[i]), int(ds.cameras.widths[i])
    v, u = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    return fx.pattern((u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1])


@pytest.mark.parametrize("downscale", [1, 2])
def test_undistortion_recovers_pinhole_image(tmp_path, downscale):
    rig = fx.make_rig(n=3, width=64, height=48, focal=50.0, models="OPENCV", seed=4)
    rig.dist[:] = [[0.15, -0.05, 0.01, -0.008], [-0.12, 0.03, -0.006, 0.01], [0.08, 0.0, 0.0, 0.0]]
    fx.write_nerfstudio(tmp_path, rig, fx.render_images(rig, "pattern"))
    ds = load_dataset(tmp_path, downscale=downscale, n_random_points=0)
    assert ds.distortion is not None and ds.cameras.source_model == "OPENCV"
    m = 6 // downscale  # border pixels whose source lies outside the distorted image
    for i in range(3):
        truth = pinhole_truth(ds, i)[m:-m, m:-m]
        got = ds.image(i).numpy()[m:-m, m:-m]
        err = np.abs(got - truth).max()
        assert err < 0.006, err  # 8-bit quantization is 0.002
        # Without undistortion the same comparison fails clearly: the test measures the remap.
        raw = downscale_image(read_image(ds.image_paths[i]), downscale)[m:-m, m:-m]
        assert np.abs(raw - truth).max() > 3 * err


def test_distort_normalized_matches_reference_model():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(100, generator=g, dtype=torch.float64) - 0.5, torch.rand(100, generator=g, dtype=torch.float64) - 0.5
    d = torch.tensor([0.1, -0.02, 0.003, -0.004], dtype=torch.float64)
    xd, yd = distort_normalized(x, y, d)
    ex, ey = fx.distort(x.numpy(), y.numpy(), d.numpy())
    np.testing.assert_allclose(xd.numpy(), ex, rtol=1e-12)
    np.testing.assert_allclose(yd.numpy(), ey, rtol=1e-12)


def test_undistort_with_zero_distortion_is_identity():
    img = torch.rand(7, 9, 3, generator=torch.Generator().manual_seed(1))
    K = torch.tensor([[8.0, 0, 4.1], [0, 8.5, 3.3], [0, 0, 1]])
    torch.testing.assert_close(undistort_image(img, K, torch.zeros(4)), img)


def test_bilinear_sample_interpolates_and_clamps():
    img = torch.arange(12, dtype=torch.float32).reshape(3, 4, 1)
    u = torch.tensor([0.5, 1.0, 1.5, -3.0, 10.0])
    v = torch.tensor([0.5, 0.5, 1.0, 0.5, 2.5])
    out = bilinear_sample(img, u, v)[:, 0]
    torch.testing.assert_close(out, torch.tensor([0.0, 0.5, 3.0, 0.0, 11.0]))


def test_downscale_image_is_area_average():
    img = np.arange(5 * 7 * 2, dtype=np.float32).reshape(5, 7, 2)
    out = downscale_image(img, 2)
    assert out.shape == (2, 3, 2)
    np.testing.assert_allclose(out[1, 2], img[2:4, 4:6].reshape(-1, 2).mean(0))
    assert downscale_image(img, 1) is img


def test_composite_straight_alpha():
    rgba = np.array([[[1.0, 0.0, 0.0, 0.25]]], dtype=np.float32)
    np.testing.assert_allclose(composite(rgba, (0.0, 1.0, 0.0)), [[[0.25, 0.75, 0.0]]])


def test_sixteen_bit_grey_and_palette_images(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((3, 4), 65535 // 2, dtype=np.uint16)).save(tmp_path / "g16.png")
    g = read_image(tmp_path / "g16.png")
    assert g.shape == (3, 4, 3) and abs(float(g[0, 0, 0]) - 0.5) < 1e-3
    Image.fromarray(np.zeros((3, 4, 3), np.uint8)).convert("P").save(tmp_path / "p.png")
    assert read_image(tmp_path / "p.png").shape == (3, 4, 3)


def test_missing_unreadable_and_wrong_size_images(tmp_path):
    rig = fx.make_rig(models="PINHOLE")
    names = fx.write_nerfstudio(tmp_path, rig, fx.render_images(rig))
    ds = load_dataset(tmp_path, n_random_points=0)
    (tmp_path / names[1]).write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match=r"frame_001\.png: cannot read image"):
        ds.image(1)
    fx.save_png(tmp_path / names[2], np.zeros((12, 15, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"frame_002\.png: image is 15x12 but its camera expects 16x12"):
        ds.image(2)
    (tmp_path / names[3]).unlink()
    with pytest.raises(DatasetError, match=r"frame_003\.png: image file is missing"):
        ds.image(3)
    with pytest.raises(DatasetError, match=r"frame_003\.png: image file is missing"):
        load_dataset(tmp_path)
