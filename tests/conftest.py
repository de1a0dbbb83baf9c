"""Shared fixtures: a real PostgreSQL server and a fresh, migrated database per test run.

The server is the one TEST_DATABASE_URL or DATABASE_URL names, else an embedded one started for
the run. Each run creates its own database on it and migrates it with Alembic.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from service.db import admin, migrate


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """URL of a PostgreSQL server the tests may create databases on."""
    url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from service.db.embedded import EmbeddedPostgres
    from tests.support import scratch_dir

    with scratch_dir("jobq-test-pg-") as directory:
        server = EmbeddedPostgres(directory / "data")
        try:
            yield server.start()
        finally:
            server.stop()


async def new_database(server_url: str, prefix: str = "jobq_test") -> str:
    """A new, empty database on the test server; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    return await admin.ensure_database(server_url, name)


@pytest.fixture(scope="session")
async def database_url(server_url: str) -> AsyncIterator[str]:
    """A database for this test run, migrated to head with Alembic."""
    url = await new_database(server_url)
    await asyncio.to_thread(migrate.upgrade, url)
    yield url
    await admin.drop_database(server_url, admin.database_name(url))
