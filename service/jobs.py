"""The use-cases the API calls: submit, get, list, history, cancel, retry, delete."""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from service import errors
from service.backend import Backend
from service.db import engine as db_engine
from service.domain import jobtypes
from service.domain.status import RETRYABLE_BY_CLIENT, Status

MAX_BATCH = 1000
MAX_LIST_LIMIT = 500
QUEUE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


@dataclass(frozen=True)
class JobRequest:
    """A client's request for one job, before validation against its type."""

    type: str
    payload: Any = field(default_factory=dict)
    queue: str | None = None
    priority: int = 0
    run_at: datetime | None = None
    delay_seconds: float | None = None
    max_attempts: int | None = None
    timeout_seconds: float | None = None
    callback_url: str | None = None
    backoff: dict[str, float] | None = None
    """Optional per-job override of the type's backoff: base_seconds, cap_seconds, jitter."""


@dataclass(frozen=True)
class _Planned:
    """A validated request, ready to write."""

    id: uuid.UUID
    type: str
    queue: str
    priority: int
    payload: dict[str, Any]
    scheduled_at: datetime | None
    max_attempts: int
    timeout_seconds: float
    callback_url: str | None
    backoff: dict[str, float] | None
    fingerprint: str


def _plan(request: JobRequest, prefix: str = "", with_files: bool = False) -> _Planned:
    """Validate a request against its job type's declaration and fill in the defaults."""
    job_type = jobtypes.get(request.type)
    if job_type.internal:
        raise errors.InvalidRequest(
            f"{job_type.name} jobs are submitted by jobq itself, not by clients.",
            [errors.FieldError(prefix + "type", "submitted by jobq only")])
    if job_type.upload_route and not with_files:
        raise errors.InvalidRequest(
            f"{job_type.name} jobs take uploaded files: submit them with a multipart POST to "
            f"{job_type.upload_route}.", [errors.FieldError(prefix + "type", "needs an upload")])
    try:
        payload = msgspec.to_builtins(job_type.validate(request.payload))
    except errors.InvalidRequest as exc:
        if prefix:
            for f in exc.fields:
                f.field = prefix + f.field
        raise
    queue = request.queue or job_type.queue
    problems: list[errors.FieldError] = []
    if not QUEUE_NAME.match(queue):
        problems.append(errors.FieldError(
            prefix + "queue", "must be 1-128 letters, digits, '_', '.' or '-'"))
    if not -1000 <= request.priority <= 1000:
        problems.append(errors.FieldError(prefix + "priority", "must be between -1000 and 1000"))
    if request.run_at is not None and request.delay_seconds is not None:
        problems.append(errors.FieldError(
            prefix + "run_at", "give run_at or delay_seconds, not both"))
    if request.delay_seconds is not None and not 0 <= request.delay_seconds <= 366 * 86400:
        problems.append(errors.FieldError(
            prefix + "delay_seconds", "must be between 0 and 31622400 (a year)"))
    if request.run_at is not None and request.run_at.tzinfo is None:
        problems.append(errors.FieldError(
            prefix + "run_at", "must carry a time zone, e.g. 2026-01-01T12:00:00Z"))
    max_attempts = request.max_attempts
    if max_attempts is None:
        max_attempts = job_type.retry.max_attempts
    if not 1 <= max_attempts <= 100:
        problems.append(errors.FieldError(prefix + "max_attempts", "must be between 1 and 100"))
    timeout = request.timeout_seconds
    if timeout is None:
        timeout = job_type.timeout.total_seconds()
    if not 0 < timeout <= 7 * 86400:
        problems.append(errors.FieldError(
            prefix + "timeout_seconds", "must be more than 0 and at most 604800 (a week)"))
    if request.callback_url is not None and not request.callback_url.startswith(
        ("http://", "https://")
    ):
        problems.append(errors.FieldError(prefix + "callback_url", "must be an http(s) URL"))
    problems += _check_backoff(request.backoff, prefix)
    if problems:
        raise errors.InvalidRequest(
            "; ".join(f"{p.field}: {p.message}" for p in problems), problems)

    scheduled_at = request.run_at
    if request.delay_seconds:
        scheduled_at = datetime.now(UTC) + timedelta(seconds=request.delay_seconds)
    fingerprint = hashlib.sha256(
        msgspec.json.encode([request.type, payload, queue, request.priority,
                             request.run_at, request.delay_seconds, max_attempts, timeout,
                             request.callback_url, request.backoff], order="sorted")
    ).hexdigest()
    return _Planned(
        id=uuid.uuid4(), type=request.type, queue=queue, priority=request.priority,
        payload=payload, scheduled_at=scheduled_at, max_attempts=max_attempts,
        timeout_seconds=timeout, callback_url=request.callback_url, backoff=request.backoff,
        fingerprint=fingerprint,
    )


