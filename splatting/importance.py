"""How much each Gaussian contributes to the training views, and pruning of the ones that barely do.

The contribution of Gaussian ``i`` is its total blend weight ``sum over views and pixels of alpha_i T_i``
(the weight it gets in the alpha compositing of every pixel it touches). It is read off one backward pass
per view: render a one-channel "colour" that is zero for every Gaussian and sum the image; the gradient of
that sum with respect to Gaussian ``i``'s colour is exactly its summed blend weight. Any rasterizer with
gradients does this (the torch reference and gsplat alike), so nothing here is backend-specific.

LightGaussian (Fan et al., 2023) prunes a fixed share of Gaussians by a similar score and then fine-tunes.
Without fine-tuning, a fixed share is a poor rule (the share that is safe depends on the scene), so
:func:`weight_budget_keep` removes the least-contributing Gaussians whose weights add up to at most a given
fraction of the total: the image can change by at most about that fraction of its coverage.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import Tensor


def blend_weight_totals(
    render_fn: Callable[[Tensor, Tensor, Tensor, int, int], Tensor],
    n: int,
    cameras: Iterable,
    like: Tensor,
    progress: bool = False,
) -> Tensor:
    """``[n]`` summed blend weights of ``n`` Gaussians over ``cameras``.

    ``render_fn(colors [n, 1], viewmats [1, 4, 4], Ks [1, 3, 3], width, height)`` must render the Gaussians
    with the given per-Gaussian one-channel colours and no background, returning ``[1, H, W, 1]``.
    ``cameras`` yields objects with ``viewmats``, ``Ks``, ``widths``, ``heights`` (a
    :class:`~scenezip.scenes.cameras.Cameras` row). ``like`` gives the dtype and device."""
    from tqdm.auto import tqdm

    total = torch.zeros(n, dtype=torch.float64, device=like.device)
    cams = list(cameras)
    for cam in tqdm(cams, desc="blend weights", disable=not progress, dynamic_ncols=True):
        colors = torch.zeros(n, 1, dtype=like.dtype, device=like.device, requires_grad=True)
        with torch.enable_grad():
            img = render_fn(colors, cam.viewmats.to(like.device), cam.Ks.to(like.device), int(cam.widths[0]),
                            int(cam.heights[0]))  # fmt: skip
            (grad,) = torch.autograd.grad(img.sum(), colors)
        total += grad[:, 0].double()
    return total


def weight_budget_keep(weights: Tensor, budget: float) -> Tensor:
    """``[n]`` bool: keep everything except the least-weighted Gaussians whose weights sum to at most
    ``budget`` times the total (``budget`` 0 keeps all; ties are broken by index, deterministically)."""
    if not 0.0 <= budget < 1.0:
        raise ValueError(f"budget must be in [0, 1), got {budget}")
    w = weights.detach().double().clamp_min(0).cpu()
    keep = torch.ones(w.shape[0], dtype=torch.bool)
    if budget == 0.0 or w.numel() == 0:
        return keep.to(weights.device)
    order = torch.argsort(w, stable=True)
    cum = torch.cumsum(w[order], 0)
    n_drop = int(torch.searchsorted(cum, budget * float(w.sum()), right=True))
    n_drop = min(n_drop, w.numel() - 1)  # never drop every Gaussian
    keep[order[:n_drop]] = False
    return keep.to(weights.device)


def gaussian_blend_weights(model, cameras: Iterable, backend: str = "auto", progress: bool = False) -> Tensor:
    """``[N]`` summed blend weights of a 3D Gaussian model (anything whose ``activated()`` gives ``means``,
    ``quats``, ``scales``, ``opacities``: :class:`GaussianModel`, :class:`C3DGSModel`, masks applied)."""
    from scenezip.render.rasterization import rasterization

    with torch.no_grad():
        act = model.activated()
        a = {k: act[k].detach() for k in ("means", "quats", "scales", "opacities")}

    def render(colors: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int) -> Tensor:
        img, _, _ = rasterization(a["means"], a["quats"], a["scales"], a["opacities"], colors, viewmats, Ks,
                                  width, height, backend=backend)  # fmt: skip
        return img

    return blend_weight_totals(render, a["means"].shape[0], cameras, a["means"], progress)
