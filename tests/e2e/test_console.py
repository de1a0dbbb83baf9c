"""The commands for people (`jobq submit`, `convert`, `jobs`, `queues`, `workers`) run as real
processes against a real `jobq serve` and `jobq worker` on the test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, serve_and_work

CORPUS = Path(__file__).resolve().parents[1] / "corpus"


KEY: dict[str, str] = {}
"""The operator key the commands send (JOBQ_KEY), made by `jobq keys create` for the module."""


def keys(database_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`jobq keys ...` on the database directly, as an admin at the server runs it."""
    return subprocess.run([sys.executable, "-m", "service.cli", "keys", *args],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "DATABASE_URL": database_url})


def secret_of(created: subprocess.CompletedProcess[str]) -> str:
    assert created.returncode == 0, created.stderr
    [secret] = [line.removeprefix("key: ") for line in created.stdout.splitlines()
                if line.startswith("key: ")]
    return secret


@pytest.fixture(scope="module")
def service(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `jobq serve` (authentication on) and a `jobq worker` on the test run's database, and an
    operator key for the commands; yields the API URL."""
    logs = tmp_path_factory.mktemp("console")
    KEY["operator"] = secret_of(keys(database_url, "create", "--name", "console-operator",
                                     "--role", "operator"))
    with serve_and_work(database_url, logs, "console-worker", env={"JOBQ_AUTH": "on"}) as (
            url, _):
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, (logs / "serve.log").read_text()[-3000:]
            time.sleep(0.2)
        yield url


def jobq(url: str, *args: str, cwd: Path | None = None,
         key: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service.cli", *args, "--url", url],
                          capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200",
                               "JOBQ_KEY": KEY["operator"] if key is None else key})


def test_keys_create_list_revoke_and_what_the_commands_say_without_one(
        service: str, database_url: str) -> None:
    created = keys(database_url, "create", "--name", "console-ci", "--queue", "default",
                   "--type", "system.noop", "--rate", "5", "--max-queued", "100")
    secret = secret_of(created)
    assert secret.startswith("jobq_")
    assert "created submitter key 'console-ci'" in created.stdout
    assert "queues: default; types: system.noop; limits: submissions_per_second=5, " \
           "max_queued=100" in created.stdout
    listed = keys(database_url, "list")
    assert "console-ci" in listed.stdout and secret[:12] in listed.stdout
    assert secret not in listed.stdout  # shown once, at creation only
    ok = jobq(service, "submit", "system.noop", "--json", key=secret)
    assert ok.returncode == 0, ok.stderr
    elsewhere = jobq(service, "submit", "system.noop", "--queue", "other", key=secret)
    assert elsewhere.returncode == 3 and "may not submit to the queue 'other'" in elsewhere.stderr
    refused = jobq(service, "workers", key=secret)
    assert refused.returncode == 3 and "needs the operator role" in refused.stderr
    revoked = keys(database_url, "revoke", secret[:12])
    assert revoked.returncode == 0 and "revoked submitter key 'console-ci'" in revoked.stdout
    assert "(revoked" in keys(database_url, "list", "--revoked").stdout
    gone = jobq(service, "jobs", "list", key=secret)
    assert gone.returncode == 3 and "revoked" in gone.stderr
    none = jobq(service, "queues", key="")
    assert none.returncode == 3 and "Authorization: Bearer" in none.stderr
    assert "Traceback" not in none.stderr
    unknown = keys(database_url, "revoke", "jobq_nothing")
    assert unknown.returncode == 1 and "No API key" in unknown.stderr


def test_submit_wait_follows_the_job_to_its_result(service: str) -> None:
    done = jobq(service, "submit", "system.sleep", "--payload", '{"seconds": 0.5}', "--wait",
                "--json")
    assert done.returncode == 0, done.stderr
    job = json.loads(done.stdout)
    assert job["status"] == "succeeded"
    assert job["result"]["slept_seconds"] >= 0.5


def test_submit_wait_exits_1_when_the_job_fails(service: str) -> None:
    done = jobq(service, "submit", "system.sleep", "--payload",
                '{"seconds": 0, "fail_times": 1, "permanent": true}', "--wait")
    assert done.returncode == 1
    assert "failed" in done.stdout


def test_errors_print_the_api_detail_and_no_traceback(service: str) -> None:
    unknown = jobq(service, "submit", "no.such.type")
    assert unknown.returncode == 3
    assert "Unknown job type" in unknown.stderr or "no.such.type" in unknown.stderr
    assert "Traceback" not in unknown.stderr

    bad = jobq(service, "submit", "system.sleep", "--payload", '{"seconds": "x"}')
    assert bad.returncode == 3
    assert "payload.seconds" in bad.stderr

    missing = jobq(service, "jobs", "show", "0b7c6e0e-0000-0000-0000-000000000000")
    assert missing.returncode == 3
    assert "Traceback" not in missing.stderr

    not_json = jobq(service, "submit", "system.sleep", "--payload", "{")
    assert not_json.returncode == 2
    assert "--payload" in not_json.stderr

    unreachable = jobq(f"http://127.0.0.1:{free_port()}", "queues")
    assert unreachable.returncode == 4
    assert "cannot reach the API" in unreachable.stderr


def test_jobs_list_show_cancel_retry_delete(service: str) -> None:
    submitted = json.loads(jobq(service, "submit", "system.sleep", "--payload",
                                '{"seconds": 0}', "--delay", "3600", "--json").stdout)
    job_id = submitted["id"]
    assert submitted["status"] == "scheduled"

    listed = jobq(service, "jobs", "list", "--status", "scheduled")
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout

    cancelled = json.loads(jobq(service, "jobs", "cancel", job_id, "--json").stdout)
    assert cancelled["status"] == "cancelled"
    again = jobq(service, "jobs", "cancel", job_id)
    assert again.returncode == 3  # 409: already finished

    retried = json.loads(jobq(service, "jobs", "retry", job_id, "--json").stdout)
    assert retried["status"] in ("queued", "running", "succeeded")
    deadline = time.monotonic() + 30
    while json.loads(jobq(service, "jobs", "show", job_id, "--json").stdout)["status"] \
            != "succeeded":
        assert time.monotonic() < deadline
        time.sleep(0.2)

    shown = jobq(service, "jobs", "show", job_id, "--history")
    assert shown.returncode == 0, shown.stderr
    assert "succeeded" in shown.stdout and "cancelled" in shown.stdout

    deleted = jobq(service, "jobs", "delete", job_id)
    assert deleted.returncode == 0, deleted.stderr
    assert jobq(service, "jobs", "show", job_id).returncode == 3


def test_queues_pause_resume_and_workers(service: str) -> None:
    paused = jobq(service, "queues", "pause", "console-q")
    assert paused.returncode == 0, paused.stderr
    shown = json.loads(jobq(service, "queues", "show", "console-q", "--json").stdout)
    assert shown["paused"] is True
    table = jobq(service, "queues")
    assert "console-q" in table.stdout and "yes" in table.stdout
    assert jobq(service, "queues", "resume", "console-q").returncode == 0
    assert json.loads(jobq(service, "queues", "show", "console-q", "--json").stdout)[
        "paused"] is False
    assert jobq(service, "queues", "show", "no-such-queue").returncode == 3

    workers = json.loads(jobq(service, "workers", "--json").stdout)
    assert [w["name"] for w in workers] == ["console-worker"]
    assert "console-worker" in jobq(service, "workers").stdout


def test_convert_uploads_converts_and_downloads(service: str, tmp_path: Path) -> None:
    source = CORPUS / "20mm-xyz-cube.stl"
    if not source.exists():
        pytest.fail(f"test corpus file missing: {source}")
    done = jobq(service, "convert", str(source), "--to", "glb", "-o",
                str(tmp_path / "cube.glb"))
    assert done.returncode == 0, done.stderr
    saved = tmp_path / "cube.glb"
    assert saved.read_bytes()[:4] == b"glTF"
    assert "saved" in done.stdout

    into_directory = jobq(service, "convert", str(source), "--to", "stl", "-o", str(tmp_path),
                          "--json")
    assert into_directory.returncode == 0, into_directory.stderr
    report = json.loads(into_directory.stdout)
    assert Path(report["output"]).parent == tmp_path
    assert report["bytes"] == Path(report["output"]).stat().st_size > 0

    refused = jobq(service, "convert", str(source), "--to", "nope")
    assert refused.returncode == 3
    assert "format" in refused.stderr


def test_queue_settings_clean_and_schedules(service: str) -> None:
    changed = jobq(service, "queues", "set", "console-set", '{"concurrency_limit": 2}', "--json")
    assert changed.returncode == 0, changed.stderr
    assert json.loads(changed.stdout)["concurrency_limit"] == 2
    assert "concurrency_limit" in jobq(service, "queues", "show", "console-set").stdout
    bad = jobq(service, "queues", "set", "console-set", '{"concurrency_limit": -1}')
    assert bad.returncode == 3
    assert "concurrency_limit" in bad.stderr
    assert jobq(service, "queues", "set", "console-set", "[1]").returncode == 2

    submitted = json.loads(jobq(service, "submit", "system.noop", "--queue", "console-clean",
                                "--wait", "--json").stdout)
    assert submitted["status"] == "succeeded"
    cleaned = jobq(service, "queues", "clean", "console-clean", "--status", "succeeded",
                   "--json")
    assert cleaned.returncode == 0, cleaned.stderr
    assert json.loads(cleaned.stdout) == {"deleted": 1}
    assert jobq(service, "jobs", "show", submitted["id"]).returncode == 3

    made = jobq(service, "schedules", "set", "console-nightly",
                '{"cron": "0 3 * * *", "job": {"type": "system.noop"}}')
    assert made.returncode == 0, made.stderr
    listed = jobq(service, "schedules")
    assert "console-nightly" in listed.stdout and "0 3 * * *" in listed.stdout
    shown = json.loads(jobq(service, "schedules", "show", "console-nightly", "--json").stdout)
    assert shown["cron"] == "0 3 * * *"
    refused = jobq(service, "schedules", "set", "console-bad",
                   '{"cron": "not cron", "job": {"type": "system.noop"}}')
    assert refused.returncode == 3
    assert jobq(service, "schedules", "delete", "console-nightly").returncode == 0
    assert jobq(service, "schedules", "show", "console-nightly").returncode == 3
