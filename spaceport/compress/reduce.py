"""Fewer, cheaper Gaussians before encoding: pruning by contribution to the training views, and per-Gaussian
dropping of SH bands whose view-dependent colour is negligible.

Pruning (after LightGaussian's global significance, without the occlusion term): a Gaussian's contribution to
one camera is its opacity times the area of its projected footprint, ``opacity * 2 pi sqrt(det Sigma_2D)``
in pixels (the integral of its alpha over the image plane, capped at the image's area), zero when its centre
is behind the camera or its footprint misses the image. The cameras are taken at the resolution the splat was
trained at, so the figure reads "pixels of full opacity in the photos it was fitted to". A Gaussian whose
largest contribution over the training cameras stays below ``threshold`` pixels is removed. The projection is
the renderer's (EWA: the Jacobian of the pinhole at the centre, plus the 0.3 px low-pass every renderer adds).

SH bands: by the addition theorem, band l of one colour channel changes the colour by at most
``sqrt((2l + 1) / (4 pi)) * |c_l|`` over all view directions (``c_l`` the band's 2l + 1 coefficients). A
Gaussian's bands are zeroed from the highest down while the sum of those bounds, over the dropped bands, times
its opacity stays below the threshold (colour units, 1/255 per 8-bit step) in every channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from spaceport.formats.gaussians import Gaussians

EPS2D = 0.3  # the low-pass the renderers add to every projected covariance (pixels^2)
NEAR_PLANE = 0.01
BAND_SLICES = {1: slice(0, 3), 2: slice(3, 8), 3: slice(8, 15)}  # coefficients of band l in shN


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: world-to-camera (OpenCV axes) and intrinsics at ``width`` x ``height``."""

    name: str
    viewmat: np.ndarray  # (4, 4)
    K: np.ndarray  # (3, 3)
    width: int
    height: int


def cameras_from_colmap(model_dir: Path, exclude: set[str] = frozenset(), max_width: int | None = None) -> list[Camera]:
    """The registered cameras of a COLMAP model (PINHOLE or SIMPLE_PINHOLE, as the undistorted one is),
    minus the images named in ``exclude`` (the views held out for evaluation), at most ``max_width`` pixels
    wide (the training resolution: pruning counts pixels the splat was fitted at)."""
    import pycolmap

    reconstruction = pycolmap.Reconstruction(str(model_dir))
    cameras = []
    for image in sorted(reconstruction.images.values(), key=lambda im: im.name):
        if not image.has_pose or image.name in exclude:
            continue
        camera = image.camera
        width, height = int(camera.width), int(camera.height)
        K = np.asarray(camera.calibration_matrix(), np.float64)
        if max_width is not None and width > max_width:  # as the trainer downscales its views
            new_height = max(1, round(height * max_width / width))
            K = np.diag([max_width / width, new_height / height, 1.0]) @ K
            width, height = max_width, new_height
        viewmat = np.eye(4)
        viewmat[:3] = np.asarray(image.cam_from_world().matrix())
        cameras.append(Camera(image.name, viewmat, K, width, height))
    return cameras


def _rotation_matrices(quats: Tensor) -> Tensor:
    w, x, y, z = torch.nn.functional.normalize(quats, dim=1).unbind(1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], 1).view(-1, 3, 3)


def contributions(g: Gaussians, cameras: list[Camera], device: torch.device | str = "cpu",
                  block: int = 1 << 20) -> np.ndarray:
    """Largest contribution of each Gaussian over ``cameras`` (pixels of full opacity at the cameras'
    resolution; see the module docstring). Float64 on ``device``, in blocks of ``block`` Gaussians."""
    best = np.zeros(len(g))
    for start in range(0, len(g), block):
        part = slice(start, start + block)
        means = torch.as_tensor(g.means[part], dtype=torch.float64, device=device)
        rotations = _rotation_matrices(torch.as_tensor(g.quats[part], dtype=torch.float64, device=device))
        scales = torch.exp(torch.as_tensor(g.scales[part], dtype=torch.float64, device=device))
        covariance = rotations @ torch.diag_embed(scales**2) @ rotations.transpose(1, 2)
        opacity = torch.sigmoid(torch.as_tensor(g.opacities[part], dtype=torch.float64, device=device))
        top = torch.zeros(len(means), dtype=torch.float64, device=device)
        for camera in cameras:
            top = torch.maximum(top, _camera_contribution(means, covariance, opacity, camera))
        best[part] = top.cpu().numpy()
    return best


