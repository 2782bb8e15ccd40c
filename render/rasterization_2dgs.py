"""2D Gaussian surfel rasterizer (Huang et al., SIGGRAPH 2024, "2D Gaussian Splatting for
Geometrically Accurate Radiance Fields"), mirroring ``gsplat.rasterization_2dgs``.

Written by hand because gsplat's 2DGS path exists only as CUDA kernels (its PyTorch reference needs
CUDA helpers and nerfacc), and scenezip must train and render surfels on a CPU. The conventions are
gsplat 1.5.3's, read from its kernels:

* Each surfel has a homogeneous transform ``KWH`` (``ray_transforms``, ``[3, 3]``) that maps its local
  plane coordinates ``(u, v, 1)`` to homogeneous pixels: ``K [s_u R_u, s_v R_v, mu_c]``, with ``K``
  built from ``fx, fy, cx, cy`` only. A pixel ``(x, y)`` gives two planes ``h_u = x M_2 - M_0`` and
  ``h_v = y M_2 - M_1`` whose cross product is the ray-surfel intersection in homogeneous ``(u, v)``.
* The kernel is ``max(G(u, v), G_filter(pixel - means2d))``: the ray-splat Gaussian, with the
  screen-space low-pass filter of 2DGS as a floor so surfels seen edge-on stay visible.
* Screen-space box: the axis-aligned box of the projected 1-sigma ellipse (conic of ``diag(1, 1, -1)``)
  scaled by 3.33 and rounded up; ``means2d`` is that box's centre (not the projected surfel centre).
* Alpha ``min(0.999, opacity * kernel)``, skipped below 1/255; compositing stops (exclusively) when
  the transmittance would fall to 1e-4 or below. Normals are the surfels' third axis in camera
  space, flipped toward the camera, accumulated with the compositing weights and returned in world
  space. Median depth is the depth of the last surfel met while the transmittance before it is above
  0.5; the distortion is gsplat's L1 form of the Mip-NeRF 360 / 2DGS loss,
  ``sum_ij w_i w_j |z_i - z_j|``.

Deliberate differences from gsplat (the CUDA path is adapted so both backends mean the same):

* ``surfel_depth``: gsplat composites each surfel's *centre* depth (``"center"``, the default, the
  only one its kernels can do). ``"intersection"`` composites the depth of the ray-surfel
  intersection, as the 2DGS paper's own rasterizer does, so a tilted surfel renders the depth of its
  plane: what 2DGS is for. It is torch only. As in 2DGS's kernel, a pixel whose ray misses the surfel's
  disc (3.33 sigma) and sees it only through the screen-space filter takes the centre's depth instead
  (2DGS switches wherever the filter wins; the disc keeps exact depths for sub-pixel surfels), and a
  pair whose depth is not beyond ``near_plane`` is skipped. Without that, a surfel seen nearly edge-on
  put depths far away or behind the camera into its filter pixels.
* ``eps2d`` sets the low-pass filter: its variance is ``eps2d / 0.6`` px^2, so the default 0.3 is the
  2DGS / gsplat filter (``sigma = sqrt(2) / 2``, FilterInvSquare 2). gsplat's kernels hard-code that
  filter and ignore ``eps2d``; the CUDA path therefore takes only the default.
* The median depth, distortion and normals from depth always use the surfel depth, whatever the
  ``render_mode`` (gsplat reads the last colour channel, which in ``"RGB"`` mode is blue). The CUDA
  path renders ``"RGB+ED"`` for ``"RGB"`` and drops the depth channel.
* ``render_normals_from_depth`` is always returned (gsplat returns None unless the mode has RGB and
  depth): from the median depth when ``depth_mode="median"``, else from the depth channel of the
  render (accumulated for ``"D"``/``"RGB+D"``, as gsplat; expected otherwise).
* ``render_distort`` is zeros unless ``distloss`` (gsplat always computes it), and ``distloss`` works in
  every mode.
* ``backgrounds`` colour only the colour channels; ``"D"``/``"ED"`` take none.

The torch path runs through :func:`scenezip.render._tiles.rasterize_tiles`: tiles of depth-sorted
surfels, chunks of bounded size, with no Python loop over surfels or pixels. Each chunk is composited
by :class:`_Composite2DGS`, whose backward is written by hand (it recomputes the pairs from the chunk's
per-surfel rows; see its docstring for the derivatives): autograd through the many ``[T, P, K]``
intermediates, under checkpointing, made 2DGS training on a CPU several times slower than 3DGS. The
autograd path (:func:`_tile_pixel_fn`, chosen by ``COMPOSITE_BACKWARD = "autograd"``) stays as the
specification the hand-written one is tested against. :func:`rasterization_2dgs_reference` is a dense, independently written
reference (a ray-plane solve per pixel and surfel, then a front-to-back loop like the CUDA kernel)
for tests on tiny inputs.
"""

from __future__ import annotations

import math
import threading
from typing import Callable, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from scenezip._backend import import_gsplat, resolve_backend
from scenezip.render._project import check_splat_inputs, quat_to_rotmat, view_colors, world_to_cam
from scenezip.render._tiles import DEFAULT_CHUNK_PAIRS, TileIntersections, isect_tiles, rasterize_tiles

RenderMode = Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"]
RENDER_MODES = ("RGB", "D", "ED", "RGB+D", "RGB+ED")
DEPTH_MODES = ("expected", "median")
SURFEL_DEPTHS = ("center", "intersection")
BACKENDS = ("auto", "torch", "cuda")

ALPHA_THRESHOLD = 1.0 / 255.0  # gsplat's ALPHA_THRESHOLD
MAX_ALPHA = 0.999
T_MIN = 1e-4  # compositing stops (exclusively) when the transmittance would reach this
MEDIAN_T = 0.5
BOX_SIGMAS = 3.33  # gsplat's 2DGS screen-space box, in sigmas of the projected surfel
HALF_DISC = 0.5 * BOX_SIGMAS**2  # (u^2 + v^2) / 2 at the rim of the disc whose plane depth is used
GSPLAT_EPS2D = 0.3  # the eps2d that gsplat's hard-coded 2DGS filter (FilterInvSquare = 2) stands for
DEFAULT_TILE_SIZE_2DGS = 8

Outputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, dict]


def _intrinsics(Ks: Tensor) -> Tensor:
    """``[C, 3, 3]`` pinhole matrices from ``fx, fy, cx, cy`` only, as gsplat's 2DGS projection reads them."""
    fx, fy, cx, cy = Ks[:, 0, 0], Ks[:, 1, 1], Ks[:, 0, 2], Ks[:, 1, 2]
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    return torch.stack([fx, zero, cx, zero, fy, cy, zero, zero, one], -1).reshape(-1, 3, 3)


def _surfels_in_camera(
    means: Tensor, quats: Tensor, scales: Tensor, viewmats: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Camera-space centre ``[C, N, 3]``, scaled tangent axes ``[C, N, 3]`` x2 and unit normal ``[C, N, 3]``."""
    means_c = world_to_cam(means, viewmats)
    rot_c = torch.einsum("cij,njk->cnik", viewmats[:, :3, :3], quat_to_rotmat(quats))  # [C, N, 3, 3]
    tu = rot_c[..., 0] * scales[None, :, 0:1]
    tv = rot_c[..., 1] * scales[None, :, 1:2]
    return means_c, tu, tv, rot_c[..., 2]


def project_surfels(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Ray transforms, screen boxes and normals of surfels; mirrors ``gsplat.fully_fused_projection_2dgs``.

    Returns:
        radii ``[C, N, 2]`` int32 box half-extents (0: culled), means2d ``[C, N, 2]`` box centres,
        depths ``[C, N]`` camera z of the centres, ray_transforms ``[C, N, 3, 3]`` (``KWH``: rows map
        ``(u, v, 1)`` to homogeneous pixels), normals ``[C, N, 3]`` unit, camera space, toward the camera.
    """
    means_c, tu, tv, normals = _surfels_in_camera(means, quats, scales, viewmats)
    WH = torch.stack([tu, tv, means_c], dim=-1)  # columns: [C, N, 3, 3]
    M = torch.einsum("cij,cnjk->cnik", _intrinsics(Ks), WH)  # [C, N, 3, 3]
    M0, M1, M2 = M.unbind(-2)
    sign = M.new_tensor([1.0, 1.0, -1.0])
    dist = (sign * M2 * M2).sum(-1)  # [C, N]
    ok = dist != 0
    f = sign / torch.where(ok, dist, torch.ones_like(dist))[..., None]  # [C, N, 3]
    means2d = torch.stack([(f * M0 * M2).sum(-1), (f * M1 * M2).sum(-1)], -1)  # [C, N, 2]
    depths = means_c[..., 2]
    with torch.no_grad():
        ext2 = means2d**2 - torch.stack([(f * M0 * M0).sum(-1), (f * M1 * M1).sum(-1)], -1)
        radius = torch.ceil(BOX_SIGMAS * ext2.clamp_min(1e-4).sqrt())  # [C, N, 2]
        m = means2d.detach()
        valid = ok & (depths > near_plane) & (depths < far_plane)
        valid &= ~((radius[..., 0] <= radius_clip) & (radius[..., 1] <= radius_clip))
        valid &= (m[..., 0] + radius[..., 0] > 0) & (m[..., 0] - radius[..., 0] < width)
        valid &= (m[..., 1] + radius[..., 1] > 0) & (m[..., 1] - radius[..., 1] < height)
        valid &= torch.isfinite(radius).all(-1) & torch.isfinite(m).all(-1)
        radii = torch.where(valid[..., None], radius, torch.zeros_like(radius)).to(torch.int32)
        facing = torch.where(-(normals * means_c).sum(-1, keepdim=True) > 0, 1.0, -1.0).to(normals.dtype)
    return radii, means2d, depths, M, normals * facing


def depth_to_normal(depths: Tensor, camtoworlds: Tensor, Ks: Tensor) -> Tensor:
    """World-space normals ``[C, H, W, 3]`` of z-depth maps ``[C, H, W, 1]``; mirrors ``gsplat.utils.depth_to_normal``.

    Back-projects pixel centres, takes central differences down the rows and along the columns, and
    normalizes their cross product (so a surface facing the camera gets a normal toward it). The
    one-pixel border, where a central difference does not exist, is 0.
    """
    C, H, W, _ = depths.shape
    y, x = torch.meshgrid(
        torch.arange(H, device=depths.device, dtype=depths.dtype),
        torch.arange(W, device=depths.device, dtype=depths.dtype),
        indexing="ij",
    )
    fx, fy = Ks[:, 0, 0, None, None], Ks[:, 1, 1, None, None]
    cx, cy = Ks[:, 0, 2, None, None], Ks[:, 1, 2, None, None]
    dirs_c = torch.stack([(x + 0.5 - cx) / fx, (y + 0.5 - cy) / fy, torch.ones_like(x).expand(C, H, W)], -1)
    dirs_w = torch.einsum("cij,chwj->chwi", camtoworlds[:, :3, :3], dirs_c)
    points = camtoworlds[:, None, None, :3, 3] + depths * dirs_w  # [C, H, W, 3]
    d_row = points[:, 2:, 1:-1] - points[:, :-2, 1:-1]
    d_col = points[:, 1:-1, 2:] - points[:, 1:-1, :-2]
    normals = F.normalize(torch.cross(d_row, d_col, dim=-1), dim=-1)
    return F.pad(normals, (0, 0, 1, 1, 1, 1), value=0.0)


# ----------------------------------------------------------------------------------------------
# compositing: tiled (the product path) and dense (the reference)
# ----------------------------------------------------------------------------------------------


def _adjugate(M: Tensor) -> tuple[Tensor, Tensor]:
    """Adjugate ``[..., 3, 3]`` and determinant ``[...]`` of ``M`` ``[..., 3, 3]`` (``adj(M) M = det(M) I``)."""
    a0, a1, a2, a3, a4, a5, a6, a7, a8 = M.flatten(-2).unbind(-1)
    r0 = (a4 * a8 - a5 * a7, a2 * a7 - a1 * a8, a1 * a5 - a2 * a4)
    r1 = (a5 * a6 - a3 * a8, a0 * a8 - a2 * a6, a2 * a3 - a0 * a5)
    r2 = (a3 * a7 - a4 * a6, a1 * a6 - a0 * a7, a0 * a4 - a1 * a3)
    adj = torch.stack([torch.stack(r, -1) for r in (r0, r1, r2)], -2)
    return adj, a0 * r0[0] + a1 * r1[0] + a2 * r2[0]


# The ray-surfel intersection of pixel p = (x, y, 1) is (h_u x h_v) with h_u = x M_2 - M_0 and
# h_v = y M_2 - M_1 (gsplat's kernel). Expanded, that cross product is adj(M) p: affine in the pixel.
# So is the squared distance to means2d, written in coordinates local to the tile. The tiled path
# therefore evaluates, per (pixel, surfel) pair, one small matrix product (cx, cy, cz, rho2d / 2) =
# G_surfel [x', y', 1, x'^2 + y'^2] and a dozen elementwise ops, and the intersection depth is
# M_2 . (adj(M) p) / cz = det(M) / cz. The packed per-surfel row is
# [adj(M) with the u, v rows scaled by sqrt(1/2) (9) | means2d (2) | opacity | det(M) | depth | features].
_PACK_FEATS = 14


def _tile_pixel_fn(filter_inv_sq: float, distloss: bool, intersection: bool, near_plane: float = 0.0
                   ) -> Callable[..., Tensor]:  # fmt: skip
    """The autograd ``pixel_fn``: the specification of :class:`_Composite2DGS`, kept for its parity tests."""
    half_filter = 0.5 * filter_inv_sq

    def pixel_fn(pix: Tensor, ids: Tensor, valid: Tensor, packed: Tensor) -> Tensor:
        """``pix`` ``[T, P, 2]``, ``ids``/``valid`` ``[T, K]``, ``packed`` ``[C*N, 14 + F]`` -> ``[T, P, F' + 4]``."""
        n_t, n_k = ids.shape
        n_p = pix.shape[1]
        g = packed[ids]  # [T, K, 14 + F]
        Q = g[..., :9].reshape(n_t, n_k, 3, 3)
        opac = g[..., 11] * valid.to(g.dtype)  # padding gets alpha 0, below the threshold
        det, depth, feats = g[..., 12], g[..., 13], g[..., _PACK_FEATS:]
        ref = pix[:, :1, :]  # [T, 1, 2] any pixel of the group: coordinates relative to it stay small
        local = pix - ref  # [T, P, 2]
        mloc = g[..., 9:11] - ref  # [T, K, 2]
        offset = Q[..., 2] + (Q[..., :2] * ref[:, :, None, :]).sum(-1)  # [T, K, 3]
        rows_c = torch.cat([Q[..., :2], offset[..., None], torch.zeros_like(offset[..., None])], -1)  # [T, K, 3, 4]
        row_r = torch.stack(
            [-2.0 * half_filter * mloc[..., 0], -2.0 * half_filter * mloc[..., 1],
             half_filter * (mloc * mloc).sum(-1), torch.full_like(det, half_filter)], -1
        )[:, :, None]  # [T, K, 1, 4]
        G = torch.cat([rows_c, row_r], 2).permute(0, 3, 2, 1).reshape(n_t, 4, 4 * n_k)
        pix_f = torch.cat([local, torch.ones_like(local[..., :1]), (local * local).sum(-1, keepdim=True)], -1)
        cx, cy, cz, half_rho2d = torch.bmm(pix_f, G).view(n_t, n_p, 4, n_k).unbind(2)  # [T, P, K] each
        hit = cz != 0
        cz_safe = torch.where(hit, cz, torch.ones_like(cz))
        half_rho3d = (cx * cx + cy * cy) / (cz_safe * cz_safe)
        # capped far below the alpha threshold: exp of large arguments gives denormals, slow on CPUs
        half_rho = torch.minimum(half_rho3d, half_rho2d).clamp_max(40.0)
        alpha = (opac[:, None] * torch.exp(-half_rho)).clamp_max(MAX_ALPHA)
        if intersection:
            # the plane's depth where the ray meets the surfel's disc (or its Gaussian beats the filter, as in
            # 2DGS's kernel); elsewhere its centre's: there the ray may meet the plane far away or behind
            on_plane = hit & (half_rho3d <= half_rho2d.clamp_min(HALF_DISC))
            z = torch.where(on_plane, det[:, None, :] / torch.where(on_plane, cz, torch.ones_like(cz)),
                            depth[:, None, :].expand_as(cz))  # fmt: skip
            hit = hit & (z > near_plane)
        alpha = torch.where(hit & (alpha >= ALPHA_THRESHOLD), alpha, torch.zeros_like(alpha))

        t_after = torch.cumprod(1.0 - alpha, dim=-1)
        t_before = torch.cat([torch.ones_like(t_after[..., :1]), t_after[..., :-1]], dim=-1)
        # the kernel stops before the surfel that would take T to T_MIN or below; T only falls, so every
        # later surfel fails the same test and a per-pair mask reproduces the early stop
        alpha = torch.where(t_after > T_MIN, alpha, torch.zeros_like(alpha))
        w = alpha * t_before  # [T, P, K]
        acc = torch.bmm(w, feats)  # [T, P, F]
        extra = [w.sum(-1)]
        last = torch.where((alpha > 0) & (t_before > MEDIAN_T), torch.arange(n_k, device=ids.device), -1).amax(-1)
        found = (last >= 0).to(w.dtype)
        if intersection:
            acc = torch.cat([acc, (w * z).sum(-1, keepdim=True)], -1)
            median = torch.gather(z, -1, last.clamp_min(0)[..., None])[..., 0] * found
        else:  # the depth is the last feature
            z = depth[:, None, :]
            median = torch.gather(depth, 1, last.clamp_min(0)) * found
        extra.append(median)
        if distloss:
            wz = w * z
            extra.append(2.0 * (wz * (1.0 - t_before) - w * (torch.cumsum(wz, -1) - wz)).sum(-1))
        else:
            extra.append(torch.zeros_like(median))
        return torch.cat([acc, torch.stack(extra, -1)], -1)

    return pixel_fn


class _Scratch:
    """Scratch ``[T, P, K]``-sized buffers carved from one flat tensor kept between calls (per thread).

    On CPUs a fresh tensor of a megabyte costs its page faults on every chunk; with glibc's malloc that
    doubled the time of :class:`_Composite2DGS`. Nothing carved here outlives the call that took it.
    The default chunks keep about 27 MB (float32) per thread; a buffer above ``_SCRATCH_KEEP`` elements
    (very large ``chunk_pairs``) is not kept.
    """

    _local = threading.local()

    def __init__(self, numel: int, dtype: torch.dtype, device: torch.device):
        cache = self._local.__dict__.setdefault("buffers", {})
        buf = cache.get((dtype, device))
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, device=device)
            if numel <= _SCRATCH_KEEP:
                cache[(dtype, device)] = buf
        self.buf, self.used = buf, 0

    def take(self, *shape: int) -> Tensor:
        n = math.prod(shape)
        if self.used + n > self.buf.numel():  # more than sized for: a fresh tensor
            return torch.empty(shape, dtype=self.buf.dtype, device=self.buf.device)
        out = self.buf[self.used : self.used + n].view(shape)
        self.used += n
        return out


