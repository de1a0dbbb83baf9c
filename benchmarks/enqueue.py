"""Enqueue: how fast jobs get in, through a real `jobq serve` process, through `jobs.enqueue`
from Python, and (the anchors) through Procrastinate's own `defer_async`, PgQueuer's
`Queries.enqueue` and BullMQ's `Queue.add` (the last two in anchor_pgqueuer.py and
anchor_bullmq.py). Bulk enqueue is compared in calls of BULK (100) jobs.

No worker runs; the tables are emptied before each measurement. Latencies are measured by
the client, per request (or per transaction). The HTTP clients share this process's CPU with
nothing else of the benchmark, but on a small machine they compete with the API server for it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp

from benchmarks import anchor_bullmq, anchor_pgqueuer, database, processes, stock
from benchmarks.context import BATCH, BULK, CLIENTS, Case, Context, Figures
from benchmarks.figures import latency_figures
from service import jobs

WARM_UP = 50
"""Requests (or deferrals) before measuring: connections opened, statements prepared."""

Operation = Callable[[], Awaitable[None]]


def cases() -> list[Case]:
    return [Case("enqueue jobq API", api), Case("enqueue jobq API after ANALYZE", analyzed),
            Case("enqueue jobq Python", python), Case("enqueue stock defer", baseline),
            *anchor_pgqueuer.cases_enqueue(), *anchor_bullmq.cases_enqueue()]


async def api(ctx: Context) -> Figures:
    port = processes.free_port()
    server = await processes.jobq_api(ctx, port)
    try:
        # aiohttp: httpx spent 3.3 ms of CPU per request here, on the cores the API needs.
        async with aiohttp.ClientSession(
                f"http://127.0.0.1:{port}", connector=aiohttp.TCPConnector(limit=CLIENTS),
                timeout=aiohttp.ClientTimeout(total=60)) as client:
            await processes.wait_http_ready(client, server)
            await asyncio.sleep(processes.IDLE_SETTLE)
            figures = {"jobq.memory.api.idle_rss_mb": server.memory_mib("VmRSS")}
            figures |= await _api_measurements(ctx, client, server)
        figures["jobq.memory.api.peak_rss_mb"] = server.memory_mib("VmHWM")
    finally:
        await server.stop()
    return figures


async def _api_measurements(ctx: Context, client: aiohttp.ClientSession,
                            server: processes.Child) -> Figures:
    one = {"type": "system.noop"}
    batch = {"jobs": [one] * BATCH}
    bulk = {"jobs": [one] * BULK}

    async def post(path: str, body: dict) -> None:
        async with client.post(path, json=body) as response:
            text = await response.text()
            if response.status != 201:
                raise RuntimeError(f"POST {path} answered {response.status}: {text[:500]}")

    async def post_one() -> None:
        await post("/api/v1/jobs", one)

    async def post_batch() -> None:
        await post("/api/v1/jobs/batch", batch)

    async def post_bulk() -> None:
        await post("/api/v1/jobs/batch", bulk)

    await _run_concurrently(post_one, WARM_UP, CLIENTS)
    size = ctx.size
    figures: Figures = {}
    for key, operation, count, clients, per_operation in [
        ("api_single", post_one, size.api_single, 1, 1),
        ("api_concurrent", post_one, size.api_concurrent, CLIENTS, 1),
        ("api_batch", post_batch, size.batches, 1, BATCH),
        ("api_bulk100", post_bulk, size.batches * BATCH // BULK, 1, BULK),
    ]:
        await database.empty_tables(ctx.backend)
        cpu = server.cpu_seconds()
        seconds, latencies = await _timed(operation, count, clients)
        cpu = server.cpu_seconds() - cpu
        jobs_count = count * per_operation
        prefix = f"jobq.enqueue.{key}"
        if per_operation == 1:
            figures[f"{prefix}.req_per_s"] = count / seconds
            figures |= latency_figures(prefix, latencies)
        else:
            figures[f"{prefix}.jobs_per_s"] = jobs_count / seconds
        figures[f"{prefix}.api_cpu_us_per_job"] = cpu / jobs_count * 1e6
    return figures


NEAR_EMPTY = 10
"""Jobs in the tables when they are analyzed before the `after ANALYZE` measurement."""


async def analyzed(ctx: Context) -> Figures:
    """Bulk enqueue over HTTP (batches of BULK) into tables analyzed while near-empty, through
    a freshly started API: what autovacuum does to a young installation. A plan chosen on those
    statistics and cached on the API's connections must not slow the batches as tables grow."""
    await database.queue_noop_jobs(ctx.backend, NEAR_EMPTY)
    async with ctx.backend.connection() as conn:
        await conn.execute("VACUUM ANALYZE")
    rate = await bulk_over_http(ctx, ctx.size.batches * BATCH)
    return {"jobq.enqueue.api_bulk100_analyzed.jobs_per_s": rate}


