"""``spaceport worker --queues gpu``: one Celery worker process per GPU slot, supervised by this process.

Each slot process is ``spaceport worker --slot gpuN`` with the slot's ``CUDA_VISIBLE_DEVICES`` (and
``CUDA_DEVICE_ORDER=PCI_BUS_ID`` when the GPUs were numbered by nvidia-smi) in its environment, so it, its
forkserver and its stage processes see that one GPU as ``cuda:0``. It consumes the worker's queues with
``--concurrency`` stages at once (default 1: one training per GPU), prefetch 1 and late acknowledgement
(``spaceport.jobs.celery_app``): a busy slot reserves no further message, which goes to a free slot instead. With
no GPU, one slot runs the gpu stages on the CPU (``--gpus none`` hides the GPUs from it).

This process starts no CUDA and runs no stage; it:

* forwards SIGTERM and SIGINT to every slot as SIGTERM (Celery's warm shutdown: a running stage gets SIGTERM, train
  checkpoints, its job goes back to the queue), waits up to ``STOP_GRACE_S`` for them, then SIGKILLs what is left;
  it exits 0;
* starts a slot that ended on its own again after ``RESTART_DELAY_S`` (its job is requeued by the reaper of the
  other slots or of the new one: its holder's pid is gone); a slot that ends within ``QUICK_EXIT_S`` of its start
  ``MAX_QUICK_EXITS`` times in a row, or ends with status 2 (a usage error), stops the worker: exit status 1
  (2 for the usage error);
* asks the kernel to SIGTERM the slots if it dies itself (``PR_SET_PDEATHSIG``), so no slot outlives it.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from spaceport.gpus import Slot

log = logging.getLogger(__name__)

RESTART_DELAY_S = 5.0
QUICK_EXIT_S = 60.0
MAX_QUICK_EXITS = 3
STOP_GRACE_S = 60.0  # longer than a stage's own stop (spaceport.jobs.supervise.TERMINATE_GRACE_S) and its requeue
POLL_S = 0.2
USAGE_ERROR = 2
PR_SET_PDEATHSIG = 1


def slot_command(queues: list[str], concurrency: int, slot: Slot) -> list[str]:
    """The command line of one slot process: this Python, ``spaceport worker`` with the slot's name."""
    return [sys.executable, "-m", "spaceport", "worker", "--queues", ",".join(queues), "--concurrency",
            str(concurrency), "--slot", slot.name]


@dataclass
class SlotProcess:
    slot: Slot
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_exits: int = 0
    restart_at: float | None = None


class SlotSupervisor:
    """Start with :meth:`run` (blocks until the worker stops; returns its exit status)."""

    def __init__(self, slots: list[Slot], command: Callable[[Slot], list[str]]) -> None:
        self.slots = [SlotProcess(slot) for slot in slots]
        self.command = command
        self.stopping = False
        self.exit_status = 0

    # -- life cycle -----------------------------------------------------------------------------------------------

    def run(self) -> int:
        _load_libc()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            log.info("gpu worker: %d slot(s): %s", len(self.slots), "; ".join(s.slot.describe() for s in self.slots))
            for slot in self.slots:
                self._start(slot)
            while not self.stopping:
                self._check_slots()
                time.sleep(POLL_S)
            self._stop_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.exit_status

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if not self.stopping:
            log.info("gpu worker: %s, stopping the slots (running stages checkpoint and go back to the queue)",
                     signal.Signals(signum).name)
        self.stopping = True
        self._signal_all(signal.SIGTERM)

    def _start(self, slot: SlotProcess) -> None:
        env = {**os.environ, **slot.slot.env}
        slot.process = subprocess.Popen(self.command(slot.slot), env=env, preexec_fn=_die_with_parent)
        slot.started_at, slot.restart_at = time.monotonic(), None
        log.info("gpu worker: slot %s started, pid %d", slot.slot.name, slot.process.pid)

    # -- watching -------------------------------------------------------------------------------------------------

    def _check_slots(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None:
                if now >= slot.restart_at:
                    self._start(slot)
                continue
            assert slot.process is not None
            status = slot.process.poll()
            if status is None or self.stopping:
                continue
            self._ended(slot, status, now)
            if self.stopping:
                return

    def _ended(self, slot: SlotProcess, status: int, now: float) -> None:
        name = slot.slot.name
        slot.quick_exits = slot.quick_exits + 1 if now - slot.started_at < QUICK_EXIT_S else 0
        if status == USAGE_ERROR or slot.quick_exits >= MAX_QUICK_EXITS:
            why = "a usage error" if status == USAGE_ERROR else (f"{MAX_QUICK_EXITS} times within {QUICK_EXIT_S:.0f} "
                                                                  "s of its start")
            log.error("gpu worker: slot %s ended with status %s (%s); stopping the worker", name, status, why)
            self.exit_status = USAGE_ERROR if status == USAGE_ERROR else 1
            self.stopping = True
            self._signal_all(signal.SIGTERM)
            return
        log.warning("gpu worker: slot %s (pid %d) ended with status %s; starting it again in %.0f s", name,
                    slot.process.pid if slot.process else -1, status, RESTART_DELAY_S)
        slot.restart_at = now + RESTART_DELAY_S

    # -- stopping -------------------------------------------------------------------------------------------------

    def _alive(self) -> list[subprocess.Popen[bytes]]:
        return [s.process for s in self.slots if s.process is not None and s.process.poll() is None]

    def _signal_all(self, sig: signal.Signals) -> None:
        for process in self._alive():
            try:
                process.send_signal(sig)
            except ProcessLookupError:
                pass

    def _stop_all(self) -> None:
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while self._alive() and time.monotonic() < deadline:
            time.sleep(POLL_S)
        for process in self._alive():
            log.warning("gpu worker: pid %d did not stop within %.0f s; killing it", process.pid, STOP_GRACE_S)
            process.kill()
        for slot in self.slots:
            if slot.process is not None:
                slot.process.wait()
        log.info("gpu worker: every slot stopped")


_libc: Any = None


def _die_with_parent() -> None:
    """In the slot process, between fork and exec: SIGTERM when the supervisor (its parent) dies. Runs only what
    the parent loaded before the fork (the supervisor has a single thread, so no lock is held there)."""
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _load_libc() -> None:
    global _libc
    if _libc is None and sys.platform.startswith("linux"):
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)


def run_slot_workers(slots: list[Slot], queues: list[str], concurrency: int) -> int:
    """Run one ``spaceport worker`` process per slot until stopped; returns the worker's exit status."""
    return SlotSupervisor(slots, lambda slot: slot_command(queues, concurrency, slot)).run()
