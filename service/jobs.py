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

from service import auth, errors
from service.backend import Backend
from service.domain import jobtypes, limits, requests

# The request type and its limits, under the names Python callers have used (jobs.JobRequest).
from service.domain.requests import MAX_BATCH, QUEUE_NAME, JobRequest  # noqa: F401
from service.domain.status import Status
from service.queue import submit

MAX_LIST_LIMIT = 500


async def enqueue(
    conn: asyncpg.Connection, jobs: list[requests.JobRequest], with_files: bool = False,
) -> list[uuid.UUID]:
    """Submit jobs on a connection the caller holds, inside the caller's transaction: they
    exist (and wake workers) only if that transaction commits. `with_files`: the caller links
    the jobs' input files in the same transaction. A request whose `key` names an existing job
    gets that job's id and creates nothing."""
    return [job_id for job_id, _ in await enqueue_keyed(conn, jobs, with_files)]


async def enqueue_keyed(
    conn: asyncpg.Connection, jobs: list[requests.JobRequest], with_files: bool = False,
    batch: bool = False, principal: auth.Principal = auth.OPEN,
) -> list[tuple[uuid.UUID, bool]]:
    """As `enqueue`, with whether each job was created now (False: its key named a job).
    Errors name fields as `jobs[i].…` for a batch (or more than one request). `principal`:
    the API key submitting (its rights and limits are checked, and the jobs record it); a
    job's `key` names a job of the same API key only."""
    prefix = (lambda i: f"jobs[{i}].") if batch or len(jobs) > 1 else (lambda i: "")
    planned = [requests.plan(with_key_timeout(principal, r), prefix=prefix(i),
                             with_files=with_files)
               for i, r in enumerate(jobs)]
    _check_keys_differ(planned, prefix)
    keys = [p.request.key for p in planned if p.request.key is not None]
    held = await submit.existing_keys(conn, keys, principal.key_id) if keys else {}
    new = [p for p in planned if p.request.key not in held]
    if new:
        await auth.admit(conn, principal, new, "jobs" if batch or len(jobs) > 1 else "")
        with _queueing_lock_conflict(), _key_conflict():
            await submit.write(conn, auth.for_key(principal, new))
    return [(held[p.request.key], False) if p.request.key in held else (p.id, True)
            for p in planned]


def with_key_timeout(principal: auth.Principal,
                     request: requests.JobRequest) -> requests.JobRequest:
    """A request that gives no timeout gets the key's longest one if the type's default is
    longer (docs/security.md)."""
    if request.timeout_seconds is not None or principal.limits.max_timeout_seconds is None:
        return request
    try:
        default = jobtypes.get(request.type).timeout.total_seconds()
    except errors.UnknownJobType:
        return request  # plan() says what is wrong
    capped = auth.default_timeout(principal, default)
    return request if capped is None else msgspec.structs.replace(request,
                                                                  timeout_seconds=capped)


def _check_keys_differ(planned: list[requests.Planned], prefix) -> None:
    first: dict[str, int] = {}
    for i, p in enumerate(planned):
        key = p.request.key
        if key is not None and first.setdefault(key, i) != i:
            raise errors.InvalidRequest(
                f"jobs[{i}] has the key of jobs[{first[key]}]; one request per key.",
                [errors.FieldError(prefix(i) + "key", f"the same as jobs[{first[key]}]")])


@contextlib.contextmanager
def _key_conflict() -> Iterator[None]:
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        if submit.is_key_taken(exc):
            raise KeyTaken(exc.detail or "") from exc
        raise


class KeyTaken(errors.Conflict):
    """Another submission wrote a job with this key after we looked: ask again to get it."""

    def __init__(self, detail: str) -> None:
        super().__init__("A job with this key was submitted at the same moment by another "
                         f"request; submit again to get it ({detail}).")


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
    backend: Backend, request: requests.JobRequest, idempotency_key: str | None = None,
    principal: auth.Principal = auth.OPEN,
) -> tuple[dict[str, Any], bool]:
    """Accept one job; returns the job and whether it was created now (False: a replay of
    the Idempotency-Key, or its key names an existing job). Idempotency-Keys and job keys
    name the jobs of the same API key only."""
    planned = requests.plan(with_key_timeout(principal, request))
    auth.check_allowed(principal, [planned])
    owner = principal.key_id
    if idempotency_key is not None:
        if not 1 <= len(idempotency_key) <= 255:
            raise errors.InvalidRequest("The Idempotency-Key header must be 1-255 characters.")
        existing = await _replayed(backend, idempotency_key, planned.fingerprint, owner)
        if existing is not None:
            return existing, False
    key = planned.request.key
    if key is not None and (holder := await _by_key(backend, key, owner)) is not None:
        return holder, False
    try:
        async with (backend.connection() if owner is None else backend.transaction()) as conn:
            await auth.admit(conn, principal, [planned])
            with _queueing_lock_conflict():
                [job] = await submit.write(conn, auth.for_key(principal, [planned]),
                                           idempotency_key, overview=True)
    except asyncpg.UniqueViolationError as exc:
        # Another request with the same Idempotency-Key or key won the race: answer with its
        # job, as a replay.
        if key is not None and submit.is_key_taken(exc):
            holder = await _by_key(backend, key, owner)
            if holder is not None:
                return holder, False
        if idempotency_key is None or exc.constraint_name != "uq_jobs_idempotency_key":
            raise
        existing = await _replayed(backend, idempotency_key, planned.fingerprint, owner)
        assert existing is not None
        return existing, False
    return job, True


