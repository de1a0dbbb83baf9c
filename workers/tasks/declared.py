"""Running a declared job type's code where its declaration says (`runs_in`):

- "async": awaited on the worker's event loop;
- "thread": a sync function in one of the worker's threads (I/O-bound work);
- "process": a sync function in a child process of workers/sandbox.py, which the timeout or a
  cancel kills (CPU-bound work).

Neither of the last two blocks the event loop, so heartbeats, progress writes and other jobs go
on meanwhile. The function gets the context first if it asks for it (a parameter named `ctx` or
`context`, or typed jobq.Context / jobq.SyncContext), then the payload: as keyword arguments
when its schema came from the function's parameters, else as the one Struct.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from service import errors
from service.domain import jobtypes
from workers import sandbox
from workers.outcomes import Handler
from workers.progress import JobRun


class Threads:
    """The worker's threads for sync job code: as many as jobs it runs at once."""

    def __init__(self, size: int) -> None:
        self.executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=size, thread_name_prefix="jobq-job")

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        # A thread cannot be killed: one still running is left to finish on its own.
        self.executor.shutdown(wait=False, cancel_futures=True)


def make_handler(job_type: jobtypes.JobType, pool: sandbox.Sandbox, threads: Threads) -> Handler:
    """The worker's handler for `job_type`: its code, run where its declaration says."""
    func = jobtypes.resolve(job_type)
    with_context = jobtypes.takes_context(job_type, func)

    if job_type.runs_in == "async":
        async def run_async(run: JobRun, payload: msgspec.Struct) -> Any:
            run.sandbox = pool
            args, kwargs = jobtypes.arguments(job_type, payload)
            return await func(*((run,) if with_context else ()), *args, **kwargs)
        return run_async

    if job_type.runs_in == "thread":
        async def run_in_thread(run: JobRun, payload: msgspec.Struct) -> Any:
            loop = asyncio.get_running_loop()
            ctx = ThreadContext(run, loop)
            args, kwargs = jobtypes.arguments(job_type, payload)
            call = functools.partial(func, *((ctx,) if with_context else ()), *args, **kwargs)
            try:
                return await loop.run_in_executor(threads.executor, call)
            finally:
                ctx.ended = True  # stopped or timed out: should_stop() says so from now on
        return run_in_thread

    target = f"{func.__module__}:{func.__qualname__}"
    try:
        found = jobtypes.import_code(target)
    except (ImportError, AttributeError):
        found = None
    if found is not func:  # the child process finds the function by its name
        raise jobtypes.DeclarationError(
            f"job type {job_type.name!r}: runs_in='process' needs a function defined at module "
            f"level, which a child process can import by name; {target} is not one")

    async def run_in_process(run: JobRun, payload: msgspec.Struct) -> Any:
        args, kwargs = jobtypes.arguments(job_type, payload)
        info = ChildInfo(run.job_id, run.attempt, run.timeout)

        async def relay(percent: int, stage: str | None = None,
                        message: str | None = None) -> None:
            await run.progress(percent, stage, message)

        try:
            return await pool.run(call_in_child, target, with_context, info, args, kwargs,
                                  timeout=run.timeout, on_progress=relay)
        except sandbox.SandboxTimeout:
            raise errors.JobTimeout(run.timeout) from None
    return run_in_process


class ThreadContext:
    """A sync job's context in a worker thread: progress is handed to the event loop."""

    def __init__(self, run: JobRun, loop: asyncio.AbstractEventLoop) -> None:
        self._run = run
        self._loop = loop
        self._deadline = time.monotonic() + run.timeout
        self.job_id = run.job_id
        self.attempt = run.attempt
        self.timeout = run.timeout
        self.ended = False

    def progress(self, percent: float, stage: str | None = None,
                 message: str | None = None) -> None:
        if not self.ended:
            asyncio.run_coroutine_threadsafe(self._run.progress(percent, stage, message),
                                             self._loop)

    def should_stop(self) -> bool:
        return (self.ended or self._run.should_stop()
                or time.monotonic() >= self._deadline)


@dataclass(frozen=True)
class ChildInfo:
    job_id: uuid.UUID
    attempt: int
    timeout: float


class ChildContext:
    """A sync job's context in a child process: progress goes back through the pipe. The
    child is killed when the job must stop, so should_stop() stays False."""

    def __init__(self, info: ChildInfo, report: Callable[..., None]) -> None:
        self.job_id = info.job_id
        self.attempt = info.attempt
        self.timeout = info.timeout
        self._report = report

    def progress(self, percent: float, stage: str | None = None,
                 message: str | None = None) -> None:
        self._report(max(0, min(100, round(percent))), stage, message)

    def should_stop(self) -> bool:
        return False


def call_in_child(target: str, with_context: bool, info: ChildInfo, args: tuple,
                  kwargs: dict[str, Any], progress: Callable[..., None]) -> Any:
    """In the child process: import the job's function by name and run it."""
    func = jobtypes.import_code(target)
    context = (ChildContext(info, progress),) if with_context else ()
    return func(*context, *args, **kwargs)
