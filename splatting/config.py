"""Configurations of Gaussian-splatting training, as dataclasses with one comment per field.

The CLI is generated from these (tyro), so each field's docstring is its ``--help`` text. Defaults are the
values of Kerbl et al. 2023 (3DGS) and of gsplat's ``DefaultStrategy``. Schedule steps are written for
the reference run of 30000 steps and scaled to the run's length (see :class:`DensifyConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import tyro

from scenezip.splatting.surfels import SurfelLossConfig


@dataclass
class DensifyConfig:
    """Adaptive density control (clone, split, prune, opacity reset) and the SH degree schedule.

    Step fields are given for a 30000-step run (``reference_steps``) and multiplied by
    ``schedule_scale`` (default ``steps / reference_steps``), so a 1500-step CPU run refines every 5
    steps from step 25 to 750 and resets opacities every 150 steps: the same shape, compressed.
    """

    enabled: bool = True
    """Grow and prune Gaussians; off keeps the initial set (opacity resets and the SH schedule still run)."""
    grad_threshold: float = 0.0002
    """Grow Gaussians whose mean screen-space gradient norm (in NDC units, as gsplat normalizes) exceeds this."""
    clone_scale: float = 0.01
    """Clone growing Gaussians with max scale <= clone_scale * scene extent; split larger ones."""
    split_samples: int = 2
    """A split Gaussian becomes this many, sampled from itself."""
    split_scale_div: float = 1.6
    """Split children get scales / split_scale_div (0.8 * split_samples in 3DGS)."""
    prune_opacity: float = 0.005
    """Prune Gaussians with opacity below this at every refinement."""
    prune_scale: float = 0.1
    """After the first opacity reset, also prune Gaussians with max scale > prune_scale * scene extent."""
    reset_opacity: float = 0.01
    """Opacity resets clamp every opacity to at most this value."""
    refine_start: int = 500
    """First refinement happens after this step (reference-run steps)."""
    refine_stop: int = 15_000
    """No refinement (and no opacity reset) from this step on (reference-run steps)."""
    refine_every: int = 100
    """Refine every this many steps (reference-run steps)."""
    reset_every: int = 3000
    """Reset opacities every this many steps (reference-run steps)."""
    sh_degree_every: int = 1000
    """Raise the SH degree used for rendering by one every this many steps (reference-run steps)."""
    reference_steps: int = 30_000
    """Run length the step fields above are written for."""
    schedule_scale: Optional[float] = None
    """Factor on every step field; None means steps / reference_steps, 1.0 keeps the 3DGS numbers."""
    max_gaussians: int = 0
    """Cap on the Gaussian count (0: no cap); when growth would exceed it, the highest gradients grow first."""


@dataclass
class GaussianTrainConfig:
    """Options every Gaussian method shares (3dgs, c3dgs and the surfel methods extend it)."""

    data: tyro.conf.Positional[Path]
    """Capture folder (Blender, nerfstudio/instant-ngp, COLMAP or LLFF), or a transforms.json inside one."""
    out: Path = Path("runs/3dgs")
    """Output folder: checkpoints ckpt_XXXXX.pt, the final gaussians.pt and metrics.json."""
    steps: int = 30_000
    """Optimizer steps (one training image per step)."""
    downscale: int = 1
    """Integer image downscale factor applied at load."""
    test_every: int = 8
    """Every N-th image (after sorting by name) is a test image, unless the dataset ships a split."""
    random_points: int = 100_000
    """Number of random initial points when the capture has no SfM points (Blender, nerfstudio without ply)."""
    background: Optional[tuple[float, float, float]] = None
    """RGB in [0, 1] rendered behind the Gaussians; None uses the dataset's (black for RGB captures)."""
    random_background: bool = False
    """Render on a random background colour each step; images with alpha are re-composited on the same colour,
    RGB images are not (which, as gsplat's random_bkgd, pushes the Gaussians to cover the whole view)."""
    init_opacity: float = 0.1
    """Opacity of the initial Gaussians."""
    init_scale: float = 1.0
    """Factor on the initial scale (root mean squared distance to the 3 nearest points)."""
    lr_means: float = 1.6e-4
    """Initial learning rate of the means, times the scene extent."""
    lr_means_final: float = 1.6e-6
    """Final learning rate of the means, times the scene extent (exponential decay over the run)."""
    lr_opacities: float = 5e-2
    """Learning rate of the opacity logits."""
    lr_scales: float = 5e-3
    """Learning rate of the log scales."""
    lr_quats: float = 1e-3
    """Learning rate of the quaternions."""
    ssim_lambda: float = 0.2
    """Loss is (1 - ssim_lambda) * L1 + ssim_lambda * (1 - SSIM), as in 3DGS."""
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    """Adaptive density control."""
    checkpoint_every: int = 5000
    """Write ckpt_XXXXX.pt every this many steps (0: only at the end and on Ctrl-C)."""
    keep_checkpoints: int = 3
    """Keep only the newest this many checkpoints (0: keep all)."""
    eval_every: int = 0
    """Evaluate PSNR/SSIM on the test split every this many steps (0: only at the end)."""
    seed: int = 0
    """Seed of image order, split sampling and random backgrounds."""
    backend: Literal["auto", "torch", "cuda"] = "auto"
    """Rasterizer: gsplat CUDA kernels, the pure-PyTorch reference, or auto (CUDA when available)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Device of the model; auto follows the backend (cuda backend -> cuda, torch backend -> cpu)."""
    rasterize_mode: Literal["classic", "antialiased"] = "classic"
    """classic is 3DGS; antialiased is Mip-Splatting's compensated 2D filter (gsplat)."""
    near_plane: float = 0.01
    """Gaussians closer to the camera than this are culled."""
    far_plane: float = 1e10
    """Gaussians farther than this are culled."""
    resume: bool = False
    """Continue from the newest checkpoint in the output folder."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class TrainConfig(GaussianTrainConfig):
    """Train 3D Gaussian splatting (Kerbl et al. 2023) on a capture."""

    sh_degree: int = 3
    """Maximum spherical-harmonic degree of the colours (0..3)."""
    lr_sh0: float = 2.5e-3
    """Learning rate of the DC colour coefficients."""
    lr_shN: float = 2.5e-3 / 20
    """Learning rate of the higher-order SH coefficients."""


@dataclass
class DistillConfig:
    """The conversion that ends a ``c3dgs`` run of recipe ``distill`` (as ``scenezip compress --data``)."""

    prune_weight: float = 0.005
    """Drop the Gaussians that contribute least to the training views, as many as together hold at most this
    fraction of all blend weight (0 keeps them). lego, 100 px: 0.005 -> 355 kB at 30.56 dB, 0.02 -> 312 kB at 30.47."""
    steps: int = 1000
    """Steps fitting the hash-grid colour field to the SH colours."""
    from_views: bool = True
    """Draw the distillation's samples as the training views see the scene (directions from the training cameras,
    Gaussians in proportion to their blend weight) instead of uniformly."""
    hash_rate_lambda: Optional[float] = None
    """Weight of the hash table's bits per parameter against the colour error while distilling; None: 2e-4 with
    from_views, else 1e-4 (3e-3 without color_dc)."""
    scale_stages: int = 3
    """R-VQ stages of the scales (lego, scales alone quantized: 6 stages 31.7 bits a Gaussian, 3 stages 16.4 bits
    for -0.011 dB)."""
    rot_stages: int = 3
    """R-VQ stages of the rotations (lego: 4 stages 21.4 bits a Gaussian, 3 stages 16.2 bits for -0.008 dB more)."""
    prune_opacity: float = 0.005
    """Drop Gaussians with opacity below this before converting."""


@dataclass
class C3DGSConfig(GaussianTrainConfig):
    """Train Compact-3DGS (Lee et al. 2024), compact 3D Gaussians with a hash-grid colour field and residual VQ
    of scale and rotation, and code them into a compact .scz file. Recipe distill (default) trains 3D Gaussians
    with SH colours, then prunes by blend weight and distils the colour field on the training views; recipe
    joint trains mask, colour field and R-VQ together from the start, as Lee et al."""

    out: Path = Path("runs/c3dgs")
    """Output folder: checkpoints ckpt_XXXXX.pt (recipe distill: those of the SH stage, in sh/), the final model.pt,
    scene.scz and metrics.json."""
    recipe: Literal["distill", "joint"] = "distill"
    """distill: the 3dgs loop with SH colours, then the conversion of `distill` (lego, 100 px, 2000 steps: 26.6x
    smaller than 3dgs at -0.25 dB); joint: Lee et al.'s joint training (19.0x at -0.76 dB). The options marked
    (joint) apply to joint only, those of `distill` and sh_degree / lr_shN to distill only."""
    distill: DistillConfig = field(default_factory=DistillConfig)
    """Recipe distill: the conversion after the SH stage."""
    sh_degree: int = 3
    """Recipe distill: maximum SH degree of the colours in the SH stage (0..3)."""
    lr_shN: float = 2.5e-3 / 20
    """Recipe distill: learning rate of the higher-order SH coefficients in the SH stage."""
    mask_lambda: float = 5e-4
    """(joint) Weight of the mean soft mask in the loss (Compact-3DGS: 5e-4); larger removes more Gaussians."""
    lr_masks: float = 1e-2
    """(joint) Learning rate of the mask logits."""
    mask_prune_every: int = 1000
    """(joint) After densification stops, drop masked Gaussians every this many steps (reference-run steps)."""
    color_log2_hashmap_size: Optional[int] = None
    """log2 entries per level of the colour field's hash table; None: (joint) 19 for unbounded captures, 16 for object
    captures (Blender-like, as Compact-3DGS on NeRF-synthetic) and 14 for captures under 64k pixels a view;
    (distill) growing with the Gaussian count, 2^10..2^19."""
    color_dc: bool = True
    """Each Gaussian keeps a base colour (a DC SH coefficient, R-VQ'd with dc_stages stages) and the colour field
    learns the view-dependent rest on top of it; off: the field learns all colour (Compact-3DGS)."""
    dc_stages: int = 3
    """R-VQ stages of the base colours (color_dc only; codes per stage: rvq_codebook_size)."""
    lr_sh0: float = 2.5e-3
    """Learning rate of the base colours (joint, color_dc only) or of the DC SH coefficients (distill's SH stage)."""
    color_levels: int = 16
    """Hash-grid levels of the colour field."""
    color_view_sh_degree: int = 3
    """(joint) SH degree of the colour field's view-direction encoding."""
    color_hidden_dim: Optional[int] = None
    """Width of the colour field's two hidden layers (stored in float16); None: 64 (Compact-3DGS), 32 for captures
    under 64k pixels a view (joint; demo scene: MLP 14.7 -> 5.3 kB, PSNR unchanged within noise) or under 16384
    Gaussians (distill)."""
    lr_color_grid: float = 1e-2
    """(joint) Learning rate of the colour field's hash table (100-step warm-up, x0.33 at 1/6, 1/2 and 5/6 of the
    run)."""
    lr_color_mlp: float = 1e-2
    """(joint) Learning rate of the colour field's MLP (same schedule)."""
    rvq_start: int = 29_000
    """(joint) Residual VQ of scale and rotation runs from this step on (reference-run steps; Compact-3DGS: 29000)."""
    rvq_stages: int = 6
    """(joint) R-VQ stages."""
    rvq_codebook_size: int = 64
    """Codes per R-VQ stage."""
    rot_stages: Optional[int] = 4
    """(joint) R-VQ stages of the rotations (None: rvq_stages). lego, 100 px, codebooks refitted at the end: 4 stages
    29.92 dB in 497 kB, 5 stages 29.92 dB in 523 kB, 6 stages 29.92 dB in 549 kB."""
    lr_codebooks: float = 1e-3
    """(joint) Learning rate of the R-VQ codebooks."""
    hash_zero_threshold: float = 0.1
    """Without hash_codec: when coding, hash-table values with |v| at or below this are stored as 0 (Compact-3DGS:
    0.1). Unused with hash_codec (the table is stored as trained)."""
    hash_codec: bool = True
    """(joint) Train the colour field's hash table through a learned entry mask and per-level learned-step quantizer
    (fields.hash_codec), rate-aware, and store it as trained; off: Compact-3DGS' zero-small + 8-bit table."""
    hash_rate_lambda: float = 3e-2
    """(joint) Weight of the hash table's estimated bits per parameter in the loss (hash_codec only); larger, smaller.
    On the demo scene: 0 -> 70 kB table (Compact-3DGS scheme) at 20.28 dB, 1e-2 -> 55 kB at 20.16 dB, 3e-2 -> 17 kB
    at 20.13."""
    hash_bits: int = 8
    """(joint) Bits of the hash table's per-level quantizer (hash_codec only)."""
    hash_qat_start: int = 15_000
    """(joint) The hash table is quantized in training from this step on (reference-run steps; hash_codec only)."""
    lr_hash_mask: float = 1e-2
    """(joint) Learning rate of the hash table's entry-mask logits (hash_codec only)."""
    lr_hash_step: float = 1e-4
    """(joint) Learning rate of the hash table's per-level quantizer steps (hash_codec only; the steps start near 1e-3,
    and 1e-3 let the rate term widen them tenfold within a short run)."""
    color_warmup: int = 100
    """(joint) Linear warm-up of the colour field's learning rate from 1% over this many steps (actual steps, not
    scaled: Compact-3DGS' 100; without it the young hash table diverges, measured on the demo scene)."""
    color_lr_decay_at: tuple[float, ...] = (1 / 6, 1 / 2, 5 / 6)
    """(joint) Fractions of the run after which the colour field's learning rate is multiplied by 0.33 (Compact-3DGS:
    5k, 15k and 25k of 30k)."""
    position_bits: Optional[int] = None
    """Bits per axis of the stored positions over the kept Gaussians' bounding box (1..21); None: the fewest that
    keep the rounding error under 0.1 of the median smallest Gaussian axis (8..21)."""


@dataclass
class SurfelTrainConfig(TrainConfig):
    """Train 2D Gaussian surfels (Huang et al. 2024) with normal-consistency and depth-distortion losses."""

    out: Path = Path("runs/2dgs")
    """Output folder: checkpoints ckpt_XXXXX.pt, the final surfels.pt and metrics.json."""
    lr_quats: float = 1e-2
    """Learning rate of the quaternions; a surfel's rotation is its normal and must turn where a 3D Gaussian
    can flatten by its scales instead (1e-3 left normals at 44 degrees after 300 steps, 1e-2 at 31)."""
    surfel: SurfelLossConfig = field(default_factory=SurfelLossConfig)
    """Surfel regularization (normal consistency, depth distortion) and its schedule."""

