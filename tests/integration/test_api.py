"""The /api/v1 routes against a real database (no worker running)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from service.backend import Backend

SLEEP = {"type": "system.sleep", "payload": {"seconds": 1}}


async def submit(client, body=None, **headers):
    response = await client.post("/api/v1/jobs", json=body or SLEEP, headers=headers)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def test_submit_returns_201_with_the_job_and_its_location(client):
    response = await client.post("/api/v1/jobs", json=SLEEP)
    assert response.status_code == 201
    job = response.json()
    assert response.headers["location"] == f"/api/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["type"] == "system.sleep"
    assert job["queue"] == "default"
    # defaults filled in
    assert job["payload"] == {"seconds": 1.0, "fail_times": 0, "permanent": False,
                              "ignore_cancel": False}
    assert job["attempts"] == 0 and job["max_attempts"] == 3
    assert job["progress"] == 0 and job["result"] is None and job["error"] is None
    assert job["created_at"].endswith("Z")
    assert job["links"]["history"] == f"/api/v1/jobs/{job['id']}/history"


async def test_get_returns_the_submitted_job(client):
    job = await submit(client)
    response = await client.get(f"/api/v1/jobs/{job['id']}")
    assert response.status_code == 200
    assert response.json()["id"] == job["id"]


async def test_unknown_job_returns_404_problem(client):
    response = await client.get(f"/api/v1/jobs/{uuid4()}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["status"] == 404


async def test_malformed_id_returns_404(client):
    response = await client.get("/api/v1/jobs/not-a-uuid")
    assert response.status_code == 404


async def test_delay_makes_a_job_scheduled(client):
    job = await submit(client, {**SLEEP, "delay_seconds": 60})
    assert job["status"] == "scheduled"
    scheduled = datetime.fromisoformat(job["scheduled_at"].replace("Z", "+00:00"))
    assert scheduled > datetime.now(UTC) + timedelta(seconds=50)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "no.such.type"}, "type"),
        ({"type": "system.sleep", "payload": {"seconds": "soon"}}, "payload.seconds"),
        ({"type": "system.sleep", "payload": {"seconds": -1}}, "payload.seconds"),
        ({"type": "system.sleep", "payload": {"sleep": 1}}, "payload"),
        ({"type": "system.sleep", "payload": [1]}, "payload"),
        ({"type": "system.sleep", "priority": "high"}, "priority"),
        ({"type": "system.sleep", "queue": "bad queue!"}, "queue"),
        ({"type": "system.sleep", "max_attempts": 0}, "max_attempts"),
        ({"type": "system.sleep", "delay_seconds": 5, "run_at": "2030-01-01T00:00:00Z"},
         "run_at"),
        ({"payload": {}}, "body"),
    ],
)
async def test_invalid_submission_returns_422_naming_the_field(client, body, field):
    response = await client.post("/api/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert problem["detail"]
    assert field in [e["field"] for e in problem["errors"]], problem


async def test_malformed_json_returns_400(client):
    response = await client.post(
        "/api/v1/jobs", content=b'{"type": ', headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["detail"]


async def test_oversized_body_returns_413(client):
    body = json.dumps({"type": "system.noop", "payload": {}, "pad": "x" * 10_100_000})
    response = await client.post(
        "/api/v1/jobs", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert response.json()["status"] == 413


async def test_same_idempotency_key_and_body_returns_the_same_job(client):
    first = await client.post("/api/v1/jobs", json=SLEEP, headers={"Idempotency-Key": "k-1"})
    again = await client.post("/api/v1/jobs", json=SLEEP, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]


async def test_same_idempotency_key_with_another_body_returns_409(client):
    await client.post("/api/v1/jobs", json=SLEEP, headers={"Idempotency-Key": "k-2"})
    other = {"type": "system.sleep", "payload": {"seconds": 2}}
    response = await client.post("/api/v1/jobs", json=other, headers={"Idempotency-Key": "k-2"})
    assert response.status_code == 409


async def test_concurrent_requests_with_one_key_create_one_job(client, backend: Backend):
    responses = await asyncio.gather(*(
        client.post("/api/v1/jobs", json=SLEEP, headers={"Idempotency-Key": "race"})
        for _ in range(8)
    ))
    assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
    assert len({r.json()["id"] for r in responses}) == 1
    async with backend.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 1


async def test_batch_submits_all_jobs(client, backend: Backend):
    response = await client.post(
        "/api/v1/jobs/batch", json={"jobs": [{"type": "system.noop"}] * 50}
    )
    assert response.status_code == 201
    assert len(response.json()["ids"]) == 50
    async with backend.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM procrastinate_jobs") == 50


async def test_batch_with_one_invalid_job_submits_none(client, backend: Backend):
    jobs = [{"type": "system.noop"}] * 3 + [{"type": "system.sleep", "payload": {"x": 1}}]
    response = await client.post("/api/v1/jobs/batch", json={"jobs": jobs})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "jobs[3].payload"
    async with backend.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM jobs") == 0


async def test_batch_over_1000_jobs_is_refused(client):
    batch = {"jobs": [{"type": "system.noop"}] * 1001}
    response = await client.post("/api/v1/jobs/batch", json=batch)
    assert response.status_code == 422


async def test_list_pages_newest_first_with_a_cursor(client):
    ids = [(await submit(client, {"type": "system.noop"}))["id"] for _ in range(5)]
    seen = []
    cursor = None
    while True:
        url = "/api/v1/jobs?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(url)).json()
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))


async def test_list_filters_by_status_type_and_queue(client):
    await submit(client, {"type": "system.noop", "queue": "a"})
    await submit(client, {"type": "system.noop", "queue": "b"})
    delayed = await submit(client, {**SLEEP, "queue": "a", "delay_seconds": 60})
    page = (await client.get("/api/v1/jobs?queue=a&type=system.sleep&status=scheduled")).json()
    assert [j["id"] for j in page["items"]] == [delayed["id"]]
    assert len((await client.get("/api/v1/jobs?queue=b")).json()["items"]) == 1


async def test_list_with_bad_cursor_or_limit_returns_4xx(client):
    assert (await client.get("/api/v1/jobs?cursor=garbage")).status_code == 422
    assert (await client.get("/api/v1/jobs?limit=501")).status_code in (400, 422)
    assert (await client.get("/api/v1/jobs?status=sleeping")).status_code in (400, 422)


async def test_cancel_queued_job_cancels_it_and_a_second_cancel_is_409(client):
    job = await submit(client)
    response = await client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert response.json()["finished_at"] is not None
    assert (await client.post(f"/api/v1/jobs/{job['id']}/cancel")).status_code == 409


async def test_retry_of_a_queued_job_is_409_and_of_a_cancelled_one_requeues(client):
    job = await submit(client)
    assert (await client.post(f"/api/v1/jobs/{job['id']}/retry")).status_code == 409
    await client.post(f"/api/v1/jobs/{job['id']}/cancel")
    response = await client.post(f"/api/v1/jobs/{job['id']}/retry")
    assert response.status_code == 200
    assert response.json()["status"] == "queued"
    events = (await client.get(f"/api/v1/jobs/{job['id']}/history")).json()["items"]
    assert [e["event"] for e in events] == ["submitted", "cancelled", "retried"]


async def test_delete_refuses_active_jobs_and_removes_finished_ones(client, backend: Backend):
    job = await submit(client)
    assert (await client.delete(f"/api/v1/jobs/{job['id']}")).status_code == 409
    await client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert (await client.delete(f"/api/v1/jobs/{job['id']}")).status_code == 204
    assert (await client.get(f"/api/v1/jobs/{job['id']}")).status_code == 404
    async with backend.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM procrastinate_jobs") == 0
        assert await conn.fetchval("SELECT count(*) FROM job_events") == 0


async def test_queues_report_counts_and_pause_state(client):
    await submit(client, {"type": "system.noop", "queue": "q1"})
    await submit(client, {**SLEEP, "queue": "q1", "delay_seconds": 60})
    paused = await client.post("/api/v1/queues/q2/pause")
    assert paused.status_code == 200 and paused.json()["paused"] is True
    queues = {q["name"]: q for q in (await client.get("/api/v1/queues")).json()["items"]}
    assert queues["q1"]["counts"]["queued"] == 1
    assert queues["q1"]["counts"]["scheduled"] == 1
    assert queues["q1"]["paused"] is False
    assert queues["q1"]["oldest_queued_age_seconds"] >= 0
    assert queues["q2"]["paused"] is True
    resumed = await client.post("/api/v1/queues/q2/resume")
    assert resumed.json()["paused"] is False


async def test_health_ready_and_openapi(client):
    assert (await client.get("/health")).json() == {"status": "ok"}
    ready = await client.get("/ready")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    schema = (await client.get("/schema/openapi.json")).json()
    assert "/api/v1/jobs" in schema["paths"]
    assert "/api/v1/jobs/{job_id}/history" in schema["paths"]


async def test_recover_stalled_requeues_the_job_of_a_silent_worker_after_its_backoff(
        client, backend: Backend):
    from service import attempts
    from service.domain import outcome
    from workers import leases

    job = await submit(client, {**SLEEP, "backoff": {"base_seconds": 60, "jitter": 0}})
    async with backend.connection() as conn:
        worker_id = await leases.register(conn, "ghost", "nowhere", 1, [], 1)
        [claimed] = await leases.claim(conn, worker_id, "ghost", None, 1)
        await conn.execute(
            "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour'")
    assert (await client.get(f"/api/v1/jobs/{job['id']}")).json()["status"] == "running"
    response = await client.post("/api/v1/maintenance/recover-stalled")
    assert response.status_code == 200
    assert response.json() == {"requeued": 1, "failed": 0, "cancelled": 0}
    after = (await client.get(f"/api/v1/jobs/{job['id']}")).json()
    # A lost attempt is a failed attempt: the job's retry policy spaces the next one.
    assert after["status"] == "scheduled"
    wait = datetime.fromisoformat(after["scheduled_at"]) - datetime.now(UTC)
    assert 55 < wait.total_seconds() <= 60, wait
    assert after["error"]["type"] == "WorkerLost"
    attempts_seen = (await client.get(f"/api/v1/jobs/{job['id']}/history")).json()["attempts"]
    assert [a["outcome"] for a in attempts_seen] == ["lost"]
    async with backend.connection() as conn:
        late = attempts.Ending.of(claimed.attempt_id, outcome.Succeeded({"late": True}))
        assert claimed.attempt_id not in await attempts.finish(conn, [late])
    assert (await client.get(f"/api/v1/jobs/{job['id']}")).json()["result"] is None


async def test_backoff_fields_are_checked(client):
    response = await client.post("/api/v1/jobs", json={
        "type": "system.noop", "backoff": {"base_seconds": -1, "jitter": 2}})
    assert response.status_code == 422
    fields = {e["field"] for e in response.json()["errors"]}
    assert fields == {"backoff.base_seconds", "backoff.jitter"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "system.noop", "priority": "1"}, "priority"),
        ({"type": "system.noop", "run_at": 123}, "run_at"),
        ({"type": "system.noop", "max_attempts": "3"}, "max_attempts"),
        ({"type": "system.sleep", "payload": {"seconds": "1"}}, "payload.seconds"),
        ({"type": "system.noop", "backoff": {"base": 1}}, "backoff"),
    ],
)
async def test_json_types_are_strict(client, body, field):
    # A string is not a number, nor a number a date: no silent coercion.
    response = await client.post("/api/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]
    assert (await client.get("/api/v1/jobs")).json()["items"] == []


async def test_batch_json_types_are_strict_and_name_the_job(client):
    response = await client.post("/api/v1/jobs/batch", json={
        "jobs": [{"type": "system.noop"}, {"type": "system.noop", "priority": "2"}]})
    assert response.status_code == 422, response.text
    assert "jobs[1].priority" in [e["field"] for e in response.json()["errors"]]


async def test_a_second_queued_job_with_the_same_queueing_lock_is_a_409(client):
    body = {"type": "system.noop", "queueing_lock": "nightly-report", "lock": "reports"}
    first = await client.post("/api/v1/jobs", json=body)
    assert first.status_code == 201, first.text
    second = await client.post("/api/v1/jobs", json=body)
    assert second.status_code == 409, second.text
    assert "queueing_lock" in second.json()["detail"]
    assert len((await client.get("/api/v1/jobs")).json()["items"]) == 1


async def test_the_submit_body_is_documented_in_the_openapi_schema(client):
    schema = (await client.get("/schema/openapi.json")).json()
    body = schema["paths"]["/api/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    ref = body["schema"]["$ref"].rsplit("/", 1)[-1]
    properties = schema["components"]["schemas"][ref]["properties"]
    assert {"type", "payload", "priority", "run_at", "backoff", "lock"} <= properties.keys()
