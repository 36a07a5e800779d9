"""Where a job's files live: the one place that decides upload and workspace locations."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from spaceport.settings import Settings


@dataclass(frozen=True)
class JobLocations:
    upload_dir: Path  # local folder the API streams an upload into; its input/ becomes the job's input
    workspace_url: str  # the job's workspace: <storage_url>/<job id> (file:// or s3://)
    storage_upload_path: str  # where an upload is copied when storage is not local, relative to the storage root

    @property
    def upload_input_dir(self) -> Path:
        return self.upload_dir / "input"


def uploads_root(settings: Settings) -> Path:
    return (settings.data_dir / "uploads").resolve()


def job_locations(settings: Settings, job_id: str) -> JobLocations:
    """Upload folder <data_dir>/uploads/<id>/ and workspace <storage_url>/<id>/ (default
    <data_dir>/workspaces/<id>/). With object storage an upload is copied to <storage_url>/uploads/<id>/input/
    so that workers on other machines can read it."""
    return JobLocations(upload_dir=uploads_root(settings) / job_id,
                        workspace_url=settings.resolved_storage_url.rstrip("/") + "/" + job_id,
                        storage_upload_path=f"uploads/{job_id}/input")


def input_import_roots(settings: Settings) -> list[Path]:
    """Folders a worker may read a job's ``file://`` input from: the configured import roots plus the uploads."""
    return [*settings.import_roots, uploads_root(settings)]
