"""Running one stage of one job, the code every executor shares, and the job-level steps around it.

:func:`run_job_stage` is what runs inside the stage's child process (``spaceport.jobs.child``), started by the
embedded pool of ``spaceport serve`` or by a Celery worker (``spaceport.jobs.supervise``): it brings the job's
workspace to local disk (restored from object storage when the workspace URL is remote; the input staged with
``storage.stage_input`` the first time), takes the workspace lock, runs ``pipeline.run_stage`` with a
:class:`~spaceport.jobs.events.JobProgress`, records the stage run and uploads the stage's outputs.

The rest is what a supervisor does before and after: which stage comes next (:func:`next_stage`), ending a job
with its notifications (:func:`finalize_job`), giving a job back to the queue (:func:`requeue_job`).
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from spaceport.formats.atomic import PARTIAL
from spaceport.formats.job import STEP_STAGES
from spaceport.jobs.layout import input_import_roots
from spaceport.jobs.models import Job
from spaceport.jobs.notify import (
    NotificationError,
    artifact_url,
    deliver_webhook,
    job_email,
    send_email,
    webhook_payload,
)
from spaceport.jobs.store import Store
from spaceport.settings import Settings
from spaceport.storage import DONE_MARKER, Storage, open_storage, stage_input, sync_stage_outputs
from spaceport.workspace import LOCK_FILE, STAGE_DIRS, SpaceportError, Workspace, WorkspaceBusy

log = logging.getLogger(__name__)

OutcomeKind = Literal["succeeded", "failed", "cancelled", "interrupted", "busy", "skipped"]
INPUT_STAGING = ".input-staging"
CHECKPOINT_UPLOAD_EVERY_S = 5.0
EMAIL_STATES = frozenset({"succeeded", "failed"})  # a webhook hears of every final state, cancelled included


@dataclass
class StageOutcome:
    """How one stage run ended, as the child process reports it to its supervisor.

    ``interrupted``: stopped by a signal without a cancel (the worker is shutting down, or lost its claim): the
    job goes back to the queue. ``busy``: another process holds the workspace lock. ``skipped``: the job was gone
    or already final.
    """

    kind: OutcomeKind
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StageOutcome:
        return cls(kind=data["kind"], error=data.get("error"), metrics=data.get("metrics") or {})


# -- which stage, which job ------------------------------------------------------------------------------------


def stage_after(steps: str, stage: str) -> str | None:
    stages = STEP_STAGES[steps]
    index = stages.index(stage)
    return stages[index + 1] if index + 1 < len(stages) else None


def next_stage(store: Store, job: Job) -> str | None:
    """The first stage of the job's step selection without a succeeded run; None when all have one."""
    done = {run.stage for run in store.stage_runs(job.id) if run.state == "succeeded"}
    return next((stage for stage in STEP_STAGES[job.steps] if stage not in done), None)


def stage_resource(stage: str) -> str:
    from spaceport.pipeline import STAGES

    return STAGES[stage].resource


# -- where a job's workspace lives -----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobPlace:
    """The job's workspace in storage and its local copy (the same folder when storage is local)."""

    storage: Storage
    local_root: Path

    @property
    def remote(self) -> bool:
        return not self.storage.is_local


def job_place(settings: Settings, job: Job) -> JobPlace:
    storage = open_storage(job.workspace_url, settings.s3_endpoint_url)
    if storage.is_local:
        return JobPlace(storage, Path(storage.root))
    return JobPlace(storage, (settings.data_dir / "cache" / job.id).resolve())


def pull_workspace(place: JobPlace) -> int:
    """Bring the local copy up to date with storage; returns the number of files downloaded.

    A file is downloaded when it is missing here or has another size (logs only when missing: a machine appends
    to its own copy). ``.done`` markers come last, so an interrupted pull never shows a stage done without its
    outputs. Files only present here (a newer checkpoint) are kept.
    """
    storage, root = place.storage, place.local_root
    listing = storage.fs.find(storage.root, withdirs=False, detail=True)
    wanted = []
    for fs_path, info in listing.items():
        rel = fs_path[len(storage.root.rstrip("/")) + 1:]
        parts = PurePosixPath(rel).parts
        if not rel or _is_transient(parts):
            continue
        local = root / rel
        if local.exists() and (parts[0] == "logs" or local.stat().st_size == info.get("size")):
            continue
        wanted.append(rel)
    for rel in sorted(wanted, key=lambda rel: (PurePosixPath(rel).name == DONE_MARKER, rel)):
        storage.get_file(rel, root / rel)
    return len(wanted)


