"""`jobq up` end to end: no DATABASE_URL, so it runs on the embedded PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.support import free_port, scratch_dir

pytestmark = pytest.mark.slow


class Up:
    """A `jobq up` process on its own data directory and port."""

    def __init__(self, data_dir: Path, log: Path, extra: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}
        env.update({"JOBQ_DATA_DIR": str(data_dir), "JOBQ_PROGRESS_INTERVAL_SECONDS": "0.05",
                    **(extra or {})})
        with open(log, "a") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service.cli", "up", "--port", str(self.port)],
                env=env, stdout=out, stderr=subprocess.STDOUT)
        self.log = log

    async def ready(self, client: httpx.AsyncClient, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()[-3000:]
            try:
                if (await client.get(f"{self.url}/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.2)
        raise AssertionError("jobq up never became ready:\n" + self.log.read_text()[-3000:])

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise


def postmaster_alive(data_dir: Path) -> bool:
    """Whether any PostgreSQL server still runs on a cluster under data_dir."""
    for pid_file in data_dir.rglob("postmaster.pid"):
        pid = int(pid_file.read_text().splitlines()[0])
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            continue
    return False


async def test_up_runs_a_job_and_keeps_it_across_a_restart(tmp_path: Path):
    with scratch_dir("jobq-up-") as directory:
        await _up_and_restart(directory / "jobq-data", tmp_path)


async def _up_and_restart(data_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "up.log"
    async with httpx.AsyncClient(timeout=10) as client:
        up = Up(data_dir, log)
        try:
            await up.ready(client)
            response = await client.post(
                f"{up.url}/api/v1/jobs",
                json={"type": "system.sleep", "payload": {"seconds": 1}})
            assert response.status_code == 201
            job_id = response.json()["id"]
            seen = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                job = (await client.get(f"{up.url}/api/v1/jobs/{job_id}")).json()
                seen.append((job["status"], job["progress"]))
                if job["status"] == "succeeded":
                    break
                await asyncio.sleep(0.05)
            statuses = [s for s, _ in seen]
            assert statuses[-1] == "succeeded", seen
            assert any(s == "running" and 0 < p < 100 for s, p in seen), seen
        finally:
            assert up.stop() == 0, log.read_text()[-3000:]
        assert not postmaster_alive(data_dir), "jobq up left its PostgreSQL running"

        again = Up(data_dir, log)
        try:
            await again.ready(client)
            job = (await client.get(f"{again.url}/api/v1/jobs/{job_id}")).json()
            assert job["status"] == "succeeded"
            assert job["result"]["slept_seconds"] >= 0.9
            history = (await client.get(f"{again.url}/api/v1/jobs/{job_id}/history")).json()
            assert [e["event"] for e in history["items"]] == ["submitted", "started", "succeeded"]
        finally:
            assert again.stop() == 0
        assert not postmaster_alive(data_dir)


async def test_keys_reach_a_running_up_without_database_url(tmp_path: Path):
    """`jobq up` with keys required (as on a non-loopback address) gets its first admin key
    from `jobq keys create` with no DATABASE_URL: the command finds the running server's
    embedded database through the data directory."""
    with scratch_dir("jobq-up-keys-") as directory:
        data_dir = directory / "jobq-data"
        env = {k: v for k, v in os.environ.items()
               if k not in ("DATABASE_URL", "TEST_DATABASE_URL")}
        env["JOBQ_DATA_DIR"] = str(data_dir)

        def keys(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "service.cli", "keys", *args],
                                  capture_output=True, text=True, timeout=120, env=env)

        refused = keys("list")  # nothing runs on that data directory yet
        assert refused.returncode == 1
        assert "no `jobq up` is running on the data directory" in refused.stderr
        assert "Traceback" not in refused.stderr

        log = tmp_path / "up.log"
        up = Up(data_dir, log, {"JOBQ_AUTH": "on"})
        async with httpx.AsyncClient(timeout=10) as client:
            try:
                await up.ready(client)
                assert (await client.get(f"{up.url}/api/v1/queues")).status_code == 401
                created = keys("create", "--name", "first-admin", "--role", "admin")
                assert created.returncode == 0, created.stderr
                [secret] = [line.removeprefix("key: ") for line in created.stdout.splitlines()
                            if line.startswith("key: ")]
                answer = await client.get(f"{up.url}/api/v1/keys",
                                          headers={"authorization": f"Bearer {secret}"})
                assert answer.status_code == 200, answer.text
                assert [k["name"] for k in answer.json()["items"]] == ["first-admin"]
            finally:
                assert up.stop() == 0, log.read_text()[-3000:]
