"""The compress stage: a trained splat's PLY in, a PlayCanvas SOG out (``run_compress`` / ``compress_ply``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from spaceport.compress.config import CompressConfig
from spaceport.compress.plas import (
    METRIC_WEIGHTS,
    PlasSchedule,
    neighbour_distance,
    plas_sort,
    sorting_features,
)
from spaceport.compress.sog import WebpOptions, encode_files, encode_sog
from spaceport.devices import resolve_device
from spaceport.formats.gaussians import Gaussians, read_ply
from spaceport.formats.sog import texture_size, write_sog
from spaceport.progress import Progress
from spaceport.workspace import SpaceportError, StageResult, Workspace


@dataclass
class CompressOutcome:
    num_gaussians: int
    sog_bytes: int
    neighbour_distance_before: float
    neighbour_distance_after: float
    seconds: dict[str, float]
    order: np.ndarray  # order[i]: index in the input of the splat at texel i


def load_splat(path: Path) -> Gaussians:
    """Read and check a 3DGS PLY: every error names the file and the problem."""
    splat = read_ply(path)
    splat.validate(str(path))
    return splat


def morton_order(means: np.ndarray) -> np.ndarray:
    """Order of points along a 3D Z-order curve (what splat-transform uses), 10 bits per axis."""
    low, high = means.min(0), means.max(0)
    cells = ((means - low) / np.where(high > low, high - low, 1) * 1023).astype(np.int64)
    code = np.zeros(len(means), np.int64)
    for bit in range(10):
        for axis in range(3):
            code |= ((cells[:, axis] >> bit) & 1) << (3 * bit + axis)
    return np.argsort(code, kind="stable")


def compress_splat(splat: Gaussians, out_sog: Path, config: CompressConfig, progress: Progress) -> CompressOutcome:
    """Sort, quantize, encode and write ``splat`` as a SOG bundle at ``out_sog`` (and, with
    ``config.unbundled``, meta.json and the WebP files beside it)."""
    device = resolve_device(config.device, "compress")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    width, _ = texture_size(len(splat))
    order = _order(splat, sorting_features(splat, config.sort_weights, device), width, config, progress)
    seconds["sort"] = time.perf_counter() - started
    metric_features = sorting_features(splat, METRIC_WEIGHTS, device)
    before = neighbour_distance(metric_features, torch.arange(len(splat), device=device), width)
    after = neighbour_distance(metric_features, torch.as_tensor(order, device=device), width)
    progress.log(f"compress: {config.sort} order, neighbour distance {before:.3f} -> {after:.3f} "
                 f"({seconds['sort']:.1f} s on {device})")

    started = time.perf_counter()
    content = encode_sog(splat, order, sh_bands=config.sh_bands, palette_size=config.palette_size,
                         kmeans_iterations=config.kmeans_iterations, seed=config.seed, device=device)
    seconds["quantize"] = time.perf_counter() - started
    started = time.perf_counter()
    files = encode_files(content, WebpOptions(method=config.webp_method, quality=config.webp_quality))
    size = write_sog(out_sog, files, out_sog.parent if config.unbundled else None)
    seconds["webp_and_write"] = time.perf_counter() - started
    progress.log(f"compress: wrote {out_sog} ({size / 1e6:.2f} MB, {len(splat)} Gaussians, "
                 f"SH bands {content.meta.get('shN', {}).get('bands', 0)})")
    return CompressOutcome(len(splat), size, before, after, seconds, order)


def _order(splat: Gaussians, features: torch.Tensor, width: int, config: CompressConfig,
           progress: Progress) -> np.ndarray:
    """Texel order of the splats: order[i] is the input index of the splat at texel i."""
    if config.sort == "plas":
        schedule = PlasSchedule(iterations_per_radius=config.sort_iterations,
                                radius_shrink=config.sort_radius_shrink)
        with progress.task("sorting (PLAS)", total=None) as task:
            result = plas_sort(features, width, config.seed, schedule,
                               on_round=lambda done, total: task.update(completed=done, total=total))
        return result.order.cpu().numpy()
    if config.sort == "morton":
        return morton_order(splat.means)
    return np.arange(len(splat))


def compress_ply(in_ply: str | Path, out_sog: str | Path, config: CompressConfig,
                 progress: Progress) -> StageResult:
    """``spaceport compress IN.ply -o OUT.sog``: the stage's work on plain paths. With ``config.unbundled``
    the meta.json and WebP files are also written beside the .sog."""
    in_ply, out_sog = Path(in_ply), Path(out_sog)
    started = time.perf_counter()
    splat = load_splat(in_ply)
    outcome = compress_splat(splat, out_sog, config, progress)
    outputs = {"sog": str(out_sog)}
    if config.unbundled:
        outputs["meta"] = str(out_sog.parent / "meta.json")
    return StageResult("compress", time.perf_counter() - started, outputs,
                       _metrics(outcome, in_ply.stat().st_size, time.perf_counter() - started))


def run_compress(ws: Workspace, config: CompressConfig, progress: Progress) -> StageResult:
    """Compress ``train/splat.ply`` (or the single .ply in ``input/``) to ``compress/scene.sog``."""
    started = time.perf_counter()
    source = find_input_ply(ws)
    progress.log(f"compress: reading {ws.rel(source)}")
    splat = load_splat(source)
    outcome = compress_splat(splat, ws.sog_path, config, progress)
    outputs = {"sog": ws.rel(ws.sog_path)}
    if config.unbundled:
        outputs["meta"] = ws.rel(ws.compress_dir / "meta.json")
    return StageResult("compress", time.perf_counter() - started, outputs,
                       _metrics(outcome, source.stat().st_size, time.perf_counter() - started))


def find_input_ply(ws: Workspace) -> Path:
    """The splat to compress: train/splat.ply, else the one .ply the job was started from."""
    if ws.splat_ply.exists():
        return ws.splat_ply
    candidates = sorted(ws.input_dir.glob("*.ply")) if ws.input_dir.is_dir() else []
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise SpaceportError(f"{ws.splat_ply}: missing, and {ws.input_dir} holds no .ply; run the train stage "
                             "first or start the job from a .ply with --steps compress")
    names = ", ".join(p.name for p in candidates)
    raise SpaceportError(f"{ws.input_dir}: holds several .ply files ({names}); give compress exactly one")


def _metrics(outcome: CompressOutcome, ply_bytes: int, seconds: float) -> dict[str, float | int]:
    return {
        "num_gaussians": outcome.num_gaussians,
        "ply_bytes": ply_bytes,
        "sog_bytes": outcome.sog_bytes,
        "size_ratio": round(ply_bytes / outcome.sog_bytes, 2),
        "seconds": round(seconds, 2),
        "neighbour_distance_before": round(outcome.neighbour_distance_before, 4),
        "neighbour_distance_after": round(outcome.neighbour_distance_after, 4),
        **{f"seconds_{name}": round(value, 2) for name, value in outcome.seconds.items()},
    }
