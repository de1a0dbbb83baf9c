"""Migrations go up, down and up again, and leave the schema the models describe."""

from __future__ import annotations

import asyncio

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
