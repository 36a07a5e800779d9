"""Clustering for SOG codebooks, in torch on whichever device holds the data.

- ``quantize_1d``: a 256-entry scalar codebook (scales, DC colours, SH palette values).
- ``kmeans``: the SH palette, a two-level k-means. A flat k-means with the palette sizes SOG uses (up to
  65,536 centroids) costs N x K distance evaluations per iteration, which the CPU cannot afford; two levels
  (about sqrt(K) coarse cells, then each cell split in proportion to its size) cost about N x 2 sqrt(K).
  Points are assigned to the nearest centroid of their own cell, and labels of one cell are contiguous, so
  neighbours in the sorted grid with similar SH also get numerically close labels (smaller WebP files).

Everything is deterministic for a given seed on a given device: random draws come from a seeded generator,
and centroid sums come from a sort and a float64 cumulative sum instead of atomic scatter-adds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

# points x centroids distance block evaluated at once; bounds the temporary memory (~64 MiB of float32)
_DISTANCE_BLOCK = 16 * 1024 * 1024
_COARSE_SAMPLE_PER_CELL = 256
# fine centroids are fitted on at most this many points each (a random sample of the cell), then every point is
# assigned once: the Lloyd steps cost in proportion to the points they see
FIT_POINTS_PER_CENTROID = 16
_GPU_BATCH_BLOCK = 64 * 1024 * 1024  # elements of one batched distance block on CUDA (256 MiB)


@dataclass
class Codebook1D:
    values: Tensor  # (levels,) float32, ascending
    labels: Tensor  # same shape as the input, uint8 (levels <= 256) indices into values


@dataclass
class KMeansResult:
    centroids: Tensor  # (K, D) float32
    labels: Tensor  # (N,) int64 in [0, K)


def quantize_1d(values: Tensor, levels: int = 256, density_power: float = 0.5, iterations: int = 60,
                fine_bins: int = 2048) -> Codebook1D:
    """A ``levels``-entry codebook for all of ``values`` (any shape) and each value's nearest entry.

    Weighted Lloyd iterations on a fine histogram whose bins are the union of equal-width and equal-count
    bins (so both the dense centre and the sparse tails get bins). A bin weighs count**density_power:
    with a power below 1 the tails (the few very large scales, saturated colours) keep codebook entries
    instead of all entries crowding the centre. Inputs with at most ``levels`` distinct values are coded
    exactly.
    """
    flat = values.reshape(-1).float()
    ordered = torch.sort(flat).values
    distinct = torch.unique_consecutive(ordered)
    if distinct.numel() <= levels:
        codebook = distinct
    else:
        means, counts = _histogram_bins(ordered.double(), fine_bins)
        codebook = _weighted_lloyd_1d(means, counts.double() ** density_power, levels, iterations).float()
    codebook = _pad(codebook, levels)
    return Codebook1D(codebook, nearest_1d(flat, codebook).reshape(values.shape).to(torch.uint8))


def nearest_1d(values: Tensor, ascending_codebook: Tensor) -> Tensor:
    """Index of the nearest entry of an ascending codebook for each value (int64)."""
    midpoints = (ascending_codebook[1:] + ascending_codebook[:-1]) * 0.5
    return torch.bucketize(values, midpoints)


def _pad(codebook: Tensor, levels: int) -> Tensor:
    if codebook.numel() == levels:
        return codebook
    return torch.cat([codebook, codebook[-1:].expand(levels - codebook.numel())])


def _histogram_bins(ordered: Tensor, fine_bins: int) -> tuple[Tensor, Tensor]:
    """Mean and count of the non-empty bins of sorted float64 ``ordered``."""
    n = ordered.numel()
    low, high = ordered[0], ordered[-1]
    uniform_edges = torch.linspace(0, 1, fine_bins + 1, device=ordered.device, dtype=ordered.dtype)
    uniform_edges = low + (high - low) * uniform_edges
    rank_positions = torch.linspace(0, n - 1, fine_bins + 1, device=ordered.device, dtype=torch.float64)
    rank_edges = ordered[rank_positions.round().long()]
    edges = torch.unique(torch.cat([uniform_edges, rank_edges]))
    # bin b holds ordered[starts[b]:starts[b+1]]; the last edge closes the last bin
    starts = torch.searchsorted(ordered, edges[:-1], right=False)
    ends = torch.cat([starts[1:], torch.tensor([n], device=ordered.device)])
    prefix = torch.cat([torch.zeros(1, dtype=ordered.dtype, device=ordered.device), torch.cumsum(ordered, 0)])
    counts = ends - starts
    keep = counts > 0
    sums = prefix[ends] - prefix[starts]
    return sums[keep] / counts[keep], counts[keep]


def _weighted_lloyd_1d(points: Tensor, weights: Tensor, levels: int, iterations: int) -> Tensor:
    """Lloyd's algorithm on sorted weighted 1-D points. Half the start entries sit at weighted quantiles,
    half evenly over the range: Lloyd only moves entries locally, and started at quantiles alone it never
    brings entries out to sparse tails (measured: 10-40x larger worst errors on heavy-tailed data)."""
    half = levels // 2
    cumulative = torch.cumsum(weights, 0)
    steps = torch.arange(levels, device=points.device, dtype=points.dtype) + 0.5
    quantile_targets = steps[:half] / half * cumulative[-1]
    at_quantiles = points[torch.searchsorted(cumulative, quantile_targets).clamp_max(points.numel() - 1)]
    evenly = points[0] + (points[-1] - points[0]) * steps[: levels - half] / (levels - half)
    centroids = torch.sort(torch.cat([at_quantiles, evenly])).values
    weight_prefix = _prefix_sums(weights)
    value_prefix = _prefix_sums(weights * points)
    for _ in range(iterations):
        # points are sorted, so each entry's points are one contiguous run: sums from prefix sums
        labels = nearest_1d(points, centroids)
        ends = torch.cumsum(torch.bincount(labels, minlength=levels), 0)
        starts = torch.cat([ends.new_zeros(1), ends[:-1]])
        weight_sums = weight_prefix[ends] - weight_prefix[starts]
        value_sums = value_prefix[ends] - value_prefix[starts]
        updated = torch.where(weight_sums > 0, value_sums / weight_sums.clamp_min(1e-300), centroids)
        empty = weight_sums == 0
        if empty.any():  # move unused entries onto the points coded worst
            errors = weights * (points - centroids[labels]) ** 2
            updated[empty] = points[torch.topk(errors, int(empty.sum())).indices]
        centroids = torch.sort(updated).values
    return centroids


def _prefix_sums(values: Tensor) -> Tensor:
    return torch.cat([values.new_zeros(1), torch.cumsum(values, 0)])


def kmeans(points: Tensor, k: int, iterations: int = 10, seed: int = 0,
           cell_batch_elements: int | None = None,
           fit_points_per_centroid: int | None = FIT_POINTS_PER_CENTROID) -> KMeansResult:
    """Two-level k-means of (N, D) ``points`` into at most ``k`` centroids (see the module docstring).

    ``cell_batch_elements``: size budget of one batched distance block of the second level; None picks
    by device (large batches on CUDA, one cell at a time on the CPU). ``fit_points_per_centroid``: the fine
    centroids of a cell are fitted on a random sample of this many points per centroid, then all of the
    cell's points are assigned (None: fit on all)."""
    n = points.shape[0]
    points = points.float()
    if n <= k:
        return KMeansResult(points.clone(), torch.arange(n, device=points.device))
    generator = torch.Generator(device=points.device).manual_seed(seed)
    coarse_k = max(1, min(round(k**0.5), k))
    if coarse_k == 1 or k <= 256:
        return lloyd(points, k, iterations, generator)
    # the coarse cells only route points: fitting them on a sample is enough
    sample_size = min(n, _COARSE_SAMPLE_PER_CELL * coarse_k)
    sample = torch.randperm(n, generator=generator, device=points.device)[:sample_size]
    coarse_centroids = lloyd(points[sample], coarse_k, iterations, generator).centroids
    coarse = KMeansResult(coarse_centroids, nearest(points, coarse_centroids))
    cell_order = _principal_order(coarse.centroids)
    counts = torch.bincount(coarse.labels, minlength=coarse_k)
    allocation = _allocate(counts, k).tolist()
    members_by_cell = _members_by_cell(coarse.labels, coarse_k)
    fine_by_cell: dict[int, KMeansResult] = {}
    # on the GPU, many cells per batched step (few, large kernels); on the CPU one cell at a time keeps
    # the distance block small (measured: batching made the CPU 1.7-2.4x slower, memory-bound)
    budget = cell_batch_elements
    if budget is None:
        budget = _GPU_BATCH_BLOCK if points.device.type == "cuda" else 0
    fitted_by_cell = [_fit_sample(members, allocation[cell], fit_points_per_centroid, generator)
                      for cell, members in enumerate(members_by_cell)]
    for batch in _size_batches(fitted_by_cell, allocation, budget):
        groups = [points[fitted_by_cell[cell]] for cell in batch]
        results = batched_lloyd(groups, [allocation[cell] for cell in batch], iterations, generator)
        for cell, result in zip(batch, results, strict=True):
            if fitted_by_cell[cell].numel() < members_by_cell[cell].numel():
                result = KMeansResult(result.centroids, nearest(points[members_by_cell[cell]], result.centroids))
            fine_by_cell[cell] = result
    centroids, labels = [], torch.empty(n, dtype=torch.long, device=points.device)
    offset = 0
    for cell in cell_order.tolist():
        if cell not in fine_by_cell:
            continue
        fine = fine_by_cell[cell]
        fine_order = _principal_order(fine.centroids)
        rank = torch.empty_like(fine_order)
        rank[fine_order] = torch.arange(fine_order.numel(), device=points.device)
        centroids.append(fine.centroids[fine_order])
        labels[members_by_cell[cell]] = rank[fine.labels] + offset
        offset += fine.centroids.shape[0]
    return KMeansResult(torch.cat(centroids), labels)


