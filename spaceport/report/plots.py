"""The report's figures: training curves and a top view of the SfM cameras and points.

Each figure is a ``matplotlib.figure.Figure`` made without pyplot (no process-wide state: the report runs many
times in one worker process) and styled on its own artists, never through the global rcParams.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter, MaxNLocator

from spaceport.formats import MetricsLine

INK = "#1f2430"
MUTED = "#6b7280"
GRID = "#e5e7eb"
BLUE = "#2563eb"
ORANGE = "#ea580c"
GREEN = "#059669"
TOP_VIEW_MAX_POINTS = 30_000


# -- output -------------------------------------------------------------------------------------------------------


def figure_svg(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None})
    return buffer.getvalue()


def figure_png(figure: Figure, dpi: int = 144) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata={"Software": None})
    return buffer.getvalue()


def _axes(figure: Figure, title: str, xlabel: str, ylabel: str):
    axes = figure.add_subplot()
    axes.set_title(title, loc="left", fontsize=11.5, color=INK, fontweight="bold", pad=10)
    axes.set_xlabel(xlabel, fontsize=10, color=MUTED)
    axes.set_ylabel(ylabel, fontsize=10, color=MUTED)
    axes.tick_params(labelsize=9, colors=MUTED, length=3)
    axes.grid(True, color=GRID, linewidth=0.8)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        axes.spines[side].set_color("#cbd5e1")
    return axes


def _curve_figure() -> Figure:
    return Figure(figsize=(4.0, 2.7), layout="constrained")


# -- training curves ----------------------------------------------------------------------------------------------


def _rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def loss_figure(metrics: list[MetricsLine]) -> Figure | None:
    """Training loss against step (log scale when it falls by more than 10x); None with fewer than 2 points."""
    points = [(m.step, m.loss) for m in metrics if m.loss is not None]
    if len(points) < 2:
        return None
    steps, loss = (np.array(column, dtype=float) for column in zip(*points, strict=True))
    figure = _curve_figure()
    axes = _axes(figure, "Training loss", "step", "loss")
    if len(loss) > 60:  # a long run's logged loss is noisy: draw it faint, with a rolling mean on top
        axes.plot(steps, loss, color=BLUE, alpha=0.25, linewidth=0.8)
        axes.plot(steps, _rolling_mean(loss, max(5, len(loss) // 40)), color=BLUE, linewidth=1.6)
    else:
        axes.plot(steps, loss, color=BLUE, linewidth=1.6, marker="o", markersize=2.5)
    if loss.min() > 0 and loss.max() / loss.min() > 10:
        axes.set_yscale("log")
    axes.set_xlim(left=0)
    return figure


def psnr_figure(metrics: list[MetricsLine], held_out: bool) -> Figure | None:
    """Held-out PSNR at each evaluation, the final one labelled (at the step whose splat was kept, with
    train.keep_best); None when training logged none."""
    evaluations = [m for m in metrics if m.eval_psnr is not None]
    if not evaluations:
        return None
    final = evaluations[-1]
    points = sorted((m.splat_step, m.eval_psnr) for m in evaluations)
    steps, psnr = (np.array(column, dtype=float) for column in zip(*points, strict=True))
    figure = _curve_figure()
    which = "held-out" if held_out else "training"
    axes = _axes(figure, f"PSNR on {which} views", "step", "PSNR (dB)")
    axes.plot(steps, psnr, color=GREEN, linewidth=1.6, marker="o", markersize=5 if len(psnr) < 4 else 3)
    axes.annotate(f"{final.eval_psnr:.2f} dB", (final.splat_step, final.eval_psnr), textcoords="offset points",
                  xytext=(-6, 8), ha="right", fontsize=9, color=INK)
    axes.set_xlim(0, max(steps.max() * 1.05, 1))
    low, high = psnr.min(), psnr.max()
    axes.set_ylim(np.floor(low - 1.5), np.ceil(high + 1.5))
    return figure


def gaussians_figure(metrics: list[MetricsLine]) -> Figure | None:
    """Number of Gaussians against step; None with fewer than 2 points."""
    points = [(m.step, m.num_gaussians) for m in metrics if m.num_gaussians is not None]
    if len(points) < 2:
        return None
    steps, count = (np.array(column, dtype=float) for column in zip(*points, strict=True))
    figure = _curve_figure()
    axes = _axes(figure, "Number of Gaussians", "step", "Gaussians")
    axes.plot(steps, count, color=ORANGE, linewidth=1.6)
    axes.fill_between(steps, count, color=ORANGE, alpha=0.12, linewidth=0)
    axes.yaxis.set_major_formatter(EngFormatter(sep=""))
    axes.yaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
    axes.set_xlim(left=0)
    axes.set_ylim(0, count.max() * 1.15)
    return figure


# -- the SfM top view ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SfmGeometry:
    """Registered cameras and sparse points of a COLMAP model, in its world frame."""

    names: list[str]
    centres: np.ndarray  # (N, 3) camera centres, -R^T t
    forward: np.ndarray  # (N, 3) viewing directions (each camera's +z axis in the world)
    down: np.ndarray  # (N, 3) each camera's +y axis in the world (image rows grow downwards)
    points: np.ndarray  # (M, 3)
    colors: np.ndarray  # (M, 3) uint8


def read_sfm_geometry(model_dir: Path) -> SfmGeometry:
    import pycolmap

    model = pycolmap.Reconstruction(str(model_dir))
    names, centres, forward, down = [], [], [], []
    for image_id in sorted(model.reg_image_ids()):
        image = model.image(image_id)
        pose = image.cam_from_world()
        rotation, translation = pose.rotation.matrix(), np.asarray(pose.translation)
        names.append(image.name)
        centres.append(-rotation.T @ translation)
        down.append(rotation[1])  # row 1 of R is the camera's y axis expressed in the world
        forward.append(rotation[2])
    points = model.points3D
    xyz = np.array([p.xyz for p in points.values()], dtype=float).reshape(-1, 3)
    colors = np.array([p.color for p in points.values()], dtype=np.uint8).reshape(-1, 3)
    return SfmGeometry(names, np.array(centres).reshape(-1, 3), np.array(forward).reshape(-1, 3),
                       np.array(down).reshape(-1, 3), xyz, colors)


def top_view_basis(geometry: SfmGeometry) -> np.ndarray:
    """(3, 3) rows: two horizontal axes and up. Up is minus the cameras' mean y axis (photos are mostly taken
    upright); the first horizontal axis follows the cameras' widest spread so the plot fills its frame, and the
    second completes a right-handed frame, so the plot is a view from above, not a mirror image."""
    up = -geometry.down.mean(axis=0)
    up /= np.linalg.norm(up) or 1.0
    centred = geometry.centres - geometry.centres.mean(axis=0)
    flat = centred - np.outer(centred @ up, up)
    if len(flat) >= 2 and np.linalg.norm(flat) > 0:
        first = np.linalg.svd(flat, full_matrices=False)[2][0]
    else:
        first = np.cross(up, [1.0, 0.0, 0.0] if abs(up[0]) < 0.9 else [0.0, 1.0, 0.0])
    first -= (first @ up) * up
    first /= np.linalg.norm(first)
    return np.stack([first, np.cross(up, first), up])


def _plot_extent(cameras_2d: np.ndarray, points_2d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bounds that hold every camera and the bulk of the points (far-off stray points would shrink the scene)."""
    parts = [cameras_2d]
    if len(points_2d):
        parts.append(np.percentile(points_2d, [2, 98], axis=0))
    stacked = np.concatenate(parts)
    low, high = stacked.min(axis=0), stacked.max(axis=0)
    margin = 0.08 * max(float((high - low).max()), 1e-6)
    return low - margin, high + margin


