"""A Procrastinate connector on asyncpg.

Procrastinate ships psycopg connectors only. This one runs Procrastinate's queries on asyncpg
connections borrowed from the process's one pool, and can run them on a connection the caller
already holds, inside the caller's transaction (`*_with_connection`).

Connections must carry a binary jsonb codec that takes JSON text (the engine's pool does, and
`service.db.engine.setup_codecs` sets it on others): asyncpg encodes the composite array of
`procrastinate_defer_jobs_v1` only in binary, and a binary jsonb codec is the only kind that
can sit inside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import asyncpg
from procrastinate import connector, exceptions, manager

from service.db import engine as db_engine

logger = logging.getLogger(__name__)

Acquire = Callable[[], contextlib.AbstractAsyncContextManager[asyncpg.Connection]]

# One pass, so an escaped "%%(x)s" stays literal text instead of becoming a parameter.
_PARAM = re.compile(r"%%|%\((\w+)\)s")
# Parameters whose type the server infers as text (as in `%(x)s || ' SECOND'`) need str values.
_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "name"})


class _Query:
    """A pyformat query rewritten for asyncpg: `%(name)s` → `$n`, one number per name."""

    __slots__ = ("names", "sql", "text_params")

    def __init__(self, query: str) -> None:
        self.names: list[str] = []

        def number(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None:
                return "%"
            if name not in self.names:
                self.names.append(name)
            return f"${self.names.index(name) + 1}"

        self.sql = _PARAM.sub(number, query)
        self.text_params: frozenset[int] | None = None  # learnt from the first prepare

    def args(self, arguments: dict[str, Any]) -> list[Any]:
        values = [_encode(arguments[name]) for name in self.names]
        if self.text_params:
            for i in self.text_params:
                if isinstance(values[i], int | float) and not isinstance(values[i], bool):
                    values[i] = str(values[i])
        return values


def _encode(value: Any) -> Any:
    """Python values as the pool's codecs expect them: JSON objects as text."""
    if isinstance(value, dict):
        return db_engine.dumps(value)
    if isinstance(value, tuple):
        return tuple(_encode(v) for v in value)
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


def _record(row: asyncpg.Record) -> dict[str, Any]:
    return dict(row.items())


@contextlib.contextmanager
def _wrap_errors() -> Iterable[None]:
    try:
        yield
    except asyncpg.UniqueViolationError as exc:
        constraint = getattr(exc, "constraint_name", None)
        queueing_lock = None
        if constraint == manager.QUEUEING_LOCK_CONSTRAINT:
            # The detail reads: Key (queueing_lock)=(value) already exists.
            match = re.search(r"=\((.*)\)", getattr(exc, "detail", "") or "")
            queueing_lock = match.group(1) if match else None
        raise exceptions.UniqueViolation(
            str(exc), constraint_name=constraint, queueing_lock=queueing_lock
        ) from exc
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        raise exceptions.ConnectorException(str(exc)) from exc


