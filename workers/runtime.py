"""The worker: claims jobs, runs them concurrently, records every outcome.

Hot path: one round trip claims as many jobs as there are free slots (jobq_claim_jobs), and one
transaction records every outcome that is waiting (jobq_finish_attempts): while it commits, new
outcomes gather for the next one, so the commits per job fall as the load rises. A job's slot is
free as soon as its code has returned; its outcome is written by the finisher, and the job counts
as done only once that commit succeeded. Idle workers wake on Procrastinate's NOTIFY and also
poll, so a lost notification only delays a job by the poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import socket
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from procrastinate import manager as pq_manager

from service import backend as backend_module
from service import errors, queues
from service.backend import Backend
from service.domain import jobtypes
from service.domain.status import Outcome
from service.settings import Settings
from workers import leases
from workers.progress import JobRun

logger = logging.getLogger(__name__)

Handler = Callable[[JobRun, Any], Awaitable[dict[str, Any] | None]]

ORPHAN_AGE = 10.0
"""An open attempt of ours this old that we do not run was claimed by a lost round trip."""

CANCEL_GRACE = 5.0
"""Seconds a cancelled job gets to stop before the worker abandons it and moves on."""

FINISH_BATCH = 500
"""Most outcomes written in one transaction."""

FINISH_BACKLOG = 4
"""Claiming pauses while more than this many times `concurrency` outcomes wait to be written:
enough for the finisher to gather several claims' worth per commit, and a bound on the open
attempts of jobs that are already done."""


@dataclass
class _Pending:
    """An outcome waiting for the finisher; `applied` resolves once it is committed."""

    outcome: leases.AttemptOutcome
    applied: asyncio.Future


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
                 name: str | None = None,
                 resources: list[Any] | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.handlers = handlers
        self.queues = list(settings.worker_queues) or None
        self.concurrency = settings.worker_concurrency
        self.name = name or f"{socket.gethostname()}-{os.getpid()}"
        self.worker_id: int | None = None
        self._running: dict[int, _Running] = {}
        """Jobs whose code runs, by attempt id: each holds a slot."""
        self._finishing: dict[int, _Running] = {}
        """Jobs whose code has returned and whose outcome is not committed yet."""
        self._outcomes: list[_Pending] = []
        self._outcome_ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._immediate = asyncio.Event()
        self._background: list[asyncio.Task] = []
        # Things with async start() and close() that live as long as the worker (the sandbox).
        self._resources = resources or []

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
        for resource in self._resources:
            await resource.start()
        await self._register()
        self._background = [
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._listen(), name="listen"),
            asyncio.create_task(self._maintenance_loop(), name="maintenance"),
            asyncio.create_task(self._finish_loop(), name="finisher"),
        ]
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await self._unregister()
            for resource in self._resources:
                await resource.close()

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
            except errors.DatabaseUnavailable as exc:
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
            free = self._free_slots()
            claimed: list[leases.Claimed] = []
            if free > 0:
                self._wake.clear()
                try:
                    async with self.backend.connection() as conn:
                        claimed = await leases.claim(
                            conn, self.worker_id, self.name, self.queues, free)
                except errors.DatabaseUnavailable as exc:
                    logger.warning("worker %s: cannot claim jobs: %s", self.name, exc)
                    await asyncio.sleep(1)
                    continue
                except Exception:
                    # Never let one bad claim end the worker; say so loudly and go on.
                    logger.exception("worker %s: claiming failed", self.name)
                    await asyncio.sleep(1)
                    continue
                for job in claimed:
                    self._start(job)
            if free > 0 and len(claimed) == free:
                continue  # there may be more work right away
            # Wait for a notification, a finished job (free slot) or the poll interval.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=poll)

    def _free_slots(self) -> int:
        """Slots for new jobs. Outcomes waiting to be written hold none, but while too many
        of them wait, claiming pauses: the database is the bottleneck."""
        if len(self._finishing) > FINISH_BACKLOG * self.concurrency:
            return 0
        return self.concurrency - len(self._running)

    def _start(self, job: leases.Claimed) -> None:
        async def write(percent: int, stage: str | None, message: str | None) -> bool:
            async with self.backend.connection() as conn:
                return await leases.write_progress(conn, job.attempt_id, percent, stage, message)

        run = JobRun(job_id=job.job_id, attempt_id=job.attempt_id, attempt=job.attempt,
                     backend=self.backend, timeout=job.timeout_seconds,
                     _writer=write,
                     _interval=self.settings.progress_interval.total_seconds())
        task = asyncio.create_task(self._execute(job, run), name=f"job-{job.job_id}")
        self._running[job.attempt_id] = _Running(job, run, task)

    # -- running -----------------------------------------------------------------------------

    async def _execute(self, job: leases.Claimed, run: JobRun) -> None:
        running = self._running[job.attempt_id]
        try:
            outcome, result, error, retry_at = await self._outcome(job, run, running)
            running.finishing = True
            await run.close()
            # The slot is free from here on; the job stays ours until its outcome is written.
            self._finishing[job.attempt_id] = running
            self._running.pop(job.attempt_id, None)
            self._wake.set()
            await self._record(job, outcome, result, error, retry_at)
        finally:
            self._running.pop(job.attempt_id, None)
            self._finishing.pop(job.attempt_id, None)
            self._wake.set()

    async def _outcome(self, job: leases.Claimed, run: JobRun, running: _Running):
        """Run the job; returns (outcome, result, error, retry_at)."""
        try:
            job_type = jobtypes.get(job.task_name)
            handler = self.handlers[job.task_name]
            payload = msgspec.convert(job.payload, job_type.payload)
        except (errors.UnknownJobType, KeyError):
            return Outcome.FAILED, None, _error(errors.PermanentJobError(
                f"This worker has no code for job type {job.task_name!r}.")), None
        except msgspec.ValidationError as exc:
            return Outcome.FAILED, None, _error(errors.PermanentJobError(
                f"The stored payload no longer fits {job.task_name}: {exc}")), None

        inner = asyncio.create_task(handler(run, payload), name=f"run-{job.job_id}")
        stop = asyncio.create_task(run.stop_requested.wait())
        try:
            await asyncio.wait({inner, stop}, timeout=job.timeout_seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            inner.cancel()  # the worker itself is being torn down
            raise
        finally:
            stop.cancel()
        if not inner.done():
            return await self._halt(job, inner, running.stop_reason)
        try:
            result = inner.result()
        except asyncio.CancelledError:
            # The job cancelled itself, or stopped on a request it saw through should_stop().
            return running.stop_reason or Outcome.CANCELLED, None, None, None
        except Exception as exc:
            retryable = job_type.retry.is_retryable(exc)
            error = _error(exc, retryable)
            if running.stop_reason is not None:
                return running.stop_reason, None, error, None
            if job_type.retry.should_retry(job.budget_attempt, retryable, job.max_attempts):
                policy = job_type.retry.with_backoff(await self._backoff(job))
                delay = policy.delay(job.budget_attempt)
                return Outcome.RETRY, None, error, datetime.now(UTC) + delay
            return Outcome.FAILED, None, error, None
        return Outcome.SUCCEEDED, result, None, None

    async def _backoff(self, job: leases.Claimed) -> dict[str, float] | None:
        # Read only when an attempt fails, to keep the claim lean.
        try:
            async with self.backend.connection() as conn:
                return await conn.fetchval("SELECT backoff FROM jobs WHERE id = $1", job.job_id)
        except Exception as exc:
            logger.warning("job %s: per-job backoff unreadable (%s); using the type's",
                           job.job_id, exc)
            return None

    async def _halt(self, job: leases.Claimed, inner: asyncio.Task, reason: Outcome | None):
        """Stop a job that ran out of time or was told to stop. A job that ignores its
        cancellation is abandoned after CANCEL_GRACE seconds: its outcome is recorded all the
        same, and anything it writes later is refused by the fence."""
        inner.cancel()
        done, _ = await asyncio.wait({inner}, timeout=CANCEL_GRACE)
        if not done:
            logger.error("job %s ignored its cancellation for %s s; abandoned",
                         job.job_id, CANCEL_GRACE)
        if reason is not None:
            return reason, None, None, None
        error = {"type": "JobTimeout", "retryable": False,
                 "message": f"The job ran longer than its timeout of "
                            f"{job.timeout_seconds:g} s and was stopped."}
        return Outcome.FAILED, None, error, None

    async def _record(self, job: leases.Claimed, outcome: Outcome, result: Any,
                      error: dict[str, Any] | None, retry_at: datetime | None) -> None:
        """Hand the outcome to the finisher and wait until it is committed."""
        if result is not None and not isinstance(result, dict):
            result = {"value": result}
        try:
            ending = leases.AttemptOutcome.of(job.attempt_id, outcome.value, result, error,
                                              retry_at)
        except (TypeError, ValueError) as exc:
            outcome, error = Outcome.FAILED, _error(errors.PermanentJobError(
                f"The job's result cannot be stored as JSON: {exc}"))
            ending = leases.AttemptOutcome.of(job.attempt_id, outcome.value, None, error)
        pending = _Pending(ending, asyncio.get_running_loop().create_future())
        self._outcomes.append(pending)
        self._outcome_ready.set()
        applied = await pending.applied
        if not applied:
            logger.warning("job %s attempt %d: outcome %s refused, the lease was lost",
                           job.job_id, job.attempt, outcome.value)
        elif outcome in (Outcome.FAILED, Outcome.RETRY):
            logger.info("job %s attempt %d %s: %s", job.job_id, job.attempt, outcome.value,
                        error and error.get("message"))

    async def _finish_loop(self) -> None:
        """Write the waiting outcomes, all of them in one transaction; keep trying while the
        database is away, so that none is lost. Never ends while the worker runs: without it
        no job would ever finish."""
        delay = 0.5
        while True:
            await self._outcome_ready.wait()
            self._outcome_ready.clear()
            while self._outcomes:
                batch = self._outcomes[:FINISH_BATCH]
                try:
                    applied = await self._write_outcomes(batch)
                except Exception as exc:
                    # The database is away (or failing in a way not recognised as that): the
                    # same outcomes are tried again, nothing is dropped.
                    log = (logger.warning if isinstance(exc, errors.DatabaseUnavailable)
                           else logger.exception)
                    log("worker %s: %d outcome(s) not recorded yet (%s); retrying in %.1f s",
                        self.name, len(batch), exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10)
                    continue
                written = {id(p) for p, ok in zip(batch, applied, strict=True) if ok is not None}
                self._outcomes = [p for p in self._outcomes if id(p) not in written]
                for pending, was_applied in zip(batch, applied, strict=True):
                    if was_applied is not None and not pending.applied.done():
                        pending.applied.set_result(was_applied)
                if len(written) < len(batch):
                    await asyncio.sleep(delay)  # some are left: try them again later
                    delay = min(delay * 2, 10)
                else:
                    delay = 0.5

    async def _write_outcomes(self, batch: list[_Pending]) -> list[bool | None]:
        """For each outcome: applied (True), refused for a lost lease (False), or not written
        (None: it stays queued). Raises when the database is away."""
        try:
            async with self.backend.connection() as conn:
                applied = await leases.finish_many(conn, [p.outcome for p in batch])
            return [p.outcome.attempt_id in applied for p in batch]
        except (errors.DatabaseUnavailable, *backend_module.CONNECTION_ERRORS):
            raise
        except Exception:
            if len(batch) == 1:
                logger.exception("worker %s: outcome of attempt %d not recorded; trying again",
                                 self.name, batch[0].outcome.attempt_id)
                return [None]
            # Not the connection (a deadlock, a bad value): write them one by one, so that one
            # outcome cannot hold the others back.
            logger.exception("worker %s: writing %d outcomes together failed; one by one now",
                             self.name, len(batch))
        return [(await self._write_outcomes([pending]))[0] for pending in batch]

    def _stop(self, running: _Running, reason: Outcome) -> None:
        """Ask a running job to stop; `_outcome` cancels it and records `reason`."""
        if running.stop_reason is None and not running.finishing:
            running.stop_reason = reason
            running.run.stop_requested.set()

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
        tasks = [r.task for r in (*self._running.values(), *self._finishing.values())]
        if tasks:
            # Outcomes being written get a last chance; an attempt left open is recovered
            # later as lost, so the job still runs again.
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # -- background --------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        interval = self.settings.heartbeat_interval.total_seconds()
        # Past this, other workers may take our jobs over: stop them before that happens.
        fence = self.settings.stall_timeout.total_seconds() * 0.8
        last_ok = time.monotonic()
        while True:
            before = time.monotonic()
            await asyncio.sleep(interval)
            if time.monotonic() - before > fence:
                # The whole process was frozen (SIGSTOP, a suspended VM): assume the worst.
                self._abandon_all("the process was paused for "
                                  f"{time.monotonic() - before:.0f} s")
            try:
                async with self.backend.connection() as conn:
                    alive = await leases.heartbeat(conn, self.worker_id)
                    to_abort = set()
                    if alive and self._running:
                        to_abort = await leases.abort_requested(conn, self.worker_id)
                    held = await leases.held_attempts(conn, self.worker_id, ORPHAN_AGE)
                orphans = held - self._running.keys() - self._finishing.keys()
            except Exception as exc:
                logger.warning("worker %s: heartbeat failed: %s", self.name, exc)
                if time.monotonic() - last_ok > fence:
                    self._abandon_all("no heartbeat reached the database for "
                                      f"{time.monotonic() - last_ok:.0f} s")
                continue
            last_ok = time.monotonic()
            if not alive:
                await self._lease_lost()
            for attempt_id in to_abort:
                if attempt_id in self._running:
                    self._stop(self._running[attempt_id], Outcome.CANCELLED)
            if orphans:
                await self._release(orphans)

    async def _release(self, attempt_ids: set[int]) -> None:
        """Jobs the database says we hold but we never started: a claim committed while its
        answer was lost with the connection. Put them back in the queue."""
        logger.warning("worker %s: releasing %d job(s) claimed while the connection dropped",
                       self.name, len(attempt_ids))
        try:
            async with self.backend.connection() as conn:
                await leases.finish_many(conn, [
                    leases.AttemptOutcome.of(attempt_id, Outcome.INTERRUPTED.value)
                    for attempt_id in attempt_ids])
        except errors.DatabaseUnavailable as exc:
            logger.warning("worker %s: release failed (%s); next heartbeat retries",
                           self.name, exc)

    def _abandon_all(self, why: str) -> None:
        """Stop every running job: this worker may be presumed dead, and a job must never run
        here while another worker runs it."""
        if self._running:
            logger.error("worker %s: %s; stopping %d job(s), they will run again elsewhere",
                         self.name, why, len(self._running))
        for running in list(self._running.values()):
            self._stop(running, Outcome.INTERRUPTED)

    async def _lease_lost(self) -> None:
        """Declared dead while alive (a long pause, a partition): our jobs now belong to
        others. Stop them (their writes would be refused anyway) and register anew."""
        self._abandon_all("it was declared dead")
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
            # At most stall/4 between runs, so a dead worker's job runs again within about
            # stall timeout + stall/4; jitter spreads the workers' runs apart.
            await asyncio.sleep(stall / 6 * (0.5 + random.random()))
            try:
                await queues.recover_stalled(self.backend, stall)
            except Exception as exc:
                logger.warning("worker %s: stalled-job recovery failed: %s", self.name, exc)


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
