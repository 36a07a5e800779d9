"""Pure-PyTorch Gaussian splatting renderer for the CPU: gsplat 1.5.3 semantics, differentiable.

Steps: project (``projection.py``) -> colours from SH -> bin into tiles (``tiles.py``) -> per row
(tile, Gaussian), the exponent log(opacity) - sigma at the tile's P pixels as one matrix product, since
sigma is a quadratic in the pixel offset -> composite dense blocks of tiles (``composite.py``) ->
scatter tiles back into images. Blocks are bounded in size; when the whole frame holds more (row, pixel)
pairs than ``recompute_elements``, the backward recomputes each block's forward instead of keeping it,
so memory stays bounded by one block.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from spaceport.splat.render.composite import AbsGradTarget, block_backward, block_forward
from spaceport.splat.render.projection import ALPHA_THRESHOLD, Projection, camera_centers, project_gaussians
from spaceport.splat.render.sh import sh_to_color
from spaceport.splat.render.tiles import TileBlock, TileGrid, TileRows, intersect_tiles, plan_blocks

TILE_SIZES = (4, 8, 16)  # candidates for tile_size=None; the cheapest for the frame's Gaussians is used
ROW_OVERHEAD = 4  # cost of a row beyond its pixels, in pixel evaluations (fitted to CPU timings)
DEFAULT_SLAB_ROWS = 32  # rows composited at once per tile; tiles whose pixels all stopped drop out between slabs
DEFAULT_BLOCK_ELEMENTS = 1 << 22  # (row, pixel) pairs evaluated at once
DEFAULT_RECOMPUTE_ELEMENTS = 1 << 26  # above this many pairs per frame, recompute blocks in backward
PADDING_EXPONENT = -1e4  # exp() of it is 0: padding rows are transparent


def render_torch(
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
    tile_size: int | None = None,
    block_elements: int = DEFAULT_BLOCK_ELEMENTS,
    recompute_elements: int = DEFAULT_RECOMPUTE_ELEMENTS,
    slab_rows: int = DEFAULT_SLAB_ROWS,
) -> tuple[Tensor, Tensor, dict]:
    """Render C images; same arguments, outputs and ``info`` as ``spaceport.splat.render.render``.

    ``tile_size`` (None: chosen per frame from the Gaussians' screen sizes), ``block_elements``,
    ``recompute_elements`` and ``slab_rows`` trade speed for memory; they do not change the result.
    """
    n_cameras, n_gaussians = viewmats.shape[0], means.shape[0]
    projection = project_gaussians(means, quats, scales, opacities, viewmats, Ks, width, height,
                                   eps2d=eps2d, near_plane=near_plane, far_plane=far_plane)
    if tile_size is None:
        tile_size = cheapest_tile_size(projection)
    grid = TileGrid(width, height, tile_size, n_cameras)
    point_colors = _point_colors(means, colors, viewmats, sh_degree)  # (C, N, D)
    if backgrounds is None:
        backgrounds = torch.zeros(n_cameras, point_colors.shape[-1], dtype=means.dtype, device=means.device)
    camera_opacities = opacities.expand(n_cameras, n_gaussians)

    rows = intersect_tiles(projection.means2d.detach(), projection.conics.detach(), camera_opacities.detach(),
                           projection.radii, projection.depths.detach(), grid)
    # One row per Gaussian: x, y, conic xx, xy, yy, log opacity, colour channels; (6 + D, C*N).
    table = torch.cat([projection.means2d.reshape(-1, 2).T, projection.conics.reshape(-1, 3).T,
                       torch.log(camera_opacities.clamp_min(ALPHA_THRESHOLD)).reshape(1, -1),
                       point_colors.reshape(-1, point_colors.shape[-1]).T])
    absgrad_buffer = torch.zeros_like(projection.means2d) if absgrad else None
    tile_colors, tile_log_transmittance = _rasterize_tiles(
        table, rows, grid, block_elements, recompute_elements, slab_rows,
        absgrad_buffer.view(-1, 2) if absgrad else None,
    )
    render_colors, render_alphas = _tiles_to_images(tile_colors, tile_log_transmittance, backgrounds, grid)
    if absgrad:
        projection.means2d.absgrad = absgrad_buffer
    return render_colors, render_alphas, _info(projection, rows, camera_opacities, grid)


def _point_colors(means: Tensor, colors: Tensor, viewmats: Tensor, sh_degree: int | None) -> Tensor:
    """(C, N, D) colours per camera: SH evaluated toward each camera (+0.5, clamped at 0), or as given."""
    n_cameras = viewmats.shape[0]
    if sh_degree is None:
        return colors.expand(n_cameras, *colors.shape[-2:])
    directions = means[None] - camera_centers(viewmats)[:, None]  # (C, N, 3)
    coefficients = colors.expand(n_cameras, *colors.shape[-3:])
    return torch.clamp_min(sh_to_color(sh_degree, directions, coefficients) + 0.5, 0.0)


@torch.no_grad()
def cheapest_tile_size(projection: Projection) -> int:
    """The tile size in TILE_SIZES with the least estimated work: rows * (pixels per tile + ROW_OVERHEAD),
    rows counted from the Gaussians' pixel boxes."""
    visible = projection.visible
    center = projection.means2d[visible].detach()
    radius = projection.radii[visible].to(center.dtype)
    costs = []
    for size in TILE_SIZES:
        span = torch.floor((center + radius) / size) - torch.floor((center - radius) / size) + 1
        costs.append(float(span.prod(dim=-1).sum()) * (size * size + ROW_OVERHEAD))
    return TILE_SIZES[costs.index(min(costs))]


@dataclass
class _RasterPlan:
    """Everything but the per-Gaussian table that the tile rasterization needs (nothing here has gradients)."""

    grid: TileGrid
    blocks: list[TileBlock]
    padded_gaussian: Tensor  # (R + 1,) the Gaussian of each row, then 0 for the padding row
    basis: Tensor  # (6, P) monomials of the pixel offsets
    pixel_offsets: Tensor  # (2, P)
    slab_rows: int
    recompute: bool  # keep nothing per block for the backward; redo its forward there (bounded memory)
    absgrad_buffer: Tensor | None  # (C*N, 2)


@dataclass
class _BlockTerms:
    """Per (tile, row) slot of a block, from the per-Gaussian table."""

    gaussian: Tensor  # (T, K) index into the flattened (C*N) Gaussians; 0 for padding
    offset_x: Tensor  # (T, K) mean - tile centre
    offset_y: Tensor
    conic: tuple[Tensor, Tensor, Tensor]  # xx, xy, yy, each (T, K)
    slopes: tuple[Tensor, Tensor]  # conic @ offset, each (T, K)
    coefficients: Tensor  # (T, K, 6)
    colors: Tensor  # (T, K, D)

    @property
    def geometry(self) -> Tensor:
        return torch.stack([*self.conic, self.offset_x, self.offset_y], dim=-1)


def _block_terms(table: Tensor, block: TileBlock, plan: _RasterPlan) -> _BlockTerms:
    """exponent(u, v) = log(opacity) - sigma at pixel offset (u, v) from the tile centre, as coefficients of
    1, u, v, u^2, uv, v^2: sigma = 0.5 xx dx^2 + xy dx dy + 0.5 yy dy^2 with (dx, dy) = offset - (u, v).
    Padding slots get exponent -1e4 (alpha 0)."""
    padding = block.rows == len(plan.padded_gaussian) - 1
    gaussian = plan.padded_gaussian.index_select(0, block.rows.flatten()).view(block.rows.shape)
    features = table.index_select(1, gaussian.flatten()).view(table.shape[0], *block.rows.shape)
    mean_x, mean_y, conic_xx, conic_xy, conic_yy, log_opacity = features[:6]
    centers = plan.grid.centers(block.tiles, table.dtype)
    offset_x, offset_y = mean_x - centers[:, :1], mean_y - centers[:, 1:]
    slope_x = conic_xx * offset_x + conic_xy * offset_y
    slope_y = conic_xy * offset_x + conic_yy * offset_y
    constant = log_opacity - 0.5 * (slope_x * offset_x + slope_y * offset_y)
    coefficients = torch.stack([constant.masked_fill_(padding, PADDING_EXPONENT), slope_x, slope_y,
                                -0.5 * conic_xx, -conic_xy, -0.5 * conic_yy], dim=-1)
    return _BlockTerms(gaussian, offset_x, offset_y, (conic_xx, conic_xy, conic_yy), (slope_x, slope_y),
                       coefficients, features[6:].permute(1, 2, 0).contiguous())


def _block_terms_backward(terms: _BlockTerms, grad_coefficients: Tensor, grad_colors: Tensor) -> Tensor:
    """Gradients of the table's features (6 + D, T*K) of each slot, from those of its coefficients and colours
    (the Jacobian of ``_block_terms``, written out)."""
    e0, e1, e2, e3, e4, e5 = grad_coefficients.unbind(-1)
    (conic_xx, conic_xy, conic_yy), (slope_x, slope_y) = terms.conic, terms.slopes
    offset_x, offset_y = terms.offset_x, terms.offset_y
    grad_mean_x = e1 * conic_xx + e2 * conic_xy - e0 * slope_x
    grad_mean_y = e1 * conic_xy + e2 * conic_yy - e0 * slope_y
    grad_conic_xx = (e1 - 0.5 * e0 * offset_x) * offset_x - 0.5 * e3
    grad_conic_xy = e1 * offset_y + e2 * offset_x - e0 * offset_x * offset_y - e4
    grad_conic_yy = (e2 - 0.5 * e0 * offset_y) * offset_y - 0.5 * e5
    per_slot = torch.cat([torch.stack([grad_mean_x, grad_mean_y, grad_conic_xx, grad_conic_xy, grad_conic_yy, e0]),
                          grad_colors.permute(2, 0, 1)])
    return per_slot.reshape(per_slot.shape[0], -1)


class _RasterizeTiles(torch.autograd.Function):
    """Per-Gaussian table (6 + D, C*N) of x, y, conic xx, xy, yy, log opacity, colours -> every tile's
    (n_tiles, P, D) premultiplied colour and (n_tiles, P) final log-transmittance.

    One autograd node for all rows: the backward recomputes each block's slot terms (cheap), walks its slabs
    back to front, and scatters the block's gradients into the table once."""

    @staticmethod
    def forward(ctx, table: Tensor, plan: _RasterPlan) -> tuple[Tensor, Tensor]:
        grid = plan.grid
        tile_colors = table.new_zeros(grid.n_tiles, grid.pixels_per_tile, table.shape[0] - 6)
        tile_log_transmittance = table.new_zeros(grid.n_tiles, grid.pixels_per_tile)
        records = []
        for block in plan.blocks:
            terms = _block_terms(table, block, plan)
            colors, log_transmittance, block_records = block_forward(terms.coefficients, plan.basis, terms.colors,
                                                                     plan.slab_rows)
            tile_colors.index_copy_(0, block.tiles, colors)
            tile_log_transmittance.index_copy_(0, block.tiles, log_transmittance)
            records.append(None if plan.recompute else block_records)
        ctx.save_for_backward(table)
        ctx.plan, ctx.records = plan, records
        return tile_colors, tile_log_transmittance

    @staticmethod
    def backward(ctx, grad_tile_colors: Tensor, grad_tile_log_transmittance: Tensor):
        (table,) = ctx.saved_tensors
        plan = ctx.plan
        grad_table = torch.zeros_like(table)
        for block, records in zip(plan.blocks, ctx.records, strict=True):
            terms = _block_terms(table, block, plan)
            if records is None:
                records = block_forward(terms.coefficients, plan.basis, terms.colors, plan.slab_rows)[2]
            absgrad = None
            if plan.absgrad_buffer is not None:
                absgrad = AbsGradTarget(plan.absgrad_buffer, terms.gaussian, terms.geometry, plan.pixel_offsets)
            grad_coefficients, grad_colors = block_backward(
                records, plan.basis, terms.colors, grad_tile_colors.index_select(0, block.tiles),
                grad_tile_log_transmittance.index_select(0, block.tiles), absgrad)
            grad_table.index_add_(1, terms.gaussian.flatten(),
                                  _block_terms_backward(terms, grad_coefficients, grad_colors))
        return grad_table, None


def _rasterize_tiles(table: Tensor, rows: TileRows, grid: TileGrid, block_elements: int, recompute_elements: int,
                     slab_rows: int, absgrad_buffer: Tensor | None) -> tuple[Tensor, Tensor]:
    blocks = plan_blocks(rows, grid.pixels_per_tile, block_elements)
    pixel_offsets = grid.pixel_offsets(table.dtype, table.device)
    total_elements = sum(block.rows.numel() for block in blocks) * grid.pixels_per_tile
    plan = _RasterPlan(grid, blocks, torch.cat([rows.gaussian, rows.gaussian.new_zeros(1)]),
                       _quadratic_basis(pixel_offsets), pixel_offsets, slab_rows,
                       recompute=total_elements > recompute_elements, absgrad_buffer=absgrad_buffer)
    return _RasterizeTiles.apply(table, plan)


def _quadratic_basis(pixel_offsets: Tensor) -> Tensor:
    """(6, P) monomials 1, u, v, u^2, u v, v^2 of the pixel offsets (2, P)."""
    u, v = pixel_offsets
    return torch.stack([torch.ones_like(u), u, v, u * u, u * v, v * v])


def _tiles_to_images(tile_colors: Tensor, tile_log_transmittance: Tensor, backgrounds: Tensor,
                     grid: TileGrid) -> tuple[Tensor, Tensor]:
    """Tile-major (n_tiles, P, ...) -> (C, H, W, D) colours over the background and (C, H, W, 1) alphas."""
    transmittance = _untile(torch.exp(tile_log_transmittance)[..., None], grid)
    colors = _untile(tile_colors, grid) + transmittance * backgrounds[:, None, None, :]
    return colors, 1.0 - transmittance


def _untile(per_tile: Tensor, grid: TileGrid) -> Tensor:
    size, channels = grid.tile_size, per_tile.shape[-1]
    images = per_tile.reshape(grid.n_cameras, grid.tiles_y, grid.tiles_x, size, size, channels)
    images = images.permute(0, 1, 3, 2, 4, 5).reshape(grid.n_cameras, grid.tiles_y * size,
                                                     grid.tiles_x * size, channels)
    return images[:, :grid.height, :grid.width]


def _info(projection: Projection, rows: TileRows, opacities: Tensor, grid: TileGrid) -> dict:
    """The meta dict of gsplat's (non-packed) rasterization, with what its strategies read."""
    n_cameras, n_gaussians = opacities.shape
    tiles_per_gaussian = torch.bincount(rows.gaussian, minlength=n_cameras * n_gaussians)
    return {
        "batch_ids": None,
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": projection.radii,
        "means2d": projection.means2d,
        "depths": projection.depths,
        "conics": projection.conics,
        "opacities": opacities,
        "tile_width": grid.tiles_x,
        "tile_height": grid.tiles_y,
        "tile_size": grid.tile_size,
        "tiles_per_gauss": tiles_per_gaussian.reshape(n_cameras, n_gaussians).to(torch.int32),
        "width": grid.width,
        "height": grid.height,
        "n_batches": 1,
        "n_cameras": n_cameras,
    }
