"""Self-organizing sort of Gaussians into a 2D grid (PLAS: parallel linear assignment sorting).

After Morgenstern et al., "Compact 3D Scene Representation via Self-Organizing Gaussian Grids" (ECCV 2024).
Each Gaussian is a feature vector; the grid is repeatedly compared with a blurred copy of itself (the
target: what each cell's neighbourhood looks like), and elements are swapped towards the cells whose target
they match best. The blur radius starts at half the grid and shrinks, so the order is first arranged at
large scale, then refined locally. One improvement step:

1. cut the grid (at a random offset) into square blocks of side ~2 x radius;
2. shuffle the positions inside each block and take them four at a time;
3. for each group of four, try all 24 assignments of its four elements to its four positions and keep the
   one closest to the target (a tiny linear assignment problem, solved exactly, for all groups at once).

The grid is the SOG texture: ``width`` columns, splat i at texel i in row-major order, so the real
Gaussians must fill the first N cells. The unused cells of the last row hold padding elements that never
move (a swap that would move one costs more than any real improvement) and are left out of the blur.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from itertools import permutations

import torch
import torch.nn.functional as F
from torch import Tensor

from spaceport.compress.config import FeatureWeights
from spaceport.formats.gaussians import Gaussians

_PERMUTATIONS = torch.tensor(list(permutations(range(4))), dtype=torch.long)  # (24, 4), identity first
_PADDING_PENALTY = 1e9


@dataclass(frozen=True)
class PlasSchedule:
    iterations_per_radius: int = 4
    radius_shrink: float = 0.9  # radius *= shrink after each round, down to min_radius
    min_radius: float = 1.0
    min_block_side: int = 4


# the neighbour-distance metric weighs every attribute group alike, whatever the sort used
METRIC_WEIGHTS = FeatureWeights(position=1, colour=1, opacity=1, scale=1, rotation=1)


@dataclass
class PlasResult:
    order: Tensor  # (N,) int64: order[i] is the Gaussian placed at texel i
    distance_before: float  # neighbour distance of the input order laid on the same grid
    distance_after: float


def sorting_features(g: Gaussians, weights: FeatureWeights = FeatureWeights(),
                     device: torch.device | str = "cpu") -> Tensor:
    """(N, D) float32 features: each attribute group with a positive weight (position 3, colour 3,
    opacity 1, scale 3, rotation 4 columns) standardized as a whole, then weighted."""
    means = torch.as_tensor(g.means, device=device)
    log_means = torch.sign(means) * torch.log1p(means.abs())  # the transform SOG stores positions in
    quats = torch.nn.functional.normalize(torch.as_tensor(g.quats, device=device), dim=1)
    largest = quats.abs().argmax(1, keepdim=True)
    quats = torch.where(quats.gather(1, largest) < 0, -quats, quats)  # q and -q are one rotation
    groups = [
        (log_means, weights.position),
        (torch.as_tensor(g.sh0, device=device), weights.colour),
        (torch.sigmoid(torch.as_tensor(g.opacities, device=device))[:, None], weights.opacity),
        (torch.as_tensor(g.scales, device=device), weights.scale),
        (quats, weights.rotation),
    ]
    return torch.cat([_standardize(values.float()) * weight for values, weight in groups if weight > 0], dim=1)


def _standardize(values: Tensor) -> Tensor:
    centred = values - values.mean(0)
    spread = centred.pow(2).mean().sqrt()
    return centred / spread if spread > 0 else centred


def grid_rows(count: int, width: int) -> int:
    return math.ceil(count / width)


def neighbour_distance(features: Tensor, order: Tensor, width: int) -> float:
    """Mean L2 feature distance between horizontally and vertically adjacent texels of the grid."""
    grid, valid = _lay_out(features[order], width)
    horizontal = (grid[:, 1:] - grid[:, :-1]).norm(dim=-1)
    horizontal_valid = valid[:, 1:] & valid[:, :-1]
    vertical = (grid[1:] - grid[:-1]).norm(dim=-1)
    vertical_valid = valid[1:] & valid[:-1]
    total = horizontal[horizontal_valid].double().sum() + vertical[vertical_valid].double().sum()
    pairs = int(horizontal_valid.sum()) + int(vertical_valid.sum())
    return float(total / max(pairs, 1))


def _lay_out(values: Tensor, width: int) -> tuple[Tensor, Tensor]:
    """Row-major (rows, width, D) grid of ``values`` with zeros after the last one, and the validity mask."""
    count, dims = values.shape
    rows = grid_rows(count, width)
    grid = torch.zeros(rows * width, dims, dtype=values.dtype, device=values.device)
    grid[:count] = values
    valid = torch.zeros(rows * width, dtype=torch.bool, device=values.device)
    valid[:count] = True
    return grid.view(rows, width, dims), valid.view(rows, width)


def plas_sort(features: Tensor, width: int, seed: int = 0, schedule: PlasSchedule = PlasSchedule(),
              on_round: Callable[[int, int], None] | None = None) -> PlasResult:
    """Sort (N, D) ``features`` onto a grid ``width`` wide; deterministic for a seed on a given device.

    ``on_round(done, total)`` is called after each radius round (for progress bars).
    """
    count = features.shape[0]
    device = features.device
    identity = torch.arange(count, device=device)
    before = neighbour_distance(features, identity, width)
    rows = grid_rows(count, width)
    if rows < 2 or width < 2:
        return PlasResult(identity, before, before)
    generator = torch.Generator(device=device).manual_seed(seed)
    cells = rows * width
    padded = torch.cat([features, torch.zeros(cells - count, features.shape[1], device=device)])
    is_padding = torch.arange(cells, device=device) >= count
    # blur input: features times the validity mask, then the mask itself
    masked = torch.cat([padded * (~is_padding)[:, None], (~is_padding)[:, None].float()], 1)
    grid = torch.cat([torch.randperm(count, generator=generator, device=device),
                      torch.arange(count, cells, device=device)])
    radii = _radii(max(rows, width) / 2, schedule)
    for round_index, radius in enumerate(radii):
        for _ in range(schedule.iterations_per_radius):
            # gather whole rows (cache friendly), then go channel-first for pooling
            channels = masked.index_select(0, grid).T.reshape(-1, rows, width)
            target = _blurred_target(channels, radius).reshape(-1, cells).T.contiguous()  # (cells, C)
            grid = _improve(grid, padded, is_padding, target, rows, width,
                            _block_side(radius, schedule.min_block_side), generator)
        if on_round is not None:
            on_round(round_index + 1, len(radii))
    order = grid[:count]
    return PlasResult(order, before, neighbour_distance(features, order, width))


def _radii(start: float, schedule: PlasSchedule) -> list[float]:
    radii, radius = [], max(start, schedule.min_radius)
    while radius >= schedule.min_radius:
        radii.append(radius)
        radius *= schedule.radius_shrink
    return radii


def _block_side(radius: float, min_side: int) -> int:
    side = max(min_side, 2 * math.ceil(radius))
    return side + side % 2


def _blurred_target(channels: Tensor, radius: float) -> Tensor:
    """Each cell's neighbourhood mean at scale ``radius``, from (C + 1, rows, width) channels whose last
    channel is the validity mask and the others are features times the mask (so padding counts for
    nothing). A pyramid, not a wide filter: average-pool by ~radius/2, a 3 x 3 box at that resolution,
    bilinear upsampling; its cost does not grow with the radius."""
    factor = max(1, int(radius // 2))
    rows, width = channels.shape[1:]
    if factor == 1:
        blurred = _box3(_box3(channels))
    else:
        small = F.avg_pool2d(channels[None], factor, stride=factor, ceil_mode=True)
        blurred = F.interpolate(_box3(small[0])[None], scale_factor=factor, mode="bilinear",
                                align_corners=False)[0, :, :rows, :width]
    return blurred[:-1] / blurred[-1:].clamp_min(1e-12)


def _box3(values: Tensor) -> Tensor:
    """Sum over each cell's 3 x 3 neighbourhood (zeros outside) of (C, rows, width) values."""
    padded = F.pad(values, (1, 1, 1, 1))
    horizontal = padded[:, :, :-2] + padded[:, :, 1:-1] + padded[:, :, 2:]
    return horizontal[:, :-2] + horizontal[:, 1:-1] + horizontal[:, 2:]


