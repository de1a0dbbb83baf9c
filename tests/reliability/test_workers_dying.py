"""Workers killed, frozen and stopped: no job lost, none held twice, stale writes refused."""

from __future__ import annotations

import asyncio
import os
import signal
import time

from service.backend import Backend
from tests.integration.test_worker import eventually, history, status_is, submit
from tests.reliability.conftest import FAST
from tests.reliability.ledger import check_ledger, report


async def batch(client, count: int, payload: dict, **fields) -> list[str]:
    jobs = [{"type": "system.sleep", "payload": payload, **fields}] * count
    response = await client.post("/api/v1/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 201, response.text
    return response.json()["ids"]


async def all_finished(backend: Backend, ids: list[str], timeout: float = 60) -> None:
    async def check() -> bool:
        async with backend.connection() as conn:
            return await conn.fetchval(
                "SELECT count(*) FROM job_overview WHERE id = ANY($1::uuid[]) "
                "AND status IN ('succeeded', 'failed', 'cancelled')", ids) == len(ids)
    await eventually(check, timeout=timeout, interval=0.2)


async def test_kill_9_jobs_run_again_within_the_stall_timeout_plus_10_s(
    client, backend: Backend, start_worker
):
    victim = start_worker("--name", "victim", "--concurrency", "5", env=FAST)
    start_worker("--name", "survivor", "--concurrency", "5", env=FAST)
    ids = await batch(client, 40, {"seconds": 1})

    async def victim_busy() -> bool:
        async with backend.connection() as conn:
            return await conn.fetchval(
                "SELECT count(*) FROM job_attempts WHERE worker_name = 'victim' "
                "AND finished_at IS NULL") >= 3
    await eventually(victim_busy)
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.time()
    victim.wait()
    await all_finished(backend, ids)

    async with backend.connection() as conn:
        figures = await check_ledger(conn, ids)
        lost = await conn.fetch(
            """
            SELECT extract(epoch FROM nxt.started_at)::float8 AS restarted
            FROM job_attempts a
            JOIN job_attempts nxt ON nxt.job_id = a.job_id AND nxt.number = a.number + 1
            WHERE a.outcome = 'lost'
            """)
    assert lost, "the killed worker held jobs that had to be recovered"
    delays = [row["restarted"] - killed_at for row in lost]
    stall = float(FAST["JOBQ_STALL_TIMEOUT_SECONDS"])
    assert max(delays) <= stall + 10, delays
    report("kill -9 one of two workers", {
        **figures, "stall_timeout_s": stall, "recovered_jobs": len(lost),
        "max_kill_to_rerun_s": round(max(delays), 2), "load": "40 x 1 s jobs, 2 workers x 5"})


async def test_frozen_worker_that_wakes_up_cannot_record_anything(
    client, backend: Backend, start_worker
):
    sleeper = start_worker("--name", "sleeper", env=FAST)
    job = await submit(client, {"seconds": 4})
    await eventually(status_is(client, job["id"], "running"))
    os.kill(sleeper.pid, signal.SIGSTOP)
    try:
        start_worker("--name", "rescuer", env=FAST)
        done = await eventually(status_is(client, job["id"], "succeeded"), timeout=40)
    finally:
        os.kill(sleeper.pid, signal.SIGCONT)
    result = done["result"]
    # Give the woken worker time to try to write its progress and outcome.
    await asyncio.sleep(4)
    after = (await client.get(f"/api/v1/jobs/{job['id']}")).json()
    assert after["result"] == result and after["status"] == "succeeded"
    record = await history(client, job["id"])
    assert [(a["worker"], a["outcome"]) for a in record["attempts"]] == [
        ("sleeper", "lost"), ("rescuer", "succeeded")]
    log = sleeper.log_path.read_text()
    assert "paused" in log or "declared dead" in log or "refused" in log, log[-2000:]
    async with backend.connection() as conn:
        figures = await check_ledger(conn, [job["id"]])
    report("SIGSTOP a worker, SIGCONT after its job moved", figures)


async def test_second_signal_stops_at_once_and_requeues(client, start_worker):
    worker = start_worker(env={"JOBQ_SHUTDOWN_GRACE_SECONDS": "120"})
    job = await submit(client, {"seconds": 120})
    await eventually(status_is(client, job["id"], "running"))
    worker.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.5)
    assert worker.poll() is None, "the first signal waits for the grace period"
    started = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    await asyncio.to_thread(worker.wait, 20)
    assert time.monotonic() - started < 10
    after = (await client.get(f"/api/v1/jobs/{job['id']}")).json()
    assert after["status"] == "queued"
    assert [a["outcome"] for a in (await history(client, job["id"]))["attempts"]] == [
        "interrupted"]


