"""The train stage's files: ``train/eval.json`` (held-out quality) and ``train/metrics.jsonl`` (the curves)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from spaceport.formats.atomic import atomic_write_bytes
from spaceport.formats.base import read_json_lines, read_model, write_model

EVAL_NAME = "eval.json"
METRICS_NAME = "metrics.jsonl"
FIX = "run the train stage again (--force train)"


class ViewScore(BaseModel):
    name: str
    psnr: float
    ssim: float


class Evaluation(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: int
    held_out: bool  # False when there were no held-out views and the training views were measured
    psnr: float
    ssim: float
    num_views: int
    protocol: Literal["full-image", "nerf-w-right-half"] = "full-image"  # see spaceport.splat.evaluate
    views: list[ViewScore] = Field(default_factory=list)


class MetricsLine(BaseModel):
    """One line of metrics.jsonl: a logged training step, or an evaluation (eval_psnr / eval_ssim)."""

    model_config = ConfigDict(extra="forbid")

    step: int
    loss: float | None = None
    num_gaussians: int | None = None
    sh_degree: int | None = None
    lr_means: float | None = None
    image_width: int | None = None  # the coarse-to-fine level's width at this step
    steps_per_second: float | None = None
    elapsed_seconds: float | None = None
    eval_psnr: float | None = None
    eval_ssim: float | None = None
    kept_step: int | None = None  # the final evaluation's splat is this earlier step's (train.keep_best)

    @property
    def splat_step(self) -> int:
        """The step of the splat this line describes: ``kept_step`` where keep_best kept an earlier one."""
        return self.kept_step if self.kept_step is not None else self.step


def kept_step(metrics: list[MetricsLine]) -> int | None:
    """The earlier step whose splat the run exported (train.keep_best), from its final evaluation; None when the
    last step's splat was exported."""
    evaluations = [line for line in metrics if line.eval_psnr is not None]
    return evaluations[-1].kept_step if evaluations else None


def read_evaluation(train_dir: Path) -> Evaluation:
    return read_model(train_dir / EVAL_NAME, Evaluation, FIX)


def write_evaluation(train_dir: Path, evaluation: Evaluation) -> None:
    write_model(train_dir / EVAL_NAME, evaluation)


def read_metrics(train_dir: Path) -> list[MetricsLine]:
    return read_json_lines(train_dir / METRICS_NAME, MetricsLine, FIX)


def append_metrics(train_dir: Path, line: MetricsLine) -> None:
    train_dir.mkdir(parents=True, exist_ok=True)
    with (train_dir / METRICS_NAME).open("a") as file:
        file.write(line.model_dump_json(exclude_none=True) + "\n")


def truncate_metrics(train_dir: Path, last_step: int) -> None:
    """Drop lines logged after ``last_step`` (by a run killed after its last checkpoint)."""
    path = train_dir / METRICS_NAME
    if not path.exists():
        return
    kept = [line for line in read_metrics(train_dir) if line.step <= last_step]
    atomic_write_bytes(path, "".join(json.dumps(line.model_dump(exclude_none=True)) + "\n" for line in kept).encode())