class AsyncpgConnector(connector.BaseAsyncConnector):
    """Runs Procrastinate on asyncpg.

    `acquire` lends a pooled connection (for jobq: `engine.raw_connection` over the process's
    SQLAlchemy engine); `dsn` is used for the one standalone connection that LISTENs.
    """

    def __init__(self, *, dsn: str, acquire: Acquire | None = None) -> None:
        self._dsn = dsn
        self._acquire = acquire
        self._pool: asyncpg.Pool | None = None
        self._queries: dict[str, _Query] = {}

    # -- lifecycle ---------------------------------------------------------------------------

    async def open_async(self, pool: asyncpg.Pool | None = None) -> None:
        """Use `pool` if given (its connections need `setup_codecs` as `init`), else `acquire`,
        else create a small pool of our own."""
        if pool is not None:
            self._pool = pool
            self._acquire = pool.acquire
        elif self._acquire is None:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=10, init=db_engine.setup_codecs
            )
            self._acquire = self._pool.acquire
            self._owns_pool = True

    async def close_async(self) -> None:
        if self._pool is not None and getattr(self, "_owns_pool", False):
            await self._pool.close()
            self._pool = None
            self._acquire = None

    def get_sync_connector(self) -> connector.BaseConnector:
        return self

    # -- queries -----------------------------------------------------------------------------

    def _query(self, query: str) -> _Query:
        parsed = self._queries.get(query)
        if parsed is None:
            parsed = self._queries[query] = _Query(query)
        return parsed

    async def _run(
        self, conn: asyncpg.Connection, query: str, arguments: dict[str, Any], fetch: bool = True
    ) -> list[asyncpg.Record]:
        parsed = self._query(query)
        if parsed.text_params is None and parsed.names:
            statement = await conn.prepare(parsed.sql)
            parsed.text_params = frozenset(
                i for i, t in enumerate(statement.get_parameters()) if t.name in _TEXT_TYPES
            )
        if not parsed.names and not fetch:
            # May hold several statements (the schema): only the simple protocol runs those.
            await conn.execute(parsed.sql)
            return []
        return await conn.fetch(parsed.sql, *parsed.args(arguments))

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if self._acquire is None:
            raise exceptions.AppNotOpen
        async with self._acquire() as conn:
            yield conn

    async def execute_query_async(self, query: str, **arguments: Any) -> None:
        with _wrap_errors():
            async with self._connection() as conn:
                await self._run(conn, query, arguments, fetch=False)

    async def execute_query_one_async(self, query: str, **arguments: Any) -> dict[str, Any]:
        with _wrap_errors():
            async with self._connection() as conn:
                rows = await self._run(conn, query, arguments)
        if not rows:
            raise exceptions.NoResult
        return _record(rows[0])

    async def execute_query_all_async(self, query: str, **arguments: Any) -> list[dict[str, Any]]:
        with _wrap_errors():
            async with self._connection() as conn:
                rows = await self._run(conn, query, arguments)
        return [_record(r) for r in rows]

    async def execute_query_one_async_with_connection(
        self, connection: asyncpg.Connection, query: str, **arguments: Any
    ) -> dict[str, Any]:
        with _wrap_errors():
            rows = await self._run(connection, query, arguments)
        if not rows:
            raise exceptions.NoResult
        return _record(rows[0])

    async def execute_query_all_async_with_connection(
        self, connection: asyncpg.Connection, query: str, **arguments: Any
    ) -> list[dict[str, Any]]:
        with _wrap_errors():
            rows = await self._run(connection, query, arguments)
        return [_record(r) for r in rows]

    # -- LISTEN/NOTIFY -----------------------------------------------------------------------

    async def listen_notify(
        self, on_notification: connector.Notify, channels: Iterable[str]
    ) -> None:
        """Listen on `channels` until cancelled, reconnecting when the connection drops."""
        channels = list(channels)
        while True:
            try:
                await self._listen_once(on_notification, channels)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                logger.warning("LISTEN connection lost (%s); reconnecting in 1 s", exc)
            await asyncio.sleep(1)

    async def _listen_once(self, on_notification: connector.Notify, channels: list[str]) -> None:
        conn = await db_engine.connect(self._dsn)
        lost = asyncio.Event()
        tasks: set[asyncio.Task] = set()

        def deliver(_conn: object, _pid: int, channel: str, payload: str) -> None:
            task = asyncio.ensure_future(on_notification(channel=channel, payload=payload))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        try:
            conn.add_termination_listener(lambda _conn: lost.set())
            for channel in channels:
                await conn.add_listener(channel, deliver)
            while not lost.is_set():
                # A periodic round trip notices a half-open connection.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), timeout=connector.LISTEN_TIMEOUT)
                if not lost.is_set():
                    await conn.execute("SELECT 1")
        finally:
            with contextlib.suppress(Exception):
                await conn.close(timeout=2)

