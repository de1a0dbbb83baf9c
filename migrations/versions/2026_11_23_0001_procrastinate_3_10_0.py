"""Install Procrastinate 3.10.0's schema.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Tied to the Procrastinate version pinned in pyproject.toml. The schema comes from the installed
package, so this revision refuses to run with any other version: upgrading Procrastinate means a
new revision that applies the package's own migration scripts between the two versions.
"""

from __future__ import annotations

import importlib.metadata
import importlib.resources

from alembic import op
from sqlalchemy.util import await_

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PROCRASTINATE_VERSION = "3.10.0"


def _driver_execute(script: str) -> None:
    # A multi-statement script only runs through asyncpg's simple protocol, on the raw driver
    # connection. A first statement through SQLAlchemy opens the migration's transaction, so the
    # script runs inside it rather than in autocommit.
    op.execute("SELECT 1")
    adapter = op.get_bind().connection.dbapi_connection
    await_(adapter.driver_connection.execute(script))


def upgrade() -> None:
    installed = importlib.metadata.version("procrastinate")
    if installed != PROCRASTINATE_VERSION:
        raise RuntimeError(
            f"This revision installs Procrastinate {PROCRASTINATE_VERSION}'s schema but "
            f"{installed} is installed: pin procrastinate=={PROCRASTINATE_VERSION}, or add a "
            "revision that migrates the schema to the new version."
        )
    schema = (importlib.resources.files("procrastinate.sql") / "schema.sql").read_text("utf-8")
    _driver_execute(schema)


def downgrade() -> None:
    _driver_execute(
        """
        DROP TABLE IF EXISTS procrastinate_periodic_defers, procrastinate_events,
            procrastinate_jobs, procrastinate_workers CASCADE;
        DO $$
        DECLARE fn record;
        BEGIN
            FOR fn IN
                SELECT p.oid::regprocedure AS signature FROM pg_proc p
                JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname = current_schema() AND p.proname LIKE 'procrastinate\\_%'
            LOOP
                EXECUTE 'DROP FUNCTION ' || fn.signature || ' CASCADE';
            END LOOP;
        END $$;
        DROP TYPE IF EXISTS procrastinate_job_to_defer_v1, procrastinate_job_event_type,
            procrastinate_job_status CASCADE;
        """
    )
