"""The worker: claims jobs, runs them concurrently, records every outcome.

This module holds the worker's jobs in hand and its life (start, register, drain, stop); each
other responsibility has its module, run as one task of the worker:

- workers/claiming.py   the claim loop, woken by NOTIFY, a freed slot or the poll interval
- workers/outcomes.py   running one attempt under its timeout and deciding how it ended
- workers/finisher.py   writing the outcomes, many per transaction
- workers/heartbeat.py  the heartbeat, self-fencing, cancellations missed, orphaned claims
- workers/scheduler.py  the maintenance operations of service/maintenance.py, one worker at a time

A job's slot is free as soon as its code has returned; its outcome is written by the finisher,
and the job counts as done only once that commit succeeded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any

from service import attempts, errors
from service.backend import Backend
from service.domain import outcome
from service.settings import Settings
from workers import leases, outcomes
from workers.claiming import Claimer
from workers.finisher import Finisher
from workers.heartbeat import Heartbeat
from workers.outcomes import Handler
from workers.progress import JobRun
from workers.scheduler import MaintenanceScheduler

logger = logging.getLogger(__name__)

__all__ = ["Handler", "Worker"]

FINISH_BACKLOG = 4
"""Claiming pauses while more than this many times `concurrency` outcomes wait to be written:
enough for the finisher to gather several claims' worth per commit, and a bound on the open
attempts of jobs that are already done."""

UNREGISTER_TIMEOUT = 5.0
"""Seconds a stopping worker tries to remove its row before it exits anyway."""


@dataclass
class _Running:
    claimed: leases.Claimed
    run: JobRun
    task: asyncio.Task
    stop_reason: str | None = None
    """Why the worker stopped the job (for the log; the outcome is Interrupted either way)."""
    finishing: bool = False
    """The outcome is known and being written: stopping it now would lose it."""


class Worker:
    """One worker process."""

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
        self.stopping = asyncio.Event()
        self._immediate = asyncio.Event()
        self._background: list[asyncio.Task] = []
        # Things with async start() and close() that live as long as the worker (the sandbox).
        self._resources = resources or []
        self.claimer = Claimer(self)
        self.finisher = Finisher(backend, self.name)
        self.heartbeat = Heartbeat(self)
        self.scheduler = MaintenanceScheduler(backend, settings, self.name)

    # -- lifecycle ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """First call: stop taking jobs, let running ones finish within the grace period.
        Second call: stop running jobs now (they go back to the queue)."""
        if self.stopping.is_set():
            logger.warning("worker %s: second stop request, interrupting running jobs", self.name)
            self._immediate.set()
        else:
            logger.info("worker %s: stopping; %d job(s) running", self.name, len(self._running))
            self.stopping.set()
        self.claimer.wake.set()

    async def run(self) -> None:
        """Work until request_stop(); then drain and unregister."""
        for resource in self._resources:
            await resource.start()
        if not await self._register():  # stopped before the database could be reached
            for resource in self._resources:
                await resource.close()
            return
        self._background = [
            asyncio.create_task(self.heartbeat.run(), name="heartbeat"),
            asyncio.create_task(self.claimer.listen(), name="listen"),
            asyncio.create_task(self.scheduler.run(), name="maintenance"),
            asyncio.create_task(self.finisher.run(), name="finisher"),
        ]
        try:
            await self.claimer.run()
            await self._drain()
        finally:
            for task in self._background:
                task.cancel()
            await asyncio.gather(*self._background, return_exceptions=True)
            await self._unregister()
            for resource in self._resources:
                await resource.close()

    async def _register(self) -> bool:
        """Register, retrying while the database is unavailable (not started yet, starting up,
        shutting down, unreachable); False if the worker was told to stop first."""
        while not self.stopping.is_set():
            try:
                async with self.backend.connection() as conn:
                    self.worker_id = await leases.register(
                        conn, self.name, socket.gethostname(), os.getpid(),
                        self.queues or [], self.concurrency)
                logger.info("worker %s registered as %s, queues=%s, concurrency=%d",
                            self.name, self.worker_id, self.queues or "all", self.concurrency)
                return True
            except errors.DatabaseUnavailable as exc:
                logger.warning("worker %s cannot register yet: %s", self.name, exc)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=1)
        return False

    async def _unregister(self) -> None:
        if self.worker_id is None:
            return
        try:
            # Best effort and bounded: a worker that cannot say goodbye is pruned as stalled.
            async with asyncio.timeout(UNREGISTER_TIMEOUT):
                async with self.backend.connection() as conn:
                    await leases.unregister(conn, self.worker_id)
        except Exception as exc:
            logger.warning("worker %s: could not unregister (%s); it will be pruned as stalled",
                           self.name, exc)
        logger.info("worker %s stopped", self.name)

    # -- jobs in hand ------------------------------------------------------------------------

    def free_slots(self) -> int:
        """Slots for new jobs. Outcomes waiting to be written hold none, but while too many
        of them wait, claiming pauses: the database is the bottleneck."""
        if len(self._finishing) > FINISH_BACKLOG * self.concurrency:
            return 0
        return self.concurrency - len(self._running)

    def running_ids(self) -> set[int]:
        """Attempts whose code runs here now."""
        return set(self._running)

    def held_ids(self) -> set[int]:
        """Attempts this process holds: running, or with their outcome on its way."""
        return self._running.keys() | self._finishing.keys()

    def start(self, job: leases.Claimed) -> None:
        """Run a claimed job in its own task."""
        async def write(percent: int, stage: str | None, message: str | None) -> bool:
            async with self.backend.connection() as conn:
                return await leases.write_progress(conn, job.attempt_id, percent, stage, message)

        run = JobRun(job_id=job.job_id, attempt_id=job.attempt_id, attempt=job.attempt,
                     backend=self.backend, timeout=job.timeout_seconds,
                     _writer=write,
                     _interval=self.settings.progress_interval.total_seconds())
        task = asyncio.create_task(self._execute(job, run), name=f"job-{job.job_id}")
        self._running[job.attempt_id] = _Running(job, run, task)

    def stop_job(self, attempt_id: int, reason: str) -> None:
        """Ask a running job to stop; its attempt ends Interrupted (cancelled, if a client
        asked: the database decides that when it records the outcome)."""
        running = self._running.get(attempt_id)
        if running is not None and running.stop_reason is None and not running.finishing:
            logger.info("job %s: stopping it (%s)", running.claimed.job_id, reason)
            running.stop_reason = reason
            running.run.stop_requested.set()

    def abandon_all(self, why: str) -> None:
        """Stop every running job: this worker may be presumed dead, and a job must never run
        here while another worker runs it."""
        if self._running:
            logger.error("worker %s: %s; stopping %d job(s), they will run again elsewhere",
                         self.name, why, len(self._running))
        for attempt_id in list(self._running):
            self.stop_job(attempt_id, why)

    async def lease_lost(self) -> None:
        """Declared dead while alive (a long pause, a partition): our jobs now belong to
        others. Stop them (their writes would be refused anyway) and register anew."""
        logger.warning("worker %s was declared dead (silent longer than the stall timeout); "
                       "registering again", self.name)
        self.abandon_all("it was declared dead")
        await self._register()

    async def _execute(self, job: leases.Claimed, run: JobRun) -> None:
        running = self._running[job.attempt_id]
        try:
            happened = await outcomes.run_attempt(job, self.handlers, run,
                                                  lambda: running.stop_reason)
            decision = outcomes.decide(job, happened)
            running.finishing = True
            await run.close()
            # The slot is free from here on; the job stays ours until its outcome is written.
            self._finishing[job.attempt_id] = running
            self._running.pop(job.attempt_id, None)
            self.claimer.wake.set()
            await self._record(job, decision)
        finally:
            self._running.pop(job.attempt_id, None)
            self._finishing.pop(job.attempt_id, None)
            self.claimer.wake.set()

    async def _record(self, job: leases.Claimed, decision: outcome.Decision) -> None:
        """Hand the outcome to the finisher and wait until it is committed."""
        try:
            ending = attempts.Ending.of(job.attempt_id, decision)
        except (TypeError, ValueError) as exc:
            decision = outcomes.decide(job, outcome.Raised(errors.PermanentJobError(
                f"The job's result cannot be stored as JSON: {exc}")))
            ending = attempts.Ending.of(job.attempt_id, decision)
        recorded = await self.finisher.record(ending)
        if recorded is None:
            logger.warning("job %s attempt %d: outcome %s refused, the lease was lost",
                           job.job_id, job.attempt, ending.outcome)
        elif recorded in (outcome.Outcome.FAILED, outcome.Outcome.RETRY):
            logger.info("job %s attempt %d %s: %s", job.job_id, job.attempt, recorded,
                        outcome.error_of(decision).message)

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
            self.stop_job(running.claimed.attempt_id, "worker shutdown")
        tasks = [r.task for r in (*self._running.values(), *self._finishing.values())]
        if tasks:
            # Outcomes being written get a last chance; an attempt left open is recovered
            # later as lost, so the job still runs again.
            _, pending = await asyncio.wait(tasks, timeout=10)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
