"""system.webhook: POST a finished job's outcome to its callback_url, signed.

Every attempt, delivered or not, goes into the history of the job it is about
(`GET /api/v1/jobs/{id}/deliveries`). A receiver that fails or answers non-2xx gets the delivery
again with the job type's backoff; a refused target (a private address, say) is not tried again.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from typing import Any

import msgspec

from service import errors
from service import settings as settings_module
from service.domain.builtin import WebhookPayload
from service.settings import Settings
from workers.progress import JobRun

_TIMES = ("created_at", "scheduled_at", "started_at", "finished_at", "progress_updated_at")


def body(delivery_id: str, payload: WebhookPayload) -> bytes:
    """What is POSTed: the event and the job as `GET /api/v1/jobs/{id}` showed it then."""
    # Imported on the first delivery: a worker that sends none never loads Litestar's schemas.
    from service.api import schemas

    job: dict[str, Any] = dict(payload.job)
    for key in _TIMES:
        if job.get(key) is not None:
            job[key] = datetime.fromisoformat(job[key])
    return msgspec.json.encode({
        "delivery_id": delivery_id,
        "event": f"job.{payload.event}",
        "sent_at": schemas.timestamp(datetime.now(UTC)),
        "job": schemas.job_json(job),
    })


@functools.cache
def _settings() -> Settings:
    # The webhook settings have no command-line flags: the worker's environment is theirs, read
    # once, like every setting at start-up.
    return settings_module.load_settings()


async def deliver(run: JobRun, payload: WebhookPayload) -> dict[str, Any]:
    """POST the outcome, signed; record the attempt in the job's history."""
    # Imported on the first delivery: a worker that sends none never loads aiohttp.
    from service import webhooks

    settings = _settings()
    policy = webhooks.AddressPolicy(settings.webhook_allowed_networks)
    timeout = settings.webhook_timeout.total_seconds()
    delivery_id = str(run.job_id)
    if not settings.webhook_secrets:
        outcome = webhooks.Delivery(payload.url, "refused", None, 0.0,
                                    "JOBQ_WEBHOOK_SECRETS is not set: webhooks are not sent "
                                    "unsigned")
    else:
        content = body(delivery_id, payload)
        timestamp = int(time.time())
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "jobq-webhook/1",
            webhooks.DELIVERY_HEADER: delivery_id,
            webhooks.EVENT_HEADER: f"job.{payload.event}",
            webhooks.TIMESTAMP_HEADER: str(timestamp),
            webhooks.SIGNATURE_HEADER: webhooks.signature_header(
                settings.webhook_secrets, timestamp, content),
        }
        outcome = await webhooks.deliver(payload.url, content, headers, policy, timeout)
    async with run.backend.connection() as conn:
        await webhooks.record(conn, run.attempt_id, payload.job_id, outcome)
    if outcome.outcome == "delivered":
        return {"url": outcome.url, "status_code": outcome.status_code,
                "duration_ms": outcome.duration_ms}
    if outcome.outcome == "refused":
        raise errors.PermanentJobError(outcome.error or "refused")
    raise errors.TransientJobError(outcome.error or "not delivered")

