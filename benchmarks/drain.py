"""Drain: N no-op jobs already queued, emptied by real worker processes.

The workers start while the benchmark holds an EXCLUSIVE lock on procrastinate_jobs: they
register, then their first claim waits on the lock (reads go on, so heartbeats do). Once
every worker has said it registered, the lock is released: that is the start signal, the same
moment for all of them, and the clock starts. It stops at the last job's `succeeded` event,
read from the database's clock. Worker CPU is each process's CPU time from the start signal
to the end, so start-up (imports, the conversion forkserver) is not counted. The server's CPU
over the same window is that of every PostgreSQL process (the postmaster, its backends and
background processes, from /proc), so it is the server's whole load: run on a quiet server.

The anchors run each variant right after jobq's: stock Procrastinate here, PgQueuer and BullMQ
in benchmarks/anchor_pgqueuer.py and anchor_bullmq.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from benchmarks import anchor_bullmq, anchor_pgqueuer, database, processes, stock, stock_app
from benchmarks.context import START_TIMEOUT, VARIANTS, Case, Context, Figures, Variant
from service.backend import Backend

POLL_SECONDS = 0.2
"""How often the benchmark asks whether the queue is empty; the end time comes from the
database, so this only delays noticing it."""

def cases() -> list[Case]:
    """jobq and the anchors, side by side, for each variant."""
    return [
        case
        for variant in VARIANTS
        for case in (Case(f"drain jobq {variant.key}", lambda ctx, v=variant: jobq(ctx, v)),
                     Case(f"drain stock {variant.key}", lambda ctx, v=variant: baseline(ctx, v)),
                     anchor_pgqueuer.drain_case(variant),
                     anchor_bullmq.drain_case(variant))
    ]


async def jobq(ctx: Context, variant: Variant) -> Figures:
    count = ctx.size.drain_jobs
    after = await last_queue_id(ctx.backend)
    await database.queue_noop_jobs(ctx.backend, count)
    workers: list[processes.Child] = []
    try:
        async with _held(ctx.backend) as release:
            workers += [await processes.jobq_worker(ctx, variant.concurrency, number)
                        for number in range(variant.processes)]
            for worker in workers:
                await worker.sighting(processes.JOBQ_REGISTERED, START_TIMEOUT)
            cpu_before = [w.cpu_seconds() for w in workers]
            server_before = processes.server_cpu_seconds(ctx.postmaster_pid)
            started = await release()
        end = await wait_until_done(ctx.backend, count, workers, must_stay_alive=True,
                                    after=after)
        server = processes.server_cpu_seconds(ctx.postmaster_pid) - server_before
        cpu = sum(w.cpu_seconds() for w in workers) - sum(cpu_before)
        peak = max(w.memory_mib("VmHWM") for w in workers)
    finally:
        await processes.stop_all(workers)
    figures = _rates("jobq", variant, count, end - started, cpu, server)
    if variant.key == "c10":
        figures["jobq.memory.worker.peak_rss_mb"] = peak
    return figures


async def baseline(ctx: Context, variant: Variant) -> Figures:
    count = ctx.size.drain_jobs
    await stock.queue_noop_jobs(ctx.stock, count)
    workers: list[processes.Child] = []
    try:
        async with _held(ctx.backend) as release:
            workers += [await stock.worker(ctx, variant.concurrency, wait=False, number=number)
                        for number in range(variant.processes)]
            for worker in workers:
                await worker.sighting(stock_app.REGISTERED, START_TIMEOUT)
            cpu_before = [w.cpu_seconds() for w in workers]
            server_before = processes.server_cpu_seconds(ctx.postmaster_pid)
            started = await release()
        end = await wait_until_done(ctx.backend, count, workers, must_stay_alive=False)
        server = processes.server_cpu_seconds(ctx.postmaster_pid) - server_before
        # A draining stock worker exits once the queue is empty, so it reports its own usage.
        stopped = [stock_app.parse_usage((await w.sighting(stock_app.STOPPED, START_TIMEOUT))
                                         .line) for w in workers]
    finally:
        await processes.stop_all(workers)
    cpu = sum(s["cpu_s"] for s in stopped) - sum(cpu_before)
    figures = _rates("stock", variant, count, end - started, cpu, server)
    if variant.key == "c10":
        figures["stock.memory.worker.peak_rss_mb"] = stopped[0]["maxrss_kib"] / 1024
    return figures


@contextlib.asynccontextmanager
async def _held(backend: Backend) -> AsyncIterator[Callable[[], Awaitable[float]]]:
    """Hold procrastinate_jobs so that no job can be claimed; yields `release`, which lets
    the workers go and returns time.monotonic() of that moment."""
    async with backend.connection() as conn:
        transaction = conn.transaction()
        await transaction.start()
        released = False

        async def release() -> float:
            nonlocal released
            await transaction.rollback()
            released = True
            return time.monotonic()

        try:
            await conn.execute("LOCK TABLE procrastinate_jobs IN EXCLUSIVE MODE")
            yield release
        finally:
            if not released:
                await transaction.rollback()


def _rates(system: str, variant: Variant, count: int, seconds: float, cpu: float,
           server: float) -> Figures:
    prefix = f"{system}.drain.{variant.key}"
    return {f"{prefix}.jobs_per_s": count / seconds,
            f"{prefix}.cpu_us_per_job": cpu / count * 1e6,
            f"{prefix}.server_cpu_us_per_job": server / count * 1e6}


async def last_queue_id(backend: Backend) -> int:
    """The newest queue row's id (0 if none): the jobs queued next have greater ids."""
    async with backend.connection() as conn:
        return await conn.fetchval("SELECT coalesce(max(id), 0) FROM procrastinate_jobs")


