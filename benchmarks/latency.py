"""Latency: jobs arriving one by one at ARRIVAL_RATE onto an idle worker (concurrency 10); how
long from enqueue to started.

Each job's latency is its `started` event minus its `deferred` event in procrastinate_events
(jobq's jobs: its first `started` minus its `submitted` in job_events),
both from the database's clock and written the same way for jobq and stock jobs. `deferred`
carries the start of the enqueueing transaction, so the enqueue itself is part of it. The idle
worker's memory is read here too, before the first job arrives.

Over HTTP (`latency jobq HTTP`), jobs arrive as `POST /api/v1/jobs` to a real `jobq serve`;
a job's latency is its `started` event minus the client's clock just before the request (the
same machine's clock), so the request and the API's work are part of it. The anchors PgQueuer
and BullMQ (anchor_pgqueuer.py, anchor_bullmq.py) time it the same way: the handler's start
minus the time just before the enqueue call, carried in the job.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp

from benchmarks import anchor_bullmq, anchor_pgqueuer, database, drain, processes, stock, stock_app
from benchmarks.context import ARRIVAL_RATE, Case, Context, Figures
from benchmarks.figures import latency_figures
from service import jobs

CONCURRENCY = 10
"""The worker's concurrency (jobq's default)."""

SHARES = (0.5, 0.95, 0.99)


def cases() -> list[Case]:
    return [Case("latency jobq", jobq), Case("latency jobq HTTP", jobq_http),
            Case("latency stock", baseline), *anchor_pgqueuer.cases_latency(),
            *anchor_bullmq.cases_latency()]


async def jobq(ctx: Context) -> Figures:
    backend = ctx.backend

    async def enqueue_one() -> None:
        async with backend.transaction() as conn:
            await jobs.enqueue(conn, [database.NOOP])

    worker = await processes.jobq_worker(ctx, CONCURRENCY)
    try:
        await worker.sighting(processes.JOBQ_REGISTERED, drain.START_TIMEOUT)
        await asyncio.sleep(processes.IDLE_SETTLE)
        figures = {"jobq.memory.worker.idle_rss_mb": worker.memory_mib("VmRSS"),
                   "jobq.memory.worker_tree.idle_rss_mb": worker.tree_rss_mib(),
                   "jobq.memory.worker_tree.idle_processes":
                       1 + len(processes.descendants(worker.pid))}
        await _arrive(enqueue_one, ctx.size.latency_jobs)
        await drain.wait_until_done(backend, ctx.size.latency_jobs, [worker],
                                    must_stay_alive=True)
    finally:
        await worker.stop()
    return figures | latency_figures("jobq.latency", await _latencies(ctx), SHARES)


async def jobq_http(ctx: Context) -> Figures:
    port = processes.free_port()
    api = await processes.jobq_api(ctx, port)
    worker = await processes.jobq_worker(ctx, CONCURRENCY)
    sent: dict[str, float] = {}
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
            await processes.wait_http_ready(client, api)
            await worker.sighting(processes.JOBQ_REGISTERED, drain.START_TIMEOUT)
            await asyncio.sleep(processes.IDLE_SETTLE)

            async def post_one() -> None:
                before = time.time()
                async with client.post("/api/v1/jobs", json={"type": "system.noop"}) as response:
                    body = await response.json()
                    if response.status != 201:
                        raise RuntimeError(f"POST /api/v1/jobs answered {response.status}: {body}")
                sent[body["id"]] = before

            await _arrive(post_one, ctx.size.latency_jobs)
        await drain.wait_until_done(ctx.backend, ctx.size.latency_jobs, [worker],
                                    must_stay_alive=True)
    finally:
        await processes.stop_all([worker, api])
    async with ctx.backend.connection() as conn:
        rows = await conn.fetch(
            """
            SELECT job_id::text AS id, extract(epoch FROM at)::float8 AS started
            FROM job_events WHERE event = 'started' AND attempt = 1
            """)
    if len(rows) != len(sent):
        raise RuntimeError(f"{len(rows)} start events for {len(sent)} jobs")
    return latency_figures("jobq.latency_http", [r["started"] - sent[r["id"]] for r in rows],
                           SHARES)


async def baseline(ctx: Context) -> Figures:
    task = stock.task(ctx.stock)

    async def defer_one() -> None:
        await task.defer_async()

    worker = await stock.worker(ctx, CONCURRENCY, wait=True)
    try:
        await worker.sighting(stock_app.REGISTERED, drain.START_TIMEOUT)
        await asyncio.sleep(processes.IDLE_SETTLE)
        figures = {"stock.memory.worker.idle_rss_mb": worker.memory_mib("VmRSS")}
        await _arrive(defer_one, ctx.size.latency_jobs)
        await drain.wait_until_done(ctx.backend, ctx.size.latency_jobs, [worker],
                                    must_stay_alive=True)
    finally:
        await worker.stop()
    return figures | latency_figures("stock.latency", await _latencies(ctx), SHARES)


async def _arrive(enqueue_one: Callable[[], Awaitable[None]], count: int) -> None:
    """Enqueue `count` jobs, one every 1/ARRIVAL_RATE s on a fixed schedule (a slow enqueue
    is caught up on, not pushed back)."""
    started = time.monotonic()
    for number in range(count):
        delay = started + number / ARRIVAL_RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await enqueue_one()


async def _latencies(ctx: Context) -> list[float]:
    async with ctx.backend.connection() as conn:
        rows = await conn.fetch(
            """
            SELECT extract(epoch FROM s.at - d.at)::float8 AS seconds
            FROM procrastinate_events d
            JOIN procrastinate_events s ON s.job_id = d.job_id AND s.type = 'started'
            WHERE d.type = 'deferred'
            UNION ALL  -- jobq's jobs: their history is in job_events (revision 0015)
            SELECT extract(epoch FROM s.at - d.at)::float8
            FROM job_events d
            JOIN job_events s ON s.job_id = d.job_id AND s.event = 'started' AND s.attempt = 1
            WHERE d.event = 'submitted'
            """)
    if len(rows) != ctx.size.latency_jobs:
        raise RuntimeError(f"{len(rows)} start events for {ctx.size.latency_jobs} jobs")
    return [r["seconds"] for r in rows]
