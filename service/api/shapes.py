"""The JSON shapes of the API's answers, as the OpenAPI document describes them (issue 13).

These types only describe: the handlers build their bodies in service/api/schemas.py and the
use-case modules. tests/integration/test_contract.py checks every answer against the document
(schemathesis), so a shape here that drifts from what is sent fails there.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import msgspec

from service.domain.status import Status

# -- errors ----------------------------------------------------------------------------------


class FieldProblem(msgspec.Struct):
    field: str
    """The request part to fix: a body field's dotted path, a parameter, a header."""
    message: str


class Problem(msgspec.Struct):
    """RFC 9457 problem details: every 4xx and 5xx of jobq (outside /api/v2's own routes)."""

    type: str
    title: str
    status: int
    detail: str
    """What is wrong and what to do, in words."""
    errors: list[FieldProblem] | None = None
    """The fields to fix, when the problem is with particular fields."""


class V2Error(msgspec.Struct):
    """/api/v2's errors, as the BullMQ-era service sent them."""

    error: str


# -- jobs ------------------------------------------------------------------------------------


class JobError(msgspec.Struct):
    type: str
    message: str
    retryable: bool | None = None


class JobLinks(msgspec.Struct):
    self: str
    history: str
    stream: str
    output: str


class Job(msgspec.Struct):
    id: uuid.UUID
    type: str
    queue: str
    status: Status
    priority: int
    key: str | None
    progress: int
    """0 to 100"""
    stage: str | None
    progress_message: str | None
    attempts: int
    max_attempts: int
    timeout_seconds: float
    cancel_requested: bool
    payload: dict[str, Any]
    result: Any
    """What the job returned (JSON), once it succeeded; null before."""
    error: JobError | None
    created_at: datetime
    scheduled_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    links: JobLinks


class JobPage(msgspec.Struct):
    items: list[Job]
    next_cursor: str | None
    """Pass as `cursor` for the next page; null on the last one."""


class JobIds(msgspec.Struct):
    ids: list[uuid.UUID]


class HistoryEvent(msgspec.Struct):
    at: datetime
    event: str
    attempt: int | None
    worker: str | None
    message: str | None
    error: JobError | None


class AttemptError(msgspec.Struct):
    type: str
    message: str
    retryable: bool | None = None
    traceback: str | None = None
    """With server paths made relative (docs/security.md)."""


class Attempt(msgspec.Struct):
    number: int
    worker: str | None
    worker_id: int | None
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    error: AttemptError | None


class Delivery(msgspec.Struct):
    delivery_id: uuid.UUID
    attempt: int
    at: datetime
    url: str
    status_code: int | None
    duration_ms: float
    outcome: str
    error: str | None


class History(msgspec.Struct):
    items: list[HistoryEvent]
    attempts: list[Attempt]
    deliveries: list[Delivery]


class Deliveries(msgspec.Struct):
    callback_url: str | None
    items: list[Delivery]


class JobType(msgspec.Struct):
    name: str
    description: str | None
    queue: str
    priority: int
    max_attempts: int
    backoff: dict[str, Any]
    timeout_seconds: float
    retry_timeouts: bool
    permanent_errors: list[str]
    lock: str | None
    queueing_lock: str | None
    runs_in: str
    upload_route: str | None
    payload_schema: dict[str, Any]


class JobTypes(msgspec.Struct):
    items: list[JobType]


# -- queues, schedules, workers ------------------------------------------------------------


class StatusCounts(msgspec.Struct):
    queued: int
    scheduled: int
    running: int
    succeeded: int
    failed: int
    cancelled: int


class RateLimit(msgspec.Struct):
    max_starts: int
    per_seconds: float


class Keep(msgspec.Struct):
    max_age_seconds: float | None
    max_count: int | None


class Retention(msgspec.Struct):
    succeeded: Keep
    failed: Keep
    cancelled: Keep


class Queue(msgspec.Struct):
    """A queue's counts and ages, and its settings. A queue that has jobs but was never
    configured (jobs deferred without jobq) shows only `paused` among the settings."""

    name: str
    counts: StatusCounts
    oldest_queued_age_seconds: float | None
    oldest_running_age_seconds: float | None
    paused: bool
    rate_limit: RateLimit | None = None
    concurrency_limit: int | None = None
    max_attempts: int | None = None
    timeout_seconds: float | None = None
    backoff: dict[str, Any] | None = None
    retention: Retention | None = None


