"""A network partition of a worker host: a worker in its own network namespace reaches
PostgreSQL over TCP; the link is cut for longer than the stall timeout (and longer than TCP
takes to give up on a silent connection), then restored.

Must hold: the cut-off worker's jobs run again elsewhere; the outcomes it reached while cut off
are refused by fencing; it notices it was declared dead and joins again; nothing waits forever
on a half-open connection."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest

from service import jobs
from service.db import admin, embedded, migrate
from service.db import engine as db_engine
from tests.integration.test_worker import eventually
from tests.reliability import netns
from tests.reliability.conftest import FAST
from tests.reliability.ledger import check_ledger, report
from tests.support import free_port, scratch_dir

CUT_SECONDS = 25
"""Longer than the stall timeout (3 s here), and longer than the TCP user timeout (20 s) after
which a call sent into the partition fails: so the worker's connections really die, and the
test shows it gets over that (with keepalives and timeouts, nothing waits on them forever)."""

JOB_SECONDS = 1.5
"""The cut-off worker's jobs end while it is cut off, before its self-fencing (0.8 x stall
timeout after its last heartbeat: at least 1.9 s after the cut) would stop them: their outcome is
`succeeded`, kept until the link is back, then refused."""

LONG_JOB_SECONDS = 6.0
"""This one still runs when the worker fences itself: stopped there (`interrupted`, refused in
turn), before recovery lets the other worker run it again."""


@pytest.fixture
def worker_host() -> Iterator[netns.WorkerHost]:
    try:
        with netns.worker_host() as host:
            yield host
    except netns.Unavailable as exc:
        pytest.skip(f"network partition test needs a network namespace: {exc}")


class TcpCluster(embedded.EmbeddedPostgres):
    """The embedded server, also listening on TCP at one address (on a port of its own)."""

    def __init__(self, data_dir: Path, address: str) -> None:
        super().__init__(data_dir)
        self.address = address
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"{super().url}&port={self.port}"

    def tcp_url(self, database: str) -> str:
        return f"postgresql://{embedded.SUPERUSER}@{self.address}:{self.port}/{database}"


def _trust(data_dir: Path, subnet: str) -> None:
    """Let clients from `subnet` in without a password, as the socket's clients are."""
    with open(data_dir / "pg_hba.conf", "a") as hba:
        hba.write(f"host all all {subnet} trust\n")


@pytest.fixture
async def tcp_cluster(worker_host: netns.WorkerHost,
                      monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TcpCluster]:
    # The embedded server listens on its Unix socket only; this one also on the host's end of
    # the link (the settings are read when the server is started).
    with scratch_dir("jobq-partition-pg-") as directory:
        server = TcpCluster(directory / "pg", worker_host.host_address)
        monkeypatch.setitem(embedded.SERVER_SETTINGS, "listen_addresses",
                            worker_host.host_address)
        monkeypatch.setitem(embedded.SERVER_SETTINGS, "port", str(server.port))
        server_url = server.start()
        try:
            _trust(server.data_dir, worker_host.subnet)
            conn = await asyncpg.connect(server_url)
            try:
                await conn.execute("SELECT pg_reload_conf()")
            finally:
                await conn.close()
            await admin.ensure_database(server_url, "jobq_partition")
            await asyncio.to_thread(migrate.upgrade,
                                    admin.with_database(server_url, "jobq_partition"))
            yield server
        finally:
            server.stop()


class Worker:
    """A `jobq worker` process, on this host or inside the namespace."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        with open(log, "w") as out:
            self.process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text()

    def stop(self, timeout: float = 30) -> float:
        """SIGTERM; seconds it took to exit."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        return time.monotonic() - started

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _after(worker: Worker, text: str, since: float) -> float | None:
    """Seconds from `since` (epoch) to the first log line after it that holds `text`, by the
    line's own time stamp (logging's asctime, local time, milliseconds)."""
    for line in worker.text().splitlines():
        if text in line:
            try:
                at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            except ValueError:
                continue
            if at >= since:
                return round(at - since, 2)
    return None


async def _logged(worker: Worker, text: str, timeout: float, count: int = 1) -> float:
    """Wait until `text` is in the worker's log `count` times; returns when (monotonic)."""
    async def check() -> bool:
        return worker.text().count(text) >= count
    await eventually(check, timeout=timeout, interval=0.1)
    return time.monotonic()


