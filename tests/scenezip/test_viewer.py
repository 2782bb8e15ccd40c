"""scenezip view: covariance and camera conversions, the frame renderer, the server, and end to end in Chromium.

The end-to-end tests drive Debian's headless Chromium over the DevTools protocol (so they wait for what
they need instead of a fixed delay) with every host name but 127.0.0.1 unresolvable, and check the page
requested nothing else. WebGL runs on SwiftShader (software), so they run on machines without a GPU.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from scenezip.errors import SceneFileError, ScenezipError
from scenezip.render.sh import SH_C0, rgb_to_sh0
from scenezip.viewer import (
    FrameRenderer,
    camera_to_opencv,
    covariances_from_quats_scales,
    initial_view,
    resolve_up,
    scene_box,
    select_splats,
    splats_for_viser,
    start_viewer,
)

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
NO_CHROMIUM = "Chromium is not installed (Debian: apt-get install chromium)"
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
NO_VISER = "viser is not installed (pip install viser)"
needs_viser = pytest.mark.skipif(importlib.util.find_spec("viser") is None, reason=NO_VISER)

MAGENTA = (1.0, 0.0, 1.0)
GREEN = (0.0, 1.0, 0.0)
VIEWPORT = (480, 360)


def write_scene(path: Path, n: int = 300, seed: int = 0) -> Path:
    """A small 3dgs file: magenta splats along three arms of different lengths (+x 0.6, +y 0.9, +z 0.4)
    from the origin, so any flip or turn of the image moves them."""
    from scenezip.scenes.scz import write_scz
    from scenezip.splatting.gaussians import GaussianModel
    from scenezip.splatting.streams import gaussians_to_streams

    rng = np.random.default_rng(seed)
    arm = rng.integers(0, 3, n)
    t = rng.uniform(0.0, 1.0, n) * np.array([0.6, 0.9, 0.4])[arm]
    means = np.zeros((n, 3))
    means[np.arange(n), arm] = t
    means += rng.normal(scale=0.01, size=(n, 3))
    quats = rng.normal(size=(n, 4))
    scales = np.log(rng.uniform(0.02, 0.04, size=(n, 3)))
    sh0 = rgb_to_sh0(torch.tensor([MAGENTA]).expand(n, 3))[:, None, :]
    model = GaussianModel(torch.tensor(means, dtype=torch.float32), torch.tensor(quats, dtype=torch.float32),
                          torch.tensor(scales, dtype=torch.float32), torch.full((n,), 4.0), sh0,
                          torch.zeros(n, 3, 3))  # fmt: skip
    meta, streams = gaussians_to_streams(model)
    write_scz(path, "3dgs", meta, streams)
    return path


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory) -> Path:
    return write_scene(tmp_path_factory.mktemp("view") / "arms.scz")


# ---------------------------------------------------------------------------------------- conversions


def test_covariances_match_direct_formula():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(64, 4)) * rng.uniform(0.2, 3.0, size=(64, 1))  # any norm
    s = rng.normal(scale=0.7, size=(64, 3))
    got = covariances_from_quats_scales(q, s)
    R = Rotation.from_quat(q[:, [1, 2, 3, 0]]).as_matrix()  # scipy takes (x, y, z, w)
    M = R * np.exp(s)[:, None, :]  # R diag(exp(s))
    expect = M @ np.transpose(M, (0, 2, 1))
    assert got.dtype == np.float32 and got.shape == (64, 3, 3)
    np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-7)
    # the variances along the principal axes are exp(2 s)
    np.testing.assert_allclose(np.linalg.eigvalsh(got.astype(np.float64)), np.sort(np.exp(2 * s), axis=1), rtol=1e-4)


def test_covariances_zero_quaternion_is_identity_rotation():
    got = covariances_from_quats_scales(np.zeros((1, 4)), np.log([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(got[0], np.diag([1.0, 4.0, 9.0]), rtol=1e-6)


@pytest.mark.parametrize(("q", "s", "name"), [((5, 3), (5, 3), "quats"), ((5, 4), (4, 3), "log_scales")])
def test_covariances_check_shapes(q, s, name):
    with pytest.raises(ValueError, match=name):
        covariances_from_quats_scales(np.ones(q), np.zeros(s))


def test_select_splats_drops_invisible_and_keeps_the_largest_opaque_ones():
    logits = np.array([4.0, -10.0, 4.0, 0.0, 4.0, np.nan])  # #1 has opacity < 1/255, #5 is not a number
    scales = np.log(np.array([[0.1, 0.1, 0.1], [1, 1, 1], [0.3, 0.3, 1e-9], [0.3, 0.3, 0.3], [0.01] * 3, [1] * 3]))
    np.testing.assert_array_equal(select_splats(logits, scales, None), [0, 2, 3, 4])
    # opacity x largest cross-section: the flat surfel #2 (0.3 x 0.3, opaque) beats #3 (half as opaque), #0, #4
    np.testing.assert_array_equal(select_splats(logits, scales, 2), [2, 3])
    np.testing.assert_array_equal(select_splats(logits, scales, 1), [2])


def test_splats_for_viser_colours_opacities_and_clipped_scales():
    from scenezip.splatting.plain import PlainSplats

    rng = np.random.default_rng(1)
    n = 8
    sh0 = rng.normal(size=(n, 1, 3))
    scales = np.log(np.full((n, 3), 0.05))
    scales[3] = np.log(1e4)  # beyond float16's range as a variance
    plain = PlainSplats(rng.normal(size=(n, 3)), np.tile([1.0, 0, 0, 0], (n, 1)), scales, np.linspace(-3, 3, n), sh0,
                        np.zeros((n, 0, 3)))  # fmt: skip
    out = splats_for_viser(plain)
    np.testing.assert_allclose(out["rgbs"], np.clip(0.5 + SH_C0 * sh0[:, 0], 0, 1), rtol=1e-6)
    np.testing.assert_allclose(out["opacities"][:, 0], 1 / (1 + np.exp(-np.linspace(-3, 3, n))), rtol=1e-6)
    assert out["opacities"].shape == (n, 1) and out["centers"].shape == (n, 3)
    assert np.all(np.diagonal(out["covariances"], axis1=1, axis2=2) <= 250.0**2 * 1.0001)
    assert np.all(np.isfinite(out["covariances"].astype(np.float16)))  # viser sends them as float16


def look_at_wxyz(position, target, up) -> np.ndarray:
    """viser's camera rotation (OpenCV axes: x right, y down, z forward) built independently with scipy."""
    z = np.asarray(target, float) - position
    z /= np.linalg.norm(z)
    y = -(np.asarray(up, float) - (np.dot(up, z)) * z)
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    xyzw = Rotation.from_matrix(np.stack([x, y, z], axis=1)).as_quat()
    return np.r_[xyzw[3], xyzw[:3]]


