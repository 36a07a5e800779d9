"""One render signature, two backends: gsplat's CUDA kernels, and our pure-PyTorch twin for the CPU.

Both follow ``gsplat.rasterization`` 1.5.3 with packed=False, rasterize_mode="classic", render_mode="RGB",
camera_model="pinhole". ``info`` carries what gsplat's DefaultStrategy and MCMCStrategy read
(``means2d`` with pixel-unit gradients and, with ``absgrad=True``, ``means2d.absgrad``; ``radii`` (C, N, 2)
int32; ``width``; ``height``; ``n_cameras``; ``gaussian_ids`` None) plus ``depths``, ``conics``, ``opacities``.
The torch backend's ``tile_size`` is chosen per frame and its ``tiles_per_gauss`` counts only the tiles a
Gaussian's alpha >= 1/255 ellipse reaches (gsplat counts its whole pixel box); neither changes the image.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from spaceport.splat.render.gsplat_cuda import render_gsplat
from spaceport.splat.render.torch_cpu import render_torch
from spaceport.workspace import SpaceportError

Backend = Literal["auto", "gsplat", "torch"]

__all__ = ["Backend", "render", "resolve_backend"]


def resolve_backend(backend: Backend | str, device: torch.device | str) -> Literal["gsplat", "torch"]:
    """The backend that renders tensors on ``device``: "auto" picks gsplat for CUDA, torch otherwise."""
    device = torch.device(device)
    if backend == "auto":
        return "gsplat" if device.type == "cuda" else "torch"
    if backend == "gsplat":
        if device.type != "cuda":
            raise SpaceportError(
                f"render backend 'gsplat' needs CUDA tensors, got device '{device}'; "
                "use backend 'torch' (or 'auto') on the CPU"
            )
        return "gsplat"
    if backend == "torch":
        return "torch"
    raise SpaceportError(f"unknown render backend '{backend}'; choose 'auto', 'gsplat' or 'torch'")


def render(
    means: Tensor,
    quats: Tensor,
    scales: Tensor,
    opacities: Tensor,
    colors: Tensor,
    viewmats: Tensor,
    Ks: Tensor,
    width: int,
    height: int,
    *,
    sh_degree: int | None = None,
    backgrounds: Tensor | None = None,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    eps2d: float = 0.3,
    absgrad: bool = False,
    backend: Backend = "auto",
    packed: bool = False,
) -> tuple[Tensor, Tensor, dict]:
    """Render N Gaussians into C pinhole cameras.

    Args:
        means: (N, 3) centres. quats: (N, 4) rotations, wxyz, any norm.
        scales: (N, 3) activated scales (exp of the log-scales). opacities: (N,) activated (sigmoid).
        colors: (N, K, 3) SH coefficients when ``sh_degree`` is set (the first (sh_degree+1)**2 are used),
            else (N, D) colours.
        viewmats: (C, 4, 4) world-to-camera. Ks: (C, 3, 3) intrinsics. width, height: image size.
        backgrounds: (C, D) colour behind the Gaussians, or None for black.
        near_plane, far_plane: camera-space z range kept. eps2d: low-pass added to the 2D covariance.
        absgrad: also accumulate ``info["means2d"].absgrad`` during backward.
        backend: "auto" (gsplat for CUDA tensors, torch otherwise), "gsplat" or "torch".
        packed: gsplat's packed mode (``info`` then holds one row per visible (camera, Gaussian) pair and their
            ``gaussian_ids``); gsplat only.

    Returns:
        colors (C, H, W, D), alphas (C, H, W, 1), info (see the module docstring).
    """
    _check_shapes(means, quats, scales, opacities, colors, viewmats, Ks, sh_degree, backgrounds)
    options = dict(sh_degree=sh_degree, backgrounds=backgrounds, near_plane=near_plane, far_plane=far_plane,
                   eps2d=eps2d, absgrad=absgrad)
    if resolve_backend(backend, means.device) == "gsplat":
        return render_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height, packed=packed,
                             **options)
    if packed:
        raise ValueError("render: packed mode is gsplat's; the torch backend renders non-packed only")
    return render_torch(means, quats, scales, opacities, colors, viewmats, Ks, width, height, **options)


def _check_shapes(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                  viewmats: Tensor, Ks: Tensor, sh_degree: int | None, backgrounds: Tensor | None) -> None:
    n, c = means.shape[0], viewmats.shape[0]
    expected = {"means": (means, (n, 3)), "quats": (quats, (n, 4)), "scales": (scales, (n, 3)),
                "opacities": (opacities, (n,)), "viewmats": (viewmats, (c, 4, 4)), "Ks": (Ks, (c, 3, 3))}
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(f"render: {name} has shape {tuple(tensor.shape)}, expected {shape}")
    if sh_degree is None:
        if colors.dim() != 2 or colors.shape[0] != n:
            raise ValueError(f"render: colors must be (N, D) = ({n}, D) without sh_degree, got "
                             f"{tuple(colors.shape)}")
    elif colors.dim() != 3 or colors.shape[0] != n or colors.shape[2] != 3 \
            or colors.shape[1] < (sh_degree + 1) ** 2:
        raise ValueError(f"render: sh_degree {sh_degree} needs colors (N, >={(sh_degree + 1) ** 2}, 3) with "
                         f"N = {n}, got {tuple(colors.shape)}")
    channels = 3 if sh_degree is not None else colors.shape[1]
    if backgrounds is not None and tuple(backgrounds.shape) != (c, channels):
        raise ValueError(f"render: backgrounds has shape {tuple(backgrounds.shape)}, expected {(c, channels)}")
