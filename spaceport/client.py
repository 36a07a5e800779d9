"""HTTP client of the job service, used by `spaceport jobs` (submit, list, show, watch, cancel, download).

Bodies are parsed with the API's own schemas (``spaceport.api.schemas``), so the client and the server share them.
Uploads and downloads are streamed: no file is ever read whole into memory.
"""

from __future__ import annotations

import mimetypes
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol
from urllib.parse import quote

import httpx
from httpx_sse import connect_sse
from pydantic import ValidationError

from spaceport.api.schemas import EventOut, JobCreate, JobList, JobOut
from spaceport.errors import SpaceportError

DEFAULT_SERVER = "http://127.0.0.1:8000"
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
CHUNK = 1 << 20
# the server sends a keep-alive comment every 15 s on an idle event stream: silence for longer is a dead connection
EVENT_READ_TIMEOUT_S = 60.0
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".heic", ".heif"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".avi", ".m4v", ".webm"})
COLMAP_STEMS = frozenset({"cameras", "images", "points3D", "rigs", "frames"})
# where a COLMAP model may sit in a folder uploaded for steps=train (the last one: a `spaceport run` workspace)
SPARSE_FOLDERS = ("sparse/0", "sparse", "sfm/sparse/0")


class ApiError(SpaceportError):
    """The server answered with an error status; ``detail`` is its message (what to fix)."""

    def __init__(self, server: str, status: int, detail: str):
        hint = " (pass --key or set SPACEPORT_API_KEY)" if status == 401 and "SPACEPORT_API_KEY" not in detail else ""
        super().__init__(f"{detail}{hint} [HTTP {status} from {server}]")
        self.status = status
        self.detail = detail


class ServerUnreachable(SpaceportError):
    def __init__(self, server: str, reason: str):
        super().__init__(f"cannot reach the Spaceport server at {server} ({reason}): start one with "
                         "`spaceport serve` (see `spaceport serve --help`), or point --server / SPACEPORT_SERVER "
                         "at a running one")


class ConnectionBroken(SpaceportError):
    """The connection failed after it was made (reset, cut off, timed out)."""


class TransferProgress(Protocol):
    """What uploads and downloads report to (the CLI shows a rich bar)."""

    def start(self, label: str, total: int | None) -> None: ...

    def advance(self, n: int) -> None: ...


# -- what to upload --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadFile:
    name: str  # relative, /-separated: the file name the server sees (images/a.jpg)
    path: Path
    size: int


@dataclass
class UploadPlan:
    files: list[UploadFile]
    steps: str  # the step selection this input suits (full, train or compress)
    skipped: list[str] = field(default_factory=list)  # files of the folder that are not inputs

    @property
    def total_bytes(self) -> int:
        return sum(file.size for file in self.files)


def _visible_files(folder: Path) -> list[Path]:
    return [path for path in sorted(folder.rglob("*")) if path.is_file()
            and not any(part.startswith(".") or part == "__MACOSX" for part in path.relative_to(folder).parts)]


def _upload_file(path: Path, name: str) -> UploadFile:
    return UploadFile(name=name, path=path, size=path.stat().st_size)


