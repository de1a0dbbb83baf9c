"""A request for a job, declared once: the body of `POST /api/v1/jobs`, what Python callers
pass to `jobs.enqueue`, and what a Procrastinate deferral on jobq's connector becomes.

`plan` checks a request against its job type's declaration and fills in the type's defaults;
the plan is the same request, resolved, with the job's new id. Plain Python, no I/O.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from service import errors
from service.domain import jobtypes, limits, policies, retry

MAX_BATCH = 1000
# A queue's NOTIFY channel must fit in 63 bytes (service.domain.limits).
QUEUE_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9_.\-]{{0,{limits.MAX_QUEUE_NAME - 1}}}$")
QUEUE_NAME_RULE = (f"must be 1-{limits.MAX_QUEUE_NAME} letters, digits, '_', '.' or '-' (its "
                   f"channel {limits.NOTIFY_CHANNEL_PREFIX}<queue> fits "
                   f"{limits.MAX_IDENTIFIER_BYTES} bytes)")


class Backoff(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Per-job override of the job type's backoff between attempts (service/domain/retry.py):
    `kind` exponential (from `base_seconds`, doubling, at most `cap_seconds`), fixed
    (`base_seconds` each time) or list (`delays`, one per failed attempt, the last repeated);
    `jitter` shortens each wait by a random share up to it. Fields not given are the type's."""

    kind: str | None = None
    base_seconds: float | None = None
    cap_seconds: float | None = None
    jitter: float | None = None
    delays: list[float] | None = None


class JobRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A request for one job: its type, its payload and optional scheduling."""

    type: str
    payload: dict[str, Any] = msgspec.field(default_factory=dict)
    queue: str | None = None
    priority: int | None = None
    """Higher runs first; the type's default when not given (0 unless it says otherwise)."""
    run_at: datetime | None = None
    delay_seconds: float | None = None
    max_attempts: int | None = None
    timeout_seconds: float | None = None
    callback_url: str | None = None
    backoff: Backoff | None = None
    lock: str | None = None
    """Jobs sharing a lock run one at a time, in order (Procrastinate's `lock`)."""
    queueing_lock: str | None = None
    """At most one queued job holds this value (Procrastinate's `queueing_lock`)."""
    key: str | None = None
    """The client's own id for the job (BullMQ's jobId): while a job with this key exists,
    submitting it again returns that job instead of creating another."""
    remove_on_complete: policies.RemoveOption | None = None
    """Overrides the queue's retention of this job once it succeeded (BullMQ's option)."""
    remove_on_fail: policies.RemoveOption | None = None
    """Overrides the queue's retention of this job once it failed (BullMQ's option)."""


