"""The worker's database calls: register, heartbeat, claim, progress, and what it must stop.

Every write about a job carries the attempt id handed out at claim time; the database refuses
it once that attempt is no longer open (jobq_hold_lease, jobq_finish_attempts), which fences off
a worker that was presumed dead and woke up. Outcomes are written by service/attempts.py.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg


@dataclass(frozen=True)
class Claimed:
    """A job this worker holds the lease of."""

    attempt_id: int
    job_id: uuid.UUID
    attempt: int
    """Number of this attempt across the job's life (1 for the first run)."""
    budget_attempt: int
    """Number of this attempt within the current budget (a manual retry restarts it at 1)."""
    task_name: str
    queue_name: str
    payload: dict[str, Any]
    max_attempts: int
    timeout_seconds: float
    backoff: dict[str, float] | None
    """The job's own backoff, overriding its type's where it gives a value."""


async def register(conn: asyncpg.Connection, name: str, host: str, pid: int,
                   queues: list[str], concurrency: int) -> int:
    """Register a worker and describe it; returns its id."""
    async with conn.transaction():
        worker_id = await conn.fetchval("SELECT worker_id FROM procrastinate_register_worker_v1()")
        await conn.execute(
            "INSERT INTO workers (id, name, host, pid, queues, concurrency) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            worker_id, name, host, pid, queues, concurrency,
        )
    return worker_id


async def unregister(conn: asyncpg.Connection, worker_id: int) -> None:
    await conn.execute("SELECT procrastinate_unregister_worker_v1($1)", worker_id)


async def heartbeat(conn: asyncpg.Connection, worker_id: int) -> bool:
    """Prove this worker is alive; False if it was already declared dead and removed."""
    row = await conn.fetchval(
        "UPDATE procrastinate_workers SET last_heartbeat = now() WHERE id = $1 RETURNING id",
        worker_id,
    )
    return row is not None


async def claim(conn: asyncpg.Connection, worker_id: int, worker_name: str,
                queues: list[str] | None, limit: int) -> list[Claimed]:
    """Take up to `limit` due jobs in one round trip."""
    rows = await conn.fetch(
        "SELECT * FROM jobq_claim_jobs($1, $2, $3, $4)", queues, worker_id, worker_name, limit
    )
    return [Claimed(**dict(r)) for r in rows]


async def write_progress(conn: asyncpg.Connection, attempt_id: int, percent: int,
                         stage: str | None, message: str | None) -> bool:
    """Store a job's progress; False if the lease was lost."""
    # The function also notifies the API's event streams (revision 0011).
    return await conn.fetchval("SELECT jobq_report_progress($1, $2, $3, $4)",
                               attempt_id, percent, stage, message)


async def hold_lease(conn: asyncpg.Connection, attempt_id: int) -> bool:
    """Keep the attempt open until this transaction ends; False if the lease is lost already."""
    return await conn.fetchval("SELECT jobq_hold_lease($1)", attempt_id) is not None


async def abort_requested(conn: asyncpg.Connection, worker_id: int) -> set[int]:
    """Attempt ids of this worker's jobs that a client asked to cancel."""
    rows = await conn.fetch(
        """
        SELECT a.id FROM procrastinate_jobs pj
        JOIN jobs j ON j.queue_job_id = pj.id
        JOIN job_attempts a ON a.job_id = j.id AND a.finished_at IS NULL
        WHERE pj.worker_id = $1 AND pj.status = 'doing' AND pj.abort_requested
        """,
        worker_id,
    )
    return {r["id"] for r in rows}


async def held_attempts(conn: asyncpg.Connection, worker_id: int,
                        min_age_seconds: float) -> set[int]:
    """Open attempts the database says this worker holds, older than `min_age_seconds` (younger
    ones may belong to a claim whose answer is still on its way)."""
    rows = await conn.fetch(
        """
        SELECT a.id FROM procrastinate_jobs pj
        JOIN jobs j ON j.queue_job_id = pj.id
        JOIN job_attempts a ON a.job_id = j.id AND a.finished_at IS NULL
        WHERE pj.worker_id = $1 AND pj.status = 'doing'
          AND a.started_at < now() - make_interval(secs => $2)
        """,
        worker_id, min_age_seconds,
    )
    return {r["id"] for r in rows}


async def closed_attempts(conn: asyncpg.Connection, attempt_ids: list[int]) -> set[int]:
    """Which of these attempts are closed: their lease is gone (recovered as lost while this
    worker was paused or cut off), whatever the worker's own row says."""
    rows = await conn.fetch(
        "SELECT id FROM job_attempts WHERE id = ANY($1::bigint[]) AND finished_at IS NOT NULL",
        attempt_ids,
    )
    return {r["id"] for r in rows}


async def attempt_of_queue_job(conn: asyncpg.Connection, queue_job_id: int) -> int | None:
    """The open attempt of a Procrastinate job, if any."""
    return await conn.fetchval(
        "SELECT a.id FROM jobs j JOIN job_attempts a ON a.job_id = j.id "
        "AND a.finished_at IS NULL WHERE j.queue_job_id = $1",
        queue_job_id,
    )