async def bulk_over_http(ctx: Context, count: int) -> float:
    """Jobs per second of `count` jobs posted as `POST /api/v1/jobs/batch` of BULK, one after
    the other, to a `jobq serve` started for it (no warm-up: its first batches count)."""
    bulk = {"jobs": [{"type": "system.noop"}] * BULK}
    port = processes.free_port()
    server = await processes.jobq_api(ctx, port)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}",
                                         timeout=aiohttp.ClientTimeout(total=60)) as client:
            await processes.wait_http_ready(client, server)

            async def post_bulk() -> None:
                async with client.post("/api/v1/jobs/batch", json=bulk) as response:
                    text = await response.text()
                    if response.status != 201:
                        raise RuntimeError(f"POST /api/v1/jobs/batch answered "
                                           f"{response.status}: {text[:500]}")

            seconds, _ = await _timed(post_bulk, count // BULK, 1)
    finally:
        await server.stop()
    return count // BULK * BULK / seconds


async def python(ctx: Context) -> Figures:
    backend = ctx.backend

    async def enqueue(count: int) -> None:
        async with backend.transaction() as conn:
            await jobs.enqueue(conn, [database.NOOP] * count)

    await _run_concurrently(lambda: enqueue(1), WARM_UP, 1)
    size = ctx.size
    await database.empty_tables(backend)
    seconds, latencies = await _timed(lambda: enqueue(1), size.api_single, 1)
    figures = {"jobq.enqueue.python_single.jobs_per_s": size.api_single / seconds,
               **latency_figures("jobq.enqueue.python_single", latencies)}
    await database.empty_tables(backend)
    seconds, _ = await _timed(lambda: enqueue(BATCH), size.batches, 1)
    figures["jobq.enqueue.python_batch.jobs_per_s"] = size.batches * BATCH / seconds
    return figures


async def baseline(ctx: Context) -> Figures:
    task = stock.task(ctx.stock)

    async def defer_one() -> None:
        await task.defer_async()

    async def defer_batch() -> None:
        await task.batch_defer_async(*[{}] * BATCH)

    async def defer_bulk() -> None:
        await task.batch_defer_async(*[{}] * BULK)

    await _run_concurrently(defer_one, WARM_UP, CLIENTS)
    size = ctx.size
    figures: Figures = {}
    for key, count, clients in [("defer_single", size.api_single, 1),
                                ("defer_concurrent", size.api_concurrent, CLIENTS)]:
        await database.empty_tables(ctx.backend)
        seconds, latencies = await _timed(defer_one, count, clients)
        figures[f"stock.enqueue.{key}.jobs_per_s"] = count / seconds
        figures |= latency_figures(f"stock.enqueue.{key}", latencies)
    await database.empty_tables(ctx.backend)
    seconds, _ = await _timed(defer_batch, size.batches, 1)
    figures["stock.enqueue.defer_batch.jobs_per_s"] = size.batches * BATCH / seconds
    await database.empty_tables(ctx.backend)
    seconds, _ = await _timed(defer_bulk, size.batches * BATCH // BULK, 1)
    figures["stock.enqueue.defer_bulk100.jobs_per_s"] = size.batches * BATCH / seconds
    return figures


async def _timed(operation: Operation, count: int, clients: int) -> tuple[float, list[float]]:
    """Run `operation` `count` times from `clients` concurrent loops; returns the wall time
    and each operation's latency, in seconds."""
    started = time.perf_counter()
    latencies = await _run_concurrently(operation, count, clients)
    return time.perf_counter() - started, latencies


async def _run_concurrently(operation: Operation, count: int, clients: int) -> list[float]:
    latencies: list[float] = []
    remaining = count

    async def loop() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await operation()
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(loop() for _ in range(clients)))
    return latencies
