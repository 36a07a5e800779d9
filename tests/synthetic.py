"""A known Gaussian scene rendered from known cameras and written as images + a COLMAP model, so tests can
train on data whose answer is known (the layout the sfm stage leaves in ``sfm/undistorted``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
import torch
from PIL import Image

from spaceport.formats.gaussians import Gaussians
from spaceport.splat.model import SH_C0, render_gaussians


@dataclass
class SyntheticScene:
    gaussians: Gaussians  # the ground truth that rendered the images
    model_dir: Path
    images_dir: Path


def look_at_viewmat(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """World-to-camera 4x4 for a camera at ``eye`` looking at ``target`` (OpenCV: y down, z forward)."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    rotation = np.stack([right, down, forward])  # rows: camera axes in world coordinates
    viewmat = np.eye(4)
    viewmat[:3, :3] = rotation
    viewmat[:3, 3] = -rotation @ eye
    return viewmat


def write_synthetic_scene(
    root: str | Path,
    gaussians: Gaussians,
    *,
    num_views: int = 12,
    width: int = 64,
    height: int = 48,
    radius: float = 4.0,
    num_points: int = 300,
    seed: int = 0,
) -> SyntheticScene:
    """Render ``gaussians`` (torch backend) from cameras on a ring around the origin and write them.

    Writes ``root/images/view_NNN.png`` and a PINHOLE COLMAP model in ``root/sparse`` (through pycolmap)
    whose points are noisy samples of the Gaussians' centres coloured by their DC colour, the layout
    the sfm stage leaves in ``sfm/undistorted``.
    """
    root = Path(root)
    images_dir, model_dir = root / "images", root / "sparse"
    images_dir.mkdir(parents=True, exist_ok=True)
    model_dir.mkdir(parents=True, exist_ok=True)
    focal = 0.9 * width
    K = np.array([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]])
    reconstruction = pycolmap.Reconstruction()
    camera = pycolmap.Camera.create_from_model_id(1, pycolmap.CameraModelId.PINHOLE, focal, width, height)
    reconstruction.add_camera_with_trivial_rig(camera)
    rng = np.random.default_rng(seed)
    for index in range(num_views):
        angle = 2 * np.pi * index / num_views
        eye = np.array([radius * np.cos(angle), radius * np.sin(angle), 0.8 * np.sin(3 * angle)])
        viewmat = look_at_viewmat(eye, np.zeros(3), np.array([0.0, 0.0, 1.0]))
        colors, _, _ = render_gaussians(gaussians, torch.from_numpy(viewmat).float()[None],
                                        torch.from_numpy(K).float()[None], width, height, backend="torch")
        pixels = (colors[0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        name = f"view_{index:03d}.png"
        Image.fromarray(pixels).save(images_dir / name)
        image = pycolmap.Image(name=name, camera_id=1, image_id=index + 1)
        reconstruction.add_image_with_trivial_frame(image, pycolmap.Rigid3d(viewmat[:3]))
    picks = rng.choice(len(gaussians), min(num_points, len(gaussians)), replace=False)
    for i in picks:
        xyz = gaussians.means[i] + rng.normal(0, 0.02, 3)
        rgb = np.clip(gaussians.sh0[i] * SH_C0 + 0.5, 0, 1)
        reconstruction.add_point3D(xyz.astype(np.float64), pycolmap.Track(), (rgb * 255).astype(np.uint8))
    reconstruction.write(str(model_dir))
    return SyntheticScene(gaussians, model_dir, images_dir)

