"""Routes of `/api/v1/jobs`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, FromQuery, HeaderParameter, JSONBody, QueryParameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_204_NO_CONTENT

from service import auth, jobs
from service.api import access, schemas
from service.backend import Backend
from service.domain import jobtypes, requests
from service.domain.status import Status

Idempotency = Annotated[
    str | None,
    HeaderParameter(name="Idempotency-Key", required=False,
                    description="Replays with the same key and body return the first job."),
]


class JobsController(Controller):
    path = f"{schemas.API}/jobs"
    tags = ["jobs"]

    @post("/", status_code=HTTP_201_CREATED, summary="Submit a job",
          dto=schemas.StrictJSON[requests.JobRequest], return_dto=None,
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
          opt=access.rule("submitter"))
    async def submit_batch(
        self, backend: NamedDependency[Backend], principal: NamedDependency[auth.Principal],
        data: JSONBody[requests.JobBatch],
    ) -> dict[str, list[str]]:
        ids = await jobs.submit_batch(backend, data.jobs, principal)
        return {"ids": [str(i) for i in ids]}

    @get("/", summary="List jobs, newest first (a submitter's own only)",
         opt=access.rule("submitter"))
    async def list_jobs(
        self,
        backend: NamedDependency[Backend],
        principal: NamedDependency[auth.Principal],
        status: FromQuery[Status | None] = None,
        job_type: Annotated[str | None, QueryParameter(name="type")] = None,
        queue: FromQuery[str | None] = None,
        created_after: FromQuery[datetime | None] = None,
        created_before: FromQuery[datetime | None] = None,
        limit: Annotated[int, QueryParameter(ge=1, le=jobs.MAX_LIST_LIMIT)] = 50,
        cursor: FromQuery[str | None] = None,
        key: FromQuery[str | None] = None,
    ) -> dict[str, Any]:
        items, next_cursor = await jobs.list_jobs(
            backend,
            jobs.JobFilter(status=status, type=job_type, queue=queue, key=key,
                           created_after=created_after, created_before=created_before),
            limit=limit,
            cursor=cursor,
            scope=principal.scope,
        )
        return {"items": [schemas.job_json(r, principal) for r in items],
                "next_cursor": next_cursor}

    @get("/by-key/{key:str}", summary="Get the job of this API key that holds a client-chosen key",
         opt=access.rule("submitter"))
    async def get_by_key(self, backend: NamedDependency[Backend],
                         principal: NamedDependency[auth.Principal], key: FromPath[str]) -> dict:
        return schemas.job_json(await jobs.get_job_by_key(backend, key, principal.key_id),
                                principal)

    @get("/{job_id:str}", summary="Get a job", opt=access.rule("submitter"))
    async def get_job(self, backend: NamedDependency[Backend],
                      principal: NamedDependency[auth.Principal], job_id: FromPath[str]) -> dict:
        return schemas.job_json(
            await jobs.get_job(backend, schemas.parse_job_id(job_id), principal.scope), principal)

    @get("/{job_id:str}/history", summary="Every attempt and state change, oldest first",
         opt=access.rule("submitter"))
    async def history(self, backend: NamedDependency[Backend],
                      principal: NamedDependency[auth.Principal], job_id: FromPath[str]) -> dict:
        return schemas.history_json(
            await jobs.job_history(backend, schemas.parse_job_id(job_id), principal.scope),
            principal)

    @post("/{job_id:str}/cancel", status_code=HTTP_200_OK, summary="Cancel a job",
          opt=access.rule("submitter"))
    async def cancel(self, backend: NamedDependency[Backend],
                     principal: NamedDependency[auth.Principal], job_id: FromPath[str]) -> dict:
        return schemas.job_json(
            await jobs.cancel_job(backend, schemas.parse_job_id(job_id), principal.scope),
            principal)

    @post("/{job_id:str}/retry", status_code=HTTP_200_OK,
          summary="Requeue a failed or cancelled job", opt=access.rule("operator"))
    async def retry(self, backend: NamedDependency[Backend], job_id: FromPath[str]) -> dict:
        return schemas.job_json(await jobs.retry_job(backend, schemas.parse_job_id(job_id)))

    @delete("/{job_id:str}", status_code=HTTP_204_NO_CONTENT, summary="Delete a finished job",
            opt=access.rule("operator"))
    async def remove(self, backend: NamedDependency[Backend], job_id: FromPath[str]) -> None:
        await jobs.delete_job(backend, schemas.parse_job_id(job_id))


@get(f"{schemas.API}/job-types", tags=["jobs"], summary="The job types this API accepts",
     opt=access.rule("submitter"))
async def list_job_types() -> dict[str, Any]:
    """Each declared type with its queue, defaults and payload JSON schema."""
    return {"items": [t.describe() for t in jobtypes.REGISTRY]}
