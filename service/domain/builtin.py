"""jobq's own job types, declared through the public API (`jobq.App` is `jobtypes.App`) like
any user's: their code lives in workers/tasks/, named by `implementation`, so the API validates
their payloads without importing it (mesh.convert's code imports trimesh)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from service.domain import jobtypes, retry

app = jobtypes.App()


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


class ConvertPayload(msgspec.Struct, forbid_unknown_fields=True):
    """`mesh.convert`: the uploaded files (linked to the job) into `format`."""

    format: str
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    reuse: bool = True
    """Reuse an earlier output of the same input bytes, target and options."""


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


noop = app.declare(
    "system.noop", payload=NoopPayload, implementation="workers.tasks.system:noop",
    description="Does nothing; for tests and benchmarks.")

sleep = app.declare(
    "system.sleep", payload=SleepPayload, implementation="workers.tasks.system:sleep",
    description="Sleeps `seconds`, reporting progress; fails its first `fail_times` attempts.",
    retry=retry.RetryPolicy(max_attempts=3, backoff=retry.exponential(base=0.2)),
    timeout=25 * 3600)

convert = app.declare(
    "mesh.convert", payload=ConvertPayload, implementation="workers.tasks.mesh:convert_mesh",
    description="Converts an uploaded 3D mesh with trimesh; submit through /api/v1/conversions.",
    queue="conversions",
    # A crashed or timed-out conversion gets one more try; an invalid mesh (InvalidMesh,
    # UnsupportedConversion: permanent errors) none.
    retry=retry.RetryPolicy(max_attempts=2, backoff=retry.exponential(base=1.0)),
    timeout=300, upload_route="/api/v1/conversions")

webhook = app.declare(
    "system.webhook", payload=WebhookPayload, implementation="workers.tasks.webhook:deliver",
    description="Delivers a finished job's webhook to its callback_url; submitted by jobq.",
    # Queue, attempts and timeout are also written by revision 0011's trigger, which submits
    # these jobs in SQL (a test checks they agree).
    queue="webhooks",
    retry=retry.RetryPolicy(max_attempts=10, backoff=retry.exponential(base=5.0, cap=3600.0)),
    timeout=60, internal=True)
