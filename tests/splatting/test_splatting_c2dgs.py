"""c2dgs: compressed 2D surfels. Render agrees with SurfelModel, the surfel losses reach the parameters,
bit-exact .scz round trip with the surfel marker, depth/normal renders, SH export, and a tiny end-to-end
run through the shared trainer, the file, the loader, the geometry renders and the PLY export (torch, CPU)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from scenezip.errors import SceneFileError
from scenezip.fields.color_field import ColorFieldConfig
from scenezip.scenes.cameras import Cameras
from scenezip.scenes.scz import decode_streams, read_scz, write_scz
from scenezip.splatting.c2dgs import (
    METHOD, C2DGSConfig, C2DGSModel, C2DGSRecipe, c2dgs_from_streams, c2dgs_to_streams,
)  # fmt: skip
from scenezip.splatting.c3dgs import C3DGSModel, auto_position_bits
from scenezip.splatting.surfels import FLAT_SCALE, SurfelLossConfig, SurfelModel

CFG = ColorFieldConfig(n_levels=4, log2_hashmap_size=8, base_resolution=4, per_level_scale=2.0, hidden_dim=16,
                       output="sh0")  # fmt: skip
BOUNDS = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
W, H = 32, 24
N, N_MASKED = 120, 13
LOSS = SurfelLossConfig(scene_type="object")


@pytest.fixture(scope="module", autouse=True)
def _threads():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _surfels(seed: int = 0) -> SurfelModel:
    """Surfels of a slightly wavy plane z ~ 0 facing the cameras (PCA-oriented, so their normals are +-z)."""
    g = torch.Generator().manual_seed(seed)
    pts = torch.rand(N, 3, generator=g) * 1.4 - 0.7
    pts[:, 2] = 0.03 * torch.sin(4.0 * pts[:, 0])
    return SurfelModel.from_points(pts, torch.rand(N, 3, generator=g), sh_degree=0, init_opacity=0.9, init_scale=2.5)


def _model(seed: int = 0, masked: bool = True, **kw) -> C2DGSModel:
    m = C2DGSModel.from_surfels(_surfels(seed), CFG, BOUNDS, color_dc=True, backend="torch", rvq_stages=3,
                                rvq_codebook_size=16, seed=seed, **kw)  # fmt: skip
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        m.color_field.grid.params.copy_(torch.randn(m.color_field.grid.params.shape, generator=g) * 0.3)
        m.color_field.mlp.layers[-1].weight.normal_(0.0, 0.3, generator=g)  # a view-dependent correction
        if masked:
            m.splats["masks"][torch.randperm(N, generator=g)[:N_MASKED]] = -8.0
    return m


def _cameras() -> tuple[torch.Tensor, torch.Tensor]:
    """Two cameras 3 units from the plane, looking at it along +z (the second shifted sideways)."""
    vm = torch.eye(4).repeat(2, 1, 1)
    vm[:, 2, 3] = 3.0
    vm[1, 0, 3] = 0.3
    K = torch.tensor([[30.0, 0.0, W / 2], [0.0, 30.0, H / 2], [0.0, 0.0, 1.0]]).repeat(2, 1, 1)
    return vm, K


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
    m = _model()
    meta, streams = c2dgs_to_streams(m)
    path = tmp_path_factory.mktemp("c2dgs") / "scene.scz"
    write_scz(path, METHOD, meta, streams)
    return m, meta, streams, path


# ---------------------------------------------------------------------------------------------- model
def test_render_equals_surfel_model_when_the_field_adds_nothing():
    """With a zero field and no R-VQ, colour = base colour: every image must be SurfelModel's."""
    s = _surfels()
    m = C2DGSModel.from_surfels(s, CFG, BOUNDS, color_dc=True, backend="torch", use_rvq=False)
    vm, K = _cameras()
    kw = dict(backend="torch", distloss=True, depth_mode="median", backgrounds=torch.ones(2, 3))
    with torch.no_grad():
        c1, a1, m1 = m.render(vm, K, W, H, **kw)
        c2, a2, m2 = s.render(vm, K, W, H, **kw)
    assert c1.shape == (2, H, W, 3) and a1.shape == (2, H, W, 1)
    assert float(a1.mean()) > 0.3  # the plane covers the view: the comparison below means something
    torch.testing.assert_close(c1, c2)
    torch.testing.assert_close(a1, a2)
    for key in ("render_normals", "render_normals_from_depth", "render_median", "render_depth", "render_distort"):
        torch.testing.assert_close(m1[key], m2[key], msg=key)
    assert len(m1["cameras"]) == 2 and m1["cameras"][1]["gradient_2dgs"].shape == (1, N, 2)
    torch.testing.assert_close(m1["cameras"][1]["render_median"], m2["render_median"][1:])


