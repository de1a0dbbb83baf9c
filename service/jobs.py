"""The use-cases the API calls: submit, get, list, history, cancel, retry, delete."""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from service import errors
from service.backend import Backend
from service.domain import requests

# The request type and its limits, under the names Python callers have used (jobs.JobRequest).
from service.domain.requests import MAX_BATCH, QUEUE_NAME, JobRequest  # noqa: F401
from service.domain.status import RETRYABLE_BY_CLIENT, Status
from service.queue import submit

MAX_LIST_LIMIT = 500


async def enqueue(
    conn: asyncpg.Connection, jobs: list[requests.JobRequest], with_files: bool = False,
) -> list[uuid.UUID]:
    """Submit jobs on a connection the caller holds, inside the caller's transaction: they
    exist (and wake workers) only if that transaction commits. `with_files`: the caller links
    the jobs' input files in the same transaction."""
    planned = [requests.plan(r, prefix=f"jobs[{i}]." if len(jobs) > 1 else "",
                             with_files=with_files)
               for i, r in enumerate(jobs)]
    with _queueing_lock_conflict():
        await submit.write(conn, planned)
    return [p.id for p in planned]


@contextlib.contextmanager
def _queueing_lock_conflict() -> Iterator[None]:
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if submit.is_queueing_lock_taken(exc):
            raise errors.Conflict(
                "A job with this queueing_lock is already queued; wait until it starts, or "
                f"submit without it ({exc.detail}).") from exc
        raise


async def submit_job(
    backend: Backend, request: requests.JobRequest, idempotency_key: str | None = None
) -> tuple[dict[str, Any], bool]:
    """Accept one job; returns the job and whether it was created now (False: a replay)."""
    planned = requests.plan(request)
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= 255:
            raise errors.InvalidRequest("The Idempotency-Key header must be 1-255 characters.")
        existing = await _replayed(backend, idempotency_key, planned.fingerprint)
        if existing is not None:
            return existing, False
    try:
        async with backend.connection() as conn:
            with _queueing_lock_conflict():
                [job] = await submit.write(conn, [planned], idempotency_key, overview=True)
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


async def submit_batch(backend: Backend, jobs: list[requests.JobRequest]) -> list[uuid.UUID]:
    """Accept up to MAX_BATCH jobs, all or nothing."""
    if not 1 <= len(jobs) <= MAX_BATCH:
        raise errors.InvalidRequest(
            f"A batch holds 1 to {MAX_BATCH} jobs; this one has {len(jobs)}.",
            [errors.FieldError("jobs", f"must hold 1 to {MAX_BATCH} jobs")],
        )
    planned = [requests.plan(r, prefix=f"jobs[{i}].") for i, r in enumerate(jobs)]
    async with backend.connection() as conn:
        with _queueing_lock_conflict():
            await submit.write(conn, planned)
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
    return {"events": events, "attempts": attempts}


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

