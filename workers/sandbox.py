"""Runs CPU-heavy work in a child process that a timeout can kill.

Children fork from multiprocessing's forkserver, which imports trimesh and the conversion once
(`preload`) and runs none of the worker's threads or event loop. So each job starts warm in
milliseconds instead of paying the import (0.4-1.5 s), gets a fresh process that no earlier job
has dirtied, and a killed child needs no repair: the next job forks a new warm one. The worker
itself is never forked. The forkserver starts with the first job that needs a child: a worker
that runs none has no child process and never imports what the children preload.

Each child has an address-space limit (RLIMIT_AS) and kills itself when the worker dies (it
watches the pipe only the worker reads). The worker's event loop only watches that pipe too,
so heartbeats and other jobs keep running while a child burns CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import pickle
import resource
import select
import signal
import threading
import traceback
from collections.abc import Awaitable, Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

OnProgress = Callable[..., Awaitable[None]]
"""on_progress(percent, stage), or (percent, stage, message) when the work gave one."""

PRELOAD = ("trimesh", "PIL.Image", "collada", "workers.convert")
"""Modules the forkserver imports once for every child. The forkserver is one per worker
process: the preload of the first Sandbox to start a child wins."""

_PR_SET_PDEATHSIG = 1
_TRACEBACK_CHARS = 8000  # the end of a traceback says where; the job history keeps 4000


class SandboxError(Exception):
    """The work could not be run to an answer in the child process."""


class SandboxTimeout(SandboxError):
    """The child ran past its time and was killed."""


class SandboxCrashed(SandboxError):
    """The child died without answering (killed, out of memory, crashed)."""


class SandboxOutOfMemory(SandboxCrashed):
    """The child hit its memory limit."""


class SandboxClosed(SandboxError):
    """The sandbox was closed; it runs nothing more."""


class RemoteError(SandboxError):
    """The work raised an exception that could not come back as itself; this names it."""


class RemoteTraceback(Exception):
    """The child's traceback, chained to the exception it raised so logs show where."""

    def __str__(self) -> str:
        return f"\n\nIn the child process:\n{self.args[0]}"


class Sandbox:
    """At most `size` child processes at a time, each with `memory_mb` of address space."""

    def __init__(self, size: int = 2, memory_mb: int | None = 2048,
                 preload: Sequence[str] = PRELOAD) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(preload))
        self._slots = asyncio.Semaphore(size)
        self._running: set[BaseProcess] = set()
        self._closed = False
        self.memory_mb = memory_mb

    async def start(self) -> None:
        """Nothing, on purpose: the forkserver starts with the first job that needs a child
        (that job waits for its imports, 0.4-1.5 s), so a worker that runs none pays nothing.
        `warm_up` starts it now."""

    async def warm_up(self) -> None:
        """Start the forkserver and its imports now, so the next job does not wait for them."""
        await self.run(_ready, timeout=120)

    async def run(self, func: Callable[..., Any], *args: Any, timeout: float,
                  on_progress: OnProgress | None = None) -> Any:
        """`func(*args, progress=report)` in a child; its result, or its exception re-raised.

        `report(percent, stage=None, message=None)` in the child awaits `on_progress` here.
        SandboxTimeout past `timeout` seconds from the child's start; cancelling the caller
        kills the child too.
        """
        if self._closed:
            raise SandboxClosed("the sandbox is closed")
        async with self._slots:
            return await self._run(func, args, timeout, on_progress)

    async def close(self) -> None:
        """Kill the children still running and refuse new work."""
        self._closed = True
        for process in list(self._running):
            _kill(process)

    async def _run(self, func: Callable[..., Any], args: tuple, timeout: float,
                   on_progress: OnProgress | None) -> Any:
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_child, args=(sender, func, args, self.memory_mb), daemon=True)
        deadline = asyncio.timeout(timeout)
        try:
            await _start(process)
            sender.close()  # the child holds the only writer: its death means end of file
            self._running.add(process)
            if self._closed:
                raise SandboxClosed("the sandbox was closed while the work started")
            async with deadline:
                return await self._answer(process, receiver, on_progress)
        except TimeoutError:
            if deadline.expired():
                raise SandboxTimeout(
                    f"killed after {timeout:g} s: the work ran past its time limit") from None
            raise  # the work's own TimeoutError
        finally:
            self._running.discard(process)
            sender.close()
            await _reap(process)
            receiver.close()

    async def _answer(self, process: BaseProcess, receiver: Connection,
                      on_progress: OnProgress | None) -> Any:
        """Relay progress until the child answers; its result, or its error raised."""
        with _Inbox(receiver) as inbox:
            while (message := await inbox.get()) is not None:
                kind, *rest = message
                if kind == "progress" and on_progress is not None:
                    await on_progress(*rest)
                elif kind == "ok":
                    return rest[0]
                elif kind == "error":
                    raise self._error(*rest)
        if self._closed:
            raise SandboxClosed("the sandbox was closed while the work ran")
        await _reap(process)
        hint = self._memory_hint() if (process.exitcode or 0) < 0 else "See the worker's log."
        raise SandboxCrashed(
            f"The child process died without answering ({_death(process)}). {hint}")

    def _error(self, error: BaseException, text: str) -> BaseException:
        if isinstance(error, MemoryError):
            error = SandboxOutOfMemory(f"The work ran out of memory. {self._memory_hint()}")
        error.__cause__ = RemoteTraceback(text)
        return error

    def _memory_hint(self) -> str:
        if not self.memory_mb:
            return "No memory limit was set; the system may have killed it for using too much."
        return (f"Each child may use {self.memory_mb} MB (the memory limit); a child killed or "
                "crashing near it usually needed more.")


