"""Per-queue settings over REST: read, changed, checked (422 naming the field), and applied to
the jobs submitted afterwards."""

from __future__ import annotations

import pytest

SLEEP = {"type": "system.sleep", "payload": {"seconds": 0.01}}


async def test_an_unknown_queue_is_404_until_it_has_jobs_or_settings(client):
    response = await client.get("/api/v1/queues/nowhere")
    assert response.status_code == 404
    assert "PATCH /api/v1/queues/nowhere" in response.json()["detail"]
    assert (await client.patch("/api/v1/queues/nowhere", json={})).status_code == 200
    assert (await client.get("/api/v1/queues/nowhere")).status_code == 200


async def test_a_queue_with_jobs_has_the_default_policy(client):
    assert (await client.post("/api/v1/jobs", json=SLEEP)).status_code == 201
    queue = (await client.get("/api/v1/queues/default")).json()
    assert queue["name"] == "default"
    assert queue["counts"]["queued"] == 1
    assert queue["paused"] is False
    assert queue["rate_limit"] is None and queue["concurrency_limit"] is None
    assert queue["max_attempts"] is None and queue["timeout_seconds"] is None
    assert queue["retention"] == {
        "succeeded": {"max_age_seconds": 86400, "max_count": 1000},
        "failed": {"max_age_seconds": 604800, "max_count": None},
        "cancelled": {"max_age_seconds": 86400, "max_count": None},
    }


async def test_patch_changes_only_what_it_names_and_null_removes_a_limit(client):
    body = {"rate_limit": {"max_starts": 10, "per_seconds": 1}, "concurrency_limit": 2,
            "retention": {"failed": {"max_count": 50}}}
    queue = (await client.patch("/api/v1/queues/renders", json=body)).json()
    assert queue["rate_limit"] == {"max_starts": 10, "per_seconds": 1.0}
    assert queue["concurrency_limit"] == 2
    assert queue["retention"]["failed"] == {"max_age_seconds": 604800, "max_count": 50}

    queue = (await client.patch("/api/v1/queues/renders",
                                json={"rate_limit": None, "paused": True})).json()
    assert queue["rate_limit"] is None
    assert queue["concurrency_limit"] == 2, "not named, so unchanged"
    assert queue["paused"] is True
    assert (await client.get("/api/v1/queues/renders")).json() == queue


@pytest.mark.parametrize(("body", "field"), [
    ({"concurrency_limit": 0}, "concurrency_limit"),
    ({"rate_limit": {"max_starts": 10, "per_seconds": 0}}, "rate_limit.per_seconds"),
    ({"rate_limit": {"max_starts": 0, "per_seconds": 1}}, "rate_limit.max_starts"),
    ({"max_attempts": 101}, "max_attempts"),
    ({"timeout_seconds": -1}, "timeout_seconds"),
    ({"backoff": {"jitter": 2}}, "backoff.jitter"),
    ({"retention": {"succeeded": {"max_count": -1}}}, "retention.succeeded.max_count"),
    ({"retention": {"failed": {"max_age_seconds": -5}}}, "retention.failed.max_age_seconds"),
    ({"max_attempts": "3"}, "max_attempts"),
    ({"rate_limit": {"max_starts": 10}}, "rate_limit"),
    ({"retention": {"done": {}}}, "retention"),
    ({"speed": 3}, "body"),
])
async def test_a_bad_value_is_a_422_naming_the_field(client, body, field):
    response = await client.patch("/api/v1/queues/renders", json=body)
    assert response.status_code == 422, response.text
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert any(e["field"] == field for e in problem["errors"]), problem
    # Nothing was written.
    assert (await client.get("/api/v1/queues/renders")).status_code == 404


async def test_a_bad_queue_name_is_a_422(client):
    response = await client.patch("/api/v1/queues/bad%20name", json={"paused": True})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "name"


async def test_queue_defaults_apply_to_jobs_that_leave_them_to_the_job_type(client):
    await client.patch("/api/v1/queues/default", json={
        "max_attempts": 7, "timeout_seconds": 12.5, "backoff": {"base_seconds": 3}})
    plain = (await client.post("/api/v1/jobs", json=SLEEP)).json()
    assert (plain["max_attempts"], plain["timeout_seconds"]) == (7, 12.5)
    own = (await client.post("/api/v1/jobs", json={
        **SLEEP, "max_attempts": 2, "timeout_seconds": 3})).json()
    assert (own["max_attempts"], own["timeout_seconds"]) == (2, 3)

    await client.patch("/api/v1/queues/default", json={"max_attempts": None})
    later = (await client.post("/api/v1/jobs", json=SLEEP)).json()
    assert later["max_attempts"] == 3, "the job type's again"


async def test_the_queue_backoff_is_stored_on_jobs_without_their_own(client, backend):
    await client.patch("/api/v1/queues/default", json={"backoff": {"base_seconds": 3}})
    plain = (await client.post("/api/v1/jobs", json=SLEEP)).json()
    own = (await client.post("/api/v1/jobs", json={
        **SLEEP, "backoff": {"cap_seconds": 9}})).json()
    async with backend.connection() as conn:
        rows = {str(r["id"]): r["backoff"]
                for r in await conn.fetch("SELECT id, backoff FROM jobs")}
    assert rows[plain["id"]] == {"base_seconds": 3}
    assert rows[own["id"]] == {"cap_seconds": 9}


async def test_the_queue_list_shows_each_queue_with_its_settings(client):
    await client.patch("/api/v1/queues/renders", json={"concurrency_limit": 2})
    await client.post("/api/v1/jobs", json=SLEEP)
    items = {q["name"]: q for q in (await client.get("/api/v1/queues")).json()["items"]}
    assert items["renders"]["concurrency_limit"] == 2
    assert items["default"]["counts"]["queued"] == 1
