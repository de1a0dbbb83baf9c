"""The process's one connection pool: a SQLAlchemy engine on asyncpg.

SQLAlchemy code uses the engine as usual; the queue and the worker's hot path borrow the same
pooled asyncpg connections through `raw_connection`, so a process has one driver and one pool.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import msgspec
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from service.settings import Settings

_encoder = msgspec.json.Encoder()


def dumps(value: Any) -> str:
    """JSON text for a jsonb parameter (the pool's jsonb codec takes text)."""
    return _encoder.encode(value).decode()


def loads(text: str | bytes) -> Any:
    return msgspec.json.decode(text)


def sqlalchemy_url(database_url: str) -> str:
    """`postgresql://...` as SQLAlchemy's asyncpg URL. libpq's `sslmode` becomes asyncpg's
    `ssl` (same values), which SQLAlchemy passes on as is."""
    url = make_url(database_url)
    if "sslmode" in url.query:
        url = url.update_query_dict({"ssl": url.query["sslmode"]}).difference_update_query(
            ["sslmode"])
    return url.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


def make_engine(database_url: str, pool_size: int = Settings.pool_size,
                **kwargs: Any) -> AsyncEngine:
    """The engine (and pool) of this process: at most `pool_size` connections, opened as they
    are needed and then kept. No overflow connections: under a steady load above the pool's
    size they were opened and closed again and again (7% of the API's CPU, measured)."""
    if "poolclass" not in kwargs:
        kwargs.setdefault("pool_size", pool_size)
        kwargs.setdefault("max_overflow", 0)
        kwargs.setdefault("pool_timeout", 10)
    # A server that accepts no connection must not hang a request: fail fast, answer 503.
    kwargs.setdefault("connect_args", {"timeout": 5})
    return create_async_engine(
        sqlalchemy_url(database_url),
        # No ping per checkout (a round trip on the hot path); a dead connection is
        # invalidated when it fails instead, see raw_connection.
        pool_pre_ping=False,
        json_serializer=dumps,
        json_deserializer=loads,
        **kwargs,
    )


@contextlib.asynccontextmanager
async def raw_connection(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """Borrow a pooled asyncpg connection; jsonb parameters are JSON text, results are decoded."""
    async with engine.connect() as conn:
        fairy = await conn.get_raw_connection()
        driver: asyncpg.Connection = fairy.driver_connection  # type: ignore[assignment]
        try:
            yield driver
        except BaseException:
            if driver.is_closed():
                # The server or the network dropped it: never hand it out again.
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
    """A standalone connection (LISTEN, maintenance) with the engine's codecs."""
    conn = await asyncpg.connect(database_url, **kwargs)
    await setup_codecs(conn)
    return conn
