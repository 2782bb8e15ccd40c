"""``scenezip view FILE``: an interactive viewer of a ``.scz`` file in the browser, served by viser.

Written by hand for scenezip on top of viser (https://viser.studio), which serves its own prebuilt web
client (one self-contained ``index.html``) and talks to it over a websocket on the same port, so the
viewer needs no network beyond the connection between browser and server.

Two ways to show a scene:

- ``splats``: the file is decoded to plain Gaussians (:func:`scenezip.splatting.plain.to_plain`; a c3dgs
  colour field is baked to its least-squares view-independent colour) and sent once to the browser,
  which sorts and draws them itself (viser's ``add_gaussian_splats``: centres, 3x3 covariances
  ``R diag(exp(s))^2 R^T``, RGB and opacity). Camera moves cost the server nothing. viser draws one
  RGB per Gaussian, so the browser shows the DC colour; view-dependent SH is left out.
- ``render``: for files without splats (hash-grid NeRFs) or on request, every camera move of a client is
  turned into an OpenCV world-to-camera matrix and pinhole intrinsics, the scene is rendered on the
  server with :meth:`scenezip.scene.LoadedScene.render` on a worker thread, and the frame is sent as the
  client's background image. While the camera moves, frames are rendered at a resolution sized from the
  measured render speed to take about ``preview_budget_s``; once it rests, the full frame is rendered in
  horizontal strips (the intrinsics shifted per strip), abandoned as soon as the camera moves again, so a
  slow CPU render never holds up the server or a newer view.

``auto`` picks ``splats`` whenever :func:`to_plain` can decode the model, ``render`` otherwise.
"""

from __future__ import annotations

import contextlib
import io
import math
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional

import numpy as np

import tyro

from scenezip.errors import ScenezipError

Mode = Literal["auto", "splats", "render"]
Up = Literal["auto", "+x", "-x", "+y", "-y", "+z", "-z"]

VISER_INSTALL = 'pip install "scenezip[viewer]" (or: pip install viser)'
SPLATS_NODE = "/splats"
MAX_STD = 250.0  # viser sends covariances as float16 (max 65504): larger standard deviations are clipped
MIN_OPACITY = 1.0 / 255.0  # viser sends opacity as 8 bits: fainter Gaussians would be drawn as nothing
FORMATS_Y_DOWN = ("colmap", "llff")  # captures whose world keeps COLMAP's axes (up is -y, as in OpenCV)


@dataclass
class ViewArgs:
    """Open an interactive viewer of a .scz file in the browser (viser); prints the URL."""

    file: tyro.conf.Positional[Path]
    """The .scz file."""
    host: str = "127.0.0.1"
    """Address to listen on; 127.0.0.1 keeps the viewer on this machine, 0.0.0.0 serves every network."""
    port: int = 8080
    """Port to listen on; when it is taken the next free one is used (the printed URL says which). 0: any."""
    mode: Mode = "auto"
    """splats: send the Gaussians to the browser, which draws them; render: render frames on the server per
    camera move (NeRF files, or exact view-dependent colour); auto: splats when the file has them."""
    max_splats: Optional[int] = None
    """Send at most this many Gaussians to the browser, the most opaque and largest first; default: all."""
    render_size: int = 960
    """Render mode: longest side in pixels of the frames rendered once the camera rests."""
    preview_budget_s: float = 0.15
    """Render mode: seconds a frame may take while the camera moves; its resolution is sized to fit."""
    backend: Literal["auto", "torch", "cuda"] = "auto"
    """Render mode: rasterizer backend (auto: CUDA when present)."""
    up: Up = "auto"
    """World up direction of the scene; auto: -y for COLMAP and LLFF captures, +z otherwise."""


# ----------------------------------------------------------------------------------------- geometry


def rotation_matrices(quats: np.ndarray) -> np.ndarray:
    """``[N, 3, 3]`` float64 rotations of ``[N, 4]`` (w, x, y, z) quaternions of any norm (zero: identity)."""
    q = np.asarray(quats, dtype=np.float64)
    norm = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norm > 1e-12, q / np.maximum(norm, 1e-12), np.array([1.0, 0.0, 0.0, 0.0]))
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
        ],
        axis=-2,
    )


