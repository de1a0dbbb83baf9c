"""`GET /api/v1/jobs/{id}/deliveries`: every attempt to deliver a job's webhooks."""

from __future__ import annotations

from typing import Any

from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromPath

from service import auth, jobs, webhooks
from service.api import access, schemas, shapes
from service.api.openapi import answers
from service.backend import Backend


@get(f"{schemas.API}/jobs/{{job_id:str}}/deliveries", tags=["jobs"],
     summary="Every attempt to deliver the job's webhook, oldest first",
     description="A job with a callback_url gets a signed POST when it finishes (see "
     "docs/events.md). Each attempt: when, where, the status code or error, and its outcome: "
     "delivered, failed (tried again later) or refused (not allowed, never tried again).",
     responses=answers(shapes.Deliveries, 404),
     opt=access.rule("submitter"))
async def job_deliveries(backend: NamedDependency[Backend],
                         principal: NamedDependency[auth.Principal],
                         job_id: FromPath[str]) -> dict[str, Any]:
    job = await jobs.get_job(backend, schemas.parse_job_id(job_id), principal.scope)
    async with backend.connection() as conn:
        rows = await webhooks.deliveries(conn, job["id"])
    return {"callback_url": job["callback_url"],
            "items": [schemas.delivery_json(r) for r in rows]}
