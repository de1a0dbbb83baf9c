"""Settings, read from the environment once at start-up.

Each setting is declared once, as a field of `Settings`: its default, its environment
variable, its command-line flag (if any) and what it means. `load_settings` reads the
variables from those declarations, and the README's table of variables is printed from them
(`python -m service.settings --markdown`; a test checks the README holds exactly that).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Annotated, Any


class SettingsError(ValueError):
    """A setting holds a value jobq cannot use; the message names the variable."""


# -- parsers: (variable name, raw text) -> value -----------------------------------------------


def _text(name: str, raw: str) -> str:
    return raw


def _path(name: str, raw: str) -> Path:
    return Path(raw)


def _whole(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None


def _seconds(name: str, raw: str) -> timedelta:
    try:
        return timedelta(seconds=float(raw))
    except (ValueError, OverflowError):
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None


def _queues(name: str, raw: str) -> tuple[str, ...]:
    return tuple(q.strip() for q in raw.split(",") if q.strip())


def _modules(name: str, raw: str) -> str | None:
    return raw.strip() or None
def _list(name: str, raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _networks(name: str, raw: str) -> tuple[str, ...]:
    networks = []
    for part in _list(name, raw):
        try:
            networks.append(str(ip_network(part, strict=False)))
        except ValueError:
            raise SettingsError(
                f"{name} must be comma-separated networks like 127.0.0.1/32 or 10.0.0.0/8, "
                f"got {part!r}") from None
    return tuple(networks)


def _hosts(name: str, raw: str) -> tuple[str, ...]:
    hosts = tuple(h.lower() for h in _list(name, raw))
    for host in hosts:
        if host != "*" and ("*" in host.removeprefix("*.") or (":" in host.strip("[]") and
                            not host.startswith("["))):
            raise SettingsError(
                f"{name} must be comma-separated host names without ports, e.g. "
                f"localhost,jobq.example.com,*.example.com,[::1], got {host!r}")
    return hosts


AUTH_MODES = ("on", "off", "off-any-address")


def _auth(name: str, raw: str) -> str | None:
    mode = raw.strip().lower()
    if not mode:
        return None
    if mode not in AUTH_MODES:
        raise SettingsError(f"{name} must be one of {', '.join(AUTH_MODES)}, got {raw!r}")
    return mode


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _database_url(name: str, raw: str) -> str | None:
    if not raw:
        return None
    if not raw.startswith(("postgresql://", "postgres://")):
        raise SettingsError(f"{name} must start with postgresql://")
    return raw


@dataclass(frozen=True)
class Var:
    """How a setting is read and documented: its variable, its meaning, its parser."""

    env: str
    doc: str
    parse: Callable[[str, str], Any]
    minimum: int | None = None
    flag: str | None = None
    """The command-line flag that overrides the variable, if any."""
    shown: str | None = None
    """The default as the README says it, when its value does not say it well."""


@dataclass(frozen=True)
class Settings:
    """Everything configurable about a jobq process. Building one checks it (SettingsError)."""

    database_url: Annotated[str | None, Var(
        "DATABASE_URL", "the PostgreSQL database; `sslmode=` for TLS (docs/deploy.md)",
        _database_url,
        shown="unset: embedded (`jobq up` only, with the `embedded` extra)")] = None
    data_dir: Annotated[Path, Var(
        "JOBQ_DATA_DIR", "embedded PostgreSQL's data", _path, flag="--data-dir")] = Path(".jobq")
    host: Annotated[str, Var(
        "JOBQ_HOST", "address the API listens on", _text, flag="--host")] = "127.0.0.1"
    port: Annotated[int, Var(
        "JOBQ_PORT", "port the API listens on", _whole, minimum=1, flag="--port")] = 8000
    pool_size: Annotated[int, Var(
        "JOBQ_POOL_SIZE",
        "most database connections a process keeps open (its LISTEN connection aside)",
        _whole, minimum=1)] = 20
    worker_concurrency: Annotated[int, Var(
        "JOBQ_WORKER_CONCURRENCY", "jobs one worker runs at once", _whole, minimum=1,
        flag="--concurrency")] = 10
    worker_queues: Annotated[tuple[str, ...], Var(
        "JOBQ_WORKER_QUEUES", "comma-separated queues a worker takes jobs from", _queues,
        flag="--queues", shown="all")] = ()
    heartbeat_interval: Annotated[timedelta, Var(
        "JOBQ_HEARTBEAT_SECONDS", "worker heartbeat interval", _seconds)] = timedelta(seconds=5)
    stall_timeout: Annotated[timedelta, Var(
        "JOBQ_STALL_TIMEOUT_SECONDS",
        "a worker silent this long is presumed dead; its jobs are requeued",
        _seconds)] = timedelta(seconds=30)
    shutdown_grace: Annotated[timedelta, Var(
        "JOBQ_SHUTDOWN_GRACE_SECONDS",
        "on SIGTERM, time running jobs get to finish before they are requeued",
        _seconds)] = timedelta(seconds=30)
    poll_interval: Annotated[timedelta, Var(
        "JOBQ_POLL_SECONDS", "idle workers look for due jobs this often, besides NOTIFY",
        _seconds)] = timedelta(seconds=1)
    retention_interval: Annotated[timedelta, Var(
        "JOBQ_RETENTION_INTERVAL_SECONDS",
        "workers apply the queues' retention (docs/queues.md) about this often, one at a time",
        _seconds)] = timedelta(seconds=60)
    progress_interval: Annotated[timedelta, Var(
        "JOBQ_PROGRESS_INTERVAL_SECONDS",
        "progress writes of one job are coalesced to one per interval",
        _seconds)] = timedelta(milliseconds=250)
    max_body_bytes: Annotated[int, Var(
        "JOBQ_MAX_BODY_BYTES", "largest JSON request body (413 above)", _whole,
        minimum=1)] = 10_000_000
    max_upload_bytes: Annotated[int, Var(
        "JOBQ_MAX_UPLOAD_BYTES",
        "largest upload to `/api/v1/conversions`, all files together (413 above)", _whole,
        minimum=1)] = 200_000_000
    conversion_processes: Annotated[int, Var(
        "JOBQ_CONVERSION_PROCESSES",
        "conversions a worker runs at once, each in its own child process", _whole,
        minimum=1)] = 2
    conversion_memory_mb: Annotated[int, Var(
        "JOBQ_CONVERSION_MEMORY_MB", "address-space limit of one conversion process", _whole,
        minimum=256)] = 2048
    app: Annotated[str | None, Var(
        "JOBQ_APP", "modules declaring your own job types (`pkg.module`, comma-separated; "
        "[docs/job-types.md](docs/job-types.md))", _modules, flag="--app",
        shown="none: jobq's own types only")] = None
    stream_heartbeat: Annotated[timedelta, Var(
        "JOBQ_STREAM_HEARTBEAT_SECONDS",
        "an open event stream with nothing to say sends a comment this often, so that proxies "
        "keep it open", _seconds)] = timedelta(seconds=15)
    webhook_secrets: Annotated[tuple[str, ...], Var(
        "JOBQ_WEBHOOK_SECRETS",
        "secrets webhooks are signed with, comma-separated, newest first: each delivery carries "
        "one signature per secret, so a secret can be rotated; without one, deliveries fail and "
        "say why", _list, shown="none")] = ()
    webhook_allowed_networks: Annotated[tuple[str, ...], Var(
        "JOBQ_WEBHOOK_ALLOWED_NETWORKS",
        "networks webhooks may be sent to although they are not public (loopback, private, "
        "link-local), comma-separated CIDRs", _networks, shown="none")] = ()
    webhook_timeout: Annotated[timedelta, Var(
        "JOBQ_WEBHOOK_TIMEOUT_SECONDS", "connect and read timeout of one webhook delivery",
        _seconds)] = timedelta(seconds=10)
    allowed_hosts: Annotated[tuple[str, ...], Var(
        "JOBQ_ALLOWED_HOSTS",
        "host names the API answers to (the `Host` header, and the `Origin` of browser "
        "requests), comma-separated, besides the address it listens on; `*.example.com` "
        "allows subdomains, `*` any host (docs/security.md)", _hosts,
        shown="`127.0.0.1,localhost,[::1]`")] = ("127.0.0.1", "localhost", "[::1]")
    cors_origins: Annotated[tuple[str, ...], Var(
        "JOBQ_CORS_ORIGINS",
        "origins other web sites' pages may call the API from (CORS), comma-separated, e.g. "
        "`https://app.example.com`; `*` any", _list, shown="none: CORS closed")] = ()
    auth: Annotated[str | None, Var(
        "JOBQ_AUTH",
        "API keys required (`on`), or not: `off` is refused unless the API listens on a "
        "loopback address; `off-any-address` allows it anywhere, for a proxy that "
        "authenticates (docs/security.md)", _auth,
        shown="`on`; `jobq up` on a loopback address: `off`")] = None
    extra: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Unrecognised `JOBQ_*` variables, kept to warn about typos."""

    def __post_init__(self) -> None:
        for f, var in DECLARED:
            _check_value(var, getattr(self, f.name))
        _check_together(self)

    def auth_required(self, default: str = "on") -> bool:
        """Whether requests need an API key: JOBQ_AUTH, else `default` (the command's)."""
        return (self.auth or default) == "on"

    @property
    def loopback(self) -> bool:
        """Whether the API listens on a loopback address only."""
        return _loopback(self.host)


