"""Upright scenes: turn the COLMAP model so that the photos' "up" is the up axis splat viewers expect.

Convention: the scene's up is **-Y** (gravity along +Y), the other axes as COLMAP/OpenCV has them (x right, y down,
z forward for a level camera). This is the frame of a standard 3DGS/INRIA ``.ply`` as the PlayCanvas tools read it,
for ``.ply`` and ``.sog`` alike:

- supersplat-viewer (the viewer of superspl.at and of ``splat-transform``'s ``.html`` output) loads every splat
  (``.ply``, ``.sog``, ``meta.json``, ``lod-meta.json``) into an entity turned ``setLocalEulerAngles(0, 0, 180)``:
  ``loadGsplat`` in github.com/playcanvas/supersplat-viewer ``src/index.ts``.
- SuperSplat's maintainer: "PLY files generally have content stored with -Y going up into the sky. The playcanvas
  engine convention uses +Y instead. We compensate for this discrepancy by rotating the model 180 around Z axis"
  (github.com/playcanvas/supersplat/issues/451); the editor undoes that turn when it saves a ``.ply``
  (github.com/playcanvas/splat-transform/issues/151). ``splat-transform`` itself moves no axis.
- COLMAP's own ``model_orientation_aligner --method IMAGE-ORIENTATION`` turns the gravity it estimates onto +Y.
- Our viewer (``spaceport/viewer/camera.py``) levels the scene from the cameras itself, and turns a splat without
  cameras 180 degrees about X: -Y up as well.

So a model aligned here opens upright in SuperSplat, supersplat-viewer and ours, with no change to any of them.

Estimating up (``estimate_up``): a photo held upright has its camera's -y axis pointing up, give or take the tilt
of the hand. First the direction most cameras agree on (COLMAP's ``FindBestConsensusAxis``: each camera's up axis
is a candidate, the one with most others within 30 degrees wins, then the mean of those), which ignores photos
turned a quarter (EXIF orientation lost) or upside down. Then that is refined from the cameras' right (+x) axes,
which stay level whatever the pitch: up is the direction most perpendicular to the right axes of the cameras that
are not rolled more than 30 degrees (nerfstudio's "vertical" orientation, ``auto_orient_and_center_poses`` in
nerfstudio/cameras/camera_utils.py). A plain mean of the up axes is tilted by the mean pitch of the photos (an
object shot from one side, 30 degrees from above, would lean 30 degrees); the right axes are not. When all the
right axes are parallel (photos all facing one way) only the component along them is removed.
Checked first: when the viewing directions agree (three quarters within 30 degrees) while the up axes spread (their
mean is shorter than 0.5), the photos look straight down (a drone's nadir survey) and up is opposite to the mean
viewing direction. When fewer than half the cameras agree on up, the mean up axis is used, and the model's own -Y
when even that cancels out (``UpEstimate.method`` says which).

Not used: the plane of the camera centres. It is level for a walk around an object at one height, but not in
general: on monstree (10 photos along a trunk, taken at heights 3.8 units apart over 8.6 across) its normal is 77
degrees from the photos' up.

Turning (``align_upright``): the smallest rotation taking up onto -Y, so the heading stays COLMAP's. Centring:
the median of the 3D points (per axis, after the turn) moves to the origin (the camera centres' median when the
model has no points). SOG stores positions on a log scale, so a step near x costs (1 + |x|) times the step at 0:
the scene is most precise where it is centred; and a viewer's turn of the entity (supersplat-viewer's 180 degrees
about Z) keeps a centred scene in place instead of swinging it to the other side of the origin. The scale is kept.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pycolmap
from pydantic import BaseModel

from spaceport.errors import SpaceportError

UP_AXIS = np.array([0.0, -1.0, 0.0])  # the up of the aligned scene: -Y, as PlayCanvas reads a .ply or .sog
AGREEMENT_DEG = 30.0  # two cameras agree on up (or on their viewing direction) within this angle
MAX_PITCH_COS = 0.5  # a camera tilted more than 60 degrees from up is not level with it
MIN_SUPPORT = 0.5  # the fraction of cameras that must agree on up for it to be trusted
NADIR_SUPPORT = 0.75  # looking straight down: this fraction of cameras agree on their viewing direction ...
NADIR_MAX_RESULTANT = 0.5  # ... while the length of the mean of their up axes falls below this
# nerfstudio: right axes whose RMS cosine with the second direction is below cos(80 degrees) are all parallel.
DEGENERATE_RMS = 0.17
REFINE_ROUNDS = 3
MAX_CANDIDATES = 512  # axes tried as the consensus direction (evenly spread), bounding the work for big captures
UP_CHOICES = "auto, none, +x, -x, +y, -y, +z, -z, or three numbers x,y,z"
_AXES = {"x": 0, "y": 1, "z": 2}
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"

UpMethod = Literal["cameras", "nadir", "mean", "colmap", "given"]


class UpSettingError(SpaceportError, ValueError):
    """A bad ``--up`` value (a ValueError too, so a pydantic validator reports it as a validation error)."""


@dataclass(frozen=True)
class UpEstimate:
    vector: np.ndarray  # unit, in the model's world coordinates
    method: UpMethod
    support: float  # fraction of the cameras level with it (see _level); for nadir, looking straight down
    cameras: int  # registered cameras used


class UprightRecord(BaseModel):
    """What was done to the model, for sfm/report.json."""

    setting: str  # the --up value: auto, none, +z, 0,0,1, ...
    method: UpMethod | None  # how the up vector was found; None when --up none
    up_in_model: list[float] | None  # the up vector in the model's world before the transform
    support: float | None  # fraction of cameras level with it (rolled < 30 and pitched < 60 degrees)
    cameras: int
    new_from_old: list[list[float]] | None  # 3x4 [R | t], new = R @ old + t, scale 1; None when nothing was done


def parse_up(text: str) -> Literal["auto", "none"] | np.ndarray:
    """``auto`` | ``none`` | an axis (``+x``, ``-y``, ``z`` ...) | ``x,y,z``: the unit vector (in the COLMAP model's
    world) that is up, or the word. Raises UpSettingError for anything else."""
    value = text.strip().lower()
    if value in ("auto", "none"):
        return value  # type: ignore[return-value]
    axis = re.fullmatch(r"([-+]?)([xyz])", value)
    if axis:
        vector = np.zeros(3)
        vector[_AXES[axis.group(2)]] = -1.0 if axis.group(1) == "-" else 1.0
        return vector
    numbers = re.fullmatch(rf"\s*({_NUMBER})\s*,\s*({_NUMBER})\s*,\s*({_NUMBER})\s*", value)
    if numbers:
        vector = np.array([float(number) for number in numbers.groups()])
        norm = float(np.linalg.norm(vector))
        if norm > 1e-9 and math.isfinite(norm):
            return vector / norm
        raise UpSettingError(f"--up {text!r} has no direction (zero length): give {UP_CHOICES}")
    raise UpSettingError(f"--up {text!r} is not understood: give {UP_CHOICES}")


def estimate_up(reconstruction: pycolmap.Reconstruction) -> np.ndarray:
    """The scene's up as a unit vector in the model's world, from the registered cameras (see the module doc)."""
    return estimate_up_detailed(reconstruction).vector


def estimate_up_detailed(reconstruction: pycolmap.Reconstruction) -> UpEstimate:
    rotations = [image.cam_from_world().rotation.matrix() for image in reconstruction.images.values()
                 if image.has_pose]
    if not rotations:
        raise SpaceportError("the COLMAP model has no registered camera: there is no up to estimate; run sfm again")
    return up_from_rotations(np.asarray(rotations))


def up_from_rotations(cam_from_world: np.ndarray) -> UpEstimate:
    """Up from (N, 3, 3) world-to-camera rotations: rows are the camera's x (right), y (down), z (forward) axes."""
    rights, ups, forwards = cam_from_world[:, 0], -cam_from_world[:, 1], cam_from_world[:, 2]
    count = len(cam_from_world)
    look, look_support = _consensus_axis(forwards)
    if look_support >= NADIR_SUPPORT and np.linalg.norm(ups.mean(axis=0)) < NADIR_MAX_RESULTANT:
        return UpEstimate(-look, "nadir", look_support, count)
    up, support = _consensus_axis(ups)
    if support < MIN_SUPPORT:
        mean = ups.mean(axis=0)
        up, method = (_unit(mean), "mean") if np.linalg.norm(mean) > 0.1 else (UP_AXIS.copy(), "colmap")
        return UpEstimate(up, method, float(_level(cam_from_world, up).mean()), count)
    for _ in range(REFINE_ROUNDS):
        up = _perpendicular_to(rights[_unrolled(rights, up)], up)
    return UpEstimate(up, "cameras", float(_level(cam_from_world, up).mean()), count)


