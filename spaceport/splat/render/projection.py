"""EWA projection of 3D Gaussians to pinhole images, as gsplat 1.5.3 does it (``fully_fused_projection``).

Differentiable by autograd for means, quats, scales. Radii and the visibility decision are not
differentiable, exactly as in gsplat. Invisible Gaussians get zeros in every output (gsplat leaves
them undefined); their inputs are replaced by safe values before any division so that no NaN can
leak into the gradients of visible ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

ALPHA_THRESHOLD = 1.0 / 255.0  # a Gaussian contributes to a pixel only where its alpha reaches this
MAX_EXTENT_SIGMAS = 3.33  # radius cap in standard deviations, for fully opaque Gaussians
FOV_CLAMP_MARGIN = 0.3  # gsplat clamps x/z, y/z to the image plus 30% of the half field of view


@dataclass
class Projection:
    """Per (camera, Gaussian) 2D quantities; shapes (C, N, ...)."""

    means2d: Tensor  # (C, N, 2) pixel coordinates (pixel centres at +0.5)
    conics: Tensor  # (C, N, 3) inverse 2D covariance (xx, xy, yy), low-pass included
    depths: Tensor  # (C, N) camera-space z
    radii: Tensor  # (C, N, 2) int32 bounding-box half sizes in pixels; 0 where culled

    @property
    def visible(self) -> Tensor:
        return (self.radii > 0).all(dim=-1)


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """(N, 4) wxyz quaternions, any norm -> (N, 3, 3) rotation matrices."""
    w, x, y, z = torch.nn.functional.normalize(quats, dim=-1).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def _projected_axes(means_cam: Tensor, rotation: Tensor, quats: Tensor, scales: Tensor, Ks: Tensor,
                    width: int, height: int) -> tuple[Tensor, Tensor]:
    """The rows (C, N, 3) of J W R S, so that the 2D covariance J W (R S S R^T) W^T J^T is their Gram matrix.

    J is the pinhole Jacobian at the camera-space mean, with x/z and y/z clamped as gsplat does;
    W the camera rotation; R S the Gaussian's rotation and scales. Written elementwise because J is sparse
    and 3x3 batched products are slow on the CPU.
    """
    x, y, z = means_cam.unbind(-1)
    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    margin_x = FOV_CLAMP_MARGIN * 0.5 * width / fx
    margin_y = FOV_CLAMP_MARGIN * 0.5 * height / fy
    tx = z * torch.clamp(x / z, -(cx / fx + margin_x), (width - cx) / fx + margin_x)
    ty = z * torch.clamp(y / z, -(cy / fy + margin_y), (height - cy) / fy + margin_y)
    axes_cam = torch.einsum("cij,njk->cnik", rotation, quat_to_rotmat(quats) * scales[:, None, :])  # W R S
    row_x, row_y, row_z = axes_cam.unbind(-2)
    # J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]]
    inverse_z = (1.0 / z)[..., None]
    axis_x = (fx[..., None] * inverse_z) * (row_x - (tx[..., None] * inverse_z) * row_z)
    axis_y = (fy[..., None] * inverse_z) * (row_y - (ty[..., None] * inverse_z) * row_z)
    return axis_x, axis_y


def project_gaussians(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    eps2d: float = 0.3,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
) -> Projection:
    """Project N Gaussians into C pinhole cameras (world-to-camera ``viewmats`` (C,4,4), ``Ks`` (C,3,3))."""
    rotation, translation = viewmats[:, :3, :3], viewmats[:, :3, 3]
    means_cam = torch.einsum("cij,nj->cni", rotation, means) + translation[:, None, :]
    depth = means_cam[..., 2]
    in_depth_range = (depth >= near_plane) & (depth <= far_plane)
    safe_means_cam = torch.where(in_depth_range[..., None], means_cam, torch.ones_like(means_cam))

    axis_x, axis_y = _projected_axes(safe_means_cam, rotation, quats, scales, Ks, width, height)
    cov_xx = (axis_x * axis_x).sum(dim=-1) + eps2d
    cov_xy = (axis_x * axis_y).sum(dim=-1)
    cov_yy = (axis_y * axis_y).sum(dim=-1) + eps2d
    determinant = cov_xx * cov_yy - cov_xy * cov_xy

    x, y, z = safe_means_cam.unbind(-1)
    means2d = torch.stack([Ks[:, 0, 0, None] * x / z + Ks[:, 0, 2, None],
                           Ks[:, 1, 1, None] * y / z + Ks[:, 1, 2, None]], dim=-1)

    radii = _screen_radii(means2d.detach(), cov_xx.detach(), cov_yy.detach(), determinant.detach(),
                          opacities.detach(), in_depth_range, width, height)
    visible = (radii > 0).all(dim=-1)
    safe_determinant = torch.where(visible, determinant, torch.ones_like(determinant))
    conics = torch.stack([cov_yy, -cov_xy, cov_xx], dim=-1) / safe_determinant[..., None]
    zero = torch.zeros((), dtype=means.dtype, device=means.device)
    return Projection(
        means2d=torch.where(visible[..., None], means2d, zero),
        conics=torch.where(visible[..., None], conics, zero),
        depths=torch.where(visible, depth, zero),
        radii=radii,
    )


@torch.no_grad()
def _screen_radii(means2d: Tensor, cov_xx: Tensor, cov_yy: Tensor, determinant: Tensor, opacities: Tensor,
                  in_depth_range: Tensor, width: int, height: int) -> Tensor:
    """(C, N, 2) int32 half sizes of the box outside which alpha < 1/255; 0 for culled Gaussians."""
    opacity = opacities.expand_as(cov_xx)
    # Opacity-aware extent (Radl et al. 2024, "StopThePop", B.2): alpha = o*exp(-d^2/2) < 1/255 beyond it.
    extent = torch.sqrt(2.0 * torch.log(torch.clamp_min(opacity / ALPHA_THRESHOLD, 1.0)))
    extent = torch.clamp_max(extent, MAX_EXTENT_SIGMAS)
    radius_x = torch.ceil(extent * torch.sqrt(torch.clamp_min(cov_xx, 0.0)))
    radius_y = torch.ceil(extent * torch.sqrt(torch.clamp_min(cov_yy, 0.0)))
    mean_x, mean_y = means2d.unbind(-1)
    on_image = ((mean_x + radius_x > 0) & (mean_x - radius_x < width)
                & (mean_y + radius_y > 0) & (mean_y - radius_y < height))
    visible = (in_depth_range & (determinant > 0) & (opacity >= ALPHA_THRESHOLD)
               & ((radius_x > 0) | (radius_y > 0)) & on_image)
    radii = torch.stack([radius_x, radius_y], dim=-1) * visible[..., None]
    return torch.nan_to_num(radii, nan=0.0).to(torch.int32)


def camera_centers(viewmats: Tensor) -> Tensor:
    """(C, 3) world positions of the cameras of world-to-camera ``viewmats``."""
    return torch.linalg.inv(viewmats)[:, :3, 3]

