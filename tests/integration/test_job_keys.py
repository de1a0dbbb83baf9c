"""Client-chosen job keys (BullMQ's jobId) over REST and from Python, on the real database."""

from __future__ import annotations

import asyncio

import pytest

from service import errors, jobs
from service.backend import Backend


async def post(client, key: str | None, **fields) -> tuple[int, dict]:
    body = {"type": "system.sleep", "payload": {"seconds": 0.1}, **fields}
    if key is not None:
        body["key"] = key
    response = await client.post("/api/v1/jobs", json=body)
    return response.status_code, response.json()


async def test_the_same_key_returns_the_existing_job_instead_of_another(client):
    status, first = await post(client, "order-42")
    assert (status, first["key"]) == (201, "order-42")
    # Even with another body: the key names the job, as BullMQ's jobId does.
    status, again = await post(client, "order-42", payload={"seconds": 5}, priority=7)
    assert (status, again["id"]) == (200, first["id"])
    assert again["payload"]["seconds"] == 0.1
    listed = (await client.get("/api/v1/jobs")).json()["items"]
    assert [j["id"] for j in listed] == [first["id"]]


async def test_the_key_finds_the_job(client):
    _, job = await post(client, "export:2026-11")
    await post(client, "another")
    by_key = await client.get("/api/v1/jobs/by-key/export:2026-11")
    assert (by_key.status_code, by_key.json()["id"]) == (200, job["id"])
    listed = (await client.get("/api/v1/jobs", params={"key": "export:2026-11"})).json()
    assert [j["id"] for j in listed["items"]] == [job["id"]]
    missing = await client.get("/api/v1/jobs/by-key/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


async def test_a_deleted_job_frees_its_key(client, backend: Backend):
    _, job = await post(client, "k1")
    async with backend.connection() as conn:  # finish it the way a cancel does
        assert (await conn.fetchrow("SELECT * FROM jobq_cancel_job($1)", job["id"]))
    assert (await client.delete(f"/api/v1/jobs/{job['id']}")).status_code == 204
    status, fresh = await post(client, "k1")
    assert status == 201 and fresh["id"] != job["id"]


async def test_concurrent_submissions_of_one_key_make_one_job(client):
    answers = await asyncio.gather(*(post(client, "race") for _ in range(8)))
    assert sorted(status for status, _ in answers) == [200] * 7 + [201]
    assert len({job["id"] for _, job in answers}) == 1


async def test_idempotency_key_keeps_its_meaning_beside_a_key(client):
    headers = {"Idempotency-Key": "idem-1"}
    body = {"type": "system.noop", "key": "k-idem"}
    first = await client.post("/api/v1/jobs", json=body, headers=headers)
    replay = await client.post("/api/v1/jobs", json=body, headers=headers)
    other = await client.post("/api/v1/jobs", json={"type": "system.noop", "priority": 3},
                              headers=headers)
    assert (first.status_code, replay.status_code, other.status_code) == (201, 200, 409)


async def test_a_batch_answers_a_taken_key_with_its_job(client):
    _, held = await post(client, "b-1")
    response = await client.post("/api/v1/jobs/batch", json={"jobs": [
        {"type": "system.noop", "key": "b-1"}, {"type": "system.noop", "key": "b-2"}]})
    assert response.status_code == 201
    ids = response.json()["ids"]
    assert ids[0] == held["id"] and ids[1] != held["id"]
    twice = await client.post("/api/v1/jobs/batch", json={"jobs": [
        {"type": "system.noop", "key": "b-3"}, {"type": "system.noop", "key": "b-3"}]})
    assert twice.status_code == 422
    assert twice.json()["errors"][0]["field"] == "jobs[1].key"


@pytest.mark.parametrize("key", ["", "x" * 256])
async def test_a_key_out_of_bounds_is_a_422(client, key):
    status, body = await post(client, key)
    assert status == 422 and body["errors"][0]["field"] == "key"


async def test_enqueue_in_a_transaction_returns_the_holder_of_a_key(backend: Backend):
    async with backend.transaction() as conn:
        [first] = await jobs.enqueue(conn, [jobs.JobRequest(type="system.noop", key="tx")])
        [again] = await jobs.enqueue(conn, [jobs.JobRequest(type="system.noop", key="tx")])
    assert first == again
    with pytest.raises(errors.InvalidRequest):
        async with backend.transaction() as conn:
            await jobs.enqueue(conn, [jobs.JobRequest(type="system.noop", key="")])
