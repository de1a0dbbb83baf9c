"""Running one attempt and saying how it ended: the job's code under its timeout and stop
signal, then the decision of service/domain/outcome.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from service import errors
from service.domain import jobtypes, outcome
from workers import leases
from workers.progress import JobRun

logger = logging.getLogger(__name__)

Handler = Callable[[JobRun, Any], Awaitable[dict[str, Any] | None]]

CANCEL_GRACE = 5.0
"""Seconds a stopped job gets to end before the worker abandons it and moves on."""


async def run_attempt(job: leases.Claimed, handlers: dict[str, Handler], run: JobRun,
                      stop_reason: Callable[[], str | None]) -> outcome.Happened:
    """Run the job's code until it ends, runs out of time or is told to stop (`run`'s stop
    signal; `stop_reason` says why)."""
    try:
        job_type = jobtypes.get(job.task_name)
        handler = handlers[job.task_name]
        payload = msgspec.convert(job.payload, job_type.payload)
    except (errors.UnknownJobType, KeyError):
        return outcome.Raised(errors.PermanentJobError(
            f"This worker has no code for job type {job.task_name!r}."))
    except msgspec.ValidationError as exc:
        return outcome.Raised(errors.PermanentJobError(
            f"The stored payload no longer fits {job.task_name}: {exc}"))

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
        await _halt(job, inner)
        if not run.stop_requested.is_set():
            return outcome.TimedOut(job.timeout_seconds)
        # No reason given: the job's own progress write found the lease gone (see JobRun).
        return outcome.Stopped(stop_reason() or "its lease was lost")
    reason = stop_reason()
    try:
        value = inner.result()
    except asyncio.CancelledError as exc:
        # The job cancelled itself, or stopped on a request it saw through should_stop().
        return outcome.Raised(exc) if reason is None else outcome.Stopped(reason)
    except Exception as exc:
        return outcome.Raised(exc) if reason is None else outcome.Stopped(reason, exc)
    return outcome.Returned(value)


async def _halt(job: leases.Claimed, inner: asyncio.Task) -> None:
    """Stop a job that ran out of time or was told to stop. A job that ignores its cancellation
    is abandoned after CANCEL_GRACE seconds: its outcome is recorded all the same, and anything
    it writes later is refused by the fence."""
    inner.cancel()
    done, _ = await asyncio.wait({inner}, timeout=CANCEL_GRACE)
    if not done:
        logger.error("job %s ignored its cancellation for %s s; abandoned",
                     job.job_id, CANCEL_GRACE)


def decide(job: leases.Claimed, happened: outcome.Happened) -> outcome.Decision:
    """The outcome of this attempt, by the job's retry policy."""
    return outcome.decide(happened, attempt=job.budget_attempt, max_attempts=job.max_attempts,
                          policy=outcome.retry_policy(job.task_name, job.backoff),
                          now=datetime.now(UTC))
