"""The Procrastinate app, on the asyncpg connector, used to defer and cancel jobs."""

from __future__ import annotations

import procrastinate
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import engine as db_engine
from service.queue.connector import AsyncpgConnector


def make_app(database_url: str, engine: AsyncEngine) -> procrastinate.App:
    """A Procrastinate app whose queries run on `engine`'s pool."""
    connector = AsyncpgConnector(dsn=database_url, acquire=lambda: db_engine.raw_connection(engine))
    return procrastinate.App(connector=connector)
