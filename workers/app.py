"""The worker's composition root: which code runs each job type."""

from __future__ import annotations

from service.backend import Backend
from service.domain import jobtypes
from service.settings import Settings
from workers.runtime import Handler, Worker
from workers.sandbox import Sandbox
from workers.tasks import mesh, system, webhook


def make_handlers(settings: Settings, pool: Sandbox) -> dict[str, Handler]:
    """The code that runs each job type. Conversions share one sandbox of child processes."""
    return {
        jobtypes.SYSTEM_NOOP.name: system.noop,
        jobtypes.SYSTEM_SLEEP.name: system.sleep,
        jobtypes.MESH_CONVERT.name: mesh.make_handler(pool),
        jobtypes.SYSTEM_WEBHOOK.name: webhook.make_handler(settings),
    }


def make_worker(backend: Backend, settings: Settings, name: str | None = None) -> Worker:
    pool = Sandbox(size=settings.conversion_processes, memory_mb=settings.conversion_memory_mb)
    return Worker(backend, settings, make_handlers(settings, pool), name=name, resources=[pool])
