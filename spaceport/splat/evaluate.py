"""Image quality: a differentiable SSIM (also the training loss), PSNR, and held-out evaluation."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from spaceport.splat.model import render_params
from spaceport.splat.scene import View
from spaceport.workspace import atomic_write_bytes


def _gaussian_window(size: int, sigma: float, channels: int, device, dtype) -> torch.Tensor:
    offsets = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    return (weights[:, None] * weights[None, :]).expand(channels, 1, size, size).contiguous()


def ssim(a: torch.Tensor, b: torch.Tensor, window_size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004: Gaussian window 11/1.5, C1=0.01^2, C2=0.03^2, valid region only)
    of image batches ``(B, H, W, C)`` with values in [0, 1]; differentiable."""
    a, b = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
    channels = a.shape[1]
    window = _gaussian_window(window_size, sigma, channels, a.device, a.dtype)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=channels)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01**2, 0.03**2
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return ssim_map.mean()


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images with values in [0, 1]."""
    mse = F.mse_loss(a, b)
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


def to_float_image(view: View) -> torch.Tensor:
    return view.image.float() / 255.0


@torch.no_grad()
def evaluate_views(
    params: torch.nn.ParameterDict,
    views: list[View],
    *,
    sh_degree: int,
    background: torch.Tensor | None,
    backend: str,
    renders_dir: Path | None = None,
    num_renders: int = 0,
) -> dict:
    """PSNR/SSIM of every view and their means; writes ``num_renders`` side-by-side PNGs (GT | render)."""
    per_view = []
    for index, view in enumerate(views):
        backgrounds = None if background is None else background[None]
        colors, _, _ = render_params(params, view.viewmat[None], view.K[None], view.width, view.height,
                                     sh_degree=sh_degree, backgrounds=backgrounds, backend=backend)
        rendered = colors[0].clamp(0, 1)
        truth = to_float_image(view)
        per_view.append({
            "name": view.name,
            "psnr": float(psnr(rendered, truth)),
            "ssim": float(ssim(rendered[None], truth[None])),
        })
        if renders_dir is not None and index < num_renders:
            write_side_by_side(renders_dir / f"{Path(view.name).stem}.png", truth, rendered)
    summary = {
        "psnr": float(np.mean([v["psnr"] for v in per_view])) if per_view else float("nan"),
        "ssim": float(np.mean([v["ssim"] for v in per_view])) if per_view else float("nan"),
        "num_views": len(per_view),
    }
    return {**summary, "views": per_view}


def write_side_by_side(path: Path, truth: torch.Tensor, rendered: torch.Tensor) -> None:
    """Ground truth on the left, render on the right, as a PNG (written atomically)."""
    pair = torch.cat([truth, rendered], dim=1).clamp(0, 1)
    pixels = (pair * 255).round().to(torch.uint8).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
