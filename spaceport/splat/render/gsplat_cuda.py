"""The CUDA backend: a thin call of ``gsplat.rasterization`` with the options our torch twin matches."""

from __future__ import annotations

from torch import Tensor


def render_gsplat(
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
    packed: bool = False,
) -> tuple[Tensor, Tensor, dict]:
    """gsplat's rasterization, classic, RGB, pinhole, non-packed unless asked (gsplat compiles its kernels on first
    use)."""
    from gsplat import rasterization  # imported here: CPU-only installs never need it

    # gsplat 1.5.3's packed path rejects (C, 3) backgrounds (it checks them against its packed shapes), so there
    # the background is composited here: the same colour + (1 - alpha) * background gsplat computes
    colors_out, alphas, info = rasterization(
        means, quats, scales, opacities, colors, viewmats, Ks, width, height,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree,
        packed=packed, backgrounds=None if packed else backgrounds, render_mode="RGB", absgrad=absgrad,
        rasterize_mode="classic", camera_model="pinhole",
    )
    if packed and backgrounds is not None:
        colors_out = colors_out + (1.0 - alphas) * backgrounds[:, None, None, :]
    return colors_out, alphas, info
