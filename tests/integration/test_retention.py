"""Retention: the queues' policies and the jobs' own delete finished jobs with their history and
files, and nothing else; the clean route; purge_finished; the file race."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from service import jobs, maintenance, retention
from service.backend import Backend
from service.domain import jobtypes

NOOP = jobtypes.SYSTEM_NOOP.name
QUEUE_STATUS = {"succeeded": "succeeded", "failed": "failed", "cancelled": "aborted",
                "queued": "todo"}


async def _count(backend, table: str) -> int:
    async with backend.connection() as conn:
        return await conn.fetchval(f"SELECT count(*) FROM {table}")


async def make_jobs(backend: Backend, count: int, status: str, age: timedelta,
                    queue: str = "default", **fields) -> list[uuid.UUID]:
    """`count` jobs that ended `status` `age` ago (submitted then too), the first oldest, one
    second apart."""
    async with backend.transaction() as conn:
        ids = await jobs.enqueue(conn, [jobs.JobRequest(type=NOOP, queue=queue, **fields)
                                        for _ in range(count)])
        await conn.execute(
            "UPDATE procrastinate_jobs SET status = $2 "
            "WHERE id IN (SELECT queue_job_id FROM jobs WHERE id = ANY($1::uuid[]))",
            ids, QUEUE_STATUS[status])
        for i, job_id in enumerate(ids):
            shift = age + timedelta(seconds=count - i)
            await conn.execute("UPDATE jobs SET created_at = now() - $2::interval WHERE id = $1",
                               job_id, shift)
            await conn.execute("UPDATE job_events SET at = now() - $2::interval WHERE job_id = $1",
                               job_id, shift)
    return ids


async def left(backend: Backend) -> set[uuid.UUID]:
    async with backend.connection() as conn:
        return {r["id"] for r in await conn.fetch("SELECT id FROM jobs")}


async def test_the_default_policy_deletes_by_age_per_status_and_never_active_jobs(backend):
    old_ok = await make_jobs(backend, 2, "succeeded", timedelta(days=2))
    new_ok = await make_jobs(backend, 2, "succeeded", timedelta(hours=1))
    week_failed = await make_jobs(backend, 1, "failed", timedelta(days=3))
    old_failed = await make_jobs(backend, 1, "failed", timedelta(days=8))
    old_cancelled = await make_jobs(backend, 1, "cancelled", timedelta(days=2))
    old_queued = await make_jobs(backend, 1, "queued", timedelta(days=30))

    deleted = await retention.apply_retention(backend, batch=2, pause_ratio=0)

    assert deleted == {"queues": 4, "jobs": 0}
    assert await left(backend) == {*new_ok, *week_failed, *old_queued}
    assert not {*old_ok, *old_failed, *old_cancelled} & await left(backend)
    assert await _count(backend, "job_events") == 4  # the kept jobs' only
    assert await retention.apply_retention(backend) == {"queues": 0, "jobs": 0}


async def test_the_count_limit_keeps_the_newest(client, backend):
    await client.patch("/api/v1/queues/default", json={
        "retention": {"succeeded": {"max_age_seconds": None, "max_count": 3}}})
    ids = await make_jobs(backend, 5, "succeeded", timedelta(minutes=1))
    failed = await make_jobs(backend, 2, "failed", timedelta(minutes=1))

    assert (await retention.apply_retention(backend, pause_ratio=0))["queues"] == 2
    assert await left(backend) == {*ids[2:], *failed}


async def test_no_limit_keeps_everything(client, backend):
    await client.patch("/api/v1/queues/default", json={
        "retention": {"succeeded": {"max_age_seconds": None, "max_count": None}}})
    ids = await make_jobs(backend, 3, "succeeded", timedelta(days=400))
    assert await retention.apply_retention(backend) == {"queues": 0, "jobs": 0}
    assert await left(backend) == set(ids)


async def test_a_jobs_own_retention_overrides_its_queues(backend):
    gone_now = await make_jobs(backend, 1, "succeeded", timedelta(seconds=1),
                               remove_on_complete=True)
    kept_forever = await make_jobs(backend, 1, "succeeded", timedelta(days=30),
                                   remove_on_complete=False)
    hour = {"remove_on_fail": {"age": 3600}}
    failed_2h = await make_jobs(backend, 1, "failed", timedelta(hours=2), **hour)
    failed_10m = await make_jobs(backend, 1, "failed", timedelta(minutes=10), **hour)
    # An override for failures leaves a success to the queue's policy (1 day).
    ok_under_fail_rule = await make_jobs(backend, 1, "succeeded", timedelta(days=2), **hour)
    # Kept only while among the newest 1 succeeded job of its queue: the older one goes.
    counted = await make_jobs(backend, 2, "succeeded", timedelta(minutes=5), queue="counted",
                              remove_on_complete=1)

    deleted = await retention.apply_retention(backend, pause_ratio=0)

    assert deleted == {"queues": 1, "jobs": 3}
    assert await left(backend) == {*kept_forever, *failed_10m, counted[1]}
    assert not {*gone_now, *failed_2h, *ok_under_fail_rule, counted[0]} & await left(backend)


async def test_the_job_pass_walks_every_job_with_its_own_retention_in_steps(backend,
                                                                           monkeypatch):
    monkeypatch.setattr(retention, "JOB_RETENTION_SCAN", 2)
    kept = await make_jobs(backend, 3, "succeeded", timedelta(days=30), remove_on_complete=False)
    gone = await make_jobs(backend, 3, "succeeded", timedelta(minutes=1), remove_on_complete=True)
    assert (await retention.apply_retention(backend, pause_ratio=0))["jobs"] == 3
    assert await left(backend) == set(kept)
    assert not set(gone) & await left(backend)


async def _file(conn, job_id: uuid.UUID, role: str = "output", file_id: uuid.UUID | None = None):
    if file_id is None:
        file_id = uuid.uuid4()
        await conn.execute("INSERT INTO files (id, name, content_type, size, sha256) "
                           "VALUES ($1, 'out.glb', 'model/gltf-binary', 3, '')", file_id)
        await conn.execute("INSERT INTO file_chunks (file_id, seq, data) VALUES ($1, 0, 'abc')",
                           file_id)
        await conn.execute("INSERT INTO conversion_cache (key, output_file_id, result) "
                           "VALUES ($1, $2, '{}')", uuid.uuid4().hex, file_id)
    await conn.execute("INSERT INTO job_files (job_id, role, position, file_id) "
                       "VALUES ($1, $2, 0, $3)", job_id, role, file_id)
    return file_id


async def test_a_jobs_files_go_with_it_and_a_shared_one_with_its_last_job(backend):
    [alone, first, second] = await make_jobs(backend, 3, "succeeded", timedelta(days=2))
    [young] = await make_jobs(backend, 1, "succeeded", timedelta(hours=1))
    async with backend.transaction() as conn:
        own = await _file(conn, alone, "input")
        shared = await _file(conn, first)
        await _file(conn, second, file_id=shared)
        kept = await _file(conn, young, file_id=await _file(conn, first, "input"))
    await retention.apply_retention(backend, pause_ratio=0)
    async with backend.connection() as conn:
        files = {r["id"] for r in await conn.fetch("SELECT id FROM files")}
    assert own not in files and shared not in files
    assert files == {kept}, "the young job's file stays"
    assert await _count(backend, "file_chunks") == 1
    assert await _count(backend, "conversion_cache") == 1


async def test_two_deletions_of_the_last_jobs_sharing_a_file_leave_no_orphan(backend):
    """Each transaction deletes one of the two jobs using the file. Before the fix, each saw
    the other's link (not yet committed as gone) and kept the file."""
    [one, two] = await make_jobs(backend, 2, "succeeded", timedelta(hours=1))
    async with backend.transaction() as conn:
        shared = await _file(conn, one)
        await _file(conn, two, file_id=shared)

    async with backend.connection() as first, backend.connection() as second:
        tx1 = first.transaction()
        await tx1.start()
        assert (await first.fetchrow("SELECT * FROM jobq_delete_job($1)", one))["verdict"] == \
            "deleted"

        async def delete_two():
            async with second.transaction():
                return (await second.fetchrow("SELECT * FROM jobq_delete_job($1)", two))

        other = asyncio.create_task(delete_two())
        await asyncio.sleep(0.5)
        assert not other.done(), "the second deletion waits for the first's lock on the file"
        await tx1.commit()
        assert (await asyncio.wait_for(other, 10))["verdict"] == "deleted"

    assert await _count(backend, "files") == 0
    assert await _count(backend, "file_chunks") == 0
    assert await _count(backend, "conversion_cache") == 0


