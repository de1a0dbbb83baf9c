"""What a job's code is handed: its context. The protocols a job author writes against; the
worker's objects (workers/progress.py, workers/handlers.py) and the test helpers (jobq.testing)
provide them."""

from __future__ import annotations

import uuid
from typing import Protocol, runtime_checkable


@runtime_checkable
class Context(Protocol):
    """Handed to an async job function: who it is, progress reports, the stop signal."""

    job_id: uuid.UUID
    attempt: int
    """This attempt's number across the job's life, 1 for the first."""
    timeout: float
    """Seconds this attempt may run before it is stopped."""

    async def progress(self, percent: float, stage: str | None = None,
                       message: str | None = None) -> None:
        """Report progress (0-100) with an optional stage and message."""

    def should_stop(self) -> bool:
        """True once the job must stop: cancelled, shut down, out of time, lease lost."""


@runtime_checkable
class SyncContext(Protocol):
    """Handed to a sync job function (run in a thread or in a child process)."""

    job_id: uuid.UUID
    attempt: int
    timeout: float

    def progress(self, percent: float, stage: str | None = None,
                 message: str | None = None) -> None:
        """Report progress (0-100); returns at once, the write happens in the worker."""

    def should_stop(self) -> bool:
        """True once the job must stop. A thread is never killed: check this and return.
        A child process is killed at its timeout or on cancel, so it may never see True."""


CONTEXT_TYPES = (Context, SyncContext)
CONTEXT_NAMES = ("context", "ctx")
"""A job function's parameter with one of these names, or typed with one of CONTEXT_TYPES,
receives the context; the others are the payload's fields."""
