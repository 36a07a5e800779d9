"""A job's downloadable results, read from its workspace (a local folder or object storage).

The other formats viewers read (.spz, .splat, PlayCanvas' compressed PLY) are made from the trained splat (or the
.ply a compress-only job started from) on their first download, by the code of ``spaceport export``, and kept in
the workspace's ``export/`` folder until that splat changes.
"""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from fastapi import Request

from spaceport.api.schemas import Artifact
from spaceport.errors import SpaceportError
from spaceport.jobs.models import Job
from spaceport.storage import Storage, open_storage

CHUNK = 1 << 20


@dataclass(frozen=True)
class ArtifactSpec:
    name: str
    path: str  # in the workspace: a file, or a folder zipped on demand
    media_type: str
    zipped: bool = False
    export_format: str | None = None  # made from export_source() on first download (spaceport export's formats)


TRAINED_SPLAT = "train/splat.ply"
# what an export reads of a workspace besides its splat: the job's compress settings, the training cameras it
# prunes with
EXPORT_INPUTS = ("job.json", "train/eval.json", "sfm/undistorted/sparse")

ARTIFACTS: dict[str, ArtifactSpec] = {spec.name: spec for spec in (
    ArtifactSpec("scene.sog", "compress/scene.sog", "application/octet-stream"),
    ArtifactSpec("splat.ply", "train/splat.ply", "application/octet-stream"),
    ArtifactSpec("sparse.zip", "sfm/sparse/0", "application/zip", zipped=True),
    ArtifactSpec("report.json", "report/report.json", "application/json"),
    ArtifactSpec("report.html", "report/index.html", "text/html; charset=utf-8"),
    ArtifactSpec("logs.zip", "logs", "application/zip", zipped=True),
    ArtifactSpec("scene.spz", "export/scene.spz", "application/octet-stream", export_format="spz"),
    ArtifactSpec("scene.splat", "export/scene.splat", "application/octet-stream", export_format="splat"),
    ArtifactSpec("scene.compressed.ply", "export/scene.compressed.ply", "application/octet-stream",
                 export_format="compressed-ply"),
)}


def workspace_storage(job: Job, request: Request) -> Storage:
    return open_storage(job.workspace_url, request.app.state.settings.s3_endpoint_url)


def artifact_size(storage: Storage, spec: ArtifactSpec, source: str | None) -> int | None | bool:
    """Size in bytes of a file artifact, None for a present zipped folder or an export not made yet, False when
    absent (an export: when ``source``, the workspace's ``export_source``, is None)."""
    if spec.zipped:
        return None if storage.list(spec.path) else False
    if spec.export_format is not None:
        if source is None:
            return False
        if not export_is_fresh(storage, spec, source):
            return None
    try:
        return int(storage.fs.size(f"{storage.root.rstrip('/')}/{spec.path}"))
    except (FileNotFoundError, OSError):
        return False


def export_source(storage: Storage) -> str | None:
    """The splat exports are made from, as ``spaceport export WORKSPACE`` picks it: the trained splat, else the one
    .ply a compress-only job started from; None when there is neither (a workspace with only a SOG, which the
    command would still export, offers no exports here)."""
    if storage.exists(TRAINED_SPLAT):
        return TRAINED_SPLAT
    uploaded = [rel for rel in storage.list("input") if PurePosixPath(rel).parent.as_posix() == "input"
                and rel.lower().endswith(".ply")]
    return uploaded[0] if len(uploaded) == 1 else None


def export_is_fresh(storage: Storage, spec: ArtifactSpec, source: str) -> bool:
    """True when the export is there and no older than the splat it was made from."""
    return storage.exists(spec.path) and storage.modified(spec.path) >= storage.modified(source)


def ensure_export(storage: Storage, spec: ArtifactSpec, source: str | None) -> None:
    """Make the export artifact ``spec`` from ``source`` (the workspace's ``export_source``) unless a fresh one is
    there. Two requests at once may both make it; each file lands whole (see ``Storage.put_file``), so either is
    served."""
    from spaceport.compress.export import export_splat  # torch and the encoders: loaded on the first export

    if source is None:
        raise SpaceportError(f"{storage.url()}: no trained splat ({TRAINED_SPLAT}) nor uploaded .ply to export")
    if export_is_fresh(storage, spec, source):
        return
    with tempfile.TemporaryDirectory(prefix="spaceport-export-") as tmp:
        workspace = Path(tmp) / "workspace"
        if storage.is_local:
            workspace = Path(storage.root)
        else:
            fetch_export_inputs(storage, source, workspace)
        output = Path(tmp) / PurePosixPath(spec.path).name
        try:
            export_splat(workspace, spec.export_format, output)
        except SpaceportError as exc:  # name the workspace's file, not the local copy of it
            raise SpaceportError(str(exc).replace(str(workspace), storage.url())) from exc
        storage.put_file(output, spec.path)


def fetch_export_inputs(storage: Storage, source: str, folder: Path) -> None:
    """A local copy of what an export reads of a workspace in object storage (not its photos)."""
    for rel in (source, *EXPORT_INPUTS):
        for file in storage.list(rel):
            storage.get_file(file, folder / file)


def present_artifacts(storage: Storage) -> list[tuple[ArtifactSpec, int | None]]:
    """Each artifact the workspace offers now, with its size (see ``artifact_size``)."""
    source = export_source(storage)  # once per listing: each look is a request on object storage
    sizes = [(spec, artifact_size(storage, spec, source)) for spec in ARTIFACTS.values()]
    return [(spec, size) for spec, size in sizes if size is not False]


def list_artifacts(job: Job, request: Request) -> list[Artifact]:
    """The artifacts present in the job's workspace now, with their download URLs."""
    if job.state == "queued" and job.started_at is None:
        return []
    return [Artifact(name=spec.name, size=size,
                     url=str(request.url_for("download_artifact", job_id=job.id, name=spec.name)))
            for spec, size in present_artifacts(workspace_storage(job, request))]


def iter_file(handle: IO[bytes]) -> Iterator[bytes]:
    with handle:
        while chunk := handle.read(CHUNK):
            yield chunk


def zip_folder(storage: Storage, folder: str) -> IO[bytes]:
    """A temporary zip of every file under ``folder`` (names relative to it), rewound for reading."""
    output: Any = tempfile.TemporaryFile()
    prefix = folder.rstrip("/") + "/"
    with zipfile.ZipFile(output, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for rel in storage.list(folder):
            with storage.open(rel) as source, archive.open(rel.removeprefix(prefix), "w") as target:
                while chunk := source.read(CHUNK):
                    target.write(chunk)
    output.seek(0)
    return output
