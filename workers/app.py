"""The worker's composition root: which code runs each job type."""

from __future__ import annotations

from service.backend import Backend
from service.settings import Settings
from workers.runtime import Handler, Worker
from workers.tasks import system

HANDLERS: dict[str, Handler] = {
    "system.noop": system.noop,
    "system.sleep": system.sleep,
}


def make_worker(backend: Backend, settings: Settings, name: str | None = None) -> Worker:
    return Worker(backend, settings, HANDLERS, name=name)