def test_surfel_losses_and_densification_gradient_reach_the_parameters():
    m = _model(masked=False, use_rvq=True)
    m.init_rvq()
    vm, K = _cameras()
    kw = SurfelModel.loss_render_kwargs(100, 100, LOSS)
    assert kw["distloss"]
    colors, _, meta = m.render(vm[:1], K[:1], W, H, backend="torch", **kw)
    meta[C2DGSModel.GRAD_KEY].retain_grad()
    loss, logs = SurfelModel.extra_loss(meta, 100, 100, LOSS)
    assert logs["normal"] > 0 and logs["distort"] > 0
    (loss + colors.mean() + meta["rvq_loss"]).backward()
    for name in ("means", "quats", "scales", "opacities", "sh0"):
        assert float(m.splats[name].grad.abs().sum()) > 0, name
    assert float(meta[C2DGSModel.GRAD_KEY].grad.abs().sum()) > 0
    # the normal loss alone turns the rotations (through the R-VQ's straight-through code sums)
    m.zero_grad(set_to_none=True)
    _, _, meta = m.render(vm[:1], K[:1], W, H, backend="torch", **kw)
    l_n, _ = SurfelModel.extra_loss(meta, 100, 100, SurfelLossConfig(scene_type="object", dist_lambda=0.0))
    l_n.backward()
    assert float(m.splats["quats"].grad.abs().sum()) > 0


def test_depth_only_modes_and_geometry_renders(coded):
    from scenezip.splatting.geometry import render_depth_normals

    m = coded[0].quantized_copy()
    vm, K = _cameras()
    with torch.no_grad():
        _, _, meta = m.render(vm, K, W, H, backend="torch")
        ed, alpha, _ = m.render(vm, K, W, H, backend="torch", render_mode="ED")
    assert ed.shape == (2, H, W, 1)
    torch.testing.assert_close(ed, meta["render_depth"])
    cams = Cameras(vm, K, torch.full((2,), W), torch.full((2,), H))
    r = render_depth_normals(m, cams, backend="torch")
    hit = r["alpha"] > 0.5
    assert int(hit.sum()) > 0.3 * hit.numel()
    depth, normals = r["depth"][hit], r["normals"][hit]
    assert float((depth - 3.0).abs().mean()) < 0.05  # the plane is 3 units out (waves of 0.03)
    assert float(normals[:, 2].mean()) < -0.95  # world normals face the cameras (which look along +z)


# ---------------------------------------------------------------------------------------------- file
def test_scz_round_trip_is_bit_exact_and_marked_as_surfels(coded):
    m, meta, streams, path = coded
    assert meta["surfel"] is True
    scene = read_scz(path)
    assert scene.method == METHOD
    arrays = decode_streams(scene)
    assert set(arrays) == set(streams)
    for name, (arr, _) in streams.items():
        assert arrays[name].dtype == arr.dtype and np.array_equal(arrays[name], arr), name
    d = c2dgs_from_streams(arrays, scene.metadata, str(path))
    q = m.quantized_copy()
    assert type(d) is C2DGSModel and type(q) is C2DGSModel and d.frozen and d.is_surfel
    assert len(d) == N - N_MASKED
    vm, K = _cameras()
    with torch.no_grad():
        rd, ad, md = d.render(vm, K, W, H, backend="torch", depth_mode="median")
        rq, aq, mq = q.render(vm, K, W, H, backend="torch", depth_mode="median")
        r0, _, _ = m.render(vm, K, W, H, backend="torch")
    assert torch.equal(rd, rq) and torch.equal(ad, aq) and torch.equal(md["render_median"], mq["render_median"])
    assert float((rd - r0).abs().mean()) < 0.05  # quantization changes the picture only a little


