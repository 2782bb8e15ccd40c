"""COLMAP sparse reconstructions: ``sparse/0/`` (or ``sparse/``) in binary or text, images in ``images/``.

Readers for ``cameras``, ``images`` and ``points3D`` in both encodings, written by hand so that files
are treated as untrusted input: every count and length read from a binary file is checked against
the bytes left before anything is allocated or skipped, and truncation or garbage ends in a
DatasetError naming the file and the offset. Supported camera models: SIMPLE_PINHOLE, PINHOLE,
SIMPLE_RADIAL, RADIAL, OPENCV (all expressible as pinhole + k1 k2 p1 p2); others are refused by name.

COLMAP stores world-to-camera poses in OpenCV axes (quaternion w, x, y, z and translation) and puts
pixel centres at +0.5, as scenezip does, so poses and intrinsics are used as they are. Images are
ordered by name. ``points3D`` (with colours) become the initial points.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scenezip.errors import DatasetError
from scenezip.scenes.loader import Capture

# id -> (name, number of parameters); binary files store the id, text files the name.
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3),
    1: ("PINHOLE", 4),
    2: ("SIMPLE_RADIAL", 4),
    3: ("RADIAL", 5),
    4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8),
    6: ("FULL_OPENCV", 12),
    7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5),
    10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
MODEL_IDS = {name: (mid, n) for mid, (name, n) in CAMERA_MODELS.items()}
SUPPORTED = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV")


@dataclass
class ColmapCamera:
    id: int
    model: str
    width: int
    height: int
    params: np.ndarray  # [n] float64, COLMAP's order for the model


@dataclass
class ColmapImage:
    id: int
    qvec: np.ndarray  # [4] w, x, y, z world-to-camera rotation
    tvec: np.ndarray  # [3] world-to-camera translation
    camera_id: int
    name: str
    xys: np.ndarray | None = None  # [M, 2] float64 observed keypoints (pixels, centres at +0.5)
    point3d_ids: np.ndarray | None = None  # [M] int64 id of each keypoint's 3D point, -1 when none


def find_sparse_dir(root: Path) -> Path | None:
    """``root/sparse/0`` or ``root/sparse`` when it holds ``cameras.bin`` or ``cameras.txt``, else None."""
    for d in (root / "sparse" / "0", root / "sparse"):
        if (d / "cameras.bin").is_file() or (d / "cameras.txt").is_file():
            return d
    return None


class _Buffer:
    """Bounds-checked little-endian reader over the bytes of one untrusted file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            self.data = path.read_bytes()
        except OSError as e:
            raise DatasetError(f"{path}: cannot read ({e})") from None
        self.pos = 0

    def fail(self, what: str) -> DatasetError:
        return DatasetError(f"{self.path}: {what} at byte {self.pos} (file is {len(self.data)} bytes; truncated or not a COLMAP file)")

    def left(self) -> int:
        return len(self.data) - self.pos

    def unpack(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if size > self.left():
            raise self.fail(f"unexpected end of file reading {size} bytes")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out

    def count(self, what: str, item_bytes: int) -> int:
        """Read a u64 count of items that take at least ``item_bytes`` each; check it fits in the file."""
        (n,) = self.unpack("Q")
        if n * item_bytes > self.left():
            raise self.fail(f"{what} count {n} needs at least {n * item_bytes} bytes but only {self.left()} remain")
        return n

    def skip(self, nbytes: int) -> None:
        if nbytes > self.left():
            raise self.fail(f"unexpected end of file skipping {nbytes} bytes")
        self.pos += nbytes

    def cstring(self, limit: int = 4096) -> str:
        end = self.data.find(b"\0", self.pos, self.pos + limit)
        if end < 0:
            raise self.fail("unterminated image name")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail("image name is not UTF-8") from None

    def finish(self) -> None:
        if self.left() != 0:
            raise self.fail(f"{self.left()} unexpected trailing bytes")


def _check_camera(cam: ColmapCamera, path: Path) -> None:
    if cam.width < 1 or cam.height < 1 or cam.width > 1 << 20 or cam.height > 1 << 20:
        raise DatasetError(f"{path}: camera {cam.id} has invalid size {cam.width}x{cam.height}")
    if not np.all(np.isfinite(cam.params)) or np.abs(cam.params).max(initial=0) > 1e12:
        raise DatasetError(f"{path}: camera {cam.id} has NaN, infinite or absurdly large parameters")


def read_cameras_binary(path: Path) -> dict[int, ColmapCamera]:
    """Parse ``cameras.bin``: u64 count, then per camera i32 id, i32 model, u64 width, u64 height, f64 params."""
    buf = _Buffer(path)
    n = buf.count("camera", 24)
    cams = {}
    for _ in range(n):
        cid, mid, w, h = buf.unpack("iiQQ")
        if mid not in CAMERA_MODELS:
            raise buf.fail(f"unknown camera model id {mid} for camera {cid}")
        name, npar = CAMERA_MODELS[mid]
        params = np.asarray(buf.unpack(f"{npar}d"), dtype=np.float64)
        cams[cid] = ColmapCamera(cid, name, w, h, params)
        _check_camera(cams[cid], path)
    buf.finish()
    return cams


_OBS_DTYPE = np.dtype([("x", "<f8"), ("y", "<f8"), ("id", "<i8")])


def read_images_binary(path: Path) -> list[ColmapImage]:
    """Parse ``images.bin``: u64 count, then per image i32 id, 4 f64 qvec, 3 f64 tvec, i32 camera id,
    a NUL-terminated name, u64 number of 2D points and per point f64 x, f64 y, i64 point3D id."""
    buf = _Buffer(path)
    n = buf.count("image", 64 + 1 + 8)
    images = []
    for _ in range(n):
        vals = buf.unpack("i7di")
        name = buf.cstring()
        (npts,) = buf.unpack("Q")
        if npts * 24 > buf.left():
            raise buf.fail(f"image {name!r} claims {npts} 2D points ({npts * 24} bytes) but only {buf.left()} bytes remain")
        obs = np.frombuffer(buf.data, dtype=_OBS_DTYPE, count=npts, offset=buf.pos)
        buf.skip(npts * 24)
        xys = np.stack([obs["x"], obs["y"]], -1).astype(np.float64)
        ids = obs["id"].astype(np.int64)
        images.append(ColmapImage(vals[0], np.asarray(vals[1:5]), np.asarray(vals[5:8]), vals[8], name, xys, ids))
    buf.finish()
    return images


def read_points3d_binary(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse ``points3D.bin``: u64 count, then per point u64 id, 3 f64 xyz, 3 u8 rgb, f64 error, u64 track
    length and 8 bytes per track element (skipped). Returns ids ``[P]`` int64, ``[P, 3]`` float64, ``[P, 3]`` uint8."""
    buf = _Buffer(path)
    n = buf.count("point", 51)
    ids = np.empty(n, dtype=np.int64)
    xyz = np.empty((n, 3), dtype=np.float64)
    rgb = np.empty((n, 3), dtype=np.uint8)
    rec = struct.Struct("<Q3d3BdQ")
    data = buf.data
    for i in range(n):
        if buf.left() < rec.size:
            raise buf.fail("unexpected end of file in a point")
        pid, x, y, z, r, g, b, _, tl = rec.unpack_from(data, buf.pos)
        buf.pos += rec.size
        if tl * 8 > buf.left():
            raise buf.fail(f"point {i} claims a track of {tl} elements but only {buf.left()} bytes remain")
        buf.pos += tl * 8
        ids[i] = pid if pid < 1 << 62 else -1
        xyz[i] = (x, y, z)
        rgb[i] = (r, g, b)
    buf.finish()
    return ids, xyz, rgb


def _text_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e})") from None
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: not a UTF-8 text file") from None
    return [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]


def read_cameras_text(path: Path) -> dict[int, ColmapCamera]:
    """Parse ``cameras.txt``: ``CAMERA_ID MODEL WIDTH HEIGHT PARAMS...`` per line."""
    cams = {}
    for k, ln in enumerate(_text_lines(path)):
        f = ln.split()
        if not f:
            continue
        try:
            cid, model, w, h = int(f[0]), f[1], int(f[2]), int(f[3])
            params = np.asarray([float(v) for v in f[4:]], dtype=np.float64)
        except (ValueError, IndexError):
            raise DatasetError(f"{path}: malformed camera line {ln.strip()!r}") from None
        if model not in MODEL_IDS:
            raise DatasetError(f"{path}: unknown camera model {model!r} for camera {cid}")
        if len(params) != MODEL_IDS[model][1]:
            raise DatasetError(f"{path}: camera {cid} ({model}) needs {MODEL_IDS[model][1]} parameters, got {len(params)}")
        cams[cid] = ColmapCamera(cid, model, w, h, params)
        _check_camera(cams[cid], path)
    return cams


def read_images_text(path: Path) -> list[ColmapImage]:
    """Parse ``images.txt``: per image a line ``IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME`` and a
    line of 2D points (possibly empty)."""
    lines = _text_lines(path)
    images = []
    i = 0
    while i < len(lines):
        f = lines[i].split()
        if not f:
            i += 1
            continue
        try:
            iid = int(f[0])
            vals = [float(v) for v in f[1:8]]
            cid = int(f[8])
            name = " ".join(f[9:])
        except (ValueError, IndexError):
            raise DatasetError(f"{path}: malformed image line {lines[i].strip()!r}") from None
        if len(vals) != 7 or not name:
            raise DatasetError(f"{path}: malformed image line {lines[i].strip()!r}")
        obs = lines[i + 1].split() if i + 1 < len(lines) else []
        if len(obs) % 3:
            raise DatasetError(f"{path}: the points line of image {name!r} must hold X Y POINT3D_ID triples")
        try:
            o = np.asarray([float(v) for v in obs], dtype=np.float64).reshape(-1, 3)
        except ValueError:
            raise DatasetError(f"{path}: malformed points line of image {name!r}") from None
        images.append(ColmapImage(iid, np.asarray(vals[:4]), np.asarray(vals[4:]), cid, name, o[:, :2], o[:, 2].astype(np.int64)))
        i += 2
    return images


def read_points3d_text(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Parse ``points3D.txt``: ``POINT3D_ID X Y Z R G B ERROR TRACK...`` per line."""
    ids, xyz, rgb = [], [], []
    for ln in _text_lines(path):
        f = ln.split()
        if not f:
            continue
        try:
            ids.append(int(f[0]))
            xyz.append([float(v) for v in f[1:4]])
            rgb.append([int(v) for v in f[4:7]])
        except ValueError:
            raise DatasetError(f"{path}: malformed point line {ln.strip()[:80]!r}") from None
        if len(xyz[-1]) != 3 or len(rgb[-1]) != 3 or not all(0 <= c <= 255 for c in rgb[-1]):
            raise DatasetError(f"{path}: malformed point line {ln.strip()[:80]!r}")
    return (
        np.asarray(ids, dtype=np.int64),
        np.asarray(xyz, dtype=np.float64).reshape(-1, 3),
        np.asarray(rgb, dtype=np.uint8).reshape(-1, 3),
    )


def camera_intrinsics(cam: ColmapCamera, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Pinhole ``[3, 3]`` and distortion ``[4]`` (k1, k2, p1, p2) of a COLMAP camera."""
    p = cam.params
    if cam.model == "SIMPLE_PINHOLE":
        fx = fy = p[0]; cx, cy = p[1], p[2]; d = (0.0, 0.0, 0.0, 0.0)  # noqa: E702
    elif cam.model == "PINHOLE":
        fx, fy, cx, cy = p; d = (0.0, 0.0, 0.0, 0.0)  # noqa: E702
    elif cam.model == "SIMPLE_RADIAL":
        fx = fy = p[0]; cx, cy = p[1], p[2]; d = (p[3], 0.0, 0.0, 0.0)  # noqa: E702
    elif cam.model == "RADIAL":
        fx = fy = p[0]; cx, cy = p[1], p[2]; d = (p[3], p[4], 0.0, 0.0)  # noqa: E702
    elif cam.model == "OPENCV":
        fx, fy, cx, cy = p[:4]; d = tuple(p[4:8])  # noqa: E702
    else:
        raise DatasetError(
            f"{path}: camera {cam.id} uses model {cam.model}, which is not supported "
            f"(supported: {', '.join(SUPPORTED)}); run colmap image_undistorter first"
        )
    if not (fx > 1e-6 and fy > 1e-6):
        raise DatasetError(f"{path}: camera {cam.id} has a non-positive focal length ({fx}, {fy})")
    K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])
    return K, np.asarray(d, dtype=np.float64)


def qvec_to_rotmat(q: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation of a (w, x, y, z) quaternion (normalized first)."""
    w, x, y, z = q / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def read_sparse_model(
    sparse: Path,
) -> tuple[dict[int, ColmapCamera], list[ColmapImage], tuple[np.ndarray, np.ndarray, np.ndarray] | None, Path, Path]:
    """Read cameras, images and (optional) points of a sparse folder, binary preferred over text.

    Returns cameras, images, points ``(ids, xyz, rgb)`` (or None), and the paths of the camera and image files.
    """
    if (sparse / "cameras.bin").is_file():
        cam_path, img_path, pts_path = sparse / "cameras.bin", sparse / "images.bin", sparse / "points3D.bin"
        rc, ri, rp = read_cameras_binary, read_images_binary, read_points3d_binary
    else:
        cam_path, img_path, pts_path = sparse / "cameras.txt", sparse / "images.txt", sparse / "points3D.txt"
        rc, ri, rp = read_cameras_text, read_images_text, read_points3d_text
    if not img_path.is_file():
        raise DatasetError(f"{img_path}: file is missing (needed beside {cam_path.name})")
    cams = rc(cam_path)
    images = ri(img_path)
    points = rp(pts_path) if pts_path.is_file() else None
    if points is not None and not (np.all(np.isfinite(points[1])) and np.abs(points[1]).max(initial=0) < 1e12):
        raise DatasetError(f"{pts_path}: point positions contain NaN, infinity or absurdly large values")
    return cams, images, points, cam_path, img_path


def read_colmap(root: Path) -> Capture:
    """Parse a COLMAP capture folder (``sparse/0`` or ``sparse``, images in ``images/``) into a :class:`Capture`."""
    root = Path(root)
    sparse = find_sparse_dir(root)
    if sparse is None:
        raise DatasetError(f"{root}: no sparse/0/cameras.bin, sparse/0/cameras.txt or sparse/cameras.* found")
    cams, images, points, cam_path, img_path = read_sparse_model(sparse)
    if not images:
        raise DatasetError(f"{img_path}: the reconstruction has no images")
    images = sorted(images, key=lambda im: im.name)
    image_dir = root / "images"
    paths, c2ws, Ks, ws, hs, models, dists = [], [], [], [], [], [], []
    for im in images:
        if im.camera_id not in cams:
            raise DatasetError(f"{img_path}: image {im.name!r} refers to camera {im.camera_id}, which {cam_path.name} does not define")
        cam = cams[im.camera_id]
        K, d = camera_intrinsics(cam, cam_path)
        pose = np.concatenate([im.qvec, im.tvec])
        if not np.all(np.isfinite(pose)) or np.abs(pose).max() > 1e12 or np.linalg.norm(im.qvec) < 1e-12:
            raise DatasetError(f"{img_path}: image {im.name!r} has an invalid pose")
        w2c = np.eye(4)
        w2c[:3, :3] = qvec_to_rotmat(im.qvec)
        w2c[:3, 3] = im.tvec
        p = image_dir / im.name
        if not p.is_file():
            raise DatasetError(f"{p}: image file is missing (listed in {img_path.name})")
        paths.append(p)
        c2ws.append(np.linalg.inv(w2c))
        Ks.append(K)
        ws.append(cam.width)
        hs.append(cam.height)
        models.append(cam.model)
        dists.append(d)
    dist_a = np.stack(dists)
    from scenezip.scenes.images import image_has_alpha

    return Capture(
        format="colmap",
        root=root,
        image_paths=paths,
        c2w=np.stack(c2ws),
        Ks=np.stack(Ks),
        widths=np.asarray(ws, dtype=np.int64),
        heights=np.asarray(hs, dtype=np.int64),
        models=models,
        distortion=dist_a if np.any(dist_a != 0) else None,
        points=None if points is None else points[1],
        point_colors=None if points is None else points[2],
        rgba=image_has_alpha(paths[0]),
    )
