"""Tiny fake captures for tests: a seeded camera rig and writers for every format scenezip reads.

A :class:`FakeRig` holds ground truth in capture world space (OpenCV camera-to-world, intrinsics,
distortion, a marker point and a coloured point cloud). :func:`render_images` draws either the
marker as one red pixel (where the distorted projection lands, so a reader with a wrong axis
convention puts it elsewhere) or a smooth analytic pattern seen through the distortion.
``write_blender``/``write_nerfstudio``/``write_colmap``/``write_llff`` store the rig in each format.
The distortion model and its inverse are written here independently of ``images.py`` so tests compare
two implementations. Not used by product code.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

COLMAP_MODEL_IDS = {"SIMPLE_PINHOLE": 0, "PINHOLE": 1, "SIMPLE_RADIAL": 2, "RADIAL": 3, "OPENCV": 4}


@dataclass
class FakeRig:
    c2w: np.ndarray  # [N, 4, 4] OpenCV camera-to-world
    Ks: np.ndarray  # [N, 3, 3]
    width: int
    height: int
    dist: np.ndarray  # [N, 4] k1 k2 p1 p2
    models: list[str]  # COLMAP model name per camera
    marker: np.ndarray  # [3] world point drawn in every image
    points: np.ndarray  # [P, 3] world points (marker first)
    colors: np.ndarray  # [P, 3] uint8

    def __len__(self) -> int:
        return len(self.c2w)


def look_at_c2w(eye: np.ndarray, target: np.ndarray, roll: float) -> np.ndarray:
    """OpenCV camera-to-world ``[4, 4]`` at ``eye`` looking at ``target``, rolled by ``roll`` radians."""
    z = target - eye
    z = z / np.linalg.norm(z)
    up = np.array([0.0, 0.0, 1.0]) if abs(z[2]) < 0.95 else np.array([0.0, 1.0, 0.0])
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    c, s = math.cos(roll), math.sin(roll)
    x, y = c * x + s * y, -s * x + c * y
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = x, y, z, eye
    return m


def make_rig(
    n: int = 10,
    width: int = 16,
    height: int = 12,
    *,
    seed: int = 0,
    models: list[str] | str = "PINHOLE",
    distortion: float = 0.0,
    centered: bool = False,
    focal: float = 14.0,
    radius: float = 4.0,
    target: tuple[float, float, float] = (0.6, -0.4, 0.3),
    forward: bool = False,
) -> FakeRig:
    """Cameras around ``target`` (or, with ``forward``, side by side looking the same way).

    ``models`` (one name or one per camera) fixes which intrinsics may differ (fx = fy for SIMPLE_* and
    RADIAL) and which distortion terms are non-zero (random in ``[-distortion, distortion]``).
    ``centered`` puts the principal point at the image centre (Blender, LLFF).
    """
    rng = np.random.default_rng(seed)
    tgt = np.asarray(target, dtype=np.float64)
    models = [models] * n if isinstance(models, str) else list(models)
    c2w, Ks, dist = [], [], []
    for i in range(n):
        if forward:
            eye = tgt + np.array([rng.uniform(-0.3, 0.3), rng.uniform(-0.2, 0.2), -radius])
            look = eye + np.array([0.0, 0.0, radius]) + rng.uniform(-0.05, 0.05, 3)
            c2w.append(look_at_c2w(eye, look, rng.uniform(-0.1, 0.1)))
        else:
            az, el = 2 * math.pi * i / n + rng.uniform(-0.2, 0.2), rng.uniform(0.2, 1.0)
            eye = tgt + radius * np.array([math.cos(az) * math.cos(el), math.sin(az) * math.cos(el), math.sin(el)])
            c2w.append(look_at_c2w(eye, tgt, rng.uniform(-0.5, 0.5)))
        m = models[i]
        fx = focal * rng.uniform(0.95, 1.05)
        fy = fx if (m.startswith("SIMPLE") or m == "RADIAL" or centered) else fx * rng.uniform(0.97, 1.03)
        if centered:
            cx, cy = width / 2, height / 2
        else:
            cx, cy = width / 2 + rng.uniform(-0.8, 0.8), height / 2 + rng.uniform(-0.8, 0.8)
        Ks.append(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]]))
        d = rng.uniform(-distortion, distortion, 4)
        mask = {"SIMPLE_RADIAL": (1, 0, 0, 0), "RADIAL": (1, 1, 0, 0), "OPENCV": (1, 1, 1, 1)}.get(m, (0, 0, 0, 0))
        dist.append(d * np.asarray(mask))
    marker = tgt + np.array([0.8, -0.6, 0.5])
    pts = np.concatenate([marker[None], tgt + rng.uniform(-1.0, 1.0, (40, 3))])
    cols = rng.integers(0, 256, (len(pts), 3), dtype=np.uint8)
    return FakeRig(np.stack(c2w), np.stack(Ks), width, height, np.stack(dist), models, marker, pts, cols)


def distort(x: np.ndarray, y: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """OpenCV (k1, k2, p1, p2) forward distortion of normalized coordinates."""
    k1, k2, p1, p2 = d
    r2 = x**2 + y**2
    f = 1 + k1 * r2 + k2 * r2**2
    return x * f + 2 * p1 * x * y + p2 * (r2 + 2 * x**2), y * f + p1 * (r2 + 2 * y**2) + 2 * p2 * x * y


def undistort(xd: np.ndarray, yd: np.ndarray, d: np.ndarray, iters: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Invert :func:`distort` by fixed-point iteration."""
    x, y = xd.copy(), yd.copy()
    for _ in range(iters):
        ex, ey = distort(x, y, d)
        x, y = x - (ex - xd), y - (ey - yd)
    return x, y


