"""The old system's POST /start-job, kept for its clients: the same job as POST /v1/jobs underneath."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from spaceport.api.deps import current_owner, dispatch_new_job, get_settings, get_store
from spaceport.api.schemas import LEGACY_STEPS, JobCreate, LegacyStartJob, LegacyStartJobResponse, Notify, Problem
from spaceport.api.submit import submit_json
from spaceport.jobs.models import Owner
from spaceport.jobs.store import Store
from spaceport.settings import Settings

router = APIRouter(tags=["legacy"])


@router.post("/start-job", response_model=LegacyStartJobResponse,
             responses={code: {"model": Problem} for code in (401, 422, 429)},
             summary="Old body {s3Url, email, pipelineStep: full | 3dgs | compression}")
def start_job(body: LegacyStartJob, request: Request, owner: Owner = Depends(current_owner),
              store: Store = Depends(get_store), settings: Settings = Depends(get_settings)) -> LegacyStartJobResponse:
    spec = JobCreate(input_url=body.s3Url, steps=LEGACY_STEPS[body.pipelineStep],
                     notify=Notify(email=body.email) if body.email else None)
    job = submit_json(spec, store, settings, owner)
    dispatch_new_job(request, job)
    return LegacyStartJobResponse(jobId=job.id)