def _is_transient(parts: tuple[str, ...]) -> bool:
    """Temporaries of writes in flight, the lock, the input being staged: never copied between machines."""
    return (any(PARTIAL in part for part in parts) or parts[-1].endswith((".tmp", ".part")) or parts[-1] == LOCK_FILE
            or parts[0] == INPUT_STAGING)


def push_workspace(place: JobPlace, ws: Workspace, names: list[str]) -> None:
    """Upload these workspace entries (stage folders, ``logs``, ``job.json``) when storage is remote."""
    if place.remote:
        present = [name for name in names if (ws.root / name).exists()]
        sync_stage_outputs(ws.root, place.storage, "", present)


@contextmanager
def checkpoint_uploads(place: JobPlace, ws: Workspace, stage: str) -> Iterator[None]:
    """While a stage that checkpoints (train) runs on remote storage, upload its folder after each new checkpoint,
    so that another machine can resume it if this one dies."""
    checkpoints = ws.stage_dir(stage) / "ckpt"
    if not place.remote or stage != "train":
        yield
        return
    stop = threading.Event()

    def upload_new_checkpoints() -> None:
        uploaded: str | None = None
        while not stop.wait(CHECKPOINT_UPLOAD_EVERY_S):
            newest = max((p.name for p in checkpoints.glob("step_*.pt")), default=None)
            if newest is None or newest == uploaded:
                continue
            try:
                push_workspace(place, ws, [STAGE_DIRS[stage]])
                uploaded = newest
            except (OSError, SpaceportError) as exc:  # a checkpoint replaced while uploading: next round
                log.info("checkpoint upload of %s postponed: %s", ws.root, exc)

    thread = threading.Thread(target=upload_new_checkpoints, name=f"checkpoint-upload-{stage}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


# -- one stage, in the child process ---------------------------------------------------------------------------


def run_job_stage(settings: Settings, store: Store, job_id: str, stage: str, worker_id: str) -> StageOutcome:
    """Run ``stage`` of job ``job_id`` here and record it (see the module docstring). Never raises for what the
    stage does: a failing stage is a ``failed`` outcome with the SpaceportError message."""
    job = store.get_job(None, job_id)
    if job is None or job.is_final:
        return StageOutcome("skipped", f"job {job_id} is {'gone' if job is None else job.state}")
    place = job_place(settings, job)
    ws = Workspace(place.local_root)
    try:
        with ws.lock(f"{worker_id} ({stage} of job {job_id})", log=ws.stage_logger(stage).info):
            return _run_locked(settings, store, job, stage, worker_id, place, ws)
    except WorkspaceBusy as exc:
        return StageOutcome("busy", str(exc))


def _run_locked(settings: Settings, store: Store, job: Job, stage: str, worker_id: str, place: JobPlace,
                ws: Workspace) -> StageOutcome:
    from spaceport.devices import describe_device
    from spaceport.jobs.events import JobCancelled, StageReporter
    from spaceport.pipeline import STAGES, run_stage
    from spaceport.presets import PipelineConfig
    from spaceport.splat.train import TrainingInterrupted

    logger = ws.stage_logger(stage)
    config = PipelineConfig.model_validate(job.config)
    device = describe_device(STAGES[stage].config(config))
    run = store.start_stage_run(job.id, stage, worker_id=worker_id, device=device, resource=STAGES[stage].resource)
    logger.info("%s of job %s runs on %s, worker %s, CUDA_VISIBLE_DEVICES=%s", stage, job.id, device, worker_id,
                os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"))
    reporter = StageReporter(store, job.id, job.steps, stage, worker_id)
    started = time.perf_counter()
    try:
        if place.remote:
            pulled = pull_workspace(place)
            logger.info("restored %d files of %s", pulled, place.storage.url())
        prepare_workspace(settings, job, ws, place)
        with checkpoint_uploads(place, ws, stage):
            result = run_stage(ws, stage, config, reporter.make_progress)
    except (JobCancelled, TrainingInterrupted, KeyboardInterrupt) as exc:
        cancelled = store.is_cancel_requested(job.id)
        _push_quietly(place, ws, [STAGE_DIRS[stage], "logs"])
        message = f"{stage} stopped: {exc}" if str(exc) else f"{stage} stopped"
        store.finish_stage_run(run.id, "cancelled" if cancelled else "lost", error=message,
                               seconds=time.perf_counter() - started)
        return StageOutcome("cancelled" if cancelled else "interrupted", message)
    except SpaceportError as exc:
        return _failed(store, place, ws, run.id, started, str(exc))
    except Exception as exc:  # a bug or an unexpected library error: the job fails, the worker stays up
        logger.error("%s", traceback.format_exc())
        return _failed(store, place, ws, run.id, started, f"{stage} failed: {type(exc).__name__}: {exc} "
                       f"(logs/{stage}.log has the traceback)")
    try:
        push_workspace(place, ws, [STAGE_DIRS[stage], "logs", "job.json"])
    except (OSError, SpaceportError) as exc:
        return _failed(store, place, ws, run.id, started, f"{stage} finished but its outputs could not be uploaded "
                       f"to {place.storage.url()}: {exc}; check the storage settings and resubmit")
    metrics = result.metrics
    store.finish_stage_run(run.id, "succeeded", seconds=result.seconds or time.perf_counter() - started,
                           peak_memory_bytes=_gib_to_bytes(metrics, "peak_rss_gib"),
                           peak_gpu_memory_bytes=_gib_to_bytes(metrics, "peak_gpu_gib", "peak_gpu_mem_gib"),
                           metrics=metrics)
    reporter.fraction = 1.0
    store.update_progress(job.id, stage=stage, fraction=1.0, progress=round(reporter.overall, 4), eta_s=None,
                          worker_id=worker_id, record_event=False)
    return StageOutcome("succeeded", metrics=metrics)


def _failed(store: Store, place: JobPlace, ws: Workspace, run_id: int, started: float, message: str) -> StageOutcome:
    _push_quietly(place, ws, ["logs", "job.json"])
    store.finish_stage_run(run_id, "failed", error=message, seconds=time.perf_counter() - started)
    return StageOutcome("failed", message)


def _push_quietly(place: JobPlace, ws: Workspace, names: list[str]) -> None:
    try:
        push_workspace(place, ws, names)
    except (OSError, SpaceportError) as exc:
        log.warning("could not upload %s of %s: %s", names, ws.root, exc)


def _gib_to_bytes(metrics: dict[str, Any], *names: str) -> int | None:
    for name in names:
        value = metrics.get(name)
        if isinstance(value, (int, float)):
            return int(value * 2**30)
    return None


def prepare_workspace(settings: Settings, job: Job, ws: Workspace, place: JobPlace) -> None:
    """The job's input under input/ (staged from its input_url the first time) and job.json with its config."""
    from spaceport.pipeline import prepare_job
    from spaceport.presets import PipelineConfig

    config = PipelineConfig.model_validate(job.config)
    if ws.input_dir.is_dir() and any(ws.input_dir.iterdir()):
        prepare_job(ws, job.steps, config, None, preset=job.preset, settings=job.settings)
        return
    staging = ws.root / INPUT_STAGING
    shutil.rmtree(staging, ignore_errors=True)
    try:
        stage_input(job.input_url, staging, import_roots=input_import_roots(settings),
                    endpoint_url=settings.s3_endpoint_url)
        ws.update_job(source=None)  # the staging folder is this machine's, not the job's source
        prepare_job(ws, job.steps, config, staging, preset=job.preset, settings=job.settings)
        ws.update_job(source=job.input_url)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    push_workspace(place, ws, ["input", "job.json"])


# -- the job level: ending, requeueing --------------------------------------------------------------------------


def close_running_runs(store: Store, job_id: str, state: str, error: str, stage: str | None = None) -> None:
    """End the job's stage runs still marked running (their process died without recording the end)."""
    for run in store.stage_runs(job_id):
        if run.state == "running" and (stage is None or run.stage == stage):
            store.finish_stage_run(run.id, state, error=error)


def requeue_job(store: Store, settings: Settings, job_id: str, holder: str, reason: str) -> bool:
    """Give a job held by ``holder`` back to the queue (or end it as cancelled when a cancel was asked)."""
    close_running_runs(store, job_id, "lost", reason)
    if store.is_cancel_requested(job_id):
        return finalize_job(store, settings, job_id, "cancelled", worker_id=holder, message=f"cancelled ({reason})")
    return store.set_state(job_id, "queued", worker_id=holder, message=f"queued again: {reason}")


def finalize_job(store: Store, settings: Settings, job_id: str, state: str, *, error: str | None = None,
                 worker_id: str | None = None, message: str | None = None) -> bool:
    """Set the job's final state (only while ``worker_id`` holds it, when given) and send its notifications.
    False when the state did not change (another worker ended it, or it was already final)."""
    if not store.set_state(job_id, state, error=error, worker_id=worker_id, message=message):
        return False
    job = store.get_job(None, job_id)
    if job is not None:
        notify_job_end(store, settings, job)
    return True


def job_summary(settings: Settings, job: Job) -> dict[str, Any]:
    """The job as the API shows it, for e-mails and webhooks."""
    return {"id": job.id, "state": job.state, "stage": job.stage, "steps": job.steps, "preset": job.preset,
            "error": job.error, "progress": job.progress, "metrics": job.metrics,
            "created_at": job.created_at.isoformat(), "finished_at": job.finished_at and job.finished_at.isoformat(),
            "artifacts": list_job_artifacts(settings, job)}


def list_job_artifacts(settings: Settings, job: Job) -> list[dict[str, Any]]:
    from spaceport.api.artifacts import present_artifacts

    try:
        found = present_artifacts(open_storage(job.workspace_url, settings.s3_endpoint_url))
    except (OSError, SpaceportError) as exc:
        log.warning("job %s: artifacts not listed: %s", job.id, exc)
        return []
    return [{"name": spec.name, "size": size, "url": artifact_url(settings, job.id, spec.name)}
            for spec, size in found]


def notify_job_end(store: Store, settings: Settings, job: Job) -> None:
    """E-mail (succeeded / failed, when the job has an address and SMTP is configured) and webhook (every final
    state); each delivery, or why there was none, is recorded as a ``notification`` event."""
    summary = job_summary(settings, job)
    if job.notify_email and job.state in EMAIL_STATES:
        _send_job_email(store, settings, job, summary)
    if job.webhook_url:
        def record(entry: dict[str, Any]) -> None:
            outcome = f"HTTP {entry['status_code']}" if "status_code" in entry else entry.get("error", "")
            store.add_event(job.id, "notification", message=f"webhook try {entry['attempt']}: {outcome}",
                            data={"channel": "webhook", **entry})

        deliver_webhook(job.webhook_url, webhook_payload(summary, settings), settings.webhook_secret or None,
                        record=record)


def _send_job_email(store: Store, settings: Settings, job: Job, summary: dict[str, Any]) -> None:
    data: dict[str, Any] = {"channel": "email", "to": job.notify_email}
    if not settings.smtp_host:
        store.add_event(job.id, "notification", message=f"no e-mail to {job.notify_email}: no SMTP server is "
                        "configured (SPACEPORT_SMTP_HOST)", data={**data, "ok": False})
        return
    subject, text, html = job_email(summary, settings)
    try:
        send_email(settings, job.notify_email, subject, text, html)
    except NotificationError as exc:
        store.add_event(job.id, "notification", message=str(exc), data={**data, "ok": False, "error": str(exc)})
        return
    store.add_event(job.id, "notification", message=f"e-mail sent to {job.notify_email}",
                    data={**data, "ok": True, "subject": subject})
