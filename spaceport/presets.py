"""The one ``PipelineConfig`` that holds every stage's settings, and the presets: whole configs, defined here only.

A job's config is a preset with the user's settings (``"train.steps": 3000``) applied on top. Settings are checked
against the models before anything runs: an unknown key names the closest valid one.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from spaceport.compress.config import CompressConfig
from spaceport.errors import SpaceportError
from spaceport.ingest.config import IngestConfig
from spaceport.report import ReportConfig
from spaceport.sfm.config import SfmConfig
from spaceport.splat.config import TrainConfig


class PipelineConfig(BaseModel):
    """Every stage's settings; job.json stores the resolved one that ran."""

    model_config = ConfigDict(extra="forbid")

    ingest: IngestConfig = Field(default_factory=IngestConfig)
    sfm: SfmConfig = Field(default_factory=SfmConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    compress: CompressConfig = Field(default_factory=CompressConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)


# Liberty (116 internet photos, 36 cameras, appearance on), same SfM, held-out PSNR on 17 photos (NeRF-W) after
# 3,000 steps: 300k Gaussians 18.20 dB, 500k 17.93, 700k 17.33, 1M 16.99 (bench/results/tune_gpu_liberty.json).
VARYING_APPEARANCE_CAP = 300_000


def _gpu_train(**settings: Any) -> TrainConfig:
    """The GPU presets' common training settings: MCMC, full resolution, up to 4 held-out photos evaluated
    while training, a checkpoint every 2000 steps (each is hundreds of MB at these budgets)."""
    common = dict(max_image_width=None, strategy="mcmc", refine_start=500, refine_every=100, eval_views=4,
                  checkpoint_every=2_000, log_every=100, varying_appearance_cap=VARYING_APPEARANCE_CAP)
    return TrainConfig(**{**common, **settings})


def _gpu_compress() -> CompressConfig:
    """The GPU presets' splats (about 1M Gaussians at full resolution) have more to spare than the CPU preview's:
    pruning below 2 px and SH bands under 16/255 cost nothing measurable on monstree's held-out photos
    (22.0x smaller than the PLY against 19.0x with the defaults; bench/compress_quality.py)."""
    return CompressConfig(prune_threshold=2.0, sh_drop_threshold=16 / 255)


PRESETS: dict[str, PipelineConfig] = {
    # CPU-sized: monstree (20 training views) in a few minutes on 2 cores with the torch renderer.
    "preview": PipelineConfig(
        ingest=IngestConfig(max_size=1000),
        sfm=SfmConfig(max_image_size=1000),
        train=TrainConfig(
            max_image_width=200, steps=1500, sh_degree=1, sh_degree_interval=500, cap_max=15_000,
            refine_start=200, refine_stop=1000, refine_every=100, reset_opacity_every=3000,
            checkpoint_every=250, log_every=25, num_renders=3,
        ),
    ),
    # Full resolution, gsplat on the GPU, sized for photos -> SOG in about 2 minutes on an H200 (issue 13). MCMC
    # grown fast to its budget (25k Gaussians per training megapixel, at most 1M), then a short run: with 20-200
    # photos held-out PSNR peaks after about 2,000 steps and then falls as the splat memorises what few photos see.
    # Measured on monstree (bench/gpu_tune.sh, held-out PSNR every 250 steps; then with per-photo appearance and the
    # NeRF-W right-half scores, since monstree's COLMAP model had two cameras): 1M Gaussians by step 1,200, best
    # 20.81 dB at 1,750, 20.64 at 3,000; a 500k budget 20.32, 2M 19.99; coarse to fine and SH degree 1 no better.
    # The old 7k-step, 380k, coarse-to-fine recipe: 19.87 dB at its best, 19.45 at the end, twice the time.
    # Stop 20, same session (bench/results/tune_gpu_monstree_stop20.json): standard 20.19; scale_reg 0.05 20.12,
    # opacity_reg 0.03 19.79, packed 20.05, lr_means x2 19.53, SH degree 3 19.18, 5,000 steps 19.71, 600k 19.78.
    # Stop 21: the best evaluation's splat is kept (train.keep_best): photos -> SOG 84.8 s, 20.59 dB from step 2,000
    # over step 3,000's 20.52 (results/e2e_gpu_monstree_keep_best.json); a dense MVS start and the background
    # shell did not help (tune_gpu_monstree_mvs_init.json, tune_gpu_monstree_stop21.json).
    # Stop 22 (tune_gpu_monstree_dropout_seeds.json): six runs, three SfM results, 20.17 dB on average (19.76-20.36;
    # seeds alone move it 0.56 dB); gaussian_dropout 0.1-0.35 19.98 over five, SSIM weight 0.1 20.06, black 18.98.
    "standard": PipelineConfig(
        ingest=IngestConfig(max_size=1600),
        sfm=SfmConfig(max_image_size=1600),
        train=_gpu_train(steps=3_000, refine_start=100, refine_stop=2_000, gaussians_per_megapixel=25_000,
                         cap_max=1_000_000, eval_every=250, early_stop_patience=4),
        compress=_gpu_compress(),
    ),
    # More time: a coarse-to-fine start and 5,000 steps at the standard budget. On monstree (20 photos) it buys
    # nothing: 19.86 dB at the end, best 20.21 at 2,500, against standard's 20.19 in the same session; the old 2M
    # budget lost 0.9 dB (19.37 against 20.25; bench/results/tune_gpu_monstree_stop20.json,
    # train_gpu_monstree_side_by_side.json). This preset, photos -> SOG (results/e2e_gpu_monstree_quality.json):
    # 104 s, stopped early at 4,250 steps, 19.79 dB against standard's 19.99 in 89 s the same session.
    "quality": PipelineConfig(
        ingest=IngestConfig(max_size=1600),
        sfm=SfmConfig(max_image_size=1600),
        train=_gpu_train(steps=5_000, refine_start=100, refine_stop=3_500, resolution_schedule=[(2, 1_000)],
                         gaussians_per_megapixel=25_000, cap_max=1_000_000, eval_every=250,
                         early_stop_patience=6),
        compress=_gpu_compress(),
    ),
}


class SettingsError(SpaceportError):
    """A setting that does not exist or does not validate."""


def resolve_config(preset: str = "standard", settings: Mapping[str, Any] | None = None) -> PipelineConfig:
    """``PRESETS[preset]`` with ``settings`` ({"stage.field": value}) applied; raises SettingsError."""
    if preset not in PRESETS:
        raise SettingsError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    data = PRESETS[preset].model_dump()
    for key, value in (settings or {}).items():
        _check_key(key)
        *parents, leaf = key.split(".")
        target = data
        for part in parents:  # every part exists: _check_key accepted the path
            target = target[part]
        target[leaf] = value
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise SettingsError(f"invalid setting {where}={error.get('input')!r}: {error['msg']}") from exc


def setting_keys(model: type[BaseModel] = PipelineConfig, prefix: str = "") -> list[str]:
    """Every dotted key a setting may name (``train.steps``, ``compress.sort_weights.position``, ...)."""
    keys = []
    for name, field in model.model_fields.items():
        nested = _model_type(field.annotation)
        keys += setting_keys(nested, f"{prefix}{name}.") if nested else [f"{prefix}{name}"]
    return keys


def _check_key(key: str) -> None:
    valid = setting_keys()
    if key in valid:
        return
    if any(v.startswith(key + ".") for v in valid):
        raise SettingsError(f"setting {key} is a group; name one of its fields ({key}.…)")
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else f"; settings are STAGE.FIELD, e.g. {valid[0]}"
    raise SettingsError(f"unknown setting {key}{hint}")


def _model_type(annotation: Any) -> type[BaseModel] | None:
    candidates = [annotation, *get_args(annotation)]
    return next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