def test_position_bits_follow_the_tangent_scales(coded):
    m, meta, _, _ = coded
    keep = m.splats["masks"] > 0
    tangent = torch.exp(m.splats["scales"][keep][:, :2]).detach().numpy()
    want = auto_position_bits(m.splats["means"][keep].detach().numpy(), tangent)
    assert meta["positions"]["bits"] == want < 16
    # the c3dgs rule reads the flat axis and asks for the maximum: what the override avoids
    c3 = C3DGSModel.from_gaussians(_surfels(), CFG, BOUNDS, backend="torch", rvq_codebook_size=16)
    assert c3.to_streams()[0]["positions"]["bits"] == 21
    assert m.position_bits is None  # restored after coding


def test_missing_surfel_marker_and_bad_metadata_raise(coded):
    _, _, _, path = coded
    scene = read_scz(path)
    arrays = decode_streams(scene)
    for edit in (lambda md: md.pop("surfel"), lambda md: md.__setitem__("surfel", False)):
        md = copy.deepcopy(scene.metadata)
        edit(md)
        with pytest.raises(SceneFileError, match=r"scene\.scz: c2dgs metadata must say surfel: true"):
            c2dgs_from_streams(arrays, md, str(path))
    md = copy.deepcopy(scene.metadata)
    md["n_gaussians"] += 1
    with pytest.raises(SceneFileError, match=r"scene\.scz: c2dgs "):  # the c3dgs checks, named for this file
        c2dgs_from_streams(arrays, md, str(path))
    with pytest.raises(SceneFileError, match="surfel"):
        c2dgs_from_streams(arrays, None, str(path))


def test_model_dict_round_trip_keeps_the_class(tmp_path):
    m = _model()
    path = m.save(tmp_path / "model.pt")
    data = torch.load(path, weights_only=False)
    assert data["format"] == "scenezip.c2dgs_model"
    back = C2DGSModel.from_dict(data)
    assert type(back) is C2DGSModel
    for k, v in m.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    with pytest.raises(SceneFileError, match="not a scenezip c2dgs model"):
        C2DGSModel.from_dict(C3DGSModel.from_gaussians(_surfels(), CFG, BOUNDS, backend="torch").to_dict())


# ---------------------------------------------------------------------------------------------- export
def test_to_plain_bakes_the_field_into_flat_surfels(tmp_path):
    from scenezip.cli_export import export_model
    from scenezip.scenes.ply import read_ply
    from scenezip.splatting.plain import to_plain

    m = _model().quantized_copy()
    p = to_plain(m)  # the generic entry point must pick the model's own to_plain
    assert p.surfel and len(p) == N - N_MASKED and p.sh_degree == 3 and p.fit_error < 0.05
    assert np.allclose(p.scales[:, 2], math.log(FLAT_SCALE))
    # the baked SH surfels render like the model
    s = SurfelModel(*(torch.from_numpy(x) for x in (p.means, p.quats, p.scales, p.opacities, p.sh0, p.shN)))
    vm, K = _cameras()
    with torch.no_grad():
        r_model, _, _ = m.render(vm, K, W, H, backend="torch")
        r_plain, _, _ = s.render(vm, K, W, H, backend="torch")
    assert float((r_model - r_plain).abs().mean()) < 0.01
    path, plain = export_model(m, tmp_path / "out.ply", "ply")
    back = read_ply(path)
    assert back["means"].shape == (N - N_MASKED, 3) and plain.surfel


