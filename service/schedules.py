"""Recurring jobs: schedules kept in PostgreSQL (made over REST or declared in code), and the
firing of their ticks, which every worker does now and then (workers/scheduler.py).

Each tick makes exactly one job however many workers look: a worker firing a tick locks the
schedule's row, checks the tick is newer than the last one fired, and inserts it into
`schedule_ticks` (primary key: schedule, tick time) in the same transaction as the job
(`jobs.enqueue`, so the job is a jobq job like any other).

Ticks missed while no worker ran (everything down, or the schedule paused): when workers come
back, the latest missed tick makes one job and the older ones are skipped (docs/queues.md).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import msgspec

from service import errors, jobs
from service.backend import Backend
from service.domain import requests
from service.domain.schedules import Schedule, check, latest_tick, next_tick

logger = logging.getLogger(__name__)

KEEP_TICKS = timedelta(days=1)
"""Fired ticks are remembered this long before the latest (the latest always)."""

DECLARED: dict[str, Schedule] = {}
"""Schedules declared in code (`declare`); workers write them to the database at start."""


def declare(schedule: Schedule) -> Schedule:
    """Declare a schedule in code: checked now, kept in the database by every worker's start
    (`sync_declared`); REST can read it but not change it."""
    check(schedule)
    if schedule.name in DECLARED:
        raise ValueError(f"schedule {schedule.name!r} is declared twice")
    DECLARED[schedule.name] = schedule
    return schedule


def _columns(schedule: Schedule) -> tuple:
    return (schedule.name, schedule.cron, schedule.interval_seconds, schedule.timezone,
            msgspec.json.encode(schedule.job).decode(), schedule.paused)


# Upsert: a change of timing (cron, interval, time zone) re-anchors the schedule, so no tick
# of the old timing fires late.
_UPSERT = """
INSERT INTO schedules AS s (name, cron, interval_seconds, timezone, job, paused, origin)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)
ON CONFLICT (name) DO UPDATE SET
    cron = excluded.cron, interval_seconds = excluded.interval_seconds,
    timezone = excluded.timezone, job = excluded.job, paused = excluded.paused,
    origin = excluded.origin, updated_at = now(),
    anchor_at = CASE WHEN (s.cron, s.interval_seconds, s.timezone)
                          IS DISTINCT FROM (excluded.cron, excluded.interval_seconds,
                                            excluded.timezone)
                     THEN now() ELSE s.anchor_at END
RETURNING (xmax = 0) AS created
"""


async def put(backend: Backend, schedule: Schedule) -> tuple[dict[str, Any], bool]:
    """Create or replace a schedule made over REST; returns it and whether it is new.
    Conflict for a schedule declared in code."""
    check(schedule)
    async with backend.transaction() as conn:
        origin = await conn.fetchval("SELECT origin FROM schedules WHERE name = $1 FOR UPDATE",
                                     schedule.name)
        if origin == "code":
            raise _declared_in_code(schedule.name)
        created = await conn.fetchval(_UPSERT, *_columns(schedule), "api")
    return await get(backend, schedule.name), created


async def create(backend: Backend, schedule: Schedule) -> dict[str, Any]:
    """Create a schedule over REST; Conflict if the name is taken."""
    check(schedule)
    try:
        async with backend.connection() as conn:
            await conn.execute(
                "INSERT INTO schedules (name, cron, interval_seconds, timezone, job, paused) "
                "VALUES ($1, $2, $3, $4, $5::jsonb, $6)", *_columns(schedule))
    except asyncpg.UniqueViolationError:
        raise errors.Conflict(f"A schedule named {schedule.name!r} exists; PUT "
                              f"/api/v1/schedules/{schedule.name} replaces it.") from None
    return await get(backend, schedule.name)


async def delete(backend: Backend, name: str) -> None:
    async with backend.connection() as conn:
        origin = await conn.fetchval(
            "DELETE FROM schedules WHERE name = $1 AND origin = 'api' RETURNING origin", name)
        if origin is None:
            if await conn.fetchval("SELECT origin FROM schedules WHERE name = $1", name):
                raise _declared_in_code(name)
            raise _not_found(name)


async def sync_declared(backend: Backend) -> None:
    """Write the schedules declared in code to the database (made or updated)."""
    if not DECLARED:
        return
    async with backend.transaction() as conn:
        for schedule in DECLARED.values():
            await conn.fetchval(_UPSERT, *_columns(schedule), "code")


_SELECT = """
SELECT s.*, t.tick_at AS last_tick_at, t.job_id AS last_job_id
FROM schedules AS s
LEFT JOIN LATERAL (SELECT tick_at, job_id FROM schedule_ticks AS t
                   WHERE t.schedule_name = s.name ORDER BY tick_at DESC LIMIT 1) AS t ON true
