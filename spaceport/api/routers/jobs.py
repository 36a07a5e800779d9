"""/v1/jobs: submit, list, show, follow (server-sent events) and cancel jobs."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Header, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from spaceport.api.artifacts import list_artifacts
from spaceport.api.deps import (
    LINK_TOKEN_TTL_S,
    current_owner,
    dispatch_new_job,
    get_settings,
    get_store,
    issue_link_token,
    job_by_key_or_link,
    job_not_found,
    owned_job,
)
from spaceport.api.schemas import EventOut, JobCreate, JobList, JobOut, JobSummary, Notify, Problem
from spaceport.api.submit import submit_json, submit_upload, validation_message
from spaceport.api.uploads import JOB_PART_LIMIT
from spaceport.jobs.models import FINAL_STATES, JOB_STATES, Event, Job, Owner
from spaceport.jobs.store import Store
from spaceport.settings import Settings
from spaceport.workspace import SpaceportError

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
ERRORS = {code: {"model": Problem} for code in (401, 404, 413, 415, 422, 429)}
KEEPALIVE_S = 15.0


def _create_job_openapi() -> dict:
    schema = JobCreate.model_json_schema(ref_template="#/components/schemas/{model}")
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": schema},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "job": {"type": "string", "description": "the JSON above, without input_url"},
            "files": {"type": "array", "items": {"type": "string", "format": "binary"},
                      "description": "photos, a zip, a video, a PLY (compress) or images/ + sparse/ (train); "
                                     "file names may hold folders (images/a.jpg)"}}}}}}}


async def read_json_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > JOB_PART_LIMIT:
            raise HTTPException(413, f"the JSON body is over {JOB_PART_LIMIT} bytes: it holds the job only "
                                     "(input_url, steps, preset, settings, notify); upload files as multipart")
    return bytes(body)


def job_summary(job: Job) -> JobSummary:
    return JobSummary.model_validate(job, from_attributes=True)


def job_out(job: Job, request: Request) -> JobOut:
    summary = job_summary(job).model_dump()
    return JobOut(**summary, metrics=job.metrics, settings=job.settings, config=job.config,
                  notify=Notify(email=job.notify_email, webhook_url=job.webhook_url),
                  artifacts=list_artifacts(job, request))


@router.post("", status_code=201, response_model=JobOut, responses=ERRORS, openapi_extra=_create_job_openapi(),
             summary="Submit a job (JSON with input_url, or multipart upload)")
async def create_job(request: Request, response: Response, owner: Owner = Depends(current_owner),
                     store: Store = Depends(get_store), settings: Settings = Depends(get_settings)) -> JobOut:
    content_type = request.headers.get("content-type", "").lower()
    if content_type.startswith("multipart/form-data"):
        job = await submit_upload(request, store, settings, owner)
    elif content_type.startswith("application/json"):
        raw = await read_json_body(request)
        try:
            spec = JobCreate.model_validate_json(raw)
        except ValidationError as exc:
            raise HTTPException(422, validation_message(exc)) from None
        job = await run_in_threadpool(submit_json, spec, store, settings, owner)
    else:
        raise HTTPException(415, f"Content-Type {content_type or 'none'} is not accepted: send application/json "
                                 "with input_url, or multipart/form-data with 'files' parts and a 'job' part")
    await run_in_threadpool(dispatch_new_job, request, job)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return await run_in_threadpool(job_out, job, request)


@router.get("", response_model=JobList, responses=ERRORS, summary="Your jobs, newest first")
def list_jobs(limit: int = Query(20, ge=1, le=200), cursor: str | None = Query(None, description="next_cursor of "
              "the previous page"), state: str | None = Query(None, description="only jobs in this state"),
              owner: Owner = Depends(current_owner), store: Store = Depends(get_store)) -> JobList:
    if state is not None and state not in JOB_STATES:
        raise HTTPException(422, f"state {state!r}: choose one of {', '.join(JOB_STATES)}")
    try:
        page = store.list_jobs(owner.id, limit=limit, cursor=cursor, state=state)
    except SpaceportError as exc:
        raise HTTPException(422, str(exc)) from None
    return JobList(jobs=[job_summary(job) for job in page.jobs], next_cursor=page.next_cursor)


@router.get("/{job_id}", response_model=JobOut, responses=ERRORS, summary="State, progress and artifacts of a job")
def get_job(request: Request, job: Job = Depends(owned_job)) -> JobOut:
    return job_out(job, request)


@router.post("/{job_id}/cancel", response_model=JobOut, responses={**ERRORS, 409: {"model": Problem}},
             summary="Cancel a job (a running stage stops; finished stages are kept)")
def cancel_job(request: Request, job: Job = Depends(owned_job), store: Store = Depends(get_store)) -> JobOut:
    if job.is_final:
        raise HTTPException(409, f"job {job.id} is already {job.state}: there is nothing to cancel")
    cancelled = store.request_cancel(job.owner_id, job.id)
    if cancelled is None:
        raise job_not_found(job.id)
    return job_out(cancelled, request)


class LinkTokenOut(BaseModel):
    token: str = Field(description="add as ?token= to this job's events, artifact and camera URLs")
    expires_in_s: int = Field(description=f"seconds it stays valid ({LINK_TOKEN_TTL_S}); it also ends when the "
                                          "server restarts")


@router.post("/{job_id}/link-token", response_model=LinkTokenOut, responses=ERRORS,
             summary="A short-lived token for links to this job (downloads, EventSource, the viewer)")
def link_token(request: Request, job: Job = Depends(owned_job)) -> LinkTokenOut:
    """Browsers cannot send the Authorization header from EventSource or a plain link: this token, signed by the
    server and valid for this job's read-only routes only, goes in their URL instead of the API key."""
    issued = issue_link_token(request.app.state.link_secret, job)
    return LinkTokenOut(token=issued.token, expires_in_s=LINK_TOKEN_TTL_S)


