"""Pure-PyTorch Gaussian splatting renderer for the CPU: gsplat 1.5.3 semantics, differentiable.

Steps: project (``projection.py``) -> colours from SH -> bin into tiles (``tiles.py``) -> per row
(tile, Gaussian), the exponent log(opacity) - sigma at the tile's P pixels as one matrix product, since
sigma is a quadratic in the pixel offset -> composite dense blocks of tiles (``composite.py``) ->
scatter tiles back into images. Blocks are bounded in size; when the whole frame holds more (row, pixel)
pairs than ``checkpoint_elements``, each block is checkpointed so memory stays bounded by one block.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from spaceport.splat.render.composite import AbsGradTarget, composite_block
from spaceport.splat.render.projection import ALPHA_THRESHOLD, Projection, camera_centers, project_gaussians
from spaceport.splat.render.sh import sh_to_color
from spaceport.splat.render.tiles import TileBlock, TileGrid, TileRows, intersect_tiles, plan_blocks

TILE_SIZES = (4, 8, 16)  # candidates for tile_size=None; the cheapest for the frame's Gaussians is used
ROW_OVERHEAD = 4  # cost of a row beyond its pixels, in pixel evaluations (fitted to CPU timings)
DEFAULT_SLAB_ROWS = 32  # rows composited at once per tile; tiles whose pixels all stopped drop out between slabs
DEFAULT_BLOCK_ELEMENTS = 1 << 22  # (row, pixel) pairs evaluated at once
DEFAULT_CHECKPOINT_ELEMENTS = 1 << 26  # above this many pairs per frame, recompute blocks in backward
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
    checkpoint_elements: int = DEFAULT_CHECKPOINT_ELEMENTS,
    slab_rows: int = DEFAULT_SLAB_ROWS,
) -> tuple[Tensor, Tensor, dict]:
    """Render C images; same arguments, outputs and ``info`` as ``spaceport.splat.render.render``.

    ``tile_size`` (None: chosen per frame from the Gaussians' screen sizes), ``block_elements``,
    ``checkpoint_elements`` and ``slab_rows`` trade speed for memory; they do not change the result.
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
    row_exponent, row_colors, row_geometry = _row_terms(projection, camera_opacities, point_colors, rows, grid)
    absgrad_buffer = torch.zeros_like(projection.means2d) if absgrad else None
    tile_colors, tile_log_transmittance = _composite_blocks(
        row_exponent, row_colors, row_geometry, rows, grid, block_elements, checkpoint_elements, slab_rows,
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


def _row_terms(projection: Projection, opacities: Tensor, point_colors: Tensor, rows: TileRows,
               grid: TileGrid) -> tuple[Tensor, Tensor, Tensor]:
    """Per row: (R+1, 6) coefficients of the exponent's quadratic in the pixel offset from the tile centre,
    (R+1, D) colours and (R+1, 5) detached conic + mean offset (for absgrad); the last row is padding.

    exponent(u, v) = log(opacity) - sigma, sigma = 0.5 xx dx^2 + xy dx dy + 0.5 yy dy^2 with
    (dx, dy) = (offset_x - u, offset_y - v), offset = mean - tile centre.
    """
    gaussian = rows.gaussian
    means2d = projection.means2d.reshape(-1, 2).index_select(0, gaussian)
    conics = projection.conics.reshape(-1, 3).index_select(0, gaussian)
    log_opacity = torch.log(opacities.reshape(-1).index_select(0, gaussian).clamp_min(ALPHA_THRESHOLD))
    offset_x, offset_y = (means2d - grid.centers(rows.tile, means2d.dtype)).unbind(-1)
    conic_xx, conic_xy, conic_yy = conics.unbind(-1)
    slope_x = conic_xx * offset_x + conic_xy * offset_y
    slope_y = conic_xy * offset_x + conic_yy * offset_y
    sigma_at_center = 0.5 * (slope_x * offset_x + slope_y * offset_y)
    exponent = torch.stack([log_opacity - sigma_at_center, slope_x, slope_y,
                            -0.5 * conic_xx, -conic_xy, -0.5 * conic_yy], dim=-1)
    padding = exponent.new_zeros(1, 6)
    padding[0, 0] = PADDING_EXPONENT
    colors = point_colors.reshape(-1, point_colors.shape[-1]).index_select(0, gaussian)
    geometry = torch.stack([conic_xx, conic_xy, conic_yy, offset_x, offset_y], dim=-1).detach()
    return (torch.cat([exponent, padding]), torch.cat([colors, colors.new_zeros(1, colors.shape[-1])]),
            torch.cat([geometry, geometry.new_zeros(1, 5)]))


def _composite_blocks(row_exponent: Tensor, row_colors: Tensor, row_geometry: Tensor, rows: TileRows,
                      grid: TileGrid, block_elements: int, checkpoint_elements: int, slab_rows: int,
                      absgrad_buffer: Tensor | None) -> tuple[Tensor, Tensor]:
    """(n_tiles, P, D) premultiplied colours and (n_tiles, P) log-transmittance of every tile."""
    dtype, device = row_exponent.dtype, row_exponent.device
    channels = row_colors.shape[-1]
    all_colors = row_colors.new_zeros(grid.n_tiles, grid.pixels_per_tile, channels)
    all_log_transmittance = row_exponent.new_zeros(grid.n_tiles, grid.pixels_per_tile)
    blocks = plan_blocks(rows, grid.pixels_per_tile, block_elements)
    if not blocks:
        return all_colors, all_log_transmittance
    pixel_offsets = grid.pixel_offsets(dtype, device)
    basis = _quadratic_basis(pixel_offsets)
    # One gather for all blocks (its backward is one scatter), then a view per block.
    index = torch.cat([block.rows.flatten() for block in blocks])
    sizes = [block.rows.numel() for block in blocks]
    block_exponents = row_exponent.index_select(0, index).split(sizes)
    block_colors = row_colors.index_select(0, index).split(sizes)
    absgrad_targets = _absgrad_targets(absgrad_buffer, row_geometry, rows, index, sizes, blocks, pixel_offsets)
    use_checkpoint = sum(sizes) * grid.pixels_per_tile > checkpoint_elements and torch.is_grad_enabled()
    tile_colors, tile_log_transmittance = [], []
    for block, exponent, colors, absgrad in zip(blocks, block_exponents, block_colors, absgrad_targets, strict=True):
        args = (exponent.view(*block.rows.shape, 6), basis, colors.view(*block.rows.shape, channels), slab_rows,
                absgrad)
        colors, log_transmittance = (checkpoint(composite_block, *args, use_reentrant=False)
                                     if use_checkpoint else composite_block(*args))
        tile_colors.append(colors)
        tile_log_transmittance.append(log_transmittance)
    tiles = torch.cat([block.tiles for block in blocks])
    all_colors = all_colors.index_copy(0, tiles, torch.cat(tile_colors))
    all_log_transmittance = all_log_transmittance.index_copy(0, tiles, torch.cat(tile_log_transmittance))
    return all_colors, all_log_transmittance


def _absgrad_targets(buffer: Tensor | None, row_geometry: Tensor, rows: TileRows, index: Tensor, sizes: list[int],
                     blocks: list[TileBlock], pixel_offsets: Tensor) -> list[AbsGradTarget | None]:
    if buffer is None:
        return [None] * len(blocks)
    gaussian = torch.cat([rows.gaussian, rows.gaussian.new_zeros(1)]).index_select(0, index).split(sizes)
    geometry = row_geometry.index_select(0, index).split(sizes)
    return [AbsGradTarget(buffer, ids.view(block.rows.shape), geo.view(*block.rows.shape, 5), pixel_offsets)
            for block, ids, geo in zip(blocks, gaussian, geometry, strict=True)]


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
