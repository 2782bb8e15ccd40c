"""The backend resolver: torch always works, cuda fails with install help where it is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from scenezip import _backend
from scenezip.errors import BackendError


class TestResolveBackend:
    def test_torch_is_always_torch(self):
        assert _backend.resolve_backend("torch") == "torch"
        assert _backend.resolve_backend("torch", "tcnn") == "torch"

    def test_unknown_backend(self):
        with pytest.raises(BackendError, match="backend must be one of"):
            _backend.resolve_backend("metal")

    @pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
    def test_cuda_missing_raises_with_install_help(self):
        with pytest.raises(BackendError, match="no CUDA GPU"):
            _backend.resolve_backend("cuda")

    @pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
    def test_auto_falls_back_and_says_so_once(self, monkeypatch):
        monkeypatch.setattr(_backend, "_warned", set())
        with pytest.warns(RuntimeWarning, match="using the torch backend"):
            assert _backend.resolve_backend("auto") == "torch"
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _backend.resolve_backend("auto") == "torch"  # second time: silent

    def test_cuda_without_library_names_install_command(self, monkeypatch):
        monkeypatch.setattr(_backend, "cuda_available", lambda: True)
        monkeypatch.setattr(_backend, "_module_importable", lambda name: False)
        with pytest.raises(BackendError, match="pip install"):
            _backend.resolve_backend("cuda", "gsplat")
        with pytest.raises(BackendError, match="tiny-cuda-nn"):
            _backend.resolve_backend("cuda", "tcnn")


def test_import_scenezip_loads_no_cuda_extension():
    code = (
        "import sys, scenezip, scenezip.render, scenezip.scenes, scenezip.fields, scenezip.quant, scenezip.splatting, "
        "scenezip.cli\n"
        "bad = [m for m in ('gsplat', 'tinycudann') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
