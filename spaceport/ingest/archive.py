"""A zip of photos, checked whole before anything is extracted.

Refused: entries that would land outside the destination (zip-slip: absolute paths, drive letters, ``..``),
symlink entries, more entries than allowed, or a total expanded size over the limit (zip bombs). Only images
are extracted; folders may nest; ``__MACOSX/`` and dotfiles are skipped.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from spaceport.formats.frames import DroppedRecord
from spaceport.ingest.config import IngestConfig
from spaceport.ingest.inputs import is_ignored_name, is_image_name, not_an_image_reason
from spaceport.progress import Progress
from spaceport.workspace import SpaceportError

FIX_ARCHIVE = "re-create the zip from the photo folder itself (e.g. `zip -r photos.zip photos/`)"
COPY_CHUNK = 1 << 20
# A damaged or encrypted entry, an unknown compression method, or an entry whose path is a file elsewhere.
UNREADABLE_ENTRY_ERRORS = (
    zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError, EOFError,
    NotADirectoryError, IsADirectoryError, FileExistsError,
)


@dataclass
class ExtractedPhotos:
    photos: list[tuple[Path, str]] = field(default_factory=list)  # (extracted file, source label)
    ignored: list[DroppedRecord] = field(default_factory=list)


def entry_parts(name: str) -> tuple[str, ...] | None:
    """The path components of an entry name, or None if it could land outside the extraction folder."""
    normalized = name.replace("\\", "/")
    if normalized.startswith("/") or re.match(r"^[A-Za-z]:", normalized):
        return None
    parts = tuple(part for part in normalized.split("/") if part not in ("", "."))
    if not parts or ".." in parts:
        return None
    return parts


def is_symlink_entry(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def check_archive(archive: zipfile.ZipFile, label: str, config: IngestConfig) -> None:
    """Raise SpaceportError if any entry of the archive is unsafe; read nothing but the central directory."""
    entries = archive.infolist()
    if len(entries) > config.max_zip_entries:
        raise SpaceportError(
            f"{label} has {len(entries)} entries, more than the limit of {config.max_zip_entries}: "
            f"split the photos into smaller sets or raise max_zip_entries"
        )
    for info in entries:
        if entry_parts(info.filename) is None:
            raise SpaceportError(
                f"{label} is refused: entry '{info.filename}' would be written outside the extraction folder "
                f"(absolute path or '..'); {FIX_ARCHIVE}"
            )
        if is_symlink_entry(info):
            raise SpaceportError(
                f"{label} is refused: entry '{info.filename}' is a symbolic link; {FIX_ARCHIVE} "
                f"without links (zip without --symlinks)"
            )
    expanded = sum(info.file_size for info in entries)
    if expanded > config.max_zip_bytes:
        raise SpaceportError(
            f"{label} is refused: it expands to {expanded / 2**30:.2f} GiB, over the limit of "
            f"{config.max_zip_bytes / 2**30:.2f} GiB (max_zip_bytes); give fewer or smaller photos"
        )


def open_archive(path: Path, label: str) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise SpaceportError(f"{label} is not a readable zip archive ({error}): {FIX_ARCHIVE}") from error


def extract_photos(
    zip_path: Path, destination: Path, label: str, config: IngestConfig, progress: Progress
) -> ExtractedPhotos:
    """Check the whole archive, then extract its images under destination, keeping their folders."""
    with open_archive(zip_path, label) as archive:
        check_archive(archive, label, config)
        result = ExtractedPhotos()
        seen: set[str] = set()
        entries = [info for info in archive.infolist() if not info.is_dir()]
        with progress.task("ingest: unzip", total=len(entries)) as task:
            for info in entries:
                _extract_entry(archive, info, destination, label, seen, result)
                task.advance(1)
    return result


def _extract_entry(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    destination: Path,
    label: str,
    seen: set[str],
    result: ExtractedPhotos,
) -> None:
    parts = entry_parts(info.filename)
    assert parts is not None  # check_archive refused the archive otherwise
    source = f"{label}:{'/'.join(parts)}"
    if is_ignored_name(PurePosixPath(*parts)):
        return
    if not is_image_name(parts[-1]):
        result.ignored.append(DroppedRecord(source=source, reason=not_an_image_reason(parts[-1])))
        return
    key = "/".join(parts).lower()
    if key in seen:
        result.ignored.append(DroppedRecord(source=source, reason="duplicate entry name in the zip; ignored"))
        return
    seen.add(key)
    target = destination.joinpath(*parts)
    if not target.resolve().is_relative_to(destination.resolve()):
        raise SpaceportError(f"{label} is refused: entry '{info.filename}' escapes the extraction folder")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as entry, open(target, "wb") as out:
            shutil.copyfileobj(entry, out, COPY_CHUNK)
    except UNREADABLE_ENTRY_ERRORS as error:
        if target.is_file():
            target.unlink()
        result.ignored.append(DroppedRecord(source=source, reason=f"unreadable zip entry ({error}); skipped"))
        return
    result.photos.append((target, source))
