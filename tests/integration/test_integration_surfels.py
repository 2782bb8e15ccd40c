"""End to end: 2D surfels and 3D Gaussians trained alike on a tiny procedural scene, scored against its
true geometry (the small version of ``benchmarks/geometry_2dgs.py``).

Both methods run the shared trainer with one schedule on a 24 px capture. At this size (120 steps from
random points) surfels do NOT yet beat 3D Gaussians on normals (measured 50 vs 36 degrees at 150 steps:
the rotations, at the 3DGS learning rate, barely turn in so few steps, while 3D Gaussians pick their
flattest axis through the scales), so that is not asserted; what holds is asserted: the surfel render
stays close to the 3DGS one (the old distortion default lost 10 dB) and its depth is in the right frame.
"""

from __future__ import annotations


import pytest
import torch

from scenezip.scenes.loader import load_dataset
from scenezip.scenes.procedural import read_ground_truth, write_procedural_scene
from scenezip.splatting.config import DensifyConfig, SurfelTrainConfig, TrainConfig
from scenezip.splatting.geometry import geometry_errors
from scenezip.splatting.surfels import SurfelModel
from scenezip.splatting.trainer import train

SIZE, STEPS = 24, 120


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("surfels")
    data = write_procedural_scene(root / "data", n_train=8, n_val=1, n_test=2, width=SIZE, height=SIZE, seed=0)
    ds = load_dataset(data, n_random_points=500, seed=0, background=(1.0, 1.0, 1.0))
    common = dict(data=data, steps=STEPS, progress=False, checkpoint_every=0, backend="torch", device="cpu",
                  densify=DensifyConfig(max_gaussians=1000))  # fmt: skip
    out = {}
    for name, cfg in (("3dgs", TrainConfig(out=root / "3dgs", **common)),
                      ("2dgs", SurfelTrainConfig(out=root / "2dgs", **common))):  # fmt: skip
        result = train(cfg, dataset=ds)
        test = ds.indices("test")
        depth, normals, mask = read_ground_truth(ds, test)
        geo = geometry_errors(result.model, ds.cameras[test], depth, normals, mask, backend="torch")
        out[name] = (result, geo)
    return out


def test_surfels_render_close_to_3d_gaussians_with_sound_geometry(trained):
    (r3, g3), (r2, g2) = trained["3dgs"], trained["2dgs"]
    assert isinstance(r2.model, SurfelModel) and r2.model.is_surfel
    # the default distortion weight of the past (1000 on the L1 form) lost about 10 dB here
    assert r2.metrics["psnr"] > r3.metrics["psnr"] - 3.0, (r2.metrics, r3.metrics)
    # median depth within 20% of the truth on covered pixels (a wrong frame or scale is far off)
    assert g2["depth_rel"] < 0.2 and g3["depth_rel"] < 0.2, (g2, g3)
