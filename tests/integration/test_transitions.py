"""The jobq_* functions that change a job's state: which changes they allow, and that Python's
vocabulary is theirs."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from service import attempts, jobs, maintenance
from service.backend import Backend
from service.domain import outcome
from service.domain.status import CANCELLABLE, RETRYABLE_BY_CLIENT, TERMINAL, Status
from workers import leases

# How a test puts a job in each public status (job_overview derives it from these).
QUEUE_STATE = {
    Status.QUEUED: ("todo", "NULL"),
    Status.SCHEDULED: ("todo", "now() + interval '1 hour'"),
    Status.RUNNING: ("doing", "NULL"),
    Status.SUCCEEDED: ("succeeded", "NULL"),
    Status.FAILED: ("failed", "NULL"),
    Status.CANCELLED: ("aborted", "NULL"),
}


async def _job_in(backend: Backend, status: Status) -> uuid.UUID:
    queue_status, scheduled_at = QUEUE_STATE[status]
    async with backend.transaction() as conn:
        [job_id] = await jobs.enqueue(conn, [jobs.JobRequest(type="system.noop")])
        await conn.execute(
            f"UPDATE procrastinate_jobs SET status = $2, scheduled_at = {scheduled_at} "
            "WHERE id = (SELECT queue_job_id FROM jobs WHERE id = $1)", job_id, queue_status)
        assert await conn.fetchval("SELECT status FROM job_overview WHERE id = $1",
                                   job_id) == status
    return job_id


async def _verdict(backend: Backend, function: str, job_id: uuid.UUID) -> tuple[str, str]:
    async with backend.connection() as conn:
        row = await conn.fetchrow(f"SELECT * FROM {function}($1)", job_id)
    return row["verdict"], row["prior_status"]


@pytest.mark.parametrize("status", list(Status))
async def test_cancel_is_allowed_exactly_where_python_says(backend, status):
    verdict, prior = await _verdict(backend, "jobq_cancel_job", await _job_in(backend, status))
    assert prior == status
    expected = ("cancel_requested" if status is Status.RUNNING else "cancelled"
                ) if status in CANCELLABLE else "refused"
    assert verdict == expected


@pytest.mark.parametrize("status", list(Status))
async def test_retry_is_allowed_exactly_where_python_says(backend, status):
    verdict, _ = await _verdict(backend, "jobq_retry_job", await _job_in(backend, status))
    assert verdict == ("retried" if status in RETRYABLE_BY_CLIENT else "refused")


@pytest.mark.parametrize("status", list(Status))
async def test_delete_is_allowed_exactly_where_python_says(backend, status):
    job_id = await _job_in(backend, status)
    verdict, _ = await _verdict(backend, "jobq_delete_job", job_id)
    assert verdict == ("deleted" if status in TERMINAL else "refused")
    async with backend.connection() as conn:
        left = await conn.fetchval("SELECT count(*) FROM jobs WHERE id = $1", job_id)
    assert left == (0 if status in TERMINAL else 1)


@pytest.mark.parametrize("function", ["jobq_cancel_job", "jobq_retry_job", "jobq_delete_job"])
async def test_an_unknown_job_gets_no_verdict(backend, function):
    assert await _verdict(backend, function, uuid.uuid4()) == (None, None)


async def _claimed(backend: Backend, request: jobs.JobRequest | None = None) -> leases.Claimed:
    async with backend.transaction() as conn:
        await jobs.enqueue(conn, [request or jobs.JobRequest(type="system.noop")])
    async with backend.connection() as conn:
        worker_id = await leases.register(conn, "ghost", "nowhere", 1, [], 1)
        [claimed] = await leases.claim(conn, worker_id, "ghost", None, 1)
    return claimed


async def test_finish_accepts_exactly_the_outcomes_python_decides(backend):
    claimed = await _claimed(backend)
    async with backend.connection() as conn:
        for word in ("lost", "bogus"):
            with pytest.raises(asyncpg.RaiseError, match="unknown attempt outcome"):
                await attempts.finish(conn, [attempts.Ending(claimed.attempt_id, word)])
        recorded = await attempts.finish(
            conn, [attempts.Ending.of(claimed.attempt_id, outcome.Succeeded())])
    assert recorded == {claimed.attempt_id: "succeeded"}


@pytest.mark.parametrize("ending", [outcome.Succeeded(), outcome.Interrupted()])
async def test_a_finished_attempt_leaves_no_worker_on_the_queue_row(backend, ending):
    # Revision 0019: the attempt keeps who ran it; the queue row names only a running job's
    # worker, so a worker's unregistration rewrites none of the rows it finished.
    claimed = await _claimed(backend)
    async with backend.connection() as conn:
        row = ("SELECT pj.worker_id, pj.xmin::text AS version FROM procrastinate_jobs AS pj "
               "JOIN jobs AS j ON j.queue_job_id = pj.id WHERE j.id = $1")
        running = await conn.fetchrow(row, claimed.job_id)
        assert running["worker_id"] is not None
        await attempts.finish(conn, [attempts.Ending.of(claimed.attempt_id, ending)])
        finished = await conn.fetchrow(row, claimed.job_id)
        assert finished["worker_id"] is None
        ran_by = await conn.fetchval(
            "SELECT worker_id FROM job_attempts WHERE id = $1", claimed.attempt_id)
        assert ran_by == running["worker_id"]
        await leases.unregister(conn, running["worker_id"])
        assert await conn.fetchrow(row, claimed.job_id) == finished


async def test_an_interrupted_job_a_client_cancelled_is_recorded_cancelled(backend):
    claimed = await _claimed(backend)
    verdict, _ = await _verdict(backend, "jobq_cancel_job", claimed.job_id)
    assert verdict == "cancel_requested"
    async with backend.connection() as conn:
        recorded = await attempts.finish(
            conn, [attempts.Ending.of(claimed.attempt_id, outcome.Interrupted())])
        status = await conn.fetchval("SELECT status FROM job_overview WHERE id = $1",
                                     claimed.job_id)
    assert recorded == {claimed.attempt_id: "cancelled"}
    assert status == "cancelled"


async def _silence_workers(backend: Backend) -> None:
    async with backend.connection() as conn:
        await conn.execute(
            "UPDATE procrastinate_workers SET last_heartbeat = now() - interval '1 hour'")


async def test_recovery_fails_a_lost_job_without_attempts_left(backend):
    claimed = await _claimed(backend, jobs.JobRequest(type="system.noop", max_attempts=1))
    await _silence_workers(backend)
    assert await maintenance.recover_stalled(backend, 30) == {
        "requeued": 0, "failed": 1, "cancelled": 0}
    async with backend.connection() as conn:
        row = await conn.fetchrow("SELECT status, error FROM job_overview WHERE id = $1",
                                  claimed.job_id)
    assert row["status"] == "failed"
    assert row["error"]["type"] == "WorkerLost"


async def test_recovery_cancels_a_lost_job_a_client_cancelled(backend):
    claimed = await _claimed(backend)
    await _verdict(backend, "jobq_cancel_job", claimed.job_id)
    await _silence_workers(backend)
    assert await maintenance.recover_stalled(backend, 30) == {
        "requeued": 0, "failed": 0, "cancelled": 1}


async def test_progress_is_refused_once_the_lease_is_lost(backend):
    claimed = await _claimed(backend)
    async with backend.connection() as conn:
        assert await leases.write_progress(conn, claimed.attempt_id, 40, "half", None)
        await attempts.finish(conn, [attempts.Ending.of(claimed.attempt_id,
                                                        outcome.Interrupted())])
        assert not await leases.write_progress(conn, claimed.attempt_id, 80, "late", None)
        assert not await leases.hold_lease(conn, claimed.attempt_id)
        progress = await conn.fetchval("SELECT progress FROM jobs WHERE id = $1",
                                       claimed.job_id)
    assert progress == 40


async def test_one_process_at_a_time_runs_a_maintenance_operation(backend):
    async with maintenance.exclusively(backend, "recover_stalled") as first:
        async with maintenance.exclusively(backend, "recover_stalled") as second:
            assert (first, second) == (True, False)
        async with maintenance.exclusively(backend, "purge_finished") as other:
            assert other, "each operation has its own lock"
    async with maintenance.exclusively(backend, "recover_stalled") as again:
        assert again, "the lock is released afterwards"
