"""What the user gave under ``input/``: a folder of photos, one zip of photos, or one video."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path, PurePosixPath

from spaceport.formats.frames import DroppedRecord
from spaceport.workspace import SpaceportError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".heic", ".heif", ".hif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".m4v", ".webm"})
ARCHIVE_SUFFIXES = frozenset({".zip"})
UNSUPPORTED_IMAGE_SUFFIXES = {
    ".dng": "RAW photos are not supported: export them as JPEG",
    ".cr2": "RAW photos are not supported: export them as JPEG",
    ".nef": "RAW photos are not supported: export them as JPEG",
    ".arw": "RAW photos are not supported: export them as JPEG",
}
WHAT_TO_GIVE = (
    "give a folder of photos (JPEG, HEIC, PNG, TIFF, WebP), one .zip of photos, "
    "or one video (.mp4, .mov, .mkv, .avi)"
)


class InputKind(StrEnum):
    PHOTOS = "photos"
    ZIP = "zip"
    VIDEO = "video"


@dataclass
class InputPlan:
    kind: InputKind
    files: list[Path]  # the photos, or the one archive or video
    ignored: list[DroppedRecord] = field(default_factory=list)


def is_ignored_name(relative: PurePosixPath) -> bool:
    """Dotfiles, dot-folders and macOS resource forks are never user content."""
    return any(part.startswith(".") or part == "__MACOSX" for part in relative.parts)


def is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def not_an_image_reason(name: str) -> str:
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in UNSUPPORTED_IMAGE_SUFFIXES:
        return UNSUPPORTED_IMAGE_SUFFIXES[suffix]
    return f"not an image ({suffix or 'no extension'}); ignored"


def visible_files(folder: Path) -> list[Path]:
    """Files under folder (links to files included), recursively and sorted, without hidden ones."""
    files = []
    for path in sorted(folder.rglob("*")):
        relative = PurePosixPath(path.relative_to(folder).as_posix())
        if path.is_file() and not is_ignored_name(relative):
            files.append(path)
    return files


def inspect_input(input_dir: Path, workspace_root: Path) -> InputPlan:
    """Decide what kind of input this is, or fail with a message that says what to give instead."""
    if not input_dir.is_dir():
        raise SpaceportError(f"input folder {input_dir} does not exist: {WHAT_TO_GIVE}")
    files = visible_files(input_dir)
    if not files:
        raise SpaceportError(f"input folder {input_dir} is empty: {WHAT_TO_GIVE}")
    if len(files) == 1:
        suffix = files[0].suffix.lower()
        if suffix in VIDEO_SUFFIXES:
            return InputPlan(InputKind.VIDEO, files)
        if suffix in ARCHIVE_SUFFIXES:
            return InputPlan(InputKind.ZIP, files)
    photos = [path for path in files if is_image_name(path.name)]
    ignored = [
        DroppedRecord(source=path.relative_to(workspace_root).as_posix(), reason=_reason_among_photos(path))
        for path in files
        if not is_image_name(path.name)
    ]
    if not photos:
        found = "; ".join(f"{path.name}: {_reason_among_photos(path)}" for path in files[:5])
        more = f" (and {len(files) - 5} more)" if len(files) > 5 else ""
        raise SpaceportError(f"no photo in {input_dir}: {found}{more}; {WHAT_TO_GIVE}")
    return InputPlan(InputKind.PHOTOS, photos, ignored)


def _reason_among_photos(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES or suffix in ARCHIVE_SUFFIXES:
        return f"a {suffix} among photos is ignored: give a video or a zip alone"
    return not_an_image_reason(path.name)
