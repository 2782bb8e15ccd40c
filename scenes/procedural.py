"""Procedural test scenes with known analytic geometry, written in the Blender (NeRF-Synthetic) format.

Tests and ``scenezip demo`` need a multi-view capture with ground truth that never has to be
downloaded. This module builds one: a few textured spheres and boxes (boxes turned about the vertical
axis) resting on, or floating above, a checkered ground disk, lit by one directional light with ambient,
Lambert diffuse and Blinn-Phong specular terms (so colour depends on the viewing direction) and hard
shadows. Rays that miss everything are transparent.

Everything here was written by hand, in numpy, because the scene is analytic: each pixel is shaded by
exact ray-primitive intersection (closed-form sphere roots, slab test for oriented boxes, plane test for
the disk), vectorized over chunks of rays (no Python loop over pixels or rays; the only loops run over
the handful of primitives and over ray chunks). RGB and alpha are antialiased with an ``S x S``
stratified grid of rays per pixel, by default only where the pixel-centre rays show an edge (see
:func:`render_views`). A renderer of our own is the point: ground-truth depth, normals and surface
samples come from the same closed forms as the images, so later code can score reconstructions (depth
error, normal error, Chamfer distance) against the truth. Tracing runs in float32; the tests hold hit
points to within 2e-4 of the analytic surfaces and depths to 2e-5 of the closed form.

Conventions
-----------
- World space: ``+z`` is up (as in Blender). The ground disk lies in the plane ``z = ground.height``,
  centred on the z axis. Objects lie within about ``[-1, 1]^3``; cameras look at the origin.
- Cameras: camera-to-world 4x4 in OpenGL/Blender axes (x right, y up, z back). Pixel ``(i, j)`` (row,
  column) has its centre at image coordinates ``(j + 0.5, i + 0.5)``; ``focal = 0.5 * W / tan(0.5 *
  camera_angle_x)`` for both axes; principal point ``(W / 2, H / 2)``.
- ``rgb``: straight (not premultiplied) colour in [0, 1], the mean over the sub-samples that hit
  something, 0 where nothing was hit. Composite as ``rgb * alpha + background * (1 - alpha)``, as the
  RGBA PNGs mean it. ``alpha``: fraction of sub-samples that hit something.
- ``depth``: z-depth, the distance along the camera's viewing axis (``-z`` in OpenGL axes), of the ray
  through the pixel centre; **0 where that ray misses** (background).
- ``normal``: world-space unit normal at the pixel-centre ray's hit, on the side the ray hit (outward
  for spheres and boxes; ``+z`` for the ground seen from above); ``(0, 0, 0)`` where the ray misses.
  Depth and normals are not averaged over sub-samples, so they are exact geometry; at silhouettes
  ``alpha`` may be fractional where ``depth`` is 0 or positive.

Written folder (``write_procedural_scene``)::

    transforms_{train,val,test}.json   camera_angle_x + frames {file_path: "./train/r_0",
                                       transform_matrix, depth_file_path, normal_file_path}
    {train,val,test}/r_K.png           8-bit RGBA, alpha 0 where rays miss everything
    {train,val,test}/r_K_depth.npy     float32 [H, W] z-depth, 0 for background
    {train,val,test}/r_K_normal.npy    float32 [H, W, 3] world-space unit normals, 0 for background
    scene.json                         the exact primitives, light, shading and conventions
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image
from tqdm import tqdm

from scenezip.errors import DatasetError, ScenezipError

__all__ = [
    "Box",
    "Ground",
    "ProceduralScene",
    "Sphere",
    "camera_split",
    "hemisphere_poses",
    "load_scene_json",
    "look_at_opengl",
    "make_scene",
    "render_views",
    "sample_surface",
    "surface_distance",
    "trace_rays",
    "write_procedural_scene",
]

Vec3 = tuple[float, float, float]

# NeRF-Synthetic's horizontal field of view in radians; at radius 3.5 it frames the 1-unit ground disk.
DEFAULT_FOV_X = 0.6911112070083618
DEFAULT_RADIUS = 3.5
SCENE_FORMAT = "scenezip-procedural"
SCENE_VERSION = 1

_EPS = 1e-6  # smallest accepted ray parameter
_SHADOW_OFFSET = 1e-4  # shadow rays start this far off the surface, along the normal
_COVER_OFFSET = 1e-4  # sample_surface: how far off the surface a point is probed for being covered


# --------------------------------------------------------------------------------------------------
# Scene description


@dataclass(frozen=True)
class Sphere:
    """A sphere with a longitude/latitude checker texture (12 x 6 cells about the z axis)."""

    center: Vec3  # world position of the centre
    radius: float  # world units
    color: Vec3  # base albedo in [0, 1]; dark checker cells are color * (1 - texture_contrast)


@dataclass(frozen=True)
class Box:
    """An oriented box with a checker texture on each face (cells of ``checker_size`` world units)."""

    center: Vec3  # world position of the centre
    half_extents: Vec3  # half side lengths along the box's local x, y, z axes
    rotation: tuple[Vec3, Vec3, Vec3]  # world-from-local rotation, rows of a 3x3 matrix
    color: Vec3  # base albedo in [0, 1]
    checker_size: float = 0.1  # world units per checker cell


@dataclass(frozen=True)
class Ground:
    """An infinitely thin checkered disk in the plane ``z = height``, centred on the z axis."""

    height: float = -0.25  # z of the plane
    radius: float = 1.0  # disk radius
    checker_size: float = 0.25  # world units per checker cell
    color_a: Vec3 = (0.82, 0.82, 0.80)  # albedo of even cells
    color_b: Vec3 = (0.50, 0.52, 0.58)  # albedo of odd cells


@dataclass(frozen=True)
class ProceduralScene:
    """Primitives, light and shading of a procedural scene; build with :func:`make_scene` or by hand."""

    spheres: tuple[Sphere, ...] = ()  # primitive ids 0 .. len(spheres) - 1
    boxes: tuple[Box, ...] = ()  # primitive ids follow the spheres
    ground: Ground | None = field(default_factory=Ground)  # primitive id last; None: no ground
    light_dir: Vec3 = (0.3958, 0.2639, 0.8796)  # unit vector from surfaces towards the light
    ambient: float = 0.25  # ambient weight
    diffuse: float = 0.75  # Lambert weight
    specular: float = 0.35  # Blinn-Phong weight (white highlight); 0 makes shading view-independent
    shininess: float = 40.0  # Blinn-Phong exponent
    shadows: bool = True  # cast hard shadows from the light (antialiased by supersampling)
    texture_contrast: float = 0.3  # darkening of odd checker cells on spheres and boxes; 0 = flat
    seed: int | None = None  # the seed make_scene used, for the record

    @property
    def n_primitives(self) -> int:
        return len(self.spheres) + len(self.boxes) + (self.ground is not None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description; floats keep full precision (``json`` writes ``repr``)."""
        d = asdict(self)
        d["spheres"] = [asdict(s) for s in self.spheres]
        d["boxes"] = [asdict(b) for b in self.boxes]
        d["ground"] = None if self.ground is None else asdict(self.ground)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ProceduralScene":
        """Inverse of :meth:`to_dict`."""

        def vec(x) -> Vec3:
            return tuple(float(v) for v in x)  # type: ignore[return-value]

        spheres = tuple(Sphere(vec(s["center"]), float(s["radius"]), vec(s["color"])) for s in d["spheres"])
        boxes = tuple(
            Box(
                vec(b["center"]),
                vec(b["half_extents"]),
                tuple(vec(r) for r in b["rotation"]),  # type: ignore[arg-type]
                vec(b["color"]),
                float(b.get("checker_size", 0.1)),
            )
            for b in d["boxes"]
        )
        g = d.get("ground")
        ground = None
        if g is not None:
            ground = Ground(
                float(g["height"]),
                float(g["radius"]),
                float(g["checker_size"]),
                vec(g["color_a"]),
                vec(g["color_b"]),
            )
        keys = ("ambient", "diffuse", "specular", "shininess", "texture_contrast")
        return cls(
            spheres=spheres,
            boxes=boxes,
            ground=ground,
            light_dir=vec(d["light_dir"]),
            shadows=bool(d["shadows"]),
            seed=None if d.get("seed") is None else int(d["seed"]),
            **{k: float(d[k]) for k in keys},
        )


