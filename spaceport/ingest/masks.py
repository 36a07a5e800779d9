"""Optional masks given with the photos: black = ignore, white = keep.

Where: a folder named ``masks`` inside the photos' folder or beside it (``photos/IMG_1.jpg`` with
``photos/masks/IMG_1.png`` or ``masks/IMG_1.png``), in the input folder or in the zip. A mask shares its photo's
base name (``IMG_1.png``, or COLMAP's ``IMG_1.jpg.png``), in any image format; grey levels are thresholded at 128.
A mask is drawn on the photo as displayed (EXIF orientation applied); one that has the stored, unturned shape of a
quarter-turned photo is turned like the photo. It must have its photo's size or at least its aspect ratio.

Written: ``masks/<image file>.png`` in the workspace (``masks/IMG_1.jpg.png`` for ``images/IMG_1.jpg``), 8-bit L,
0 or 255, at the size of the ingested image, resized nearest-neighbour: the layout of COLMAP's
``ImageReaderOptions.mask_path``. Photos without a mask keep all their pixels; their frames record no mask.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps

from spaceport.formats.frames import DroppedRecord
from spaceport.ingest.color import UNREADABLE_IMAGE_ERRORS, to_8bit
from spaceport.progress import Progress
from spaceport.workspace import SpaceportError

MASK_FOLDER = "masks"
MASK_SUFFIX = ".png"
KEEP_THRESHOLD = 128  # grey level from which a mask pixel means "keep"
KEEP, IGNORE = 255, 0
# EXIF orientation -> the transpose that makes stored pixels upright (as ImageOps.exif_transpose does).
ORIENTATION_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
QUARTER_TURNS = frozenset({5, 6, 7, 8})
_BINARY_LUT = [IGNORE] * KEEP_THRESHOLD + [KEEP] * (256 - KEEP_THRESHOLD)


@dataclass(frozen=True)
class MaskSource:
    path: Path
    source: str  # workspace-relative label, as for photos


@dataclass
class MaskSplit:
    photos: list[tuple[Path, str]]  # (file, source) of the photos, masks taken out
    masks: dict[int, MaskSource] = field(default_factory=dict)  # index in photos -> its mask
    unmatched: list[DroppedRecord] = field(default_factory=list)


@dataclass(frozen=True)
class PhotoGeometry:
    """What a mask must follow: the photo's EXIF orientation, its upright size in full, the written size."""

    source: str
    orientation: int
    upright_size: tuple[int, int]
    output_size: tuple[int, int]


def mask_file_name(image_file: str) -> str:
    """The mask's name in the workspace's masks/ for an image in images/ (COLMAP's convention)."""
    return image_file + MASK_SUFFIX


def in_mask_folder(relative: PurePosixPath) -> bool:
    return any(part.lower() == MASK_FOLDER for part in relative.parts[:-1])


def split_masks(files: list[tuple[Path, str]], root: Path, progress: Progress) -> MaskSplit:
    """Separate masks from photos among (file, source) images found under root, and pair each mask with its photo."""
    photos, mask_files = [], []
    for path, source in files:
        relative = PurePosixPath(path.relative_to(root).as_posix())
        (mask_files if in_mask_folder(relative) else photos).append((relative, path, source))
    split = MaskSplit(photos=[(path, source) for _, path, source in photos])
    if not mask_files:
        return split
    by_key, misplaced = _index_masks(mask_files)
    owners: dict[MaskSource, list[str]] = defaultdict(list)
    for index, (relative, _, source) in enumerate(photos):
        found = _masks_of(relative, by_key)
        if len(found) > 1:
            raise SpaceportError(
                f"{source} has {len(found)} masks ({', '.join(mask.source for mask in found)}): keep one mask per "
                f"photo"
            )
        if found:
            split.masks[index] = found[0]
            owners[found[0]].append(source)
    _refuse_shared_masks(owners)
    split.unmatched = misplaced + [
        DroppedRecord(
            source=mask.source,
            reason="mask of no photo (a mask takes its photo's base name: masks/IMG_1.png for IMG_1.jpg); ignored",
        )
        for masks in by_key.values()
        for mask in masks
        if mask not in owners
    ]
    _log(split, progress)
    return split


