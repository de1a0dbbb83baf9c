"""Creating and dropping databases on a server (embedded start-up, test runs)."""

from __future__ import annotations

import asyncpg
from sqlalchemy.engine import make_url


def with_database(server_url: str, name: str) -> str:
    """The same server URL, naming database `name`."""
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


def database_name(url: str) -> str:
    """The database a URL names."""
    name = make_url(url).database
    assert name, f"no database in {url}"
    return name


async def ensure_database(server_url: str, name: str) -> str:
    """Create database `name` unless it exists; returns its URL."""
    conn = await asyncpg.connect(with_database(server_url, "postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, name: str) -> None:
    conn = await asyncpg.connect(with_database(server_url, "postgres"))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()
