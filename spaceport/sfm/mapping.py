"""Mapping attempts: run a mapper with a camera setting, keep the largest model, give per-photo intrinsics where
asked, remove bad cameras; when too few photos are in, try the other mapper / camera setting and keep the best."""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pycolmap

from spaceport.formats import FramesManifest
from spaceport.formats.sfm import LeftOutPhoto, MappingAttempt
from spaceport.progress import Progress
from spaceport.sfm.config import SfmConfig
from spaceport.sfm.features import assign_cameras, mapping_groups
from spaceport.sfm.gate import remove_bad_cameras
from spaceport.sfm.intrinsics import focal_disagreement, refine_per_photo

MIN_REGISTERED = 3


@dataclass
class Outcome:
    """One attempt's result: the model kept (None when it registered too few photos) and why photos are out."""

    attempt: MappingAttempt
    model: pycolmap.Reconstruction | None = None
    model_sizes: list[int] = field(default_factory=list)
    left_out: list[LeftOutPhoto] = field(default_factory=list)
    # photos whose own focal length differs from their shared camera's by more than config.focal_disagreement
    # (name -> own / shared), kept shared because the camera mode was chosen explicitly
    focal_disagreement: dict[str, float] = field(default_factory=dict)

    @property
    def registered(self) -> int:
        return self.model.num_reg_images() if self.model is not None else 0

    def rank(self) -> tuple[int, float]:
        """Most photos after the camera check, then the lowest error."""
        error = self.attempt.mean_reprojection_error_px
        return (self.registered, -(error if error is not None else float("inf")))


def run_mapper(database: Path, images_dir: Path, output: Path, mapper: str, config: SfmConfig, total: int,
               progress: Progress) -> dict[int, pycolmap.Reconstruction]:
    shutil.rmtree(output, ignore_errors=True)
    output.mkdir(parents=True)
    if mapper == "global":
        options = pycolmap.GlobalPipelineOptions()
        options.num_threads = config.num_threads
        options.random_seed = config.seed
        with progress.task("sfm: global mapping (GLOMAP)", total=None):
            return pycolmap.global_mapping(database, images_dir, output, options)
    options = pycolmap.IncrementalPipelineOptions()
    options.num_threads = config.num_threads
    options.random_seed = config.seed
    with progress.task("sfm: incremental mapping", total=total) as task:
        # the callback fires per registered image (across all models); cap at the total for the bar
        counter = {"n": 2}
        task.update(completed=2)

        def next_image() -> None:
            counter["n"] += 1
            task.update(completed=min(counter["n"], total))

        return pycolmap.incremental_mapping(database, images_dir, output, options, next_image_callback=next_image)


def _left_out_by_mapping(names: list[str], models: list[pycolmap.Reconstruction],
                         best: pycolmap.Reconstruction) -> list[LeftOutPhoto]:
    in_best = {best.image(i).name for i in best.reg_image_ids()}
    elsewhere = {m.image(i).name for m in models if m is not best for i in m.reg_image_ids()}
    left_out = []
    for name in names:
        if name in in_best:
            continue
        if name in elsewhere:
            left_out.append(LeftOutPhoto(name=name, test="separate_model", reason=(
                f"registered in a separate, smaller model ({len(models)} models); only the largest is kept")))
        else:
            left_out.append(LeftOutPhoto(name=name, test="not_registered", reason=(
                "COLMAP found no pose for it (too few verified matches with the registered photos)")))
    return left_out