async def wait_until_done(backend: Backend, count: int, workers: list[processes.Child],
                          must_stay_alive: bool, after: int = 0) -> float:
    """Wait until no job is left to do; returns time.monotonic() of the last `succeeded`
    event of the `count` jobs queued with ids above `after` (older jobs may be a history that
    is being deleted meanwhile). Raises if a job did not succeed, or if the work stopped
    before the end."""
    deadline = time.monotonic() + START_TIMEOUT + count / 20
    while True:
        async with backend.connection() as conn:
            left = await conn.fetchval(
                "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')")
        if left == 0:
            return await _last_success(backend, count, after)
        if must_stay_alive:
            for worker in workers:
                worker.check_alive()
        elif all(w.process.returncode is not None for w in workers):
            raise processes.ChildFailed(
                f"the workers exited with {left} jobs left\n{workers[0].log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{left} of {count} jobs still queued or running")
        await asyncio.sleep(POLL_SECONDS)


async def _last_success(backend: Backend, count: int, after: int) -> float:
    async with backend.connection() as conn:
        before = time.monotonic()
        # jobq keeps its jobs' history in job_events (Procrastinate's status events are not
        # written for them, revision 0015); stock Procrastinate's jobs have only theirs.
        row = await conn.fetchrow(
            """
            SELECT (SELECT count(*) FROM procrastinate_jobs
                     WHERE status = 'succeeded' AND id > $1) AS succeeded,
                   extract(epoch FROM clock_timestamp() - greatest(
                       (SELECT max(at) FROM procrastinate_events
                         WHERE type = 'succeeded' AND job_id > $1),
                       (SELECT max(e.at) FROM jobs AS j
                        JOIN job_events AS e ON e.job_id = j.id AND e.event = 'succeeded'
                        WHERE j.queue_job_id > $1)))::float8 AS ago
            """, after)
        after = time.monotonic()
    if row["succeeded"] != count:
        raise RuntimeError(f"{row['succeeded']} of {count} jobs succeeded; the rest did not")
    # The database's "how long ago", taken halfway through the round trip.
    return (before + after) / 2 - row["ago"]
