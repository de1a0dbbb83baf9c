"""Our own tables: what Procrastinate does not keep about a job.

A job's status lives in one place only, `procrastinate_jobs.status` (with `scheduled_at`); the
`job_overview` view derives the public status from it. See docs/architecture.md.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# Procrastinate's tables, declared only so our foreign keys can name them; they are installed by
# the pinned-schema revision and kept out of autogenerate (see migrations/env.py).
procrastinate_jobs = Table(
    "procrastinate_jobs",
    Base.metadata,
    Column("id", BigInteger, primary_key=True),
    info={"managed_by": "procrastinate"},
)
procrastinate_workers = Table(
    "procrastinate_workers",
    Base.metadata,
    Column("id", BigInteger, primary_key=True),
    info={"managed_by": "procrastinate"},
)


class Job(Base):
    """A job's public identity, input, progress and outcome."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    queue_job_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("procrastinate_jobs.id", ondelete="CASCADE"), unique=True
    )
    """The Procrastinate job that carries this job's queue state (status, schedule, attempts)."""
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    max_attempts: Mapped[int] = mapped_column(Integer)
    """Attempts allowed in the current budget; a manual retry starts a fresh budget."""
    timeout_seconds: Mapped[float] = mapped_column(Double)
    callback_url: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    """SHA-256 of the submitted request, to tell a replay from a different request with the key."""
    progress: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    stage: Mapped[str | None] = mapped_column(Text)
    progress_message: Mapped[str | None] = mapped_column(Text)
    progress_updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    """Last error: {type, message, traceback, retryable}; cleared when the job succeeds."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("progress BETWEEN 0 AND 100", name="progress_percent"),
        CheckConstraint("max_attempts >= 1", name="max_attempts_positive"),
        Index(None, "created_at", "id"),  # newest-first listing and its cursor
    )


class JobAttempt(Base):
    """One run of a job by a worker. An open attempt (no finished_at) holds the job's lease;
    its id is the fencing token every worker write must carry."""

    __tablename__ = "job_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    """1 for the first run of the job, counting across manual retries."""
    worker_id: Mapped[int | None] = mapped_column(BigInteger)
    worker_name: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    outcome: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    __table_args__ = (
        Index(None, "job_id", "number", unique=True),
        # At most one open attempt per job: the lease cannot be held twice.
        Index(
            "uq_job_attempts_open_per_job",
            "job_id",
            unique=True,
            postgresql_where=text("finished_at IS NULL"),
        ),
    )


class JobEvent(Base):
    """A change in a job's life: submitted, started, retry scheduled, finished, cancelled..."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    event: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int | None] = mapped_column(Integer)
    worker_name: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    __table_args__ = (Index(None, "job_id", "id"),)


class Queue(Base):
    """Per-queue settings that every worker obeys."""

    __tablename__ = "queues"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class Worker(Base):
    """What a live worker process says about itself; its heartbeat is Procrastinate's."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("procrastinate_workers.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(Text)
    host: Mapped[str] = mapped_column(Text)
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[list[str]] = mapped_column(ARRAY(Text))
    """Queues it takes jobs from; empty means every queue."""
    concurrency: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
