"""The camera check after mapping: photos whose camera cannot be right are taken out of the model, with the reason.

A registered photo and a low mean reprojection error do not prove a camera is usable: with a camera per photo the
mapper can fit a negative or absurd focal length, or park a camera hundreds of scene sizes away, and still
reproject its few points well. Such photos would mislead training, so they are de-registered and reported.
"""

from __future__ import annotations

import numpy as np
import pycolmap

from spaceport.formats.sfm import LeftOutPhoto
from spaceport.sfm.adjust import adjust_poses_and_points
from spaceport.sfm.config import SfmConfig
from spaceport.sfm.quality import camera_distances, long_side

MAX_ROUNDS = 3  # a removal moves the scene centre and the median distance a little: check again, a few times


def failed_checks(model: pycolmap.Reconstruction, config: SfmConfig) -> list[LeftOutPhoto]:
    """The registered photos that fail a test, each with its first failed test (focal, far, few_points)."""
    distances = camera_distances(model)
    typical = float(np.median(list(distances.values()))) if distances else 0.0
    failed = []
    for image_id in sorted(model.reg_image_ids()):
        image = model.image(image_id)
        result = _first_failure(image, distances[image_id], typical, config)
        if result:
            failed.append(LeftOutPhoto(name=image.name, test=result[0], reason=result[1]))
    return failed


def _first_failure(image: pycolmap.Image, distance: float, typical: float,
                   config: SfmConfig) -> tuple[str, str] | None:
    camera = image.camera
    focal = float(camera.mean_focal_length())
    ratio = focal / long_side(camera)
    if not (config.min_focal_ratio <= ratio <= config.max_focal_ratio):
        return "focal", (f"implausible focal length {focal:,.0f} px ({ratio:.2f} × the photo's long side; "
                         f"accepted {config.min_focal_ratio:g}–{config.max_focal_ratio:g} ×)")
    if typical > 0 and distance > config.max_camera_distance * typical:
        return "far", (f"camera {distance / typical:.0f} × farther from the scene centre than the median camera "
                       f"(accepted up to {config.max_camera_distance:g} ×)")
    points = image.num_points3D
    if points < config.min_photo_points:
        return "few_points", f"sees only {points} 3D points (needs {config.min_photo_points})"
    return None


def remove_bad_cameras(model: pycolmap.Reconstruction, config: SfmConfig) -> list[LeftOutPhoto]:
    """De-register the photos that fail the checks (in place), re-adjust the rest; returns what was removed."""
    removed: list[LeftOutPhoto] = []
    for _ in range(MAX_ROUNDS):
        failed = failed_checks(model, config)
        if not failed:
            break
        for photo in failed:
            model.deregister_frame(model.find_image_with_name(photo.name).frame_id)
        removed += failed
        if model.num_reg_images() < 2:
            break
        adjust_poses_and_points(model)
    return removed
