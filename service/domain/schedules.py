"""Schedules as values: a recurring job's definition (the body of `/api/v1/schedules`, or a
declaration in code), its checks, and its ticks. Plain Python, no I/O.

Cron expressions are parsed by croniter, the library Procrastinate's periodic tasks use: five
fields, or six with the seconds last. Ticks are computed in the schedule's time zone, so
`0 9 * * *` in Europe/Paris is 09:00 there, summer and winter.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from croniter import CroniterError, croniter

from service import errors
from service.domain import requests

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
MIN_INTERVAL_SECONDS = 1.0
MAX_INTERVAL_SECONDS = 366 * 86_400


class Schedule(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A recurring job: every tick of `cron` (in `timezone`) or every `interval_seconds`,
    one job made from `job`."""

    name: str
    job: requests.JobRequest
    cron: str | None = None
    interval_seconds: float | None = None
    timezone: str = "UTC"
    paused: bool = False


class ScheduleBody(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """`PUT /api/v1/schedules/{name}`: a schedule without its name (the path gives it)."""

    job: requests.JobRequest
    cron: str | None = None
    interval_seconds: float | None = None
    timezone: str = "UTC"
    paused: bool = False

    def named(self, name: str) -> Schedule:
        return Schedule(name=name, job=self.job, cron=self.cron,
                        interval_seconds=self.interval_seconds, timezone=self.timezone,
                        paused=self.paused)


MAX_TIMEZONE_NAME = 64
"""IANA names are far shorter (the longest is 32); a longer one is refused before it is
looked up as a file (a name of thousands of characters was an OSError, a 500: issue 13)."""


def _fires(cron: str) -> bool:
    """Whether a valid cron expression has a next tick at all (croniter raises for one that
    names no date, which made every read of the schedule a 500: issue 13)."""
    try:
        croniter(cron, datetime.now(UTC)).get_next(datetime)
    except CroniterError:
        return False
    return True


def check(schedule: Schedule) -> None:
    """InvalidRequest naming every field that is wrong, the job template's included (it must
    be a request the job type accepts, without run_at or delay_seconds)."""
    problems: list[errors.FieldError] = []
    if not NAME.match(schedule.name):
        problems.append(errors.FieldError("name", "must be 1-128 letters, digits, '_', '.' or '-'"))
    if (schedule.cron is None) == (schedule.interval_seconds is None):
        problems.append(errors.FieldError("cron", "give cron or interval_seconds, not both"))
    elif schedule.cron is not None and not croniter.is_valid(schedule.cron):
        problems.append(errors.FieldError(
            "cron", "not a cron expression: five fields (minute hour day month weekday), or "
                    "six with the seconds last, e.g. '*/5 * * * *'"))
    elif schedule.interval_seconds is not None and not (
            MIN_INTERVAL_SECONDS <= schedule.interval_seconds <= MAX_INTERVAL_SECONDS):
        problems.append(errors.FieldError(
            "interval_seconds", f"must be between {MIN_INTERVAL_SECONDS:g} and "
                                f"{MAX_INTERVAL_SECONDS}"))
    elif schedule.cron is not None and not _fires(schedule.cron):
        problems.append(errors.FieldError(
            "cron", "never fires (no such date, e.g. '0 0 31 2 *', the 31st of February)"))
    try:
        if len(schedule.timezone) > MAX_TIMEZONE_NAME:
            raise ValueError(schedule.timezone)
        ZoneInfo(schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name the file system
        problems.append(errors.FieldError("timezone", "not an IANA time zone, e.g. Europe/Paris"))
    if schedule.job.run_at is not None or schedule.job.delay_seconds is not None:
        problems.append(errors.FieldError("job", "a schedule's job has no run_at or "
                                                 "delay_seconds: its ticks say when"))
    try:
        requests.plan(schedule.job, prefix="job.")
    except errors.InvalidRequest as exc:
        problems.extend(errors.FieldError(f.field if f.field.startswith("job.") else
                                          f"job.{f.field}", f.message)
                        for f in exc.fields or [errors.FieldError("", str(exc))])
    if problems:
        raise errors.InvalidRequest("; ".join(f"{p.field}: {p.message}" for p in problems),
                                    problems)


def latest_tick(schedule: Schedule, anchor: datetime, now: datetime) -> datetime | None:
    """The last tick at or before `now` (UTC), or None if there is none since `anchor` (an
    interval schedule's ticks are anchor + k * interval)."""
    if schedule.interval_seconds is not None:
        steps = math.floor((now - anchor).total_seconds() / schedule.interval_seconds)
        return anchor + timedelta(seconds=steps * schedule.interval_seconds) if steps >= 0 \
            else None
    local = now.astimezone(ZoneInfo(schedule.timezone))
    tick = croniter(schedule.cron, local).get_prev(datetime)
    after = croniter(schedule.cron, tick).get_next(datetime)
    if after <= local:  # `now` is a tick itself
        tick = after
    return tick.astimezone(UTC)


def next_tick(schedule: Schedule, anchor: datetime, now: datetime) -> datetime:
    """The first tick after `now` (UTC)."""
    if schedule.interval_seconds is not None:
        steps = math.floor((now - anchor).total_seconds() / schedule.interval_seconds) + 1
        return anchor + timedelta(seconds=max(steps, 0) * schedule.interval_seconds)
    local = now.astimezone(ZoneInfo(schedule.timezone))
    return croniter(schedule.cron, local).get_next(datetime).astimezone(UTC)
