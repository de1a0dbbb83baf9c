"""The commands for people (`jobq submit`, `convert`, `jobs`, `queues`, `workers`) run as real
processes against a real `jobq serve` and `jobq worker` on the test database."""

from __future__ import annotations

import json
import os
import signal
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
    assert "2 at once" in jobq(service, "queues", "show", "console-set").stdout
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


def test_queue_show_reads_its_policies_in_words(service: str) -> None:
    settings = ('{"rate_limit": {"max_starts": 10, "per_seconds": 1}, "concurrency_limit": 2, '
                '"timeout_seconds": 90, "backoff": {"base_seconds": 1.5, "cap_seconds": 600}, '
                '"retention": {"failed": {"max_count": 500}, '
                '"cancelled": {"max_age_seconds": null}}}')
    changed = jobq(service, "queues", "set", "console-words", settings)
    assert changed.returncode == 0, changed.stderr
    lines = {line.split("  ")[0].strip(): line.strip() for line in changed.stdout.splitlines()}
    assert lines["rate limit"].endswith("10 starts per 1 s")
    assert lines["concurrency limit"].endswith("2 at once")
    assert lines["max attempts"].endswith("the job type's")
    assert lines["timeout"].endswith("1 min 30 s")
    assert lines["backoff"].endswith("base 1.5 s, cap 10 min")
    assert lines["keep succeeded"].endswith("1 d, the newest 1000")
    assert lines["keep failed"].endswith("7 d, the newest 500")
    assert lines["keep cancelled"].endswith("forever")
    assert lines["paused"].endswith("no")
    assert "queued 0" in lines["counts"]
    assert jobq(service, "queues", "show", "console-words").stdout == changed.stdout
    row = next(line for line in jobq(service, "queues").stdout.splitlines()
               if "console-words" in line)
    assert row.rstrip().endswith("10 per 1 s, 2 at once")


def test_options_given_to_a_group_reach_its_subcommand(service: str) -> None:
    """`jobq queues --url U --json show Q` uses U and prints JSON, as `... show Q --url U
    --json` does; JOBQ_URL names a port nobody listens on, so a dropped --url would fail."""
    dead = f"http://127.0.0.1:{free_port()}"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "service.cli", *args], capture_output=True,
                              text=True, timeout=60,
                              env={**os.environ, "JOBQ_URL": dead, "JOBQ_KEY": KEY["operator"]})

    assert jobq(service, "queues", "set", "console-group", "{}").returncode == 0
    shown = run("queues", "--url", service, "--json", "show", "console-group")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["name"] == "console-group"
    listed = run("schedules", "--json", "--url", service, "list")
    assert listed.returncode == 0, listed.stderr
    assert isinstance(json.loads(listed.stdout), list)
    # The subcommand's own --url wins over the group's.
    own = run("queues", "--url", service, "show", "console-group", "--url", dead)
    assert own.returncode == 4 and dead in own.stderr


def test_convert_refuses_an_output_directory_that_does_not_exist(service: str,
                                                                 tmp_path: Path) -> None:
    before = json.loads(jobq(service, "jobs", "list", "--type", "mesh.convert",
                             "--json").stdout)["items"]
    refused = jobq(service, "convert", str(CORPUS / "20mm-xyz-cube.stl"), "--to", "glb",
                   "-o", str(tmp_path / "missing" / "cube.glb"))
    assert refused.returncode == 2
    assert "-o/--output" in refused.stderr and "missing" in refused.stderr
    assert "Traceback" not in refused.stderr
    after = json.loads(jobq(service, "jobs", "list", "--type", "mesh.convert",
                            "--json").stdout)["items"]
    assert after == before  # refused before anything was uploaded


def test_ctrl_c_while_waiting_leaves_the_job_and_says_so(service: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "submit", "system.sleep", "--payload",
         '{"seconds": 30}', "--wait", "--url", service],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "JOBQ_KEY": KEY["operator"]})
    deadline = time.monotonic() + 30
    while not [j for j in json.loads(jobq(service, "jobs", "list", "--status", "running",
                                          "--json").stdout)["items"]
               if j["payload"]["seconds"] == 30]:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=20)
    assert process.returncode == 130
    assert "Traceback" not in stderr
    job_id = stderr.split("interrupted; job ")[1].split()[0]
    job = json.loads(jobq(service, "jobs", "show", job_id, "--json").stdout)
    assert job["status"] == "running"  # the job goes on without the command
    assert jobq(service, "jobs", "cancel", job_id).returncode == 0


def test_a_url_that_is_not_a_jobq_api_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    """A web server that answers 200 with HTML where the API would answer JSON."""
    (tmp_path / "api" / "v1").mkdir(parents=True)
    (tmp_path / "api" / "v1" / "workers").write_text("<html>not jobq</html>")
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "--directory", str(tmp_path)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                if httpx.get(f"{url}/api/v1/workers").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "http.server did not start"
            time.sleep(0.1)
        done = jobq(url, "workers")
        assert done.returncode == 4
        assert "is not JSON" in done.stderr and "Traceback" not in done.stderr
        missing = jobq(url, "queues")  # a 404 page in HTML: the status, as a line
        assert missing.returncode == 3
        assert "HTTP 404" in missing.stderr and "Traceback" not in missing.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)
