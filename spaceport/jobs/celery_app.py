"""Celery on Redis (``SPACEPORT_BROKER_URL=redis://...``): one task per stage, routed by the stage's resource.

``spaceport.run_stage(job_id, stage)`` goes to the queue named by ``STAGES[stage].resource`` (``cpu`` | ``gpu``);
``spaceport worker --queues gpu`` consumes it (one Celery worker process per GPU, ``spaceport.jobs.slot_workers``).
The task claims the job in the store, runs the stage in a child
process (``spaceport.jobs.supervise``, the same code as the embedded pool), then sends the task of the job's next
stage, or ends the job. Messages are acknowledged late and re-queued when a worker is lost; the visibility timeout
is longer than any stage, so Redis itself redelivers an unacknowledged message only a day later.

Because of that, stale work is re-dispatched by the service itself (:class:`Reaper`, running in the API process
and in every worker): jobs whose worker stopped heartbeating (or, on this machine, whose worker process is gone)
are requeued and their stage sent again; jobs that wait for a worker with no message pending for them (a dispatch
lost between two stages) are sent again too. Duplicates are harmless: a task whose stage is not the job's next
one, or whose job another live worker holds, does nothing; a task finding the workspace locked retries later.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import Celery
from sqlalchemy.exc import SQLAlchemyError

from spaceport.formats.job import STEP_STAGES
from spaceport.jobs.models import Job
from spaceport.jobs.runner import next_stage, stage_resource
from spaceport.jobs.store import Store
from spaceport.jobs.supervise import (
    WorkerContext,
    conclude,
    make_worker_id,
    requeue_lost_work,
    supervise_stage,
    unclaimed_active_jobs,
)
from spaceport.settings import Settings
from spaceport.workspace import SpaceportError

log = logging.getLogger(__name__)

TASK_NAME = "spaceport.run_stage"
VISIBILITY_TIMEOUT_S = 24 * 3600  # longer than the longest stage
PENDING_KEY = "spaceport:pending:{job_id}"  # set while a message for the job waits in a queue
PENDING_TTL_S = 6 * 3600
BUSY_RETRY_S = 10
REAP_EVERY_S = 10.0
LOST_DISPATCH_AFTER_S = 30.0

_worker: CeleryWorker | None = None  # the worker of this process (`spaceport worker`), used by the task


def make_celery(settings: Settings) -> Celery:
    if not settings.broker_url:
        raise SpaceportError("Celery needs a broker: set SPACEPORT_BROKER_URL=redis://HOST:6379/0")
    app = Celery("spaceport", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
        task_default_queue="cpu",
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        worker_hijack_root_logger=False,
    )

    @app.task(name=TASK_NAME, bind=True, max_retries=None)
    def run_stage_task(self: Any, job_id: str, stage: str) -> str:
        if _worker is None:
            raise RuntimeError(f"{TASK_NAME} runs in `spaceport worker` processes only")
        result = _worker.run_task(job_id, stage)
        if result == "busy":
            raise self.retry(countdown=BUSY_RETRY_S)
        return result

    return app


class CeleryDispatcher:
    """Sends stage tasks; the API's dispatcher hook (``job_created``) sends a new job's first stage."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        import redis

        self.app = app
        self.redis = redis.Redis.from_url(settings.broker_url)

    def dispatch(self, job_id: str, stage: str) -> None:
        self.mark_pending(job_id, stage)
        self.app.send_task(TASK_NAME, args=[job_id, stage], queue=stage_resource(stage))

    def mark_pending(self, job_id: str, stage: str) -> None:
        self.redis.set(PENDING_KEY.format(job_id=job_id), stage, ex=PENDING_TTL_S)

    def clear_pending(self, job_id: str) -> None:
        self.redis.delete(PENDING_KEY.format(job_id=job_id))

    def is_pending(self, job_id: str) -> bool:
        return bool(self.redis.exists(PENDING_KEY.format(job_id=job_id)))

    def job_created(self, job: Job) -> None:
        try:
            self.dispatch(job.id, STEP_STAGES[job.steps][0])
        except Exception:  # the job is recorded; the reaper sends it once the broker answers
            log.exception("job %s: its first stage could not be sent to the broker", job.id)

    def close(self) -> None:
        self.redis.close()


