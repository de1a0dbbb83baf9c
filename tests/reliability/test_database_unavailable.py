"""Workers and the API while PostgreSQL takes no connections, in each phase of their life:
started before the server (not started, then starting up), started while it shuts down, running
while it is away, and stopped while it is away. Processes that start wait for the database
(`serve` and `worker` check its schema first, see docs/deploy.md); processes that run keep
retrying and answer 503 problem+json, never 500; all of them run jobs once it is back
(issue 11: both workers of a run died registering, on `CannotConnectNowError: the database
system is shutting down`)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import asyncpg
import httpx

from service import jobs
from service.db import engine as db_engine
from tests.integration.test_worker import eventually
from tests.reliability.conftest import FAST, ApiProcess, OwnedCluster
from tests.reliability.ledger import check_ledger, report

BODY = {"type": "system.sleep", "payload": {"seconds": 0.1}}

PHASE_SECONDS = 3
"""How long each phase of unavailability lasts: several rounds of retries (one a second)."""


async def _answers(client: httpx.AsyncClient, url: str, path: str, status: int,
                   timeout: float = 30) -> None:
    async def check() -> bool:
        try:
            return (await client.get(f"{url}{path}")).status_code == status
        except httpx.TransportError:
            return False
    await eventually(check, timeout=timeout, interval=0.2)


async def _all_logged(workers: list[subprocess.Popen], text: str, timeout: float = 30) -> None:
    async def check() -> bool:
        return all(text in w.log_path.read_text() for w in workers)  # type: ignore[attr-defined]
    await eventually(check, timeout=timeout, interval=0.2)


class ServerLog:
    """Counts the connections the server refused with `message` since the mark."""

    def __init__(self, cluster: OwnedCluster, message: str) -> None:
        self.path = cluster.data_dir / "server.log"
        self.message = message
        self.start = self._count()

    def _count(self) -> int:
        return self.path.read_text(errors="replace").count(self.message)

    def refused(self) -> int:
        return self._count() - self.start


def assert_alive(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        assert process.poll() is None, process.log_path.read_text()[-3000:]  # type: ignore[attr-defined]


async def assert_unavailable(client: httpx.AsyncClient, api: ApiProcess) -> None:
    """A running API says so: 503 problem+json with Retry-After, for /ready and a submission."""
    ready = await client.get(f"{api.url}/ready")
    assert ready.status_code == 503, ready.text
    response = await client.post(f"{api.url}/api/v1/jobs", json=BODY)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) > 0


async def run_jobs_once_back(client: httpx.AsyncClient, apis: list[ApiProcess],
                             database_url: str, names: list[str], count: int = 20) -> dict:
    """Once the database is back: every API ready and taking jobs, every job run once, every
    worker registered."""
    ids = []
    for api in apis:
        await _answers(client, api.url, "/ready", 200)
        for _ in range(count // len(apis)):
            response = await client.post(f"{api.url}/api/v1/jobs", json=BODY)
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
    conn = await asyncpg.connect(database_url)
    try:
        async def done() -> bool:
            return await conn.fetchval(
                "SELECT count(*) FROM job_overview WHERE id = ANY($1::uuid[]) "
                "AND status = 'succeeded'", ids) == len(ids)
        await eventually(done, timeout=30, interval=0.2)
        figures = await check_ledger(conn, ids)

        # One worker may run every job before the other has finished starting (a start takes
        # seconds on a loaded machine): every worker that waited must still join, soon.
        async def all_joined() -> bool:
            return await conn.fetchval(
                "SELECT count(*) FROM workers w JOIN procrastinate_workers pw ON pw.id = w.id "
                "WHERE w.name = ANY($1)", names) == len(names)
        await eventually(all_joined, timeout=30, interval=0.2)
    finally:
        await conn.close()
    return figures


async def test_workers_and_api_started_before_postgresql_wait_until_it_has_started(
    owned_cluster: OwnedCluster, start_api, start_worker
):
    url = owned_cluster.database_url
    env = {**FAST, "DATABASE_URL": url}
    async with httpx.AsyncClient(timeout=10) as client:
        running_api = start_api(url)  # up before the database goes away
        await _answers(client, running_api.url, "/ready", 200)
        owned_cluster.stop()
        await assert_unavailable(client, running_api)

        # Not started: no socket to connect to (the new API listens, not ready).
        new_api = start_api(url)
        names = ["early-1", "early-2"]
        workers = [start_worker("--name", name, "--concurrency", "4", env=env)
                   for name in names]
        await _all_logged(workers, "waiting for the database")
        await asyncio.sleep(PHASE_SECONDS)
        assert_alive([*workers, new_api.process])
        await assert_unavailable(client, running_api)

        # A worker told to stop while it waits for the database goes at once.
        quitter = start_worker("--name", "quitter", env=env)
        await _all_logged([quitter], "waiting for the database")
        quitter.send_signal(signal.SIGTERM)
        await asyncio.to_thread(quitter.wait, 10)
        assert quitter.returncode in (0, -signal.SIGTERM), quitter.log_path.read_text()[-3000:]

        # Starting up: the server runs and refuses every connection (57P03).
        started = owned_cluster.start_in_recovery()
        refusals = ServerLog(owned_cluster, "the database system is not accepting connections")
        await asyncio.sleep(PHASE_SECONDS)
        assert_alive([*workers, new_api.process])
        await assert_unavailable(client, running_api)
        assert refusals.refused() >= len(workers), "they kept knocking while it started up"

        owned_cluster.promote()
        await started
        figures = await run_jobs_once_back(client, [running_api, new_api], url, names)
    report("workers and API started before PostgreSQL (down, then starting up)", {
        **figures, "refused_while_starting_up": refusals.refused(),
        "load": "20 x 0.1 s jobs, 2 workers x 4"})


async def test_workers_and_api_started_while_postgresql_shuts_down_wait_for_its_restart(
    owned_cluster: OwnedCluster, start_api, start_worker
):
    url = owned_cluster.database_url
    held = await asyncpg.connect(url)
    owned_cluster.begin_smart_shutdown()
    refusals = ServerLog(owned_cluster, "the database system is shutting down")
    env = {**FAST, "DATABASE_URL": url}
    api = start_api(url)
    names = ["late-1", "late-2"]
    workers = [start_worker("--name", name, "--concurrency", "4", env=env) for name in names]
    async with httpx.AsyncClient(timeout=10) as client:
        await _all_logged(workers, "waiting for the database")
        await asyncio.sleep(PHASE_SECONDS)
        assert_alive([*workers, api.process])
        assert refusals.refused() >= len(workers), "they kept knocking while it shut down"

        # The last session ends, the server finishes its shutdown; then it is started again.
        await held.close()
        pid_file = owned_cluster.data_dir / "postmaster.pid"

        async def gone() -> bool:
            return not pid_file.exists()
        await eventually(gone, timeout=30, interval=0.1)
        owned_cluster.stop()
        assert_alive([*workers, api.process])
        owned_cluster.start()
        figures = await run_jobs_once_back(client, [api], url, names)
    report("workers and API started while PostgreSQL was shutting down (smart)", {
        **figures, "refused_while_shutting_down": refusals.refused(),
        "load": "20 x 0.1 s jobs, 2 workers x 4"})


async def test_running_workers_survive_a_server_that_restarts_into_recovery(
    owned_cluster: OwnedCluster, start_api, start_worker
):
    """Registered and working when the server goes down, then starts up slowly: the workers'
    claim, heartbeat, finish and progress calls all meet 57P03 for a while."""
    url = owned_cluster.database_url
    env = {**FAST, "DATABASE_URL": url}
    names = ["steady-1", "steady-2"]
    workers = [start_worker("--name", name, "--concurrency", "4", env=env) for name in names]
    async with httpx.AsyncClient(timeout=10) as client:
        api = start_api(url)
        await _answers(client, api.url, "/ready", 200)
        await _all_logged(workers, "registered as")
        long = [(await client.post(f"{api.url}/api/v1/jobs", json={
            "type": "system.sleep", "payload": {"seconds": 2}})).json()["id"] for _ in range(4)]
        owned_cluster.stop()
        started = owned_cluster.start_in_recovery()
        refusals = ServerLog(owned_cluster, "the database system is not accepting connections")
        await asyncio.sleep(PHASE_SECONDS)
        assert_alive(workers)
        await assert_unavailable(client, api)
        assert refusals.refused() >= len(workers)
        owned_cluster.promote()
        await started
        figures = await run_jobs_once_back(client, [api], url, names)
    conn = await asyncpg.connect(url)
    try:
        async def long_done() -> bool:
            return await conn.fetchval(
                "SELECT count(*) FROM job_overview WHERE id = ANY($1::uuid[]) "
                "AND status = 'succeeded'", long) == len(long)
        await eventually(long_done, timeout=30, interval=0.2)
        await check_ledger(conn, long)
    finally:
        await conn.close()
    report("PostgreSQL restarted into a slow start-up under running workers", {
        **figures, "refused_while_starting_up": refusals.refused()})


async def test_worker_stopped_while_postgresql_is_down_exits_and_its_job_runs_again(
    owned_cluster: OwnedCluster, start_worker
):
    url = owned_cluster.database_url
    env = {**FAST, "DATABASE_URL": url, "JOBQ_SHUTDOWN_GRACE_SECONDS": "1"}
    leaving = start_worker("--name", "leaving", env=env)
    conn = await db_engine.connect(url)
    try:
        [job] = await jobs.enqueue(conn, [jobs.JobRequest("system.sleep", {"seconds": 3})])
        job_id = str(job)

        async def running() -> bool:
            return await conn.fetchval(
                "SELECT status FROM job_overview WHERE id = $1::uuid", job_id) == "running"
        await eventually(running, timeout=20, interval=0.1)
    finally:
        await conn.close()

    owned_cluster.stop()
    stopped_at = time.monotonic()
    leaving.send_signal(signal.SIGTERM)
    # Grace (1 s), the last chance of outcomes being written (10 s, see Worker._drain) and the
    # bounded goodbye (5 s): it must not wait for the database beyond those.
    await asyncio.to_thread(leaving.wait, 30)
    took = time.monotonic() - stopped_at
    assert leaving.returncode == 0, leaving.log_path.read_text()[-3000:]
    assert took < 20, took

    owned_cluster.start()
    start_worker("--name", "after", env=env)
    conn = await asyncpg.connect(url)
    try:
        async def succeeded() -> bool:
            return await conn.fetchval(
                "SELECT status FROM job_overview WHERE id = $1::uuid", job_id) == "succeeded"
        await eventually(succeeded, timeout=30, interval=0.2)
        figures = await check_ledger(conn, [job_id])
        attempts = await conn.fetch(
            "SELECT worker_name, outcome FROM job_attempts WHERE job_id = $1::uuid "
            "ORDER BY number", job_id)
    finally:
        await conn.close()
    assert [(a["worker_name"], a["outcome"]) for a in attempts] == [
        ("leaving", "lost"), ("after", "succeeded")]
    report("worker stopped (SIGTERM) while PostgreSQL was down", {
        **figures, "exit_after_sigterm_s": round(took, 2)})


async def test_serve_started_before_postgresql_listens_at_once_alive_but_not_ready(
    owned_cluster: OwnedCluster, start_api
):
    """A load balancer probes an API process that waits for its database at start: /health
    answers 200 from the start (no refused connection), /ready and the API 503 problem+json
    saying why; once the database is up the same process, on the same port, is ready."""
    url = owned_cluster.database_url
    owned_cluster.stop()
    api = start_api(url)
    async with httpx.AsyncClient(timeout=10) as client:
        await _answers(client, api.url, "/health", 200, timeout=20)
        assert (await client.get(f"{api.url}/health")).json() == {"status": "ok"}
        assert (await client.head(f"{api.url}/health")).status_code == 200
        for response in [await client.get(f"{api.url}/ready"),
                         await client.post(f"{api.url}/api/v1/jobs", json=BODY)]:
            assert response.status_code == 503, response.text
            assert response.headers["content-type"].startswith("application/problem+json")
            assert int(response.headers["retry-after"]) > 0
            problem = response.json()
            assert problem["status"] == 503
            assert "database cannot be reached yet" in problem["detail"], problem
        await asyncio.sleep(PHASE_SECONDS)
        assert api.process.poll() is None, "it waits for the database, it does not exit"
        assert (await client.get(f"{api.url}/health")).status_code == 200

        owned_cluster.start()
        await _answers(client, api.url, "/ready", 200)
        assert api.process.poll() is None, "it waits for the database, it does not exit"
        response = await client.post(f"{api.url}/api/v1/jobs", json=BODY)
        assert response.status_code == 201, response.text
        # The API itself answers a probe's HEAD too, as the stand-in did.
        for path in ("/health", "/ready"):
            assert (await client.head(f"{api.url}{path}")).status_code == 200, path
