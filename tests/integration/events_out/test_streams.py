"""Server-Sent Events over real HTTP, from a real `jobq serve` while a real `jobq worker` runs
the jobs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx

from service.events import APPLICATION_NAME

WORKER_ENV = {"JOBQ_PROGRESS_INTERVAL_SECONDS": "0.05"}


@dataclass
class Event:
    id: str | None
    event: str | None
    data: dict | None
    comment: str | None = None


async def sse(response: httpx.Response) -> AsyncIterator[Event]:
    """Parse a text/event-stream as it arrives."""
    fields: dict[str, str] = {}
    comment = None
    async for line in response.aiter_lines():
        if line == "":
            if fields or comment:
                data = fields.get("data")
                yield Event(fields.get("id"), fields.get("event"),
                            json.loads(data) if data else None, comment)
            fields, comment = {}, None
        elif line.startswith(":"):
            comment = line[1:].strip()
        else:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")


async def collect(client: httpx.AsyncClient, url: str, headers: dict | None = None,
                  until: int | None = None, timeout: float = 30) -> tuple[int, list[Event]]:
    """Follow a stream to its end (or `until` events); returns the status and the events."""
    got: list[Event] = []
    async with asyncio.timeout(timeout):
        async with client.stream("GET", url, headers=headers or {}) as response:
            if response.status_code != 200:
                return response.status_code, got
            assert response.headers["content-type"].startswith("text/event-stream")
            async for event in sse(response):
                got.append(event)
                if until is not None and len([e for e in got if e.event]) >= until:
                    break
    return 200, got


async def submit(client: httpx.AsyncClient, api: str, body: dict) -> str:
    response = await client.post(f"{api}/api/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def wait_status(client: httpx.AsyncClient, url: str, status: str,
                      timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while (await client.get(url)).json()["status"] != status:
        assert time.monotonic() < deadline, f"never {status}"
        await asyncio.sleep(0.05)


async def test_a_stream_follows_a_job_through_progress_to_its_terminal_state(
        start_api, start_worker):
    api = start_api()
    start_worker(env=WORKER_ENV)
    async with httpx.AsyncClient(timeout=10) as client:
        job_id = await submit(client, api.url, {"type": "system.sleep",
                                                "payload": {"seconds": 1}})
        status, got = await collect(client, f"{api.url}/api/v1/jobs/{job_id}/stream")
    assert status == 200
    kinds = [e.event for e in got if e.event]
    assert kinds[0] == "job" and kinds[-1] == "job"
    assert got[-1].data["status"] == "succeeded" and got[-1].data["result"]["slept_seconds"] > 0
    statuses = [e.data["event"] for e in got if e.event == "status"]
    assert statuses[-1] == "succeeded"
    progress = [e.data["progress"] for e in got if e.event == "progress"]
    assert len(progress) >= 3 and progress == sorted(progress)
    assert all(e.id for e in got if e.event), "every event has an id"


async def test_a_finished_job_sends_its_final_state_at_once_then_204(start_api, start_worker):
    api = start_api()
    start_worker()
    async with httpx.AsyncClient(timeout=10) as client:
        job_id = await submit(client, api.url, {"type": "system.noop"})
        await wait_status(client, f"{api.url}/api/v1/jobs/{job_id}", "succeeded")
        started = time.monotonic()
        status, got = await collect(client, f"{api.url}/api/v1/jobs/{job_id}/stream")
        assert time.monotonic() - started < 5
        assert status == 200
        assert [(e.event, e.data["status"]) for e in got] == [("job", "succeeded")]
        # A client that saw the end and reconnects (EventSource does) is told to stop.
        again, _ = await collect(client, f"{api.url}/api/v1/jobs/{job_id}/stream",
                                 headers={"Last-Event-ID": got[0].id})
        assert again == 204
        missing = await client.get(
            f"{api.url}/api/v1/jobs/00000000-0000-0000-0000-000000000000/stream")
        assert missing.status_code == 404


async def test_last_event_id_resumes_without_repeating_or_losing_status_changes(
        start_api, start_worker):
    api = start_api()
    start_worker(env=WORKER_ENV)
    async with httpx.AsyncClient(timeout=10) as client:
        job_id = await submit(client, api.url, {"type": "system.sleep",
                                                "payload": {"seconds": 2, "fail_times": 1}})
        url = f"{api.url}/api/v1/jobs/{job_id}/stream"
        _, first = await collect(client, url, until=3)  # then the client goes away
        await asyncio.sleep(0.5)
        _, rest = await collect(client, url, headers={"Last-Event-ID": first[-1].id})
        history = (await client.get(f"{api.url}/api/v1/jobs/{job_id}/history")).json()
    seen = [e.data["event"] for e in first + rest if e.event == "status"]
    # Every status change in the history, in order, none twice (the first stream began with
    # the job as it was, so events before its first cursor are not repeated).
    start_cursor = int(first[0].id.split("-")[0])
    assert seen == [e["event"] for e in history["items"]][start_cursor:]
    assert "retry_scheduled" in seen and seen[-1] == "succeeded"
    assert rest[-1].event == "job" and rest[-1].data["status"] == "succeeded"


async def test_the_stream_ends_with_the_terminal_state_though_notifications_were_lost(
        start_api, start_worker, database_url):
    """The hub's connection is killed again and again while the job finishes: the
    notification of its end is lost, and the hub's reread after reconnecting finds it."""
    api = start_api()
    start_worker(env=WORKER_ENV)
    admin = await asyncpg.connect(database_url)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            job_id = await submit(client, api.url, {"type": "system.sleep",
                                                    "payload": {"seconds": 1.5}})
            stream = asyncio.create_task(
                collect(client, f"{api.url}/api/v1/jobs/{job_id}/stream", timeout=40))
            await wait_status(client, f"{api.url}/api/v1/jobs/{job_id}", "running")
            killed = 0
            deadline = time.monotonic() + 3  # the job (1.5 s) ends within this gap
            while time.monotonic() < deadline:
                killed += await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = $1", APPLICATION_NAME)
                await asyncio.sleep(0.02)
            job = (await client.get(f"{api.url}/api/v1/jobs/{job_id}")).json()
            assert job["status"] == "succeeded", "the job must end while the hub is away"
            status, got = await stream
    finally:
        await admin.close()
    assert killed >= 2
    assert status == 200
    assert got[-1].event == "job" and got[-1].data["status"] == "succeeded"
    assert [e.data["event"] for e in got if e.event == "status"][-1] == "succeeded"
    assert "event hub lost its connection" in api.log()


