"""What every jobq process holds open: the pool and the queue app over it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import procrastinate
import sqlalchemy.exc
from sqlalchemy.ext.asyncio import AsyncEngine

from service import errors
from service.db import engine as db_engine
from service.queue import app as queue_app
from service.settings import Settings


@dataclass
class Backend:
    """The process's database engine and Procrastinate app, opened and closed together."""

    database_url: str
    engine: AsyncEngine
    queue: procrastinate.App

    @classmethod
    async def open(cls, database_url: str, pool_size: int = Settings.pool_size) -> Backend:
        engine = db_engine.make_engine(database_url, pool_size=pool_size)
        queue = queue_app.make_app(database_url, engine)
        await queue.open_async()
        return cls(database_url=database_url, engine=engine, queue=queue)

    async def close(self) -> None:
        await self.queue.close_async()
        await self.engine.dispose()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled asyncpg connection; losing the database raises DatabaseUnavailable."""
        with unavailable_on_connection_loss():
            async with db_engine.raw_connection(self.engine) as conn:
                yield conn

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled asyncpg connection inside a transaction."""
        async with self.connection() as conn, conn.transaction():
            yield conn


# Errors that mean "no database right now", as opposed to "the database refused this".
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
)


@contextlib.contextmanager
def unavailable_on_connection_loss():
    """Turn a lost or refused database connection into DatabaseUnavailable."""
    try:
        yield
    except CONNECTION_ERRORS as exc:
        raise errors.DatabaseUnavailable(f"The database cannot be reached: {exc}") from exc
    except sqlalchemy.exc.DBAPIError as exc:
        if exc.connection_invalidated:
            raise errors.DatabaseUnavailable(f"The database cannot be reached: {exc}") from exc
        raise
