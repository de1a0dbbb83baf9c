"""The process's one connection pool: a SQLAlchemy engine on asyncpg.

SQLAlchemy code uses the engine as usual; the queue and the worker's hot path borrow the same
pooled asyncpg connections through `raw_connection`, so a process has one driver and one pool.

No database call may wait forever: every connection, pooled or standalone, is made with a connect
timeout, a per-call timeout and TCP keepalives on both ends (see `ConnectOptions`), so a server
that went away or a network that silently drops packets (a half-open connection) turns into an
error within seconds instead of a hang.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, fields, replace
from typing import Any

import asyncpg
import msgspec
from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.settings import Settings

_encoder = msgspec.json.Encoder()


def dumps(value: Any) -> str:
    """JSON text for a jsonb parameter (the pool's jsonb codec takes text)."""
    return _encoder.encode(value).decode()


def loads(text: str | bytes) -> Any:
    return msgspec.json.decode(text)


@dataclass(frozen=True)
class ConnectOptions:
    """How every connection is made. The libpq URL parameters of the same names override the
    defaults (asyncpg reads none of them: it would send them to the server as settings)."""

    connect_timeout: float = 5.0
    """Seconds to connect, TLS and authentication included: a server that accepts no
    connection must not hang a request, it answers 503 (default 5 s)."""

    command_timeout: float | None = 60.0
    """Seconds one call may take before it is cancelled and fails with TimeoutError (default
    60 s; None: no limit, for migrations). The last line against a server that accepts TCP but
    never answers, which keepalives cannot see; every query jobq makes takes milliseconds."""

    keepalives: bool = True
    """TCP keepalives on the client socket (libpq `keepalives`, default on)."""

    keepalives_idle: int = 10
    """Seconds of silence before the first probe (libpq `keepalives_idle`, default 10 s)."""

    keepalives_interval: int = 3
    """Seconds between probes (libpq `keepalives_interval`, default 3 s)."""

    keepalives_count: int = 3
    """Unanswered probes before the connection is declared dead (libpq `keepalives_count`,
    default 3): a silent peer is noticed within idle + interval x count = 19 s."""

    tcp_user_timeout: int = 20_000
    """Milliseconds sent data may stay unacknowledged before the connection is declared dead
    (libpq `tcp_user_timeout`, default 20 000 ms): covers a call sent into a partition, which
    keepalives do not probe. Not below idle + interval x count, which it would cut short."""

    def server_settings_sql(self) -> str:
        """The same keepalives for the server's end, so it drops a client that vanished (and
        the locks and connection slot it held). Sent as SET after connecting, not as startup
        parameters, which PgBouncer refuses unless configured to ignore them."""
        if not self.keepalives:
            return ""
        return (f"SET tcp_keepalives_idle = {self.keepalives_idle}; "
                f"SET tcp_keepalives_interval = {self.keepalives_interval}; "
                f"SET tcp_keepalives_count = {self.keepalives_count}; "
                f"SET tcp_user_timeout = {self.tcp_user_timeout}")


_LIBPQ_CLIENT_PARAMS = {f.name for f in fields(ConnectOptions)} - {"command_timeout"}


def split_url(database_url: str) -> tuple[str, ConnectOptions]:
    """The URL without libpq's client-side parameters, and the options they set."""
    url = make_url(database_url)
    given = {k: v for k, v in url.query.items() if k in _LIBPQ_CLIENT_PARAMS}
    options = ConnectOptions()
    changes: dict[str, Any] = {}
    for name, raw in given.items():
        value = raw[-1] if isinstance(raw, tuple) else raw
        try:
            changes[name] = (value not in ("0", "false", "off") if name == "keepalives"
                             else float(value) if name == "connect_timeout" else int(value))
        except ValueError:
            raise ValueError(f"DATABASE_URL: {name}={value!r} is not a number") from None
    if changes:
        options = replace(options, **changes)
        url = url.difference_update_query(list(given))
    return url.render_as_string(hide_password=False), options


def _tune_socket(sock: Any, options: ConnectOptions) -> None:
    """Keepalives and the user timeout on a TCP socket; asyncpg sets neither."""
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return  # a Unix socket: nothing between us and the server can drop packets
    if not options.keepalives:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", options.keepalives_idle),
                        ("TCP_KEEPINTVL", options.keepalives_interval),
                        ("TCP_KEEPCNT", options.keepalives_count),
                        ("TCP_USER_TIMEOUT", options.tcp_user_timeout)):
        if hasattr(socket, name):  # Linux has them all; other systems some
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


