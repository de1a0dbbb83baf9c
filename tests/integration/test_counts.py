"""The per-queue counts GET /api/v1/queues reads are kept in the transactions that change state:
under concurrent load (three worker processes, submits, cancels, retries, deletes, cleans) they
equal count(*) exactly, in every snapshot."""

from __future__ import annotations

import asyncio
import random

import pytest

from service import jobs, retention
from service.backend import Backend
from service.domain import requests
from tests.integration.test_worker import eventually, wait_registered

COMPARE = """
SELECT coalesce(c.queue_name, t.queue_name) AS queue, coalesce(c.status, t.status) AS status,
       coalesce(c.n, 0) AS kept, coalesce(t.n, 0) AS counted
FROM (SELECT queue_name, status, sum(n) AS n FROM queue_counts GROUP BY 1, 2) AS c
FULL JOIN (SELECT queue_name, jobq_status_group(status) AS status, count(*) AS n
           FROM procrastinate_jobs GROUP BY 1, 2) AS t
  ON t.queue_name = c.queue_name AND t.status = c.status
"""


async def mismatches(backend: Backend) -> list[dict]:
    """Counts that differ from count(*), both read in one snapshot."""
    async with backend.connection() as conn, conn.transaction(isolation="repeatable_read"):
        rows = await conn.fetch(COMPARE)
    return [dict(r) for r in rows if r["kept"] != r["counted"]]


async def api_counts_match_job_overview(client, backend: Backend) -> None:
    queues = {q["name"]: q["counts"] for q in (await client.get("/api/v1/queues")).json()["items"]}
    async with backend.connection() as conn:
        rows = await conn.fetch("SELECT queue, status, count(*) AS n FROM job_overview "
                                "GROUP BY queue, status")
    expected: dict[str, dict[str, int]] = {}
    for r in rows:
        expected.setdefault(r["queue"], dict.fromkeys(queues.get(r["queue"], {}), 0))
        expected[r["queue"]][r["status"]] = r["n"]
    for name, counts in expected.items():
        assert {k: v for k, v in queues[name].items() if v} == \
            {k: v for k, v in counts.items() if v}, name


async def test_counts_follow_every_transition_and_split_queued_from_scheduled(client, backend):
    for body in ({"type": "system.noop"}, {"type": "system.noop", "delay_seconds": 600},
                 {"type": "system.noop", "queue": "other"}):
        assert (await client.post("/api/v1/jobs", json=body)).status_code == 201
    job = (await client.post("/api/v1/jobs", json={"type": "system.noop"})).json()
    await client.post(f"/api/v1/jobs/{job['id']}/cancel")
    counts = {q["name"]: q["counts"] for q in (await client.get("/api/v1/queues")).json()["items"]}
    assert counts["default"] == {"queued": 1, "scheduled": 1, "running": 0, "succeeded": 0,
                                 "failed": 0, "cancelled": 1}
    assert counts["other"]["queued"] == 1
    await client.post(f"/api/v1/jobs/{job['id']}/retry")
    await client.delete(f"/api/v1/jobs/{job['id']}")  # refused: it is queued again
    assert await mismatches(backend) == []
    await api_counts_match_job_overview(client, backend)
    async with backend.connection() as conn:
        await conn.execute("TRUNCATE procrastinate_jobs CASCADE")
    assert await mismatches(backend) == []


@pytest.mark.slow
async def test_counts_equal_count_star_in_every_snapshot_under_concurrent_load(
        client, backend, start_worker):
    for _ in range(3):
        start_worker("--concurrency", "5")
    await wait_registered(client, 3)
    rng = random.Random(7)
    done = asyncio.Event()
    submitted: list = []

    async def submit() -> None:
        for _ in range(30):
            async with backend.transaction() as conn:
                submitted.extend(await jobs.enqueue(conn, [jobs.JobRequest(
                    type="system.sleep", queue=rng.choice(["a", "b"]),
                    payload={"seconds": rng.choice([0, 0.01, 0.05]),
                             "fail_times": rng.choice([0, 0, 1, 5])},
                    max_attempts=2, backoff=requests.Backoff(base_seconds=0.05))
                    for _ in range(20)]))
            await asyncio.sleep(0.02)

    async def meddle() -> None:
        while not done.is_set():
            if submitted:
                job_id = rng.choice(submitted)
                action = rng.choice(["cancel", "retry", "delete"])
                if action == "delete":
                    await client.delete(f"/api/v1/jobs/{job_id}")
                else:
                    await client.post(f"/api/v1/jobs/{job_id}/{action}")
            if rng.random() < 0.05:
                await retention.clean(backend, rng.choice(["a", "b"]), "succeeded", 0, 20,
                                      pause_ratio=0)
            await asyncio.sleep(0.005)

    checks: list[list] = []

    async def check() -> None:
        while not done.is_set():
            checks.append(await mismatches(backend))
            await asyncio.sleep(0.05)

    tasks = [asyncio.create_task(t) for t in (meddle(), check())]
    await submit()

    async def settled() -> bool:
        async with backend.connection() as conn:
            return await conn.fetchval(
                "SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')") == 0
    await eventually(settled, timeout=120, interval=0.5)
    done.set()
    await asyncio.gather(*tasks)

    assert len(checks) >= 20
    assert [c for c in checks if c] == [], "a snapshot where the counts differ from count(*)"
    assert await mismatches(backend) == []
    await api_counts_match_job_overview(client, backend)