class Queues(msgspec.Struct):
    items: list[Queue]


class Deleted(msgspec.Struct):
    deleted: int


class Schedule(msgspec.Struct):
    name: str
    cron: str | None
    interval_seconds: float | None
    timezone: str
    paused: bool
    origin: str
    job: dict[str, Any]
    """The job request each tick submits."""
    next_tick_at: datetime | None
    last_tick_at: datetime | None
    last_job_id: uuid.UUID | None
    created_at: datetime
    updated_at: datetime


class Schedules(msgspec.Struct):
    items: list[Schedule]


class Worker(msgspec.Struct):
    id: int
    name: str
    host: str
    pid: int
    queues: list[str]
    concurrency: int
    started_at: datetime
    last_heartbeat: datetime
    heartbeat_age_seconds: float
    running_jobs: list[uuid.UUID]


class Workers(msgspec.Struct):
    items: list[Worker]


class Recovered(msgspec.Struct):
    requeued: int
    failed: int
    cancelled: int


class Health(msgspec.Struct):
    status: Literal["ok"]


class Ready(msgspec.Struct):
    status: Literal["ready"]
    revision: str
    warning: str | None = None
    """Set while the database is at a newer revision than this process (mid-upgrade)."""


class Formats(msgspec.Struct):
    input: list[str]
    output: list[str]


# -- /api/v2 ---------------------------------------------------------------------------------


class V2Submitted(msgspec.Struct):
    message: str
    jobId: uuid.UUID
    statusUrl: str


class V2Status(msgspec.Struct):
    jobId: uuid.UUID
    status: Literal["waiting", "delayed", "active", "completed", "failed"]
    progress: int
    downloadUrl: str | None = None
    converter: str | None = None
    duration: float | None = None
    error: str | None = None


class V2Stats(msgspec.Struct):
    waiting: int
    active: int
    completed: int
    failed: int
    delayed: int


class V2Removed(msgspec.Struct):
    message: str
    jobId: uuid.UUID


# -- upload forms (multipart/form-data: JSON Schema written out, every field is text) --------

_FILES = {"type": "array", "minItems": 1,
          "items": {"type": "string", "format": "binary"},
          "description": "The mesh with its sidecars (.mtl, .bin, textures), or one .zip."}


def _text(description: str, **more: Any) -> dict[str, Any]:
    return {"type": "string", "description": description, **more}


CONVERSION_FORM: dict[str, Any] = {
    "type": "object",
    "required": ["file", "format"],
    "additionalProperties": False,
    "properties": {
        "file": _FILES,
        "format": _text("The target format (GET /api/v1/formats)."),
        "options": _text("A JSON object of conversion options."),
        "reuse": _text("false to convert again although the same input was converted before.",
                       enum=["true", "false"]),
        "timeout_seconds": _text("A number of seconds."),
        "priority": _text("A whole number; higher runs first."),
        "max_attempts": _text("A whole number."),
        "delay_seconds": _text("A number of seconds."),
        "run_at": _text("An RFC 3339 time."),
        "key": _text("A client-chosen key naming the job."),
        "callback_url": _text("Where the finished job is POSTed (docs/events.md)."),
        "queue": _text("The queue."),
        "backoff": _text("A JSON object: the retry backoff."),
    },
}
"""POST /api/v1/conversions."""

V2_FORM: dict[str, Any] = {
    "type": "object",
    "required": ["file"],
    "additionalProperties": False,
    "properties": {
        "file": _FILES,
        "format": _text("The target format; glb when absent."),
        "priority": _text("BullMQ's priority: 1 (first) to 2097152."),
        "attempts": _text("Runs in all."),
        "delay": _text("Milliseconds."),
        "jobId": _text("A client-chosen id (the job's key)."),
        "backoff": _text('Milliseconds, or {"type": "fixed" | "exponential", "delay": ms}.'),
    },
}
"""POST /api/v2/convert."""