def _hsv(h: float, s: float, v: float) -> Vec3:
    return tuple(float(c) for c in colorsys.hsv_to_rgb(h % 1.0, s, v))  # type: ignore[return-value]


def _yaw(angle: float) -> tuple[Vec3, Vec3, Vec3]:
    c, s = math.cos(angle), math.sin(angle)
    return ((c, -s, 0.0), (s, c, 0.0), (0.0, 0.0, 1.0))


def make_scene(seed: int = 0, *, n_spheres: int = 3, n_boxes: int = 2) -> ProceduralScene:
    """A scene of ``n_spheres`` spheres and ``n_boxes`` boxes on a ground disk, chosen by ``seed``.

    The seed picks sizes, positions (no two objects overlap; every footprint lies on the disk), box
    turns about the vertical axis, which spheres float above the ground, and colours (well-separated
    hues). Boxes rest on the ground; spheres rest on it or float up to 0.35 above it. The light, the
    shading weights and the ground are the same for every seed.
    """
    if n_spheres < 0 or n_boxes < 0 or n_spheres + n_boxes == 0:
        raise ValueError(f"n_spheres and n_boxes must be >= 0 with at least one object, got {n_spheres}, {n_boxes}")
    if n_spheres + n_boxes > 8:
        raise ValueError(f"at most 8 objects fit on the ground disk, got {n_spheres + n_boxes}")
    rng = np.random.default_rng(seed)
    ground = Ground()
    n_obj = n_spheres + n_boxes
    hue0 = float(rng.uniform())
    hues = (hue0 + (np.arange(n_obj) + rng.uniform(-0.15, 0.15, n_obj)) / n_obj) % 1.0
    hues = hues[rng.permutation(n_obj)]

    # Sizes first, largest footprint placed first so rejection sampling finds room.
    kinds: list[tuple[str, np.ndarray, float]] = []
    for _ in range(n_spheres):
        r = float(rng.uniform(0.16, 0.30))
        kinds.append(("sphere", np.array([r, r, r]), r))
    for _ in range(n_boxes):
        he = np.array([rng.uniform(0.10, 0.22), rng.uniform(0.10, 0.22), rng.uniform(0.10, 0.30)])
        kinds.append(("box", he, float(np.hypot(he[0], he[1]))))
    scale = 1.0 if n_obj <= 5 else math.sqrt(5.0 / n_obj)
    order = sorted(range(n_obj), key=lambda k: -kinds[k][2])

    placed: list[tuple[np.ndarray, float]] = []  # (xy, footprint radius)
    positions: dict[int, np.ndarray] = {}
    gap = 0.06
    for k in order:
        fp = kinds[k][2] * scale
        shrink = 1.0
        while True:
            reach = ground.radius - 0.1 - fp * shrink
            xy = None
            for _ in range(200):
                cand = rng.uniform(-reach, reach, 2)
                if np.hypot(*cand) > reach:
                    continue
                if all(np.hypot(*(cand - q)) >= fp * shrink + fq + gap for q, fq in placed):
                    xy = cand
                    break
            if xy is not None:
                break
            shrink *= 0.9
        positions[k] = xy
        placed.append((xy, fp * shrink))
        kinds[k] = (kinds[k][0], kinds[k][1] * scale * shrink, fp * shrink)

    spheres: list[Sphere] = []
    boxes: list[Box] = []
    for k in range(n_obj):
        kind, size, _ = kinds[k]
        xy = positions[k]
        sat = float(rng.uniform(0.55, 0.85))
        val = float(rng.uniform(0.75, 0.95))
        color = _hsv(float(hues[k]), sat, val)
        if kind == "sphere":
            r = float(size[0])
            lift = float(rng.uniform(0.10, 0.35)) if rng.uniform() < 0.4 else 0.0
            center = (float(xy[0]), float(xy[1]), ground.height + r + lift)
            spheres.append(Sphere(center, r, color))
        else:
            he = tuple(float(v) for v in size)
            center = (float(xy[0]), float(xy[1]), ground.height + he[2])
            boxes.append(Box(center, he, _yaw(float(rng.uniform(0.0, 0.5 * math.pi))), color))  # type: ignore[arg-type]
    return ProceduralScene(spheres=tuple(spheres), boxes=tuple(boxes), ground=ground, seed=int(seed))


