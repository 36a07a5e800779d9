"""PlayCanvas SOG (version 2): quantized attribute textures, their WebP files, the bundle, and a reader.

The layout follows ``@playcanvas/splat-transform`` 2.7.1, the reference (its ``readSog`` / ``writeSog``);
/work/shared/SOG.md records it. Every per-splat texture is ``width x height`` RGBA with
``width = ceil(sqrt(N)/4)*4``, ``height = ceil(N/width/4)*4``; splat i sits at texel i (row-major), the
texels after N are zero. This module packs and unpacks attributes that are already in texel order;
``encode_sog`` takes an order (the PLAS sort) and does the rest.
"""

from __future__ import annotations

import io
import json
import math
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from spaceport import __version__
from spaceport.compress.kmeans import kmeans, quantize_1d
from spaceport.splat.ply import SH_REST_COUNTS, Gaussians
from spaceport.workspace import SpaceportError, atomic_write_bytes

SOG_VERSION = 2
GENERATOR = f"spaceport {__version__}"
PALETTE_COLUMNS = 64  # centroids per row of shN_centroids.webp (fixed by the readers)
MAX_PALETTE = 65536  # labels are 16-bit
QUAT_TAG = 252  # alpha of quats.webp = 252 + index of the dropped (largest) component
FILES = {
    "means": ["means_l.webp", "means_u.webp"],
    "scales": ["scales.webp"],
    "quats": ["quats.webp"],
    "sh0": ["sh0.webp"],
    "shN": ["shN_centroids.webp", "shN_labels.webp"],
}


def texture_size(count: int) -> tuple[int, int]:
    """(width, height) of the per-splat textures for ``count`` splats."""
    width = math.ceil(math.sqrt(count) / 4) * 4
    height = math.ceil(count / width / 4) * 4
    return width, height