_SCRATCH_SLOTS = 26  # [T, P, K + 1] buffers the backward takes at most
_SCRATCH_KEEP = 1 << 25  # elements of the largest scratch buffer kept between calls


class _Pairs(NamedTuple):
    """Per-pair terms of one chunk (``[T, P, K]`` unless said), shared by the forward and the backward.

    Masks are float 0/1 tensors: on CPUs, bool tensors (comparisons, ``where``, ``masked_fill``) cost
    several times an arithmetic pass.
    """

    pix_f: Tensor  # [T, P, 3] (x, y, 1), x and y relative to the reference pixel
    ref: Tensor  # [T, 1, 2] the reference pixel
    mloc: Tensor  # [T, K, 2] means2d relative to it
    opac: Tensor  # [T, K] opacity, 0 on padding
    cx: Tensor
    cy: Tensor
    cz: Tensor  # 1 where the ray is parallel to the surfel (cz = 0)
    cz2: Tensor  # cz^2
    use3d: Tensor | None  # the ray-splat Gaussian wins over the screen filter (backward only)
    unclamped: Tensor | None  # alpha stayed below MAX_ALPHA (backward only)
    alpha: Tensor  # 0 where skipped or after the stop
    t_before: Tensor  # transmittance before each pair
    w: Tensor  # alpha * t_before
    z: Tensor  # [T, P, K] (intersection) or [T, 1, K] (centre) depth composited per pair
    on_plane: Tensor | None  # z is the plane's depth det / cz (intersection only)
    last: Tensor | None  # [T, P] int64 index of the median pair, -1 when none (forward only)


