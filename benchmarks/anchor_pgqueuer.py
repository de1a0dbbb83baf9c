"""The PgQueuer anchor: PgQueuer as it ships, through its own library, in a database of its own
on the same PostgreSQL server (created beside the run's database, its schema installed by
PgQueuer's `Queries.install`, dropped at the end).

Enqueueing runs in the benchmark's process (`Queries.enqueue` on one asyncpg connection, one
job per call or lists of BULK); workers are `benchmarks/anchor_pgqueuer_worker.py` processes.

A drain starts as jobq's does: the workers start while the benchmark holds an EXCLUSIVE lock on
the `pgqueuer` table; once each has said it is ready and its first dequeue waits on that lock,
the lock is released and the clock starts. It stops at the last job's `successful` row in
`pgqueuer_log` (PgQueuer deletes a finished job and logs it in one statement), on the
database's clock. Worker CPU and peak RSS come from /proc, the server's CPU from its processes.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import asyncpg
from pgqueuer import AsyncpgDriver, Queries

from benchmarks import processes
from benchmarks.anchor_pgqueuer_worker import ENTRYPOINT, READY, STOPPED
from benchmarks.context import (
    ARRIVAL_RATE,
    BATCH,
    BULK,
    START_TIMEOUT,
    Case,
    Context,
    Figures,
    Variant,
)
from benchmarks.figures import latency_figures
from service.db import admin

POLL_SECONDS = 0.2
"""How often the benchmark asks whether the queue is empty."""

LATENCY_CONCURRENCY = 10
"""The latency worker's concurrency (batch size), as jobq's latency worker has."""


class PgQueuerAnchor:
    """PgQueuer's database: made, installed and dropped by `open` and `close`."""

    def __init__(self, server_url: str, name: str) -> None:
        self.server_url = server_url
        self.name = name
        self.url = ""

    @classmethod
    async def open(cls, server_url: str, run_database: str) -> PgQueuerAnchor:
        anchor = cls(server_url, f"{run_database}_pgqueuer")
        anchor.url = await admin.ensure_database(server_url, anchor.name)
        conn = await anchor.connect()
        try:
            await Queries(AsyncpgDriver(conn)).install()
        finally:
            await conn.close()
        return anchor

    async def close(self) -> None:
        await admin.drop_database(self.server_url, self.name)

    async def connect(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.url)

    async def empty(self) -> None:
        """Every PgQueuer table emptied."""
        conn = await self.connect()
        try:
            tables = await conn.fetch(
                "SELECT quote_ident(tablename) AS name FROM pg_tables "
                "WHERE schemaname = current_schema()")
            await conn.execute(f"TRUNCATE {', '.join(t['name'] for t in tables)}")
        finally:
            await conn.close()


def worker_env(ctx: Context) -> dict[str, str]:
    return {"PGQUEUER_DATABASE_URL": ctx.pgqueuer.url}


async def start_worker(ctx: Context, concurrency: int, number: int = 0,
                       latency: bool = False) -> processes.Child:
    return await processes.Child.start(
        ctx, f"pgqueuer-worker-c{concurrency}-{number}",
        [sys.executable, "-m", "benchmarks.anchor_pgqueuer_worker",
         "--concurrency", str(concurrency), *(["--latency"] if latency else [])],
        markers=[READY, STOPPED], env=worker_env(ctx))


async def _fill(queries: Queries, count: int, batch: int) -> None:
    for start in range(0, count, batch):
        size = min(batch, count - start)
        await queries.enqueue([ENTRYPOINT] * size, [b"{}"] * size, [0] * size)


# -- drain -------------------------------------------------------------------------------------

async def drain(ctx: Context, variant: Variant) -> Figures:
    count = ctx.size.drain_jobs
    await ctx.pgqueuer.empty()
    conn = await ctx.pgqueuer.connect()
    workers: list[processes.Child] = []
    try:
        await _fill(Queries(AsyncpgDriver(conn)), count, BATCH)
        transaction = conn.transaction()
        await transaction.start()
        try:
            await conn.execute("LOCK TABLE pgqueuer IN EXCLUSIVE MODE")
            workers += [await start_worker(ctx, variant.concurrency, number)
                        for number in range(variant.processes)]
            for worker in workers:
                await worker.sighting(READY, START_TIMEOUT)
            await _until_waiting(ctx, len(workers), workers)
            cpu_before = [w.cpu_seconds() for w in workers]
            server_before = processes.server_cpu_seconds(ctx.postmaster_pid)
        finally:
            await transaction.rollback()
        started = time.monotonic()
        end = await _wait_until_done(ctx, count, workers)
        server = processes.server_cpu_seconds(ctx.postmaster_pid) - server_before
        cpu = sum(w.cpu_seconds() for w in workers) - sum(cpu_before)
        peak = max(w.memory_mib("VmHWM") for w in workers)
    finally:
        await conn.close()
        await processes.stop_all(workers)
    prefix = f"pgqueuer.drain.{variant.key}"
    figures = {f"{prefix}.jobs_per_s": count / (end - started),
               f"{prefix}.cpu_us_per_job": cpu / count * 1e6,
               f"{prefix}.server_cpu_us_per_job": server / count * 1e6}
    if variant.key == "c10":
        figures["pgqueuer.memory.worker.peak_rss_mb"] = peak
    return figures


