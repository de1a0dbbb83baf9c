"""Per-key limits across two real `jobq serve` processes on one database (issue 13): their state
is in PostgreSQL, so a key's clients get the same limits whichever process they reach. Every
refusal is a 429 problem+json with Retry-After, and creates nothing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from service import auth
from service.backend import Backend
from tests.support import free_port

CORPUS = Path(__file__).resolve().parents[1] / "corpus"  # see tests/corpus/NOTICE
CUBE = (CORPUS / "cube.OBJ").read_bytes()


@contextlib.contextmanager
def two_apis(database_url: str, logs: Path) -> Iterator[list[str]]:
    """Two `jobq serve` processes, authentication on, no worker: submitted jobs stay queued."""
    processes, urls = [], []
    for n in range(2):
        port = free_port()
        with open(logs / f"serve-{n}.log", "w") as log:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
                env={**os.environ, "DATABASE_URL": database_url, "JOBQ_AUTH": "on"},
                stdout=log, stderr=subprocess.STDOUT))
        urls.append(f"http://127.0.0.1:{port}")
    try:
        yield urls
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def logs_of(directory: Path) -> list[str]:
    return [p.read_text()[-2000:] for p in directory.glob("serve-*.log")]


@pytest.fixture
async def apis(database_url: str, tmp_path: Path) -> AsyncIterator[list[str]]:
    with two_apis(database_url, tmp_path) as urls:
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient(timeout=5) as client:
            for url in urls:
                while True:
                    with contextlib.suppress(httpx.TransportError):
                        if (await client.get(f"{url}/ready")).status_code == 200:
                            break
                    assert time.monotonic() < deadline, logs_of(tmp_path)
                    await asyncio.sleep(0.2)
        yield urls


async def key_with(backend: Backend, **limits) -> str:
    async with backend.connection() as conn:
        _, secret = await auth.create_key(conn, "limited", "submitter",
                                          limits=auth.KeyLimits(**limits))
    return secret


@contextlib.asynccontextmanager
async def clients(urls: list[str], secret: str) -> AsyncIterator[list[httpx.AsyncClient]]:
    headers = {"Authorization": f"Bearer {secret}"}
    opened = [httpx.AsyncClient(base_url=url, headers=headers, timeout=30) for url in urls]
    try:
        yield opened
    finally:
        for client in opened:
            await client.aclose()


def assert_429(response: httpx.Response) -> int:
    assert response.status_code == 429, response.text
    assert response.headers["content-type"] == "application/problem+json"
    retry_after = int(response.headers["retry-after"])
    assert retry_after >= 1
    assert response.json()["detail"]
    return retry_after


async def job_count(backend: Backend) -> int:
    async with backend.connection() as conn:
        return await conn.fetchval("SELECT count(*) FROM jobs")


async def test_submissions_per_second_hold_across_two_apis(apis, backend):
    rate = 5.0
    secret = await key_with(backend, submissions_per_second=rate)
    answers: list[httpx.Response] = []
    async with clients(apis, secret) as (one, two):
        start = time.monotonic()
        stop = start + 2.0

        async def hammer(client: httpx.AsyncClient) -> None:
            while time.monotonic() < stop:
                answers.append(await client.post("/api/v1/jobs", json={"type": "system.noop"}))

        # Eight concurrent clients, four on each API process.
        await asyncio.gather(*(hammer(c) for c in (one, two) * 4))
        elapsed = time.monotonic() - start
    accepted = [r for r in answers if r.status_code == 201]
    refused = [r for r in answers if r.status_code != 201]
    for response in refused:
        assert_429(response)
    # A full bucket (one second's worth) and then the rate: never more, whichever process.
    assert len(accepted) <= rate + rate * elapsed + 1, (len(accepted), elapsed)
    assert len(accepted) >= rate, len(accepted)
    assert len(refused) > len(accepted)  # the clients asked far more often than allowed
    assert await job_count(backend) == len(accepted)
    # Both processes refused some: the bucket is shared, not per process.
    assert {r.request.url.port for r in refused} == {httpx.URL(u).port for u in apis}


async def test_jobs_queued_at_once_hold_across_two_apis(apis, backend):
    secret = await key_with(backend, max_queued=4)
    async with clients(apis, secret) as (one, two):
        answers = await asyncio.gather(*(
            client.post("/api/v1/jobs", json={"type": "system.noop"})
            for client in (one, two) * 10))
        accepted = [r for r in answers if r.status_code == 201]
        assert len(accepted) == 4, [r.status_code for r in answers]
        for response in answers:
            if response.status_code != 201:
                assert_429(response)
                assert "4 unfinished jobs" in response.json()["detail"]
        assert await job_count(backend) == 4
        # A batch that would go over is refused whole.
        assert_429(await two.post("/api/v1/jobs/batch", json={"jobs": [{"type": "system.noop"}]}))
        # One finished (cancelled): one more fits, on either process.
        cancelled = await one.post(f"/api/v1/jobs/{accepted[0].json()['id']}/cancel")
        assert cancelled.json()["status"] == "cancelled"
        assert (await two.post("/api/v1/jobs", json={"type": "system.noop"})).status_code == 201
        assert_429(await one.post("/api/v1/jobs", json={"type": "system.noop"}))
    assert await job_count(backend) == 5


async def test_upload_bytes_per_day_hold_across_two_apis(apis, backend):
    secret = await key_with(backend, upload_bytes_per_day=len(CUBE) * 3 // 2)
    async with clients(apis, secret) as (one, two):
        first = await one.post("/api/v1/conversions", files={"file": ("cube.obj", CUBE)},
                               data={"format": "glb"})
        assert first.status_code == 201, first.text
        async with backend.connection() as conn:
            files = await conn.fetchval("SELECT count(*) FROM files")
        second = await two.post("/api/v1/conversions", files={"file": ("cube.obj", CUBE)},
                                data={"format": "stl"})
        retry_after = assert_429(second)
        assert retry_after <= 86400
        assert "per day" in second.json()["detail"]
        v2 = await one.post("/api/v2/convert", files={"file": ("cube.obj", CUBE)})
        assert v2.status_code == 429 and int(v2.headers["retry-after"]) >= 1
        assert "per day" in v2.json()["error"]
        async with backend.connection() as conn:
            assert await conn.fetchval("SELECT count(*) FROM files") == files  # nothing kept
            used = await conn.fetchval("SELECT bytes FROM api_key_upload_days")
    assert used == len(CUBE)
    assert await job_count(backend) == 1


def slow_multipart(boundary: str, pause: float, pieces: int) -> AsyncIterator[bytes]:
    """A conversion form sent in pieces over `pause * pieces` seconds, without a length."""
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"format\"\r\n\r\nglb\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"cube.obj\"\r\nContent-Type: text/plain\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    async def body() -> AsyncIterator[bytes]:
        yield head
        step = len(CUBE) // pieces + 1
        for i in range(0, len(CUBE), step):
            await asyncio.sleep(pause)
            yield CUBE[i:i + step]
        yield tail

    return body()


async def test_concurrent_uploads_per_key_hold_across_two_apis(apis, backend):
    secret = await key_with(backend, max_concurrent_uploads=1)
    async with clients(apis, secret) as (one, two):
        boundary = "jobq-test-boundary"
        slow = asyncio.create_task(one.post(
            "/api/v1/conversions", content=slow_multipart(boundary, 0.3, 10),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}))
        # While the slow upload holds the key's one slot, the other process refuses another.
        deadline = time.monotonic() + 10
        while True:
            async with backend.connection() as conn:
                if await conn.fetchval("SELECT count(*) FROM api_key_upload_slots"):
                    break
            assert time.monotonic() < deadline and not slow.done()
            await asyncio.sleep(0.05)
        refused = await two.post("/api/v1/conversions", files={"file": ("cube.obj", CUBE)},
                                 data={"format": "glb"})
        assert_429(refused)
        assert "1 uploads at once" in refused.json()["detail"]
        assert (await slow).status_code == 201
        # The slot is given back: the next upload goes through.
        again = await two.post("/api/v1/conversions", files={"file": ("cube.obj", CUBE)},
                               data={"format": "glb"})
        assert again.status_code in (200, 201), again.text
    async with backend.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM api_key_upload_slots") == 0
