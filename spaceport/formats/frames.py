"""``images/frames.json``: which images the ingest stage wrote, where each came from, which have a mask in the
workspace's ``masks/`` (named ``<image file>.png``, COLMAP's layout), and what it dropped."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from spaceport.formats.base import read_model, write_model

MANIFEST_NAME = "frames.json"


class ExifSummary(BaseModel):
    make: str | None = None
    model: str | None = None
    focal_length_mm: float | None = None
    focal_length_35mm: float | None = None
    gps: tuple[float, float, float | None] | None = None  # latitude, longitude (degrees), altitude (m)
    datetime: str | None = None  # ISO 8601, from DateTimeOriginal or DateTime


class FrameRecord(BaseModel):
    file: str  # name inside images/
    source: str  # workspace-relative origin: "input/a.jpg", "input/photos.zip:dir/a.jpg", "input/clip.mp4"
    width: int
    height: int
    sharpness: float  # variance of the Laplacian on the grey analysis copy
    exif: ExifSummary = Field(default_factory=ExifSummary)
    frame_index: int | None = None  # video only
    time_s: float | None = None  # video only
    mask: str | None = None  # name inside the workspace's masks/ (0 = ignore, 255 = keep); None: every pixel counts


class DroppedRecord(BaseModel):
    source: str
    reason: str
    frame_index: int | None = None  # video only


class VideoCandidate(BaseModel):
    frame_index: int
    time_s: float | None
    window: int
    sharpness: float
    chosen: bool  # the sharpest of its window (it may still be dropped later as blurry or a duplicate)


class VideoSummary(BaseModel):
    codec: str
    width: int
    height: int
    fps: float | None
    frame_count: int
    windows: int
    rotation: int  # degrees counter-clockwise applied to make frames upright
    candidates: list[VideoCandidate]


class FramesManifest(BaseModel):
    kind: Literal["photos", "video"]
    input: str  # what the user gave, workspace-relative: "input", "input/photos.zip", "input/clip.mp4"
    frames: list[FrameRecord]
    dropped: list[DroppedRecord]
    video: VideoSummary | None = None


def read_frames(images_dir: Path) -> FramesManifest:
    return read_model(images_dir / MANIFEST_NAME, FramesManifest, "run the ingest stage again (--force ingest)")


def write_frames(images_dir: Path, manifest: FramesManifest) -> None:
    write_model(images_dir / MANIFEST_NAME, manifest)