async def _until_waiting(ctx: Context, waiters: int, workers: list[processes.Child]) -> None:
    """Wait until `waiters` sessions wait for a lock on the pgqueuer table: every worker is in
    its first dequeue."""
    conn = await ctx.pgqueuer.connect()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE relation = 'pgqueuer'::regclass "
                "AND NOT granted") < waiters:
            for worker in workers:
                worker.check_alive()
            if time.monotonic() > deadline:
                raise processes.ChildFailed("the PgQueuer workers never tried to dequeue\n"
                                            f"{workers[0].log_tail()}")
            await asyncio.sleep(0.02)
    finally:
        await conn.close()


async def _wait_until_done(ctx: Context, count: int, workers: list[processes.Child]) -> float:
    """time.monotonic() of the last job's `successful` log row, once no job is left."""
    conn = await ctx.pgqueuer.connect()
    try:
        deadline = time.monotonic() + START_TIMEOUT + count / 20
        # The cheapest question (its CPU is the server's too): is any job left?
        while await conn.fetchval("SELECT EXISTS (SELECT FROM pgqueuer)"):
            for worker in workers:
                worker.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"PgQueuer's workers did not finish {count} jobs in time")
            await asyncio.sleep(POLL_SECONDS)
        before = time.monotonic()
        row = await conn.fetchrow(
            "SELECT count(*) AS done, "
            "extract(epoch FROM clock_timestamp() - max(created))::float8 AS ago "
            "FROM pgqueuer_log WHERE status = 'successful'")
        after = time.monotonic()
    finally:
        await conn.close()
    if row["done"] != count:
        raise RuntimeError(f"{row['done']} of {count} PgQueuer jobs succeeded")
    return (before + after) / 2 - row["ago"]


# -- enqueue -----------------------------------------------------------------------------------

async def enqueue(ctx: Context) -> Figures:
    """`Queries.enqueue` one job at a time from one client, then lists of BULK."""
    conn = await ctx.pgqueuer.connect()
    try:
        queries = Queries(AsyncpgDriver(conn))
        for _ in range(50):  # warm-up: statements prepared
            await queries.enqueue(ENTRYPOINT, b"{}", 0)
        await ctx.pgqueuer.empty()
        single = ctx.size.api_single
        started = time.perf_counter()
        for _ in range(single):
            await queries.enqueue(ENTRYPOINT, b"{}", 0)
        single_seconds = time.perf_counter() - started
        await ctx.pgqueuer.empty()
        bulk = ctx.size.batches * BATCH
        started = time.perf_counter()
        await _fill(queries, bulk, BULK)
        bulk_seconds = time.perf_counter() - started
    finally:
        await conn.close()
    return {"pgqueuer.enqueue.single.jobs_per_s": single / single_seconds,
            "pgqueuer.enqueue.bulk100.jobs_per_s": bulk / bulk_seconds}


# -- latency -----------------------------------------------------------------------------------

async def latency(ctx: Context) -> Figures:
    """An idle worker gets jobs one by one at ARRIVAL_RATE; each job carries the time just
    before its enqueue call, the worker subtracts it from its handler's start."""
    await ctx.pgqueuer.empty()
    count = ctx.size.latency_jobs
    worker = await start_worker(ctx, LATENCY_CONCURRENCY, latency=True)
    conn = await ctx.pgqueuer.connect()
    try:
        await worker.sighting(READY, START_TIMEOUT)
        await asyncio.sleep(processes.IDLE_SETTLE)
        idle = worker.memory_mib("VmRSS")
        queries = Queries(AsyncpgDriver(conn))
        started = time.monotonic()
        for number in range(count):
            delay = started + number / ARRIVAL_RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await queries.enqueue(ENTRYPOINT, json.dumps({"t": time.time()}).encode(), 0)
        await _wait_until_done(ctx, count, [worker])
    finally:
        await conn.close()
        await worker.stop()
    stopped = worker.seen.get(STOPPED)
    if stopped is None:
        raise processes.ChildFailed(f"the PgQueuer worker did not report\n{worker.log_tail()}")
    latencies = json.loads(stopped.line.split(STOPPED, 1)[1])["latencies"]
    if len(latencies) != count:
        raise RuntimeError(f"the PgQueuer worker started {len(latencies)} of {count} jobs")
    return {"pgqueuer.memory.worker.idle_rss_mb": idle,
            **latency_figures("pgqueuer.latency", latencies, (0.5, 0.95, 0.99))}


def drain_case(variant: Variant) -> Case:
    return Case(f"drain pgqueuer {variant.key}", lambda ctx: drain(ctx, variant))


def cases_enqueue() -> list[Case]:
    return [Case("enqueue pgqueuer", enqueue)]


def cases_latency() -> list[Case]:
    return [Case("latency pgqueuer", latency)]