def _pair_terms(pix: Tensor, valid: Tensor, g: Tensor, half_filter: float, intersection: bool,
                near_plane: float, scratch: _Scratch, for_backward: bool = False) -> _Pairs:  # fmt: skip
    """Alphas, weights and depths of every pair of one chunk, without autograd, in ``scratch``.

    The same values as the autograd ``pixel_fn`` of :func:`_tile_pixel_fn`, to the bit: the same
    arithmetic in the same order, with ``where(mask, x, 0)`` written as ``x * mask`` (equal for finite
    ``x``; the only value that can be NaN, ``rho3d = 0 / 0``, is made 40 as the cap would, giving an
    alpha below the threshold, as the reference's NaN comparisons do).
    """
    n_t, n_k = valid.shape
    n_p = pix.shape[1]
    Q = g[..., :9].reshape(n_t, n_k, 3, 3)
    opac = g[..., 11] * valid.to(g.dtype)
    det, depth = g[..., 12], g[..., 13]
    ref = pix[:, :1, :]
    local = pix - ref
    mloc = g[..., 9:11] - ref
    offset = Q[..., 2] + (Q[..., :2] * ref[:, :, None, :]).sum(-1)
    rows_c = torch.cat([Q[..., :2], offset[..., None], torch.zeros_like(offset[..., None])], -1)
    row_r = torch.stack(
        [-2.0 * half_filter * mloc[..., 0], -2.0 * half_filter * mloc[..., 1],
         half_filter * (mloc * mloc).sum(-1), torch.full_like(det, half_filter)], -1
    )[:, :, None]  # fmt: skip
    G = torch.cat([rows_c, row_r], 2).permute(0, 3, 2, 1).reshape(n_t, 4, 4 * n_k)
    pix_f = torch.cat([local, torch.ones_like(local[..., :1]), (local * local).sum(-1, keepdim=True)], -1)
    shape = (n_t, n_p, n_k)
    cx, cy, cz, rho2d = torch.bmm(pix_f, G, out=scratch.take(n_t, n_p, 4 * n_k)).view(n_t, n_p, 4, n_k).unbind(2)
    keep = torch.eq(cz, 0.0, out=scratch.take(*shape))  # the ray is parallel to the plane
    cz = torch.add(cz, keep, out=scratch.take(*shape))  # 1 there, cz elsewhere
    keep.neg_().add_(1.0)  # hit
    cz2 = torch.mul(cz, cz, out=scratch.take(*shape))
    rho3d = torch.mul(cx, cx, out=scratch.take(*shape))
    alpha = scratch.take(*shape)
    rho3d.add_(torch.mul(cy, cy, out=alpha)).div_(cz2)
    use3d = torch.le(rho3d, rho2d, out=scratch.take(*shape)) if for_backward else None
    # capped far below the alpha threshold: exp of large arguments gives denormals, slow on CPUs
    torch.minimum(rho3d, rho2d, out=alpha).clamp_max_(40.0).nan_to_num_(nan=40.0).neg_().exp_().mul_(opac[:, None])
    unclamped = torch.le(alpha, MAX_ALPHA, out=scratch.take(*shape)) if for_backward else None
    alpha.clamp_max_(MAX_ALPHA)
    tmp = rho3d  # spent below
    on_plane = None
    if intersection:
        # the plane's depth where the ray meets the surfel's disc (or its Gaussian beats the filter, as in
        # 2DGS's kernel); elsewhere its centre's: there the ray may meet the plane far away or behind
        on_plane = torch.le(rho3d, rho2d.clamp_min_(HALF_DISC), out=scratch.take(*shape)).mul_(keep)
        big = torch.finfo(g.dtype).max  # det / cz is finite where it is used; clamped so that x * 0 = 0
        plane_z = torch.div(det[:, None, :], cz, out=tmp).clamp_(-big, big)
        z = torch.mul(on_plane, -1.0, out=scratch.take(*shape)).add_(1.0).mul_(depth[:, None, :])
        z.addcmul_(plane_z, on_plane)
        keep.mul_(torch.gt(z, near_plane, out=tmp))
    else:
        z = depth[:, None, :]
    keep.mul_(torch.ge(alpha, ALPHA_THRESHOLD, out=tmp))
    alpha.mul_(keep)
    trans = scratch.take(n_t, n_p, n_k + 1)
    trans[..., 0] = 1.0
    torch.cumprod(torch.mul(alpha, -1.0, out=tmp).add_(1.0), dim=-1, out=trans[..., 1:])
    # the kernel stops before the surfel that would take T to T_MIN or below; T only falls, so every
    # later surfel fails the same test and a per-pair mask reproduces the early stop
    alpha.mul_(torch.gt(trans[..., 1:], T_MIN, out=keep))
    t_before = trans[..., :-1]
    w = torch.mul(alpha, t_before, out=scratch.take(*shape))
    last = None
    if not for_backward:  # the median pair: the last with alpha > 0 while T > 0.5, as a max of (index + 1) * mask
        mask = torch.gt(alpha, 0.0, out=keep).mul_(torch.gt(t_before, MEDIAN_T, out=tmp))
        last = mask.mul_(torch.arange(1, n_k + 1, dtype=alpha.dtype, device=alpha.device)).amax(-1).long() - 1
    return _Pairs(pix_f[..., :3], ref, mloc, opac, cx, cy, cz, cz2, use3d, unclamped, alpha, t_before, w, z,
                  on_plane, last)


class _RowGradSink:
    """The gradient of the packed per-surfel rows ``[C*N, 14 + F]``, accumulated in place by every chunk.

    Autograd through ``packed[ids]`` would give each chunk its own full-size gradient (a zero fill, a
    scatter and an accumulation of ``C*N`` rows per chunk: a cost growing with chunks times surfels);
    the chunks' backwards add their rows here instead and :class:`_PackedRows` hands the sum on once.
    """

    def __init__(self, like: Tensor):
        self.shape, self.grad = like.shape, None

    def add(self, ids: Tensor, rows: Tensor, width: int) -> None:
        if self.grad is None:
            self.grad = torch.zeros(self.shape, dtype=rows.dtype, device=rows.device)
        self.grad.index_add_(0, ids.reshape(-1), rows.reshape(-1, width))

    def take(self) -> Tensor | None:
        grad, self.grad = self.grad, None  # a second backward (retain_graph) accumulates afresh
        return grad


class _PackedRows(torch.autograd.Function):
    """Identity on the packed rows; its backward returns what the chunks accumulated in the sink.

    The chunks (:class:`_Composite2DGS`) take its output as an input, so autograd runs this backward
    after all of theirs; they return no gradient for it themselves.
    """

    @staticmethod
    def forward(ctx, packed: Tensor, sink: _RowGradSink) -> Tensor:
        ctx.sink = sink
        return packed.view_as(packed)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        summed = ctx.sink.take()
        return (grad if summed is None else summed), None


