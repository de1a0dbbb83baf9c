"""jobq's Procrastinate connector, on asyncpg.

Procrastinate ships psycopg connectors only. This one runs Procrastinate's queries on asyncpg
connections borrowed from the process's one pool, or on a connection the caller holds, inside
the caller's transaction (`*_with_connection`).

What it does with Procrastinate's queries decides Procrastinate's place in jobq:

- A deferral (`task.defer_async()`, `app.configure_task(name).defer_async()`, batches, and
  their sync forms) becomes a jobq job: it is planned like any other request (the job type's
  declaration checks the payload and gives the defaults) and written by `jobq_submit_jobs`,
  so it has its `jobs` row and `submitted` event, shows in the REST API, and jobq's workers
  run it with leases and fencing. A payload the type refuses, or a type jobq does not know,
  raises `errors.InvalidRequest` naming what to fix.
- The queries of Procrastinate's worker (fetch, finish, retry, heartbeats, periodic defers,
  deleting old jobs) are refused with a ConnectorException: they would change a jobq job's
  state outside jobq's SQL functions, without fencing.
- Reading (job status, listing jobs, queues, locks, stalled jobs) and LISTEN/NOTIFY work.

Pool connections carry a binary jsonb codec that takes JSON text (`service.db.engine`); a
caller's connection needs none, since submitting sends JSON as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

import asyncpg
import asyncpg.pool
from procrastinate import connector, exceptions, manager, sql, types, utils
from sqlalchemy.ext.asyncio import AsyncConnection

from service.db import engine as db_engine
from service.domain import requests
from service.queue import submit

logger = logging.getLogger(__name__)

Acquire = Callable[[], contextlib.AbstractAsyncContextManager[asyncpg.Connection]]
Dumps = Callable[[Any], str]
Loads = Callable[[str], Any]

_QUERY_NAMES = {text: name for name, text in sql.queries.items()}

_NOT_A_JOBQ_WORKER = ("jobq's workers run its jobs, with leases and fencing (`jobq worker`); "
                      "Procrastinate's worker does not run on jobq's connector")
REFUSED = {
    "fetch_job": _NOT_A_JOBQ_WORKER,
    "finish_job": _NOT_A_JOBQ_WORKER,
    "retry_job": "retry a jobq job with POST /api/v1/jobs/{id}/retry",
    "cancel_job": "cancel a jobq job with POST /api/v1/jobs/{id}/cancel (jobq_cancel_job)",
    "register_worker": _NOT_A_JOBQ_WORKER,
    "unregister_worker": _NOT_A_JOBQ_WORKER,
    "update_heartbeat": _NOT_A_JOBQ_WORKER,
    "prune_stalled_workers": _NOT_A_JOBQ_WORKER,
    "delete_old_jobs": "jobq deletes finished jobs itself (service/retention.py)",
    "defer_periodic_job": "periodic tasks are not jobq jobs yet: schedule them outside jobq",
}
"""Procrastinate queries jobq's connector refuses, and what to do instead."""

# One pass, so an escaped "%%(x)s" stays literal text instead of becoming a parameter.
_PARAM = re.compile(r"%%|%\((\w+)\)s")
# Parameters whose type the server infers as text (as in `%(x)s || ' SECOND'`) need str values.
_TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "name"})


class _Query:
    """A pyformat query rewritten for asyncpg: `%(name)s` → `$n`, one number per name."""

    __slots__ = ("json_columns", "names", "sql", "text_params")

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
        # Learnt from the first prepare:
        self.text_params: frozenset[int] | None = None
        self.json_columns: tuple[str, ...] = ()

    def args(self, arguments: dict[str, Any], dumps: Dumps = db_engine.dumps) -> list[Any]:
        values = [_encode(arguments[name], dumps) for name in self.names]
        if self.text_params:
            for i in self.text_params:
                if isinstance(values[i], int | float) and not isinstance(values[i], bool):
                    values[i] = str(values[i])
        return values