def _camera_contribution(means: Tensor, covariance: Tensor, opacity: Tensor, camera: Camera) -> Tensor:
    viewmat = torch.as_tensor(camera.viewmat, dtype=means.dtype, device=means.device)
    rotation, translation = viewmat[:3, :3], viewmat[:3, 3]
    points = means @ rotation.T + translation
    x, y, z = points.unbind(1)
    in_front = z > NEAR_PLANE
    z = torch.where(in_front, z, torch.ones_like(z))
    fx, fy, cx, cy = camera.K[0, 0], camera.K[1, 1], camera.K[0, 2], camera.K[1, 2]
    # the renderers clamp the Jacobian's x/z, y/z to the image plus 30% of the half field of view
    margin_x, margin_y = 0.3 * 0.5 * camera.width / fx, 0.3 * 0.5 * camera.height / fy
    tx = (x / z).clamp(-(cx / fx + margin_x), (camera.width - cx) / fx + margin_x) * z
    ty = (y / z).clamp(-(cy / fy + margin_y), (camera.height - cy) / fy + margin_y) * z
    zeros = torch.zeros_like(z)
    jacobian = torch.stack([fx / z, zeros, -fx * tx / z**2, zeros, fy / z, -fy * ty / z**2], 1).view(-1, 2, 3)
    transform = jacobian @ rotation
    cov2d = transform @ covariance @ transform.transpose(1, 2)
    a, b, c = cov2d[:, 0, 0] + EPS2D, cov2d[:, 0, 1], cov2d[:, 1, 1] + EPS2D
    determinant = (a * c - b * b).clamp_min(1e-12)
    area = camera.width * camera.height
    footprint = (2 * math.pi * determinant.sqrt()).clamp_max(area)
    # does the 3-sigma ellipse reach the image?
    radius = 3 * (0.5 * (a + c) + ((0.5 * (a - c)) ** 2 + b * b).sqrt()).sqrt()
    u, v = fx * x / z + cx, fy * y / z + cy
    on_image = (u > -radius) & (u < camera.width + radius) & (v > -radius) & (v < camera.height + radius)
    drawn = in_front & on_image & (opacity >= 1 / 255)  # the renderers skip Gaussians fainter than 1/255
    return torch.where(drawn, opacity * footprint, torch.zeros_like(footprint))


def band_bounds(shN: np.ndarray) -> np.ndarray:
    """(N, bands, 3) largest colour change each SH band can make in each channel, over all directions."""
    bands = {3: 1, 8: 2, 15: 3}.get(shN.shape[1], 0)
    bounds = np.zeros((len(shN), bands, 3))
    for band in range(1, bands + 1):
        norms = np.sqrt((shN[:, BAND_SLICES[band]].astype(np.float64) ** 2).sum(1))
        bounds[:, band - 1] = math.sqrt((2 * band + 1) / (4 * math.pi)) * norms
    return bounds


def bands_to_keep(g: Gaussians, threshold: float) -> np.ndarray:
    """(N,) how many SH bands each Gaussian needs: the highest bands whose summed bound (times opacity)
    stays below ``threshold`` in every channel are dropped."""
    bounds = band_bounds(g.shN)
    bands = bounds.shape[1]
    keep = np.full(len(g), bands)
    if bands == 0:
        return keep
    opacity = 1 / (1 + np.exp(-g.opacities.astype(np.float64)))
    # dropped[:, j]: bound of dropping bands j+1..bands; cumulative from the top
    dropped = np.flip(np.cumsum(np.flip(bounds, 1), 1), 1).max(2) * opacity[:, None]
    for band in range(bands, 0, -1):
        keep = np.where((keep == band) & (dropped[:, band - 1] < threshold), band - 1, keep)
    return keep


def drop_bands(g: Gaussians, keep: np.ndarray) -> Gaussians:
    """A copy of ``g`` with each Gaussian's SH bands above ``keep`` zeroed."""
    shN = g.shN.copy()
    for band, columns in BAND_SLICES.items():
        if columns.stop <= shN.shape[1]:
            shN[keep < band, columns] = 0
    return Gaussians(g.means, g.scales, g.quats, g.opacities, g.sh0, shN)


@dataclass
class Reduction:
    splat: Gaussians
    num_input: int
    num_pruned: int
    sh_bands_histogram: list[int]  # Gaussians keeping 0, 1, ... bands


def reduce_splat(g: Gaussians, cameras: list[Camera] | None, prune_threshold: float, sh_threshold: float,
                 device: torch.device | str = "cpu") -> Reduction:
    """Prune (when cameras are given and the threshold is positive), then drop SH bands (when positive)."""
    count = len(g)
    if cameras and prune_threshold > 0:
        kept = contributions(g, cameras, device) >= prune_threshold
        if not kept.any():  # never hand an empty splat on: keep the most significant one
            kept[np.argmax(contributions(g, cameras, device))] = True
        g = g.subset(np.nonzero(kept)[0])
    keep = np.full(len(g), g.sh_degree)
    if sh_threshold > 0 and g.sh_degree > 0:
        keep = bands_to_keep(g, sh_threshold)
        g = drop_bands(g, keep)
    histogram = np.bincount(keep, minlength=g.sh_degree + 1).tolist()
    return Reduction(g, count, count - len(g), histogram)
