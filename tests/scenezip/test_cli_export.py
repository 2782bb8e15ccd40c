"""`scenezip export`: .scz (3dgs, c3dgs) and .ply inputs to every format, the fit error printed for baked
colours, atomic output, argument parsing; and the PLY import behind `scenezip compress scene.ply`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tyro

from scenezip.cli_export import ExportArgs, cmd_export, export_model, import_ply_model
from scenezip.errors import ScenezipError, SceneFileError
from scenezip.fields.color_field import ColorFieldConfig
from scenezip.scenes.ply import write_ply
from scenezip.scenes.scz import write_scz
from scenezip.scenes.splat_formats import FORMATS, read_splats
from scenezip.splatting.c3dgs import C3DGSModel
from scenezip.splatting.gaussians import GaussianModel
from scenezip.splatting.plain import to_plain
from scenezip.splatting.streams import gaussians_to_streams

CFG = ColorFieldConfig(n_levels=4, log2_hashmap_size=8, base_resolution=4, per_level_scale=2.0, hidden_dim=16)


def _gaussians(n: int = 40, seed: int = 0) -> GaussianModel:
    g = torch.Generator().manual_seed(seed)
    gm = GaussianModel.from_points(torch.rand(n, 3, generator=g) - 0.5, torch.rand(n, 3, generator=g), sh_degree=2)
    with torch.no_grad():
        gm.splats["quats"].copy_(torch.nn.functional.normalize(torch.randn(n, 4, generator=g), dim=-1))
        gm.splats["shN"].copy_(torch.randn(gm.shN.shape, generator=g) * 0.1)
    return gm


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    gm = _gaussians()
    meta, streams = gaussians_to_streams(gm)
    write_scz(d / "g.scz", "3dgs", meta, streams)
    cm = C3DGSModel.from_gaussians(_gaussians(30, seed=1), CFG, ((-1, -1, -1), (1, 1, 1)), backend="torch")
    meta, streams = cm.to_streams()
    write_scz(d / "c.scz", "c3dgs", meta, streams)
    return d, gm


@pytest.mark.parametrize("fmt", FORMATS)
def test_export_3dgs_scz_every_format(files, fmt, capsys):
    d, gm = files
    out = d / f"g_out.{fmt}"
    cmd_export(ExportArgs(file=d / "g.scz", format=fmt, out=out))
    text = capsys.readouterr().out
    assert f"wrote {out}" in text and "40 splats" in text and "SH bake" not in text
    r = read_splats(out)
    p = to_plain(gm)
    from scipy.spatial import cKDTree

    dist, idx = cKDTree(p.means).query(r["means"])  # formats may reorder splats: match by position
    assert dist.max() < 1e-3 and len(set(idx.tolist())) == 40
    np.testing.assert_allclose(r["scales"], p.scales[idx], atol=0.04)  # within every format's scale step
    expect_krest = 0 if fmt == "splat" else 8
    assert r["shN"].shape == (40, expect_krest, 3)
    assert not [f for f in d.iterdir() if f.name.endswith(".tmp")]


def test_export_c3dgs_prints_fit_error(files, capsys):
    d, _ = files
    cmd_export(ExportArgs(file=d / "c.scz", format="ply", sh_degree=1, n_dirs=16))
    text = capsys.readouterr().out
    assert "SH bake: RMS colour error" in text and "from c3dgs" in text and "SH degree 1" in text
    r = read_splats(d / "c.ply")  # default output name: the input with the format's suffix
    assert r["shN"].shape[1] == 3


def test_export_from_ply_and_parse(files, tmp_path, capsys):
    d, gm = files
    src = write_ply(tmp_path / "in.ply", to_plain(gm).arrays())
    args = tyro.cli(ExportArgs, args=[str(src), "--format", "spz", "-o", str(tmp_path / "o.spz"), "--sh-degree", "1",
                                      "--spz-version", "2"])  # fmt: skip
    assert args.format == "spz" and args.sh_degree == 1 and args.spz_version == 2
    cmd_export(args)
    assert "from 3dgs (PLY)" in capsys.readouterr().out
    r = read_splats(tmp_path / "o.spz")
    assert r["shN"].shape == (40, 3, 3)
    with pytest.raises(ScenezipError, match="sh-degree"):
        cmd_export(ExportArgs(file=src, format="glb", sh_degree=4))
    with pytest.raises(ScenezipError, match="overwrite"):
        cmd_export(ExportArgs(file=src, format="ply"))
    with pytest.raises(ScenezipError, match="at most the model's degree 2"):
        cmd_export(ExportArgs(file=src, format="glb", sh_degree=3, out=tmp_path / "x.glb"))
    assert not (tmp_path / "x.glb").exists()


def test_export_model_flattens_surfels(tmp_path):
    base = to_plain(_gaussians(8))

    class Surfels:
        def to_plain(self, sh_degree):
            s = base.arrays()
            s["scales"] = s["scales"].copy()
            s["scales"][:, 2] = -np.inf
            from scenezip.splatting.plain import PlainSplats

            return PlainSplats(**s, surfel=True)

    path, plain = export_model(Surfels(), tmp_path / "s.ply", "ply")
    r = read_splats(path)
    assert np.all(np.isfinite(r["scales"]))
    np.testing.assert_allclose(r["scales"][:, 2], np.minimum(r["scales"][:, 0], r["scales"][:, 1]) + np.log(1e-3),
                               atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_import_ply_model(tmp_path, degree):
    gm = _gaussians(12)
    krest = (degree + 1) ** 2 - 1
    arrays = to_plain(gm, sh_degree=min(degree, 2)).arrays()
    if degree == 3:
        arrays["shN"] = np.random.default_rng(0).normal(size=(12, 15, 3)).astype(np.float32)
    path = write_ply(tmp_path / "s.ply", arrays)
    m = import_ply_model(path)
    assert isinstance(m, GaussianModel) and m.sh_degree == degree and len(m) == 12
    np.testing.assert_array_equal(m.shN.detach().numpy(), arrays["shN"][:, :krest])
    np.testing.assert_array_equal(m.means.detach().numpy(), arrays["means"])
    (tmp_path / "bad.ply").write_bytes(path.read_bytes()[:-7])
    with pytest.raises(SceneFileError, match=r"bad\.ply"):
        import_ply_model(tmp_path / "bad.ply")
