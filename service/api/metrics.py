"""`GET /metrics`: Prometheus's text format (service/metrics.py says where each figure comes
from)."""

from __future__ import annotations

from litestar import Response, get
from litestar.datastructures import State
from litestar.di import NamedDependency

from service import metrics
from service.api import access
from service.api.openapi import answers
from service.backend import Backend
from service.settings import Settings


@get("/metrics", tags=["operations"], summary="Prometheus metrics",
     description="Queue depth, oldest queued job, live workers (read from PostgreSQL when "
     "scraped); jobs submitted, started, succeeded, failed, retried and cancelled, run time and "
     "queue wait per type, webhook deliveries (totals kept in PostgreSQL: every API process "
     "answers the same).", responses=answers(str, media_type=metrics.CONTENT_TYPE,
                       description="Prometheus's text exposition format"),
     opt=access.rule("operator"))
async def prometheus(backend: NamedDependency[Backend], settings: NamedDependency[Settings],
                     state: State) -> Response[bytes]:
    hub = getattr(state, "hub", None)
    scrape = await metrics.read(backend, settings.stall_timeout.total_seconds(),
                                hub.open_streams if hub is not None else 0)
    return Response(metrics.render(scrape), media_type=metrics.CONTENT_TYPE)
