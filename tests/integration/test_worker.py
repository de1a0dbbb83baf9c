"""Real `jobq worker` processes running jobs submitted through the API."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from service import jobs
from service.backend import Backend
from service.domain import jobtypes

pytestmark = pytest.mark.slow


async def eventually(check: Callable[[], Awaitable[Any]], timeout: float = 20,
                     interval: float = 0.05) -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        await asyncio.sleep(interval)


async def submit(client, payload: dict | None = None, **fields) -> dict:
    body = {"type": "system.sleep", "payload": payload or {"seconds": 0.1}, **fields}
    response = await client.post("/api/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def status_is(client, job_id: str, *statuses: str):
    async def check() -> dict | None:
        job = (await client.get(f"/api/v1/jobs/{job_id}")).json()
        return job if job["status"] in statuses else None
    return check


async def history(client, job_id: str) -> dict:
    return (await client.get(f"/api/v1/jobs/{job_id}/history")).json()


async def wait_registered(client, count: int = 1) -> None:
    async def check() -> bool:
        return len((await client.get("/api/v1/workers")).json()["items"]) >= count
    await eventually(check)


async def test_sleep_job_goes_queued_running_with_progress_succeeded(client, start_worker):
    job = await submit(client, {"seconds": 1.5})
    assert job["status"] == "queued"
    start_worker()
    seen: list[tuple[str, int]] = []

    async def finished() -> dict | None:
        current = (await client.get(f"/api/v1/jobs/{job['id']}")).json()
        seen.append((current["status"], current["progress"]))
        return current if current["status"] == "succeeded" else None

    done = await eventually(finished, timeout=30)
    running = [progress for status, progress in seen if status == "running"]
    assert any(0 < p < 100 for p in running), seen
    assert running == sorted(running), "progress never goes back"
    assert done["progress"] == 100 and done["stage"] is None
    assert done["attempts"] == 1
    assert done["result"]["slept_seconds"] >= 1.4
    assert done["started_at"] and done["finished_at"]
    events = [e["event"] for e in (await history(client, job["id"]))["items"]]
    assert events == ["submitted", "started", "succeeded"]


async def test_job_failing_twice_succeeds_on_the_third_attempt(client, start_worker):
    job = await submit(client, {"seconds": 0.05, "fail_times": 2})
    start_worker()
    done = await eventually(status_is(client, job["id"], "succeeded", "failed"), timeout=30)
    assert done["status"] == "succeeded"
    assert done["attempts"] == 3
    assert done["error"] is None
    record = await history(client, job["id"])
    assert [a["outcome"] for a in record["attempts"]] == ["retry", "retry", "succeeded"]
    errors = [a["error"] for a in record["attempts"][:2]]
    assert all(e["type"] == "TransientJobError" and "failing on purpose" in e["message"]
               for e in errors)
    assert [e["event"] for e in record["items"]].count("retry_scheduled") == 2


async def test_job_out_of_attempts_ends_failed_with_its_reason(client, start_worker):
    job = await submit(client, {"seconds": 0.05, "fail_times": 5}, max_attempts=2)
    start_worker()
    done = await eventually(status_is(client, job["id"], "failed"), timeout=30)
    assert done["attempts"] == 2
    assert done["error"]["type"] == "TransientJobError"
    assert "attempt 2" in done["error"]["message"]
    assert "traceback" not in done["error"]
    record = await history(client, job["id"])
    assert [a["outcome"] for a in record["attempts"]] == ["retry", "failed"]


async def test_job_enqueued_in_a_rolled_back_transaction_never_runs(
    client, backend: Backend, start_worker
):
    class Rollback(Exception):
        pass

    with pytest.raises(Rollback):
        async with backend.transaction() as conn:
            await jobs.enqueue(conn, [jobs.JobRequest(type=jobtypes.SYSTEM_NOOP.name)])
            raise Rollback
    marker = await submit(client)
    start_worker()
    await eventually(status_is(client, marker["id"], "succeeded"))
    async with backend.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 1
        assert await conn.fetchval("SELECT count(*) FROM procrastinate_jobs") == 1
        assert await conn.fetchval("SELECT count(*) FROM job_attempts") == 1


async def test_two_workers_never_run_the_same_job(client, backend: Backend, start_worker):
    start_worker("--concurrency", "4", "--name", "w1")
    start_worker("--concurrency", "4", "--name", "w2")
    await wait_registered(client, 2)
    batch = [{"type": "system.sleep", "payload": {"seconds": 0.02}}] * 300
    response = await client.post("/api/v1/jobs/batch", json={"jobs": batch})
    ids = response.json()["ids"]

    async def all_done() -> bool:
        async with backend.connection() as conn:
            return await conn.fetchval(
                "SELECT count(*) FROM job_overview WHERE status = 'succeeded'") == len(ids)
    await eventually(all_done, timeout=60)
    async with backend.connection() as conn:
        per_job = await conn.fetch(
            "SELECT job_id, count(*) AS n FROM job_attempts GROUP BY job_id")
        workers = await conn.fetch(
            "SELECT worker_name, count(*) AS n FROM job_attempts GROUP BY worker_name")
    assert len(per_job) == len(ids)
    assert all(row["n"] == 1 for row in per_job)
    assert {row["worker_name"] for row in workers} == {"w1", "w2"}


async def test_cancelling_a_running_job_stops_it(client, start_worker):
    start_worker()
    job = await submit(client, {"seconds": 60})
    await eventually(status_is(client, job["id"], "running"))
    response = await client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["cancel_requested"] is True
    done = await eventually(status_is(client, job["id"], "cancelled"), timeout=10)
    assert done["finished_at"] is not None
    record = await history(client, job["id"])
    assert [a["outcome"] for a in record["attempts"]] == ["cancelled"]
    assert [e["event"] for e in record["items"]][-2:] == ["cancel_requested", "cancelled"]


async def test_a_timeout_is_a_failed_attempt_retried_and_the_worker_goes_on(client,
                                                                           start_worker):
    start_worker()
    slow = await submit(client, {"seconds": 30}, timeout_seconds=0.5, max_attempts=2)
    failed = await eventually(status_is(client, slow["id"], "failed"), timeout=15)
    assert failed["error"]["type"] == "JobTimeout"
    assert "timeout of 0.5 s" in failed["error"]["message"]
    assert failed["attempts"] == 2, "a timeout is retried like any failure"
    record = await history(client, slow["id"])
    assert [a["outcome"] for a in record["attempts"]] == ["retry", "failed"]
    after = await submit(client)
    await eventually(status_is(client, after["id"], "succeeded"))


async def test_sigterm_lets_a_running_job_finish_within_the_grace_period(client, start_worker):
    worker = start_worker(env={"JOBQ_SHUTDOWN_GRACE_SECONDS": "20"})
    job = await submit(client, {"seconds": 1.5})
    await eventually(status_is(client, job["id"], "running"))
    worker.send_signal(signal.SIGTERM)
    await asyncio.to_thread(worker.wait, 20)
    assert worker.returncode == 0
    done = (await client.get(f"/api/v1/jobs/{job['id']}")).json()
    assert done["status"] == "succeeded"
    assert (await client.get("/api/v1/workers")).json()["items"] == []


async def test_sigterm_past_the_grace_period_requeues_the_running_job(client, start_worker):
    worker = start_worker(env={"JOBQ_SHUTDOWN_GRACE_SECONDS": "0.5"})
    job = await submit(client, {"seconds": 60})
    await eventually(status_is(client, job["id"], "running"))
    worker.send_signal(signal.SIGTERM)
    await asyncio.to_thread(worker.wait, 20)
    requeued = (await client.get(f"/api/v1/jobs/{job['id']}")).json()
    assert requeued["status"] == "queued"
    assert requeued["attempts"] == 0, "an interrupted attempt does not use up the budget"
    record = await history(client, job["id"])
    assert [a["outcome"] for a in record["attempts"]] == ["interrupted"]
    assert record["items"][-1]["event"] == "requeued"


async def test_paused_queue_starts_nothing_until_resumed(client, start_worker):
    await client.post("/api/v1/queues/slow/pause")
    start_worker()
    await wait_registered(client)
    job = await submit(client, queue="slow")
    await asyncio.sleep(1.5)
    assert (await client.get(f"/api/v1/jobs/{job['id']}")).json()["status"] == "queued"
    await client.post("/api/v1/queues/slow/resume")
    await eventually(status_is(client, job["id"], "succeeded"))


async def test_job_of_a_killed_worker_runs_again_elsewhere(client, start_worker):
    fast_recovery = {"JOBQ_STALL_TIMEOUT_SECONDS": "2", "JOBQ_HEARTBEAT_SECONDS": "0.5"}
    doomed = start_worker("--name", "doomed", env=fast_recovery)
    job = await submit(client, {"seconds": 3})
    await eventually(status_is(client, job["id"], "running"))
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait()
    start_worker("--name", "rescuer", env=fast_recovery)
    done = await eventually(status_is(client, job["id"], "succeeded"), timeout=30)
    assert done["attempts"] == 2
    record = await history(client, job["id"])
    assert [(a["worker"], a["outcome"]) for a in record["attempts"]] == [
        ("doomed", "lost"), ("rescuer", "succeeded")]


async def test_per_job_backoff_spaces_the_attempts(client, backend: Backend, start_worker):
    job = await submit(client, {"seconds": 0.01, "fail_times": 2},
                       backoff={"base_seconds": 1.0, "cap_seconds": 1.5, "jitter": 0})
    start_worker()
    await eventually(status_is(client, job["id"], "succeeded"), timeout=30)
    async with backend.connection() as conn:
        starts = await conn.fetch(
            "SELECT started_at FROM job_attempts WHERE job_id = $1 ORDER BY number", job["id"])
    gaps = [(b["started_at"] - a["started_at"]).total_seconds()
            for a, b in itertools.pairwise(starts)]
    assert 1.0 <= gaps[0] < 2.0, gaps  # base
    assert 1.5 <= gaps[1] < 2.5, gaps  # 2 s capped at 1.5 s


def _children(pid: int) -> list[int]:
    """The direct children of `pid`, from /proc (every thread's list)."""
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def _mapped(pid: int) -> str:
    """The files `pid` has mapped (its shared libraries among them), from /proc."""
    return Path(f"/proc/{pid}/maps").read_text()


async def test_a_worker_that_converts_nothing_starts_no_child_process(client, start_worker):
    # The conversion forkserver and its imports (trimesh, numpy) come with the first job that
    # needs a child process, not with the worker: this one runs a job in its event loop only.
    worker = start_worker("--concurrency", "4")
    job = await submit(client, {"seconds": 0.1})
    await eventually(status_is(client, job["id"], "succeeded"), timeout=30)
    assert worker.poll() is None
    assert _children(worker.pid) == []
    assert "numpy" not in _mapped(worker.pid), "it loaded numpy (trimesh) without converting"
