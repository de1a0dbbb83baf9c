"""Chaos soak: several workers work through a few thousand jobs while, for about two minutes,
workers are killed with SIGKILL (and replaced), frozen with SIGSTOP and thawed with SIGCONT, and
PostgreSQL (a server of the test's own) is restarted once.

Every job's code records each execution in a ledger table (ledger.recorded_sleep). At the end:
every job succeeded, none is missing, the queue's own records check out (check_ledger), and no
two executions of one job overlapped in time beyond the frozen-process window of
docs/guarantees.md — counting only the time each process actually ran (a frozen process runs
nothing). The figures go to docs/reliability.md."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service import jobs
from service.db import engine as db_engine
from service.domain import requests
from tests.reliability.conftest import FAST, OwnedCluster
from tests.reliability.ledger import LEDGER_DDL, check_executions, check_ledger, report

pytestmark = pytest.mark.slow

JOBS = 2500
WORKERS = 4
CONCURRENCY = 6
JOB_SECONDS = (0.2, 1.6)
"""Each job sleeps a random time in this range: with 4 x 6 slots and the faults, about two
minutes of work (measured: 18.6 jobs/s with 3000 jobs)."""

FAULT_SECONDS = 120
"""Faults stop after this long, or once every job is done and PostgreSQL was restarted."""

FAULT_GAP = (2.0, 5.0)
"""Seconds between two faults."""

FREEZE_SECONDS = (0.5, 6.0)
"""How long a frozen worker stays frozen: shorter and longer than the stall timeout (3 s)."""

OUTAGE_SECONDS = 3.0
"""How long PostgreSQL stays down when it is restarted (as long as the stall timeout)."""

FROZEN_WINDOW = float(FAST["JOBQ_HEARTBEAT_SECONDS"])
"""docs/guarantees.md: code running in a frozen process runs on, once woken, for up to one
heartbeat interval before the worker notices and stops it."""


class LedgerWorker:
    """A worker process (tests.reliability.ledger_worker)."""

    def __init__(self, name: str, database_url: str, log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        with open(self.log, "w") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.reliability.ledger_worker", name, str(CONCURRENCY)],
                env={**os.environ, **FAST, "DATABASE_URL": database_url, "JOBQ_POOL_SIZE": "8"},
                stdout=out, stderr=subprocess.STDOUT)
        self.pid = self.process.pid


class Chaos:
    """The faults, chosen by a seeded random generator (the seed is in the report)."""

    def __init__(self, cluster: OwnedCluster, log_dir: Path, seed: int) -> None:
        self.cluster = cluster
        self.log_dir = log_dir
        self.rng = random.Random(seed)
        self.workers: list[LedgerWorker] = []
        self.spawned = 0
        self.killed: dict[int, float] = {}
        self.frozen: dict[int, list[tuple[float, float]]] = {}
        self.thaw_at: dict[int, tuple[float, float]] = {}  # pid: (monotonic due, wall frozen)
        self.respawn_at: list[float] = []
        self.outage: tuple[float, float] | None = None

    def spawn(self) -> None:
        self.spawned += 1
        self.workers.append(LedgerWorker(f"soak-{self.spawned}", self.cluster.database_url,
                                         self.log_dir))

    def live(self) -> list[LedgerWorker]:
        return [w for w in self.workers if w.process.poll() is None]

    def strike(self) -> None:
        """Kill or freeze one worker, never the last one running."""
        running = [w for w in self.live() if w.pid not in self.thaw_at]
        if len(running) < 2:
            return
        victim = self.rng.choice(running)
        if self.rng.random() < 0.5:
            victim.process.kill()
            self.killed[victim.pid] = time.time()
            victim.process.wait()
            self.respawn_at.append(time.monotonic() + self.rng.uniform(0.3, 1.5))
        else:
            victim.process.send_signal(signal.SIGSTOP)
            self.thaw_at[victim.pid] = (time.monotonic() + self.rng.uniform(*FREEZE_SECONDS),
                                        time.time())

    def tend(self, thaw_all: bool = False) -> None:
        """Thaw frozen workers whose time has come; start the replacements that are due."""
        now = time.monotonic()
        for pid, (due, frozen_at) in list(self.thaw_at.items()):
            if thaw_all or now >= due:
                os.kill(pid, signal.SIGCONT)
                self.frozen.setdefault(pid, []).append((frozen_at, time.time()))
                del self.thaw_at[pid]
        for due in list(self.respawn_at):
            if thaw_all or now >= due:
                self.respawn_at.remove(due)
                self.spawn()

    async def restart_postgresql(self) -> None:
        down = time.time()
        await asyncio.to_thread(self.cluster.stop)
        await asyncio.sleep(OUTAGE_SECONDS)
        await asyncio.to_thread(self.cluster.start)
        self.outage = (down, time.time())

    def stop_all(self) -> None:
        self.tend(thaw_all=True)
        for worker in self.live():
            worker.process.send_signal(signal.SIGTERM)
        for worker in self.workers:
            try:
                worker.process.wait(30)
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()


async def _unfinished(url: str, ids: list[str]) -> int | None:
    """Jobs not succeeded yet; None while the database is away."""
    try:
        conn = await db_engine.connect(url)
    except Exception:
        return None
    try:
        return await conn.fetchval(
            "SELECT count(*) FROM job_overview WHERE id = ANY($1::uuid[]) "
            "AND status <> 'succeeded'", ids)
    except Exception:
        return None
    finally:
        conn.terminate()


async def test_chaos_soak_every_job_succeeds_once_and_never_runs_twice_at_once(
    owned_cluster: OwnedCluster, tmp_path: Path
):
    seed = int(os.environ.get("JOBQ_SOAK_SEED", time.time_ns() % 1_000_000))
    url = owned_cluster.database_url
    rng = random.Random(seed)
    conn = await db_engine.connect(url)
    try:
        await conn.execute(LEDGER_DDL)
        ids: list[str] = []
        for _ in range(0, JOBS, 500):
            async with conn.transaction():
                ids += [str(i) for i in await jobs.enqueue(conn, [
                    jobs.JobRequest(
                        "system.sleep", {"seconds": round(rng.uniform(*JOB_SECONDS), 2)},
                        # Each kill, freeze past the stall timeout and the restart can cost an
                        # attempt; the soak is about never losing a job, not about budgets.
                        max_attempts=50,
                        backoff=requests.Backoff(base_seconds=0.2, cap_seconds=2),
                        # The ledger checks every job at the end: retention (newest 1,000
                        # succeeded per queue by default) must not delete them first.
                        remove_on_complete=False)
                    for _ in range(500)])]
    finally:
        await conn.close()

    chaos = Chaos(owned_cluster, tmp_path, seed)
    started = time.monotonic()
    try:
        for _ in range(WORKERS):
            chaos.spawn()
        restart_at = started + rng.uniform(20, 45)
        next_fault = started + rng.uniform(*FAULT_GAP)
        next_check = started
        while time.monotonic() - started < FAULT_SECONDS:
            chaos.tend()
            now = time.monotonic()
            if chaos.outage is None and now >= restart_at:
                await chaos.restart_postgresql()
            elif now >= next_fault:
                chaos.strike()
                next_fault = now + rng.uniform(*FAULT_GAP)
            if now >= next_check:
                next_check = now + 1
                if chaos.outage is not None and await _unfinished(url, ids) == 0:
                    break
            await asyncio.sleep(0.05)
        faults_s = time.monotonic() - started
        chaos.tend(thaw_all=True)

        async def drained() -> bool:
            return await _unfinished(url, ids) == 0
        await eventually_drained(drained)
        took = time.monotonic() - started
    finally:
        chaos.stop_all()

    conn = await db_engine.connect(url)
    try:
        figures = await check_ledger(conn, ids)
        executions = await check_executions(conn, ids, chaos.killed, chaos.frozen)
    finally:
        await conn.close()
    freezes = [end - start for spans in chaos.frozen.values() for start, end in spans]
    result = {
        **figures, **executions, "seed": seed, "seconds": round(took, 1),
        "faults_seconds": round(faults_s, 1), "jobs_per_second": round(len(ids) / took, 1),
        "kill_9": len(chaos.killed), "sigstop": len(freezes),
        "longest_freeze_s": round(max(freezes, default=0), 1),
        "postgresql_down_s": round(chaos.outage[1] - chaos.outage[0], 1) if chaos.outage else None,
        "frozen_window_s": FROZEN_WINDOW,
        "load": f"{JOBS} jobs of {JOB_SECONDS[0]}-{JOB_SECONDS[1]} s, "
                f"{WORKERS} workers x {CONCURRENCY}, stall timeout "
                f"{FAST['JOBQ_STALL_TIMEOUT_SECONDS']} s"}
    report("chaos soak: kill -9, SIGSTOP/SIGCONT, one PostgreSQL restart", result)
    assert chaos.outage is not None, "PostgreSQL was restarted"
    assert chaos.killed and freezes, "workers were killed and frozen"
    assert executions["max_overlap_s"] <= FROZEN_WINDOW, result


async def eventually_drained(check) -> None:
    # What is left after the faults: a few seconds of work; recovery of the last lost
    # attempts takes the stall timeout.
    deadline = time.monotonic() + 120
    while not await check():
        assert time.monotonic() < deadline, "jobs left undone two minutes after the faults"
        await asyncio.sleep(0.5)
