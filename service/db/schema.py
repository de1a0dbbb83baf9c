"""The current schema in one readable file, `migrations/schema.sql`, written from a migrated
database.

    python -m service.db.schema write   # migrate a scratch database, rewrite the file
    python -m service.db.schema check   # the same, but fail if the file differs

Both use the server `DATABASE_URL` names (else an embedded one), on a database of their own that
they drop afterwards. The file is made from the catalog (pg_get_functiondef, pg_get_viewdef, ...)
rather than by pg_dump, so that it comes out the same from every PostgreSQL version jobq supports
and needs no client binaries. It is for reading and for copying from: a new revision takes the
current text of a function from here (never by importing an older revision) and changes it.
Alembic's revisions remain what builds a database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from service.db import admin, migrate

SCHEMA_FILE = migrate.PROJECT_ROOT / "migrations" / "schema.sql"

_HEADER = """\
-- The schema of a jobq database at revision {revision}, written from a migrated database by
-- `python -m service.db.schema write`: do not edit by hand. tests/migrations checks that it
-- is current. Alembic's revisions (migrations/versions) build the database; this file is for
-- reading, and for copying a function's current text into a new revision.
-- Objects named procrastinate_* are Procrastinate's (revision 0001), the rest are jobq's.
"""

# Objects of extensions and Alembic's bookkeeping are not part of the schema we describe.
_NOT_EXTENSION = """
NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = {oid} AND d.deptype = 'e')
"""

_ENUMS = f"""
SELECT t.typname AS name, array_agg(e.enumlabel ORDER BY e.enumsortorder) AS labels
FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
WHERE t.typnamespace = 'public'::regnamespace AND {_NOT_EXTENSION.format(oid='t.oid')}
GROUP BY t.typname ORDER BY t.typname
"""

_COMPOSITES = f"""
SELECT c.relname AS name,
       array_agg(quote_ident(a.attname) || ' ' || format_type(a.atttypid, a.atttypmod)
                 ORDER BY a.attnum) AS fields
FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0
WHERE c.relkind = 'c' AND c.relnamespace = 'public'::regnamespace
  AND NOT a.attisdropped AND {_NOT_EXTENSION.format(oid='c.reltype')}
GROUP BY c.relname ORDER BY c.relname
"""

_SEQUENCES = f"""
SELECT c.relname AS name FROM pg_class c
WHERE c.relkind = 'S' AND c.relnamespace = 'public'::regnamespace
  AND {_NOT_EXTENSION.format(oid='c.oid')}
ORDER BY c.relname
"""

_TABLES = f"""
SELECT c.oid, c.relname AS name FROM pg_class c
WHERE c.relkind IN ('r', 'p') AND c.relnamespace = 'public'::regnamespace
  AND c.relname <> 'alembic_version' AND {_NOT_EXTENSION.format(oid='c.oid')}
ORDER BY c.relname
"""

_COLUMNS = """
SELECT quote_ident(a.attname) AS name, format_type(a.atttypid, a.atttypmod) AS type,
       a.attnotnull AS not_null, pg_get_expr(d.adbin, d.adrelid) AS default_value,
       a.attidentity::text AS identity, a.attstorage <> t.typstorage AS storage_changed,
       a.attstorage::text AS storage
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""

_CONSTRAINTS = """
SELECT quote_ident(conname) AS name, pg_get_constraintdef(oid, true) AS definition
FROM pg_constraint
-- PostgreSQL 18 also lists NOT NULL as constraints; the columns say it already.
WHERE conrelid = $1 AND contype <> 'n'
ORDER BY CASE contype WHEN 'p' THEN 0 WHEN 'u' THEN 1 WHEN 'f' THEN 2 ELSE 3 END, conname
"""

_INDEXES = """
SELECT pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = $1
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid
                  AND k.contype IN ('p', 'u', 'x'))
ORDER BY c.relname
"""

_VIEWS = f"""
SELECT c.relname AS name, pg_get_viewdef(c.oid, true) AS definition FROM pg_class c
WHERE c.relkind IN ('v', 'm') AND c.relnamespace = 'public'::regnamespace
  AND {_NOT_EXTENSION.format(oid='c.oid')}
ORDER BY c.relname
"""

_FUNCTIONS = f"""
SELECT p.proname AS name, pg_get_function_identity_arguments(p.oid) AS arguments,
       pg_get_functiondef(p.oid) AS definition
FROM pg_proc p
WHERE p.pronamespace = 'public'::regnamespace AND p.prokind IN ('f', 'p')
  AND {_NOT_EXTENSION.format(oid='p.oid')}
ORDER BY p.proname, pg_get_function_identity_arguments(p.oid)
"""

_TRIGGERS = f"""
SELECT t.tgname AS name, c.relname AS table_name, pg_get_triggerdef(t.oid, true) AS definition
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE NOT t.tgisinternal AND c.relnamespace = 'public'::regnamespace
  AND {_NOT_EXTENSION.format(oid='t.oid')}
ORDER BY c.relname, t.tgname
"""