def covariances_from_quats_scales(quats: np.ndarray, log_scales: np.ndarray) -> np.ndarray:
    """3D covariances ``R diag(exp(s))^2 R^T`` of Gaussians.

    Args:
        quats: ``[N, 4]`` rotations (w, x, y, z), any norm (a zero quaternion is the identity).
        log_scales: ``[N, 3]`` log standard deviations along the rotated axes.

    Returns:
        ``[N, 3, 3]`` float32 symmetric covariances.
    """
    q = np.asarray(quats, dtype=np.float64)
    s = np.asarray(log_scales, dtype=np.float64)
    if q.ndim != 2 or q.shape[1] != 4:
        raise ValueError(f"quats must have shape [N, 4], got {q.shape}")
    if s.shape != (q.shape[0], 3):
        raise ValueError(f"log_scales must have shape [{q.shape[0]}, 3], got {s.shape}")
    R = rotation_matrices(q)  # [N, 3, 3]
    var = np.exp(2.0 * s)  # [N, 3]
    return np.einsum("nij,nj,nkj->nik", R, var, R).astype(np.float32)


def select_splats(opacity_logits: np.ndarray, log_scales: np.ndarray, max_splats: int | None) -> np.ndarray:
    """Indices of the Gaussians to send: visible ones (opacity at least 1/255, finite), and when there are
    more than ``max_splats`` the ones with the largest ``opacity * area`` (area of the largest cross
    section, so flat surfels rank like 3D Gaussians), in their original order.

    Args:
        opacity_logits: ``[N]``.
        log_scales: ``[N, 3]``.
    """
    logits = np.asarray(opacity_logits, dtype=np.float64)
    s = np.asarray(log_scales, dtype=np.float64)
    opacity = 1.0 / (1.0 + np.exp(-logits))
    ok = (opacity >= MIN_OPACITY) & np.isfinite(logits) & np.all(np.isfinite(s) | (s == -np.inf), axis=1)
    idx = np.flatnonzero(ok)
    if max_splats is not None and len(idx) > max_splats:
        log_area = np.sort(s[idx], axis=1)[:, 1:].sum(axis=1)
        score = np.log(opacity[idx]) + log_area
        keep = np.argpartition(-score, max_splats - 1)[:max_splats]
        idx = np.sort(idx[keep])
    return idx


def splats_for_viser(plain: Any, max_splats: int | None = None) -> dict[str, np.ndarray]:
    """The arguments of viser's ``add_gaussian_splats`` for a :class:`~scenezip.splatting.plain.PlainSplats`.

    Returns:
        ``centers [M, 3]``, ``covariances [M, 3, 3]``, ``rgbs [M, 3]`` (DC colour in [0, 1]) and
        ``opacities [M, 1]`` in [0, 1], float32, for the Gaussians :func:`select_splats` keeps.
    """
    idx = select_splats(plain.opacities, plain.scales, max_splats)
    scales = np.minimum(plain.scales[idx], math.log(MAX_STD))
    return {
        "centers": np.ascontiguousarray(plain.means[idx], dtype=np.float32),
        "covariances": covariances_from_quats_scales(plain.quats[idx], scales),
        "rgbs": np.ascontiguousarray(plain.rgb()[idx], dtype=np.float32),
        "opacities": (1.0 / (1.0 + np.exp(-plain.opacities[idx].astype(np.float64))))[:, None].astype(np.float32),
    }


