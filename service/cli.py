"""The `jobq` command: up, serve, worker, migrate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator

import uvicorn
import uvloop

from service import settings as settings_module
from service.settings import Settings

logger = logging.getLogger("jobq")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobq",
        description="jobq: a job queue that needs nothing but PostgreSQL. Configured by "
        "DATABASE_URL and JOBQ_* environment variables (see README); flags override them.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser(
        "up", help="run the API and one worker in one process (embedded PostgreSQL if no "
        "DATABASE_URL)")
    _add_http(up)
    _add_worker(up)
    up.add_argument("--data-dir", help="where the embedded PostgreSQL keeps its data "
                    f"(default {Settings.data_dir})")

    serve = sub.add_parser("serve", help="run the HTTP API against DATABASE_URL")
    _add_http(serve)

    worker = sub.add_parser("worker", help="run a worker against DATABASE_URL")
    _add_worker(worker)

    migrate = sub.add_parser("migrate", help="apply database migrations to DATABASE_URL")
    migrate.add_argument("--revision", default="head", help="target revision (default head)")
    return parser


def _add_http(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help=f"address to listen on (default {Settings.host})")
    parser.add_argument("--port", help=f"port to listen on (default {Settings.port})")


def _add_worker(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queues", help="comma-separated queues to take jobs from (default all)")
    parser.add_argument("--concurrency",
                        help=f"jobs run at once (default {Settings.worker_concurrency})")
    parser.add_argument("--name", help="worker name shown in /api/v1/workers (default host-pid)")


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        settings = settings_module.apply_flags(settings_module.load_settings(), vars(args))
    except settings_module.SettingsError as exc:
        sys.exit(f"jobq: {exc}")
    for name in settings.extra:
        logger.warning("ignoring unknown setting %s", name)

    if args.command == "up":
        uvloop.run(_up(settings, getattr(args, "name", None)))
        return
    if not settings.database_url:
        sys.exit(f"jobq {args.command}: DATABASE_URL is not set. Point it at your PostgreSQL, "
                 "or use `jobq up` to run everything on an embedded database.")
    if args.command == "migrate":
        from service.db import migrate

        migrate.upgrade(settings.database_url, args.revision)
    elif args.command == "serve":
        uvloop.run(_serve(settings))
    elif args.command == "worker":
        uvloop.run(_work(settings, args.name))


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
    from service.backend import Backend
    from workers.app import make_worker

    async with _database(settings) as settings:
        assert settings.database_url
        backend = await Backend.open(settings.database_url, settings.pool_size)
        try:
            server = _http_server(settings, create_app(settings, backend))
            worker = make_worker(backend, settings, name)

            def stop() -> None:
                worker.request_stop()
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

    server = _http_server(settings, create_app(settings))

    def stop() -> None:
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
