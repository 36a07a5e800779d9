"""Multipart uploads streamed to disk: size limit while reading, safe names, types checked by content.

Nothing is trusted from the client: a part's file name may carry folders (``images/a.jpg``) but never an
absolute path, ``..``, a backslash or a NUL; every file's first bytes must be a supported type. Files land under
one folder that the caller deletes whole when anything is refused.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool

from spaceport.workspace import SpaceportError

JOB_PART_LIMIT = 1 << 20  # the ``job`` JSON part
MAX_UPLOAD_FILES = 20_000
HEAD_BYTES = 64
TYPES_HELP = ("photos (JPEG, PNG, TIFF, WebP, HEIC), a .zip of photos, a video (MP4, MOV, MKV, AVI), "
              "a .ply (steps=compress) or a COLMAP model under sparse/ with photos under images/ (steps=train)")
HEIC_BRANDS = {b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1"}
QUICKTIME_ATOMS = {b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"}
COLMAP_FILES = {f"{name}.{ext}" for name in ("cameras", "images", "points3D", "rigs", "frames")
                for ext in ("bin", "txt")}


class UploadRefused(Exception):
    """A refused upload; ``status`` is the HTTP status and the message says what to fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class ReceivedFile:
    name: str  # relative, /-separated, checked
    path: Path
    size: int
    kind: str  # image | zip | video | ply | colmap


@dataclass
class ReceivedUpload:
    job_json: bytes | None = None
    files: list[ReceivedFile] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        return sum(file.size for file in self.files)


def safe_relative_name(raw: str) -> str:
    """The upload's relative path, or UploadRefused(422) when it could land outside the upload folder."""
    shown = raw.encode("unicode_escape").decode()
    problem = None
    if not raw:
        problem = "it is empty"
    elif "\x00" in raw or re.search(r"[\x00-\x1f\x7f]", raw):
        problem = "it holds a NUL or control character"
    elif "\\" in raw:
        problem = "it holds a backslash (use / between folders)"
    elif raw.startswith("/") or re.match(r"^[A-Za-z]:", raw):
        problem = "it is an absolute path"
    else:
        parts = [part for part in raw.split("/") if part not in ("", ".")]
        if ".." in parts:
            problem = "it holds '..'"
        elif not parts:
            problem = "it names no file"
        else:
            return "/".join(parts)
    raise UploadRefused(422, f"file name {shown!r} is refused: {problem}; send names relative to the upload "
                             "(like images/IMG_0001.jpg)")


def sniff(head: bytes) -> str | None:
    """The kind of a file from its first bytes (image | zip | video | ply), None when unsupported."""
    if head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image"
    if head.startswith((b"II*\x00", b"MM\x00*")):
        return "image"  # TIFF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "video"
    if head[4:8] == b"ftyp":
        return "image" if head[8:12] in HEIC_BRANDS else "video"  # ISO base media: HEIC vs MP4 / MOV / M4V
    if head[4:8] in QUICKTIME_ATOMS:
        return "video"  # QuickTime without an ftyp box
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video"  # Matroska / WebM
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith((b"ply\n", b"ply\r\n")):
        return "ply"
    return None


def is_colmap_name(name: str) -> bool:
    path = PurePosixPath(name)
    return path.name in COLMAP_FILES and "sparse" in path.parts[:-1]


def classify(name: str, head: bytes, size: int) -> str:
    if is_colmap_name(name):
        if name.endswith(".txt"):
            try:
                head.decode("utf-8")
            except UnicodeDecodeError:
                # a multi-byte character cut at the end of the head is fine; anything else is not text
                if not _utf8_prefix(head):
                    raise UploadRefused(415, f"file {name}: a COLMAP .txt model file must be text") from None
        elif size < 8:
            raise UploadRefused(415, f"file {name}: {size} bytes is too short for a COLMAP .bin model file")
        return "colmap"
    kind = sniff(head)
    if kind is None:
        raise UploadRefused(415, f"file {name}: its content is not a supported type; send {TYPES_HELP}")
    return kind


def _utf8_prefix(head: bytes) -> bool:
    try:
        head[:-3].decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


# -- streaming ---------------------------------------------------------------------------------------------


