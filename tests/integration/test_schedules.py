"""Schedules: CRUD over REST, declared in code, exactly one job per tick however many fire it,
and the missed-ticks rule."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from service import schedules
from service.backend import Backend
from service.domain import requests
from service.domain.schedules import Schedule
from tests.integration.test_worker import eventually

TEMPLATE = {"type": "system.noop", "queue": "cron", "priority": 3}


async def test_crud_over_rest(client):
    body = {"name": "nightly", "cron": "0 3 * * *", "timezone": "Europe/Paris", "job": TEMPLATE}
    created = await client.post("/api/v1/schedules", json=body)
    assert created.status_code == 201, created.text
    assert created.headers["location"] == "/api/v1/schedules/nightly"
    schedule = created.json()
    assert schedule["origin"] == "api" and schedule["last_tick_at"] is None
    assert schedule["job"]["type"] == "system.noop"
    assert schedule["next_tick_at"].endswith(":00:00Z")
    assert (await client.post("/api/v1/schedules", json=body)).status_code == 409

    replaced = await client.put("/api/v1/schedules/nightly", json={
        "interval_seconds": 60, "job": TEMPLATE})
    assert replaced.status_code == 200
    assert replaced.json()["cron"] is None and replaced.json()["interval_seconds"] == 60
    assert (await client.put("/api/v1/schedules/other", json={
        "interval_seconds": 60, "job": TEMPLATE})).status_code == 201
    names = [s["name"] for s in (await client.get("/api/v1/schedules")).json()["items"]]
    assert names == ["nightly", "other"]

    assert (await client.delete("/api/v1/schedules/nightly")).status_code == 204
    assert (await client.get("/api/v1/schedules/nightly")).status_code == 404
    assert (await client.delete("/api/v1/schedules/nightly")).status_code == 404


@pytest.mark.parametrize(("body", "field"), [
    ({"name": "s", "cron": "nope", "job": TEMPLATE}, "cron"),
    ({"name": "s", "cron": "* * * * *", "timezone": "Nowhere/Land", "job": TEMPLATE},
     "timezone"),
    ({"name": "s", "interval_seconds": 60, "job": {**TEMPLATE, "type": "unknown"}}, "job.type"),
    ({"name": "s", "interval_seconds": 60, "job": {**TEMPLATE, "payload": {"x": 1}}},
     "job.payload"),
    ({"name": "s", "interval_seconds": "60", "job": TEMPLATE}, "interval_seconds"),
    ({"name": "s", "interval_seconds": 60}, "body"),
])
async def test_a_bad_schedule_is_a_422_naming_the_field(client, body, field):
    response = await client.post("/api/v1/schedules", json=body)
    assert response.status_code == 422, response.text
    assert any(e["field"].startswith(field) for e in response.json()["errors"]), response.json()


async def _jobs_made(backend: Backend) -> list:
    async with backend.connection() as conn:
        return await conn.fetch("SELECT id, type, queue, priority FROM job_overview")


async def _every_second_since(backend: Backend, name: str, since: timedelta) -> None:
    await schedules.put(backend, Schedule(name=name, interval_seconds=1,
                                          job=requests.JobRequest(**TEMPLATE)))
    async with backend.connection() as conn:
        await conn.execute("UPDATE schedules SET anchor_at = now() - $2::interval "
                           "WHERE name = $1", name, since)


async def test_a_tick_makes_exactly_one_job_however_many_fire_it(backend):
    await _every_second_since(backend, "often", timedelta(seconds=10))
    now = datetime.now(UTC)
    made = await asyncio.gather(*(schedules.fire_due(backend, now) for _ in range(8)))
    assert sorted(len(m) for m in made) == [0] * 7 + [1]
    [job] = await _jobs_made(backend)
    assert (job["type"], job["queue"], job["priority"]) == ("system.noop", "cron", 3)
    assert await schedules.fire_due(backend, now) == [], "the same tick again: nothing"


async def test_after_downtime_only_the_latest_missed_tick_runs(backend):
    await _every_second_since(backend, "often", timedelta(hours=1))
    now = datetime.now(UTC)
    assert len(await schedules.fire_due(backend, now)) == 1
    assert len(await _jobs_made(backend)) == 1, "3,600 ticks were missed; one job"
    tick = (await schedules.get(backend, "often"))["last_tick_at"]
    assert datetime.fromisoformat(tick) > now - timedelta(seconds=1)
    # The next tick is a tick like any other.
    assert len(await schedules.fire_due(backend, now + timedelta(seconds=1))) == 1


async def test_a_paused_schedule_fires_nothing_and_a_new_one_nothing_from_before(client,
                                                                              backend):
    await client.put("/api/v1/schedules/quiet", json={
        "cron": "* * * * *", "paused": True, "job": TEMPLATE})
    await client.put("/api/v1/schedules/fresh", json={"cron": "0 0 1 1 *", "job": TEMPLATE})
    assert await schedules.fire_due(backend) == []


async def test_a_schedule_declared_in_code_is_synced_and_read_only_over_rest(
        client, backend, monkeypatch):
    monkeypatch.setattr(schedules, "DECLARED", {})
    schedules.declare(Schedule(name="from-code", cron="*/5 * * * *",
                               job=requests.JobRequest(type="system.noop")))
    await schedules.sync_declared(backend)
    found = (await client.get("/api/v1/schedules/from-code")).json()
    assert found["origin"] == "code" and found["cron"] == "*/5 * * * *"
    assert (await client.delete("/api/v1/schedules/from-code")).status_code == 409
    assert (await client.put("/api/v1/schedules/from-code", json={
        "interval_seconds": 5, "job": TEMPLATE})).status_code == 409


@pytest.mark.slow
async def test_three_workers_make_one_job_per_tick(backend, start_worker):
    await _every_second_since(backend, "often", timedelta(0))
    for _ in range(3):
        start_worker()

    async def enough() -> bool:
        async with backend.connection() as conn:
            return await conn.fetchval("SELECT count(*) FROM schedule_ticks") >= 4
    await eventually(enough, timeout=30, interval=0.2)

    async with backend.connection() as conn:
        await conn.execute("UPDATE schedules SET paused = true")
        await asyncio.sleep(1)  # a firing under way commits
        ticks = await conn.fetch("SELECT tick_at, job_id FROM schedule_ticks ORDER BY tick_at")
        made = await conn.fetch("SELECT j.id FROM jobs AS j")
    assert len({t["tick_at"] for t in ticks}) == len(ticks)
    assert {t["job_id"] for t in ticks} == {m["id"] for m in made}
    assert len(made) == len(ticks)
