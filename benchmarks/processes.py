"""The processes a benchmark starts (`jobq serve`, `jobq worker`, the stock worker), and what
Linux says about them: CPU time and memory, read from /proc."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import signal
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from benchmarks.context import Context

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

JOBQ_REGISTERED = " registered as "
"""What `jobq worker` logs once it is registered and about to claim."""

IDLE_SETTLE = 1.0
"""Seconds a freshly started process is left idle before its idle memory is read."""

STOP_TIMEOUT = 30.0
"""Seconds a stopped process gets before it is killed."""

_libc = ctypes.CDLL(None, use_errno=True)  # looked up before any fork, never in the child
_PR_SET_PDEATHSIG = 1


class ChildFailed(RuntimeError):
    """A process the benchmark started exited or never said what it was waited for."""


@dataclass(frozen=True)
class Sighting:
    """A line a process printed, and when the benchmark read it."""

    at: float
    """time.monotonic() when the line was read."""
    line: str


class Child:
    """A process started by a benchmark; its output goes to a log file and is watched for
    marker lines."""

    def __init__(self, name: str, process: asyncio.subprocess.Process, log_path: Path,
                 markers: Sequence[str]) -> None:
        self.name = name
        self.process = process
        self.pid = process.pid
        self.log_path = log_path
        self.seen: dict[str, Sighting] = {}
        self._markers = {marker: asyncio.Event() for marker in markers}
        self._log = open(log_path, "wb")  # closed by the reader when the output ends
        self._reader = asyncio.create_task(self._read_output(), name=f"output of {name}")

    @classmethod
    async def start(cls, ctx: Context, name: str, argv: list[str],
                    markers: Sequence[str] = (), env: dict[str, str] | None = None) -> Child:
        process = await asyncio.create_subprocess_exec(
            *argv, env=ctx.child_env() | (env or {}), cwd=ctx.log_dir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            preexec_fn=functools.partial(die_with_parent, os.getpid()))
        return cls(name, process, ctx.log_dir / f"{name}-{process.pid}.log", markers)

    async def _read_output(self) -> None:
        assert self.process.stdout is not None
        try:
            async for raw in self.process.stdout:
                self._log.write(raw)
                self._log.flush()
                line = raw.decode(errors="replace")
                for marker, event in self._markers.items():
                    if marker in line and not event.is_set():
                        self.seen[marker] = Sighting(time.monotonic(), line)
                        event.set()
        finally:
            self._log.close()
            for event in self._markers.values():
                event.set()  # the output ended: wake whoever waits, sighting or not

    async def sighting(self, marker: str, timeout: float) -> Sighting:
        """Wait until the process prints `marker`."""
        try:
            await asyncio.wait_for(self._markers[marker].wait(), timeout)
        except TimeoutError:
            raise ChildFailed(f"{self.name} did not print {marker!r} within {timeout:.0f} s"
                              f"\n{self.log_tail()}") from None
        if marker not in self.seen:
            raise ChildFailed(f"{self.name} exited before printing {marker!r}"
                              f"\n{self.log_tail()}")
        return self.seen[marker]

    def check_alive(self) -> None:
        if self.process.returncode is not None:
            raise ChildFailed(f"{self.name} exited with {self.process.returncode}"
                              f"\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the process (all its threads), from /proc."""
        return cpu_seconds(self.pid)

    def memory_mib(self, field: str = "VmRSS") -> float:
        """A memory figure of /proc/PID/status in MiB: VmRSS (now) or VmHWM (peak)."""
        return status_kib(self.pid, field) / 1024

    def tree_rss_mib(self) -> float:
        """Resident memory of the process and all its descendants, summed, in MiB."""
        return sum(status_kib(pid, "VmRSS") for pid in [self.pid, *descendants(self.pid)]) / 1024

    async def stop(self) -> int:
        """SIGTERM (a graceful stop), then SIGKILL after STOP_TIMEOUT; returns the exit code."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._reader
        return self.process.returncode  # type: ignore[return-value]

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(f"  {self.name}| {line}" for line in text.splitlines()[-lines:])


async def jobq_worker(ctx: Context, concurrency: int, number: int = 0,
                      env: dict[str, str] | None = None) -> Child:
    """A real `jobq worker` process on the run's database (`env`: extra settings)."""
    return await Child.start(
        ctx, f"jobq-worker-c{concurrency}-{number}",
        [sys.executable, "-m", "service.cli", "worker", "--concurrency", str(concurrency),
         "--name", f"bench-{number}"],
        markers=[JOBQ_REGISTERED], env=env)


async def jobq_api(ctx: Context, port: int) -> Child:
    """A real `jobq serve` process on the run's database, listening on 127.0.0.1:`port`, with
    authentication off (on loopback): the figures stay comparable with earlier runs, and a
    key costs one indexed lookup per request (docs/security.md)."""
    return await Child.start(
        ctx, "jobq-api",
        [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env={"JOBQ_AUTH": "off"})


async def stop_all(children: Sequence[Child]) -> None:
    """Stop every child, all at once; the first failure is raised after all were stopped."""
    results = await asyncio.gather(*(c.stop() for c in children), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


READY_TIMEOUT = 60.0
"""Seconds a started API may take to answer /ready."""


async def wait_http_ready(client: aiohttp.ClientSession, server: Child) -> None:
    """Wait until the API `server` answers /ready with 200."""
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        server.check_alive()
        try:
            async with client.get("/ready") as response:
                if response.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise ChildFailed(f"the API was not ready within {READY_TIMEOUT:.0f} s\n"
                      f"{server.log_tail()}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """utime + stime of /proc/PID/stat, in seconds."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # fields from the third (state) on
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def status_kib(pid: int, field: str) -> int:
    """A `kB` line of /proc/PID/status (0 if the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(f"{field} not in /proc/{pid}/status")


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, their children, ...), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        parents[int(entry.name)] = int(text[text.rindex(")") + 2:].split()[1])
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def die_with_parent(parent: int) -> None:
    """In the child, before exec: killed when the benchmark dies, so nothing it started outlives
    a crash or a timeout (the embedded PostgreSQL does the same)."""
    if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
        os._exit(1)


def parent_pid(pid: int) -> int:
    """The parent of `pid`, from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text[text.rindex(")") + 2:].split()[1])


def server_cpu_seconds(pid: int) -> float:
    """CPU seconds of a server process and all its children: its own user + system time, that
    of its children still alive, and that of those it has reaped (cutime + cstime). For
    PostgreSQL's postmaster this is every backend and background process of the server."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()
    ticks = sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    for child in children(pid):
        try:
            ticks += round(cpu_seconds(child) * CLOCK_TICKS)
        except OSError:
            pass  # exited meanwhile: counted in cutime once reaped
    return ticks / CLOCK_TICKS


def children(pid: int) -> list[int]:
    """The direct children of `pid`, from /proc/PID/task/*/children."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found
