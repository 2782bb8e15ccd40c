"""Image quality metrics: PSNR, SSIM, MS-SSIM and LPIPS (VGG), for images ``[..., H, W, 3]`` in [0, 1].

Everything here is written by hand in plain torch, for three reasons: the published numbers we compare
with come from specific evaluation scripts whose conventions (padding, downsampling, input scaling) we
must reproduce exactly; PyPI's torchvision does not import beside our torch, so the ``lpips`` package
cannot run here; and nothing may be downloaded at run time. Conventions followed:

- :func:`psnr` is the 3DGS evaluation formula: per image, the MSE over all pixels and channels, then
  ``20 * log10(1 / sqrt(mse))``. Identical images give ``inf`` (no cap), as in 3DGS.
- :func:`ssim` / :func:`ssim_map` follow the 3DGS evaluation code: an 11x11 Gaussian window with sigma
  1.5 (normalized to sum 1), ``C1 = 0.01^2``, ``C2 = 0.03^2``, every channel filtered on its own with
  zero padding of 5 ('same' output size), the SSIM map averaged over pixels and channels per image. The
  2D window is the outer product of the 1D one, so we filter separably (two 1D convolutions with zero
  padding), which equals 3DGS's single 11x11 ``F.conv2d(..., padding=5, groups=3)`` up to float rounding.
  It is differentiable; the trainers use ``1 - ssim`` in their loss.
- :func:`ms_ssim` is Wang, Simoncelli and Bovik (2003), 5 scales, weights
  ``(0.0448, 0.2856, 0.3001, 0.2363, 0.1333)``, with the conventions of the ``pytorch_msssim`` package
  that CompressAI and GaussianImage use for their Kodak figures: the same Gaussian window applied with
  *valid* filtering (no padding), the contrast-structure term ``cs`` averaged per channel at scales
  1..4 and the full SSIM per channel at scale 5, both clipped at 0 before the fractional powers, the
  product taken per channel and then averaged over channels; between scales a 2x2 average pool whose
  zero padding (1 on both sides of an odd dimension, counted in the mean) matches
  ``F.avg_pool2d(x, 2, padding=(H % 2, W % 2))``. The smaller image side must exceed 160 pixels.
- :func:`lpips` is LPIPS v0.1 with the VGG16 trunk (Zhang et al. 2018) as the ``lpips`` package defines
  it: inputs mapped from [0, 1] to [-1, 1], then its ScalingLayer ``(x - shift) / scale`` with
  ``shift = (-0.030, -0.088, -0.188)`` and ``scale = (0.458, 0.448, 0.450)``; torchvision's VGG16
  ``features`` up to relu5_3 with taps after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3; each tap
  divided by its channel-wise L2 norm (+1e-10); squared difference; a 1x1 convolution without bias per
  tap (the v0.1 linear heads); mean over pixels; sum over the five taps. The backbone is torchvision's
  ImageNet VGG16 checkpoint (``vgg16-397923af.pth``) and the heads are the ``lpips`` package's
  ``weights/v0.1/vgg.pth``, read from local files only (see :func:`lpips_available`).
  ``scaling="3dgs"`` skips the [0, 1] -> [-1, 1] step: the 3DGS evaluation script (and gsplat's
  trainer with ``lpips_net="vgg"``) feeds [0, 1] images straight into the ScalingLayer, so its numbers
  are only comparable with that setting; the default is the published definition.

LPIPS needs weight files that cannot be downloaded everywhere. When they are absent or malformed,
:func:`lpips` raises :class:`LpipsUnavailableError` (a :class:`~scenezip.errors.ScenezipError`) whose
message says which file is missing or wrong; :func:`lpips_available` returns ``(False, reason)``; and
:func:`image_metrics` reports ``lpips=None`` with the reason in ``lpips_note``. No number is ever made up.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from scenezip.errors import ScenezipError

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01**2
SSIM_C2 = 0.03**2
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

# LPIPS v0.1 ScalingLayer constants (applied to images in [-1, 1]).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
LPIPS_EPS = 1e-10
LPIPS_CHANNELS = (64, 128, 256, 512, 512)

# torchvision's VGG16 `features`: (index in the Sequential, in channels, out channels) of every 3x3
# convolution, grouped into the five stages that end at the LPIPS taps relu1_2 ... relu5_3. A 2x2 max
# pool (stride 2) opens every stage but the first.
VGG16_STAGES: tuple[tuple[tuple[int, int, int], ...], ...] = (
    ((0, 3, 64), (2, 64, 64)),
    ((5, 64, 128), (7, 128, 128)),
    ((10, 128, 256), (12, 256, 256), (14, 256, 256)),
    ((17, 256, 512), (19, 512, 512), (21, 512, 512)),
    ((24, 512, 512), (26, 512, 512), (28, 512, 512)),
)
VGG16_HUB_FILENAME = "vgg16-397923af.pth"
LPIPS_ENV_VGG = "SCENEZIP_LPIPS_VGG"
LPIPS_ENV_LIN = "SCENEZIP_LPIPS_LIN"


class LpipsUnavailableError(ScenezipError):
    """LPIPS cannot be computed here: a weight file is missing or is not in the expected layout."""


# ---------------------------------------------------------------------------------------------------
# input handling


def _check_pair(img: Tensor, ref: Tensor, min_size: int = 1) -> tuple[Tensor, Tensor, torch.Size]:
    """Validate ``[..., H, W, 3]`` pairs; returns both as ``[B, 3, H, W]`` and the batch shape."""
    for name, t in (("img", img), ("ref", ref)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 3 or t.shape[-1] != 3:
            raise ValueError(f"{name} must have shape [..., H, W, 3], got {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point image in [0, 1], got dtype {t.dtype}")
    if img.shape != ref.shape:
        raise ValueError(f"img and ref must have the same shape, got {tuple(img.shape)} and {tuple(ref.shape)}")
    if img.dtype != ref.dtype or img.device != ref.device:
        raise ValueError(
            f"img and ref must share dtype and device, got {img.dtype}/{img.device} and {ref.dtype}/{ref.device}"
        )
    h, w = img.shape[-3], img.shape[-2]
    if min(h, w) < min_size:
        raise ValueError(f"img must be at least {min_size}x{min_size} pixels for this metric, got {h}x{w}")
    batch = img.shape[:-3]
    x = img.reshape(-1, h, w, 3).permute(0, 3, 1, 2)
    y = ref.reshape(-1, h, w, 3).permute(0, 3, 1, 2)
    return x, y, batch


# ---------------------------------------------------------------------------------------------------
# PSNR


def psnr(img: Tensor, ref: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB for peak value 1, as the 3DGS evaluation computes it.

    Args:
        img: ``[..., H, W, 3]`` image in [0, 1].
        ref: ``[..., H, W, 3]`` reference image.

    Returns:
        ``[...]`` PSNR per image: ``20 * log10(1 / sqrt(mse))`` with the MSE over pixels and channels;
        ``inf`` where the images are identical.
    """
    x, _, batch = _check_pair(img, ref)
    mse = (img - ref).square().reshape(x.shape[0], -1).mean(dim=1)
    return (20.0 * torch.log10(1.0 / torch.sqrt(mse))).reshape(batch)


