"""PlayCanvas SOG (version 2): the container format. Attribute packing and unpacking, the bundle, the reader.

The layout follows ``@playcanvas/splat-transform`` (its ``readSog`` / ``writeSog``); SOG.md beside DESIGN.md
records it. Every per-splat texture is ``width x height`` RGBA with ``width = ceil(sqrt(N)/4)*4``,
``height = ceil(N/width/4)*4``; splat i sits at texel i (row-major), the texels after N are zero.
The encoder that chooses codebooks, palettes and the splat order is ``spaceport.compress``.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from spaceport.errors import SpaceportError
from spaceport.formats.atomic import atomic_write_bytes
from spaceport.formats.gaussians import SH_REST_COUNTS, Gaussians, smallest_three

SOG_VERSION = 2
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
    largest, smaller = smallest_three(quats)
    smaller = smaller * math.sqrt(2)
    packed = np.empty((len(largest), 4), np.uint8)
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
