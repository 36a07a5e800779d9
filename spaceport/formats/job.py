"""``job.json``: what a workspace was asked to do, with the resolved config that ran, and where it stands."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from spaceport.formats.base import read_model, write_model

JOB_FILE = "job.json"
Status = Literal["new", "running", "succeeded", "failed", "interrupted"]
Steps = Literal["full", "sfm", "train", "compress"]

# which stages each step selection runs, in order; "train" starts from a COLMAP model the user brought (its sfm
# stage imports and undistorts that model)
STEP_STAGES: dict[str, tuple[str, ...]] = {
    "full": ("ingest", "sfm", "train", "compress", "report"),
    "sfm": ("ingest", "sfm"),
    "train": ("sfm", "train", "compress", "report"),
    "compress": ("compress",),
}


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class JobFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: Steps = "full"
    preset: str = "standard"
    settings: dict[str, Any] = Field(default_factory=dict)  # what the user set on top of the preset
    config: dict[str, Any] = Field(default_factory=dict)  # the resolved PipelineConfig that ran
    source: str | None = None  # what the input was copied from
    status: Status = "new"
    stage: str | None = None
    error: str | None = None
    created: str = Field(default_factory=utc_now)
    updated: str = Field(default_factory=utc_now)


def read_job(root: Path) -> JobFile:
    return read_model(root / JOB_FILE, JobFile, "this folder is not a spaceport workspace, or job.json was edited")


def write_job(root: Path, job: JobFile) -> None:
    write_model(root / JOB_FILE, job.model_copy(update={"updated": utc_now()}))
