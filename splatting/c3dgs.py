"""Compact-3DGS (Lee et al., CVPR 2024): the ``c3dgs`` model and its ``.scz`` stream contract.

Written by hand in scenezip's layouts from the paper's recipe, reusing :mod:`scenezip.quant` (masks,
scalar quantizers, residual VQ, codecs) and :class:`scenezip.fields.color_field.ColorField`:

- Gaussians keep ``means [N, 3]``, ``quats [N, 4]``, ``scales [N, 3]`` (log), ``opacities [N]`` (logit)
  and a mask logit ``masks [N]`` in ``model.splats`` (gsplat's names, like GaussianModel); the colour
  comes from a hash-grid colour field evaluated per camera, so one camera is rasterized per call.
- The hard mask multiplies the *activated* scales and opacities (:func:`scenezip.quant.mask.apply_mask`).
- With ``use_rvq``, the activated scales (``exp``) and the normalized quaternions go through residual VQ
  (Compact-3DGS quantizes ``get_scaling`` and ``get_rotation``, the activated values). The covariance
  only sees ``scale^2``, so a code sum that dips below zero does no harm.

Post-processing (:meth:`C3DGSModel.to_streams`), every step exact so the file decodes bit for bit:

- masked Gaussians are dropped (``keep_indices``);
- positions: 16-bit uniform per axis over the bounds of the kept means, Gaussians sorted by the Morton
  code of the quantized positions, stored ``uint16 [N, 3]`` with ``rans-delta`` per axis. Measured on
  points near a sphere (sorted by Morton code): 100k Gaussians 423 kB per-axis vs 531 kB as ``rans-delta``
  of the int64 Morton codes vs 600 kB raw; at 10k the three are within 1%; on small or scattered sets
  nearly every delta is distinct and the frequency table dominates (2000 uniform random points: 23.6 kB
  vs 12 kB raw), so ``raw`` is written whenever it is the smaller (the header names the codec);
- opacities: 8-bit uniform on the *logit* over its range, ``rans``. The logit is what the model stores,
  so a decoded model holds exactly the dequantized value and renders exactly like the post-processed one
  (and 8 logit bits resolve opacities near 0 and 1 better than 8 linear bits);
- scales and rotations: R-VQ indices ``[N, stages]`` (uint8 when the codebooks hold at most 256 codes)
  coded jointly with one ``rans`` table per attribute (2000 Gaussians: 9068 / 9096 B jointly vs 9233 /
  9533 B with one table per stage, for scales / rotations); codebooks float16 ``raw``. Indices are chosen
  against the float16-rounded codebooks, i.e. against what the file holds;
- colour field: hash table with ``|v| <= hash_zero_threshold`` set to 0 (Compact-3DGS: 0.1), then 8-bit
  uniform over its range, ``rans``; MLP float16 ``raw``.

A decoded (or :meth:`C3DGSModel.quantized_copy`) model is *frozen*: it holds the R-VQ indices as buffers
and renders the code sums directly, with every mask logit at the init value (all kept).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scenezip.errors import SceneFileError
from scenezip.fields.color_field import DEFAULT_BOUNDS, ColorField, ColorFieldConfig
from scenezip.quant.codecs import dequantize_uniform, get_codec, quantize_uniform
from scenezip.quant.mask import MASK_INIT_LOGIT, MASK_THRESHOLD, apply_mask, keep_indices
from scenezip.quant.morton import morton_order
from scenezip.quant.rvq import ResidualVQ, rvq_decode, rvq_encode
from scenezip.quant.scalar import zero_small
from scenezip.splatting.gaussians import GaussianModel

METHOD = "c3dgs"
MODEL_FORMAT = "scenezip.c3dgs_model"
FORMAT_VERSION = 1
SPLAT_NAMES = ("means", "quats", "scales", "opacities", "masks")
POSITION_BITS = 16
OPACITY_BITS = 8
HASH_BITS = 8
HASH_ZERO_THRESHOLD = 0.1  # Compact-3DGS zeroes hash values with |v| <= 0.1 before quantizing


def _range(x: np.ndarray, axis: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """float64 ``(min, max)``; a constant range is widened by 1e-6 (as UniformQuantizer.from_data)."""
    x64 = np.asarray(x, dtype=np.float64)
    lo, hi = x64.min(axis=axis), x64.max(axis=axis)
    return lo, np.where(hi > lo, hi, lo + 1e-6)


def _floats(v: Any) -> list[float] | float:
    a = np.asarray(v, dtype=np.float64)
    return float(a) if a.ndim == 0 else [float(t) for t in a]


class C3DGSModel(nn.Module):
    """Compact-3DGS Gaussians (see the module docstring).

    Args:
        means: ``[N, 3]`` centres.
        quats: ``[N, 4]`` rotations (w, x, y, z, any norm).
        scales: ``[N, 3]`` log standard deviations.
        opacities: ``[N]`` opacity logits.
        masks: ``[N]`` mask logits, or None for ``MASK_INIT_LOGIT`` everywhere.
        color_config: colour-field settings.
        bounds: ``[2, 3]`` scene box of the colour field's contraction.
        use_rvq: quantize scales and rotations with residual VQ when rendering.
        rvq_stages, rvq_codebook_size: R-VQ shape (Compact-3DGS: 6 stages of 64 codes).
        mask_threshold: hard-mask threshold on ``sigmoid(mask logit)``.
        backend: hash-grid backend of the colour field.
        seed: initialization seed of the colour field and the codebooks.
    """

    def __init__(
        self,
        means: Tensor,
        quats: Tensor,
        scales: Tensor,
        opacities: Tensor,
        masks: Tensor | None = None,
        color_config: ColorFieldConfig | None = None,
        bounds: Tensor | Sequence = DEFAULT_BOUNDS,
        use_rvq: bool = True,
        rvq_stages: int = 6,
        rvq_codebook_size: int = 64,
        mask_threshold: float = MASK_THRESHOLD,
        backend: Literal["auto", "torch", "cuda"] = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(means, Tensor) or means.dim() != 2 or means.shape[1] != 3:
            raise ValueError(f"means must have shape [N, 3], got {tuple(getattr(means, 'shape', ()))}")
        n = means.shape[0]
        if masks is None:
            masks = torch.full((n,), MASK_INIT_LOGIT)
        given = {"quats": (quats, (n, 4)), "scales": (scales, (n, 3)), "opacities": (opacities, (n,)),
                 "masks": (masks, (n,))}  # fmt: skip
        for name, (t, shape) in given.items():
            if not isinstance(t, Tensor) or tuple(t.shape) != shape:
                raise ValueError(f"{name} must have shape {list(shape)}, got {tuple(getattr(t, 'shape', ()))}")
        self.splats = nn.ParameterDict(
            {k: nn.Parameter(t.detach().to(torch.float32).clone()) for k, t in
             zip(SPLAT_NAMES, (means, quats, scales, opacities, masks))}  # fmt: skip
        )
        self.color_field = ColorField(color_config, bounds, backend=backend, seed=seed)
        self.scale_vq = ResidualVQ(3, rvq_stages, rvq_codebook_size, seed=seed)
        self.rot_vq = ResidualVQ(4, rvq_stages, rvq_codebook_size, seed=seed + 1)
        self.use_rvq = bool(use_rvq)
        self.mask_threshold = float(mask_threshold)
        # Frozen models (decoded / post-processed) hold their R-VQ indices; live models hold None.
        self.register_buffer("scale_indices", None)
        self.register_buffer("rot_indices", None)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_gaussians(
        cls,
        model: GaussianModel,
        color_config: ColorFieldConfig | None = None,
        bounds: Tensor | Sequence = DEFAULT_BOUNDS,
        init_rvq: bool = True,
        **kwargs: Any,
    ) -> "C3DGSModel":
        """Geometry of a :class:`GaussianModel` (its SH colours are dropped: the field learns colour).

        With ``init_rvq`` (and ``use_rvq``), the codebooks are fitted by k-means to the activated scales
        and normalized rotations now; ``kwargs`` go to the constructor."""
        if not isinstance(model, GaussianModel):
            raise ValueError(f"model must be a GaussianModel, got {type(model).__name__}")
        m = cls(model.means.detach().cpu(), model.quats.detach().cpu(), model.scales.detach().cpu(),
                model.opacities.detach().cpu(), None, color_config, bounds, **kwargs)  # fmt: skip
        if init_rvq and m.use_rvq and len(m) > 0:
            m.init_rvq()
        return m.to(model.device)

    @torch.no_grad()
    def init_rvq(self) -> None:
        """Fit both R-VQ codebooks by k-means to the current activated scales and unit quaternions."""
        self.scale_vq.init_from(torch.exp(self.splats["scales"]))
        self.rot_vq.init_from(F.normalize(self.splats["quats"], dim=-1))

    # ------------------------------------------------------------------ accessors
    def __len__(self) -> int:
        return int(self.splats["means"].shape[0])

    @property
    def device(self) -> torch.device:
        return self.splats["means"].device

    @property
    def frozen(self) -> bool:
        """True for decoded / post-processed models (R-VQ indices fixed, codebooks read-only in use)."""
        return self.scale_indices is not None

    def activated(self) -> dict[str, Tensor]:
        """What the rasterizer takes (before colours): ``means``, ``quats``, masked ``scales`` and
        ``opacities``, plus ``rvq_loss`` (0 unless the R-VQ ran in this call)."""
        s = self.splats
        loss = s["means"].new_zeros(())
        if self.frozen:
            scales = rvq_decode(self.scale_indices, self.scale_vq.codebooks)
            quats = rvq_decode(self.rot_indices, self.rot_vq.codebooks)
        elif self.use_rvq:
            scales, _, l1 = self.scale_vq(torch.exp(s["scales"]))
            quats, _, l2 = self.rot_vq(F.normalize(s["quats"], dim=-1))
            loss = l1 + l2
        else:
            scales, quats = torch.exp(s["scales"]), F.normalize(s["quats"], dim=-1)
        scales, opacities = apply_mask(scales, torch.sigmoid(s["opacities"]), s["masks"], self.mask_threshold)
        return {"means": s["means"], "quats": quats, "scales": scales, "opacities": opacities, "rvq_loss": loss}

    # ------------------------------------------------------------------ rendering
    def render(
        self,
        viewmats: Tensor,
        Ks: Tensor,
        width: int,
        height: int,
        backgrounds: Tensor | None = None,
        backend: Literal["auto", "torch", "cuda"] = "auto",
        render_mode: Literal["RGB", "D", "ED", "RGB+D", "RGB+ED"] = "RGB",
        **kwargs: Any,
    ) -> tuple[Tensor, Tensor, dict]:
        """Render C cameras, one rasterizer call per camera with that camera's field colours.

        Args:
            viewmats: ``[C, 4, 4]`` world-to-camera (OpenCV axes).
            Ks: ``[C, 3, 3]`` intrinsics in pixels.
            backgrounds: ``[C, 3]`` or None (black).
            kwargs: passed on to ``rasterization``.

        Returns:
            ``(colors [C, H, W, D], alphas [C, H, W, 1], meta)``; ``meta["cameras"]`` is the list of the
            per-camera meta dicts (``means2d`` there for densification), ``meta["rvq_loss"]`` the
            codebook loss of this call.
        """
        from scenezip.render.rasterization import rasterization

        if not isinstance(viewmats, Tensor) or viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
            raise ValueError(f"viewmats must have shape [C, 4, 4], got {tuple(getattr(viewmats, 'shape', ()))}")
        c = viewmats.shape[0]
        if not isinstance(Ks, Tensor) or tuple(Ks.shape) != (c, 3, 3):
            raise ValueError(f"Ks must have shape [{c}, 3, 3], got {tuple(getattr(Ks, 'shape', ()))}")
        if backgrounds is not None and (backgrounds.dim() != 2 or backgrounds.shape[0] != c):
            raise ValueError(f"backgrounds must have shape [{c}, D], got {tuple(backgrounds.shape)}")
        a = self.activated()
        colors = self.color_field.colors_for_cameras(a["means"], viewmats)  # [C, N, 3]
        outs, alphas, metas = [], [], []
        for i in range(c):
            col, alpha, meta = rasterization(
                a["means"], a["quats"], a["scales"], a["opacities"], colors[i], viewmats[i : i + 1], Ks[i : i + 1],
                int(width), int(height), backgrounds=None if backgrounds is None else backgrounds[i : i + 1],
                render_mode=render_mode, backend=backend, **kwargs,
            )  # fmt: skip
            outs.append(col)
            alphas.append(alpha)
            metas.append(meta)
        return torch.cat(outs, 0), torch.cat(alphas, 0), {"cameras": metas, "rvq_loss": a["rvq_loss"]}

    # ------------------------------------------------------------------ save / load (training state)
    def to_dict(self) -> dict[str, Any]:
        """Plain, device-independent dict of the live (or frozen) model, for checkpoints and ``model.pt``."""
        return {
            "format": MODEL_FORMAT,
            "version": FORMAT_VERSION,
            "n": len(self),
            "init": {
                "color_config": dataclasses.asdict(self.color_field.config),
                "use_rvq": self.use_rvq,
                "rvq_stages": self.scale_vq.n_stages,
                "rvq_codebook_size": self.scale_vq.codebook_size,
                "mask_threshold": self.mask_threshold,
            },
            "state": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()},
        }

    @classmethod
    def from_dict(cls, data: Any, device: torch.device | str = "cpu", source: str = "model") -> "C3DGSModel":
        """Inverse of :meth:`to_dict`; SceneFileError naming ``source`` for anything else."""
        if not isinstance(data, dict) or data.get("format") != MODEL_FORMAT:
            raise SceneFileError(f"{source}: not a scenezip c3dgs model (format {MODEL_FORMAT!r} expected)")
        try:
            init, state, n = data["init"], dict(data["state"]), int(data["n"])
            z = torch.zeros
            model = cls(z(n, 3), z(n, 4), z(n, 3), z(n), None, ColorFieldConfig(**init["color_config"]),
                        use_rvq=bool(init["use_rvq"]), rvq_stages=int(init["rvq_stages"]),
                        rvq_codebook_size=int(init["rvq_codebook_size"]),
                        mask_threshold=float(init["mask_threshold"]), backend="torch")  # fmt: skip
            for name in ("scale_indices", "rot_indices"):
                if name in state:
                    setattr(model, name, state[name].clone())
            model.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise SceneFileError(f"{source}: c3dgs model does not load ({type(e).__name__}: {e})") from None
        return model.to(device)

    def save(self, path: Any) -> Any:
        """Write :meth:`to_dict` with ``torch.save`` via a temporary name; returns the path."""
        import os
        from pathlib import Path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.to_dict(), tmp)
        os.replace(tmp, path)
        return path

    # ------------------------------------------------------------------ post-processing and coding
    @torch.no_grad()
    def _post_process(self, hash_zero_threshold: float) -> tuple[dict, dict[str, np.ndarray]]:
        """``(metadata, arrays)``: the integer codes and float16 tables a file stores (see the module
        docstring); shared by :meth:`to_streams` and :meth:`quantized_copy`."""
        if self.frozen:
            raise ValueError("this model is already post-processed (decoded); it has no float attributes to code")
        if self.scale_vq.codebook_size > 1 << 16:
            raise ValueError(f"codebook_size must be at most 65536 to be stored, got {self.scale_vq.codebook_size}")
        if not bool(self.scale_vq.initted) or not bool(self.rot_vq.initted):
            self.init_rvq()
        s = {k: v.detach().cpu() for k, v in self.splats.items()}
        keep = keep_indices(s["masks"], self.mask_threshold)
        if keep.numel() == 0:
            raise ValueError("every Gaussian is masked out; nothing to store")
        means = s["means"][keep].numpy()
        p_lo, p_hi = _range(means, axis=0)
        q_pos = quantize_uniform(means, p_lo, p_hi, POSITION_BITS)  # uint16 [K, 3]
        order = morton_order(q_pos)
        perm = keep[torch.from_numpy(order)]
        q_pos = q_pos[order]

        logits = s["opacities"][perm].numpy()
        o_lo, o_hi = _range(logits)
        q_opa = quantize_uniform(logits, o_lo, o_hi, OPACITY_BITS)

        idx_dtype = np.uint8 if self.scale_vq.codebook_size <= 256 else np.uint16
        cb_s = self.scale_vq.codebooks.detach().cpu().to(torch.float16)
        cb_r = self.rot_vq.codebooks.detach().cpu().to(torch.float16)
        i_s = rvq_encode(torch.exp(s["scales"][perm]), cb_s.float()).numpy().astype(idx_dtype)
        i_r = rvq_encode(F.normalize(s["quats"][perm], dim=-1), cb_r.float()).numpy().astype(idx_dtype)

        table = zero_small(self.color_field.grid.params.detach().cpu().numpy(), hash_zero_threshold)
        h_lo, h_hi = _range(table)
        q_hash = quantize_uniform(table, h_lo, h_hi, HASH_BITS)
        mlp = self.color_field.mlp_params_fp16().numpy()

        cfg = self.color_field.config
        metadata = {
            "c3dgs_version": FORMAT_VERSION,
            "n_gaussians": int(perm.numel()),
            "mask_threshold": self.mask_threshold,
            "positions": {"bits": POSITION_BITS, "lo": _floats(p_lo), "hi": _floats(p_hi), "order": "morton"},
            "opacities": {"bits": OPACITY_BITS, "domain": "logit", "lo": _floats(o_lo), "hi": _floats(o_hi)},
            "rvq": {
                "scales": {"dim": 3, "n_stages": self.scale_vq.n_stages, "codebook_size": self.scale_vq.codebook_size,
                           "domain": "exp"},
                "rotations": {"dim": 4, "n_stages": self.rot_vq.n_stages, "codebook_size": self.rot_vq.codebook_size,
                              "domain": "unit quaternion"},
            },  # fmt: skip
            "color_field": {
                "config": dataclasses.asdict(cfg),
                "bounds": self.color_field.bounds.detach().cpu().tolist(),
                "hash": {"bits": HASH_BITS, "lo": _floats(h_lo), "hi": _floats(h_hi),
                         "zero_threshold": float(hash_zero_threshold), "n_params": int(table.size)},  # fmt: skip
                "mlp_n_params": int(mlp.size),
            },
        }
        arrays = {
            "positions": q_pos, "opacities": q_opa, "scale_indices": i_s, "scale_codebooks": cb_s.numpy(),
            "rotation_indices": i_r, "rotation_codebooks": cb_r.numpy(), "hash_table": q_hash, "mlp": mlp,
        }  # fmt: skip
        return metadata, arrays

    def to_streams(
        self, hash_zero_threshold: float = HASH_ZERO_THRESHOLD
    ) -> tuple[dict, dict[str, tuple[np.ndarray, str]]]:
        """``(metadata, streams)`` for :func:`scenezip.scenes.scz.write_scz` (method ``"c3dgs"``).

        Codebooks that were never fitted (``use_rvq=False`` so far) are fitted by k-means first, in place.
        ``hash_zero_threshold``: hash values with ``|v|`` at or below it are stored as 0."""
        metadata, a = self._post_process(hash_zero_threshold)
        codecs = {"positions": "rans-delta", "opacities": "rans", "scale_indices": "rans",
                  "scale_codebooks": "raw", "rotation_indices": "rans", "rotation_codebooks": "raw",
                  "hash_table": "rans", "mlp": "raw"}  # fmt: skip
        # rans-delta wins on dense, surface-like scenes (100k Gaussians: 423 kB vs 600 kB raw) but loses to
        # raw on small or scattered sets, where nearly every delta is distinct and the table dominates
        # (2000 uniform random points: 23.6 kB vs 12 kB). The codec is named in the header, so keep the smaller.
        pos_delta, _ = get_codec("rans-delta").encode(a["positions"])
        if len(pos_delta) >= a["positions"].nbytes:
            codecs["positions"] = "raw"
        return metadata, {name: (arr, codecs[name]) for name, arr in a.items()}

    def quantized_copy(self, hash_zero_threshold: float = HASH_ZERO_THRESHOLD) -> "C3DGSModel":
        """The post-processed model (masked Gaussians dropped, Morton order, every attribute quantized)
        built in memory from the arrays :meth:`to_streams` would code; renders like the decoded file."""
        metadata, arrays = self._post_process(hash_zero_threshold)
        return c3dgs_from_streams(arrays, metadata, "quantized copy").to(self.device)


def _fail(source: str, msg: str):
    raise SceneFileError(f"{source}: c3dgs {msg}")


def _meta_int(d: Any, key: str, source: str, lo: int = 0) -> int:
    v = d.get(key) if isinstance(d, dict) else None
    if not isinstance(v, int) or isinstance(v, bool) or v < lo:
        _fail(source, f"metadata {key!r} must be an integer >= {lo}, got {v!r}")
    return v


def _meta_range(d: Any, name: str, source: str, size: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    if not isinstance(d, dict):
        _fail(source, f"metadata {name!r} is missing")
    bits = _meta_int(d, "bits", source, 1)
    try:
        lo, hi = np.asarray(d["lo"], dtype=np.float64), np.asarray(d["hi"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        _fail(source, f"metadata {name!r} needs numeric lo and hi")
    want = () if size is None else (size,)
    if lo.shape != want or hi.shape != want or not (np.all(np.isfinite(lo)) and np.all(hi > lo)):
        _fail(source, f"metadata {name!r} lo/hi must be finite with hi > lo, shape {list(want)}")
    return lo, hi, bits


def c3dgs_from_streams(arrays: dict[str, np.ndarray], metadata: dict, source: str = "scene") -> C3DGSModel:
    """Inverse of :meth:`C3DGSModel.to_streams`: a frozen model whose render is the decoded scene.

    Every shape, dtype and count is checked against ``metadata``; SceneFileError naming ``source``."""
    if not isinstance(metadata, dict):
        _fail(source, "metadata must be an object")
    version = _meta_int(metadata, "c3dgs_version", source, 1)
    if version > FORMAT_VERSION:
        _fail(source, f"stream version {version} is newer than {FORMAT_VERSION}")
    n = _meta_int(metadata, "n_gaussians", source, 1)
    p_lo, p_hi, p_bits = _meta_range(metadata.get("positions"), "positions", source, 3)
    o_lo, o_hi, o_bits = _meta_range(metadata.get("opacities"), "opacities", source, None)
    rvq = metadata.get("rvq")
    if not (isinstance(rvq, dict) and isinstance(rvq.get("scales"), dict) and isinstance(rvq.get("rotations"), dict)):
        _fail(source, "metadata 'rvq' needs 'scales' and 'rotations'")
    shapes = {}
    for key, dim in (("scales", 3), ("rotations", 4)):
        d = rvq[key]
        if d.get("dim") != dim:
            _fail(source, f"metadata rvq {key} dim must be {dim}, got {d.get('dim')!r}")
        shapes[key] = (_meta_int(d, "n_stages", source, 1), _meta_int(d, "codebook_size", source, 1))
    if shapes["scales"] != shapes["rotations"]:
        _fail(source, f"R-VQ shapes differ for scales {shapes['scales']} and rotations {shapes['rotations']}")
    n_stages, book = shapes["scales"]
    if book > 1 << 16:
        _fail(source, f"codebook_size {book} exceeds 65536")
    cf = metadata.get("color_field")
    if not isinstance(cf, dict) or not isinstance(cf.get("config"), dict):
        _fail(source, "metadata 'color_field' needs 'config'")
    try:
        config = ColorFieldConfig(**cf["config"])
    except Exception as e:  # noqa: BLE001 - unknown keys or invalid values alike mean a bad file
        _fail(source, f"colour-field config is invalid ({e})")
    h_lo, h_hi, h_bits = _meta_range(cf.get("hash"), "color_field.hash", source, None)
    try:
        threshold = float(metadata.get("mask_threshold", MASK_THRESHOLD))
        model = C3DGSModel(torch.zeros(n, 3), torch.zeros(n, 4), torch.zeros(n, 3), torch.zeros(n), None, config,
                           cf.get("bounds"), True, n_stages, book, threshold, backend="torch")  # fmt: skip
    except (ValueError, TypeError) as e:
        _fail(source, f"metadata does not describe a model ({e})")
    n_hash = model.color_field.grid.params.numel()
    n_mlp = model.color_field.mlp.n_params()
    if cf["hash"].get("n_params") != n_hash or cf.get("mlp_n_params") != n_mlp:
        _fail(source, f"colour field holds {n_hash} hash / {n_mlp} MLP parameters, metadata says "
                      f"{cf['hash'].get('n_params')!r} / {cf.get('mlp_n_params')!r}")  # fmt: skip
    ints = ("uint8", "uint16", "uint32")
    expect = {
        "positions": ((n, 3), ints), "opacities": ((n,), ints), "scale_indices": ((n, n_stages), ints),
        "rotation_indices": ((n, n_stages), ints), "scale_codebooks": ((n_stages, book, 3), ("float16",)),
        "rotation_codebooks": ((n_stages, book, 4), ("float16",)), "hash_table": ((n_hash,), ints),
        "mlp": ((n_mlp,), ("float16",)),
    }  # fmt: skip
    for name, (shape, dtypes) in expect.items():
        if name not in arrays:
            _fail(source, f"stream {name!r} is missing")
        a = arrays[name]
        if tuple(a.shape) != shape:
            _fail(source, f"stream {name!r} has shape {tuple(a.shape)}, expected {shape}")
        if a.dtype.name not in dtypes:
            _fail(source, f"stream {name!r} has dtype {a.dtype.name}, expected {' or '.join(dtypes)}")
    for name, bits in (("positions", p_bits), ("opacities", o_bits), ("hash_table", h_bits)):
        if bits > 32 or (arrays[name].size and int(arrays[name].max()) >= 1 << bits):
            _fail(source, f"stream {name!r} holds values beyond {bits} bits")
    for name in ("scale_indices", "rotation_indices"):
        if int(arrays[name].max()) >= book:
            _fail(source, f"stream {name!r} holds an index >= codebook_size {book}")
    for name in ("scale_codebooks", "rotation_codebooks", "mlp"):
        if not np.all(np.isfinite(arrays[name])):
            _fail(source, f"stream {name!r} holds non-finite values")

    with torch.no_grad():
        s = model.splats
        s["means"].copy_(torch.from_numpy(dequantize_uniform(arrays["positions"], p_lo, p_hi, p_bits)))
        s["opacities"].copy_(torch.from_numpy(dequantize_uniform(arrays["opacities"], o_lo, o_hi, o_bits)))
        model.scale_vq.codebooks.copy_(torch.from_numpy(arrays["scale_codebooks"].astype(np.float32)))
        model.rot_vq.codebooks.copy_(torch.from_numpy(arrays["rotation_codebooks"].astype(np.float32)))
        model.scale_vq.initted.fill_(True)
        model.rot_vq.initted.fill_(True)
        model.scale_indices = torch.from_numpy(arrays["scale_indices"].astype(np.int64))
        model.rot_indices = torch.from_numpy(arrays["rotation_indices"].astype(np.int64))
        scales = rvq_decode(model.scale_indices, model.scale_vq.codebooks)
        s["scales"].copy_(torch.log(scales.abs().clamp_min(1e-12)))  # informative only: render uses the codes
        s["quats"].copy_(rvq_decode(model.rot_indices, model.rot_vq.codebooks))
        grid = torch.from_numpy(dequantize_uniform(arrays["hash_table"], h_lo, h_hi, h_bits))
        model.color_field.grid.params.copy_(grid)
        model.color_field.load_fp16(torch.from_numpy(arrays["mlp"]))
    return model
