"""Bundle adjustment that cannot wreck a model: gauge fixed, robust loss, undone when it makes things worse."""

from __future__ import annotations

import copy
import math

import pycolmap

WORSE = 1.25  # an adjustment that raises the mean reprojection error by more than this factor is undone


def adjust_poses_and_points(model: pycolmap.Reconstruction, iterations: int = 50) -> bool:
    """Refine poses and 3D points with every camera's intrinsics held; False (model unchanged) when it diverged.

    The gauge (7 degrees of freedom) is fixed: left free, COLMAP's solver meets a singular system ("Matrix not
    positive definite") and, now and then on liberty, took a step that sent the error to 1e150."""
    before = copy.deepcopy(model)
    error_before = model.compute_mean_reprojection_error()
    options = pycolmap.BundleAdjustmentOptions()
    options.refine_focal_length = False
    options.refine_extra_params = False
    options.refine_principal_point = False
    options.print_summary = False
    options.ceres.loss_function_type = pycolmap.LossFunctionType.CAUCHY  # a collection has wrong matches
    options.ceres.solver_options.max_num_iterations = iterations
    config = pycolmap.BundleAdjustmentConfig()
    for image_id in model.reg_image_ids():
        config.add_image(image_id)
    if model.num_reg_images() >= 2:
        config.fix_gauge(pycolmap.BundleAdjustmentGauge.TWO_CAMS_FROM_WORLD)
    pycolmap.create_default_bundle_adjuster(options, config, model).solve()
    model.update_point_3d_errors()
    error = model.compute_mean_reprojection_error()
    if math.isfinite(error) and error <= WORSE * error_before + 0.05:
        return True
    _restore(model, before)
    return False


def _restore(model: pycolmap.Reconstruction, saved: pycolmap.Reconstruction) -> None:
    for frame_id, frame in saved.frames.items():
        if frame.has_pose():
            model.frame(frame_id).rig_from_world = frame.rig_from_world
    for point_id, point in saved.points3D.items():
        if model.exists_point3D(point_id):
            model.point3D(point_id).xyz = point.xyz
    model.update_point_3d_errors()
