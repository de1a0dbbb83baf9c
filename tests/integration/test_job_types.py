"""A user's own job types (tests/userapp, a package outside service/ and workers/): declared
through `import jobq`, listed and validated by the API, run by a real `jobq worker --app`; sync
code in a thread or a child process; BullMQ's retry semantics, each against a real worker."""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from datetime import datetime

import pytest

import tests.userapp.jobs  # noqa: F401  (declares the types in this process too, as `--app` does)
from service.backend import Backend
from tests.integration.test_worker import eventually, history, status_is

pytestmark = pytest.mark.slow

APP = ("--app", "tests.userapp.jobs")


async def submit(client, type_: str, payload: dict, **fields) -> dict:
    response = await client.post("/api/v1/jobs", json={"type": type_, "payload": payload,
                                                       **fields})
    assert response.status_code == 201, response.text
    return response.json()


# -- declaring, listing, validating ------------------------------------------------------------


async def test_job_types_lists_each_type_with_its_queue_defaults_and_schema(client):
    response = await client.get("/api/v1/job-types")
    assert response.status_code == 200
    types = {t["name"]: t for t in response.json()["items"]}
    assert {"system.noop", "system.sleep", "mesh.convert", "userapp.add",
            "userapp.spin", "userapp.flaky", "userapp.nap"} <= types.keys()
    add = types["userapp.add"]
    assert (add["queue"], add["priority"], add["max_attempts"], add["runs_in"]) == (
        "userapp", 5, 3, "async")
    assert add["description"] == "Adds two numbers, reporting progress."
    schema = add["payload_schema"]["$defs"]["UserappAddPayload"]
    assert schema["required"] == ["a"]
    assert schema["properties"] == {"a": {"type": "integer"},
                                    "b": {"type": "integer", "default": 1}}
    flaky = types["userapp.flaky"]
    assert flaky["backoff"] == {"kind": "list", "base_seconds": 0.3, "cap_seconds": 1.2,
                                "jitter": 0.0, "delays": [0.3, 1.2]}
    assert (flaky["max_attempts"], flaky["permanent_errors"], flaky["runs_in"]) == (
        4, ["Unfixable"], "thread")
    assert types["userapp.nap"]["retry_timeouts"] is False
    assert types["userapp.spin"]["runs_in"] == "process"
    assert types["mesh.convert"]["max_attempts"] == 2


async def test_an_unknown_type_is_a_422_listing_the_known_ones(client):
    response = await client.post("/api/v1/jobs", json={"type": "userapp.nope"})
    assert response.status_code == 422
    assert "userapp.add" in response.json()["detail"]
    assert response.json()["errors"][0]["field"] == "type"


async def test_a_payload_that_does_not_match_the_declaration_names_the_field(client):
    response = await client.post("/api/v1/jobs",
                                 json={"type": "userapp.add", "payload": {"a": "one"}})
    assert response.status_code == 422
    assert response.json()["errors"] == [{"field": "payload.a",
                                          "message": "Expected `int`, got `str`"}]
    missing = await client.post("/api/v1/jobs", json={"type": "userapp.add", "payload": {}})
    assert missing.status_code == 422
    assert "a" in missing.json()["errors"][0]["message"]


def test_the_declarations_import_without_their_code():
    code = ("import sys, tests.userapp.jobs, service.api.app; "
            "print('tests.userapp.cpu' in sys.modules, 'trimesh' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == ["False", "False"]


@pytest.mark.parametrize(("app", "says"), [
    ("tests.userapp.missing", "--app tests.userapp.missing cannot be imported"),
    ("tests.userapp.twice", "job type 'system.sleep' is declared twice"),
])
def test_an_app_that_cannot_load_stops_the_worker_with_one_line(database_url, app, says):
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "worker", "--app", app],
        env={**os.environ, "DATABASE_URL": database_url}, capture_output=True, text=True,
        timeout=60)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("jobq worker: ") and says in last, done.stderr
    assert "Traceback" not in done.stderr


