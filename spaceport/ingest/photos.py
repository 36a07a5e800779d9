"""Photos (JPEG, PNG, TIFF, WebP, BMP, HEIC/HEIF; 8 or 16 bits) -> upright, optionally downscaled JPEGs with their
EXIF, and their masks where given; then duplicates dropped."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pillow_heif
from PIL import Image, ImageOps

from spaceport.formats.frames import DroppedRecord, ExifSummary, FrameRecord
from spaceport.ingest.color import UNREADABLE_IMAGE_ERRORS, to_8bit
from spaceport.ingest.config import IngestConfig
from spaceport.ingest.exif import TAG_ORIENTATION, exif_for_output, summarize_exif
from spaceport.ingest.masks import MaskSource, PhotoGeometry, mask_file_name, write_mask
from spaceport.ingest.naming import unique_names
from spaceport.ingest.quality import analysis_copy, blurry_indices, perceptual_hash, sharpness
from spaceport.progress import Progress

# HEIC/HEIF through libheif: decoded upright (libheif applies the file's rotation), EXIF in info["exif"].
pillow_heif.register_heif_opener()


@dataclass
class PhotoOutcome:
    source: str
    digest: str = ""  # sha256 of the input bytes
    record: FrameRecord | None = None  # None when the photo could not be read
    phash: np.ndarray | None = None
    copied: bool = False  # written byte for byte, no re-encoding
    error: str | None = None
    mask_kept: float | None = None  # fraction of the mask's pixels that keep the photo


@dataclass
class PhotoSet:
    frames: list[FrameRecord]
    dropped: list[DroppedRecord]
    copied: int


def ingest_photos(
    photos: list[tuple[Path, str]],
    staging: Path,
    config: IngestConfig,
    progress: Progress,
    masks: Mapping[int, MaskSource] | None = None,
    masks_dir: Path | None = None,
) -> PhotoSet:
    """Normalize (path, source) photos into staging/, in parallel, then drop unreadable ones and duplicates.

    masks maps an index in photos to its mask, written into masks_dir; a dropped photo's mask goes with it.
    """
    names = unique_names([PurePosixPath(source).stem for _, source in photos])
    outcomes = _process_all(photos, names, staging, config, progress, masks or {}, masks_dir)
    dropped: list[DroppedRecord] = []
    kept: list[PhotoOutcome] = []
    for outcome in outcomes:
        if outcome.record is None:
            progress.log(f"warning: skipping {outcome.source}: {outcome.error}", logging.WARNING)
            dropped.append(DroppedRecord(source=outcome.source, reason=outcome.error or "unreadable"))
        else:
            kept.append(outcome)
            if outcome.mask_kept == 0:
                progress.log(f"warning: the mask of {outcome.source} is all black: SfM gets nothing from this "
                             f"photo", logging.WARNING)
    drop = _Dropper(staging, masks_dir, dropped, progress)
    if config.dedupe:
        kept = drop(kept, _exact_duplicates(kept))
        kept = drop(kept, _near_duplicates(kept, config.dedupe_distance))
    if config.drop_blurry_photos:
        kept = drop(kept, _blurry(kept, config.blur_ratio))
    frames = [outcome.record for outcome in kept if outcome.record is not None]
    return PhotoSet(frames=frames, dropped=dropped, copied=sum(outcome.copied for outcome in kept))


def process_photo(
    path: Path,
    source: str,
    output: Path,
    config: IngestConfig,
    mask: MaskSource | None = None,
    masks_dir: Path | None = None,
) -> PhotoOutcome:
    """Write one photo as an upright JPEG at output (its bytes copied when nothing needs to change) and its mask,
    if any, into masks_dir; a mask that cannot be the photo's raises SpaceportError."""
    data = path.read_bytes()
    outcome = PhotoOutcome(source=source, digest=hashlib.sha256(data).hexdigest())
    try:
        with Image.open(io.BytesIO(data)) as image:
            exif, summary = _read_exif(image)
            orientation = _orientation(exif)
            if _can_copy(image, exif, config.max_size):
                grey, full_size, size = _measure_only(image, config.analysis_size), image.size, image.size
                output.write_bytes(data)
                outcome.copied = True
            else:
                grey, full_size, size = _reencode(image, exif, output, config)
    except UNREADABLE_IMAGE_ERRORS as error:
        output.unlink(missing_ok=True)
        outcome.error = f"unreadable or corrupt image ({error}); skipped"
        return outcome
    outcome.phash = perceptual_hash(grey)
    outcome.record = FrameRecord(
        file=output.name, source=source, width=size[0], height=size[1], sharpness=sharpness(grey), exif=summary
    )
    if mask is not None and masks_dir is not None:
        target = masks_dir / mask_file_name(output.name)
        outcome.mask_kept = write_mask(mask, PhotoGeometry(source, orientation, full_size, size), target)
        outcome.record.mask = target.name
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


