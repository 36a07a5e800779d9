"""A job's downloadable results, read from its workspace (a local folder or object storage).

The other formats viewers read (.spz, .splat, PlayCanvas' compressed PLY) are made from the trained splat on their
first download, by the code of ``spaceport export``, and kept in the workspace's ``export/`` folder until the
splat changes.
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
from spaceport.jobs.models import Job
from spaceport.storage import Storage, open_storage

CHUNK = 1 << 20


@dataclass(frozen=True)
class ArtifactSpec:
    name: str
    path: str  # in the workspace: a file, or a folder zipped on demand
    media_type: str
    zipped: bool = False
    export_format: str | None = None  # made from EXPORT_SOURCE on first download (spaceport export's formats)


EXPORT_SOURCE = "train/splat.ply"
# what an export reads of a workspace: the splat, the job's compress settings, the training cameras it prunes with
EXPORT_INPUTS = ("job.json", EXPORT_SOURCE, "train/eval.json", "sfm/undistorted/sparse")

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


def artifact_size(storage: Storage, spec: ArtifactSpec) -> int | None | bool:
    """Size in bytes of a file artifact, None for a present zipped folder or an export not made yet, False when
    absent (an export: when the workspace has no trained splat)."""
    if spec.zipped:
        return None if storage.list(spec.path) else False
    if spec.export_format is not None:
        if not storage.exists(EXPORT_SOURCE):
            return False
        if not export_is_fresh(storage, spec):
            return None
    try:
        return int(storage.fs.size(f"{storage.root.rstrip('/')}/{spec.path}"))
    except (FileNotFoundError, OSError):
        return False


def export_is_fresh(storage: Storage, spec: ArtifactSpec) -> bool:
    """True when the export is there and no older than the splat it was made from."""
    return storage.exists(spec.path) and storage.modified(spec.path) >= storage.modified(EXPORT_SOURCE)


def ensure_export(storage: Storage, spec: ArtifactSpec) -> None:
    """Make the export artifact ``spec`` from the workspace's trained splat unless a fresh one is there. Two
    requests at once may both make it; each file lands whole (see ``Storage.put_file``), so either is served."""
    from spaceport.compress.export import export_splat  # torch and the encoders: loaded on the first export

    if export_is_fresh(storage, spec):
        return
    with tempfile.TemporaryDirectory(prefix="spaceport-export-") as tmp:
        workspace = Path(storage.root) if storage.is_local else fetch_export_inputs(storage, Path(tmp) / "workspace")
        output = Path(tmp) / PurePosixPath(spec.path).name
        export_splat(workspace, spec.export_format, output)
        storage.put_file(output, spec.path)


def fetch_export_inputs(storage: Storage, folder: Path) -> Path:
    """A local copy of what an export reads of a workspace in object storage (not its photos)."""
    for rel in EXPORT_INPUTS:
        for file in storage.list(rel):
            storage.get_file(file, folder / file)
    return folder


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