def _connection_class(options: ConnectOptions) -> type[asyncpg.Connection]:
    """asyncpg's connection class, tuning its socket as it is made (asyncpg hands the
    transport to the constructor; there is no other hook before the first query)."""

    class Connection(asyncpg.Connection):
        def __init__(self, protocol: Any, transport: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(protocol, transport, *args, **kwargs)
            _tune_socket(transport.get_extra_info("socket"), options)

    return Connection


def _connect_kwargs(options: ConnectOptions) -> dict[str, Any]:
    return {"timeout": options.connect_timeout, "command_timeout": options.command_timeout,
            "connection_class": _connection_class(options)}


def sqlalchemy_url(database_url: str) -> str:
    """`postgresql://...` as SQLAlchemy's asyncpg URL, for its dialect only: the engine's
    connections are made from the libpq-style URL itself (see make_engine)."""
    url = make_url(database_url).set(query={})
    return url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def make_engine(database_url: str, pool_size: int = Settings.pool_size, *,
                command_timeout: float | None = ConnectOptions.command_timeout,
                **kwargs: Any) -> AsyncEngine:
    """The engine (and pool) of this process: at most `pool_size` connections, opened as they
    are needed and then kept. No overflow connections: under a steady load above the pool's
    size they were opened and closed again and again (7% of the API's CPU, measured).
    Connections are made as `ConnectOptions` says (timeouts, keepalives)."""
    url, options = split_url(database_url)
    options = replace(options, command_timeout=command_timeout)
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", pool_size)
        kwargs.setdefault("max_overflow", 0)
        # Waiting longer for a pooled connection than for a new one makes no sense.
        kwargs.setdefault("pool_timeout", 10)
    connect_args = {**_connect_kwargs(options), **kwargs.pop("connect_args", {})}

    async def connect() -> asyncpg.Connection:
        # asyncpg reads the URL as libpq does, TLS parameters included (sslmode, sslrootcert,
        # sslcert, sslkey, sslpassword, sslcrl); SQLAlchemy would pass each query parameter
        # to asyncpg.connect() as a keyword, which it refuses for all but sslmode.
        return await asyncpg.connect(url, **connect_args)

    engine = create_async_engine(
        sqlalchemy_url(url),
        async_creator=connect,
        # No ping per checkout (a round trip on the hot path); a dead connection is
        # invalidated when it fails instead, see raw_connection.
        pool_pre_ping=False,
        json_serializer=dumps,
        json_deserializer=loads,
        **kwargs,
    )
    server_sql = options.server_settings_sql()
    if server_sql:
        @event.listens_for(engine.sync_engine, "connect")
        def _server_keepalives(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.run_async(lambda conn: conn.execute(server_sql))

    return engine


_CONNECTION_DONE: tuple[type[BaseException], ...] = (
    OSError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,  # 08xxx
    asyncpg.AdminShutdownError,  # 57P01: the server ends this session
    asyncpg.CrashShutdownError,  # 57P02
)
"""Errors after which this one connection is of no further use (whether the database is
unavailable is service.backend.is_connection_loss's question)."""


@contextlib.asynccontextmanager
async def raw_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """Borrow a pooled asyncpg connection; jsonb parameters are JSON text, results are decoded."""
    async with engine.connect() as conn:
        fairy = await conn.get_raw_connection()
        driver: asyncpg.Connection = fairy.driver_connection  # type: ignore[assignment]
        try:
            yield driver
        except BaseException as exc:
            if driver.is_closed() or isinstance(exc, _CONNECTION_DONE):
                # The server or the network dropped it, or is about to (the server's goodbye
                # arrives before the socket closes), or its protocol state is broken: never hand
                # it out again. Reused, it failed the next request with "another operation is
                # in progress" (seen when PostgreSQL stopped under load).
                await conn.invalidate()
            raise


async def setup_codecs(conn: asyncpg.Connection) -> None:
    """Give a connection made outside the engine the same json/jsonb codecs as the engine's."""
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda text: b"\x01" + text.encode(),
        decoder=lambda data: loads(data[1:]),
        schema="pg_catalog",
        format="binary",
    )
    await conn.set_type_codec(
        "json",
        encoder=str.encode,
        decoder=loads,
        schema="pg_catalog",
        format="binary",
    )


async def connect(database_url: str, **kwargs: Any) -> asyncpg.Connection:
    """A standalone connection (LISTEN, maintenance) with the engine's codecs, timeouts and
    keepalives."""
    url, options = split_url(database_url)
    conn = await asyncpg.connect(url, **{**_connect_kwargs(options), **kwargs})
    try:
        server_sql = options.server_settings_sql()
        if server_sql:
            await conn.execute(server_sql)
        await setup_codecs(conn)
    except BaseException:
        conn.terminate()
        raise
    return conn
