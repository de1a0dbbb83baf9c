"""Retry policies: how many attempts a job gets, which failures earn another one, and how long
to wait between them. The semantics BullMQ and Bull users bring:

- any exception is retried until the attempts run out, unless it is permanent: jobq's
  `PermanentJobError` (or a `JobFailure` raised with `retryable=False`), or an instance of the
  exception types the job type lists as permanent;
- a timeout is a failed attempt, retried like any other unless the type says otherwise;
- the wait is exponential (base, cap, jitter), fixed, or an explicit list of delays.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Literal

from service import errors

BackoffKind = Literal["exponential", "fixed", "list"]
BACKOFF_KINDS: tuple[str, ...] = ("exponential", "fixed", "list")


@dataclass(frozen=True)
class Backoff:
    """How long to wait after a failed attempt before the next one.

    - exponential: `base` before the second attempt, doubling for each further one, at most
      `cap`;
    - fixed: `base` every time;
    - list: `delays[n-1]` after failed attempt n, the last one repeated when there are more
      attempts than delays (for example 1 s, 5 s, 15 s).

    Each wait is then shortened by a random share up to `jitter` (0 to 1).
    """

    kind: BackoffKind = "exponential"
    base: timedelta = timedelta(seconds=1)
    cap: timedelta = timedelta(minutes=10)
    jitter: float = 0.2
    delays: tuple[timedelta, ...] = ()

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """Wait after failed attempt number `attempt` (1-based) before the next one."""
        if self.kind == "fixed":
            raw = self.base.total_seconds()
        elif self.kind == "list":
            waits = self.delays or (self.base,)
            raw = waits[min(attempt, len(waits)) - 1].total_seconds()
        else:
            raw = min(self.base.total_seconds() * 2 ** (attempt - 1), self.cap.total_seconds())
        share = (rng or random).random() * self.jitter
        return timedelta(seconds=raw * (1 - share))

    def with_overrides(self, given: Mapping[str, Any] | None) -> Backoff:
        """This backoff with a job's own fields (`kind`, `base_seconds`, `cap_seconds`,
        `jitter`, `delays` in seconds), where it gives them; checked before (requests.py)."""
        if not given:
            return self
        changes: dict[str, Any] = {}
        if given.get("kind") is not None:
            changes["kind"] = given["kind"]
        for key, name in (("base_seconds", "base"), ("cap_seconds", "cap")):
            if given.get(key) is not None:
                changes[name] = timedelta(seconds=given[key])
        if given.get("jitter") is not None:
            changes["jitter"] = given["jitter"]
        if given.get("delays") is not None:
            changes["delays"] = tuple(timedelta(seconds=s) for s in given["delays"])
            changes.setdefault("kind", "list")
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": self.kind, "base_seconds": self.base.total_seconds(),
                                "cap_seconds": self.cap.total_seconds(), "jitter": self.jitter}
        if self.kind == "list":
            body["delays"] = [d.total_seconds() for d in self.delays]
        return body


def exponential(base: float = 1.0, cap: float = 600.0, jitter: float = 0.2) -> Backoff:
    """Waits of `base` seconds, doubling each time, at most `cap`."""
    return Backoff("exponential", timedelta(seconds=base), timedelta(seconds=cap), jitter)


def fixed(seconds: float, jitter: float = 0.0) -> Backoff:
    """The same wait every time."""
    return Backoff("fixed", timedelta(seconds=seconds), timedelta(seconds=seconds), jitter)


def delays(*seconds: float, jitter: float = 0.0) -> Backoff:
    """One wait per failed attempt, in order; the last is repeated."""
    if not seconds:
        raise ValueError("give at least one delay")
    waits = tuple(timedelta(seconds=s) for s in seconds)
    return Backoff("list", waits[0], max(waits), jitter, waits)


@dataclass(frozen=True)
class RetryPolicy:
    """A job type's retries: attempts, the backoff between them, and what is never retried."""

    max_attempts: int = 3
    """Attempts in all, the first included (default 3)."""

    backoff: Backoff = field(default_factory=Backoff)
    """The wait between attempts (default exponential from 1 s, at most 10 min, 20 % jitter)."""

    permanent: tuple[type[BaseException], ...] = ()
    """Exception types that fail the job at once, besides jobq's PermanentJobError."""

    retry_timeouts: bool = True
    """Whether a timed-out attempt is retried like any other failure (default yes)."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_attempts <= 100:
            raise ValueError(f"max_attempts must be between 1 and 100, got {self.max_attempts}")

    @property
    def base(self) -> timedelta:
        return self.backoff.base

    def with_backoff(self, backoff: Mapping[str, Any] | None) -> RetryPolicy:
        """This policy with a job's own backoff, where it gives one."""
        if not backoff:
            return self
        return replace(self, backoff=self.backoff.with_overrides(backoff))

    def is_retryable(self, exc: BaseException) -> bool:
        """Whether an attempt that raised `exc` may be tried again."""
        if isinstance(exc, errors.JobTimeout):
            return self.retry_timeouts
        if isinstance(exc, errors.JobFailure):
            return exc.retryable
        return not isinstance(exc, self.permanent)

    def should_retry(self, attempt: int, retryable: bool, max_attempts: int | None = None) -> bool:
        """Whether attempt number `attempt` (1-based), having failed, earns another one."""
        limit = self.max_attempts if max_attempts is None else max_attempts
        return retryable and attempt < limit

    def delay(self, attempt: int, rng: random.Random | None = None) -> timedelta:
        """Wait after failed attempt number `attempt` (1-based) before the next one."""
        return self.backoff.delay(attempt, rng)


