"""The ``.splat`` layout of antimatter15's WebGL viewer (also read by splat-transform, SuperSplat and others).

No header: 32 bytes per splat, little-endian:

- position: x, y, z as float32;
- scale: exp(scale_0..2) as float32 (linear, not log);
- colour: R, G, B = ``255 * (0.5 + SH_C0 * f_dc)`` and A = ``255 * sigmoid(opacity)``, uint8 each;
- rotation: the unit quaternion (w, x, y, z: rot_0..rot_3) as ``128 * c + 128``, uint8 each.

No higher SH bands. Splats are written largest first (``exp(sum of log-scales) * sigmoid(opacity)``
descending), as the viewer's converter does, so a progressive load shows the big ones first. The original
converter truncates to bytes; we round to the nearest (half the error; readers cannot tell).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spaceport.errors import SpaceportError
from spaceport.formats.atomic import atomic_write_to
from spaceport.formats.gaussians import Gaussians

SH_C0 = 0.28209479177387814
RECORD = np.dtype([("position", "<f4", 3), ("scale", "<f4", 3), ("rgba", "u1", 4), ("rotation", "u1", 4)])


def importance_order(g: Gaussians) -> np.ndarray:
    """Largest (volume x opacity) first."""
    importance = np.exp(g.scales.astype(np.float64).sum(1)) / (1 + np.exp(-g.opacities.astype(np.float64)))
    return np.argsort(-importance, kind="stable")


def encode_splat(g: Gaussians) -> bytes:
    g = g.subset(importance_order(g))
    records = np.empty(len(g), RECORD)
    records["position"] = g.means
    records["scale"] = np.exp(g.scales.astype(np.float64))
    colour = 0.5 + SH_C0 * g.sh0.astype(np.float64)
    alpha = 1 / (1 + np.exp(-g.opacities.astype(np.float64)))
    records["rgba"] = np.clip(np.round(255 * np.column_stack([colour, alpha])), 0, 255)
    q = g.quats.astype(np.float64)
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norms > 0, q / np.where(norms > 0, norms, 1), np.array([1.0, 0, 0, 0]))
    records["rotation"] = np.clip(np.round(q * 128 + 128), 0, 255)
    return records.tobytes()


def write_splat(path: str | Path, g: Gaussians) -> int:
    """Write ``g`` as .splat (atomically; higher SH bands are dropped); returns the file size in bytes."""
    data = encode_splat(g)
    with atomic_write_to(path) as file:
        file.write(data)
    return len(data)


def read_splat(path: str | Path) -> Gaussians:
    """Read a .splat file (in file order); colour and opacity bytes 0 and 255 stay finite."""
    path = Path(path)
    if not path.exists():
        raise SpaceportError(f"{path}: no such file; pass a .splat file")
    data = path.read_bytes()
    if not data or len(data) % RECORD.itemsize:
        raise SpaceportError(f"{path}: {len(data)} bytes is not a whole number of 32-byte splats; "
                             "not a .splat file, or a truncated one")
    records = np.frombuffer(data, RECORD)
    scales = records["scale"].astype(np.float64)
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        raise SpaceportError(f"{path}: holds non-positive or non-finite scales; not a .splat file")
    rgba = records["rgba"].astype(np.float64) / 255
    alpha = np.clip(rgba[:, 3], 1e-6, 1 - 1e-6)
    q = records["rotation"].astype(np.float64) - 128
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norms > 0, q / np.where(norms > 0, norms, 1), np.array([1.0, 0, 0, 0]))
    return Gaussians(
        means=records["position"].astype(np.float32),
        scales=np.log(scales).astype(np.float32),
        quats=q.astype(np.float32),
        opacities=np.log(alpha / (1 - alpha)).astype(np.float32),
        sh0=((rgba[:, :3] - 0.5) / SH_C0).astype(np.float32),
        shN=np.zeros((len(records), 0, 3), np.float32),
    )
