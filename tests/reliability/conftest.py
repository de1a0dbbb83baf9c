"""Reliability scenarios: real worker and API processes, killed, frozen and starved of their
database on purpose. Each scenario ends with a ledger check (see ledger.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from service.db import admin, migrate
from service.db.embedded import EmbeddedPostgres

# The integration fixtures: a migrated database, clean tables, an API client, worker processes.
from tests.integration.conftest import (  # noqa: F401
    backend,
    clean_tables,
    client,
    every_table,
    settings,
    start_worker,
)
from tests.support import free_port, scratch_dir

pytestmark = pytest.mark.slow

FAST = {
    # JOBQ_RELIABILITY_STALL_SECONDS measures recovery at another timeout (e.g. the default 30).
    "JOBQ_STALL_TIMEOUT_SECONDS": os.environ.get("JOBQ_RELIABILITY_STALL_SECONDS", "3"),
    "JOBQ_HEARTBEAT_SECONDS": "0.5",
    "JOBQ_POLL_SECONDS": "0.2",
}
"""Settings that make failure detection quick enough for a test."""


class ApiProcess:
    """A `jobq serve` process on a free port."""

    def __init__(self, database_url: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log, "a") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--port", str(self.port)],
                # Authentication off: these tests are about failures, not keys.
                env={**os.environ, "DATABASE_URL": database_url, "JOBQ_AUTH": "off"},
                stdout=out, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def start_api(database_url: str, tmp_path: Path) -> Iterator:
    started: list[ApiProcess] = []

    def start(url: str | None = None) -> ApiProcess:
        api = ApiProcess(url or database_url, tmp_path / f"api-{len(started)}.log")
        started.append(api)
        return api

    yield start
    for api in started:
        api.stop()


class OwnedCluster:
    """A PostgreSQL server this test owns, to stop and start under load, hold in recovery
    (what clients of a server that is starting up see) or leave shutting down."""

    def __init__(self, data_dir: Path) -> None:
        self.server = EmbeddedPostgres(data_dir)
        self.data_dir = self.server.data_dir
        self.database_url = ""

    async def open(self) -> None:
        server_url = self.server.start()
        self.database_url = await admin.ensure_database(server_url, "jobq_outage")
        await asyncio.to_thread(migrate.upgrade, self.database_url)

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    @property
    def postmaster_pid(self) -> int:
        return int((self.data_dir / "postmaster.pid").read_text().split()[0])

    def start_in_recovery(self) -> asyncio.Future:
        """Start the stopped server as a standby with hot standby off: it runs, and refuses
        every connection with "the database system is not accepting connections" (57P03,
        CannotConnectNowError, as while it starts up) until `promote()`. Returns the start,
        which completes once it accepts connections."""
        with open(self.data_dir / "postgresql.auto.conf", "a") as conf:
            conf.write("hot_standby = off\n")
        (self.data_dir / "standby.signal").touch()
        return asyncio.ensure_future(asyncio.to_thread(self.server.start))

    def promote(self) -> None:
        """End recovery (what `pg_ctl promote` does): the server accepts connections."""
        (self.data_dir / "promote").touch()
        os.kill(self.postmaster_pid, signal.SIGUSR1)

    def begin_smart_shutdown(self) -> None:
        """`pg_ctl stop -m smart`: sessions open now go on, new connections are refused with
        "the database system is shutting down" until the last one ends."""
        os.kill(self.postmaster_pid, signal.SIGTERM)


@pytest.fixture
async def owned_cluster() -> AsyncIterator[OwnedCluster]:
    with scratch_dir("jobq-owned-pg-") as directory:
        cluster = OwnedCluster(directory / "owned-pg")
        await cluster.open()
        yield cluster
        cluster.stop()