class _Composite2DGS(torch.autograd.Function):
    """Surfel compositing of one chunk with a hand-written backward that recomputes the pairs.

    Saves only the chunk's gathered per-surfel rows and per-pixel results (never a ``[T, P, K]``
    tensor), so it needs no checkpointing; the backward costs one recomputation, a few batched
    products and a few dozen elementwise passes, where autograd through the checkpointed ``pixel_fn``
    paid a forward, a recomputation and the backward of every intermediate. With ``w_k = alpha_k T_k``,
    ``W_k = 1 - T_k = sum_{j<k} w_j``, ``A_k = sum_{j<k} w_j z_j`` and totals ``W, A`` over the pixel:

    * distortion ``D = 2 sum_k w_k (z_k W_k - A_k)``: ``dD/dw_k = 2 (z_k (2 W_k - W) + A - 2 A_k)``,
      ``dD/dz_k = 2 w_k (2 W_k + w_k - W)``;
    * median: its gradient goes to the ``z`` of the median pair;
    * compositing (gsplat's): ``dL/dalpha_k = T_k g_k - sum_{j>k} g_j w_j / (1 - alpha_k)`` with
      ``g_k = dL/dw_k``, zero where alpha was clamped, skipped or stopped;
    * ``alpha = opac exp(-min(rho3d, rho2d))`` with ``rho3d = (cx^2 + cy^2) / cz^2`` and ``rho2d`` the
      filter's ``|pixel - means2d|^2 / (2 sigma^2)``; ``(cx, cy, cz) = Q (x, y, 1)`` is linear in the
      scaled adjugate ``Q``, and the plane depth ``det / cz`` gives ``det`` and ``cz`` their share.
    """

    @staticmethod
    def forward(ctx, pix: Tensor, valid: Tensor, ids: Tensor, packed: Tensor, sink: _RowGradSink, half_filter: float,
                distloss: bool, intersection: bool, near_plane: float) -> Tensor:  # fmt: skip
        n_t, n_k = valid.shape
        g = torch.index_select(packed, 0, ids.reshape(-1)).view(n_t, n_k, -1)  # [T, K, 14 + F]; 4x packed[ids]
        scratch = _Scratch(_SCRATCH_SLOTS * n_t * pix.shape[1] * (n_k + 1), g.dtype, g.device)
        p = _pair_terms(pix, valid, g, half_filter, intersection, near_plane, scratch)
        w, z = p.w, p.z
        acc = torch.bmm(w, g[..., _PACK_FEATS:])  # [T, P, F]
        extra = [w.sum(-1)]
        found = (p.last >= 0).to(w.dtype)
        if intersection:
            acc = torch.cat([acc, (w * z).sum(-1, keepdim=True)], -1)
            median = torch.gather(z, -1, p.last.clamp_min(0)[..., None])[..., 0] * found
        else:
            median = torch.gather(g[..., 13], 1, p.last.clamp_min(0)) * found
        extra.append(median)
        if distloss:
            wz = torch.mul(w, z, out=scratch.take(*w.shape))
            before = torch.mul(p.t_before, -1.0, out=scratch.take(*w.shape)).add_(1.0)
            a_before = torch.cumsum(wz, -1, out=scratch.take(*w.shape)).sub_(wz)
            extra.append(wz.mul_(before).sub_(a_before.mul_(w)).sum(-1).mul_(2.0))
        else:
            extra.append(torch.zeros_like(median))
        out = torch.cat([acc, torch.stack(extra, -1)], -1)
        ctx.save_for_backward(pix, valid, ids, g, p.last, out)
        ctx.options = (sink, half_filter, distloss, intersection, near_plane)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        pix, valid, ids, g, last, out = ctx.saved_tensors
        sink, half_filter, distloss, intersection, near_plane = ctx.options
        n_t, n_k = valid.shape
        n_p = pix.shape[1]
        scratch = _Scratch(_SCRATCH_SLOTS * n_t * n_p * (n_k + 1), g.dtype, g.device)
        p = _pair_terms(pix, valid, g, half_filter, intersection, near_plane, scratch, for_backward=True)
        shape = (n_t, n_p, n_k)
        feats = g[..., _PACK_FEATS:]
        n_f = feats.shape[-1]
        grad_out = grad_out.contiguous()
        g_feats = grad_out[..., :n_f]
        col = n_f + 1 if intersection else n_f
        g_alpha, g_median, g_distort = (grad_out[..., col + i, None] for i in range(3))
        w, z = p.w, p.z

        grad_w = torch.bmm(g_feats, feats.transpose(1, 2), out=scratch.take(*shape)).add_(g_alpha)  # dL/dw
        grad_z = scratch.take(*shape)  # dL/dz
        if intersection:
            g_wz = grad_out[..., n_f, None]
            grad_w.addcmul_(z, g_wz)
            torch.mul(w, g_wz, out=grad_z)
        else:
            grad_z.zero_()
        if distloss:
            # the totals W and A are the forward's alpha and accumulated depth (the channel before alpha)
            total_w, total_wz = out[..., col, None], out[..., col - 1, None]
            wz = torch.mul(w, z, out=scratch.take(*shape))
            before = torch.mul(p.t_before, -1.0, out=scratch.take(*shape)).add_(1.0)  # W_k
            a_before = torch.cumsum(wz, -1, out=scratch.take(*shape)).sub_(wz)  # A_k
            two_g = 2.0 * g_distort
            # dD/dw = 2 (z (2 W_k - W) + A - 2 A_k), dD/dz = 2 w (2 W_k + w - W)
            term = torch.mul(before, 2.0, out=wz).sub_(total_w).mul_(z).add_(total_wz).sub_(a_before.mul_(2.0))
            grad_w.addcmul_(term, two_g)
            grad_z.addcmul_(before.mul_(2.0).add_(w).sub_(total_w).mul_(w), two_g)
        found = (last >= 0).to(w.dtype)
        grad_z.scatter_add_(-1, last.clamp_min(0)[..., None], (g_median[..., 0] * found)[..., None])
        grad_feats = torch.bmm(w.transpose(1, 2), g_feats)  # [T, K, F]

        # compositing: dL/dalpha = T g - later / (1 - alpha); times d alpha / d(-rho) = alpha
        q = torch.mul(w, grad_w, out=scratch.take(*shape))
        later = q.flip(-1).cumsum_(-1).flip(-1).sub_(q)
        one_minus = torch.mul(p.alpha, -1.0, out=q).add_(1.0)
        grad_rho = later.div_(one_minus).sub_(grad_w.mul_(p.t_before)).mul_(p.alpha).mul_(p.unclamped)
        # dL/drho with rho = min(rho3d, rho2d); d alpha / d opac = alpha / opac
        safe = torch.where(p.opac > 0, p.opac, torch.ones_like(p.opac))
        grad_opac = torch.where(p.opac > 0, -grad_rho.sum(1) / safe, torch.zeros_like(p.opac))
        stacked = scratch.take(n_t, n_p, 4, n_k)
        grad_cx, grad_cy, grad_cz, grad_2d = stacked.unbind(2)
        grad_3d = torch.mul(grad_rho, p.use3d, out=grad_w)
        torch.sub(grad_rho, grad_3d, out=grad_2d)
        # rho3d = (cx^2 + cy^2) / cz^2; cz^2 underflows to 0 only where rho3d is inf or NaN (not use3d)
        tiny = torch.finfo(g.dtype).tiny * torch.finfo(g.dtype).eps
        s = grad_3d.div_(p.cz2.clamp_min_(tiny)).mul_(2.0)
        torch.mul(s, p.cx, out=grad_cx)
        torch.mul(s, p.cy, out=grad_cy)
        torch.mul(grad_cy, p.cy, out=grad_cz).addcmul_(grad_cx, p.cx).div_(p.cz).neg_()  # -2 g rho3d / cz
        if intersection:  # z = det / cz on the plane, the centre depth elsewhere
            grad_plane = torch.mul(grad_z, p.on_plane, out=q)
            grad_depth = grad_z.sub_(grad_plane).sum(1)
            grad_det = grad_plane.div_(p.cz).sum(1)
            grad_cz.sub_(grad_plane.mul_(z))
        else:
            grad_det = torch.zeros_like(p.opac)
            grad_depth = grad_z.sum(1)
        # (cx, cy, cz) = Q (x, y, 1) and rho2d = h |pixel - means2d|^2: all from sums over pixels of
        # (x, y, 1) times the four per-pair gradients, one batched product
        R = torch.bmm(p.pix_f.transpose(1, 2), stacked.view(n_t, n_p, 4 * n_k)).view(n_t, 3, 4, n_k)
        ref = p.ref[:, 0, :, None, None]  # [T, 2, 1, 1]; R is [T, (x, y, 1), (cx, cy, cz, 2d), K]
        grad_Q = torch.stack([R[:, 0] + ref[:, 0] * R[:, 2], R[:, 1] + ref[:, 1] * R[:, 2], R[:, 2]], -1)
        grad_Q = grad_Q[:, :3].permute(0, 2, 1, 3).reshape(n_t, n_k, 9)  # [T, K, (row, col)]
        grad_m = (R[:, :2, 3].transpose(1, 2) - p.mloc * R[:, 2, 3, :, None]) * (-2.0 * half_filter)
        grad_g = torch.cat([grad_Q, grad_m, grad_opac[..., None], grad_det[..., None], grad_depth[..., None],
                            grad_feats], -1)  # fmt: skip
        sink.add(ids, grad_g, g.shape[-1])  # padding rows get exactly 0
        return None, None, None, None, None, None, None, None, None