class _Inbox:
    """Messages from one child, read only when the pipe is readable, so the loop never waits
    for the child. Messages are small (progress, a result naming a file, an error with a
    capped traceback): once the first byte is readable the rest follows at once."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: asyncio.Queue[tuple | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()

    def __enter__(self) -> _Inbox:
        self._loop.add_reader(self._conn.fileno(), self._readable)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._loop.remove_reader(self._conn.fileno())

    async def get(self) -> tuple | None:
        """The next message, or None once the child has closed its end (it exited or died)."""
        return await self._queue.get()

    def _readable(self) -> None:
        try:
            blob = self._conn.recv_bytes()
        except (EOFError, OSError):
            self._loop.remove_reader(self._conn.fileno())
            self._queue.put_nowait(None)
            return
        self._queue.put_nowait(_loads(blob))


def _loads(blob: bytes) -> tuple:
    """A message from the child; one that cannot be read here becomes a RemoteError."""
    try:
        return pickle.loads(blob)
    except Exception as exc:
        return ("error", RemoteError(f"the child's answer could not be read here: {exc!r}"), "")


async def _start(process: BaseProcess) -> None:
    # Starting talks to the forkserver (and starts it the first time): keep it off the loop.
    # If the caller is cancelled meanwhile, let the start finish so the child can be killed.
    starting = asyncio.ensure_future(asyncio.to_thread(process.start))
    try:
        await asyncio.shield(starting)
    except asyncio.CancelledError:
        await asyncio.wait([starting])
        raise


def _kill(process: BaseProcess) -> None:
    if process.pid is not None and process.exitcode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)


async def _reap(process: BaseProcess) -> None:
    """Kill the child if it still runs and collect it, without blocking the loop."""
    if process.pid is None:
        return  # never started
    _kill(process)
    await asyncio.to_thread(process.join, 5)


def _death(process: BaseProcess) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        return f"exit code {code}, {signal.Signals(-code).name}"
    return f"exit code {code}"


def _ready(progress: Callable[[int, str], None]) -> int:
    """A job that does nothing: proves the forkserver is up with its imports."""
    return os.getpid()


def _child(conn: Connection, func: Callable[..., Any], args: tuple,
           memory_mb: int | None) -> None:
    """In the child: die with the parent, limit memory, run, send back the answer."""
    _die_with_parent(conn)
    if memory_mb:
        _limit_memory(memory_mb)

    def report(percent: int, stage: str | None = None, message: str | None = None) -> None:
        # A message only when there is one: on_progress(percent, stage) is enough otherwise.
        extra = () if message is None else (str(message),)
        conn.send_bytes(pickle.dumps(("progress", int(percent),
                                      None if stage is None else str(stage), *extra)))

    try:
        message = ("ok", func(*args, progress=report))
    except BaseException as exc:
        text = "".join(traceback.format_exception(exc))[-_TRACEBACK_CHARS:]
        message = ("error", _portable(exc), text)
    conn.send_bytes(_dumps(message))


def _die_with_parent(conn: Connection) -> None:
    """SIGKILL this child when the worker that waits for it dies.

    The forkserver outlives the worker while any child runs (each child holds the pipe whose
    end of file tells the forkserver to quit), so PR_SET_PDEATHSIG alone would wait forever.
    The worker holds the only reading end of `conn`: when it dies, the writing end here
    reports an error, and a thread that waits for just that ends the child.
    """
    with contextlib.suppress(OSError, AttributeError):  # Linux only; a second line of defence
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    threading.Thread(target=_watch_reader, args=(conn.fileno(),), daemon=True).start()


def _watch_reader(fd: int) -> None:
    poller = select.poll()
    poller.register(fd, 0)  # no events asked: poll still reports POLLERR, POLLHUP, POLLNVAL
    while True:
        for _fd, event in poller.poll():
            if event & select.POLLNVAL:
                return  # our own end was closed: the child is exiting anyway
            if event & (select.POLLERR | select.POLLHUP):
                os.kill(os.getpid(), signal.SIGKILL)


def _limit_memory(memory_mb: int) -> None:
    limit = memory_mb * 1024 * 1024
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _portable(exc: BaseException) -> BaseException:
    """The exception itself if the parent can rebuild it, else a RemoteError naming it.
    SystemExit and the like come back as RemoteError: raised in the worker they would stop it."""
    named = RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}: {exc}")
    if not isinstance(exc, Exception):
        return named
    try:
        # Exceptions pickle as (type, args); a custom __init__ may not take its args back.
        rebuilt = pickle.loads(pickle.dumps(exc))
    except Exception:
        return named
    return exc if type(rebuilt) is type(exc) else named


def _dumps(message: tuple) -> bytes:
    try:
        return pickle.dumps(message)
    except Exception as exc:  # a result that does not pickle
        return pickle.dumps(("error", RemoteError(f"the result could not be sent back: {exc!r}"),
                             ""))
