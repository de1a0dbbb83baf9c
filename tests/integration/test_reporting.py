"""The queries in docs/reporting.md run against a real database and answer correctly."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service.backend import Backend
from tests.integration.test_worker import eventually, status_is, submit

DOC = Path(__file__).resolve().parents[2] / "docs" / "reporting.md"


def queries() -> dict[str, str]:
    """Every ```sql block of the doc; the ones after a `<!-- report: name -->` by name."""
    text = DOC.read_text()
    found = {}
    for i, match in enumerate(re.finditer(
            r"(?:<!-- report: (?P<name>[\w-]+) -->\s*)?```sql\n(?P<sql>.*?)```", text, re.S)):
        found[match["name"] or f"query-{i}"] = match["sql"]
    return found


@pytest.mark.slow
async def test_failed_today_report_counts_failures_by_type_and_reason(
    client, backend: Backend, start_worker
):
    failing = [await submit(client, {"seconds": 0.01, "fail_times": 9}, max_attempts=1)
               for _ in range(2)]
    ok = await submit(client, {"seconds": 0.01})
    start_worker()
    for job in failing:
        await eventually(status_is(client, job["id"], "failed"))
    await eventually(status_is(client, ok["id"], "succeeded"))
    async with backend.connection() as conn:
        rows = await conn.fetch(queries()["failed-today"])
    assert [(r["type"], r["error_type"], r["failed"]) for r in rows] == [
        ("system.sleep", "TransientJobError", 2)]
    assert "failing on purpose" in rows[0]["reason"]


async def test_every_query_in_the_reporting_doc_runs(backend: Backend):
    assert len(queries()) >= 4
    async with backend.connection() as conn:
        for sql in queries().values():
            await conn.fetch(sql)  # raises on any broken query
