"""The ``scenezip`` command line. Each command is a function whose typed, documented arguments tyro
turns into options, so ``--help`` documents every knob. Errors a user can cause end in one line."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, Optional

import numpy as np
import torch

import tyro

from scenezip.cli_compress import CompressArgs, cmd_compress
from scenezip.cli_export import ExportArgs, cmd_export
from scenezip.cli_mesh import MeshArgs, cmd_mesh
from scenezip.demo import DemoArgs, cmd_demo
from scenezip.errors import ScenezipError
from scenezip.fields.ngp_config import CNGPConfig, NGPConfig
from scenezip.viewer import ViewArgs, cmd_view
from scenezip.splatting.c2dgs import C2DGSConfig
from scenezip.splatting.config import C3DGSConfig, SurfelTrainConfig, TrainConfig


@dataclass
class DataArgs:
    """Load a capture (Blender, nerfstudio/instant-ngp, COLMAP or LLFF) and print a summary."""

    path: tyro.conf.Positional[Path]
    """Capture folder (or a transforms.json inside one)."""
    downscale: int = 1
    """Integer image downscale factor applied at load."""
    test_every: int = 8
    """Every N-th image (after sorting by name) is a test image, unless the dataset ships a split."""


def cmd_data(args: DataArgs) -> None:
    from scenezip.scenes.loader import load_dataset
    from scenezip.scenes.summary import format_summary

    ds = load_dataset(args.path, downscale=args.downscale, test_every=args.test_every)
    print(format_summary(ds))


# Methods `scenezip train --method NAME` knows: the config dataclass each one is trained from.
TRAIN_METHODS: dict[str, type] = {
    "3dgs": TrainConfig, "c3dgs": C3DGSConfig, "2dgs": SurfelTrainConfig, "c2dgs": C2DGSConfig, "ngp": NGPConfig,
    "cngp": CNGPConfig,
}  # fmt: skip


class TrainArgs:
    """Train a scene representation on a capture; writes checkpoints, scene.scz and metrics.json."""


def _split_method(argv: list[str]) -> tuple[str, list[str]]:
    """Take ``--method NAME`` (or ``--method=NAME``) out of ``argv``; the default is 3dgs."""
    method, rest, i = "3dgs", [], 0
    while i < len(argv):
        a = argv[i]
        if a == "--method":
            if i + 1 >= len(argv):
                raise ScenezipError(f"--method needs a value: one of {', '.join(TRAIN_METHODS)}")
            method, i = argv[i + 1], i + 2
            continue
        if a.startswith("--method="):
            method = a.split("=", 1)[1]
        else:
            rest.append(a)
        i += 1
    if method not in TRAIN_METHODS:
        raise ScenezipError(f"unknown method {method!r}; choose one of {', '.join(TRAIN_METHODS)}")
    return method, rest


def _parse_train(argv: list[str]):
    method, rest = _split_method(argv)
    cls = TRAIN_METHODS[method]
    doc = (
        f"{(cls.__doc__ or '').strip()}\n\n--method {{{','.join(TRAIN_METHODS)}}} picks the method (default 3dgs; "
        f"this help is for --method {method}: run 'scenezip train --method NAME --help' for another)."
    )
    return tyro.cli(cls, args=rest, prog="scenezip train", description=doc)


def method_of(config: object) -> str:
    """The method name of a training config (by its exact class)."""
    for name, cls in TRAIN_METHODS.items():
        if type(config) is cls:
            return name
    raise ScenezipError(f"no method trains from {type(config).__name__}")


def gaussian_streams(method: str, model, config=None) -> tuple[dict, dict]:
    """``(metadata, streams)`` of a trained Gaussian model for its method's .scz contract."""
    if method == "3dgs":
        from scenezip.splatting.streams import gaussians_to_streams

        return gaussians_to_streams(model)
    if method == "2dgs":
        from scenezip.splatting.surfels import surfels_to_streams

        return surfels_to_streams(model)
    if method in ("c3dgs", "c2dgs"):  # C2DGSModel.to_streams adds the surfel marker
        threshold = getattr(config, "hash_zero_threshold", None)
        return model.to_streams() if threshold is None else model.to_streams(threshold)
    raise ScenezipError(f"method {method!r} has no Gaussian stream contract")


