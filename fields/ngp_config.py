"""Configuration of hash-grid NeRF (``ngp``) training, a dataclass with one docstring per field.

The CLI is generated from it (tyro), so each field's docstring is its ``--help`` text. Defaults follow
Instant-NGP (Mueller et al. 2022) as nerfacc reproduces it: 16 levels x 2 features, tables of 2^19,
base resolution 16 up to 2048 per axis, Adam (0.9, 0.99, eps 1e-15) at 1e-2 with a short linear warm-up
and x0.33 steps at 1/2, 3/4 and 9/10 of the run, MLP weight decay 1e-6, a 128^3 occupancy grid updated
every 16 steps, 1024 marching steps across the box and early stop at transmittance 1e-4. The defaults
are GPU-sized; on a CPU shrink ``log2_hashmap_size``, ``max_resolution``, ``occ_resolution``,
``march_steps`` and ``rays_per_step`` (``benchmarks/rd_nerf.py`` shows a reduced setting).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import tyro


@dataclass
class NGPConfig:
    """Train an Instant-NGP-style hash-grid NeRF on a capture."""

    data: tyro.conf.Positional[Path]
    """Capture folder (Blender, nerfstudio/instant-ngp, COLMAP or LLFF), or a transforms.json inside one."""
    out: Path = Path("runs/ngp")
    """Output folder: checkpoints ckpt_XXXXX.pt, config.json and metrics.json."""
    steps: int = 20_000
    """Optimizer steps (one batch of random rays from all training images per step)."""
    downscale: int = 1
    """Integer image downscale factor applied at load."""
    test_every: int = 8
    """Every N-th image (after sorting by name) is a test image, unless the dataset ships a split."""
    seed: int = 0
    """Seed of the initialisation, ray batches, marching jitter, random backgrounds and grid updates."""
    background: Optional[tuple[float, float, float]] = None
    """RGB in [0, 1] behind the field for evaluation; None uses the dataset's (black for RGB captures)."""
    random_background: bool = True
    """For RGBA captures, train each ray on a random background colour (the capture re-composited on the
    same colour), as instant-ngp does, so the field cannot paint the background into empty space."""
    rays_per_step: int = 4096
    """Rays per training step, drawn uniformly over the pixels of all training images."""
    loss: Literal["l2", "huber"] = "l2"
    """Photometric loss: mean squared error, or Huber (smooth L1, delta 0.1)."""
    lr: float = 1e-2
    """Peak Adam learning rate of the hash table and the MLPs."""
    lr_warmup: int = 100
    """Linear warm-up of the learning rate from 1% over this many steps."""
    lr_decay_at: tuple[float, float, float] = (0.5, 0.75, 0.9)
    """Fractions of the run after which the learning rate is multiplied by lr_decay."""
    lr_decay: float = 0.33
    """Factor applied at each lr_decay_at."""
    weight_decay: float = 1e-6
    """L2 weight decay on the MLP weights (not on the hash table)."""
    n_levels: int = 16
    """Hash-grid resolution levels."""
    n_features_per_level: int = 2
    """Features per hash-table entry."""
    log2_hashmap_size: int = 19
    """log2 of the largest per-level table size (19 for real scenes; 15-17 suit small or CPU runs)."""
    base_resolution: int = 16
    """Vertices per axis of the coarsest level."""
    max_resolution: int = 2048
    """Vertices per axis of the finest level (per-level scale follows)."""
    hidden_dim: int = 64
    """Width of the density and colour MLPs."""
    geo_features: int = 15
    """Geometry features from the density MLP to the colour MLP."""
    box_scale: float = 1.0
    """The scene box is the dataset's bounds scaled by this factor about their centre."""
    march_steps: int = 1024
    """Marching steps across the box diagonal (step size = diagonal / march_steps)."""
    occ_resolution: int = 128
    """Occupancy-grid cells per axis."""
    occ_update_every: int = 16
    """Update the occupancy grid every this many steps."""
    occ_warmup: int = 256
    """Measure every occupancy cell at updates before this step; afterwards a random fraction."""
    occ_threshold: float = 0.01
    """A cell is occupied when its decayed maximum of density * step size exceeds min(this, the mean)."""
    occ_decay: float = 0.95
    """Decay of a cell's value at each measurement."""
    early_stop_eps: float = 1e-4
    """Stop marching a ray once its transmittance falls below this (training and rendering)."""
    train_prune: bool = True
    """During training, evaluate densities without gradient first and drop samples behind the early-stop
    point before the differentiable pass (fewer backward evaluations once surfaces form)."""
    eval_images: int = 0
    """Evaluate on at most this many test images, evenly spaced (0: all of them)."""
    checkpoint_every: int = 2000
    """Write ckpt_XXXXX.pt every this many steps (0: only at the end and on Ctrl-C)."""
    keep_checkpoints: int = 3
    """Keep only the newest this many checkpoints (0: keep all)."""
    eval_every: int = 0
    """Evaluate PSNR/SSIM on the test split every this many steps (0: only at the end)."""
    resume: bool = False
    """Continue from the newest checkpoint in the output folder."""
    progress: bool = True
    """Show a progress bar."""
    backend: Literal["auto", "torch", "cuda"] = "auto"
    """Hash-grid encoding: tiny-cuda-nn, the pure-PyTorch reference, or auto (CUDA when available)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device of the model; auto takes cuda when a GPU is visible, else cpu."""


@dataclass
class CNGPConfig(NGPConfig):
    """Train a compressed hash-grid NeRF (``cngp``): the ngp recipe plus learned masks over the hash-table
    entries, quantization-aware training of the kept values and a rate penalty, written as per-level
    entropy-coded integers, float16 MLPs and the occupancy grid bit-packed and entropy/zlib coded."""

    out: Path = Path("runs/cngp")
    """Output folder: checkpoints ckpt_XXXXX.pt, config.json and metrics.json."""
    lambda_rate: float = 1e-4
    """Weight of the rate term (estimated bits per hash-table parameter) in the loss; larger gives smaller
    files and lower quality (3e-5 to 1e-3 is the useful range)."""
    rate_ramp: float = 0.1
    """Ramp the rate weight linearly from 0 over this fraction of the run (0: full weight from step 1)."""
    rate_every: int = 1
    """Add the rate term every this many steps, scaled by this factor (saves time on large tables)."""
    hash_bits: int = 8
    """Bits per quantized hash-table value (integers in [-(2^(bits-1) - 1), 2^(bits-1) - 1]), 2..16."""
    mask_lr: float = 0.05
    """Adam learning rate of the mask logits."""
    step_lr: float = 1e-4
    """Adam learning rate of the per-level quantization steps."""
    qat_start: float = 0.4
    """Fraction of the run after which the hash table is quantized in the forward pass (the steps are
    initialised from the table then); masks apply from the start."""
    mask_granularity: Literal["entry", "feature"] = "entry"
    """One mask per hash-table entry (all its features together) or one per feature."""
    mlp_dtype: Literal["float16", "float32"] = "float16"
    """Storage of the MLP weights in the file (the trained weights are rounded to it before the final
    evaluation, so the metrics describe the file)."""
