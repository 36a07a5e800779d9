"""Stage progress into the job store: the ``Progress`` a stage reports to when it runs as part of a job.

Task updates become ``progress`` events (at most about one a second), the job's overall progress (0-1) and its
ETA; ``progress.log`` lines become ``log`` events. While reporting, the job's cancel flag is read (also about once
a second) and :class:`JobCancelled` is raised in the stage when a cancel was asked.

Overall progress weighs each stage of the job's step selection by how long it usually takes (``STAGE_WEIGHTS``):
``(weights of the stages before + weight of this stage * fraction within it) / weights of all its stages``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from spaceport.formats.job import STEP_STAGES
from spaceport.jobs.store import Store

# relative durations of the stages on a typical job (monstree, preview and standard presets)
STAGE_WEIGHTS = {"ingest": 1.0, "sfm": 4.0, "train": 8.0, "compress": 1.0, "report": 0.5}
# how many progress tasks a stage opens one after the other (sfm: extract, match, map, undistort); others: one
EXPECTED_TASKS = {"sfm": 4}
REPORT_EVERY_S = 1.0
CANCEL_CHECK_EVERY_S = 1.0
RUNNING_FRACTION_CAP = 0.99  # a stage reads as finished only once it has finished

log = logging.getLogger(__name__)


class JobCancelled(KeyboardInterrupt):
    """Raised inside a stage when its job's cancel was requested. An interruption (like Ctrl-C), so that stage code
    catching ``Exception`` does not swallow it and ``run_stage`` records the stage as interrupted, not failed."""


def job_progress_span(steps: str, stage: str) -> tuple[float, float]:
    """(overall progress when ``stage`` starts, share of the whole job it accounts for) for a step selection."""
    stages = STEP_STAGES[steps]
    total = sum(STAGE_WEIGHTS.get(name, 1.0) for name in stages)
    before = sum(STAGE_WEIGHTS.get(name, 1.0) for name in stages[:stages.index(stage)])
    return before / total, STAGE_WEIGHTS.get(stage, 1.0) / total


class StageReporter:
    """Reports one stage run of one job to the store; ``make_progress`` is the factory ``run_stage`` takes."""

    def __init__(self, store: Store, job_id: str, steps: str, stage: str, worker_id: str, *,
                 report_every_s: float = REPORT_EVERY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.job_id, self.stage, self.worker_id = store, job_id, stage, worker_id
        self.start, self.share = job_progress_span(steps, stage)
        self.report_every_s = report_every_s
        self.clock = clock
        self.started = clock()
        self.fraction = 0.0
        self.tasks_done = 0
        self.expected_tasks = EXPECTED_TASKS.get(stage, 1)
        self._last_report = float("-inf")
        self._last_cancel_check = float("-inf")

    def make_progress(self, stage: str, logger: logging.Logger) -> JobProgress:
        return JobProgress(self, logger)

    @property
    def overall(self) -> float:
        return self.start + self.share * self.fraction

    def eta_s(self) -> float | None:
        """Seconds left, from the progress this run made since it started (a resumed job's earlier runs and the
        time it waited in the queue do not count)."""
        elapsed = self.clock() - self.started
        gained = self.overall - self.start
        if elapsed < 2.0 or gained <= 1e-6:
            return None
        return round((1.0 - self.overall) * elapsed / gained, 1)

    def check_cancel(self) -> None:
        now = self.clock()
        if now - self._last_cancel_check < CANCEL_CHECK_EVERY_S:
            return
        self._last_cancel_check = now
        try:
            cancelled = self.store.is_cancel_requested(self.job_id)
        except SQLAlchemyError as exc:
            log.warning("job %s: cannot read the cancel flag (%s)", self.job_id, exc)
            return
        if cancelled:
            raise JobCancelled(f"{self.stage}: cancelled")

    def task_progress(self, description: str, completed: float, total: float | None, metrics: dict[str, Any],
                      *, force: bool = False) -> None:
        task_fraction = min(max(completed / total, 0.0), 1.0) if total else 0.0
        fraction = (self.tasks_done + task_fraction) / max(self.expected_tasks, self.tasks_done + 1)
        self.fraction = min(max(self.fraction, fraction), RUNNING_FRACTION_CAP)
        live = {"task": description, "completed": completed, "total": total, **metrics}
        self.report(description, {self.stage: _jsonable(live)}, force=force)

    def task_finished(self) -> None:
        self.tasks_done += 1

    def report(self, message: str | None, metrics: dict[str, Any] | None = None, *, force: bool = False) -> None:
        """One progress event (throttled unless ``force``) and the job's progress, ETA and live metrics."""
        self.check_cancel()
        now = self.clock()
        if not force and now - self._last_report < self.report_every_s:
            return
        self._last_report = now
        try:
            self.store.update_progress(self.job_id, stage=self.stage, fraction=round(self.fraction, 4),
                                       progress=round(self.overall, 4), eta_s=self.eta_s(), message=message,
                                       metrics=metrics, worker_id=self.worker_id)
        except SQLAlchemyError as exc:  # the database being away for a moment must not fail the stage
            log.warning("job %s: progress not recorded (%s)", self.job_id, exc)

    def log_line(self, message: str, level: int) -> None:
        self.check_cancel()
        try:
            self.store.add_event(self.job_id, "log", stage=self.stage, message=message,
                                 data={"level": logging.getLevelName(level)})
        except SQLAlchemyError as exc:
            log.warning("job %s: log line not recorded (%s)", self.job_id, exc)


class JobTask:
    def __init__(self, reporter: StageReporter, description: str, total: float | None) -> None:
        self.reporter, self.description, self.total = reporter, description, total
        self.completed = 0.0
        self.metrics: dict[str, Any] = {}

    def advance(self, n: float = 1, **metrics: Any) -> None:
        self.completed += n
        self._report(metrics)

    def update(self, completed: float | None = None, total: float | None = None, **metrics: Any) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        self._report(metrics)

    def _report(self, metrics: dict[str, Any], force: bool = False) -> None:
        self.metrics.update(metrics)
        self.reporter.task_progress(self.description, self.completed, self.total, self.metrics, force=force)


class JobProgress:
    """The ``Progress`` of a stage running as part of a job (see the module docstring)."""

    def __init__(self, reporter: StageReporter, logger: logging.Logger | None = None) -> None:
        self.reporter, self.logger = reporter, logger

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[JobTask]:
        task = JobTask(self.reporter, description, total)
        task._report({}, force=True)
        yield task
        self.reporter.task_finished()

    def log(self, message: str, level: int = logging.INFO) -> None:
        if self.logger is not None:
            self.logger.log(level, message)
        self.reporter.log_line(message, level)


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    """Metrics as JSON values (stages may pass numpy or torch scalars)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if hasattr(value, "item"):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None  # NaN and infinities are not JSON (PostgreSQL refuses them)
        out[key] = value if value is None or isinstance(value, (bool, int, float, str)) else str(value)
    return out
