"""The ingest stage: whatever the user gave under input/ -> normalized JPEGs and frames.json under images/, and the
masks given with photos (see spaceport.ingest.masks) under masks/."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from spaceport.formats.frames import MANIFEST_NAME, DroppedRecord, FramesManifest, write_frames
from spaceport.ingest.archive import extract_photos
from spaceport.ingest.config import IngestConfig
from spaceport.ingest.inputs import InputKind, InputPlan, inspect_input
from spaceport.ingest.masks import split_masks
from spaceport.ingest.photos import PhotoSet, ingest_photos
from spaceport.progress import Progress
from spaceport.workspace import SpaceportError, StageResult, Workspace, staged_dir

UNZIP_PREFIX = ".ingest-unzip-"


def run_ingest(ws: Workspace, config: IngestConfig, progress: Progress) -> StageResult:
    """Write normalized JPEGs and images/frames.json from ws.input_dir, and masks/ when masks were given; images/
    and masks/ appear only when complete, and a masks/ of an earlier run goes when there are none now."""
    started = time.perf_counter()
    plan = inspect_input(ws.input_dir, ws.root)
    for leftover in ws.root.glob(f"{UNZIP_PREFIX}*"):  # scratch of an earlier run that was killed
        shutil.rmtree(leftover, ignore_errors=True)
    with staged_dir(ws.images_dir) as staging, staged_dir(ws.masks_dir) as masks_staging:
        manifest, copied = _ingest(plan, ws, _Staging(staging, masks_staging), config, progress)
        _require_enough(manifest, config)
        write_frames(staging, manifest)
    masked = sum(frame.mask is not None for frame in manifest.frames)
    outputs = {"images": ws.rel(ws.images_dir), "frames": ws.rel(ws.images_dir / MANIFEST_NAME)}
    if masked:
        outputs["masks"] = ws.rel(ws.masks_dir)
    else:
        shutil.rmtree(ws.masks_dir, ignore_errors=True)
    progress.log(
        f"ingest: {len(manifest.frames)} images from {manifest.input} "
        f"({len(manifest.dropped)} dropped) into {ws.rel(ws.images_dir)}/"
        + (f", {masked} masks into {ws.rel(ws.masks_dir)}/" if masked else "")
    )
    return StageResult(
        stage="ingest",
        seconds=time.perf_counter() - started,
        outputs=outputs,
        metrics=_metrics(manifest, copied),
    )


@dataclass
class _Staging:
    images: Path
    masks: Path


def _ingest(
    plan: InputPlan, ws: Workspace, staging: _Staging, config: IngestConfig, progress: Progress
) -> tuple[FramesManifest, int]:
    for ignored in plan.ignored:
        progress.log(f"warning: {ignored.source}: {ignored.reason}", logging.WARNING)
    if plan.kind is InputKind.VIDEO:
        from spaceport.ingest.video import ingest_video  # PyAV is only needed for video input

        label = _relative(plan.files[0], ws)
        video = ingest_video(plan.files[0], label, staging.images, config, progress)
        manifest = FramesManifest(
            kind="video", input=label, frames=video.frames, dropped=video.dropped, video=video.summary
        )
        return manifest, 0
    if plan.kind is InputKind.ZIP:
        return _ingest_zip(plan.files[0], ws, staging, config, progress)
    photos = [(path, _relative(path, ws)) for path in plan.files]
    result, unmatched = _ingest_with_masks(photos, ws.input_dir, staging, config, progress)
    manifest = FramesManifest(
        kind="photos",
        input=_relative(ws.input_dir, ws),
        frames=result.frames,
        dropped=plan.ignored + unmatched + result.dropped,
    )
    return manifest, result.copied


def _ingest_with_masks(
    images: list[tuple[Path, str]], root: Path, staging: _Staging, config: IngestConfig, progress: Progress
) -> tuple[PhotoSet, list[DroppedRecord]]:
    """Photos and masks found under root -> images and masks in staging; also the masks that fit no photo."""
    split = split_masks(images, root, progress)
    result = ingest_photos(split.photos, staging.images, config, progress, split.masks, staging.masks)
    return result, split.unmatched


def _ingest_zip(
    archive: Path, ws: Workspace, staging: _Staging, config: IngestConfig, progress: Progress
) -> tuple[FramesManifest, int]:
    label = _relative(archive, ws)
    unzip_dir = Path(tempfile.mkdtemp(dir=ws.root, prefix=UNZIP_PREFIX))
    try:
        extracted = extract_photos(archive, unzip_dir, label, config, progress)
        for ignored in extracted.ignored:
            progress.log(f"warning: {ignored.source}: {ignored.reason}", logging.WARNING)
        if not extracted.photos:
            raise SpaceportError(
                f"{label} holds no photo (JPEG, HEIC, PNG, TIFF, WebP): zip the photo files themselves"
            )
        result, unmatched = _ingest_with_masks(extracted.photos, unzip_dir, staging, config, progress)
    finally:
        shutil.rmtree(unzip_dir, ignore_errors=True)
    manifest = FramesManifest(
        kind="photos", input=label, frames=result.frames, dropped=extracted.ignored + unmatched + result.dropped
    )
    return manifest, result.copied


def _relative(path: Path, ws: Workspace) -> str:
    """Workspace-relative path of an input file, without resolving links that point elsewhere."""
    return path.relative_to(ws.root).as_posix()


def _require_enough(manifest: FramesManifest, config: IngestConfig) -> None:
    count = len(manifest.frames)
    if count >= config.min_images:
        return
    what = "frame" if manifest.kind == "video" else "photo"
    message = (
        f"only {count} usable {what}{'' if count == 1 else 's'} in {manifest.input}; SfM needs at least "
        f"{config.min_images} overlapping {what}s: "
    )
    if manifest.kind == "video":
        message += "film a longer video moving around the subject, or raise target_frames"
    else:
        message += "add more photos of the scene, taken from different positions with overlap"
    if manifest.dropped:
        message += "\ndropped:\n" + "\n".join(f"  {_describe(item)}" for item in manifest.dropped[:20])
    raise SpaceportError(message)


def _describe(item: DroppedRecord) -> str:
    frame = f" frame {item.frame_index}" if item.frame_index is not None else ""
    return f"{item.source}{frame}: {item.reason}"


def _metrics(manifest: FramesManifest, copied: int) -> dict[str, float | int | str]:
    frames = manifest.frames
    metrics: dict[str, float | int | str] = {
        "kind": manifest.kind,
        "images": len(frames),
        "dropped": len(manifest.dropped),
        "copied_unchanged": copied,
    }
    if frames:
        metrics["max_width"] = max(frame.width for frame in frames)
        metrics["max_height"] = max(frame.height for frame in frames)
        metrics["median_sharpness"] = sorted(frame.sharpness for frame in frames)[len(frames) // 2]
        metrics["with_focal_length"] = sum(
            frame.exif.focal_length_mm is not None or frame.exif.focal_length_35mm is not None for frame in frames
        )
        metrics["with_gps"] = sum(frame.exif.gps is not None for frame in frames)
        metrics["with_mask"] = sum(frame.mask is not None for frame in frames)
    if manifest.video is not None:
        metrics["video_frames"] = manifest.video.frame_count
        metrics["candidates"] = len(manifest.video.candidates)
    return metrics
