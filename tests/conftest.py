"""Shared fixtures: devices that exist here, seeded generators, and the optional real-data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Under pytest-xdist (README: -n 2) each worker gets one thread, so two workers do not fight over two cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SCENEZIP_DATA", REPO.parent / "shared" / "data"))

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every device present on this machine (CUDA only where torch.cuda.is_available())."""
    return torch.device(request.param)


@pytest.fixture
def cuda_device() -> torch.device:
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    return torch.device("cuda")


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def shared_scene(name: str) -> Path:
    """Path of a real scene in ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} is not present (tests never need it; benchmarks do)")
    return path
