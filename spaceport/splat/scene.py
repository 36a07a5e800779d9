"""Training views and initial points from an undistorted COLMAP model (read through pycolmap)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pycolmap
import torch
import torch.nn.functional as F
from PIL import Image

from spaceport.splat.render.projection import camera_centers
from spaceport.workspace import SpaceportError

MODEL_FILES = ("cameras.bin", "images.bin", "points3D.bin")
EXTENT_QUANTILE = 0.9  # of the cameras' and the points' distances: a few far ones do not set the scale
SHELL_RADIUS_FACTOR = 3.0  # the background shell's radius, in units of the cameras' / points' reach


@dataclass
class View:
    """One photo with its pinhole intrinsics and world-to-camera pose."""

    name: str
    image: torch.Tensor  # (H, W, 3) uint8
    K: torch.Tensor  # (3, 3) float32, for the (possibly downscaled) image
    viewmat: torch.Tensor  # (4, 4) float32, world to camera (OpenCV axes: x right, y down, z forward)
    mask: torch.Tensor | None = None  # (H, W) bool, False = ignore (a person, a car): no loss there

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    def to(self, device: torch.device | str) -> View:
        mask = None if self.mask is None else self.mask.to(device)
        return View(self.name, self.image.to(device), self.K.to(device), self.viewmat.to(device), mask)

    def downscaled(self, factor: int) -> View:
        """The view at 1/factor of its size (rounded), on its device: antialiased bilinear resampling, whose
        pixel grid maps exactly onto the original's, so K scales by the size ratio like ``_load_view``'s."""
        width, height = max(1, round(self.width / factor)), max(1, round(self.height / factor))
        pixels = self.image.permute(2, 0, 1)[None].float()
        resized = F.interpolate(pixels, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
        image = resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).contiguous()
        scale = torch.tensor([width / self.width, height / self.height, 1.0], device=self.K.device)
        mask = None
        if self.mask is not None:  # a pixel is kept only where every pixel it averages was kept
            kept = F.interpolate(self.mask[None, None].float(), size=(height, width), mode="area")
            mask = kept[0, 0] > 0.999
        return View(self.name, image, self.K * scale[:, None], self.viewmat, mask)


@dataclass
class Scene:
    train_views: list[View]
    test_views: list[View]
    points: np.ndarray  # (P, 3) float32 sparse SfM points
    colors: np.ndarray  # (P, 3) float32 in [0, 1]
    extent: float  # the scale of the position learning rate: see scene_extent

    def to(self, device: torch.device | str) -> Scene:
        return Scene([v.to(device) for v in self.train_views], [v.to(device) for v in self.test_views],
                     self.points, self.colors, self.extent)


def check_model_dir(model_dir: Path, images_dir: Path) -> None:
    """Raise SpaceportError naming what is missing from an undistorted COLMAP workspace."""
    missing = [name for name in MODEL_FILES if not (model_dir / name).is_file()]
    if missing:
        raise SpaceportError(
            f"{model_dir}: missing {', '.join(missing)}; run the sfm stage first "
            "(or upload a COLMAP model with undistorted PINHOLE cameras)"
        )
    if not images_dir.is_dir():
        raise SpaceportError(f"{images_dir}: no such folder; the sfm stage writes the undistorted images here")


def load_scene(
    model_dir: str | Path,
    images_dir: str | Path,
    *,
    max_width: int | None = None,
    holdout_every: int = 8,
    max_points: int | None = None,
    seed: int = 0,
) -> Scene:
    """Load the registered images of a PINHOLE COLMAP model, downscaled to at most ``max_width`` px.

    Images are sorted by name; every ``holdout_every``-th one (index 0, N, 2N, ...) becomes a test view.
    """
    model_dir, images_dir = Path(model_dir), Path(images_dir)
    check_model_dir(model_dir, images_dir)
    reconstruction = pycolmap.Reconstruction(str(model_dir))
    images = sorted((im for im in reconstruction.images.values() if im.has_pose), key=lambda im: im.name)
    if not images:
        raise SpaceportError(f"{model_dir}: the COLMAP model has no registered images; re-run sfm")
    views = [_load_view(image, images_dir, max_width) for image in images]
    is_test = [holdout_every > 0 and i % holdout_every == 0 for i in range(len(views))]
    train = [v for v, test in zip(views, is_test, strict=True) if not test]
    test = [v for v, t in zip(views, is_test, strict=True) if t]
    if not train:
        raise SpaceportError(f"{model_dir}: only {len(views)} registered image(s), none left for training")
    points, colors = _sparse_points(reconstruction, max_points, seed)
    if len(points) == 0:
        raise SpaceportError(f"{model_dir}: points3D.bin holds no points; re-run sfm")
    return Scene(train, test, points, colors, scene_extent([v.viewmat for v in views], points))


def _load_view(image: pycolmap.Image, images_dir: Path, max_width: int | None) -> View:
    camera = image.camera
    if camera.model_name != "PINHOLE":
        raise SpaceportError(
            f"image {image.name}: camera model {camera.model_name}, expected PINHOLE; "
            "train on the undistorted model (sfm/undistorted/sparse)"
        )
    path = images_dir / image.name
    if not path.is_file():
        raise SpaceportError(f"{path}: image of the COLMAP model is missing; re-run sfm's undistortion")
    with Image.open(path) as photo:
        photo = photo.convert("RGB")
        if photo.size != (camera.width, camera.height):
            raise SpaceportError(
                f"{path}: is {photo.size[0]}x{photo.size[1]} px but its camera says "
                f"{camera.width}x{camera.height}; the images do not belong to this model"
            )
        width, height = _target_size(camera.width, camera.height, max_width)
        if (width, height) != photo.size:
            photo = photo.resize((width, height), Image.Resampling.LANCZOS)
        pixels = torch.from_numpy(np.asarray(photo).copy())
    mask = _load_mask(images_dir.parent / "masks" / f"{image.name}.png", (width, height))
    fx, fy, cx, cy = camera.params
    sx, sy = width / camera.width, height / camera.height
    K = torch.tensor([[fx * sx, 0, cx * sx], [0, fy * sy, cy * sy], [0, 0, 1]], dtype=torch.float32)
    viewmat = torch.eye(4, dtype=torch.float32)
    viewmat[:3] = torch.from_numpy(image.cam_from_world().matrix()).float()
    return View(image.name, pixels, K, viewmat, mask)


def _load_mask(path: Path, size: tuple[int, int]) -> torch.Tensor | None:
    """The undistorted mask of a photo (sfm writes ``undistorted/masks/<image file>.png``, 0 = ignore), at ``size``
    (nearest, so it stays binary); None when the photo has none."""
    if not path.is_file():
        return None
    with Image.open(path) as mask:
        mask = mask.convert("L")
        if mask.size != size:
            mask = mask.resize(size, Image.Resampling.NEAREST)
        return torch.from_numpy(np.asarray(mask) > 127)


def _target_size(width: int, height: int, max_width: int | None) -> tuple[int, int]:
    if max_width is None or width <= max_width:
        return width, height
    return max_width, max(1, round(height * max_width / width))


def _sparse_points(reconstruction: pycolmap.Reconstruction, max_points: int | None, seed: int):
    points3d = list(reconstruction.points3D.values())
    xyz = np.array([p.xyz for p in points3d], np.float32).reshape(-1, 3)
    rgb = np.array([p.color for p in points3d], np.float32).reshape(-1, 3) / 255.0
    if max_points is not None and len(xyz) > max_points:
        keep = np.random.default_rng(seed).choice(len(xyz), max_points, replace=False)
        xyz, rgb = xyz[keep], rgb[keep]
    return xyz, rgb


def scene_extent(viewmats: list[torch.Tensor], points: np.ndarray) -> float:
    """The size of what is reconstructed, which scales the position learning rate: the cameras' spread
    (``camera_extent``), or the sparse points' (``points_extent``) where those are more compact. Cameras that
    stand far from a compact subject (internet photos of a landmark: 6.4 against 1.1 on liberty) would
    otherwise move its Gaussians in steps far too coarse for it; measured on liberty (GPU, 1M Gaussians, NeRF-W
    held-out): 15.8 dB at 6.4, 17.7 at 2.0. A scene that surrounds its cameras keeps the cameras' spread."""
    return min(camera_extent(viewmats), points_extent(points))


