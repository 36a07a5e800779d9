"""Front-to-back alpha compositing of dense slabs of tile rows, with gsplat 1.5.3's rules.

A slab holds T tiles of P pixels and the next K depth-sorted rows of each tile (a row: one Gaussian in
one tile; padding rows are transparent), behind the log-transmittance that earlier slabs left. Per row,
``coefficients`` (T, K, 6) give the exponent log(opacity) - sigma at pixel offset (u, v) from the tile
centre as c . (1, u, v, u^2, uv, v^2), so that one matrix product with the (6, P) ``basis`` evaluates it
at every pixel. Per pixel: alpha = min(0.999, exp(exponent)); rows with alpha < 1/255 are skipped; the
pixel stops before the row that would take its transmittance T to <= 1e-4; colour = sum of
alpha * T * colour of the row.

``composite_slab`` and ``composite_block`` (all rows of a set of tiles, slab by slab) are custom autograd
Functions with the closed-form gradient, in about half the memory passes that autograd needs through the
forward's ops. ``composite_reference`` is a slab's forward left to autograd: the twin the tests compare
them with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from spaceport.splat.render.projection import ALPHA_THRESHOLD

MAX_ALPHA = 0.999  # gsplat clamps a single Gaussian's alpha here
LOG_TRANSMITTANCE_STOP = math.log(1e-4)


@dataclass
class AbsGradTarget:
    """Where the compositing backward accumulates gsplat's ``absgrad`` (AbsGS): per Gaussian, the sum over
    pixels of |d loss / d means2d| of each pixel's own contribution."""

    buffer: Tensor  # (C*N, 2), accumulated into
    gaussian: Tensor  # (T, K) index into buffer of each row
    geometry: Tensor  # (T, K, 5) conic xx, xy, yy and mean - tile centre (x, y) of each row
    pixel_offsets: Tensor  # (2, P)

    def select(self, tiles: Tensor, rows: slice) -> AbsGradTarget:
        return AbsGradTarget(self.buffer, self.gaussian[:, rows].index_select(0, tiles),
                             self.geometry[:, rows].index_select(0, tiles), self.pixel_offsets)


def _slab_forward(coefficients: Tensor, basis: Tensor, colors: Tensor, log_transmittance_in: Tensor,
                  stopped_in: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, bool]:
    """-> slab colours, log-transmittance out, stopped out, and for the backward: alpha (0 where a row does
    not count), weights alpha * T, whether any alpha was clamped at 0.999."""
    alpha = torch.matmul(coefficients, basis).exp_()
    clamped = bool(alpha.max() > MAX_ALPHA) if alpha.numel() else False
    if clamped:
        alpha.clamp_max_(MAX_ALPHA)
    F.threshold(alpha, ALPHA_THRESHOLD, 0.0, inplace=True)  # alpha <= 1/255 contributes nothing
    log_survival = (1.0 - alpha).log_()
    log_survival[:, 0] += log_transmittance_in  # so that the running sum starts from what came in
    log_transmittance = torch.cumsum(log_survival, dim=1)  # after each row
    stopped_out = stopped_in | (log_transmittance[:, -1, :] <= LOG_TRANSMITTANCE_STOP)
    if bool(stopped_out.any()):
        kept = (log_transmittance > LOG_TRANSMITTANCE_STOP).logical_and_(~stopped_in[:, None, :])  # prefixes
        alpha.mul_(kept)
        last_kept = (kept.sum(dim=1, keepdim=True) - 1).clamp_min_(0)
        log_transmittance_out = torch.where(kept[:, 0, :], log_transmittance.gather(1, last_kept).squeeze(1),
                                            log_transmittance_in)
    else:
        log_transmittance_out = log_transmittance[:, -1, :].clone()
    transmittance = torch.sub(log_transmittance, log_survival, out=log_survival)  # log T before each row
    transmittance[:, 0] += log_transmittance_in
    weights = transmittance.exp_().mul_(alpha)
    tile_colors = torch.matmul(weights.transpose(1, 2), colors)  # (T, P, D)
    return tile_colors, log_transmittance_out, stopped_out, alpha, weights, clamped


