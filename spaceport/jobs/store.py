"""The job store: owners, API keys, jobs, stage runs and events in one SQL database (SQLite file or PostgreSQL).

``open_store(url)`` applies the Alembic migrations and returns a ``Store``; every method is one short
transaction and returns detached rows (plain attribute holders, safe to keep after the call).

The queue lives here. A worker claims a job with a compare-and-set on ``claimed_by``, keeps the claim alive
with ``heartbeat``, and ``requeue_stale`` gives the jobs of a worker that stopped heartbeating back to the
queue (restart recovery). On SQLite every write transaction starts with ``BEGIN IMMEDIATE`` (WAL mode,
30 s busy timeout), so the API and worker processes can share the file without "database is locked" races.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import secrets
import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, and_, create_engine, event, func, or_, select, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from spaceport.jobs.models import (
    ACTIVE_STATES,
    EVENT_KINDS,
    FINAL_STATES,
    JOB_STATES,
    STAGE_RUN_STATES,
    ApiKey,
    Event,
    Job,
    Owner,
    StageRun,
    utcnow,
)
from spaceport.workspace import SpaceportError

MIGRATIONS_DIR = Path(__file__).resolve().with_name("migrations")
KEY_PREFIX = "sp_"
KEY_DISPLAY_CHARS = 10
SQLITE_BUSY_TIMEOUT_S = 30
# any constant: PostgreSQL processes starting together run the migrations one after the other
MIGRATION_LOCK_ID = 0x5350_4350


class JobLimitReached(SpaceportError):
    """The owner already has the allowed number of queued + running jobs."""


@dataclass(frozen=True)
class JobPage:
    jobs: list[Job]
    next_cursor: str | None  # pass back to list_jobs for the next (older) page; None on the last page


@dataclass(frozen=True)
class StageStats:
    stage: str
    state: str
    count: int
    seconds_sum: float


# -- opening -------------------------------------------------------------------------------------------


def normalize_database_url(database_url: str) -> URL:
    """``postgresql://`` and ``postgres://`` mean the psycopg 3 driver; SQLite paths get their folder made."""
    url = make_url(database_url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            raise SpaceportError(f"{database_url}: the job store needs a SQLite file (sqlite:////path/spaceport.db) "
                                 "that the API and worker processes can share, not an in-memory database")
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    return url


def open_store(database_url: str) -> Store:
    """Connect, bring the schema up to date (Alembic, applied automatically) and return the store."""
    url = normalize_database_url(database_url)
    engine = _make_engine(url)
    try:
        upgrade_database(engine)
    except BaseException:
        engine.dispose()
        raise
    return Store(engine)


def _make_engine(url: URL) -> Engine:
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S, "check_same_thread": False},
                           pool_size=10, max_overflow=20)

    @event.listens_for(engine, "connect")
    def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # the "begin" hook below issues BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Any) -> None:
        # a deferred transaction that reads and then writes can fail at once with SQLITE_BUSY when another
        # process wrote in between; taking the write lock up front makes writers wait (busy_timeout) instead
        immediate = connection.get_execution_options().get("sqlite_immediate", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _writer(engine: Engine) -> Engine:
    return engine.execution_options(sqlite_immediate=True) if engine.dialect.name == "sqlite" else engine


def alembic_config(connection: Any = None, database_url: str | None = None) -> Config:
    """A programmatic Alembic config pointing at the package's migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def upgrade_database(engine: Engine) -> None:
    with _writer(engine).begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
        command.upgrade(alembic_config(connection), "head")


# -- keys ----------------------------------------------------------------------------------------------


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_job_id() -> str:
    """12 URL-safe characters (72 random bits), never starting with '-': ids are command-line arguments
    (`spaceport jobs show ID`), where a leading '-' reads as an option."""
    while (job_id := secrets.token_urlsafe(9)).startswith("-"):
        pass
    return job_id


def _encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, _, job_id = raw.partition("|")
        created_at = datetime.fromisoformat(created)
        if not job_id or created_at.tzinfo is None:
            raise ValueError(raw)
        return created_at, job_id
    except ValueError as exc:
        raise SpaceportError(f"cursor {cursor!r} is not one this server gave out: pass the next_cursor of the "
                             "previous page, or no cursor for the newest jobs") from exc


# -- the store -----------------------------------------------------------------------------------------


class Store:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._write_sessions = sessionmaker(_writer(engine), expire_on_commit=False)
        self._read_sessions = sessionmaker(engine, expire_on_commit=False)
        # SQLite has one writer at a time; threads of this process queue here instead of in SQLite's busy
        # handler, which polls with sleeps of up to 100 ms (other processes still wait there)
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else contextlib.nullcontext()

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with self._write_lock, self._write_sessions.begin() as session:
            yield session

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._read_sessions.begin() as session:
            yield session

    # -- owners and API keys ---------------------------------------------------------------------------

    def create_owner(self, name: str) -> Owner:
        try:
            with self._write() as session:
                owner = Owner(name=name)
                session.add(owner)
                session.flush()
                return owner
        except IntegrityError as exc:
            raise SpaceportError(f"owner {name!r} exists already; create a key for it instead") from exc

    def get_owner(self, name: str) -> Owner | None:
        with self._read() as session:
            return session.scalars(select(Owner).where(Owner.name == name)).one_or_none()

    def ensure_owner(self, name: str) -> Owner:
        """The owner called ``name``, created if needed."""
        return self.get_owner(name) or self._create_owner_racing(name)

    def _create_owner_racing(self, name: str) -> Owner:
        try:
            return self.create_owner(name)
        except SpaceportError:
            owner = self.get_owner(name)  # another process created it in between
            assert owner is not None
            return owner

    def create_api_key(self, owner_id: int) -> str:
        """A new key for the owner. Only its hash is stored: the plaintext returned here is the only copy."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        with self._write() as session:
            session.add(ApiKey(owner_id=owner_id, key_hash=hash_key(key), prefix=key[:KEY_DISPLAY_CHARS]))
        return key

    def owner_for_key(self, key: str) -> Owner | None:
        with self._read() as session:
            return session.scalars(
                select(Owner).join(ApiKey, ApiKey.owner_id == Owner.id)
                .where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None))
            ).one_or_none()

    # -- jobs ------------------------------------------------------------------------------------------

    def create_job(
        self,
        owner_id: int,
        *,
        input_url: str,
        steps: str,
        preset: str,
        settings: dict[str, Any],
        config: dict[str, Any],
        workspace_url: str,
        resource: str = "cpu",
        notify_email: str | None = None,
        webhook_url: str | None = None,
        job_id: str | None = None,
        max_active: int | None = None,
    ) -> Job:
        """Record a job in state ``queued``; raise JobLimitReached when the owner has ``max_active`` jobs queued
        or running. The count and the insert are one transaction, serialized per owner."""
        with self._write() as session:
            # row lock on PostgreSQL (SQLite's BEGIN IMMEDIATE already serializes writers)
            session.execute(select(Owner.id).where(Owner.id == owner_id).with_for_update())
            if max_active is not None:
                active = self._count_active(session, owner_id)
                if active >= max_active:
                    raise JobLimitReached(
                        f"you have {active} jobs queued or running, the limit per owner is {max_active}: wait "
                        "for one to finish or cancel one (POST /v1/jobs/{id}/cancel)")
            now = utcnow()
            job = Job(id=job_id or new_job_id(), owner_id=owner_id, input_url=input_url, steps=steps,
                      preset=preset, settings=settings, config=config, workspace_url=workspace_url,
                      resource=resource, notify_email=notify_email, webhook_url=webhook_url, state="queued",
                      progress=0.0, metrics={}, cancel_requested=False, created_at=now, updated_at=now)
            session.add(job)
            session.flush()
            session.add(Event(job_id=job.id, kind="state", message="queued", data={"state": "queued"}, time=now))
            return job

    @staticmethod
    def _count_active(session: Session, owner_id: int) -> int:
        return session.scalar(select(func.count()).select_from(Job)
                              .where(Job.owner_id == owner_id, Job.state.in_(ACTIVE_STATES))) or 0

    def count_active_jobs(self, owner_id: int) -> int:
        with self._read() as session:
            return self._count_active(session, owner_id)

    def get_job(self, owner_id: int | None, job_id: str) -> Job | None:
        """The job, or None when it does not exist or belongs to another owner (``owner_id=None``: any owner)."""
        with self._read() as session:
            query = select(Job).where(Job.id == job_id)
            if owner_id is not None:
                query = query.where(Job.owner_id == owner_id)
            return session.scalars(query).one_or_none()

    def list_jobs(self, owner_id: int, *, limit: int = 20, cursor: str | None = None,
                  state: str | None = None) -> JobPage:
        """The owner's jobs, newest first, ``limit`` at a time (keyset paging: stable while jobs are added)."""
        query = select(Job).where(Job.owner_id == owner_id)
        if state is not None:
            query = query.where(Job.state == state)
        if cursor:
            created_at, job_id = _decode_cursor(cursor)
            query = query.where(or_(Job.created_at < created_at,
                                    and_(Job.created_at == created_at, Job.id < job_id)))
        query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
        with self._read() as session:
            jobs = list(session.scalars(query))
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return JobPage(jobs=jobs, next_cursor=_encode_cursor(jobs[-1]) if more else None)

    # -- claiming (executors) --------------------------------------------------------------------------

    def claim_next_job(self, worker_id: str, resources: Collection[str] | None = None) -> Job | None:
        """Claim the oldest unclaimed job (queued, or running between stages) whose next stage needs one of
        ``resources`` (None: any); None when there is nothing to do. Safe with any number of workers."""
        for _ in range(5):  # lost races retry with the next candidate
            with self._write() as session:
                candidates = select(Job.id).where(
                    Job.state.in_(ACTIVE_STATES), Job.claimed_by.is_(None), Job.cancel_requested.is_(False))
                if resources is not None:
                    candidates = candidates.where(Job.resource.in_(list(resources)))
                candidates = candidates.order_by(Job.created_at, Job.id).limit(1).with_for_update(skip_locked=True)
                job_id = session.scalar(candidates)
                if job_id is None:
                    return None
                job = self._claim(session, job_id, worker_id, stale_before=None)
                if job is not None:
                    return job
        return None

    def claim_job(self, job_id: str, worker_id: str, *, stale_after_s: float | None = None) -> Job | None:
        """Claim one given job (a Celery task names its job). It may be taken when unclaimed, when already
        claimed by ``worker_id``, or, with ``stale_after_s``, when its claimer has not heartbeated for that
        long (a killed worker's re-delivered task). None when another live worker holds it or it is final."""
        stale_before = utcnow() - timedelta(seconds=stale_after_s) if stale_after_s is not None else None
        with self._write() as session:
            return self._claim(session, job_id, worker_id, stale_before=stale_before)

    def _claim(self, session: Session, job_id: str, worker_id: str, stale_before: datetime | None) -> Job | None:
        now = utcnow()
        claimable = or_(Job.claimed_by.is_(None), Job.claimed_by == worker_id)
        if stale_before is not None:
            claimable = or_(claimable, Job.heartbeat_at < stale_before)
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state.in_(ACTIVE_STATES), Job.cancel_requested.is_(False), claimable)
            .values(claimed_by=worker_id, heartbeat_at=now, state="running", updated_at=now,
                    started_at=func.coalesce(Job.started_at, now))
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:
            return None
        job = session.get(Job, job_id, populate_existing=True)
        assert job is not None
        session.add(Event(job_id=job_id, kind="state", message=f"running on {worker_id}",
                          data={"state": "running", "worker": worker_id}, time=now))
        return job

    def heartbeat(self, job_id: str, worker_id: str) -> bool:
        """Keep the claim alive; False when the worker lost it (requeued as stale, or the job ended)."""
        now = utcnow()
        with self._write() as session:
            result = session.execute(update(Job).where(Job.id == job_id, Job.claimed_by == worker_id)
                                     .values(heartbeat_at=now).execution_options(synchronize_session=False))
            return result.rowcount == 1

    def release_job(self, job_id: str, worker_id: str, *, resource: str | None = None) -> bool:
        """Give the claim back while the job stays ``running`` (between stages): the next stage, needing
        ``resource``, may be claimed by another worker. A job whose cancel was asked meanwhile ends
        ``cancelled`` instead. False when ``worker_id`` did not hold it."""
        now = utcnow()
        with self._write() as session:
            job = session.scalars(select(Job).where(Job.id == job_id, Job.claimed_by == worker_id)
                                  .with_for_update()).one_or_none()
            if job is None:
                return False
            job.claimed_by, job.heartbeat_at, job.updated_at = None, None, now
            if resource is not None:
                job.resource = resource
            if job.cancel_requested and not job.is_final:
                job.state, job.finished_at, job.eta_s = "cancelled", now, None
                session.add(Event(job_id=job_id, kind="state", time=now, message="cancelled",
                                  data={"state": "cancelled", "error": None}))
            return True

    def requeue_stale(self, older_than_s: float) -> list[str]:
        """Jobs whose worker has not heartbeated for ``older_than_s`` go back to ``queued`` (or to ``cancelled``
        when a cancel was asked); their running stage runs are marked ``lost``. Returns the job ids."""
        now = utcnow()
        cutoff = now - timedelta(seconds=older_than_s)
        with self._write() as session:
            stale = list(session.scalars(
                select(Job).where(Job.state == "running", Job.claimed_by.is_not(None), Job.heartbeat_at < cutoff)
                .with_for_update(skip_locked=True)))
            for job in stale:
                worker = job.claimed_by
                job.state = "cancelled" if job.cancel_requested else "queued"
                job.claimed_by = None
                job.heartbeat_at = None
                job.updated_at = now
                job.eta_s = None
                if job.state == "cancelled":
                    job.finished_at = now
                session.execute(update(StageRun).where(StageRun.job_id == job.id, StageRun.state == "running")
                                .values(state="lost", ended_at=now,
                                        error=f"worker {worker} stopped heartbeating")
                                .execution_options(synchronize_session=False))
                session.add(Event(job_id=job.id, kind="state", time=now, data={"state": job.state},
                                  message=f"worker {worker} stopped responding; job {job.state} again"
                                  if job.state == "queued" else "cancelled (its worker stopped responding)"))
            return [job.id for job in stale]

    # -- progress, stages, state -----------------------------------------------------------------------

    def update_progress(
        self,
        job_id: str,
        *,
        stage: str,
        fraction: float | None = None,
        progress: float | None = None,
        eta_s: float | None = None,
        message: str | None = None,
        metrics: dict[str, Any] | None = None,
        worker_id: str | None = None,
        record_event: bool = True,
    ) -> None:
        """Progress of ``stage`` (``fraction`` 0-1 of the stage; ``progress`` 0-1 of the whole job, kept on the
        job). ``metrics`` are merged into the job's metrics. Refreshes the heartbeat of ``worker_id``.
        Records a ``progress`` event unless ``record_event`` is False (callers throttle to a few per second)."""
        now = utcnow()
        with self._write() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None:
                raise SpaceportError(f"job {job_id} does not exist")
            job.stage = stage
            if progress is not None:
                job.progress = min(max(progress, 0.0), 1.0)
            job.eta_s = eta_s
            if metrics:
                job.metrics = {**job.metrics, **metrics}
            job.updated_at = now
            if worker_id is not None and job.claimed_by == worker_id:
                job.heartbeat_at = now
            if record_event:
                session.add(Event(job_id=job_id, kind="progress", stage=stage, fraction=fraction, message=message,
                                  time=now, data={"progress": job.progress, "eta_s": eta_s,
                                                  "metrics": metrics or {}}))

    def start_stage_run(self, job_id: str, stage: str, *, worker_id: str | None = None,
                        device: str | None = None, resource: str | None = None) -> StageRun:
        """A new attempt of ``stage`` (attempt = earlier attempts + 1); the job's stage becomes ``stage``."""
        now = utcnow()
        with self._write() as session:
            job = session.get(Job, job_id, with_for_update=True)
            if job is None:
                raise SpaceportError(f"job {job_id} does not exist")
            attempts = session.scalar(select(func.count()).select_from(StageRun)
                                      .where(StageRun.job_id == job_id, StageRun.stage == stage)) or 0
            run = StageRun(job_id=job_id, stage=stage, attempt=attempts + 1, worker=worker_id, device=device,
                           state="running", started_at=now)
            session.add(run)
            job.stage = stage
            job.updated_at = now
            if resource is not None:
                job.resource = resource
            session.add(Event(job_id=job_id, kind="stage", stage=stage, fraction=0.0, time=now,
                              message=f"{stage} started (attempt {attempts + 1})",
                              data={"state": "running", "attempt": attempts + 1, "worker": worker_id,
                                    "device": device}))
            session.flush()
            return run

    def finish_stage_run(self, run_id: int, state: str, *, seconds: float | None = None,
                         peak_memory_bytes: int | None = None, peak_gpu_memory_bytes: int | None = None,
                         error: str | None = None, metrics: dict[str, Any] | None = None) -> StageRun:
        """End a stage run (``succeeded`` | ``failed`` | ``cancelled``); ``metrics`` become the job's
        ``metrics[stage]``."""
        if state not in STAGE_RUN_STATES or state == "running":
            raise ValueError(f"stage run state {state!r}: one of {', '.join(STAGE_RUN_STATES[1:])}")
        now = utcnow()
        with self._write() as session:
            run = session.get(StageRun, run_id)
            if run is None:
                raise SpaceportError(f"stage run {run_id} does not exist")
            job = session.get(Job, run.job_id, with_for_update=True)
            assert job is not None
            run.state, run.ended_at, run.error = state, now, error
            run.seconds = seconds if seconds is not None else (now - run.started_at).total_seconds()
            run.peak_memory_bytes, run.peak_gpu_memory_bytes = peak_memory_bytes, peak_gpu_memory_bytes
            if metrics:
                job.metrics = {**job.metrics, run.stage: metrics}
            job.updated_at = now
            session.add(Event(job_id=run.job_id, kind="stage", stage=run.stage, time=now,
                              fraction=1.0 if state == "succeeded" else None,
                              message=f"{run.stage} {state}" + (f": {error}" if error else ""),
                              data={"state": state, "attempt": run.attempt, "seconds": run.seconds,
                                    "peak_memory_bytes": peak_memory_bytes,
                                    "peak_gpu_memory_bytes": peak_gpu_memory_bytes, "metrics": metrics or {}}))
            return run

    def stage_runs(self, job_id: str) -> list[StageRun]:
        with self._read() as session:
            return list(session.scalars(select(StageRun).where(StageRun.job_id == job_id).order_by(StageRun.id)))

    def set_state(self, job_id: str, state: str, *, error: str | None = None, worker_id: str | None = None,
                  message: str | None = None) -> bool:
        """Move a job to ``state``. A final state is never left; with ``worker_id`` the change only happens
        while that worker holds the claim. Final and ``queued`` states drop the claim. Records a ``state``
        event (the last event of a job is its final state event). False when nothing changed."""
        if state not in JOB_STATES:
            raise ValueError(f"job state {state!r}: one of {', '.join(JOB_STATES)}")
        now = utcnow()
        values: dict[str, Any] = {"state": state, "updated_at": now}
        if error is not None or state in FINAL_STATES:
            values["error"] = error
        if state == "running":
            values["started_at"] = func.coalesce(Job.started_at, now)
        if state in FINAL_STATES or state == "queued":
            values.update(claimed_by=None, heartbeat_at=None)
        if state in FINAL_STATES:
            values.update(finished_at=now, eta_s=None)
        if state == "succeeded":
            values["progress"] = 1.0
        condition = [Job.id == job_id, Job.state.not_in(FINAL_STATES)]
        if worker_id is not None:
            condition.append(Job.claimed_by == worker_id)
        with self._write() as session:
            result = session.execute(update(Job).where(*condition).values(**values)
                                     .execution_options(synchronize_session=False))
            if result.rowcount != 1:
                return False
            session.add(Event(job_id=job_id, kind="state", time=now, message=message or state,
                              data={"state": state, "error": error}))
            return True

    def request_cancel(self, owner_id: int | None, job_id: str) -> Job | None:
        """Cancel a job: at once when no worker holds it, else flag it (the worker stops the running stage and
        sets ``cancelled``). A final job is returned unchanged; None when not found for this owner."""
        now = utcnow()
        with self._write() as session:
            query = select(Job).where(Job.id == job_id).with_for_update()
            if owner_id is not None:
                query = query.where(Job.owner_id == owner_id)
            job = session.scalars(query).one_or_none()
            if job is None or job.is_final:
                return job
            if job.claimed_by is None:
                job.state, job.finished_at, job.eta_s = "cancelled", now, None
                session.add(Event(job_id=job_id, kind="state", time=now, message="cancelled",
                                  data={"state": "cancelled", "error": None}))
            elif not job.cancel_requested:
                session.add(Event(job_id=job_id, kind="log", stage=job.stage, time=now,
                                  message=f"cancel requested; stopping {job.stage or 'the job'}"))
            job.cancel_requested = True
            job.updated_at = now
            return job

    def is_cancel_requested(self, job_id: str) -> bool:
        with self._read() as session:
            return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    # -- events ----------------------------------------------------------------------------------------

    def add_event(self, job_id: str, kind: str, *, stage: str | None = None, fraction: float | None = None,
                  message: str | None = None, data: dict[str, Any] | None = None) -> int:
        """Append an event; returns its id (ids grow in commit order per job, so SSE resume misses nothing)."""
        if kind not in EVENT_KINDS:
            raise ValueError(f"event kind {kind!r}: one of {', '.join(EVENT_KINDS)}")
        with self._write() as session:
            # the job's row lock orders concurrent writers of one job (PostgreSQL sequences alone do not)
            if session.scalar(select(Job.id).where(Job.id == job_id).with_for_update()) is None:
                raise SpaceportError(f"job {job_id} does not exist")
            row = Event(job_id=job_id, kind=kind, stage=stage, fraction=fraction, message=message, data=data,
                        time=utcnow())
            session.add(row)
            session.flush()
            return row.id

    def events_after(self, job_id: str, last_event_id: int = 0, limit: int = 1000) -> list[Event]:
        with self._read() as session:
            return list(session.scalars(select(Event).where(Event.job_id == job_id, Event.id > last_event_id)
                                        .order_by(Event.id).limit(limit)))

    # -- figures for /metrics --------------------------------------------------------------------------

    def job_counts(self) -> dict[str, int]:
        """Jobs by state, every state present (0 when none)."""
        with self._read() as session:
            rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
        counts = dict.fromkeys(JOB_STATES, 0)
        counts.update({state: count for state, count in rows})
        return counts

    def queue_depth(self) -> dict[str, int]:
        """Jobs waiting for a worker (unclaimed, not final) by the resource their next stage needs."""
        with self._read() as session:
            rows = session.execute(select(Job.resource, func.count())
                                   .where(Job.state.in_(ACTIVE_STATES), Job.claimed_by.is_(None))
                                   .group_by(Job.resource)).all()
        depth = {"cpu": 0, "gpu": 0}
        depth.update({resource: count for resource, count in rows})
        return depth

    def stage_stats(self) -> list[StageStats]:
        """Finished stage runs by stage and end state, with their summed duration."""
        with self._read() as session:
            rows = session.execute(select(StageRun.stage, StageRun.state, func.count(),
                                          func.coalesce(func.sum(StageRun.seconds), 0.0))
                                   .where(StageRun.state != "running")
                                   .group_by(StageRun.stage, StageRun.state)).all()
        return [StageStats(stage, state, count, float(seconds)) for stage, state, count, seconds in rows]
