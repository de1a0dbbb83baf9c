"""The worker's composition root: the code that runs each declared job type, and where."""

from __future__ import annotations

import sys
import types

from service.backend import Backend
from service.domain import jobtypes
from service.settings import Settings
from workers.runtime import Handler, Worker
from workers.sandbox import PRELOAD, Sandbox
from workers.tasks import declared, mesh


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
    """Modules the child processes import once, warm, in the forkserver: the conversion's,
    those of the job types that run in a child process, and those the worker's main module
    comes from. A child imports the module of the function it runs (to unpickle it) and runs
    the parent's main module: whatever is not preloaded, each child imports again."""
    modules = [t.implementation.partition(":")[0] if t.implementation
               else t.function.__module__ for t in jobtypes.REGISTRY
               if t.runs_in == "process" and (t.implementation or t.function)]
    # the conversion's own child function, and where the worker's code comes from
    modules += [mesh.convert_in_child.__module__, *main_sources()]
    return PRELOAD + tuple(m for m in dict.fromkeys(modules) if m not in PRELOAD)


def main_sources() -> list[str]:
    """The modules the process's main module takes its code from: `service.cli` for
    `python -m service.cli` and for the `jobq` script (`from service.cli import main`).

    multiprocessing runs the parent's main module again in every child it starts from the
    forkserver (as `__mp_main__`), and with it every import that module makes: for a worker,
    the whole service. Preloaded, those imports are made once, in the forkserver, and a child
    finds them done (measured: about half of a 100k-face conversion's time in its child went
    to them)."""
    main = sys.modules.get("__main__")
    if main is None:
        return []
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return [spec.name]
    names = []
    for key, value in vars(main).items():
        if key.startswith("__"):
            continue
        name = value.__name__ if isinstance(value, types.ModuleType) else getattr(
            value, "__module__", None)
        if isinstance(name, str) and name not in ("__main__", "builtins"):
            names.append(name)
    return list(dict.fromkeys(names))


def make_worker(backend: Backend, settings: Settings, name: str | None = None) -> Worker:
    # One set of child processes for CPU-heavy work, conversions and `runs_in="process"` types
    # alike; one thread per job slot for sync code.
    pool = Sandbox(size=settings.conversion_processes, memory_mb=settings.conversion_memory_mb,
                   preload=preload())
    threads = declared.Threads(settings.worker_concurrency)
    return Worker(backend, settings, make_handlers(pool, threads), name=name,
                  resources=[pool, threads])
