"""Image quality: a differentiable SSIM (also the training loss), PSNR, and held-out evaluation.

Two protocols. ``full-image``: the render against the whole photo. ``nerf-w-right-half`` (Martin-Brualla et al.,
NeRF in the Wild, 2021), for runs that learn a per-photo appearance (``spaceport.splat.appearance``): a held-out
photo has no learned appearance, so an affine colour transform of the render is fitted to the photo's left half
and PSNR/SSIM are measured on its right half only, where the fit has not looked.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from spaceport.splat.appearance import AppearanceModel, apply_affine, fit_affine
from spaceport.splat.model import render_params
from spaceport.splat.scene import View
from spaceport.splat.ssim import ssim  # noqa: F401 (re-exported: the training loss and tests import it here)
from spaceport.workspace import atomic_write_bytes

Protocol = Literal["full-image", "nerf-w-right-half"]


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
    appearance: AppearanceModel | bool | None = None,
) -> dict:
    """PSNR/SSIM of every view and their means; writes ``num_renders`` side-by-side PNGs (GT | render).

    ``appearance``: None, False or a model of kind "none" measure whole images (``full-image``); True or an
    enabled ``AppearanceModel`` use ``nerf-w-right-half``, and the PNGs show the render with the transform
    fitted on the left half applied to the whole. ``protocol`` in the result says which.
    """
    protocol = evaluation_protocol(appearance)
    per_view = []
    for index, view in enumerate(views):
        backgrounds = None if background is None else background[None]
        colors, _, _ = render_params(params, view.viewmat[None], view.K[None], view.width, view.height,
                                     sh_degree=sh_degree, backgrounds=backgrounds, backend=backend)
        rendered = colors[0].clamp(0, 1)
        truth = to_float_image(view)
        if protocol == "nerf-w-right-half":
            rendered = compensate_from_left_half(rendered, truth)
        scored_render, scored_truth, kept = rendered, truth, view.mask
        if view.mask is not None:  # masked pixels (people, cars) are not scored: SSIM sees the render there
            scored_truth = torch.where(view.mask[..., None], truth, rendered)
        if protocol == "nerf-w-right-half":
            scored_render, scored_truth = right_half(scored_render), right_half(scored_truth)
            kept = None if kept is None else right_half(kept)
        per_view.append({
            "name": view.name,
            "psnr": float(psnr(scored_render, scored_truth) if kept is None or not kept.any()
                          else psnr(scored_render[kept], scored_truth[kept])),
            "ssim": float(ssim(scored_render[None], scored_truth[None])),
        })
        if renders_dir is not None and index < num_renders:
            write_side_by_side(renders_dir / f"{Path(view.name).stem}.png", truth, rendered)
    summary = {
        "psnr": float(np.mean([v["psnr"] for v in per_view])) if per_view else float("nan"),
        "ssim": float(np.mean([v["ssim"] for v in per_view])) if per_view else float("nan"),
        "num_views": len(per_view),
        "protocol": protocol,
    }
    return {**summary, "views": per_view}


def evaluation_protocol(appearance: AppearanceModel | bool | None) -> Protocol:
    if isinstance(appearance, AppearanceModel):
        return "nerf-w-right-half" if appearance.enabled else "full-image"
    return "nerf-w-right-half" if appearance else "full-image"


def left_half(image: torch.Tensor) -> torch.Tensor:
    return image[:, : image.shape[1] // 2]


def right_half(image: torch.Tensor) -> torch.Tensor:
    return image[:, image.shape[1] // 2 :]


def compensate_from_left_half(rendered: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """The (H, W, 3) render with the affine colour transform that best matches the photo's left half."""
    transform = fit_affine(left_half(rendered), left_half(truth))
    return apply_affine(rendered, transform).clamp(0, 1)


def write_side_by_side(path: Path, truth: torch.Tensor, rendered: torch.Tensor) -> None:
    """Ground truth on the left, render on the right, as a PNG (written atomically)."""
    pair = torch.cat([truth, rendered], dim=1).clamp(0, 1)
    pixels = (pair * 255).round().to(torch.uint8).cpu().numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