def align_upright(
    reconstruction: pycolmap.Reconstruction, up_vector: np.ndarray, target: np.ndarray = UP_AXIS, centre: bool = True
) -> pycolmap.Sim3d:
    """Rotate the model in place, by the smallest rotation taking up_vector onto target, and move its centre (the
    median 3D point) to the origin when centre; returns the transform applied (new_from_old_world, scale 1)."""
    rotation = rotation_between(_unit(np.asarray(up_vector, float)), _unit(np.asarray(target, float)))
    translation = -scene_centre(reconstruction, rotation) if centre else np.zeros(3)
    new_from_old = pycolmap.Sim3d(1.0, pycolmap.Rotation3d(rotation), translation)
    reconstruction.transform(new_from_old)
    return new_from_old


def make_upright(reconstruction: pycolmap.Reconstruction, setting: str = "auto") -> UprightRecord:
    """Apply ``--up setting`` to the model in place; the record says what was done."""
    choice = parse_up(setting)
    cameras = sum(image.has_pose for image in reconstruction.images.values())
    if isinstance(choice, str) and choice == "none":
        return UprightRecord(setting=setting, method=None, up_in_model=None, support=None, cameras=cameras,
                             new_from_old=None)
    if isinstance(choice, str):
        estimate = estimate_up_detailed(reconstruction)
    else:
        rotations = [image.cam_from_world().rotation.matrix() for image in reconstruction.images.values()
                     if image.has_pose]
        support = float(_level(np.asarray(rotations), choice).mean()) if rotations else 0.0
        estimate = UpEstimate(choice, "given", support, cameras)
    transform = align_upright(reconstruction, estimate.vector)
    return UprightRecord(setting=setting, method=estimate.method, up_in_model=estimate.vector.tolist(),
                         support=round(estimate.support, 3), cameras=estimate.cameras,
                         new_from_old=transform.matrix().tolist())


