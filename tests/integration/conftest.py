"""Fixtures for tests against the real database: a backend, a clean slate, an API client,
and real worker processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest

from service.api.app import create_app
from service.backend import Backend
from service.settings import Settings

# Tables that hold no test's data but the schema's own bookkeeping.
KEPT_TABLES = {"alembic_version"}


@pytest.fixture(scope="session")
async def backend(database_url: str) -> AsyncIterator[Backend]:
    backend = await Backend.open(database_url, pool_size=5)
    yield backend
    await backend.close()


@pytest.fixture(scope="session")
async def every_table(backend: Backend) -> str:
    """Every table of the migrated schema (read from the catalog, so a new table is included)."""
    async with backend.connection() as conn:
        names = await conn.fetchval(
            "SELECT string_agg(quote_ident(tablename), ', ' ORDER BY tablename) FROM pg_tables"
            " WHERE schemaname = current_schema() AND NOT tablename = ANY($1::text[])",
            sorted(KEPT_TABLES))
    return names


@pytest.fixture(autouse=True)
async def clean_tables(backend: Backend, every_table: str) -> None:
    """Every test starts from empty tables."""
    async with backend.connection() as conn:
        await conn.execute(f"TRUNCATE {every_table} RESTART IDENTITY CASCADE")


@pytest.fixture
def settings(database_url: str) -> Settings:
    # The client below calls the API by this name: allowed like any deployment's own name.
    # Authentication off: these tests are about what the API does, not who may ask (that is
    # tests/integration/test_auth.py and test_isolation.py, which turn it on).
    return Settings(database_url=database_url, allowed_hosts=("jobq.test",), auth="off")


@pytest.fixture
async def client(settings: Settings, backend: Backend) -> AsyncIterator[httpx.AsyncClient]:
    """The API in this process and event loop, over the test run's backend."""
    transport = httpx.ASGITransport(app=create_app(settings, backend))
    async with httpx.AsyncClient(transport=transport, base_url="http://jobq.test") as client:
        yield client


WorkerFactory = Callable[..., subprocess.Popen]


@pytest.fixture
def start_worker(database_url: str, tmp_path) -> Iterator[WorkerFactory]:
    """Start real `jobq worker` processes; every one is stopped at the end of the test."""
    started: list[subprocess.Popen] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        environment = {
            **os.environ,
            "DATABASE_URL": database_url,
            "JOBQ_POLL_SECONDS": "0.2",
            "JOBQ_HEARTBEAT_SECONDS": "1",
            "JOBQ_PROGRESS_INTERVAL_SECONDS": "0.05",
            **(env or {}),
        }
        log_path = tmp_path / f"worker-{len(started)}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "worker", *args],
                env=environment, stdout=log, stderr=subprocess.STDOUT,
            )
        process.log_path = log_path  # type: ignore[attr-defined]
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.send_signal(signal.SIGINT)
    for process in started:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
