"""``scenezip mesh`` (TSDF mesh of a scene file) and the depth / normal images of ``scenezip render --mode``.

Written by hand for scenezip. The mesh comes from :func:`scenezip.splatting.geometry.tsdf_mesh` over the
cameras of one capture split, in the normalized space the scene was trained in, and is written in the
capture's own world coordinates (the normalization undone), so it lines up with the capture's data.
Depth images use a viridis-like colour map (anchors tabulated here; no plotting library needed)
between the 1st and 99th percentile of the view's depths; normal images map world-space unit normals
from [-1, 1] to [0, 255]; pixels under half alpha are black in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import numpy as np
import torch
import tyro

from scenezip.errors import ScenezipError

# viridis at 0, 1/8, ..., 1 (sRGB 0..1), interpolated linearly between
_VIRIDIS = np.array(
    [
        [0.267, 0.005, 0.329], [0.283, 0.141, 0.458], [0.254, 0.265, 0.530], [0.207, 0.372, 0.553],
        [0.164, 0.471, 0.558], [0.128, 0.567, 0.551], [0.135, 0.659, 0.518], [0.267, 0.749, 0.441],
        [0.478, 0.821, 0.318], [0.741, 0.873, 0.150], [0.993, 0.906, 0.144],
    ]
)  # fmt: skip


@dataclass
class MeshArgs:
    """Extract a triangle mesh from a .scz file by TSDF fusion of its rendered depth (needs open3d)."""

    file: tyro.conf.Positional[Path]
    """The .scz file."""
    data: Path
    """Capture whose cameras render the depth maps (the one the scene was trained on)."""
    out: Annotated[Path, tyro.conf.arg(aliases=["-o"])] = Path("mesh.ply")
    """Output PLY mesh, in the capture's world coordinates."""
    split: Literal["train", "val", "test", "all"] = "train"
    """Which cameras of the capture to fuse."""
    voxel_size: float = 0.004
    """TSDF voxel edge in normalized scene units (the farthest camera is 1 from the scene centre)."""
    sdf_trunc: Optional[float] = None
    """Truncation distance of the signed distance in normalized units; default 4 x voxel size."""
    depth_trunc: float = 3.0
    """Depths beyond this (normalized units) are not fused."""
    downscale: Optional[int] = None
    """Image downscale factor of the depth renders; default: the one that matches the image size stored in the file."""
    depth: Literal["expected", "median"] = "expected"
    """Depth to fuse: expected (alpha-weighted mean) or median (surfel scenes only: the surfel where the transmittance crosses 0.5)."""
    backend: Literal["auto", "torch", "cuda"] = "auto"
    """Rasterizer backend."""


def cmd_mesh(args: MeshArgs) -> None:
    """Run ``scenezip mesh``: render depth from every camera of the split, fuse, write a PLY."""
    from scenezip.cli import _open_for_rendering
    from scenezip.splatting.geometry import tsdf_mesh, write_mesh_ply

    if not args.voxel_size > 0:
        raise ScenezipError(f"--voxel-size must be > 0, got {args.voxel_size}")
    if args.sdf_trunc is not None and not args.sdf_trunc > 0:
        raise ScenezipError(f"--sdf-trunc must be > 0, got {args.sdf_trunc}")
    if not args.depth_trunc > 0:
        raise ScenezipError(f"--depth-trunc must be > 0, got {args.depth_trunc}")
    scene, ds, _, _ = _open_for_rendering(args.file, args.data, args.downscale, args.backend)
    if args.depth == "median" and not getattr(scene.model, "is_surfel", False):
        raise ScenezipError(f"{args.file}: --depth median needs a surfel scene (2dgs, c2dgs); this is {scene.method}")
    ids = ds.indices(args.split)
    if len(ids) == 0:
        raise ScenezipError(f"{args.data}: split {args.split!r} has no cameras")
    vertices, triangles = tsdf_mesh(
        scene.model, ds.cameras[ids], voxel_size=args.voxel_size, sdf_trunc=args.sdf_trunc,
        depth_trunc=args.depth_trunc, depth=args.depth, backend=args.backend, progress=True,
    )  # fmt: skip
    if len(triangles) == 0:
        raise ScenezipError(f"{args.file}: the depth rendered from {args.split} cameras holds no surface to mesh")
    write_mesh_ply(args.out, ds.denormalize_points(vertices), triangles)
    print(f"wrote {args.out}: {len(vertices):,} vertices, {len(triangles):,} triangles "
          f"(TSDF of {len(ids)} {args.split} views, voxel {args.voxel_size:g})")  # fmt: skip


