"""FastAPI dependencies: the settings and the store of the app, and the owner of the request's API key."""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from spaceport.jobs.models import Job, Owner
from spaceport.jobs.store import Store
from spaceport.settings import Settings

bearer = HTTPBearer(auto_error=False, description="an API key from `spaceport keys create --owner NAME`")
CREATE_KEY_HINT = "create one with `spaceport keys create --owner NAME`"


# async: FastAPI runs these inline instead of sending each to the thread pool
async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_store(request: Request) -> Store:
    return request.app.state.store


def current_owner(credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                  store: Store = Depends(get_store)) -> Owner:
    if credentials is None or not credentials.credentials:
        raise HTTPException(401, f"missing API key: send the header 'Authorization: Bearer KEY' ({CREATE_KEY_HINT})",
                            headers={"WWW-Authenticate": "Bearer"})
    owner = store.owner_for_key(credentials.credentials)
    if owner is None:
        raise HTTPException(401, "the API key in 'Authorization: Bearer KEY' is not valid (mistyped, or revoked): "
                                 f"check SPACEPORT_API_KEY, or {CREATE_KEY_HINT}",
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    return owner


def job_not_found(job_id: str) -> HTTPException:
    # the same answer whether the job does not exist or belongs to another owner: ids are not disclosed
    return HTTPException(404, f"job {job_id} not found: check the id (GET /v1/jobs lists the jobs of your key)")


def owned_job(job_id: str, owner: Owner = Depends(current_owner), store: Store = Depends(get_store)) -> Job:
    job = store.get_job(owner.id, job_id)
    if job is None:
        raise job_not_found(job_id)
    return job


def dispatch_new_job(request: Request, job: Job) -> None:
    """Hand a just-recorded job to the executor (``create_app(dispatcher=...)``), if there is one."""
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.job_created(job)