_STORAGE = {"p": "PLAIN", "e": "EXTERNAL", "m": "MAIN", "x": "EXTENDED"}


async def dump(conn: asyncpg.Connection) -> str:
    """The schema of the database `conn` is connected to, as SQL text."""
    # Names are written unqualified when they are in public; fix the path so that they always are.
    await conn.execute("SET search_path = public")
    revision = await conn.fetchval("SELECT version_num FROM alembic_version")
    parts = [_HEADER.format(revision=revision)]

    parts.append(_section("Types"))
    for row in await conn.fetch(_ENUMS):
        labels = ", ".join(_literal(label) for label in row["labels"])
        parts.append(f"CREATE TYPE {row['name']} AS ENUM ({labels});\n")
    for row in await conn.fetch(_COMPOSITES):
        fields = ",\n    ".join(row["fields"])
        parts.append(f"CREATE TYPE {row['name']} AS (\n    {fields}\n);\n")

    parts.append(_section("Sequences"))
    parts += [f"CREATE SEQUENCE {row['name']};\n" for row in await conn.fetch(_SEQUENCES)]

    parts.append(_section("Tables"))
    for table in await conn.fetch(_TABLES):
        parts.append(await _table(conn, table["oid"], table["name"]))

    parts.append(_section("Views"))
    for row in await conn.fetch(_VIEWS):
        parts.append(f"CREATE VIEW {row['name']} AS\n{row['definition'].rstrip()}\n")

    parts.append(_section("Functions"))
    for row in await conn.fetch(_FUNCTIONS):
        parts.append(row["definition"].rstrip() + ";\n")

    parts.append(_section("Triggers"))
    parts += [row["definition"] + ";\n" for row in await conn.fetch(_TRIGGERS)]
    return "\n".join(parts)


async def _table(conn: asyncpg.Connection, oid: int, name: str) -> str:
    lines = []
    storage = []
    for column in await conn.fetch(_COLUMNS, oid):
        line = f"{column['name']} {column['type']}"
        if column["identity"]:
            kind = "ALWAYS" if column["identity"] == "a" else "BY DEFAULT"
            line += f" GENERATED {kind} AS IDENTITY"
        if column["default_value"] is not None:
            line += f" DEFAULT {column['default_value']}"
        if column["not_null"]:
            line += " NOT NULL"
        lines.append(line)
        if column["storage_changed"]:
            storage.append(f"ALTER TABLE {name} ALTER COLUMN {column['name']} "
                           f"SET STORAGE {_STORAGE[column['storage']]};\n")
    lines += [f"CONSTRAINT {row['name']} {row['definition']}"
              for row in await conn.fetch(_CONSTRAINTS, oid)]
    body = ",\n    ".join(lines)
    text = f"CREATE TABLE {name} (\n    {body}\n);\n"
    text += "".join(storage)
    text += "".join(row["definition"] + ";\n" for row in await conn.fetch(_INDEXES, oid))
    return text


def _section(title: str) -> str:
    return f"-- {title} " + "-" * (94 - len(title)) + "\n"


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


async def dump_url(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        return await dump(conn)
    finally:
        await conn.close()


async def fresh_dump(server_url: str) -> str:
    """Migrate a new scratch database on `server_url` to head, dump it, drop it."""
    name = f"jobq_schema_{uuid.uuid4().hex[:12]}"
    url = await admin.ensure_database(server_url, name)
    try:
        await asyncio.to_thread(migrate.upgrade, url)
        return await dump_url(url)
    finally:
        await admin.drop_database(server_url, name)


def differences(expected: str, actual: str) -> list[str]:
    """A unified diff from the committed file to the schema migrations make (empty: equal)."""
    return list(difflib.unified_diff(expected.splitlines(keepends=True),
                                     actual.splitlines(keepends=True),
                                     str(SCHEMA_FILE.name), "migrated database"))


@contextlib.contextmanager
def _server() -> Iterator[str]:
    """The server DATABASE_URL names, else an embedded one for the duration."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from service.db.embedded import EmbeddedPostgres

    directory = Path(tempfile.mkdtemp(prefix="jobq-schema-pg-"))
    server = EmbeddedPostgres(directory / "data")
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.db.schema", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["write", "check"])
    args = parser.parse_args(argv)
    with _server() as server_url:
        actual = asyncio.run(fresh_dump(server_url))
    if args.command == "write":
        SCHEMA_FILE.write_text(actual)
        print(f"wrote {SCHEMA_FILE}")
        return 0
    diff = differences(SCHEMA_FILE.read_text() if SCHEMA_FILE.exists() else "", actual)
    if diff:
        sys.stdout.writelines(diff)
        print(f"\n{SCHEMA_FILE} is out of date: run `python -m service.db.schema write`.")
        return 1
    print(f"{SCHEMA_FILE} is current")
    return 0


if __name__ == "__main__":
    sys.exit(main())