class _PartWriter:
    """python-multipart callbacks writing each ``files`` part to its own file under ``dest``."""

    def __init__(self, dest: Path, max_bytes: int):
        self.dest = dest
        self.max_bytes = max_bytes
        self.upload = ReceivedUpload()
        self._header_field = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._file: Any = None
        self._name = ""
        self._head = b""
        self._size = 0
        self._job_buffer: bytearray | None = None
        self._names: set[str] = set()

    def callbacks(self) -> dict[str, Any]:
        return {"on_part_begin": self._part_begin, "on_header_field": self._header_field_data,
                "on_header_value": self._header_value_data, "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
                "on_part_end": self._part_end}

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_field.lower()] = self._header_value
        self._header_field, self._header_value = b"", b""

    def _headers_finished(self) -> None:
        disposition, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        field_name = options.get(b"name", b"").decode("utf-8", "replace")
        if field_name == "job":
            self._job_buffer = bytearray()
            return
        if field_name != "files":
            raise UploadRefused(422, f"form field {field_name!r} is not known: send the data as 'files' parts "
                                     "and the job's JSON as one 'job' part")
        if b"filename" not in options:
            raise UploadRefused(422, "a 'files' part has no filename: send each file with its name "
                                     "(curl -F files=@photo.jpg)")
        try:
            raw_name = options[b"filename"].decode("utf-8")
        except UnicodeDecodeError:
            raise UploadRefused(422, "a file name is not UTF-8: rename the file") from None
        name = safe_relative_name(raw_name)
        if name in self._names:
            raise UploadRefused(422, f"file {name} is sent twice: send each file once")
        if len(self._names) >= MAX_UPLOAD_FILES:
            raise UploadRefused(422, f"more than {MAX_UPLOAD_FILES} files: send a .zip or use input_url")
        self._names.add(name)
        target = self.dest.joinpath(*name.split("/"))
        if not target.resolve().is_relative_to(self.dest.resolve()):
            raise UploadRefused(422, f"file name {raw_name!r} would be written outside the upload folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(target, "xb")  # noqa: SIM115 - closed in _part_end or by close()
        self._name, self._head, self._size = name, b"", 0

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._job_buffer is not None:
            if len(self._job_buffer) + len(chunk) > JOB_PART_LIMIT:
                raise UploadRefused(413, f"the 'job' part is over {JOB_PART_LIMIT} bytes: it holds the job's JSON "
                                         "only (input_url, steps, preset, settings, notify)")
            self._job_buffer += chunk
            return
        self._size += len(chunk)
        if self.upload.total_bytes + self._size > self.max_bytes:
            raise UploadRefused(413, too_large_message(self.max_bytes))
        if len(self._head) < HEAD_BYTES:
            self._head += chunk[:HEAD_BYTES - len(self._head)]
        self._file.write(chunk)

    def _part_end(self) -> None:
        if self._job_buffer is not None:
            self.upload.job_json = bytes(self._job_buffer)
            self._job_buffer = None
            return
        path = Path(self._file.name)
        self._file.close()
        self._file = None
        kind = classify(self._name, self._head, self._size)
        self.upload.files.append(ReceivedFile(self._name, path, self._size, kind))

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def too_large_message(max_bytes: int) -> str:
    return (f"the upload is over the limit of {max_bytes} bytes ({max_bytes / 2**30:.2f} GiB, "
            "SPACEPORT_MAX_UPLOAD_BYTES): send fewer or smaller files, or put the data in object storage and "
            "pass input_url")


async def receive_multipart(content_type: str, chunks: AsyncIterator[bytes], dest: Path,
                            max_bytes: int) -> ReceivedUpload:
    """Parse a multipart body chunk by chunk, writing ``files`` parts under ``dest``; raises UploadRefused."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if not boundary:
        raise UploadRefused(400, "multipart/form-data without a boundary: let your HTTP client build the body")
    dest.mkdir(parents=True, exist_ok=True)
    writer = _PartWriter(dest, max_bytes)
    parser = MultipartParser(boundary, writer.callbacks())
    try:
        async for chunk in chunks:
            if chunk:
                await run_in_threadpool(parser.write, chunk)  # file writes off the event loop
        parser.finalize()
    except UploadRefused:
        raise
    except Exception as exc:  # python-multipart's parse errors
        raise UploadRefused(400, f"the multipart body could not be parsed ({exc}); let your HTTP client build "
                                 "it (curl -F files=@photo.jpg -F job='{...}')") from exc
    finally:
        writer.close()
    return writer.upload


# -- what each step selection accepts --------------------------------------------------------------------


def check_files_for_steps(upload: ReceivedUpload, steps: str, zip_check: Any = None) -> None:
    """Raise UploadRefused(422) when the files do not make an input of ``steps``.

    ``zip_check(archive, label)`` checks a zip's entries (zip-slip, size): spaceport.ingest's check_archive.
    """
    files = upload.files
    if not files:
        raise UploadRefused(422, f"no files were uploaded: send {TYPES_HELP} as 'files' parts, or give input_url")
    if steps == "compress":
        if len(files) != 1 or files[0].kind != "ply":
            raise UploadRefused(422, "steps=compress takes exactly one .ply file (a 3DGS PLY); got "
                                     + ", ".join(f"{f.name} ({f.kind})" for f in files))
        return
    if steps == "train":
        _check_train_files(files)
        return
    for file in files:
        if file.kind not in ("image", "zip", "video"):
            raise UploadRefused(422, f"file {file.name} ({file.kind}) is not an input of steps={steps}: send "
                                     "photos, a .zip of photos or a video (a .ply goes with steps=compress, a "
                                     "COLMAP model with steps=train)")
        if file.kind == "zip":
            _check_zip(file, zip_check)


def _check_train_files(files: list[ReceivedFile]) -> None:
    fix = ("steps=train takes photos under images/ and a COLMAP model (cameras, images, points3D .bin or .txt) "
           "under sparse/ or sparse/0/")
    for file in files:
        top = file.name.split("/")[0]
        if file.kind == "image" and top == "images":
            continue
        if file.kind == "colmap" and top == "sparse":
            continue
        raise UploadRefused(422, f"file {file.name} ({file.kind}) does not belong in a steps=train upload: {fix}")
    if not any(file.kind == "image" for file in files):
        raise UploadRefused(422, f"no photos under images/: {fix}")
    models: dict[str, set[str]] = {}
    for file in files:
        if file.kind == "colmap":
            path = PurePosixPath(file.name)
            models.setdefault(str(path.parent), set()).add(path.stem)
    if not any({"cameras", "images", "points3D"} <= stems for stems in models.values()):
        raise UploadRefused(422, f"the COLMAP model is incomplete (folders sent: {sorted(models) or 'none'}): {fix}")


def _check_zip(file: ReceivedFile, zip_check: Any) -> None:
    try:
        with zipfile.ZipFile(file.path) as archive:
            if not archive.infolist():
                raise UploadRefused(422, f"file {file.name}: the zip is empty; zip the photo folder")
            if zip_check is not None:
                zip_check(archive, file.name)
    except SpaceportError as exc:  # zip-slip, links, too many entries, too large expanded
        raise UploadRefused(422, str(exc)) from None
    except zipfile.BadZipFile as exc:
        raise UploadRefused(422, f"file {file.name}: not a readable zip ({exc}); re-create it") from None


