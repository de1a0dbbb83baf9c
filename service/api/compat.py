"""`/api/v2`: the BullMQ-era converter's routes, field names and status words, unchanged, for
front ends written against it. Errors here are `{"error": "..."}` as that service sent them."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.status_codes import (
    HTTP_200_OK,
    HTTP_400_BAD_REQUEST,
    HTTP_401_UNAUTHORIZED,
    HTTP_403_FORBIDDEN,
    HTTP_404_NOT_FOUND,
    HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    HTTP_429_TOO_MANY_REQUESTS,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from service import auth, conversions, errors, jobs, queues
from service.api import access, schemas, shapes
from service.api import conversions as conversion_routes
from service.api.openapi import answers
from service.backend import Backend
from service.domain import jobtypes, requests
from service.settings import Settings

V2 = "/api/v2"

# Our statuses in the words BullMQ used.
BULLMQ_STATUS = {
    "queued": "waiting",
    "scheduled": "delayed",
    "running": "active",
    "succeeded": "completed",
    "failed": "failed",
    "cancelled": "failed",
}


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return Response({"error": message}, status_code=status, headers=headers)


def _v2_errors(exc: Exception) -> Response:
    if isinstance(exc, errors.NotFound):
        return _error(HTTP_404_NOT_FOUND, "Job not found")
    if isinstance(exc, errors.Unauthorized):
        return _error(HTTP_401_UNAUTHORIZED, str(exc),
                      {"WWW-Authenticate": 'Bearer realm="jobq"'})
    if isinstance(exc, errors.Forbidden):
        return _error(HTTP_403_FORBIDDEN, str(exc))
    if isinstance(exc, errors.TooManyRequests):
        return _error(HTTP_429_TOO_MANY_REQUESTS, str(exc), {"Retry-After": str(exc.retry_after)})
    if isinstance(exc, errors.FileTooLarge | errors.TooLarge):
        return _error(HTTP_413_REQUEST_ENTITY_TOO_LARGE, str(exc))
    if isinstance(exc, errors.DatabaseUnavailable):
        return _error(HTTP_503_SERVICE_UNAVAILABLE, "Service unavailable, retry shortly",
                      {"Retry-After": "2"})
    return _error(HTTP_400_BAD_REQUEST, str(exc))


V2_FIELDS = {"format", "priority", "attempts", "delay", "jobId", "backoff"}
"""What a BullMQ-era client may send with its file: the target and BullMQ's job options."""


def v2_job_options(fields: dict[str, str]) -> dict[str, Any]:
    """BullMQ's job options, in BullMQ's words and units, as jobq's request fields:
    `priority` 1 (first) to 2,097,152 (last), none first of all, as BullMQ orders them;
    `attempts` runs in all; `delay` and `backoff.delay` in milliseconds; `jobId` the key."""
    conversions.check_fields(fields, V2_FIELDS)
    options: dict[str, Any] = {}
    if (raw := fields.get("priority", "").strip()) and (priority := _whole(raw, "priority")):
        if not 0 <= priority <= 2**21:
            raise errors.InvalidRequest("priority must be between 0 and 2097152.",
                                        [errors.FieldError("priority", "out of range")])
        # BullMQ runs jobs without priority first, then 1, 2, ...: ours runs higher first.
        options["priority"] = -min(priority, 1000)
    if raw := fields.get("attempts", "").strip():
        options["max_attempts"] = _whole(raw, "attempts")
    if raw := fields.get("delay", "").strip():
        options["delay_seconds"] = _whole(raw, "delay") / 1000
    if raw := fields.get("jobId", "").strip():
        options["key"] = raw
    if raw := fields.get("backoff", "").strip():
        options["backoff"] = _v2_backoff(raw)
    return options


