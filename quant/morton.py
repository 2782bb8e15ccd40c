"""Morton (Z-order) codes and ordering of quantized 3D points.

Written by hand: 21 bits per axis are spread to every third bit with the usual shift-and-mask
sequence on uint64 and interleaved as ``x | y << 1 | z << 2`` into a 63-bit code, vectorized over all
points (no Python loop over points). Sorting by the code puts points that are close in space close
in the sequence, which makes the deltas of ``rans-delta`` small.
"""

from __future__ import annotations

import numpy as np

MORTON_BITS = 21  # per axis; 3 * 21 = 63 bits fit a non-negative int64

_SPREAD = (
    (32, 0x1F00000000FFFF),
    (16, 0x1F0000FF0000FF),
    (8, 0x100F00F00F00F00F),
    (4, 0x10C30C30C30C30C3),
    (2, 0x1249249249249249),
)


def _check_q(q_xyz: np.ndarray) -> np.ndarray:
    q = np.asarray(q_xyz)
    if q.ndim != 2 or q.shape[1] != 3:
        raise ValueError(f"q_xyz must have shape [N, 3], got {tuple(q.shape)}")
    if not np.issubdtype(q.dtype, np.integer):
        raise ValueError(f"q_xyz must be integers (quantize first), got dtype {q.dtype}")
    if q.size and (int(q.min()) < 0 or int(q.max()) >= 1 << MORTON_BITS):
        raise ValueError(f"q_xyz must lie in [0, 2^{MORTON_BITS}), got [{int(q.min())}, {int(q.max())}]")
    return q.astype(np.uint64)


def _spread_bits(v: np.ndarray) -> np.ndarray:
    """``[N]`` uint64 values < 2^21 -> the same bits at positions 0, 3, 6, ..."""
    v = v & np.uint64((1 << MORTON_BITS) - 1)
    for shift, mask in _SPREAD:
        v = (v | (v << np.uint64(shift))) & np.uint64(mask)
    return v


def morton_encode(q_xyz: np.ndarray) -> np.ndarray:
    """Morton codes ``[N]`` int64 of integer points ``q_xyz`` ``[N, 3]`` in ``[0, 2^21)``."""
    q = _check_q(q_xyz)
    code = _spread_bits(q[:, 0]) | (_spread_bits(q[:, 1]) << np.uint64(1)) | (_spread_bits(q[:, 2]) << np.uint64(2))
    return code.astype(np.int64)


def morton_order(q_xyz: np.ndarray) -> np.ndarray:
    """Permutation ``[N]`` int64 that sorts ``q_xyz`` ``[N, 3]`` by Morton code (stable for equal codes)."""
    return np.argsort(morton_encode(q_xyz), kind="stable").astype(np.int64)
