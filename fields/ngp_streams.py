"""The ``ngp`` method's stream contract: an :class:`NGPModel` as named arrays and back.

``ngp`` is the uncompressed hash-grid reference: the flat hash table (tcnn layout) is stored raw in
float32 (lossless, the default) or float16, the two MLPs as flat vectors in
:func:`scenezip.fields.mlp.mlp_to_flat` order (float32 or float16), and the occupancy grid as its
packed bits (:func:`scenezip.fields.occupancy.pack_bits`) coded with ``zlib``. The architecture
(box, hash-grid settings, MLP sizes, occupancy resolution, marching steps) goes into the metadata under
``"ngp"``, and decoding checks every stream's presence, dtype and shape against it before building the
model, raising :class:`~scenezip.errors.SceneFileError` otherwise.

``cngp`` reuses this contract: its own codec turns the hash table into bytes and back, and passes the
decoded table to :func:`ngp_from_streams` (``hash_table=``); the MLP and occupancy streams are the same.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from scenezip.errors import SceneFileError, ScenezipError
from scenezip.fields.hashgrid import n_params
from scenezip.fields.mlp import mlp_load_flat, mlp_to_flat
from scenezip.fields.ngp import NGPArch, NGPModel

METHOD = "ngp"
STREAM_HASH = "hash_table"
STREAM_DENSITY_MLP = "density_mlp"
STREAM_COLOR_MLP = "color_mlp"
STREAM_OCCUPANCY = "occupancy"
FloatName = Literal["float16", "float32"]


def ngp_metadata(model: NGPModel, hash_dtype: str = "float32", mlp_dtype: str = "float32") -> dict:
    """The ``"ngp"`` metadata entry: architecture, counts and stored dtypes."""
    return {
        "ngp": {
            "arch": model.arch.to_json(),
            "n_hash_params": int(model.field.grid.params.numel()),
            "n_hash_entries": len(model),
            "hash_dtype": hash_dtype,
            "mlp_dtype": mlp_dtype,
            "occupancy_fraction": model.occupancy.occupancy_fraction(),
        }
    }


def ngp_to_streams(
    model: NGPModel, hash_dtype: FloatName = "float32", mlp_dtype: FloatName = "float32"
) -> tuple[dict, dict[str, tuple[np.ndarray, str]]]:
    """``(metadata, streams)`` of a model; write them with ``write_scz(path, METHOD, {**scene, **meta}, streams)``.

    The hash table is stored as the encoding reads it (after any ``hash_transform``).
    """
    if hash_dtype not in ("float16", "float32") or mlp_dtype not in ("float16", "float32"):
        raise ValueError(f"hash_dtype and mlp_dtype must be 'float16' or 'float32', got {hash_dtype!r}, {mlp_dtype!r}")
    with torch.no_grad():
        table = model.hash_params().detach().cpu().to(torch.float32).numpy().astype(hash_dtype)
    mlp_t = getattr(torch, mlp_dtype)
    streams = {
        STREAM_HASH: (table, "raw"),
        STREAM_DENSITY_MLP: (mlp_to_flat(model.field.density_mlp, mlp_t).numpy(), "raw"),
        STREAM_COLOR_MLP: (mlp_to_flat(model.field.color_mlp, mlp_t).numpy(), "raw"),
        STREAM_OCCUPANCY: (model.occupancy.packed().numpy(), "zlib"),
    }
    return ngp_metadata(model, hash_dtype, mlp_dtype), streams


def _expect(arrays: dict[str, np.ndarray], name: str, dtypes: tuple[str, ...], n: int, source: str) -> np.ndarray:
    if name not in arrays:
        raise SceneFileError(f"{source}: ngp stream {name!r} is missing")
    a = arrays[name]
    if a.dtype.name not in dtypes:
        raise SceneFileError(f"{source}: ngp stream {name!r} has dtype {a.dtype.name}, expected {' or '.join(dtypes)}")
    if tuple(a.shape) != (n,):
        raise SceneFileError(f"{source}: ngp stream {name!r} has shape {tuple(a.shape)}, expected ({n},)")
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise SceneFileError(f"{source}: ngp stream {name!r} holds non-finite values")
    return a


def ngp_from_streams(
    arrays: dict[str, np.ndarray], metadata: dict, source: str = "scene", hash_table: np.ndarray | None = None
) -> NGPModel:
    """Inverse of :func:`ngp_to_streams` (CPU model, torch backend chosen at render time).

    ``hash_table`` replaces the ``hash_table`` stream (``[n_params]`` float, for methods that code the
    table themselves). Raises SceneFileError naming ``source`` on any missing or mismatched entry.
    """
    meta = metadata.get("ngp") if isinstance(metadata, dict) else None
    if not isinstance(meta, dict) or "arch" not in meta:
        raise SceneFileError(f"{source}: ngp metadata (architecture) is missing")
    try:
        arch = NGPArch.from_json(meta["arch"])
    except ScenezipError as e:
        raise SceneFileError(f"{source}: {e}") from None
    n_hash = n_params(arch.grid)
    if meta.get("n_hash_params") != n_hash:
        raise SceneFileError(
            f"{source}: ngp metadata says {meta.get('n_hash_params')!r} hash parameters, the architecture has {n_hash}"
        )
    model = NGPModel(arch, backend="auto")
    floats = ("float16", "float32")
    if hash_table is None:
        hash_table = _expect(arrays, STREAM_HASH, floats, n_hash, source)
    elif tuple(np.shape(hash_table)) != (n_hash,) or not np.all(np.isfinite(hash_table)):
        raise SceneFileError(f"{source}: decoded hash table must be {n_hash} finite values, got shape {np.shape(hash_table)}")
    dens = _expect(arrays, STREAM_DENSITY_MLP, floats, model.field.density_mlp.n_params(), source)
    col = _expect(arrays, STREAM_COLOR_MLP, floats, model.field.color_mlp.n_params(), source)
    occ = _expect(arrays, STREAM_OCCUPANCY, ("uint8",), -(-model.occupancy.n_cells // 8), source)
    with torch.no_grad():
        model.field.grid.params.copy_(torch.from_numpy(np.asarray(hash_table, dtype=np.float32)))
    mlp_load_flat(model.field.density_mlp, torch.from_numpy(dens.astype(np.float32)))
    mlp_load_flat(model.field.color_mlp, torch.from_numpy(col.astype(np.float32)))
    model.occupancy.load_packed(torch.from_numpy(np.ascontiguousarray(occ)))
    return model