def _whole(raw: str, field: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise errors.InvalidRequest(f"{field} must be a whole number, got {raw!r}.",
                                    [errors.FieldError(field, "not a whole number")]) from None


def _v2_backoff(raw: str) -> requests.Backoff:
    """BullMQ's backoff: a number of milliseconds (fixed), or {"type": "fixed" |
    "exponential", "delay": ms}."""
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        value = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return requests.Backoff(kind="fixed", base_seconds=value / 1000, jitter=0)
    if (isinstance(value, dict) and value.get("type") in ("fixed", "exponential")
            and set(value) <= {"type", "delay"}
            and isinstance(value.get("delay", 0), int | float)):
        return requests.Backoff(kind=value["type"], base_seconds=value.get("delay", 0) / 1000,
                                jitter=0)
    raise errors.InvalidRequest(
        'backoff must be milliseconds or {"type": "fixed" or "exponential", "delay": ms}, '
        f"got {raw!r}.", [errors.FieldError("backoff", "not a BullMQ backoff")])


async def _conversion(backend: Backend, job_id: str, principal: auth.Principal) -> dict[str, Any]:
    """A conversion job (of this key, for a submitter); any other job does not exist as far
    as /api/v2 is concerned."""
    job = await jobs.get_job(backend, schemas.parse_job_id(job_id), principal.scope)
    if job["type"] != jobtypes.MESH_CONVERT.name:
        raise errors.JobNotFound(job_id)
    return job


@post(f"{V2}/convert", status_code=HTTP_200_OK, tags=["v2 (BullMQ-era)"],
      summary="Upload a mesh (multipart: file, format = glb; BullMQ's priority, attempts, "
      "delay, jobId, backoff)", request_max_body_size=None,
      exception_handlers={errors.ServiceError: lambda _, exc: _v2_errors(exc)},
      responses=answers(shapes.V2Submitted, 413, 503, v2=True),
      opt={**access.rule("submitter"), "form": shapes.V2_FORM})
async def convert(
    request: Request, backend: NamedDependency[Backend], settings: NamedDependency[Settings],
    principal: NamedDependency[auth.Principal],
) -> dict[str, str]:
    await conversion_routes.check_length(request, settings, backend, principal)
    async with (auth.upload_slot(backend, principal),
                await conversion_routes.read_form(request, settings) as form):
        options = v2_job_options(form.fields)
        job, _ = await conversions.submit_conversion(
            backend, conversion_routes.uploads(form), form.fields.get("format") or "glb", {},
            settings.max_upload_bytes, job=options, principal=principal)
    job_id = str(job["id"])
    return {"message": "Conversion job submitted", "jobId": job_id,
            "statusUrl": f"{V2}/status/{job_id}"}


@get(f"{V2}/status/{{job_id:str}}", tags=["v2 (BullMQ-era)"], summary="A job's state",
     exception_handlers={errors.ServiceError: lambda _, exc: _v2_errors(exc)},
     responses=answers(shapes.V2Status, 404, 503, v2=True),
     opt=access.rule("submitter"))
async def status(backend: NamedDependency[Backend], principal: NamedDependency[auth.Principal],
                 job_id: FromPath[str]) -> dict[str, Any]:
    job = await _conversion(backend, job_id, principal)
    body: dict[str, Any] = {"jobId": str(job["id"]), "status": BULLMQ_STATUS[job["status"]],
                            "progress": job["progress"]}
    if job["status"] == "succeeded":
        result = job["result"] or {}
        body["downloadUrl"] = f"/api/v1/jobs/{job['id']}/output"
        body["converter"] = result.get("converter")
        body["duration"] = result.get("duration_ms")
    elif job["status"] == "failed":
        body["error"] = (schemas.public_error(job["error"], principal)
                         or {}).get("message", "Conversion failed")
    elif job["status"] == "cancelled":
        body["error"] = "Job was cancelled"
    return body


@get(f"{V2}/queue/stats", tags=["v2 (BullMQ-era)"],
     summary="Counts of conversion jobs (a submitter's own only)",
     exception_handlers={errors.ServiceError: lambda _, exc: _v2_errors(exc)},
     responses=answers(shapes.V2Stats, 503, v2=True),
     opt=access.rule("submitter"))
async def stats(backend: NamedDependency[Backend],
                principal: NamedDependency[auth.Principal]) -> dict[str, int]:
    counts = {"waiting": 0, "active": 0, "completed": 0, "failed": 0, "delayed": 0}
    if principal.scope is not None:  # a submitter: its own conversions only
        for ours, n in (await jobs.count_by_status(backend, jobtypes.MESH_CONVERT.name,
                                                   principal.scope)).items():
            counts[BULLMQ_STATUS[ours]] += n
        return counts
    for queue in await queues.queue_stats(backend):
        if queue["name"] != jobtypes.get("mesh.convert").queue:
            continue
        for ours, n in queue["counts"].items():
            counts[BULLMQ_STATUS[ours]] += n
    return counts


@delete(f"{V2}/jobs/{{job_id:str}}", status_code=HTTP_200_OK, tags=["v2 (BullMQ-era)"],
        summary="Cancel a waiting job, or remove a finished one (removing needs the operator "
        "role)", exception_handlers={errors.ServiceError: lambda _, exc: _v2_errors(exc)},
        responses=answers(shapes.V2Removed, 404, 503, v2=True),
        opt=access.rule("submitter"))
async def remove(backend: NamedDependency[Backend], principal: NamedDependency[auth.Principal],
                 job_id: FromPath[str]) -> Response:
    job = await _conversion(backend, job_id, principal)
    parsed = job["id"]
    if job["status"] == "running":
        return _error(HTTP_400_BAD_REQUEST, "Cannot cancel active job")
    if job["status"] in ("queued", "scheduled"):
        await jobs.cancel_job(backend, parsed, principal.scope)
    elif not principal.has("operator"):
        return _error(HTTP_403_FORBIDDEN, "Removing a finished job needs the operator role.")
    else:
        await jobs.delete_job(backend, parsed)
    return Response({"message": "Job cancelled", "jobId": str(parsed)}, status_code=HTTP_200_OK)


ROUTES = [convert, status, stats, remove]
