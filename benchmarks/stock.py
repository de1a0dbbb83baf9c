"""The baseline, seen from the benchmark: deferring with Procrastinate's own API and starting
its stock worker (`stock_worker.py`) in a process of its own."""

from __future__ import annotations

import sys

import procrastinate

from benchmarks import processes, stock_app
from benchmarks.context import BATCH, Context

DEFER_POOL_SIZE = 20
"""Connections of the deferring app: as many as a jobq API process may open (pool 10 plus
10 overflow)."""


def make_app(database_url: str) -> procrastinate.App:
    """The app this process defers with."""
    return stock_app.make_app(database_url, pool_size=DEFER_POOL_SIZE)


def task(app: procrastinate.App) -> procrastinate.tasks.Task:
    return app.tasks[stock_app.TASK]


async def queue_noop_jobs(app: procrastinate.App, count: int) -> None:
    """`count` no-op jobs, deferred BATCH at a time with `batch_defer_async`."""
    for start in range(0, count, BATCH):
        await task(app).batch_defer_async(*[{}] * min(BATCH, count - start))


async def worker(ctx: Context, concurrency: int, wait: bool, number: int = 0) -> processes.Child:
    """A stock worker process. Without `wait` it exits once the queue is empty."""
    mode = "waiting" if wait else "draining"
    return await processes.Child.start(
        ctx, f"stock-worker-{mode}-c{concurrency}-{number}",
        [sys.executable, "-m", "benchmarks.stock_worker", "--concurrency", str(concurrency),
         *(["--wait"] if wait else [])],
        markers=[stock_app.REGISTERED, stock_app.STOPPED])
