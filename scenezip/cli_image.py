"""``scenezip image encode`` / ``scenezip image decode``: the 2D Gaussian image codec on the command line.

Written by hand in the style of ``scenezip/cli.py``: one dataclass per subcommand, one docstring per
field, parsed by tyro so ``--help`` documents every knob. PNG and JPEG inputs are read with Pillow;
RGBA, grey and palette images are converted to 8-bit RGB with a one-line note saying so; 16-bit
images are scaled to 8 bits. Output PNGs are 8-bit RGB. Errors a user can cause (missing, unreadable
or unsupported input, a bad ``.scz`` file, an unwritable output) end in one line
``scenezip image: error: ...`` and exit status 2; outputs are written to a temporary name in the
target folder and renamed, so they are never left half-written.
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import tyro

from scenezip.errors import ScenezipError

PROG = "scenezip image"
SUPPORTED_FORMATS = ("PNG", "JPEG")


@dataclass
class ImageEncodeArgs:
    """Fit 2D Gaussians to a PNG or JPEG image and write them as a .scz file of about --bpp bits per pixel."""

    input: tyro.conf.Positional[Path]
    """The image to encode (PNG or JPEG)."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))]
    """The .scz file to write."""
    bpp: float = 0.5
    """Target bits per pixel of the whole file (header included); met within 10%."""
    steps: int = 1800
    """Optimization steps: half a float fit, a quarter refitting the Gaussians kept after pruning, a quarter
    fitting positions and colours around the quantized covariances. More steps give better files: kodim05 at
    256x170 and 1 bpp decodes to 25.76 dB after 900 steps and 25.94 after 1800 with --blend sum (24.88 with the
    300-step encoder before 2026-12-06). About 60-150 s per 256x170 image on one CPU thread at 1800 steps,
    roughly proportional to steps x pixels."""
    pos_frac_bits: int = 2
    """Positions are stored on a grid of 2**-pos_frac_bits pixels (0..4); the encoder also tries one bit less and more
    (twice: after the first fit, and again once the covariances are quantized)."""
    chol_bits: int = 6
    """Bits per Cholesky channel of the covariances (1..8); the encoder also tries one bit less and more."""
    color_step_q: int = 18
    """Colour quantization step 2**(-color_step_q/4) of a Gaussian of area l1 l3 = 1 px^2 (larger Gaussians get
    finer steps, see --color-alpha-q); the encoder also tries steps 2x finer and coarser."""
    color_alpha_q: int = 3
    """Colour steps shrink as area**-(color_alpha_q/8) (0..16; 0: one step for every Gaussian): the colour error of a
    large Gaussian spreads over more pixels."""
    blend: Literal["normalized", "sum"] = "normalized"
    """How the Gaussians make the image: "normalized", the weighted mean of the colours reaching a pixel (each
    Gaussian paints a region, neighbours meet in edges; kodim01 at 256x170 and 1 bpp: 29.80 dB), or "sum",
    GaussianImage's accumulated sum (28.94 dB)."""
    search: bool = True
    """After the float fit, also try the neighbouring quantizer settings and keep the best at the target size."""
    seed: int = 0
    """Seed of the initialization (the result is deterministic for a given seed and thread count)."""
    quiet: bool = False
    """Hide the progress bars."""


@dataclass
class ImageDecodeArgs:
    """Decode an image .scz file to an 8-bit RGB PNG."""

    input: tyro.conf.Positional[Path]
    """The .scz file (written by 'scenezip image encode')."""
    output: Annotated[Path, tyro.conf.arg(aliases=("-o",))]
    """The PNG file to write."""
    device: str = "auto"
    """Where to render: "cpu", "cuda", "cuda:N", or "auto" (CUDA when torch sees a GPU, else the CPU)."""
    backend: str = "auto"
    """Renderer: "torch" (pair list, any device), "triton" (the Triton kernel, CUDA), or "auto" (Triton
    where it can run, else torch)."""


def _note(msg: str) -> None:
    print(f"{PROG}: note: {msg}", file=sys.stderr)


