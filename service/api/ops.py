"""Routes for queues, workers, health and readiness."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from sqlalchemy.ext.asyncio import AsyncEngine

from service import maintenance, queues
from service.api import errors as api_errors
from service.api import schemas
from service.backend import Backend
from service.db import migrate
from service.settings import Settings


class QueuesController(Controller):
    path = f"{schemas.API}/queues"
    tags = ["queues"]

    @get("/", summary="Per-queue counts, ages and pause state")
    async def list_queues(self, backend: NamedDependency[Backend]) -> dict[str, Any]:
        return {"items": await queues.queue_stats(backend)}

    @post("/{name:str}/pause", status_code=HTTP_200_OK, summary="Stop workers starting jobs")
    async def pause(self, backend: NamedDependency[Backend], name: FromPath[str]) -> dict:
        return await queues.set_paused(backend, name, True)

    @post("/{name:str}/resume", status_code=HTTP_200_OK, summary="Let workers start jobs again")
    async def resume(self, backend: NamedDependency[Backend], name: FromPath[str]) -> dict:
        return await queues.set_paused(backend, name, False)


@get(f"{schemas.API}/workers", tags=["workers"], summary="Live workers")
async def list_workers(backend: NamedDependency[Backend]) -> dict[str, Any]:
    return {"items": [schemas.worker_json(w) for w in await queues.live_workers(backend)]}


@post(f"{schemas.API}/maintenance/recover-stalled", status_code=HTTP_200_OK,
      tags=["operations"], summary="Requeue the jobs of dead workers now")
async def recover_stalled(
    backend: NamedDependency[Backend], settings: NamedDependency[Settings]
) -> dict[str, int]:
    return await maintenance.recover_stalled(backend, settings.stall_timeout.total_seconds())


@get("/health", tags=["operations"], summary="The process is alive")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@get("/ready", tags=["operations"], summary="The database is reachable and migrated")
async def ready(backend: NamedDependency[Backend]) -> Response[dict[str, Any]]:
    expected = migrate.head_revision()
    try:
        current = await _current_revision(backend.engine)
    except Exception as exc:  # any failure to ask means "not ready"
        return api_errors.problem(
            HTTP_503_SERVICE_UNAVAILABLE, f"The database cannot be reached: {exc}",
            headers={"Retry-After": str(api_errors.RETRY_AFTER_SECONDS)},
        )
    if current != expected:
        return api_errors.problem(
            HTTP_503_SERVICE_UNAVAILABLE,
            f"The database is at revision {current}, this code needs {expected}: "
            "run `jobq migrate`.",
            headers={"Retry-After": str(api_errors.RETRY_AFTER_SECONDS)},
        )
    return Response({"status": "ready", "revision": current})


async def _current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(migrate.current_revision)
