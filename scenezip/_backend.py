"""The only place that probes CUDA, gsplat and tiny-cuda-nn.

`import scenezip` never imports or compiles a CUDA extension: gsplat compiles its kernels on first
use, so it is imported here lazily, and only after CUDA is known to be present.

Backends: ``"torch"`` is the pure-PyTorch reference path (any device, differentiable, the
specification); ``"cuda"`` uses gsplat rasterizers and tiny-cuda-nn hash grids; ``"auto"`` picks
``"cuda"`` when an NVIDIA GPU and the library are present and otherwise falls back to ``"torch"``,
saying so once.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from typing import Literal

from scenezip.errors import BackendError

Backend = Literal["auto", "torch", "cuda"]
BACKENDS = ("auto", "torch", "cuda")

GSPLAT_INSTALL = 'pip install "scenezip[cuda]" (gsplat; needs an NVIDIA GPU and the CUDA toolkit)'
TCNN_INSTALL = (
    "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch "
    "(needs an NVIDIA GPU and the CUDA toolkit)"
)

_warned: set[str] = set()


@functools.cache
def cuda_available() -> bool:
    """True when torch sees an NVIDIA GPU."""
    import torch

    return bool(torch.cuda.is_available())


@functools.cache
def _module_importable(name: str) -> bool:
    try:
        importlib.import_module(name)
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False
    return True


def gsplat_available() -> bool:
    """True when CUDA is present and gsplat imports (its kernels may still compile on first use)."""
    return cuda_available() and _module_importable("gsplat")


def tcnn_available() -> bool:
    """True when CUDA is present and tiny-cuda-nn's torch bindings import."""
    return cuda_available() and _module_importable("tinycudann")


def _say_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def resolve_backend(backend: str = "auto", library: Literal["gsplat", "tcnn"] = "gsplat") -> Literal["torch", "cuda"]:
    """Resolve ``auto|torch|cuda`` to the backend that will run, for the given CUDA library.

    ``cuda`` where CUDA or the library is missing raises :class:`BackendError` with install help.
    """
    if backend not in BACKENDS:
        raise BackendError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    available = gsplat_available() if library == "gsplat" else tcnn_available()
    if available:
        return "cuda"
    install = GSPLAT_INSTALL if library == "gsplat" else TCNN_INSTALL
    if not cuda_available():
        reason = "no CUDA GPU is visible to torch"
    else:
        reason = f"{library} is not installed; install it with: {install}"
    if backend == "cuda":
        raise BackendError(f"backend 'cuda' requested but {reason}")
    _say_once(library, f"scenezip: using the torch backend for {library} work ({reason})")
    return "torch"


def import_gsplat():
    """Import gsplat for a CUDA call (raises BackendError when unusable)."""
    if not gsplat_available():
        resolve_backend("cuda", "gsplat")
    return importlib.import_module("gsplat")


def import_tcnn():
    """Import tiny-cuda-nn for a CUDA call (raises BackendError when unusable)."""
    if not tcnn_available():
        resolve_backend("cuda", "tcnn")
    return importlib.import_module("tinycudann")