def _improve(grid: Tensor, features: Tensor, is_padding: Tensor, target: Tensor, rows: int, width: int,
             block_side: int, generator: torch.Generator) -> Tensor:
    """One round of best-of-24 reassignments in random groups of four inside random blocks."""
    positions = _group_positions(rows, width, block_side, generator)  # (G, 4) cell indices
    if positions.numel() == 0:
        return grid
    groups = positions.shape[0]
    elements = grid[positions]  # (G, 4)
    element_features = features.index_select(0, elements.view(-1)).view(groups, 4, -1)
    position_targets = target.index_select(0, positions.view(-1)).view(groups, 4, -1)
    # |f - t|^2 summed over an assignment differs between assignments only by -2 sum(f . t)
    affinity = torch.bmm(element_features, position_targets.transpose(1, 2))  # (G, element i, position j)
    mismatch = is_padding[elements][:, :, None] != is_padding[positions][:, None, :]
    cost = (-2 * affinity).masked_fill(mismatch, _PADDING_PENALTY)
    perms = _PERMUTATIONS.to(grid.device)
    totals = cost.view(groups, 16) @ _assignment_matrix(grid.device, cost.dtype)  # (G, 24)
    best = totals.argmin(1)  # ties keep the identity (index 0)
    destination = positions.gather(1, perms[best])
    updated = grid.clone()
    updated[destination.reshape(-1)] = elements.reshape(-1)
    return updated


