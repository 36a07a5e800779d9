"""SSIM (Wang et al. 2004: Gaussian window 11 / sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, valid region only), three ways.

- ``ssim_reference``: five 2D convolutions with the 11x11 window, the textbook form and the twin the others are
  tested against.
- ``ssim_separable``: the same window as a horizontal then a vertical 1D convolution (the 2D Gaussian is the
  outer product of two 1D ones), with the five blurred maps stacked into one grouped convolution per direction:
  22 taps a pixel instead of 121 and two convolution launches instead of five. The training loss on the CPU.
- ``ssim_triton`` (``spaceport.splat.ssim_triton``): one fused Triton kernel for forward and one for backward,
  used on CUDA when Triton imports.

Images are batches ``(B, H, W, C)`` with values in [0, 1]; every variant is differentiable.
"""

from __future__ import annotations

from functools import cache
from typing import Literal

import torch
import torch.nn.functional as F

WINDOW_SIZE, SIGMA = 11, 1.5
C1, C2 = 0.01**2, 0.03**2
SsimKernel = Literal["auto", "separable", "reference", "triton"]

__all__ = ["SsimKernel", "gaussian_weights", "resolve_ssim_kernel", "ssim", "ssim_reference", "ssim_separable"]


def gaussian_weights(size: int, sigma: float, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    """The normalised 1D Gaussian window, (size,)."""
    offsets = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    weights = torch.exp(-(offsets**2) / (2 * sigma**2))
    return weights / weights.sum()


def ssim_from_moments(mu_a, mu_b, mean_aa, mean_bb, mean_ab) -> torch.Tensor:
    """The SSIM map from the blurred a, b, a^2, b^2 and a*b."""
    var_a = mean_aa - mu_a**2
    var_b = mean_bb - mu_b**2
    cov = mean_ab - mu_a * mu_b
    return ((2 * mu_a * mu_b + C1) * (2 * cov + C2)) / ((mu_a**2 + mu_b**2 + C1) * (var_a + var_b + C2))


def ssim_reference(a: torch.Tensor, b: torch.Tensor, window_size: int = WINDOW_SIZE,
                   sigma: float = SIGMA) -> torch.Tensor:
    """Mean SSIM with five 2D convolutions by the full window."""
    a, b = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
    channels = a.shape[1]
    weights = gaussian_weights(window_size, sigma, a.device, a.dtype)
    window = (weights[:, None] * weights[None, :]).expand(channels, 1, window_size, window_size).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, window, groups=channels)

    return ssim_from_moments(blur(a), blur(b), blur(a * a), blur(b * b), blur(a * b)).mean()


@cache
def _separable_windows(size: int, sigma: float, channels: int, device: torch.device,
                       dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(False), torch.no_grad():  # kept: must not be an inference tensor autograd refuses
        weights = gaussian_weights(size, sigma, device, dtype)
        horizontal = weights.view(1, 1, 1, size).expand(channels, 1, 1, size).contiguous()
        vertical = weights.view(1, 1, size, 1).expand(channels, 1, size, 1).contiguous()
    return horizontal, vertical


def ssim_separable(a: torch.Tensor, b: torch.Tensor, window_size: int = WINDOW_SIZE,
                   sigma: float = SIGMA) -> torch.Tensor:
    """Mean SSIM with the window applied as two 1D convolutions over the five stacked maps."""
    a, b = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)
    channels = a.shape[1]
    stacked = torch.cat([a, b, a * a, b * b, a * b], dim=1)  # (B, 5C, H, W)
    horizontal, vertical = _separable_windows(window_size, sigma, 5 * channels, a.device, a.dtype)
    blurred = F.conv2d(F.conv2d(stacked, horizontal, groups=5 * channels), vertical, groups=5 * channels)
    return ssim_from_moments(*blurred.split(channels, dim=1)).mean()


def resolve_ssim_kernel(kernel: SsimKernel | str, device: torch.device | str) -> Literal[
        "separable", "reference", "triton"]:
    """"auto": the fused Triton kernel for CUDA tensors when Triton imports and passes its self-check (once per
    device), else the separable one."""
    device = torch.device(device)
    if kernel == "auto":
        from spaceport.splat.ssim_triton import triton_available, triton_self_check

        usable = device.type == "cuda" and triton_available() and triton_self_check(device) is None
        return "triton" if usable else "separable"
    if kernel == "triton" and device.type != "cuda":
        raise ValueError(f"ssim kernel 'triton' needs CUDA tensors, got device '{device}'")
    if kernel not in ("separable", "reference", "triton"):
        raise ValueError(f"unknown ssim kernel {kernel!r}; choose auto, separable, reference or triton")
    return kernel


def ssim(a: torch.Tensor, b: torch.Tensor, kernel: SsimKernel | str = "auto") -> torch.Tensor:
    """Mean SSIM of ``(B, H, W, C)`` batches in [0, 1] (window 11, sigma 1.5), differentiable in both."""
    resolved = resolve_ssim_kernel(kernel, a.device)
    if resolved == "triton" and (kernel == "triton" or not b.requires_grad):  # the kernel's gradient reaches a only
        from spaceport.splat.ssim_triton import ssim_triton

        return ssim_triton(a, b)
    return ssim_reference(a, b) if resolved == "reference" else ssim_separable(a, b)
