"""Our own tables: what Procrastinate does not keep about a job.

A job's status lives in one place only, `procrastinate_jobs.status` (with `scheduled_at`); the
`job_overview` view derives the public status from it. See docs/architecture.md.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
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


NO_KEY = "'00000000-0000-0000-0000-000000000000'::uuid"
"""Stands for "no API key" in the per-key unique indexes (NULLs would never collide)."""


class ApiKey(Base):
    """An API key (issue 13, docs/security.md). Only the key's SHA-256 is kept."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[bytes] = mapped_column(LargeBinary, unique=True)
    key_prefix: Mapped[str] = mapped_column(String(16))
    """The key's first characters, to tell keys apart in lists; not enough to use it."""
    queues: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    """Queues it may submit to; NULL: any."""
    job_types: Mapped[list[str] | None] = mapped_column(ARRAY(Text))
    """Job types it may submit; NULL: any."""
    submissions_per_second: Mapped[float | None] = mapped_column(Double)
    max_queued: Mapped[int | None] = mapped_column(Integer)
    upload_bytes_per_day: Mapped[int | None] = mapped_column(BigInteger)
    max_timeout_seconds: Mapped[float | None] = mapped_column(Double)
    max_concurrent_uploads: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        CheckConstraint("role IN ('submitter', 'operator', 'admin')", name="role"),
    )


class ApiSession(Base):
    """A dashboard session: a cookie holding a random token, logged in with a key."""

    __tablename__ = "api_sessions"

    token_hash: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    api_key_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKeyRate(Base):
    """A key's token bucket for submissions per second (jobq_take_tokens)."""

    __tablename__ = "api_key_rates"

    api_key_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    tokens: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ApiKeyUploadDay(Base):
    """Bytes a key uploaded on one UTC day."""

    __tablename__ = "api_key_upload_days"

    api_key_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    bytes: Mapped[int] = mapped_column(BigInteger)


class ApiKeyUploadSlot(Base):
    """An upload in progress for a key; a slot whose process died frees itself at expires_at."""

    __tablename__ = "api_key_upload_slots"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    api_key_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Job(Base):
    """A job's public identity, input, progress and outcome."""

    __tablename__ = "jobs"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    queue_job_id: Mapped[int] = mapped_column(BigInteger, unique=True)
    """The Procrastinate job that carries this job's queue state (status, schedule, attempts).
    Written with it by jobq_submit_jobs and deleted with it by a trigger (revision 0015): no
    foreign key, whose per-row check could flip to a sequential scan (issue 17)."""
    payload: Mapped[dict[str, Any]] = mapped_column(JSONB)
    max_attempts: Mapped[int] = mapped_column(Integer)
    """Attempts allowed in the current budget; a manual retry starts a fresh budget."""
    timeout_seconds: Mapped[float] = mapped_column(Double)
    backoff: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    """Per-job backoff {kind, base_seconds, cap_seconds, jitter, delays}, the fields given;
    null: the job type's policy."""
    retention: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    """The job's own retention, overriding its queue's: {"succeeded": {...}, "failed": {...}}
    from remove_on_complete / remove_on_fail (docs/queues.md); null: the queue's."""
    callback_url: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    """Unique per API key (uq_jobs_idempotency_key)."""
    key: Mapped[str | None] = mapped_column(String(255))
    """The client's own id for the job (BullMQ's jobId), unique per API key while the job
    exists (uq_jobs_key)."""
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
    api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("api_keys.id"),
        server_default=text("nullif(current_setting('jobq.api_key', true), '')::uuid"))
    """The API key that submitted the job; NULL with authentication off or from Python code.
    Filled by the default from the transaction's `jobq.api_key` setting (service/auth.py)."""

    __table_args__ = (
        CheckConstraint("progress BETWEEN 0 AND 100", name="progress_percent"),
        CheckConstraint("max_attempts >= 1", name="max_attempts_positive"),
        Index(None, "created_at", "id"),  # newest-first listing and its cursor
        # The jobs with their own retention, oldest first (jobq_apply_job_retention).
        Index("ix_jobs_retention_created_at", "created_at", "id",
              postgresql_where=text("retention IS NOT NULL")),
        Index(None, "api_key_id", "created_at"),  # a key's own jobs
        # Only the jobs that have a key are in these (revision 0018).
        Index("uq_jobs_key", text(f"coalesce(api_key_id, {NO_KEY})"), "key", unique=True,
              postgresql_where=text("key IS NOT NULL")),
        Index("uq_jobs_idempotency_key", text(f"coalesce(api_key_id, {NO_KEY})"),
              "idempotency_key", unique=True,
              postgresql_where=text("idempotency_key IS NOT NULL")),
    )