# -- running --------------------------------------------------------------------------------


async def test_a_user_type_submitted_over_rest_runs_on_a_worker_with_its_app(client,
                                                                              start_worker):
    job = await submit(client, "userapp.add", {"a": 2, "b": 40})
    assert (job["queue"], job["priority"]) == ("userapp", 5)
    start_worker(*APP)
    done = await eventually(status_is(client, job["id"], "succeeded", "failed"), timeout=30)
    assert done["result"] == {"sum": 42, "attempt": 1}


async def heartbeats(backend: Backend) -> list[datetime]:
    async with backend.connection() as conn:
        return [r["last_heartbeat"] for r in
                await conn.fetch("SELECT last_heartbeat FROM procrastinate_workers")]


async def test_a_cpu_bound_job_runs_in_a_child_while_the_heartbeat_goes_on(
        client, backend: Backend, start_worker):
    start_worker(*APP)
    await eventually(lambda: heartbeats(backend))
    job = await submit(client, "userapp.spin", {"seconds": 5})
    await eventually(status_is(client, job["id"], "running"))
    seen = set()
    while (current := (await client.get(f"/api/v1/jobs/{job['id']}")).json())["status"] \
            == "running":
        seen.update(await heartbeats(backend))
        await asyncio.sleep(0.2)
    assert current["status"] == "succeeded", current
    # Heartbeats every second (JOBQ_HEARTBEAT_SECONDS=1) kept landing while the child spun.
    assert len(seen) >= 3, seen
    assert current["result"]["pid"] != 0 and current["result"]["turns"] > 0
    stages = {e["event"] for e in (await history(client, job["id"]))["items"]}
    assert "succeeded" in stages


