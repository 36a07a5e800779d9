"""Settings of the sfm stage."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

Matcher = Literal["auto", "exhaustive", "sequential", "spatial", "vocabtree"]
Mapper = Literal["incremental", "global"]
CameraMode = Literal["auto", "exif", "single", "per-image"]


class SfmConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    matcher: Matcher = "auto"
    mapper: Mapper = "incremental"
    # auto: one camera per EXIF group (make, model, focal, size) unless the photos come from so many
    # cameras that per-group intrinsics are unreliable (internet collections), then one shared camera.
    camera_mode: CameraMode = "auto"
    camera_model: str = "SIMPLE_RADIAL"
    max_image_size: int = 1600  # long side used for SIFT extraction
    max_num_features: int = 8192
    exhaustive_max_images: int = 300  # auto matcher: exhaustive up to this many photos
    sequential_overlap: int = 15
    vocab_tree_path: str | None = None  # retrieval matching only with a user-supplied file; never downloaded
    min_registered_fraction: float = 0.5  # below this the largest model is a fragment: fail loudly
    num_threads: int = -1  # all cores
    seed: int = 0
