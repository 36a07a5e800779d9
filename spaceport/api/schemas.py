"""Request and response bodies of the job API, shared by the server and the `spaceport jobs` client."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
LEGACY_STEPS: dict[str, str] = {"full": "full", "3dgs": "train", "compression": "compress"}


def check_email(value: str | None) -> str | None:
    if value is not None and not EMAIL.match(value):
        raise ValueError(f"{value!r} is not an e-mail address (name@example.org)")
    return value


class Notify(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(None, description="sent an e-mail when the job succeeds or fails")
    webhook_url: str | None = Field(None, description="http(s) URL POSTed a signed JSON body when the job ends")

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return check_email(value)

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^\s/]+", value):
            raise ValueError(f"{value!r}: a webhook URL starts with http:// or https:// and names a host")
        return value


class JobCreate(BaseModel):
    """A new job: ``input_url`` for data already in storage, or a multipart upload (this JSON as the ``job``
    part, the photos / zip / video / PLY / COLMAP model as ``files`` parts)."""

    model_config = ConfigDict(extra="forbid")

    input_url: str | None = Field(None, description="s3://bucket/key-or-prefix, or file:// under an import root; "
                                                    "leave out when uploading files")
    steps: str = Field("full", description="full | sfm | train | compress")
    preset: str = Field("standard", description="preview | standard | ...")
    settings: dict[str, Any] = Field(default_factory=dict, description='stage options, e.g. {"train.steps": 3000}')
    notify: Notify | None = None

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: str) -> str:
        from spaceport.pipeline import STEP_STAGES

        if value not in STEP_STAGES:
            raise ValueError(f"steps {value!r}: choose one of {', '.join(STEP_STAGES)}")
        return value

    @field_validator("preset")
    @classmethod
    def _preset(cls, value: str) -> str:
        from spaceport.presets import PRESETS

        if value not in PRESETS:
            raise ValueError(f"preset {value!r}: choose one of {', '.join(PRESETS)}")
        return value


class Artifact(BaseModel):
    name: str
    size: int | None = Field(None, description="bytes; None for files made on download (sparse.zip, logs.zip, and "
                             "scene.spz, scene.splat, scene.compressed.ply until their first download)")
    url: str


class JobSummary(BaseModel):
    id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    stage: str | None
    progress: float = Field(description="0-1 over the whole job")
    eta_s: float | None
    error: str | None
    steps: str
    preset: str
    input_url: str
    cancel_requested: bool
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobOut(JobSummary):
    metrics: dict[str, Any]
    settings: dict[str, Any]
    config: dict[str, Any] = Field(description="the resolved pipeline configuration the job runs with")
    notify: Notify
    artifacts: list[Artifact]


class JobList(BaseModel):
    jobs: list[JobSummary]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; None on the last")


class EventOut(BaseModel):
    """The ``data:`` of one server-sent event (its ``id:`` is ``id``)."""

    id: int
    job_id: str
    time: datetime
    kind: Literal["progress", "stage", "state", "log", "notification"]
    stage: str | None
    fraction: float | None
    message: str | None
    data: dict[str, Any] | None


class LegacyStartJob(BaseModel):
    """The old system's body for ``POST /start-job``."""

    s3Url: str = Field(description="anything input_url takes (s3://... or file:// under an import root)")
    email: str | None = None
    pipelineStep: Literal["full", "3dgs", "compression"] = "full"

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        return check_email(value) if value else None


class LegacyStartJobResponse(BaseModel):
    jobId: str


class Problem(BaseModel):
    detail: str = Field(description="what went wrong and what to change")
