"""The ``ngp`` method's stream contract: an :class:`NGPModel` as named arrays and back.

``ngp`` is the uncompressed hash-grid reference: the flat hash table (tcnn layout) is stored raw in
float32 (lossless, the default) or float16, the two MLPs as flat vectors in
:func:`scenezip.fields.mlp.mlp_to_flat` order (float32 or float16), and the occupancy grid as its
packed bits (:func:`scenezip.fields.occupancy.pack_bits`) coded with ``zlib``. The architecture
(box, hash-grid settings, MLP sizes, occupancy resolution, marching steps) goes into the metadata under
``"ngp"``, and decoding checks every stream's presence, dtype and shape against it before building the
model, raising :class:`~scenezip.errors.SceneFileError` otherwise.

``cngp`` (:func:`cngp_to_streams` / :func:`cngp_from_streams`) reuses this contract: the hash table is
coded by :func:`scenezip.fields.hash_codec.encode_hash_table` (streams ``hash_keep`` and ``hash_qNN``,
its metadata under ``"hash"``) and the decoded table is passed to :func:`ngp_from_streams`
(``hash_table=``); the MLPs are stored in float16 (``mlp_dtype``) and the occupancy bits in whichever of
packed bytes + ``zlib``, packed bytes + ``rans`` or one bool per cell + ``rans`` is smallest (the reader
tells them apart by dtype). Written by hand: the file must decode to exactly the table, weights and
occupancy the trainer evaluated last, so both directions live here, next to each other.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from scenezip.errors import SceneFileError, ScenezipError
from scenezip.fields.hash_codec import HashTableCompressor, decode_hash_table, encode_hash_table
from scenezip.fields.hash_codec import smallest_bit_stream
from scenezip.fields.hashgrid import n_params
from scenezip.fields.mlp import mlp_load_flat, mlp_to_flat
from scenezip.fields.ngp import NGPArch, NGPModel

METHOD = "ngp"
METHOD_CNGP = "cngp"
HASH_PREFIX = "hash"  # cngp's hash streams: hash_keep, hash_q00, hash_q01-03, ...
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


# ------------------------------------------------------------------------------------------- cngp
def cngp_to_streams(
    model: NGPModel, compressor: HashTableCompressor, mlp_dtype: FloatName = "float16"
) -> tuple[dict, dict[str, tuple[np.ndarray, str]]]:
    """``(metadata, streams)`` of a compressed model; write with ``write_scz(path, METHOD_CNGP, {**scene, **meta}, streams)``.

    The hash table is ``model``'s raw table (``field.grid.params``, before any transform) coded by
    ``compressor`` (masked, quantized, per-level rANS); it decodes to ``compressor.quantized_table(params)``.
    MLPs are stored in ``mlp_dtype``; the occupancy bits in their smallest coding."""
    if not isinstance(compressor, HashTableCompressor):
        raise ValueError(f"compressor must be a HashTableCompressor, got {type(compressor).__name__}")
    if compressor.config != model.arch.grid:
        raise ValueError(f"compressor's grid {compressor.config} does not match the model's {model.arch.grid}")
    if mlp_dtype not in ("float16", "float32"):
        raise ValueError(f"mlp_dtype must be 'float16' or 'float32', got {mlp_dtype!r}")
    hash_meta, streams = encode_hash_table(model.field.grid.params.detach(), compressor, prefix=HASH_PREFIX)
    meta = ngp_metadata(model, f"int{compressor.bits}-masked-rans", mlp_dtype)
    meta["hash"] = hash_meta
    mlp_t = getattr(torch, mlp_dtype)
    streams[STREAM_DENSITY_MLP] = (mlp_to_flat(model.field.density_mlp, mlp_t).numpy(), "raw")
    streams[STREAM_COLOR_MLP] = (mlp_to_flat(model.field.color_mlp, mlp_t).numpy(), "raw")
    streams[STREAM_OCCUPANCY] = smallest_bit_stream(model.occupancy.binary.detach().cpu().numpy().reshape(-1))
    return meta, streams


def cngp_from_streams(arrays: dict[str, np.ndarray], metadata: dict, source: str = "scene") -> NGPModel:
    """Inverse of :func:`cngp_to_streams`: a CPU :class:`NGPModel` with the decoded table as its plain
    parameters (no hash transform). Raises SceneFileError naming ``source`` on anything malformed."""
    meta = metadata.get("ngp") if isinstance(metadata, dict) else None
    if not isinstance(meta, dict) or "arch" not in meta:
        raise SceneFileError(f"{source}: ngp metadata (architecture) is missing")
    try:
        arch = NGPArch.from_json(meta["arch"])
    except ScenezipError as e:
        raise SceneFileError(f"{source}: {e}") from None
    if not isinstance(arrays, dict):
        raise SceneFileError(f"{source}: cngp streams must be a mapping of names to arrays")
    table = decode_hash_table(arrays, metadata.get("hash"), arch.grid, source)
    n_cells = arch.occ_resolution**3
    occ = arrays.get(STREAM_OCCUPANCY)
    if isinstance(occ, np.ndarray) and occ.dtype == np.bool_:
        if occ.shape != (n_cells,):
            raise SceneFileError(f"{source}: ngp stream 'occupancy' has shape {occ.shape}, expected ({n_cells},)")
        arrays = {**arrays, STREAM_OCCUPANCY: np.packbits(occ, bitorder="little")}
    elif isinstance(occ, np.ndarray) and occ.dtype == np.uint8 and occ.shape == (-(-n_cells // 8),):
        if n_cells % 8 and int(occ[-1]) >> (n_cells % 8):
            raise SceneFileError(f"{source}: ngp stream 'occupancy' has pad bits set past {n_cells} cells")
    return ngp_from_streams(arrays, metadata, source, hash_table=table.numpy())
