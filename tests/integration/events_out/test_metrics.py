"""/metrics from two real API processes while two real workers run the jobs: both answer the
same, and every job is counted once."""

from __future__ import annotations

import asyncio
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.backend import Backend

PER_PROCESS = {"jobq_api_event_streams"}


def samples(text: str) -> dict[tuple[str, tuple], float]:
    parsed = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            parsed[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return parsed


def value(scraped: dict, name: str, **labels: str) -> float:
    return scraped[(name, tuple(sorted(labels.items())))]


async def wait_until_done(client: httpx.AsyncClient, api: str, expected: int,
                          timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        queues = (await client.get(f"{api}/api/v1/queues")).json()["items"]
        default = next((q for q in queues if q["name"] == "default"), None)
        if default and default["counts"]["succeeded"] == expected:
            return
        assert time.monotonic() < deadline, queues
        await asyncio.sleep(0.2)


async def test_two_apis_answer_the_same_and_count_each_job_once(
        start_api, start_worker, backend: Backend):
    async with backend.connection() as conn:
        await conn.execute("TRUNCATE job_stats_daily, job_stats_histograms")
    first, second = start_api(), start_api()
    workers = [start_worker("--name", "metrics-1", "--concurrency", "5"),
               start_worker("--name", "metrics-2", "--concurrency", "5")]
    async with httpx.AsyncClient(timeout=10) as client:
        batch = [{"type": "system.noop"} for _ in range(30)]
        batch += [{"type": "system.sleep", "payload": {"seconds": 0, "fail_times": 1}}
                  for _ in range(10)]
        batch += [{"type": "system.noop", "delay_seconds": 3600} for _ in range(3)]
        response = await client.post(f"{first.url}/api/v1/jobs/batch", json={"jobs": batch})
        assert response.status_code == 201
        await wait_until_done(client, second.url, 40)
        await asyncio.sleep(2)  # both workers heartbeat (every 1 s in these tests)

        a = samples((await client.get(f"{first.url}/metrics")).text)
        b = samples((await client.get(f"{second.url}/metrics")).text)
        assert {k: v for k, v in a.items() if k[0] not in PER_PROCESS} == \
               {k: v for k, v in b.items() if k[0] not in PER_PROCESS}

        noop = {"queue": "default", "type": "system.noop"}
        sleep = {"queue": "default", "type": "system.sleep"}
        assert value(a, "jobq_jobs_submitted_total", **noop) == 33
        assert value(a, "jobq_jobs_submitted_total", **sleep) == 10
        assert value(a, "jobq_jobs_started_total", **noop) == 30
        assert value(a, "jobq_jobs_started_total", **sleep) == 20  # each failed once
        assert value(a, "jobq_jobs_succeeded_total", **noop) == 30
        assert value(a, "jobq_jobs_succeeded_total", **sleep) == 10
        assert value(a, "jobq_jobs_retried_total", reason="backoff", **sleep) == 10
        assert value(a, "jobq_job_run_seconds_count", type="system.sleep") == 20
        assert value(a, "jobq_job_run_seconds_bucket", type="system.noop", le="+Inf") == 30
        # bounds are 2^k ms: a no-op runs in well under 1.024 s
        assert value(a, "jobq_job_run_seconds_bucket", type="system.noop", le="1.024") == 30
        assert value(a, "jobq_job_queue_wait_seconds_count", type="system.noop") == 30
        assert value(a, "jobq_queue_jobs", queue="default", status="scheduled") == 3
        assert value(a, "jobq_queue_jobs", queue="default", status="queued") == 0
        assert value(a, "jobq_workers_live") == 2

        # Totals outlive the jobs they count, and the workers' sessions.
        async with backend.connection() as conn:
            await conn.execute("DELETE FROM procrastinate_jobs WHERE status = 'succeeded'")
        for worker in workers:
            worker.terminate()
            worker.wait(timeout=15)
        after = samples((await client.get(f"{second.url}/metrics")).text)
    assert value(after, "jobq_jobs_succeeded_total", **noop) == 30
    assert value(after, "jobq_jobs_started_total", **sleep) == 20
    assert value(after, "jobq_job_run_seconds_sum", type="system.sleep") == \
        value(a, "jobq_job_run_seconds_sum", type="system.sleep")
    # One count of each fact: the reports read the same rows.
    async with backend.connection() as conn:
        reported = await conn.fetchrow(
            "SELECT sum(succeeded) AS succeeded, sum(retried) AS retried FROM report_daily "
            "WHERE queue = 'default' AND type = 'system.sleep'")
    assert (reported["succeeded"], reported["retried"]) == (10, 10)