def _encode(value: Any, dumps: Dumps = db_engine.dumps) -> Any:
    """Python values as the pool's codecs expect them: JSON objects as text."""
    if isinstance(value, dict):
        return dumps(value)
    if isinstance(value, tuple):
        return tuple(_encode(v, dumps) for v in value)
    if isinstance(value, list):
        return [_encode(v, dumps) for v in value]
    return value


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
    """Runs Procrastinate's API on asyncpg, with deferrals as jobq jobs.

    `acquire` lends a pooled connection (for jobq: `engine.raw_connection` over the process's
    SQLAlchemy engine); without it `open_async` makes a small pool from `dsn`, which is also
    used for the one standalone connection that LISTENs. `json_dumps` / `json_loads` replace
    the JSON encoder for the arguments sent and the decoder for the JSON columns read, as
    Procrastinate's own connectors do.
    """

    def __init__(self, *, dsn: str, acquire: Acquire | None = None,
                 json_dumps: Dumps | None = None, json_loads: Loads | None = None) -> None:
        self._dsn = dsn
        self._acquire = acquire
        self._pool: asyncpg.Pool | None = None
        self._owns_pool = False
        self._queries: dict[str, _Query] = {}
        self.json_dumps = json_dumps
        self.json_loads = json_loads
        self._sync = SyncAsyncpgConnector(self)

    # -- lifecycle ---------------------------------------------------------------------------

    async def open_async(self, pool: asyncpg.Pool | None = None) -> None:
        """Use `pool` if given (its connections need `setup_codecs` as `init`), else `acquire`,
        else create a small pool of our own."""
        if pool is not None:
            if not isinstance(pool, asyncpg.Pool):
                raise exceptions.ConnectorException(
                    f"jobq's connector takes an asyncpg pool, not {_type_name(pool)}")
            self._pool = pool
            self._acquire = pool.acquire
        elif self._acquire is None:
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=10, init=db_engine.setup_codecs
            )
            self._acquire = self._pool.acquire
            self._owns_pool = True

    async def close_async(self) -> None:
        if self._pool is not None and self._owns_pool:
            await self._pool.close()
            self._pool = None
            self._acquire = None
            self._owns_pool = False

    def get_sync_connector(self) -> connector.BaseConnector:
        """The synchronous API (`app.open()`, `task.defer()`): a connection per call, in the
        call's own event loop, never one of this connector's pooled connections."""
        return self._sync

    # -- queries -----------------------------------------------------------------------------

    def _query(self, query: str) -> _Query:
        parsed = self._queries.get(query)
        if parsed is None:
            parsed = self._queries[query] = _Query(query)
        return parsed

    async def execute(self, conn: asyncpg.Connection, query: str, arguments: dict[str, Any],
                      fetch: bool = True) -> list[dict[str, Any]]:
        """Run one of Procrastinate's queries on `conn`, as jobq runs it: a deferral is
        submitted as jobq jobs, a query in REFUSED raises ConnectorException."""
        name = _QUERY_NAMES.get(query)
        if name in REFUSED:
            raise exceptions.ConnectorException(
                f"Procrastinate's {name!r} is refused on jobq's connector: {REFUSED[name]}.")
        with _wrap_errors():
            if name == "defer_jobs":
                return await self._defer(conn, arguments["jobs"])
            return await self._run(conn, query, arguments, fetch)

    async def _defer(self, conn: asyncpg.Connection,
                     jobs: list[types.JobToDefer]) -> list[dict[str, Any]]:
        planned = [requests.plan(self._request(job), prefix=f"jobs[{i}]." if len(jobs) > 1
                                 else "") for i, job in enumerate(jobs)]
        rows = await submit.write(conn, planned, overview=True)
        return [{"id": row["queue_job_id"]} for row in rows]

    def _request(self, job: types.JobToDefer) -> requests.JobRequest:
        """A Procrastinate deferral as jobq's request: the task name is the job type, its
        keyword arguments the payload; retries and timeout are the job type's."""
        args = job.args
        if self.json_dumps is not None:
            args = db_engine.loads(self.json_dumps(args))
        return requests.JobRequest(
            type=job.task_name, payload=args, queue=job.queue_name, priority=job.priority,
            run_at=job.scheduled_at, lock=job.lock, queueing_lock=job.queueing_lock)

    async def _run(
        self, conn: asyncpg.Connection, query: str, arguments: dict[str, Any], fetch: bool = True
    ) -> list[dict[str, Any]]:
        parsed = self._query(query)
        if parsed.text_params is None and parsed.names:
            statement = await conn.prepare(parsed.sql)
            parsed.text_params = frozenset(
                i for i, t in enumerate(statement.get_parameters()) if t.name in _TEXT_TYPES
            )
            parsed.json_columns = tuple(
                a.name for a in statement.get_attributes() if a.type.name in ("json", "jsonb"))
        if not parsed.names and not fetch:
            # May hold several statements (the schema): only the simple protocol runs those.
            await conn.execute(parsed.sql)
            return []
        rows = await conn.fetch(parsed.sql, *parsed.args(arguments, self.json_dumps
                                                         or db_engine.dumps))
        records = [dict(row.items()) for row in rows]
        if self.json_loads is not None:
            for record in records:
                for column in parsed.json_columns:
                    if record.get(column) is not None:
                        record[column] = self.json_loads(db_engine.dumps(record[column]))
        return records

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[asyncpg.Connection]:
        if self._acquire is None:
            raise exceptions.AppNotOpen
        with _wrap_errors():  # a connection that cannot be had is the connector's error too
            async with self._acquire() as conn:
                yield conn

    async def execute_query_async(self, query: str, **arguments: Any) -> None:
        async with self._connection() as conn:
            await self.execute(conn, query, arguments, fetch=False)

    async def execute_query_one_async(self, query: str, **arguments: Any) -> dict[str, Any]:
        async with self._connection() as conn:
            return _one(await self.execute(conn, query, arguments))

    async def execute_query_all_async(self, query: str, **arguments: Any) -> list[dict[str, Any]]:
        async with self._connection() as conn:
            return await self.execute(conn, query, arguments)

    async def execute_query_one_async_with_connection(
        self, connection: Any, query: str, **arguments: Any
    ) -> dict[str, Any]:
        return _one(await self.execute(await _driver(connection), query, arguments))

    async def execute_query_all_async_with_connection(
        self, connection: Any, query: str, **arguments: Any
    ) -> list[dict[str, Any]]:
        return await self.execute(await _driver(connection), query, arguments)

    async def execute_on_new_connection(self, query: str, arguments: dict[str, Any],
                                        fetch: bool) -> list[dict[str, Any]]:
        """One query on a connection opened for it and closed after (the sync API)."""
        with _wrap_errors():
            conn = await db_engine.connect(self._dsn)
        try:
            return await self.execute(conn, query, arguments, fetch)
        finally:
            await conn.close()

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


