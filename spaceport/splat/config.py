"""Settings of the train stage (the presets that set them are in ``spaceport.presets``).

Defaults follow the INRIA recipe (learning rates, L1 + 0.2 D-SSIM, SH degree raised every 1000 steps)
with the changes that made held-out views better on sparse captures (see ``TrainConfig``'s field notes
and bench/README.md): a Gaussian budget, SH limited to degree 2 by default, scale and opacity
regularisation, and a random background.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainConfig(BaseModel):
    """Everything ``run_train`` reads. Field defaults are the ``standard`` recipe."""

    model_config = ConfigDict(extra="forbid")

    # -- data ----------------------------------------------------------------------------------------
    max_image_width: int | None = Field(None, ge=16, description="downscale images to at most this width")
    holdout_every: int = Field(8, ge=0, description="every Nth image (sorted by name) is held out; 0 = none")
    max_init_points: int | None = Field(None, ge=1, description="random subset of the sparse points")
    background_points: int = Field(
        0, ge=0, description="Gaussians started on a sphere around the scene and the cameras, coloured from the "
        "photos, for the sky and far background that SfM has no points for; 0: none (monstree preview: 2000 of its "
        "15k cost 0.36 dB held-out; not measured on the GPU presets yet)")
    scene_extent: float | None = Field(
        None, gt=0.0, description="the scene's size in model units, which scales the position learning rate; "
        "None: measured (spaceport.splat.scene.scene_extent: the cameras' spread, or the sparse points' where "
        "smaller)")
    resolution_schedule: list[tuple[int, int]] = Field(
        default_factory=list,
        description="coarse to fine: [[factor, until_step], ...] trains on images downscaled by factor while "
        "step < until_step (factors falling, steps rising), then at full size; [] = full size throughout",
    )

    # -- schedule ------------------------------------------------------------------------------------
    steps: int = Field(30_000, ge=1)
    seed: int = 0
    sh_degree: int = Field(
        2, ge=0, le=3,
        description="highest SH degree. 3 (INRIA) lets view-dependent colour memorise few photos; "
        "2 keeps most of the specular detail and generalises better",
    )
    sh_degree_interval: int = Field(1000, ge=1, description="raise the SH degree by one every N steps")
    early_stop_patience: int = Field(
        0, ge=0, description="stop once this many held-out evaluations in a row (every eval_every steps) have not "
        "beaten the best PSNR by early_stop_min_gain; 0 = never. The held-out views then steer the run, so its "
        "final held-out figures are slightly optimistic",
    )
    early_stop_min_gain: float = Field(0.02, ge=0.0, description="dB an evaluation must gain to count as a rise")
    keep_best: bool = Field(
        True, description="with eval_every: export the splat of the best held-out evaluation when the last step "
        "scores lower on the same views (Keras' restore_best_weights). Held-out PSNR peaks before the end on sparse "
        "captures (monstree, H200: 20.34 dB at step 2,250, 19.86 at 3,000). Like early stopping it lets the "
        "held-out views choose, so the final figures are slightly optimistic; it keeps one copy of the parameters")

    # -- optimiser (INRIA learning rates; means' are scaled by the scene extent) -----------------------
    lr_means: float = 1.6e-4
    lr_means_final: float = 1.6e-6
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacities: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20

    # -- loss ----------------------------------------------------------------------------------------
    ssim_lambda: float = Field(0.2, ge=0.0, le=1.0)
    opacity_reg: float | None = Field(
        None, ge=0.0, description="weight of the mean opacity; None: 0 (default), 0.01 (mcmc, as its paper)")
    scale_reg: float | None = Field(
        None, ge=0.0, description="weight of the mean scale; None: 0 (default), 0.01 (mcmc, as its paper)")
    gaussian_dropout: float = Field(
        0.0, ge=0.0, lt=1.0,
        description="DropGaussian (CVPR 2025): each training step hides each Gaussian with a probability rising "
        "linearly from 0 to this at the last step, and divides the kept ones' opacity by the share kept, so Gaussians "
        "behind others are seen and trained too (sparse captures over-fit less); evaluation and export use all. "
        "0: off. Monstree, H200, `standard`: 19.98 dB held-out over five runs at 0.1-0.35 against 20.17 over six "
        "without, 5-20 % more steps/s (bench/README.md, stop 22)")
    background: Literal["random", "black", "white"] = Field(
        "random", description="random: a new colour each step, so transparency cannot fake the backdrop"
    )

    # -- densification -------------------------------------------------------------------------------
    strategy: Literal["default", "mcmc"] = "default"
    cap_max: int = Field(
        1_000_000, ge=1,
        description="Gaussian budget: MCMC's cap_max, and the most DefaultStrategy may grow to",
    )
    gaussians_per_megapixel: float | None = Field(
        None, gt=0.0,
        description="budget from the photos: this many Gaussians per megapixel of training images, at most "
        "cap_max; None: cap_max",
    )
    varying_appearance_cap: int | None = Field(
        None, ge=1,
        description="a lower budget when per-photo appearance is on (several cameras or exposures): their changing "
        "lighting and passers-by are what extra Gaussians learn there; None: no other cap",
    )
    mcmc_grow_factor: float | None = Field(
        None, gt=1.0,
        description="MCMC: Gaussians multiply by this at each refinement until the budget; None: the factor that "
        "reaches the budget halfway through the refine window (at least gsplat's 1.05)",
    )
    init_opacity: float | None = Field(None, gt=0.0, lt=1.0, description="None: 0.1 (default), 0.5 (mcmc)")
    init_scale: float | None = Field(
        None, gt=0.0, description="multiplier of the nearest-neighbour scale; None: 1.0 (default), 0.1 (mcmc)")
    refine_start: int = Field(500, ge=0)
    refine_stop: int = Field(15_000, ge=0)
    refine_every: int = Field(100, ge=1)
    reset_opacity_every: int = Field(3000, ge=1)
    grow_grad2d: float = Field(2e-4, gt=0.0)
    absgrad: bool = False
    mcmc_noise_lr: float = 5e5

    # -- runtime -------------------------------------------------------------------------------------
    backend: Literal["auto", "gsplat", "torch"] = "auto"
    ssim_kernel: Literal["auto", "separable", "reference", "triton"] = Field(
        "auto", description="auto: the fused Triton kernel on CUDA when Triton imports and passes its self-check, "
        "else separable convolutions; reference: the 2D-window twin")
    optimizer: Literal["auto", "adam", "fused", "selective"] = Field(
        "auto",
        description="auto: fused Adam on CUDA, adam on the CPU. selective: gsplat's SelectiveAdam (updates only "
        "the Gaussians the view sees, no bias correction; a PyTorch twin on the CPU)",
    )
    packed: bool = Field(False, description="gsplat's packed rasterization (backend gsplat only)")
    device: Literal["auto", "cuda", "cpu"] = "auto"
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(50, ge=1)
    eval_every: int = Field(0, ge=0, description="also evaluate held-out views every N steps; 0 = at end")
    eval_views: int = Field(
        0, ge=0, description="views of the evaluations every eval_every steps (the first N held out); 0 = all. "
        "The final evaluation uses all")
    num_renders: int = Field(3, ge=0, description="side-by-side held-out PNGs written at the end")

    # -- appearance (spaceport.splat.appearance) -----------------------------------------------------
    appearance: Literal["auto", "off", "affine", "bilateral"] = Field(
        "auto", description="a colour transform per training photo before the loss; auto: affine when the photos "
        "come from several cameras or their exposure varies; evaluation then uses the NeRF-W protocol")
    appearance_lr: float = Field(5e-3, gt=0.0, description="Adam learning rate of the per-photo transforms")
    appearance_reg: float = Field(1e-2, ge=0.0, description="weight of the transforms' distance from the identity")

    @model_validator(mode="after")
    def _check_resolution_schedule(self) -> TrainConfig:
        factors = [factor for factor, _ in self.resolution_schedule]
        until = [step for _, step in self.resolution_schedule]
        if any(f < 2 for f in factors) or factors != sorted(set(factors), reverse=True) \
                or until != sorted(set(until)) or any(s < 1 for s in until):
            raise ValueError(f"resolution_schedule {self.resolution_schedule}: factors must be integers >= 2 that "
                             "fall and steps must rise, e.g. [[4, 700], [2, 2000]]")
        return self

    def resolved(self) -> TrainConfig:
        """A copy with the strategy-dependent defaults (fields left None) filled in."""
        mcmc = self.strategy == "mcmc"
        defaults = {
            "opacity_reg": 0.01 if mcmc else 0.0,
            "scale_reg": 0.01 if mcmc else 0.0,
            "init_opacity": 0.5 if mcmc else 0.1,
            "init_scale": 0.1 if mcmc else 1.0,
        }
        return self.model_copy(update={k: v for k, v in defaults.items() if getattr(self, k) is None})
