"""A worker's side of one stage: run it in a child process and watch it; then act on how it ended.

Used alike by the embedded pool of ``spaceport serve`` and by Celery workers. While the child runs, the worker
keeps its claim on the job alive (heartbeat), and stops the child with SIGTERM (SIGKILL after
``TERMINATE_GRACE_S``) when the job's cancel is requested, when the worker shuts down, or when it lost the claim.
The train stage checkpoints on SIGTERM; the others simply end, their finished outputs kept.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Literal

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from spaceport.jobs.child import EXIT_CODES, run_stage_process, stage_process_context
from spaceport.jobs.models import ACTIVE_STATES, Job, utcnow
from spaceport.jobs.runner import (
    StageOutcome,
    close_running_runs,
    finalize_job,
    job_place,
    requeue_job,
    stage_after,
)
from spaceport.jobs.store import Store
from spaceport.settings import Settings

log = logging.getLogger(__name__)

TERMINATE_GRACE_S = 8.0  # SIGTERM, then SIGKILL: a stopped stage ends within ~10 s
POLL_S = 0.25
CANCEL_CHECK_EVERY_S = 1.0
FORKSERVER_LOST = 255  # the exit status multiprocessing reports when the forkserver died before telling it
WORKER_ID = re.compile(r"^(?P<kind>[\w.,-]+)@(?P<host>[^:]+):(?P<pid>\d+):(?P<token>\w+)$")

StopReason = Literal["cancel", "shutdown", "claim lost"]


@dataclass
class WorkerContext:
    """What a worker process shares among its stage runs."""

    settings: Settings
    store: Store
    worker_id: str
    stop: threading.Event = field(default_factory=threading.Event)  # set when the worker shuts down


def make_worker_id(kind: str) -> str:
    """``kind@host:pid:token``: the host and pid tell a worker on this machine whether the holder still runs."""
    return f"{kind}@{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def holder_is_gone(holder: str, my_worker_id: str) -> bool:
    """True when ``holder`` is a worker id of this machine whose process no longer runs (or an earlier life of
    this process: same pid, other token, as a restarted container's pid 1)."""
    match = WORKER_ID.match(holder)
    if match is None or match["host"] != socket.gethostname() or holder == my_worker_id:
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# -- running a stage in a child process -------------------------------------------------------------------------


def supervise_stage(ctx: WorkerContext, job: Job, stage: str,
                    env: dict[str, str] | None = None) -> tuple[StageOutcome, StopReason | None]:
    """Run ``stage`` of ``job`` in a child process until it ends; returns its outcome and why the worker stopped
    it (None when it ended by itself). Its stdout and stderr go to the workspace's ``logs/<stage>.out``; ``env``
    goes into its environment (the slot's GPU)."""
    logs = job_place(ctx.settings, job).local_root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="spaceport-stage-") as scratch, ClaimKeeper(ctx, job.id) as claim:
        result_file = Path(scratch) / "outcome.json"
        child = stage_process_context().Process(
            target=run_stage_process, name=f"spaceport {stage} of {job.id}",
            args=(job.id, stage, ctx.worker_id, str(result_file), ctx.settings, str(logs / f"{stage}.out"), env))
        child.start()  # waits while a new forkserver imports the stages: the claim is kept alive meanwhile
        reason = _watch(ctx, job.id, child, claim)
        exitcode = child.exitcode
        if exitcode == FORKSERVER_LOST and child.pid is not None and not _wait_gone(child.pid, TERMINATE_GRACE_S):
            # the forkserver died, not the stage: without it the stage cannot be watched, so it is stopped
            _signal(child, signal.SIGKILL)
        outcome = _read_outcome(result_file)
        child.close()
    if outcome is None:
        outcome = _outcome_without_report(stage, exitcode if exitcode is not None else -signal.SIGKILL, reason)
    log.info("job %s: %s ended %s%s", job.id, stage, outcome.kind, f" ({reason})" if reason else "")
    return outcome, reason


class ClaimKeeper:
    """Renews the worker's claim on a job every ``heartbeat_s`` in a thread of its own, for as long as the block
    runs; ``lost`` tells when the claim was taken away (the job was requeued as stale, or ended elsewhere)."""

    def __init__(self, ctx: WorkerContext, job_id: str) -> None:
        self.ctx, self.job_id = ctx, job_id
        self.lost = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"spaceport-heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> ClaimKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _renew(self) -> None:
        while not self._done.is_set():
            try:
                if not self.ctx.store.heartbeat(self.job_id, self.ctx.worker_id):
                    self.lost.set()
                    return
            except SQLAlchemyError as exc:  # the database away for a moment: keep the stage running
                log.warning("job %s: heartbeat failed: %s", self.job_id, exc)
            self._done.wait(self.ctx.settings.heartbeat_s)


def _watch(ctx: WorkerContext, job_id: str, child: BaseProcess, claim: ClaimKeeper) -> StopReason | None:
    reason: StopReason | None = None
    next_cancel_check = time.monotonic()
    kill_at: float | None = None
    while True:
        child.join(POLL_S)
        if child.exitcode is not None:
            return reason
        now = time.monotonic()
        if reason is None:
            if now >= next_cancel_check:
                next_cancel_check = now + CANCEL_CHECK_EVERY_S
                reason = _stop_reason(ctx, job_id, claim, check_cancel=True)
            else:
                reason = _stop_reason(ctx, job_id, claim, check_cancel=False)
            if reason is not None:
                log.info("job %s: stopping its stage (%s)", job_id, reason)
                _signal(child, signal.SIGTERM)
                kill_at = now + TERMINATE_GRACE_S
        elif kill_at is not None and now >= kill_at:
            _signal(child, signal.SIGKILL)
            kill_at = None


