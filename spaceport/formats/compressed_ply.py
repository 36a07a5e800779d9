"""PlayCanvas compressed PLY (``.compressed.ply``): what SuperSplat and ``splat-transform`` write and read.

A binary little-endian PLY with three elements (the layout of splat-transform 3.7.0's writer and reader):

- ``chunk`` (one per 256 splats, float32): ``min_x min_y min_z max_x max_y max_z``, the same six for the
  log-scales (``min_scale_x`` .. ``max_scale_z``, clamped to [-20, 20]) and for the colours
  (``min_r`` .. ``max_b``, of ``0.5 + SH_C0 * f_dc``).
- ``vertex`` (uint32 each): ``packed_position`` and ``packed_scale`` (11, 10, 11 bits of x, y, z normalized to
  the chunk's range, x in the top bits), ``packed_rotation`` (2 bits: index of the largest quaternion component
  in rot_0..rot_3 order, made positive; then the other three, each ``c / sqrt(2) + 0.5`` in 10 bits, first
  one highest), ``packed_color`` (R, G, B normalized to the chunk's range and sigmoid(opacity), 8 bits each, R
  in the top byte).
- ``sh`` (only with SH bands, uint8 ``f_rest_0..``, PLY order): ``trunc((v / 8 + 0.5) * 256)`` clamped to
  0..255; read back as ``((b + 0.5) / 256 - 0.5) * 8``, 0 and 255 as exactly -4 and 4.

Splat i of the file belongs to chunk ``i // 256``; splats are written in Morton order of their positions, so a
chunk's ranges are tight.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from spaceport.errors import SpaceportError
from spaceport.formats.atomic import atomic_write_to
from spaceport.formats.gaussians import SH_REST_COUNTS, Gaussians, smallest_three

CHUNK_SIZE = 256
SH_C0 = 0.28209479177387814
SCALE_LIMIT = 20.0
CHUNK_PROPERTIES = [
    "min_x", "min_y", "min_z", "max_x", "max_y", "max_z",
    "min_scale_x", "min_scale_y", "min_scale_z", "max_scale_x", "max_scale_y", "max_scale_z",
    "min_r", "min_g", "min_b", "max_r", "max_g", "max_b",
]
VERTEX_PROPERTIES = ["packed_position", "packed_rotation", "packed_scale", "packed_color"]
_REST_COUNT_TO_DEGREE = {3 * count: degree for degree, count in SH_REST_COUNTS.items()}


def morton_order(means: np.ndarray) -> np.ndarray:
    """Order of points along a 3D Z-order curve (as splat-transform sorts), 10 bits per axis."""
    low, high = means.min(0), means.max(0)
    cells = ((means - low) / np.where(high > low, high - low, 1) * 1023).astype(np.int64)
    code = np.zeros(len(means), np.int64)
    for bit in range(10):
        for axis in range(3):
            code |= ((cells[:, axis] >> bit) & 1) << (3 * bit + axis)
    return np.argsort(code, kind="stable")


def _chunk_ranges(values: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-chunk (min, max) of (N, D) ``values`` (the last chunk may be partial)."""
    chunks = math.ceil(count / CHUNK_SIZE)
    padded = np.concatenate([values, np.repeat(values[-1:], chunks * CHUNK_SIZE - count, axis=0)])
    grouped = padded.reshape(chunks, CHUNK_SIZE, -1)
    return grouped.min(1), grouped.max(1)


