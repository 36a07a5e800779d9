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
from spaceport.compress.reduce import Camera, Reduction, cameras_from_colmap, reduce_splat
from spaceport.compress.sog import Precision, WebpOptions, encode_files, encode_sog
from spaceport.devices import resolve_device
from spaceport.formats.compressed_ply import morton_order
from spaceport.formats.gaussians import Gaussians, read_ply
from spaceport.formats.sog import texture_size, write_sog
from spaceport.formats.train import read_evaluation
from spaceport.progress import Progress
from spaceport.workspace import SpaceportError, StageResult, Workspace


@dataclass
class CompressOutcome:
    num_gaussians: int  # written to the SOG
    sog_bytes: int
    neighbour_distance_before: float
    neighbour_distance_after: float
    seconds: dict[str, float]
    order: np.ndarray  # order[i]: index in the (reduced) splat of the splat at texel i
    reduction: Reduction | None = None  # what pruning and SH band dropping removed (None: not run)
    position_bits: int = 16  # of SOG's 16-bit positions, kept


def load_splat(path: Path) -> Gaussians:
    """Read and check a 3DGS PLY: every error names the file and the problem."""
    splat = read_ply(path)
    splat.validate(str(path))
    return splat


def reduce_for_config(splat: Gaussians, config: CompressConfig, cameras: list[Camera] | None,
                      progress: Progress, device: torch.device | str = "cpu") -> Reduction:
    """Pruning and SH band dropping as ``config`` asks (pruning only with ``cameras``), logged."""
    if config.prune_threshold > 0 and not cameras:
        progress.log("compress: no training cameras (a bare PLY): nothing pruned")
    reduction = reduce_splat(splat, cameras, config.prune_threshold, config.sh_drop_threshold, device)
    if reduction.num_pruned:
        progress.log(f"compress: pruned {reduction.num_pruned} of {reduction.num_input} Gaussians that add less "
                     f"than {config.prune_threshold:g} px to every training view")
    if config.sh_drop_threshold > 0 and splat.sh_degree > 0:
        progress.log(f"compress: SH bands kept per Gaussian (0..{splat.sh_degree}): {reduction.sh_bands_histogram}")
    return reduction


def compress_splat(splat: Gaussians, out_sog: Path, config: CompressConfig, progress: Progress,
                   cameras: list[Camera] | None = None) -> CompressOutcome:
    """Reduce (prune with ``cameras``, drop negligible SH bands), sort, quantize, encode and write ``splat`` as a
    SOG bundle at ``out_sog`` (and, with ``config.unbundled``, meta.json and the WebP files beside it)."""
    device = resolve_device(config.device, "compress")
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    reduction = reduce_for_config(splat, config, cameras, progress, device)
    splat = reduction.splat
    seconds["reduce"] = time.perf_counter() - started
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
    precision = Precision(position_bits=config.position_bits, rotation_bits=config.rotation_bits,
                          opacity_bits=config.opacity_bits, scale_levels=config.scale_levels,
                          colour_levels=config.colour_levels, sh_levels=config.sh_levels)
    content = encode_sog(splat, order, sh_bands=config.sh_bands, palette_size=config.palette_size,
                         kmeans_iterations=config.kmeans_iterations, seed=config.seed, device=device,
                         precision=precision, kmeans_fit_points=config.kmeans_fit_points)
    seconds["quantize"] = time.perf_counter() - started
    started = time.perf_counter()
    files = encode_files(content, WebpOptions(method=config.webp_method, quality=config.webp_quality))
    size = write_sog(out_sog, files, out_sog.parent if config.unbundled else None)
    seconds["webp_and_write"] = time.perf_counter() - started
    progress.log(f"compress: wrote {out_sog} ({size / 1e6:.2f} MB, {len(splat)} Gaussians, "
                 f"SH bands {content.meta.get('shN', {}).get('bands', 0)}, {content.position_bits}-bit positions)")
    return CompressOutcome(len(splat), size, before, after, seconds, order, reduction, content.position_bits)


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
    outcome = compress_splat(splat, ws.sog_path, config, progress, training_cameras(ws, progress))
    outputs = {"sog": ws.rel(ws.sog_path)}
    if config.unbundled:
        outputs["meta"] = ws.rel(ws.compress_dir / "meta.json")
    return StageResult("compress", time.perf_counter() - started, outputs,
                       _metrics(outcome, source.stat().st_size, time.perf_counter() - started))


def training_cameras(ws: Workspace, progress: Progress | None = None) -> list[Camera] | None:
    """The cameras the splat was trained from (the undistorted COLMAP model less the views train/eval.json
    says were held out), or None when the workspace has no model (a job started from a .ply)."""
    model_dir = ws.undistorted_dir / "sparse"
    if not (model_dir / "images.bin").is_file():
        return None
    held_out: set[str] = set()
    try:
        evaluation = read_evaluation(ws.train_dir)
        if evaluation.held_out:
            held_out = {view.name for view in evaluation.views}
    except SpaceportError:
        if progress is not None:
            progress.log(f"compress: no {ws.rel(ws.train_dir / 'eval.json')}: every registered camera counts")
    return cameras_from_colmap(model_dir, held_out, training_width(ws))


def training_width(ws: Workspace) -> int | None:
    """The image width the splat was trained at (the workspace's train.max_image_width; None: full size)."""
    try:
        return ws.read_job().config.get("train", {}).get("max_image_width")
    except SpaceportError:
        return None


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
    reduction = {}
    if outcome.reduction is not None:
        reduction = {"num_gaussians_in": outcome.reduction.num_input, "num_pruned": outcome.reduction.num_pruned,
                     **{f"num_sh_bands_{bands}": count
                        for bands, count in enumerate(outcome.reduction.sh_bands_histogram)}}
    return {
        "num_gaussians": outcome.num_gaussians,
        **reduction,
        "ply_bytes": ply_bytes,
        "sog_bytes": outcome.sog_bytes,
        "size_ratio": round(ply_bytes / outcome.sog_bytes, 2),
        "position_bits": outcome.position_bits,
        "seconds": round(seconds, 2),
        "neighbour_distance_before": round(outcome.neighbour_distance_before, 4),
        "neighbour_distance_after": round(outcome.neighbour_distance_after, 4),
        **{f"seconds_{name}": round(value, 2) for name, value in outcome.seconds.items()},
    }
