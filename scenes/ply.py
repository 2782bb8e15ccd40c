"""INRIA 3DGS PLY: write and read Gaussian splats in the layout of Kerbl et al.'s reference code.

Written by hand on top of plyfile. The layout every 3DGS viewer and tool reads (SuperSplat, gsplat's
exporter, nerfstudio's ``ns-export gaussian-splat``) is one ``vertex`` element of float32 properties in
this exact order::

    x y z nx ny nz f_dc_0 f_dc_1 f_dc_2 f_rest_0 .. f_rest_{3(K-1)-1} opacity scale_0 scale_1 scale_2
    rot_0 rot_1 rot_2 rot_3

``nx ny nz`` are zeros (unused normals), ``f_dc`` is the DC SH coefficient, ``f_rest`` the higher bands
*channel-major* (all red coefficients, then green, then blue: ``f_rest_{c (K-1) + k}`` holds band
``k + 1`` of channel ``c``), ``opacity`` the logit, ``scale_*`` the log standard deviations and
``rot_*`` the quaternion (w, x, y, z), binary little-endian.

Reading accepts any binary or ASCII PLY with a ``vertex`` element holding at least those properties
(extra ones such as normals or nerfstudio/gsplat extras are ignored); the SH degree (0..3) comes from the
number of ``f_rest_*`` properties. Before plyfile allocates anything, the header is parsed here and the
vertex count checked against the file size (plyfile trusts the count), so a truncated or lying file
raises :class:`~scenezip.errors.SceneFileError` naming the file.

Arrays in and out use scenezip's (gsplat's) names: ``means [N, 3], quats [N, 4], scales [N, 3],
opacities [N], sh0 [N, 1, 3], shN [N, K-1, 3]``. This module knows no model class.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import numpy as np

from scenezip.errors import SceneFileError

GAUSSIAN_KEYS = ("means", "quats", "scales", "opacities", "sh0", "shN")
_PLY_SIZES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2, "uint16": 2,
              "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4, "double": 8,
              "float64": 8}  # fmt: skip
MAX_HEADER_BYTES = 1 << 20


def ply_property_names(n_rest_coeffs: int) -> list[str]:
    """The INRIA property names in file order for ``n_rest_coeffs = K - 1`` higher SH bands (0, 3, 8, 15)."""
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * n_rest_coeffs)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    return names


def check_gaussians(splats: Mapping[str, np.ndarray], name: str = "splats") -> dict[str, np.ndarray]:
    """Validate a mapping of Gaussian arrays (see the module docstring) and return float32 copies-or-views.

    Raises ValueError naming the bad entry."""
    missing = [k for k in GAUSSIAN_KEYS if k not in splats]
    if missing:
        raise ValueError(f"{name} is missing {missing}")
    out = {k: np.ascontiguousarray(np.asarray(splats[k], dtype=np.float32)) for k in GAUSSIAN_KEYS}
    m = out["means"]
    if m.ndim != 2 or m.shape[1] != 3:
        raise ValueError(f"{name}['means'] must have shape [N, 3], got {m.shape}")
    n = m.shape[0]
    for k, shape in (("quats", (n, 4)), ("scales", (n, 3)), ("opacities", (n,)), ("sh0", (n, 1, 3))):
        if out[k].shape != shape:
            raise ValueError(f"{name}[{k!r}] must have shape {list(shape)}, got {out[k].shape}")
    sn = out["shN"]
    if sn.ndim != 3 or sn.shape[0] != n or sn.shape[2] != 3 or sn.shape[1] not in (0, 3, 8, 15):
        raise ValueError(f"{name}['shN'] must have shape [{n}, K-1, 3] with K-1 in (0, 3, 8, 15), got {sn.shape}")
    return out


def write_atomic(path: str | os.PathLike, data: bytes | None = None, writer=None) -> Path:
    """Write ``data`` (or call ``writer(tmp_path)``) to a temporary name beside ``path``, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if writer is not None:
            writer(tmp)
        else:
            tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_ply(path: str | os.PathLike, splats: Mapping[str, np.ndarray]) -> Path:
    """Write Gaussians as an INRIA 3DGS PLY (binary little-endian; layout in the module docstring).

    Args:
        path: output file (written to a temporary name, then renamed).
        splats: ``means [N, 3], quats [N, 4] (wxyz), scales [N, 3] (log), opacities [N] (logit),
            sh0 [N, 1, 3], shN [N, K-1, 3]``.
    """
    from plyfile import PlyData, PlyElement

    g = check_gaussians(splats)
    n, krest = g["means"].shape[0], g["shN"].shape[1]
    names = ply_property_names(krest)
    columns = [g["means"], np.zeros((n, 3), np.float32), g["sh0"][:, 0, :],
               g["shN"].transpose(0, 2, 1).reshape(n, 3 * krest),  # channel-major f_rest
               g["opacities"][:, None], g["scales"], g["quats"]]  # fmt: skip
    table = np.concatenate(columns, axis=1)
    vertex = np.empty(n, dtype=[(name, "<f4") for name in names])
    for i, name in enumerate(names):
        vertex[name] = table[:, i]
    ply = PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<")
    return write_atomic(path, writer=lambda tmp: ply.write(str(tmp)))


