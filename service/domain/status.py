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


# Which statuses allow a client's cancel, retry and delete is decided by jobq_cancel_job,
# jobq_retry_job and jobq_delete_job, under the job's lock; these sets say the same for readers
# of Python, and tests/integration/test_transitions.py checks that they agree.
TERMINAL = frozenset({Status.SUCCEEDED, Status.FAILED, Status.CANCELLED})
"""A job in these statuses never changes again on its own; a client may delete it."""
RETRYABLE_BY_CLIENT = frozenset({Status.FAILED, Status.CANCELLED})
CANCELLABLE = frozenset({Status.QUEUED, Status.SCHEDULED, Status.RUNNING})


class Outcome(StrEnum):
    """How one attempt ended; recorded in `job_attempts.outcome`. The same words in SQL
    (jobq_finish_attempts) and Python (service/domain/outcome.py, which decides them)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"            # ended in error, the job fails for good
    RETRY = "retry"              # ended in error, another attempt is scheduled
    CANCELLED = "cancelled"      # stopped because a client cancelled the job
    INTERRUPTED = "interrupted"  # stopped by a worker shutdown; the job went back to the queue
    LOST = "lost"                # the worker vanished; recovery closed the attempt
