"""Progress reporting that stages call; the CLI shows it as rich bars, tests use NullProgress.

A stage calls ``progress.task(description, total)`` for each long step, then ``advance``/``update`` on it,
and ``progress.log(message)`` for lines that also belong in the stage's log file.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol


class Task(Protocol):
    def advance(self, n: float = 1, **metrics: Any) -> None: ...

    def update(self, completed: float | None = None, total: float | None = None, **metrics: Any) -> None: ...


class Progress(Protocol):
    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[Task]: ...

    def log(self, message: str, level: int = logging.INFO) -> None: ...


class _NullTask:
    def __init__(self) -> None:
        self.completed = 0.0
        self.total: float | None = None
        self.metrics: dict[str, Any] = {}

    def advance(self, n: float = 1, **metrics: Any) -> None:
        self.completed += n
        self.metrics.update(metrics)

    def update(self, completed: float | None = None, total: float | None = None, **metrics: Any) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        self.metrics.update(metrics)


class NullProgress:
    """Shows nothing; forwards log lines to an optional logger."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger
        self.messages: list[str] = []

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[_NullTask]:
        yield _NullTask()

    def log(self, message: str, level: int = logging.INFO) -> None:
        self.messages.append(message)
        if self.logger is not None:
            self.logger.log(level, message)


class _RichTask:
    def __init__(self, bar: Any, task_id: Any) -> None:
        self.bar, self.task_id = bar, task_id

    def advance(self, n: float = 1, **metrics: Any) -> None:
        self.bar.update(self.task_id, advance=n, info=_format_metrics(metrics))

    def update(self, completed: float | None = None, total: float | None = None, **metrics: Any) -> None:
        kwargs: dict[str, Any] = {"info": _format_metrics(metrics)} if metrics else {}
        if completed is not None:
            kwargs["completed"] = completed
        if total is not None:
            kwargs["total"] = total
        self.bar.update(self.task_id, **kwargs)


def _format_metrics(metrics: dict[str, Any]) -> str:
    parts = []
    for key, value in metrics.items():
        parts.append(f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


class RichProgress:
    """Rich progress bars on the console plus the stage's log file."""

    def __init__(self, logger: logging.Logger | None = None, console: Any = None) -> None:
        from rich.console import Console

        self.logger = logger
        self.console = console or Console(stderr=True)

    @contextmanager
    def task(self, description: str, total: float | None = None) -> Iterator[_RichTask]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichBar

        bar = RichBar(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            console=self.console,
            transient=False,
        )
        with bar:
            task_id = bar.add_task(description, total=total, info="")
            yield _RichTask(bar, task_id)
        if self.logger is not None:
            self.logger.info("done: %s", description)

    def log(self, message: str, level: int = logging.INFO) -> None:
        if self.logger is not None:
            self.logger.log(level, message)
        style = "yellow" if level >= logging.WARNING else "dim"
        self.console.print(f"[{style}]{message}[/{style}]")
