"""Niantic's ``.spz`` (versions 2 and 3 written; 2, 3 and 4 read), as the nianticlabs/spz library defines it.

Versions 2 and 3 are one gzip stream holding a 16-byte header and the attributes, each as one block for all
splats, in this order:

- header (little-endian): magic ``NGSP`` (0x5053474e), version (uint32), splat count (uint32), SH degree,
  fractional bits, flags (bit 0: antialiased), reserved (uint8 each);
- positions: 3 x 24-bit signed fixed point per splat, ``round(v * 2**fractional_bits)``;
- alphas: ``round(255 * sigmoid(opacity))``;
- colours: ``round(255 * (f_dc * 0.15 + 0.5))`` (0.15, not SH_C0: room for DC values outside [0, 1]);
- scales: ``round((log_scale + 10) * 16)``, so log-scales in [-10, 5.94] in steps of 1/16;
- rotations: version 2 stores x, y, z of the unit quaternion with w >= 0 as ``round(127.5 * c + 127.5)``;
  version 3 the smallest three: a 32-bit word with the index of the largest of (x, y, z, w) in its top two
  bits, then for each other component (in x, y, z, w order, first one highest) a sign bit and 9 bits of
  ``|c| / sqrt(1/2)``, all relative to the largest made positive;
- SH: per splat, per coefficient, R G B bytes ``round(128 * v) + 128``, rounded to a multiple of 8 for
  degree 1 and of 16 above (the library's default 5 and 4 kept bits), read back as ``(b - 128) / 128``.

Version 4 (what splat-transform 3.7 writes by default) has a 32-byte plain header (count, SH degree,
fractional bits, flags, stream count, offset of a table of contents) and each attribute as its own zstd stream
listed in that table; the bytes inside each stream are the same.

Coordinates are stored as they are given (the library's ``UNSPECIFIED`` system), as splat-transform writes and
reads them, so a PLY's axes survive a round trip through either tool.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from spaceport.errors import SpaceportError
from spaceport.formats.atomic import atomic_write_to
from spaceport.formats.gaussians import SH_REST_COUNTS, Gaussians

MAGIC = 0x5053474E
COLOR_SCALE = 0.15
DEFAULT_FRACTIONAL_BITS = 12
SH1_BITS, SH_REST_BITS = 5, 4
FLAG_ANTIALIASED = 0x1
FLAG_HAS_EXTENSIONS = 0x2
_HEADER_V3 = struct.Struct("<IIIBBBB")
_HEADER_V4 = struct.Struct("<IIIBBBBI12x")
_POSITION_LIMIT = 2**23 - 1


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-values.astype(np.float64)))


def _to_byte(values: np.ndarray) -> np.ndarray:
    return np.clip(np.round(values), 0, 255).astype(np.uint8)


def fractional_bits_for(means: np.ndarray) -> int:
    """12 (about 0.24 mm per unit of metres, the library's choice), fewer when the scene would not fit 24 bits."""
    largest = float(np.abs(means).max()) if len(means) else 0.0
    bits = DEFAULT_FRACTIONAL_BITS
    while bits > 0 and largest * 2**bits > _POSITION_LIMIT:
        bits -= 1
    if largest * 2**bits > _POSITION_LIMIT:
        raise ValueError(f"positions up to {largest:g} do not fit .spz's 24-bit coordinates")
    return bits


def _pack_positions(means: np.ndarray, bits: int) -> bytes:
    fixed = np.round(means.astype(np.float64) * 2**bits).astype(np.int64).reshape(-1)
    fixed = np.clip(fixed, -_POSITION_LIMIT - 1, _POSITION_LIMIT) & 0xFFFFFF
    return np.stack([fixed & 0xFF, (fixed >> 8) & 0xFF, (fixed >> 16) & 0xFF], 1).astype(np.uint8).tobytes()


def _unpack_positions(raw: np.ndarray, count: int, bits: int) -> np.ndarray:
    triples = raw.reshape(count * 3, 3).astype(np.int64)
    fixed = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
    fixed = np.where(fixed & 0x800000, fixed - (1 << 24), fixed)
    return (fixed / 2**bits).astype(np.float32).reshape(count, 3)


def _unit_xyzw(quats: np.ndarray) -> np.ndarray:
    """Our (w, x, y, z) quaternions as unit (x, y, z, w); a zero quaternion becomes identity."""
    q = quats.astype(np.float64)[:, [1, 2, 3, 0]]
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    return np.where(norms > 0, q / np.where(norms > 0, norms, 1), np.array([0, 0, 0, 1.0]))


def _pack_rotations_v2(quats: np.ndarray) -> bytes:
    q = _unit_xyzw(quats)
    q *= np.where(q[:, 3:] < 0, -1.0, 1.0)
    return _to_byte(q[:, :3] * 127.5 + 127.5).tobytes()


def _pack_rotations_v3(quats: np.ndarray) -> bytes:
    q = _unit_xyzw(quats)
    largest = np.abs(q).argmax(1)
    rows = np.arange(len(q))
    q *= np.where(q[rows, largest] < 0, -1.0, 1.0)[:, None]
    word = largest.astype(np.uint32)
    for component in range(4):
        keep = largest != component
        magnitude = np.floor(511 * np.abs(q[:, component]) / math.sqrt(0.5) + 0.5).astype(np.uint32)
        bits = ((q[:, component] < 0).astype(np.uint32) << 9) | np.minimum(magnitude, 511)
        word = np.where(keep, (word << 10) | bits, word)
    return word.astype("<u4").tobytes()


def _unpack_rotations(raw: np.ndarray, count: int, version: int) -> np.ndarray:
    """(N, 4) w, x, y, z."""
    if version == 2:
        xyz = raw.reshape(count, 3).astype(np.float64) / 127.5 - 1
        w = np.sqrt(np.maximum(0.0, 1 - (xyz**2).sum(1)))
        return np.column_stack([w, xyz]).astype(np.float32)
    word = raw.view("<u4").astype(np.int64)
    largest = word >> 30
    q = np.zeros((count, 4))
    for component in (3, 2, 1, 0):  # the last packed component sits in the lowest bits
        take = largest != component
        value = math.sqrt(0.5) * (word & 511) / 511
        value = np.where((word >> 9) & 1, -value, value)
        q[:, component] = np.where(take, value, 0.0)
        word = np.where(take, word >> 10, word)
    rows = np.arange(count)
    q[rows, largest] = np.sqrt(np.maximum(0.0, 1 - (q**2).sum(1)))
    return q[:, [3, 0, 1, 2]].astype(np.float32)


def _quantize_sh(values: np.ndarray, bits: int) -> np.ndarray:
    bucket = 1 << (8 - bits)
    q = np.round(values.astype(np.float64) * 128) + 128
    q = np.floor((q + bucket // 2) / bucket) * bucket
    return np.clip(q, 0, 255).astype(np.uint8)


def encode_spz(g: Gaussians, version: int = 3, antialiased: bool = False) -> bytes:
    """The gzip-compressed .spz bytes (version 2 or 3) of ``g``, in the given order."""
    if version not in (2, 3):
        raise ValueError(f".spz version {version}: we write versions 2 and 3")
    count = len(g)
    bits = fractional_bits_for(g.means)
    degree = g.sh_degree
    header = _HEADER_V3.pack(MAGIC, version, count, degree, bits, FLAG_ANTIALIASED if antialiased else 0, 0)
    coefficients = SH_REST_COUNTS[degree]
    sh = np.zeros((count, coefficients, 3), np.uint8)
    if coefficients:
        sh[:, :3] = _quantize_sh(g.shN[:, :3], SH1_BITS)
        sh[:, 3:] = _quantize_sh(g.shN[:, 3:], SH_REST_BITS)
    rotations = _pack_rotations_v2(g.quats) if version == 2 else _pack_rotations_v3(g.quats)
    payload = b"".join([
        header,
        _pack_positions(g.means, bits),
        _to_byte(255 * _sigmoid(g.opacities)).tobytes(),
        _to_byte(255 * (g.sh0.astype(np.float64) * COLOR_SCALE + 0.5)).tobytes(),
        _to_byte((g.scales.astype(np.float64) + 10) * 16).tobytes(),
        rotations,
        sh.tobytes(),
    ])
    return gzip.compress(payload, compresslevel=9, mtime=0)


def write_spz(path: str | Path, g: Gaussians, version: int = 3) -> int:
    """Write ``g`` as .spz (atomically); returns the file size in bytes."""
    data = encode_spz(g, version)
    with atomic_write_to(path) as file:
        file.write(data)
    return len(data)


def _attribute_sizes(count: int, degree: int, version: int) -> list[int]:
    sizes = [count * 9, count, count * 3, count * 3, count * (3 if version == 2 else 4)]
    if degree:
        sizes.append(count * SH_REST_COUNTS[degree] * 3)
    return sizes


def _streams_v4(data: bytes, count: int, degree: int, source: str) -> list[bytes]:
    try:
        import zstandard
    except ImportError as exc:  # a declared dependency; only a broken install lacks it
        raise SpaceportError(f"{source}: .spz version 4 needs the 'zstandard' package; pip install zstandard") \
            from exc
    _, _, _, _, _, _, streams, toc = _HEADER_V4.unpack_from(data)
    sizes = _attribute_sizes(count, degree, 4)
    if streams != len(sizes) or toc < _HEADER_V4.size or toc + 16 * streams > len(data):
        raise SpaceportError(f"{source}: .spz version 4 table of contents is damaged ({streams} streams at {toc})")
    offset = toc + 16 * streams
    decompressor = zstandard.ZstdDecompressor()
    blocks = []
    for index, expected in enumerate(sizes):
        compressed, uncompressed = struct.unpack_from("<QQ", data, toc + 16 * index)
        if uncompressed != expected or offset + compressed > len(data):
            raise SpaceportError(f"{source}: .spz stream {index} is {uncompressed} bytes, expected {expected}; "
                                 "the file is damaged or truncated")
        blocks.append(decompressor.decompress(data[offset:offset + compressed], max_output_size=expected))
        offset += compressed
    return blocks


def read_spz(path: str | Path) -> Gaussians:
    """Read a .spz file (version 2, 3 or 4) back to Gaussians; errors name the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise SpaceportError(f"{path}: no such file; pass a .spz file")
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise SpaceportError(f"{path}: the gzip stream is broken ({exc}); the file may be truncated") from exc
    if len(data) < _HEADER_V3.size or struct.unpack_from("<I", data)[0] != MAGIC:
        raise SpaceportError(f"{path}: no NGSP header; not a .spz file")
    _, version, count, degree, bits, flags, _ = _HEADER_V3.unpack_from(data)
    if version not in (2, 3, 4):
        raise SpaceportError(f"{path}: .spz version {version}; versions 2, 3 and 4 are supported")
    if degree > 3:
        raise SpaceportError(f"{path}: SH degree {degree}; at most 3 is supported")
    if flags & FLAG_HAS_EXTENSIONS and version < 4:
        raise SpaceportError(f"{path}: .spz extensions (flag 0x2) are not supported")
    sizes = _attribute_sizes(count, degree, version)
    if version == 4:
        blocks = _streams_v4(data, count, degree, str(path))
    else:
        if len(data) < _HEADER_V3.size + sum(sizes):
            raise SpaceportError(f"{path}: {len(data)} bytes after gzip, {_HEADER_V3.size + sum(sizes)} needed for "
                                 f"{count} splats; the file is truncated")
        offsets = np.cumsum([_HEADER_V3.size, *sizes])
        blocks = [data[start:end] for start, end in zip(offsets[:-1], offsets[1:], strict=True)]
    raw = [np.frombuffer(block, np.uint8) for block in blocks]
    alpha = np.clip(raw[1] / 255.0, 1e-6, 1 - 1e-6)  # off the asymptotes, like the reference readers
    coefficients = SH_REST_COUNTS[degree]
    shN = np.zeros((count, coefficients, 3), np.float32)
    if coefficients:
        shN = ((raw[5].reshape(count, coefficients, 3).astype(np.float32) - 128) / 128)
    return Gaussians(
        means=_unpack_positions(raw[0], count, bits),
        scales=(raw[3].reshape(count, 3) / 16.0 - 10).astype(np.float32),
        quats=_unpack_rotations(raw[4], count, version),
        opacities=np.log(alpha / (1 - alpha)).astype(np.float32),
        sh0=((raw[2].reshape(count, 3) / 255.0 - 0.5) / COLOR_SCALE).astype(np.float32),
        shN=np.ascontiguousarray(shN, dtype=np.float32),
    )
