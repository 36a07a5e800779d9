"""``sfm/report.json``: what structure from motion registered, how well, how it got there and how long it took.

Every field added after the first version has a default, so reports written before still read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from spaceport.formats.base import read_model, write_model

REPORT_NAME = "report.json"

# why a photo is not in the model: COLMAP found no pose for it, it is in a smaller separate model, or the camera
# check after mapping removed it (implausible focal length, camera far outside the scene, too few 3D points seen)
LeftOutTest = Literal["not_registered", "separate_model", "focal", "far", "few_points"]


class LeftOutPhoto(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    test: LeftOutTest
    reason: str  # one sentence for people, with the measured value and the limit


class FocalSpread(BaseModel):
    """Focal lengths of the registered photos, in pixels and as a fraction of each photo's long side."""

    model_config = ConfigDict(extra="forbid")

    min_px: float
    median_px: float
    max_px: float
    min_fraction: float
    median_fraction: float
    max_fraction: float


class PhotoQuality(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    camera_id: int
    focal_px: float
    points: int  # 3D points this photo sees (its observations)
    error_px: float  # mean reprojection error of those observations


class MappingAttempt(BaseModel):
    """One mapping run; the report keeps them all and says which one's model was kept and why."""

    model_config = ConfigDict(extra="forbid")

    mapper: str
    camera_mode: str  # the intrinsics of its model: exif, single, per-image (a focal length per photo)
    mapped_with: str = ""  # the camera_mode it mapped with, where focal lengths were fitted per photo after
    registered: int  # after the camera check
    removed: int  # photos the camera check took out
    mean_reprojection_error_px: float | None = None
    seconds: float
    kept: bool = False
    note: str = ""  # why it ran, or why it failed

    def cameras(self) -> str:
        """The cameras in words, e.g. ``exif cameras, then a focal length per photo``."""
        if self.mapped_with and self.mapped_with != self.camera_mode:
            return f"{self.mapped_with} cameras, then a focal length per photo"
        return f"{self.camera_mode} cameras"


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
    # since issue 12: why each photo is missing, the intrinsics, per-photo quality, warnings, the mapping attempts
    left_out: list[LeftOutPhoto] = Field(default_factory=list)
    camera_mode: str = ""  # the intrinsics of the final model: exif, single, per-image
    focal: FocalSpread | None = None
    photos: list[PhotoQuality] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    attempts: list[MappingAttempt] = Field(default_factory=list)
    feature_device: str = "cpu"  # where SIFT extraction and matching ran: cpu or cuda
    masks: int = 0  # photos whose features were restricted by a mask
    # how the model was turned upright (spaceport.sfm.upright.UprightRecord as JSON); None: before issue 12
    upright: dict[str, Any] | None = None


def read_sfm_report(sfm_dir: Path) -> SfmReport:
    return read_model(sfm_dir / REPORT_NAME, SfmReport, "run the sfm stage again (--force sfm)")


def write_sfm_report(sfm_dir: Path, report: SfmReport) -> None:
    write_model(sfm_dir / REPORT_NAME, report)