def project(rig: FakeRig, i: int, p: np.ndarray, *, distorted: bool = True) -> np.ndarray:
    """Pixel position ``[2]`` (centres at +0.5) of world point ``p`` in camera ``i``."""
    w2c = np.linalg.inv(rig.c2w[i])
    q = w2c[:3, :3] @ p + w2c[:3, 3]
    x, y = q[0] / q[2], q[1] / q[2]
    if distorted:
        x, y = distort(np.asarray(x), np.asarray(y), rig.dist[i])
    K = rig.Ks[i]
    return np.array([K[0, 0] * x + K[0, 2], K[1, 1] * y + K[1, 2]], dtype=np.float64)


def pattern(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Smooth RGB test pattern ``[..., 3]`` in [0, 1] of normalized pinhole coordinates."""
    return np.stack([0.5 + 0.4 * np.sin(3 * x + 1), 0.5 + 0.4 * np.cos(2.5 * y), 0.5 + 0.4 * np.sin(2 * x - 2 * y)], -1)


def render_images(rig: FakeRig, kind: str = "marker", *, rgba: bool = False) -> list[np.ndarray]:
    """uint8 images ``[H, W, 3]`` (``[H, W, 4]`` with ``rgba``) of the rig.

    ``marker``: black (transparent with ``rgba``) with the marker's distorted projection as one opaque
    red pixel. ``pattern``: :func:`pattern` as seen by each distorted camera.
    """
    H, W = rig.height, rig.width
    out = []
    for i in range(len(rig)):
        img = np.zeros((H, W, 4), dtype=np.uint8)
        if kind == "marker":
            u, v = project(rig, i, rig.marker)
            c, r = int(math.floor(u)), int(math.floor(v))
            if not (0 <= c < W and 0 <= r < H):
                raise ValueError(f"marker falls outside image {i} at ({u:.2f}, {v:.2f})")
            img[r, c] = (255, 0, 0, 255)
        else:
            vv, uu = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
            K = rig.Ks[i]
            x, y = undistort((uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1], rig.dist[i])
            img[..., :3] = np.round(pattern(x, y) * 255).astype(np.uint8)
            img[..., 3] = 255
        out.append(img if rgba else img[..., :3].copy())
    return out


def save_png(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def opencv_to_opengl(c2w: np.ndarray) -> np.ndarray:
    out = np.array(c2w, dtype=np.float64, copy=True)
    out[..., :3, 1:3] *= -1
    return out


def write_blender(root: Path, rig: FakeRig, images: list[np.ndarray], split_sizes=(6, 2, 2)) -> dict[str, list[int]]:
    """Write ``transforms_{train,val,test}.json`` and RGBA PNGs (file paths without extension)."""
    root.mkdir(parents=True, exist_ok=True)
    fx = rig.Ks[0, 0, 0]
    angle = 2 * math.atan(rig.width / (2 * fx))
    splits, start = {}, 0
    for name, k in zip(("train", "val", "test"), split_sizes):
        frames = []
        for i in range(start, start + k):
            save_png(root / name / f"r_{i}.png", images[i])
            frames.append({"file_path": f"./{name}/r_{i}", "rotation": 0.0, "transform_matrix": opencv_to_opengl(rig.c2w[i]).tolist()})
        (root / f"transforms_{name}.json").write_text(json.dumps({"camera_angle_x": angle, "frames": frames}))
        splits[name] = list(range(start, start + k))
        start += k
    return splits


def write_nerfstudio(
    root: Path,
    rig: FakeRig,
    images: list[np.ndarray],
    *,
    per_frame: bool = True,
    split: dict[str, list[int]] | None = None,
    extra: dict | None = None,
) -> list[str]:
    """Write ``transforms.json`` (frames listed in shuffled order) and PNGs in ``images/``.

    With ``per_frame`` every frame carries its own intrinsics; otherwise camera 0's are global.
    ``split`` writes ``*_filenames`` lists (camera indices). Returns the file names in camera order.
    """
    names = [f"images/frame_{i:03d}.png" for i in range(len(rig))]
    frames = []
    for i in range(len(rig)):
        save_png(root / names[i], images[i])
        fr = {"file_path": names[i], "transform_matrix": opencv_to_opengl(rig.c2w[i]).tolist()}
        if per_frame:
            fr.update(_ns_intrinsics(rig, i))
        frames.append(fr)
    order = np.random.default_rng(1).permutation(len(frames))
    meta = {} if per_frame else _ns_intrinsics(rig, 0)
    meta["frames"] = [frames[k] for k in order]
    if split:
        for k, idx in split.items():
            meta[f"{k}_filenames"] = [names[i] for i in idx]
    meta.update(extra or {})
    (root / "transforms.json").write_text(json.dumps(meta))
    return names


def _ns_intrinsics(rig: FakeRig, i: int) -> dict:
    K, d = rig.Ks[i], rig.dist[i]
    return {
        "fl_x": K[0, 0], "fl_y": K[1, 1], "cx": K[0, 2], "cy": K[1, 2], "w": rig.width, "h": rig.height,
        "k1": d[0], "k2": d[1], "p1": d[2], "p2": d[3],
    }


def rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """(w, x, y, z) quaternion of a rotation matrix, w >= 0."""
    w = math.sqrt(max(0.0, 1 + R[0, 0] + R[1, 1] + R[2, 2])) / 2
    x = math.copysign(math.sqrt(max(0.0, 1 + R[0, 0] - R[1, 1] - R[2, 2])) / 2, R[2, 1] - R[1, 2])
    y = math.copysign(math.sqrt(max(0.0, 1 - R[0, 0] + R[1, 1] - R[2, 2])) / 2, R[0, 2] - R[2, 0])
    z = math.copysign(math.sqrt(max(0.0, 1 - R[0, 0] - R[1, 1] + R[2, 2])) / 2, R[1, 0] - R[0, 1])
    q = np.array([w, x, y, z])
    return q / np.linalg.norm(q)


def _colmap_params(rig: FakeRig, i: int) -> list[float]:
    K, d, m = rig.Ks[i], rig.dist[i], rig.models[i]
    f, fx, fy, cx, cy = K[0, 0], K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    return {
        "SIMPLE_PINHOLE": [f, cx, cy],
        "PINHOLE": [fx, fy, cx, cy],
        "SIMPLE_RADIAL": [f, cx, cy, d[0]],
        "RADIAL": [f, cx, cy, d[0], d[1]],
        "OPENCV": [fx, fy, cx, cy, *d],
    }[m]


def colmap_observations(rig: FakeRig, i: int) -> np.ndarray:
    """``[M, 3]`` (x, y, point3D id) keypoints of camera ``i``: every rig point in front of it, plus an
    unmatched keypoint (id -1)."""
    rows = [[1.0, 2.0, -1.0]]
    for pid, p in enumerate(rig.points):
        rows.append([*project(rig, i, p), pid + 1])
    return np.asarray(rows)


def write_colmap(root: Path, rig: FakeRig, images: list[np.ndarray] | None, *, binary: bool = True, sparse: str = "sparse/0") -> Path:
    """Write a COLMAP model (one camera per image, ``rig.models``) and PNGs in ``images/``; returns the sparse dir."""
    sp = root / sparse
    sp.mkdir(parents=True, exist_ok=True)
    names = [f"img_{i:03d}.png" for i in range(len(rig))]
    if images is not None:
        for i, img in enumerate(images):
            save_png(root / "images" / names[i], img)
    poses = []
    for i in range(len(rig)):
        w2c = np.linalg.inv(rig.c2w[i])
        poses.append((rotmat_to_qvec(w2c[:3, :3]), w2c[:3, 3]))
    order = np.random.default_rng(2).permutation(len(rig))  # image ids not in name order
    if binary:
        b = bytearray(struct.pack("<Q", len(rig)))
        for i in range(len(rig)):
            p = _colmap_params(rig, i)
            b += struct.pack("<iiQQ", i + 1, COLMAP_MODEL_IDS[rig.models[i]], rig.width, rig.height) + struct.pack(f"<{len(p)}d", *p)
        (sp / "cameras.bin").write_bytes(bytes(b))
        b = bytearray(struct.pack("<Q", len(rig)))
        for i in order:
            q, t = poses[i]
            obs = colmap_observations(rig, i)
            b += struct.pack("<i7di", int(i) + 10, *q, *t, int(i) + 1) + names[i].encode() + b"\0"
            b += struct.pack("<Q", len(obs)) + b"".join(struct.pack("<ddq", x, y, int(pid)) for x, y, pid in obs)
        (sp / "images.bin").write_bytes(bytes(b))
        b = bytearray(struct.pack("<Q", len(rig.points)))
        for k, (p, c) in enumerate(zip(rig.points, rig.colors)):
            track = [(j + 10, k + 1) for j in range(min(3, len(rig)))]
            b += struct.pack("<Q3d3BdQ", k + 1, *p, *c.tolist(), 0.5, len(track))
            b += b"".join(struct.pack("<ii", a, c2) for a, c2 in track)
        (sp / "points3D.bin").write_bytes(bytes(b))
    else:
        lines = ["# Camera list with one line of data per camera:"]
        for i in range(len(rig)):
            lines.append(" ".join([str(i + 1), rig.models[i], str(rig.width), str(rig.height)] + [repr(float(v)) for v in _colmap_params(rig, i)]))
        (sp / "cameras.txt").write_text("\n".join(lines) + "\n")
        lines = ["# Image list with two lines of data per image:"]
        for n_written, i in enumerate(order):
            q, t = poses[i]
            lines.append(" ".join([str(int(i) + 10)] + [repr(float(v)) for v in (*q, *t)] + [str(int(i) + 1), names[i]]))
            obs = colmap_observations(rig, i) if n_written % 3 else np.zeros((0, 3))  # some images without keypoints
            lines.append(" ".join(f"{x!r} {y!r} {int(pid)}" for x, y, pid in obs.tolist()))
        (sp / "images.txt").write_text("\n".join(lines) + "\n")
        lines = ["# 3D point list with one line of data per point:"]
        for k, (p, c) in enumerate(zip(rig.points, rig.colors)):
            lines.append(" ".join([str(k + 1)] + [repr(float(v)) for v in p] + [str(int(v)) for v in c] + ["0.5", "10", "1", "11", "2"]))
        (sp / "points3D.txt").write_text("\n".join(lines) + "\n")
    return sp


def write_llff(root: Path, rig: FakeRig, images: list[np.ndarray] | None, *, stored_scale: float = 1.0) -> None:
    """Write ``poses_bounds.npy`` and PNGs in ``images/``; ``stored_scale`` stores H, W, focal that much
    larger than the images (as for a downsampled image copy)."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(len(rig)):
        c = rig.c2w[i]
        pose = np.stack([c[:3, 1], c[:3, 0], -c[:3, 2], c[:3, 3],
                         np.array([rig.height, rig.width, rig.Ks[i, 0, 0]]) * stored_scale], 1)
        depth = (np.linalg.inv(c)[:3, :3] @ rig.points.T + np.linalg.inv(c)[:3, 3:4])[2]
        rows.append(np.concatenate([pose.reshape(-1), [depth.min() * 0.9, depth.max() * 1.1]]))
    np.save(root / "poses_bounds.npy", np.asarray(rows))
    if images is not None:
        for i, img in enumerate(images):
            save_png(root / "images" / f"img_{i:03d}.png", img)
