"""purge_finished deletes finished jobs with their history, and nothing else."""

from __future__ import annotations

from datetime import timedelta

from service import jobs, retention
from service.domain import jobtypes


async def _count(backend, table: str) -> int:
    async with backend.connection() as conn:
        return await conn.fetchval(f"SELECT count(*) FROM {table}")


async def test_purge_deletes_finished_jobs_in_batches_and_keeps_the_rest(backend):
    async with backend.transaction() as conn:
        ids = await jobs.enqueue(conn, [jobs.JobRequest(type=jobtypes.SYSTEM_NOOP.name)] * 7)
        # Five finished a day ago, one finished just now, one still queued.
        await conn.execute(
            "UPDATE procrastinate_jobs SET status = 'succeeded' WHERE id IN "
            "(SELECT queue_job_id FROM jobs WHERE id = ANY($1::uuid[]))", ids[:6])
        await conn.execute("UPDATE jobs SET created_at = now() - interval '1 day' "
                           "WHERE id = ANY($1::uuid[])", ids[:5])
    assert await _count(backend, "job_events") == 7

    deleted = await retention.purge_finished(backend, timedelta(hours=1), batch=2)

    assert deleted == 5
    async with backend.connection() as conn:
        left = {r["id"] for r in await conn.fetch("SELECT id FROM jobs")}
    assert left == set(ids[5:])
    assert await _count(backend, "procrastinate_jobs") == 2
    assert await _count(backend, "job_events") == 2  # their `submitted` events only
    assert await retention.purge_finished(backend, timedelta(hours=1)) == 0
