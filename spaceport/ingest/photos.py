"""Photos -> upright, optionally downscaled JPEGs with their EXIF, then duplicates dropped."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps

from spaceport.formats.frames import DroppedRecord, ExifSummary, FrameRecord
from spaceport.ingest.config import IngestConfig
from spaceport.ingest.exif import TAG_ORIENTATION, exif_for_output, summarize_exif
from spaceport.ingest.naming import unique_names
from spaceport.ingest.quality import analysis_copy, blurry_indices, perceptual_hash, sharpness
from spaceport.progress import Progress

# What Pillow raises for a file that is not a decodable image (truncated, garbage, absurdly large).
UNREADABLE_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass
class PhotoOutcome:
    source: str
    digest: str = ""  # sha256 of the input bytes
    record: FrameRecord | None = None  # None when the photo could not be read
    phash: np.ndarray | None = None
    copied: bool = False  # written byte for byte, no re-encoding
    error: str | None = None


@dataclass
class PhotoSet:
    frames: list[FrameRecord]
    dropped: list[DroppedRecord]
    copied: int


def ingest_photos(
    photos: list[tuple[Path, str]], staging: Path, config: IngestConfig, progress: Progress
) -> PhotoSet:
    """Normalize (path, source) photos into staging/, in parallel, then drop unreadable ones and duplicates."""
    names = unique_names([PurePosixPath(source).stem for _, source in photos])
    outcomes = _process_all(photos, names, staging, config, progress)
    dropped: list[DroppedRecord] = []
    kept: list[PhotoOutcome] = []
    for outcome in outcomes:
        if outcome.record is None:
            progress.log(f"warning: skipping {outcome.source}: {outcome.error}", logging.WARNING)
            dropped.append(DroppedRecord(source=outcome.source, reason=outcome.error or "unreadable"))
        else:
            kept.append(outcome)
    if config.dedupe:
        kept = _drop(kept, _exact_duplicates(kept), staging, dropped, progress)
        kept = _drop(kept, _near_duplicates(kept, config.dedupe_distance), staging, dropped, progress)
    if config.drop_blurry_photos:
        kept = _drop(kept, _blurry(kept, config.blur_ratio), staging, dropped, progress)
    frames = [outcome.record for outcome in kept if outcome.record is not None]
    return PhotoSet(frames=frames, dropped=dropped, copied=sum(outcome.copied for outcome in kept))


def process_photo(path: Path, source: str, output: Path, config: IngestConfig) -> PhotoOutcome:
    """Write one photo as an upright JPEG at output; copy its bytes when nothing needs to change."""
    data = path.read_bytes()
    outcome = PhotoOutcome(source=source, digest=hashlib.sha256(data).hexdigest())
    try:
        with Image.open(io.BytesIO(data)) as image:
            exif, summary = _read_exif(image)
            if _can_copy(image, exif, config.max_size):
                grey, size = _measure_only(image, config.analysis_size), image.size
                output.write_bytes(data)
                outcome.copied = True
            else:
                grey, size = _reencode(image, exif, output, config)
    except UNREADABLE_IMAGE_ERRORS as error:
        output.unlink(missing_ok=True)
        outcome.error = f"unreadable or corrupt image ({error}); skipped"
        return outcome
    outcome.phash = perceptual_hash(grey)
    outcome.record = FrameRecord(
        file=output.name, source=source, width=size[0], height=size[1], sharpness=sharpness(grey), exif=summary
    )
    return outcome


def scaled_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """The size after downscaling so the long side is at most max_size (never upscaled)."""
    if max_size is None or max(width, height) <= max_size:
        return width, height
    scale = max_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def _read_exif(image: Image.Image) -> tuple[Image.Exif | None, ExifSummary]:
    """The image's EXIF and its summary; (None, empty) when the EXIF block itself is broken."""
    try:
        exif = image.getexif()
        return exif, summarize_exif(exif)
    except UNREADABLE_IMAGE_ERRORS:
        return None, ExifSummary()


def _can_copy(image: Image.Image, exif: Image.Exif | None, max_size: int | None) -> bool:
    upright = exif is None or exif.get(TAG_ORIENTATION, 1) in (1, None)
    small_enough = scaled_size(*image.size, max_size) == image.size
    return image.format == "JPEG" and image.mode in ("RGB", "L") and upright and small_enough


def _measure_only(image: Image.Image, analysis_size: int) -> Image.Image:
    """Decode the whole file (which detects truncation) at reduced scale where JPEG allows, in grey."""
    image.draft("L", (analysis_size, analysis_size))
    image.load()
    return analysis_copy(image, analysis_size)


