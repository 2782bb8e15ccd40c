"""Residual vector quantization (RVQ), as Compact-3DGS uses it for Gaussian scales and rotations.

Written by hand instead of depending on vector-quantize-pytorch: a plain-torch RVQ is several times
faster on CPU, and that package's defaults change between versions (e.g. the rotation trick) against
the Compact-3DGS pin. What we keep from Compact-3DGS: ``n_stages`` codebooks of ``codebook_size``
codes, each quantizing the residual the previous stages left; codebooks initialised by k-means on
the data at the first training step; codebooks learned by gradient descent (no EMA updates); a
straight-through estimator for the input gradient; commitment weight 0 by default.

How the codebooks learn: ``forward`` returns ``x_q = sum_s C_s[i_s] + (x - sg(x))``, whose value is
exactly the decoded vector and whose gradient reaches both ``x`` (identity, the straight-through
estimator) and the selected codes (so the task loss, e.g. rendering, trains the codebooks as in
Compact-3DGS' learnable codebooks). It also returns ``loss = sum_s [codebook_weight *
mse(C_s[i_s], sg(r_s)) + commitment_weight * mse(r_s, sg(C_s[i_s]))]`` where ``r_s`` is the residual
entering stage ``s`` (built from detached earlier codes, so each codebook is pulled towards its own
residuals only). Add ``loss`` to the training objective; the caller's optimizer steps the codebooks.

Nearest codes are found with ``|c|^2 - 2 x.c`` (one ``addmm`` per chunk of rows), chunked so the
distance matrix stays around 1 MB. ``encode``/``decode`` repeat exactly the arithmetic of
``forward``, so ``decode(encode(x))`` equals ``forward(x)[0]`` bit for bit.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

Seeding = Literal["kmeans++", "random"]

_DIST_ELEMENTS = 1 << 18  # distance-matrix entries per chunk (1 MB of float32)


def _check_points(x: Tensor, name: str, dim: int | None = None) -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or (dim is not None and x.shape[1] != dim):
        want = f"[N, {dim}]" if dim is not None else "[N, D]"
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name} must have shape {want}, got {got}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")


def nearest_code(
    x: Tensor,  # [N, D]
    codebook: Tensor,  # [K, D]
    chunk_size: int | None = None,
) -> Tensor:  # [N] int64
    """Index of the nearest code (squared Euclidean distance; ties go to the lowest index).

    Rows are processed ``chunk_size`` at a time (default: about 2^18 distances per chunk)."""
    _check_points(codebook, "codebook")
    _check_points(x, "x", codebook.shape[1])
    k = codebook.shape[0]
    chunk = chunk_size if chunk_size is not None else max(1, _DIST_ELEMENTS // k)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    x = x.detach().to(codebook.dtype)
    cb = codebook.detach()
    c_norm = (cb * cb).sum(1)  # [K]
    cb_t = cb.t().contiguous()
    out = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    for start in range(0, x.shape[0], chunk):
        d = torch.addmm(c_norm, x[start : start + chunk], cb_t, beta=1.0, alpha=-2.0)
        out[start : start + chunk] = d.argmin(1)
    return out


def kmeans(
    x: Tensor,  # [N, D]
    k: int,
    n_iters: int = 10,
    seeding: Seeding = "kmeans++",
    generator: torch.Generator | None = None,
) -> Tensor:  # [k, D]
    """k-means: k-means++ (or uniformly random) seeding from the points, then ``n_iters`` Lloyd
    iterations. Every iteration ends with a mean update, so the clustering error never exceeds
    that of the seeds; empty clusters keep their previous centre. Deterministic for a given
    ``generator`` (which must live on the CPU)."""
    _check_points(x, "x")
    if x.shape[0] < 1:
        raise ValueError("x must hold at least one point")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if seeding not in ("kmeans++", "random"):
        raise ValueError(f"seeding must be 'kmeans++' or 'random', got {seeding!r}")
    x = x.detach()
    n = x.shape[0]
    if seeding == "random":
        pick = torch.randint(n, (k,), generator=generator) if n < k else torch.randperm(n, generator=generator)[:k]
        centers = x[pick.to(x.device)].clone()
    else:
        # k-means++: each next seed is drawn with probability proportional to the squared
        # distance to the nearest seed so far (inverse-CDF sampling on a float64 running sum).
        centers = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
        x_norm = (x * x).sum(1)
        first = int(torch.randint(n, (1,), generator=generator))
        centers[0] = x[first]
        d2 = (x_norm - 2.0 * (x @ centers[0]) + centers[0].dot(centers[0])).clamp_min_(0.0)
        for i in range(1, k):
            cdf = torch.cumsum(d2, 0, dtype=torch.float64)
            total = float(cdf[-1])
            if total > 0:
                u = torch.rand((1,), generator=generator, dtype=torch.float64).to(cdf.device) * total
                pick = min(int(torch.searchsorted(cdf, u, right=True)), n - 1)
            else:  # fewer distinct points than codes: duplicates are harmless
                pick = int(torch.randint(n, (1,), generator=generator))
            centers[i] = x[pick]
            d_new = (x_norm - 2.0 * (x @ centers[i]) + centers[i].dot(centers[i])).clamp_min_(0.0)
            torch.minimum(d2, d_new, out=d2)
    for _ in range(n_iters):
        idx = nearest_code(x, centers)
        sums = torch.zeros_like(centers).index_add_(0, idx, x)
        counts = torch.bincount(idx, minlength=k).to(x.dtype)
        filled = counts > 0
        centers[filled] = sums[filled] / counts[filled, None]
    return centers


def rvq_encode(
    x: Tensor,  # [N, D]
    codebooks: Tensor,  # [S, K, D]
    chunk_size: int | None = None,
) -> Tensor:  # [N, S] int64
    """Stage-by-stage nearest codes of the running residual."""
    _check_codebooks(codebooks)
    _check_points(x, "x", codebooks.shape[2])
    cb = codebooks.detach()
    residual = x.detach().to(cb.dtype)
    out = torch.empty(x.shape[0], cb.shape[0], dtype=torch.int64, device=x.device)
    for s in range(cb.shape[0]):
        idx = nearest_code(residual, cb[s], chunk_size)
        out[:, s] = idx
        residual = residual - cb[s][idx]
    return out


def rvq_decode(
    indices: Tensor,  # [N, S] integer
    codebooks: Tensor,  # [S, K, D]
) -> Tensor:  # [N, D]
    """Sum of the selected codes, added stage by stage (differentiable wrt the codebooks)."""
    _check_codebooks(codebooks)
    s, k = codebooks.shape[0], codebooks.shape[1]
    if not isinstance(indices, Tensor) or indices.dim() != 2 or indices.shape[1] != s:
        got = tuple(indices.shape) if isinstance(indices, Tensor) else type(indices).__name__
        raise ValueError(f"indices must have shape [N, {s}] (one column per stage), got {got}")
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise ValueError(f"indices must be an integer tensor, got {indices.dtype}")
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= k):
        raise ValueError(f"indices must lie in [0, {k}), got values in [{int(indices.min())}, {int(indices.max())}]")
    idx = indices.long()
    out = torch.zeros(indices.shape[0], codebooks.shape[2], dtype=codebooks.dtype, device=codebooks.device)
    for stage in range(s):
        out = out + codebooks[stage][idx[:, stage]]
    return out


def _check_codebooks(codebooks: Tensor) -> None:
    if not isinstance(codebooks, Tensor) or codebooks.dim() != 3:
        got = tuple(codebooks.shape) if isinstance(codebooks, Tensor) else type(codebooks).__name__
        raise ValueError(f"codebooks must have shape [S, K, D], got {got}")


class ResidualVQ(nn.Module):
    """Residual VQ with learned codebooks ``[n_stages, codebook_size, dim]`` (float32).

    With ``kmeans_init`` (default), the first ``forward`` in training mode fits the codebooks to that
    batch with :meth:`init_from` (the ``initted`` buffer records it, so a loaded model is not
    re-initialised). Before that, codebooks are small random vectors.
    """

    def __init__(
        self,
        dim: int,
        n_stages: int = 6,
        codebook_size: int = 64,
        commitment_weight: float = 0.0,
        codebook_weight: float = 1.0,
        kmeans_init: bool = True,
        kmeans_iters: int = 10,
        seed: int = 0,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        if n_stages < 1:
            raise ValueError(f"n_stages must be >= 1, got {n_stages}")
        if codebook_size < 1:
            raise ValueError(f"codebook_size must be >= 1, got {codebook_size}")
        self.dim = dim
        self.n_stages = n_stages
        self.codebook_size = codebook_size
        self.commitment_weight = commitment_weight
        self.codebook_weight = codebook_weight
        self.kmeans_init = kmeans_init
        self.kmeans_iters = kmeans_iters
        self.seed = seed
        self.chunk_size = chunk_size
        gen = torch.Generator().manual_seed(seed)
        self.codebooks = nn.Parameter(torch.randn(n_stages, codebook_size, dim, generator=gen) * 1e-2)
        self.register_buffer("initted", torch.tensor(False))

    @torch.no_grad()
    def init_from(
        self,
        x: Tensor,  # [N, dim]
        n_iters: int | None = None,
        seeding: Seeding = "kmeans++",
        max_points: int | None = 1 << 16,
        seed: int | None = None,
    ) -> None:
        """Fit every stage's codebook by k-means to the residuals the earlier stages leave on ``x``
        (a random subset of ``max_points`` rows when larger; None uses all). On the points used, the
        mean squared residual never grows from one stage to the next."""
        _check_points(x, "x", self.dim)
        if x.shape[0] < 1:
            raise ValueError("x must hold at least one point")
        gen = torch.Generator().manual_seed(self.seed if seed is None else seed)
        iters = self.kmeans_iters if n_iters is None else n_iters
        data = x.detach().to(self.codebooks.dtype)
        if max_points is not None and data.shape[0] > max_points:
            data = data[torch.randperm(data.shape[0], generator=gen)[:max_points].to(data.device)]
        residual = data.to(self.codebooks.device)
        for s in range(self.n_stages):
            centers = kmeans(residual, self.codebook_size, iters, seeding, gen)
            self.codebooks[s] = centers
            residual = residual - centers[nearest_code(residual, centers, self.chunk_size)]
        self.initted.fill_(True)

    def encode(self, x: Tensor) -> Tensor:  # [N, dim] -> [N, n_stages] int64
        """Code indices, one column per stage."""
        return rvq_encode(x, self.codebooks, self.chunk_size)

    def decode(self, indices: Tensor) -> Tensor:  # [N, n_stages] -> [N, dim]
        """Quantized vectors from indices (float32)."""
        return rvq_decode(indices, self.codebooks)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Quantize ``x`` [N, dim]. Returns ``x_q`` [N, dim] (value: the decoded vector; gradient:
        straight through to ``x`` and into the selected codes), ``indices`` [N, n_stages] int64 and
        the scalar codebook/commitment ``loss``."""
        _check_points(x, "x", self.dim)
        if self.training and self.kmeans_init and not bool(self.initted) and x.shape[0] > 0:
            self.init_from(x)
        cb = self.codebooks
        x = x.to(cb.dtype)
        residual = x.detach()
        quantized = torch.zeros_like(residual)
        indices = torch.empty(x.shape[0], self.n_stages, dtype=torch.int64, device=x.device)
        loss = x.new_zeros(())
        for s in range(self.n_stages):
            idx = nearest_code(residual, cb[s], self.chunk_size)
            indices[:, s] = idx
            code = cb[s][idx]  # differentiable wrt the codebook
            quantized = quantized + code
            if x.shape[0] > 0:
                if self.codebook_weight:
                    loss = loss + self.codebook_weight * torch.mean((code - residual) ** 2)
                if self.commitment_weight:  # pulls x (not the codes) towards its codes
                    live = x - (quantized - code).detach()
                    loss = loss + self.commitment_weight * torch.mean((live - code.detach()) ** 2)
            residual = residual - code.detach()
        x_q = quantized + (x - x.detach())  # exact value of `quantized`, identity gradient to x
        return x_q, indices, loss

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_stages={self.n_stages}, codebook_size={self.codebook_size}"
