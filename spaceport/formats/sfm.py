"""``sfm/report.json``: what structure from motion registered, how well, and how long it took."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from spaceport.formats.base import read_model, write_model

REPORT_NAME = "report.json"


class SfmReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = "photos"  # "photos" (SfM ran) or "model" (a COLMAP model the user brought)
    registered: int
    total: int
    unregistered: list[str] = Field(default_factory=list)
    model_sizes: list[int] = Field(default_factory=list)
    points3d: int
    mean_reprojection_error_px: float
    mean_track_length: float
    cameras: int
    camera_groups: int
    matcher: str
    mapper: str
    seconds: dict[str, float] = Field(default_factory=dict)


def read_sfm_report(sfm_dir: Path) -> SfmReport:
    return read_model(sfm_dir / REPORT_NAME, SfmReport, "run the sfm stage again (--force sfm)")


def write_sfm_report(sfm_dir: Path, report: SfmReport) -> None:
    write_model(sfm_dir / REPORT_NAME, report)
