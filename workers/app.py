"""The worker's composition root: the code that runs each declared job type, and where."""

from __future__ import annotations

from service.backend import Backend
from service.domain import jobtypes
from service.settings import Settings
from workers.runtime import Handler, Worker
from workers.sandbox import PRELOAD, Sandbox
from workers.tasks import declared


def make_handlers(pool: Sandbox, threads: declared.Threads) -> dict[str, Handler]:
    """A handler for every job type this process declares (jobq's own and the --app's).
    Imports each type's code: a DeclarationError says which cannot be run and why."""
    return {t.name: declared.make_handler(t, pool, threads) for t in jobtypes.REGISTRY}


def check_implementations() -> None:
    """Import the code of every declared job type now, so that a worker that could not run
    one of them stops at start (DeclarationError, one line) instead of failing its jobs."""
    for job_type in jobtypes.REGISTRY:
        jobtypes.resolve(job_type)


def preload() -> tuple[str, ...]:
    """Modules the child processes import once, warm: the conversion's and those of the job
    types that run in a child process."""
    modules = [t.implementation.partition(":")[0] if t.implementation
               else t.function.__module__ for t in jobtypes.REGISTRY
               if t.runs_in == "process" and (t.implementation or t.function)]
    return PRELOAD + tuple(m for m in dict.fromkeys(modules) if m not in PRELOAD)


def make_worker(backend: Backend, settings: Settings, name: str | None = None) -> Worker:
    # One set of child processes for CPU-heavy work, conversions and `runs_in="process"` types
    # alike; one thread per job slot for sync code.
    pool = Sandbox(size=settings.conversion_processes, memory_mb=settings.conversion_memory_mb,
                   preload=preload())
    threads = declared.Threads(settings.worker_concurrency)
    return Worker(backend, settings, make_handlers(pool, threads), name=name,
                  resources=[pool, threads])
