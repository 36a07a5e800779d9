"""A job's downloadable results, read from its workspace (a local folder or object storage)."""

from __future__ import annotations

import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from fastapi import Request

from spaceport.api.schemas import Artifact
from spaceport.jobs.models import Job
from spaceport.storage import Storage, open_storage

CHUNK = 1 << 20


@dataclass(frozen=True)
class ArtifactSpec:
    name: str
    path: str  # in the workspace: a file, or a folder zipped on demand
    media_type: str
    zipped: bool = False


ARTIFACTS: dict[str, ArtifactSpec] = {spec.name: spec for spec in (
    ArtifactSpec("scene.sog", "compress/scene.sog", "application/octet-stream"),
    ArtifactSpec("splat.ply", "train/splat.ply", "application/octet-stream"),
    ArtifactSpec("sparse.zip", "sfm/sparse/0", "application/zip", zipped=True),
    ArtifactSpec("report.json", "report/report.json", "application/json"),
    ArtifactSpec("report.html", "report/index.html", "text/html; charset=utf-8"),
    ArtifactSpec("logs.zip", "logs", "application/zip", zipped=True),
)}


def workspace_storage(job: Job, request: Request) -> Storage:
    return open_storage(job.workspace_url, request.app.state.settings.s3_endpoint_url)


def artifact_size(storage: Storage, spec: ArtifactSpec) -> int | None | bool:
    """Size in bytes of a file artifact, None for a present zipped folder, False when absent."""
    if spec.zipped:
        return None if storage.list(spec.path) else False
    try:
        return int(storage.fs.size(f"{storage.root.rstrip('/')}/{spec.path}"))
    except (FileNotFoundError, OSError):
        return False


def list_artifacts(job: Job, request: Request) -> list[Artifact]:
    """The artifacts present in the job's workspace now, with their download URLs."""
    if job.state == "queued" and job.started_at is None:
        return []
    storage = workspace_storage(job, request)
    found = []
    for spec in ARTIFACTS.values():
        size = artifact_size(storage, spec)
        if size is not False:
            url = str(request.url_for("download_artifact", job_id=job.id, name=spec.name))
            found.append(Artifact(name=spec.name, size=size, url=url))
    return found


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