def _tile_composite_fn(filter_inv_sq: float, distloss: bool, intersection: bool, near_plane: float,
                       sink: _RowGradSink) -> Callable[..., Tensor]:  # fmt: skip
    """The ``pixel_fn`` of the product path: :class:`_Composite2DGS` on the gathered rows of one chunk."""
    half_filter = 0.5 * filter_inv_sq

    def pixel_fn(pix: Tensor, ids: Tensor, valid: Tensor, packed: Tensor) -> Tensor:
        """``pix`` ``[T, P, 2]``, ``ids``/``valid`` ``[T, K]``, ``packed`` ``[C*N, 14 + F]`` (the output of
        :class:`_PackedRows` with ``sink``) -> ``[T, P, F' + 4]``."""
        return _Composite2DGS.apply(pix, valid, ids, packed, sink, half_filter, distloss, intersection, near_plane)

    return pixel_fn


# Which backward the tiled path uses: "hand" (:class:`_Composite2DGS`, the product path) or "autograd"
# (through the checkpointed reference ``pixel_fn``; tests compare the two).
COMPOSITE_BACKWARD: Literal["hand", "autograd"] = "hand"


def _composite_tiled(proj: dict, feats: Tensor, opacities: Tensor, width: int, height: int, filter_inv_sq: float,
                     distloss: bool, intersection: bool, tile_size: int, chunk_pairs: int,
                     densify: Tensor | None = None, near_plane: float = 0.0) -> tuple[Tensor, TileIntersections]:
    """Tiled compositing; returns ``[C, H, W, F + 4]`` (features, accumulated depth, alpha, median,
    distortion) and the tile intersections.

    ``densify`` ``[C, N, 2]`` (zeros) shifts the footprint of each surfel by that many pixels, as
    gsplat's ``gradient_2dgs`` does: its gradient is ``z * dL/dM[0:2, 2]``, the rasterizer's gradient
    with respect to the surfel's screen position, used to decide densification.
    """
    C, N = proj["depths"].shape
    isect = isect_tiles(proj["means2d"], proj["radii"], proj["depths"], width, height, tile_size)
    M = proj["ray_transforms"]
    if densify is not None:
        shift = torch.cat([densify * proj["depths"][..., None], torch.zeros_like(densify[..., :1])], -1)  # [C, N, 3]
        M = M + torch.cat([torch.zeros_like(M[..., :2]), shift[..., None]], -1)
    adj, det = _adjugate(M)  # [C, N, 3, 3], [C, N]
    adj = adj * adj.new_tensor([math.sqrt(0.5), math.sqrt(0.5), 1.0])[:, None]  # (u^2 + v^2) / 2 directly
    depths = proj["depths"][..., None]
    per_surfel = [adj.flatten(-2), proj["means2d"], opacities[..., None], det[..., None], depths, feats]
    if not intersection:
        per_surfel.append(depths)  # composited like a colour channel
    packed = torch.cat(per_surfel, -1)
    packed = packed.reshape(C * N, packed.shape[-1])
    if COMPOSITE_BACKWARD == "autograd":
        fn, checkpointed = _tile_pixel_fn(filter_inv_sq, distloss, intersection, near_plane), True
    else:
        sink = _RowGradSink(packed)
        packed = _PackedRows.apply(packed, sink)
        fn, checkpointed = _tile_composite_fn(filter_inv_sq, distloss, intersection, near_plane, sink), False
    out = rasterize_tiles(fn, (packed,), isect, width, height, feats.shape[-1] + 4, chunk_pairs,
                          checkpoint_chunks=checkpointed)
    return out, isect


def _composite_dense(proj: dict, feats: Tensor, opacities: Tensor, width: int, height: int, filter_inv_sq: float,
                     distloss: bool, intersection: bool, near_plane: float = 0.0) -> Tensor:
    """Every pixel against every visible surfel: a 3x3 ray-plane solve per pair, then a front-to-back loop."""
    C, N = proj["depths"].shape
    dtype, device = feats.dtype, feats.device
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=dtype),
                            torch.arange(width, device=device, dtype=dtype), indexing="ij")
    px, py = xs.reshape(-1) + 0.5, ys.reshape(-1) + 0.5  # [P]
    K = proj["K"]  # [C, 3, 3]
    rays = torch.stack([(px[None] - K[:, 0, 2, None]) / K[:, 0, 0, None],
                        (py[None] - K[:, 1, 2, None]) / K[:, 1, 1, None],
                        torch.ones(C, px.numel(), dtype=dtype, device=device)], -1)  # [C, P, 3], z = 1
    # solve mu + u * tu + v * tv = t * ray for (u, v, t): the point of the surfel plane on the ray
    A = torch.stack([proj["tu"][:, None].expand(-1, px.numel(), -1, -1),
                     proj["tv"][:, None].expand(-1, px.numel(), -1, -1),
                     -rays[:, :, None].expand(-1, -1, N, -1)], -1)  # [C, P, N, 3, 3]
    b = -proj["means_c"][:, None].expand(-1, px.numel(), -1, -1)  # [C, P, N, 3]
    solvable = torch.linalg.det(A).abs() > 1e-12
    A = torch.where(solvable[..., None, None], A, torch.eye(3, dtype=dtype, device=device))
    uvt = torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1)  # [C, P, N, 3]
    kernel3d = torch.exp(-0.5 * (uvt[..., 0] ** 2 + uvt[..., 1] ** 2))
    m2 = proj["means2d"][:, None]  # [C, 1, N, 2]
    d2 = (m2[..., 0] - px[None, :, None]) ** 2 + (m2[..., 1] - py[None, :, None]) ** 2
    kernel2d = torch.exp(-0.5 * filter_inv_sq * d2)
    kernel = torch.maximum(kernel3d, kernel2d)
    alpha_all = (opacities[:, None, :] * kernel).clamp_max(MAX_ALPHA)  # [C, P, N]
    alpha_all = torch.where(solvable, alpha_all, torch.zeros_like(alpha_all))
    centre_z = proj["depths"][:, None, :].expand_as(alpha_all)
    if intersection:  # the plane's depth where the surfel's Gaussian wins over the filter, else the centre's
        z_all = torch.where(solvable & (kernel3d >= kernel2d.clamp_max(math.exp(-HALF_DISC))), uvt[..., 2], centre_z)
        alpha_all = torch.where(z_all > near_plane, alpha_all, torch.zeros_like(alpha_all))
    else:
        z_all = centre_z
    visible = (proj["radii"] > 0).all(-1)  # [C, N]
    order = torch.argsort(proj["depths"].detach(), dim=-1, stable=True)  # [C, N]
    cams = torch.arange(C, device=device)

    P = px.numel()
    T = torch.ones(C, P, dtype=dtype, device=device)
    done = torch.zeros(C, P, dtype=torch.bool, device=device)
    acc = feats.new_zeros(C, P, feats.shape[-1])
    acc_z = feats.new_zeros(C, P)
    acc_wz = feats.new_zeros(C, P)
    distort = feats.new_zeros(C, P)
    median = feats.new_zeros(C, P)
    for i in range(N):
        g = order[:, i]  # [C]
        alpha = alpha_all[cams, :, g]  # [C, P]
        z = z_all[cams, :, g]
        ok = visible[cams, g][:, None] & ~done & (alpha >= ALPHA_THRESHOLD)
        next_T = T * (1.0 - alpha)
        stop = ok & (next_T <= T_MIN)
        done = done | stop
        ok = ok & ~stop
        w = torch.where(ok, alpha * T, torch.zeros_like(alpha))
        acc = acc + w[..., None] * feats[cams, g][:, None, :]
        acc_z = acc_z + w * z
        if distloss:
            distort = distort + 2.0 * (w * z * (1.0 - T) - w * acc_wz)
            acc_wz = acc_wz + w * z
        median = torch.where(ok & (T > MEDIAN_T), z, median)
        T = torch.where(ok, next_T, T)
    out = torch.cat([acc, torch.stack([acc_z, 1.0 - T, median, distort], -1)], -1)
    return out.reshape(C, height, width, -1)


