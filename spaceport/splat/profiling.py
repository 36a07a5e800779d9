"""Where a training step's time goes: each part's time (CUDA events on the GPU, the host's wall clock on either
device), host syncs per step (CUDA's sync debug mode) and peak memory.

``train_step`` marks its parts with ``timer.section(name)``; outside the profiled window the timer is
``NULL_TIMER``, whose sections cost one attribute lookup.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

SECTIONS = ("data", "render", "loss", "backward", "optimizer", "strategy")


class NullTimer:
    _null = contextlib.nullcontext()

    def section(self, name: str) -> contextlib.AbstractContextManager:
        return self._null


NULL_TIMER = NullTimer()


@dataclass
class StepTimer:
    """One step's sections: host seconds and, on CUDA, a pair of events around each."""

    cuda: bool
    host_seconds: dict[str, float] = field(default_factory=dict)
    events: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    step_events: tuple[Any, Any] | None = None

    def __post_init__(self) -> None:
        if self.cuda:
            self.step_events = (_event(), _event())
            self.step_events[0].record()

    @contextmanager
    def section(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        if self.cuda:
            start, end = _event(), _event()
            start.record()
        yield
        if self.cuda:
            end.record()
            self.events[name] = (start, end)
        self.host_seconds[name] = self.host_seconds.get(name, 0.0) + time.perf_counter() - begin

    def finish(self) -> None:
        self.host_seconds["step"] = time.perf_counter() - self.started
        if self.cuda:
            self.step_events[1].record()


def _event():
    return torch.cuda.Event(enable_timing=True)


class StepProfiler:
    """Times steps ``start_step`` to ``start_step + num_steps - 1`` of a run (the first steps, with their
    one-off costs, are best left out)."""

    def __init__(self, device: torch.device | str, start_step: int = 100, num_steps: int = 200):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.start, self.stop = start_step, start_step + num_steps
        self.timers: list[StepTimer] = []
        self.syncs = 0
        self._sync_warnings: list | None = None
        self._catcher: warnings.catch_warnings | None = None

    def step_timer(self, step: int) -> StepTimer | NullTimer:
        if not self.start <= step < self.stop:
            return NULL_TIMER
        if self.cuda and self._catcher is None:
            self._count_syncs()
        timer = StepTimer(self.cuda)
        self.timers.append(timer)
        return timer

    def end_step(self, step: int, timer: StepTimer | NullTimer) -> None:
        """After the step's bookkeeping (logging, evaluation, checkpoint), so that their syncs count too."""
        if isinstance(timer, StepTimer):
            timer.finish()
        if step + 1 >= self.stop:
            self.close()

    def _count_syncs(self) -> None:
        self._catcher = warnings.catch_warnings(record=True)
        self._sync_warnings = self._catcher.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def close(self) -> None:
        if self._catcher is None:
            return
        torch.cuda.set_sync_debug_mode("default")
        self.syncs += sum("synchroniz" in str(w.message) for w in self._sync_warnings)
        self._catcher.__exit__(None, None, None)
        self._catcher = None

    def summary(self) -> dict[str, Any]:
        """Mean milliseconds per step of each part (device: CUDA event time, host: wall clock), host syncs per
        step, peak device memory."""
        self.close()
        if self.cuda:
            torch.cuda.synchronize(self.device)
        steps = len(self.timers)
        names = [name for name in SECTIONS if any(name in t.host_seconds for t in self.timers)]
        parts = {}
        for name in [*names, "step"]:
            host = sum(t.host_seconds.get(name, 0.0) for t in self.timers)
            device = None
            if self.cuda:
                pairs = [t.step_events if name == "step" else t.events.get(name) for t in self.timers]
                device = sum(start.elapsed_time(end) for start, end in filter(None, pairs)) / max(steps, 1)
            parts[name] = {"device_ms": None if device is None else round(device, 4),
                           "host_ms": round(1000 * host / max(steps, 1), 4)}
        return {
            "steps": steps,
            "parts": parts,
            "syncs_per_step": round(self.syncs / steps, 3) if self.cuda and steps else None,
            "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated(self.device) / 2**30, 3) if self.cuda else None,
        }


def format_profile(summary: dict[str, Any]) -> str:
    """A table: part, device ms, host ms and share of the step."""
    parts = summary["parts"]
    step = parts.get("step", {})
    total = step.get("device_ms") or step.get("host_ms") or 0.0
    lines = [f"{'part':<10} {'device ms':>10} {'host ms':>10} {'share':>7}"]
    for name, times in parts.items():
        measured = times["device_ms"] if times["device_ms"] is not None else times["host_ms"]
        share = f"{100 * measured / total:6.1f}%" if total and name != "step" else ""
        device = "-" if times["device_ms"] is None else f"{times['device_ms']:.3f}"
        lines.append(f"{name:<10} {device:>10} {times['host_ms']:>10.3f} {share:>7}")
    lines.append(f"{summary['steps']} steps profiled; host syncs per step: "
                 f"{'-' if summary['syncs_per_step'] is None else summary['syncs_per_step']}; peak GPU memory "
                 f"{'-' if summary['peak_gpu_mem_gib'] is None else str(summary['peak_gpu_mem_gib']) + ' GiB'}")
    return "\n".join(lines)