_SAME_KEY = "coalesce(api_key_id, '00000000-0000-0000-0000-000000000000'::uuid) = " \
    "coalesce($2::uuid, '00000000-0000-0000-0000-000000000000'::uuid)"
"""The jobs of the API key $2 (NULL: those submitted with no key), by the unique indexes."""


async def _by_key(backend: Backend, key: str, owner: uuid.UUID | None) -> dict[str, Any] | None:
    async with backend.connection() as conn:
        row = await conn.fetchrow(
            f"SELECT * FROM job_overview WHERE id = (SELECT id FROM jobs WHERE key = $1 "
            f"AND {_SAME_KEY})", key, owner)
    return None if row is None else dict(row)


async def get_job_by_key(backend: Backend, key: str,
                         owner: uuid.UUID | None = None) -> dict[str, Any]:
    """The job of API key `owner` (None: no key) that holds `key`, or NotFound."""
    job = await _by_key(backend, key, owner)
    if job is None:
        raise errors.NotFound(f"No job with key {key!r}.")
    return job


async def _replayed(backend: Backend, key: str, fingerprint: str,
                    owner: uuid.UUID | None) -> dict[str, Any] | None:
    async with backend.connection() as conn:
        row = await conn.fetchrow(
            f"SELECT id, request_fingerprint FROM jobs WHERE idempotency_key = $1 AND {_SAME_KEY}",
            key, owner)
    if row is None:
        return None
    if row["request_fingerprint"] != fingerprint:
        raise errors.IdempotencyConflict(
            "This Idempotency-Key was already used with a different request; "
            "send the same body again or use a new key."
        )
    return await get_job(backend, row["id"])


async def submit_batch(backend: Backend, jobs: list[requests.JobRequest],
                       principal: auth.Principal = auth.OPEN) -> list[uuid.UUID]:
    """Accept up to MAX_BATCH jobs, all or nothing (a request whose key names an existing job
    of the same API key gets that job's id)."""
    if not 1 <= len(jobs) <= MAX_BATCH:
        raise errors.InvalidRequest(
            f"A batch holds 1 to {MAX_BATCH} jobs; this one has {len(jobs)}.",
            [errors.FieldError("jobs", f"must hold 1 to {MAX_BATCH} jobs")],
        )
    if not any(r.key for r in jobs) and principal.key_id is None:
        # one statement, no transaction to open
        planned = [requests.plan(r, prefix=f"jobs[{i}].") for i, r in enumerate(jobs)]
        async with backend.connection() as conn:
            with _queueing_lock_conflict():
                await submit.write(conn, planned)
        return [p.id for p in planned]
    async with backend.transaction() as conn:
        return [job_id for job_id, _ in await enqueue_keyed(conn, jobs, batch=True,
                                                              principal=principal)]


async def get_job(backend: Backend, job_id: uuid.UUID,
                  scope: uuid.UUID | None = None) -> dict[str, Any]:
    """The job, or JobNotFound; with `scope`, only a job that API key submitted (another
    key's job is not found, exactly as a job that does not exist)."""
    async with backend.connection() as conn:
        row = await conn.fetchrow(
            "SELECT * FROM job_overview WHERE id = $1 AND ($2::uuid IS NULL OR api_key_id = $2)",
            job_id, scope)
    if row is None:
        raise errors.JobNotFound(job_id)
    return dict(row)


@dataclass(frozen=True)
class JobFilter:
    status: Status | None = None
    type: str | None = None
    key: str | None = None
    queue: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


def encode_cursor(row: dict[str, Any]) -> str:
    raw = msgspec.json.encode([row["created_at"].isoformat(), str(row["id"])])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, job_id = msgspec.json.decode(raw, type=tuple[str, str])
        when = limits.utc(datetime.fromisoformat(created_at))
        if when is None or "\x00" in job_id:
            raise ValueError("not a time in UTC")
        return when, uuid.UUID(job_id)
    except (ValueError, TypeError, RecursionError, msgspec.DecodeError):
        raise errors.InvalidRequest(
            "The cursor is not one this API returned; pass next_cursor from the last page.",
            [errors.FieldError("cursor", "unrecognised cursor")],
        ) from None


