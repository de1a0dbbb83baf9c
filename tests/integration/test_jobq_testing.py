"""jobq.testing's real worker: the fixture a user's tests get, against a real database."""

from __future__ import annotations

import pytest

import jobq
from jobq.testing import jobq_worker, wait_for  # noqa: F401  (the fixture, as a user imports it)
from service.backend import Backend
from tests.userapp import jobs as userapp

pytestmark = pytest.mark.slow


async def test_a_job_enqueued_in_a_transaction_runs_on_the_fixtures_worker(
        backend: Backend, database_url, jobq_worker):  # noqa: F811
    jobq_worker("tests.userapp.jobs", database_url)
    async with backend.transaction() as conn:
        job_id = await jobq.enqueue(conn, userapp.add, {"a": 20, "b": 22})
    done = await wait_for(database_url, job_id)
    assert (done["status"], done["result"]) == ("succeeded", {"sum": 42, "attempt": 1})


async def test_a_task_defers_itself_the_procrastinate_way(backend: Backend, database_url,
                                                          jobq_worker):  # noqa: F811
    jobq_worker("tests.userapp.jobs", database_url)
    async with backend.transaction() as conn:
        job_id = await userapp.add.defer_async(conn, a=1, b=1)
    assert (await wait_for(database_url, job_id))["result"]["sum"] == 2
