"""Training quality per second (issue 13): our presets and the plain gsplat recipe, side by side on one SfM result.

    python bench/train_gpu.py --workspace WS [--device cuda] [--runs standard quality plain throughput] \
        [--plain-steps 30000] [--profile] [--set FIELD=VALUE ...] [--json bench/results/train_gpu_NAME.json]

WS is a workspace whose sfm stage is done (sfm/undistorted); ``--images PHOTOS`` runs the sfm stage first (preset
standard) into WORK/sfm. Every run trains from scratch in WORK/train_<run>, with WS's sfm linked in:

- ``standard``, ``quality``: our presets' training settings;
- ``plain``: the INRIA / gsplat simple-trainer recipe in our loop: DefaultStrategy without a budget, SH degree 3,
  L1 + 0.2 D-SSIM, INRIA's learning rates and schedule (refine 500-15k, opacity reset every 3k), black
  background, ``--plain-steps`` steps (30k is the recipe; the GPU's time limit may call for fewer);
- ``throughput``: MCMC grown quickly to ``--throughput-cap`` Gaussians (1M) at full resolution, for the steps/s
  figure at that size (``steps_per_second_at_cap``: from the metrics lines logged at >= 95% of the cap).

Columns: steps, loop seconds, wall seconds of run_train, steps/s, Gaussians, peak GPU memory, held-out PSNR/SSIM,
and against ``plain`` (when it ran): dB gained and the share of its wall time. ``--profile`` also prints, per run,
the time of each part of a step (CUDA events; the host's clock on the CPU), host syncs per step and peak memory.
Results go to the JSON file (merged by run label; the table shows every row in it, so ``plain`` may run in a
separate call) and, with $OUT set (the lent GPU machine), to $OUT too.
On the CPU (``--device cpu``, torch renderer) it runs end to end with tiny settings, e.g.
``--steps 50 --max-width 64 --throughput-cap 300`` (``tests/test_train_bench.py`` does).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spaceport.devices import resolve_device  # noqa: E402
from spaceport.pipeline import run_pipeline  # noqa: E402
from spaceport.presets import PRESETS  # noqa: E402
from spaceport.progress import NullProgress  # noqa: E402
from spaceport.splat.config import TrainConfig  # noqa: E402
from spaceport.splat.profiling import StepProfiler, format_profile  # noqa: E402
from spaceport.splat.train import run_train  # noqa: E402
from spaceport.workspace import Workspace  # noqa: E402

RUNS = ("standard", "quality", "plain", "throughput")
COLUMNS = ["run", "steps", "train_s", "wall_s", "steps_per_second", "steps_per_second_at_cap", "num_gaussians",
           "peak_gpu_mem_gib", "psnr", "ssim", "early_stopped_at", "psnr_gain_db", "time_share"]
RUNTIME_FIELDS = ("ssim_kernel", "optimizer", "packed")  # --set fields the throughput run takes too
PLAIN_RECIPE = dict(  # INRIA 3DGS as gsplat's simple_trainer runs it
    strategy="default", cap_max=100_000_000, sh_degree=3, sh_degree_interval=1000, background="black",
    init_opacity=0.1, init_scale=1.0, opacity_reg=0.0, scale_reg=0.0, refine_start=500, refine_stop=15_000,
    refine_every=100, reset_opacity_every=3000, grow_grad2d=2e-4, max_image_width=None, resolution_schedule=[],
    gaussians_per_megapixel=None, eval_every=0, early_stop_patience=0, optimizer="adam", log_every=100,
    appearance="off",
)


class PrintProgress(NullProgress):
    """Log lines and a line every 10% of a task, readable in a captured (non-terminal) output."""

    @contextmanager
    def task(self, description, total=None):
        with super().task(description, total) as task:
            yield _TaskPrinter(task, description)

    def log(self, message, level=logging.INFO):
        print(message, flush=True)


class _TaskPrinter:
    def __init__(self, task, description):
        self.task, self.description, self.last_tenth = task, description, -1

    def advance(self, n=1, **metrics):
        self.task.advance(n, **metrics)
        self._maybe_print()

    def update(self, completed=None, total=None, **metrics):
        self.task.update(completed, total, **metrics)
        self._maybe_print()

    def _maybe_print(self):
        total = self.task.total
        if not total:
            return
        tenth = int(10 * self.task.completed / total)
        if tenth > self.last_tenth:
            self.last_tenth = tenth
            print(f"{self.description}: {int(self.task.completed)}/{int(total)} {self.task.metrics}", flush=True)


def prepare_sfm(work: Path, images: Path | None, workspace: Path | None) -> Path:
    """A workspace root whose sfm stage is done."""
    if workspace is not None:
        if not (workspace / "sfm" / "undistorted" / "sparse").is_dir():
            sys.exit(f"{workspace}: has no sfm/undistorted/sparse; pass --images to run sfm")
        return workspace
    if images is None:
        sys.exit("pass --workspace (one whose sfm is done) or --images (photos to run sfm on)")
    ws = Workspace(work / "sfm")
    started = time.perf_counter()
    run_pipeline(ws, "sfm", PRESETS["standard"], lambda stage, logger: PrintProgress(), source=images)
    print(f"sfm ready in {time.perf_counter() - started:.1f} s", flush=True)
    return ws.root


def run_config(run: str, args: argparse.Namespace, overrides: dict[str, Any]) -> TrainConfig:
    """The training settings of one run, with the command line's overrides."""
    settings: dict[str, Any] = {"device": args.device}
    if run in ("standard", "quality"):
        base = PRESETS[run].train.model_dump()
        settings |= overrides
    elif run == "plain":
        base = TrainConfig().model_dump() | PLAIN_RECIPE
        settings["steps"] = args.plain_steps or args.steps or 30_000
        settings["checkpoint_every"] = settings["steps"]  # the recipe saves at the end
    else:  # throughput: full size from the start, grown fast to the cap, then steps/s at the cap
        steps = args.throughput_steps or args.steps or 3000
        base = PRESETS["standard"].train.model_dump() | dict(
            steps=steps, cap_max=args.throughput_cap, gaussians_per_megapixel=None, mcmc_grow_factor=1.6,
            refine_start=100, refine_every=100, refine_stop=steps, resolution_schedule=[], eval_every=0,
            early_stop_patience=0, log_every=max(1, min(100, steps // 20)), checkpoint_every=steps)
        settings |= {key: value for key, value in overrides.items() if key in RUNTIME_FIELDS}
    if args.steps and run != "throughput":
        settings.setdefault("steps", args.steps)
    if args.max_width:
        settings["max_image_width"] = args.max_width
    if args.device == "cpu":
        settings["backend"] = "torch"
    return TrainConfig.model_validate(base | settings)


def train_once(sfm_root: Path, work: Path, label: str, config: TrainConfig, profile: tuple[int, int] | None,
               device: torch.device) -> dict[str, Any]:
    ws = Workspace(work / f"train_{label}")
    shutil.rmtree(ws.root, ignore_errors=True)
    ws.root.mkdir(parents=True)
    (ws.root / "sfm").symlink_to((sfm_root / "sfm").resolve(), target_is_directory=True)
    if (sfm_root / "images").is_dir():  # the ingest manifest: its EXIF cameras decide appearance as in a pipeline run
        (ws.root / "images").symlink_to((sfm_root / "images").resolve(), target_is_directory=True)
    profiler = StepProfiler(device, *profile) if profile else None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    print(f"== {label}: {config.steps} steps, strategy {config.strategy}", flush=True)
    started = time.perf_counter()
    result = run_train(ws, config, PrintProgress(), profiler=profiler)
    wall = time.perf_counter() - started
    row = {"run": label, "wall_s": round(wall, 2), "train_s": result.metrics["train_seconds"], **result.metrics,
           "config": config.model_dump(),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}
    row["steps_per_second_at_cap"] = rate_at_cap(ws.train_dir / "metrics.jsonl", result.metrics["cap_max"])
    if profiler is not None:
        row["profile"] = profiler.summary()
        print(f"-- {label}: where a step's time goes\n{format_profile(row['profile'])}", flush=True)
    return row


def profile_window(config: TrainConfig, args: argparse.Namespace) -> tuple[int, int]:
    """(first step, steps) to profile: by default from halfway, at full size (after the coarse levels)."""
    full_size_from = max((until for _, until in config.resolution_schedule), default=0)
    start = args.profile_start
    if start is None:
        start = min(max(full_size_from + 50, config.steps // 2), max(0, config.steps - args.profile_steps))
    start = min(start, config.steps - 1)
    return start, max(1, min(args.profile_steps, config.steps - start))


def rate_at_cap(metrics_path: Path, cap: int) -> float | None:
    """Steps per second of the training loop between the first and the last log line at >= 95% of the cap."""
    lines = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    at_cap = [m for m in lines if "loss" in m and m["num_gaussians"] >= 0.95 * cap]
    if len(at_cap) < 2 or at_cap[-1]["elapsed_seconds"] <= at_cap[0]["elapsed_seconds"]:
        return None
    return round((at_cap[-1]["step"] - at_cap[0]["step"])
                 / (at_cap[-1]["elapsed_seconds"] - at_cap[0]["elapsed_seconds"]), 2)


def add_ratios(rows: dict[str, dict[str, Any]]) -> None:
    """Held-out dB over ``plain`` and the share of its wall time, for every other run."""
    plain = rows.get("plain")
    if plain is None:
        return
    for row in rows.values():
        if row is not plain:
            row["psnr_gain_db"] = round(row["psnr"] - plain["psnr"], 3)
            row["time_share"] = round(row["wall_s"] / plain["wall_s"], 3)


def print_table(rows: list[dict[str, Any]]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in COLUMNS]
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    return "-" if value is None else str(value)


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    overrides = {}
    for assignment in assignments:
        field, _, value = assignment.partition("=")
        if field not in TrainConfig.model_fields:
            sys.exit(f"--set {assignment}: {field} is not a TrainConfig field")
        try:
            overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            overrides[field] = value
    return overrides


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, help="a workspace whose sfm stage is done")
    parser.add_argument("--images", type=Path, help="photos to run the sfm stage on first (instead of --workspace)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_train"), help="where the runs train")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=RUNS)
    parser.add_argument("--steps", type=int, help="every run's step count (quick checks)")
    parser.add_argument("--plain-steps", type=int, help="the plain recipe's steps (default --steps, else 30000)")
    parser.add_argument("--throughput-cap", type=int, default=1_000_000)
    parser.add_argument("--throughput-steps", type=int, help="default --steps, else 3000")
    parser.add_argument("--max-width", type=int, help="downscale the photos to this width (CPU checks)")
    parser.add_argument("--profile", action="store_true", help="time the parts of the steps of every run")
    parser.add_argument("--profile-start", type=int, help="first profiled step (default: halfway, at full size)")
    parser.add_argument("--profile-steps", type=int, default=200)
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="TrainConfig override (JSON value) for standard and quality, e.g. --set steps=6000")
    parser.add_argument("--label", default="", help="suffix of the result keys, to compare variants")
    parser.add_argument("--json", type=Path, help="default bench/results/train_gpu_<workspace name>.json")
    args = parser.parse_args(argv)
    device = resolve_device(args.device, "train")
    args.device = device.type
    overrides = parse_overrides(args.set)
    sfm_root = prepare_sfm(args.work, args.images, args.workspace)
    json_path = args.json or Path(__file__).parent / "results" / f"train_gpu_{sfm_root.name}.json"
    results = json.loads(json_path.read_text()) if json_path.exists() else {}
    rows: dict[str, dict[str, Any]] = {}
    for run in args.runs:
        config = run_config(run, args, overrides)
        profile = profile_window(config, args) if args.profile else None
        label = f"{run}{'_' + args.label if args.label else ''}"
        rows[label] = train_once(sfm_root, args.work, label, config, profile, device)
        results.update(rows)
        add_ratios(results)  # a plain run from an earlier call (same file) counts too
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=2) + "\n")
    print_table(list(results.values()))
    print(f"wrote {json_path}")
    if os.environ.get("OUT"):  # the lent GPU machine returns what is written under $OUT
        copy = Path(os.environ["OUT"]) / json_path.name
        if copy.resolve() != json_path.resolve():
            copy.write_text(json_path.read_text())
    return rows


if __name__ == "__main__":
    main()