def tree_cpu_seconds(pid: int) -> float:
    """CPU time used so far by `pid` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
            ticks[int(entry)] = int(fields[11]) + int(fields[12])
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += ticks.get(current, 0)
        todo += children.get(current, [])
    return total / os.sysconf("SC_CLK_TCK")


async def test_a_cpu_bound_job_past_its_timeout_is_killed(client, start_worker):
    worker = start_worker(*APP)
    job = await submit(client, "userapp.spin", {"seconds": 60}, timeout_seconds=2,
                       max_attempts=1)
    done = await eventually(status_is(client, job["id"], "failed"), timeout=30)
    assert (done["attempts"], done["error"]["type"]) == (1, "JobTimeout")
    # The child was killed: nothing under the worker burns CPU any more (a spinning child
    # would use about 1 s per second).
    before = tree_cpu_seconds(worker.pid)
    await asyncio.sleep(1.5)
    assert tree_cpu_seconds(worker.pid) - before < 0.5
    after = await submit(client, "userapp.add", {"a": 1})
    await eventually(status_is(client, after["id"], "succeeded"), timeout=15)


async def test_a_sync_job_in_a_thread_stops_when_told_and_leaves_the_loop_free(client,
                                                                                start_worker):
    start_worker(*APP)
    napping = await submit(client, "userapp.nap", {"seconds": 30})
    await eventually(status_is(client, napping["id"], "running"))
    quick = await submit(client, "userapp.add", {"a": 1})
    await eventually(status_is(client, quick["id"], "succeeded"), timeout=10)
    assert (await client.post(f"/api/v1/jobs/{napping['id']}/cancel")).status_code == 200
    await eventually(status_is(client, napping["id"], "cancelled"), timeout=10)


# -- BullMQ's retry semantics ----------------------------------------------------------------


async def test_any_exception_is_retried_until_the_attempts_run_out(client, start_worker):
    start_worker(*APP)
    job = await submit(client, "userapp.flaky", {"fail_times": 9}, max_attempts=3)
    done = await eventually(status_is(client, job["id"], "failed"), timeout=30)
    record = await history(client, job["id"])
    assert [a["outcome"] for a in record["attempts"]] == ["retry", "retry", "failed"]
    assert done["error"] == {"type": "ValueError", "message": "attempt 3 fails on purpose",
                             "retryable": True}


@pytest.mark.parametrize("error", ["Unfixable", "PermanentJobError"])
async def test_a_permanent_error_fails_at_once(client, start_worker, error):
    start_worker(*APP)
    job = await submit(client, "userapp.flaky", {"fail_times": 1, "error": error})
    done = await eventually(status_is(client, job["id"], "failed"), timeout=30)
    assert (done["attempts"], done["error"]["type"], done["error"]["retryable"]) == (
        1, error, False)


def retry_waits(record: dict) -> list[float]:
    """Seconds between the end of each failed attempt and the start of the next."""
    attempts = record["attempts"]
    return [(datetime.fromisoformat(b["started_at"]) - datetime.fromisoformat(a["finished_at"]))
            .total_seconds() for a, b in itertools.pairwise(attempts)]


async def test_the_types_list_of_delays_spaces_the_attempts(client, start_worker):
    start_worker(*APP)
    job = await submit(client, "userapp.flaky", {"fail_times": 3})
    done = await eventually(status_is(client, job["id"], "succeeded"), timeout=30)
    assert done["attempts"] == 4
    waits = retry_waits(await history(client, job["id"]))
    # 0.3 s, 1.2 s, then 1.2 s again (the last delay repeats); a claim may lag by the poll
    # interval (0.2 s) and a commit or two.
    assert [round(w, 1) >= d for w, d in zip(waits, (0.3, 1.2, 1.2), strict=True)] == [True] * 3
    assert all(w < d + 0.8 for w, d in zip(waits, (0.3, 1.2, 1.2), strict=True)), waits


async def test_a_job_overrides_its_types_backoff(client, start_worker):
    start_worker(*APP)
    job = await submit(client, "userapp.flaky", {"fail_times": 2},
                       backoff={"kind": "fixed", "base_seconds": 2, "jitter": 0})
    await eventually(status_is(client, job["id"], "succeeded"), timeout=30)
    waits = retry_waits(await history(client, job["id"]))
    assert len(waits) == 2 and all(2 <= w < 2.8 for w in waits), waits


async def test_an_invalid_backoff_is_a_422_naming_the_field(client):
    for backoff, field in [({"kind": "linear"}, "backoff.kind"),
                           ({"kind": "list"}, "backoff.delays"),
                           ({"delays": [1, -5]}, "backoff.delays[1]"),
                           ({"kind": "fixed", "delays": [1]}, "backoff.delays")]:
        response = await client.post("/api/v1/jobs", json={
            "type": "userapp.flaky", "backoff": backoff})
        assert response.status_code == 422, backoff
        assert field in [e["field"] for e in response.json()["errors"]], response.json()


async def test_a_timeout_is_retried_like_any_failure(client, start_worker):
    start_worker(*APP)
    job = await submit(client, "userapp.spin", {"seconds": 60}, timeout_seconds=1,
                       max_attempts=2, backoff={"base_seconds": 0.1})
    done = await eventually(status_is(client, job["id"], "failed"), timeout=30)
    record = await history(client, job["id"])
    assert [a["outcome"] for a in record["attempts"]] == ["retry", "failed"]
    assert done["error"]["type"] == "JobTimeout" and done["error"]["retryable"] is True


async def test_a_type_that_says_so_does_not_retry_its_timeouts(client, start_worker):
    start_worker(*APP)
    job = await submit(client, "userapp.nap", {"seconds": 60}, timeout_seconds=1)
    done = await eventually(status_is(client, job["id"], "failed"), timeout=30)
    assert (done["attempts"], done["max_attempts"]) == (1, 3)
    assert done["error"]["type"] == "JobTimeout" and done["error"]["retryable"] is False