def _fit_sample(members: Tensor, centroids: int, per_centroid: int | None, generator: torch.Generator) -> Tensor:
    """The members a cell's centroids are fitted on: all, or a random ``per_centroid`` points per centroid."""
    wanted = None if per_centroid is None else max(centroids, 1) * per_centroid
    if wanted is None or members.numel() <= wanted:
        return members
    keep = torch.randperm(members.numel(), generator=generator, device=members.device)[:wanted]
    return members[keep.sort().values]


def _size_batches(members_by_cell: list[Tensor], allocation: list[int], budget: int) -> list[list[int]]:
    """Non-empty cells grouped, largest first, so that each group's padded distance block
    (cells x most points x most centroids) stays within ``budget`` elements (a cell alone may exceed it)."""
    cells = sorted((c for c, m in enumerate(members_by_cell) if m.numel() and allocation[c]),
                   key=lambda c: (-members_by_cell[c].numel(), c))
    batches: list[list[int]] = []
    for cell in cells:
        if batches:
            batch = batches[-1] + [cell]
            most_points = members_by_cell[batch[0]].numel()
            most_centroids = max(allocation[c] for c in batch)
            if len(batch) * most_points * most_centroids <= budget:
                batches[-1] = batch
                continue
        batches.append([cell])
    return batches