def _slab_backward(alpha: Tensor, weights: Tensor, basis: Tensor, colors: Tensor, clamped: bool,
                   grad_colors: Tensor, grad_log_transmittance_out: Tensor,
                   absgrad: AbsGradTarget | None) -> tuple[Tensor, Tensor, Tensor]:
    """-> gradients of the slab's coefficients, row colours and incoming log-transmittance."""
    grad_row_colors = torch.matmul(weights, grad_colors)  # (T, K, D)
    # d loss / d weight of each row at each pixel, times the weight
    contribution = torch.matmul(colors, grad_colors.transpose(1, 2)).mul_(weights)
    in_total = contribution.sum(dim=1)
    # Every row's alpha scales the rows behind it and the outgoing transmittance by (1 - alpha):
    # d/d alpha_k = c_k T_k - (sum of contributions behind k + dL/dlogT_out) / (1 - alpha_k).
    behind = torch.cumsum(contribution, dim=1).neg_().add_((in_total + grad_log_transmittance_out)[:, None, :])
    # d alpha / d exponent = alpha (unless clamped), so d/d exponent = w_k c_k - alpha_k/(1 - alpha_k) * ...
    odds = (1.0 - alpha).reciprocal_().mul_(alpha)
    grad_exponent = contribution.sub_(behind.mul_(odds))
    if clamped:
        grad_exponent.masked_fill_(alpha >= MAX_ALPHA, 0.0)
    if absgrad is not None:
        _accumulate_absgrad(grad_exponent, absgrad)
    grad_coefficients = torch.matmul(grad_exponent, basis.T)
    # All weights and the outgoing log-transmittance shift one to one with the incoming one.
    grad_log_transmittance_in = in_total.add_(grad_log_transmittance_out)
    return grad_coefficients, grad_row_colors, grad_log_transmittance_in


class _CompositeSlab(torch.autograd.Function):
    @staticmethod
    def forward(ctx, coefficients: Tensor, basis: Tensor, colors: Tensor, log_transmittance_in: Tensor,
                stopped_in: Tensor, absgrad: AbsGradTarget | None) -> tuple[Tensor, Tensor, Tensor]:
        tile_colors, log_transmittance_out, stopped_out, alpha, weights, clamped = _slab_forward(
            coefficients, basis, colors, log_transmittance_in, stopped_in)
        ctx.save_for_backward(alpha, weights, basis, colors)
        ctx.clamped, ctx.absgrad = clamped, absgrad
        ctx.mark_non_differentiable(stopped_out)
        return tile_colors, log_transmittance_out, stopped_out

    @staticmethod
    def backward(ctx, grad_colors: Tensor, grad_log_transmittance_out: Tensor, _grad_stopped: None):
        alpha, weights, basis, colors = ctx.saved_tensors
        grads = _slab_backward(alpha, weights, basis, colors, ctx.clamped, grad_colors, grad_log_transmittance_out,
                               ctx.absgrad)
        return grads[0], None, grads[1], grads[2], None, None


@dataclass
class SlabRecord:
    """What one slab's forward leaves for its backward."""

    active: Tensor  # (T',) indices of the block's tiles still compositing in this slab
    rows: slice  # the block's rows this slab covers
    alpha: Tensor  # (T', k, P) alpha of each row at each pixel, 0 where it does not count
    weights: Tensor  # (T', k, P) alpha * transmittance
    clamped: bool  # whether some alpha was clamped at 0.999


def block_forward(coefficients: Tensor, basis: Tensor, colors: Tensor,
                  slab_rows: int) -> tuple[Tensor, Tensor, list[SlabRecord]]:
    """All K rows (T, K, ...) of T tiles, ``slab_rows`` at a time front to back; tiles whose pixels have all
    stopped drop out. -> (T, P, D) premultiplied colours, (T, P) final log-transmittance, slab records."""
    n_tiles, n_rows = coefficients.shape[:2]
    tile_colors = colors.new_zeros(n_tiles, basis.shape[1], colors.shape[2])
    log_transmittance = coefficients.new_zeros(n_tiles, basis.shape[1])
    stopped = torch.zeros(n_tiles, basis.shape[1], dtype=torch.bool, device=coefficients.device)
    active = torch.arange(n_tiles, device=coefficients.device)
    records = []
    for first in range(0, n_rows, slab_rows):
        rows = slice(first, first + slab_rows)
        slab_colors, slab_log_transmittance, slab_stopped, alpha, weights, clamped = _slab_forward(
            _take(coefficients[:, rows], active), basis, _take(colors[:, rows], active),
            _take(log_transmittance, active), _take(stopped, active))
        tile_colors.index_add_(0, active, slab_colors)
        log_transmittance.index_copy_(0, active, slab_log_transmittance)
        stopped.index_copy_(0, active, slab_stopped)
        records.append(SlabRecord(active, rows, alpha, weights, clamped))
        active = active[~slab_stopped.all(dim=1)]
        if active.numel() == 0:
            break
    return tile_colors, log_transmittance, records


def block_backward(records: list[SlabRecord], basis: Tensor, colors: Tensor, grad_colors: Tensor,
                   grad_log_transmittance: Tensor, absgrad: AbsGradTarget | None) -> tuple[Tensor, Tensor]:
    """Walk the slabs back to front, carrying d loss / d log-transmittance -> gradients of the block's
    (T, K, 6) coefficients and (T, K, D) row colours."""
    n_tiles, n_rows = colors.shape[:2]
    grad_coefficients = colors.new_zeros(n_tiles, n_rows, basis.shape[0])
    grad_row_colors = torch.zeros_like(colors)
    grad_carry = grad_log_transmittance.clone()
    for record in reversed(records):
        active, rows = record.active, record.rows
        grad_slab_coefficients, grad_slab_colors, grad_carry_in = _slab_backward(
            record.alpha, record.weights, basis, _take(colors[:, rows], active), record.clamped,
            _take(grad_colors, active), _take(grad_carry, active),
            absgrad.select(active, rows) if absgrad is not None else None)
        grad_coefficients[:, rows].index_copy_(0, active, grad_slab_coefficients)
        grad_row_colors[:, rows].index_copy_(0, active, grad_slab_colors)
        grad_carry.index_copy_(0, active, grad_carry_in)
    return grad_coefficients, grad_row_colors