def plan_upload(source: Path) -> UploadPlan:
    """The files to upload for ``source``: one file (photo, .zip, video, .ply), a folder of photos, or a folder with
    images/ and a COLMAP model (sparse/0, sparse or sfm/sparse/0) for steps=train."""
    if not source.exists():
        raise SpaceportError(f"input {source} does not exist: give a folder of photos, a .zip, a video, a .ply, "
                             "a folder with images/ and sparse/0/, or an s3:// or file:// URL")
    if source.is_file():
        steps = "compress" if source.suffix.lower() == ".ply" else "full"
        return UploadPlan([_upload_file(source, source.name)], steps)
    images = source / "images"
    sparse = next((source / rel for rel in SPARSE_FOLDERS if _is_colmap_model(source / rel)), None)
    if images.is_dir() and sparse is not None:
        return _plan_train_folder(images, sparse)
    files = _visible_files(source)
    photos = [path for path in files if path.suffix.lower() in IMAGE_SUFFIXES]
    if not photos and len(files) == 1 and files[0].suffix.lower() in VIDEO_SUFFIXES | {".zip"}:
        photos = files
    if not photos:
        raise SpaceportError(f"input folder {source} holds no photos (JPEG, PNG, TIFF, WebP): give a folder of "
                             "photos, a .zip, a video, or a folder with images/ and sparse/0/ (steps train)")
    skipped = [path.relative_to(source).as_posix() for path in files if path not in photos]
    return UploadPlan([_upload_file(path, path.relative_to(source).as_posix()) for path in photos], "full", skipped)


def _is_colmap_model(folder: Path) -> bool:
    stems = {path.stem for path in folder.glob("*") if path.is_file() and path.suffix in (".bin", ".txt")}
    return folder.is_dir() and {"cameras", "images", "points3D"} <= stems


def _plan_train_folder(images: Path, sparse: Path) -> UploadPlan:
    photos = [path for path in _visible_files(images) if path.suffix.lower() in IMAGE_SUFFIXES]
    if not photos:
        raise SpaceportError(f"{images} holds no photos: steps=train needs the photos of the COLMAP model there")
    files = [_upload_file(path, f"images/{path.relative_to(images).as_posix()}") for path in photos]
    model = [path for path in sorted(sparse.iterdir())
             if path.is_file() and path.stem in COLMAP_STEMS and path.suffix in (".bin", ".txt")]
    files += [_upload_file(path, f"sparse/0/{path.name}") for path in model]
    return UploadPlan(files, "train")


# -- the request body of an upload -----------------------------------------------------------------------------


def _quoted(value: str) -> str:
    # form-data names are quoted strings: escape as browsers do (WHATWG HTML, multipart/form-data encoding)
    return value.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")


class MultipartBody:
    """A multipart/form-data body streamed from disk: the ``job`` JSON part, then one ``files`` part per file.

    httpx's ``files=`` would open every file up front (thousands of photos exceed the open-file limit); here each
    file is opened only while it is sent, its length is known before (Content-Length), and every chunk is reported
    to ``progress``."""

    def __init__(self, job_json: str, files: Sequence[UploadFile], progress: TransferProgress | None = None):
        self.boundary = f"spaceport-{uuid.uuid4().hex}"
        self.job_json = job_json.encode()
        self.files = list(files)
        self.progress = progress

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def _head(self, name: str, filename: str | None = None, content_type: str = "application/json") -> bytes:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{_quoted(filename)}"'
        return (f"--{self.boundary}\r\nContent-Disposition: {disposition}\r\n"
                f"Content-Type: {content_type}\r\n\r\n").encode()

    def _file_head(self, file: UploadFile) -> bytes:
        content_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        return self._head("files", file.name, content_type)

    def _tail(self) -> bytes:
        return f"--{self.boundary}--\r\n".encode()

    def __len__(self) -> int:
        size = len(self._head("job")) + len(self.job_json) + 2 + len(self._tail())
        return size + sum(len(self._file_head(file)) + file.size + 2 for file in self.files)

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._chunks():
            yield chunk
            if self.progress is not None:
                self.progress.advance(len(chunk))

    def _chunks(self) -> Iterator[bytes]:
        yield self._head("job") + self.job_json + b"\r\n"
        for file in self.files:
            yield self._file_head(file)
            with open(file.path, "rb") as handle:
                sent = 0
                while chunk := handle.read(CHUNK):
                    sent += len(chunk)
                    yield chunk
            if sent != file.size:  # the Content-Length already sent would be wrong
                raise SpaceportError(f"{file.path} changed size during the upload ({file.size} -> {sent} bytes): "
                                     "submit again once nothing writes to it")
            yield b"\r\n"
        yield self._tail()