def batched_lloyd(groups: list[Tensor], ks: list[int], iterations: int,
                  generator: torch.Generator) -> list[KMeansResult]:
    """Independent k-means of several point sets at once (padded to the largest; one batched matrix product
    per step instead of one small product per set). Set b gets ks[b] <= len(groups[b]) centroids."""
    device, dims = groups[0].device, groups[0].shape[1]
    sizes = torch.tensor([len(g) for g in groups], device=device)
    counts = torch.tensor(ks, device=device)
    most_points, most_centroids = int(sizes.max()), int(counts.max())
    points = torch.zeros(len(groups), most_points, dims, device=device)
    for index, group in enumerate(groups):
        points[index, : len(group)] = group
    point_valid = torch.arange(most_points, device=device)[None] < sizes[:, None]
    centroid_valid = torch.arange(most_centroids, device=device)[None] < counts[:, None]
    # start: ks[b] distinct random points of set b (padding sorts last)
    keys = torch.rand(point_valid.shape, generator=generator, device=device).masked_fill(~point_valid, 2.0)
    start = keys.argsort(1)[:, :most_centroids]
    centroids = points.gather(1, start[..., None].expand(-1, -1, dims))
    flat_points = points[point_valid]
    batch_offsets = (torch.arange(len(groups), device=device) * most_centroids)[:, None]
    for _ in range(iterations):
        labels = _batched_nearest(points, centroids, centroid_valid)
        flat_labels = (labels + batch_offsets)[point_valid]
        centroids = _centroid_means(flat_points, flat_labels, centroids.reshape(-1, dims)).view_as(centroids)
    labels = _batched_nearest(points, centroids, centroid_valid)
    return [KMeansResult(centroids[b, : ks[b]], labels[b, : len(groups[b])]) for b in range(len(groups))]