def rotation_between(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The smallest rotation taking unit vector source onto unit vector target (a half turn when opposite)."""
    axis = np.cross(source, target)
    sine, cosine = float(np.linalg.norm(axis)), float(np.dot(source, target))
    if sine < 1e-12:
        if cosine > 0:
            return np.eye(3)
        helper = np.eye(3)[int(np.argmin(np.abs(source)))]  # any axis perpendicular to source
        axis = _unit(np.cross(source, helper))
        return 2 * np.outer(axis, axis) - np.eye(3)
    skew = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + skew + skew @ skew * ((1 - cosine) / sine**2)


def scene_centre(reconstruction: pycolmap.Reconstruction, rotation: np.ndarray | None = None) -> np.ndarray:
    """Median of the 3D points (robust to floaters), else of the camera centres, else the origin; per axis of the
    frame turned by rotation, so that the turned scene's median is exactly at the origin."""
    points = [point.xyz for point in reconstruction.points3D.values()]
    if not points:
        points = [image.projection_center() for image in reconstruction.images.values() if image.has_pose]
    if not points:
        return np.zeros(3)
    turned = np.asarray(points) @ (np.eye(3) if rotation is None else rotation).T
    return np.median(turned, axis=0)


def angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    return math.degrees(math.acos(float(np.clip(np.dot(_unit(a), _unit(b)), -1.0, 1.0))))


def _consensus_axis(axes: np.ndarray) -> tuple[np.ndarray, float]:
    """The mean of the largest set of axes within AGREEMENT_DEG of one of them, and that set's share of all."""
    candidates = axes[np.linspace(0, len(axes) - 1, min(len(axes), MAX_CANDIDATES)).round().astype(int)]
    cosines = candidates @ axes.T
    agree = cosines >= math.cos(math.radians(AGREEMENT_DEG))
    counts = agree.sum(axis=1)
    closeness = np.where(agree, cosines, 0.0).sum(axis=1)
    best = int(np.lexsort((closeness, counts))[-1])  # most agreeing, then the tightest
    axis = _unit(axes[agree[best]].mean(axis=0))
    return axis, _support(axes, axis)


def _unrolled(rights: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Which cameras have their right axis within 30 degrees of level (whatever their pitch): not turned sideways."""
    return np.abs(rights @ up) < math.sin(math.radians(AGREEMENT_DEG))


def _level(cam_from_world: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Which cameras agree with up: not turned sideways, and pitched less than 60 degrees from level (so neither
    upside down nor looking along up)."""
    return _unrolled(cam_from_world[:, 0], up) & (-cam_from_world[:, 1] @ up > MAX_PITCH_COS)


def _perpendicular_to(rights: np.ndarray, up: np.ndarray) -> np.ndarray:
    """The unit direction most perpendicular to the right axes, on up's side; when they are all parallel, up with
    its component along them removed (nerfstudio's "vertical" orientation)."""
    if len(rights) < 2:
        return up
    _, singular, directions = np.linalg.svd(rights)  # directions: 3x3, the last one the most perpendicular
    if singular[1] > DEGENERATE_RMS * math.sqrt(len(rights)):
        vertical = directions[2]
        return vertical if np.dot(vertical, up) > 0 else -vertical
    common_right = directions[0]
    return _unit(up - np.dot(up, common_right) * common_right)


def _support(axes: np.ndarray, direction: np.ndarray) -> float:
    return float(np.mean(axes @ direction >= math.cos(math.radians(AGREEMENT_DEG)))) if len(axes) else 0.0


def _unit(vector: np.ndarray) -> np.ndarray:
    return vector / np.linalg.norm(vector)
