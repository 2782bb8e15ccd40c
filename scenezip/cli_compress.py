"""``scenezip compress``: a trained scene (ours or another tool's PLY) into a compact c3dgs ``.scz`` file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Optional

import tyro

from scenezip.errors import ScenezipError

# Share of the training views' blend weight whose Gaussians --prune-weight drops by default with --data. On lego
# (100 px, a 40k-Gaussian 3dgs run at 30.82 dB, guided distillation, 3 + 3 R-VQ stages): 0.005 -> 355 kB at 30.56 dB,
# 0.02 -> 312 kB at 30.47 dB (benchmarks/results/prune_weight_lego.md).
DEFAULT_PRUNE_WEIGHT = 0.005


@dataclass
class CompressArgs:
    """Compress a trained scene (run folder, checkpoint, model file or INRIA-layout PLY) into a c3dgs .scz file."""

    source: tyro.conf.Positional[Path]
    """A training run folder, a ckpt_XXXXX.pt / gaussians.pt / model.pt file, or a 3DGS PLY from any tool."""
    out: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("scene.scz")
    """The .scz file to write."""
    data: Optional[Path] = None
    """Capture to fine-tune on after converting a 3dgs model (optional); also gives the file its scene facts."""
    steps: int = 0
    """Fine-tuning steps on --data (0: none; --data then only gives the file its scene facts). Measured on lego
    (100 px, a 37k-Gaussian PLY at 30.82 dB): no fine-tuning 504,573 B at 30.49 dB; 500 steps 625,409 B at 29.55 dB,
    so fine-tuning is opt-in until it is fixed."""
    downscale: int = 1
    """Image downscale factor of --data."""
    distill_steps: int = 1000
    """Steps fitting the hash-grid colour field to a 3dgs model's SH colours."""
    prune_opacity: float = 0.005
    """Drop Gaussians of a 3dgs model with opacity below this before converting."""
    prune_weight: Optional[float] = None
    """Drop the Gaussians of a 3dgs model that contribute least to the training views of --data, as many as together
    hold at most this fraction of all blend weight (splatting/importance.py); 0 keeps them. None: 0.005 with --data
    (lego, 100 px: 40k -> 31k Gaussians, the float model 30.82 -> 30.81 dB), 0 without."""
    distill_from_views: bool = True
    """With --data: draw the colour distillation's samples as the training views see the scene (directions from
    the training cameras, Gaussians in proportion to their blend weight) instead of uniformly."""
    color_log2_hashmap_size: Optional[int] = None
    """log2 entries per level of the colour field (None: grows with the Gaussian count, 2^10..2^19)."""
    color_dc: bool = True
    """Keep each Gaussian's DC colour (R-VQ'd, 3 stages) as a base colour and distil only the view-dependent rest
    into the colour field; off: the field learns all colour (Compact-3DGS)."""
    rvq_stages: int = 3
    """R-VQ stages for scale (and rotation, unless --rot-stages). On lego (100 px, scales alone quantized): 6 stages
    31.7 bits a Gaussian, 3 stages 16.4 bits for -0.011 dB."""
    rot_stages: Optional[int] = 3
    """R-VQ stages for rotation (None: --rvq-stages). On lego: 4 stages 21.4 bits a Gaussian, 3 stages 16.2 bits for
    -0.008 dB more."""
    rvq_codebook_size: int = 64
    """Codes per R-VQ stage."""
    hash_rate_lambda: Optional[float] = None
    """Weight of the colour field's hash-table bits (per parameter) against the colour error while distilling a
    3dgs model; larger gives a smaller file, 0 trains the table without its codec; None: with --color-dc 2e-4 when
    the distillation is guided by --data's views, else 1e-4; 3e-3 without --color-dc."""
    finetune_hash_rate_lambda: float = 0.0
    """Weight of the hash table's bits in the fine-tuning loss (with --data). The distillation already set the
    table's rate; the training default 3e-2 shrank the lego table and ended 0.3 dB below no fine-tuning."""
    hash_zero_threshold: float = 0.1
    """Only when hash_rate_lambda is 0: hash-table values with |v| at or below this are stored as 0."""
    backend: Literal["auto", "torch", "cuda"] = "auto"
    """Rasterizer backend for the blend weights of --data and for fine-tuning (cuda: the model is loaded onto
    the GPU)."""
    seed: int = 0
    """Seed of distillation, k-means and fine-tuning."""
    progress: bool = True
    """Show progress bars."""


def _stored_scene_meta(source: Path) -> dict:
    """The ``scene`` metadata of the scene.scz next to a run's files, if there is one."""
    from scenezip.scenes.scz import read_scz

    folder = source if source.is_dir() else source.parent
    if (folder / "scene.scz").is_file():
        try:
            meta = read_scz(folder / "scene.scz").metadata
            return {"scene": meta["scene"]} if "scene" in meta else {}
        except ScenezipError:
            return {}
    return {}