def project(viewmat, K, p):
    c = viewmat[:3, :3] @ p + viewmat[:3, 3]
    return (K @ c)[:2] / c[2], c[2]


def test_camera_to_opencv_projects_like_a_pinhole():
    pos = np.array([2.0, -1.0, 0.5])
    wxyz = look_at_wxyz(pos, [0.0, 0.0, 0.0], [0.0, 0.0, 1.0])
    w, h, fov = 320, 200, math.radians(60)
    viewmat, K = camera_to_opencv(wxyz, pos, fov, w, h)
    assert viewmat.dtype == np.float32 and K.dtype == np.float32
    uv, depth = project(viewmat, K, np.zeros(3))
    np.testing.assert_allclose(uv, [w / 2, h / 2], atol=1e-3)  # the look-at point is the image centre
    np.testing.assert_allclose(depth, np.linalg.norm(pos), rtol=1e-5)
    R = Rotation.from_quat(np.r_[wxyz[1:], wxyz[0]]).as_matrix()
    # a point at the top edge of the vertical field of view lands on row 0
    top = pos + R[:, 2] - math.tan(fov / 2) * R[:, 1]
    np.testing.assert_allclose(project(viewmat, K, top)[0], [w / 2, 0.0], atol=1e-3)
    # world up (+z) is up in the image, and the camera's right is +u
    assert project(viewmat, K, np.array([0.0, 0.0, 0.3]))[0][1] < h / 2
    assert project(viewmat, K, 0.3 * R[:, 0])[0][0] > w / 2
    with pytest.raises(ValueError, match="fov_y"):
        camera_to_opencv(wxyz, pos, 0.0, w, h)


