"""The ``scenezip`` command line. Each command is a function whose typed, documented arguments tyro
turns into options, so ``--help`` documents every knob. Errors a user can cause end in one line."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import tyro

from scenezip.errors import ScenezipError


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


COMMANDS: dict[str, tuple[type, Callable[[object], None]]] = {
    "data": (DataArgs, cmd_data),
}


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
    if name not in COMMANDS:
        print(f"scenezip: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    cls, fn = COMMANDS[name]
    args = tyro.cli(cls, args=argv[1:], prog=f"scenezip {name}", description=cls.__doc__)
    try:
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
