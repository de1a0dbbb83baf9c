"""Runs CPU-heavy work in a child process that a timeout can kill.

Children fork from a multiprocessing forkserver that has imported trimesh and the conversion
once, so a conversion starts in milliseconds instead of paying the import (0.4-1.5 s) each time,
and never forks the worker itself (its event loop and threads). Each child gets a memory limit
and dies with its parent. The worker's event loop only waits on a pipe, so heartbeats and other
jobs keep running while a child burns CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import multiprocessing
import os
import resource
import signal
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

OnProgress = Callable[[int, str], Awaitable[None]]

PRELOAD = ["trimesh", "workers.convert"]
_PR_SET_PDEATHSIG = 1


class SandboxError(Exception):
    """The work could not be run to an answer in the child process."""


class SandboxTimeout(SandboxError):
    """The child ran past its time and was killed."""


class SandboxCrashed(SandboxError):
    """The child died without answering (killed, out of memory, crashed)."""


class RemoteError(SandboxError):
    """The work raised an exception that could not be sent back as itself."""


def _child(conn: Connection, func: Callable[..., Any], args: tuple, memory_mb: int | None) -> None:
    """In the child: limit memory, die with the parent, run, send back the answer."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if memory_mb:
        limit = memory_mb * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    def progress(percent: int, stage: str) -> None:
        conn.send(("progress", percent, stage))

    try:
        result = func(*args, progress=progress)
    except BaseException as exc:
        try:
            conn.send(("error", exc))
        except Exception:  # an exception that does not pickle: send its words
            conn.send(("error", RemoteError(f"{type(exc).__name__}: {exc}")))
    else:
        conn.send(("ok", result))
    finally:
        conn.close()


class Sandbox:
    """At most `size` child processes at a time, each with `memory_mb` of address space."""

    def __init__(self, size: int = 2, memory_mb: int | None = 2048) -> None:
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(PRELOAD)
        self._slots = asyncio.Semaphore(size)
        self.memory_mb = memory_mb

    async def run(self, func: Callable[..., Any], *args: Any, timeout: float,
                  on_progress: OnProgress | None = None) -> Any:
        """`func(*args, progress=...)` in a child; its result or its exception.
        SandboxTimeout past `timeout` seconds; cancelling the caller kills the child."""
        async with self._slots:
            return await self._run(func, args, timeout, on_progress)

    async def _run(self, func: Callable[..., Any], args: tuple, timeout: float,
                   on_progress: OnProgress | None) -> Any:
        receiver, sender = self._context.Pipe(duplex=False)
        process = self._context.Process(target=_child, args=(sender, func, args, self.memory_mb),
                                        daemon=True)
        # Starting talks to the forkserver (and starts it the first time): keep it off the loop.
        await asyncio.to_thread(process.start)
        sender.close()
        messages: asyncio.Queue[Any] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        def readable() -> None:
            try:
                messages.put_nowait(receiver.recv())
            except (EOFError, OSError):
                loop.remove_reader(receiver.fileno())
                messages.put_nowait(("eof",))

        loop.add_reader(receiver.fileno(), readable)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await messages.get()
                    if message[0] == "progress":
                        if on_progress is not None:
                            await on_progress(message[1], message[2])
                    elif message[0] == "ok":
                        return message[1]
                    elif message[0] == "error":
                        raise message[1]
                    else:
                        break
        except TimeoutError:
            raise SandboxTimeout(f"stopped after {timeout:g} s") from None
        finally:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(receiver.fileno())
            receiver.close()
            await _reap(process)
        raise SandboxCrashed(
            f"the conversion process died (exit code {process.exitcode}); the file is probably "
            f"too large or malformed for the memory limit of {self.memory_mb} MB")


async def _reap(process: multiprocessing.process.BaseProcess) -> None:
    """Kill the child if it still runs and collect it, without blocking the loop."""
    if process.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
    await asyncio.to_thread(process.join, 5)
