"""The embedded PostgreSQL: keeps data across restarts and never outlives its owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from service.db.embedded import EmbeddedPostgres, EmbeddedPostgresError

OWNER = """
import sys, time
from pathlib import Path
from service.db.embedded import EmbeddedPostgres
server = EmbeddedPostgres(Path(sys.argv[1]))
server.start()
print("ready", server._process.pid, flush=True)
time.sleep(120)
"""


def server_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError):
        return None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start_owner(data_dir: Path) -> tuple[subprocess.Popen, int]:
    """A separate Python process that starts the server and keeps it."""
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(data_dir)],
                             stdout=subprocess.PIPE, text=True)
    line = owner.stdout.readline()
    assert line.startswith("ready"), line
    return owner, int(line.split()[1])


async def test_data_survives_a_restart(tmp_path: Path):
    server = EmbeddedPostgres(tmp_path / "pg")
    url = server.start()
    conn = await asyncpg.connect(url)
    await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
    await conn.close()
    server.stop()
    server.stop()  # harmless

    with EmbeddedPostgres(tmp_path / "pg") as url:
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT v FROM kept") == "still here"
        await conn.close()


def test_server_dies_with_its_owner_killed_by_sigkill(tmp_path: Path):
    owner, pid = start_owner(tmp_path / "pg")
    assert alive(pid)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), "PostgreSQL outlived the process that started it"
    with EmbeddedPostgres(tmp_path / "pg"):
        assert server_pid(tmp_path / "pg") not in (None, pid)


def test_a_cluster_in_use_by_a_live_owner_is_not_taken_over(tmp_path: Path):
    owner, pid = start_owner(tmp_path / "pg")
    try:
        with pytest.raises(EmbeddedPostgresError, match="already runs"):
            EmbeddedPostgres(tmp_path / "pg").start()
        assert alive(pid)
    finally:
        owner.terminate()
        owner.wait()
