"""Errors a user can cause. The CLI prints these as one line and exits with status 2."""


class ScenezipError(Exception):
    """Base class for errors caused by user input (bad path, bad dataset, bad file, bad option)."""


class DatasetError(ScenezipError):
    """A capture on disk cannot be read; the message names the file and the problem."""


class SceneFileError(ScenezipError):
    """A .scz file is malformed (wrong magic, unknown version or codec, bad CRC, truncated...)."""


class BackendError(ScenezipError):
    """A requested compute backend (CUDA, gsplat, tiny-cuda-nn) is not available."""
