"""The report views count what real workers did, keep counting after retention deleted the jobs,
and every query in docs/reporting.md runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from service import retention
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


async def _today(backend: Backend, view: str, order: str) -> list[dict]:
    async with backend.connection() as conn:
        return [dict(r) for r in await conn.fetch(
            f"SELECT * FROM {view} WHERE day = (now() AT TIME ZONE 'UTC')::date ORDER BY {order}")]


@pytest.mark.slow
async def test_the_reports_count_what_workers_did_and_outlive_retention(client, backend,
                                                                        start_worker):
    ok = [await submit(client, {"seconds": 0.05}) for _ in range(3)]
    retried = await submit(client, {"seconds": 0.01, "fail_times": 1},
                           backoff={"base_seconds": 0.05})
    failed = await submit(client, {"seconds": 0.01, "fail_times": 1, "permanent": True})
    cancelled = await submit(client, {"seconds": 0.01}, delay_seconds=3600)
    await client.post(f"/api/v1/jobs/{cancelled['id']}/cancel")
    start_worker("--name", "reporter")
    for job in (*ok, retried):
        await eventually(status_is(client, job["id"], "succeeded"))
    await eventually(status_is(client, failed["id"], "failed"))

    rows = await _today(backend, "report_daily", "queue")
    assert len(rows) == 1, rows
    [daily] = rows
    assert (daily["queue"], daily["type"]) == ("default", "system.sleep")
    assert {k: daily[k] for k in ("submitted", "succeeded", "failed", "cancelled", "retried")} \
        == {"submitted": 6, "succeeded": 4, "failed": 1, "cancelled": 1, "retried": 1}
    assert 0 < daily["run_p50_ms"] <= daily["run_p95_ms"] <= daily["run_max_ms"]
    assert daily["run_max_ms"] >= 50, "the 0.05 s sleeps"
    assert 0 <= daily["wait_p50_ms"] <= daily["wait_max_ms"]

    failures = await _today(backend, "report_failures", "error_type")
    assert [(f["error_type"], f["failed_attempts"], f["failed_jobs"]) for f in failures] == [
        ("PermanentJobError", 1, 1), ("TransientJobError", 1, 0)]
    assert "failing on purpose" in failures[0]["last_message"]

    [worker] = await _today(backend, "report_workers", "worker")
    assert (worker["worker"], worker["attempts"], worker["succeeded"], worker["retried"],
            worker["failed"], worker["live"]) == ("reporter", 6, 4, 1, 1, True)

    for status in ("succeeded", "failed", "cancelled"):
        await retention.clean(backend, "default", status, 0, 100, pause_ratio=0)
    assert (await client.get(f"/api/v1/jobs/{ok[0]['id']}")).status_code == 404
    assert await _today(backend, "report_daily", "queue") == [daily]
    assert await _today(backend, "report_failures", "error_type") == failures


async def test_every_query_in_the_reporting_doc_runs(backend: Backend):
    assert len(queries()) >= 4
    async with backend.connection() as conn:
        for sql in queries().values():
            await conn.fetch(sql)  # raises on any broken query
