"""Scale: the c10 drain and `GET /api/v1/queues` on an empty history, then with HISTORY
finished jobs in it, then the drain again while a retention cleanup deletes that history.

The history is written by SQL (finished queue rows, our rows, one attempt and one event per
job, two days old), then vacuumed and analysed as autovacuum keeps a table in steady state.
The cleanup is `service.retention.purge_finished`, run in this process alongside the drain;
its own rate is reported too. jobq only: the issue's figure for Procrastinate is quoted in
docs/performance.md, not measured here.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from datetime import timedelta
from typing import Any

import aiohttp

from benchmarks import database, drain, enqueue, processes
from benchmarks.context import BATCH, Case, Context, Figures
from service import retention

QUEUE_GETS = 20
"""`GET /api/v1/queues` requests per measurement (after 3 unmeasured ones); the median counts."""

C10 = drain.Variant("c10", 1, 10)

HISTORY_SQL = [
    # a history of $1 finished jobs, two days old (the statements run in one transaction)
    """
    INSERT INTO procrastinate_jobs (queue_name, task_name, priority, status, attempts, args)
    SELECT 'default', 'system.noop', 0, 'succeeded', 1, '{}' FROM generate_series(1, $1)
    """,
    """
    INSERT INTO jobs (id, queue_job_id, payload, max_attempts, timeout_seconds, created_at)
    SELECT gen_random_uuid(), pj.id, '{}', 3, 60, now() - interval '2 days'
    FROM procrastinate_jobs AS pj WHERE pj.status = 'succeeded'
    """,
    """
    INSERT INTO job_attempts (job_id, number, worker_name, started_at, finished_at, outcome)
    SELECT j.id, 1, 'history', j.created_at, j.created_at + interval '1 second', 'succeeded'
    FROM jobs AS j
    """,
    """
    INSERT INTO job_events (job_id, at, event, attempt, worker_name)
    SELECT j.id, j.created_at + interval '1 second', 'succeeded', 1, 'history' FROM jobs AS j
    """,
]


def cases() -> list[Case]:
    return [Case("scale jobq", run)]


async def run(ctx: Context) -> Figures:
    figures: Figures = {}
    figures["jobq.scale.empty.queues_ms"] = await _queues_ms(ctx)
    figures["jobq.scale.empty.api_bulk100_jobs_per_s"] = await _bulk_rate(ctx)
    figures["jobq.scale.empty.drain_jobs_per_s"] = await _drain_rate(ctx)
    await database.empty_tables(ctx.backend)

    await _fill_history(ctx, ctx.size.history_jobs)
    figures["jobq.scale.history.queues_ms"] = await _queues_ms(ctx)
    figures["jobq.scale.history.api_bulk100_jobs_per_s"] = await _bulk_rate(ctx)
    figures["jobq.scale.history.drain_jobs_per_s"] = await _drain_rate(ctx)

    purge = asyncio.create_task(_timed_purge(ctx))
    try:
        figures["jobq.scale.purging.drain_jobs_per_s"] = await _drain_rate(ctx)
        purged, seconds = await purge
    finally:
        purge.cancel()
    if purged != ctx.size.history_jobs:
        raise RuntimeError(f"the cleanup deleted {purged} of {ctx.size.history_jobs} jobs")
    figures["jobq.scale.purge.jobs_per_s"] = purged / seconds
    return figures


async def _bulk_rate(ctx: Context) -> float:
    """Bulk enqueue over HTTP (enqueue.bulk_over_http); the queued jobs are deleted after, so
    that the drains that follow have only their own."""
    rate = await enqueue.bulk_over_http(ctx, ctx.size.batches * BATCH)
    async with ctx.backend.connection() as conn:
        await conn.execute("DELETE FROM procrastinate_jobs WHERE status = 'todo'")
    return rate


async def _drain_rate(ctx: Context) -> float:
    return (await drain.jobq(ctx, C10))["jobq.drain.c10.jobs_per_s"]


async def write_history(conn: Any, count: int) -> None:
    """`count` finished jobs (HISTORY_SQL) in one transaction on `conn`, then vacuumed and
    analysed as autovacuum keeps a table in steady state."""
    async with conn.transaction():
        for statement in HISTORY_SQL:
            await conn.execute(statement, *([count] if "$1" in statement else []))
    await conn.execute("VACUUM ANALYZE procrastinate_jobs, jobs, job_attempts, job_events")


async def _fill_history(ctx: Context, count: int) -> None:
    async with ctx.backend.connection() as conn:
        await write_history(conn, count)


async def _timed_purge(ctx: Context) -> tuple[int, float]:
    started = time.monotonic()
    deleted = await retention.purge_finished(ctx.backend, timedelta(days=1))
    return deleted, time.monotonic() - started


async def _queues_ms(ctx: Context) -> float:
    """Median time of `GET /api/v1/queues` against a real `jobq serve`."""
    port = processes.free_port()
    server = await processes.jobq_api(ctx, port)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
            await processes.wait_http_ready(client, server)
            times = []
            for number in range(3 + QUEUE_GETS):
                started = time.perf_counter()
                async with client.get("/api/v1/queues") as response:
                    await response.read()
                    response.raise_for_status()
                if number >= 3:
                    times.append(time.perf_counter() - started)
    finally:
        await server.stop()
    return statistics.median(times) * 1000
