"""What `jobq` says at start about the database's schema, as real processes: serve and worker
refuse an unmigrated, older or newer schema in one line; `jobq up` migrates the database
DATABASE_URL names; /ready says in words why it is not ready."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from service.db import admin, migrate
from tests.conftest import new_database
from tests.support import free_port

pytestmark = pytest.mark.slow

JOBQ = str(Path(sys.executable).with_name("jobq"))
"""The installed console script: what a user types."""

NOT_MIGRATED = ("the database schema is not migrated (no jobq tables yet): "
                "run `jobq migrate`")

UNREADABLE = ("The database cannot be reached.",
              "The database's schema revision could not be read; see the API's log.")


def env_for(database_url: str | None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}
    if database_url:
        env["DATABASE_URL"] = database_url
    return {**env, **extra}


def run_jobq(*args: str, database_url: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([JOBQ, *args], env=env_for(database_url), capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line(result: subprocess.CompletedProcess, expected: str) -> None:
    """Exit code 1, nothing on stdout, and exactly `expected` on stderr: no traceback."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    assert result.stdout == ""
    assert result.stderr.splitlines() == [expected], result.stderr


@pytest.fixture
async def empty_database(server_url: str) -> AsyncIterator[str]:
    url = await new_database(server_url, "jobq_start")
    yield url
    await admin.drop_database(server_url, admin.database_name(url))