def camera_to_opencv(wxyz, position, fov_y: float, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """World-to-camera matrix and intrinsics of a viser camera.

    viser reports a camera as ``R_world_camera`` (``wxyz``) and its centre (``position``) in OpenCV axes
    (x right, y down, z forward), with the vertical field of view of the canvas. Pixels are square and the
    principal point is the image centre.

    Args:
        wxyz: ``[4]`` camera-to-world rotation.
        position: ``[3]`` camera centre in world space.
        fov_y: vertical field of view in radians.
        width, height: image size in pixels.

    Returns:
        ``(viewmat [4, 4], K [3, 3])`` float32.
    """
    if not 0.0 < fov_y < math.pi:
        raise ValueError(f"fov_y must be in (0, pi), got {fov_y}")
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    R = rotation_matrices(np.asarray(wxyz, dtype=np.float64).reshape(1, 4))[0]
    t = np.asarray(position, dtype=np.float64).reshape(3)
    viewmat = np.eye(4)
    viewmat[:3, :3] = R.T
    viewmat[:3, 3] = -R.T @ t
    f = 0.5 * height / math.tan(0.5 * fov_y)
    K = np.array([[f, 0.0, 0.5 * width], [0.0, f, 0.5 * height], [0.0, 0.0, 1.0]])
    return viewmat.astype(np.float32), K.astype(np.float32)


def _up_vector(up: str) -> np.ndarray:
    v = np.zeros(3)
    v["xyz".index(up[1])] = 1.0 if up[0] == "+" else -1.0
    return v


def resolve_up(up: Up, metadata: dict) -> str:
    """The world up direction: ``up`` itself, or for ``auto`` -y for COLMAP/LLFF captures, +z otherwise."""
    if up != "auto":
        return up
    fmt = (metadata.get("scene") or {}).get("format")
    return "-y" if fmt in FORMATS_Y_DOWN else "+z"


def scene_box(points: np.ndarray | None, metadata: dict) -> tuple[np.ndarray, float]:
    """Centre ``[3]`` and radius of what to frame: the 1st-99th percentile box of ``points`` ``[N, 3]``
    when given, else the bounds stored in the file, else the unit cube."""
    if points is not None and len(points) > 0:
        pts = np.asarray(points, dtype=np.float64)
        pts = pts[np.all(np.isfinite(pts), axis=1)]
        if len(pts):
            lo, hi = np.percentile(pts, 1, axis=0), np.percentile(pts, 99, axis=0)
            return (lo + hi) / 2, max(float(np.linalg.norm(hi - lo)) / 2, 1e-3)
    bounds = (metadata.get("scene") or {}).get("bounds")
    if bounds is not None:
        b = np.asarray(bounds, dtype=np.float64).reshape(2, 3)
        return b.mean(axis=0), max(float(np.linalg.norm(b[1] - b[0])) / 2, 1e-3)
    return np.zeros(3), math.sqrt(3.0)


def initial_view(center: np.ndarray, radius: float, up: str, fov_y: float) -> tuple[np.ndarray, np.ndarray]:
    """Camera position and look-at point that frame a sphere (``center``, ``radius``), seen from 25
    degrees above the horizon of ``up``."""
    u = _up_vector(up)
    side = np.roll(np.abs(u), 1)  # a world axis perpendicular to up
    elev = math.radians(25.0)
    direction = math.cos(elev) * side + math.sin(elev) * u
    distance = radius / math.sin(0.5 * fov_y) * 1.05
    return np.asarray(center, dtype=np.float64) + distance * direction, np.asarray(center, dtype=np.float64)


# ----------------------------------------------------------------------------------- server renders


@dataclass
class _View:
    """The latest camera of one client."""

    client: Any
    wxyz: np.ndarray
    position: np.ndarray
    fov_y: float
    width: int
    height: int
    moved_at: float
    version: int = 0
    shown_version: int = -1
    shown_full: bool = False


@dataclass
class FrameRenderer:
    """Renders client views on one worker thread; the latest camera of each client wins.

    ``render_fn(viewmat [4, 4], K [3, 3], width, height) -> uint8 [height, width, 3]`` renders one frame;
    ``send_fn(client, image)`` shows it. A new camera first gets a preview sized to take about
    ``preview_budget_s``; once the camera has rested ``settle_s``, the full frame (longest side at most
    ``render_size``) is rendered in strips of about ``strip_s`` each and dropped if the camera moves.
    """

    render_fn: Callable[[np.ndarray, np.ndarray, int, int], np.ndarray]
    send_fn: Callable[[Any, np.ndarray], None]
    render_size: int = 960
    preview_budget_s: float = 0.15
    settle_s: float = 0.25
    strip_s: float = 0.25
    seconds_per_pixel: float | None = None
    frames: int = 0
    _views: dict = field(default_factory=dict)
    _cond: threading.Condition = field(default_factory=threading.Condition)
    _stop: bool = False
    _thread: threading.Thread | None = None
    _error: str | None = None

    def start(self) -> "FrameRenderer":
        self._thread = threading.Thread(target=self._run, name="scenezip-view-render", daemon=True)
        self._thread.start()
        return self

    def update(self, key: Any, client: Any, wxyz, position, fov_y: float, width: int, height: int) -> None:
        """Record a client's new camera (called from viser's callback threads; returns at once)."""
        with self._cond:
            old = self._views.get(key)
            view = _View(client, np.asarray(wxyz, np.float64), np.asarray(position, np.float64), float(fov_y),
                         max(int(width), 1), max(int(height), 1), time.monotonic())  # fmt: skip
            if old is not None:
                view.version, view.shown_version, view.shown_full = old.version + 1, old.shown_version, False
            self._views[key] = view
            self._cond.notify()

    def forget(self, key: Any) -> None:
        with self._cond:
            self._views.pop(key, None)

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- worker
    def _size(self, view: _View, full: bool) -> tuple[int, int]:
        scale = min(1.0, self.render_size / max(view.width, view.height))
        if not full:
            if self.seconds_per_pixel is None:
                scale = min(scale, 128 / max(view.width, view.height))
            else:
                pixels = view.width * view.height * scale * scale
                scale *= min(1.0, math.sqrt(self.preview_budget_s / max(self.seconds_per_pixel * pixels, 1e-9)))
        scale = max(scale, 16 / max(view.width, view.height))
        return max(1, round(view.width * scale)), max(1, round(view.height * scale))

    def _next_job(self) -> tuple[Any, _View, bool] | None:
        now = time.monotonic()
        for key, view in self._views.items():
            if view.version != view.shown_version:
                return key, view, False
            if not view.shown_full and now - view.moved_at >= self.settle_s:
                return key, view, True
        return None

    def _current(self, key: Any, version: int) -> bool:
        with self._cond:
            view = self._views.get(key)
            return not self._stop and view is not None and view.version == version

    def _render(self, key: Any, view: _View, full: bool) -> np.ndarray | None:
        w, h = self._size(view, full)
        viewmat, K = camera_to_opencv(view.wxyz, view.position, view.fov_y, w, h)
        rows = h
        if full and self.seconds_per_pixel is not None:
            rows = max(8, int(self.strip_s / max(self.seconds_per_pixel * w, 1e-12)))
        parts, y0 = [], 0
        while y0 < h:
            n = min(rows, h - y0)
            Ks = K.copy()
            Ks[1, 2] -= y0  # the strip's rows y0..y0+n of the full image
            t0 = time.perf_counter()
            part = self.render_fn(viewmat, Ks, w, n)
            per_px = (time.perf_counter() - t0) / (w * n)
            prev = self.seconds_per_pixel
            self.seconds_per_pixel = per_px if prev is None else 0.5 * (prev + per_px)
            parts.append(part)
            y0 += n
            if y0 < h and not self._current(key, view.version):
                return None  # the camera moved: drop this frame
        return np.concatenate(parts, axis=0)

    def _run(self) -> None:
        while True:
            with self._cond:
                job = None
                while not self._stop and (job := self._next_job()) is None:
                    self._cond.wait(timeout=0.05)
                if self._stop:
                    return
            key, view, full = job
            try:
                image = self._render(key, view, full)
            except Exception as e:  # keep serving: report the first failure, mark the view done
                if self._error is None:
                    self._error = f"{type(e).__name__}: {e}"
                    print(f"scenezip view: render failed: {self._error}", file=sys.stderr)
                image = None
                with self._cond:
                    view.shown_version, view.shown_full = view.version, True
            if image is None:
                continue
            with self._cond:
                gone = self._views.get(key) is None
            if gone:
                continue  # the client left while we rendered
            try:
                self.send_fn(view.client, image)
            except Exception:
                pass  # it left just now
            with self._cond:
                self.frames += 1
                if self._views.get(key) is view:
                    view.shown_version = view.version
                    full_size = self._size(view, True)
                    view.shown_full = full or (image.shape[1], image.shape[0]) == full_size


# ----------------------------------------------------------------------------------------- viewer


@dataclass
class ViewerHandle:
    """A running viewer: ``url`` to open, ``stop()`` to end it (idempotent)."""

    url: str
    mode: Literal["splats", "render"]
    server: Any
    scene: Any
    n_splats: int = 0
    renderer: FrameRenderer | None = None
    _stopped: bool = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self.renderer is not None:
            self.renderer.stop()
        with contextlib.redirect_stdout(io.StringIO()):  # viser prints "Server stopped"
            self.server.stop()


def import_viser():
    """viser, or ScenezipError saying how to install it."""
    try:
        import viser
    except ImportError:
        raise ScenezipError(f"the viewer needs viser, which is not installed: {VISER_INSTALL}") from None
    return viser


def _splat_capable(model: Any) -> bool:
    from scenezip.splatting.c3dgs import C3DGSModel
    from scenezip.splatting.gaussians import GaussianModel

    return isinstance(model, (GaussianModel, C3DGSModel)) or callable(getattr(model, "to_plain", None))


def _model_points(model: Any) -> np.ndarray | None:
    """``[N, 3]`` Gaussian centres of a model that has them (to frame the scene), else None."""
    means = getattr(model, "means", None)
    if means is None or not hasattr(means, "detach") or means.ndim != 2 or means.shape[-1] != 3:
        return None
    return means.detach().cpu().numpy()


def _background(metadata: dict) -> np.ndarray:
    bg = (metadata.get("scene") or {}).get("background")
    return np.asarray(bg if bg else (1.0, 1.0, 1.0), dtype=np.float32)


def check_host(host: str) -> None:
    """ScenezipError unless this machine can listen on ``host`` (viser would wait forever otherwise)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, 0, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]  # fmt: skip
        with socket.socket(family, kind, proto) as sock:
            sock.bind(address)
    except OSError as e:
        raise ScenezipError(f"cannot listen on host {host!r} ({e.strerror or e})") from None


def start_viewer(
    file: str | Path,
    host: str = "127.0.0.1",
    port: int = 8080,
    mode: Mode = "auto",
    max_splats: int | None = None,
    render_size: int = 960,
    preview_budget_s: float = 0.15,
    backend: Literal["auto", "torch", "cuda"] = "auto",
    up: Up = "auto",
) -> ViewerHandle:
    """Load ``file`` and serve it; returns once the server listens (see :class:`ViewArgs` for the options).

    Raises ScenezipError for a bad file or option, or when viser is missing.
    """
    if max_splats is not None and max_splats < 1:
        raise ScenezipError(f"--max-splats must be at least 1, got {max_splats}")
    if render_size < 16:
        raise ScenezipError(f"--render-size must be at least 16 pixels, got {render_size}")
    if not preview_budget_s > 0:
        raise ScenezipError(f"--preview-budget-s must be positive, got {preview_budget_s}")
    if not 0 <= port <= 65535:
        raise ScenezipError(f"--port must be in 0..65535, got {port}")
    check_host(host)
    viser = import_viser()

    import torch

    from scenezip._backend import resolve_backend
    from scenezip.scene import load_scene

    file = Path(file)
    scene = load_scene(file, device="cpu")
    capable = _splat_capable(scene.model)
    if mode == "splats" and not capable:
        raise ScenezipError(f"{file}: method {scene.method!r} has no splats to send; use --mode render")
    resolved: Literal["splats", "render"] = "splats" if mode == "splats" or (mode == "auto" and capable) else "render"
    device = "cpu"
    if resolved == "render":
        device = "cuda" if resolve_backend(backend) == "cuda" else "cpu"
        scene.model.to(device)

    splats, plain = None, None
    if resolved == "splats":
        from scenezip.splatting.plain import to_plain

        plain = to_plain(scene.model, sh_degree=0)
        splats = splats_for_viser(plain, max_splats)

    up_dir = resolve_up(up, scene.metadata)
    points = splats["centers"] if splats is not None else _model_points(scene.model)
    center, radius = scene_box(points, scene.metadata)

    with contextlib.redirect_stdout(io.StringIO()):  # viser prints its own banner; we print the URL
        server = viser.ViserServer(host=host, port=port, label=f"scenezip · {file.name}", verbose=False)
    try:
        server.gui.configure_theme(show_share_button=False)  # sharing needs viser's public relay
        server.scene.set_up_direction(up_dir)
        cam = server.initial_camera
        cam.position, cam.look_at = initial_view(center, radius, up_dir, cam.fov)
        cam.up = _up_vector(up_dir)
        info = f"**{file.name}**  \n{scene.method}, {scene.n_primitives:,} primitives, {scene.size_bytes:,} bytes"
        renderer = None
        if resolved == "splats":
            server.scene.add_gaussian_splats(SPLATS_NODE, **splats)
            info += f"  \n{len(splats['centers']):,} splats drawn by the browser (DC colour)"
            if plain is not None and plain.fit_error is not None:
                info += f"; colour field baked with RMS error {plain.fit_error:.4f}"
        else:
            bg = torch.as_tensor(_background(scene.metadata), device=device)[None]

            def render_fn(viewmat: np.ndarray, K: np.ndarray, w: int, h: int) -> np.ndarray:
                rgb, _ = scene.render(torch.from_numpy(viewmat)[None].to(device), torch.from_numpy(K)[None].to(device),
                                      w, h, backgrounds=bg, backend=backend)  # fmt: skip
                return (rgb[0].clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).cpu().numpy()

            def send_fn(client: Any, image: np.ndarray) -> None:
                client.scene.set_background_image(image, format="jpeg", jpeg_quality=90)

            renderer = FrameRenderer(render_fn, send_fn, render_size=render_size,
                                     preview_budget_s=preview_budget_s).start()  # fmt: skip

            def on_connect(client: Any) -> None:
                def on_camera(camera: Any) -> None:
                    renderer.update(client.client_id, client, camera.wxyz, camera.position, camera.fov,
                                    camera.image_width, camera.image_height)  # fmt: skip

                client.camera.on_update(on_camera)
                on_camera(client.camera)

            server.on_client_connect(on_connect)
            server.on_client_disconnect(lambda client: renderer.forget(client.client_id))
            info += f"  \nframes rendered on the server ({device})"
        server.gui.add_markdown(info)
    except BaseException:
        with contextlib.redirect_stdout(io.StringIO()):
            server.stop()
        raise

    shown = "localhost" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    url = f"http://{shown}:{server.get_port()}/"
    n = 0 if splats is None else len(splats["centers"])
    return ViewerHandle(url, resolved, server, scene, n, renderer)


def cmd_view(args: ViewArgs) -> None:
    handle = start_viewer(args.file, host=args.host, port=args.port, mode=args.mode, max_splats=args.max_splats,
                          render_size=args.render_size, preview_budget_s=args.preview_budget_s,
                          backend=args.backend, up=args.up)  # fmt: skip
    what = f"{handle.n_splats:,} splats drawn in the browser" if handle.mode == "splats" else "frames rendered here"
    print(f"scenezip view: {args.file} ({handle.scene.method}, {what})")
    print(f"open {handle.url}  (Ctrl-C to stop)", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("scenezip view: stopped", flush=True)
    finally:
        handle.stop()
