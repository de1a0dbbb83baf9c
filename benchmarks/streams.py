"""Streams: N Server-Sent Event streams open on one `jobq serve` process (`full`: 1,000).

N jobs are queued and claimed by the benchmark itself (a registered worker that runs nothing),
so each holds an open attempt and its stream stays open. The benchmark opens one
`GET /api/v1/jobs/{id}/stream` per job (aiohttp, one connection each) and waits until every
stream has sent its first event. Then it reads the API process's RSS and counts the database
connections the API holds (all the database's connections minus those open before the API
started). Then it writes progress (`jobq_report_progress`, what a worker calls), one job at a
time at WRITE_RATE per second, and times each write from just before the call to the moment the
stream's client has parsed the event: the delay a client sees, through PostgreSQL's NOTIFY, the
API's one listening connection, its read of the row, and HTTP. jobq only: Procrastinate has no
streams to compare with.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp

from benchmarks import database, drain, processes
from benchmarks.context import Case, Context, Figures
from benchmarks.figures import percentile
from service import jobs
from workers import leases

STREAMS = {"smoke": 20, "full": 1000}
"""Streams opened, per size."""

WRITES = {"smoke": 20, "full": 500}
"""Progress writes timed, per size."""

WRITE_RATE = 50.0
"""Progress writes per second while the delay is measured."""

OPEN_TIMEOUT = 120.0
"""Seconds all streams may take to open."""


def cases() -> list[Case]:
    return [Case("streams jobq", run)]


class _Stream:
    """One client: parses its stream and remembers when each progress value arrived."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()
        self.arrived: dict[int, float] = {}
        self.waiting: dict[int, asyncio.Event] = {}

    async def follow(self, session: aiohttp.ClientSession, url: str) -> None:
        async with session.get(url) as response:
            event = None
            async for raw in response.content:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "job":
                    self.opened.set()
                elif line.startswith("data:") and event == "progress":
                    percent = json.loads(line[5:])["progress"]
                    self.arrived[percent] = time.monotonic()
                    if percent in self.waiting:
                        self.waiting[percent].set()


async def run(ctx: Context) -> Figures:
    count, writes = STREAMS[ctx.size.name], WRITES[ctx.size.name]
    async with ctx.backend.transaction() as conn:
        ids = await jobs.enqueue(conn, [database.NOOP] * count)
    async with ctx.backend.connection() as conn:
        worker_id = await leases.register(conn, "bench-streams", "bench", 0, [], count)
        claimed = await leases.claim(conn, worker_id, "bench-streams", None, count)
        before = await _connections(conn)
    attempts = {c.job_id: c.attempt_id for c in claimed}
    port = processes.free_port()
    api = await processes.jobq_api(ctx, port)
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    streams = {job_id: _Stream() for job_id in ids}
    tasks: list[asyncio.Task] = []
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}", connector=connector,
                                         timeout=timeout) as session:
            await processes.wait_http_ready(session, api)
            await asyncio.sleep(processes.IDLE_SETTLE)
            idle_rss = api.memory_mib("VmRSS")
            tasks = [asyncio.create_task(s.follow(session, f"/api/v1/jobs/{j}/stream"))
                     for j, s in streams.items()]
            await asyncio.wait_for(
                asyncio.gather(*(s.opened.wait() for s in streams.values())), OPEN_TIMEOUT)
            await asyncio.sleep(processes.IDLE_SETTLE)
            api.check_alive()
            rss = api.memory_mib("VmRSS")
            async with ctx.backend.connection() as conn:
                connections = await _connections(conn) - before
            delays = await _delays(ctx, streams, attempts, writes)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.stop()
        async with ctx.backend.connection() as conn:
            await leases.unregister(conn, worker_id)
    return {
        "jobq.streams.idle_rss_mb": idle_rss,
        "jobq.streams.open_rss_mb": rss,
        "jobq.streams.db_connections": connections,
        "jobq.streams.delay_p50_ms": percentile(delays, 0.5),
        "jobq.streams.delay_p99_ms": percentile(delays, 0.99),
    }


async def _connections(conn) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")


async def _delays(ctx: Context, streams: dict, attempts: dict, writes: int) -> list[float]:
    """Milliseconds from a progress write to its event at the client, one write at a time."""
    delays = []
    order = list(streams)
    async with ctx.backend.connection() as conn:
        for n in range(writes):
            job_id = order[n % len(order)]
            percent = 1 + n // len(order)
            stream = streams[job_id]
            stream.waiting[percent] = asyncio.Event()
            started = time.monotonic()
            assert await leases.write_progress(conn, attempts[job_id], percent, "bench", None)
            await asyncio.wait_for(stream.waiting[percent].wait(), drain.START_TIMEOUT)
            delays.append((stream.arrived[percent] - started) * 1000)
            await asyncio.sleep(max(0.0, 1 / WRITE_RATE - (time.monotonic() - started)))
    return delays