def points_extent(points: np.ndarray, quantile: float = EXTENT_QUANTILE) -> float:
    """1.1 x the ``quantile`` of the sparse points' distances from their median (inf without points)."""
    if len(points) == 0:
        return math.inf
    distances = np.linalg.norm(points - np.median(points, axis=0), axis=1)
    return max(float(np.quantile(distances, quantile)) * 1.1, 1e-6)


def camera_extent(viewmats: list[torch.Tensor], quantile: float = EXTENT_QUANTILE) -> float:
    """1.1 x the radius of the camera centres around their median centre (at least a small positive number).

    INRIA's normalisation takes the farthest camera; here the radius is the ``quantile`` of the distances, so a
    few photos taken from far away (common in internet collections: 9.3 against a median of 3.7 in liberty) do
    not scale up the position learning rate of the whole scene. On an orbit the two barely differ.
    """
    centres = camera_centers(torch.stack(viewmats).double())
    distances = (centres - centres.median(dim=0).values).norm(dim=1)
    radius = torch.quantile(distances, quantile).item()
    return max(radius * 1.1, 1e-6)


def background_shell(points: np.ndarray, views: list[View], count: int,
                     radius_factor: float = SHELL_RADIUS_FACTOR) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points on a sphere around the scene and their colours, for what lies beyond the sparse points
    (sky, far trees). SfM finds no points there, so without them the splat paints the sky with Gaussians close to
    the subject, which hang in front of it in other views. Centre: the sparse points' median; radius:
    ``radius_factor`` times the farther of the cameras' and the points' 0.9-quantile distance from it, so the
    shell encloses the cameras. Directions: a Fibonacci lattice (even and deterministic). Colour: the mean of the
    training photos' pixels where a point lands, grey where no photo sees it. Returns float32 (count, 3) arrays."""
    if count == 0:
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)
    centre = np.median(points, axis=0) if len(points) else np.zeros(3)
    camera_centres = camera_centers(torch.stack([view.viewmat.cpu() for view in views]).double()).numpy()
    reach = max(np.quantile(np.linalg.norm(camera_centres - centre, axis=1), EXTENT_QUANTILE),
                np.quantile(np.linalg.norm(points - centre, axis=1), EXTENT_QUANTILE) if len(points) else 0.0)
    shell = centre + radius_factor * max(float(reach), 1e-6) * fibonacci_sphere(count)
    return shell.astype(np.float32), mean_pixel_colours(shell, views).astype(np.float32)


