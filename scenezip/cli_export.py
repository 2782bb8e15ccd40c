"""``scenezip export``: decode a Gaussian scene to plain splats and write a viewer format; and the PLY
import behind ``scenezip compress scene.ply``.

Written by hand as glue: :func:`scenezip.splatting.plain.to_plain` decodes (baking a colour field into SH
where the model has one), :mod:`scenezip.scenes.splat_formats` writes the bytes (atomically: temporary
name, then rename). The integrator registers :class:`ExportArgs` / :func:`cmd_export` in
``scenezip/cli.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import tyro

from scenezip.errors import ScenezipError

SUFFIXES = {"ply": ".ply", "splat": ".splat", "spz": ".spz", "sog": ".sog", "glb": ".glb"}


@dataclass
class ExportArgs:
    """Export a Gaussian scene (.scz, or an INRIA .ply) to a viewer format: ply, splat, spz, sog or glb."""

    file: tyro.conf.Positional[Path]
    """The .scz file (3dgs, c3dgs, 2dgs, c2dgs) or an INRIA-layout .ply."""
    format: Literal["ply", "splat", "spz", "sog", "glb"] = "ply"
    """Output format: INRIA 3DGS PLY, antimatter15 .splat, Niantic SPZ (v3), PlayCanvas SOG (v2) or glTF
    KHR_gaussian_splatting (.glb)."""
    out: Annotated[Optional[Path], tyro.conf.arg(aliases=("-o",))] = None
    """Output file; default: FILE with the format's suffix."""
    sh_degree: Optional[int] = None
    """SH degree of the export (0..3); default: the model's own, 3 for colours baked from a neural field."""
    n_dirs: int = 64
    """View directions per Gaussian for the least-squares SH bake of a neural colour field."""
    spz_version: Literal[2, 3] = 3
    """SPZ version to write (3: smallest-three rotations; 2 for older readers)."""


def import_ply_model(path: str | os.PathLike, device: Any = "cpu"):
    """An INRIA-layout 3DGS PLY (3DGS, gsplat, nerfstudio, SuperSplat...; SH degree 0..3) as a
    :class:`~scenezip.splatting.gaussians.GaussianModel`; SceneFileError for a malformed file."""
    import torch

    from scenezip.scenes.ply import read_ply
    from scenezip.splatting.gaussians import GaussianModel

    a = read_ply(path)
    t = {k: torch.from_numpy(v) for k, v in a.items()}
    return GaussianModel(t["means"], t["quats"], t["scales"], t["opacities"], t["sh0"], t["shN"]).to(device)


def export_model(model: Any, out: str | os.PathLike, fmt: str, sh_degree: Optional[int] = None, n_dirs: int = 64,
                 **options: Any):  # fmt: skip
    """Decode ``model`` with :func:`to_plain` and write it to ``out`` in ``fmt``; returns ``(path, plain)``.

    Surfel models get a finite, thin third scale (:func:`flatten_surfels`) so 3DGS viewers draw discs."""
    import dataclasses

    from scenezip.scenes.splat_formats import flatten_surfels, write_splats
    from scenezip.splatting.plain import to_plain

    try:
        plain = to_plain(model, sh_degree=sh_degree, n_dirs=n_dirs)
    except ValueError as e:
        raise ScenezipError(str(e)) from None
    if plain.surfel:
        plain = dataclasses.replace(plain, scales=flatten_surfels(plain.scales))
    return write_splats(out, plain.arrays(), fmt, **options), plain


def cmd_export(args: ExportArgs) -> None:
    from scenezip.scene import load_scene

    if args.sh_degree is not None and not 0 <= args.sh_degree <= 3:
        raise ScenezipError(f"--sh-degree must be in 0..3, got {args.sh_degree}")
    if args.n_dirs < 1:
        raise ScenezipError(f"--n-dirs must be >= 1, got {args.n_dirs}")
    out = args.out if args.out is not None else args.file.with_suffix(SUFFIXES[args.format])
    if out.resolve() == args.file.resolve():
        raise ScenezipError(f"{out}: the output would overwrite the input; pass -o")
    if args.file.suffix.lower() == ".ply":
        model, method = import_ply_model(args.file), "3dgs (PLY)"
    else:
        scene = load_scene(args.file)
        model, method = scene.model, scene.method
    options = {"version": args.spz_version} if args.format == "spz" else {}
    path, plain = export_model(model, out, args.format, args.sh_degree, args.n_dirs, **options)
    print(f"wrote {path} ({args.format}, {len(plain):,} splats, SH degree {plain.sh_degree}, "
          f"{path.stat().st_size:,} bytes) from {method}")  # fmt: skip
    if plain.fit_error is not None:
        print(f"SH bake: RMS colour error {plain.fit_error:.4f} over {args.n_dirs} view directions per Gaussian")


__all__ = ["ExportArgs", "cmd_export", "export_model", "import_ply_model"]