def _one(rows: list[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        raise exceptions.NoResult
    return rows[0]


def _type_name(value: object) -> str:
    return f"{type(value).__module__}.{type(value).__qualname__}"


async def _driver(connection: Any) -> asyncpg.Connection:
    """The asyncpg connection of the caller's transaction: an asyncpg connection (pooled or
    not) as is, a SQLAlchemy AsyncConnection on asyncpg through its driver connection."""
    if isinstance(connection, asyncpg.Connection | asyncpg.pool.PoolConnectionProxy):
        return connection
    if isinstance(connection, AsyncConnection):
        driver = (await connection.get_raw_connection()).driver_connection
        if isinstance(driver, asyncpg.Connection):
            if not driver.is_in_transaction():
                # SQLAlchemy sends BEGIN with its first statement: until then the deferral
                # would commit on its own. Make SQLAlchemy begin (or join) its transaction.
                await connection.exec_driver_sql("SELECT 1")
            return driver
    raise exceptions.ConnectorException(
        f"jobq's connector runs a deferral on the asyncpg connection of your transaction (or a "
        f"SQLAlchemy AsyncConnection on asyncpg), not on {_type_name(connection)}")


class SyncAsyncpgConnector(connector.BaseConnector):
    """Procrastinate's synchronous API on jobq's connector.

    asyncpg connections belong to the event loop that opened them, and Procrastinate runs a
    sync call in an event loop of its own: so each call opens its own connection, in that
    loop, and closes it when done. Nothing is shared across event loops.
    """

    def __init__(self, owner: AsyncpgConnector) -> None:
        self._owner = owner
        self._open = False

    @property
    def json_dumps(self) -> Dumps | None:  # type: ignore[override]
        return self._owner.json_dumps

    @property
    def json_loads(self) -> Loads | None:  # type: ignore[override]
        return self._owner.json_loads

    def get_sync_connector(self) -> connector.BaseConnector:
        return self

    def open(self, pool: Any = None) -> None:
        if pool is not None:
            raise exceptions.ConnectorException(
                "jobq's connector opens a connection per synchronous call; pass no pool "
                f"(got {_type_name(pool)})")
        self._open = True

    def close(self) -> None:
        self._open = False

    def _call(self, query: str, arguments: dict[str, Any], fetch: bool) -> list[dict[str, Any]]:
        if not self._open and self._owner._acquire is None:
            raise exceptions.AppNotOpen
        return utils.async_to_sync(self._owner.execute_on_new_connection, query, arguments,
                                   fetch)

    def execute_query(self, query: str, **arguments: Any) -> None:
        self._call(query, arguments, fetch=False)

    def execute_query_one(self, query: str, **arguments: Any) -> dict[str, Any]:
        return _one(self._call(query, arguments, fetch=True))

    def execute_query_all(self, query: str, **arguments: Any) -> list[dict[str, Any]]:
        return self._call(query, arguments, fetch=True)

    def _refuse_connection(self, connection: Any) -> dict[str, Any]:
        raise exceptions.ConnectorException(
            "jobq's connector cannot defer on a caller's connection from synchronous code "
            f"(got {_type_name(connection)}): asyncpg connections are async. Use "
            "`defer_async` with the asyncpg connection of your transaction, or `defer` "
            "without a connection")

    def execute_query_one_with_connection(self, connection: Any, query: str,
                                          **arguments: Any) -> dict[str, Any]:
        return self._refuse_connection(connection)

    def execute_query_all_with_connection(self, connection: Any, query: str,
                                          **arguments: Any) -> list[dict[str, Any]]:
        return [self._refuse_connection(connection)]

