"""migrations/schema.sql is the schema the migrations make, to the character."""

from __future__ import annotations

from service.db import schema


async def test_schema_file_matches_a_freshly_migrated_database(server_url: str):
    actual = await schema.fresh_dump(server_url)
    diff = schema.differences(schema.SCHEMA_FILE.read_text(), actual)
    assert not diff, (
        "migrations/schema.sql is out of date; run `python -m service.db.schema write`:\n"
        + "".join(diff[:200]))
