"""Settings of the ingest stage."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

GIB = 1024**3


class IngestConfig(BaseModel):
    """How photos, a zip of photos or a video become the normalized JPEGs under ``images/``."""

    model_config = ConfigDict(extra="forbid")

    max_size: int | None = Field(
        None, ge=64, description="Downscale so the long side is at most this many pixels; None keeps the size."
    )
    jpeg_quality: int = Field(95, ge=50, le=100, description="Quality of JPEGs that have to be re-encoded.")
    min_images: int = Field(3, ge=1, description="Fewer usable images than this is an error (SfM needs 3).")
    workers: int | None = Field(None, ge=1, description="Threads decoding/encoding images; None = all cores.")

    dedupe: bool = Field(True, description="Drop byte-identical and near-duplicate images.")
    dedupe_distance: int = Field(
        3, ge=0, le=64, description="Two images whose 64-bit perceptual hashes differ in at most this many bits "
        "are near-duplicates (a re-encoded copy differs by 0, a 2% shift by ~2, distinct views by >10).",
    )

    analysis_size: int = Field(
        640, ge=64, description="Long side of the grey copy on which sharpness and hashes are measured."
    )
    target_frames: int = Field(150, ge=3, description="Video: number of frames to keep (one per window).")
    candidates_per_window: int = Field(
        4, ge=1, description="Video: frames measured per window; the sharpest one is kept."
    )
    blur_ratio: float = Field(
        0.25, ge=0.0, le=1.0, description="Drop a frame whose sharpness is below this fraction of the median "
        "(sharp monstree photos span 0.36-1.8x their median; a 2 px blur falls below 0.01x).",
    )
    drop_blurry_photos: bool = Field(
        False, description="Also apply the blur_ratio filter to photos (always applied to video frames)."
    )

    max_zip_bytes: int = Field(20 * GIB, ge=1, description="Largest total expanded size of a zip's entries.")
    max_zip_entries: int = Field(100_000, ge=1, description="Most entries (files and folders) a zip may hold.")
