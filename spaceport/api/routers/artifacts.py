"""GET /v1/jobs/{id}/artifacts/{name}: scene.sog, splat.ply, sparse.zip, report.json, report.html, logs.zip, and
scene.spz, scene.splat, scene.compressed.ply (made from the trained splat on first download)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import FileResponse, StreamingResponse

from spaceport.api.artifacts import (
    ARTIFACTS,
    artifact_size,
    ensure_export,
    export_source,
    iter_file,
    workspace_storage,
    zip_folder,
)
from spaceport.api.deps import job_by_key_or_link
from spaceport.api.schemas import Problem
from spaceport.errors import SpaceportError
from spaceport.jobs.models import Job

router = APIRouter(prefix="/v1/jobs", tags=["artifacts"])


@router.get("/{job_id}/artifacts/{name:path}", name="download_artifact",
            responses={401: {"model": Problem}, 404: {"model": Problem}},
            response_class=StreamingResponse, summary="Download one result of a job")
def download_artifact(name: str, request: Request, job: Job = Depends(job_by_key_or_link)):  # noqa: ANN201
    spec = ARTIFACTS.get(name)
    if spec is None:  # a fixed list: no name from the request ever becomes a path
        raise HTTPException(404, f"artifact {name!r} does not exist: ask for one of {', '.join(ARTIFACTS)}")
    storage = workspace_storage(job, request)
    source = export_source(storage) if spec.export_format is not None else None
    if artifact_size(storage, spec, source) is False:
        where = f"stage {job.stage}" if job.stage else "no stage yet"
        raise HTTPException(404, f"{name} of job {job.id} is not there (the job is {job.state}, {where}; "
                                 f"steps={job.steps}): wait for the stage that makes it, or check the job's steps")
    if spec.export_format is not None:
        try:
            ensure_export(storage, spec, source)
        except SpaceportError as exc:  # e.g. a damaged splat: the message names the file
            raise HTTPException(500, f"cannot make {name} of job {job.id}: {exc}") from exc
    disposition = "inline" if name == "report.html" else "attachment"
    headers = {"Content-Disposition": f'{disposition}; filename="{job.id}-{name}"'}
    if spec.zipped:
        return StreamingResponse(iter_file(zip_folder(storage, spec.path)), media_type=spec.media_type,
                                 headers=headers)
    if storage.is_local:
        return FileResponse(f"{storage.root}/{spec.path}", media_type=spec.media_type, headers=headers)
    return StreamingResponse(iter_file(storage.open(spec.path)), media_type=spec.media_type, headers=headers)
