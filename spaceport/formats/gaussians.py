"""Gaussians in memory and the INRIA-layout 3DGS PLY (the layout SuperSplat, PlayCanvas and the INRIA viewer read).

Properties, float32 little-endian, in this order:
``x y z nx ny nz f_dc_0..2 f_rest_0..(3*K-1) opacity scale_0..2 rot_0..3``.
``f_rest`` is channel-major: the K coefficients of red, then of green, then of blue.
Values are stored raw: log-scales, logit opacity, unnormalized quaternion (w, x, y, z).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from plyfile import PlyData, PlyElement

from spaceport.errors import SpaceportError
from spaceport.formats.atomic import atomic_write_to

SH_REST_COUNTS = {0: 0, 1: 3, 2: 8, 3: 15}  # coefficients per channel beyond DC, by SH degree
REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity",
            "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]


@dataclass
class Gaussians:
    """A set of N Gaussians as numpy float32 arrays, in the PLY's raw parameterization."""

    means: np.ndarray  # (N, 3)
    scales: np.ndarray  # (N, 3) log-scales
    quats: np.ndarray  # (N, 4) w, x, y, z (not necessarily normalized)
    opacities: np.ndarray  # (N,) logits
    sh0: np.ndarray  # (N, 3) DC coefficients
    shN: np.ndarray  # (N, K, 3) higher coefficients, K in {0, 3, 8, 15}

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        k = self.shN.shape[1]
        return {v: d for d, v in SH_REST_COUNTS.items()}[k]

    def subset(self, index: np.ndarray) -> Gaussians:
        return Gaussians(self.means[index], self.scales[index], self.quats[index],
                         self.opacities[index], self.sh0[index], self.shN[index])

    def validate(self, source: str = "splat") -> None:
        """Raise SpaceportError naming the problem if the set is empty or holds NaN/Inf."""
        if len(self) == 0:
            raise SpaceportError(f"{source}: holds zero Gaussians; train a splat first or pass another file")
        for name in ("means", "scales", "quats", "opacities", "sh0", "shN"):
            values = getattr(self, name)
            bad = ~np.isfinite(values)
            if bad.any():
                rows = np.unique(np.nonzero(bad.reshape(len(self), -1))[0])
                raise SpaceportError(
                    f"{source}: {len(rows)} Gaussian(s) have NaN/Inf in '{name}' (first row {rows[0]}); "
                    "the splat is corrupt: re-export it from the trainer"
                )


def write_ply(path: str | Path, g: Gaussians) -> None:
    """Write ``g`` as a binary little-endian INRIA PLY (atomically)."""
    n, k = len(g), g.shN.shape[1]
    names = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    names += [f"f_rest_{i}" for i in range(3 * k)]
    names += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    columns = [
        g.means, np.zeros((n, 3), np.float32), g.sh0,
        g.shN.transpose(0, 2, 1).reshape(n, 3 * k),  # channel-major
        g.opacities.reshape(n, 1), g.scales, g.quats,
    ]
    data = np.concatenate([np.asarray(c, np.float32).reshape(n, -1) for c in columns], axis=1)
    record = np.empty(n, dtype=[(name, "<f4") for name in names])
    record_view = record.view("<f4").reshape(n, len(names))
    record_view[:] = data
    element = PlyElement.describe(record, "vertex")
    with atomic_write_to(path) as file:
        PlyData([element], text=False, byte_order="<").write(file)


def read_ply(path: str | Path) -> Gaussians:
    """Read an INRIA-layout 3DGS PLY; raise SpaceportError naming the file and the problem."""
    path = Path(path)
    if not path.exists():
        raise SpaceportError(f"{path}: no such file; pass the path of a 3DGS .ply")
    try:
        ply = PlyData.read(str(path))
    except Exception as exc:  # plyfile raises several types for truncated/garbled files
        raise SpaceportError(f"{path}: not a readable PLY file ({exc}); the file may be truncated") from exc
    if "vertex" not in [e.name for e in ply.elements]:
        raise SpaceportError(f"{path}: has no 'vertex' element; it is not a 3D Gaussian Splat PLY")
    vertex = ply["vertex"]
    props = [p.name for p in vertex.properties]
    missing = [p for p in REQUIRED if p not in props]
    if missing:
        raise SpaceportError(
            f"{path}: not a 3DGS PLY, missing properties {', '.join(missing)}; "
            "export the splat in the INRIA layout (x y z f_dc_* opacity scale_* rot_*)"
        )
    rest = sorted((p for p in props if p.startswith("f_rest_")), key=lambda p: int(p.split("_")[-1]))
    if len(rest) % 3 or len(rest) // 3 not in SH_REST_COUNTS.values():
        raise SpaceportError(f"{path}: has {len(rest)} f_rest properties; expected 0, 9, 24 or 45")
    k = len(rest) // 3

    def cols(names: list[str]) -> np.ndarray:
        return np.stack([np.asarray(vertex[name], np.float32) for name in names], axis=1)

    n = vertex.count
    shN = cols(rest).reshape(n, 3, k).transpose(0, 2, 1) if k else np.zeros((n, 0, 3), np.float32)
    return Gaussians(
        means=cols(["x", "y", "z"]),
        scales=cols(["scale_0", "scale_1", "scale_2"]),
        quats=cols(["rot_0", "rot_1", "rot_2", "rot_3"]),
        opacities=np.asarray(vertex["opacity"], np.float32),
        sh0=cols(["f_dc_0", "f_dc_1", "f_dc_2"]),
        shN=np.ascontiguousarray(shN, dtype=np.float32),
    )


def random_gaussians(n: int, sh_degree: int = 3, seed: int = 0, extent: float = 2.0) -> Gaussians:
    """A reproducible random set, for tests and benchmarks."""
    rng = np.random.default_rng(seed)
    quats = rng.normal(size=(n, 4)).astype(np.float32)
    return Gaussians(
        means=rng.uniform(-extent, extent, size=(n, 3)).astype(np.float32),
        scales=rng.uniform(-5, -1, size=(n, 3)).astype(np.float32),
        quats=quats / np.linalg.norm(quats, axis=1, keepdims=True),
        opacities=rng.normal(0, 2, size=n).astype(np.float32),
        sh0=rng.normal(0, 0.8, size=(n, 3)).astype(np.float32),
        shN=rng.normal(0, 0.15, size=(n, SH_REST_COUNTS[sh_degree], 3)).astype(np.float32),
    )


def smallest_three(quats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index of the largest component, the other three (N, 3)) of each unit quaternion with its largest component
    made positive, as the compressed formats store rotations; a zero quaternion becomes identity."""
    q = quats.astype(np.float64)
    norms = np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(norms > 0, q / np.where(norms > 0, norms, 1), np.array([1.0, 0, 0, 0]))
    largest = np.abs(q).argmax(1)
    rows = np.arange(len(q))
    q *= np.where(q[rows, largest] < 0, -1.0, 1.0)[:, None]
    others = np.array([[1, 2, 3], [0, 2, 3], [0, 1, 3], [0, 1, 2]])[largest]
    return largest, q[rows[:, None], others]
