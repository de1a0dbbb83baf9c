"""Deleting finished jobs: a batch at a time, so that a large cleanup never holds long locks
or one huge transaction while workers drain the queue."""

from __future__ import annotations

from datetime import timedelta

from service.backend import Backend

PURGE_BATCH = 5_000
"""Jobs deleted per transaction."""

_PURGE = """
WITH doomed AS (
    SELECT pj.id
    FROM procrastinate_jobs AS pj
    JOIN jobs AS j ON j.queue_job_id = pj.id
    WHERE pj.status IN ('succeeded', 'failed', 'cancelled', 'aborted')
      AND j.created_at < now() - $1::interval
    LIMIT $2
    FOR UPDATE OF pj SKIP LOCKED
), gone AS (
    -- jobs, their attempts, events and file links follow through ON DELETE CASCADE
    DELETE FROM procrastinate_jobs WHERE id IN (SELECT id FROM doomed) RETURNING id
)
SELECT count(*) FROM gone
"""


async def purge_finished(backend: Backend, older_than: timedelta,
                         batch: int = PURGE_BATCH) -> int:
    """Delete finished jobs (succeeded, failed, cancelled) submitted more than `older_than`
    ago, with their history; returns how many. Queued and running jobs are never touched."""
    total = 0
    while True:
        async with backend.connection() as conn:
            deleted = await conn.fetchval(_PURGE, older_than, batch)
        total += deleted
        if deleted < batch:
            return total