# ----------------------------------------------------------------------------------------------
# the public functions
# ----------------------------------------------------------------------------------------------


def _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
                  radius_clip, eps2d, sh_degree, backgrounds, render_mode, depth_mode, surfel_depth) -> None:
    check_splat_inputs(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree)
    if not means.is_floating_point():
        raise ValueError(f"means must be a floating-point tensor, got {means.dtype}")
    C = viewmats.shape[0]
    tensors = {"means": means, "quats": quats, "scales": scales, "opacities": opacities, "colors": colors,
               "viewmats": viewmats, "Ks": Ks}
    if backgrounds is not None:
        tensors["backgrounds"] = backgrounds
    for name, t in tensors.items():
        if t.dtype != means.dtype or t.device != means.device:
            raise ValueError(f"{name} must have the dtype and device of means ({means.dtype}, {means.device}), "
                             f"got {t.dtype}, {t.device}")
    if not isinstance(width, int) or not isinstance(height, int) or width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive ints, got {width!r} x {height!r}")
    if not 0 <= near_plane < far_plane:
        raise ValueError(
            f"near_plane and far_plane must satisfy 0 <= near_plane < far_plane, got {near_plane}, {far_plane}"
        )
    if radius_clip < 0:
        raise ValueError(f"radius_clip must be >= 0, got {radius_clip}")
    if not eps2d > 0:
        raise ValueError(f"eps2d must be > 0, got {eps2d}")
    if render_mode not in RENDER_MODES:
        raise ValueError(f"render_mode must be one of {RENDER_MODES}, got {render_mode!r}")
    if depth_mode not in DEPTH_MODES:
        raise ValueError(f"depth_mode must be one of {DEPTH_MODES}, got {depth_mode!r}")
    if surfel_depth not in SURFEL_DEPTHS:
        raise ValueError(f"surfel_depth must be one of {SURFEL_DEPTHS}, got {surfel_depth!r}")
    if backgrounds is not None:
        if render_mode in ("D", "ED"):
            raise ValueError(f"backgrounds colour the colour channels; render_mode {render_mode!r} has none")
        D = 3 if sh_degree is not None else colors.shape[-1]
        if backgrounds.shape != (C, D):
            raise ValueError(f"backgrounds must have shape [{C}, {D}], got {tuple(backgrounds.shape)}")


