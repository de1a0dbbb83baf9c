"""The worker: claims jobs, runs them concurrently, records every outcome.

Hot path: one round trip claims as many jobs as there are free slots (jobq_claim_jobs), and one
round trip records each outcome (jobq_finish_attempt). Idle workers wake on Procrastinate's
NOTIFY and also poll, so a lost notification only delays a job by the poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from procrastinate import manager as pq_manager

from service import errors
from service.backend import CONNECTION_ERRORS, Backend
from service.domain import jobtypes
from service.domain.status import Outcome
from service.settings import Settings
from workers import leases
from workers.progress import JobRun

logger = logging.getLogger(__name__)

Handler = Callable[[JobRun, Any], Awaitable[dict[str, Any] | None]]


class _Stop(Exception):
    """Why a running job was told to stop."""


@dataclass
class _Running:
    claimed: leases.Claimed
    run: JobRun
    task: asyncio.Task
    stop_reason: Outcome | None = None
    finishing: bool = False
    """The outcome is known and being written: stopping it now would lose it."""


class Worker:
    """One worker process's job loop."""

    def __init__(self, backend: Backend, settings: Settings, handlers: dict[str, Handler],
                 name: str | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.handlers = handlers
        self.queues = list(settings.worker_queues) or None
        self.concurrency = settings.worker_concurrency
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.worker_id: int | None = None
        self._running: dict[int, _Running] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._immediate = asyncio.Event()
        self._background: list[asyncio.Task] = []

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: stop taking jobs, let running ones finish within the grace period.
        Second call: stop running jobs now (they go back to the queue)."""
        if self._stopping.is_set():
            logger.warning("worker %s: second stop request, interrupting running jobs", self.name)
            self._immediate.set()
        else:
            logger.info("worker %s: stopping; %d job(s) running", self.name, len(self._running))
            self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Work until request_stop(); then drain and unregister."""
        await self._register()
        self._background = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._listen(), name="listen"),
            asyncio.create_task(self._maintenance_loop(), name="maintenance"),
        ]
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await self._unregister()

    async def _register(self) -> None:
        while True:
            try:
                async with self.backend.connection() as conn:
                    self.worker_id = await leases.register(
                        conn, self.name, socket.gethostname(), os.getpid(),
                        self.queues or [], self.concurrency)
                logger.info("worker %s registered as %s, queues=%s, concurrency=%d",
                            self.name, self.worker_id, self.queues or "all", self.concurrency)
                return
            except (errors.DatabaseUnavailable, *CONNECTION_ERRORS) as exc:
                logger.warning("worker %s cannot register yet: %s", self.name, exc)
                await asyncio.sleep(1)

    async def _unregister(self) -> None:
        if self.worker_id is None:
            return
        with contextlib.suppress(Exception):
            async with self.backend.connection() as conn:
                await leases.unregister(conn, self.worker_id)
        logger.info("worker %s stopped", self.name)

    # -- claiming ----------------------------------------------------------------------------

    async def _claim_loop(self) -> None:
        poll = self.settings.poll_interval.total_seconds()
        while not self._stopping.is_set():
            free = self.concurrency - len(self._running)
            claimed: list[leases.Claimed] = []
            if free > 0:
                self._wake.clear()
                try:
                    async with self.backend.connection() as conn:
                        claimed = await leases.claim(
                            conn, self.worker_id, self.name, self.queues, free)
                except (errors.DatabaseUnavailable, *CONNECTION_ERRORS) as exc:
                    logger.warning("worker %s: cannot claim jobs: %s", self.name, exc)
                    await asyncio.sleep(1)
                    continue
                for job in claimed:
                    self._start(job)
            if free > 0 and len(claimed) == free:
                continue  # there may be more work right away
            # Wait for a notification, a finished job (free slot) or the poll interval.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=poll)

    def _start(self, job: leases.Claimed) -> None:
        async def write(percent: int, stage: str | None, message: str | None) -> bool:
            async with self.backend.connection() as conn:
                return await leases.write_progress(conn, job.attempt_id, percent, stage, message)

        run = JobRun(job_id=job.job_id, attempt=job.attempt, timeout=job.timeout_seconds,
                     _writer=write,
                     _interval=self.settings.progress_interval.total_seconds())
        task = asyncio.create_task(self._execute(job, run), name=f"job-{job.job_id}")
        self._running[job.attempt_id] = _Running(job, run, task)

    # -- running -----------------------------------------------------------------------------

    async def _execute(self, job: leases.Claimed, run: JobRun) -> None:
        try:
            outcome, result, error, retry_at = await self._outcome(job, run)
            self._running[job.attempt_id].finishing = True
            await run.close()
            await self._record(job, outcome, result, error, retry_at)
        finally:
            self._running.pop(job.attempt_id, None)
            self._wake.set()

    async def _outcome(self, job: leases.Claimed, run: JobRun):
        """Run the job; returns (outcome, result, error, retry_at)."""
        try:
            job_type = jobtypes.get(job.task_name)
            handler = self.handlers[job.task_name]
        except (errors.UnknownJobType, KeyError):
            return Outcome.FAILED, None, _error(errors.PermanentJobError(
                f"This worker has no code for job type {job.task_name!r}.")), None
        try:
            payload = msgspec.convert(job.payload, job_type.payload)
            async with asyncio.timeout(job.timeout_seconds):
                result = await handler(run, payload)
            return Outcome.SUCCEEDED, result, None, None
        except asyncio.CancelledError:
            reason = self._running[job.attempt_id].stop_reason
            if reason is None:
                raise  # the worker itself is being torn down
            return reason, None, None, None
        except TimeoutError:
            error = {"type": "JobTimeout", "retryable": False,
                     "message": f"The job ran longer than its timeout of "
                                f"{job.timeout_seconds:g} s and was stopped."}
            return Outcome.FAILED, None, error, None
        except Exception as exc:
            retryable = job_type.retry.is_retryable(exc)
            error = _error(exc, retryable)
            if job_type.retry.should_retry(job.budget_attempt, retryable, job.max_attempts):
                delay = job_type.retry.delay(job.budget_attempt)
                return Outcome.RETRY, None, error, datetime.now(UTC) + delay
            return Outcome.FAILED, None, error, None

    async def _record(self, job: leases.Claimed, outcome: Outcome, result: Any,
                      error: dict[str, Any] | None, retry_at: datetime | None) -> None:
        """Write the outcome; keep trying while the database is away, so none is lost."""
        if result is not None and not isinstance(result, dict):
            result = {"value": result}
        delay = 0.5
        while True:
            try:
                async with self.backend.connection() as conn:
                    applied = await leases.finish(conn, job.attempt_id, outcome.value,
                                                  result, error, retry_at)
                break
            except (errors.DatabaseUnavailable, *CONNECTION_ERRORS) as exc:
                logger.warning("job %s: outcome not recorded yet (%s); retrying", job.job_id, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
        if not applied:
            logger.warning("job %s attempt %d: outcome %s refused, the lease was lost",
                           job.job_id, job.attempt, outcome.value)
        elif outcome in (Outcome.FAILED, Outcome.RETRY):
            logger.info("job %s attempt %d %s: %s", job.job_id, job.attempt, outcome.value,
                        error and error.get("message"))

    def _stop(self, running: _Running, reason: Outcome) -> None:
        if running.stop_reason is None and not running.finishing:
            running.stop_reason = reason
            running.run.stop_requested.set()
            running.task.cancel()

    async def _drain(self) -> None:
        """After a stop request: give running jobs the grace period, then interrupt them."""
        if self._running and not self._immediate.is_set():
            all_done = asyncio.gather(*(r.task for r in self._running.values()),
                                      return_exceptions=True)
            immediate = asyncio.create_task(self._immediate.wait())
            await asyncio.wait([all_done, immediate], timeout=self.settings.shutdown_grace
                               .total_seconds(), return_when=asyncio.FIRST_COMPLETED)
            immediate.cancel()
        for running in list(self._running.values()):
            self._stop(running, Outcome.INTERRUPTED)
        if self._running:
            # Outcomes being written get a last chance; an attempt left open is recovered
            # later as lost, so the job still runs again.
            tasks = [r.task for r in self._running.values()]
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- background --------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval.total_seconds()
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.backend.connection() as conn:
                    alive = await leases.heartbeat(conn, self.worker_id)
                    to_abort = set()
                    if alive and self._running:
                        to_abort = await leases.abort_requested(conn, self.worker_id)
            except Exception as exc:
                logger.warning("worker %s: heartbeat failed: %s", self.name, exc)
                continue
            if not alive:
                await self._lease_lost()
            for attempt_id in to_abort:
                if attempt_id in self._running:
                    self._stop(self._running[attempt_id], Outcome.CANCELLED)

    async def _lease_lost(self) -> None:
        """Declared dead while alive (a long pause, a partition): our jobs now belong to
        others. Stop them (their writes would be refused anyway) and register anew."""
        logger.error("worker %s was declared dead; abandoning %d job(s) and re-registering",
                     self.name, len(self._running))
        for running in list(self._running.values()):
            self._stop(running, Outcome.INTERRUPTED)
        await self._register()

    async def _listen(self) -> None:
        async def on_notification(channel: str, payload: str) -> None:
            try:
                message = json.loads(payload)
            except ValueError:
                return
            if message.get("type") == "job_inserted":
                self._wake.set()
            elif message.get("type") == "abort_job_requested":
                await self._abort_queue_job(message.get("job_id"))

        channels = pq_manager.get_channel_for_queues(self.queues)
        await self.backend.queue.connector.listen_notify(on_notification, channels)

    async def _abort_queue_job(self, queue_job_id: int | None) -> None:
        if queue_job_id is None or not self._running:
            return
        async with self.backend.connection() as conn:
            attempt_id = await leases.attempt_of_queue_job(conn, queue_job_id)
        running = self._running.get(attempt_id) if attempt_id else None
        if running is not None:
            logger.info("job %s: cancelled by a client, stopping it", running.claimed.job_id)
            self._stop(running, Outcome.CANCELLED)

    async def _maintenance_loop(self) -> None:
        """Recover jobs of dead workers. Every worker runs this; the SQL is safe to run twice."""
        stall = self.settings.stall_timeout.total_seconds()
        while True:
            # Jitter spreads the workers' runs apart.
            await asyncio.sleep(stall / 3 * (0.5 + random.random()))
            try:
                async with self.backend.connection() as conn:
                    recovered = await leases.recover_stalled(conn, stall)
            except Exception as exc:
                logger.warning("worker %s: stalled-job recovery failed: %s", self.name, exc)
                continue
            if recovered:
                logger.warning("recovered %d job(s) of dead workers: %s", len(recovered),
                               ", ".join(f"{r['job_id']} {r['outcome']}" for r in recovered))


def _error(exc: BaseException, retryable: bool | None = None) -> dict[str, Any]:
    """An exception as the error object clients see, with its traceback for the history."""
    if retryable is None:
        retryable = getattr(exc, "retryable", False)
    return {
        "type": type(exc).__name__,
        "message": str(exc) or type(exc).__name__,
        "retryable": retryable,
        "traceback": "".join(traceback.format_exception(exc))[-4000:],
    }
