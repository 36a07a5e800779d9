"""Binning of projected Gaussians into square screen tiles (no gradients flow through this module).

A *row* is one (tile, Gaussian) overlap. Rows are sorted by tile, then front to back, like gsplat's
``isect_tiles`` + ``isect_offset_encode``. Unlike gsplat, which takes every tile of a Gaussian's pixel box,
a Gaussian gets only the tiles its alpha >= 1/255 ellipse reaches: the other rows could never contribute,
so the image is unchanged and less work is done. For evaluation, tiles with similar row counts are
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

    def centers(self, tiles: Tensor, dtype: torch.dtype) -> Tensor:
        """(T, 2) pixel coordinates of the centres of global tile indices (T,)."""
        in_image = tiles % self.tiles_per_image
        tile_xy = torch.stack([in_image % self.tiles_x, in_image // self.tiles_x], dim=-1)
        return (tile_xy * self.tile_size).to(dtype) + self.tile_size / 2

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
    Each Gaussian is cut into bands, one per tile row of its pixel box; in each band it gets the tiles
    between the leftmost and rightmost points of its alpha >= 1/255 ellipse there.
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
    # Pixels whose centre (index + 0.5) lies inside the box mean +- radius, clipped to the image.
    limits = torch.tensor([grid.width - 1, grid.height - 1], dtype=dtype, device=device)
    first_pixel = torch.minimum(torch.ceil(center - radius - 0.5).clamp_min(0), limits)
    last_pixel = torch.minimum(torch.floor(center + radius - 0.5), limits)
    has_pixels = (first_pixel <= last_pixel).all(dim=-1)
    first_band = torch.div(first_pixel[:, 1], grid.tile_size, rounding_mode="floor")
    bands = ((torch.div(last_pixel[:, 1], grid.tile_size, rounding_mode="floor") - first_band + 1)
             * has_pixels).long()

    band_owner = torch.repeat_interleave(torch.arange(len(flat_index), device=device), bands)
    band_start = torch.cumsum(bands, 0) - bands
    band_row = first_band.index_select(0, band_owner) + (torch.arange(len(band_owner), device=device)
                                                          - band_start.index_select(0, band_owner)).to(dtype)
    log_alpha_range = torch.log(opacities.reshape(-1).index_select(0, flat_index) / ALPHA_THRESHOLD)
    per_gaussian = torch.cat([center.T, conics.reshape(-1, 3).index_select(0, flat_index).T,
                              log_alpha_range[None], first_pixel[:, 0][None], last_pixel[:, 0][None]])
    first_column, last_column = _ellipse_columns(per_gaussian.index_select(1, band_owner), band_row, grid)
    first_tile_x = torch.div(first_column, grid.tile_size, rounding_mode="floor")
    tiles_in_band = torch.where(first_column <= last_column,
                                torch.div(last_column, grid.tile_size, rounding_mode="floor") - first_tile_x + 1,
                                0.0).long()
    camera = flat_index.index_select(0, band_owner) // n_gaussians
    band_first_tile = camera * grid.tiles_per_image + (band_row * grid.tiles_x + first_tile_x).long()

    row_band = torch.repeat_interleave(torch.arange(len(band_owner), device=device), tiles_in_band)
    row_start = torch.cumsum(tiles_in_band, 0) - tiles_in_band
    tile = (band_first_tile.index_select(0, row_band) + torch.arange(len(row_band), device=device)
            - row_start.index_select(0, row_band))
    gaussian = flat_index.index_select(0, band_owner.index_select(0, row_band))
    # Rows come out front to back; a stable sort by tile keeps that order within each tile.
    by_tile = torch.argsort(tile.to(torch.int32), stable=True)
    tile = tile.index_select(0, by_tile)
    rows_per_tile = torch.bincount(tile, minlength=grid.n_tiles)
    tile_starts = torch.cat([rows_per_tile.new_zeros(1), torch.cumsum(rows_per_tile, 0)])
    return TileRows(gaussian=gaussian.index_select(0, by_tile), tile=tile, tile_starts=tile_starts)


def _ellipse_columns(per_gaussian: Tensor, band_row: Tensor, grid: TileGrid) -> tuple[Tensor, Tensor]:
    """First and last pixel columns (float, B) whose centres, in some pixel row of the band, lie where
    alpha = opacity * exp(-sigma) >= 1/255; first > last when there is none.

    ``per_gaussian`` (8, B): mean x, y, conic xx, xy, yy, log(opacity * 255), and the first and last column
    of the Gaussian's pixel box. sigma = 0.5 (xx dx^2 + 2 xy dx dy + yy dy^2) <= log(opacity * 255) is an
    ellipse; over the band's rows its x-extent runs between its boundary at the rows nearest to its
    leftmost and rightmost points (the boundary is concave on the right, convex on the left).
    """
    mean_x, mean_y, conic_xx, conic_xy, conic_yy, log_alpha_range, box_first, box_last = per_gaussian
    level = 2.0 * (log_alpha_range + 1e-3 * (1.0 + log_alpha_range.abs()))  # a hair wider against rounding
    determinant = conic_xx * conic_yy - conic_xy * conic_xy
    half_height = torch.sqrt(level * conic_xx / determinant)
    half_width = torch.sqrt(level * conic_yy / determinant)
    band_top = band_row * grid.tile_size + 0.5 - mean_y  # pixel-centre rows of the band, relative to the mean
    band_bottom = torch.clamp_max((band_row + 1) * grid.tile_size, grid.height) - 0.5 - mean_y
    low = torch.maximum(band_top, -half_height)
    high = torch.minimum(band_bottom, half_height)

    def boundary_x(dy: Tensor, side: float) -> Tensor:
        """x - mean_x on the ellipse's right (side=1) or left (side=-1) boundary at row offset dy."""
        root = torch.sqrt(torch.clamp_min(level * conic_xx - determinant * dy * dy, 0.0))
        return (side * root - conic_xy * dy) / conic_xx

    extreme_dy = conic_xy * half_width / conic_yy  # row offset of the leftmost point; the rightmost is at -it
    right = boundary_x(torch.minimum(torch.maximum(-extreme_dy, low), high), 1.0)
    left = boundary_x(torch.minimum(torch.maximum(extreme_dy, low), high), -1.0)
    first = torch.maximum(torch.ceil(mean_x + left - 0.5), box_first)
    last = torch.minimum(torch.floor(mean_x + right - 0.5), box_last)
    return first, torch.where(low <= high, last, first - 1)


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
