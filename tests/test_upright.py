"""Upright scenes on the real monstree model (photos held upright around a tree trunk): the up estimated from the
cameras, the model turned so that up is -Y (the .ply/.sog convention of PlayCanvas' viewers) and centred, and the
estimate unmoved by a random turn of the model, by photos turned a quarter, and by cameras all pitched one way."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pycolmap
import pytest
from scipy.spatial.transform import Rotation

from spaceport.errors import SpaceportError
from spaceport.sfm.upright import (
    UP_AXIS,
    UpSettingError,
    align_upright,
    angle_deg,
    estimate_up,
    estimate_up_detailed,
    make_upright,
    parse_up,
    up_from_rotations,
)

HAND_HELD_ROLL_DEG = 10.0  # monstree's photos are held level within this (measured: at most 5.2 degrees)
HAND_HELD_PITCH_DEG = 25.0  # ... and pitched up or down within this (measured: at most 19.8 degrees)


def load_model(sfm_workspace: Path) -> pycolmap.Reconstruction:
    return pycolmap.Reconstruction(str(sfm_workspace / "sfm" / "sparse" / "0"))


def rotations(model: pycolmap.Reconstruction) -> np.ndarray:
    """World-to-camera rotations of the registered photos, by name: rows are the camera's right, down, forward."""
    images = sorted((image for image in model.images.values() if image.has_pose), key=lambda image: image.name)
    return np.array([image.cam_from_world().rotation.matrix() for image in images])


def camera_ups(model: pycolmap.Reconstruction) -> np.ndarray:
    return -rotations(model)[:, 1]


def roll_deg(cam_from_world: np.ndarray, up: np.ndarray) -> np.ndarray:
    """How far each camera's right axis leans out of the level plane of up (its roll)."""
    return np.degrees(np.arcsin(np.abs(cam_from_world[:, 0] @ up)))


def turned_in_camera(axis: int, degrees: float) -> np.ndarray:
    """A rotation of the camera about its own axis (0: right = pitch, 2: optical axis = roll)."""
    return Rotation.from_rotvec(np.radians(degrees) * np.eye(3)[axis]).as_matrix()


def set_rotation(model: pycolmap.Reconstruction, image: pycolmap.Image, cam_from_world: np.ndarray) -> None:
    """Turn one photo's camera in place, keeping its centre (each monstree photo is its own frame)."""
    centre = image.projection_center()
    model.frames[image.frame_id].rig_from_world = pycolmap.Rigid3d(
        pycolmap.Rotation3d(cam_from_world), -cam_from_world @ centre
    )


def test_the_estimated_up_agrees_with_the_upright_photos(sfm_workspace: Path) -> None:
    model = load_model(sfm_workspace)
    estimate = estimate_up_detailed(model)
    assert estimate.method == "cameras" and estimate.cameras == 10 and estimate.support == 1.0
    assert np.linalg.norm(estimate.vector) == pytest.approx(1.0)
    ups = camera_ups(model)
    assert max(angle_deg(up, estimate.vector) for up in ups) < HAND_HELD_PITCH_DEG
    assert roll_deg(rotations(model), estimate.vector).max() < HAND_HELD_ROLL_DEG  # every photo's horizon is level
    assert estimate_up(model) @ ups.mean(axis=0) > 0.9  # towards the top of the photos, not their bottom