def _reencode(
    image: Image.Image, exif: Image.Exif | None, output: Path, config: IngestConfig
) -> tuple[Image.Image, tuple[int, int]]:
    target = scaled_size(*image.size, config.max_size)
    if target != image.size:
        image.draft(None, target)  # JPEG: decode at 1/2, 1/4, 1/8
    image.load()
    upright = ImageOps.exif_transpose(image) if exif is not None else image.copy()
    if upright.mode not in ("RGB", "L"):
        upright = upright.convert("RGB")
    target = scaled_size(*upright.size, config.max_size)
    if upright.size != target:
        upright = upright.resize(target, Image.Resampling.LANCZOS)
    options: dict[str, object] = {"quality": config.jpeg_quality}
    if exif is not None:
        options["exif"] = exif_for_output(upright.getexif(), *upright.size)
    if image.info.get("icc_profile"):
        options["icc_profile"] = image.info["icc_profile"]
    upright.save(output, "JPEG", **options)
    return analysis_copy(upright, config.analysis_size), upright.size


def _process_all(
    photos: list[tuple[Path, str]], names: list[str], staging: Path, config: IngestConfig, progress: Progress
) -> list[PhotoOutcome]:
    workers = config.workers or os.cpu_count() or 1
    outcomes: list[PhotoOutcome | None] = [None] * len(photos)
    # Pillow releases the GIL while decoding, resizing and encoding, so threads use all cores.
    with ThreadPoolExecutor(max_workers=workers) as pool, progress.task("ingest: photos", len(photos)) as task:
        futures = {
            pool.submit(process_photo, path, source, staging / name, config): index
            for index, ((path, source), name) in enumerate(zip(photos, names, strict=True))
        }
        for future in as_completed(futures):
            outcome = future.result()
            outcomes[futures[future]] = outcome
            task.advance(1, ok=outcome.record is not None)
    return [outcome for outcome in outcomes if outcome is not None]


def _exact_duplicates(kept: list[PhotoOutcome]) -> dict[int, str]:
    first_by_digest: dict[str, str] = {}
    duplicates = {}
    for index, outcome in enumerate(kept):
        if outcome.digest in first_by_digest:
            duplicates[index] = f"identical to {first_by_digest[outcome.digest]}; dropped"
        else:
            first_by_digest[outcome.digest] = outcome.source
    return duplicates


def _near_duplicates(kept: list[PhotoOutcome], max_distance: int) -> dict[int, str]:
    """Greedy, sharpest first: an image whose hash is within max_distance of a kept one is dropped."""
    if not kept:
        return {}
    hashes = np.stack([outcome.phash for outcome in kept])  # type: ignore[misc]
    order = sorted(range(len(kept)), key=lambda index: -_sharpness(kept[index]))
    chosen: list[int] = []
    duplicates = {}
    for index in order:
        distances = np.count_nonzero(hashes[chosen] != hashes[index], axis=1)
        closest = int(np.argmin(distances)) if chosen else -1
        if closest >= 0 and distances[closest] <= max_distance:
            twin = kept[chosen[closest]].source
            duplicates[index] = f"near-duplicate of {twin} (perceptual hash distance {distances[closest]}); dropped"
        else:
            chosen.append(index)
    return duplicates


def _blurry(kept: list[PhotoOutcome], ratio: float) -> dict[int, str]:
    values = [_sharpness(outcome) for outcome in kept]
    median = float(np.median(values)) if values else 0.0
    return {
        index: f"blurry (sharpness {values[index]:.1f} < {ratio} x median {median:.1f}); dropped"
        for index in blurry_indices(values, ratio)
    }


def _sharpness(outcome: PhotoOutcome) -> float:
    return outcome.record.sharpness if outcome.record is not None else 0.0


def _drop(
    kept: list[PhotoOutcome],
    reasons: dict[int, str],
    staging: Path,
    dropped: list[DroppedRecord],
    progress: Progress,
) -> list[PhotoOutcome]:
    """Remove the outcomes at the given indices (and their written files), recording why."""
    survivors = []
    for index, outcome in enumerate(kept):
        if index not in reasons:
            survivors.append(outcome)
            continue
        progress.log(f"{outcome.source}: {reasons[index]}")
        dropped.append(DroppedRecord(source=outcome.source, reason=reasons[index]))
        if outcome.record is not None:
            (staging / outcome.record.file).unlink(missing_ok=True)
    return survivors