def default_palette_size(count: int) -> int:
    """SH palette entries when none is asked for: the power of two nearest below count / 8, within
    1,024 .. 65,536. (splat-transform: min(64, 2^floor(log2(N / 1024))) * 1024, which is about one entry
    per splat below 65k splats.) Measured on a trained 38k-splat preview: 4,096 entries instead of
    splat-transform's 32,768 made the .sog a quarter smaller for < 0.01 dB on held-out photos."""
    eighth = max(count // 8, 1)
    return min(MAX_PALETTE, max(1024, 2 ** (eighth.bit_length() - 1)))


def splat_transform_palette_size(count: int) -> int:
    """splat-transform 2.7.1's palette size, for comparisons."""
    exponent = math.floor(math.log2(count / 1024)) if count >= 1024 else 0
    return min(64, 2**exponent) * 1024


@dataclass
class SogContent:
    """What a .sog holds before WebP encoding: meta.json and the RGBA uint8 images by file name."""

    meta: dict
    images: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass(frozen=True)
class WebpOptions:
    """Pillow's lossless WebP settings: ``method`` 0-6 and ``quality`` 0-100 trade time for size.

    Measured on SOG textures (a trained 38k-splat preview and 50k random splats): method 3 / quality 50
    is within 0.3% of the smallest setting short of method 6 / quality 100 (1% smaller, 250x slower),
    and 3x faster than method 4 (libwebp's default)."""

    method: int = 3
    quality: int = 50
    threads: int = field(default_factory=lambda: min(7, os.cpu_count() or 1))  # 7 images at most


# -- attribute packing ---------------------------------------------------------------------------


def log_transform(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


def inverse_log_transform(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.expm1(np.abs(values))


def pack_means(means: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """16-bit positions after the log transform: (low bytes (N,3), high bytes (N,3), meta entry)."""
    transformed = log_transform(means.astype(np.float64))
    mins, maxs = transformed.min(0), transformed.max(0)
    span = np.where(maxs > mins, maxs - mins, 1.0)
    quantized = np.clip(np.rint(65535 * (transformed - mins) / span), 0, 65535).astype(np.uint16)
    meta = {"mins": mins.tolist(), "maxs": maxs.tolist(), "files": FILES["means"]}
    return (quantized & 0xFF).astype(np.uint8), (quantized >> 8).astype(np.uint8), meta


def unpack_means(low: np.ndarray, high: np.ndarray, meta: dict) -> np.ndarray:
    quantized = low.astype(np.float64) + 256.0 * high.astype(np.float64)
    mins, maxs = np.asarray(meta["mins"], np.float64), np.asarray(meta["maxs"], np.float64)
    span = np.where(maxs - mins != 0, maxs - mins, 1.0)  # the reference reader's "|| 1"
    return inverse_log_transform(mins + span * (quantized / 65535)).astype(np.float32)


def pack_quats(quats: np.ndarray) -> np.ndarray:
    """(N, 4) RGBA: the three smaller components of the unit quaternion (largest made positive) times
    sqrt(2) in [-1, 1] mapped to bytes; A = 252 + index of the largest. A zero quaternion becomes identity."""
    q = quats.astype(np.float64)
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norms > 0, q / np.where(norms > 0, norms, 1), np.array([1.0, 0, 0, 0]))
    largest = np.abs(q).argmax(1)
    rows = np.arange(len(q))
    q *= np.where(q[rows, largest] < 0, -1.0, 1.0)[:, None]
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    smaller = q[rows[:, None], others] * math.sqrt(2)
    packed = np.empty((len(q), 4), np.uint8)
    packed[:, :3] = np.clip(np.rint(255 * (smaller * 0.5 + 0.5)), 0, 255)
    packed[:, 3] = QUAT_TAG + largest
    return packed


def unpack_quats(packed: np.ndarray) -> np.ndarray:
    """(N, 4) w, x, y, z unit quaternions; an invalid tag decodes to identity like the reference reader."""
    tag = packed[:, 3].astype(np.int64) - QUAT_TAG
    valid = (tag >= 0) & (tag <= 3)
    largest = np.where(valid, tag, 0)
    smaller = (packed[:, :3].astype(np.float64) / 255 * 2 - 1) / math.sqrt(2)
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    q = np.zeros((len(packed), 4))
    rows = np.arange(len(packed))
    q[rows[:, None], others] = smaller
    q[rows, largest] = np.sqrt(np.maximum(0.0, 1 - (smaller**2).sum(1)))
    q[~valid] = [1.0, 0, 0, 0]
    return q.astype(np.float32)


def pack_opacity(logits: np.ndarray) -> np.ndarray:
    alpha = 1 / (1 + np.exp(-logits.astype(np.float64)))
    return np.clip(np.rint(alpha * 255), 0, 255).astype(np.uint8)


def unpack_opacity(packed: np.ndarray) -> np.ndarray:
    alpha = np.clip(packed.astype(np.float64) / 255, 1e-6, 1 - 1e-6)  # the reference reader's clamp
    return np.log(alpha / (1 - alpha)).astype(np.float32)


# -- encoding ------------------------------------------------------------------------------------


def encode_sog(g: Gaussians, order: np.ndarray, *, sh_bands: int = 3, palette_size: int | None = None,
               kmeans_iterations: int = 10, seed: int = 0, device: torch.device | str = "cpu") -> SogContent:
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
    scales = quantize_1d(torch.as_tensor(g.scales, device=device))
    colours = quantize_1d(torch.as_tensor(g.sh0, device=device))
    content = SogContent(meta={
        "version": SOG_VERSION,
        "asset": {"generator": GENERATOR},
        "count": count,
        "means": means_meta,
        "scales": {"codebook": _codebook_list(scales.values), "files": FILES["scales"]},
        "quats": {"files": FILES["quats"]},
        "sh0": {"codebook": _codebook_list(colours.values), "files": FILES["sh0"]},
    })
    opaque = np.full((count, 1), 255, np.uint8)
    images = content.images
    images["means_l.webp"] = texture(np.hstack([means_low, opaque]))
    images["means_u.webp"] = texture(np.hstack([means_high, opaque]))
    images["quats.webp"] = texture(pack_quats(g.quats))
    images["scales.webp"] = texture(np.hstack([scales.labels.cpu().numpy(), opaque]))
    images["sh0.webp"] = texture(np.hstack([colours.labels.cpu().numpy(), pack_opacity(g.opacities)[:, None]]))
    bands = min(sh_bands, g.sh_degree)
    if bands > 0:
        palette = min(palette_size or default_palette_size(count), MAX_PALETTE)
        labels, content.meta["shN"] = _encode_palette(g, bands, palette, kmeans_iterations, seed, device, images)
        label_bytes = np.stack([labels & 0xFF, labels >> 8, np.zeros_like(labels), np.full_like(labels, 255)], 1)
        images["shN_labels.webp"] = texture(label_bytes.astype(np.uint8))
    return content


def _codebook_list(values: torch.Tensor) -> list[float]:
    return [float(v) for v in values.float().cpu().numpy()]


def _texture(per_splat: np.ndarray, width: int, height: int) -> np.ndarray:
    """(height, width, 4) uint8 with splat i at texel i and zeros after the last splat."""
    texels = np.zeros((width * height, 4), np.uint8)
    texels[: len(per_splat), : per_splat.shape[1]] = per_splat
    return texels.reshape(height, width, 4)


def _encode_palette(g: Gaussians, bands: int, palette: int, iterations: int, seed: int,
                    device: torch.device | str, images: dict[str, np.ndarray]) -> tuple[np.ndarray, dict]:
    """The SH palette image and meta entry; returns each splat's palette label (input order) too."""
    coefficients = SH_REST_COUNTS[bands]
    count = len(g)
    # one vector per splat, coefficient-major (coefficient j's R, G, B side by side): what a centroid texel holds
    vectors = torch.as_tensor(np.ascontiguousarray(g.shN[:, :coefficients, :]), device=device)
    clusters = kmeans(vectors.reshape(count, coefficients * 3), palette, iterations, seed)
    values = quantize_1d(clusters.centroids)
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


# -- files ---------------------------------------------------------------------------------------


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
    files = {"meta.json": json.dumps(content.meta).encode()}
    files.update(zip(names, encoded, strict=True))
    return files


def bundle(files: dict[str, bytes]) -> bytes:
    """The .sog zip: entries stored (WebP is already compressed) with a fixed timestamp, so the same
    content gives the same bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def write_sog(path: Path, files: dict[str, bytes], unbundled_dir: Path | None = None) -> int:
    """Write the .sog bundle (and, if asked, meta.json + WebP files in ``unbundled_dir``); returns the
    bundle's size in bytes. Every file is written atomically."""
    data = bundle(files)
    atomic_write_bytes(Path(path), data)
    if unbundled_dir is not None:
        for name, payload in files.items():
            atomic_write_bytes(Path(unbundled_dir) / name, payload)
    return len(data)


# -- reading -------------------------------------------------------------------------------------


def read_sog(path: str | Path) -> Gaussians:
    """Read a .sog bundle, or an unbundled meta.json with its WebP files beside it, back to Gaussians."""
    path = Path(path)
    if not path.exists():
        raise SpaceportError(f"{path}: no such file; pass a .sog bundle or an unbundled meta.json")
    if path.suffix.lower() == ".json":
        return decode_files(lambda name: _read_beside(path, name), str(path))
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())

            def read(name: str) -> bytes:
                if name not in names:
                    raise SpaceportError(f"{path}: the bundle has no '{name}'; it is not a complete SOG file")
                return archive.read(name)

            return decode_files(read, str(path))
    except zipfile.BadZipFile as exc:
        raise SpaceportError(f"{path}: not a zip archive ({exc}); a .sog may be truncated") from exc


def _read_beside(meta_path: Path, name: str) -> bytes:
    target = meta_path.parent / name
    if not target.exists():
        raise SpaceportError(f"{target}: missing; an unbundled SOG needs every file meta.json names")
    return target.read_bytes()


def decode_files(read, source: str) -> Gaussians:
    """Decode SOG files given ``read(name) -> bytes``; errors name ``source``."""
    try:
        meta = json.loads(read("meta.json"))
    except json.JSONDecodeError as exc:
        raise SpaceportError(f"{source}: meta.json is not valid JSON ({exc})") from exc
    if meta.get("version") != SOG_VERSION:
        raise SpaceportError(f"{source}: SOG version {meta.get('version')!r}; only version 2 is supported")
    count = int(meta["count"])

    def image(name: str) -> np.ndarray:
        try:
            pixels = np.asarray(Image.open(io.BytesIO(read(name))).convert("RGBA"))
        except OSError as exc:
            raise SpaceportError(f"{source}: {name} is not a readable WebP image ({exc})") from exc
        return pixels.reshape(-1, 4)

    def per_splat(name: str) -> np.ndarray:
        texels = image(name)
        if len(texels) < count:
            raise SpaceportError(f"{source}: {name} has {len(texels)} texels for {count} splats")
        return texels[:count]

    low, high = (per_splat(name) for name in meta["means"]["files"])
    means = unpack_means(low[:, :3], high[:, :3], meta["means"])
    scale_codebook = np.asarray(meta["scales"]["codebook"], np.float32)
    scales = scale_codebook[per_splat(meta["scales"]["files"][0])[:, :3]]
    quats = unpack_quats(per_splat(meta["quats"]["files"][0]))
    sh0_texels = per_splat(meta["sh0"]["files"][0])
    sh0 = np.asarray(meta["sh0"]["codebook"], np.float32)[sh0_texels[:, :3]]
    opacities = unpack_opacity(sh0_texels[:, 3])
    shN = np.zeros((count, 0, 3), np.float32)
    if meta.get("shN"):
        shN = _decode_palette(meta["shN"], image, per_splat, count, source)
    return Gaussians(means=means, scales=scales, quats=quats, opacities=opacities, sh0=sh0, shN=shN)


def _decode_palette(meta: dict, image, per_splat, count: int, source: str) -> np.ndarray:
    bands = int(meta["bands"])
    coefficients = SH_REST_COUNTS[bands]
    centroid_texels = image(meta["files"][0])
    labels_texels = per_splat(meta["files"][1])
    codebook = np.asarray(meta["codebook"], np.float32)
    palette_count = int(meta["count"])
    if len(centroid_texels) < palette_count * coefficients:
        raise SpaceportError(f"{source}: {meta['files'][0]} is too small for {palette_count} centroids")
    # texel (i * coefficients + j) holds centroid i's coefficient j, R,G,B = the three channels
    centroids = codebook[centroid_texels[: palette_count * coefficients, :3]].reshape(palette_count,
                                                                                     coefficients, 3)
    labels = labels_texels[:, 0].astype(np.int64) | (labels_texels[:, 1].astype(np.int64) << 8)
    shN = np.zeros((count, coefficients, 3), np.float32)
    known = labels < palette_count  # the reference reader leaves out-of-range labels at zero
    shN[known] = centroids[labels[known]]
    return shN