def _batched_nearest(points: Tensor, centroids: Tensor, centroid_valid: Tensor) -> Tensor:
    norms = (centroids * centroids).sum(-1).masked_fill(~centroid_valid, float("inf"))
    distances = torch.bmm(points, centroids.transpose(1, 2)).mul_(-2).add_(norms[:, None, :])
    return distances.argmin(-1)


def lloyd(points: Tensor, k: int, iterations: int, generator: torch.Generator) -> KMeansResult:
    """Flat k-means: k distinct random points as the start, ``iterations`` Lloyd steps, final assignment."""
    n = points.shape[0]
    if n <= k:
        return KMeansResult(points.clone(), torch.arange(n, device=points.device))
    start = torch.randperm(n, generator=generator, device=points.device)[:k]
    centroids = points[start].clone()
    for _ in range(iterations):
        labels = nearest(points, centroids)
        centroids = _centroid_means(points, labels, centroids)
    return KMeansResult(centroids, nearest(points, centroids))


def nearest(points: Tensor, centroids: Tensor) -> Tensor:
    """Index of the nearest centroid (squared L2) for every point, in memory-bounded blocks."""
    centroid_norms = (centroids * centroids).sum(1)
    block = max(1, _DISTANCE_BLOCK // max(1, centroids.shape[0]))
    labels = torch.empty(points.shape[0], dtype=torch.long, device=points.device)
    for start in range(0, points.shape[0], block):
        chunk = points[start:start + block]
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 is the same for every centroid
        distances = torch.addmm(centroid_norms, chunk, centroids.T, alpha=-2.0)
        labels[start:start + block] = distances.argmin(1)
    return labels


def _centroid_means(points: Tensor, labels: Tensor, previous: Tensor) -> Tensor:
    """Mean of each cluster's points (an empty cluster keeps its previous centroid), deterministically."""
    k = previous.shape[0]
    order = torch.sort(labels, stable=True).indices
    counts = torch.bincount(labels, minlength=k)
    ends = torch.cumsum(counts, 0)
    prefix = torch.cat([torch.zeros(1, points.shape[1], dtype=torch.float64, device=points.device),
                        torch.cumsum(points[order].double(), 0)])
    sums = prefix[ends] - prefix[ends - counts]
    means = (sums / counts.clamp_min(1)[:, None]).float()
    return torch.where(counts[:, None] > 0, means, previous)


def _members_by_cell(labels: Tensor, cells: int) -> list[Tensor]:
    order = torch.sort(labels, stable=True).indices
    counts = torch.bincount(labels, minlength=cells).tolist()
    return list(torch.split(order, counts))


def _allocate(counts: Tensor, k: int) -> Tensor:
    """Split k centroids over cells: one per non-empty cell, the rest in proportion to the cell sizes
    (largest remainder), never more than a cell's points. The total never exceeds k."""
    counts = counts.cpu().double()
    base = (counts > 0).double()
    spare = k - base.sum()
    share = counts / counts.sum() * spare
    extra = share.floor()
    remainder = int((spare - extra.sum()).item())
    if remainder > 0:
        extra[torch.argsort(share - extra, descending=True, stable=True)[:remainder]] += 1
    return torch.minimum(base + extra, counts).long()


def _principal_order(centroids: Tensor) -> Tensor:
    """Order of centroids along their first principal axis, so similar centroids get nearby labels."""
    if centroids.shape[0] < 3:
        return torch.arange(centroids.shape[0], device=centroids.device)
    centred = (centroids - centroids.mean(0)).double()
    covariance = centred.T @ centred
    _, vectors = torch.linalg.eigh(covariance.cpu())
    axis = vectors[:, -1].to(centred.device)
    axis = axis * torch.sign(axis[axis.abs().argmax()])  # eigenvector sign is arbitrary: fix it
    return torch.argsort(centred @ axis, stable=True)
