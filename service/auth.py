"""API keys, roles and per-key limits (issue 13; docs/security.md).

A key is `jobq_` and 43 characters of URL-safe base64: 32 random bytes. Only its SHA-256 is
stored; a request's key is found by that hash through a unique index, so no comparison of
secrets happens in Python. The dashboard logs in with a key and then holds a cookie session
(api_sessions), whose token is stored hashed the same way.

Every limit's state is in PostgreSQL, so every API process enforces the same limits:
submissions per second (a token bucket, jobq_take_tokens), jobs not yet finished, upload bytes
per UTC day, uploads at once (leased slots); the longest timeout is checked per request.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from service import errors
from service.backend import Backend
from service.domain.requests import Planned

ROLES = ("submitter", "operator", "admin")
"""Each role may do everything the ones before it may."""

KEY_PREFIX = "jobq_"
SHOWN_PREFIX = 12
"""Characters of a key kept in clear (`jobq_` and 7 more) to tell keys apart in a list."""
SESSION_LIFETIME = timedelta(hours=12)
SESSION_COOKIE = "jobq_session"
CSRF_HEADER = "X-CSRF-Token"
UPLOAD_SLOT_LEASE = timedelta(hours=1)
"""An upload slot whose API process died is free again after this long."""
QUEUED_RETRY_AFTER = 5
"""Retry-After (seconds) when a key has as many unfinished jobs as it may."""


@dataclass(frozen=True)
class KeyLimits:
    """What one key may use; None: no limit."""

    submissions_per_second: float | None = None
    max_queued: int | None = None
    upload_bytes_per_day: int | None = None
    max_timeout_seconds: float | None = None
    max_concurrent_uploads: int | None = None

    def describe(self) -> dict[str, Any]:
        return {
            "submissions_per_second": self.submissions_per_second,
            "max_queued": self.max_queued,
            "upload_bytes_per_day": self.upload_bytes_per_day,
            "max_timeout_seconds": self.max_timeout_seconds,
            "max_concurrent_uploads": self.max_concurrent_uploads,
        }


LIMIT_FIELDS = tuple(KeyLimits.__dataclass_fields__)


@dataclass(frozen=True)
class Principal:
    """Who is asking: a key (with its role, its allowed queues and types, its limits), or
    nobody in particular when authentication is off (OPEN, with every right)."""

    key_id: uuid.UUID | None
    name: str
    role: str
    queues: tuple[str, ...] | None = None
    job_types: tuple[str, ...] | None = None
    limits: KeyLimits = field(default_factory=KeyLimits)
    csrf_token: str | None = None
    """Set when the request came with a dashboard session cookie: unsafe methods must echo it."""

    def has(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)

    @property
    def sees_all(self) -> bool:
        """Operators and admins see every job; a submitter only its own."""
        return self.has("operator")

    @property
    def scope(self) -> uuid.UUID | None:
        """The key whose jobs this caller may see, or None for all jobs."""
        return None if self.sees_all else self.key_id

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role,
                "queues": list(self.queues) if self.queues is not None else None,
                "types": list(self.job_types) if self.job_types is not None else None,
                "limits": self.limits.describe(),
                "authentication": "off" if self.key_id is None else "on"}


OPEN = Principal(key_id=None, name="anyone (authentication is off)", role="admin")


# -- keys --------------------------------------------------------------------------------------


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


_KEY_COLUMNS = ("id, name, role, key_prefix, queues, job_types, submissions_per_second, "
                "max_queued, upload_bytes_per_day, max_timeout_seconds, max_concurrent_uploads, "
                "created_at, revoked_at")


def _principal(row: asyncpg.Record, csrf_token: str | None = None) -> Principal:
    return Principal(
        key_id=row["id"], name=row["name"], role=row["role"],
        queues=tuple(row["queues"]) if row["queues"] is not None else None,
        job_types=tuple(row["job_types"]) if row["job_types"] is not None else None,
        limits=KeyLimits(**{f: row[f] for f in LIMIT_FIELDS}), csrf_token=csrf_token)


def key_json(row: dict[str, Any] | asyncpg.Record) -> dict[str, Any]:
    """A key as lists and the admin route show it: never the key itself, nor its hash."""
    return {
        "id": str(row["id"]), "name": row["name"], "role": row["role"],
        "prefix": row["key_prefix"],
        "queues": list(row["queues"]) if row["queues"] is not None else None,
        "types": list(row["job_types"]) if row["job_types"] is not None else None,
        "limits": {f: row[f] for f in LIMIT_FIELDS},
        "created_at": _stamp(row["created_at"]), "revoked_at": _stamp(row["revoked_at"]),
    }


def _stamp(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def check_key_request(name: str, role: str, queues: Iterable[str] | None,
                      job_types: Iterable[str] | None, limits: KeyLimits) -> None:
    """InvalidRequest naming each field of a new key that cannot be used."""
    problems = []
    if not 1 <= len(name) <= 100 or "\x00" in name:
        problems.append(errors.FieldError("name", "1-100 characters, no NUL"))
    if role not in ROLES:
        problems.append(errors.FieldError("role", f"must be one of {', '.join(ROLES)}"))
    for label, names in (("queues", queues), ("types", job_types)):
        if names is not None and (not list(names) or any(not n or "\x00" in n for n in names)):
            problems.append(errors.FieldError(label, "a non-empty list of names, or null for any"))
    for name_, value in limits.describe().items():
        if value is not None and (isinstance(value, bool) or not value > 0):
            problems.append(errors.FieldError(f"limits.{name_}", "must be more than 0"))
    if problems:
        raise errors.InvalidRequest("; ".join(f"{p.field}: {p.message}" for p in problems),
                                    problems)


async def create_key(conn: asyncpg.Connection, name: str, role: str,
                     queues: list[str] | None = None, job_types: list[str] | None = None,
                     limits: KeyLimits | None = None) -> tuple[dict[str, Any], str]:
    """A new key: its row (as key_json shows it) and the secret, which is never stored."""
    limits = limits or KeyLimits()
    check_key_request(name, role, queues, job_types, limits)
    secret = new_secret()
    row = await conn.fetchrow(
        f"INSERT INTO api_keys (id, name, role, key_hash, key_prefix, queues, job_types, "
        f"{', '.join(LIMIT_FIELDS)}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
        f"RETURNING {_KEY_COLUMNS}",
        uuid.uuid4(), name, role, digest(secret), secret[:SHOWN_PREFIX], queues, job_types,
        *(getattr(limits, f) for f in LIMIT_FIELDS))
    return key_json(row), secret


async def list_keys(conn: asyncpg.Connection, revoked: bool = False) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE $1 OR revoked_at IS NULL "
        "ORDER BY created_at, id", revoked)
    return [key_json(r) for r in rows]


async def revoke_key(conn: asyncpg.Connection, ref: str) -> dict[str, Any]:
    """Revoke the key with this id, shown prefix or name (of an active key), which must name
    one key; its dashboard sessions end with it. Revoking a revoked key changes nothing."""
    try:
        key_id: uuid.UUID | None = uuid.UUID(ref)
    except ValueError:
        key_id = None
    rows = await conn.fetch(
        f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = $1 OR key_prefix = $2 "
        "OR (name = $2 AND revoked_at IS NULL)", key_id, ref)
    if not rows:
        raise errors.NotFound(f"No API key with id, prefix or name {ref!r}.")
    if len(rows) > 1:
        raise errors.InvalidRequest(f"{len(rows)} keys start with {ref!r}; give the key's id.")
    async with conn.transaction():
        row = await conn.fetchrow(
            f"UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 "
            f"RETURNING {_KEY_COLUMNS}", rows[0]["id"])
        await conn.execute("DELETE FROM api_sessions WHERE api_key_id = $1", rows[0]["id"])
    return key_json(row)


async def authenticate(backend: Backend, secret: str) -> Principal:
    """The key's principal; Unauthorized for an unknown or revoked key."""
    async with backend.connection() as conn:
        row = await conn.fetchrow(
            f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_hash = $1", digest(secret))
    if row is None:
        raise errors.Unauthorized("This API key is not valid; ask an admin for one "
                                  "(`jobq keys create`).")
    if row["revoked_at"] is not None:
        raise errors.Unauthorized("This API key was revoked; ask an admin for a new one.")
    return _principal(row)


# -- dashboard sessions ------------------------------------------------------------------------


async def open_session(backend: Backend, principal: Principal) -> tuple[str, str]:
    """A new session for the key: (cookie token, CSRF token)."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    async with backend.connection() as conn:
        await conn.execute(
            "INSERT INTO api_sessions (token_hash, api_key_id, csrf_token, expires_at) "
            "VALUES ($1, $2, $3, now() + $4::interval)",
            digest(token), principal.key_id, csrf, SESSION_LIFETIME)
    return token, csrf


async def session(backend: Backend, token: str) -> Principal:
    """The principal of a live session cookie, with the session's CSRF token."""
    async with backend.connection() as conn:
        row = await conn.fetchrow(
            f"SELECT s.csrf_token, {', '.join('k.' + c.strip() for c in _KEY_COLUMNS.split(','))}"
            " FROM api_sessions AS s JOIN api_keys AS k ON k.id = s.api_key_id"
            " WHERE s.token_hash = $1 AND s.expires_at > now() AND k.revoked_at IS NULL",
            digest(token))
    if row is None:
        raise errors.Unauthorized("The dashboard session has ended; log in again with your key.")
    return _principal(row, csrf_token=row["csrf_token"])


async def close_session(backend: Backend, token: str) -> None:
    async with backend.connection() as conn:
        await conn.execute("DELETE FROM api_sessions WHERE token_hash = $1 OR expires_at < now()",
                           digest(token))


# -- what a key may submit ---------------------------------------------------------------------


def check_allowed(principal: Principal, planned: list[Planned], prefix: str = "") -> None:
    """Forbidden naming the queue or type this key may not submit to, and what it may."""
    for i, p in enumerate(planned):
        at = f"{prefix}[{i}]." if len(planned) > 1 or prefix else ""
        request = p.request
        if principal.queues is not None and request.queue not in principal.queues:
            raise errors.Forbidden(
                f"{at}queue: this key may not submit to the queue {request.queue!r}; it may "
                f"submit to {', '.join(principal.queues)}.")
        if principal.job_types is not None and request.type not in principal.job_types:
            raise errors.Forbidden(
                f"{at}type: this key may not submit {request.type!r} jobs; it may submit "
                f"{', '.join(principal.job_types)}.")
        limit = principal.limits.max_timeout_seconds
        if limit is not None and request.timeout_seconds is not None \
                and request.timeout_seconds > limit:
            raise errors.InvalidRequest(
                f"{at}timeout_seconds: this key may ask for at most {limit:g} s, not "
                f"{request.timeout_seconds:g} s.",
                [errors.FieldError(f"{at}timeout_seconds", f"at most {limit:g} for this key")])


def for_key(principal: Principal, planned: list[Planned]) -> list[Planned]:
    """The requests as a key writes them. Their `lock` and `queueing_lock` are made the key's
    own: Procrastinate's locks are global, so a key's jobs must neither wait behind another
    key's jobs nor learn (from a 409) that another key has a job queued under some name. With a
    longest timeout, the timeout planned (the type's, capped at the key's) is kept: a queue's
    default timeout, which could be longer, does not replace it."""
    if principal.key_id is None:
        return planned
    prefix = f"{principal.key_id}:"
    capped = principal.limits.max_timeout_seconds is not None
    return [replace(p, request=msgspec.structs.replace(
        p.request,
        lock=None if p.request.lock is None else prefix + p.request.lock,
        queueing_lock=(None if p.request.queueing_lock is None
                       else prefix + p.request.queueing_lock)),
        timeout_defaulted=p.timeout_defaulted and not capped)
        for p in planned]


def default_timeout(principal: Principal, type_default: float) -> float | None:
    """The timeout a request that gives none gets: the type's, or the key's longest if that is
    shorter (None: the type's default applies unchanged)."""
    limit = principal.limits.max_timeout_seconds
    return limit if limit is not None and type_default > limit else None


async def admit(conn: asyncpg.Connection, principal: Principal, planned: list[Planned],
                prefix: str = "") -> None:
    """Inside the transaction that writes `planned`: refuse what the key may not submit
    (403, 422), charge its rate (429) and its unfinished jobs (429), and mark the transaction
    so that the jobs written in it record the key (jobs.api_key_id's default)."""
    if principal.key_id is None:
        return
    check_allowed(principal, planned, prefix)
    await conn.execute("SELECT set_config('jobq.api_key', $1, true)", str(principal.key_id))
    limits = principal.limits
    if limits.submissions_per_second is not None:
        wait = await conn.fetchval("SELECT jobq_take_tokens($1, $2, $3)", principal.key_id,
                                   limits.submissions_per_second, len(planned))
        if wait > 0:
            raise errors.TooManyRequests(
                f"This key may submit {limits.submissions_per_second:g} jobs per second; "
                f"retry in {wait:.2f} s.", wait)
    if limits.max_queued is not None:
        # One submission per key at a time from here to commit: the count below cannot be
        # overtaken by another submission of the same key.
        await _lock_key(conn, principal)
        unfinished = await conn.fetchval(
            "SELECT count(*) FROM jobs AS j JOIN procrastinate_jobs AS pj "
            "ON pj.id = j.queue_job_id WHERE j.api_key_id = $1 AND pj.status IN "
            "('todo', 'doing', 'aborting')", principal.key_id)
        if unfinished + len(planned) > limits.max_queued:
            raise errors.TooManyRequests(
                f"This key may have {limits.max_queued} unfinished jobs at once and has "
                f"{unfinished}; retry when some have finished.", QUEUED_RETRY_AFTER)


async def _lock_key(conn: asyncpg.Connection, principal: Principal) -> None:
    """Lock the key's row until the transaction ends: its submissions and uploads, in every API
    process, count and write one after the other (jobs' own foreign key takes only a share
    lock on the row, which this does not block)."""
    await conn.execute("SELECT 1 FROM api_keys WHERE id = $1 FOR NO KEY UPDATE",
                       principal.key_id)


async def charge_upload(conn: asyncpg.Connection, principal: Principal, size: int) -> None:
    """Inside the transaction that stores an upload: add its bytes to the key's UTC day, or
    TooManyRequests (the transaction then rolls back, keeping nothing)."""
    limit = principal.limits.upload_bytes_per_day
    if principal.key_id is None or limit is None:
        return
    total = await conn.fetchval(
        "INSERT INTO api_key_upload_days AS d (api_key_id, day, bytes) "
        "VALUES ($1, (now() AT TIME ZONE 'UTC')::date, $2) "
        "ON CONFLICT (api_key_id, day) DO UPDATE SET bytes = d.bytes + excluded.bytes "
        "RETURNING bytes", principal.key_id, size)
    if total > limit:
        raise errors.TooManyRequests(
            f"This key may upload {limit:,} bytes per day (UTC); with this upload of {size:,} "
            f"bytes it would be {total:,}.", seconds_to_midnight())


async def upload_room(backend: Backend, principal: Principal, size: int) -> None:
    """Before reading an upload whose size is announced: TooManyRequests if it cannot fit in
    what is left of the key's day."""
    limit = principal.limits.upload_bytes_per_day
    if principal.key_id is None or limit is None:
        return
    async with backend.connection() as conn:
        used = await conn.fetchval(
            "SELECT coalesce(max(bytes), 0) FROM api_key_upload_days WHERE api_key_id = $1 "
            "AND day = (now() AT TIME ZONE 'UTC')::date", principal.key_id)
    if used + size > limit:
        raise errors.TooManyRequests(
            f"This key may upload {limit:,} bytes per day (UTC) and has {limit - used:,} left; "
            f"this upload announces {size:,}.", seconds_to_midnight())


def seconds_to_midnight() -> float:
    now = datetime.now(UTC)
    return (datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
            - now).total_seconds()


@asynccontextmanager
async def upload_slot(backend: Backend, principal: Principal) -> AsyncIterator[None]:
    """Hold one of the key's concurrent-upload slots while the body arrives (TooManyRequests
    when all are taken). A connection is used only to take and to give back the slot."""
    limit = principal.limits.max_concurrent_uploads
    if principal.key_id is None or limit is None:
        yield
        return
    slot = uuid.uuid4()
    async with backend.transaction() as conn:
        await _lock_key(conn, principal)
        taken = await conn.fetchval(
            "SELECT count(*) FROM api_key_upload_slots WHERE api_key_id = $1 "
            "AND expires_at > now()", principal.key_id)
        if taken >= limit:
            raise errors.TooManyRequests(
                f"This key may send {limit} uploads at once; wait for one to finish.", 2)
        await conn.execute(
            "DELETE FROM api_key_upload_slots WHERE api_key_id = $1 AND expires_at <= now()",
            principal.key_id)
        await conn.execute(
            "INSERT INTO api_key_upload_slots (id, api_key_id, expires_at) "
            "VALUES ($1, $2, now() + $3::interval)", slot, principal.key_id, UPLOAD_SLOT_LEASE)
    try:
        yield
    finally:
        async with backend.connection() as conn:
            await conn.execute("DELETE FROM api_key_upload_slots WHERE id = $1", slot)
