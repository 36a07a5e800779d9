"""``report/report.json``: per-stage status, time and memory, each stage's checks, and the quality score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from spaceport.formats.base import read_model, write_model

REPORT_NAME = "report.json"


class StageTiming(BaseModel):
    status: str  # "done" or "not run"
    seconds: float | None = None
    peak_rss_gib: float | None = None
    peak_gpu_gib: float | None = None
    device: str | None = None  # "cpu", "cuda:0 (NVIDIA H200, physical GPU 1)"


class ScorePart(BaseModel):
    earned: float
    possible: float


class Report(BaseModel):
    model_config = ConfigDict(extra="forbid")

    workspace: str
    steps: str
    stages: dict[str, StageTiming]
    total_seconds: float
    checks: dict[str, dict[str, Any]]  # per stage: "ok", an "error" when not, and the stage's figures
    quality_score: float
    score_parts: dict[str, ScorePart]
    mismatches: list[str] = Field(default_factory=list)  # set by `spaceport validate` only


def read_report(report_dir: Path) -> Report:
    return read_model(report_dir / REPORT_NAME, Report, "run the report stage again (--force report)")


def write_report(report_dir: Path, report: Report) -> None:
    write_model(report_dir / REPORT_NAME, report)
