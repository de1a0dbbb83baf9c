"""Job-type declarations: payload schema, queue, retry policy and timeout, declared once.

The API validates payloads against these declarations; the worker looks up the code that runs
each type by the same name. Nothing here imports the code that runs a job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, Any

import msgspec

from service import errors
from service.domain.retry import RetryPolicy


@dataclass(frozen=True)
class JobType:
    """What the queue knows about one kind of job."""

    name: str
    payload: type[msgspec.Struct]
    description: str
    queue: str = "default"
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: timedelta = timedelta(minutes=5)
    upload_route: str | None = None
    """Set for types whose input is uploaded files: they are submitted through this route."""
    internal: bool = False
    """Submitted by jobq itself, never by clients (a client could have jobq sign anything)."""

    def validate(self, payload: Any) -> msgspec.Struct:
        """The payload as this type's schema, or InvalidRequest naming the bad field."""
        try:
            return msgspec.convert(payload, self.payload)
        except msgspec.ValidationError as exc:
            raise _payload_error(self.name, exc) from exc


def _payload_error(type_name: str, exc: msgspec.ValidationError) -> errors.InvalidRequest:
    # msgspec says "Expected `int`, got `str` - at `$.fail_times`": split message and path.
    message, _, where = str(exc).partition(" - at `$")
    path = "payload" + where.rstrip("`")
    return errors.InvalidRequest(
        f"Invalid payload for {type_name}: {message} (at {path}).",
        [errors.FieldError(path, message)],
    )


class NoopPayload(msgspec.Struct, forbid_unknown_fields=True):
    """`system.noop` takes nothing."""


class SleepPayload(msgspec.Struct, forbid_unknown_fields=True):
    """`system.sleep`: wait, reporting progress; fail the first `fail_times` attempts."""

    seconds: Annotated[float, msgspec.Meta(ge=0, le=86_400)] = 1.0
    fail_times: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    permanent: bool = False
    """Fail with a permanent error (never retried) instead of a transient one."""
    ignore_cancel: bool = False
    """Keep sleeping when cancelled, like badly written job code (tests timeouts)."""


SYSTEM_NOOP = JobType(
    name="system.noop",
    payload=NoopPayload,
    description="Does nothing; for tests and benchmarks.",
    queue="default",
)

SYSTEM_SLEEP = JobType(
    name="system.sleep",
    payload=SleepPayload,
    description="Sleeps `seconds`, reporting progress; fails its first `fail_times` attempts.",
    queue="default",
    retry=RetryPolicy(max_attempts=3, base=timedelta(milliseconds=200)),
    timeout=timedelta(hours=25),
)

class ConvertPayload(msgspec.Struct, forbid_unknown_fields=True):
    """`mesh.convert`: the uploaded files (linked to the job) into `format`."""

    format: str
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    reuse: bool = True
    """Reuse an earlier output of the same input bytes, target and options."""


MESH_CONVERT = JobType(
    name="mesh.convert",
    payload=ConvertPayload,
    description="Converts an uploaded 3D mesh with trimesh; submit through /api/v1/conversions.",
    queue="conversions",
    retry=RetryPolicy(max_attempts=3),
    timeout=timedelta(minutes=5),
    upload_route="/api/v1/conversions",
)

class WebhookPayload(msgspec.Struct, forbid_unknown_fields=True):
    """`system.webhook`: a finished job's outcome, to POST to its callback_url. Written by the
    trigger of revision 0011, in the transaction that records the outcome."""

    job_id: str
    event_id: int
    """The job_events row of the outcome."""
    event: str
    """succeeded, failed or cancelled."""
    url: str
    job: dict[str, Any]
    """The job (a job_overview row) as it was at that outcome."""


SYSTEM_WEBHOOK = JobType(
    name="system.webhook",
    payload=WebhookPayload,
    description="Delivers a finished job's webhook to its callback_url; submitted by jobq.",
    # Queue, attempts and timeout are also written by revision 0011's trigger, which submits
    # these jobs in SQL (a test checks they agree).
    queue="webhooks",
    retry=RetryPolicy(max_attempts=10, base=timedelta(seconds=5), cap=timedelta(hours=1)),
    timeout=timedelta(seconds=60),
    internal=True,
)

REGISTRY: dict[str, JobType] = {
    t.name: t for t in (SYSTEM_NOOP, SYSTEM_SLEEP, MESH_CONVERT, SYSTEM_WEBHOOK)}


def get(name: str) -> JobType:
    """The declaration of job type `name`, or UnknownJobType."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise errors.UnknownJobType(name, list(REGISTRY)) from None
