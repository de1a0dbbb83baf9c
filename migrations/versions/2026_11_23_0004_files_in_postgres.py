"""Files in PostgreSQL: uploads and outputs in chunks, job links, the conversion cache.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


FORGET_UNUSED_FILES = """
CREATE FUNCTION jobq_forget_unused_file() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A file goes with the last job that uses it (its chunks and cache entry cascade).
    DELETE FROM files f
    WHERE f.id = OLD.file_id
      AND NOT EXISTS (SELECT 1 FROM job_files jf WHERE jf.file_id = OLD.file_id);
    RETURN NULL;
END;
$$
"""


def upgrade() -> None:
    op.create_table(
        "files",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("content_type", sa.Text(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_files")),
    )
    op.create_index(op.f("ix_files_sha256"), "files", ["sha256"], unique=False)
    op.create_table(
        "conversion_cache",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("output_file_id", sa.UUID(), nullable=False),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["output_file_id"],
            ["files.id"],
            name=op.f("fk_conversion_cache_output_file_id_files"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_conversion_cache")),
    )
    op.create_index(
        op.f("ix_conversion_cache_output_file_id"),
        "conversion_cache",
        ["output_file_id"],
        unique=False,
    )
    op.create_table(
        "file_chunks",
        sa.Column("file_id", sa.UUID(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["file_id"], ["files.id"], name=op.f("fk_file_chunks_file_id_files"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("file_id", "seq", name=op.f("pk_file_chunks")),
    )
    op.create_table(
        "job_files",
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("file_id", sa.UUID(), nullable=False),
        sa.ForeignKeyConstraint(["file_id"], ["files.id"], name=op.f("fk_job_files_file_id_files")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_files_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "role", "position", name=op.f("pk_job_files")),
    )
    op.create_index(op.f("ix_job_files_file_id"), "job_files", ["file_id"], unique=False)

    # Chunks are mesh data, mostly incompressible: store them out of line, uncompressed.
    op.execute("ALTER TABLE file_chunks ALTER COLUMN data SET STORAGE EXTERNAL")
    op.execute(FORGET_UNUSED_FILES)
    op.execute(
        "CREATE TRIGGER job_files_forget_unused AFTER DELETE ON job_files "
        "FOR EACH ROW EXECUTE FUNCTION jobq_forget_unused_file()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS job_files_forget_unused ON job_files")
    op.execute("DROP FUNCTION IF EXISTS jobq_forget_unused_file()")
    op.drop_index(op.f("ix_job_files_file_id"), table_name="job_files")
    op.drop_table("job_files")
    op.drop_table("file_chunks")
    op.drop_index(op.f("ix_conversion_cache_output_file_id"), table_name="conversion_cache")
    op.drop_table("conversion_cache")
    op.drop_index(op.f("ix_files_sha256"), table_name="files")
    op.drop_table("files")