def top_view_figure(geometry: SfmGeometry, held_out: set[str]) -> Figure:
    """Sparse points (in their colours) and camera centres with viewing directions, seen from above."""
    basis = top_view_basis(geometry)
    cameras = geometry.centres @ basis[:2].T
    directions = geometry.forward @ basis[:2].T
    keep = np.random.default_rng(0).permutation(len(geometry.points))[:TOP_VIEW_MAX_POINTS]
    points, colors = geometry.points[keep] @ basis[:2].T, geometry.colors[keep] / 255.0
    low, high = _plot_extent(cameras, points)

    figure = Figure(figsize=(6.4, 5.2), layout="constrained")
    axes = _axes(figure, f"Top view: {len(cameras)} cameras, {len(geometry.points):,} points",
                 "scene units", "scene units")
    axes.grid(False)
    if len(points):
        axes.scatter(points[:, 0], points[:, 1], s=2.5, c=colors, linewidths=0, alpha=0.85, rasterized=True)
    arrow = 0.06 * float((high - low).max())
    is_held_out = np.array([name in held_out for name in geometry.names], dtype=bool)
    first_label = "training camera" if is_held_out.any() else "camera"
    for mask, color, label in ((~is_held_out, BLUE, first_label), (is_held_out, ORANGE, "held-out camera")):
        if not mask.any():
            continue
        norms = np.linalg.norm(directions[mask], axis=1, keepdims=True)
        unit = directions[mask] / np.where(norms > 1e-9, norms, 1.0)
        axes.quiver(cameras[mask, 0], cameras[mask, 1], unit[:, 0] * arrow, unit[:, 1] * arrow, color=color,
                    angles="xy", scale_units="xy", scale=1, width=0.004, headwidth=4, headlength=5, zorder=3)
        axes.scatter(cameras[mask, 0], cameras[mask, 1], s=22, color=color, edgecolors="white", linewidths=0.8,
                     zorder=4, label=label)
    axes.set_facecolor("#f6f7f9")
    # frame the computed extent (not stray points), widened along one axis to keep scene units square
    axes.ignore_existing_data_limits = True
    axes.update_datalim([low, high])
    axes.margins(0)
    axes.set_aspect("equal", adjustable="datalim")
    axes.autoscale_view()
    axes.legend(loc="best", fontsize=8, frameon=True, framealpha=0.9, edgecolor=GRID)
    return figure