def _finish(out: Tensor, D: int, viewmats: Tensor, Ks: Tensor, backgrounds: Tensor | None, render_mode: str,
            depth_mode: str, distloss: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Split the composited channels ``[C, H, W, D + 3 + 4]`` into gsplat's outputs."""
    colors, normals_c = out[..., :D], out[..., D : D + 3]
    acc_depth, alphas = out[..., D + 3 : D + 4], out[..., D + 4 : D + 5]
    median, distort = out[..., D + 5 : D + 6], out[..., D + 6 : D + 7]
    if backgrounds is not None:
        colors = colors + (1.0 - alphas) * backgrounds[:, None, None, :]
    expected = acc_depth / alphas.clamp_min(1e-10)
    depth = acc_depth if render_mode in ("D", "RGB+D") else expected
    if render_mode == "RGB":
        render = colors
    elif render_mode in ("D", "ED"):
        render = depth
    else:
        render = torch.cat([colors, depth], -1)
    camtoworlds = torch.linalg.inv(viewmats)
    normals = torch.einsum("cij,chwj->chwi", camtoworlds[:, :3, :3], normals_c)
    normals_from_depth = depth_to_normal(median if depth_mode == "median" else depth, camtoworlds, Ks)
    if not distloss:
        distort = torch.zeros_like(distort)
    return render, alphas, normals, normals_from_depth, distort, median


def _prepare(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
             radius_clip, sh_degree, render_mode) -> tuple[dict, Tensor, Tensor, int]:
    radii, means2d, depths, rays, normals = project_surfels(
        means, quats, scales, viewmats, Ks, width, height, near_plane, far_plane, radius_clip
    )
    C, N = depths.shape
    if render_mode in ("D", "ED"):
        rgb = means.new_zeros(C, N, 0)
    else:
        rgb = view_colors(means, colors, viewmats, sh_degree)
    feats = torch.cat([rgb, normals], -1)  # [C, N, D + 3]
    proj = {"radii": radii, "means2d": means2d, "depths": depths, "ray_transforms": rays, "normals": normals}
    return proj, feats, opacities[None].expand(C, -1), rgb.shape[-1]


def rasterization_2dgs(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D] or [N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = GSPLAT_EPS2D,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,  # [C, D]
    render_mode: RenderMode = "RGB",
    distloss: bool = False,
    depth_mode: Literal["expected", "median"] = "expected",
    surfel_depth: Literal["center", "intersection"] = "center",
    tile_size: int = DEFAULT_TILE_SIZE_2DGS,
    chunk_pairs: int = DEFAULT_CHUNK_PAIRS,
    backend: Literal["auto", "torch", "cuda"] = "auto",
) -> Outputs:
    """Rasterize 2D Gaussian surfels to C images; mirrors ``gsplat.rasterization_2dgs`` (see the module notes).

    Args:
        means, quats, scales, opacities: surfel centres, rotations (w, x, y, z; normalized here),
            activated scales (the third is ignored: surfels are flat) and activated opacities.
        colors: ``[N, D]`` colours, or ``[N, K, 3]`` SH coefficients when ``sh_degree`` is set
            (colour = SH + 0.5, clamped at 0).
        viewmats, Ks: world-to-camera ``[C, 4, 4]`` (OpenCV axes) and intrinsics ``[C, 3, 3]`` in pixels.
        near_plane, far_plane: surfels whose centre z is outside are culled.
        radius_clip: surfels whose screen box half-extents are both <= this are culled.
        eps2d: screen-space low-pass filter; the default 0.3 is the 2DGS/gsplat filter.
        backgrounds: ``[C, D]`` colours behind the colour channels.
        render_mode: ``RGB`` colours, ``D`` accumulated depth, ``ED`` expected depth, or both.
        distloss: compute the depth distortion (else ``render_distort`` is zeros).
        depth_mode: which depth ``render_normals_from_depth`` differentiates.
        surfel_depth: ``center`` (gsplat) or ``intersection`` (the 2DGS paper; torch only).
        tile_size, chunk_pairs: tiling of the torch path (results do not depend on them).
        backend: ``torch``, ``cuda`` (gsplat) or ``auto`` (cuda for float32 CUDA tensors where gsplat
            is present and the options are ones gsplat has, else torch).

    Returns:
        render_colors ``[C, H, W, X]`` (X = D, 1 or D + 1 by ``render_mode``), render_alphas
        ``[C, H, W, 1]``, render_normals ``[C, H, W, 3]`` (world space, weighted by alpha),
        render_normals_from_depth ``[C, H, W, 3]`` (world space, unit, zero border),
        render_distort ``[C, H, W, 1]``, render_median ``[C, H, W, 1]``, and meta (projection
        results: ``radii, means2d, depths, ray_transforms, normals, opacities``; ``gradient_2dgs``
        ``[C, N, 2]``, zeros whose ``.grad`` after backward is gsplat's screen-space gradient for
        densification (it requires grad only when an input does); tiling; ``backend``).
    """
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
                  radius_clip, eps2d, sh_degree, backgrounds, render_mode, depth_mode, surfel_depth)
    if not isinstance(tile_size, int) or tile_size <= 0:
        raise ValueError(f"tile_size must be a positive int, got {tile_size!r}")
    if not isinstance(chunk_pairs, int) or chunk_pairs <= 0:
        raise ValueError(f"chunk_pairs must be a positive int, got {chunk_pairs!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    gsplat_can = means.dtype == torch.float32 and eps2d == GSPLAT_EPS2D and surfel_depth == "center"
    if backend == "cuda":
        if means.device.type != "cuda":
            raise ValueError(f"backend 'cuda' needs CUDA tensors; means is on {means.device}")
        if means.dtype != torch.float32:
            raise ValueError(f"backend 'cuda' needs float32 tensors; means is {means.dtype}")
        if eps2d != GSPLAT_EPS2D:
            raise ValueError(f"eps2d: gsplat's 2DGS kernels hard-code the filter of eps2d={GSPLAT_EPS2D}, got {eps2d}; "
                             "use backend='torch'")
        if surfel_depth != "center":
            raise ValueError("surfel_depth 'intersection' is torch only (gsplat composites centre depths)")
        resolved = resolve_backend("cuda", "gsplat")
    elif backend == "auto" and means.device.type == "cuda" and gsplat_can:
        resolved = resolve_backend("auto", "gsplat")
    else:
        resolved = "torch"
    kwargs = dict(near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
                  sh_degree=sh_degree, backgrounds=backgrounds, render_mode=render_mode, distloss=distloss,
                  depth_mode=depth_mode, tile_size=tile_size)
    if resolved == "cuda":
        return _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **kwargs)

    proj, feats, opac, D = _prepare(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                    near_plane, far_plane, radius_clip, sh_degree, render_mode)
    differentiable = (means, quats, scales, opacities, colors, viewmats)
    tracked = torch.is_grad_enabled() and any(t.requires_grad for t in differentiable)
    densify = torch.zeros_like(proj["means2d"], requires_grad=tracked)
    out, isect = _composite_tiled(proj, feats, opac, width, height, GSPLAT_EPS2D * 2.0 / eps2d, distloss,
                                  surfel_depth == "intersection", tile_size, chunk_pairs, densify, near_plane)
    results = _finish(out, D, viewmats, Ks, backgrounds, render_mode, depth_mode, distloss)
    meta = dict(proj, opacities=opac, gradient_2dgs=densify, tile_width=isect.tile_width,
                tile_height=isect.tile_height, tile_size=tile_size, flatten_ids=isect.flatten_ids,
                n_cameras=viewmats.shape[0], width=width, height=height, backend="torch")
    return (*results, meta)


def rasterization_2dgs_reference(
    means: Tensor,  # [N, 3]
    quats: Tensor,  # [N, 4]
    scales: Tensor,  # [N, 3]
    opacities: Tensor,  # [N]
    colors: Tensor,  # [N, D] or [N, K, 3]
    viewmats: Tensor,  # [C, 4, 4]
    Ks: Tensor,  # [C, 3, 3]
    width: int,
    height: int,
    *,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    radius_clip: float = 0.0,
    eps2d: float = GSPLAT_EPS2D,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,
    render_mode: RenderMode = "RGB",
    distloss: bool = False,
    depth_mode: Literal["expected", "median"] = "expected",
    surfel_depth: Literal["center", "intersection"] = "center",
) -> Outputs:
    """Dense reference of :func:`rasterization_2dgs` (torch path) for tests: tiny inputs only.

    Every pixel meets every visible surfel (no tiles, so no screen-box truncation): the ray-surfel
    intersection comes from solving the 3x3 ray-plane system rather than the homogeneous cross
    product, and compositing is a front-to-back loop over depth-sorted surfels like gsplat's kernel.
    Memory is ``O(C * H * W * N)``.
    """
    _check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height, near_plane, far_plane,
                  radius_clip, eps2d, sh_degree, backgrounds, render_mode, depth_mode, surfel_depth)
    proj, feats, opac, D = _prepare(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                    near_plane, far_plane, radius_clip, sh_degree, render_mode)
    means_c, tu, tv, _ = _surfels_in_camera(means, quats, scales, viewmats)
    dense = dict(proj, means_c=means_c, tu=tu, tv=tv, K=_intrinsics(Ks))
    out = _composite_dense(dense, feats, opac, width, height, GSPLAT_EPS2D * 2.0 / eps2d, distloss,
                           surfel_depth == "intersection", near_plane)
    results = _finish(out, D, viewmats, Ks, backgrounds, render_mode, depth_mode, distloss)
    return (*results, dict(proj, opacities=opac, backend="reference"))


def _rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, *, near_plane, far_plane,
                      radius_clip, eps2d, sh_degree, backgrounds, render_mode, depth_mode, distloss,
                      tile_size) -> Outputs:
    """gsplat's CUDA rasterizer, adapted to this module's meaning (see the module notes)."""
    gsplat = import_gsplat()
    gs_mode = "RGB+ED" if render_mode == "RGB" else render_mode
    colors_out, alphas, normals, _, distort, median, meta = gsplat.rasterization_2dgs(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, radius_clip=radius_clip, eps2d=eps2d,
        sh_degree=sh_degree, packed=False, tile_size=tile_size, backgrounds=backgrounds,
        render_mode=gs_mode, distloss=distloss, depth_mode=depth_mode,
    )
    depth = colors_out[..., -1:]
    if render_mode == "RGB":
        colors_out = colors_out[..., :-1]
    normals_from_depth = depth_to_normal(median if depth_mode == "median" else depth, torch.linalg.inv(viewmats), Ks)
    if not distloss:
        distort = torch.zeros_like(distort)
    meta = dict(meta, backend="cuda")
    return colors_out, alphas, normals, normals_from_depth, distort, median, meta
