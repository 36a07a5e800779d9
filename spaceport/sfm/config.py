"""Settings of the sfm stage."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

Matcher = Literal["auto", "exhaustive", "sequential", "spatial", "vocabtree"]
Mapper = Literal["incremental", "global"]
CameraMode = Literal["auto", "exif", "single", "per-image"]
FeatureDevice = Literal["auto", "cpu", "cuda"]


class SfmConfig(BaseModel):
    """How photos become a COLMAP model.

    Times below were measured on the 135-photo ``liberty`` set (800×1200 internet photos) on 2 CPU cores, and on
    the GPU machine's 16 cores where noted. SIFT extraction runs once over all photos (a camera per photo, then
    grouped in COLMAP's database): 32 s, against 84 s for one pycolmap call per photo as before (16 cores: 14 s
    against 196 s); on the GPU with ``pycolmap-cuda12`` 3.9 s.

    ``matcher``: ``auto`` picks by collection size: ``exhaustive`` up to ``exhaustive_max_images`` photos (every
    pair; liberty's 9,045 pairs took 626 s on 2 cores, 101 s on 16, where CPU geometric verification is the cost,
    GPU or not); above that ``vocabtree`` when a tree file is given (``vocab_tree_path``), else ``spatial`` when
    most photos carry GPS, else ``sequential`` (neighbours in name order, ``sequential_overlap`` of them; video
    frames always match sequentially). The neighbour matchers need photos in order or with GPS: liberty (taken in
    no order, 19 of 135 with GPS) with ``sequential`` matched in 100 s but its best model held 44 photos, with
    ``spatial`` 3; monstree (23 photos in capture order, all with GPS) registered 22 with ``sequential`` (18 s),
    23 with ``spatial`` (46 s) and ``exhaustive`` (39 s) (bench/sfm.py, 2 cores, 2026-12-02).

    ``mapper``: ``incremental`` (COLMAP's, registers one photo at a time; liberty 85 s on 2 cores, plus ~40 s for
    the per-photo focal lengths and the camera check) or ``global`` (GLOMAP inside COLMAP: rotation averaging then
    global positioning; 46 s on 16 cores). When the kept model holds fewer than
    ``retry_below_fraction`` of the photos, the other mapper and, for a collection, the other camera setting are
    tried and the best model is kept (most photos after the camera check, then lowest error); report.json lists
    the attempts.

    ``camera_mode`` (the intrinsics of the final model):
    ``exif``: one camera per EXIF group (make, model, focal length, image size);
    ``single``: one camera for all photos of one size;
    ``per-image``: a focal length per photo, estimated robustly: mapping runs with shared cameras (per EXIF group,
    or per image size for a collection), then each photo gets its own camera: its focal length and distortion
    fitted alone against the model's fixed 3D points (from the shared camera, and from the EXIF focal-length ratio
    where EXIF has one: the better plausible fit wins), alternating with bundle adjustments of poses and points
    (see spaceport.sfm.intrinsics); a photo with fewer than 100 points or no plausible fit keeps the shared
    camera. A bundle adjustment with every focal length free is not used (it sent one to 294 × the long side on
    liberty), nor COLMAP's own camera-per-photo mapping (focal lengths from -658 to 3.2e6 px). Liberty with
    ``auto``: 133/135
    photos at 0.75 px (one shared camera: 134 at 0.98 px), focal lengths 1.34-3.23 × the long side.
    ``auto``: ``per-image`` for a collection (more EXIF groups than ``max(3, photos / 10)``: internet photos, many
    cameras and zooms); otherwise ``exif``, split per photo after all when a photo's own focal length disagrees
    with its shared camera's by more than ``focal_disagreement`` (a zoom the EXIF does not tell: monstree's photos
    agree within 3 %, a 1.5× centre crop among them stands out at 18 %). With an explicit ``exif`` or ``single``,
    such disagreement is a warning in the report.

    After mapping, a camera check removes photos with a focal length outside ``min_focal_ratio``..
    ``max_focal_ratio`` × the photo's long side, a camera centre farther than ``max_camera_distance`` × the
    median camera distance from the scene centre (the median of the 3D points), or fewer than
    ``min_photo_points`` 3D points seen; they are never passed to training and the report names them.
    """

    model_config = ConfigDict(extra="forbid")

    matcher: Matcher = "auto"
    mapper: Mapper = "incremental"
    camera_mode: CameraMode = "auto"
    camera_model: str = "SIMPLE_RADIAL"
    max_image_size: int = 1600  # long side used for SIFT extraction
    max_num_features: int = 8192
    exhaustive_max_images: int = 300  # auto matcher: exhaustive up to this many photos
    sequential_overlap: int = 15
    vocab_tree_path: str | None = None  # retrieval matching only with a user-supplied file; never downloaded
    min_registered_fraction: float = 0.5  # below this the largest model is a fragment: fail loudly
    retry_below_fraction: float = 0.9  # below this, try the other mapper / camera setting and keep the better
    # SIFT extraction and matching: auto = CUDA when the installed pycolmap is a CUDA build (pycolmap-cuda12)
    # and a GPU answers, else the CPU
    feature_device: FeatureDevice = "auto"
    # the camera check after mapping
    min_focal_ratio: float = 0.3
    max_focal_ratio: float = 4.0
    max_camera_distance: float = 20.0
    min_photo_points: int = 50
    # camera_mode auto: a shared camera is split per photo when a photo's own focal length (its pose and focal
    # refined alone against the 3D points) differs from the camera's by more than this fraction
    focal_disagreement: float = 0.1
    warn_reprojection_error_px: float = 1.5  # a mean above this is reported as a warning
    # the scene's up axis (spaceport.sfm.upright): auto = estimated from the cameras; none = COLMAP's frame as is;
    # an axis (+x, -y, z ...) or x,y,z in the model's world. The written model is turned so that up is -Y, what
    # PlayCanvas and SuperSplat expect of a .ply/.sog, and centred on the median 3D point
    up: str = "auto"
    num_threads: int = -1  # all cores
    seed: int = 0

    @field_validator("up")
    @classmethod
    def _valid_up(cls, value: str) -> str:
        from spaceport.sfm.upright import parse_up

        parse_up(value)  # raises UpSettingError (a ValueError) with the accepted forms
        return value
