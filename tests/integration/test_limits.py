"""Rate limits and global concurrency per queue, enforced by jobq_claim_jobs across worker
processes: never exceeded (checked from job_attempts), held-back jobs stay queued, changes
obeyed without a restart."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone

import pytest

from service import jobs
from service.backend import Backend
from tests.integration.test_worker import eventually, wait_registered
from workers import leases


async def submit_many(backend: Backend, count: int, queue: str, seconds: float,
                      priority: int = 0) -> list:
    async with backend.transaction() as conn:
        return await jobs.enqueue(conn, [jobs.JobRequest(
            type="system.sleep", payload={"seconds": seconds}, queue=queue, priority=priority)
            for _ in range(count)])


async def all_succeeded(backend: Backend, ids: list, timeout: float) -> None:
    async def check() -> bool:
        async with backend.connection() as conn:
            statuses = await conn.fetch(
                "SELECT status, count(*) AS n FROM job_overview WHERE id = ANY($1::uuid[]) "
                "GROUP BY status", ids)
        return {r["status"]: r["n"] for r in statuses} == {"succeeded": len(ids)}
    await eventually(check, timeout=timeout, interval=0.2)


async def attempts_of(backend: Backend, ids: list) -> list:
    async with backend.connection() as conn:
        return await conn.fetch(
            "SELECT started_at, finished_at, outcome, worker_name FROM job_attempts "
            "WHERE job_id = ANY($1::uuid[]) ORDER BY started_at", ids)


def most_at_once(attempts) -> int:
    """The largest number of attempts whose [started_at, finished_at) intervals overlap."""
    edges = sorted([(a["started_at"], 1) for a in attempts]
                   + [(a["finished_at"], -1) for a in attempts])  # at a tie, ends come first
    running = highest = 0
    for _, step in edges:
        running += step
        highest = max(highest, running)
    return highest


def most_starts_in(attempts, period: timedelta) -> int:
    """The largest number of starts in any window (t - period, t]."""
    starts = [a["started_at"] for a in attempts]
    return max(sum(1 for s in starts if t - period < s <= t) for t in starts)


@pytest.mark.slow
async def test_three_workers_never_run_more_than_the_concurrency_limit(client, backend,
                                                                       start_worker):
    # One slot per worker: three jobs would run at once without the limit, and two at once
    # means two workers.
    await client.patch("/api/v1/queues/renders", json={"concurrency_limit": 2})
    for _ in range(3):
        start_worker("--concurrency", "1")
    await wait_registered(client, 3)
    ids = await submit_many(backend, 12, "renders", 0.3)
    await all_succeeded(backend, ids, timeout=60)

    attempts = await attempts_of(backend, ids)
    assert [a["outcome"] for a in attempts] == ["succeeded"] * 12, "held back, never failed"
    assert most_at_once(attempts) == 2
    assert len({a["worker_name"] for a in attempts}) >= 2, "the limit is across workers"


@pytest.mark.slow
async def test_three_workers_never_start_more_than_the_rate_limit(client, backend,
                                                                  start_worker):
    await client.patch("/api/v1/queues/mail", json={
        "rate_limit": {"max_starts": 3, "per_seconds": 1}})
    for _ in range(3):
        start_worker("--concurrency", "4")
    await wait_registered(client, 3)
    ids = await submit_many(backend, 12, "mail", 0.01)
    await all_succeeded(backend, ids, timeout=60)

    attempts = await attempts_of(backend, ids)
    assert [a["outcome"] for a in attempts] == ["succeeded"] * 12
    assert most_starts_in(attempts, timedelta(seconds=1)) == 3
    span = attempts[-1]["started_at"] - attempts[0]["started_at"]
    assert span > timedelta(seconds=3), "12 starts at 3 per second take more than 3 s"


@pytest.mark.slow
async def test_a_held_back_job_stays_queued_and_a_raised_limit_is_obeyed_at_once(
        client, backend, start_worker):
    await client.patch("/api/v1/queues/renders", json={"concurrency_limit": 1})
    ids = await submit_many(backend, 3, "renders", 3)
    start_worker("--concurrency", "4")

    async def statuses() -> list[str]:
        return sorted([(await client.get(f"/api/v1/jobs/{i}")).json()["status"] for i in ids])

    await eventually(lambda: _equals(statuses, ["queued", "queued", "running"]))
    await asyncio.sleep(1)
    assert await statuses() == ["queued", "queued", "running"]

    await client.patch("/api/v1/queues/renders", json={"concurrency_limit": 3})
    # The worker polls every 0.2 s here: the next claim sees the new limit.
    await eventually(lambda: _equals(statuses, ["running"] * 3), timeout=1.5)


async def _equals(read, expected) -> bool:
    return await read() == expected


async def test_a_limited_queue_never_holds_back_other_queues_jobs(client, backend):
    await client.patch("/api/v1/queues/renders", json={"concurrency_limit": 2})
    await submit_many(backend, 10, "renders", 1, priority=5)  # first in claim order
    others = await submit_many(backend, 5, "default", 1)
    async with backend.connection() as conn:
        worker = await leases.register(conn, "w", "host", 1, [], 10)
        claimed = await leases.claim(conn, worker, "w", None, 10)
        assert sorted(c.queue_name for c in claimed) == ["default"] * 5 + ["renders"] * 2
        assert {c.job_id for c in claimed if c.queue_name == "default"} == set(others)
        assert await leases.claim(conn, worker, "w", None, 10) == [], "both limits reached"


async def test_the_rate_limit_counts_the_starts_of_the_last_period(client, backend):
    await client.patch("/api/v1/queues/mail", json={
        "rate_limit": {"max_starts": 4, "per_seconds": 0.5}})
    await submit_many(backend, 10, "mail", 0)
    async with backend.connection() as conn:
        worker = await leases.register(conn, "w", "host", 1, [], 10)
        assert len(await leases.claim(conn, worker, "w", ["mail"], 3)) == 3
        assert len(await leases.claim(conn, worker, "w", ["mail"], 3)) == 1
        assert await leases.claim(conn, worker, "w", ["mail"], 3) == []
        await asyncio.sleep(0.6)
        assert len(await leases.claim(conn, worker, "w", ["mail"], 10)) == 4
        counted = await conn.fetchval(
            "SELECT (SELECT sum(x) FROM unnest(rate_slots) AS x) FROM queues WHERE name = 'mail'")
    assert counted == 4, "starts older than the period are forgotten"


_WINDOW = "SELECT * FROM jobq_rate_window($1, $2, $3, $4, $5)"


async def _count_starts(conn, ring: tuple, period: float, at: datetime, starts: int) -> tuple:
    """The ring after `starts` starts at `at`, added at the window's newest slot as
    jobq_claim_limited adds them."""
    window = await conn.fetchrow(_WINDOW, *ring, period, at)
    slots = list(window["slots"])
    slots[window["slot"] % 21] += starts
    return slots, window["slot"], window["slot_seconds"]


async def test_the_rate_window_never_counts_fewer_starts_than_a_period_holds(backend):
    """jobq_rate_window, driven as claims drive it at uneven times, each wanting more than the
    limit leaves: no window of the period gets more than the limit, and the limit, binding
    all along, still admits most of its rate (20/21 of it, less the claims' spacing)."""
    limit, period = 5, 0.5
    rng = random.Random(14)
    at = datetime(2026, 11, 30, tzinfo=timezone.utc)
    ring: tuple = (None, None, None)
    starts: list[tuple[datetime, int]] = []
    async with backend.connection() as conn:
        for _ in range(1000):
            at += timedelta(seconds=rng.choice([0.001, 0.005, 0.01, 0.02]))
            used = (await conn.fetchrow(_WINDOW, *ring, period, at))["used"]
            take = min(3, limit - used)
            if take > 0:
                ring = await _count_starts(conn, ring, period, at, take)
                starts.append((at, take))
    most = max(sum(n for s, n in starts if t - timedelta(seconds=period) < s <= t)
               for t, _ in starts)
    assert most == limit
    elapsed = (starts[-1][0] - starts[0][0]).total_seconds()
    assert sum(n for _, n in starts) >= 0.85 * limit * elapsed / period


async def test_a_changed_period_counts_the_old_windows_starts_as_made_now(backend):
    at = datetime(2026, 11, 30, tzinfo=timezone.utc)
    async with backend.connection() as conn:
        ring = await _count_starts(conn, (None, None, None), 1.0, at, 4)
        changed = await conn.fetchrow(_WINDOW, *ring, 10.0, at + timedelta(seconds=0.5))
        assert changed["used"] == 4, "the starts of the last second still count"
        later = await conn.fetchrow(_WINDOW, *ring, 10.0, at + timedelta(seconds=2))
        assert later["used"] == 0, "the old window had ended before the change"


async def test_a_paused_limited_queue_gives_nothing(client, backend):
    await client.patch("/api/v1/queues/renders", json={"concurrency_limit": 2, "paused": True})
    await submit_many(backend, 2, "renders", 0)
    async with backend.connection() as conn:
        worker = await leases.register(conn, "w", "host", 1, [], 10)
        assert await leases.claim(conn, worker, "w", None, 10) == []