# -- the client ------------------------------------------------------------------------------------------------


def _validation_message(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(part) for part in error['loc'])}: {error['msg'].removeprefix('Value error, ')}"
                     for error in exc.errors())


def job_spec(**fields: Any) -> JobCreate:
    """A JobCreate, or a SpaceportError naming the bad field (checked here before anything is uploaded)."""
    try:
        return JobCreate(**fields)
    except ValidationError as exc:
        raise SpaceportError(_validation_message(exc)) from None


def is_final_event(event: EventOut) -> bool:
    return event.kind == "state" and bool(event.data) and event.data.get("state") in FINAL_STATES


class ApiClient:
    """The job API at ``server`` with the API key ``key``; use as a context manager (closes its connections)."""

    def __init__(self, server: str = DEFAULT_SERVER, key: str | None = None, *, timeout_s: float = 30.0):
        self.server = server.rstrip("/")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=httpx.Timeout(timeout_s, connect=10))

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    # -- requests ----------------------------------------------------------------------------------------------

    def _error(self, response: httpx.Response) -> ApiError:
        try:
            detail = str(response.json()["detail"])
        except (ValueError, KeyError, TypeError):
            detail = response.text.strip()[:300] or response.reason_phrase
        return ApiError(self.server, response.status_code, detail)

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServerUnreachable(self.server, str(exc) or type(exc).__name__) from None
        except httpx.TransportError as exc:
            raise ConnectionBroken(f"the connection to {self.server} failed during {method} {path} "
                                   f"({str(exc) or type(exc).__name__}): try again") from None
        if response.is_error:
            raise self._error(response)
        return response

    def list_jobs(self, *, limit: int = 20, cursor: str | None = None, state: str | None = None) -> JobList:
        params = {key: value for key, value in (("limit", limit), ("cursor", cursor), ("state", state)) if value}
        return JobList.model_validate_json(self._request("GET", "/v1/jobs", params=params).content)

    def get_job(self, job_id: str) -> JobOut:
        return JobOut.model_validate_json(self._request("GET", f"/v1/jobs/{quote(job_id, safe='')}").content)

    def cancel(self, job_id: str) -> JobOut:
        return JobOut.model_validate_json(self._request("POST", f"/v1/jobs/{quote(job_id, safe='')}/cancel").content)

    def submit_url(self, spec: JobCreate) -> JobOut:
        """A job on data already in storage (``spec.input_url``: s3://... or file:// under an import root)."""
        body = spec.model_dump_json(exclude_none=True)
        response = self._request("POST", "/v1/jobs", content=body, headers={"Content-Type": "application/json"})
        return JobOut.model_validate_json(response.content)

    def submit_files(self, files: Sequence[UploadFile], spec: JobCreate,
                     progress: TransferProgress | None = None) -> JobOut:
        """Upload ``files`` (multipart, streamed) as the input of a job described by ``spec``."""
        self.list_jobs(limit=1)  # a wrong key or server fails now, not after the whole upload
        body = MultipartBody(spec.model_dump_json(exclude_none=True, exclude={"input_url"}), files, progress)
        total = len(body)
        if progress is not None:
            count = len(body.files)
            progress.start(f"uploading {count} file{'s' if count != 1 else ''}", total)
        headers = {"Content-Type": body.content_type, "Content-Length": str(total)}
        try:
            response = self._request("POST", "/v1/jobs", content=body, headers=headers,
                                     timeout=httpx.Timeout(600.0, connect=10))
        except ConnectionBroken:
            raise SpaceportError(f"the upload of {total} bytes to {self.server} was cut off: the server may refuse "
                                 "uploads this large (its limit is SPACEPORT_MAX_UPLOAD_BYTES) or have stopped; "
                                 "put large inputs in object storage and submit the s3:// URL instead") from None
        return JobOut.model_validate_json(response.content)

    # -- events ------------------------------------------------------------------------------------------------

    def _event_stream(self, job_id: str, after: int) -> Iterator[EventOut]:
        headers = {"Last-Event-ID": str(after)} if after else {}
        timeout = httpx.Timeout(10.0, read=EVENT_READ_TIMEOUT_S)
        with connect_sse(self.http, "GET", f"/v1/jobs/{quote(job_id, safe='')}/events", headers=headers,
                         timeout=timeout) as source:
            if source.response.is_error:
                source.response.read()
                raise self._error(source.response)
            for message in source.iter_sse():
                if message.data:  # the opening `retry:` message has none
                    yield EventOut.model_validate_json(message.data)

    def follow_events(self, job_id: str, after: int = 0, *, reconnect_s: float = 120.0,
                      on_reconnect: Callable[[str], None] | None = None) -> Iterator[EventOut]:
        """The job's events after event ``after``, live, ending with its final state event.

        A dropped connection (or a restarting server) is resumed with ``Last-Event-ID``, so no event is missed or
        repeated; ``on_reconnect(reason)`` is told each time. Gives up after ``reconnect_s`` without a connection.
        """
        last, outage_since, delay = after, None, 0.25
        while True:
            received = False
            try:
                for event in self._event_stream(job_id, last):
                    received, outage_since, delay, last = True, None, 0.25, event.id
                    yield event
                    if is_final_event(event):
                        return
                if not received and self.get_job(job_id).state in FINAL_STATES:
                    return  # nothing more will come
                reason = "the event stream ended early"
            except httpx.TransportError as exc:
                reason = f"connection lost ({str(exc) or type(exc).__name__})"
            except (ServerUnreachable, ConnectionBroken) as exc:
                reason = str(exc)
            except ApiError as exc:
                if exc.status < 500:
                    raise
                reason = f"server error {exc.status}"
            if received:
                continue
            outage_since = outage_since if outage_since is not None else time.monotonic()
            if time.monotonic() - outage_since > reconnect_s:
                raise ServerUnreachable(self.server, f"{reason}; no connection for {reconnect_s:.0f} s")
            if on_reconnect is not None:
                on_reconnect(f"{reason}; reconnecting to resume after event {last}")
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    # -- artifacts ---------------------------------------------------------------------------------------------

    def download(self, job_id: str, name: str, folder: Path, progress: TransferProgress | None = None) -> Path:
        """Save artifact ``name`` of the job as ``folder/name`` (written to ``name.part``, renamed when whole)."""
        if PurePosixPath(name).name != name or name.startswith(".") or "\\" in name:
            raise SpaceportError(f"artifact name {name!r}: give a plain name like scene.sog")
        target, partial = folder / name, folder / f"{name}.part"
        try:
            self._save(f"/v1/jobs/{quote(job_id, safe='')}/artifacts/{quote(name, safe='')}", partial, name,
                       progress)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, target)
        return target

    def _save(self, path: str, destination: Path, label: str, progress: TransferProgress | None) -> None:
        try:
            with self.http.stream("GET", path, timeout=httpx.Timeout(10.0, read=300.0)) as response:
                if response.is_error:
                    response.read()
                    raise self._error(response)
                length = response.headers.get("content-length")
                if progress is not None:
                    progress.start(label, int(length) if length and length.isdigit() else None)
                destination.parent.mkdir(parents=True, exist_ok=True)
                with open(destination, "wb") as out:
                    for chunk in response.iter_bytes(CHUNK):
                        out.write(chunk)
                        if progress is not None:
                            progress.advance(len(chunk))
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ServerUnreachable(self.server, str(exc) or type(exc).__name__) from None
        except httpx.TransportError as exc:
            raise ConnectionBroken(f"the download of {label} from {self.server} was cut off "
                                   f"({str(exc) or type(exc).__name__}): run the same command again") from None
