"""Queue policies as values: a change to a queue's settings (the body of
`PATCH /api/v1/queues/{name}`), a job's own retention (`remove_on_complete` /
`remove_on_fail`), and their checks. Plain Python, no I/O: the settings live in the `queues`
table and are enforced in SQL (docs/queues.md).
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, UnsetType

from service import errors

TERMINAL = ("succeeded", "failed", "cancelled")
"""The statuses retention applies to, in the order the API shows them."""

MAX_AGE_SECONDS = 10 * 366 * 86_400
"""Longest retention age (ten years); anything longer: leave the limit out (null)."""
MAX_COUNT = 100_000_000
MAX_RATE = 1_000_000
MAX_RATE_PERIOD = 86_400
MAX_CONCURRENCY = 100_000
BACKOFF_LIMITS = {"base_seconds": (0, 86_400), "cap_seconds": (0, 7 * 86_400), "jitter": (0, 1)}


class RateLimit(msgspec.Struct, forbid_unknown_fields=True):
    """At most `max_starts` job starts in any `per_seconds` window, across all workers."""

    max_starts: int
    per_seconds: float


class Keep(msgspec.Struct, forbid_unknown_fields=True):
    """How long finished jobs of one status are kept: by age, by count, or both (null: no
    limit of that kind; absent: unchanged)."""

    max_age_seconds: float | UnsetType | None = UNSET
    max_count: int | UnsetType | None = UNSET


class Retention(msgspec.Struct, forbid_unknown_fields=True):
    succeeded: Keep | UnsetType = UNSET
    failed: Keep | UnsetType = UNSET
    cancelled: Keep | UnsetType = UNSET


class QueueBackoff(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The backoff of the queue's jobs that give none of their own."""

    base_seconds: float | None = None
    cap_seconds: float | None = None
    jitter: float | None = None


class QueuePatch(msgspec.Struct, forbid_unknown_fields=True):
    """A change to a queue's settings: absent fields stay as they are, null removes a limit
    (or a default, so that the job type's applies again)."""

    paused: bool | UnsetType = UNSET
    rate_limit: RateLimit | UnsetType | None = UNSET
    concurrency_limit: int | UnsetType | None = UNSET
    max_attempts: int | UnsetType | None = UNSET
    timeout_seconds: float | UnsetType | None = UNSET
    backoff: QueueBackoff | UnsetType | None = UNSET
    retention: Retention | UnsetType = UNSET


def settings_of(patch: QueuePatch) -> dict[str, Any]:
    """The patch as `queues` columns (jobq_set_queue_settings' keys), after checking every
    value; InvalidRequest names each field that is wrong."""
    problems: list[errors.FieldError] = []
    columns: dict[str, Any] = {}

    def check(field: str, value: Any, low: float, high: float) -> None:
        if value is not None and not low <= value <= high:
            problems.append(errors.FieldError(field, f"must be between {low:g} and {high:g}"))

    if patch.paused is not UNSET:
        columns["paused"] = patch.paused
    if patch.rate_limit is not UNSET:
        limit = patch.rate_limit
        if limit is not None:
            check("rate_limit.max_starts", limit.max_starts, 1, MAX_RATE)
            if not 0 < limit.per_seconds <= MAX_RATE_PERIOD:
                problems.append(errors.FieldError(
                    "rate_limit.per_seconds", f"must be more than 0 and at most {MAX_RATE_PERIOD}"))
        columns["rate_limit"] = None if limit is None else limit.max_starts
        columns["rate_period_seconds"] = None if limit is None else limit.per_seconds
    if patch.concurrency_limit is not UNSET:
        check("concurrency_limit", patch.concurrency_limit, 1, MAX_CONCURRENCY)
        columns["concurrency_limit"] = patch.concurrency_limit
    if patch.max_attempts is not UNSET:
        check("max_attempts", patch.max_attempts, 1, 100)
        columns["max_attempts"] = patch.max_attempts
    if patch.timeout_seconds is not UNSET:
        if patch.timeout_seconds is not None and not 0 < patch.timeout_seconds <= 7 * 86_400:
            problems.append(errors.FieldError(
                "timeout_seconds", "must be more than 0 and at most 604800 (a week)"))
        columns["timeout_seconds"] = patch.timeout_seconds
    if patch.backoff is not UNSET:
        given = {} if patch.backoff is None else msgspec.to_builtins(patch.backoff)
        for key, value in given.items():
            check(f"backoff.{key}", value, *BACKOFF_LIMITS[key])
        columns["backoff"] = given or None
    if patch.retention is not UNSET:
        for status in TERMINAL:
            keep = getattr(patch.retention, status)
            if keep is UNSET:
                continue
            if keep.max_age_seconds is not UNSET:
                check(f"retention.{status}.max_age_seconds", keep.max_age_seconds, 0,
                      MAX_AGE_SECONDS)
                columns[f"{status}_max_age_seconds"] = keep.max_age_seconds
            if keep.max_count is not UNSET:
                check(f"retention.{status}.max_count", keep.max_count, 0, MAX_COUNT)
                columns[f"{status}_max_count"] = keep.max_count
    if problems:
        raise errors.InvalidRequest("; ".join(f"{p.field}: {p.message}" for p in problems),
                                    problems)
    return columns