_BACKOFF_LIMITS = {"base_seconds": (0, 86_400), "cap_seconds": (0, 7 * 86_400), "jitter": (0, 1)}


def _check_backoff(backoff: dict[str, float] | None, prefix: str) -> list[errors.FieldError]:
    if backoff is None:
        return []
    problems = []
    for key, value in backoff.items():
        field = f"{prefix}backoff.{key}"
        if key not in _BACKOFF_LIMITS:
            problems.append(errors.FieldError(
                field, f"unknown; use {', '.join(_BACKOFF_LIMITS)}"))
            continue
        low, high = _BACKOFF_LIMITS[key]
        if not low <= value <= high:
            problems.append(errors.FieldError(field, f"must be between {low} and {high}"))
    return problems


_SUBMIT = "SELECT * FROM jobq_submit_jobs($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)"


async def enqueue(
    conn: asyncpg.Connection, requests: list[JobRequest], with_files: bool = False,
) -> list[uuid.UUID]:
    """Submit jobs on a connection the caller holds, inside the caller's transaction: they
    exist (and wake workers) only if that transaction commits. `with_files`: the caller links
    the jobs' input files in the same transaction."""
    planned = [_plan(r, prefix=f"jobs[{i}]." if len(requests) > 1 else "", with_files=with_files)
               for i, r in enumerate(requests)]
    await _write(conn, planned)
    return [p.id for p in planned]


async def _write(conn: asyncpg.Connection, planned: list[_Planned], key: str | None = None,
                 overview: bool = False) -> list[dict[str, Any]]:
    """Procrastinate's jobs, our rows and their events in one statement (see jobq_submit_jobs):
    atomic on its own, or part of the caller's transaction. With `overview`, returns the new
    jobs as job_overview rows."""
    rows = await conn.fetch(
        _SUBMIT,
        [p.id for p in planned],
        [p.queue for p in planned],
        [p.type for p in planned],
        [p.priority for p in planned],
        [p.scheduled_at for p in planned],
        [db_engine.dumps(p.payload) for p in planned],
        [p.max_attempts for p in planned],
        [p.timeout_seconds for p in planned],
        [p.callback_url for p in planned],
        key,
        [p.fingerprint if key else None for p in planned],
        [None if p.backoff is None else db_engine.dumps(p.backoff) for p in planned],
        overview,
    )
    return [dict(r) for r in rows]


async def submit_job(
    backend: Backend, request: JobRequest, idempotency_key: str | None = None
) -> tuple[dict[str, Any], bool]:
    """Accept one job; returns the job and whether it was created now (False: a replay)."""
    planned = _plan(request)
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= 255:
            raise errors.InvalidRequest("The Idempotency-Key header must be 1-255 characters.")
        existing = await _replayed(backend, idempotency_key, planned.fingerprint)
        if existing is not None:
            return existing, False
    try:
        async with backend.connection() as conn:
            [job] = await _write(conn, [planned], idempotency_key, overview=True)
    except asyncpg.UniqueViolationError as exc:
        # Another request with the same key won the race: answer as its replay.
        if idempotency_key is None or exc.constraint_name != "uq_jobs_idempotency_key":
            raise
        existing = await _replayed(backend, idempotency_key, planned.fingerprint)
        assert existing is not None
        return existing, False
    return job, True