# --------------------------------------------------------------------------------------------------
# Ray tracing
#
# The tracer runs in float32 (half the memory traffic of float64; hit points stay within about 1e-6 of
# the true surfaces at this scene's scale). Rays travel as coordinate rows: ``o`` and ``d`` are [3, R]
# (x, y, z rows), so every numpy operation runs on long contiguous 1-D arrays, several times faster
# than reductions over [R, 3].

_F = np.float32


@dataclass
class _Arrays:
    """The scene as arrays of one dtype, built once per call."""

    sc: np.ndarray  # [S, 3] sphere centres
    sr: np.ndarray  # [S] sphere radii
    scol: np.ndarray  # [S, 3]
    bc: np.ndarray  # [B, 3] box centres
    bh: np.ndarray  # [B, 3] half extents
    bR: np.ndarray  # [B, 3, 3] world-from-local
    bcol: np.ndarray  # [B, 3]
    bcell: np.ndarray  # [B]
    light: np.ndarray  # [3] unit
    bound_c: np.ndarray  # [3] centre of a sphere enclosing every primitive
    bound_r: float  # its radius (0 for an empty scene)


def _arrays(scene: ProceduralScene, dtype=np.float64) -> _Arrays:
    light = np.asarray(scene.light_dir, dtype=np.float64)
    n = np.linalg.norm(light)
    if not n > 0:
        raise ValueError(f"scene.light_dir must be non-zero, got {scene.light_dir}")
    for s in scene.spheres:
        if not s.radius > 0:
            raise ValueError(f"sphere radius must be > 0, got {s.radius}")
    for b in scene.boxes:
        if not min(b.half_extents) > 0:
            raise ValueError(f"box half_extents must be > 0, got {b.half_extents}")
    # Enclosing sphere of every primitive's own bounding sphere, for culling rays that miss everything.
    balls = [(np.asarray(x.center, np.float64), float(x.radius)) for x in scene.spheres]
    balls += [(np.asarray(x.center, np.float64), float(np.linalg.norm(x.half_extents))) for x in scene.boxes]
    if scene.ground is not None:
        balls.append((np.array([0.0, 0.0, scene.ground.height]), float(scene.ground.radius)))
    if balls:
        lo = np.min([c - r for c, r in balls], axis=0)
        hi = np.max([c + r for c, r in balls], axis=0)
        bound_c = 0.5 * (lo + hi)
        bound_r = max(float(np.linalg.norm(c - bound_c)) + r for c, r in balls) * 1.001 + 1e-4
    else:
        bound_c, bound_r = np.zeros(3), 0.0

    def arr(x, shape):
        return np.array(x, dtype=np.float64).reshape(shape).astype(dtype)

    return _Arrays(
        sc=arr([s.center for s in scene.spheres], (-1, 3)),
        sr=arr([s.radius for s in scene.spheres], (-1,)),
        scol=arr([s.color for s in scene.spheres], (-1, 3)),
        bc=arr([b.center for b in scene.boxes], (-1, 3)),
        bh=arr([b.half_extents for b in scene.boxes], (-1, 3)),
        bR=arr([b.rotation for b in scene.boxes], (-1, 3, 3)),
        bcol=arr([b.color for b in scene.boxes], (-1, 3)),
        bcell=arr([b.checker_size for b in scene.boxes], (-1,)),
        light=(light / n).astype(dtype),
        bound_c=bound_c.astype(dtype),
        bound_r=float(bound_r),
    )


def _hit_sphere(o: np.ndarray, d: np.ndarray, c: np.ndarray, r: float) -> np.ndarray:
    """Nearest ray parameter ``t > _EPS`` of unit rays ``o + t d`` on a sphere, ``[R]``; inf on a miss.

    The discriminant is ``r^2 - |oc - (oc.d) d|^2`` (squared distance of the centre from the ray
    subtracted from r^2), which keeps its precision when the camera is far from a small sphere.
    """
    ox, oy, oz = o[0] - c[0], o[1] - c[1], o[2] - c[2]
    b = ox * d[0] + oy * d[1] + oz * d[2]
    fx, fy, fz = ox - b * d[0], oy - b * d[1], oz - b * d[2]
    disc = r * r - (fx * fx + fy * fy + fz * fz)
    sq = np.sqrt(np.maximum(disc, 0.0))
    t = -b - sq
    t = np.where(t > _EPS, t, -b + sq)
    return np.where((disc >= 0.0) & (t > _EPS), t, np.inf).astype(o.dtype, copy=False)


def _hit_box(o: np.ndarray, d: np.ndarray, c: np.ndarray, h: np.ndarray, R: np.ndarray) -> np.ndarray:
    """Slab test on an oriented box, ``[R]``: nearest ``t > _EPS`` or inf.

    Only rays that hit the box's bounding sphere run the slab test.
    """
    out = np.full(o.shape[1], np.inf, dtype=o.dtype)
    idx = np.flatnonzero(np.isfinite(_hit_sphere(o, d, c, float(np.linalg.norm(h)) * 1.001 + 1e-5)))
    if idx.size == 0:
        return out
    oc = o[:, idx] - c[:, None]
    dd = d[:, idx]
    tnear = np.full(idx.size, -np.inf, dtype=o.dtype)
    tfar = np.full(idx.size, np.inf, dtype=o.dtype)
    for k in range(3):  # local axis k: coordinates R^T (o - c), R^T d
        ol = R[0, k] * oc[0] + R[1, k] * oc[1] + R[2, k] * oc[2]
        dl = R[0, k] * dd[0] + R[1, k] * dd[1] + R[2, k] * dd[2]
        inv = 1.0 / np.where(np.abs(dl) < 1e-30, 1e-30, dl)
        t1 = (-h[k] - ol) * inv
        t2 = (h[k] - ol) * inv
        tnear = np.maximum(tnear, np.minimum(t1, t2))
        tfar = np.minimum(tfar, np.maximum(t1, t2))
    t = np.where(tnear > _EPS, tnear, tfar)
    out[idx] = np.where((tfar >= tnear) & (t > _EPS), t, np.inf)
    return out