def queue_json(row: dict[str, Any]) -> dict[str, Any]:
    """A `queues` row as the settings part of the public Queue object."""
    rate = None
    if row["rate_limit"] is not None:
        rate = {"max_starts": row["rate_limit"], "per_seconds": row["rate_period_seconds"]}
    return {
        "paused": row["paused"],
        "rate_limit": rate,
        "concurrency_limit": row["concurrency_limit"],
        "max_attempts": row["max_attempts"],
        "timeout_seconds": row["timeout_seconds"],
        "backoff": row["backoff"],
        "retention": {
            status: {"max_age_seconds": row[f"{status}_max_age_seconds"],
                     "max_count": row[f"{status}_max_count"]}
            for status in TERMINAL
        },
    }


# -- a job's own retention ---------------------------------------------------------------------

class KeepJobs(msgspec.Struct, forbid_unknown_fields=True):
    """BullMQ's KeepJobs: keep the job at most `age` seconds after it finished, and only while
    it is among the newest `count` jobs of its queue that ended the same way."""

    age: float | None = None
    count: int | None = None


RemoveOption = bool | int | KeepJobs
"""`remove_on_complete` / `remove_on_fail`: true (delete it at the next cleanup after it
ends), false (retention never deletes it), a count, or {age, count}."""


def job_retention(field: str, value: RemoveOption | None,
                  problems: list[errors.FieldError]) -> dict[str, Any] | None:
    """A job's override for one status as stored in `jobs.retention`: {"keep": true} or
    {"max_age_seconds": s, "max_count": n} (either may be null); None when not given."""
    if value is None:
        return None
    if isinstance(value, dict):  # from Python callers; JSON bodies arrive decoded already
        try:
            value = msgspec.convert(value, KeepJobs)
        except msgspec.ValidationError as exc:
            problems.append(errors.FieldError(field, str(exc)))
            return None
    if value is True:
        return {"max_age_seconds": 0, "max_count": None}
    if value is False:
        return {"keep": True}
    if isinstance(value, int):
        age, count = None, value
    else:
        age, count = value.age, value.count
        if age is None and count is None:
            problems.append(errors.FieldError(field, "give age, count or both"))
    if age is not None and not 0 <= age <= MAX_AGE_SECONDS:
        problems.append(errors.FieldError(
            field + (".age" if isinstance(value, KeepJobs) else ""),
            f"must be between 0 and {MAX_AGE_SECONDS}"))
    if count is not None and not 0 <= count <= MAX_COUNT:
        problems.append(errors.FieldError(
            field + (".count" if isinstance(value, KeepJobs) else ""),
            f"must be between 0 and {MAX_COUNT}"))
    return {"max_age_seconds": age, "max_count": count}