def write_mask(mask: MaskSource, photo: PhotoGeometry, target: Path) -> float:
    """Write mask for the photo at target (8-bit L, 0 or 255, the written image's size); the fraction kept."""
    upright = _orient(_read_grey(mask), mask, photo)
    binary = upright.point(_BINARY_LUT)
    if binary.size != photo.output_size:
        binary = binary.resize(photo.output_size, Image.Resampling.NEAREST)
    binary.save(target, "PNG")
    return float(np.count_nonzero(np.asarray(binary))) / (binary.width * binary.height)


def _index_masks(
    mask_files: list[tuple[PurePosixPath, Path, str]],
) -> tuple[dict[tuple[tuple[str, ...], str], list[MaskSource]], list[DroppedRecord]]:
    """Masks by (folder holding masks/, lower-case stem), and those not directly in a masks/ folder."""
    by_key: dict[tuple[tuple[str, ...], str], list[MaskSource]] = defaultdict(list)
    misplaced = []
    for relative, path, source in mask_files:
        if relative.parent.name.lower() != MASK_FOLDER:
            misplaced.append(DroppedRecord(source=source, reason="not directly in a masks/ folder; ignored"))
            continue
        owner = tuple(part.lower() for part in relative.parent.parent.parts)
        by_key[(owner, relative.stem.lower())].append(MaskSource(path, source))
    return by_key, misplaced


def _masks_of(photo: PurePosixPath, by_key: dict[tuple[tuple[str, ...], str], list[MaskSource]]) -> list[MaskSource]:
    """Masks in a masks/ folder inside the photo's folder or beside it, named by its stem or its whole name."""
    folder = tuple(part.lower() for part in photo.parent.parts)
    owners = [folder, folder[:-1]] if folder else [folder]
    found: list[MaskSource] = []
    for owner in owners:
        for stem in (photo.stem.lower(), photo.name.lower()):
            found += [mask for mask in by_key.get((owner, stem), []) if mask not in found]
    return found


def _refuse_shared_masks(owners: dict[MaskSource, list[str]]) -> None:
    for mask, photos in owners.items():
        if len(photos) > 1:
            raise SpaceportError(
                f"{mask.source} is the mask of {len(photos)} photos ({', '.join(photos)}): name it after the whole "
                f"photo file (e.g. {PurePosixPath(photos[0]).name}{MASK_SUFFIX}) or put a masks/ folder inside each "
                f"photo folder"
            )


def _log(split: MaskSplit, progress: Progress) -> None:
    for dropped in split.unmatched:
        progress.log(f"warning: {dropped.source}: {dropped.reason}", logging.WARNING)
    without = [source for index, (_, source) in enumerate(split.photos) if index not in split.masks]
    if without:
        more = f" and {len(without) - 5} more" if len(without) > 5 else ""
        progress.log(
            f"warning: {len(without)} of {len(split.photos)} photos have no mask ({', '.join(without[:5])}{more}): "
            f"all of each of them is kept",
            logging.WARNING,
        )


def _read_grey(mask: MaskSource) -> Image.Image:
    try:
        with Image.open(mask.path) as opened:
            opened.load()
            grey, _ = to_8bit(ImageOps.exif_transpose(opened))
    except UNREADABLE_IMAGE_ERRORS as error:
        raise SpaceportError(
            f"{mask.source}: unreadable mask ({error}); save it again as a PNG (black = ignore, white = keep), or "
            f"remove it to keep the whole photo"
        ) from error
    return grey if grey.mode == "L" else grey.convert("L")


def _orient(mask_image: Image.Image, mask: MaskSource, photo: PhotoGeometry) -> Image.Image:
    """The mask as the photo is displayed; refused when its shape cannot be the photo's."""
    if _same_aspect(mask_image.size, photo.upright_size):
        return mask_image
    stored_size = photo.upright_size[::-1]
    if photo.orientation in QUARTER_TURNS and _same_aspect(mask_image.size, stored_size):
        return mask_image.transpose(ORIENTATION_TRANSPOSE[photo.orientation])
    width, height = photo.upright_size
    raise SpaceportError(
        f"{mask.source} is {mask_image.width}x{mask_image.height} but its photo {photo.source} is {width}x{height} "
        f"(as displayed): make the mask from that photo, at its size or scaled with the same aspect ratio, or "
        f"remove it to keep the whole photo"
    )


def _same_aspect(size: tuple[int, int], reference: tuple[int, int]) -> bool:
    """Whether size is reference scaled, within one pixel of rounding of the larger of the two."""
    (width, height), (ref_width, ref_height) = size, reference
    return abs(height * ref_width - ref_height * width) <= max(width, ref_width)
