"""The FastAPI application of the job service: ``create_app(settings, store)``."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from spaceport.api.routers import artifacts, jobs, legacy, pages, service
from spaceport.api.submit import validation_message
from spaceport.jobs.store import JobLimitReached, Store, open_store
from spaceport.settings import Settings
from spaceport.workspace import SpaceportError

DESCRIPTION = """Photos -> COLMAP -> 3D Gaussian Splat -> PlayCanvas SOG, as a service.

Every route but `/healthz` needs `Authorization: Bearer KEY` (`spaceport keys create --owner NAME`).
Jobs are queued here and run by the embedded worker of `spaceport serve` or by `spaceport worker` processes."""


def create_app(settings: Settings, store: Store | None = None, *, sse_poll_s: float = 0.5,
               dispatcher: Any = None) -> FastAPI:
    """The API. ``store`` defaults to ``open_store(settings.resolved_database_url)`` (closed with the app).
    ``dispatcher.job_created(job)`` is called after a job is recorded (the executor: Celery sends its first stage,
    the embedded pool wakes up); None: the jobs only wait in the store."""
    owns_store = store is None
    # import the stage registry now, not at the first request: pycolmap (imported by it) installs glog's crash
    # handlers, which would otherwise replace the server's SIGTERM handler after it started
    import spaceport.pipeline  # noqa: F401
    import spaceport.presets  # noqa: F401

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if owns_store:
            app.state.store.close()

    app = FastAPI(title="Spaceport", version="1", description=DESCRIPTION, lifespan=lifespan)
    app.state.settings = settings
    app.state.store = store if store is not None else open_store(settings.resolved_database_url)
    app.state.sse_poll_s = sse_poll_s
    app.state.dispatcher = dispatcher
    app.state.link_secret = secrets.token_bytes(32)  # signs ?token= links (deps.issue_link_token)
    for router in (jobs.router, artifacts.router, legacy.router, service.router, pages.router):
        app.include_router(router)
    _add_error_handlers(app)
    return app


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_message(exc) or "the request is not valid"}, status_code=422)

    @app.exception_handler(JobLimitReached)
    async def _limit(_: Request, exc: JobLimitReached) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=429)

    @app.exception_handler(SpaceportError)
    async def _user_error(_: Request, exc: SpaceportError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 404 and detail == "Not Found":
            detail = "no such route: see /docs for the routes of this API"
        elif exc.status_code == 405 and detail == "Method Not Allowed":
            detail = "this route does not take that method: see /docs"
        return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=exc.headers)

