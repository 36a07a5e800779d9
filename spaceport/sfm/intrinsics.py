"""A focal length per photo, split off a model mapped with shared cameras.

Photos taken at different zooms cannot share one focal length, yet COLMAP's camera-per-photo mapping is
degenerate on a collection (liberty: focal lengths from -658 to 3.2e6 px). So the photos are mapped with shared
cameras first; then each photo gets its own camera, fitted alone against the model's 3D points (from its shared
camera, and from the EXIF focal-length ratio where EXIF has one), alternating with bundle adjustments of poses and
points (see refine_per_photo).

Measured on liberty (135 photos, one shared camera first: 134 registered, 0.98 px): a bundle adjustment with
every photo's focal length free reached 0.70 px but sent a focal length to 294 × the long side and a camera 124 ×
the median distance out (and the next one diverged); starting every photo from its EXIF 35 mm ratio gave
18.6 × (photos cropped since). The alternation reached 0.75 px, focal lengths 1.34-3.23 × the long side, the
farthest camera 2.2 × the median distance (in the stage, after the camera check: 133 photos).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pycolmap

from spaceport.formats import FramesManifest
from spaceport.sfm.adjust import adjust_poses_and_points
from spaceport.sfm.config import SfmConfig


def exif_focal(frames: FramesManifest) -> dict[str, float]:
    """Photo name -> its EXIF focal length as a 35 mm equivalent (mm alone says nothing across camera models)."""
    return {f.file: f.exif.focal_length_35mm for f in frames.frames if f.exif.focal_length_35mm}


def scaled_focal(camera: pycolmap.Camera, scale: float) -> pycolmap.Camera:
    copy = pycolmap.Camera(camera.todict())
    params = np.array(copy.params)
    for index in copy.focal_length_idxs():
        params[index] *= scale
    copy.params = params
    return copy


def split_per_photo(model: pycolmap.Reconstruction, start_focal: dict[str, float] | None = None
                    ) -> pycolmap.Reconstruction:
    """A copy of ``model`` (registered photos and 3D points) where each photo has its own camera (camera id =
    image id), a copy of its shared camera, with the focal length ``start_focal[name]`` where given."""
    split = pycolmap.Reconstruction()
    start_focal = start_focal or {}
    for image_id in sorted(model.reg_image_ids()):
        image = model.image(image_id)
        camera = image.camera
        if image.name in start_focal:
            camera = scaled_focal(camera, start_focal[image.name] / camera.mean_focal_length())
        else:
            camera = pycolmap.Camera(camera.todict())
        camera.camera_id = image_id
        split.add_camera_with_trivial_rig(camera)
        points = pycolmap.Point2DList([pycolmap.Point2D(point.xy) for point in image.points2D])
        split.add_image_with_trivial_frame(pycolmap.Image(name=image.name, points2D=points, camera_id=image_id,
                                                          image_id=image_id), image.cam_from_world())
    for point in model.points3D.values():
        split.add_point3D(point.xyz, point.track, point.color)
    return split


def exif_start_focal(model: pycolmap.Reconstruction, frames: FramesManifest) -> dict[str, float]:
    """Photo name -> a focal length (px) from EXIF, for the photos whose EXIF has a 35 mm equivalent: their shared
    camera's, times their EXIF focal length over the median of the EXIF ones among the photos of that camera (the
    shared focal length fits the typical photo)."""
    exif = exif_focal(frames)
    by_camera: dict[int, list[str]] = {}
    for image_id in model.reg_image_ids():
        image = model.image(image_id)
        by_camera.setdefault(image.camera_id, []).append(image.name)
    start = {}
    for camera_id, names in by_camera.items():
        shared = model.camera(camera_id).mean_focal_length()
        known = [exif[name] for name in names if name in exif]
        typical = float(np.median(known)) if known else None
        for name in names:
            if typical and name in exif:
                start[name] = shared * exif[name] / typical
    return start


MIN_POINTS_FOR_FOCAL = 100  # fewer observations do not pin a focal length down: such a photo keeps its start
MAX_ROUNDS = 8
CONVERGED = 0.005  # stop when a round lowers the mean reprojection error by less than this fraction


@dataclass
class OwnFit:
    camera: pycolmap.Camera
    cam_from_world: pycolmap.Rigid3d
    error_px: float


def fit_own_camera(model: pycolmap.Reconstruction, image_id: int, start: pycolmap.Camera,
                   refine_distortion: bool = True) -> OwnFit | None:
    """``image_id``'s pose, focal length (and radial distortion) refined alone against the model's 3D points,
    held fixed, from the camera ``start``; None with fewer than MIN_POINTS_FOR_FOCAL points or no solution.

    With the structure fixed, a photo cannot drag the scene along while its focal length runs off, as it does in
    a bundle adjustment where every photo's focal length is free (liberty: 294 × the long side, a camera 124 ×
    the median distance out, in one run)."""
    image = model.image(image_id)
    observed = [(p.xy, model.point3D(p.point3D_id).xyz) for p in image.points2D if p.has_point3D()]
    if len(observed) < MIN_POINTS_FOR_FOCAL:
        return None
    points2d = np.array([o[0] for o in observed])
    points3d = np.array([o[1] for o in observed])
    options = pycolmap.AbsolutePoseRefinementOptions()
    options.refine_focal_length = True
    options.refine_extra_params = refine_distortion
    options.print_summary = False
    camera = pycolmap.Camera(start.todict())
    result = pycolmap.refine_absolute_pose(image.cam_from_world(), points2d, points3d,
                                           np.ones(len(observed), dtype=bool), camera, options)
    if result is None:
        return None
    pose = result["cam_from_world"]
    in_camera = points3d @ pose.matrix()[:, :3].T + pose.matrix()[:, 3]
    if (in_camera[:, 2] <= 0).mean() > 0.01:  # points behind the camera: a mirrored, wrong solution
        return None
    projected = camera.img_from_cam(in_camera, check_cheirality=False)
    return OwnFit(camera, pose, float(np.linalg.norm(projected - points2d, axis=1).mean()))


def own_focal(model: pycolmap.Reconstruction, image_id: int) -> float | None:
    """The focal length that fits ``image_id`` alone (see fit_own_camera), from its current camera."""
    fit = fit_own_camera(model, image_id, model.image(image_id).camera, refine_distortion=False)
    return None if fit is None else float(fit.camera.mean_focal_length())


def focal_disagreement(model: pycolmap.Reconstruction) -> dict[str, float]:
    """Photo name -> its own focal length over its shared camera's, for photos that share a camera."""
    users = Counter(model.image(i).camera_id for i in model.reg_image_ids())
    ratios = {}
    for image_id in model.reg_image_ids():
        image = model.image(image_id)
        if users[image.camera_id] < 2:
            continue
        focal = own_focal(model, image_id)
        if focal is not None:
            ratios[image.name] = focal / image.camera.mean_focal_length()
    return ratios


