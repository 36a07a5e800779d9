"""SOG encoding: quantize a splat's attributes (codebooks, the SH palette by k-means) into the SOG images.

The container (packing, bundle, reader) is ``spaceport.formats.sog``; ``encode_sog`` takes an order (the PLAS
sort) and produces what it writes.
"""

from __future__ import annotations

import io
import json
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from spaceport import __version__
from spaceport.compress.kmeans import FIT_POINTS_PER_CENTROID, Codebook1D, KMeansResult, kmeans, quantize_1d
from spaceport.formats.gaussians import SH_REST_COUNTS, Gaussians
from spaceport.formats.sog import (
    FILES,
    MAX_PALETTE,
    PALETTE_COLUMNS,
    SOG_VERSION,
    pack_means,
    pack_opacity,
    pack_quats,
    texture_size,
)

GENERATOR = f"spaceport {__version__}"
# auto position bits: the median Gaussian moves by at most this fraction of its middle scale (measured on two
# trained CPU splats, bench/README.md: 12 bits on the 200 px SH-1 preview, 13 on the 256 px SH-3 one)
POSITION_ERROR_FRACTION = 0.15


def default_palette_size(count: int) -> int:
    """SH palette entries when none is asked for: the power of two nearest below count / 64, within
    256 .. 65,536 (15k splats: 256; 40k: 512; 1M: 8,192). splat-transform uses
    min(64, 2^floor(log2(N / 1024))) * 1024, about one entry per splat below 65k splats. Measured on a trained
    40k-splat SH-3 CPU splat (bench/README.md): 512 entries instead of 4,096 made the .sog 18% smaller for no
    measurable loss on the held-out photos (35.1 against 35.7 dB against the uncompressed splat's renders)."""
    share = max(count // 64, 1)
    return min(MAX_PALETTE, max(256, 2 ** (share.bit_length() - 1)))


def splat_transform_palette_size(count: int) -> int:
    """splat-transform 2.7.1's palette size, for comparisons."""
    exponent = math.floor(math.log2(count / 1024)) if count >= 1024 else 0
    return min(64, 2**exponent) * 1024


@dataclass
class SogContent:
    """What a .sog holds before WebP encoding: meta.json and the RGBA uint8 images by file name."""

    meta: dict
    images: dict[str, np.ndarray] = field(default_factory=dict)
    position_bits: int = 16  # bits of the 16-bit positions kept


@dataclass(frozen=True)
class WebpOptions:
    """Pillow's lossless WebP settings: ``method`` 0-6 and ``quality`` 0-100 trade time for size.

    Measured on SOG textures (a trained 38k-splat preview and 50k random splats): method 3 / quality 50
    is within 0.3% of the smallest setting short of method 6 / quality 100 (1% smaller, 250x slower),
    and 3x faster than method 4 (libwebp's default)."""

    method: int = 3
    quality: int = 50
    threads: int = field(default_factory=lambda: min(7, os.cpu_count() or 1))  # 7 images at most




@dataclass(frozen=True)
class Precision:
    """How finely values are stored within the SOG format (whose own limits are 16-bit positions and 256-entry
    codebooks): fewer distinct values make smaller WebP files. ``position_bits`` keeps the top bits of each
    16-bit position (the low byte's other bits are zero); ``rotation_bits`` and ``opacity_bits`` the top bits
    of their bytes (on an even grid from 0 to 255); the ``*_levels`` are codebook entries used."""

    position_bits: int | None = 16  # None: auto_position_bits
    rotation_bits: int = 8
    opacity_bits: int = 8
    scale_levels: int = 256
    colour_levels: int = 256
    sh_levels: int = 256


def encode_sog(g: Gaussians, order: np.ndarray, *, sh_bands: int = 3, palette_size: int | None = None,
               kmeans_iterations: int = 10, seed: int = 0, device: torch.device | str = "cpu",
               precision: Precision = Precision(),
               kmeans_fit_points: int | None = FIT_POINTS_PER_CENTROID) -> SogContent:
    """Quantize ``g`` into SOG images with splat ``order[i]`` at texel i. ``sh_bands`` above the input's
    degree is lowered to it; ``palette_size`` None means ``default_palette_size``.

    Codebooks and the palette do not depend on the order, so everything is computed in input order and only
    the per-splat bytes are permuted into texel order at the end (no copy of the float attributes)."""
    count = len(g)
    width, height = texture_size(count)
    order = np.asarray(order)

    def texture(per_splat: np.ndarray) -> np.ndarray:
        return _texture(per_splat[order], width, height)

    means_low, means_high, means_meta = pack_means(g.means)
    position_bits = precision.position_bits or auto_position_bits(g, means_meta)
    if position_bits < 16:
        means_low, means_high = _coarser_positions(means_low, means_high, 16 - position_bits)
    scales = _codebook(torch.as_tensor(g.scales, device=device), precision.scale_levels)
    colours = _codebook(torch.as_tensor(g.sh0, device=device), precision.colour_levels)
    content = SogContent(meta={
        "version": SOG_VERSION,
        "asset": {"generator": GENERATOR},
        "count": count,
        "means": means_meta,
        "scales": {"codebook": _codebook_list(scales.values), "files": FILES["scales"]},
        "quats": {"files": FILES["quats"]},
        "sh0": {"codebook": _codebook_list(colours.values), "files": FILES["sh0"]},
    })
    content.position_bits = position_bits
    opaque = np.full((count, 1), 255, np.uint8)
    images = content.images
    images["means_l.webp"] = texture(np.hstack([means_low, opaque]))
    images["means_u.webp"] = texture(np.hstack([means_high, opaque]))
    images["quats.webp"] = texture(_coarser_bytes(pack_quats(g.quats), precision.rotation_bits, channels=3))
    images["scales.webp"] = texture(np.hstack([scales.labels.cpu().numpy(), opaque]))
    opacity = _coarser_bytes(pack_opacity(g.opacities)[:, None], precision.opacity_bits)
    images["sh0.webp"] = texture(np.hstack([colours.labels.cpu().numpy(), opacity]))
    bands = min(sh_bands, g.sh_degree)
    if bands > 0 and not g.shN[:, :SH_REST_COUNTS[bands]].any():
        bands = 0  # every Gaussian's higher bands were dropped: no palette at all
    if bands > 0:
        palette = min(palette_size or default_palette_size(count), MAX_PALETTE)
        labels, content.meta["shN"] = _encode_palette(g, bands, palette, kmeans_iterations, seed, device, images,
                                                      precision.sh_levels, kmeans_fit_points)
        label_bytes = np.stack([labels & 0xFF, labels >> 8, np.zeros_like(labels), np.full_like(labels, 255)], 1)
        images["shN_labels.webp"] = texture(label_bytes.astype(np.uint8))
    return content


def auto_position_bits(g: Gaussians, means_meta: dict, fraction: float = POSITION_ERROR_FRACTION) -> int:
    """The fewest bits (8..16) of SOG's 16-bit positions that move the median Gaussian by at most ``fraction``
    of its middle scale: a splat of finer Gaussians (more of them, trained at a higher resolution) keeps more
    bits. Rounding 16-bit steps near v moves a point by (1 + |v|) times the step of the log-transformed axis."""
    span = np.asarray(means_meta["maxs"]) - np.asarray(means_meta["mins"])
    world_step = (np.where(span > 0, span, 1.0) / 65535 * (1 + np.abs(g.means.astype(np.float64)))).max(1)
    middle_scale = np.exp(np.sort(g.scales.astype(np.float64), 1)[:, 1])
    relative = np.median(world_step / middle_scale)
    for bits in range(8, 16):
        if relative * 2 ** (16 - bits) / 2 <= fraction:
            return bits
    return 16


def _coarser_positions(low: np.ndarray, high: np.ndarray, shift: int) -> tuple[np.ndarray, np.ndarray]:
    """16-bit positions rounded to multiples of 2**shift (the low bits become zero)."""
    step = 1 << shift
    quantized = low.astype(np.int64) | (high.astype(np.int64) << 8)
    quantized = np.minimum(np.rint(quantized / step).astype(np.int64) * step, 65535)  # the top stays exact
    return (quantized & 0xFF).astype(np.uint8), (quantized >> 8).astype(np.uint8)


def _coarser_bytes(values: np.ndarray, bits: int, channels: int | None = None) -> np.ndarray:
    """Bytes moved to the nearest of 2**bits values spread evenly over 0..255 (the first ``channels`` only)."""
    if bits >= 8:
        return values
    top = (1 << bits) - 1
    out = values.copy()
    part = out[:, :channels] if channels is not None else out
    part[...] = np.rint(np.rint(part / 255 * top) * 255 / top).astype(np.uint8)
    return out


def _codebook(values: torch.Tensor, levels: int) -> Codebook1D:
    """A ``levels``-entry codebook, padded with zeros (short in meta.json; no label points at them) to the 256
    entries the format lists."""
    codebook = quantize_1d(values, levels=levels)
    if levels < 256:
        codebook.values = torch.cat([codebook.values, codebook.values.new_zeros(256 - levels)])
    return codebook


def _codebook_list(values: torch.Tensor) -> list[float]:
    """The float32 values at their shortest decimal that reads back to the same float32 (meta.json is stored
    uncompressed: 9 digits instead of 17 make it 40% smaller)."""
    return [float(str(v)) for v in values.float().cpu().numpy()]


def _texture(per_splat: np.ndarray, width: int, height: int) -> np.ndarray:
    """(height, width, 4) uint8 with splat i at texel i and zeros after the last splat."""
    texels = np.zeros((width * height, 4), np.uint8)
    texels[: len(per_splat), : per_splat.shape[1]] = per_splat
    return texels.reshape(height, width, 4)


def _encode_palette(g: Gaussians, bands: int, palette: int, iterations: int, seed: int,
                    device: torch.device | str, images: dict[str, np.ndarray],
                    levels: int = 256, fit_points: int | None = FIT_POINTS_PER_CENTROID) -> tuple[np.ndarray, dict]:
    """The SH palette image and meta entry; returns each splat's palette label (input order) too."""
    coefficients = SH_REST_COUNTS[bands]
    count = len(g)
    # one vector per splat, coefficient-major (coefficient j's R, G, B side by side): what a centroid texel holds
    vectors = torch.as_tensor(np.ascontiguousarray(g.shN[:, :coefficients, :]), device=device)
    clusters = _palette(vectors.reshape(count, coefficients * 3), palette, iterations, seed, fit_points)
    values = _codebook(clusters.centroids, levels)
    centroid_count = clusters.centroids.shape[0]
    if centroid_count > MAX_PALETTE:
        raise ValueError(f"SH palette of {centroid_count} entries does not fit 16-bit labels")
    # centroid i, coefficient j at texel (i * coefficients + j) of a 64 * coefficients wide image
    rows = math.ceil(centroid_count / PALETTE_COLUMNS)
    centroid_texels = np.zeros((rows * PALETTE_COLUMNS * coefficients, 4), np.uint8)
    centroid_texels[: centroid_count * coefficients, :3] = values.labels.reshape(-1, 3).cpu().numpy()
    centroid_texels[: centroid_count * coefficients, 3] = 255
    images["shN_centroids.webp"] = centroid_texels.reshape(rows, PALETTE_COLUMNS * coefficients, 4)
    meta = {"count": centroid_count, "bands": bands, "codebook": _codebook_list(values.values),
            "files": FILES["shN"]}
    return clusters.labels.cpu().numpy(), meta


def _palette(vectors: torch.Tensor, palette: int, iterations: int, seed: int,
             fit_points: int | None = FIT_POINTS_PER_CENTROID) -> KMeansResult:
    """k-means palette of the SH vectors. Gaussians whose higher bands are all zero (dropped as negligible)
    share entry 0, a zero vector (decoded as the value codebook's entry nearest 0), and stay out of the
    clustering: the other entries go to the Gaussians whose view-dependent colour shows."""
    silent = ~vectors.any(1)
    if not silent.any() or palette < 2:
        return kmeans(vectors, palette, iterations, seed, fit_points_per_centroid=fit_points)
    labels = torch.zeros(len(vectors), dtype=torch.long, device=vectors.device)
    centroids = torch.zeros(1, vectors.shape[1], device=vectors.device)
    if not silent.all():
        clusters = kmeans(vectors[~silent], palette - 1, iterations, seed, fit_points_per_centroid=fit_points)
        labels[~silent] = clusters.labels + 1
        centroids = torch.cat([centroids, clusters.centroids])
    return KMeansResult(centroids, labels)


def encode_webp(image: np.ndarray, options: WebpOptions = WebpOptions()) -> bytes:
    """Lossless WebP; ``exact`` keeps the colour of texels whose alpha is 0 (opacity 0 is data here)."""
    buffer = io.BytesIO()
    Image.fromarray(image, "RGBA").save(buffer, "WEBP", lossless=True, exact=True, method=options.method,
                                        quality=options.quality)
    return buffer.getvalue()


def encode_files(content: SogContent, options: WebpOptions = WebpOptions()) -> dict[str, bytes]:
    """meta.json and the WebP files by name (WebP encodes run in threads: Pillow releases the GIL)."""
    names = list(content.images)
    with ThreadPoolExecutor(max_workers=max(1, options.threads)) as pool:
        encoded = list(pool.map(lambda name: encode_webp(content.images[name], options), names))
    files = {"meta.json": json.dumps(content.meta, separators=(",", ":")).encode()}
    files.update(zip(names, encoded, strict=True))
    return files