async def _replayed(backend: Backend, key: str, fingerprint: str) -> dict[str, Any] | None:
    async with backend.connection() as conn:
        row = await conn.fetchrow(
            "SELECT id, request_fingerprint FROM jobs WHERE idempotency_key = $1", key
        )
    if row is None:
        return None
    if row["request_fingerprint"] != fingerprint:
        raise errors.IdempotencyConflict(
            "This Idempotency-Key was already used with a different request; "
            "send the same body again or use a new key."
        )
    return await get_job(backend, row["id"])


async def submit_batch(backend: Backend, requests: list[JobRequest]) -> list[uuid.UUID]:
    """Accept up to MAX_BATCH jobs, all or nothing."""
    if not 1 <= len(requests) <= MAX_BATCH:
        raise errors.InvalidRequest(
            f"A batch holds 1 to {MAX_BATCH} jobs; this one has {len(requests)}.",
            [errors.FieldError("jobs", f"must hold 1 to {MAX_BATCH} jobs")],
        )
    planned = [_plan(r, prefix=f"jobs[{i}].") for i, r in enumerate(requests)]
    async with backend.connection() as conn:
        await _write(conn, planned)
    return [p.id for p in planned]


async def get_job(backend: Backend, job_id: uuid.UUID) -> dict[str, Any]:
    async with backend.connection() as conn:
        row = await conn.fetchrow("SELECT * FROM job_overview WHERE id = $1", job_id)
    if row is None:
        raise errors.JobNotFound(job_id)
    return dict(row)


@dataclass(frozen=True)
class JobFilter:
    status: Status | None = None
    type: str | None = None
    queue: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def encode_cursor(row: dict[str, Any]) -> str:
    raw = msgspec.json.encode([row["created_at"].isoformat(), str(row["id"])])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = msgspec.json.decode(raw)
        return datetime.fromisoformat(created_at), uuid.UUID(job_id)
    except (ValueError, TypeError, msgspec.DecodeError):
        raise errors.InvalidRequest(
            "The cursor is not one this API returned; pass next_cursor from the last page.",
            [errors.FieldError("cursor", "unrecognised cursor")],
        ) from None


