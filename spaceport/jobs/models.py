"""Tables of the job store (SQLAlchemy 2 typed ORM). The schema itself is made by the Alembic migrations.

Times are timezone-aware UTC everywhere; SQLite stores them without a zone, so ``UTCDateTime`` puts it back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
ACTIVE_STATES = ("queued", "running")
EVENT_KINDS = ("progress", "stage", "state", "log", "notification")
STAGE_RUN_STATES = ("running", "succeeded", "failed", "cancelled", "lost")


EVENT_ID = BigInteger().with_variant(Integer, "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every database (SQLite drops the zone on the way in)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the job store; use datetime.now(UTC)")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    # the same names the migrations give (unique constraints and indexes), on every database
    metadata = MetaData(naming_convention={"uq": "uq_%(table_name)s_%(column_0_name)s",
                                           "ix": "ix_%(table_name)s_%(column_0_name)s"})
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON}


class Owner(Base):
    __tablename__ = "owners"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """Only the SHA-256 of a key is kept; ``prefix`` (its first characters) lets people tell keys apart."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner_created", "owner_id", "created_at"),
        Index("ix_jobs_state_claimed", "state", "claimed_by"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("owners.id", ondelete="CASCADE"))
    input_url: Mapped[str] = mapped_column(Text)
    steps: Mapped[str] = mapped_column(String(16))  # full | sfm | train | compress
    preset: Mapped[str] = mapped_column(String(32))
    settings: Mapped[dict[str, Any]] = mapped_column(default=dict)  # as the user gave them
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)  # resolved PipelineConfig.model_dump()
    state: Mapped[str] = mapped_column(String(16), default="queued")
    stage: Mapped[str | None] = mapped_column(String(32), default=None)
    # resource class ("cpu" | "gpu") of the next stage to run: lets a worker claim only what it can run
    resource: Mapped[str] = mapped_column(String(16), default="cpu")
    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0-1 over the whole job
    eta_s: Mapped[float | None] = mapped_column(Float, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    notify_email: Mapped[str | None] = mapped_column(String(320), default=None)
    webhook_url: Mapped[str | None] = mapped_column(Text, default=None)
    workspace_url: Mapped[str] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    # the lease: a worker owns the job while claimed_by is its id and heartbeat_at is recent
    claimed_by: Mapped[str | None] = mapped_column(String(200), default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(default=None)

    @property
    def is_final(self) -> bool:
        return self.state in FINAL_STATES


class StageRun(Base):
    __tablename__ = "stage_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    worker: Mapped[str | None] = mapped_column(String(200), default=None)
    device: Mapped[str | None] = mapped_column(String(200), default=None)
    state: Mapped[str] = mapped_column(String(16), default="running")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    seconds: Mapped[float | None] = mapped_column(Float, default=None)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    peak_gpu_memory_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)


class Event(Base):
    """One line of a job's history; ``id`` grows monotonically and is the SSE ``id:`` (Last-Event-ID)."""

    __tablename__ = "events"
    # AUTOINCREMENT on SQLite: ids are never reused, even after the newest rows are deleted
    __table_args__ = (Index("ix_events_job_id_id", "job_id", "id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(EVENT_ID, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    time: Mapped[datetime] = mapped_column(default=utcnow)
    kind: Mapped[str] = mapped_column(String(16))  # progress | stage | state | log | notification
    stage: Mapped[str | None] = mapped_column(String(32), default=None)
    fraction: Mapped[float | None] = mapped_column(Float, default=None)
    message: Mapped[str | None] = mapped_column(Text, default=None)
    data: Mapped[dict[str, Any] | None] = mapped_column(default=None)
