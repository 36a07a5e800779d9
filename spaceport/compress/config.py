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
    """Settings of the compress stage (and of ``spaceport compress``)."""

    model_config = ConfigDict(extra="forbid")

    sh_bands: int = Field(3, ge=0, le=3, description="SH bands kept (0-3); lowered to what the PLY holds")
    palette_size: int | None = Field(None, ge=1, le=MAX_PALETTE,
                                     description="SH palette entries; None: about one per 8 splats "
                                                 "(a power of two, 1024..65536)")
    kmeans_iterations: int = Field(10, ge=0, le=100, description="Lloyd iterations of the SH palette")
    sort: Literal["plas", "morton", "none"] = Field(
        "plas", description="order of splats in the textures: plas (self-organizing grid, see sort_weights), "
        "morton (3D Z-order, as splat-transform; measured 1.3% smaller on a trained preview), none")
    sort_iterations: int = Field(4, ge=1, le=64, description="PLAS improvement steps per blur radius")
    sort_radius_shrink: float = Field(0.9, gt=0.1, lt=1.0, description="PLAS radius factor per round")
    sort_weights: FeatureWeights = Field(default_factory=FeatureWeights,
                                         description="weight of each attribute in the PLAS sort")
    seed: int = 0
    unbundled: bool = Field(False, description="also write meta.json + .webp files beside the .sog")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    webp_method: int = Field(3, ge=0, le=6, description="WebP effort (0 fast .. 6 smallest)")
    webp_quality: int = Field(50, ge=0, le=100, description="lossless WebP effort within a method")