class JobAttempt(Base):
    """One run of a job by a worker. An open attempt (no finished_at) holds the job's lease;
    its id is the fencing token every worker write must carry."""

    __tablename__ = "job_attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(UUID)
    """Its job; written only by jobq_* functions that hold the job, deleted with it by a
    trigger on jobs (revision 0015), so no foreign key is checked per row on the hot path."""
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
    job_id: Mapped[uuid.UUID] = mapped_column(UUID)
    """Its job, as for JobAttempt.job_id: no foreign key, deleted with the job by a trigger."""
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    event: Mapped[str] = mapped_column(String(32))
    attempt: Mapped[int | None] = mapped_column(Integer)
    worker_name: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str | None] = mapped_column(Text)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)

    __table_args__ = (Index(None, "job_id", "id"),)


class Queue(Base):
    """Per-queue settings that every worker obeys (docs/queues.md). Every queue with jobs has a
    row; its column defaults are the default policy. Null limits mean "no limit"."""

    __tablename__ = "queues"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    rate_limit: Mapped[int | None] = mapped_column(Integer)
    """At most this many job starts per rate_period_seconds, across all workers."""
    rate_period_seconds: Mapped[float | None] = mapped_column(Double)
    rate_slots: Mapped[list[int] | None] = mapped_column(ARRAY(Integer))
    """The rate window: starts counted in 21 slots of rate_period_seconds / 20, a ring
    (jobq_rate_window); kept by the claim, not a setting."""
    rate_slot: Mapped[int | None] = mapped_column(BigInteger)
    """The number of rate_slots' newest slot (epoch seconds / rate_slot_seconds)."""
    rate_slot_seconds: Mapped[float | None] = mapped_column(Double)
    concurrency_limit: Mapped[int | None] = mapped_column(Integer)
    """At most this many jobs of the queue running at once, across all workers."""
    max_attempts: Mapped[int | None] = mapped_column(Integer)
    """Attempts of a job whose request gives none (null: the job type's)."""
    timeout_seconds: Mapped[float | None] = mapped_column(Double)
    """Timeout of a job whose request gives none (null: the job type's)."""
    backoff: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    """Backoff of a job whose request gives none (null: the job type's)."""
    succeeded_max_age_seconds: Mapped[float | None] = mapped_column(
        Double, server_default=text("86400"))
    """Succeeded jobs are deleted this long after they finished (default a day)."""
    succeeded_max_count: Mapped[int | None] = mapped_column(Integer, server_default=text("1000"))
    """At most this many succeeded jobs are kept, the newest (default 1,000)."""
    failed_max_age_seconds: Mapped[float | None] = mapped_column(
        Double, server_default=text("604800"))
    """Failed jobs are deleted this long after they finished (default 7 days)."""
    failed_max_count: Mapped[int | None] = mapped_column(Integer)
    cancelled_max_age_seconds: Mapped[float | None] = mapped_column(
        Double, server_default=text("86400"))
    """Cancelled jobs are deleted this long after they finished (default a day)."""
    cancelled_max_count: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        CheckConstraint(
            "(rate_limit IS NULL) = (rate_period_seconds IS NULL) "
            "AND (rate_limit IS NULL OR rate_limit >= 1) "
            "AND (rate_period_seconds IS NULL OR rate_period_seconds > 0)",
            name="rate_limit_whole"),
        CheckConstraint("concurrency_limit >= 1", name="concurrency_limit_positive"),
        CheckConstraint("max_attempts BETWEEN 1 AND 100", name="max_attempts_range"),
        CheckConstraint("timeout_seconds > 0", name="timeout_positive"),
        CheckConstraint(
            "succeeded_max_age_seconds >= 0 AND succeeded_max_count >= 0 "
            "AND failed_max_age_seconds >= 0 AND failed_max_count >= 0 "
            "AND cancelled_max_age_seconds >= 0 AND cancelled_max_count >= 0",
            name="retention_not_negative"),
    )


class Schedule(Base):
    """A recurring job (docs/queues.md): every tick of `cron` in `timezone`, or every
    `interval_seconds` from `anchor_at`, one job made from the `job` template."""

    __tablename__ = "schedules"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    cron: Mapped[str | None] = mapped_column(Text)
    interval_seconds: Mapped[float | None] = mapped_column(Double)
    timezone: Mapped[str] = mapped_column(Text, server_default=text("'UTC'"))
    job: Mapped[dict[str, Any]] = mapped_column(JSONB)
    """The job request each tick submits (service/domain/requests.JobRequest)."""
    paused: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    origin: Mapped[str] = mapped_column(String(8), server_default=text("'api'"))
    """`api` (made over REST) or `code` (declared in code, synced by workers)."""
    anchor_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    """Since when the schedule ticks as it does now: no tick before it makes a job."""
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (
        CheckConstraint("(cron IS NULL) <> (interval_seconds IS NULL)", name="cron_or_interval"),
        CheckConstraint("origin IN ('api', 'code')", name="origin_known"),
    )