def _orientation(exif: Image.Exif | None) -> int:
    value = exif.get(TAG_ORIENTATION, 1) if exif is not None else 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


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
) -> tuple[Image.Image, tuple[int, int], tuple[int, int]]:
    """Write the photo upright, in 8 bits, downscaled if asked, as a JPEG with its EXIF; return its grey analysis
    copy, its upright size in full and the written size."""
    full_size = image.size  # TIFF and HEIF report the upright size already (their readers turn the pixels)
    target = scaled_size(*image.size, config.max_size)
    if target != image.size:
        image.draft(None, target)  # JPEG: decode at 1/2, 1/4, 1/8
    image.load()
    upright = ImageOps.exif_transpose(image) if exif is not None else image.copy()
    if upright.size != image.size:  # a quarter turn
        full_size = full_size[::-1]
    upright, icc_profile = to_8bit(upright, image.info.get("icc_profile"))
    target = scaled_size(*full_size, config.max_size)
    if upright.size != target:
        upright = upright.resize(target, Image.Resampling.LANCZOS)
    options: dict[str, object] = {"quality": config.jpeg_quality}
    if exif is not None:
        options["exif"] = exif_for_output(exif, *upright.size)
    if icc_profile:
        options["icc_profile"] = icc_profile
    upright.save(output, "JPEG", **options)
    return analysis_copy(upright, config.analysis_size), full_size, upright.size


def _process_all(
    photos: list[tuple[Path, str]],
    names: list[str],
    staging: Path,
    config: IngestConfig,
    progress: Progress,
    masks: Mapping[int, MaskSource],
    masks_dir: Path | None,
) -> list[PhotoOutcome]:
    workers = config.workers or os.cpu_count() or 1
    outcomes: list[PhotoOutcome | None] = [None] * len(photos)
    # Pillow releases the GIL while decoding, resizing and encoding, so threads use all cores.
    with ThreadPoolExecutor(max_workers=workers) as pool, progress.task("ingest: photos", len(photos)) as task:
        futures = {
            pool.submit(process_photo, path, source, staging / name, config, masks.get(index), masks_dir): index
            for index, ((path, source), name) in enumerate(zip(photos, names, strict=True))
        }
        try:
            for future in as_completed(futures):
                outcome = future.result()
                outcomes[futures[future]] = outcome
                task.advance(1, ok=outcome.record is not None)
        except BaseException:  # a bad mask: stop at once rather than after every photo
            for future in futures:
                future.cancel()
            raise
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


@dataclass
class _Dropper:
    """Removes outcomes (their written image and mask with them), recording why."""

    staging: Path
    masks_dir: Path | None
    dropped: list[DroppedRecord]
    progress: Progress

    def __call__(self, kept: list[PhotoOutcome], reasons: dict[int, str]) -> list[PhotoOutcome]:
        survivors = []
        for index, outcome in enumerate(kept):
            if index not in reasons:
                survivors.append(outcome)
                continue
            self.progress.log(f"{outcome.source}: {reasons[index]}")
            self.dropped.append(DroppedRecord(source=outcome.source, reason=reasons[index]))
            if outcome.record is not None:
                (self.staging / outcome.record.file).unlink(missing_ok=True)
                if outcome.record.mask and self.masks_dir is not None:
                    (self.masks_dir / outcome.record.mask).unlink(missing_ok=True)
        return survivors