async def test_timeout_is_enforced_on_a_job_that_ignores_cancellation(client, start_worker):
    start_worker()
    # One attempt: a timeout is retried like any failure, and each attempt of a job deaf to
    # its cancellation costs the timeout plus the 5 s it is given to end.
    deaf = await submit(client, {"seconds": 60, "ignore_cancel": True}, timeout_seconds=0.5,
                        max_attempts=1)
    failed = await eventually(status_is(client, deaf["id"], "failed"), timeout=15)
    assert failed["error"]["type"] == "JobTimeout"
    assert failed["attempts"] == 1
    after = await submit(client, {"seconds": 0.1})
    await eventually(status_is(client, after["id"], "succeeded"))


async def test_permanent_errors_are_never_retried(client, start_worker):
    start_worker()
    job = await submit(client, {"seconds": 0.01, "fail_times": 1, "permanent": True},
                       max_attempts=5)
    failed = await eventually(status_is(client, job["id"], "failed"))
    assert failed["attempts"] == 1
    assert failed["error"] == {"type": "PermanentJobError", "retryable": False,
                               "message": "failing on purpose: attempt 1 of the first 1"}


async def test_pause_is_obeyed_within_a_second_and_survives_restarts(
    client, backend: Backend, start_worker
):
    worker = start_worker("--concurrency", "2")
    ids = await batch(client, 30, {"seconds": 0.3})
    await eventually(status_is(client, ids[0], "running", "succeeded"))
    await client.post("/api/v1/queues/default/pause")
    paused_at = time.time()
    await asyncio.sleep(1.5)
    worker.send_signal(signal.SIGTERM)
    await asyncio.to_thread(worker.wait, 20)
    start_worker("--concurrency", "2")  # a restarted worker still sees the pause
    await asyncio.sleep(1.5)
    async with backend.connection() as conn:
        late = await conn.fetchval(
            "SELECT count(*) FROM job_attempts WHERE started_at > to_timestamp($1)",
            paused_at + 1)
    assert late == 0
    queues = (await client.get("/api/v1/queues")).json()["items"]
    assert queues[0]["paused"] is True and queues[0]["counts"]["queued"] > 0
    await client.post("/api/v1/queues/default/resume")
    await all_finished(backend, ids)
    async with backend.connection() as conn:
        await check_ledger(conn, ids)


async def test_cpu_heavy_conversion_is_never_declared_stalled(client, start_worker):
    """The conversion burns CPU longer than the stall timeout; its worker lives, so the job
    keeps its single attempt."""
    import trimesh

    start_worker(env={**FAST, "JOBQ_STALL_TIMEOUT_SECONDS": "1",
                      "JOBQ_HEARTBEAT_SECONDS": "0.2"})
    sphere = trimesh.creation.icosphere(subdivisions=8).export(file_type="obj").encode()
    response = await client.post(
        "/api/v1/conversions", files=[("file", ("sphere.obj", sphere, "text/plain"))],
        data={"format": "glb"})
    job = response.json()
    done = await eventually(status_is(client, job["id"], "succeeded", "failed"), timeout=120)
    assert done["status"] == "succeeded", done["error"]
    record = await history(client, job["id"])
    assert [a["outcome"] for a in record["attempts"]] == ["succeeded"]
    assert done["result"]["convert_seconds"] > 1, "it must outlast the 1 s stall timeout"