# ---------------------------------------------------------------------------------------------- images
def colorize_depth(depth: np.ndarray, mask: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """``[H, W, 3]`` uint8 image of ``depth`` ``[H, W]``: near is dark purple, far is yellow, outside ``mask`` black.

    ``lo``/``hi`` default to the 1st and 99th percentile of the depths under ``mask``.
    """
    d, m = np.asarray(depth, np.float64), np.asarray(mask, bool)
    if d.ndim != 2 or m.shape != d.shape:
        raise ValueError(f"depth must be [H, W] and mask the same shape, got {d.shape} and {m.shape}")
    out = np.zeros((*d.shape, 3), np.uint8)
    if not m.any():
        return out
    vals = d[m]
    lo = float(np.percentile(vals, 1)) if lo is None else float(lo)
    hi = float(np.percentile(vals, 99)) if hi is None else float(hi)
    t = np.clip((vals - lo) / max(hi - lo, 1e-12), 0.0, 1.0) * (len(_VIRIDIS) - 1)
    k = np.minimum(t.astype(np.int64), len(_VIRIDIS) - 2)
    f = (t - k)[:, None]
    rgb = _VIRIDIS[k] * (1.0 - f) + _VIRIDIS[k + 1] * f
    out[m] = np.round(rgb * 255.0).astype(np.uint8)
    return out


def colorize_normals(normals: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` uint8 image of world-space unit normals ``[H, W, 3]`` (``(n + 1) / 2``), outside ``mask`` black."""
    n, m = np.asarray(normals, np.float64), np.asarray(mask, bool)
    if n.ndim != 3 or n.shape[-1] != 3 or m.shape != n.shape[:2]:
        raise ValueError(f"normals must be [H, W, 3] and mask [H, W], got {n.shape} and {m.shape}")
    out = np.round(np.clip((n + 1.0) * 0.5, 0.0, 1.0) * 255.0).astype(np.uint8)
    out[~m] = 0
    return out


@torch.no_grad()
def render_depth_normal_image(
    model: Any,
    camera: Any,
    mode: Literal["depth", "normal"],
    backend: Literal["auto", "torch", "cuda"] = "auto",
    depth_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """``[H, W, 3]`` uint8 depth or normal image of ``model`` from one camera (a one-camera ``Cameras``).

    Every model renders expected depth; surfel models their own normals, 3D Gaussian models
    shortest-axis normals (see :func:`scenezip.splatting.geometry.render_depth_normals`). ``depth_range``
    fixes the colour map's ``(near, far)``, e.g. to keep it steady across the views of a video.
    """
    from scenezip.splatting.geometry import ALPHA_MIN, render_depth_normals

    if mode not in ("depth", "normal"):
        raise ValueError(f"mode must be 'depth' or 'normal', got {mode!r}")
    if len(camera) != 1:
        raise ValueError(f"camera must hold one camera, got {len(camera)}")
    r = render_depth_normals(model, camera, backend=backend)
    mask = (r["alpha"][0] >= ALPHA_MIN).cpu().numpy()
    if mode == "depth":
        lo, hi = depth_range if depth_range is not None else (None, None)
        return colorize_depth(r["depth"][0].cpu().numpy(), mask & (r["depth"][0] > 0).cpu().numpy(), lo, hi)
    return colorize_normals(r["normals"][0].cpu().numpy(), mask)


def write_geometry_renders(
    scene: Any,
    ds: Any,
    ids: Any,
    mode: Literal["depth", "normal"],
    out_dir: Path,
    backend: Literal["auto", "torch", "cuda"] = "auto",
    progress: bool = True,
) -> list[Path]:
    """Write one depth or normal PNG per camera ``ids`` of ``ds`` (named after the capture's images) into
    ``out_dir``; the body of ``scenezip render --mode depth|normal``.

    Args:
        scene: a loaded scene (``scenezip.scene.load_scene``): its ``model`` renders the geometry.
        ds: the capture (:class:`~scenezip.scenes.dataset.Dataset`) whose cameras to use.
        ids: camera indices ``[K]`` into ``ds``.
        mode: ``depth`` (viridis, per-view 1st..99th percentile) or ``normal`` (world-space, ``(n + 1) / 2``).
        out_dir: folder for the PNGs (created).
        backend: rasterizer backend.

    Returns:
        The written paths, in the order of ``ids``.
    """
    import imageio.v3 as iio
    from tqdm.auto import tqdm

    if mode not in ("depth", "normal"):
        raise ScenezipError(f"--mode must be 'depth' or 'normal' for geometry renders, got {mode!r}")
    model = getattr(scene, "model", None)
    if model is None or not (getattr(model, "is_surfel", False) or hasattr(model, "activated")):
        method = getattr(scene, "method", type(scene).__name__)
        raise ScenezipError(f"--mode {mode}: {method} scenes have no Gaussian geometry to render")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i in tqdm([int(v) for v in np.asarray(ids).reshape(-1)], desc=f"render {mode}", unit="view",
                  disable=not progress):  # fmt: skip
        img = render_depth_normal_image(model, ds.cameras[i], mode, backend=backend)
        path = out_dir / (Path(ds.image_paths[i]).stem + ".png")
        tmp = path.with_name(path.stem + ".tmp.png")
        iio.imwrite(tmp, img)
        tmp.replace(path)
        written.append(path)
    return written


__all__ = [
    "MeshArgs",
    "cmd_mesh",
    "colorize_depth",
    "colorize_normals",
    "render_depth_normal_image",
    "write_geometry_renders",
]
