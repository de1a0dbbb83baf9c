"""What every jobq process holds open: the pool and the queue app over it."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
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
    bulk_writes: asyncio.Semaphore = dataclasses.field(
        default_factory=lambda: asyncio.Semaphore(1))
    """Held around a write that keeps its connection for long (storing an upload's files):
    at most `bulk_writers(pool_size)` such writes at once, so that however many uploads
    arrive together, the rest of the pool stays free for every other request (issue 13)."""

    @classmethod
    async def open(cls, database_url: str, pool_size: int = Settings.pool_size) -> Backend:
        engine = db_engine.make_engine(database_url, pool_size=pool_size)
        queue = queue_app.make_app(database_url, engine)
        await queue.open_async()
        return cls(database_url=database_url, engine=engine, queue=queue,
                   bulk_writes=asyncio.Semaphore(bulk_writers(pool_size)))

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


def bulk_writers(pool_size: int) -> int:
    """A quarter of the pool (at least one connection) may store uploads at once."""
    return max(1, pool_size // 4)


# -- what counts as "no database right now" -----------------------------------------------------
# The one list: everything that decides whether a database error means "retry later" (503 in the
# API, wait and retry in a worker, wait at start-up) reads it through `is_connection_loss`. It
# lives here, with the driver, not in service/errors.py: the domain imports errors and must not
# reach asyncpg or SQLAlchemy through it (see the import contracts in pyproject.toml).

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    # Refused, reset, unreachable, no socket file, and every timeout (TimeoutError is an OSError:
    # asyncpg's connect timeout and command_timeout raise it).
    OSError,
    # asyncpg: "connection is closed", and the 08xxx class (connection does not exist, failure).
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    # asyncpg's own state broken by a connection killed in mid-command ("cannot switch to
    # state 12; another operation is in progress"): that connection is dropped, the next works.
    asyncpg.InternalClientError,
    # SQLAlchemy: no pooled connection free within pool_timeout (they are all stuck on a
    # database that does not answer); and the DBAPI's classes for lost connections.
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
)
"""Exception types that mean the connection could not be made or was lost."""

CONNECTION_LOSS_SQLSTATES: tuple[str, ...] = (
    "08",     # connection_exception (the whole class)
    "57P01",  # admin_shutdown: the server is stopping (fast or immediate shutdown)
    "57P02",  # crash_shutdown: another backend crashed, the server restarts
    "57P03",  # cannot_connect_now: starting up, shutting down, in recovery
    "53300",  # too_many_connections: no slot free right now; one frees when a client leaves
)
"""SQLSTATE codes (or classes) of server errors that mean "not now" rather than "not this":
checked on asyncpg's errors and on SQLAlchemy's wrappers of them, which carry the code too."""


def is_connection_loss(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached right now, looking through the
    wrappers around the driver's error: SQLAlchemy's DBAPIError (its `orig`, whose cause is
    asyncpg's error) and anything raised `from` a connection error (Procrastinate's
    ConnectorException)."""
    seen: set[int] = set()
    pending: list[BaseException | None] = [exc]
    while pending:
        error = pending.pop()
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, (errors.DatabaseUnavailable, *CONNECTION_ERRORS)):
            return True
        sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if isinstance(sqlstate, str) and sqlstate.startswith(CONNECTION_LOSS_SQLSTATES):
            return True
        if isinstance(error, sqlalchemy.exc.DBAPIError):
            if error.connection_invalidated:
                return True
            pending.append(error.orig)
        # `raise ... from` (cause), or an error raised while handling one (context).
        pending.append(error.__cause__)
        if not error.__suppress_context__:
            pending.append(error.__context__)
    return False


@contextlib.contextmanager
def unavailable_on_connection_loss() -> Iterator[None]:
    """Turn a lost or refused database connection into DatabaseUnavailable, whatever wraps it
    (see is_connection_loss); other errors pass unchanged."""
    try:
        yield
    except errors.DatabaseUnavailable:
        raise
    except Exception as exc:
        if is_connection_loss(exc):
            raise errors.DatabaseUnavailable(f"The database cannot be reached: {exc}") from exc
        raise
