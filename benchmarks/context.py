"""What every benchmark is given: the sizes of a run, the database and the shared clients."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import procrastinate

from service.backend import Backend

if TYPE_CHECKING:
    from benchmarks.anchor_bullmq import BullMQ
    from benchmarks.anchor_pgqueuer import PgQueuerAnchor

PROJECT_ROOT = Path(__file__).resolve().parents[1]

BATCH = 1000
"""Jobs per batch: `POST /api/v1/jobs/batch`, `jobs.enqueue` and `batch_defer_async` alike
(the API's maximum)."""

BULK = 100
"""Jobs per call in the bulk-enqueue comparison with the anchors (the issue's batches of 100):
`POST /api/v1/jobs/batch`, `batch_defer_async`, PgQueuer's list `enqueue`, BullMQ's `addBulk`."""

CLIENTS = 32
"""Concurrent HTTP clients (and concurrent stock deferrers) in the concurrent enqueue test."""

ARRIVAL_RATE = 100.0
"""Jobs per second arriving one by one in the latency test."""


@dataclass(frozen=True)
class Size:
    """How much work one run does."""

    name: str
    repetitions: int
    drain_jobs: int
    """Jobs queued before each drain starts."""
    api_single: int
    """`POST /api/v1/jobs` requests from one client (and single deferrals from Python)."""
    api_concurrent: int
    """Requests in all from CLIENTS concurrent clients (and concurrent stock deferrals)."""
    batches: int
    """Batches of BATCH jobs, through the API, `jobs.enqueue` and `batch_defer_async`."""
    latency_jobs: int
    """Jobs arriving at ARRIVAL_RATE onto an idle worker."""
    history_jobs: int
    """Finished jobs in the history of the scale benchmark (then deleted by its cleanup)."""
    conversions: int
    """Conversions of the 100k-face mesh per conversion measurement."""


SIZES = {
    "smoke": Size("smoke", repetitions=1, drain_jobs=300, api_single=30, api_concurrent=64,
                  batches=1, latency_jobs=30, history_jobs=2_000, conversions=2),
    # A quick look at the figures on a shared machine: one repetition, a fifth of the history.
    "reduced": Size("reduced", repetitions=1, drain_jobs=5_000, api_single=200,
                    api_concurrent=640, batches=2, latency_jobs=200, history_jobs=200_000,
                    conversions=2),
    "full": Size("full", repetitions=3, drain_jobs=20_000, api_single=2_000,
                 api_concurrent=4_000, batches=10, latency_jobs=1_000, history_jobs=1_000_000,
                 conversions=8),
}


START_TIMEOUT = 60.0
"""Seconds a started worker may take to be ready."""


@dataclass(frozen=True)
class Variant:
    """A drain's shape: worker processes and the concurrency of each."""

    key: str
    processes: int
    concurrency: int


VARIANTS = (Variant("c1", 1, 1), Variant("c10", 1, 10), Variant("2x10", 2, 10))


@dataclass
class Context:
    """One run's database and clients, shared by every benchmark."""

    size: Size
    database_url: str
    backend: Backend
    """jobq's pool in this process: queues jobs, enqueues from Python, polls progress."""
    stock: procrastinate.App
    """Procrastinate on its own psycopg connector, for the baseline's deferrals."""
    log_dir: Path
    """Where started processes write their output."""
    postmaster_pid: int
    """The PostgreSQL server's main process: its CPU and its children's is the server's."""
    pgqueuer: PgQueuerAnchor = None  # type: ignore[assignment]
    """PgQueuer's database on the same server (set once the run has made it)."""
    bullmq: BullMQ = None  # type: ignore[assignment]
    """Our own redis-server and BullMQ's control process (set once started)."""

    def child_env(self) -> dict[str, str]:
        """The environment of the processes a benchmark starts: ours, on the run's database,
        with the workers' retention pass held off (WORKER_RETENTION_INTERVAL) unless
        JOBQ_RETENTION_INTERVAL_SECONDS says otherwise."""
        return {"JOBQ_RETENTION_INTERVAL_SECONDS": WORKER_RETENTION_INTERVAL,
                **os.environ, "DATABASE_URL": self.database_url,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT),
                                                            os.environ.get("PYTHONPATH")]))}


Figures = dict[str, float]

WORKER_RETENTION_INTERVAL = "86400"
"""Seconds between the workers' retention passes in a benchmark: a day, so never during one.
Its default (about a minute) would delete a drain's succeeded jobs beyond the newest 1,000
mid-drain (docs/queues.md), and the drain's count would come up short; what the pass costs a
drain is measured on its own, by the policies benchmark."""


@dataclass(frozen=True)
class Case:
    """One measurement, run once per repetition; returns figures by key (see figures.py)."""

    name: str
    run: Callable[[Context], Awaitable[Figures]]