async def set_revision(url: str, revision: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("UPDATE alembic_version SET version_num = $1", revision)
    finally:
        await conn.close()


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_serve_and_worker_refuse_an_empty_database_in_one_line(empty_database, command):
    result = run_jobq(command, database_url=empty_database)
    assert_one_line(result, f"jobq {command}: {NOT_MIGRATED}")


async def test_an_older_schema_is_refused_until_jobq_migrate(empty_database):
    head = migrate.head_revision()
    older = migrate._scripts().get_revision(head).down_revision
    await asyncio.to_thread(migrate.upgrade, empty_database, older)
    for command in ("serve", "worker"):
        assert_one_line(
            run_jobq(command, database_url=empty_database),
            f"jobq {command}: the database schema is older than this code (revision {older}, "
            f"this code needs {head}): run `jobq migrate`")

    migrated = run_jobq("migrate", database_url=empty_database)
    assert migrated.returncode == 0, migrated.stderr
    assert "Traceback" not in migrated.stderr
    conn = await asyncpg.connect(empty_database)
    try:
        assert await migrate.read_revision(conn) == head
    finally:
        await conn.close()


async def test_a_newer_schema_runs_with_a_warning_but_is_not_migrated(empty_database, tmp_path):
    """Mid-upgrade (migrations first): processes of the previous release keep starting."""
    await asyncio.to_thread(migrate.upgrade, empty_database)
    await set_revision(empty_database, "f00dcafe")  # as a later jobq would have left it
    newer = ("the database schema is newer than this code (revision f00dcafe is unknown here; "
             f"this code's newest is {migrate.head_revision()}): a later jobq migrated it; "
             "upgrade this process")
    assert_one_line(run_jobq("migrate", database_url=empty_database), f"jobq migrate: {newer}")

    api = Process(["serve"], env_for(empty_database), tmp_path / "serve.log")
    worker = Process(["worker"], env_for(empty_database), tmp_path / "worker.log")
    worker_log = worker.log
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            await api.wait_ready(client)
            assert (await client.get(f"{api.url}/ready")).json() == {
                "status": "ready", "revision": "f00dcafe",
                "warning": newer[0].upper() + newer[1:] + "."}
        deadline = time.monotonic() + 30
        while "registered" not in worker_log.read_text():
            assert worker.process.poll() is None, worker_log.read_text()
            assert time.monotonic() < deadline, worker_log.read_text()
            await asyncio.sleep(0.1)
    finally:
        codes = (worker.stop(), api.stop())
    assert codes == (0, 0), worker_log.read_text()[-3000:]
    for log in (api.log, worker_log):
        assert f"WARNING jobq: {newer}" in log.read_text()


def test_a_database_that_does_not_exist_is_one_line(server_url):
    url = admin.with_database(server_url, "jobq_no_such_database")
    result = run_jobq("worker", database_url=url)
    assert_one_line(result, "jobq worker: cannot read the database's schema revision: "
                            'InvalidCatalogNameError: database "jobq_no_such_database" '
                            "does not exist")


class Process:
    """A jobq process on a free port, its output in a log file."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        if args[0] != "worker":
            args = [*args, "--port", str(self.port)]
        with open(log, "a") as out:
            self.process = subprocess.Popen([JOBQ, *args], env=env, stdout=out,
                                            stderr=subprocess.STDOUT)

    async def wait_ready(self, client: httpx.AsyncClient, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if (await client.get(f"{self.url}/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError("never ready:\n" + self.log.read_text()[-3000:])

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


async def test_up_migrates_an_empty_database_and_runs_a_job(empty_database, tmp_path):
    up = Process(["up"], env_for(empty_database, JOBQ_POLL_SECONDS="0.2"), tmp_path / "up.log")
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            await up.wait_ready(client)
            ready = (await client.get(f"{up.url}/ready")).json()
            assert ready == {"status": "ready", "revision": migrate.head_revision()}
            response = await client.post(f"{up.url}/api/v1/jobs",
                                         json={"type": "system.sleep", "payload": {"seconds": 0.2}})
            assert response.status_code == 201, response.text
            job_url = f"{up.url}/api/v1/jobs/{response.json()['id']}"
            deadline = time.monotonic() + 30
            while (job := (await client.get(job_url)).json())["status"] != "succeeded":
                assert job["status"] in ("queued", "running"), job
                assert time.monotonic() < deadline, job
                await asyncio.sleep(0.1)
    finally:
        code = up.stop()
    log = up.log.read_text()
    assert code == 0, log[-3000:]
    assert "migrating the database from revision None" in log
    assert "Traceback" not in log, log[-3000:]


async def test_ready_says_in_words_why_not_and_never_shows_sql(empty_database, tmp_path):
    await asyncio.to_thread(migrate.upgrade, empty_database)
    api = Process(["serve"], env_for(empty_database), tmp_path / "serve.log")
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            await api.wait_ready(client)

            async def not_ready() -> dict:
                response = await client.get(f"{api.url}/ready")
                assert response.status_code == 503, response.text
                assert response.headers["content-type"].startswith("application/problem+json")
                assert response.headers["retry-after"]
                return response.json()

            await asyncio.to_thread(migrate.downgrade, empty_database, "base")
            assert (await not_ready())["detail"] == (
                "The database schema is not migrated (no jobq tables yet): run `jobq migrate`.")

            # Its connections cut under it: the first answers fail, in words, then it recovers.
            await asyncio.to_thread(migrate.upgrade, empty_database)
            conn = await asyncpg.connect(empty_database)
            try:
                cut = await conn.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()")
            finally:
                await conn.close()
            assert cut >= 1
            answers = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                response = await client.get(f"{api.url}/ready")
                answers.append((response.status_code, response.json()))
                if response.status_code == 200:
                    break
            assert answers[-1][0] == 200, answers
            # asyncpg reports a connection cut mid-protocol in more than one way (lost, or
            # "another operation is in progress"): either answer is words, never the error.
            assert answers[0][0] == 503, answers
            assert answers[0][1]["detail"] in UNREADABLE, answers
            for _, body in answers:
                assert "SELECT" not in str(body) and "alembic_version" not in str(body)

            await admin.drop_database(*_server_and_name(empty_database))
            body = await not_ready()
            assert body["detail"] in UNREADABLE, body
            assert "SELECT" not in str(body) and "does not exist" not in str(body)
    finally:
        assert api.stop() == 0, api.log.read_text()[-3000:]


def _server_and_name(url: str) -> tuple[str, str]:
    return admin.with_database(url, "postgres"), admin.database_name(url)
