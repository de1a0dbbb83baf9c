"""The run's database: on a given server or an embedded one, created, migrated and dropped;
emptied between measurements; filled with no-op jobs."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from benchmarks import processes
from benchmarks.context import BATCH
from service import jobs
from service.backend import Backend
from service.db import admin, migrate
from service.db.embedded import EmbeddedPostgres
from service.domain import jobtypes

NOOP = jobs.JobRequest(type=jobtypes.SYSTEM_NOOP.name)


@contextlib.asynccontextmanager
async def bench_database(server_url: str | None,
                         scratch: Path) -> AsyncIterator[tuple[str, str]]:
    """A new, migrated database on `server_url`'s server, or on an embedded server started
    in `scratch`; yields its URL and the server's, drops it (and stops the embedded server)
    afterwards."""
    server = None
    if server_url is None:
        server = EmbeddedPostgres(scratch / "postgres")
        # In the main thread: the server's parent-death signal follows the starting thread.
        server_url = server.start()
    try:
        name = f"jobq_bench_{uuid.uuid4().hex[:12]}"
        url = await admin.ensure_database(server_url, name)
        try:
            await asyncio.to_thread(migrate.upgrade, url)
            yield url, server_url
        finally:
            await admin.drop_database(server_url, name)
    finally:
        if server is not None:
            server.stop()


async def empty_tables(backend: Backend) -> None:
    """Every table but Alembic's, emptied (as the integration tests do), then a checkpoint so
    the next measurement does not pay for flushing this one's writes."""
    async with backend.connection() as conn:
        tables = await conn.fetch(
            "SELECT quote_ident(tablename) AS name FROM pg_tables "
            "WHERE schemaname = current_schema() AND tablename <> 'alembic_version'")
        await conn.execute(
            f"TRUNCATE {', '.join(t['name'] for t in tables)} RESTART IDENTITY CASCADE")
        try:
            await conn.execute("CHECKPOINT")
        except asyncpg.InsufficientPrivilegeError:
            pass  # a server we were given, as a user who may not: measure without it


async def queue_noop_jobs(backend: Backend, count: int) -> None:
    """`count` system.noop jobs, queued through `jobs.enqueue` BATCH to a transaction."""
    for start in range(0, count, BATCH):
        async with backend.transaction() as conn:
            await jobs.enqueue(conn, [NOOP] * min(BATCH, count - start))


SERVER_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes", "shared_buffers",
                   "work_mem", "max_connections", "wal_level")
"""Server settings the figures depend on, recorded with the results."""


async def postmaster_pid(backend: Backend) -> int:
    """The server's main process, found as the parent of this session's backend: the server
    must run on this machine, since its CPU is read from /proc."""
    async with backend.connection() as conn:
        backend_pid = await conn.fetchval("SELECT pg_backend_pid()")
    try:
        return processes.parent_pid(backend_pid)
    except OSError:
        raise SystemExit(f"PostgreSQL's backend {backend_pid} is not in this machine's /proc: "
                         "the benchmarks read the server's CPU there, so run them against a "
                         "server on this machine (or the embedded one)") from None


async def server_version(backend: Backend) -> str:
    async with backend.connection() as conn:
        return await conn.fetchval("SHOW server_version")


async def server_settings(backend: Backend) -> dict[str, str]:
    async with backend.connection() as conn:
        rows = await conn.fetch(
            "SELECT name, setting || coalesce(' ' || unit, '') AS value FROM pg_settings "
            "WHERE name = ANY($1::text[]) ORDER BY name", list(SERVER_SETTINGS))
    return {r["name"]: r["value"] for r in rows}