def _update_metrics_file(path: Path, **entries) -> None:
    import json
    import os

    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(entries)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def train_and_write(config, dataset=None):
    """Train ``config``'s method and write ``scene.scz`` into its output folder.

    Returns ``(result, scz_path, nbytes)``; ``metrics.json`` gains ``size_bytes``."""
    from scenezip.scene import scene_metadata
    from scenezip.scenes.loader import load_dataset
    from scenezip.scenes.scz import write_scz
    from scenezip.splatting.trainer import train

    method = method_of(config)
    if dataset is None:
        background = tuple(config.background) if config.background is not None else (1.0, 1.0, 1.0)
        dataset = load_dataset(config.data, downscale=config.downscale, test_every=config.test_every,
                               n_random_points=getattr(config, "random_points", 1), seed=config.seed,
                               background=background)  # fmt: skip
    if method in ("ngp", "cngp"):
        from scenezip.fields.ngp_trainer import train_ngp

        result = train_ngp(config, dataset=dataset)
        meta, streams = result.to_streams()
    else:
        result = train(config, dataset=dataset)
        meta, streams = gaussian_streams(method, result.model, config)
    scz = result.out_dir / "scene.scz"
    nbytes = write_scz(scz, method, {**scene_metadata(dataset), **meta}, streams)
    _update_metrics_file(result.metrics_path, size_bytes=nbytes)
    result.metrics["size_bytes"] = nbytes
    return result, scz, nbytes


def cmd_train(args) -> None:
    result, scz, nbytes = train_and_write(args)
    m = result.metrics
    count = f"{result.n_gaussians:,} Gaussians" if hasattr(result, "n_gaussians") else f"{result.n_primitives:,} hash entries"
    print(f"{method_of(args)}: {count}, {result.steps} steps in {result.train_s:.1f} s; "
          f"test PSNR {m.get('psnr', float('nan')):.2f} dB, SSIM {m.get('ssim', float('nan')):.4f}")  # fmt: skip
    print(f"wrote {scz} ({nbytes:,} bytes) and {result.metrics_path}")


@dataclass
class InfoArgs:
    """Print a .scz file's method, metadata and the size of every stream."""

    file: tyro.conf.Positional[Path]
    """The .scz file."""


def cmd_info(args: InfoArgs) -> None:
    from scenezip.scenes.scz import scz_info

    print(scz_info(args.file))


@dataclass
class RenderArgs:
    """Render a .scz file from a capture's cameras (PNG images) or along an orbit (a video)."""

    file: tyro.conf.Positional[Path]
    """The .scz file."""
    data: Optional[Path] = None
    """Capture whose cameras to render (the one the scene was trained on); optional with --orbit."""
    out: Path = Path("renders")
    """Output: a folder for PNG images (one per camera, named after the capture's images), or with --orbit
    a video file (.mp4 or .gif)."""
    split: Literal["train", "val", "test", "all"] = "test"
    """Which cameras of the capture to render."""
    mode: Literal["rgb", "depth", "normal"] = "rgb"
    """What to render: colour, depth (colour-mapped) or normals (world space, (n + 1) / 2) of the capture's cameras."""
    orbit: bool = False
    """Render a video along an orbit fitted to the capture's cameras (or around the stored scene bounds)."""
    frames: int = 120
    """Frames of the orbit video."""
    fps: int = 30
    """Frame rate of the orbit video."""
    downscale: Optional[int] = None
    """Image downscale factor; default: the one that matches the image size stored in the file."""
    backend: Literal["auto", "torch", "cuda"] = "auto"
    """Rasterizer backend."""


def _open_for_rendering(file: Path, data: Path, downscale: Optional[int], backend: str):
    from scenezip._backend import resolve_backend
    from scenezip.scene import load_scene
    from scenezip.scenes.loader import load_dataset

    device = "cuda" if resolve_backend(backend) == "cuda" else "cpu"
    scene = load_scene(file, device=device)
    meta = scene.metadata.get("scene", {})
    bg = meta.get("background")
    if downscale is None:
        native = load_dataset(data, n_random_points=1)
        stored = meta.get("image_size")
        w = int(native.cameras.widths[0])
        downscale = max(1, round(w / stored[0])) if stored else 1
    ds = load_dataset(data, downscale=downscale, n_random_points=1,
                      background=tuple(bg) if bg else (1.0, 1.0, 1.0))  # fmt: skip
    if not bg:  # a file without scene facts (e.g. compressed from a PLY): render on the capture's background
        bg = [float(c) for c in ds.background] if ds.background is not None else [0.0, 0.0, 0.0]
    background = torch.tensor(bg, dtype=torch.float32, device=device)
    return scene, ds, background, device