# Besides its jobs, a worker holds up to three connections at once: claiming, recording
# outcomes and its heartbeat. With fewer than this, the heartbeat waits behind the others.
WORKER_OWN_CONNECTIONS = 3

STALL_HEARTBEATS = 2
"""The stall timeout must exceed this many heartbeat intervals: one late heartbeat must never
get a live worker presumed dead."""


def _check_together(s: Settings) -> None:
    """Settings that are each valid but do not work together."""
    if s.stall_timeout <= STALL_HEARTBEATS * s.heartbeat_interval:
        raise SettingsError(
            f"JOBQ_STALL_TIMEOUT_SECONDS ({shown(s.stall_timeout)}) must be more than "
            f"{STALL_HEARTBEATS} x JOBQ_HEARTBEAT_SECONDS ({shown(s.heartbeat_interval)}), "
            "or live workers are presumed dead")
    if s.auth == "off" and not s.loopback:
        raise SettingsError(
            f"JOBQ_AUTH=off opens every route to anyone who can reach {s.host}, which is not a "
            "loopback address: use API keys (JOBQ_AUTH=on), listen on 127.0.0.1, or, behind a "
            "proxy that authenticates, set JOBQ_AUTH=off-any-address")
    if s.pool_size < WORKER_OWN_CONNECTIONS + 1:
        raise SettingsError(
            f"JOBQ_POOL_SIZE ({s.pool_size}) must be at least {WORKER_OWN_CONNECTIONS + 1}: a "
            f"worker holds up to {WORKER_OWN_CONNECTIONS} connections for itself (claiming, "
            "recording outcomes, heartbeat) and its jobs need at least one more")


def _declared() -> list[tuple[dataclasses.Field, Var]]:
    """Each field of Settings read from a variable, with its declaration, in order."""
    hints = typing.get_type_hints(Settings, include_extras=True)
    declared = []
    for f in dataclasses.fields(Settings):
        var = next((m for m in getattr(hints[f.name], "__metadata__", ()) if isinstance(m, Var)),
                   None)
        if var is not None:
            declared.append((f, var))
    return declared


DECLARED = _declared()
CLIENT_VARIABLES = frozenset({"JOBQ_URL", "JOBQ_KEY"})
"""Read by the commands that call the API (service/console.py: --url, --key), not by a jobq
process: known, so not warned about as typos, and not settings of the service."""
KNOWN_VARIABLES = frozenset(var.env for _, var in DECLARED)


def _label(var: Var) -> str:
    return f"{var.env} ({var.flag})" if var.flag else var.env


def _check_value(var: Var, value: Any) -> None:
    """Durations must be positive; numbers at least their declared minimum."""
    if isinstance(value, timedelta) and value <= timedelta(0):
        raise SettingsError(f"{_label(var)} must be positive, got {shown(value)}")
    if var.minimum is not None and value < var.minimum:
        raise SettingsError(f"{_label(var)} must be at least {var.minimum}, got {value}")


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from `DATABASE_URL` and `JOBQ_*` variables; SettingsError names a bad one."""
    env = os.environ if env is None else env
    values = {f.name: var.parse(var.env, env[var.env]) for f, var in DECLARED if var.env in env}
    extra = {k: v for k, v in env.items() if k.startswith("JOBQ_")
             and k not in KNOWN_VARIABLES | CLIENT_VARIABLES}
    return Settings(**values, extra=extra)


def apply_flags(settings: Settings, flags: Mapping[str, str | None]) -> Settings:
    """`settings` with the command-line flags that were given (argparse's `dest` names, raw
    text), parsed and checked like the variables they override."""
    changes = {}
    for f, var in DECLARED:
        raw = flags.get(var.flag.removeprefix("--").replace("-", "_")) if var.flag else None
        if raw is not None:
            changes[f.name] = var.parse(_label(var), raw)
    return dataclasses.replace(settings, **changes)


def shown(value: Any) -> str:
    """A value as its environment variable would spell it."""
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g}"
    return str(value)


def markdown_table() -> str:
    """The README's table of environment variables."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for f, var in DECLARED:
        default = var.shown or f"`{shown(f.default)}`"
        flag = f" (`{var.flag}`)" if var.flag else ""
        lines.append(f"| `{var.env}`{flag} | {default} | {var.doc} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m service.settings --markdown")
    sys.stdout.write(markdown_table())
