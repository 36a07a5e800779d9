"""Where workspaces and inputs live: local folders (``file://``) or S3-compatible object storage (``s3://``).

One small facade over fsspec, so the API, the embedded worker and the Celery workers move files the same way:

- :func:`open_storage` gives a :class:`Storage` rooted at a URL (``file:///srv/spaceport`` or ``s3://bucket/prefix``,
  with ``endpoint_url`` for MinIO, moto, ...). Paths given to its methods are relative to that root, ``/``-separated,
  and may not climb out of it (``..`` is refused).
- :func:`check_input_url` / :func:`stage_input` accept a job's ``input_url``: ``s3://bucket/key-or-prefix`` or
  ``file://`` under one of the configured import roots, nothing else.
- :func:`sync_stage_outputs` / :func:`restore_workspace` mirror a workspace to storage stage by stage (each stage's
  ``.done`` marker uploaded last) and back, so a job started on one machine can continue on another.

S3 credentials come from the usual AWS sources (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / profile), the
region from ``AWS_DEFAULT_REGION``. Files are streamed in chunks, never read whole into memory.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from fsspec.implementations.local import LocalFileSystem

from spaceport.errors import SpaceportError
from spaceport.formats.atomic import PARTIAL
from spaceport.workspace import LOCK_FILE

DONE_MARKER = ".done"
# S3 transfers move parts of this size, this many at once: at most ~64 MiB of a file in memory at a time
S3_PART_BYTES = 16 * 2**20
S3_CONCURRENCY = 4
S3_MAX_PARTS = 10_000
# S3 bucket names: 3-63 characters, lower case letters, digits, dots and hyphens (dots: legacy buckets)
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")


class InputUrlError(SpaceportError):
    """A job's input_url breaks the rule: s3://... or file:// under an import root (the API answers 422)."""


class StorageError(SpaceportError):
    """A storage URL or a path inside a storage that cannot be used."""


# -- the Storage facade -----------------------------------------------------------------------------------------


def _clean_rel(rel: str | PurePosixPath) -> str:
    """``rel`` as ``a/b/c`` (no leading slash, no ``.`` parts); raises on ``..`` or an absolute path."""
    text = str(rel).replace("\\", "/")
    if text.startswith("/"):
        raise StorageError(f"storage path {text!r} must be relative to the storage root (drop the leading /)")
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise StorageError(f"storage path {text!r} may not contain '..'")
    return "/".join(parts)


def _join(*parts: str) -> str:
    return "/".join(part.strip("/") for part in parts if part.strip("/"))