def _render_view(scene, ds, i: int, background, device, backend: str):
    cams = ds.cameras[int(i)].to(device)
    rgb, _ = scene.render(cams.viewmats, cams.Ks, int(cams.widths[0]), int(cams.heights[0]),
                          backgrounds=background[None], backend=backend)  # fmt: skip
    return rgb[0]


def _to_uint8(rgb) -> np.ndarray:
    return (rgb.detach().cpu().numpy().clip(0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def render_orbit(file: Path, out: Path, data: Optional[Path] = None, frames: int = 120, fps: int = 30,
                 downscale: Optional[int] = None, backend: str = "auto", progress: bool = True) -> Path:  # fmt: skip
    """Render ``frames`` views along an orbit (fitted to ``data``'s cameras, else around the stored bounds)
    and write them to the video ``out``."""
    from tqdm.auto import tqdm

    from scenezip._backend import resolve_backend
    from scenezip.render.orbit import orbit_from_bounds, orbit_from_cameras, pinhole, write_video
    from scenezip.scene import load_scene

    if out.suffix.lower() not in (".mp4", ".gif"):
        raise ScenezipError(f"{out}: an orbit video must end in .mp4 or .gif")
    if frames < 1 or fps < 1:
        raise ScenezipError(f"frames and fps must be >= 1, got {frames} and {fps}")
    if data is not None:
        scene, ds, background, device = _open_for_rendering(file, data, downscale, backend)
        train_ids = ds.indices("train")
        cams = ds.cameras[train_ids if len(train_ids) else ds.indices("all")]
        viewmats = orbit_from_cameras(cams.viewmats, frames)
        K, w, h = cams.Ks[0], int(cams.widths[0]), int(cams.heights[0])
    else:
        device = "cuda" if resolve_backend(backend) == "cuda" else "cpu"
        scene = load_scene(file, device=device)
        meta = scene.metadata.get("scene", {})
        if "bounds" not in meta:
            raise ScenezipError(f"{file}: the file stores no scene bounds; pass --data for an orbit")
        w, h = (int(v) for v in meta.get("image_size") or (256, 256))
        viewmats = orbit_from_bounds(np.asarray(meta["bounds"], dtype=float), frames)
        K = pinhole(w, h)
        bg = meta.get("background")
        background = torch.tensor(bg if bg else [0.0, 0.0, 0.0], dtype=torch.float32, device=device)
    out.parent.mkdir(parents=True, exist_ok=True)
    images = []
    for i in tqdm(range(frames), desc="orbit", unit="frame", disable=not progress):
        rgb, _ = scene.render(viewmats[i : i + 1].to(device), K[None].to(device), w, h,
                              backgrounds=background[None], backend=backend)  # fmt: skip
        images.append(_to_uint8(rgb[0]))
    return write_video(out, np.stack(images), fps=fps)


def cmd_render(args: RenderArgs) -> None:
    import imageio.v3 as iio
    from tqdm.auto import tqdm

    if args.orbit:
        path = render_orbit(args.file, args.out, args.data, args.frames, args.fps, args.downscale, args.backend)
        print(f"wrote {path} ({args.frames} frames at {args.fps} fps)")
        return
    if args.data is None:
        raise ScenezipError("--data is needed to render a capture's cameras (or use --orbit)")
    scene, ds, background, device = _open_for_rendering(args.file, args.data, args.downscale, args.backend)
    ids = ds.indices(args.split)
    if args.mode != "rgb":
        from scenezip.cli_mesh import write_geometry_renders

        paths = write_geometry_renders(scene, ds, ids, args.mode, args.out, args.backend)
        print(f"wrote {len(paths)} {args.mode} images to {args.out}")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    for i in tqdm(ids, desc=f"render {args.split}", unit="view"):
        rgb = _render_view(scene, ds, int(i), background, device, args.backend)
        iio.imwrite(args.out / (Path(ds.image_paths[int(i)]).stem + ".png"), _to_uint8(rgb))
    print(f"wrote {len(ids)} images to {args.out}")


@dataclass
class EvalArgs:
    """Evaluate a .scz file on a capture split: PSNR, SSIM, LPIPS (or why it is unavailable), size, count, FPS."""

    file: tyro.conf.Positional[Path]
    """The .scz file."""
    data: tyro.conf.Positional[Path]
    """Capture the scene was trained on."""
    split: Literal["train", "val", "test", "all"] = "test"
    """Which images to compare against."""
    downscale: Optional[int] = None
    """Image downscale factor; default: the one that matches the image size stored in the file."""
    backend: Literal["auto", "torch", "cuda"] = "auto"
    """Rasterizer backend."""
    lpips: bool = True
    """Compute LPIPS (VGG) when its weights are on this machine; otherwise it is reported unavailable."""
    json: Optional[Path] = None
    """Also write the figures to this JSON file."""


def cmd_eval(args: EvalArgs) -> None:
    import json
    import time

    from tqdm.auto import tqdm

    from scenezip.render.metrics import lpips, lpips_available, psnr, ssim

    scene, ds, background, device = _open_for_rendering(args.file, args.data, args.downscale, args.backend)
    use_lpips, note = lpips_available() if args.lpips else (False, "disabled by --no-lpips")
    rows, render_s = [], 0.0
    for i in tqdm(ds.indices(args.split), desc=f"eval {args.split}", unit="view"):
        t0 = time.perf_counter()
        rgb = _render_view(scene, ds, int(i), background, device, args.backend)
        if device == "cuda":
            torch.cuda.synchronize()
        render_s += time.perf_counter() - t0
        ref = ds.image(int(i)).to(device)
        row = {"psnr": float(psnr(rgb, ref)), "ssim": float(ssim(rgb, ref))}
        if use_lpips:
            row["lpips"] = float(lpips(rgb, ref))
        rows.append(row)
    if not rows:
        raise ScenezipError(f"{args.data}: split {args.split!r} has no images")
    n = len(rows)
    result = {
        "file": str(args.file),
        "method": scene.method,
        "split": args.split,
        "n_images": n,
        "resolution": [int(ds.cameras.widths[0]), int(ds.cameras.heights[0])],
        "psnr": sum(r["psnr"] for r in rows) / n,
        "ssim": sum(r["ssim"] for r in rows) / n,
        "lpips": sum(r["lpips"] for r in rows) / n if use_lpips else None,
        "lpips_note": note,
        "size_bytes": scene.size_bytes,
        "n_primitives": scene.n_primitives,
        "render_fps": n / render_s if render_s > 0 else None,
        "device": device,
    }
    lp = f"{result['lpips']:.4f}" if use_lpips else f"unavailable ({note})"
    print(f"{scene.method} on {args.split} ({n} images at {result['resolution'][0]}x{result['resolution'][1]}): "
          f"PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}, LPIPS {lp}")  # fmt: skip
    print(f"size {scene.size_bytes:,} bytes, {scene.n_primitives:,} primitives, "
          f"render {result['render_fps']:.2f} FPS on {device}")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2))