async def test_clean_deletes_one_status_of_one_queue_oldest_first_up_to_the_limit(client,
                                                                                  backend):
    old = await make_jobs(backend, 3, "failed", timedelta(hours=2))
    recent = await make_jobs(backend, 1, "failed", timedelta(minutes=5))
    other_status = await make_jobs(backend, 1, "succeeded", timedelta(hours=2))
    other_queue = await make_jobs(backend, 1, "failed", timedelta(hours=2), queue="renders")
    body = {"status": "failed", "older_than_seconds": 3600, "limit": 2}

    response = await client.post("/api/v1/queues/default/clean", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"deleted": 2}
    assert await left(backend) == {old[2], *recent, *other_status, *other_queue}
    assert (await client.post("/api/v1/queues/default/clean", json=body)).json() == {
        "deleted": 1}
    assert (await client.post("/api/v1/queues/default/clean", json={"status": "failed"})
            ).json() == {"deleted": 1}, "no age: every failed job"


@pytest.mark.parametrize(("body", "field"), [
    ({"status": "done"}, "status"),
    ({"status": "queued"}, "status"),
    ({"status": "failed", "limit": 0}, "limit"),
    ({"status": "failed", "older_than_seconds": -1}, "older_than_seconds"),
    ({"status": "failed", "older_than_seconds": "60"}, "older_than_seconds"),
    ({}, "body"),
])
async def test_a_bad_clean_request_is_a_422_naming_the_field(client, body, field):
    response = await client.post("/api/v1/queues/default/clean", json=body)
    assert response.status_code == 422, response.text
    assert any(e["field"] == field for e in response.json()["errors"]), response.json()


