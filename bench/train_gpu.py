"""Train the `standard` preset on the GPU for each densification strategy and tabulate the result.

    python bench/train_gpu.py --images ../shared/data/monstree/images --work /tmp/bench_train \
        --strategies default mcmc --json bench/results/train_gpu.json

The sfm stage runs once (pipeline `--steps sfm`, standard preset) into WORK/sfm and is reused; each
strategy then trains from scratch in WORK/train_<strategy>. Results merge into the JSON file by
strategy, so the strategies can run in separate calls (each must fit the device's time limit); with
$OUT set (the lent GPU machine) the JSON is copied there too. On that machine:

    source bench/gpu_env.sh && python bench/train_gpu.py --images .data_monstree --strategies default
    source bench/gpu_env.sh && python bench/train_gpu.py --images .data_monstree --strategies default \
        --set cap_max=300000 --label cap300k        # a variant, kept beside the others in the JSON
Columns: wall time of run_train, steps/s, final #Gaussians, peak GPU memory, held-out PSNR/SSIM.
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

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from spaceport.pipeline import run_pipeline  # noqa: E402
from spaceport.presets import PRESETS, resolve_config  # noqa: E402
from spaceport.progress import NullProgress  # noqa: E402
from spaceport.splat.train import run_train  # noqa: E402
from spaceport.workspace import Workspace  # noqa: E402

COLUMNS = ["run", "strategy", "wall_s", "steps", "steps_per_second", "num_gaussians", "peak_gpu_mem_gib", "psnr",
           "ssim", "image_width", "image_height"]


class PrintProgress(NullProgress):
    """Log lines and a line every 10% of a task, readable in a captured (non-terminal) output."""

    @contextmanager
    def task(self, description, total=None):
        with super().task(description, total) as task:
            printer = _TaskPrinter(task, description)
            yield printer

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
        sys.exit("pass --images (photos to run sfm on) or --workspace (one whose sfm is done)")
    ws = Workspace(work / "sfm")
    started = time.perf_counter()
    run_pipeline(ws, "sfm", PRESETS["standard"], lambda stage, logger: PrintProgress(), source=images)
    print(f"sfm ready in {time.perf_counter() - started:.1f} s", flush=True)
    return ws.root


def train_once(sfm_root: Path, work: Path, label: str, strategy: str, overrides: dict) -> dict:
    ws = Workspace(work / f"train_{label}")
    shutil.rmtree(ws.root, ignore_errors=True)
    ws.root.mkdir(parents=True)
    (ws.root / "sfm").symlink_to((sfm_root / "sfm").resolve(), target_is_directory=True)
    config = resolve_config("standard", {f"train.{key}": value for key, value in
                                         {"strategy": strategy, **overrides}.items()}).train
    torch.cuda.synchronize()
    started = time.perf_counter()
    result = run_train(ws, config, PrintProgress())
    wall = time.perf_counter() - started
    return {"run": label, "wall_s": round(wall, 1), **result.metrics, "overrides": overrides,
            "config": config.model_dump(), "device": torch.cuda.get_device_name()}


def print_table(rows: list[dict]) -> None:
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in COLUMNS]
    print("  ".join(c.ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(w) for c, w in zip(COLUMNS, widths, strict=True)))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1 else f"{value:.2f}"
    return "-" if value is None else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, help="photos to run the sfm stage on")
    parser.add_argument("--workspace", type=Path, help="an existing workspace whose sfm stage is done")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_train"))
    parser.add_argument("--strategies", nargs="+", default=["default", "mcmc"], choices=["default", "mcmc"])
    parser.add_argument("--steps", type=int, help="override the preset's step count (quick checks)")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="TrainConfig override (JSON value), e.g. --set cap_max=300000; repeatable")
    parser.add_argument("--label", default="", help="suffix of the result's key, to compare variants")
    parser.add_argument("--json", type=Path, default=Path("bench/results/train_gpu.json"))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("CUDA is not available: this benchmark trains the standard preset with gsplat on a GPU")
    overrides = {"steps": args.steps} if args.steps else {}
    for assignment in args.set:
        field, _, value = assignment.partition("=")
        try:
            overrides[field] = json.loads(value)
        except json.JSONDecodeError:
            overrides[field] = value
    sfm_root = prepare_sfm(args.work, args.images, args.workspace)
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    for strategy in args.strategies:
        label = f"{strategy}{'_' + args.label if args.label else ''}"
        results[label] = train_once(sfm_root, args.work, label, strategy, overrides)
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    print_table(list(results.values()))
    print(f"wrote {args.json}")
    if os.environ.get("OUT"):  # the lent GPU machine returns what is written under $OUT
        copy = Path(os.environ["OUT"]) / args.json.name
        if copy.resolve() != args.json.resolve():
            copy.write_text(args.json.read_text())


if __name__ == "__main__":
    main()