# ---------------------------------------------------------------------------------------------- end to end
def test_train_write_decode_render_export(tmp_path):
    """The shared trainer with C2DGSRecipe on a 16 px procedural scene; the file it codes to decodes to the
    model the run scored, and every consumer (loader, RGB / depth / normal renders, PLY export) takes it."""
    from scenezip import cli, scene as scene_mod
    from scenezip.cli_export import export_model
    from scenezip.cli_mesh import render_depth_normal_image
    from scenezip.scenes.loader import load_dataset
    from scenezip.scenes.procedural import write_procedural_scene
    from scenezip.splatting import recipes
    from scenezip.splatting.config import DensifyConfig
    from scenezip.splatting.geometry import render_depth_normals
    from scenezip.splatting.trainer import evaluate, train

    # the real registrations (the recipe registers itself; the CLI and the loader name the method)
    assert cli.TRAIN_METHODS[METHOD] is C2DGSConfig
    assert scene_mod.LOADERS[METHOD] == ("scenezip.splatting.c2dgs", "c2dgs_from_streams")
    assert type(recipes.recipe_for(C2DGSConfig(data=tmp_path))) is C2DGSRecipe

    data = write_procedural_scene(tmp_path / "data", n_train=6, n_val=1, n_test=2, width=16, height=16, seed=0)
    ds = load_dataset(data, n_random_points=300, seed=0, background=(1.0, 1.0, 1.0))
    steps = 60
    cfg = C2DGSConfig(data=data, out=tmp_path / "run", steps=steps, progress=False, checkpoint_every=0,
                      backend="torch", device="cpu", densify=DensifyConfig(max_gaussians=400), color_levels=4,
                      color_log2_hashmap_size=8, color_view_sh_degree=1, rvq_stages=2, rvq_codebook_size=16,
                      rvq_start=26_000, surfel=SurfelLossConfig(normal_start=15_000, dist_start=15_000))  # fmt: skip
    assert cfg.lr_quats == 1e-2 and cfg.out.name == "run"
    result = train(cfg, dataset=ds)
    assert type(result.model) is C2DGSModel and result.metrics["method"] == METHOD
    init = C2DGSRecipe(cfg).init_model(ds, torch.device("cpu"))
    before = evaluate(init, ds, "test", background=(1.0, 1.0, 1.0), backend="torch")["psnr"]
    assert result.metrics["psnr"] > before + 1.0  # it learned, through R-VQ, pruning and quantization

    meta, streams = c2dgs_to_streams(result.model, cfg.hash_zero_threshold)
    path = tmp_path / "scene.scz"
    write_scz(path, METHOD, {**scene_mod.scene_metadata(ds), **meta}, streams)
    loaded = scene_mod.load_scene(path)
    assert loaded.method == METHOD and type(loaded.model) is C2DGSModel and loaded.n_primitives == result.n_gaussians
    m = evaluate(loaded.model, ds, "test", background=(1.0, 1.0, 1.0), backend="torch")
    assert abs(m["psnr"] - result.metrics["psnr"]) < 1e-3  # the file is the model the run scored

    cam = ds.cameras[ds.indices("test")[:1]]
    rgb, alpha = loaded.render(cam.viewmats, cam.Ks, 16, 16, backgrounds=torch.ones(1, 3), backend="torch")
    assert rgb.shape == (1, 16, 16, 3) and float(alpha.mean()) > 0.05
    geo = render_depth_normals(loaded.model, cam, backend="torch")
    hit = geo["alpha"] > 0
    assert bool(hit.any()) and bool((geo["depth"][hit] > 0).all())
    torch.testing.assert_close(geo["normals"][hit].norm(dim=-1), torch.ones(int(hit.sum())))
    for mode in ("depth", "normal"):
        img = render_depth_normal_image(loaded.model, cam, mode, backend="torch")
        assert img.shape == (16, 16, 3) and img.dtype == np.uint8
    ply, plain = export_model(loaded.model, tmp_path / "scene.ply", "ply", sh_degree=1)
    assert plain.surfel and len(plain) == loaded.n_primitives and ply.stat().st_size > 0
