"""What every jobq process holds open: the pool and the queue app over it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import asyncpg
import procrastinate
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


@contextlib.contextmanager
def unavailable_on_connection_loss() -> Iterator[None]:
    """Turn a lost or refused database connection into DatabaseUnavailable, whatever wraps it
    (see errors.is_connection_loss); other errors pass unchanged."""
    try:
        yield
    except errors.DatabaseUnavailable:
        raise
    except Exception as exc:
        if errors.is_connection_loss(exc):
            raise errors.DatabaseUnavailable(f"The database cannot be reached: {exc}") from exc
        raise