def test_initial_view_frames_the_box_from_above():
    center, radius = np.array([1.0, 2.0, 3.0]), 0.5
    fov = math.radians(75)
    pos, look = initial_view(center, radius, "+z", fov)
    np.testing.assert_allclose(look, center)
    d = pos - center
    assert np.linalg.norm(d) * math.sin(fov / 2) >= radius  # the sphere fits the vertical field of view
    assert math.degrees(math.asin(d[2] / np.linalg.norm(d))) == pytest.approx(25.0)
    pos_y, _ = initial_view(center, radius, "-y", fov)
    assert pos_y[1] - center[1] < 0  # above the horizon of -y up


def test_scene_box_and_up_defaults():
    pts = np.r_[np.random.default_rng(0).uniform(-1, 1, (1000, 3)), [[100.0, 100.0, 100.0]]]  # one outlier
    c, r = scene_box(pts, {})
    assert np.abs(c).max() < 0.1 and math.sqrt(3) * 0.9 < r < math.sqrt(3) * 1.05
    c, r = scene_box(None, {"scene": {"bounds": [[0, 0, 0], [2, 2, 2]]}})
    np.testing.assert_allclose(c, [1, 1, 1]) and pytest.approx(math.sqrt(3)) == r
    assert resolve_up("auto", {"scene": {"format": "colmap"}}) == "-y"
    assert resolve_up("auto", {"scene": {"format": "blender"}}) == "+z"
    assert resolve_up("+x", {"scene": {"format": "colmap"}}) == "+x"


# ----------------------------------------------------------------------------------------- renderer


def test_frame_renderer_previews_then_renders_the_full_frame_in_strips(scene_file):
    from scenezip.scene import load_scene

    scene = load_scene(scene_file)
    calls, sent, done = [], [], threading.Event()

    def render_fn(viewmat, K, w, h):
        calls.append((w, h))
        rgb, _ = scene.render(torch.from_numpy(viewmat)[None], torch.from_numpy(K)[None], w, h,
                              backgrounds=torch.ones(1, 3), backend="torch")  # fmt: skip
        return (rgb[0] * 255 + 0.5).to(torch.uint8).numpy()

    def send_fn(client, image):
        sent.append(image)
        if image.shape[:2] == (48, 64):
            done.set()

    # tiny time budgets make the preview as small as allowed and the full frame come in strips of 8 rows
    r = FrameRenderer(render_fn, send_fn, render_size=64, preview_budget_s=1e-6, settle_s=0.05, strip_s=1e-6,
                      seconds_per_pixel=1e-4).start()  # fmt: skip
    try:
        pos = np.array([1.5, 0.2, 0.8])
        wxyz = look_at_wxyz(pos, [0.2, 0.3, 0.1], [0, 0, 1])
        r.update("c", "client", wxyz, pos, math.radians(60), 160, 120)  # canvas 160x120, capped to 64x48
        assert done.wait(60), f"no full frame; sent {[s.shape for s in sent]}"
    finally:
        r.stop()
    assert r._thread is not None and not r._thread.is_alive()
    assert max(sent[0].shape[:2]) == 16  # the preview came first, as small as allowed
    assert [h for w, h in calls if w == 64] == [8] * 6  # the full frame was rendered in strips
    viewmat, K = camera_to_opencv(wxyz, pos, math.radians(60), 64, 48)
    expect = render_fn(viewmat, K, 64, 48)
    assert (expect[..., 1] < 128).sum() > 100  # the arms are in view
    # strips == one full render, up to the rasterizer's culling of far tails at an image's edge
    diff = np.abs(sent[-1].astype(int) - expect.astype(int))
    assert diff.max() <= 4 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_frame_renderer_drops_a_full_frame_when_the_camera_moves():
    sent, done = [], threading.Event()
    ident = np.array([1.0, 0.0, 0.0, 0.0])

    def render_fn(viewmat, K, w, h):  # fills the frame with 50 x (the camera's x position)
        if (w, h) == (64, 8) and viewmat[0, 3] == -1.0 and not moved:
            moved.append(True)
            r.update("c", None, ident, [2.0, 0.0, 0.0], 1.0, 64, 48)  # the user drags mid-frame
        return np.full((h, w, 3), -50.0 * viewmat[0, 3], dtype=np.uint8)

    def send_fn(client, image):
        sent.append((image.shape[:2], int(image[0, 0, 0])))
        if image.shape[:2] == (48, 64):
            done.set()

    moved: list[bool] = []
    r = FrameRenderer(render_fn, send_fn, render_size=64, preview_budget_s=1e-6, settle_s=0.05, strip_s=1e-6,
                      seconds_per_pixel=1e-4).start()  # fmt: skip
    try:
        r.update("c", None, ident, [1.0, 0.0, 0.0], 1.0, 64, 48)
        assert done.wait(30), sent
    finally:
        r.stop()
    full = [value for shape, value in sent if shape == (48, 64)]
    assert moved and full == [100], sent  # the first camera's full frame was abandoned, not sent
    assert ((12, 16), 50) in sent  # its preview was shown