async def list_jobs(
    backend: Backend, filters: JobFilter, limit: int = 50, cursor: str | None = None,
    scope: uuid.UUID | None = None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Jobs newest first, one page; the second value is the cursor of the next page. With
    `scope`, only the jobs that API key submitted."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise errors.InvalidRequest(
            f"limit must be between 1 and {MAX_LIST_LIMIT}.",
            [errors.FieldError("limit", f"must be between 1 and {MAX_LIST_LIMIT}")],
        )
    after = decode_cursor(cursor) if cursor else (None, None)
    created_after = _filter_time("created_after", filters.created_after)
    created_before = _filter_time("created_before", filters.created_before)
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
          AND ($9::text IS NULL OR key = $9)
          AND ($10::uuid IS NULL OR api_key_id = $10)
        ORDER BY created_at DESC, id DESC
        LIMIT $8
        """,
        filters.status.value if filters.status else None, filters.type, filters.queue,
        created_after, created_before, after[0], after[1], limit + 1,
        filters.key, scope,
    )
    items = rows[:limit]
    return items, encode_cursor(items[-1]) if len(rows) > limit else None


def _filter_time(field: str, value: datetime | None) -> datetime | None:
    if value is None:
        return None
    converted = limits.utc(value)
    if converted is None:
        raise errors.InvalidRequest(
            f"{field} cannot be written in UTC (it overflows the calendar); use a date "
            "between years 1 and 9999 in UTC.", [errors.FieldError(field, "out of range")])
    return converted


async def _fetch(backend: Backend, query: str, *args: Any) -> list[dict[str, Any]]:
    async with backend.connection() as conn:
        return [dict(r) for r in await conn.fetch(query, *args)]


async def count_by_status(backend: Backend, job_type: str,
                          scope: uuid.UUID) -> dict[str, int]:
    """How many jobs of this type API key `scope` has, per public status."""
    rows = await _fetch(
        backend, "SELECT status, count(*) AS n FROM job_overview WHERE api_key_id = $1 "
        "AND type = $2 GROUP BY status", scope, job_type)
    return {r["status"]: r["n"] for r in rows}


async def job_history(backend: Backend, job_id: uuid.UUID,
                      scope: uuid.UUID | None = None) -> dict[str, list[dict[str, Any]]]:
    """Every state change and every attempt of a job, oldest first (`scope`: see get_job)."""
    await get_job(backend, job_id, scope)
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


async def _change(backend: Backend, function: str, job_id: uuid.UUID) -> tuple[str, Status]:
    """Call one of the jobq_* functions that change a job on a client's request; returns its
    verdict and the job's status before. The function decides, under the job's lock, whether
    the change is allowed (docs/architecture.md draws which are)."""
    async with backend.connection() as conn:
        row = await conn.fetchrow(f"SELECT * FROM {function}($1)", job_id)
    if row["verdict"] is None:
        raise errors.JobNotFound(job_id)
    return row["verdict"], Status(row["prior_status"])


async def cancel_job(backend: Backend, job_id: uuid.UUID,
                     scope: uuid.UUID | None = None) -> dict[str, Any]:
    """Queued or scheduled: cancelled now. Running: its worker is told to stop. With
    `scope`, only a job of that API key (the key that submitted a job never changes)."""
    if scope is not None:
        await get_job(backend, job_id, scope)
    verdict, status = await _change(backend, "jobq_cancel_job", job_id)
    if verdict == "refused":
        raise errors.InvalidTransition(
            f"Job {job_id} is {status.value}; only queued, scheduled or running jobs "
            "can be cancelled."
        )
    return await get_job(backend, job_id, scope)


async def retry_job(backend: Backend, job_id: uuid.UUID) -> dict[str, Any]:
    """A failed or cancelled job goes back to the queue with a fresh attempt budget."""
    verdict, status = await _change(backend, "jobq_retry_job", job_id)
    if verdict == "refused":
        raise errors.InvalidTransition(
            f"Job {job_id} is {status.value}; only failed or cancelled jobs can be retried."
        )
    return await get_job(backend, job_id)


async def delete_job(backend: Backend, job_id: uuid.UUID) -> None:
    """Remove a finished job with everything recorded about it."""
    verdict, status = await _change(backend, "jobq_delete_job", job_id)
    if verdict == "refused":
        raise errors.InvalidTransition(
            f"Job {job_id} is {status.value}; cancel it first, then delete it."
        )
