"""The embedded worker pool of ``spaceport serve``: the queue in the database, stages in child processes.

A scheduler thread claims queued jobs from the store whenever a slot of the resource class their next stage needs
is free; one thread per claimed job runs its stages, each in a child process (``spaceport.jobs.supervise``), for
as long as it has a slot for the next one, and otherwise gives the job back to the queue for a slot of the other
class. Slots: ``Settings.cpu_slots`` for cpu stages; for gpu stages one per GPU of ``Settings.gpus``
(``SPACEPORT_GPUS``, ``spaceport.gpus``), whose stage processes get that GPU alone (``CUDA_VISIBLE_DEVICES``),
or ``Settings.gpu_slots`` slots on the CPU when no GPU is used.

Restart recovery: at start, and every few seconds after, jobs held by a worker of this machine that no longer
runs (the previous ``serve`` process, killed) or by any worker that stopped heartbeating go back to the queue;
their workspaces are kept, so finished stages are skipped and training resumes from its newest checkpoint.
On a clean stop the running stages get SIGTERM (train checkpoints) and their jobs are queued again at once.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import SQLAlchemyError

from spaceport.gpus import Slot, gpu_slots
from spaceport.jobs.child import warm_up
from spaceport.jobs.models import Job
from spaceport.jobs.runner import finalize_job, next_stage, requeue_job, stage_resource
from spaceport.jobs.store import Store
from spaceport.jobs.supervise import WorkerContext, conclude, make_worker_id, requeue_lost_work, supervise_stage
from spaceport.settings import Settings

log = logging.getLogger(__name__)

RESOURCES = ("gpu", "cpu")  # the scarcer class is served first
BUSY_RETRY_S = 5.0
REAP_EVERY_S = 10.0


class EmbeddedPool:
    """Start with :meth:`start`, stop with :meth:`close`. :meth:`job_created` (the API's dispatcher hook) wakes the
    scheduler so a new job starts at once instead of at the next poll."""

    def __init__(self, settings: Settings, store: Store, *, poll_s: float = 1.0) -> None:
        self.ctx = WorkerContext(settings, store, make_worker_id("serve"))
        self.slots = {"cpu": [Slot(f"cpu{index}", "cpu") for index in range(settings.cpu_slots)],
                      "gpu": gpu_slots(settings.gpus, cpu_slots_without_gpu=settings.gpu_slots)}
        self._free = {resource: list(slots) for resource, slots in self.slots.items()}
        self.poll_s = poll_s
        self.reap_every_s = min(REAP_EVERY_S, settings.stale_after_s / 2)
        self._slots = threading.Lock()
        self._wake = threading.Event()
        self._job_threads: dict[str, threading.Thread] = {}
        self._scheduler = threading.Thread(target=self._schedule, name="spaceport-scheduler", daemon=True)

    @property
    def worker_id(self) -> str:
        return self.ctx.worker_id

    # -- life cycle -------------------------------------------------------------------------------------------

    def start(self) -> None:
        threading.Thread(target=warm_up, name="spaceport-forkserver-start", daemon=True).start()
        self._reap()
        self._scheduler.start()
        slots = "; ".join(f"{resource}: {', '.join(slot.describe() for slot in slots) or 'none'}"
                          for resource, slots in self.slots.items())
        log.info("embedded worker %s, slots %s", self.worker_id, slots)

    def job_created(self, job: Job) -> None:
        self._wake.set()

    def close(self, timeout_s: float = 20.0) -> None:
        """Stop claiming, stop the running stages (SIGTERM, SIGKILL after a grace period) and queue their jobs
        again, so that the next start picks them up at once."""
        self.ctx.stop.set()
        self._wake.set()
        if self._scheduler.is_alive():
            self._scheduler.join(timeout_s)
        deadline = time.monotonic() + timeout_s
        for thread in list(self._job_threads.values()):
            thread.join(max(0.0, deadline - time.monotonic()))
        for job_id in list(self._job_threads):
            try:
                requeue_job(self.ctx.store, self.ctx.settings, job_id, self.worker_id, "spaceport serve stopped")
            except SQLAlchemyError as exc:
                log.warning("job %s not requeued at stop (%s); it will be when serve starts again", job_id, exc)

    # -- scheduling -------------------------------------------------------------------------------------------

    def _schedule(self) -> None:
        next_reap = time.monotonic() + self.reap_every_s
        while not self.ctx.stop.is_set():
            try:
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + self.reap_every_s
                    self._reap()
                self._claim_for_free_slots()
            except SQLAlchemyError as exc:
                log.warning("embedded worker: the job store is not answering (%s); trying again", exc)
            self._wake.wait(self.poll_s)
            self._wake.clear()

    def _reap(self) -> None:
        requeued = requeue_lost_work(self.ctx)
        if requeued:
            log.info("requeued jobs of workers that are gone: %s", ", ".join(requeued))
            self._wake.set()

    def _claim_for_free_slots(self) -> None:
        for resource in RESOURCES:
            while not self.ctx.stop.is_set() and (slot := self._take_slot(resource)) is not None:
                job = self.ctx.store.claim_next_job(self.worker_id, [resource])
                if job is None:
                    self._give_slot(slot)
                    break
                if job.id in self._job_threads:  # requeued as stale while one of our threads runs it: it still does
                    self._give_slot(slot)
                    continue
                thread = threading.Thread(target=self._run_job, args=(job.id, slot), daemon=True,
                                          name=f"spaceport-job-{job.id}")
                self._job_threads[job.id] = thread
                thread.start()

    def _take_slot(self, resource: str) -> Slot | None:
        with self._slots:
            return self._free[resource].pop(0) if self._free[resource] else None

    def _give_slot(self, slot: Slot) -> None:
        with self._slots:
            self._free[slot.resource].append(slot)
            self._free[slot.resource].sort(key=self.slots[slot.resource].index)  # the lowest free GPU first

    # -- one job ----------------------------------------------------------------------------------------------

    def _run_job(self, job_id: str, slot: Slot) -> None:
        try:
            slot = self._run_stages(job_id, slot)
            if self.ctx.stop.is_set():  # stopped between stages: queued again now, not at the next start
                requeue_job(self.ctx.store, self.ctx.settings, job_id, self.worker_id, "spaceport serve stopped")
        except Exception:  # never let a job thread die silently: the job goes back to the queue
            log.exception("job %s: the embedded worker failed running it; queueing it again", job_id)
            try:
                requeue_job(self.ctx.store, self.ctx.settings, job_id, self.worker_id, "embedded worker error")
            except SQLAlchemyError:
                pass
        finally:
            self._give_slot(slot)
            self._job_threads.pop(job_id, None)
            self._wake.set()

    def _run_stages(self, job_id: str, slot: Slot) -> Slot:
        """Run the job's stages while this thread holds a slot for them; returns the slot it holds at the end."""
        store = self.ctx.store
        while not self.ctx.stop.is_set():
            job = store.get_job(None, job_id)
            if job is None or job.is_final or job.claimed_by != self.worker_id:
                return slot
            stage = next_stage(store, job)
            if stage is None:  # every stage recorded done (the end was not): finish it now
                finalize_job(store, self.ctx.settings, job_id, "succeeded", worker_id=self.worker_id)
                return slot
            needed = stage_resource(stage)
            if needed != slot.resource:
                other = self._take_slot(needed)
                if other is None:
                    store.release_job(job_id, self.worker_id, resource=needed)
                    return slot
                self._give_slot(slot)
                slot = other
            outcome, reason = supervise_stage(self.ctx, job, stage, env=slot.env)
            step = conclude(self.ctx, job, stage, outcome, reason)
            if step.action == "busy":
                store.add_event(job_id, "log", stage=stage, message=f"{outcome.error}; trying again in "
                                f"{BUSY_RETRY_S:.0f} s")
                if self.ctx.stop.wait(BUSY_RETRY_S):
                    return slot
                store.heartbeat(job_id, self.worker_id)
            elif step.action != "next":
                return slot
        return slot