def load_image(path: Path) -> np.ndarray:  # -> [H, W, 3] uint8
    """Read a PNG or JPEG as 8-bit RGB (converting RGBA, grey, palette and 16-bit images, with a note)."""
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise ScenezipError(f"{path}: no such file")
    if path.is_dir():
        raise ScenezipError(f"{path}: is a folder, not an image")
    try:
        with Image.open(path) as im:
            fmt = im.format
            if fmt not in SUPPORTED_FORMATS:
                raise ScenezipError(f"{path}: unsupported image format {fmt} (PNG and JPEG are supported)")
            im.load()
            mode = im.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit (or 32-bit int) grey: scale to 8 bits
                a = np.asarray(im).astype(np.float64)
                peak = 65535.0 if mode.startswith("I;16") or a.max() > 255 else 255.0
                grey = np.clip(np.rint(a * (255.0 / peak)), 0, 255).astype(np.uint8)
                _note(f"{path} is {mode} grey; converted to 8-bit RGB")
                return np.repeat(grey[:, :, None], 3, axis=2)
            if mode != "RGB":
                what = {"RGBA": "RGBA (alpha dropped)", "LA": "grey with alpha (alpha dropped)", "L": "grey",
                        "P": "a palette image", "1": "a bilevel image", "CMYK": "CMYK"}.get(mode, mode)  # fmt: skip
                _note(f"{path} is {what}; converted to RGB")
                im = im.convert("RGB")
            return np.array(im, dtype=np.uint8)
    except ScenezipError:
        raise
    except UnidentifiedImageError:
        raise ScenezipError(f"{path}: not a readable image (PNG and JPEG are supported)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ScenezipError(f"{path}: cannot read image ({e})") from None


def _check_output_folder(path: Path) -> None:
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ScenezipError(f"{path}: folder {parent} does not exist")
    if path.is_dir():
        raise ScenezipError(f"{path}: is a folder")


def save_png(path: Path, pixels: np.ndarray) -> None:
    """Write ``pixels`` ``[H, W, 3]`` uint8 as an 8-bit RGB PNG, atomically (temporary name + rename)."""
    from PIL import Image

    _check_output_folder(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8), mode="RGB").save(tmp, format="PNG")
        os.replace(tmp, path)
    except OSError as e:
        raise ScenezipError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp.exists():
            tmp.unlink()


def cmd_encode(args: ImageEncodeArgs) -> None:
    from scenezip.splatting.image_codec import DEFAULT_DELTA, QuantConfig, encode_image

    if not (args.bpp > 0) or args.steps < 0:
        raise ScenezipError(f"--bpp must be > 0 and --steps >= 0, got {args.bpp} and {args.steps}")
    try:
        quant = QuantConfig(args.pos_frac_bits, args.chol_bits, args.color_step_q, args.color_alpha_q)
    except ValueError as e:
        raise ScenezipError(str(e)) from None
    img = load_image(args.input)
    _check_output_folder(args.output)
    try:
        delta = DEFAULT_DELTA if args.blend == "normalized" else None
        r = encode_image(img, args.bpp, args.output, steps=args.steps, quant=quant, search=args.search, seed=args.seed,
                         progress=not args.quiet, delta=delta)  # fmt: skip
    except ValueError as e:
        raise ScenezipError(f"{args.input}: {e}") from None
    except OSError as e:
        raise ScenezipError(f"{args.output}: cannot write ({e.strerror or e})") from None
    h, w = img.shape[:2]
    print(f"wrote {r.path}: {r.nbytes:,} bytes, {r.bpp:.4f} bpp (target {r.target_bpp}) for {w}x{h}, "
          f"{r.n_gaussians:,} Gaussians, PSNR {r.psnr:.2f} dB, {r.encode_s:.1f} s")  # fmt: skip


def cmd_decode(args: ImageDecodeArgs) -> None:
    from scenezip.splatting.image_codec import decode_image

    if args.output.suffix.lower() != ".png":
        raise ScenezipError(f"{args.output}: the output must be a .png file")
    from scenezip.splatting.image_codec import DECODE_BACKENDS

    if args.backend not in DECODE_BACKENDS:
        raise ScenezipError(f"--backend must be one of {', '.join(DECODE_BACKENDS)}, got {args.backend!r}")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ScenezipError(f"--device {args.device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ScenezipError(f"--device {args.device}: torch sees no CUDA device here")
    if args.backend == "triton":
        from scenezip.render.rasterization_image_triton import available

        if not available(device):
            raise ScenezipError(f"--backend triton cannot run on {device} here (needs Triton and a CUDA device)")
    _check_output_folder(args.output)
    pixels = decode_image(args.input, device, args.backend)
    save_png(args.output, pixels)
    print(f"wrote {args.output}: {pixels.shape[1]}x{pixels.shape[0]} RGB")


SUBCOMMANDS = {"encode": (ImageEncodeArgs, cmd_encode), "decode": (ImageDecodeArgs, cmd_decode)}


def _usage() -> str:
    lines = [f"usage: {PROG} {{encode,decode}} [OPTIONS]", "", "subcommands:"]
    for name, (cls, _) in SUBCOMMANDS.items():
        lines.append(f"  {name:<7} {(cls.__doc__ or '').strip().splitlines()[0]}")
    return "\n".join(lines)


def image_main(argv: list[str]) -> int:
    """``scenezip image ...`` with ``argv`` the arguments after ``image``; returns the exit status."""
    argv = list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if argv[0] not in SUBCOMMANDS:
        print(f"{PROG}: error: unknown subcommand {argv[0]!r} (encode or decode)\n\n{_usage()}", file=sys.stderr)
        return 2
    cls, fn = SUBCOMMANDS[argv[0]]
    try:
        args = tyro.cli(cls, args=argv[1:], prog=f"{PROG} {argv[0]}", description=cls.__doc__)
    except SystemExit as e:  # --help or a parse error (tyro printed it)
        return e.code if isinstance(e.code, int) else 2
    try:
        fn(args)
    except ScenezipError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    return 0
