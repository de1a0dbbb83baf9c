"""Apply Alembic migrations from code (`jobq migrate`, `jobq up`, the tests), and tell whether a
database's schema is the one this code needs (`jobq serve`/`worker` at start, `/ready`)."""

from __future__ import annotations

import enum
import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import asyncpg
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError

from service.db import engine as db_engine

PROJECT_ROOT = Path(__file__).resolve().parents[2]
"""The checkout's root, for the developer tools that write files there (service/db/schema.py);
an installed jobq does not need it."""

FIX = "jobq migrate"
"""The command that brings a database's schema up to this code's."""


def script_location() -> Path:
    """The directory of Alembic's scripts (env.py, versions/): the package
    `service.db.migrations`, which pyproject.toml maps to the checkout's top-level migrations/
    directory, so a wheel carries it and an editable install finds it in the checkout."""
    spec = importlib.util.find_spec("service.db.migrations")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    # An editable install made before the mapping existed does not know the package; its
    # checkout still has the directory. (A wheel's PROJECT_ROOT is no checkout.)
    checkout = PROJECT_ROOT / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    raise RuntimeError("jobq's migrations (the package service.db.migrations) are not "
                       "installed; reinstall jobq")


def alembic_config(database_url: str) -> Config:
    """Alembic's config, built here rather than read from pyproject.toml (which an installed
    jobq does not have), aimed at `database_url`. The `alembic` command run from a checkout
    reads pyproject.toml's [tool.alembic] instead; both name the same scripts."""
    config = Config()
    # configparser interpolates "%": a path containing one must have it doubled.
    config.set_main_option("script_location", str(script_location()).replace("%", "%%"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database up to `revision` (blocking: call from a thread inside a loop)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Migrate the database down to `revision` (blocking)."""
    command.downgrade(alembic_config(database_url), revision)


@functools.cache
def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config(""))


def head_revision() -> str:
    """The newest revision this code knows."""
    head = _scripts().get_current_head()
    assert head is not None
    return head


def knows_revision(revision: str) -> bool:
    """Whether `revision` is one of this code's migrations."""
    try:
        return _scripts().get_revision(revision) is not None
    except CommandError:
        return False


def current_revision(sync_connection) -> str | None:
    """The revision a database is at (given a synchronous SQLAlchemy connection)."""
    return MigrationContext.configure(sync_connection).get_current_revision()


async def read_revision(conn: asyncpg.Connection) -> str | None:
    """The revision a database is at, None if it was never migrated (an asyncpg connection)."""
    # Alembic keeps its table in the connection's default schema, which to_regclass searches.
    if await conn.fetchval("SELECT to_regclass('alembic_version')") is None:
        return None
    return await conn.fetchval("SELECT version_num FROM alembic_version LIMIT 1")


class SchemaStatus(enum.Enum):
    CURRENT = "current"
    """At this code's head revision."""
    MISSING = "missing"
    """Never migrated: no jobq schema at all."""
    OLDER = "older"
    """At an earlier revision of this code's migrations."""
    NEWER = "newer"
    """At a revision this code does not know: a later jobq migrated it."""


@dataclass(frozen=True)
class SchemaCheck:
    """A database's schema revision beside the one this code needs."""

    current: str | None
    head: str

    @classmethod
    def of(cls, current: str | None) -> SchemaCheck:
        return cls(current=current, head=head_revision())

    @property
    def status(self) -> SchemaStatus:
        if self.current == self.head:
            return SchemaStatus.CURRENT
        if self.current is None:
            return SchemaStatus.MISSING
        return SchemaStatus.OLDER if knows_revision(self.current) else SchemaStatus.NEWER

    @property
    def problem(self) -> str | None:
        """Why this code cannot run on the schema, and the command that fixes it; None when
        it can (current, or newer: see `newer`)."""
        status = self.status
        if status is SchemaStatus.MISSING:
            return f"the database schema is not migrated (no jobq tables yet): run `{FIX}`"
        if status is SchemaStatus.OLDER:
            return (f"the database schema is older than this code (revision {self.current}, "
                    f"this code needs {self.head}): run `{FIX}`")
        return None

    @property
    def newer(self) -> str | None:
        """A warning when a later jobq migrated the schema, else None. This code still runs
        on it: that is the middle of an upgrade, migrations first (docs/deploy.md)."""
        if self.status is not SchemaStatus.NEWER:
            return None
        return (f"the database schema is newer than this code (revision {self.current} is "
                f"unknown here; this code's newest is {self.head}): a later jobq migrated it; "
                "upgrade this process")


async def check_schema(database_url: str, timeout: float = 5) -> SchemaCheck:
    """Read the revision of the database at `database_url` (its own short connection)."""
    # Made like every other connection: libpq's client parameters understood, keepalives on.
    conn = await db_engine.connect(database_url, timeout=timeout)
    try:
        return SchemaCheck.of(await read_revision(conn))
    finally:
        await conn.close()
