"""PostgreSQL stopped under load, and an API killed after accepting a job."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import asyncpg
import httpx
import pytest

from tests.integration.test_worker import eventually
from tests.reliability.conftest import FAST, OwnedCluster
from tests.reliability.ledger import check_ledger, report

BODY = {"type": "system.sleep", "payload": {"seconds": 0.2}}


async def submit_until_accepted(client: httpx.AsyncClient, url: str, key: str,
                                log: list[tuple[int | str, float]]) -> str:
    """What a careful client does: retry with the same Idempotency-Key until it gets an
    answer, honouring Retry-After."""
    while True:
        started = time.monotonic()
        try:
            response = await client.post(f"{url}/api/v1/jobs", json=BODY,
                                         headers={"Idempotency-Key": key})
        except httpx.TransportError as exc:
            log.append((type(exc).__name__, time.monotonic() - started))
            await asyncio.sleep(0.5)
            continue
        log.append((response.status_code, time.monotonic() - started))
        if response.status_code in (200, 201):
            return response.json()["id"]
        assert response.status_code == 503, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        await asyncio.sleep(float(response.headers["retry-after"]) / 4)


async def _ready(client: httpx.AsyncClient, url: str) -> None:
    async def check() -> bool:
        try:
            return (await client.get(f"{url}/ready")).status_code == 200
        except httpx.TransportError:
            return False
    await eventually(check, timeout=60, interval=0.2)


@pytest.mark.parametrize("outage_seconds", [4, 6])
async def test_database_outage_loses_no_job_and_runs_none_twice(
    owned_cluster: OwnedCluster, start_api, start_worker, outage_seconds: float
):
    url = owned_cluster.database_url
    api = start_api(url)
    for name in ("w1", "w2"):
        start_worker("--name", name, "--concurrency", "4", env={**FAST, "DATABASE_URL": url})
    calls: list[tuple[int | str, float]] = []
    accepted: list[str] = []
    async with httpx.AsyncClient(timeout=30) as client:
        await _ready(client, api.url)
        keys = (f"load-{i}" for i in itertools.count())

        async def producer(stop: asyncio.Event) -> None:
            while not stop.is_set():
                accepted.append(await submit_until_accepted(client, api.url, next(keys), calls))
                await asyncio.sleep(0.02)

        stop = asyncio.Event()
        producers = [asyncio.create_task(producer(stop)) for _ in range(3)]
        await asyncio.sleep(2)
        owned_cluster.stop()
        await asyncio.sleep(outage_seconds)
        owned_cluster.start()
        await asyncio.sleep(3)
        stop.set()
        await asyncio.gather(*producers)

    during = [(status, took) for status, took in calls if status == 503]
    assert during, "the API answered 503 while the database was down"
    assert max(took for _, took in calls) < 10, "no request hung"
    assert 500 not in [status for status, _ in calls]

    conn = await asyncpg.connect(url)
    try:
        async def drained() -> bool:
            return await conn.fetchval(
                "SELECT count(*) FROM job_overview WHERE status NOT IN "
                "('succeeded', 'failed', 'cancelled')") == 0
        await eventually(drained, timeout=90, interval=0.5)
        total = await conn.fetchval("SELECT count(*) FROM jobs")
        figures = await check_ledger(conn, accepted)
    finally:
        await conn.close()
    assert total == len(set(accepted)), "a retried submission created a second job"
    report(f"PostgreSQL stopped {outage_seconds} s under load", {
        **figures, "requests": len(calls), "answered_503": len(during),
        "max_request_s": round(max(took for _, took in calls), 2),
        "outage_s": outage_seconds,
        "load": "3 clients submitting 0.2 s jobs, 2 workers x 4"})


async def test_client_retry_after_the_api_died_creates_no_second_job(
    owned_cluster: OwnedCluster, start_api
):
    url = owned_cluster.database_url
    key = f"crash-{uuid.uuid4()}"
    async with httpx.AsyncClient(timeout=10) as client:
        first = start_api(url)
        await _ready(client, first.url)
        # The job is committed; then the API dies before the client gets its answer.
        response = await client.post(f"{first.url}/api/v1/jobs", json=BODY,
                                     headers={"Idempotency-Key": key})
        assert response.status_code == 201
        first.kill()
        second = start_api(url)
        await _ready(client, second.url)
        retried = await client.post(f"{second.url}/api/v1/jobs", json=BODY,
                                    headers={"Idempotency-Key": key})
    assert retried.status_code == 200
    assert retried.json()["id"] == response.json()["id"]
    conn = await asyncpg.connect(url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 1
    finally:
        await conn.close()