# ---------------------------------------------------------------------------------------------------
# SSIM and MS-SSIM


def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA, dtype=torch.float32, device=None) -> Tensor:
    """``[size]`` 1D Gaussian, centred on ``size // 2``, normalized to sum 1 (the 3DGS SSIM window)."""
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _blur(x: Tensor, win: Tensor, padding: int) -> Tensor:
    """Separable Gaussian filter of every channel of ``x`` ``[B, C, H, W]`` with zero padding ``padding``."""
    c = x.shape[1]
    k = win.numel()
    x = F.conv2d(x, win.view(1, 1, 1, k).expand(c, 1, 1, k), padding=(0, padding), groups=c)
    return F.conv2d(x, win.view(1, 1, k, 1).expand(c, 1, k, 1), padding=(padding, 0), groups=c)


def _ssim_terms(x: Tensor, y: Tensor, padding: int) -> tuple[Tensor, Tensor]:
    """SSIM map and contrast-structure map of ``[B, 3, H, W]`` pairs (luminance * cs, cs)."""
    win = gaussian_window(dtype=x.dtype, device=x.device)
    c = x.shape[1]
    stats = _blur(torch.cat([x, y, x * x, y * y, x * y], dim=1), win, padding)
    mu_x, mu_y, e_xx, e_yy, e_xy = stats.split(c, dim=1)
    mu_xx, mu_yy, mu_xy = mu_x * mu_x, mu_y * mu_y, mu_x * mu_y
    var_x, var_y, cov = e_xx - mu_xx, e_yy - mu_yy, e_xy - mu_xy
    cs = (2.0 * cov + SSIM_C2) / (var_x + var_y + SSIM_C2)
    lum = (2.0 * mu_xy + SSIM_C1) / (mu_xx + mu_yy + SSIM_C1)
    return lum * cs, cs


