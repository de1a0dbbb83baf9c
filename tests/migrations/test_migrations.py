"""Migrations go up, down and up again, and leave the schema the models describe."""

from __future__ import annotations

import asyncio
import os
import sys

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.pool import NullPool

from service.db import admin, migrate, models
from service.db import engine as db_engine
from tests.conftest import new_database

OUR_TABLES = {"jobs", "job_attempts", "job_events", "queues", "workers"}


async def _tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'alembic_version'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


async def _differences(url: str) -> list:
    engine = db_engine.make_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            def diff(sync_conn):
                context = MigrationContext.configure(
                    sync_conn, opts={"include_object": _include, "compare_type": True})
                return compare_metadata(context, models.Base.metadata)
            return await conn.run_sync(diff)
    finally:
        await engine.dispose()


def _include(obj, name, type_, reflected, compare_to):
    return not (type_ == "table" and name.startswith("procrastinate_"))


async def test_upgrade_downgrade_upgrade_and_models_match(server_url: str):
    url = await new_database(server_url, "jobq_migrations")
    try:
        await asyncio.to_thread(migrate.upgrade, url)
        assert OUR_TABLES | {"procrastinate_jobs"} <= await _tables(url)
        await asyncio.to_thread(migrate.downgrade, url, "base")
        assert await _tables(url) == set()
        await asyncio.to_thread(migrate.upgrade, url)
        assert OUR_TABLES | {"procrastinate_jobs", "procrastinate_events"} <= await _tables(url)
        assert await _differences(url) == []
    finally:
        await admin.drop_database(server_url, admin.database_name(url))


async def test_each_revision_downgrades_to_its_predecessor(server_url: str):
    url = await new_database(server_url, "jobq_migrations")
    try:
        await asyncio.to_thread(migrate.upgrade, url)
        for target in ("0008", "0007", "0006", "0005", "0004", "0003", "0002", "0001", "base"):
            await asyncio.to_thread(migrate.downgrade, url, target)
        assert await _tables(url) == set()
    finally:
        await admin.drop_database(server_url, admin.database_name(url))


async def test_two_processes_migrating_one_empty_database_at_once_both_succeed(server_url: str):
    """Two containers starting with `jobq migrate` at the same moment: without the advisory
    lock in migrations/env.py the second fails on objects the first is creating."""
    url = await new_database(server_url, "jobq_migrations")
    try:
        env = {**os.environ, "DATABASE_URL": url}
        processes = [await asyncio.create_subprocess_exec(
            sys.executable, "-m", "service.cli", "migrate", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT) for _ in range(2)]
        outputs = await asyncio.gather(*(p.communicate() for p in processes))
        for process, (output, _) in zip(processes, outputs, strict=True):
            assert process.returncode == 0, output.decode()
        conn = await asyncpg.connect(url)
        try:
            assert await conn.fetchval("SELECT version_num FROM alembic_version") \
                == migrate.head_revision()
        finally:
            await conn.close()
    finally:
        await admin.drop_database(server_url, admin.database_name(url))
