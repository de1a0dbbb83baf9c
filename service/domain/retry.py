"""Retry policies: how many attempts a job gets and how long to wait between them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from datetime import timedelta

from service import errors

# Errors that may pass if the job is tried again later. Nothing else is retried: a bug or bad
# input fails the job for good with its reason, instead of looping.
TRANSIENT: tuple[type[BaseException], ...] = (
    errors.TransientJobError,
    errors.DatabaseUnavailable,
    ConnectionError,
)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with a cap and jitter."""

    max_attempts: int = 3
    """Attempts in all, the first included (default 3)."""

    base: timedelta = timedelta(seconds=1)
    """Wait before the second attempt; doubles for each further one (default 1 s)."""

    cap: timedelta = timedelta(minutes=10)
    """Longest wait between two attempts (default 10 min)."""

    jitter: float = 0.2
    """Each wait is shortened by a random share up to this fraction (default 20 %)."""

    transient: tuple[type[BaseException], ...] = field(default=TRANSIENT)
    """Exception types that earn another attempt (default: TRANSIENT)."""

    def with_backoff(self, backoff: dict[str, float] | None) -> RetryPolicy:
        """This policy with a job's own base, cap and jitter, where it gives them."""
        if not backoff:
            return self
        return replace(
            self,
            base=timedelta(seconds=backoff.get("base_seconds", self.base.total_seconds())),
            cap=timedelta(seconds=backoff.get("cap_seconds", self.cap.total_seconds())),
            jitter=backoff.get("jitter", self.jitter),
        )

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether an attempt that raised `exc` may be tried again."""
        if isinstance(exc, errors.JobFailure):
            return exc.retryable
        return isinstance(exc, self.transient)

    def should_retry(self, attempt: int, retryable: bool, max_attempts: int | None = None) -> bool:
        """Whether attempt number `attempt` (1-based), having failed, earns another one."""
        limit = self.max_attempts if max_attempts is None else max_attempts
        return retryable and attempt < limit

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """Wait after failed attempt number `attempt` (1-based) before the next one."""
        raw = min(self.base.total_seconds() * 2 ** (attempt - 1), self.cap.total_seconds())
        share = (rng or random).random() * self.jitter
        return timedelta(seconds=raw * (1 - share))
