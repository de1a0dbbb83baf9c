"""How an attempt ended, decided once: what happened, the attempt's number and the job's retry
policy in, a typed outcome out. Pure: no I/O, the clock and the randomness are arguments.

Workers decide here for the attempts they ran, and stalled-job recovery for the attempts of dead
workers (service/maintenance.py). `jobq_finish_attempts` records the outcome and makes exactly
one decision of its own, at the moment of writing and under the job's lock: when a client has
asked to cancel the job (`abort_requested`), an outcome that would run it again (RetryAt,
Interrupted, any outcome of a lost attempt) is recorded as cancelled. So nothing here asks
whether a cancellation was requested: a job stopped because a client cancelled it is reported as
Interrupted, like a job stopped by a shutdown, and the database turns it into cancelled.

The names in `Outcome` are the vocabulary SQL uses (job_attempts.outcome, jobq_finish_attempts).
"""

from __future__ import annotations

import asyncio
import random
import traceback
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from service import errors
from service.domain import jobtypes
from service.domain.retry import RetryPolicy
from service.domain.status import Outcome

TRACEBACK_CHARS = 4000
"""The end of a traceback kept with an attempt's error (the innermost frames)."""


@dataclass(frozen=True)
class JobError:
    """Why an attempt failed, in the one shape clients, history and SQL see."""

    type: str
    message: str
    retryable: bool
    traceback: str | None = None
    """Where it was raised (the history's attempts show it; the job's own error does not)."""

    @classmethod
    def of(cls, exc: BaseException, retryable: bool) -> JobError:
        text = "".join(traceback.format_exception(exc))[-TRACEBACK_CHARS:]
        return cls(type(exc).__name__, str(exc) or type(exc).__name__, retryable, text)

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "message": self.message, "retryable": self.retryable,
                "traceback": self.traceback}


def timeout_error(seconds: float) -> JobError:
    """A timeout, reported the same way whoever noticed it (the worker, or the job's sandbox)."""
    exc = errors.JobTimeout(seconds)
    return JobError(type(exc).__name__, str(exc), exc.retryable)


WORKER_LOST = JobError("WorkerLost", "The worker running this job stopped sending heartbeats.",
                       retryable=True)


# -- what happened ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Returned:
    """The job's code returned `value`."""

    value: Any


@dataclass(frozen=True)
class Raised:
    """The job's code raised `exception` (or could not be started: no code, a bad payload)."""

    exception: BaseException


@dataclass(frozen=True)
class TimedOut:
    """The job ran past its timeout of `seconds` and was stopped."""

    seconds: float


@dataclass(frozen=True)
class Stopped:
    """The worker stopped the job: a client cancelled it, the worker shuts down, or its lease
    may be lost. `reason` is for the log; `exception` what the job raised while stopping."""

    reason: str
    exception: BaseException | None = None


@dataclass(frozen=True)
class Lost:
    """The worker running the attempt died or went silent; recovery closes the attempt."""


Happened = Returned | Raised | TimedOut | Stopped | Lost


# -- outcomes -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Succeeded:
    kind: ClassVar[Outcome] = Outcome.SUCCEEDED
    result: dict[str, Any] | None = None


@dataclass(frozen=True)
class RetryAt:
    """Failed; the job runs again at `at`."""

    kind: ClassVar[Outcome] = Outcome.RETRY
    at: datetime
    error: JobError


@dataclass(frozen=True)
class Failed:
    """Failed for good."""

    kind: ClassVar[Outcome] = Outcome.FAILED
    error: JobError


@dataclass(frozen=True)
class Cancelled:
    """The job cancelled itself (raised CancelledError without being asked to stop)."""

    kind: ClassVar[Outcome] = Outcome.CANCELLED
    error: JobError | None = None


@dataclass(frozen=True)
class Interrupted:
    """Stopped from outside: back to the queue, the attempt not counted (cancelled instead when
    a client asked, see the module's docstring)."""

    kind: ClassVar[Outcome] = Outcome.INTERRUPTED
    error: JobError | None = None


Decision = Succeeded | RetryAt | Failed | Cancelled | Interrupted


def decide(happened: Happened, *, attempt: int, max_attempts: int, policy: RetryPolicy,
           now: datetime, rng: random.Random | None = None) -> Decision:
    """The outcome of attempt number `attempt` (1-based, within the current budget) of a job
    allowed `max_attempts`, retried as `policy` says."""
    match happened:
        case Returned(value):
            return Succeeded(value if value is None or isinstance(value, dict)
                             else {"value": value})
        case TimedOut(seconds):
            return Failed(timeout_error(seconds))
        case Stopped(_, exception):
            return Interrupted(None if exception is None
                               else JobError.of(exception, policy.is_retryable(exception)))
        case Raised(errors.JobTimeout() as exc):
            return Failed(timeout_error(exc.seconds))
        case Raised(asyncio.CancelledError()):
            return Cancelled()
        case Raised(exc):
            error = JobError.of(exc, policy.is_retryable(exc))
        case Lost():
            error = WORKER_LOST
    if policy.should_retry(attempt, error.retryable, max_attempts):
        return RetryAt(now + policy.delay(attempt, rng), error)
    return Failed(error)


def retry_policy(task_name: str, backoff: dict[str, float] | None) -> RetryPolicy:
    """A job's retry policy: its type's, with the job's own backoff where it gives one (the
    default policy for a type this process does not know)."""
    try:
        policy = jobtypes.get(task_name).retry
    except errors.UnknownJobType:
        policy = RetryPolicy()
    return policy.with_backoff(backoff)


def error_of(decision: Decision) -> JobError | None:
    return None if isinstance(decision, Succeeded) else decision.error


def result_of(decision: Decision) -> dict[str, Any] | None:
    return decision.result if isinstance(decision, Succeeded) else None


def retry_at_of(decision: Decision) -> datetime | None:
    return decision.at if isinstance(decision, RetryAt) else None
