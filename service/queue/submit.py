"""Writing planned jobs into the queue: one statement, `jobq_submit_jobs`, for every way a
job is submitted (the API, `jobs.enqueue`, a Procrastinate deferral on jobq's connector)."""

from __future__ import annotations

from typing import Any

import asyncpg
from procrastinate import manager

from service.db import engine as db_engine
from service.domain.requests import Planned

_SUBMIT = ("SELECT * FROM jobq_submit_jobs("
           "$1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, "
           "$19)")

QUEUEING_LOCK_CONSTRAINT = manager.QUEUEING_LOCK_CONSTRAINT
"""The unique index a second queued job with the same `queueing_lock` runs into."""


async def write(conn: asyncpg.Connection, planned: list[Planned], key: str | None = None,
                overview: bool = False) -> list[dict[str, Any]]:
    """Procrastinate's jobs, our rows and their events in one statement (see jobq_submit_jobs):
    atomic on its own, or part of the caller's transaction. With `overview`, returns the new
    jobs as job_overview rows, in the order of `planned`."""
    requests = [p.request for p in planned]
    rows = await conn.fetch(
        _SUBMIT,
        [p.id for p in planned],
        [r.queue for r in requests],
        [r.type for r in requests],
        [r.priority for r in requests],
        [p.scheduled_at for p in planned],
        [db_engine.dumps(r.payload) for r in requests],
        [r.max_attempts for r in requests],
        [r.timeout_seconds for r in requests],
        [r.callback_url for r in requests],
        key,
        [p.fingerprint if key else None for p in planned],
        [None if r.backoff is None else db_engine.dumps(r.backoff) for r in requests],
        [r.lock for r in requests],
        [r.queueing_lock for r in requests],
        [r.key for r in requests],
        overview,
        [p.attempts_defaulted for p in planned],
        [p.timeout_defaulted for p in planned],
        [None if p.retention is None else db_engine.dumps(p.retention) for p in planned],
    )
    if not overview:
        return []
    by_id = {r["id"]: dict(r) for r in rows}
    return [by_id[p.id] for p in planned]


async def existing_keys(conn: asyncpg.Connection, keys: list[str],
                        owner: Any = None) -> dict[str, Any]:
    """The jobs of API key `owner` (None: submitted without one) that hold any of `keys`, by
    key: keys are unique per API key."""
    rows = await conn.fetch(
        "SELECT key, id FROM jobs WHERE key = ANY ($1::text[]) AND key IS NOT NULL AND "
        "coalesce(api_key_id, '00000000-0000-0000-0000-000000000000'::uuid) = "
        "coalesce($2::uuid, '00000000-0000-0000-0000-000000000000'::uuid)", keys, owner)
    return {r["key"]: r["id"] for r in rows}


def is_key_taken(exc: BaseException) -> bool:
    """Whether `exc` says a job with the same key was written meanwhile."""
    return isinstance(exc, asyncpg.UniqueViolationError) and exc.constraint_name == "uq_jobs_key"


def is_queueing_lock_taken(exc: BaseException) -> bool:
    """Whether `exc` says a job with the same queueing lock is already queued."""
    return (isinstance(exc, asyncpg.UniqueViolationError)
            and exc.constraint_name == QUEUEING_LOCK_CONSTRAINT)
