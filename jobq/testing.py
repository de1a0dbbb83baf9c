"""Testing your job types, in the manner of Oban.Testing and River's rivertest.

Two ways, from the quickest to the most real:

1. `await run_inline(task, payload)`: your job's code, run now in this process with a real
   context that writes nowhere (its progress reports are kept in `InlineRun.progress`). The
   payload is checked against the declaration as the API checks it, and the timeout is
   enforced. Sync code runs in a thread, also for `runs_in="process"` (so a test can see its
   progress and its exceptions); errors propagate as they were raised.

2. A real worker: `migrate(url)` once, then `with worker("yourpkg.jobs", url) as w:` runs
   `jobq worker --app yourpkg.jobs` in a child process, and `await wait_for(url, job_id)`
   waits until the job is finished. As a pytest plugin (`pytest_plugins = ["jobq.testing"]`)
   this module gives the fixture `jobq_worker`: `jobq_worker("yourpkg.jobs", database_url)`
   starts one, stopped at the end of the test.

Jobs are submitted as your code submits them: `jobq.enqueue(conn, task, payload)` in your
transaction, or `POST /api/v1/jobs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from service import errors
from service.domain import jobtypes

# -- inline ----------------------------------------------------------------------------------


@dataclass
class InlineRun:
    """What an inline run did: its result and every progress report, in order."""

    result: Any
    progress: list[tuple[int, str | None, str | None]] = field(default_factory=list)


class _Context:
    """A real context that writes nowhere: progress is recorded, stopping is asked for with
    `stop()` or by the timeout."""

    def __init__(self, job_id: uuid.UUID, attempt: int, timeout: float,
                 record: list[tuple[int, str | None, str | None]]) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.timeout = timeout
        self._record = record
        self._stopped = False
        self._deadline = time.monotonic() + timeout

    def _note(self, percent: float, stage: str | None, message: str | None) -> None:
        self._record.append((max(0, min(100, round(percent))), stage, message))

    def should_stop(self) -> bool:
        return self._stopped or time.monotonic() >= self._deadline

    def stop(self) -> None:
        self._stopped = True


class _AsyncContext(_Context):
    async def progress(self, percent: float, stage: str | None = None,
                       message: str | None = None) -> None:
        self._note(percent, stage, message)


class _SyncContext(_Context):
    def progress(self, percent: float, stage: str | None = None,
                 message: str | None = None) -> None:
        self._note(percent, stage, message)


async def run_inline(task: jobtypes.Task | str, payload: dict[str, Any] | None = None, *,
                     attempt: int = 1, timeout: float | None = None) -> InlineRun:
    """Run one job of `task` (a declared task or a type's name) now, in this process.

    InvalidRequest if the payload does not fit the declaration (naming the field);
    JobTimeout past `timeout` (default: the type's); whatever the code raises, as raised.
    `attempt` is what the context says (to test code that behaves differently on retries).
    """
    job_type = task.job_type if isinstance(task, jobtypes.Task) else jobtypes.get(task)
    struct = job_type.validate(payload or {})
    func = jobtypes.resolve(job_type)
    limit = job_type.timeout.total_seconds() if timeout is None else timeout
    record: list[tuple[int, str | None, str | None]] = []
    args, kwargs = jobtypes.arguments(job_type, struct)
    if job_type.runs_in == "async":
        ctx: _Context = _AsyncContext(uuid.uuid4(), attempt, limit, record)
        call = func(*((ctx,) if jobtypes.takes_context(job_type, func) else ()), *args, **kwargs)
    else:
        ctx = _SyncContext(uuid.uuid4(), attempt, limit, record)
        call = asyncio.to_thread(
            func, *((ctx,) if jobtypes.takes_context(job_type, func) else ()), *args, **kwargs)
    try:
        result = await asyncio.wait_for(call, timeout=limit)
    except TimeoutError:
        ctx.stop()
        raise errors.JobTimeout(limit) from None
    return InlineRun(result, record)


# -- a real worker ---------------------------------------------------------------------------


def migrate(database_url: str) -> None:
    """Bring a test database to jobq's schema (as `jobq migrate` does)."""
    from service.db import migrate as migrations

    migrations.upgrade(database_url)


class TestWorker:
    """A `jobq worker --app ...` process; `stop()` ends it (SIGINT twice, then SIGKILL)."""

    __test__ = False  # not a test class, whatever pytest thinks of the name

    def __init__(self, app: str, database_url: str, *args: str,
                 env: dict[str, str] | None = None, log_path: str | None = None) -> None:
        environment = {**os.environ, "DATABASE_URL": database_url, "JOBQ_POLL_SECONDS": "0.2",
                       "JOBQ_HEARTBEAT_SECONDS": "1", **(env or {})}
        self.log_path = log_path
        log = open(log_path, "w") if log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--app", app, *args],
            env=environment, stdout=log, stderr=subprocess.STDOUT if log_path else None)
        if log_path:
            log.close()

    def stop(self, timeout: float = 15) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@contextlib.contextmanager
def worker(app: str, database_url: str, *args: str,
           env: dict[str, str] | None = None) -> Iterator[TestWorker]:
    """A real worker running your app's job types for the duration of the block."""
    started = TestWorker(app, database_url, *args, env=env)
    try:
        yield started
    finally:
        started.stop()


FINISHED = ("succeeded", "failed", "cancelled")


async def wait_for(database_url: str, job_id: uuid.UUID | str,
                   statuses: tuple[str, ...] = FINISHED, timeout: float = 30) -> dict[str, Any]:
    """The job (its job_overview row) once its status is one of `statuses`; TimeoutError
    past `timeout` seconds."""
    from service.db import engine

    conn = await engine.connect(database_url)
    try:
        deadline = time.monotonic() + timeout
        while True:
            row = await conn.fetchrow("SELECT * FROM job_overview WHERE id = $1",
                                      uuid.UUID(str(job_id)))
            if row is not None and row["status"] in statuses:
                return dict(row)
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is {row and row['status']} after {timeout} s")
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


try:  # the pytest fixture, when pytest is there
    import pytest
except ImportError:  # pragma: no cover
    pass
else:
    @pytest.fixture
    def jobq_worker() -> Iterator[Any]:
        """Start real workers: `jobq_worker("yourpkg.jobs", database_url)`; each is stopped
        at the end of the test."""
        started: list[TestWorker] = []

        def start(app: str, database_url: str, *args: str,
                  env: dict[str, str] | None = None) -> TestWorker:
            started.append(TestWorker(app, database_url, *args, env=env))
            return started[-1]

        yield start
        for one in started:
            one.stop()
