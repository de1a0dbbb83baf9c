"""Apply Alembic migrations from code (`jobq migrate`, `jobq up`, the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(database_url: str) -> Config:
    """Alembic's config from pyproject.toml, aimed at `database_url`."""
    config = Config(toml_file=str(PROJECT_ROOT / "pyproject.toml"))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    """Migrate the database up to `revision` (blocking: call from a thread inside a loop)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Migrate the database down to `revision` (blocking)."""
    command.downgrade(alembic_config(database_url), revision)


def head_revision() -> str:
    """The newest revision this code knows."""
    script = ScriptDirectory.from_config(alembic_config(""))
    head = script.get_current_head()
    assert head is not None
    return head


def current_revision(sync_connection) -> str | None:
    """The revision a database is at (given a synchronous SQLAlchemy connection)."""
    return MigrationContext.configure(sync_connection).get_current_revision()