class ImageArgsDoc:
    """Code a single image with 2D Gaussians: 'scenezip image encode IN -o OUT.scz --bpp B', 'image decode'."""


COMMANDS: dict[str, tuple[type, Callable[[object], None]]] = {
    "data": (DataArgs, cmd_data),
    "train": (TrainArgs, cmd_train),
    "compress": (CompressArgs, cmd_compress),
    "render": (RenderArgs, cmd_render),
    "eval": (EvalArgs, cmd_eval),
    "info": (InfoArgs, cmd_info),
    "export": (ExportArgs, cmd_export),
    "mesh": (MeshArgs, cmd_mesh),
    "view": (ViewArgs, cmd_view),
    "image": (ImageArgsDoc, None),
    "demo": (DemoArgs, cmd_demo),
}

# Commands whose arguments depend on an option (train: --method) parse themselves.
PARSERS: dict[str, Callable[[list[str]], object]] = {"train": _parse_train}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: scenezip COMMAND [OPTIONS]",
        "",
        "scenezip: train, compress, render and export neural scene representations.",
        "",
        "commands:",
    ]
    for name, (cls, _) in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {(cls.__doc__ or '').strip().splitlines()[0]}")
    lines += ["", "Run 'scenezip COMMAND --help' for the options of a command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``scenezip`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from scenezip import __version__

        print(f"scenezip {__version__}")
        return 0
    name = argv[0]
    if name == "image":  # subcommands (encode, decode) of their own
        from scenezip.cli_image import image_main

        return image_main(argv[1:])
    if name not in COMMANDS:
        print(f"scenezip: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    cls, fn = COMMANDS[name]
    # notices such as the backend fallback print as one plain line, not with the warning's source line
    warnings.showwarning = lambda message, *_a, **_k: print(message, file=sys.stderr)
    try:
        if name in PARSERS:
            args = PARSERS[name](argv[1:])
        else:
            args = tyro.cli(cls, args=argv[1:], prog=f"scenezip {name}", description=cls.__doc__)
        fn(args)
    except ScenezipError as e:
        print(f"scenezip {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"scenezip {name}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
