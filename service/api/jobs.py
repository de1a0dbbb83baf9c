"""Routes of `/api/v1/jobs`."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from service import auth, errors, jobs
from service.api import access, schemas, shapes
from service.api.openapi import answers
from service.backend import Backend
from service.domain import jobtypes, requests
from service.domain.status import Status

Idempotency = Annotated[
    str | None,
    HeaderParameter(name="Idempotency-Key", required=False,
                    description="Replays with the same key and body return the first job."),
]


CreatedTime = Annotated[str | None, QueryParameter(
    format="date-time", description="An RFC 3339 time, e.g. 2026-01-01T12:00:00Z.")]


RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d{1,6})?([Zz]|[+-]\d\d:\d\d)\Z")


def rfc3339(field: str, raw: str | None) -> datetime | None:
    """A time filter as RFC 3339 text only: Litestar's own conversion also took a number (as
    seconds since 1970), which the document does not allow (schemathesis, issue 13)."""
    if raw is None:
        return None
    try:
        if not RFC3339.match(raw):
            raise ValueError(raw)
        return datetime.fromisoformat(raw.upper().replace("Z", "+00:00"))
    except ValueError:
        raise errors.InvalidRequest(
            f"{field} must be an RFC 3339 time like 2026-01-01T12:00:00Z, got {raw!r}.",
            [errors.FieldError(field, "not an RFC 3339 time")]) from None


class JobsController(Controller):
    path = f"{schemas.API}/jobs"
    tags = ["jobs"]

    @post("/", status_code=HTTP_201_CREATED, summary="Submit a job",
          description="201 with the new job; 200 with the existing one when `key` or the "
          "Idempotency-Key names a job submitted before with the same request.",
          dto=schemas.StrictJSON[requests.JobRequest], return_dto=None,
          responses=answers(shapes.Job, 409, 413, 422, status=201, also={200: shapes.Job}),
          opt=access.rule("submitter"))
    async def submit(
        self,
        backend: NamedDependency[Backend],
        principal: NamedDependency[auth.Principal],
        data: JSONBody[requests.JobRequest],
        idempotency_key: Idempotency = None,
    ) -> Response[dict[str, Any]]:
        job, created = await jobs.submit_job(backend, data, idempotency_key, principal)
        body = schemas.job_json(job, principal)
        return Response(
            body,
            status_code=HTTP_201_CREATED if created else HTTP_200_OK,
            headers={"Location": body["links"]["self"]},
        )

    @post("/batch", status_code=HTTP_201_CREATED, summary="Submit up to 1000 jobs, all or none",
          dto=schemas.StrictJSON[requests.JobBatch], return_dto=None,
          responses=answers(shapes.JobIds, 409, 413, 422, status=201),
          opt=access.rule("submitter"))
    async def submit_batch(
        self, backend: NamedDependency[Backend], principal: NamedDependency[auth.Principal],
        data: JSONBody[requests.JobBatch],
    ) -> dict[str, list[str]]:
        ids = await jobs.submit_batch(backend, data.jobs, principal)
        return {"ids": [str(i) for i in ids]}

    @get("/", summary="List jobs, newest first (a submitter's own only)",
         responses=answers(shapes.JobPage, 422),
         opt=access.rule("submitter"))
    async def list_jobs(
        self,
        backend: NamedDependency[Backend],
        principal: NamedDependency[auth.Principal],
        status: FromQuery[Status | None] = None,
        job_type: Annotated[str | None, QueryParameter(name="type")] = None,
        queue: FromQuery[str | None] = None,
        created_after: CreatedTime = None,
        created_before: CreatedTime = None,
        limit: Annotated[int, QueryParameter(ge=1, le=jobs.MAX_LIST_LIMIT)] = 50,
        cursor: FromQuery[str | None] = None,
        key: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        items, next_cursor = await jobs.list_jobs(
            backend,
            jobs.JobFilter(status=status, type=job_type, queue=queue, key=key,
                           created_after=rfc3339("created_after", created_after),
                           created_before=rfc3339("created_before", created_before)),
            limit=limit,
            cursor=cursor,
            scope=principal.scope,
        )
        return {"items": [schemas.job_json(r, principal) for r in items],
                "next_cursor": next_cursor}

    @get("/by-key/{key:str}", summary="Get the job of this API key that holds a client-chosen key",
         responses=answers(shapes.Job, 404, 422),
         opt=access.rule("submitter"))
    async def get_by_key(self, backend: NamedDependency[Backend],
                         principal: NamedDependency[auth.Principal], key: FromPath[str]) -> dict:
        return schemas.job_json(await jobs.get_job_by_key(backend, key, principal.key_id),
                                principal)

    @get("/{job_id:str}", summary="Get a job", responses=answers(shapes.Job, 404),
         opt=access.rule("submitter"))
    async def get_job(self, backend: NamedDependency[Backend],
                      principal: NamedDependency[auth.Principal], job_id: FromPath[str]) -> dict:
        return schemas.job_json(
            await jobs.get_job(backend, schemas.parse_job_id(job_id), principal.scope), principal)

    @get("/{job_id:str}/history", summary="Every attempt and state change, oldest first",
         responses=answers(shapes.History, 404),
         opt=access.rule("submitter"))
    async def history(self, backend: NamedDependency[Backend],
                      principal: NamedDependency[auth.Principal], job_id: FromPath[str]) -> dict:
        return schemas.history_json(
            await jobs.job_history(backend, schemas.parse_job_id(job_id), principal.scope),
            principal)

    @post("/{job_id:str}/cancel", status_code=HTTP_200_OK, summary="Cancel a job",
          responses=answers(shapes.Job, 404, 409),
          opt=access.rule("submitter"))
    async def cancel(self, backend: NamedDependency[Backend],
                     principal: NamedDependency[auth.Principal], job_id: FromPath[str]) -> dict:
        return schemas.job_json(
            await jobs.cancel_job(backend, schemas.parse_job_id(job_id), principal.scope),
            principal)

    @post("/{job_id:str}/retry", status_code=HTTP_200_OK,
          summary="Requeue a failed or cancelled job", responses=answers(shapes.Job, 404, 409),
          opt=access.rule("operator"))
    async def retry(self, backend: NamedDependency[Backend], job_id: FromPath[str]) -> dict:
        return schemas.job_json(await jobs.retry_job(backend, schemas.parse_job_id(job_id)))

    @delete("/{job_id:str}", status_code=HTTP_204_NO_CONTENT, summary="Delete a finished job",
            responses=answers(None, 404, 409),
            opt=access.rule("operator"))
    async def remove(self, backend: NamedDependency[Backend], job_id: FromPath[str]) -> None:
        await jobs.delete_job(backend, schemas.parse_job_id(job_id))


@get(f"{schemas.API}/job-types", tags=["jobs"], summary="The job types this API accepts",
     responses=answers(shapes.JobTypes),
     opt=access.rule("submitter"))
async def list_job_types() -> dict[str, Any]:
    """Each declared type with its queue, defaults and payload JSON schema."""
    return {"items": [t.describe() for t in jobtypes.REGISTRY]}