async def test_all_events_filtered_by_type_and_resumed(start_api, start_worker):
    api = start_api()
    start_worker(env=WORKER_ENV)
    async with httpx.AsyncClient(timeout=10) as client:
        url = f"{api.url}/api/v1/events?type=system.sleep&queue=default"
        listening = asyncio.create_task(collect(client, url, until=4))
        await asyncio.sleep(0.5)
        noop = await submit(client, api.url, {"type": "system.noop"})
        sleeper = await submit(client, api.url, {"type": "system.sleep",
                                                 "payload": {"seconds": 0.3}})
        _, got = await listening
        assert {e.data["job_id"] for e in got if e.event} == {sleeper}
        # Resume from the second event: the rest of the sleeper's changes come again.
        _, resumed = await collect(client, url, headers={"Last-Event-ID": got[1].id},
                                   until=2)
        assert next(e.id for e in resumed if e.event == "status") != got[1].id
        bad = await client.get(f"{api.url}/api/v1/events?type=no.such")
        assert bad.status_code == 422
    assert noop not in {e.data["job_id"] for e in resumed if e.event}


async def test_one_database_connection_serves_every_open_stream(
        start_api, start_worker, database_url):
    api = start_api()
    start_worker()
    admin = await asyncpg.connect(database_url)
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            ids = [await submit(client, api.url, {"type": "system.sleep",
                                                  "payload": {"seconds": 3}})
                   for _ in range(20)]
            streams = [asyncio.create_task(
                collect(client, f"{api.url}/api/v1/jobs/{i}/stream", timeout=60)) for i in ids]
            await asyncio.sleep(2)
            listening = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                APPLICATION_NAME)
            results = await asyncio.gather(*streams)
    finally:
        await admin.close()
    assert listening == 1
    assert all(got[-1].data["status"] == "succeeded" for _, got in results)