def attempt(database: Path, images_dir: Path, workdir: Path, frames: FramesManifest, mapper: str, camera_mode: str,
            config: SfmConfig, progress: Progress, note: str = "") -> Outcome:
    """Map with ``camera_mode``'s shared cameras, keep the largest model, split per photo where asked (or, with
    camera_mode auto, where photos sharing a camera disagree on its focal length), check the cameras."""
    started = time.perf_counter()
    names = [f.file for f in frames.frames]
    assign_cameras(database, frames, mapping_groups(frames, camera_mode))
    models = list(run_mapper(database, images_dir, workdir, mapper, config, len(names), progress).values())
    sizes = sorted((m.num_reg_images() for m in models), reverse=True)
    record = MappingAttempt(mapper=mapper, camera_mode=camera_mode, registered=0, removed=0, seconds=0.0, note=note)
    if not models or sizes[0] < MIN_REGISTERED:
        record.seconds = round(time.perf_counter() - started, 1)
        return Outcome(attempt=record, model_sizes=sizes, left_out=[
            LeftOutPhoto(name=name, test="not_registered", reason="COLMAP found no pose for it") for name in names])
    best = max(models, key=lambda m: m.num_reg_images())
    left_out = _left_out_by_mapping(names, models, best)
    disagreeing = {}
    if camera_mode != "per-image":
        disagreeing = {name: round(ratio, 3) for name, ratio in focal_disagreement(best).items()
                       if abs(ratio - 1) > config.focal_disagreement}
    if camera_mode == "per-image" or (disagreeing and config.camera_mode == "auto"):
        with progress.task("sfm: a focal length per photo", total=None):
            best = refine_per_photo(best, frames, config)
        if camera_mode != "per-image":
            record.note += (f"; split per photo: {len(disagreeing)} photo(s) fit a focal length more than "
                            f"{config.focal_disagreement:.0%} away from their shared camera's")
        record.mapped_with, record.camera_mode, disagreeing = camera_mode, "per-image", {}
    with progress.task("sfm: camera check", total=None):
        removed = remove_bad_cameras(best, config)
    best.tear_down()  # the cameras, rigs and frames of photos not in the model go too: training never sees them
    record.registered = best.num_reg_images()
    record.removed = len(removed)
    record.mean_reprojection_error_px = round(float(best.compute_mean_reprojection_error()), 4)
    record.seconds = round(time.perf_counter() - started, 1)
    return Outcome(attempt=record, model=best, model_sizes=sizes, left_out=left_out + removed,
                   focal_disagreement=disagreeing)


def alternatives(frames: FramesManifest, mapper: str, camera_mode: str) -> list[tuple[str, str, str]]:
    """What to try, in order, when the first model holds too few photos: (mapper, camera mode, why). First the
    other mapper, then the same mapper with another number of shared cameras while mapping, if there is one."""
    other = "global" if mapper == "incremental" else "incremental"
    tries = [(other, camera_mode, f"the {mapper} mapper's model held too few photos")]
    shared = len(mapping_groups(frames, camera_mode))
    for mode in ("single", "exif"):
        count = len(mapping_groups(frames, mode))
        if mode != camera_mode and count != shared:
            tries.append((mapper, mode, f"mapping with {count} shared camera(s) instead of {shared}"))
            break
    return tries


def map_with_attempts(database: Path, images_dir: Path, models_dir: Path, frames: FramesManifest,
                      camera_mode: str, config: SfmConfig, progress: Progress) -> tuple[Outcome, list[Outcome]]:
    """The best outcome and every attempt made (the first with the configured mapper and camera mode)."""
    total = len(frames.frames)
    plan = [(config.mapper, camera_mode, "the configured mapper and camera mode"),
            *alternatives(frames, config.mapper, camera_mode)]
    outcomes: list[Outcome] = []
    for number, (mapper, mode, why) in enumerate(plan):
        best = max(outcomes, key=Outcome.rank) if outcomes else None
        if best is not None and best.registered >= config.retry_below_fraction * total:
            break
        if number:
            progress.log(f"sfm: the best model holds {best.registered}/{total} photos; trying mapper {mapper}, "
                         f"camera mode {mode} ({why})")
        outcomes.append(attempt(database, images_dir, models_dir / f"{number}_{mapper}_{mode}", frames, mapper, mode,
                                config, progress, note=why))
    best = max(outcomes, key=Outcome.rank)
    best.attempt.kept = True
    return best, outcomes


def attempts_summary(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    return [o.attempt.model_dump() for o in outcomes]