def _plausible(camera: pycolmap.Camera, config: SfmConfig) -> bool:
    ratio = camera.mean_focal_length() / max(camera.width, camera.height)
    extra = [abs(camera.params[i]) for i in camera.extra_params_idxs()]
    return config.min_focal_ratio <= ratio <= config.max_focal_ratio and all(k <= MAX_DISTORTION for k in extra)


MAX_DISTORTION = 1.0  # |k| above this is not a lens (COLMAP's max_extra_param)


def refine_per_photo(model: pycolmap.Reconstruction, frames: FramesManifest, config: SfmConfig
                     ) -> pycolmap.Reconstruction:
    """Split ``model``'s shared cameras per photo, then alternate: each photo's camera and pose fitted alone
    against the fixed 3D points (from its current camera, and from its EXIF-scaled start where EXIF has a focal
    length: the better plausible fit wins), then poses and points adjusted with the cameras held; until the
    error stops falling. A photo without a plausible fit keeps its shared camera."""
    exif_start = exif_start_focal(model, frames)
    split = split_per_photo(model)
    split.update_point_3d_errors()
    error = split.compute_mean_reprojection_error()
    for _ in range(MAX_ROUNDS):
        for image_id in split.reg_image_ids():
            _refit(split, image_id, exif_start.get(split.image(image_id).name), config)
        adjust_poses_and_points(split)
        previous, error = error, split.compute_mean_reprojection_error()
        if error > (1 - CONVERGED) * previous:
            break
    return split


def _refit(model: pycolmap.Reconstruction, image_id: int, exif_focal_px: float | None, config: SfmConfig) -> None:
    current = model.image(image_id).camera
    starts = [current]
    if exif_focal_px is not None and abs(exif_focal_px / current.mean_focal_length() - 1) > 0.05:
        starts.append(scaled_focal(current, exif_focal_px / current.mean_focal_length()))
    fits = [fit for start in starts if (fit := fit_own_camera(model, image_id, start)) is not None
            and _plausible(fit.camera, config)]
    if not fits:
        return
    best = min(fits, key=lambda fit: fit.error_px)
    model.camera(image_id).params = best.camera.params
    model.frame(model.image(image_id).frame_id).rig_from_world = best.cam_from_world
