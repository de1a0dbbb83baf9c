"""A PgQueuer worker on PGQUEUER_DATABASE_URL running a no-op entrypoint, as PgQueuer ships.

    python -m benchmarks.anchor_pgqueuer_worker --concurrency 10 [--latency]

Concurrency C is PgQueuer's `batch_size` (jobs fetched per dequeue, each run as its own task),
with no concurrency limit on the entrypoint: the knob PgQueuer's own benchmark turns. It runs
on uvloop, as PgQueuer's `pgq run` does. It prints a line just before it starts, and one on
SIGTERM once it has stopped; with --latency that line carries, for each job, the time from
the enqueue call (the job's payload) to the handler's start. It imports nothing of jobq, so its
memory is PgQueuer's alone.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import signal
import time

import asyncpg
import uvloop
from pgqueuer import PgQueuer
from pgqueuer.types import QueueExecutionMode

ENTRYPOINT = "bench.noop"

READY = "pgqueuer-worker ready"
"""Printed just before the worker starts its run (its first dequeue)."""

STOPPED = "pgqueuer-worker stopped"
"""Printed after the run returned, followed by a JSON object: {"latencies": [seconds, ...]}."""

DEQUEUE_TIMEOUT = datetime.timedelta(seconds=1)
"""How long an idle worker waits for a NOTIFY before it polls (PgQueuer's default is 30 s)."""


async def work(database_url: str, concurrency: int, latency: bool) -> None:
    connection = await asyncpg.connect(database_url)
    pgq = PgQueuer.from_asyncpg_connection(connection)
    latencies: list[float] = []

    @pgq.entrypoint(ENTRYPOINT)
    async def noop(job) -> None:
        if latency:
            latencies.append(time.time() - json.loads(job.payload)["t"])

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, pgq.shutdown.set)
    print(READY, flush=True)
    await pgq.run(batch_size=concurrency, mode=QueueExecutionMode.continuous,
                  dequeue_timeout=DEQUEUE_TIMEOUT)
    print(STOPPED, json.dumps({"latencies": latencies}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.anchor_pgqueuer_worker",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--latency", action="store_true",
                        help="record each job's time from enqueue to start (payload {'t': ...})")
    args = parser.parse_args()
    uvloop.run(work(os.environ["PGQUEUER_DATABASE_URL"], args.concurrency, args.latency))


if __name__ == "__main__":
    main()