class CeleryWorker:
    """What a `spaceport worker` process does with a ``spaceport.run_stage`` task."""

    def __init__(self, ctx: WorkerContext, dispatcher: CeleryDispatcher) -> None:
        self.ctx, self.dispatcher = ctx, dispatcher

    def run_task(self, job_id: str, stage: str) -> str:
        """Run ``stage`` of the job if it is the job's next stage and no other live worker holds the job; returns
        what happened (``dropped``, ``next``, ``ended``, ``requeued``, ``busy``)."""
        store, me = self.ctx.store, self.ctx.worker_id
        job = store.get_job(None, job_id)
        if job is None or job.is_final:
            return "dropped"
        expected = next_stage(store, job)
        if expected != stage:
            log.info("job %s: task for %s dropped, the job's next stage is %s", job_id, stage, expected)
            return "dropped"
        claimed = store.claim_job(job_id, me)
        if claimed is None:
            log.info("job %s: task for %s dropped, another worker holds the job", job_id, stage)
            return "dropped"
        self.dispatcher.clear_pending(job_id)
        outcome, reason = supervise_stage(self.ctx, claimed, stage)
        step = conclude(self.ctx, claimed, stage, outcome, reason)
        if step.action == "next":
            assert step.stage is not None
            store.release_job(job_id, me, resource=stage_resource(step.stage))
            self.dispatcher.dispatch(job_id, step.stage)
        elif step.action == "requeued":
            self.dispatcher.dispatch(job_id, stage)
        elif step.action == "busy":
            store.add_event(job_id, "log", stage=stage, message=f"{outcome.error}; trying again in {BUSY_RETRY_S} s")
            store.release_job(job_id, me)
            self.dispatcher.mark_pending(job_id, stage)
        return step.action


class Reaper:
    """Re-dispatches stale work every few seconds (see the module docstring); runs in a daemon thread."""

    def __init__(self, ctx: WorkerContext, dispatcher: CeleryDispatcher, *, every_s: float = REAP_EVERY_S,
                 lost_dispatch_after_s: float = LOST_DISPATCH_AFTER_S) -> None:
        self.ctx, self.dispatcher = ctx, dispatcher
        self.every_s = min(every_s, ctx.settings.stale_after_s / 2)
        self.lost_dispatch_after_s = lost_dispatch_after_s
        self._thread = threading.Thread(target=self._loop, name="spaceport-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self.ctx.stop.set()
        self._thread.join(self.every_s + 5)

    def _loop(self) -> None:
        while not self.ctx.stop.wait(self.every_s):
            try:
                self.reap_once()
            except Exception:  # the broker or the database away for a moment: next round
                log.exception("reaper: this round failed")

    def reap_once(self) -> list[str]:
        """Requeue and re-send stale work; returns the ids of the jobs whose stage was sent again."""
        store = self.ctx.store
        sent = []
        for job_id in requeue_lost_work(self.ctx):
            sent += self._send_next(store, job_id)
        for job_id in unclaimed_active_jobs(store, self.lost_dispatch_after_s):
            if not self.dispatcher.is_pending(job_id):
                sent += self._send_next(store, job_id)
        if sent:
            log.info("reaper: sent again the stages of %s", ", ".join(sent))
        return sent

    def _send_next(self, store: Store, job_id: str) -> list[str]:
        job = store.get_job(None, job_id)
        if job is None or job.is_final:
            return []
        stage = next_stage(store, job)
        if stage is None:
            return []
        self.dispatcher.dispatch(job_id, stage)
        return [job_id]


# -- `spaceport worker` -----------------------------------------------------------------------------------------


def run_worker(settings: Settings, queues: list[str], concurrency: int = 1, loglevel: str = "INFO",
               slot: str | None = None) -> None:
    """A Celery worker consuming ``queues`` (cpu, gpu) with ``concurrency`` stages at once; blocks until stopped
    (SIGTERM or Ctrl-C: running stages get SIGTERM, train checkpoints, and their stage is sent again). ``slot``
    (gpu0, ...) names the GPU slot this process is, in its Celery hostname; its GPU is in its environment."""
    global _worker
    from celery.signals import worker_shutting_down

    from spaceport.jobs.store import open_store

    unknown = [queue for queue in queues if queue not in ("cpu", "gpu")]
    if unknown or not queues:
        raise SpaceportError(f"--queues {','.join(queues)}: name cpu, gpu or both (cpu,gpu)")
    import spaceport.pipeline  # noqa: F401  (now: pycolmap installs its signal handlers at import, before Celery's)
    from spaceport.jobs.child import warm_up

    warm_up()

    app = make_celery(settings)
    store = open_store(settings.resolved_database_url)
    kind = "worker-" + "-".join(queues)
    ctx = WorkerContext(settings, store, make_worker_id(kind))
    hostname = "-".join([kind, *([slot] if slot else []), ctx.worker_id.rsplit(":", 2)[1]]) + "@%h"  # the pid
    dispatcher = CeleryDispatcher(app, settings)
    _worker = CeleryWorker(ctx, dispatcher)
    reaper = Reaper(WorkerContext(settings, store, ctx.worker_id), dispatcher)

    def shutting_down(**_: Any) -> None:
        ctx.stop.set()

    worker_shutting_down.connect(shutting_down, weak=False)
    reaper.start()
    try:
        app.worker_main(["worker", "--queues", ",".join(queues), "--concurrency", str(concurrency), "--pool",
                         "threads", "--prefetch-multiplier", "1", "--hostname", hostname, "--loglevel", loglevel,
                         "--without-gossip", "--without-mingle"])
    finally:
        ctx.stop.set()
        reaper.close()
        dispatcher.close()
        try:
            store.close()
        except SQLAlchemyError:
            pass
