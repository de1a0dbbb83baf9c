"""A succeeded job's stage and progress message are cleared (they described work in progress).

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23

The function is revision 0003's with one statement changed; it is derived from that revision's
text so the two cannot drift apart.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

OLD = "UPDATE jobs SET result = p_result, error = NULL, progress = 100,"
NEW = ("UPDATE jobs SET result = p_result, error = NULL, progress = 100, stage = NULL, "
       "progress_message = NULL,")


def _finish_attempt_0003() -> str:
    path = next(Path(__file__).parent.glob("*_0003_*.py"))
    spec = importlib.util.spec_from_file_location("revision_0003", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FINISH_ATTEMPT.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def upgrade() -> None:
    source = _finish_attempt_0003()
    assert OLD in source
    op.execute(source.replace(OLD, NEW, 1))


def downgrade() -> None:
    op.execute(_finish_attempt_0003())
