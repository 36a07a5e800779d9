"""What a COLMAP model says about its photos: per-photo error and observations, the focal spread, warnings."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pycolmap

from spaceport.formats.sfm import FocalSpread, PhotoQuality, SfmReport
from spaceport.sfm.config import SfmConfig


def long_side(camera: pycolmap.Camera) -> int:
    return max(camera.width, camera.height)


def photo_errors(model: pycolmap.Reconstruction, image: pycolmap.Image) -> np.ndarray:
    """Reprojection error (px) of each observation of ``image`` (the 2D points that have a 3D point)."""
    observed = [(p.xy, p.point3D_id) for p in image.points2D if p.has_point3D()]
    if not observed:
        return np.zeros(0)
    xy = np.array([o[0] for o in observed], dtype=np.float64)
    xyz = np.array([model.point3D(o[1]).xyz for o in observed], dtype=np.float64)
    pose = image.cam_from_world().matrix()
    in_camera = xyz @ pose[:, :3].T + pose[:, 3]
    projected = image.camera.img_from_cam(in_camera, check_cheirality=False)
    return np.linalg.norm(projected - xy, axis=1)


def photo_quality(model: pycolmap.Reconstruction) -> list[PhotoQuality]:
    rows = []
    for image_id in sorted(model.reg_image_ids()):
        image = model.image(image_id)
        errors = photo_errors(model, image)
        rows.append(PhotoQuality(name=image.name, camera_id=image.camera_id,
                                 focal_px=round(float(image.camera.mean_focal_length()), 1), points=len(errors),
                                 error_px=round(float(errors.mean()), 3) if len(errors) else 0.0))
    return sorted(rows, key=lambda row: row.name)


def focal_spread(model: pycolmap.Reconstruction) -> FocalSpread | None:
    """Over the registered photos (a shared camera counts once per photo that uses it)."""
    cameras = [model.image(i).camera for i in model.reg_image_ids()]
    if not cameras:
        return None
    focal = np.array([c.mean_focal_length() for c in cameras])
    fraction = focal / np.array([long_side(c) for c in cameras])
    return FocalSpread(min_px=round(float(focal.min()), 1), median_px=round(float(np.median(focal)), 1),
                       max_px=round(float(focal.max()), 1), min_fraction=round(float(fraction.min()), 3),
                       median_fraction=round(float(np.median(fraction)), 3),
                       max_fraction=round(float(fraction.max()), 3))


def scene_centre(model: pycolmap.Reconstruction) -> np.ndarray:
    """Median of the 3D points (robust to the few far-away points every internet collection has)."""
    xyz = np.array([p.xyz for p in model.points3D.values()])
    if len(xyz):
        return np.median(xyz, axis=0)
    return np.median(np.array([model.image(i).projection_center() for i in model.reg_image_ids()]), axis=0)


def camera_distances(model: pycolmap.Reconstruction) -> dict[int, float]:
    """Image id -> distance of its camera centre from the scene centre."""
    centre = scene_centre(model)
    return {i: float(np.linalg.norm(model.image(i).projection_center() - centre)) for i in model.reg_image_ids()}


GATE_TESTS = {"focal": "implausible focal length", "far": "camera far outside the scene",
              "few_points": "too few 3D points seen"}


def sfm_warnings(report: SfmReport, config: SfmConfig, disagreeing: dict[str, float] | None = None) -> list[str]:
    """What makes the model look unreliable, in sentences for people (empty when nothing does). ``disagreeing``:
    photos whose own focal length differs from their shared camera's (name -> own / shared)."""
    warnings = []
    fraction = report.registered / report.total if report.total else 0.0
    if fraction < config.retry_below_fraction:
        warnings.append(f"only {report.registered} of {report.total} photos are in the model ({fraction:.0%}); "
                        "the others are listed with the reason")
    if report.mean_reprojection_error_px > config.warn_reprojection_error_px:
        warnings.append(f"mean reprojection error {report.mean_reprojection_error_px:.2f} px is high (above "
                        f"{config.warn_reprojection_error_px:g} px): camera poses may be off")
    if len(report.model_sizes) > 1:
        warnings.append(f"COLMAP made {len(report.model_sizes)} separate models (photos in each: "
                        f"{', '.join(map(str, report.model_sizes))}); only the largest is kept")
    removed = [photo for photo in report.left_out if photo.test in GATE_TESTS]
    if removed:
        counts = Counter(photo.test for photo in removed)
        warnings.append(f"the camera check removed {len(removed)} photo(s): "
                        + ", ".join(f"{n} for {GATE_TESTS[test]}" for test, n in counts.items()))
    kept = next((a for a in report.attempts if a.kept), None)
    if kept is not None and not report.attempts[0].kept:
        first = report.attempts[0]
        warnings.append(f"mapping with the {first.mapper} mapper and {first.camera_mode} cameras registered only "
                        f"{first.registered} photos; the model of the {kept.mapper} mapper with {kept.camera_mode} "
                        f"cameras ({kept.registered}) is used instead")
    if disagreeing:
        worst = sorted(disagreeing.items(), key=lambda item: -abs(item[1] - 1))
        warnings.append(f"wide focal spread on a shared camera: {len(disagreeing)} photo(s) fit a focal length "
                        f"more than {config.focal_disagreement:.0%} away from their camera's ("
                        + ", ".join(f"{name} {ratio:.2f} ×" for name, ratio in worst[:5])
                        + "); taken at other zooms? camera mode per-image or auto gives each photo its own")
    poor = sorted((p for p in report.photos if p.error_px > 2 * config.warn_reprojection_error_px),
                  key=lambda p: -p.error_px)
    if poor:
        warnings.append(f"{len(poor)} photo(s) reproject poorly (mean error above "
                        f"{2 * config.warn_reprojection_error_px:g} px): "
                        + ", ".join(f"{p.name} {p.error_px:.1f} px" for p in poor[:5]))
    return warnings
