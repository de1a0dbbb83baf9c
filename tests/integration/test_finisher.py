"""The worker's finisher, which writes outcomes in batches, in the test's own process so that
its database calls can be made to fail."""

from __future__ import annotations

import asyncio

import pytest

from service import attempts, jobs
from service.backend import Backend
from service.domain import jobtypes
from service.settings import Settings
from workers import runtime
from workers.tasks import system


async def _queued(backend: Backend, count: int) -> list:
    async with backend.transaction() as conn:
        return await jobs.enqueue(conn, [jobs.JobRequest(type=jobtypes.SYSTEM_NOOP.name)] * count)


async def _statuses(backend: Backend) -> dict[str, int]:
    async with backend.connection() as conn:
        rows = await conn.fetch("SELECT status, count(*) AS n FROM job_overview GROUP BY 1")
    return {r["status"]: r["n"] for r in rows}


async def _succeeded(backend: Backend, count: int) -> None:
    """Wait (30 s at most) until `count` jobs succeeded."""
    async with asyncio.timeout(30):
        while (await _statuses(backend)).get("succeeded", 0) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def _run_until(worker: runtime.Worker, backend: Backend, count: int) -> None:
    task = asyncio.create_task(worker.run())
    try:
        await _succeeded(backend, count)
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)


@pytest.fixture
def worker(backend: Backend, settings: Settings) -> runtime.Worker:
    return runtime.Worker(backend, settings, {jobtypes.SYSTEM_NOOP.name: system.noop},
                          name="finisher-test")


async def test_outcomes_survive_an_unexpected_error_of_the_batch_write(
        backend, worker, monkeypatch):
    real = attempts.finish
    failures = []

    async def flaky(conn, outcomes, lost=False):
        if not failures:  # the first write fails with an error that is not a lost connection
            failures.append(len(outcomes))
            raise RuntimeError("not the connection")
        return await real(conn, outcomes, lost)

    monkeypatch.setattr(attempts, "finish", flaky)
    await _queued(backend, 30)
    await _run_until(worker, backend, 30)
    assert failures, "the failure was never injected"
    assert await _statuses(backend) == {"succeeded": 30}
    async with backend.connection() as conn:
        assert await conn.fetchval(
            "SELECT count(*) FROM job_attempts WHERE outcome = 'succeeded'") == 30


async def test_one_bad_outcome_does_not_hold_back_the_others(backend, worker, monkeypatch):
    real = attempts.finish
    blocked: set[int] = set()
    calls = []

    async def refuses_one(conn, outcomes, lost=False):
        calls.append(len(outcomes))
        if not blocked:
            blocked.add(outcomes[0].attempt_id)
        if blocked & {o.attempt_id for o in outcomes}:
            raise RuntimeError("this outcome cannot be written yet")
        return await real(conn, outcomes, lost)

    monkeypatch.setattr(attempts, "finish", refuses_one)
    await _queued(backend, 20)
    task = asyncio.create_task(worker.run())
    try:
        await _succeeded(backend, 19)
        assert max(calls) > 1, "outcomes were never written together"
        assert 1 in calls, "the batch was never split"
        assert await _statuses(backend) == {"succeeded": 19, "running": 1}
        blocked.add(-1)  # the blocked outcome can be written now
        blocked.discard(min(blocked - {-1}))
        await _succeeded(backend, 20)
    finally:
        worker.request_stop()
        await asyncio.wait_for(task, 30)
    assert await _statuses(backend) == {"succeeded": 20}
