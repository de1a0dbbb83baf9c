"""Alembic environment: migrates the database named by the caller or by DATABASE_URL."""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

from service.db import engine as db_engine
from service.db import models
from service.db.locks import LOCK_SPACE, LOCKS

config = context.config
target_metadata = models.Base.metadata


def include_object(obj, name, type_, reflected, compare_to):
    """Keep Procrastinate's tables (installed by their own pinned revision) out of autogenerate."""
    if type_ == "table":
        if name.startswith("procrastinate_"):
            return False
        if obj is not None and obj.info.get("managed_by") == "procrastinate":
            return False
    return True


def run_with(connection: Connection) -> None:
    # Two processes migrating at once (two containers starting with `jobq migrate`) take
    # turns: the second waits here, then finds the schema at head and has nothing to do.
    # A session lock, so it spans the per-revision transactions; released on disconnect.
    connection.exec_driver_sql(f"SELECT pg_advisory_lock({LOCK_SPACE}, {LOCKS['migrate']})")
    connection.commit()
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=include_object,
        compare_type=True,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_online() -> None:
    url = config.attributes.get("database_url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("DATABASE_URL is not set: say which database to migrate.")
    # No per-call limit: a migration may rewrite a large table.
    engine = db_engine.make_engine(url, poolclass=NullPool, command_timeout=None)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(run_with)
            await conn.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    raise SystemExit("Offline (--sql) migrations are not supported; run against a database.")
asyncio.run(run_online())