def test_align_turns_up_onto_minus_y_and_centres_the_scene(sfm_workspace: Path) -> None:
    model = load_model(sfm_workspace)
    up = estimate_up(model)
    old_points = {point_id: point.xyz.copy() for point_id, point in model.points3D.items()}
    error_before = model.compute_mean_reprojection_error()

    transform = align_upright(model, up)

    assert isinstance(transform, pycolmap.Sim3d) and transform.scale == 1.0
    assert angle_deg(transform.rotation.matrix() @ up, UP_AXIS) < 1e-6
    assert angle_deg(estimate_up(model), UP_AXIS) < 0.5  # the cameras themselves now say -Y is up
    assert max(angle_deg(camera_up, UP_AXIS) for camera_up in camera_ups(model)) < HAND_HELD_PITCH_DEG
    assert roll_deg(rotations(model), UP_AXIS).max() < HAND_HELD_ROLL_DEG
    points = np.array([point.xyz for point in model.points3D.values()])
    assert np.abs(np.median(points, axis=0)).max() < 1e-9  # centred on the scene
    some_id = next(iter(old_points))
    assert np.allclose(transform.matrix() @ np.append(old_points[some_id], 1.0), model.points3D[some_id].xyz)
    assert model.compute_mean_reprojection_error() == pytest.approx(error_before, abs=1e-9)  # a rigid move only
    # PlayCanvas' viewers turn a .ply/.sog 180 degrees about Z: -Y up becomes the engine's +Y up
    assert np.allclose(np.diag([-1.0, -1.0, 1.0]) @ UP_AXIS, [0.0, 1.0, 0.0])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_model_turned_at_random_is_set_upright_again(seed: int, sfm_workspace: Path) -> None:
    reference = load_model(sfm_workspace)
    up = estimate_up(reference)
    align_upright(reference, up)

    model = load_model(sfm_workspace)
    turn = Rotation.random(random_state=seed).as_matrix()
    shift = np.random.default_rng(seed).normal(0, 10, 3)
    model.transform(pycolmap.Sim3d(2.5, pycolmap.Rotation3d(turn), shift))
    assert angle_deg(estimate_up(model), turn @ up) < 0.01
    align_upright(model, estimate_up(model))
    assert angle_deg(estimate_up(model), UP_AXIS) < 0.5
    # the same photos, as upright as in the model that was never turned (heading aside)
    tilts = [angle_deg(camera_up, UP_AXIS) for camera_up in camera_ups(model)]
    reference_tilts = [angle_deg(camera_up, UP_AXIS) for camera_up in camera_ups(reference)]
    assert tilts == pytest.approx(reference_tilts, abs=0.5)
    assert np.abs(np.median([point.xyz for point in model.points3D.values()], axis=0)).max() < 1e-9


def test_photos_turned_a_quarter_or_upside_down_do_not_tilt_the_scene(sfm_workspace: Path) -> None:
    model = load_model(sfm_workspace)
    up = estimate_up(model)
    images = sorted(model.images.values(), key=lambda image: image.name)
    turns = {1: 90.0, 4: -90.0, 7: 90.0, 8: 180.0}  # EXIF orientation lost: sideways and upside-down photos
    for index, degrees in turns.items():
        cam_from_world = images[index].cam_from_world().rotation.matrix()
        set_rotation(model, images[index], turned_in_camera(2, degrees) @ cam_from_world)
    ups = camera_ups(model)
    assert sum(angle_deg(camera_up, up) > 60 for camera_up in ups) == 4  # the turns took effect
    estimate = estimate_up_detailed(model)
    assert estimate.method == "cameras" and estimate.support == pytest.approx(0.6)
    assert angle_deg(estimate.vector, up) < 2.0  # measured 0.4: the same right axes, less three
    assert angle_deg(ups.mean(axis=0), up) > 10  # what a plain mean of the up axes would have done


@pytest.mark.parametrize("pitch", [-20.0, 35.0, 50.0])
def test_cameras_all_pitched_one_way_do_not_tilt_the_scene(pitch: float, sfm_workspace: Path) -> None:
    """An object shot from one side, from above or below: the cameras' up axes lean, their right axes do not."""
    cam_from_world = rotations(load_model(sfm_workspace))
    up = up_from_rotations(cam_from_world).vector
    pitched = np.array([turned_in_camera(0, pitch) @ rotation for rotation in cam_from_world])
    estimate = up_from_rotations(pitched)
    assert estimate.method == "cameras" and angle_deg(estimate.vector, up) < 1.0
    assert angle_deg((-pitched[:, 1]).mean(axis=0), up) > abs(pitch) * 0.65  # the plain mean leans with them


