"""The unique indexes on jobs.key and jobs.idempotency_key hold only the jobs that have one (issue 17).

Revision ID: 0018
Revises: 0017
Create Date: 2026-11-30

Most jobs have neither a key nor an idempotency key, yet each was entered in both unique indexes
with a NULL: two index insertions per submitted job that no lookup ever reads (NULLs never
conflict). The indexes are made again as partial indexes (`WHERE key IS NOT NULL`,
`WHERE idempotency_key IS NOT NULL`) under the same names, so the errors that name them stay
as they were. The lookup by a list of keys says `key IS NOT NULL` itself, as the planner
cannot infer it from `key = ANY ($1)` (service/queue/submit.py).

Rebuilding the two indexes reads the jobs table once and blocks submissions meanwhile.
"""

from __future__ import annotations

from alembic import op

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

NO_KEY = "'00000000-0000-0000-0000-000000000000'::uuid"


def _index(column: str, partial: bool) -> str:
    where = f" WHERE {column} IS NOT NULL" if partial else ""
    return (f"CREATE UNIQUE INDEX uq_jobs_{column} ON jobs "
            f"(coalesce(api_key_id, {NO_KEY}), {column}){where}")


def upgrade() -> None:
    for column in ("key", "idempotency_key"):
        op.execute(f"DROP INDEX uq_jobs_{column}")
        op.execute(_index(column, partial=True))


def downgrade() -> None:
    for column in ("key", "idempotency_key"):
        op.execute(f"DROP INDEX uq_jobs_{column}")
        op.execute(_index(column, partial=False))
