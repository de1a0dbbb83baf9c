"""Schedule ticks and checks (pure: no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service import errors
from service.domain import requests
from service.domain.schedules import Schedule, check, latest_tick, next_tick

JOB = requests.JobRequest(type="system.noop")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_cron_ticks_are_in_the_schedules_time_zone_summer_and_winter():
    daily = Schedule(name="daily", job=JOB, cron="0 9 * * *", timezone="Europe/Paris")
    anchor = at("2026-01-01T00:00:00")
    assert next_tick(daily, anchor, at("2026-11-29T12:00:00")) == at("2026-11-30T08:00:00")
    assert next_tick(daily, anchor, at("2026-07-01T12:00:00")) == at("2026-07-02T07:00:00")
    assert latest_tick(daily, anchor, at("2026-11-29T12:00:00")) == at("2026-11-29T08:00:00")


def test_a_tick_exactly_now_is_the_latest():
    every5 = Schedule(name="five", job=JOB, cron="*/5 * * * *")
    anchor = at("2026-01-01T00:00:00")
    assert latest_tick(every5, anchor, at("2026-11-29T12:05:00")) == at("2026-11-29T12:05:00")
    assert latest_tick(every5, anchor, at("2026-11-29T12:09:59")) == at("2026-11-29T12:05:00")
    assert next_tick(every5, anchor, at("2026-11-29T12:05:00")) == at("2026-11-29T12:10:00")


def test_interval_ticks_count_from_the_anchor():
    every = Schedule(name="every", job=JOB, interval_seconds=90)
    anchor = at("2026-11-29T12:00:00")
    assert latest_tick(every, anchor, anchor - timedelta(seconds=1)) is None
    assert latest_tick(every, anchor, anchor) == anchor
    assert latest_tick(every, anchor, at("2026-11-29T12:04:00")) == at("2026-11-29T12:03:00")
    assert next_tick(every, anchor, at("2026-11-29T12:04:00")) == at("2026-11-29T12:04:30")


@pytest.mark.parametrize(("fields", "field"), [
    ({"cron": "every minute"}, "cron"),
    ({"cron": "* * * * *", "interval_seconds": 5}, "cron"),
    ({}, "cron"),
    ({"interval_seconds": 0.5}, "interval_seconds"),
    ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone"),
    ({"cron": "* * * * *", "name": "no spaces"}, "name"),
    ({"cron": "* * * * *", "job": requests.JobRequest(type="nope")}, "job.type"),
    ({"cron": "* * * * *", "job": requests.JobRequest(type="system.noop", max_attempts=0)},
     "job.max_attempts"),
    ({"cron": "* * * * *", "job": requests.JobRequest(type="system.noop", delay_seconds=5)},
     "job"),
])
def test_a_bad_schedule_names_the_field(fields, field):
    schedule = Schedule(**{"name": "s", "job": JOB, **fields})
    with pytest.raises(errors.InvalidRequest) as caught:
        check(schedule)
    assert field in [f.field for f in caught.value.fields]
