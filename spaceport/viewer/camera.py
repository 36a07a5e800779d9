"""The viewer's first view: a training camera of the workspace's COLMAP model, in the viewer's frame.

COLMAP cameras look down +Z with +Y down (OpenCV axes); PlayCanvas cameras look down -Z with +Y up, and
its orbit controls turn about the world's +Y. So the viewer turns the whole splat by ``scene_rotation``
into a frame whose +Y is "up" (the mean up direction of all photos, tilted only as far as needed for the
first camera to have no roll), and places the camera there with a look-at, which then reproduces the
photo's view exactly. A splat without cameras is turned 180 degrees about X (COLMAP's y down becomes up)
and framed from the front.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycolmap
from pydantic import BaseModel, Field
from scipy.spatial.transform import Rotation

from spaceport.errors import SpaceportError
from spaceport.workspace import Workspace


class ViewerCamera(BaseModel):
    """A view for the viewer (JSON as the web viewer reads it)."""

    name: str | None = Field(None, description="the photo this view is taken from")
    position: list[float] = Field(..., min_length=3, max_length=3, description="camera centre, viewer frame")
    target: list[float] = Field(..., min_length=3, max_length=3, description="point looked at, viewer frame")
    fov: float = Field(..., gt=0, lt=180, description="vertical field of view in degrees")
    width: int = Field(..., gt=0, description="the photo's width in px (its aspect ratio)")
    height: int = Field(..., gt=0, description="the photo's height in px")
    scene_rotation: list[float] = Field(..., min_length=4, max_length=4,
                                        description="quaternion x, y, z, w: splat (COLMAP) frame to viewer frame")


def model_dir_of(ws: Workspace) -> Path | None:
    """The workspace's COLMAP model: the undistorted one training used, else sfm/sparse/0."""
    for folder in (ws.undistorted_dir / "sparse", ws.sparse_dir):
        if (folder / "images.bin").is_file() or (folder / "images.txt").is_file():
            return folder
    return None


def held_out_names(ws: Workspace) -> set[str]:
    """Names of the photos training held out (from train/eval.json), which are not training cameras."""
    eval_path = ws.train_dir / "eval.json"
    if not eval_path.is_file():
        return set()
    result = json.loads(eval_path.read_text())
    if not result.get("held_out"):
        return set()
    return {view["name"] for view in result.get("views", [])}


def camera_from_workspace(ws: Workspace | Path) -> ViewerCamera | None:
    """The first training camera (by photo name) of the workspace, or None when it has no COLMAP model."""
    ws = ws if isinstance(ws, Workspace) else Workspace(ws)
    model_dir = model_dir_of(ws)
    if model_dir is None:
        return None
    try:
        reconstruction = pycolmap.Reconstruction(str(model_dir))
    except Exception as exc:  # pycolmap raises RuntimeError/ValueError subclasses for broken models
        raise SpaceportError(f"{model_dir}: not a readable COLMAP model ({exc}); re-run the sfm stage") from exc
    images = sorted((im for im in reconstruction.images.values() if im.has_pose), key=lambda im: im.name)
    if not images:
        return None
    held_out = held_out_names(ws)
    first = next((im for im in images if im.name not in held_out), images[0])
    return viewer_camera(reconstruction, first, images)


def viewer_camera(reconstruction: pycolmap.Reconstruction, image: pycolmap.Image,
                  all_images: list[pycolmap.Image]) -> ViewerCamera:
    """``image``'s camera in the viewer frame whose up is set by the cameras of ``all_images``."""
    cam_from_world = image.cam_from_world().matrix()
    rotation, translation = cam_from_world[:, :3], cam_from_world[:, 3]
    centre = -rotation.T @ translation
    forward = rotation[2]
    up = viewer_up([im.cam_from_world().matrix()[:, :3] for im in all_images], rotation)
    to_viewer = viewer_frame(up, forward)
    distance = look_distance(reconstruction, image, rotation, translation)
    camera = image.camera
    fy = float(camera.calibration_matrix()[1, 1])
    return ViewerCamera(
        name=image.name,
        position=(to_viewer @ centre).tolist(),
        target=(to_viewer @ (centre + distance * forward)).tolist(),
        fov=float(np.degrees(2 * np.arctan(camera.height / (2 * fy)))),
        width=int(camera.width),
        height=int(camera.height),
        scene_rotation=Rotation.from_matrix(to_viewer).as_quat().tolist(),  # scalar last: x, y, z, w
    )


def viewer_up(rotations: list[np.ndarray], first: np.ndarray) -> np.ndarray:
    """World "up": the mean of the cameras' up axes (-y), with the first camera's right axis removed so
    that camera has no roll (the orbit controls cannot show roll)."""
    mean_up = -np.mean([r[1] for r in rotations], axis=0)
    right = first[0]
    up = mean_up - np.dot(mean_up, right) * right
    if np.linalg.norm(up) < 1e-6:  # cameras in every orientation: fall back to the first camera's up
        return -first[1]
    return up / np.linalg.norm(up)


def viewer_frame(up: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Rotation from COLMAP world to the viewer frame: ``up`` -> +Y, ``forward`` (levelled) -> -Z."""
    level = forward - np.dot(forward, up) * up
    if np.linalg.norm(level) < 1e-6:  # looking straight up or down: any horizontal direction will do
        level = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    level = level / np.linalg.norm(level)
    z_axis = -level
    x_axis = np.cross(up, z_axis)
    return np.stack([x_axis, up, z_axis])  # rows: the viewer's axes in COLMAP world coordinates


def look_distance(reconstruction: pycolmap.Reconstruction, image: pycolmap.Image,
                  rotation: np.ndarray, translation: np.ndarray) -> float:
    """Median depth of the points the photo sees (else of all points in front of it): what it looks at."""
    seen = [p.point3D_id for p in image.points2D if p.has_point3D()]
    points = [reconstruction.points3D[i].xyz for i in seen if i in reconstruction.points3D]
    if not points:
        points = [p.xyz for p in reconstruction.points3D.values()]
    if points:
        depths = (np.asarray(points) @ rotation.T + translation)[:, 2]
        depths = depths[depths > 0]
        if len(depths):
            return float(np.median(depths))
    return 1.0


# a splat without cameras: COLMAP-made, so y is down and the photos looked along +Z; turned 180 degrees
# about X, it stands upright and a camera on +Z looking down -Z sees it from where the photos were taken
FLIP_X = [1.0, 0.0, 0.0, 0.0]
FRAMING_FOV = 50.0


def framing_camera(means: np.ndarray, fov: float = FRAMING_FOV) -> ViewerCamera:
    """A view of the bulk of a splat (its median centre, 90 % of the splats in frame; floaters far away
    are left out), for files without a COLMAP model."""
    points = Rotation.from_quat(FLIP_X).apply(np.asarray(means, np.float64))
    centre = np.median(points, axis=0)
    radius = float(np.percentile(np.linalg.norm(points - centre, axis=1), 90)) if len(points) else 1.0
    distance = max(radius, 1e-6) / np.tan(np.radians(fov) / 2)
    return ViewerCamera(name=None, position=(centre + [0.0, 0.0, distance]).tolist(), target=centre.tolist(),
                        fov=fov, width=1280, height=720, scene_rotation=FLIP_X)