def _parse_header(path: Path, blob: bytes) -> tuple[str, int, list[tuple[str, list[tuple[str, str]] | None, int]]]:
    """``(format, header_bytes, elements)`` with ``elements = [(name, [(prop, type)] or None for list props,
    count)]``; SceneFileError for anything that is not a readable PLY header."""
    if not blob.startswith(b"ply"):
        raise SceneFileError(f"{path}: not a PLY file (no 'ply' magic)")
    end = blob.find(b"end_header")
    if end < 0:
        raise SceneFileError(f"{path}: PLY header has no end_header within {MAX_HEADER_BYTES} bytes")
    nl = blob.find(b"\n", end)
    if nl < 0:
        raise SceneFileError(f"{path}: PLY header is truncated")
    header_len = nl + 1
    fmt, elements = None, []
    for raw in blob[:end].decode("ascii", errors="replace").splitlines()[1:]:
        words = raw.split()
        if not words or words[0] in ("comment", "obj_info"):
            continue
        try:
            if words[0] == "format":
                fmt = words[1]
            elif words[0] == "element":
                elements.append((words[1], [], int(words[2])))
            elif words[0] == "property":
                if not elements:
                    raise ValueError("property before any element")
                props = elements[-1][1]
                if words[1] == "list":
                    elements[-1] = (elements[-1][0], None, elements[-1][2])
                elif props is not None:
                    if words[1] not in _PLY_SIZES:
                        raise ValueError(f"unknown property type {words[1]!r}")
                    props.append((words[2], words[1]))
        except (IndexError, ValueError) as e:
            raise SceneFileError(f"{path}: malformed PLY header line {raw.strip()!r} ({e})") from None
    if fmt not in ("binary_little_endian", "binary_big_endian", "ascii"):
        raise SceneFileError(f"{path}: unsupported PLY format {fmt!r}")
    for name, _, count in elements:
        if count < 0:
            raise SceneFileError(f"{path}: PLY element {name!r} has a negative count {count}")
    return fmt, header_len, elements


def read_ply(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read an INRIA-layout 3DGS PLY (from 3DGS, gsplat, nerfstudio, SuperSplat, scenezip...).

    Returns:
        ``{"means", "quats", "scales", "opacities", "sh0", "shN"}`` float32 arrays in gsplat's layout
        (``shN [N, K-1, 3]``, SH degree 0..3 from the ``f_rest`` count). Quaternions are returned as stored.

    Raises:
        SceneFileError: missing file, not a PLY, no ``vertex`` element, missing properties, an ``f_rest``
            count that is not 0, 9, 24 or 45, a vertex count the file size cannot hold, or a truncated body.
    """
    from plyfile import PlyData

    path = Path(path)
    if not path.is_file():
        raise SceneFileError(f"{path}: no such PLY file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(MAX_HEADER_BYTES)
    fmt, header_len, elements = _parse_header(path, head)
    vertex = [e for e in elements if e[0] == "vertex"]
    if not vertex:
        raise SceneFileError(f"{path}: PLY has no 'vertex' element")
    _, props, n = vertex[0]
    if props is None:
        raise SceneFileError(f"{path}: PLY 'vertex' element has list properties; not a Gaussian splat file")
    names = {p for p, _ in props}
    n_rest = sum(1 for p in names if p.startswith("f_rest_"))
    if n_rest not in (0, 9, 24, 45):
        raise SceneFileError(f"{path}: PLY has {n_rest} f_rest properties; expected 0, 9, 24 or 45 (SH degree 0..3)")
    required = ply_property_names(n_rest // 3)
    missing = [p for p in required if p not in names and p not in ("nx", "ny", "nz")]
    if missing:
        raise SceneFileError(f"{path}: PLY vertex element is missing properties {missing}")
    body = size - header_len
    if fmt != "ascii":
        need = 0
        for _, eprops, count in elements:
            if eprops is None:  # list properties: at least one count byte per row; stop checking there
                need += count
                break
            need += count * sum(_PLY_SIZES[t] for _, t in eprops)
            if eprops is props:
                break
        if body < need:
            raise SceneFileError(f"{path}: PLY is truncated: the header declares {n} vertices "
                                 f"({need} bytes) but the body holds {body} bytes")  # fmt: skip
    elif n > body // 2 + 1:  # every ASCII value takes at least one digit and one separator
        raise SceneFileError(f"{path}: PLY is truncated: {n} vertices cannot fit in {body} bytes")
    try:
        ply = PlyData.read(str(path))
        v = ply["vertex"].data
    except Exception as e:  # noqa: BLE001 - plyfile raises several types for malformed bodies
        raise SceneFileError(f"{path}: cannot read PLY ({type(e).__name__}: {e})") from None
    if len(v) != n:
        raise SceneFileError(f"{path}: PLY holds {len(v)} vertices, the header declares {n}")

    def cols(keys: list[str]) -> np.ndarray:
        if not keys:
            return np.zeros((n, 0), np.float32)
        return np.stack([np.asarray(v[k], dtype=np.float32) for k in keys], axis=1)

    krest = n_rest // 3
    rest = cols([f"f_rest_{i}" for i in range(n_rest)]).reshape(n, 3, krest).transpose(0, 2, 1)
    out = {
        "means": cols(["x", "y", "z"]),
        "quats": cols([f"rot_{i}" for i in range(4)]),
        "scales": cols([f"scale_{i}" for i in range(3)]),
        "opacities": np.asarray(v["opacity"], dtype=np.float32).copy(),
        "sh0": cols(["f_dc_0", "f_dc_1", "f_dc_2"])[:, None, :],
        "shN": np.ascontiguousarray(rest),
    }
    bad = [k for k, a in out.items() if not np.all(np.isfinite(a))]
    if bad:
        raise SceneFileError(f"{path}: PLY holds non-finite values in {bad}")
    return out


read_ply_gaussians = read_ply  # the name splatting/compress.py imports

__all__ = ["read_ply", "read_ply_gaussians", "write_ply", "ply_property_names", "check_gaussians", "write_atomic",
           "GAUSSIAN_KEYS"]
