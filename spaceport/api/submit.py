"""Turning a request into a queued job: checks, config resolution, upload staging, the store record.

The API never runs a stage: it records the job (state ``queued``) and the executors claim it from the store.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

from fastapi import HTTPException, Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from spaceport.api.schemas import JobCreate
from spaceport.api.uploads import JOB_PART_LIMIT, UploadRefused, check_files_for_steps, receive_multipart
from spaceport.formats.job import STEP_STAGES
from spaceport.jobs.layout import job_locations
from spaceport.jobs.models import Job, Owner
from spaceport.jobs.runner import stage_resource
from spaceport.jobs.store import JobLimitReached, Store, new_job_id
from spaceport.settings import Settings
from spaceport.storage import InputUrlError, check_input_url, open_storage
from spaceport.workspace import SpaceportError

DRAIN_LIMIT = 32 << 20  # a refused body is read to its end up to this size, so the client sees the answer
MULTIPART_OVERHEAD = JOB_PART_LIMIT + (1 << 20)


def validation_message(exc: ValidationError | Any, prefix: str = "") -> str:
    """pydantic (or FastAPI request) errors as one line: 'steps: ...; settings.x: ...'."""
    parts = []
    for error in exc.errors():
        location = ".".join(str(item) for item in error["loc"] if item not in ("body",))
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{prefix}{location}: {message}" if location else f"{prefix}{message}")
    return "; ".join(parts)


def resolve_job_config(preset: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The resolved PipelineConfig of a job as JSON, or 422 naming the bad setting."""
    from spaceport.presets import resolve_config

    try:
        return resolve_config(preset, settings).model_dump(mode="json")
    except SpaceportError as exc:
        raise HTTPException(422, str(exc)) from None
    except ValidationError as exc:
        raise HTTPException(422, f"settings: {validation_message(exc)}") from None


def checked_input_url(url: str, settings: Settings) -> str:
    try:
        return check_input_url(url, settings.import_roots)
    except InputUrlError as exc:
        raise HTTPException(422, str(exc)) from None


def record_job(store: Store, settings: Settings, owner: Owner, job_id: str, spec: JobCreate, input_url: str,
               config: dict[str, Any]) -> Job:
    notify = spec.notify
    try:
        return store.create_job(
            owner.id, job_id=job_id, input_url=input_url, steps=spec.steps, preset=spec.preset,
            settings=spec.settings, config=config, workspace_url=job_locations(settings, job_id).workspace_url,
            resource=stage_resource(STEP_STAGES[spec.steps][0]), notify_email=notify.email if notify else None,
            webhook_url=notify.webhook_url if notify else None, max_active=settings.max_running_jobs_per_owner)
    except JobLimitReached as exc:
        raise HTTPException(429, str(exc)) from None


def check_job_limit(store: Store, settings: Settings, owner: Owner) -> None:
    """Fail fast, before an upload is read (record_job checks again, atomically)."""
    active = store.count_active_jobs(owner.id)
    if active >= settings.max_running_jobs_per_owner:
        raise HTTPException(429, f"you have {active} jobs queued or running, the limit per owner is "
                                 f"{settings.max_running_jobs_per_owner}: wait for one to finish or cancel one")


def submit_json(spec: JobCreate, store: Store, settings: Settings, owner: Owner) -> Job:
    if not spec.input_url:
        raise HTTPException(422, "input_url is missing: give s3://... or file://... in the JSON body, or upload "
                                 "the files as multipart/form-data ('files' parts plus a 'job' part)")
    input_url = checked_input_url(spec.input_url, settings)
    config = resolve_job_config(spec.preset, spec.settings)
    return record_job(store, settings, owner, new_job_id(), spec, input_url, config)


# -- multipart ---------------------------------------------------------------------------------------------


class BodyReader:
    """The request body as chunks, remembering whether it was read to its end (to drain it after a refusal)."""

    def __init__(self, request: Request):
        self.request = request
        self.finished = False

    async def chunks(self):  # noqa: ANN201 - an async generator of bytes
        while not self.finished:
            message = await self.request.receive()
            if message["type"] == "http.disconnect":
                raise UploadRefused(400, "the client disconnected before the upload ended: send it again")
            self.finished = not message.get("more_body", False)
            yield message.get("body", b"")

    async def drain(self, limit: int = DRAIN_LIMIT) -> None:
        read = 0
        while not self.finished and read < limit:
            message = await self.request.receive()
            if message["type"] != "http.request":
                return
            read += len(message.get("body", b""))
            self.finished = not message.get("more_body", False)


def parse_job_part(raw: bytes | None) -> JobCreate:
    if raw is None:
        return JobCreate()
    try:
        return JobCreate.model_validate(json.loads(raw))
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"the 'job' part is not JSON ({exc}): send "
                                 '{"steps": "full", "preset": "standard", "settings": {}}') from None
    except ValidationError as exc:
        raise HTTPException(422, validation_message(exc, prefix="job.")) from None


async def submit_upload(request: Request, store: Store, settings: Settings, owner: Owner) -> Job:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > settings.max_upload_bytes + MULTIPART_OVERHEAD:
        raise HTTPException(413, f"the upload is {int(declared)} bytes, over the limit of "
                                 f"{settings.max_upload_bytes} bytes (SPACEPORT_MAX_UPLOAD_BYTES): send fewer or "
                                 "smaller files, or put the data in object storage and pass input_url")
    await run_in_threadpool(check_job_limit, store, settings, owner)
    job_id = new_job_id()
    locations = job_locations(settings, job_id)
    staging = locations.upload_dir / "input.partial"
    body = BodyReader(request)
    recorded = False
    try:
        upload = await receive_multipart(request.headers["content-type"], body.chunks(), staging,
                                         settings.max_upload_bytes)
        spec = parse_job_part(upload.job_json)
        if spec.input_url:
            raise HTTPException(422, "give either input_url or uploaded files, not both")
        config = resolve_job_config(spec.preset, spec.settings)
        await run_in_threadpool(check_files_for_steps, upload, spec.steps, _zip_check(config))
        staging.rename(locations.upload_input_dir)
        input_url = await run_in_threadpool(publish_upload, settings, locations)
        job = await run_in_threadpool(record_job, store, settings, owner, job_id, spec, input_url, config)
        recorded = True
        return job
    except UploadRefused as exc:
        await body.drain()
        raise HTTPException(exc.status, str(exc)) from None
    finally:
        if not recorded:  # nothing of a refused upload stays on disk
            await run_in_threadpool(shutil.rmtree, locations.upload_dir, True)


def publish_upload(settings: Settings, locations: Any) -> str:
    """The input_url of an upload: its local folder, or a copy in object storage (workers elsewhere read it)."""
    storage = open_storage(settings.resolved_storage_url, settings.s3_endpoint_url)
    if storage.is_local:
        return locations.upload_input_dir.as_uri()
    storage.put_dir(locations.upload_input_dir, locations.storage_upload_path)
    shutil.rmtree(locations.upload_dir, ignore_errors=True)
    return storage.url(locations.storage_upload_path)


def _zip_check(config: dict[str, Any]) -> Any:
    """spaceport.ingest's zip check (zip-slip, links, entry count, expanded size) with the job's ingest limits."""
    try:
        from spaceport.ingest.archive import check_archive
        from spaceport.ingest.config import IngestConfig
    except ImportError:
        return None
    ingest = IngestConfig.model_validate(config.get("ingest", {}))
    return lambda archive, label: check_archive(archive, label, ingest)