def _normalize(values: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """(v - low) / (high - low) in [0, 1] per splat against its chunk's range; a range below 1e-5 gives 0."""
    chunk = np.arange(len(values)) // CHUNK_SIZE
    low, high = low[chunk], high[chunk]
    span = high - low
    result = np.where(span < 1e-5, 0.0, (values - low) / np.where(span < 1e-5, 1.0, span))
    return np.clip(result, 0.0, 1.0)


def _unorm(values: np.ndarray, bits: int) -> np.ndarray:
    top = (1 << bits) - 1
    return np.clip(np.floor(values * top + 0.5), 0, top).astype(np.uint32)


def _pack_111011(normalized: np.ndarray) -> np.ndarray:
    return (_unorm(normalized[:, 0], 11) << 21) | (_unorm(normalized[:, 1], 10) << 11) | _unorm(normalized[:, 2], 11)


def _unpack_111011(packed: np.ndarray) -> np.ndarray:
    return np.stack([(packed >> 21) / 2047.0, ((packed >> 11) & 0x3FF) / 1023.0, (packed & 0x7FF) / 2047.0], 1)


def pack_rotations(quats: np.ndarray) -> np.ndarray:
    """Smallest-three quaternions in 2 + 3 x 10 bits (rot_0..rot_3 order); a zero quaternion becomes identity."""
    largest, smaller = smallest_three(quats)
    packed = largest.astype(np.uint32)
    for column in range(3):
        packed = (packed << 10) | _unorm(smaller[:, column] / math.sqrt(2) + 0.5, 10)
    return packed


def unpack_rotations(packed: np.ndarray) -> np.ndarray:
    largest = (packed >> 30).astype(np.int64)
    smaller = np.stack([((packed >> shift) & 0x3FF) / 1023.0 for shift in (20, 10, 0)], 1)
    smaller = (smaller - 0.5) * math.sqrt(2)
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    q = np.zeros((len(packed), 4))
    rows = np.arange(len(packed))
    q[rows[:, None], others] = smaller
    q[rows, largest] = np.sqrt(np.maximum(0.0, 1 - (smaller**2).sum(1)))
    return q.astype(np.float32)


def quantize_sh(values: np.ndarray) -> np.ndarray:
    return np.clip(np.trunc((values.astype(np.float64) / 8 + 0.5) * 256), 0, 255).astype(np.uint8)


def dequantize_sh(quantized: np.ndarray) -> np.ndarray:
    normalized = np.where(quantized == 0, 0.0, np.where(quantized == 255, 1.0, (quantized + 0.5) / 256))
    return ((normalized - 0.5) * 8).astype(np.float32)


def logit(alpha: np.ndarray) -> np.ndarray:
    """Inverse sigmoid, clamped off 0 and 1 so that bytes 0 and 255 stay finite (as splat-transform's SOG
    and .spz readers do)."""
    alpha = np.clip(alpha.astype(np.float64), 1e-6, 1 - 1e-6)
    return np.log(alpha / (1 - alpha)).astype(np.float32)


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-values.astype(np.float64)))


def encode_compressed_ply(g: Gaussians, generator: str = "spaceport") -> bytes:
    """The whole file for ``g`` (splats reordered by Morton order of their positions)."""
    g = g.subset(morton_order(g.means))
    count = len(g)
    if count == 0:
        raise ValueError("a compressed PLY needs at least one splat")
    colours = 0.5 + SH_C0 * g.sh0.astype(np.float64)
    ranges = [_chunk_ranges(g.means.astype(np.float64), count), _chunk_ranges(g.scales.astype(np.float64), count),
              _chunk_ranges(colours, count)]
    ranges[1] = (np.clip(ranges[1][0], -SCALE_LIMIT, SCALE_LIMIT), np.clip(ranges[1][1], -SCALE_LIMIT, SCALE_LIMIT))
    chunk_data = np.concatenate([part for low_high in ranges for part in low_high], 1).astype("<f4")
    vertex = np.empty((count, 4), "<u4")
    vertex[:, 0] = _pack_111011(_normalize(g.means, *ranges[0]))
    vertex[:, 1] = pack_rotations(g.quats)
    vertex[:, 2] = _pack_111011(_normalize(g.scales, *ranges[1]))
    colour_bytes = _unorm(_normalize(colours, *ranges[2]), 8)
    opacity = _unorm(sigmoid(g.opacities), 8)
    vertex[:, 3] = (colour_bytes[:, 0] << 24) | (colour_bytes[:, 1] << 16) | (colour_bytes[:, 2] << 8) | opacity
    rest = g.shN.shape[1] * 3
    header = ["ply", "format binary_little_endian 1.0", f"comment Generated by {generator}",
              f"element chunk {len(chunk_data)}", *[f"property float {name}" for name in CHUNK_PROPERTIES],
              f"element vertex {count}", *[f"property uint {name}" for name in VERTEX_PROPERTIES]]
    parts = [chunk_data.tobytes(), vertex.tobytes()]
    if rest:
        header += [f"element sh {count}", *[f"property uchar f_rest_{i}" for i in range(rest)]]
        channel_major = g.shN.transpose(0, 2, 1).reshape(count, rest)  # f_rest order
        parts.append(quantize_sh(channel_major).tobytes())
    header.append("end_header\n")
    return "\n".join(header).encode("ascii") + b"".join(parts)


def write_compressed_ply(path: str | Path, g: Gaussians, generator: str = "spaceport") -> int:
    """Write ``g`` as a compressed PLY (atomically); returns the file size in bytes."""
    data = encode_compressed_ply(g, generator)
    with atomic_write_to(path) as file:
        file.write(data)
    return len(data)


