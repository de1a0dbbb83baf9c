"""Routes for queues, workers, health and readiness."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Controller, Response, get, patch, post, route
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from service import errors, maintenance, queues, retention
from service.api import access, schemas, shapes
from service.api import errors as api_errors
from service.api.openapi import answers
from service.backend import Backend
from service.db import migrate
from service.domain import policies
from service.settings import Settings

logger = logging.getLogger(__name__)


class CleanRequest(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """`POST /api/v1/queues/{name}/clean`: which finished jobs to delete."""

    status: str
    """succeeded, failed or cancelled"""
    older_than_seconds: float = 0
    """Only jobs that finished longer ago than this."""
    limit: int = 10_000
    """At most this many (up to 1,000,000); call again while `deleted` equals it."""


class QueuesController(Controller):
    path = f"{schemas.API}/queues"
    tags = ["queues"]
    opt = access.rule("operator")

    @get("/", summary="Per-queue counts, ages and pause state",
         responses=answers(shapes.Queues))
    async def list_queues(self, backend: NamedDependency[Backend]) -> dict[str, Any]:
        return {"items": await queues.queue_stats(backend)}

    @get("/{name:str}", summary="A queue's settings, counts and ages",
         responses=answers(shapes.Queue, 404, 422))
    async def get_queue(self, backend: NamedDependency[Backend], name: FromPath[str]) -> dict:
        return await queues.get_queue(backend, name)

    @patch("/{name:str}", summary="Change a queue's settings (absent: unchanged, null: no limit)",
           dto=schemas.StrictJSON[policies.QueuePatch], return_dto=None,
           responses=answers(shapes.Queue, 413, 422))
    async def update_queue(self, backend: NamedDependency[Backend], name: FromPath[str],
                           data: JSONBody[policies.QueuePatch]) -> dict:
        return await queues.update_queue(backend, name, data)

    @post("/{name:str}/clean", status_code=HTTP_200_OK,
          summary="Delete finished jobs of one status older than a given age, oldest first",
          dto=schemas.StrictJSON[CleanRequest], return_dto=None,
          responses=answers(shapes.Deleted, 413, 422))
    async def clean(self, backend: NamedDependency[Backend], name: FromPath[str],
                    data: JSONBody[CleanRequest]) -> dict[str, int]:
        queues.check_name(name)
        deleted = await retention.clean(backend, name, data.status, data.older_than_seconds,
                                        data.limit)
        return {"deleted": deleted}

    @post("/{name:str}/pause", status_code=HTTP_200_OK, summary="Stop workers starting jobs",
          responses=answers(shapes.Queue, 422))
    async def pause(self, backend: NamedDependency[Backend], name: FromPath[str]) -> dict:
        return await queues.set_paused(backend, name, True)

    @post("/{name:str}/resume", status_code=HTTP_200_OK, summary="Let workers start jobs again",
          responses=answers(shapes.Queue, 422))
    async def resume(self, backend: NamedDependency[Backend], name: FromPath[str]) -> dict:
        return await queues.set_paused(backend, name, False)


@get(f"{schemas.API}/workers", tags=["workers"], summary="Live workers",
     responses=answers(shapes.Workers),
     opt=access.rule("operator"))
async def list_workers(backend: NamedDependency[Backend]) -> dict[str, Any]:
    return {"items": [schemas.worker_json(w) for w in await queues.live_workers(backend)]}


@post(f"{schemas.API}/maintenance/recover-stalled", status_code=HTTP_200_OK,
      tags=["operations"], summary="Requeue the jobs of dead workers now",
      responses=answers(shapes.Recovered),
      opt=access.rule("admin"))
async def recover_stalled(
    backend: NamedDependency[Backend], settings: NamedDependency[Settings]
) -> dict[str, int]:
    return await maintenance.recover_stalled(backend, settings.stall_timeout.total_seconds())


# HEAD as well as GET: some load balancers and probes ask with HEAD.
@route("/health", http_method=["GET", "HEAD"], tags=["operations"],
       summary="The process is alive", responses=answers(shapes.Health),
       opt=access.rule("public"))
async def health() -> dict[str, str]:
    return {"status": "ok"}


@route("/ready", http_method=["GET", "HEAD"], tags=["operations"],
       summary="The database is reachable and at this code's schema (or a later one)",
       description="503 (problem+json) while it is not, saying why in words.",
       responses=answers(shapes.Ready), opt=access.rule("public"))
async def ready(backend: NamedDependency[Backend]) -> Response[dict[str, Any]]:
    # The answer is in words: never the driver's message, which can carry SQL and parameters.
    try:
        async with backend.connection() as conn:
            check = migrate.SchemaCheck.of(await migrate.read_revision(conn))
    except errors.DatabaseUnavailable as exc:
        logger.warning("not ready: %s", exc)
        return _not_ready("The database cannot be reached.")
    except Exception:  # any other failure to ask also means "not ready"
        logger.exception("not ready: reading the schema revision failed")
        return _not_ready("The database's schema revision could not be read; see the API's log.")
    if check.problem:
        return _not_ready(_sentence(check.problem))
    body: dict[str, Any] = {"status": "ready", "revision": check.current}
    if check.newer:  # mid-upgrade: this process still serves until it is replaced
        body["warning"] = _sentence(check.newer)
    return Response(body)


def _sentence(text: str) -> str:
    return text[0].upper() + text[1:] + "."


def _not_ready(detail: str) -> Response[dict[str, Any]]:
    return api_errors.problem(HTTP_503_SERVICE_UNAVAILABLE, detail,
                              headers={"Retry-After": str(api_errors.RETRY_AFTER_SECONDS)})