"""


async def get(backend: Backend, name: str) -> dict[str, Any]:
    async with backend.connection() as conn:
        row = await conn.fetchrow(_SELECT + " WHERE s.name = $1", name)
    if row is None:
        raise _not_found(name)
    return _json(row)


async def list_all(backend: Backend) -> list[dict[str, Any]]:
    async with backend.connection() as conn:
        return [_json(r) for r in await conn.fetch(_SELECT + " ORDER BY s.name")]


def _schedule(row) -> Schedule:
    return Schedule(name=row["name"], cron=row["cron"], interval_seconds=row["interval_seconds"],
                    timezone=row["timezone"], paused=row["paused"],
                    job=msgspec.convert(row["job"], requests.JobRequest))


def _json(row) -> dict[str, Any]:
    schedule = _schedule(row)
    now = datetime.now(UTC)
    return {
        "name": schedule.name, "cron": schedule.cron,
        "interval_seconds": schedule.interval_seconds, "timezone": schedule.timezone,
        "paused": schedule.paused, "origin": row["origin"],
        "job": {k: v for k, v in row["job"].items() if v is not None},
        "next_tick_at": None if schedule.paused else _iso(
            next_tick(schedule, row["anchor_at"], now)),
        "last_tick_at": _iso(row["last_tick_at"]),
        "last_job_id": None if row["last_job_id"] is None else str(row["last_job_id"]),
        "created_at": _iso(row["created_at"]), "updated_at": _iso(row["updated_at"]),
    }


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _not_found(name: str) -> errors.NotFound:
    return errors.NotFound(f"No schedule named {name!r}.")


def _declared_in_code(name: str) -> errors.Conflict:
    return errors.Conflict(f"The schedule {name!r} is declared in code; change it there.")


async def fire_due(backend: Backend, now: datetime | None = None) -> list[uuid.UUID]:
    """Make the job of each schedule's latest tick that is due and not fired yet (older missed
    ticks are skipped); returns the jobs made here. Safe from any number of workers at once."""
    now = now or datetime.now(UTC)
    async with backend.connection() as conn:
        rows = await conn.fetch("SELECT * FROM schedules WHERE NOT paused")
    made = []
    for row in rows:
        tick = latest_tick(_schedule(row), row["anchor_at"], now)
        if tick is None or tick < row["anchor_at"]:
            continue
        job_id = await _fire(backend, row["name"], tick)
        if job_id is not None:
            made.append(job_id)
    return made


async def _fire(backend: Backend, name: str, tick: datetime) -> uuid.UUID | None:
    async with backend.transaction() as conn:
        # Firings of one schedule take turns; the newest tick fired so far decides.
        row = await conn.fetchrow(
            "SELECT s.job, s.paused, (SELECT max(tick_at) FROM schedule_ticks AS t "
            "WHERE t.schedule_name = s.name) AS last FROM schedules AS s "
            "WHERE s.name = $1 FOR UPDATE", name)
        if row is None or row["paused"] or (row["last"] is not None and row["last"] >= tick):
            return None
        fired = await conn.fetchval(
            "INSERT INTO schedule_ticks (schedule_name, tick_at) VALUES ($1, $2) "
            "ON CONFLICT DO NOTHING RETURNING true", name, tick)
        if not fired:
            return None
        try:
            async with conn.transaction():  # a savepoint: a refused job still records the tick
                [job_id] = await jobs.enqueue(
                    conn, [msgspec.convert(row["job"], requests.JobRequest)])
        except errors.ServiceError as exc:
            # The template no longer fits (a job type changed, a queueing lock is taken): the
            # tick is spent, so the next one tries again, and the reason is logged.
            logger.warning("schedule %s: the tick of %s made no job: %s", name, tick, exc)
            return None
        await conn.execute("UPDATE schedule_ticks SET job_id = $3 "
                           "WHERE schedule_name = $1 AND tick_at = $2", name, tick, job_id)
        await conn.execute("DELETE FROM schedule_ticks WHERE schedule_name = $1 AND tick_at < $2",
                           name, tick - KEEP_TICKS)
    logger.info("schedule %s: the tick of %s made job %s", name, tick.isoformat(), job_id)
    return job_id