@dataclass(frozen=True)
class Storage:
    """An fsspec filesystem plus a root; every path argument is relative to the root.

    Attributes:
        fs: the fsspec filesystem (``LocalFileSystem`` or ``s3fs.S3FileSystem``).
        root: the root in ``fs`` terms: an absolute local path, or ``bucket/prefix`` on S3 (no trailing slash).
        protocol: ``"file"`` or ``"s3"``.
    """

    fs: Any
    root: str
    protocol: str

    @property
    def is_local(self) -> bool:
        return self.protocol == "file"

    def _path(self, rel: str | PurePosixPath = "") -> str:
        clean = _clean_rel(rel)
        if not clean:
            return self.root
        return f"{self.root.rstrip('/')}/{clean}"

    def _rel_of(self, fs_path: str) -> str:
        fs_path = self.fs._strip_protocol(fs_path)
        root = self.root.rstrip("/")
        if fs_path == root:
            return ""
        if not fs_path.startswith(root + "/"):
            raise StorageError(f"{fs_path} is outside the storage root {root}")
        return fs_path[len(root) + 1:]

    def url(self, rel: str | PurePosixPath = "") -> str:
        """The full URL of ``rel`` (``file:///...`` or ``s3://bucket/...``)."""
        path = self._path(rel)
        return Path(path).as_uri() if self.is_local else f"s3://{path}"

    def exists(self, rel: str | PurePosixPath) -> bool:
        """True when ``rel`` is a file, or a folder/prefix holding at least one file."""
        return bool(self.fs.exists(self._path(rel)))

    def modified(self, rel: str | PurePosixPath) -> datetime:
        """When the file ``rel`` was last written (timezone-aware, UTC)."""
        stamp = self.fs.modified(self._path(rel))
        return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)

    def list(self, prefix: str | PurePosixPath = "") -> list[str]:
        """Every file under ``prefix`` (recursively), as sorted paths relative to the root; ``[prefix]`` when
        ``prefix`` is itself a file; ``[]`` when nothing is there."""
        path = self._path(prefix)
        try:
            if self.fs.isfile(path):
                return [self._rel_of(path)]
            found = self.fs.find(path, withdirs=False)
        except FileNotFoundError:
            return []
        return sorted(self._rel_of(item) for item in found)

    def open(self, rel: str | PurePosixPath, mode: str = "rb") -> IO[Any]:
        """A file object for ``rel`` (``rb``, ``wb``, ...); parent folders are created on write."""
        return self.fs.open(self._path(rel), mode)

    def put_file(self, local_path: str | os.PathLike[str], rel: str | PurePosixPath) -> None:
        """Upload one file, streamed. Local storage writes a temporary sibling and renames it, so readers never
        see half a file; an S3 object only appears once completely uploaded."""
        target = self._path(rel)
        if not _clean_rel(rel):
            raise StorageError("put_file needs a file name under the storage root, got an empty path")
        if self.is_local:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            temporary = f"{target}.{uuid.uuid4().hex}.part"
            try:
                shutil.copyfile(local_path, temporary)
                os.replace(temporary, target)
            finally:
                Path(temporary).unlink(missing_ok=True)
        else:
            part_bytes = max(S3_PART_BYTES, -(-os.path.getsize(local_path) // S3_MAX_PARTS))
            self.fs.put_file(os.fspath(local_path), target, chunksize=part_bytes)

    def get_file(self, rel: str | PurePosixPath, local_path: str | os.PathLike[str]) -> None:
        """Download one file, streamed, through a temporary sibling renamed at the end."""
        destination = Path(local_path)
        destination.parent.mkdir(parents=True, exist_ok=True)
        temporary = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.part")
        try:
            if self.is_local:
                self.fs.get_file(self._path(rel), str(temporary))
            else:
                self.fs.get_file(self._path(rel), str(temporary), chunksize=S3_PART_BYTES)
            os.replace(temporary, destination)
        finally:
            temporary.unlink(missing_ok=True)

    def put_dir(self, local_dir: str | os.PathLike[str], remote_rel: str | PurePosixPath) -> list[str]:
        """Upload every file under ``local_dir`` to ``remote_rel/<same relative path>``; returns the paths written."""
        local_root = Path(local_dir)
        if not local_root.is_dir():
            raise StorageError(f"{local_root} is not a folder; put_dir uploads a folder")
        written = []
        for file in _files_under(local_root):
            rel = _join(_clean_rel(remote_rel), file.relative_to(local_root).as_posix())
            self.put_file(file, rel)
            written.append(rel)
        return written

    def get_dir(self, remote_rel: str | PurePosixPath, local_dir: str | os.PathLike[str]) -> list[Path]:
        """Download every file under ``remote_rel`` into ``local_dir`` (same relative layout); returns the files."""
        prefix = _clean_rel(remote_rel)
        local_root = Path(local_dir)
        written = []
        for rel in self.list(prefix):
            destination = _inside(local_root, _strip_prefix(rel, prefix) or PurePosixPath(rel).name)
            self.get_file(rel, destination)
            written.append(destination)
        return written

    def delete(self, rel: str | PurePosixPath) -> None:
        """Remove a file or everything under a folder/prefix; nothing happens when it does not exist."""
        if not _clean_rel(rel):
            raise StorageError("refusing to delete the whole storage root; name a path under it")
        path = self._path(rel)
        if self.fs.exists(path):
            self.fs.rm(path, recursive=True)


def open_storage(url: str, endpoint_url: str | None = None) -> Storage:
    """A :class:`Storage` rooted at ``url``.

    Args:
        url: ``file:///abs/folder`` (a plain absolute path works too) or ``s3://bucket[/prefix]``.
        endpoint_url: S3-compatible endpoint (``Settings.s3_endpoint_url``); None: AWS.
    """
    parts = urlsplit(url)
    if parts.scheme in ("", "file"):
        if parts.netloc not in ("", "localhost"):
            raise StorageError(f"storage URL {url}: file URLs have no host; write file:///absolute/path")
        path = Path(unquote(parts.path))
        if not path.is_absolute():
            raise StorageError(f"storage URL {url}: the path must be absolute (file:///absolute/path)")
        return Storage(fs=LocalFileSystem(auto_mkdir=True), root=str(path.resolve()), protocol="file")
    if parts.scheme == "s3":
        if not _BUCKET_NAME.match(parts.netloc):
            raise StorageError(f"storage URL {url}: {parts.netloc!r} is not a valid bucket name (s3://bucket/prefix)")
        root = _join(parts.netloc, unquote(parts.path))
        return Storage(fs=_s3_filesystem(endpoint_url), root=root, protocol="s3")
    raise StorageError(f"storage URL must be file:///absolute/path or s3://bucket/prefix; got {url}")


def _s3_filesystem(endpoint_url: str | None) -> Any:
    import s3fs

    # listings are not cached: another machine may have written since (a worker resuming a job's workspace)
    return s3fs.S3FileSystem(endpoint_url=endpoint_url, use_listings_cache=False, max_concurrency=S3_CONCURRENCY)


# -- helpers on local trees -------------------------------------------------------------------------------------


def _files_under(folder: Path) -> list[Path]:
    """Regular files under ``folder``, sorted, not following symlinked folders (no loops, no escapes)."""
    found = []
    for dirpath, _dirnames, filenames in os.walk(folder):
        for name in filenames:
            path = Path(dirpath) / name
            if path.is_file():
                found.append(path)
    return sorted(found)


def _inside(root: Path, rel: str) -> Path:
    """``root / rel`` after checking that it stays inside ``root`` (a key like ``a/../../x`` would not)."""
    clean = _clean_rel(rel)
    if not clean:
        raise StorageError(f"empty file name under {root}")
    return root / clean


def _strip_prefix(rel: str, prefix: str) -> str:
    if not prefix:
        return rel
    if rel == prefix:
        return ""
    return rel[len(prefix) + 1:] if rel.startswith(prefix + "/") else rel


def _is_transient(rel: str) -> bool:
    """Paths that are never synced: atomic-write temporaries and staging folders of a write in flight, partial
    downloads, the workspace lock."""
    parts = PurePosixPath(rel).parts
    return (any(PARTIAL in part for part in parts) or parts[-1].endswith((".tmp", ".part"))
            or parts[-1] == LOCK_FILE)


# -- a job's input ----------------------------------------------------------------------------------------------


def _rule(url: str, import_roots: Sequence[Path]) -> str:
    roots = ", ".join(str(Path(root).resolve()) for root in import_roots) or "none configured: spaceport serve " \
        "--import-root DIR"
    shown = url if len(url) <= 200 else url[:200] + "..."
    return f"input_url must be s3://bucket/key-or-prefix or file:// under an import root ({roots}); got {shown}"


def _under_any(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def check_input_url(url: str, import_roots: Sequence[Path]) -> str:
    """Validate a job's ``input_url`` without reading any data; returns it normalized.

    ``s3://bucket/key-or-prefix`` is accepted as is (no network call). ``file://`` is accepted only when the path,
    with ``..`` and symlinks resolved, lies under one of ``import_roots`` and exists; it comes back as the
    ``file://`` URL of the resolved path. Anything else raises :class:`InputUrlError` naming the rule.
    """
    parts = urlsplit(url.strip())
    if parts.scheme == "s3":
        if not _BUCKET_NAME.match(parts.netloc):
            raise InputUrlError(f"{_rule(url, import_roots)} ({parts.netloc!r} is not a valid bucket name)")
        if ".." in unquote(parts.path).split("/"):
            raise InputUrlError(f"input_url {url}: an S3 key may not contain '..' here; name the object or prefix")
        return url.strip()
    if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
        raise InputUrlError(_rule(url, import_roots))
    roots = [Path(root).resolve() for root in import_roots]
    try:
        path = Path(unquote(parts.path))
        resolved = path.resolve()
    except (ValueError, OSError) as exc:  # a NUL byte, a symlink loop
        raise InputUrlError(f"{_rule(url, import_roots)} ({exc})") from None
    if not path.is_absolute() or not roots or not _under_any(resolved, roots):
        raise InputUrlError(_rule(url, import_roots))
    if not resolved.exists():
        raise InputUrlError(f"input_url {url}: {resolved} does not exist")
    return resolved.as_uri()


def stage_input(input_url: str, dest_dir: Path, *, import_roots: Sequence[Path],
                endpoint_url: str | None = None) -> list[Path]:
    """Copy a job's input to ``dest_dir`` and return the files written (sorted).

    ``s3://bucket/key`` copies that object to ``dest_dir/<name>``; ``s3://bucket/prefix`` copies every object
    under the prefix, keeping the layout below it. ``file://`` under an import root copies a file, or a folder
    tree; a symlink anywhere in it that leads outside the import roots refuses the whole input (nothing copied).
    Raises :class:`InputUrlError` for any other URL, or when there is nothing at the URL.
    """
    normalized = check_input_url(input_url, import_roots)
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    if normalized.startswith("s3://"):
        return _stage_s3(normalized, dest_dir, endpoint_url)
    roots = [Path(root).resolve() for root in import_roots]
    return _stage_local(Path(unquote(urlsplit(normalized).path)), dest_dir, roots, input_url)


def _stage_s3(url: str, dest_dir: Path, endpoint_url: str | None) -> list[Path]:
    parts = urlsplit(url)
    storage = open_storage(f"s3://{parts.netloc}", endpoint_url)
    key = _clean_rel(unquote(parts.path).lstrip("/"))
    try:
        rels = storage.list(key)
    except PermissionError as exc:
        raise InputUrlError(f"input_url {url}: access denied ({exc}); check the worker's S3 credentials") from None
    if not rels:
        raise InputUrlError(f"input_url {url}: no object or prefix with that name (check the bucket and key)")
    written = []
    for rel in rels:
        destination = _inside(dest_dir, _strip_prefix(rel, key) or PurePosixPath(rel).name)
        storage.get_file(rel, destination)
        written.append(destination)
    return sorted(written)


def _stage_local(source: Path, dest_dir: Path, roots: list[Path], shown_url: str) -> list[Path]:
    if source.is_file():
        plan = [(source, dest_dir / source.name)]
    else:
        plan = _plan_tree_copy(source, dest_dir, roots, shown_url)
    if not plan:
        raise InputUrlError(f"input_url {shown_url}: the folder {source} holds no files")
    for origin, destination in plan:
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(origin, destination)
    return sorted(destination for _, destination in plan)


def _plan_tree_copy(source: Path, dest_dir: Path, roots: list[Path], shown_url: str) -> list[tuple[Path, Path]]:
    """(file, destination) pairs for a folder tree, every symlink checked before anything is copied."""
    plan: list[tuple[Path, Path]] = []
    seen: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
        real_dir = Path(dirpath).resolve()
        if real_dir in seen:  # a symlink loop, or the same folder linked twice
            dirnames.clear()
            continue
        seen.add(real_dir)
        for name in sorted(dirnames) + sorted(filenames):
            entry = Path(dirpath) / name
            if not _under_any(entry.resolve(), roots):
                raise InputUrlError(f"input_url {shown_url}: {entry} is a symlink leading outside the import roots "
                                    f"({', '.join(map(str, roots))}); copy the files in instead")
        for name in sorted(filenames):
            entry = Path(dirpath) / name
            if entry.is_file():
                plan.append((entry, dest_dir / entry.relative_to(source)))
    return plan


# -- workspaces -------------------------------------------------------------------------------------------------


def sync_stage_outputs(ws_root: Path, storage: Storage, job_prefix: str, stage_dir_names: Sequence[str]) -> list[str]:
    """Mirror ``ws_root/<name>`` to ``job_prefix/<name>`` in storage for each name, and return the paths written.

    A name is a stage folder (``images``, ``sfm``, ``train``, ...), another folder (``logs``) or a file
    (``job.json``). The remote copy ends up equal to the local one (remote files missing locally are removed;
    a name missing locally is removed remotely). Order, so that no reader sees a half-uploaded stage as done:
    old remote ``.done`` markers are deleted first, then the files are uploaded, stale ones removed, and the
    ``.done`` markers uploaded last.
    """
    ws_root = Path(ws_root)
    prefix = _clean_rel(job_prefix)
    names = [_clean_rel(name) for name in stage_dir_names]
    if any(not name for name in names):
        raise StorageError(f"sync_stage_outputs: empty stage folder name in {list(stage_dir_names)}")
    remote_before = {name: storage.list(_join(prefix, name)) for name in names}
    for name in names:
        for rel in remote_before[name]:
            if PurePosixPath(rel).name == DONE_MARKER:
                storage.delete(rel)
    written: list[str] = []
    markers: list[tuple[Path, str]] = []
    for name in names:
        local_files = _local_files_of(ws_root, name)
        uploaded = set()
        for file in local_files:
            rel = _join(prefix, file.relative_to(ws_root).as_posix())
            uploaded.add(rel)
            if file.name == DONE_MARKER:
                markers.append((file, rel))
                continue
            storage.put_file(file, rel)
            written.append(rel)
        for rel in remote_before[name]:
            if rel not in uploaded and PurePosixPath(rel).name != DONE_MARKER:
                storage.delete(rel)
    for file, rel in markers:
        storage.put_file(file, rel)
        written.append(rel)
    return written


def _local_files_of(ws_root: Path, name: str) -> list[Path]:
    local = ws_root / name
    if local.is_file():
        return [local]
    if not local.is_dir():
        return []
    return [file for file in _files_under(local) if not _is_transient(file.relative_to(ws_root).as_posix())]


def restore_workspace(storage: Storage, job_prefix: str, ws_root: Path) -> list[Path]:
    """Download everything under ``job_prefix`` into ``ws_root`` (same layout), ``.done`` markers last, so an
    interrupted restore never leaves a stage marked done without its outputs. Returns the files written."""
    prefix = _clean_rel(job_prefix)
    ws_root = Path(ws_root)
    rels = [rel for rel in storage.list(prefix) if not _is_transient(rel)]
    ordered = sorted(rels, key=lambda rel: (PurePosixPath(rel).name == DONE_MARKER, rel))
    written = []
    for rel in ordered:
        destination = _inside(ws_root, _strip_prefix(rel, prefix))
        storage.get_file(rel, destination)
        written.append(destination)
    return written
