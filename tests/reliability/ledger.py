"""The ledger check every reliability scenario ends with."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import uuid
from collections import defaultdict
from typing import Any

import asyncpg

from service import errors

Span = tuple[float, float]

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


# -- the execution ledger: what job code actually did, as opposed to what the queue recorded ----

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS reliability_ledger (
    id uuid PRIMARY KEY,
    job_id uuid NOT NULL,
    attempt_id bigint NOT NULL,
    worker text NOT NULL,
    pid integer NOT NULL,
    started_at double precision NOT NULL,  -- the worker's clock (epoch s), this machine's
    ended_at double precision               -- null until the end is written (or never: kill -9)
)
"""


async def recorded_sleep(run: Any, payload: Any) -> dict[str, Any]:
    """`system.sleep` that records each execution in `reliability_ledger`: a row before the
    work starts (no row, no work: a failed insert fails the attempt as transient) and its end
    once the work stopped, however it stopped (done, cancelled, fenced). The end is written
    until it is stored, even while the database restarts."""
    execution, started = uuid.uuid4(), time.time()
    try:
        async with run.backend.connection() as conn:
            await conn.execute(
                "INSERT INTO reliability_ledger (id, job_id, attempt_id, worker, pid, started_at) "
                "VALUES ($1, $2, $3, $4, $5, $6)",
                execution, run.job_id, run.attempt_id,
                os.environ.get("JOBQ_LEDGER_WORKER", "?"), os.getpid(), started)
    except BaseException as exc:
        # The insert may have committed with its answer lost (the connection dropped, or the
        # job was stopped while it waited): then it did no work, and its row says so.
        _pending.add(asyncio.ensure_future(_write_end(run.backend, execution, started)))
        if isinstance(exc, errors.DatabaseUnavailable):
            raise errors.TransientJobError(f"ledger unavailable, nothing done: {exc}") from exc
        raise
    try:
        await asyncio.sleep(payload.seconds)  # the work
    finally:
        ended = time.time()
        # A task of its own: a second cancellation of this job must not lose the record.
        end = asyncio.ensure_future(_write_end(run.backend, execution, ended))
        _pending.add(end)
        await asyncio.shield(end)
    return {"slept_seconds": round(ended - started, 3)}


_pending: set[asyncio.Future] = set()  # end records being written: keep a reference


async def _write_end(backend: Any, execution: uuid.UUID, ended: float) -> None:
    try:
        while True:
            try:
                async with backend.connection() as conn:
                    await conn.execute(
                        "UPDATE reliability_ledger SET ended_at = $2 WHERE id = $1",
                        execution, ended)
                return
            except Exception:
                await asyncio.sleep(0.2)
    finally:
        _pending.discard(asyncio.current_task())  # type: ignore[arg-type]


def _minus(span: Span, holes: list[Span]) -> list[Span]:
    """`span` without the `holes` (times the process was frozen and ran nothing)."""
    pieces = [span]
    for hole_start, hole_end in holes:
        cut = []
        for start, end in pieces:
            if hole_end <= start or hole_start >= end:
                cut.append((start, end))
                continue
            if start < hole_start:
                cut.append((start, hole_start))
            if hole_end < end:
                cut.append((hole_end, end))
        pieces = cut
    return pieces


def _overlap(a: list[Span], b: list[Span]) -> float:
    return sum(max(0.0, min(a_end, b_end) - max(a_start, b_start))
               for a_start, a_end in a for b_start, b_end in b)


async def check_executions(conn: asyncpg.Connection, job_ids: list[str],
                           killed: dict[int, float],
                           frozen: dict[int, list[Span]]) -> dict[str, Any]:
    """The ledger of executions: every job ran; an execution without an end belongs to a
    process killed with SIGKILL (it ended then); and, counting only the time each process was
    not frozen, how much any two executions of one job overlapped. Returns the figures."""
    rows = await conn.fetch(
        "SELECT job_id::text, attempt_id, worker, pid, started_at, ended_at "
        "FROM reliability_ledger "
        "WHERE job_id = ANY($1::uuid[]) ORDER BY job_id, started_at", job_ids)
    by_job: dict[str, list] = defaultdict(list)
    unended = 0
    for row in rows:
        end = row["ended_at"]
        if end is None:
            assert row["pid"] in killed, f"an execution never ended, in a live worker: {row}"
            end, unended = killed[row["pid"]], unended + 1
        by_job[row["job_id"]].append(
            _minus((row["started_at"], end), frozen.get(row["pid"], [])))
    missing = set(job_ids) - by_job.keys()
    assert not missing, f"{len(missing)} job(s) never executed"
    overlaps = [
        _overlap(a, b)
        for runs in by_job.values() if len(runs) > 1
        for a, b in itertools.combinations(runs, 2)
    ]
    return {
        "executions": len(rows),
        "executions_cut_by_kill": unended,
        "jobs_executed_more_than_once": sum(1 for runs in by_job.values() if len(runs) > 1),
        "overlapping_execution_pairs": sum(1 for o in overlaps if o > 0),
        "max_overlap_s": round(max(overlaps, default=0.0), 3),
    }
