"""Learnable binary masks (Compact-3DGS, Lee et al. CVPR 2024), for primitives or hash-table entries.

Written by hand (a few lines, but the details are the contract). Each masked item owns one real
logit ``m``. The soft mask is ``sigmoid(m)``; the hard mask is ``M = 1[sigmoid(m) > threshold]``
(Compact-3DGS: threshold 0.01, logits initialised to 1.0, pruning where ``sigmoid(m) <= 0.01``).
Training uses the straight-through estimator: the forward value is exactly ``M`` (0.0 or 1.0) and
the backward pass is that of ``sigmoid(m)``, i.e. ``dL/dm = dL/dM * sigmoid(m) * (1 - sigmoid(m))``.
We write it as ``M + (s - sg(s))`` rather than Compact-3DGS' ``sg(M - s) + s``: same gradient, but
the value is exactly binary (``sg(M - s) + s`` can give 0.99999994).

For Gaussians, the mask multiplies the *activated* scales and opacities (``apply_mask``), so masked
Gaussians shrink to nothing and stop contributing; the rate term ``mask_loss`` (mean soft mask,
weighted by ``lambda_mask`` in the objective) pushes logits down. Logit tensors may have any shape:
``[N]`` or ``[N, 1]`` per primitive, ``[T]`` per hash-table entry, ``[n_params]`` per parameter.
"""

from __future__ import annotations

import torch
from torch import Tensor

MASK_THRESHOLD = 0.01  # Compact-3DGS: keep where sigmoid(m) > 0.01
MASK_INIT_LOGIT = 1.0  # Compact-3DGS initialises every mask logit to 1 (sigmoid 0.73)


def _check_logits(mask_logits: Tensor, name: str = "mask_logits") -> None:
    if not isinstance(mask_logits, Tensor):
        raise ValueError(f"{name} must be a tensor, got {type(mask_logits).__name__}")
    if not mask_logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {mask_logits.dtype}")


def _check_threshold(threshold: float) -> None:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be a number in (0, 1), got {threshold!r}")


def soft_mask(mask_logits: Tensor) -> Tensor:  # [...] -> [...]
    """``sigmoid(mask_logits)``, the mask probability of every item."""
    _check_logits(mask_logits)
    return torch.sigmoid(mask_logits)


def hard_mask(mask_logits: Tensor, threshold: float = MASK_THRESHOLD) -> Tensor:  # [...] -> [...]
    """Binary mask with a straight-through gradient.

    Forward: ``(sigmoid(m) > threshold)`` as 0.0 / 1.0 in ``mask_logits.dtype`` (exactly).
    Backward: the gradient of ``sigmoid(m)``.
    """
    _check_logits(mask_logits)
    _check_threshold(threshold)
    s = torch.sigmoid(mask_logits)
    hard = (s.detach() > threshold).to(s.dtype)
    return hard + (s - s.detach())


def keep_mask(mask_logits: Tensor, threshold: float = MASK_THRESHOLD) -> Tensor:  # [...] -> [...] bool
    """Boolean tensor of the items that survive: ``sigmoid(m) > threshold`` (no gradient)."""
    _check_logits(mask_logits)
    _check_threshold(threshold)
    return torch.sigmoid(mask_logits.detach()) > threshold


def keep_indices(mask_logits: Tensor, threshold: float = MASK_THRESHOLD) -> Tensor:  # [...] -> [K] int64
    """Ascending indices into ``mask_logits.reshape(-1)`` of the items that survive.

    For per-primitive logits ``[N]`` or ``[N, 1]`` these are the row indices to keep when pruning
    (Compact-3DGS prunes where ``sigmoid(m) <= threshold``)."""
    return torch.nonzero(keep_mask(mask_logits, threshold).reshape(-1), as_tuple=False)[:, 0]


def mask_values(
    values: Tensor,  # [*S, ...]
    mask_logits: Tensor,  # [*S] (a trailing size-1 dimension is allowed: [*S, 1])
    threshold: float = MASK_THRESHOLD,
) -> Tensor:  # [*S, ...]
    """``values * hard_mask(mask_logits)``, the mask broadcast over the trailing dimensions of ``values``.

    E.g. a hash table ``[T, F]`` with per-entry logits ``[T]``, or per-Gaussian colours ``[N, 3]``
    with logits ``[N, 1]``."""
    _check_logits(mask_logits)
    if not isinstance(values, Tensor):
        raise ValueError(f"values must be a tensor, got {type(values).__name__}")
    m = mask_logits
    if m.shape != values.shape[: m.dim()]:
        if m.dim() >= 1 and m.shape[-1] == 1 and m.shape[:-1] == values.shape[: m.dim() - 1]:
            m = m[..., 0]
        else:
            raise ValueError(
                f"mask_logits must have shape {list(values.shape[:m.dim()])} (the leading dimensions of values "
                f"{list(values.shape)}), got {list(mask_logits.shape)}"
            )
    hard = hard_mask(m, threshold)
    return values * hard.reshape(*hard.shape, *([1] * (values.dim() - hard.dim())))


def apply_mask(
    scales_act: Tensor,  # [N, 3]
    opacities_act: Tensor,  # [N] or [N, 1]
    mask_logits: Tensor,  # [N] or [N, 1]
    threshold: float = MASK_THRESHOLD,
) -> tuple[Tensor, Tensor]:  # [N, 3], same shape as opacities_act
    """Compact-3DGS masking of Gaussians: ``(scales * M, opacities * M)`` with ``M = hard_mask(m)``.

    Pass *activated* values (``exp(log_scales)``, ``sigmoid(logits)``); the outputs go straight to
    the rasterizer. Gradients reach the scales, the opacities and (straight-through) the logits."""
    _check_logits(mask_logits)
    if scales_act.dim() != 2:
        raise ValueError(f"scales_act must have shape [N, D], got {list(scales_act.shape)}")
    n = scales_act.shape[0]
    if mask_logits.shape not in ((n,), (n, 1)):
        raise ValueError(
            f"mask_logits must have shape [N] or [N, 1] = [{n}] or [{n}, 1], got {list(mask_logits.shape)}"
        )
    if opacities_act.shape not in ((n,), (n, 1)):
        raise ValueError(
            f"opacities_act must have shape [N] or [N, 1] = [{n}] or [{n}, 1], got {list(opacities_act.shape)}"
        )
    hard = hard_mask(mask_logits.reshape(n), threshold)
    return scales_act * hard[:, None], opacities_act * hard.reshape(opacities_act.shape)


def mask_loss(mask_logits: Tensor) -> Tensor:  # [...] -> []
    """Rate term of the masks: the mean soft mask ``mean(sigmoid(m))`` (0 for an empty tensor).

    Its gradient ``sigmoid'(m) / numel`` is positive, so descending it lowers every logit; the
    rendering loss holds up the logits of Gaussians that matter."""
    _check_logits(mask_logits)
    if mask_logits.numel() == 0:
        return mask_logits.sum()
    return torch.sigmoid(mask_logits).mean()
