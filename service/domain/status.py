"""Public job statuses and how they follow from the queue's own state."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """A job's status as clients see it."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL

    @property
    def is_active(self) -> bool:
        return not self.is_terminal


TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
RETRYABLE_BY_CLIENT = frozenset({Status.FAILED, Status.CANCELLED})
CANCELLABLE = frozenset({Status.QUEUED, Status.SCHEDULED, Status.RUNNING})


class Outcome(StrEnum):
    """How one attempt ended; recorded in `job_attempts.outcome`."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"            # ended in error, the job fails for good
    RETRY = "retry"              # ended in error, another attempt is scheduled
    CANCELLED = "cancelled"      # stopped because a client cancelled the job
    INTERRUPTED = "interrupted"  # stopped by a worker shutdown; the job went back to the queue
    LOST = "lost"                # the worker vanished; recovery closed the attempt
