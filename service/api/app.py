"""The Litestar application factory: wires routes, error mapping and the backend."""

from __future__ import annotations

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.middleware import DefineMiddleware
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from service.api import access, compat, dashboard, guards, keys, openapi, ops
from service.api import conversions as conversion_routes
from service.api import errors as api_errors
from service.api import events as event_routes
from service.api import jobs as job_routes
from service.api import metrics as metric_routes
from service.api import schedules as schedule_routes
from service.api import webhooks as webhook_routes
from service.backend import Backend
from service.settings import Settings


def create_app(settings: Settings, backend: Backend | None = None) -> Litestar:
    """The API. Opens its own Backend on start-up unless one is given (tests, `jobq up`).
    Every route needs an API key unless `settings.auth` turns that off (`jobq up` resolves
    its own default before it calls this): service/api/access.py."""
    owns_backend = backend is None

    async def open_backend(app: Litestar) -> None:
        if owns_backend:
            assert settings.database_url, "the database URL is resolved before the app starts"
            app.state.backend = await Backend.open(settings.database_url, settings.pool_size)

    async def close_backend(app: Litestar) -> None:
        if getattr(app.state, "hub", None) is not None:
            await app.state.hub.close()
        if owns_backend and getattr(app.state, "backend", None) is not None:
            await app.state.backend.close()

    def provide_backend(state: State) -> Backend:
        return state.backend

    app = Litestar(
        route_handlers=[
            job_routes.JobsController,
            job_routes.list_job_types,
            ops.QueuesController,
            schedule_routes.SchedulesController,
            ops.list_workers,
            ops.recover_stalled,
            ops.health,
            ops.ready,
            conversion_routes.create_conversion,
            conversion_routes.list_formats,
            conversion_routes.job_output,
            event_routes.job_stream,
            event_routes.all_events,
            webhook_routes.job_deliveries,
            metric_routes.prometheus,
            *compat.ROUTES,
            *dashboard.ROUTES,
            *keys.ROUTES,
        ],
        guards=[access.guard],
        dependencies={
            "backend": Provide(provide_backend, sync_to_thread=False),
            "settings": Provide(lambda: settings, sync_to_thread=False),
            "hub": Provide(event_routes.provide_hub, sync_to_thread=False),
            "principal": Provide(access.provide_principal, sync_to_thread=False),
        },
        exception_handlers=api_errors.EXCEPTION_HANDLERS,
        before_request=guards.before_request,
        # Litestar answers an unknown /schema/... path with an HTML page: problem+json here.
        after_request=api_errors.html_errors_as_problems,
        middleware=[DefineMiddleware(guards.BrowserGuard, policy=guards.HostPolicy(settings))],
        # No CORS headers at all unless JOBQ_CORS_ORIGINS names the sites that may call.
        cors_config=CORSConfig(
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["content-type", "idempotency-key", "authorization", "last-event-id"],
            expose_headers=["location", "retry-after"],
        ) if settings.cors_origins else None,
        # The document is completed once per process (it takes 0.1 s: not per app in tests).
        on_startup=[openapi.finish, open_backend],
        on_shutdown=[close_backend],
        state=State({"backend": backend, "auth_required": settings.auth_required()}),
        request_max_body_size=settings.max_body_bytes,
        openapi_config=OpenAPIConfig(
            title="jobq",
            version="0.1.0",
            description="A job queue that needs nothing but PostgreSQL.",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],

        ),
    )
    return app