def compress_scene(args: CompressArgs) -> dict:
    """Do the work of ``scenezip compress``; returns a report (counts, sizes, distillation error)."""
    import tempfile

    from scenezip.scene import scene_metadata
    from scenezip.scenes.scz import write_scz
    from scenezip.splatting.c3dgs import C3DGSModel
    from scenezip.splatting.compress import auto_color_config, gaussians_to_c3dgs, load_trained, view_guidance
    from scenezip.splatting.config import C3DGSConfig, DensifyConfig
    from scenezip.splatting.gaussians import GaussianModel

    if args.out.suffix.lower() != ".scz":
        raise ScenezipError(f"{args.out}: the output must be a .scz file")
    if args.prune_weight is not None and not 0.0 <= args.prune_weight < 1.0:
        raise ScenezipError(f"--prune-weight must be in [0, 1), got {args.prune_weight}")
    if args.prune_weight and args.data is None:
        raise ScenezipError("--prune-weight needs --data (the training views the weights are measured on)")
    prune_weight = args.prune_weight if args.prune_weight is not None else DEFAULT_PRUNE_WEIGHT if args.data else 0.0
    from scenezip._backend import resolve_backend

    # the model lives where the rasterizer runs: gsplat (backend cuda, or auto on a GPU) needs CUDA tensors
    model = load_trained(args.source, device="cuda" if resolve_backend(args.backend) == "cuda" else "cpu")
    meta = _stored_scene_meta(args.source)
    report: dict = {"source": str(args.source)}
    ds = None
    if args.data is not None:
        from scenezip.scenes.loader import load_dataset

        ds = load_dataset(args.data, downscale=args.downscale, n_random_points=2, seed=args.seed)
        meta = scene_metadata(ds)
    if isinstance(model, GaussianModel):
        in_bytes = sum(p.numel() * 4 for p in model.splats.values())
        if args.source.is_file() and args.source.suffix.lower() == ".ply":
            in_bytes = args.source.stat().st_size
        report.update(n_input=len(model), input_bytes=in_bytes)
        model, weights, origins = view_guidance(model, ds, prune_weight, args.distill_from_views, args.backend,
                                                args.progress)  # fmt: skip
        if prune_weight > 0:
            report["n_after_weight_prune"] = len(model)
        cfg = auto_color_config(len(model), log2_hashmap_size=args.color_log2_hashmap_size, color_dc=args.color_dc)
        model, conv = gaussians_to_c3dgs(model, cfg, args.prune_opacity, args.distill_steps, args.rvq_stages,
                                         args.rvq_codebook_size, args.seed, args.progress,
                                         hash_rate_lambda=args.hash_rate_lambda, color_dc=args.color_dc,
                                         rot_stages=args.rot_stages, gaussian_weights=weights,
                                         view_origins=origins)  # fmt: skip
        report.update(conv)
        print(f"converted {report['n_input']:,} Gaussians ({conv['n_kept']:,} above the opacity floor); colour "
              f"field distilled from SH with RMS error {conv['distill_rms']:.4f}")  # fmt: skip
        if ds is not None and args.steps > 0:
            from scenezip.splatting.trainer import train

            config = C3DGSConfig(
                data=args.data, recipe="joint", steps=args.steps, downscale=args.downscale,
                densify=DensifyConfig(enabled=False),
                lr_means=1.6e-5, rvq_start=15_000, checkpoint_every=0, keep_checkpoints=1, backend=args.backend,
                seed=args.seed, progress=args.progress, hash_zero_threshold=args.hash_zero_threshold,
                hash_rate_lambda=args.finetune_hash_rate_lambda,
            )  # fmt: skip
            with tempfile.TemporaryDirectory() as tmp:
                config.out = Path(tmp)
                result = train(config, dataset=ds, init_model=model)
            model = result.model.cpu()
            report["finetune_psnr"] = result.metrics["psnr"]
            print(f"fine-tuned {args.steps} steps: {args.data} test PSNR {result.metrics['psnr']:.2f} dB "
                  f"({result.n_gaussians:,} Gaussians)")  # fmt: skip
    elif isinstance(model, C3DGSModel):
        report.update(n_input=len(model), input_bytes=None)
        if model.frozen:
            raise ScenezipError(f"{args.source}: this model is already post-processed; its .scz is the compressed file")
    else:
        raise ScenezipError(f"{args.source}: cannot compress a {type(model).__name__}")
    streams_meta, streams = model.to_streams(args.hash_zero_threshold)
    nbytes = write_scz(args.out, "c3dgs", {**meta, **streams_meta}, streams)
    report.update(n_gaussians=streams_meta["n_gaussians"], size_bytes=nbytes)
    return report


def cmd_compress(args: CompressArgs) -> None:
    r = compress_scene(args)
    ratio = (f", {r['input_bytes'] / r['size_bytes']:.1f}x smaller than its {r['input_bytes']:,} bytes"
             if r.get("input_bytes") else "")  # fmt: skip
    print(f"wrote {args.out}: {r['n_gaussians']:,} Gaussians in {r['size_bytes']:,} bytes{ratio}")
