"""Queue policies at scale (jobq only): the c10 drain with a rate and a concurrency limit set
(neither binding) against none; GET /api/v1/queues and each report view with HISTORY finished
jobs and 30 days of daily aggregates; the drain while the retention pass deletes that history.

The history is the scale benchmark's (finished jobs two days old, written by SQL); the
aggregates are written by SQL too, as 30 days of two queues and two job types would leave them
(every shard of every day used: the most rows the views read).
"""

from __future__ import annotations

import asyncio
import statistics
import time

from benchmarks import database, drain, scale
from benchmarks.context import Case, Context, Figures
from service import retention

LIMIT_PAIRS = 3
"""Drains without and with limits, alternated; each figure is the median of its three (one
pair's ratio moved between 0.80 and 1.10 on a quiet machine)."""

VIEW_READS = 20
"""Reads of each view per measurement (after 3 unmeasured ones); the median counts."""

REPORTS = ("report_daily", "report_failures", "report_workers")

_AGGREGATES = [
    """
    INSERT INTO job_stats_daily (day, queue_name, task_name, shard, submitted, succeeded,
                                 failed, cancelled, retried)
    SELECT current_date - d, q, t, s, 2000, 1900, 50, 10, 40
    FROM generate_series(0, 29) AS d, unnest(ARRAY['default', 'mail']) AS q,
         unnest(ARRAY['system.noop', 'system.sleep']) AS t, generate_series(0, 15) AS s
    ON CONFLICT DO NOTHING
    """,
    """
    INSERT INTO job_stats_histograms (day, queue_name, task_name, metric, bucket, shard, n,
                                      max_ms)
    SELECT current_date - d, q, t, m, b, s, 1 + (b * 7 + s) % 50, power(2, b / 4.0)
    FROM generate_series(0, 29) AS d, unnest(ARRAY['default', 'mail']) AS q,
         unnest(ARRAY['system.noop', 'system.sleep']) AS t,
         unnest(ARRAY['run', 'wait']) AS m, generate_series(10, 39) AS b,
         generate_series(0, 15) AS s
    ON CONFLICT DO NOTHING
    """,
    """
    INSERT INTO job_failures_daily (day, queue_name, task_name, error_type, shard, attempts,
                                    jobs, last_at, last_message)
    SELECT current_date - d, q, t, e, s, 20, 5, now() - make_interval(days => d),
           'sample failure ' || e
    FROM generate_series(0, 29) AS d, unnest(ARRAY['default', 'mail']) AS q,
         unnest(ARRAY['system.noop', 'system.sleep']) AS t,
         unnest(ARRAY['JobTimeout', 'TransientJobError', 'WorkerLost']) AS e,
         generate_series(0, 15) AS s
    ON CONFLICT DO NOTHING
    """,
    """
    INSERT INTO worker_stats_daily (day, worker_name, attempts, succeeded, busy_ms)
    SELECT current_date - d, 'worker-' || w, 4000, 3900, 3600000
    FROM generate_series(0, 29) AS d, generate_series(1, 10) AS w
    ON CONFLICT DO NOTHING
    """,
]


def cases() -> list[Case]:
    return [Case("policies jobq", run)]


async def run(ctx: Context) -> Figures:
    figures: Figures = {}
    drains: dict[str, list[Figures]] = {"unlimited": [], "limited": []}
    for _ in range(LIMIT_PAIRS):
        drains["unlimited"].append(await drain.jobq(ctx, scale.C10))
        await database.empty_tables(ctx.backend)
        drains["limited"].append(await _limited_drain(ctx))
        await database.empty_tables(ctx.backend)
    for name, measured in drains.items():
        for drained, figure in (("jobs_per_s", "drain_jobs_per_s"),
                                ("server_cpu_us_per_job", "server_cpu_us_per_job")):
            figures[f"jobq.policies.{name}.{figure}"] = statistics.median(
                m[f"jobq.drain.c10.{drained}"] for m in measured)

    await scale._fill_history(ctx, ctx.size.history_jobs)
    async with ctx.backend.connection() as conn:
        for statement in _AGGREGATES:
            await conn.execute(statement)
        await conn.execute("VACUUM ANALYZE job_stats_daily, job_stats_histograms, "
                           "job_failures_daily, worker_stats_daily, queue_counts")
    figures["jobq.policies.history.queues_ms"] = await scale._queues_ms(ctx)
    for view in REPORTS:
        figures[f"jobq.policies.history.{view}_ms"] = await _view_ms(ctx, view)
    figures["jobq.policies.history.drain_jobs_per_s"] = await scale._drain_rate(ctx)

    cleanup = asyncio.create_task(_timed_retention(ctx))
    try:
        figures["jobq.policies.retention.drain_jobs_per_s"] = await scale._drain_rate(ctx)
        deleted, seconds = await cleanup
    finally:
        cleanup.cancel()
    # The drains' own jobs are younger than a day but beyond the newest 1,000: the count
    # limit deletes them too.
    if deleted < ctx.size.history_jobs:
        raise RuntimeError(f"retention deleted {deleted} of {ctx.size.history_jobs} jobs")
    figures["jobq.policies.retention.jobs_per_s"] = deleted / seconds
    return figures


async def _limited_drain(ctx: Context) -> Figures:
    """The c10 drain with limits on its queue that never bind: what taking turns on the
    queue's row, counting its running jobs and counting its starts cost."""
    async with ctx.backend.connection() as conn:
        await conn.execute(
            "SELECT jobq_set_queue_settings('default', '{\"concurrency_limit\": 100000, "
            "\"rate_limit\": 1000000, \"rate_period_seconds\": 1}')")
    return await drain.jobq(ctx, scale.C10)


async def _view_ms(ctx: Context, view: str) -> float:
    times = []
    async with ctx.backend.connection() as conn:
        for number in range(3 + VIEW_READS):
            started = time.perf_counter()
            await conn.fetch(f"SELECT * FROM {view}")
            if number >= 3:
                times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


async def _timed_retention(ctx: Context) -> tuple[int, float]:
    started = time.monotonic()
    deleted = await retention.apply_retention(ctx.backend)
    return sum(deleted.values()), time.monotonic() - started
