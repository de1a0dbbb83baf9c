"""The baseline's app: Procrastinate as it ships, on its own psycopg connector, with a no-op
task. It imports nothing of jobq, so the stock worker's memory is Procrastinate's alone."""

from __future__ import annotations

import resource

import procrastinate
from procrastinate.psycopg_connector import PsycopgConnector

TASK = "bench.noop"

REGISTERED = "stock-worker registered"
"""Printed by the stock worker once registered, about to fetch its first job."""

STOPPED = "stock-worker stopped"
"""Printed by the stock worker when its run returns, with CPU seconds and peak RSS."""


def make_app(database_url: str, pool_size: int) -> procrastinate.App:
    """Procrastinate's App on its psycopg connector with a pool of `pool_size` connections
    (psycopg_pool's default of 4 would starve a worker running 10 jobs at once)."""
    app = procrastinate.App(connector=PsycopgConnector(
        conninfo=database_url, min_size=pool_size, max_size=pool_size))
    app.task(name=TASK)(noop)
    return app


async def noop() -> None:
    """Does nothing."""


def usage() -> str:
    """This process's CPU seconds and peak RSS, as the stock worker prints them."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    return f"cpu_s={own.ru_utime + own.ru_stime:.3f} maxrss_kib={own.ru_maxrss}"


def parse_usage(line: str) -> dict[str, float]:
    """The figures of a `usage()` line: cpu_s, maxrss_kib."""
    pairs = (word.split("=", 1) for word in line.split() if "=" in word)
    return {key: float(value) for key, value in pairs}