def policy_of(retry: Any, backoff: Backoff | None = None,
              permanent: Sequence[type[BaseException]] = (),
              retry_timeouts: bool = True) -> RetryPolicy:
    """A retry policy from what a declaration gives as `retry`, Procrastinate's way or jobq's:

    - None: the default (3 attempts);
    - an int n: n retries, so n + 1 attempts (Procrastinate's meaning); False or 0: no retry;
    - a RetryPolicy: itself;
    - an object shaped like `procrastinate.RetryStrategy` (max_attempts = retries, wait,
      exponential_wait, retry_exceptions): the same number of retries, an exponential backoff
      from `exponential_wait` seconds if it is set, else a fixed `wait`. A strategy that
      retries only `retry_exceptions` is refused (ValueError saying what to write instead):
      jobq retries everything but the permanent errors a type lists.
    """
    permanent = tuple(permanent)
    if isinstance(retry, RetryPolicy):
        policy = retry
    elif retry is None or retry is True:
        policy = RetryPolicy()
    elif retry is False:
        policy = RetryPolicy(max_attempts=1)
    elif isinstance(retry, int):
        policy = RetryPolicy(max_attempts=retry + 1)
    elif hasattr(retry, "exponential_wait") and hasattr(retry, "max_attempts"):
        policy = _from_retry_strategy(retry)
    else:
        raise ValueError(f"retry must be an int, a jobq.Retry or a RetryStrategy, not {retry!r}")
    return replace(policy,
                   backoff=backoff or policy.backoff,
                   permanent=policy.permanent + permanent,
                   retry_timeouts=policy.retry_timeouts and retry_timeouts)


def _from_retry_strategy(strategy: Any) -> RetryPolicy:
    if getattr(strategy, "retry_exceptions", None):
        raise ValueError(
            "jobq retries every exception except permanent ones: instead of retry_exceptions, "
            "list the exceptions that must not be retried in permanent_errors=(...)")
    retries = strategy.max_attempts
    attempts = 100 if retries is None else min(100, retries + 1)
    if strategy.exponential_wait:
        backoff = exponential(base=float(strategy.exponential_wait), jitter=0.0)
    else:
        backoff = fixed(float(strategy.wait or 0))
    return RetryPolicy(max_attempts=attempts, backoff=backoff)