def _stop_reason(ctx: WorkerContext, job_id: str, claim: ClaimKeeper, check_cancel: bool) -> StopReason | None:
    if ctx.stop.is_set():
        return "shutdown"
    if claim.lost.is_set():
        return "claim lost"
    if check_cancel:
        try:
            if ctx.store.is_cancel_requested(job_id):
                return "cancel"
        except SQLAlchemyError as exc:  # the database away for a moment: keep the stage running
            log.warning("job %s: cancel check failed: %s", job_id, exc)
    return None


def _wait_gone(pid: int, timeout_s: float) -> bool:
    """Wait until process ``pid`` (not our child: we cannot wait for it) has ended; False after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return True
        if state in ("Z", "X"):  # ended; its new parent has not collected it yet
            return True
        time.sleep(POLL_S)
    return False


def _signal(child: BaseProcess, sig: signal.Signals) -> None:
    assert child.pid is not None
    try:
        os.killpg(child.pid, sig)  # the child and whatever it started (it leads its own session)
    except ProcessLookupError:
        try:
            os.kill(child.pid, sig)  # not yet the leader of its session
        except ProcessLookupError:
            pass


def _read_outcome(path: Path) -> StageOutcome | None:
    try:
        return StageOutcome.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError):
        return None


def _outcome_without_report(stage: str, returncode: int, reason: StopReason | None) -> StageOutcome:
    """The child ended without writing its outcome: killed (by us, or by the system), or crashed."""
    if reason == "cancel":
        return StageOutcome("cancelled", f"{stage} stopped: cancelled")
    if reason is not None:
        return StageOutcome("interrupted", f"{stage} stopped: {reason}")
    if returncode < 0:
        how = f"was killed by {signal.Signals(-returncode).name}"
    else:
        code_names = {code: name for name, code in EXIT_CODES.items()}
        how = f"exited with status {returncode}" + (f" ({code_names[returncode]})" if returncode in code_names else "")
    return StageOutcome("failed", f"{stage} crashed: its process {how}; logs/{stage}.out holds its last output "
                                  "(out of memory is a common cause: try smaller settings)")


# -- acting on the outcome --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NextStep:
    """What the worker does after a stage: run ``stage`` next (``next``), nothing (``ended``: the job reached a
    final state, or is someone else's), wait and try again (``busy``), or it went back to the queue (``requeued``)."""

    action: Literal["next", "ended", "busy", "requeued"]
    stage: str | None = None


def conclude(ctx: WorkerContext, job: Job, stage: str, outcome: StageOutcome, reason: StopReason | None) -> NextStep:
    store, settings, me = ctx.store, ctx.settings, ctx.worker_id
    if outcome.kind == "succeeded":
        following = stage_after(job.steps, stage)
        if following is not None:
            return NextStep("next", following)
        finalize_job(store, settings, job.id, "succeeded", worker_id=me)
        return NextStep("ended")
    if outcome.kind == "failed":
        close_running_runs(store, job.id, "failed", outcome.error or "failed", stage)
        finalize_job(store, settings, job.id, "failed", error=outcome.error, worker_id=me,
                     message=f"failed at {stage}")
        return NextStep("ended")
    if outcome.kind == "cancelled":
        close_running_runs(store, job.id, "cancelled", outcome.error or "cancelled", stage)
        finalize_job(store, settings, job.id, "cancelled", worker_id=me, message=f"cancelled during {stage}")
        return NextStep("ended")
    if outcome.kind == "busy":
        return NextStep("busy")
    if outcome.kind == "interrupted" and reason != "claim lost":
        requeue_job(store, settings, job.id, me, f"{stage} was interrupted ({reason or 'stopped by a signal'})")
        return NextStep("requeued")
    return NextStep("ended")  # skipped, or the claim went to another worker: nothing of ours to do


# -- claims of workers that are gone ----------------------------------------------------------------------------


def recover_dead_claims(ctx: WorkerContext) -> list[str]:
    """Requeue the jobs held by a worker of this machine whose process has ended (a `spaceport serve` or
    `spaceport worker` killed before it could give them back); returns their ids."""
    with Session(ctx.store.engine) as session:
        claims = session.execute(select(Job.id, Job.claimed_by).where(
            Job.state == "running", Job.claimed_by.is_not(None))).all()
    requeued = []
    for job_id, holder in claims:
        if holder_is_gone(holder, ctx.worker_id) and requeue_job(
                ctx.store, ctx.settings, job_id, holder, f"its worker {holder} is no longer running"):
            requeued.append(job_id)
    return requeued


def requeue_lost_work(ctx: WorkerContext) -> list[str]:
    """Jobs of workers that died (on this machine) or stopped heartbeating (anywhere), back to the queue."""
    requeued = recover_dead_claims(ctx)
    requeued += ctx.store.requeue_stale(ctx.settings.stale_after_s)
    return requeued


def unclaimed_active_jobs(store: Store, idle_for_s: float) -> list[str]:
    """Ids of jobs queued or between stages that no worker holds and that have not changed for ``idle_for_s``."""
    cutoff = utcnow() - timedelta(seconds=idle_for_s)
    with Session(store.engine) as session:
        return list(session.scalars(select(Job.id).where(
            Job.state.in_(ACTIVE_STATES), Job.claimed_by.is_(None), Job.cancel_requested.is_(False),
            Job.updated_at < cutoff).order_by(Job.created_at)))