class JobBatch(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """Up to MAX_BATCH requests, accepted all or nothing."""

    jobs: list[JobRequest]


@dataclass(frozen=True)
class Planned:
    """A checked request, ready to write: every default filled in."""

    id: uuid.UUID
    request: JobRequest
    """The request as written: queue, max_attempts and timeout_seconds are never None."""
    scheduled_at: datetime | None
    fingerprint: str
    """What an Idempotency-Key replay must match."""
    attempts_defaulted: bool = False
    """max_attempts came from the job type: the queue's setting, if any, applies instead."""
    timeout_defaulted: bool = False
    """timeout_seconds came from the job type: the queue's setting, if any, applies instead."""
    retention: dict[str, Any] | None = None
    """The job's own retention, {status: keep}, as `jobs.retention` stores it."""


def decode(body: bytes, type: type[JobRequest] | type[JobBatch] = JobRequest):
    """A JSON body as a request, with strict JSON types ("1" is not a number)."""
    return msgspec.json.decode(body, type=type, strict=True)


def plan(request: JobRequest, prefix: str = "", with_files: bool = False) -> Planned:
    """Check a request against its job type's declaration and fill in the defaults;
    InvalidRequest names every field that is wrong (`prefix` before each name)."""
    _refuse_unstorable(request, prefix)
    job_type = jobtypes.get(request.type)
    if job_type.internal:
        raise errors.InvalidRequest(
            f"{job_type.name} jobs are submitted by jobq itself, not by clients.",
            [errors.FieldError(prefix + "type", "submitted by jobq only")])
    if job_type.upload_route and not with_files:
        raise errors.InvalidRequest(
            f"{job_type.name} jobs take uploaded files: submit them with a multipart POST to "
            f"{job_type.upload_route}.", [errors.FieldError(prefix + "type", "needs an upload")])
    try:
        payload = msgspec.to_builtins(job_type.validate(request.payload))
    except errors.InvalidRequest as exc:
        for f in exc.fields:
            f.field = prefix + f.field
        raise
    resolved = msgspec.structs.replace(
        request, payload=payload, queue=request.queue or job_type.queue,
        priority=job_type.priority if request.priority is None else request.priority,
        lock=job_type.lock if request.lock is None else request.lock,
        queueing_lock=(job_type.queueing_lock if request.queueing_lock is None
                       else request.queueing_lock),
        max_attempts=(job_type.retry.max_attempts if request.max_attempts is None
                      else request.max_attempts),
        timeout_seconds=(job_type.timeout.total_seconds() if request.timeout_seconds is None
                         else request.timeout_seconds))
    problems = _problems(resolved, prefix)
    retention = {
        status: keep for status, keep in (
            ("succeeded", policies.job_retention(
                prefix + "remove_on_complete", request.remove_on_complete, problems)),
            ("failed", policies.job_retention(
                prefix + "remove_on_fail", request.remove_on_fail, problems)))
        if keep is not None}
    if problems:
        raise errors.InvalidRequest(
            "; ".join(f"{p.field}: {p.message}" for p in problems), problems)
    scheduled_at = request.run_at
    if request.delay_seconds:
        scheduled_at = datetime.now(UTC) + timedelta(seconds=request.delay_seconds)
    return Planned(id=uuid.uuid4(), request=resolved, scheduled_at=scheduled_at,
                   fingerprint=_fingerprint(resolved),
                   attempts_defaulted=request.max_attempts is None,
                   timeout_defaulted=request.timeout_seconds is None,
                   retention=retention or None)


def _problems(r: JobRequest, prefix: str) -> list[errors.FieldError]:
    def problem(field: str, message: str) -> None:
        problems.append(errors.FieldError(prefix + field, message))

    problems: list[errors.FieldError] = []
    if not QUEUE_NAME.match(r.queue or ""):
        problem("queue", QUEUE_NAME_RULE)
    if not -1000 <= r.priority <= 1000:
        problem("priority", "must be between -1000 and 1000")
    if r.run_at is not None and r.delay_seconds is not None:
        problem("run_at", "give run_at or delay_seconds, not both")
    if r.delay_seconds is not None and not 0 <= r.delay_seconds <= 366 * 86400:
        problem("delay_seconds", "must be between 0 and 31622400 (a year)")
    if r.run_at is not None and r.run_at.tzinfo is None:
        problem("run_at", "must carry a time zone, e.g. 2026-01-01T12:00:00Z")
    elif r.run_at is not None and (message := limits.run_at_problem(r.run_at)):
        problem("run_at", message)
    if not 1 <= r.max_attempts <= 100:
        problem("max_attempts", "must be between 1 and 100")
    if not 0 < r.timeout_seconds <= 7 * 86400:
        problem("timeout_seconds", "must be more than 0 and at most 604800 (a week)")
    if r.callback_url is not None and not r.callback_url.startswith(("http://", "https://")):
        problem("callback_url", "must be an http(s) URL")
    for name in ("lock", "queueing_lock", "key"):
        value = getattr(r, name)
        if value is not None and not 1 <= len(value) <= 255:
            problem(name, "must be 1-255 characters")
    for field, message in backoff_problems(r.backoff):
        problem(field, message)
    return problems


def _refuse_unstorable(r: JobRequest, prefix: str) -> None:
    """NUL characters and deep nesting, which nothing downstream can store (issue 13)."""
    found = limits.json_problem(msgspec.to_builtins(r), prefix.rstrip(".") or "body")
    if found:
        field, message = found
        field = field.removeprefix("body.") if not prefix else field
        raise errors.InvalidRequest(f"{field}: {message}.", [errors.FieldError(field, message)])


_BACKOFF_LIMITS = {"base_seconds": (0, 86_400), "cap_seconds": (0, 7 * 86_400), "jitter": (0, 1)}
MAX_DELAYS = 100


def backoff_problems(backoff: Backoff | None) -> list[tuple[str, str]]:
    """What is wrong with a per-job backoff, as (field, message) pairs."""
    if backoff is None:
        return []
    problems = []
    for key, value in backoff_dict(backoff).items():
        if key in _BACKOFF_LIMITS:
            low, high = _BACKOFF_LIMITS[key]
            if not low <= value <= high:
                problems.append((f"backoff.{key}", f"must be between {low} and {high}"))
    if backoff.kind is not None and backoff.kind not in retry.BACKOFF_KINDS:
        problems.append(("backoff.kind", f"must be one of {', '.join(retry.BACKOFF_KINDS)}"))
    if backoff.delays is not None:
        if backoff.kind not in (None, "list"):
            problems.append(("backoff.delays", 'is only for kind "list"'))
        if not 1 <= len(backoff.delays) <= MAX_DELAYS:
            problems.append(("backoff.delays", f"must hold 1 to {MAX_DELAYS} delays"))
        for i, delay in enumerate(backoff.delays):
            if not 0 <= delay <= 7 * 86_400:
                problems.append((f"backoff.delays[{i}]", "must be between 0 and 604800"))
    elif backoff.kind == "list":
        problems.append(("backoff.delays", 'kind "list" needs delays, e.g. [1, 5, 15]'))
    return problems


def backoff_dict(backoff: Backoff | None) -> dict[str, Any]:
    """The fields of a per-job backoff that were given."""
    return {} if backoff is None else msgspec.to_builtins(backoff)


def _fingerprint(r: JobRequest) -> str:
    # The fields in the order of the first release, so that keys stored before still match;
    # the locks only when given, for the same reason.
    fields: list[Any] = [r.type, r.payload, r.queue, r.priority, r.run_at, r.delay_seconds,
                         r.max_attempts, r.timeout_seconds, r.callback_url,
                         None if r.backoff is None else backoff_dict(r.backoff)]
    if r.lock is not None or r.queueing_lock is not None:
        fields += [r.lock, r.queueing_lock]
    if r.key is not None:
        fields += [r.key]
    if r.remove_on_complete is not None or r.remove_on_fail is not None:
        fields += [msgspec.to_builtins(r.remove_on_complete),
                   msgspec.to_builtins(r.remove_on_fail)]
    return hashlib.sha256(msgspec.json.encode(fields, order="sorted")).hexdigest()