class ScheduleTick(Base):
    """A tick of a schedule that made its job; the key makes it one job per tick."""

    __tablename__ = "schedule_ticks"

    schedule_name: Mapped[str] = mapped_column(
        String(128), ForeignKey("schedules.name", ondelete="CASCADE"), primary_key=True)
    tick_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    job_id: Mapped[uuid.UUID | None] = mapped_column(UUID)
    """The job it made (left as it is when retention deletes the job)."""
    made_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class QueueCount(Base):
    """How many jobs a queue has in a status group (waiting, running, succeeded, failed,
    cancelled), in shards summed on read; kept by triggers on procrastinate_jobs in the
    transaction of every change (docs/queues.md)."""

    __tablename__ = "queue_counts"

    queue_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)


class JobStatsDaily(Base):
    """Jobs submitted, started, succeeded, failed, cancelled, retried and requeued per day
    (UTC), queue and type: what the reports and /metrics' counters read (docs/reporting.md,
    docs/events.md). Retention never deletes it."""

    __tablename__ = "job_stats_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    queue_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    submitted: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    succeeded: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    failed: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cancelled: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    retried: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    """Back in line after a failed attempt, or by a client's retry (client_retried of them)."""
    started: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    """Attempts started."""
    requeued: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    """Attempts stopped and not counted (worker shutdown, fencing): the job waits again."""
    client_retried: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


class JobStatsHistogram(Base):
    """Run times (`run`) and first waits (`wait`) per day, queue and type, as histogram
    buckets (jobq_stats_bucket), for percentiles; with the largest value and the sum of each
    bucket. The reports and /metrics' histograms read it."""

    __tablename__ = "job_stats_histograms"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    queue_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    metric: Mapped[str] = mapped_column(String(8), primary_key=True)
    bucket: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger)
    max_ms: Mapped[float] = mapped_column(Double)
    sum_ms: Mapped[float] = mapped_column(Double, server_default=text("0"))


class JobFailuresDaily(Base):
    """Failed attempts and failed jobs per day, queue, type and error type, with the latest
    message."""

    __tablename__ = "job_failures_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    queue_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    task_name: Mapped[str] = mapped_column(String(128), primary_key=True)
    error_type: Mapped[str] = mapped_column(Text, primary_key=True)
    shard: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    attempts: Mapped[int] = mapped_column(BigInteger)
    jobs: Mapped[int] = mapped_column(BigInteger)
    last_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_message: Mapped[str | None] = mapped_column(Text)


class WorkerStatsDaily(Base):
    """What each worker did per day: attempts by outcome and time busy."""

    __tablename__ = "worker_stats_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    worker_name: Mapped[str] = mapped_column(Text, primary_key=True)
    attempts: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    succeeded: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    failed: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    retried: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    cancelled: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    interrupted: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    lost: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    busy_ms: Mapped[float] = mapped_column(Double, server_default=text("0"))


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


class StoredFile(Base):
    """A file kept in PostgreSQL (an upload or a job's output); its bytes are in file_chunks."""

    __tablename__ = "files"

    id: Mapped[uuid.UUID] = mapped_column(UUID, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    """A safe display name, never used as a path."""
    content_type: Mapped[str] = mapped_column(Text)
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index(None, "sha256"),)


class FileChunk(Base):
    """One piece of a stored file, so reading and writing stream with bounded memory."""

    __tablename__ = "file_chunks"

    file_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("files.id", ondelete="CASCADE"), primary_key=True
    )
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class JobFile(Base):
    """Which files a job reads and writes. A file shared by several jobs (a reused conversion
    output) lives until the last job using it is deleted."""

    __tablename__ = "job_files"

    job_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True
    )
    role: Mapped[str] = mapped_column(String(16), primary_key=True)
    """`input` or `output`."""
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("files.id"))

    __table_args__ = (Index(None, "file_id"),)


class ConversionCacheEntry(Base):
    """Content-addressed conversions: the same input bytes, target and options map to one
    output file, so the same conversion never runs twice."""

    __tablename__ = "conversion_cache"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    """SHA-256 over the inputs' hashes and names, the target and the options."""
    output_file_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("files.id", ondelete="CASCADE"))
    result: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())

    __table_args__ = (Index(None, "output_file_id"),)


class WebhookDelivery(Base):
    """One attempt to POST a finished job's webhook, in that job's history (revision 0011)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    """The job the webhook is about."""
    delivery_id: Mapped[uuid.UUID] = mapped_column(UUID)
    """The `system.webhook` job sending it, the same for all its attempts."""
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    url: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[float] = mapped_column(Double)
    outcome: Mapped[str] = mapped_column(String(16))
    """delivered, failed (tried again later) or refused (never tried again)."""
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index(None, "job_id", "id"),)