async def list_jobs(
    backend: Backend, filters: JobFilter, limit: int = 50, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """Jobs newest first, one page; the second value is the cursor of the next page."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise errors.InvalidRequest(
            f"limit must be between 1 and {MAX_LIST_LIMIT}.",
            [errors.FieldError("limit", f"must be between 1 and {MAX_LIST_LIMIT}")],
        )
    after = decode_cursor(cursor) if cursor else (None, None)
    rows = await _fetch(
        backend,
        """
        SELECT * FROM job_overview
        WHERE ($1::text IS NULL OR status = $1)
          AND ($2::text IS NULL OR type = $2)
          AND ($3::text IS NULL OR queue = $3)
          AND ($4::timestamptz IS NULL OR created_at > $4)
          AND ($5::timestamptz IS NULL OR created_at < $5)
          AND ($6::timestamptz IS NULL OR (created_at, id) < ($6, $7::uuid))
        ORDER BY created_at DESC, id DESC
        LIMIT $8
        """,
        filters.status.value if filters.status else None, filters.type, filters.queue,
        filters.created_after, filters.created_before, after[0], after[1], limit + 1,
    )
    items = rows[:limit]
    return items, encode_cursor(items[-1]) if len(rows) > limit else None


async def _fetch(backend: Backend, query: str, *args: Any) -> list[dict[str, Any]]:
    async with backend.connection() as conn:
        return [dict(r) for r in await conn.fetch(query, *args)]


async def job_history(backend: Backend, job_id: uuid.UUID) -> dict[str, list[dict[str, Any]]]:
    """Every state change and every attempt of a job, oldest first."""
    await get_job(backend, job_id)
    events = await _fetch(
        backend,
        "SELECT at, event, attempt, worker_name, message, error FROM job_events "
        "WHERE job_id = $1 ORDER BY id",
        job_id,
    )
    attempts = await _fetch(
        backend,
        "SELECT number, worker_id, worker_name, started_at, finished_at, outcome, error "
        "FROM job_attempts WHERE job_id = $1 ORDER BY number",
        job_id,
    )
    deliveries = await _fetch(
        backend,
        "SELECT delivery_id, attempt, at, url, status_code, duration_ms, outcome, error "
        "FROM webhook_deliveries WHERE job_id = $1 ORDER BY id",
        job_id,
    )
    return {"events": events, "attempts": attempts, "deliveries": deliveries}


async def _lock_job(conn: asyncpg.Connection, job_id: uuid.UUID) -> asyncpg.Record:
    row = await conn.fetchrow(
        """
        SELECT pj.id AS queue_job_id, pj.status::text AS queue_status, pj.abort_requested,
               pj.queue_name, v.status
        FROM jobs j
        JOIN procrastinate_jobs pj ON pj.id = j.queue_job_id
        JOIN job_overview v ON v.id = j.id
        WHERE j.id = $1
        FOR UPDATE OF pj
        """,
        job_id,
    )
    if row is None:
        raise errors.JobNotFound(job_id)
    return row


async def cancel_job(backend: Backend, job_id: uuid.UUID) -> dict[str, Any]:
    """Queued or scheduled: cancelled now. Running: its worker is told to stop."""
    async with backend.transaction() as conn:
        row = await _lock_job(conn, job_id)
        status = Status(row["status"])
        if status.is_terminal:
            raise errors.InvalidTransition(
                f"Job {job_id} is {status.value}; only queued, scheduled or running jobs "
                "can be cancelled."
            )
        if not row["abort_requested"]:
            await backend.queue.job_manager.cancel_job_by_id_async(
                row["queue_job_id"], abort=True, connection=conn
            )
            event = "cancel_requested" if status is Status.RUNNING else "cancelled"
            await conn.execute(
                "INSERT INTO job_events (job_id, event, message) VALUES ($1, $2, $3)",
                job_id, event, "cancelled by a client",
            )
    return await get_job(backend, job_id)


async def retry_job(backend: Backend, job_id: uuid.UUID) -> dict[str, Any]:
    """A failed or cancelled job goes back to the queue with a fresh attempt budget."""
    async with backend.transaction() as conn:
        row = await _lock_job(conn, job_id)
        status = Status(row["status"])
        if status not in RETRYABLE_BY_CLIENT:
            raise errors.InvalidTransition(
                f"Job {job_id} is {status.value}; only failed or cancelled jobs can be retried."
            )
        await conn.execute(
            """
            UPDATE procrastinate_jobs SET status = 'todo', attempts = 0, scheduled_at = NULL,
                abort_requested = false, worker_id = NULL
            WHERE id = $1
            """,
            row["queue_job_id"],
        )
        await conn.execute(
            "UPDATE jobs SET progress = 0, stage = NULL, progress_message = NULL, result = NULL "
            "WHERE id = $1",
            job_id,
        )
        await conn.execute(
            "INSERT INTO job_events (job_id, event, message) VALUES ($1, 'retried', $2)",
            job_id, "retried by a client with a fresh attempt budget",
        )
        await conn.execute(
            "SELECT jobq_notify_requeued($1, $2)", row["queue_name"], row["queue_job_id"]
        )
    return await get_job(backend, job_id)


async def delete_job(backend: Backend, job_id: uuid.UUID) -> None:
    """Remove a finished job with everything recorded about it."""
    async with backend.transaction() as conn:
        row = await _lock_job(conn, job_id)
        if not Status(row["status"]).is_terminal:
            raise errors.InvalidTransition(
                f"Job {job_id} is {row['status']}; cancel it first, then delete it."
            )
        # Our rows follow through ON DELETE CASCADE.
        await conn.execute("DELETE FROM procrastinate_jobs WHERE id = $1", row["queue_job_id"])