def _hit_ground(o: np.ndarray, d: np.ndarray, g: Ground) -> np.ndarray:
    dz = d[2]
    t = (g.height - o[2]) / np.where(np.abs(dz) < 1e-30, 1e-30, dz)
    x = o[0] + t * d[0]
    y = o[1] + t * d[1]
    ok = (t > _EPS) & (x * x + y * y <= g.radius * g.radius) & (np.abs(dz) > 1e-12)
    return np.where(ok, t, np.inf).astype(o.dtype, copy=False)


def _nearest(scene: ProceduralScene, A: _Arrays, o: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit of rays ``o``, ``d`` ``[3, R]``: ``t`` ``[R]`` (inf on a miss), primitive id ``[R]`` (-1)."""
    t_best = np.full(o.shape[1], np.inf, dtype=o.dtype)
    prim = np.full(o.shape[1], -1, dtype=np.int64)
    hits = [lambda i=i: _hit_sphere(o, d, A.sc[i], float(A.sr[i])) for i in range(len(A.sr))]
    hits += [lambda i=i: _hit_box(o, d, A.bc[i], A.bh[i], A.bR[i]) for i in range(len(A.bh))]
    if scene.ground is not None:
        hits.append(lambda: _hit_ground(o, d, scene.ground))
    for k, fn in enumerate(hits):
        t = fn()
        closer = t < t_best
        t_best = np.where(closer, t, t_best)
        prim[closer] = k
    return t_best, prim


def _checker(*coords: np.ndarray) -> np.ndarray:
    """1.0 on odd cells of a checker in the given cell coordinates, else 0.0."""
    s = sum(np.floor(c) for c in coords)
    return np.mod(s, 2.0)


def _surface(
    scene: ProceduralScene, A: _Arrays, p: np.ndarray, dz: np.ndarray, prim: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Normals facing the ray and textured albedo, both ``[3, M]``, at hit points ``p`` ``[3, M]``.

    ``dz`` ``[M]`` is the z component of the ray directions (it decides which side of the ground was hit).
    """
    n = np.zeros_like(p)
    alb = np.zeros_like(p)
    ns, nb = len(A.sr), len(A.bh)
    contrast = scene.texture_contrast
    for i in range(ns):
        m = np.flatnonzero(prim == i)
        if m.size == 0:
            continue
        q = p[:, m] - A.sc[i][:, None]
        q /= np.sqrt((q * q).sum(axis=0))
        n[:, m] = q
        lon = np.arctan2(q[1], q[0]) * (12.0 / (2 * np.pi))
        lat = (np.arcsin(np.clip(q[2], -1, 1)) * (1 / np.pi) + 0.5) * 6.0
        alb[:, m] = A.scol[i][:, None] * (1.0 - contrast * _checker(lon, lat))
    for i in range(nb):
        m = np.flatnonzero(prim == ns + i)
        if m.size == 0:
            continue
        R, h = A.bR[i], A.bh[i]
        ql = R.T @ (p[:, m] - A.bc[i][:, None])  # [3, m] local coordinates
        axis = np.argmax(np.abs(ql) / h[:, None], axis=0)
        cols = np.arange(m.size)
        nl = np.zeros_like(ql)
        nl[axis, cols] = np.sign(ql[axis, cols])
        n[:, m] = R @ nl
        cells = (ql + h[:, None]) / A.bcell[i]
        cells[axis, cols] = 0.0  # in-plane coordinates only
        alb[:, m] = A.bcol[i][:, None] * (1.0 - contrast * _checker(cells[0], cells[1], cells[2]))
    if scene.ground is not None:
        g = scene.ground
        m = np.flatnonzero(prim == ns + nb)
        if m.size:
            n[2, m] = np.where(dz[m] > 0.0, -1.0, 1.0)  # the side the ray came from
            odd = _checker(p[0, m] * (1.0 / g.checker_size), p[1, m] * (1.0 / g.checker_size))
            ca, cb = np.asarray(g.color_a, p.dtype)[:, None], np.asarray(g.color_b, p.dtype)[:, None]
            alb[:, m] = ca + (cb - ca) * odd
    return n, alb


def _trace(scene: ProceduralScene, A: _Arrays, o: np.ndarray, d: np.ndarray) -> dict[str, np.ndarray]:
    """Trace unit rays ``o``, ``d`` ``[3, R]``; outputs with ``[3, R]`` vectors (see :func:`trace_rays`).

    Rays that miss the scene's bounding sphere are dropped first, rays that miss every primitive next,
    so shading runs on hits only.
    """
    n_rays, dt = o.shape[1], o.dtype
    hit = np.zeros(n_rays, dtype=bool)
    t_all = np.full(n_rays, np.inf, dtype=dt)
    prim_all = np.full(n_rays, -1, dtype=np.int64)
    points = np.zeros((3, n_rays), dtype=dt)
    normal = np.zeros((3, n_rays), dtype=dt)
    rgb = np.zeros((3, n_rays), dtype=dt)
    out = {"hit": hit, "t": t_all, "points": points, "normal": normal, "rgb": rgb, "primitive": prim_all}
    if A.bound_r == 0.0:
        return out
    cand = np.flatnonzero(np.isfinite(_hit_sphere(o, d, A.bound_c, A.bound_r)))
    t, prim = _nearest(scene, A, o[:, cand], d[:, cand])
    sel = prim >= 0
    idx, t, prim = cand[sel], t[sel], prim[sel]
    if idx.size == 0:
        return out
    oh, dh = o[:, idx], d[:, idx]
    p = oh + t * dh
    n, alb = _surface(scene, A, p, dh[2], prim)
    L = A.light
    ndl = np.maximum(L[0] * n[0] + L[1] * n[1] + L[2] * n[2], 0.0)
    lit = ndl > 0.0
    if scene.shadows and lit.any():
        li = np.flatnonzero(lit)
        so = p[:, li] + _SHADOW_OFFSET * n[:, li]
        sd = np.broadcast_to(L[:, None], so.shape)
        bi = np.flatnonzero(np.isfinite(_hit_sphere(so, sd, A.bound_c, A.bound_r)))
        ts, _ = _nearest(scene, A, so[:, bi], sd[:, bi])
        lit[li[bi[np.isfinite(ts)]]] = False
    ndl = ndl * lit
    hv = L[:, None] - dh  # Blinn-Phong half vector (unnormalized)
    hv /= np.maximum(np.sqrt((hv * hv).sum(axis=0)), 1e-12)
    spec = np.where(lit, np.maximum((n * hv).sum(axis=0), 0.0) ** scene.shininess, 0.0)
    col = alb * (scene.ambient + scene.diffuse * ndl) + scene.specular * spec
    hit[idx] = True
    t_all[idx] = t
    prim_all[idx] = prim
    points[:, idx] = p
    normal[:, idx] = n
    rgb[:, idx] = np.clip(col, 0.0, 1.0)
    return out


def trace_rays(scene: ProceduralScene, origins: np.ndarray, dirs: np.ndarray) -> dict[str, np.ndarray]:
    """Trace rays ``origins + t * dirs`` through ``scene`` with the same code and shading as the renders.

    Args:
        origins: ``[R, 3]`` ray origins.
        dirs: ``[R, 3]`` ray directions (normalized here).

    Returns:
        dict of float32 arrays unless said: ``hit`` ``[R]`` bool, ``t`` ``[R]`` distance along the unit
        direction (inf on a miss), ``points`` ``[R, 3]`` (0 on a miss), ``normal`` ``[R, 3]`` (unit,
        facing the ray; 0 on a miss), ``rgb`` ``[R, 3]`` in [0, 1] (0 on a miss), ``primitive`` ``[R]``
        int64 (spheres, then boxes, then the ground; -1 on a miss).
    """
    o = np.asarray(origins, dtype=np.float64)
    d = np.asarray(dirs, dtype=np.float64)
    if o.ndim != 2 or o.shape[1] != 3:
        raise ValueError(f"origins must have shape [R, 3], got {tuple(o.shape)}")
    if d.shape != o.shape:
        raise ValueError(f"dirs must have shape {tuple(o.shape)} like origins, got {tuple(d.shape)}")
    norm = np.linalg.norm(d, axis=1, keepdims=True)
    if not (norm > 0).all():
        raise ValueError("dirs must be non-zero")
    o3 = np.ascontiguousarray(o.T, dtype=_F)
    d3 = np.ascontiguousarray((d / norm).T, dtype=_F)
    out = _trace(scene, _arrays(scene, _F), o3, d3)
    return {k: (np.ascontiguousarray(v.T) if v.ndim == 2 else v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------------
# Cameras and rendering


def look_at_opengl(
    eye: np.ndarray, target: np.ndarray = (0.0, 0.0, 0.0), up: np.ndarray = (0.0, 0.0, 1.0)
) -> np.ndarray:
    """``[4, 4]`` float64 camera-to-world in OpenGL axes for a camera at ``eye`` looking at ``target``."""
    eye = np.asarray(eye, dtype=np.float64)
    back = eye - np.asarray(target, dtype=np.float64)
    back /= np.linalg.norm(back)
    right = np.cross(np.asarray(up, dtype=np.float64), back)
    if np.linalg.norm(right) < 1e-9:
        raise ValueError(f"eye {eye.tolist()} is straight above or below target along up; pick another up")
    right /= np.linalg.norm(right)
    cam_up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, cam_up, back, eye
    return c2w


def hemisphere_poses(
    n: int,
    radius: float = DEFAULT_RADIUS,
    *,
    min_elevation_deg: float = 12.0,
    max_elevation_deg: float = 72.0,
    target: Vec3 = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """``[n, 4, 4]`` OpenGL camera-to-world matrices on a Fibonacci spiral over the upper hemisphere.

    Cameras sit at ``radius`` from ``target`` and look at it; heights are area-uniform between the two
    elevations, azimuths step by the golden angle, so any evenly spaced subset is itself spread out.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0.0 <= min_elevation_deg < max_elevation_deg < 90.0:
        raise ValueError(
            f"need 0 <= min_elevation_deg < max_elevation_deg < 90, got {min_elevation_deg}, {max_elevation_deg}"
        )
    z0, z1 = math.sin(math.radians(min_elevation_deg)), math.sin(math.radians(max_elevation_deg))
    k = np.arange(n) + 0.5
    z = z1 - (z1 - z0) * k / n  # from the top down
    az = np.arange(n) * math.pi * (3.0 - math.sqrt(5.0))
    ring = np.sqrt(1.0 - z * z)
    eyes = radius * np.stack([ring * np.cos(az), ring * np.sin(az), z], axis=1) + np.asarray(target)
    return np.stack([look_at_opengl(e, target) for e in eyes])


def camera_split(n_train: int, n_val: int, n_test: int) -> dict[str, np.ndarray]:
    """Interleave splits over ``n_train + n_val + n_test`` spiral positions: evenly spaced test indices,
    then evenly spaced val indices among the rest, train gets what is left. int64 index arrays."""
    if n_train < 1 or n_val < 0 or n_test < 0:
        raise ValueError(f"need n_train >= 1, n_val >= 0, n_test >= 0, got {n_train}, {n_val}, {n_test}")
    remaining = np.arange(n_train + n_val + n_test)
    out: dict[str, np.ndarray] = {}
    for name, count in (("test", n_test), ("val", n_val)):
        pick = np.floor((np.arange(count) + 0.5) * len(remaining) / max(count, 1)).astype(np.int64)
        out[name] = remaining[pick]
        remaining = np.delete(remaining, pick)
    out["train"] = remaining
    return {k: out[k].astype(np.int64) for k in ("train", "val", "test")}


def _pixel_rays(
    c2w: np.ndarray, pix: np.ndarray, su: np.ndarray, sv: np.ndarray, W: int, H: int, f: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rays through pixels ``pix`` ``[p]`` (flat indices ``i * W + j``) at sub-pixel offsets ``su, sv``
    ``[K]``: origins and unit directions ``[3, p * K]`` (pixel-major), and ``1 / |(x, y, -1)|`` ``[p, K]``
    (the cosine to the viewing axis, which turns ray distance into z-depth)."""
    i, j = np.divmod(pix, W)
    x = ((j[:, None] + su[None, :]) - 0.5 * W) / f  # camera-space direction (x, y, -1), OpenGL axes
    y = -((i[:, None] + sv[None, :]) - 0.5 * H) / f
    inv_len = 1.0 / np.sqrt(x * x + y * y + 1.0)
    x, y, z = (x * inv_len).ravel(), (y * inv_len).ravel(), -inv_len.ravel()
    R = c2w[:3, :3]
    d = np.stack([R[a, 0] * x + R[a, 1] * y + R[a, 2] * z for a in range(3)]).astype(_F)
    o = np.broadcast_to(c2w[:3, 3, None].astype(_F), d.shape)
    return o, d, inv_len


def _needs_aa(prim: np.ndarray, rgb: np.ndarray, threshold: float) -> np.ndarray:
    """``[H, W]`` bool: pixels whose 8-neighbourhood holds another primitive (or a miss) or a colour
    more than ``threshold`` away in some channel; ``prim`` ``[H, W]``, ``rgb`` ``[H, W, 3]``."""
    H, W = prim.shape
    pp = np.pad(prim, 1, mode="edge")
    cp = np.pad(rgb, ((1, 1), (1, 1), (0, 0)), mode="edge")
    flag = np.zeros((H, W), dtype=bool)
    for di in (0, 1, 2):
        for dj in (0, 1, 2):
            if di == 1 and dj == 1:
                continue
            flag |= pp[di : di + H, dj : dj + W] != prim
            flag |= (np.abs(cp[di : di + H, dj : dj + W] - rgb) > threshold).any(axis=-1)
    return flag


def render_views(
    scene: ProceduralScene,
    c2w_opengl: np.ndarray,
    width: int,
    height: int,
    fov_x: float,
    *,
    samples_per_side: int = 3,
    antialias: Literal["adaptive", "full"] = "adaptive",
    chunk_rays: int = 32768,
) -> dict[str, np.ndarray]:
    """Ray trace ``scene`` from cameras ``c2w_opengl`` ``[N, 4, 4]`` (OpenGL/Blender axes).

    Every pixel first traces its centre ray, which gives ``depth`` and ``normal``. Pixels then get an
    ``S x S`` stratified grid of rays, averaged into ``rgb`` and ``alpha``: all of them with
    ``antialias="full"``; with ``"adaptive"`` (the default, several times faster) only pixels whose
    3x3 neighbourhood of centre rays shows another primitive, a miss, or a colour step above 1/64
    (silhouettes, texture and shadow edges, highlights); the others keep their centre ray.

    Args:
        width, height: image size in pixels.
        fov_x: horizontal field of view in radians (Blender's ``camera_angle_x``); square pixels.
        samples_per_side: ``S``; 1 turns antialiasing off.
        chunk_rays: rays traced per vectorized batch (memory stays near 0.5 kB per ray of a batch).

    Returns:
        dict of float32 numpy arrays: ``rgb`` ``[N, H, W, 3]`` (straight colour), ``alpha``
        ``[N, H, W]``, ``depth`` ``[N, H, W]`` (z-depth, 0 for background), ``normal`` ``[N, H, W, 3]``
        (world space, unit, 0 for background). See the module docstring for the conventions.
    """
    c2w = np.asarray(c2w_opengl, dtype=np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"c2w_opengl must have shape [N, 4, 4], got {tuple(c2w.shape)}")
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"width and height must be >= 1, got {width}, {height}")
    if not 0.0 < fov_x < math.pi:
        raise ValueError(f"fov_x must be in (0, pi) radians, got {fov_x}")
    if samples_per_side < 1:
        raise ValueError(f"samples_per_side must be >= 1, got {samples_per_side}")
    if antialias not in ("adaptive", "full"):
        raise ValueError(f"antialias must be 'adaptive' or 'full', got {antialias!r}")
    W, H, S = int(width), int(height), int(samples_per_side)
    A = _arrays(scene, _F)
    f = 0.5 * W / math.tan(0.5 * fov_x)
    offs = (np.arange(S) + 0.5) / S
    su, sv = np.tile(offs, S), np.repeat(offs, S)  # column offset fastest
    centre = np.array([0.5])
    step = max(1, int(chunk_rays))

    N, HW = c2w.shape[0], H * W
    rgb = np.zeros((N, HW, 3), np.float32)
    alpha = np.zeros((N, HW), np.float32)
    depth = np.zeros((N, HW), np.float32)
    normal = np.zeros((N, HW, 3), np.float32)
    prim = np.zeros(HW, np.int64)
    for v in range(N):  # chunks never straddle views, so one camera per chunk
        for start in range(0, HW, step):
            pix = np.arange(start, min(HW, start + step))
            o, d, inv_len = _pixel_rays(c2w[v], pix, centre, centre, W, H, f)
            out = _trace(scene, A, o, d)
            rgb[v, pix] = out["rgb"].T
            alpha[v, pix] = out["hit"]
            depth[v, pix] = np.where(out["hit"], out["t"] * inv_len[:, 0], 0.0)
            normal[v, pix] = out["normal"].T
            prim[pix] = out["primitive"]
        if S == 1:
            continue
        if antialias == "full":
            todo = np.arange(HW)
        else:
            todo = np.flatnonzero(_needs_aa(prim.reshape(H, W), rgb[v].reshape(H, W, 3), 1.0 / 64.0))
        for start in range(0, todo.size, max(1, step // (S * S))):
            pix = todo[start : start + max(1, step // (S * S))]
            o, d, _ = _pixel_rays(c2w[v], pix, su, sv, W, H, f)
            out = _trace(scene, A, o, d)
            cnt = out["hit"].reshape(-1, S * S).sum(axis=1)
            csum = out["rgb"].reshape(3, -1, S * S).sum(axis=2)  # [3, p]
            rgb[v, pix] = (csum / np.maximum(cnt, 1)).T
            alpha[v, pix] = cnt / (S * S)
    return {
        "rgb": rgb.reshape(N, H, W, 3),
        "alpha": alpha.reshape(N, H, W),
        "depth": depth.reshape(N, H, W),
        "normal": normal.reshape(N, H, W, 3),
    }


# --------------------------------------------------------------------------------------------------
# Ground-truth surfaces


def surface_distance(scene: ProceduralScene, points: np.ndarray) -> np.ndarray:
    """Unsigned distance ``[P]`` (float64) from ``points`` ``[P, 3]`` to the nearest primitive surface."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must have shape [P, 3], got {tuple(p.shape)}")
    A = _arrays(scene)
    best = np.full(p.shape[0], np.inf)
    for c, r in zip(A.sc, A.sr):
        best = np.minimum(best, np.abs(np.linalg.norm(p - c, axis=1) - r))
    for c, h, R in zip(A.bc, A.bh, A.bR):
        q = np.abs((p - c) @ R) - h
        sdf = np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(axis=1), 0.0)
        best = np.minimum(best, np.abs(sdf))
    if scene.ground is not None:
        g = scene.ground
        rad = np.hypot(p[:, 0], p[:, 1])
        dz = p[:, 2] - g.height
        best = np.minimum(best, np.hypot(np.maximum(rad - g.radius, 0.0), dz))
    return best


def _covered(scene: ProceduralScene, A: _Arrays, p: np.ndarray) -> np.ndarray:
    """Points inside a solid: a ball, a box, or below the ground disk (the ground hides what is under it)."""
    inside = np.zeros(p.shape[0], dtype=bool)
    for c, r in zip(A.sc, A.sr):
        inside |= np.einsum("ri,ri->r", p - c, p - c) < r * r
    for c, h, R in zip(A.bc, A.bh, A.bR):
        inside |= (np.abs((p - c) @ R) < h).all(axis=1)
    if scene.ground is not None:
        g = scene.ground
        inside |= (p[:, 2] < g.height) & (p[:, 0] ** 2 + p[:, 1] ** 2 < g.radius**2)
    return inside


def _sample_raw(A: _Arrays, ground: Ground | None, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` area-uniform samples over all primitive surfaces (spheres, box faces, ground disk)."""
    # One entry per piece: (kind, index, area); box faces are pieces of their own.
    pieces: list[tuple[str, int, int, float]] = []
    for i, r in enumerate(A.sr):
        pieces.append(("sphere", i, 0, 4.0 * math.pi * r * r))
    for i, h in enumerate(A.bh):
        for axis in range(3):
            a, b = [k for k in range(3) if k != axis]
            for sign in (-1, 1):
                pieces.append(("box", i, sign * (axis + 1), 4.0 * h[a] * h[b]))
    if ground is not None:
        pieces.append(("ground", 0, 0, math.pi * ground.radius**2))
    areas = np.array([pc[3] for pc in pieces])
    counts = rng.multinomial(n, areas / areas.sum())
    pts, nrm = [], []
    for (kind, i, face, _), m in zip(pieces, counts):
        if m == 0:
            continue
        if kind == "sphere":
            v = rng.normal(size=(m, 3))
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            pts.append(A.sc[i] + A.sr[i] * v)
            nrm.append(v)
        elif kind == "box":
            axis, sign = abs(face) - 1, float(np.sign(face))
            h = A.bh[i]
            ql = rng.uniform(-1.0, 1.0, size=(m, 3)) * h
            ql[:, axis] = sign * h[axis]
            nl = np.zeros((m, 3))
            nl[:, axis] = sign
            pts.append(A.bc[i] + ql @ A.bR[i].T)
            nrm.append(nl @ A.bR[i].T)
        else:
            r = ground.radius * np.sqrt(rng.uniform(size=m))
            th = rng.uniform(0.0, 2.0 * math.pi, size=m)
            pts.append(np.stack([r * np.cos(th), r * np.sin(th), np.full(m, ground.height)], axis=1))
            nrm.append(np.tile([0.0, 0.0, 1.0], (m, 1)))
    p, nn = np.concatenate(pts), np.concatenate(nrm)
    perm = rng.permutation(len(p))  # mix pieces so truncation keeps the area proportions
    return p[perm], nn[perm]


def sample_surface(scene: ProceduralScene, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Area-uniform samples on the exposed true surfaces of ``scene``, for Chamfer distances.

    Every sphere, every box face and the top of the ground disk are sampled in proportion to area;
    points whose surroundings are covered by another solid (a box's bottom face on the ground, the
    ground under a box, anything under the ground) are dropped, and sampling repeats until ``n``
    points remain.

    Returns:
        points ``[n, 3]`` and outward unit normals ``[n, 3]`` (``+z`` on the ground), float32.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if scene.n_primitives == 0:
        raise ValueError("scene has no primitives to sample")
    A = _arrays(scene)
    rng = np.random.default_rng(seed)
    got_p, got_n, have = [], [], 0
    while have < n:
        m = int((n - have) * 1.25) + 64
        p, nn = _sample_raw(A, scene.ground, m, rng)
        keep = ~_covered(scene, A, p + _COVER_OFFSET * nn)
        if not keep.any() and have == 0 and len(got_p) > 20:
            raise ValueError("every surface of the scene is covered by another solid")
        got_p.append(p[keep])
        got_n.append(nn[keep])
        have += int(keep.sum())
    if n == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
    return (np.concatenate(got_p)[:n].astype(np.float32), np.concatenate(got_n)[:n].astype(np.float32))


# --------------------------------------------------------------------------------------------------
# Files


def load_scene_json(path: str | os.PathLike) -> ProceduralScene:
    """Read the ``scene.json`` written by :func:`write_procedural_scene` (or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "scene.json"
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        raise DatasetError(f"{path}: no such file (a procedural scene folder holds scene.json)") from None
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read JSON ({e})") from None
    if not isinstance(d, dict) or d.get("format") != SCENE_FORMAT:
        raise DatasetError(f"{path}: not a {SCENE_FORMAT} scene description (format key missing or different)")
    if d.get("version") != SCENE_VERSION:
        raise DatasetError(
            f"{path}: unknown {SCENE_FORMAT} version {d.get('version')!r} (this code reads {SCENE_VERSION})"
        )
    try:
        return ProceduralScene.from_dict(d["scene"])
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"{path}: malformed scene description ({type(e).__name__}: {e})") from None


def _to_png(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """``[H, W, 4]`` uint8 RGBA; colour is zeroed where alpha rounds to 0."""
    a8 = np.round(np.clip(alpha, 0.0, 1.0) * 255.0).astype(np.uint8)
    c8 = np.round(np.clip(rgb, 0.0, 1.0) * 255.0).astype(np.uint8) * (a8 > 0)[..., None]
    return np.concatenate([c8, a8[..., None]], axis=-1)


def write_procedural_scene(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 24,
    n_val: int = 4,
    n_test: int = 8,
    width: int = 64,
    height: int = 64,
    seed: int = 0,
    scene: ProceduralScene | None = None,
    camera_angle_x: float = DEFAULT_FOV_X,
    radius: float = DEFAULT_RADIUS,
    samples_per_side: int = 3,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Render a procedural scene into a Blender/NeRF-Synthetic folder at ``out_dir`` and return its path.

    ``scene`` defaults to ``make_scene(seed)``. Cameras come from :func:`hemisphere_poses` over all
    views, split by :func:`camera_split`, so test views sit between training views. The folder is built
    under a temporary name beside ``out_dir`` and renamed at the end, so a failure leaves nothing
    behind. An existing non-empty ``out_dir`` is refused unless ``overwrite`` is set and it holds a
    ``scene.json`` (that is, it was written here). ``progress`` shows a bar over the views.
    """
    out = Path(out_dir).resolve()
    if out.exists() and not out.is_dir():
        raise ScenezipError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ScenezipError(f"{out}: folder is not empty (pass overwrite=True to replace a procedural scene)")
        if not (out / "scene.json").is_file():
            raise ScenezipError(f"{out}: refusing to overwrite a folder that holds no procedural scene.json")
    if scene is None:
        scene = make_scene(seed)
    splits = camera_split(n_train, n_val, n_test)
    poses = hemisphere_poses(n_train + n_val + n_test, radius)
    render_views(scene, poses[:0], width, height, camera_angle_x, samples_per_side=samples_per_side)  # checks

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the result is an ordinary folder
        bar = tqdm(total=len(poses), desc="rendering procedural scene", unit="view", disable=not progress)
        for split, idx in splits.items():
            (tmp / split).mkdir()
            frames = []
            for k, v in enumerate(idx):
                stem = f"{split}/r_{k}"
                # One view at a time keeps memory at one image, whatever the resolution.
                view = render_views(
                    scene, poses[v : v + 1], width, height, camera_angle_x, samples_per_side=samples_per_side
                )
                Image.fromarray(_to_png(view["rgb"][0], view["alpha"][0]), "RGBA").save(tmp / f"{stem}.png")
                np.save(tmp / f"{stem}_depth.npy", view["depth"][0])
                np.save(tmp / f"{stem}_normal.npy", view["normal"][0])
                frames.append(
                    {
                        "file_path": f"./{stem}",
                        "transform_matrix": poses[v].tolist(),
                        "depth_file_path": f"./{stem}_depth.npy",
                        "normal_file_path": f"./{stem}_normal.npy",
                    }
                )
                bar.update(1)
            meta = {"camera_angle_x": float(camera_angle_x), "frames": frames}
            (tmp / f"transforms_{split}.json").write_text(json.dumps(meta, indent=2))
        desc = {
            "format": SCENE_FORMAT,
            "version": SCENE_VERSION,
            "scene": scene.to_dict(),
            "render": {
                "width": int(width),
                "height": int(height),
                "camera_angle_x": float(camera_angle_x),
                "camera_radius": float(radius),
                "camera_target": [0.0, 0.0, 0.0],
                "samples_per_side": int(samples_per_side),
            },
            "conventions": {
                "world": "+z up; ground disk in the plane z = ground.height centred on the z axis",
                "box_rotation": "world-from-local 3x3, row-major; world = rotation @ local + center",
                "primitive_ids": "spheres, then boxes, then the ground",
                "camera": "transform_matrix is camera-to-world in OpenGL axes (x right, y up, z back)",
                "pixels": "pixel (i, j) centre at (j + 0.5, i + 0.5); focal = 0.5 W / tan(camera_angle_x / 2)",
                "rgba": "8-bit straight (not premultiplied) RGBA; alpha = sub-sample coverage, 0 for background",
                "depth": "float32 [H, W] z-depth along the viewing axis of the pixel-centre ray; 0 for background",
                "normal": "float32 [H, W, 3] world-space unit normal of the pixel-centre hit, facing the camera; "
                "0 for background",
                "shading": "albedo * (ambient + diffuse * max(n.l, 0) * lit) + specular * max(n.h, 0)^shininess * lit",
            },
        }
        (tmp / "scene.json").write_text(json.dumps(desc, indent=2))
        bar.close()
        if not out.is_dir():
            os.replace(tmp, out)
        else:  # keep the folder itself (it may be someone's working directory); swap its entries
            old = None
            if any(out.iterdir()):  # an old procedural scene: move it aside, delete it at the end
                old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                for child in list(out.iterdir()):
                    os.replace(child, old / child.name)
            for child in list(tmp.iterdir()):
                os.replace(child, out / child.name)
            tmp.rmdir()
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_ground_truth(ds: Any, ids: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True geometry of the written views ``ids`` of a loaded procedural capture ``ds``, in its normalized frame:
    z-depth ``[C, H, W]``, world normals ``[C, H, W, 3]`` and the mask of pixels fully covered by the scene
    (alpha 255 and a true depth). Reads the ``_depth.npy`` / ``_normal.npy`` files beside each image."""
    rot = ds.normalization[:3, :3] / ds.scale
    depth, normals, mask = [], [], []
    for i in np.asarray(ids).tolist():
        p = Path(ds.image_paths[i])
        d = np.load(p.with_name(p.stem + "_depth.npy"))
        depth.append(d * ds.scale)
        normals.append(np.load(p.with_name(p.stem + "_normal.npy")) @ rot.T)
        mask.append((np.asarray(Image.open(p))[..., 3] == 255) & (d > 0))
    return np.stack(depth), np.stack(normals), np.stack(mask)