def _parse_header(data: bytes, source: str) -> tuple[list[tuple[str, int, list[tuple[str, str]]]], int]:
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply\n") or end < 0:
        raise SpaceportError(f"{source}: not a PLY file (no 'ply' magic or no end_header)")
    elements: list[tuple[str, int, list[tuple[str, str]]]] = []
    for line in data[:end].decode("ascii", "replace").splitlines()[1:]:
        words = line.split()
        if not words or words[0] == "comment":
            continue
        if words[0] == "format" and words[1] != "binary_little_endian":
            raise SpaceportError(f"{source}: PLY format {words[1]}; a compressed PLY is binary_little_endian")
        if words[0] == "element":
            elements.append((words[1], int(words[2]), []))
        elif words[0] == "property" and elements:
            elements[-1][2].append((words[1], words[-1]))
    return elements, end + len(b"end_header\n")


_PLY_TYPES = {"float": "<f4", "float32": "<f4", "uint": "<u4", "uint32": "<u4", "uchar": "u1", "uint8": "u1",
              "int": "<i4", "double": "<f8", "short": "<i2", "ushort": "<u2", "char": "i1"}


def is_compressed_ply(path: str | Path) -> bool:
    """Whether ``path`` is a PLY with PlayCanvas' chunk + packed vertex layout (reads only the header)."""
    with open(path, "rb") as file:
        head = file.read(8192)
    return head.startswith(b"ply") and b"element chunk" in head and b"packed_position" in head


def read_compressed_ply(path: str | Path) -> Gaussians:
    """Read a compressed PLY back to Gaussians (in file order); errors name the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise SpaceportError(f"{path}: no such file; pass a .compressed.ply")
    data = path.read_bytes()
    elements, offset = _parse_header(data, str(path))
    arrays: dict[str, np.ndarray] = {}
    for name, count, properties in elements:
        try:
            dtype = np.dtype([(prop, _PLY_TYPES[kind]) for kind, prop in properties])
        except KeyError as exc:
            raise SpaceportError(f"{path}: element '{name}' has a property of unknown type {exc}") from exc
        size = dtype.itemsize * count
        if offset + size > len(data):
            raise SpaceportError(f"{path}: element '{name}' needs {size} bytes past the header, the file ends "
                                 "before; it may be truncated")
        arrays[name] = np.frombuffer(data, dtype, count, offset)
        offset += size
    if "chunk" not in arrays or "vertex" not in arrays:
        raise SpaceportError(f"{path}: has no 'chunk' and 'vertex' elements; it is not a PlayCanvas compressed PLY")
    chunks, vertex = arrays["chunk"], arrays["vertex"]
    missing = [p for p in VERTEX_PROPERTIES if p not in vertex.dtype.names]
    missing += [p for p in CHUNK_PROPERTIES[:12] if p not in chunks.dtype.names]
    if missing:
        raise SpaceportError(f"{path}: missing properties {', '.join(missing)}; not a PlayCanvas compressed PLY")
    count = len(vertex)
    if len(chunks) < math.ceil(count / CHUNK_SIZE):
        raise SpaceportError(f"{path}: {len(chunks)} chunks for {count} splats; need one per {CHUNK_SIZE}")
    chunk = np.arange(count) // CHUNK_SIZE

    def lerp(names: list[str], normalized: np.ndarray) -> np.ndarray:
        low = np.stack([chunks[f"min_{n}"] for n in names], 1)[chunk]
        high = np.stack([chunks[f"max_{n}"] for n in names], 1)[chunk]
        return (low * (1 - normalized) + high * normalized).astype(np.float32)

    means = lerp(["x", "y", "z"], _unpack_111011(vertex["packed_position"]))
    scales = lerp(["scale_x", "scale_y", "scale_z"], _unpack_111011(vertex["packed_scale"]))
    colour = vertex["packed_color"]
    normalized = np.stack([(colour >> 24) & 0xFF, (colour >> 16) & 0xFF, (colour >> 8) & 0xFF], 1) / 255.0
    rgb = lerp(["r", "g", "b"], normalized) if "min_r" in chunks.dtype.names else normalized
    sh0 = ((rgb - 0.5) / SH_C0).astype(np.float32)
    opacities = logit((colour & 0xFF) / 255.0)
    shN = np.zeros((count, 0, 3), np.float32)
    if "sh" in arrays:
        rest = len(arrays["sh"].dtype.names)
        if rest not in _REST_COUNT_TO_DEGREE or len(arrays["sh"]) != count:
            raise SpaceportError(f"{path}: 'sh' element has {rest} properties for {len(arrays['sh'])} splats; "
                                 "expected 9, 24 or 45 per splat")
        raw = np.stack([arrays["sh"][f"f_rest_{i}"] for i in range(rest)], 1)
        shN = np.ascontiguousarray(dequantize_sh(raw).reshape(count, 3, rest // 3).transpose(0, 2, 1))
    return Gaussians(means=means, scales=scales, quats=unpack_rotations(vertex["packed_rotation"]),
                     opacities=opacities, sh0=sh0, shN=shN)