def _take(tensor: Tensor, tiles: Tensor) -> Tensor:
    """The given tiles (first dimension) of ``tensor``; all of them without a copy."""
    return tensor if tiles.numel() == tensor.shape[0] else tensor.index_select(0, tiles)


class _CompositeBlock(torch.autograd.Function):
    @staticmethod
    def forward(ctx, coefficients: Tensor, basis: Tensor, colors: Tensor, slab_rows: int,
                absgrad: AbsGradTarget | None) -> tuple[Tensor, Tensor]:
        tile_colors, log_transmittance, records = block_forward(coefficients, basis, colors, slab_rows)
        ctx.records, ctx.absgrad = records, absgrad
        ctx.save_for_backward(basis, colors)
        return tile_colors, log_transmittance

    @staticmethod
    def backward(ctx, grad_colors: Tensor, grad_log_transmittance: Tensor):
        basis, colors = ctx.saved_tensors
        grads = block_backward(ctx.records, basis, colors, grad_colors, grad_log_transmittance, ctx.absgrad)
        return grads[0], None, grads[1], None, None


def _accumulate_absgrad(grad_exponent: Tensor, target: AbsGradTarget) -> None:
    conic_xx, conic_xy, conic_yy, offset_x, offset_y = target.geometry.unsqueeze(-1).unbind(-2)
    dx = offset_x - target.pixel_offsets[0]  # mean minus pixel centre, (T, K, P)
    dy = offset_y - target.pixel_offsets[1]
    # d exponent / d mean = -(conic @ (dx, dy)) at each pixel
    per_pixel_x = (grad_exponent * (conic_xx * dx + conic_xy * dy)).abs_().sum(dim=-1)
    per_pixel_y = (grad_exponent * (conic_xy * dx + conic_yy * dy)).abs_().sum(dim=-1)
    absgrad = torch.stack([per_pixel_x, per_pixel_y], dim=-1).reshape(-1, 2)
    target.buffer.index_add_(0, target.gaussian.reshape(-1), absgrad.to(target.buffer.dtype))


def composite_slab(coefficients: Tensor, basis: Tensor, colors: Tensor, log_transmittance_in: Tensor,
                   stopped_in: Tensor, absgrad: AbsGradTarget | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Composite a slab of rows behind pixels with log-transmittance ``log_transmittance_in`` (T, P), of
    which ``stopped_in`` (T, P) have stopped (no later row counts, as in gsplat's loop ``break``).

    Returns the slab's (T, P, D) premultiplied colour, the (T, P) log-transmittance after its last counted
    row, and which pixels have stopped by the end of the slab.
    """
    return _CompositeSlab.apply(coefficients, basis, colors, log_transmittance_in, stopped_in, absgrad)


def composite_block(coefficients: Tensor, basis: Tensor, colors: Tensor, slab_rows: int,
                    absgrad: AbsGradTarget | None = None) -> tuple[Tensor, Tensor]:
    """Composite all rows (T, K, ...) of T tiles in front of nothing -> (T, P, D) premultiplied colours and
    (T, P) final log-transmittance. ``slab_rows`` bounds the rows done at once; it does not change the result."""
    return _CompositeBlock.apply(coefficients, basis, colors, slab_rows, absgrad)


def composite_reference(coefficients: Tensor, basis: Tensor, colors: Tensor, log_transmittance_in: Tensor,
                        stopped_in: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``composite_slab`` written as plain differentiable torch ops (slower; the twin for tests)."""
    alpha = torch.clamp_max(torch.exp(coefficients @ basis), MAX_ALPHA)
    alpha = torch.where(alpha.detach() > ALPHA_THRESHOLD, alpha, 0.0)
    log_survival = torch.log1p(-alpha)
    after = torch.cumsum(log_survival, dim=1) + log_transmittance_in[:, None, :]
    kept = ((after > LOG_TRANSMITTANCE_STOP) & ~stopped_in[:, None, :]).detach()
    alpha = torch.where(kept, alpha, 0.0)
    weights = alpha * torch.exp(after - log_survival)
    log_transmittance_out = log_transmittance_in + torch.where(kept, log_survival, 0.0).sum(dim=1)
    stopped_out = stopped_in | (after[:, -1, :] <= LOG_TRANSMITTANCE_STOP).detach()
    return weights.transpose(1, 2) @ colors, log_transmittance_out, stopped_out