def fibonacci_sphere(count: int) -> np.ndarray:
    """``count`` unit vectors spread evenly over the sphere."""
    index = np.arange(count) + 0.5
    z = 1.0 - 2.0 * index / count
    azimuth = math.pi * (1.0 + 5.0 ** 0.5) * index
    ring = np.sqrt(1.0 - z * z)
    return np.stack([ring * np.cos(azimuth), ring * np.sin(azimuth), z], axis=1)


def mean_pixel_colours(world_points: np.ndarray, views: list[View]) -> np.ndarray:
    """The mean colour in [0, 1] of the pixels each point projects to, over the views that see it (0.5 grey
    where none does)."""
    total = np.zeros((len(world_points), 3))
    seen = np.zeros(len(world_points))
    homogeneous = np.concatenate([world_points, np.ones((len(world_points), 1))], axis=1)
    for view in views:
        camera = homogeneous @ view.viewmat.double().cpu().numpy().T
        depth = camera[:, 2]
        in_front = depth > 1e-9
        pixels = camera[:, :3] @ view.K.double().cpu().numpy().T
        u = np.floor(pixels[:, 0] / np.where(in_front, depth, 1.0)).astype(np.int64)
        v = np.floor(pixels[:, 1] / np.where(in_front, depth, 1.0)).astype(np.int64)
        inside = in_front & (u >= 0) & (u < view.width) & (v >= 0) & (v < view.height)
        image = view.image.cpu().numpy()
        total[inside] += image[v[inside], u[inside]] / 255.0
        seen[inside] += 1
    colours = np.full((len(world_points), 3), 0.5)
    colours[seen > 0] = total[seen > 0] / seen[seen > 0, None]
    return colours