# -- server-sent events ------------------------------------------------------------------------------------


def sse_message(event: Event) -> str:
    payload = EventOut.model_validate(event, from_attributes=True).model_dump_json()
    return f"id: {event.id}\ndata: {payload}\n\n"


def _is_final_event(event: Event) -> bool:
    return event.kind == "state" and bool(event.data) and event.data.get("state") in FINAL_STATES


async def follow_events(request: Request, store: Store, job_id: str, after: int, poll_s: float) -> AsyncIterator[str]:
    """Events after ``after``, live, until the job's final state event has been sent."""
    last = after
    last_sent = time.monotonic()
    yield "retry: 2000\n\n"
    while True:
        job = await run_in_threadpool(store.get_job, None, job_id)
        events = await run_in_threadpool(store.events_after, job_id, last)
        for event in events:
            yield sse_message(event)
            last = event.id
            if _is_final_event(event):
                return
        if events:
            last_sent = time.monotonic()
            continue  # more may be waiting (events_after returns at most a page)
        if job is None or job.is_final:  # read before the events: its final event, if any, was just sent
            return
        if await request.is_disconnected():
            return
        if time.monotonic() - last_sent > KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(poll_s)


@router.get("/{job_id}/events", responses={**ERRORS, 200: {"content": {"text/event-stream": {}}}},
            response_class=StreamingResponse, summary="Live events of a job (server-sent events)")
def job_events(request: Request, job: Job = Depends(job_by_key_or_link), store: Store = Depends(get_store),
               last_event_id: str | None = Header(None, alias="Last-Event-ID"),
               after: int | None = Query(None, ge=0, description="resume after this event id (as Last-Event-ID)"),
               ) -> StreamingResponse:
    """One SSE message per event: ``id:`` is the event id, ``data:`` an EventOut JSON. The stream ends after
    the job's final state event; reconnect with ``Last-Event-ID`` to resume."""
    start = after or 0
    if last_event_id:
        if not last_event_id.strip().isdigit():
            raise HTTPException(422, f"Last-Event-ID {last_event_id!r} is not an event id: send the id: of the last "
                                     "event received, or no header to start from the beginning")
        start = int(last_event_id)
    poll_s = request.app.state.sse_poll_s
    return StreamingResponse(follow_events(request, store, job.id, start, poll_s), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