def _assignment_matrix(device: torch.device, dtype: torch.dtype) -> Tensor:
    """(16, 24) 0/1 matrix: flattened (4 x 4) cost times it gives the total cost of each permutation."""
    matrix = torch.zeros(16, len(_PERMUTATIONS), dtype=dtype, device=device)
    rows = (torch.arange(4) * 4 + _PERMUTATIONS).to(device)  # (24, 4): cost[i, perm[i]]
    matrix[rows, torch.arange(len(_PERMUTATIONS), device=device)[:, None].expand(-1, 4)] = 1
    return matrix


def _group_positions(rows: int, width: int, block_side: int, generator: torch.Generator) -> Tensor:
    """Cell indices of the random groups of four: blocks tiled from a random offset, shuffled inside
    (all blocks alike: the offset and the shuffle change every step)."""
    device = generator.device
    side_y = min(block_side, rows - rows % 2)
    side_x = min(block_side, width - width % 2)
    blocks_y, blocks_x = rows // side_y, width // side_x
    offset_y = int(torch.randint(rows - blocks_y * side_y + 1, (1,), generator=generator, device=device))
    offset_x = int(torch.randint(width - blocks_x * side_x + 1, (1,), generator=generator, device=device))
    ys = offset_y + torch.arange(blocks_y * side_y, device=device)
    xs = offset_x + torch.arange(blocks_x * side_x, device=device)
    cells = (ys[:, None] * width + xs[None, :])  # (blocks_y*side_y, blocks_x*side_x)
    blocks = cells.view(blocks_y, side_y, blocks_x, side_x).permute(0, 2, 1, 3).reshape(-1, side_y * side_x)
    shuffle = torch.randperm(side_y * side_x, generator=generator, device=device)  # one for all blocks
    return blocks[:, shuffle].reshape(-1, 4)
