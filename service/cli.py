"""The `jobq` command: the service (up, serve, worker, migrate) and, from console.py, the
commands for people at a terminal (submit, convert, jobs, queues, workers)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import click
import uvicorn
import uvloop

from service import console
from service import settings as settings_module
from service.settings import Settings

logger = logging.getLogger("jobq")


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
def cli() -> None:
    """jobq: a job queue that needs nothing but PostgreSQL.

    The service commands (up, serve, worker, migrate) are configured by DATABASE_URL and JOBQ_*
    environment variables (see README); their flags override them. The other commands talk to
    a running API (--url or JOBQ_URL).
    """


def http_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option("--port", type=int, help="port to listen on (default 8000)")(function)
    return click.option("--host", help="address to listen on (default 127.0.0.1)")(function)


def worker_options(function: Callable[..., Any]) -> Callable[..., Any]:
    function = click.option("--name", help="worker name shown in /api/v1/workers "
                            "(default host-pid)")(function)
    function = click.option("--concurrency", type=int,
                            help="jobs run at once (default 10)")(function)
    return click.option("--queues", help="comma-separated queues to take jobs from "
                        "(default all)")(function)


@cli.command()
@http_options
@worker_options
@click.option("--data-dir", type=click.Path(path_type=Path),
              help="where the embedded PostgreSQL keeps its data (default .jobq)")
def up(name: str | None, **flags: Any) -> None:
    """Run the API and one worker in one process (embedded PostgreSQL without DATABASE_URL)."""
    settings = _settings(flags)
    uvloop.run(_up(settings, name))


@cli.command()
@http_options
def serve(**flags: Any) -> None:
    """Run the HTTP API against DATABASE_URL."""
    settings = _settings(flags, needs_database="serve")
    uvloop.run(_serve(settings))


@cli.command()
@worker_options
def worker(name: str | None, **flags: Any) -> None:
    """Run a worker against DATABASE_URL."""
    settings = _settings(flags, needs_database="worker")
    uvloop.run(_work(settings, name))


@cli.command()
@click.option("--revision", default="head", show_default=True, help="target revision")
def migrate(revision: str) -> None:
    """Apply database migrations to DATABASE_URL."""
    from service.db import migrate as db_migrate

    settings = _settings({}, needs_database="migrate")
    assert settings.database_url
    db_migrate.upgrade(settings.database_url, revision)


for _command in console.COMMANDS:
    cli.add_command(_command)


def _settings(flags: dict[str, Any], needs_database: str | None = None) -> Settings:
    """Settings from the environment with the command's flags applied; exits with one line
    when they are unusable."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = _apply_flags(settings_module.load_settings(), flags)
    except settings_module.SettingsError as exc:
        sys.exit(f"jobq: {exc}")
    for name in settings.extra:
        logger.warning("ignoring unknown setting %s", name)
    if needs_database and not settings.database_url:
        sys.exit(f"jobq {needs_database}: DATABASE_URL is not set. Point it at your PostgreSQL, "
                 "or use `jobq up` to run everything on an embedded database.")
    return settings


def _apply_flags(settings: Settings, flags: dict[str, Any]) -> Settings:
    changes: dict[str, object] = {}
    for flag, field in [("host", "host"), ("port", "port"), ("concurrency", "worker_concurrency"),
                        ("data_dir", "data_dir")]:
        value = flags.get(flag)
        if value is not None:
            changes[field] = value
    if flags.get("queues"):
        changes["worker_queues"] = tuple(q.strip() for q in flags["queues"].split(",")
                                         if q.strip())
    if changes.get("worker_concurrency", 1) < 1:  # type: ignore[operator]
        raise settings_module.SettingsError("--concurrency must be at least 1")
    return dataclasses.replace(settings, **changes)


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="jobq")


# -- running ---------------------------------------------------------------------------------


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: jobq stops the API and worker together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _http_server(settings: Settings, app: object) -> _Server:
    # httptools parses HTTP; the processes run on uvloop (see main): both measured faster.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level="info",
                            access_log=False, lifespan="on", http="httptools")
    return _Server(config)


def _on_signals(callback: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, callback)


@contextlib.asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator[Settings]:
    """Settings with a database URL: the given one, or an embedded server's (migrated)."""
    from service.db import migrate

    if settings.database_url:
        yield settings
        return
    from service.db import admin, embedded

    server = embedded.EmbeddedPostgres(settings.data_dir.resolve() / "postgres")
    # In the main thread: the server's parent-death signal is tied to the starting thread.
    admin_url = server.start()
    try:
        url = await admin.ensure_database(admin_url, "jobq")
        logger.info("embedded PostgreSQL ready, data in %s", settings.data_dir.resolve())
        await asyncio.to_thread(migrate.upgrade, url)
        yield dataclasses.replace(settings, database_url=url)
    finally:
        server.stop()


async def _up(settings: Settings, name: str | None) -> None:
    from service.api.app import create_app
    from service.api.events import end_streams
    from service.backend import Backend
    from workers.app import make_worker

    async with _database(settings) as settings:
        assert settings.database_url
        backend = await Backend.open(settings.database_url, settings.pool_size)
        try:
            app = create_app(settings, backend)
            server = _http_server(settings, app)
            worker = make_worker(backend, settings, name)

            def stop() -> None:
                worker.request_stop()
                end_streams(app)  # open event streams would hold the HTTP server up
                if server.should_exit:
                    server.force_exit = True
                server.should_exit = True

            _on_signals(stop)
            logger.info("jobq up: API on http://%s:%d", settings.host, settings.port)
            await asyncio.gather(server.serve(), worker.run())
        finally:
            await backend.close()


async def _serve(settings: Settings) -> None:
    from service.api.app import create_app
    from service.api.events import end_streams

    app = create_app(settings)
    server = _http_server(settings, app)

    def stop() -> None:
        end_streams(app)  # open event streams would hold the HTTP server up
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True

    _on_signals(stop)
    await server.serve()


async def _work(settings: Settings, name: str | None) -> None:
    from service.backend import Backend
    from workers.app import make_worker

    assert settings.database_url
    backend = await Backend.open(settings.database_url, settings.pool_size)
    try:
        worker = make_worker(backend, settings, name)
        _on_signals(worker.request_stop)
        await worker.run()
    finally:
        await backend.close()


if __name__ == "__main__":
    main()
