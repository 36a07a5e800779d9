"""Front-to-back alpha compositing of dense tile blocks, with gsplat 1.5.3's rules.

Input per block: ``exponent`` (T, K, P) = log(opacity) - sigma of the K depth-sorted rows of T tiles at
their P pixels (padding rows have a hugely negative exponent), ``colors`` (T, K, D) per row.
Per pixel: alpha = min(0.999, exp(exponent)); a row with alpha < 1/255 is skipped; the pixel stops before
the row that would take its transmittance T to <= 1e-4; colour = sum of alpha * T * colour.

``composite`` is a custom autograd Function whose backward is the closed-form gradient written with
batched matrix products (about half the memory traffic of autograd through the forward's dozen ops);
``composite_reference`` is the same forward left to autograd, the twin the tests compare it with.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from spaceport.splat.render.projection import ALPHA_THRESHOLD

MAX_ALPHA = 0.999  # gsplat clamps a single Gaussian's alpha here
LOG_TRANSMITTANCE_STOP = math.log(1e-4)


class _Composite(torch.autograd.Function):
    @staticmethod
    def forward(ctx, exponent: Tensor, colors: Tensor) -> tuple[Tensor, Tensor]:
        alpha = torch.exp(exponent).clamp_max_(MAX_ALPHA)
        alpha.masked_fill_(alpha < ALPHA_THRESHOLD, 0.0)
        log_survival = torch.log1p(-alpha)
        log_transmittance = torch.cumsum(log_survival, dim=1)  # after each row
        alpha.masked_fill_(log_transmittance <= LOG_TRANSMITTANCE_STOP, 0.0)  # the pixel stopped
        log_transmittance.sub_(log_survival)  # before each row
        transmittance = log_transmittance.exp_()
        weights = alpha * transmittance
        tile_colors = weights.transpose(1, 2) @ colors  # (T, P, D)
        final_log_transmittance = torch.log1p(-alpha).sum(dim=1)  # stopped rows count as alpha 0
        ctx.save_for_backward(alpha, transmittance, colors)
        return tile_colors, final_log_transmittance

    @staticmethod
    def backward(ctx, grad_colors: Tensor, grad_log_transmittance: Tensor) -> tuple[Tensor, Tensor]:
        alpha, transmittance, colors = ctx.saved_tensors
        weights = alpha * transmittance
        grad_row_colors = weights @ grad_colors  # (T, K, D)
        color_dot_grad = colors @ grad_colors.transpose(1, 2)  # (T, K, P): dL/d(pixel) . colour of row
        contribution = weights * color_dot_grad
        # Sum over the rows behind each row of their contribution.
        behind = contribution.sum(dim=1, keepdim=True) - torch.cumsum(contribution, dim=1)
        # d/d alpha_i of sum_j w_j c_j and of log T_final, with w_j = alpha_j prod_{k<j} (1 - alpha_k).
        grad_alpha = transmittance * color_dot_grad - (behind + grad_log_transmittance[:, None, :]) / (1 - alpha)
        # d alpha / d exponent = alpha where alpha is neither skipped, stopped, nor clamped at 0.999.
        grad_exponent = torch.where(alpha < MAX_ALPHA, grad_alpha * alpha, 0.0)
        return grad_exponent, grad_row_colors


def composite(exponent: Tensor, colors: Tensor) -> tuple[Tensor, Tensor]:
    """(T, P, D) premultiplied colours and (T, P) final log-transmittance of a block of tiles."""
    return _Composite.apply(exponent, colors)


def composite_reference(exponent: Tensor, colors: Tensor) -> tuple[Tensor, Tensor]:
    """``composite`` written as plain differentiable torch ops (slower; the twin for tests)."""
    alpha = torch.clamp_max(torch.exp(exponent), MAX_ALPHA)
    alpha = torch.where(alpha.detach() >= ALPHA_THRESHOLD, alpha, 0.0)
    log_survival = torch.log1p(-alpha)
    after = torch.cumsum(log_survival, dim=1)
    kept = (after > LOG_TRANSMITTANCE_STOP).detach()
    alpha = torch.where(kept, alpha, 0.0)
    weights = alpha * torch.exp(after - log_survival)
    return weights.transpose(1, 2) @ colors, torch.where(kept, log_survival, 0.0).sum(dim=1)


class AbsGradTap(torch.autograd.Function):
    """Identity on ``exponent`` whose backward accumulates gsplat's ``absgrad`` (AbsGS) into ``buffer``:
    per Gaussian, the sum over pixels of |d loss / d means2d| of each pixel's own contribution."""

    @staticmethod
    def forward(ctx, exponent: Tensor, conic_and_offset: Tensor, pixel_offsets: Tensor, gaussian: Tensor,
                buffer: Tensor) -> Tensor:
        ctx.save_for_backward(conic_and_offset, pixel_offsets, gaussian)
        ctx.buffer = buffer
        return exponent.view_as(exponent)

    @staticmethod
    def backward(ctx, grad_exponent: Tensor):
        conic_and_offset, pixel_offsets, gaussian = ctx.saved_tensors
        conic_xx, conic_xy, conic_yy, offset_x, offset_y = conic_and_offset.unsqueeze(-1).unbind(-2)
        dx = offset_x - pixel_offsets[0]  # mean minus pixel centre, (T, K, P)
        dy = offset_y - pixel_offsets[1]
        # d exponent / d mean = -(conic @ (dx, dy)) at each pixel
        per_pixel_x = (grad_exponent * (conic_xx * dx + conic_xy * dy)).abs().sum(dim=-1)
        per_pixel_y = (grad_exponent * (conic_xy * dx + conic_yy * dy)).abs().sum(dim=-1)
        absgrad = torch.stack([per_pixel_x, per_pixel_y], dim=-1).reshape(-1, 2)
        ctx.buffer.index_add_(0, gaussian.reshape(-1), absgrad.to(ctx.buffer.dtype))
        return grad_exponent, None, None, None, None
