"""Settings of the compress stage."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from spaceport.formats.sog import MAX_PALETTE


class FeatureWeights(BaseModel):
    """How much each attribute counts when deciding which Gaussians are neighbours (after standardizing).

    The default sorts by position alone. Measured on a trained splat (monstree CPU preview, 38k Gaussians)
    with lossless WebP: weighting colour, opacity, scale and rotation as well (1, 1, 0.5, 0.5, 0.25) makes
    the neighbour distance over all attributes smaller but the .sog 3% larger, because the texture that
    compresses best (the high bytes of the positions: long runs when neighbours share them) loses far
    more than the colour and scale textures gain; even a colour weight of 0.15 costs more than it saves.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    position: float = Field(1.0, ge=0)
    colour: float = Field(0.0, ge=0)
    opacity: float = Field(0.0, ge=0)
    scale: float = Field(0.0, ge=0)
    rotation: float = Field(0.0, ge=0)

    @model_validator(mode="after")
    def _something_counts(self) -> FeatureWeights:
        if not any(getattr(self, name) > 0 for name in type(self).model_fields):
            raise ValueError("at least one attribute weight must be positive")
        return self


class CompressConfig(BaseModel):
    """Settings of the compress stage (and of ``spaceport compress``, ``spaceport export``).

    The defaults spend the quality margin that SOG's own precision leaves: chosen by the rendered PSNR at the
    held-out photos on two trained CPU splats of monstree (bench/README.md, "Compression: the size-quality
    curve"): the 200 px preview (15k Gaussians, SH degree 1) comes out 12.5x smaller than its PLY at 0.17 dB
    held-out loss, a 256 px SH-degree-3 splat (40k Gaussians) about 29x at 0.03 dB. Each field says what it
    measured alone (against the other defaults, without pruning and SH dropping, on the preview: 144 KB,
    0.126 dB).
    """

    model_config = ConfigDict(extra="forbid")

    sh_bands: int = Field(3, ge=0, le=3, description="SH bands kept (0-3); lowered to what the PLY holds")
    palette_size: int | None = Field(
        None, ge=1, le=MAX_PALETTE,
        description="SH palette entries; None: about one per 64 splats (a power of two, 256..65536). On the "
                    "SH-3 splat 512 entries against 4,096: 18% smaller, no held-out loss")
    kmeans_iterations: int = Field(10, ge=0, le=100, description="Lloyd iterations of the SH palette")
    kmeans_fit_points: int | None = Field(
        16, ge=1, description="the palette's centroids are fitted on a random sample of this many splats per "
        "entry, then every splat takes its nearest entry (None: fit on all); the Lloyd steps dominate the encode "
        "time and cost in proportion to the splats they see")
    sort: Literal["plas", "morton", "none"] = Field(
        "morton", description="order of splats in the textures: morton (3D Z-order, as splat-transform), plas "
        "(self-organizing grid, see sort_weights), none. PLAS does not earn its cost on trained splats: "
        "preview 144.2 KB in 0.61 s against Morton's 144.1 KB in 0.17 s; SH-3 splat PLAS 1% smaller, 3x slower")
    sort_iterations: int = Field(4, ge=1, le=64, description="PLAS improvement steps per blur radius")
    sort_radius_shrink: float = Field(0.9, gt=0.1, lt=1.0, description="PLAS radius factor per round")
    sort_weights: FeatureWeights = Field(default_factory=FeatureWeights,
                                         description="weight of each attribute in the PLAS sort")
    prune_threshold: float = Field(
        1.0, ge=0,
        description="remove Gaussians whose largest contribution to any training view (opacity x projected "
                    "footprint, in pixels at the training resolution) is below this; 0 keeps all. Needs the "
                    "workspace's cameras (the compress stage, `spaceport export WORKSPACE`); a bare PLY is "
                    "not pruned. 1 px: 5% of the preview's Gaussians (-4.7% bytes, no measurable loss), 11% of "
                    "the SH-3 splat's (0.05 dB)")
    sh_drop_threshold: float = Field(
        8 / 255, ge=0, le=1,
        description="zero a Gaussian's highest SH bands while the most they can change its colour over all "
                    "view directions, times its opacity, stays below this (colour units: 1/255 is one 8-bit "
                    "step); 0 keeps every band. 8/255: 94% of the preview's Gaussians lose their band "
                    "(-9% bytes, 0.04 dB held-out, 0.1 dB at the training views)")
    position_bits: int | None = Field(
        None, ge=8, le=16,
        description="bits kept of SOG's 16-bit positions (fewer: smaller means_l.webp); None: the fewest that move "
                    "the median Gaussian by at most 0.15 of its middle scale (finer splats keep more): 12 on the "
                    "preview (16 bits: +16% bytes), 13 on the SH-3 splat, where 11 lost 0.15 dB")
    rotation_bits: int = Field(5, ge=4, le=8, description="bits kept of each stored quaternion component (of 8); 5: "
                               "-7% bytes against 7, < 0.02 dB")
    opacity_bits: int = Field(6, ge=4, le=8, description="bits kept of the opacity byte (of 8); 6: -1%, "
                              "no measurable loss")
    scale_levels: int = Field(64, ge=2, le=256, description="entries of the scale codebook used (at most 256); 64: "
                              "-4% against 128, 0.05 dB; 32 lost 0.1-0.3 dB")
    colour_levels: int = Field(32, ge=2, le=256, description="entries of the DC colour codebook used; 32: -7% "
                               "against 128, < 0.01 dB; 16 lost 0.06 dB")
    sh_levels: int = Field(32, ge=2, le=256, description="entries of the SH palette's value codebook used; 32: "
                           "-2% against 128 on the SH-3 splat, no loss")
    seed: int = 0
    unbundled: bool = Field(False, description="also write meta.json + .webp files beside the .sog")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    webp_method: int = Field(3, ge=0, le=6, description="WebP effort (0 fast .. 6 smallest)")
    webp_quality: int = Field(50, ge=0, le=100, description="lossless WebP effort within a method")