def ssim_map(img: Tensor, ref: Tensor) -> Tensor:
    """Per-pixel, per-channel SSIM of the 3DGS evaluation code (11x11 Gaussian, sigma 1.5, zero padding).

    Args:
        img: ``[..., H, W, 3]`` image in [0, 1] (differentiable).
        ref: ``[..., H, W, 3]`` reference image.

    Returns:
        ``[..., H, W, 3]`` SSIM map; :func:`ssim` is its mean over the last three dimensions.
    """
    x, y, _ = _check_pair(img, ref)
    s, _ = _ssim_terms(x, y, padding=SSIM_WINDOW // 2)
    return s.permute(0, 2, 3, 1).reshape(img.shape)


def ssim(img: Tensor, ref: Tensor) -> Tensor:
    """Mean SSIM per image, as in the 3DGS evaluation code (differentiable; losses use ``1 - ssim``).

    Args:
        img: ``[..., H, W, 3]`` image in [0, 1].
        ref: ``[..., H, W, 3]`` reference image.

    Returns:
        ``[...]`` SSIM per image, 1 for identical images.
    """
    return ssim_map(img, ref).mean(dim=(-3, -2, -1))


def _avg_pool_half(x: Tensor) -> Tensor:
    """2x2 average pool with zero padding 1 on both sides of an odd dimension, padding counted."""
    return F.avg_pool2d(x, kernel_size=2, padding=(x.shape[-2] % 2, x.shape[-1] % 2))


def ms_ssim(img: Tensor, ref: Tensor, weights: Sequence[float] = MS_SSIM_WEIGHTS) -> Tensor:
    """Multi-scale SSIM (Wang et al. 2003) with the ``pytorch_msssim`` conventions (see module docstring).

    Args:
        img: ``[..., H, W, 3]`` image in [0, 1], smaller side above ``10 * 2 ** (len(weights) - 1)``
            pixels (160 for the 5 standard scales).
        ref: ``[..., H, W, 3]`` reference image.
        weights: exponent of each scale, finest first; the last one weighs the full SSIM of the coarsest
            scale, the others the contrast-structure term.

    Returns:
        ``[...]`` MS-SSIM per image, 1 for identical images.
    """
    levels = len(weights)
    if levels < 1:
        raise ValueError("weights must name at least one scale")
    x, y, batch = _check_pair(img, ref, min_size=(SSIM_WINDOW - 1) * 2 ** (levels - 1) + 1)
    w = torch.tensor(list(weights), dtype=x.dtype, device=x.device)
    terms = []
    for level in range(levels):
        s, cs = _ssim_terms(x, y, padding=0)
        if level < levels - 1:
            terms.append(torch.relu(cs.mean(dim=(-2, -1))))
            x, y = _avg_pool_half(x), _avg_pool_half(y)
        else:
            terms.append(torch.relu(s.mean(dim=(-2, -1))))
    per_channel = torch.prod(torch.stack(terms, dim=0) ** w.view(-1, 1, 1), dim=0)  # [B, 3]
    return per_channel.mean(dim=1).reshape(batch)


# ---------------------------------------------------------------------------------------------------
# LPIPS (VGG16 trunk, v0.1 linear heads)


def vgg16_features(x: Tensor, vgg: Mapping[str, Tensor]) -> list[Tensor]:
    """torchvision VGG16 ``features`` up to relu5_3; returns the five LPIPS taps.

    Args:
        x: ``[B, 3, H, W]`` input already passed through the LPIPS ScalingLayer; H, W >= 16.
        vgg: torchvision state-dict tensors ``features.{i}.weight`` ``[out, in, 3, 3]`` and
            ``features.{i}.bias`` ``[out]`` for the convolution indices in :data:`VGG16_STAGES`.

    Returns:
        Activations after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3: ``[B, C_k, H / 2^k, W / 2^k]``.
    """
    taps = []
    h = x
    for stage, convs in enumerate(VGG16_STAGES):
        if stage > 0:
            h = F.max_pool2d(h, kernel_size=2, stride=2)
        for idx, _, _ in convs:
            h = torch.relu(F.conv2d(h, vgg[f"features.{idx}.weight"], vgg[f"features.{idx}.bias"], padding=1))
        taps.append(h)
    return taps


def lpips_with_weights(
    img: Tensor,
    ref: Tensor,
    vgg: Mapping[str, Tensor],
    lin: Mapping[str, Tensor],
    scaling: Literal["lpips", "3dgs"] = "lpips",
) -> Tensor:
    """LPIPS from weights already in memory (the computation behind :func:`lpips`).

    Args:
        img: ``[..., H, W, 3]`` image in [0, 1], H, W >= 16.
        ref: ``[..., H, W, 3]`` reference image.
        vgg: torchvision VGG16 state-dict tensors (see :func:`vgg16_features`), on the images' device.
        lin: LPIPS v0.1 heads ``lin{k}.model.1.weight`` ``[1, C_k, 1, 1]``, k = 0..4.
        scaling: ``"lpips"`` maps [0, 1] to [-1, 1] before the ScalingLayer (the published definition);
            ``"3dgs"`` skips that step, as the 3DGS evaluation script does.

    Returns:
        ``[...]`` LPIPS distance per image (0 for identical images).
    """
    if scaling not in ("lpips", "3dgs"):
        raise ValueError(f"scaling must be 'lpips' or '3dgs', got {scaling!r}")
    x, y, batch = _check_pair(img, ref, min_size=16)
    inp = torch.cat([x, y], dim=0)
    if scaling == "lpips":
        inp = inp * 2.0 - 1.0
    shift = torch.tensor(LPIPS_SHIFT, dtype=inp.dtype, device=inp.device).view(1, 3, 1, 1)
    scale = torch.tensor(LPIPS_SCALE, dtype=inp.dtype, device=inp.device).view(1, 3, 1, 1)
    taps = vgg16_features((inp - shift) / scale, vgg)
    n = x.shape[0]
    total = x.new_zeros(n)
    for k, feat in enumerate(taps):
        feat = feat / (feat.square().sum(dim=1, keepdim=True).sqrt() + LPIPS_EPS)
        diff = (feat[:n] - feat[n:]).square()
        total = total + F.conv2d(diff, lin[f"lin{k}.model.1.weight"]).mean(dim=(1, 2, 3))
    return total.reshape(batch)


def _expected_vgg_shapes() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for convs in VGG16_STAGES:
        for idx, cin, cout in convs:
            shapes[f"features.{idx}.weight"] = (cout, cin, 3, 3)
            shapes[f"features.{idx}.bias"] = (cout,)
    return shapes


def _expected_lin_shapes() -> dict[str, tuple[int, ...]]:
    return {f"lin{k}.model.1.weight": (1, c, 1, 1) for k, c in enumerate(LPIPS_CHANNELS)}


def _load_state_dict(path: Path, expected: dict[str, tuple[int, ...]], what: str) -> dict[str, Tensor]:
    """Read a torch state dict and keep the ``expected`` keys as float32 CPU tensors, or raise."""
    try:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files in the legacy (non-zip) format cannot be memory-mapped
            sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is reported the same way, naming the file
        raise LpipsUnavailableError(f"{path}: cannot read {what} ({type(exc).__name__}: {exc})") from exc
    if not isinstance(sd, Mapping):
        raise LpipsUnavailableError(f"{path}: expected a state dict of {what}, got {type(sd).__name__}")
    problems = []
    for key, shape in expected.items():
        t = sd.get(key)
        if not isinstance(t, Tensor):
            problems.append(f"missing key '{key}'")
        elif tuple(t.shape) != shape:
            problems.append(f"'{key}' has shape {tuple(t.shape)}, expected {shape}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise LpipsUnavailableError(f"{path}: not {what}: " + "; ".join(problems[:3]) + more)
    return {key: sd[key].detach().to(torch.float32).clone() for key in expected}


def _vgg_weights_path() -> Path:
    env = os.environ.get(LPIPS_ENV_VGG)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise LpipsUnavailableError(f"{LPIPS_ENV_VGG}={env}: no such file (torchvision VGG16 weights)")
        return path
    path = Path(torch.hub.get_dir()) / "checkpoints" / VGG16_HUB_FILENAME
    if not path.is_file():
        raise LpipsUnavailableError(
            f"VGG16 backbone weights not found: set {LPIPS_ENV_VGG} to torchvision's {VGG16_HUB_FILENAME} "
            f"or place it at {path} (nothing is downloaded at run time)"
        )
    return path


def _lin_weights_path() -> Path:
    env = os.environ.get(LPIPS_ENV_LIN)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise LpipsUnavailableError(f"{LPIPS_ENV_LIN}={env}: no such file (LPIPS v0.1 vgg.pth heads)")
        return path
    try:  # locate the lpips package without importing it (its import needs torchvision)
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        spec = None
    for folder in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(folder) / "weights" / "v0.1" / "vgg.pth"
        if path.is_file():
            return path
    raise LpipsUnavailableError(
        f"LPIPS linear heads not found: set {LPIPS_ENV_LIN} to the lpips package's weights/v0.1/vgg.pth "
        "or pip-install lpips (only its bundled weights file is read)"
    )


# (vgg path, its mtime and size, lin path, its mtime and size) -> {(device, dtype): (vgg, lin)}
_LPIPS_CACHE: dict[tuple, dict[tuple, tuple[dict[str, Tensor], dict[str, Tensor]]]] = {}


def _lpips_weights(device: torch.device, dtype: torch.dtype) -> tuple[dict[str, Tensor], dict[str, Tensor], str]:
    """Resolve, load, validate and cache the LPIPS weights; returns them on ``device`` and a description."""
    vgg_path, lin_path = _vgg_weights_path(), _lin_weights_path()
    vs, ls = vgg_path.stat(), lin_path.stat()
    key = (str(vgg_path.resolve()), vs.st_mtime_ns, vs.st_size, str(lin_path.resolve()), ls.st_mtime_ns, ls.st_size)
    entry = _LPIPS_CACHE.get(key)
    if entry is None:
        cpu = (
            _load_state_dict(vgg_path, _expected_vgg_shapes(), "torchvision VGG16 weights"),
            _load_state_dict(lin_path, _expected_lin_shapes(), "LPIPS v0.1 VGG linear heads"),
        )
        _LPIPS_CACHE.clear()  # keep one network (about 60 MB) in memory
        entry = _LPIPS_CACHE[key] = {(torch.device("cpu"), torch.float32): cpu}
    dev_key = (torch.device(device), dtype)
    if dev_key not in entry:
        vgg, lin = next(iter(entry.values()))
        entry[dev_key] = tuple({k: v.to(device=device, dtype=dtype) for k, v in d.items()} for d in (vgg, lin))
    vgg, lin = entry[dev_key]
    return vgg, lin, f"vgg={vgg_path}, lin={lin_path}"


def lpips_available() -> tuple[bool, str]:
    """Whether :func:`lpips` can run here, and a reason or the weight files it would use.

    Looks for the torchvision VGG16 weights in ``$SCENEZIP_LPIPS_VGG``, else at
    ``torch.hub.get_dir()/checkpoints/vgg16-397923af.pth``; and for the LPIPS v0.1 heads in
    ``$SCENEZIP_LPIPS_LIN``, else in the installed ``lpips`` package's ``weights/v0.1/vgg.pth``. A variable
    that is set is used alone (no fallback), so a wrong setting is reported rather than hidden. The files
    are loaded and checked (then cached), so ``True`` means :func:`lpips` will run.
    """
    try:
        _, _, where = _lpips_weights(torch.device("cpu"), torch.float32)
    except LpipsUnavailableError as exc:
        return False, str(exc)
    return True, where


def lpips(img: Tensor, ref: Tensor, net: Literal["vgg"] = "vgg", scaling: Literal["lpips", "3dgs"] = "lpips") -> Tensor:
    """LPIPS v0.1 distance with the VGG16 trunk, from local weight files (see module docstring).

    Args:
        img: ``[..., H, W, 3]`` image in [0, 1], H, W >= 16 (differentiable; the network is frozen).
        ref: ``[..., H, W, 3]`` reference image.
        net: backbone; only ``"vgg"`` is implemented.
        scaling: ``"lpips"`` (published definition) or ``"3dgs"`` (the 3DGS script's [0, 1] inputs).

    Returns:
        ``[...]`` LPIPS per image.

    Raises:
        LpipsUnavailableError: a weight file is missing or malformed; the message says which and why.
    """
    if net != "vgg":
        raise ValueError(f"net must be 'vgg' (the only LPIPS backbone implemented), got {net!r}")
    _check_pair(img, ref, min_size=16)
    vgg, lin, _ = _lpips_weights(img.device, img.dtype)
    return lpips_with_weights(img, ref, vgg, lin, scaling=scaling)


def image_metrics(img: Tensor, ref: Tensor, lpips_scaling: Literal["lpips", "3dgs"] = "lpips") -> dict:
    """PSNR, SSIM and LPIPS of a rendered image against its reference, as plain floats for reports.

    Args:
        img: ``[..., H, W, 3]`` image in [0, 1] (clamp renders first); a batch gives means over images.
        ref: ``[..., H, W, 3]`` reference image.
        lpips_scaling: input scaling for LPIPS, see :func:`lpips`.

    Returns:
        ``{"psnr": float, "ssim": float, "lpips": float | None, "lpips_note": str}``; ``lpips`` is None
        when the weights are unavailable or the image is under 16x16 pixels, and ``lpips_note`` then
        gives the reason (else the network, scaling and weight files used).
    """
    with torch.no_grad():
        out = {"psnr": psnr(img, ref).mean().item(), "ssim": ssim(img, ref).mean().item()}
        h, w = img.shape[-3], img.shape[-2]
        try:
            if min(h, w) < 16:
                raise LpipsUnavailableError(f"image is {h}x{w}; the VGG trunk needs at least 16x16 pixels")
            out["lpips"] = lpips(img, ref, scaling=lpips_scaling).mean().item()
            out["lpips_note"] = f"LPIPS v0.1 VGG, scaling={lpips_scaling}, " + lpips_available()[1]
        except LpipsUnavailableError as exc:
            out["lpips"] = None
            out["lpips_note"] = f"LPIPS unavailable: {exc}"
    return out