def test_photos_looking_straight_down_have_up_opposite_to_their_view() -> None:
    """A drone's nadir survey: the photos' up axes point every way along the ground, their views all down."""
    rng = np.random.default_rng(0)
    down = np.array([0.0, 0.3, 1.0]) / np.linalg.norm([0.0, 0.3, 1.0])  # gravity, in some model frame
    cameras = []
    for heading in rng.uniform(0, 2 * np.pi, 16):
        level = Rotation.from_rotvec(heading * down).apply(np.cross(down, [1.0, 0.0, 0.0]))
        right = level / np.linalg.norm(level)
        cam_from_world = np.stack([right, np.cross(down, right), down])  # x right, y down the image, z forward
        cameras.append(turned_in_camera(0, rng.normal(0, 4)) @ cam_from_world)
    estimate = up_from_rotations(np.array(cameras))
    assert estimate.method == "nadir" and angle_deg(estimate.vector, -down) < 5.0


def test_make_upright_records_what_it_did(sfm_workspace: Path) -> None:
    model = load_model(sfm_workspace)
    before = rotations(model)
    untouched = make_upright(model, "none")
    assert untouched.method is None and untouched.new_from_old is None and np.allclose(rotations(model), before)

    record = make_upright(model, "auto")
    assert record.method == "cameras" and record.support == 1.0 and record.cameras == 10
    assert angle_deg(np.array(record.new_from_old)[:, :3] @ record.up_in_model, UP_AXIS) < 1e-6
    assert angle_deg(estimate_up(model), UP_AXIS) < 0.5
    assert record.model_dump_json()  # goes into sfm/report.json as it is

    given = make_upright(load_model(sfm_workspace), "+z")
    assert given.method == "given" and given.up_in_model == [0.0, 0.0, 1.0]
    assert np.allclose(np.array(given.new_from_old)[:, :3] @ [0.0, 0.0, 1.0], UP_AXIS)
    assert given.support == 0.0  # the photos disagree: +z is where they look, not their up


@pytest.mark.parametrize(("text", "expected"), [
    ("auto", "auto"), (" None ", "none"), ("+x", [1, 0, 0]), ("-Y", [0, -1, 0]), ("z", [0, 0, 1]),
    ("0,0,2", [0, 0, 1]), ("1, -1, 0", [2**-0.5, -(2**-0.5), 0]), ("-.5,0,1e-300", [-1, 0, 0]),
])
def test_parse_up_reads_words_axes_and_vectors(text: str, expected: str | list[float]) -> None:
    parsed = parse_up(text)
    if isinstance(expected, str):
        assert parsed == expected
    else:
        assert np.allclose(parsed, expected)


@pytest.mark.parametrize("text", ["", "up", "+w", "xy", "0,0,0", "1,2", "1,2,3,4", "nan,0,1", "x,y,z", "--x"])
def test_parse_up_refuses_anything_else_clearly(text: str) -> None:
    with pytest.raises(UpSettingError) as raised:
        parse_up(text)
    assert repr(text) in str(raised.value) and "+x, -x, +y, -y, +z, -z" in str(raised.value)
    assert isinstance(raised.value, SpaceportError) and isinstance(raised.value, ValueError)


def test_the_sfm_stage_writes_an_upright_model_and_says_so(sfm_workspace: Path) -> None:
    """The sfm stage turns its model (and so the undistorted one training reads) upright: -Y up, centred."""
    from spaceport.formats import read_sfm_report

    report = read_sfm_report(sfm_workspace / "sfm")
    assert report.upright is not None and report.upright["setting"] == "auto"
    assert report.upright["new_from_old"] is not None
    for folder in ("sparse/0", "undistorted/sparse"):
        model = pycolmap.Reconstruction(str(sfm_workspace / "sfm" / folder))
        mean_up = camera_ups(model).mean(axis=0)
        assert angle_deg(mean_up, np.array([0.0, -1.0, 0.0])) < 10, folder
        centre = np.median(np.array([point.xyz for point in model.points3D.values()]), axis=0)
        spread = np.median(np.linalg.norm([image.projection_center() for image in model.images.values()], axis=1))
        assert np.linalg.norm(centre) < 0.05 * spread, folder


def test_up_none_keeps_colmaps_frame_and_bad_values_fail_before_running() -> None:
    from spaceport.presets import SettingsError, resolve_config

    assert resolve_config("preview", {"sfm.up": "none"}).sfm.up == "none"
    assert resolve_config("preview", {"sfm.up": "0,0,1"}).sfm.up == "0,0,1"
    with pytest.raises(SettingsError, match="sfm.up"):
        resolve_config("preview", {"sfm.up": "sideways"})
