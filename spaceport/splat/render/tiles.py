"""Binning of projected Gaussians into square screen tiles (no gradients flow through this module).

A *row* is one (tile, Gaussian) overlap. Rows are sorted by tile, then front to back, like gsplat's
``isect_tiles`` + ``isect_offset_encode``. Unlike gsplat, a row is dropped when the Gaussian's
alpha >= 1/255 ellipse misses the tile's pixel centres altogether: such a row can never contribute, so
the image is unchanged and less work is done. For evaluation, tiles with similar row counts are
grouped into *blocks* padded to a dense (tiles, K) index matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from spaceport.splat.render.projection import ALPHA_THRESHOLD


@dataclass(frozen=True)
class TileGrid:
    """Square tiles covering C images of width x height pixels, numbered across cameras."""

    width: int
    height: int
    tile_size: int
    n_cameras: int

    @property
    def tiles_x(self) -> int:
        return math.ceil(self.width / self.tile_size)

    @property
    def tiles_y(self) -> int:
        return math.ceil(self.height / self.tile_size)

    @property
    def tiles_per_image(self) -> int:
        return self.tiles_x * self.tiles_y

    @property
    def n_tiles(self) -> int:
        return self.n_cameras * self.tiles_per_image

    @property
    def pixels_per_tile(self) -> int:
        return self.tile_size * self.tile_size

    def corners(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """(n_tiles, 2) pixel coordinates of every tile's top-left corner (look up by tile index)."""
        tile_x = torch.arange(self.tiles_x, device=device).repeat(self.n_cameras * self.tiles_y)
        tile_y = torch.arange(self.tiles_y, device=device).repeat_interleave(self.tiles_x).repeat(self.n_cameras)
        return (torch.stack([tile_x, tile_y], dim=-1) * self.tile_size).to(dtype)

    def centers(self, tiles: Tensor, dtype: torch.dtype) -> Tensor:
        """(R, 2) pixel coordinates of the centres of global tile indices (R,)."""
        return self.corners(dtype, tiles.device).index_select(0, tiles) + self.tile_size / 2

    def pixel_offsets(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """(2, P) offsets (u, v) of a tile's pixel centres from the tile centre, row-major."""
        coordinates = torch.arange(self.tile_size, dtype=dtype, device=device) + 0.5 - self.tile_size / 2
        v, u = torch.meshgrid(coordinates, coordinates, indexing="ij")
        return torch.stack([u.flatten(), v.flatten()])


@dataclass
class TileRows:
    """Every contributing (tile, Gaussian) overlap, sorted by tile then depth."""

    gaussian: Tensor  # (R,) int64 index into the flattened (C*N) Gaussians
    tile: Tensor  # (R,) int64 global tile index: camera * tiles_per_image + tile_y * tiles_x + tile_x
    tile_starts: Tensor  # (n_tiles + 1,) int64 first row of each tile, then R

    def __len__(self) -> int:
        return int(self.gaussian.shape[0])


@dataclass
class TileBlock:
    """Tiles evaluated together: ``rows[t, k]`` is the k-th row of ``tiles[t]``, or R (padding)."""

    tiles: Tensor  # (T,) global tile indices
    rows: Tensor  # (T, K) row indices


@torch.no_grad()
def intersect_tiles(means2d: Tensor, conics: Tensor, opacities: Tensor, radii: Tensor, depths: Tensor,
                    grid: TileGrid) -> TileRows:
    """Rows of the visible Gaussians (radii > 0), per camera front to back, grouped by tile.

    ``means2d`` (C,N,2), ``conics`` (C,N,3), ``opacities`` (C,N), ``radii`` (C,N,2), ``depths`` (C,N).
    """
    n_gaussians = depths.shape[1]
    device, dtype = means2d.device, means2d.dtype
    flat_index = torch.nonzero((radii > 0).all(dim=-1).flatten()).squeeze(1)
    by_depth = torch.argsort(depths.flatten().index_select(0, flat_index), stable=True)
    by_camera_then_depth = by_depth[torch.argsort(flat_index.index_select(0, by_depth) // n_gaussians,
                                                  stable=True)]
    flat_index = flat_index.index_select(0, by_camera_then_depth)

    center = means2d.reshape(-1, 2).index_select(0, flat_index)
    radius = radii.reshape(-1, 2).index_select(0, flat_index).to(dtype)
    # Tiles holding a pixel centre (index + 0.5) inside the box mean +- radius.
    first_pixel = torch.ceil(center - radius - 0.5)
    last_pixel = torch.floor(center + radius - 0.5)
    has_pixels = (first_pixel <= last_pixel).all(dim=-1)
    limits = torch.tensor([grid.width - 1, grid.height - 1], dtype=dtype, device=device)
    first_tile = torch.div(torch.minimum(first_pixel.clamp_min(0), limits), grid.tile_size, rounding_mode="floor")
    last_tile = torch.div(torch.minimum(last_pixel.clamp_min(0), limits), grid.tile_size, rounding_mode="floor")
    span = (last_tile - first_tile + 1) * has_pixels[:, None]
    tiles_per_gaussian = (span[:, 0] * span[:, 1]).long()
    camera = flat_index // n_gaussians
    first_tile_index = camera * grid.tiles_per_image + (first_tile[:, 1] * grid.tiles_x + first_tile[:, 0]).long()

    owner = torch.repeat_interleave(torch.arange(len(flat_index), device=device), tiles_per_gaussian)
    first_row = torch.cumsum(tiles_per_gaussian, 0) - tiles_per_gaussian
    offset = (torch.arange(len(owner), device=device) - first_row.index_select(0, owner)).to(dtype)
    span_x = span[:, 0].index_select(0, owner)
    offset_y = torch.floor((offset + 0.5) / span_x)  # exact: small integers in floating point
    offset_x = offset - offset_y * span_x
    tile = first_tile_index.index_select(0, owner) + (offset_y * grid.tiles_x + offset_x).long()

    log_alpha_range = torch.log(opacities.reshape(-1).index_select(0, flat_index) / ALPHA_THRESHOLD)
    per_gaussian = torch.cat([center.T, conics.reshape(-1, 3).index_select(0, flat_index).T, log_alpha_range[None]])
    reaches = _ellipse_reaches_tile(per_gaussian.index_select(1, owner),
                                    grid.corners(dtype, device).T.contiguous().index_select(1, tile), grid)
    kept = torch.nonzero(reaches).squeeze(1)
    gaussian = flat_index.index_select(0, owner.index_select(0, kept))
    tile = tile.index_select(0, kept)
    by_tile = torch.argsort(tile, stable=True)
    tile = tile.index_select(0, by_tile)
    rows_per_tile = torch.bincount(tile, minlength=grid.n_tiles)
    tile_starts = torch.cat([rows_per_tile.new_zeros(1), torch.cumsum(rows_per_tile, 0)])
    return TileRows(gaussian=gaussian.index_select(0, by_tile), tile=tile, tile_starts=tile_starts)


def _ellipse_reaches_tile(per_gaussian: Tensor, corner: Tensor, grid: TileGrid) -> Tensor:
    """(R,) whether alpha = opacity * exp(-sigma) can reach 1/255 at some pixel centre of the tile.

    ``per_gaussian`` (6, R): mean x, y, conic xx, xy, yy, log(opacity * 255); ``corner`` (2, R). The minimum
    of the quadratic sigma over the rectangle spanned by the tile's pixel centres is 0 when the mean is
    inside, else it lies on one of the four edges, each a 1D quadratic minimised in closed form.
    """
    mean_x, mean_y, conic_xx, conic_xy, conic_yy, log_alpha_range = per_gaussian
    low_x, low_y = corner[0] + 0.5 - mean_x, corner[1] + 0.5 - mean_y  # the rectangle relative to the mean
    high_x = torch.clamp_max(corner[0] + grid.tile_size, grid.width) - 0.5 - mean_x
    high_y = torch.clamp_max(corner[1] + grid.tile_size, grid.height) - 0.5 - mean_y

    def sigma(dx: Tensor, dy: Tensor) -> Tensor:
        return 0.5 * conic_xx * dx * dx + conic_xy * dx * dy + 0.5 * conic_yy * dy * dy

    smallest_sigma = torch.full_like(mean_x, torch.inf)
    for dx in (low_x, high_x):
        dy = torch.clamp(-conic_xy * dx / conic_yy, low_y, high_y)
        smallest_sigma = torch.minimum(smallest_sigma, sigma(dx, dy))
    for dy in (low_y, high_y):
        dx = torch.clamp(-conic_xy * dy / conic_xx, low_x, high_x)
        smallest_sigma = torch.minimum(smallest_sigma, sigma(dx, dy))
    inside = (low_x <= 0) & (high_x >= 0) & (low_y <= 0) & (high_y >= 0)
    smallest_sigma.masked_fill_(inside, 0.0)
    return smallest_sigma <= log_alpha_range + 1e-3 * (1.0 + log_alpha_range.abs())


@torch.no_grad()
def plan_blocks(rows: TileRows, pixels_per_tile: int, max_elements: int,
                max_padding: float = 0.25) -> list[TileBlock]:
    """Group non-empty tiles, most rows first, into blocks of at most ``max_elements`` (row, pixel) pairs
    (a single larger tile gets a block of its own) where no tile has ``max_padding`` fewer rows than the
    block's largest."""
    counts = rows.tile_starts[1:] - rows.tile_starts[:-1]
    tiles = torch.nonzero(counts).squeeze(1)
    order = torch.argsort(counts[tiles], descending=True, stable=True)
    tiles, counts = tiles[order], counts[tiles[order]]
    ascending_negated = (-counts).cpu()
    blocks, first = [], 0
    while first < len(tiles):
        largest = int(counts[first])
        same_size_end = int(torch.searchsorted(ascending_negated, -math.ceil((1 - max_padding) * largest),
                                               right=True))
        end = min(same_size_end, first + max(1, max_elements // (largest * pixels_per_tile)))
        block_tiles = tiles[first:end]
        slot = torch.arange(largest, device=tiles.device)
        row_index = rows.tile_starts[block_tiles][:, None] + slot
        padding = slot >= counts[first:end][:, None]
        blocks.append(TileBlock(block_tiles, torch.where(padding, len(rows), row_index)))
        first = end
    return blocks