# ------------------------------------------------------------------------------------------- server


def http_get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read(2_000_000)


@needs_viser
def test_server_serves_its_page_on_loopback_and_stops(scene_file):
    handle = start_viewer(scene_file, port=0)
    try:
        assert handle.url.startswith("http://127.0.0.1:") and handle.mode == "splats" and handle.n_splats == 300
        status, body = http_get(handle.url)
        assert status == 200 and b"<html" in body.lower()
        assert handle.server.get_host() == "127.0.0.1"
    finally:
        handle.stop()
    handle.stop()  # idempotent
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        http_get(handle.url, timeout=3.0)


@needs_viser
def test_max_splats_limits_what_is_sent(scene_file):
    handle = start_viewer(scene_file, port=0, max_splats=50)
    try:
        assert handle.n_splats == 50
    finally:
        handle.stop()


def test_missing_viser_says_how_to_install(scene_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "viser", None)  # import viser -> ImportError
    with pytest.raises(ScenezipError, match="pip install"):
        start_viewer(scene_file, port=0)


@needs_viser
def test_bad_file_and_options_raise_user_errors(tmp_path, scene_file):
    with pytest.raises(SceneFileError, match="no such file"):
        start_viewer(tmp_path / "missing.scz", port=0)
    with pytest.raises(ScenezipError, match="max-splats"):
        start_viewer(scene_file, port=0, max_splats=0)
    with pytest.raises(ScenezipError, match="port"):
        start_viewer(scene_file, port=70000)
    with pytest.raises(ScenezipError, match="cannot listen on host '256.0.0.1'"):
        start_viewer(scene_file, host="256.0.0.1", port=0)


@needs_viser
def test_c3dgs_files_send_their_kept_gaussians_with_baked_colours(tmp_path):
    from scenezip.fields.color_field import ColorFieldConfig
    from scenezip.scenes.scz import write_scz
    from scenezip.splatting.c3dgs import C3DGSModel
    from scenezip.splatting.gaussians import GaussianModel
    from scenezip.splatting.plain import to_plain

    g = torch.Generator().manual_seed(0)
    gm = GaussianModel.from_points(torch.rand(60, 3, generator=g) - 0.5, torch.rand(60, 3, generator=g), sh_degree=1)
    cfg = ColorFieldConfig(n_levels=4, log2_hashmap_size=8, base_resolution=4, per_level_scale=2.0, hidden_dim=16)
    model = C3DGSModel.from_gaussians(gm, cfg, ((-1.0,) * 3, (1.0,) * 3), backend="torch")
    with torch.no_grad():
        model.splats["masks"][:15] = -8.0  # pruned
    meta, streams = model.to_streams()
    path = tmp_path / "c.scz"
    write_scz(path, "c3dgs", meta, streams)
    handle = start_viewer(path, port=0)
    try:
        from scenezip.scene import load_scene

        plain = to_plain(load_scene(path).model, sh_degree=0)
        assert handle.mode == "splats" and handle.n_splats == len(select_splats(plain.opacities, plain.scales, None))
        assert 0 < handle.n_splats <= 45 and plain.fit_error is not None
    finally:
        handle.stop()