async def test_partitioned_worker_is_fenced_its_jobs_rerun_and_it_rejoins(
    worker_host: netns.WorkerHost, tcp_cluster: TcpCluster, tmp_path: Path
):
    local_url = admin.with_database(tcp_cluster.url, "jobq_partition")
    remote_url = tcp_cluster.tcp_url("jobq_partition")
    base = {**os.environ, **FAST}
    command = [sys.executable, "-m", "service.cli", "worker"]
    cut_off = Worker(
        worker_host.command(*command, "--name", "cut-off", "--concurrency", "5"),
        # Progress writes wait far apart, so a job never blocks on one while cut off and ends
        # in time to have a late outcome (the first write is made at the job's start).
        {**base, "DATABASE_URL": remote_url, "JOBQ_PROGRESS_INTERVAL_SECONDS": "1000"},
        tmp_path / "cut-off.log")
    workers = [cut_off]
    conn = await db_engine.connect(local_url)
    try:
        await _logged(cut_off, "registered as", timeout=30)
        first = [str(i) for i in await jobs.enqueue(conn, [
            *(jobs.JobRequest("system.sleep", {"seconds": JOB_SECONDS}) for _ in range(4)),
            jobs.JobRequest("system.sleep", {"seconds": LONG_JOB_SECONDS})])]

        async def all_running() -> bool:
            # Running, and past their first progress write (made at once; the next ones wait).
            return await conn.fetchval(
                "SELECT count(*) FROM job_attempts a JOIN jobs j ON j.id = a.job_id "
                "WHERE a.worker_name = 'cut-off' AND a.finished_at IS NULL "
                "AND j.stage IS NOT NULL") == 5
        await eventually(all_running, timeout=20, interval=0.02)
        worker_host.cut()
        cut_at, cut_wall = time.monotonic(), time.time()
        # Started only now, so that every first job is the cut-off worker's.
        rescuer = Worker([*command, "--name", "rescuer", "--concurrency", "4"],
                         {**base, "DATABASE_URL": local_url}, tmp_path / "rescuer.log")
        workers.append(rescuer)

        async def rerun() -> bool:
            return await conn.fetchval(
                "SELECT count(*) FROM job_attempts a JOIN job_overview j ON j.id = a.job_id "
                "WHERE a.worker_name = 'rescuer' AND j.status = 'succeeded' "
                "AND j.id = ANY($1::uuid[])", first) == 5
        await eventually(rerun, timeout=CUT_SECONDS - 2, interval=0.1)
        rerun_after = time.monotonic() - cut_at
        first_rerun = await conn.fetchval(
            "SELECT extract(epoch FROM min(started_at))::float8 FROM job_attempts "
            "WHERE worker_name = 'rescuer'") - cut_wall
        # A call stuck on a connection the partition made half-open fails within the TCP
        # user timeout (20 s): the worker says so while still cut off.
        await _logged(cut_off, "heartbeat failed", timeout=max(0.1, CUT_SECONDS - 1 -
                                                                (time.monotonic() - cut_at)))
        await asyncio.sleep(max(0.0, CUT_SECONDS - (time.monotonic() - cut_at)))
        assert cut_off.process.poll() is None, cut_off.text()[-3000:]

        worker_host.restore()
        restored_wall = time.time()
        await _logged(cut_off, "refused, the lease was lost", timeout=30, count=5)
        await _logged(cut_off, "declared dead", timeout=30)
        await _logged(cut_off, "registered as", timeout=30, count=2)

        # The rescuer leaves: only the worker that rejoined can run the next jobs.
        rescuer.stop()
        second = [str(i) for i in await jobs.enqueue(conn, [
            jobs.JobRequest("system.sleep", {"seconds": 0.2}) for _ in range(4)])]

        async def run_by_cut_off() -> bool:
            return await conn.fetchval(
                "SELECT count(*) FROM job_attempts a JOIN job_overview j ON j.id = a.job_id "
                "WHERE a.worker_name = 'cut-off' AND j.status = 'succeeded' "
                "AND j.id = ANY($1::uuid[])", second) == 4
        await eventually(run_by_cut_off, timeout=30, interval=0.1)

        figures = await check_ledger(conn, first + second)
        first_attempts = await conn.fetch(
            "SELECT worker_name, outcome FROM job_attempts WHERE job_id = ANY($1::uuid[]) "
            "ORDER BY job_id, number", first)
        stop_took = cut_off.stop()
    finally:
        await conn.close()
        for worker in workers:
            worker.kill()
    assert [(a["worker_name"], a["outcome"]) for a in first_attempts] == [
        ("cut-off", "lost"), ("rescuer", "succeeded")] * 5
    log = cut_off.text()
    assert log.count("outcome succeeded refused") == 4
    assert log.count("outcome interrupted refused") == 1
    assert "no heartbeat reached the database" in log, "the long job was stopped in time"
    assert stop_took < 15, "the worker that was cut off stops like any other"
    report("network partition of a worker host (link cut, then restored)", {
        **figures, "cut_s": CUT_SECONDS, "stall_timeout_s": float(FAST[
            "JOBQ_STALL_TIMEOUT_SECONDS"]),
        "cut_to_first_rerun_elsewhere_s": round(first_rerun, 2),
        "cut_to_all_rerun_and_done_s": round(rerun_after, 2),
        "cut_to_self_fencing_s": _after(cut_off, "no heartbeat reached the database", cut_wall),
        "cut_to_first_failed_heartbeat_s": _after(cut_off, "heartbeat failed", cut_wall),
        "restore_to_late_outcomes_refused_s": _after(cut_off, "refused, the lease", restored_wall),
        "restore_to_rejoined_s": _after(cut_off, "registering again", restored_wall),
        "load": "4 x 1.5 s and 1 x 6 s jobs on the cut-off worker, "
                "then 4 x 0.2 s after it rejoined"})
