"""The BullMQ anchor: BullMQ as it ships (Node, `benchmarks/bullmq/driver.cjs`), on a
redis-server of the run's own with AOF `appendfsync everysec` (the durable setting), on a free
port, in the run's scratch directory; the system's Redis is never touched.

`npm ci` installs `benchmarks/bullmq/package-lock.json` on first use. One long-lived control
process (a BullMQ `Queue`) enqueues, pauses, resumes and counts on the benchmark's behalf;
workers are `driver.cjs worker` processes (a BullMQ `Worker` with a no-op processor).

A drain: the jobs are added (addBulk of BATCH), the queue is paused, the workers start and
connect; when all are ready the queue is resumed (the start signal) and the clock runs until
the last completed job's `finishedOn`. Enqueue and latency times come from the Node side, like
PgQueuer's and Procrastinate's from their clients. Worker CPU and peak RSS come from /proc,
the server's CPU from redis-server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from benchmarks import processes
from benchmarks.context import (
    ARRIVAL_RATE,
    BATCH,
    BULK,
    START_TIMEOUT,
    Case,
    Context,
    Figures,
    Variant,
)
from benchmarks.figures import latency_figures

DRIVER_DIR = Path(__file__).resolve().parent / "bullmq"
DRIVER = DRIVER_DIR / "driver.cjs"

READY = "bullmq-worker ready"
STOPPED = "bullmq-worker stopped"

POLL_SECONDS = 0.2
COMMAND_TIMEOUT = 600.0
"""Seconds one control command may take (a full-size enqueue takes a few)."""

LATENCY_CONCURRENCY = 10


def _node() -> str:
    for tool in ("node", "npm", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"the BullMQ anchor needs {tool} on PATH (Node 20 with npm, and "
                             "redis-server)")
    return shutil.which("node")  # type: ignore[return-value]


def install() -> None:
    """`npm ci` in benchmarks/bullmq unless its node_modules has BullMQ already."""
    if (DRIVER_DIR / "node_modules" / "bullmq" / "package.json").exists():
        return
    result = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
                            cwd=DRIVER_DIR, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise SystemExit(f"npm ci in {DRIVER_DIR} failed:\n{result.stderr[-3000:]}")


class BullMQ:
    """Our redis-server and the control process."""

    def __init__(self, redis: processes.Child, port: int, control: asyncio.subprocess.Process,
                 log: Path) -> None:
        self.redis = redis
        self.port = port
        self._control = control
        self._log = log
        self._lock = asyncio.Lock()

    @classmethod
    async def start(cls, ctx: Context, scratch: Path) -> BullMQ:
        node = _node()
        await asyncio.to_thread(install)
        data = scratch / "redis"
        data.mkdir()
        port = processes.free_port()
        redis = await processes.Child.start(
            ctx, "redis-server",
            ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
             "--save", "", "--appendonly", "yes", "--appendfsync", "everysec",
             "--maxmemory-policy", "noeviction", "--daemonize", "no"],
            markers=["Ready to accept connections"])
        await redis.sighting("Ready to accept connections", START_TIMEOUT)
        log = ctx.log_dir / "bullmq-control.log"
        errors = log.open("wb")  # the child writes to it; ours is closed once it started
        try:
            control = await asyncio.create_subprocess_exec(
                node, str(DRIVER), "control", env={**os.environ, **env(port)},
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=errors,
                preexec_fn=functools.partial(processes.die_with_parent, os.getpid()))
        finally:
            errors.close()
        self = cls(redis, port, control, log)
        try:
            await self._answer()  # {"ready": true}
        except BaseException:
            await self.close()
            raise
        return self

    async def command(self, op: str, **arguments: object) -> dict:
        """One command to the control process; its answer."""
        async with self._lock:
            assert self._control.stdin is not None
            self._control.stdin.write((json.dumps({"op": op, **arguments}) + "\n").encode())
            await self._control.stdin.drain()
            answer = await self._answer()
        if not answer.get("ok"):
            raise RuntimeError(f"BullMQ's control process failed {op}: {answer.get('error')}")
        return answer

    async def _answer(self) -> dict:
        assert self._control.stdout is not None
        line = await asyncio.wait_for(self._control.stdout.readline(), COMMAND_TIMEOUT)
        if not line:
            raise RuntimeError("BullMQ's control process exited:\n"
                               + self._log.read_text(errors="replace")[-3000:])
        return json.loads(line)

    def server_cpu_seconds(self) -> float:
        return processes.cpu_seconds(self.redis.pid)

    async def close(self) -> None:
        if self._control.returncode is None:
            with contextlib.suppress(Exception):
                assert self._control.stdin is not None
                self._control.stdin.write(b'{"op": "quit"}\n')
                await self._control.stdin.drain()
            try:
                await asyncio.wait_for(self._control.wait(), 10)
            except TimeoutError:
                self._control.kill()
                await self._control.wait()
        await self.redis.stop()


def env(port: int) -> dict[str, str]:
    return {"BULLMQ_REDIS_PORT": str(port)}


async def start_worker(ctx: Context, concurrency: int, number: int = 0,
                       latency: bool = False) -> processes.Child:
    return await processes.Child.start(
        ctx, f"bullmq-worker-c{concurrency}-{number}",
        [_node(), str(DRIVER), "worker", "--concurrency", str(concurrency),
         *(["--latency"] if latency else [])],
        markers=[READY, STOPPED], env=env(ctx.bullmq.port))


# -- drain -------------------------------------------------------------------------------------

async def drain(ctx: Context, variant: Variant) -> Figures:
    bullmq = ctx.bullmq
    count = ctx.size.drain_jobs
    await bullmq.command("obliterate")
    await bullmq.command("bulk", n=count, batch=BATCH)
    await bullmq.command("pause")
    workers: list[processes.Child] = []
    try:
        workers += [await start_worker(ctx, variant.concurrency, number)
                    for number in range(variant.processes)]
        for worker in workers:
            await worker.sighting(READY, START_TIMEOUT)
        await asyncio.sleep(0.2)  # each worker's loop into its blocking wait on the paused queue
        cpu_before = [w.cpu_seconds() for w in workers]
        server_before = bullmq.server_cpu_seconds()
        started = (await bullmq.command("resume"))["at"]
        deadline = time.monotonic() + START_TIMEOUT + count / 20
        while True:
            counts = await bullmq.command("counts")
            if counts["completed"] + counts["failed"] >= count:
                break
            for worker in workers:
                worker.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"BullMQ's workers did not finish {count} jobs: {counts}")
            await asyncio.sleep(POLL_SECONDS)
        server = bullmq.server_cpu_seconds() - server_before
        cpu = sum(w.cpu_seconds() for w in workers) - sum(cpu_before)
        peak = max(w.memory_mib("VmHWM") for w in workers)
        if counts["completed"] != count:
            raise RuntimeError(f"{counts['completed']} of {count} BullMQ jobs completed: {counts}")
        end = (await bullmq.command("last_finished"))["at"]
    finally:
        await processes.stop_all(workers)
    prefix = f"bullmq.drain.{variant.key}"
    figures = {f"{prefix}.jobs_per_s": count / (end - started),
               f"{prefix}.cpu_us_per_job": cpu / count * 1e6,
               f"{prefix}.server_cpu_us_per_job": server / count * 1e6}
    if variant.key == "c10":
        figures["bullmq.memory.worker.peak_rss_mb"] = peak
    return figures


# -- enqueue -----------------------------------------------------------------------------------

async def enqueue(ctx: Context) -> Figures:
    """`Queue.add` one job at a time from one client, then `addBulk` of BULK."""
    bullmq = ctx.bullmq
    await bullmq.command("obliterate")
    await bullmq.command("single", n=50)  # warm-up: scripts loaded
    await bullmq.command("obliterate")
    single = ctx.size.api_single
    single_seconds = (await bullmq.command("single", n=single))["seconds"]
    await bullmq.command("obliterate")
    bulk = ctx.size.batches * BATCH
    bulk_seconds = (await bullmq.command("bulk", n=bulk, batch=BULK))["seconds"]
    return {"bullmq.enqueue.single.jobs_per_s": single / single_seconds,
            "bullmq.enqueue.bulk100.jobs_per_s": bulk / bulk_seconds}


# -- latency -----------------------------------------------------------------------------------

async def latency(ctx: Context) -> Figures:
    """An idle worker gets jobs one by one at ARRIVAL_RATE, each carrying the time just before
    its `add`; the worker subtracts it from its processor's start."""
    bullmq = ctx.bullmq
    count = ctx.size.latency_jobs
    await bullmq.command("obliterate")
    worker = await start_worker(ctx, LATENCY_CONCURRENCY, latency=True)
    try:
        await worker.sighting(READY, START_TIMEOUT)
        await asyncio.sleep(processes.IDLE_SETTLE)
        idle = worker.memory_mib("VmRSS")
        await bullmq.command("arrive", n=count, rate=ARRIVAL_RATE)
        deadline = time.monotonic() + START_TIMEOUT
        while (await bullmq.command("counts"))["completed"] < count:
            worker.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("BullMQ's latency worker did not finish its jobs")
            await asyncio.sleep(POLL_SECONDS)
    finally:
        await worker.stop()
    stopped = worker.seen.get(STOPPED)
    if stopped is None:
        raise processes.ChildFailed(f"the BullMQ worker did not report\n{worker.log_tail()}")
    latencies = json.loads(stopped.line.split(STOPPED, 1)[1])["latencies"]
    if len(latencies) != count:
        raise RuntimeError(f"the BullMQ worker started {len(latencies)} of {count} jobs")
    return {"bullmq.memory.worker.idle_rss_mb": idle,
            **latency_figures("bullmq.latency", latencies, (0.5, 0.95, 0.99))}


def drain_case(variant: Variant) -> Case:
    return Case(f"drain bullmq {variant.key}", lambda ctx: drain(ctx, variant))


def cases_enqueue() -> list[Case]:
    return [Case("enqueue bullmq", enqueue)]


def cases_latency() -> list[Case]:
    return [Case("latency bullmq", latency)]