@needs_viser
def test_cmd_view_prints_the_url_and_stops_on_ctrl_c(scene_file, monkeypatch, capsys):
    import scenezip.viewer as viewer

    handles, errors = [], []

    def recording_start(*a, **k):
        handles.append(viewer_start(*a, **k))
        return handles[-1]

    def user():  # waits for the server, loads the page, then presses Ctrl-C
        try:
            end = time.monotonic() + 30
            while not handles and time.monotonic() < end:
                time.sleep(0.05)
            errors.append(http_get(handles[0].url)[0])
        except Exception as e:
            errors.append(e)
        finally:
            signal.pthread_kill(main, signal.SIGINT)

    viewer_start = viewer.start_viewer
    monkeypatch.setattr(viewer, "start_viewer", recording_start)
    main = threading.main_thread().ident
    assert threading.get_ident() == main
    t = threading.Thread(target=user, daemon=True)
    t.start()
    viewer.cmd_view(viewer.ViewArgs(scene_file, port=0))  # returns on Ctrl-C
    t.join(10)
    out = capsys.readouterr().out
    assert errors == [200]
    assert f"open {handles[0].url}" in out and "300 splats drawn in the browser" in out and "stopped" in out
    assert handles[0]._stopped


# -------------------------------------------------------------------------------------- end to end

CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # runs as root in CI containers
    "--use-angle=swiftshader",  # WebGL in software: no GPU needed
    "--enable-unsafe-swiftshader",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # no name but 127.0.0.1 resolves
]


