"""The ledger check every reliability scenario ends with."""

from __future__ import annotations

import itertools
from collections import defaultdict
from typing import Any

import asyncpg

TERMINAL = {"succeeded", "failed", "cancelled"}


async def check_ledger(conn: asyncpg.Connection, job_ids: list[str],
                       expected_status: str = "succeeded") -> dict[str, Any]:
    """Every accepted job is in exactly one terminal state, its counted attempts match, and no
    two attempts of one job held it at the same time (each attempt's start and end are
    recorded; one ends before the next starts). Returns figures for the report."""
    jobs = await conn.fetch(
        "SELECT id::text, status, attempts FROM job_overview WHERE id = ANY($1::uuid[])",
        job_ids)
    assert len(jobs) == len(set(job_ids)), "an accepted job is missing"
    wrong = [(j["id"], j["status"]) for j in jobs if j["status"] != expected_status]
    assert not wrong, f"jobs not {expected_status}: {wrong[:5]}"

    attempts = await conn.fetch(
        "SELECT job_id::text, number, worker_name, started_at, finished_at, outcome "
        "FROM job_attempts WHERE job_id = ANY($1::uuid[]) ORDER BY job_id, number", job_ids)
    by_job: dict[str, list] = defaultdict(list)
    for attempt in attempts:
        by_job[attempt["job_id"]].append(attempt)
    overlaps = 0
    for job in jobs:
        runs = by_job[job["id"]]
        assert runs, f"job {job['id']} never ran"
        assert all(r["finished_at"] is not None for r in runs), "an attempt is still open"
        successes = [r for r in runs if r["outcome"] == "succeeded"]
        assert len(successes) <= 1, f"job {job['id']} succeeded twice"
        for earlier, later in itertools.pairwise(runs):
            if later["started_at"] < earlier["finished_at"]:
                overlaps += 1
        counted = [r for r in runs if r["outcome"] != "interrupted"]
        assert job["attempts"] == len(counted), (job["id"], job["attempts"], len(counted))
    assert overlaps == 0, f"{overlaps} attempt(s) overlapped another of the same job"
    return {
        "jobs": len(jobs),
        "attempts": len(attempts),
        "reruns": len(attempts) - len(jobs),
        "concurrent_duplicates": overlaps,
        "lost": len(set(job_ids)) - len(jobs),
    }


def report(scenario: str, figures: dict[str, Any]) -> None:
    """Print a scenario's figures; with JOBQ_RELIABILITY_REPORT set, also append them there
    as a JSON line (docs/reliability.md is written from that file)."""
    import json
    import os
    from datetime import UTC, datetime

    line = {"scenario": scenario, "at": datetime.now(UTC).isoformat(), **figures}
    print(json.dumps(line))
    path = os.environ.get("JOBQ_RELIABILITY_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(json.dumps(line) + "\n")
