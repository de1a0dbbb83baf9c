"""The embedded PostgreSQL: keeps data across restarts, never outlives its owner, and is not
blocked by what a crashed run left behind. Each test brings its own server in a tmp dir."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncpg
import pytest

from service.db import embedded
from service.db.embedded import EmbeddedPostgres, EmbeddedPostgresError

OWNER = """
import signal, sys, time
from pathlib import Path
from service.db.embedded import EmbeddedPostgres
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = EmbeddedPostgres(Path(sys.argv[1]))
server.start()
print("ready", flush=True)
if sys.argv[2] == "wait":
    time.sleep(120)
"""
"""A separate Python process that starts a server, then waits or exits without stopping it
(on SIGTERM too)."""


ORPHAN_LAUNCHER = f"""
import json, os, subprocess, sys
args, user = json.loads(sys.argv[1]), sys.argv[2] or None
subprocess.Popen(args, user=user, group=user, start_new_session=True, cwd="/",
                 env={{**os.environ, "{embedded._OWNER_ENV}": str(os.getpid())}},
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
"""
"""Starts a server and exits at once, orphaning it the way a crash before the parent-death
signal was armed would (no death signal; its owner gone)."""


def server_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def is_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_gone(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while is_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not is_alive(pid)


def start_owner(data_dir: Path, then: str = "wait") -> subprocess.Popen[str]:
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(data_dir), then],
                             stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    line = owner.stdout.readline()
    assert line.startswith("ready"), line
    return owner


async def test_data_survives_a_restart(tmp_path: Path):
    server = EmbeddedPostgres(tmp_path / "pg")
    conn = await asyncpg.connect(server.start())
    await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
    await conn.close()
    server.stop()

    with EmbeddedPostgres(tmp_path / "pg") as url:
        conn = await asyncpg.connect(url)
        assert await conn.fetchval("SELECT v FROM kept") == "still here"
        await conn.close()


async def test_url_names_a_superuser_who_can_create_databases(tmp_path: Path):
    with EmbeddedPostgres(tmp_path / "pg") as url:
        conn = await asyncpg.connect(url)
        await conn.execute("CREATE DATABASE another")
        assert await conn.fetchval("SHOW fsync") == "on"
        await conn.close()


def test_stop_is_harmless_twice_and_before_start(tmp_path: Path):
    server = EmbeddedPostgres(tmp_path / "pg")
    server.stop()
    server.start()
    pid = server_pid(tmp_path / "pg")
    server.stop()
    server.stop()
    assert not is_alive(pid)
    assert not server.socket_dir.exists()


def test_server_dies_with_its_owner_killed_by_sigkill(tmp_path: Path):
    owner = start_owner(tmp_path / "pg")
    pid = server_pid(tmp_path / "pg")
    assert is_alive(pid)
    os.kill(owner.pid, signal.SIGKILL)
    owner.wait()
    assert wait_gone(pid), "PostgreSQL outlived the process that started it"

    with EmbeddedPostgres(tmp_path / "pg"):
        assert server_pid(tmp_path / "pg") != pid


def test_server_stops_when_its_owner_exits_without_stopping_it(tmp_path: Path):
    owner = start_owner(tmp_path / "pg", then="exit")
    pid = server_pid(tmp_path / "pg")
    assert owner.wait(10) == 0
    assert wait_gone(pid)


def test_a_server_started_from_a_short_lived_thread_outlives_the_thread(tmp_path: Path):
    server = EmbeddedPostgres(tmp_path / "pg")
    thread = threading.Thread(target=server.start)
    thread.start()
    thread.join()
    try:
        time.sleep(0.5)
        assert is_alive(server_pid(tmp_path / "pg"))
    finally:
        server.stop()


def test_a_cluster_in_use_by_a_live_owner_is_refused(tmp_path: Path):
    owner = start_owner(tmp_path / "pg")
    pid = server_pid(tmp_path / "pg")
    try:
        with pytest.raises(EmbeddedPostgresError, match="already runs"):
            EmbeddedPostgres(tmp_path / "pg").start()
        assert is_alive(pid)
    finally:
        owner.terminate()
        owner.wait()
    assert wait_gone(pid)
    assert not EmbeddedPostgres(tmp_path / "pg").socket_dir.exists()


def test_an_orphaned_server_is_stopped_and_replaced(tmp_path: Path):
    data_dir = tmp_path / "pg"
    server = EmbeddedPostgres(data_dir)
    server.start()
    server.stop()
    server.socket_dir.mkdir(mode=0o700)
    server_user = embedded.SERVER_USER if os.geteuid() == 0 else ""
    if server_user:
        shutil.chown(server.socket_dir, server_user, server_user)
    postgres = [str(embedded._bin_dir() / "postgres"), "-D", str(data_dir),
                "-k", str(server.socket_dir), "-c", "listen_addresses="]
    subprocess.run([sys.executable, "-c", ORPHAN_LAUNCHER, json.dumps(postgres), server_user],
                   check=True)
    orphan = wait_for_server(data_dir)

    with EmbeddedPostgres(data_dir):
        assert not is_alive(orphan)
        assert server_pid(data_dir) != orphan


def test_a_stale_pid_file_naming_a_reused_pid_does_not_block_start(tmp_path: Path):
    data_dir = tmp_path / "pg"
    with EmbeddedPostgres(data_dir):
        pass
    stranger = subprocess.Popen(["sleep", "60"])  # holds the pid a crashed server left behind
    try:
        (data_dir / "postmaster.pid").write_text(f"{stranger.pid}\n{data_dir}\n")
        with EmbeddedPostgres(data_dir):
            assert server_pid(data_dir) != stranger.pid
        assert stranger.poll() is None, "an unrelated process was signalled"
    finally:
        stranger.kill()
        stranger.wait()


def wait_for_server(data_dir: Path, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = _lines(data_dir / "postmaster.pid")
        if len(lines) >= 8 and lines[7].strip() == "ready":
            return int(lines[0])
        time.sleep(0.05)
    raise AssertionError("the orphan server did not start")


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []
