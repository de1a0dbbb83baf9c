"""Settings, read from the environment once at start-up."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from ipaddress import ip_network
from pathlib import Path


class SettingsError(ValueError):
    """An environment variable holds a value jobq cannot use."""


@dataclass(frozen=True)
class Settings:
    """Everything configurable about a jobq process."""

    database_url: str | None = None
    """libpq URL of the PostgreSQL database; None starts the embedded one (`DATABASE_URL`)."""

    data_dir: Path = Path(".jobq")
    """Where the embedded PostgreSQL keeps its cluster (`JOBQ_DATA_DIR`, default `.jobq`)."""

    host: str = "127.0.0.1"
    """Address the API listens on (`JOBQ_HOST`, default 127.0.0.1)."""

    port: int = 8000
    """Port the API listens on (`JOBQ_PORT`, default 8000)."""

    pool_size: int = 20
    """Connections in the process's one pool (`JOBQ_POOL_SIZE`, default 10)."""

    worker_concurrency: int = 10
    """Jobs one worker process runs at once (`JOBQ_WORKER_CONCURRENCY`, default 10)."""

    worker_queues: tuple[str, ...] = ()
    """Queues a worker takes jobs from; empty means all (`JOBQ_WORKER_QUEUES`, comma-separated)."""

    heartbeat_interval: timedelta = timedelta(seconds=5)
    """How often a worker proves it is alive (`JOBQ_HEARTBEAT_SECONDS`, default 5 s)."""

    stall_timeout: timedelta = timedelta(seconds=30)
    """A worker silent this long is presumed dead and its jobs are requeued (default 30 s)."""

    shutdown_grace: timedelta = timedelta(seconds=30)
    """On SIGTERM, how long running jobs may finish before they are stopped and requeued."""

    poll_interval: timedelta = timedelta(seconds=1)
    """Idle workers look for due jobs this often even without a notification (default 1 s)."""

    progress_interval: timedelta = timedelta(milliseconds=250)
    """Progress writes of one job are coalesced to at most one per interval (default 250 ms)."""

    max_body_bytes: int = 10_000_000
    """Largest JSON request body the API accepts (`JOBQ_MAX_BODY_BYTES`, default 10 MB)."""

    max_upload_bytes: int = 200_000_000
    """Largest upload of files to convert, all parts together (`JOBQ_MAX_UPLOAD_BYTES`, 200 MB)."""

    conversion_processes: int = 2
    """Warm child processes a worker converts meshes in (`JOBQ_CONVERSION_PROCESSES`, 2)."""

    conversion_memory_mb: int = 2048
    """Memory one conversion process may use (`JOBQ_CONVERSION_MEMORY_MB`, 2048)."""

    stream_heartbeat: timedelta = timedelta(seconds=15)
    """An open event stream with nothing to say sends a comment this often, so that proxies keep
    it open (`JOBQ_STREAM_HEARTBEAT_SECONDS`, default 15 s)."""

    webhook_secrets: tuple[str, ...] = ()
    """Secrets webhooks are signed with (`JOBQ_WEBHOOK_SECRETS`, comma-separated, newest first):
    each delivery carries one signature per secret, so a secret can be rotated. Without one,
    deliveries fail and say why."""

    webhook_allowed_networks: tuple[str, ...] = ()
    """Networks webhooks may be sent to although they are not public: loopback, private,
    link-local (`JOBQ_WEBHOOK_ALLOWED_NETWORKS`, comma-separated CIDRs, checked at start-up;
    default none)."""

    webhook_timeout: timedelta = timedelta(seconds=10)
    """Connect and read timeout of one webhook delivery (`JOBQ_WEBHOOK_TIMEOUT_SECONDS`, 10 s)."""

    extra: Mapping[str, str] = field(default_factory=dict)
    """Unrecognised `JOBQ_*` variables, kept to warn about typos."""


def _seconds(env: Mapping[str, str], name: str, default: timedelta) -> timedelta:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {raw!r}")
    return timedelta(seconds=value)


def _integer(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name} must be at least {minimum}, got {raw!r}")
    return value


def _networks(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    networks = []
    for part in env.get(name, "").split(","):
        if not part.strip():
            continue
        try:
            networks.append(str(ip_network(part.strip(), strict=False)))
        except ValueError:
            raise SettingsError(
                f"{name} must be comma-separated networks like 127.0.0.1/32 or 10.0.0.0/8, "
                f"got {part.strip()!r}") from None
    return tuple(networks)


_KNOWN = {
    "JOBQ_DATA_DIR", "JOBQ_HOST", "JOBQ_PORT", "JOBQ_POOL_SIZE", "JOBQ_WORKER_CONCURRENCY",
    "JOBQ_WORKER_QUEUES", "JOBQ_HEARTBEAT_SECONDS", "JOBQ_STALL_TIMEOUT_SECONDS",
    "JOBQ_SHUTDOWN_GRACE_SECONDS", "JOBQ_POLL_SECONDS", "JOBQ_PROGRESS_INTERVAL_SECONDS",
    "JOBQ_MAX_BODY_BYTES", "JOBQ_MAX_UPLOAD_BYTES", "JOBQ_CONVERSION_PROCESSES",
    "JOBQ_CONVERSION_MEMORY_MB", "JOBQ_STREAM_HEARTBEAT_SECONDS", "JOBQ_WEBHOOK_SECRETS",
    "JOBQ_WEBHOOK_ALLOWED_NETWORKS", "JOBQ_WEBHOOK_TIMEOUT_SECONDS",
}


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from `DATABASE_URL` and `JOBQ_*` variables; SettingsError names a bad one."""
    env = os.environ if env is None else env
    queues = tuple(q.strip() for q in env.get("JOBQ_WORKER_QUEUES", "").split(",") if q.strip())
    database_url = env.get("DATABASE_URL") or None
    if database_url and not database_url.startswith(("postgresql://", "postgres://")):
        raise SettingsError("DATABASE_URL must start with postgresql://")
    return Settings(
        database_url=database_url,
        data_dir=Path(env.get("JOBQ_DATA_DIR", ".jobq")),
        host=env.get("JOBQ_HOST", "127.0.0.1"),
        port=_integer(env, "JOBQ_PORT", 8000),
        pool_size=_integer(env, "JOBQ_POOL_SIZE", 20),
        worker_concurrency=_integer(env, "JOBQ_WORKER_CONCURRENCY", 10),
        worker_queues=queues,
        heartbeat_interval=_seconds(env, "JOBQ_HEARTBEAT_SECONDS", timedelta(seconds=5)),
        stall_timeout=_seconds(env, "JOBQ_STALL_TIMEOUT_SECONDS", timedelta(seconds=30)),
        shutdown_grace=_seconds(env, "JOBQ_SHUTDOWN_GRACE_SECONDS", timedelta(seconds=30)),
        poll_interval=_seconds(env, "JOBQ_POLL_SECONDS", timedelta(seconds=1)),
        progress_interval=_seconds(
            env, "JOBQ_PROGRESS_INTERVAL_SECONDS", timedelta(milliseconds=250)
        ),
        max_body_bytes=_integer(env, "JOBQ_MAX_BODY_BYTES", 10_000_000),
        max_upload_bytes=_integer(env, "JOBQ_MAX_UPLOAD_BYTES", 200_000_000),
        conversion_processes=_integer(env, "JOBQ_CONVERSION_PROCESSES", 2),
        conversion_memory_mb=_integer(env, "JOBQ_CONVERSION_MEMORY_MB", 2048, minimum=256),
        stream_heartbeat=_seconds(env, "JOBQ_STREAM_HEARTBEAT_SECONDS", timedelta(seconds=15)),
        webhook_secrets=tuple(
            s.strip() for s in env.get("JOBQ_WEBHOOK_SECRETS", "").split(",") if s.strip()),
        webhook_allowed_networks=_networks(env, "JOBQ_WEBHOOK_ALLOWED_NETWORKS"),
        webhook_timeout=_seconds(env, "JOBQ_WEBHOOK_TIMEOUT_SECONDS", timedelta(seconds=10)),
        extra={k: v for k, v in env.items() if k.startswith("JOBQ_") and k not in _KNOWN},
    )