@pytest.mark.parametrize(("value", "field"), [
    (-1, "remove_on_complete"),
    ({"age": -5}, "remove_on_complete.age"),
    ({"count": -1}, "remove_on_complete.count"),
    ({}, "remove_on_complete"),
    ({"age": 5, "days": 1}, "remove_on_complete"),  # the message names `days`
    ("yes", "remove_on_complete"),
])
async def test_a_bad_remove_option_is_a_422_naming_the_field(client, value, field):
    response = await client.post("/api/v1/jobs", json={
        "type": "system.noop", "remove_on_complete": value})
    assert response.status_code == 422, response.text
    assert any(e["field"] == field for e in response.json()["errors"]), response.json()


async def test_remove_options_are_stored_as_the_jobs_retention(client, backend):
    response = await client.post("/api/v1/jobs", json={
        "type": "system.noop", "remove_on_complete": {"age": 60, "count": 10},
        "remove_on_fail": False})
    assert response.status_code == 201
    async with backend.connection() as conn:
        stored = await conn.fetchval("SELECT retention FROM jobs")
    assert stored == {"succeeded": {"max_age_seconds": 60, "max_count": 10},
                      "failed": {"keep": True}}


async def test_purge_deletes_finished_jobs_in_batches_and_keeps_the_rest(backend):
    old = await make_jobs(backend, 5, "succeeded", timedelta(days=1))
    new = await make_jobs(backend, 1, "succeeded", timedelta(0))
    queued = await make_jobs(backend, 1, "queued", timedelta(days=1))

    deleted = await retention.purge_finished(backend, timedelta(hours=1), batch=2)

    assert deleted == 5
    assert not set(old) & await left(backend)
    assert await left(backend) == {*new, *queued}
    assert await _count(backend, "procrastinate_jobs") == 2
    assert await _count(backend, "job_events") == 2  # their `submitted` events only
    assert await retention.purge_finished(backend, timedelta(hours=1)) == 0


@pytest.mark.slow
async def test_a_worker_applies_retention_unless_another_holds_the_lock(backend, start_worker):
    async with maintenance.exclusively(backend, "apply_retention") as mine:
        assert mine
        old = await make_jobs(backend, 3, "succeeded", timedelta(days=2))
        start_worker(env={"JOBQ_RETENTION_INTERVAL_SECONDS": "0.2"})
        await asyncio.sleep(2)
        assert await left(backend) == set(old), "another process runs retention: it waits"
    for _ in range(100):
        if not await left(backend):
            break
        await asyncio.sleep(0.1)
    assert await left(backend) == set()
