"""FastAPI dependencies: the settings and the store of the app, and the owner of the request's API key."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Query, Request
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


# -- link tokens: EventSource, plain links and the viewer's fetches cannot send an Authorization header ---------

LINK_TOKEN_TTL_S = 3600


@dataclass(frozen=True)
class LinkToken:
    token: str
    expires_at: int  # Unix time


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _link_signature(secret: bytes, payload: bytes) -> bytes:
    return hmac.new(secret, b"spaceport-link:" + payload, hashlib.sha256).digest()


def issue_link_token(secret: bytes, job: Job, ttl_s: int = LINK_TOKEN_TTL_S) -> LinkToken:
    """A token for ``?token=`` on one job's read-only routes (events, artifacts, viewer camera), for ``ttl_s``."""
    expires_at = int(time.time()) + ttl_s
    payload = f"{job.id}:{job.owner_id}:{expires_at}".encode()
    return LinkToken(f"{_b64(payload)}.{_b64(_link_signature(secret, payload))}", expires_at)


def read_link_token(secret: bytes, token: str) -> tuple[str, int] | None:
    """(job id, owner id) of a token signed with ``secret`` and not expired; None otherwise."""
    try:
        payload_text, signature_text = token.split(".")
        payload, signature = _unb64(payload_text), _unb64(signature_text)
        job_id, owner_id, expires_at = payload.decode().split(":")
        if not hmac.compare_digest(signature, _link_signature(secret, payload)) or int(expires_at) < time.time():
            return None
        return job_id, int(owner_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


def job_by_key_or_link(job_id: str, request: Request,
                       credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                       token: str | None = Query(None, description="a link token (POST /v1/jobs/{id}/link-token) "
                                                 "instead of the Authorization header, for links and EventSource"),
                       store: Store = Depends(get_store)) -> Job:
    """The job, for the Authorization header's owner or for a valid link token of this job."""
    if credentials is not None or token is None:
        return owned_job(job_id, current_owner(credentials, store), store)
    claims = read_link_token(request.app.state.link_secret, token)
    if claims is None or claims[0] != job_id:
        raise HTTPException(401, "the link token is not valid for this job, or has expired (they last "
                                 f"{LINK_TOKEN_TTL_S // 60} minutes and end when the server restarts): ask for a new "
                                 "one with POST /v1/jobs/{id}/link-token, or send 'Authorization: Bearer KEY'",
                            headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
    job = store.get_job(claims[1], job_id)
    if job is None:
        raise job_not_found(job_id)
    return job


def dispatch_new_job(request: Request, job: Job) -> None:
    """Hand a just-recorded job to the executor (``create_app(dispatcher=...)``), if there is one."""
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.job_created(job)