class Browser:
    """Headless Chromium driven over the DevTools protocol (a websocket on 127.0.0.1)."""

    def __init__(self, timeout: float = 30.0):
        from websockets.sync.client import connect  # viser depends on websockets

        self.dir = tempfile.mkdtemp(prefix="scenezip-chromium-")
        self.netlog = Path(self.dir) / "netlog.json"
        self.proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={self.dir}",
                                      "--remote-debugging-port=0", f"--log-net-log={self.netlog}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        self.ws, self.n, self.events, self.peers = None, 0, [], None
        try:
            port_file = Path(self.dir) / "DevToolsActivePort"
            end = time.monotonic() + timeout
            while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
                if time.monotonic() > end or self.proc.poll() is not None:
                    raise RuntimeError(f"Chromium did not start (exit status {self.proc.poll()})")
                time.sleep(0.05)
            port = int(port_file.read_text().splitlines()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                page = next(t for t in json.load(r) if t["type"] == "page")
            self.ws = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
            self.call("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1],
                      deviceScaleFactor=1, mobile=False)  # fmt: skip
            self.call("Network.enable")
        except BaseException:
            self.close()
            raise

    def call(self, method: str, timeout: float = 30.0, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        end = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(end - time.monotonic(), 0.01)))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def screenshot(self) -> np.ndarray:
        import imageio.v3 as iio

        return iio.imread(base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"]))[..., :3]

    def requested_urls(self) -> list[str]:
        """URLs the page asked for (its workers' requests are not listed here; see tcp_peers)."""
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def close(self) -> list[str]:
        """Quit Chromium; returns the remote address of every TCP connection it opened (from its net log)."""
        if self.peers is not None:
            return self.peers
        if self.ws is not None:
            try:
                self.call("Browser.close", timeout=10)
            except Exception:
                pass
            try:
                self.ws.close()
            except Exception:
                pass
            self.ws = None
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        peers = []
        try:
            text = self.netlog.read_text()
            log = json.loads(text if text.rstrip().endswith("}") else text.rstrip().rstrip(",") + "]}")
            kinds = {v: k for k, v in log["constants"]["logEventTypes"].items()}
            for e in log["events"]:
                if kinds.get(e["type"]) == "TCP_CONNECT":
                    p = e.get("params", {})
                    peers += p.get("address_list", []) + ([p["remote_address"]] if "remote_address" in p else [])
        except (OSError, ValueError, KeyError):
            peers = ["<net log unreadable>"]
        shutil.rmtree(self.dir, ignore_errors=True)
        self.peers = peers
        return peers


def colour_mask(img: np.ndarray, rgb: tuple[float, float, float], tol: int = 80) -> np.ndarray:
    """Pixels within ``tol`` levels of ``rgb`` on every channel."""
    return np.all(np.abs(img.astype(int) - np.array(rgb) * 255) < tol, axis=-1)


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= np.roll(np.roll(mask, dy, 0), dx, 1)
    return out


def save_shot(img: np.ndarray, name: str) -> None:
    """Keep the screenshot where SCENEZIP_SHOTS points (for a person to look at), if it is set."""
    folder = os.environ.get("SCENEZIP_SHOTS")
    if folder:
        import imageio.v3 as iio

        Path(folder).mkdir(parents=True, exist_ok=True)
        iio.imwrite(Path(folder) / name, img)


@pytest.fixture
def browser():
    if CHROMIUM is None:
        pytest.skip(NO_CHROMIUM)
    b = Browser()
    yield b
    b.close()


def not_loopback(peers: list[str]) -> list[str]:
    return [p for p in peers if not (p.startswith("127.0.0.1:") or p.startswith("[::1]:"))]


@needs_viser
@needs_chromium
def test_end_to_end_browser_draws_the_splats(browser, scene_file):
    handle = start_viewer(scene_file, port=0, mode="splats")
    try:
        browser.events.clear()
        browser.call("Page.navigate", url=handle.url)
        end, shot = time.monotonic() + 45, None
        while time.monotonic() < end:
            time.sleep(0.5)
            shot = browser.screenshot()
            if colour_mask(shot, MAGENTA).sum() > 2000:
                break
        urls = browser.requested_urls()
        connected = len(handle.server.get_clients())
    finally:
        handle.stop()
    peers = browser.close()
    save_shot(shot, "view_splats.png")
    assert shot.shape[:2] == (VIEWPORT[1], VIEWPORT[0])
    n_magenta = int(colour_mask(shot, MAGENTA).sum())
    assert n_magenta > 2000, f"only {n_magenta} magenta pixels: the browser drew no splats"
    assert connected == 1  # the page's websocket reached the server
    assert urls and all(u.startswith((handle.url, "data:", "blob:")) for u in urls), urls
    assert peers and not_loopback(peers) == [], peers  # Chromium opened no connection beyond 127.0.0.1


@needs_viser
@needs_chromium
def test_end_to_end_server_frames_line_up_with_the_browser_camera(browser, scene_file):
    """Render mode: the server's frame (magenta) is the background; the test adds tiny green splats at the
    same centres drawn by the browser itself. They land on the magenta arms only if the server turned the
    browser's camera into the same view."""
    from scenezip.scene import load_scene
    from scenezip.splatting.plain import to_plain

    handle = start_viewer(scene_file, port=0, mode="render")
    try:
        dots = splats_for_viser(to_plain(load_scene(scene_file).model, sh_degree=0))
        dots["rgbs"][:] = GREEN
        dots["opacities"][:] = 1.0
        dots["covariances"] *= (0.005 / 0.03) ** 2  # standard deviations of about 0.005
        handle.server.scene.add_gaussian_splats("/test_dots", **dots)
        browser.call("Page.navigate", url=handle.url)
        end, shot = time.monotonic() + 45, None
        while time.monotonic() < end:
            time.sleep(0.5)
            views = list(handle.renderer._views.values())
            if views and all(v.shown_full for v in views):
                time.sleep(0.5)  # let the browser show the last frame
                shot = browser.screenshot()
                if colour_mask(shot, MAGENTA).sum() > 1000 and colour_mask(shot, GREEN, 60).sum() > 100:
                    break
        frames = handle.renderer.frames
    finally:
        handle.stop()
    peers = browser.close()
    assert peers and not_loopback(peers) == [], peers
    assert shot is not None, "the server never finished a full frame"
    save_shot(shot, "view_render.png")
    magenta, green = colour_mask(shot, MAGENTA), colour_mask(shot, GREEN, 60)
    green[-70:, :70] = False  # the axes gizmo in the bottom-left corner has a green arm
    assert frames >= 2 and magenta.sum() > 1000, f"{frames} frames, {magenta.sum()} magenta pixels"
    assert green.sum() > 100, f"only {green.sum()} green pixels: the browser drew no splats"
    on_arms = (green & dilate(magenta, 6)).sum() / green.sum()  # clumps of dots hide the magenta below
    assert on_arms > 0.9, f"only {on_arms:.0%} of the browser's splats lie on the server's frame"
