"""Job events for Server-Sent Events: one LISTEN connection per API process serves every stream.

Revision 0011 notifies channel `jobq_events` at commit: `e:<first>:<last>` for the job_events
ids a statement wrote, `p:<job id>` for a progress report. Payloads carry ids only (NOTIFY's
limit is 8000 bytes); the hub reads the rows on its own connection, once per batch of
notifications, and hands them to the subscriptions that want them. A notification can be lost
only with the connection: after a reconnect every subscription is told to read again from where
it is (RESYNC), so no stream misses a job's terminal state.

A stream's position is a `Cursor`, sent as every event's id: the last job_events id it sent and
the stamp (microseconds since the epoch) of the last progress it sent. Status changes are rows
of job_events and are replayed exactly; progress is a job's latest report (reports are not
kept), so a resumed stream gets the current progress if it is newer than the cursor's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from service import errors
from service.backend import CONNECTION_ERRORS, Backend
from service.db import engine as db_engine
from service.domain.status import Status

logger = logging.getLogger(__name__)

CHANNEL = "jobq_events"

TERMINAL_EVENTS = frozenset({"succeeded", "failed", "cancelled"})
"""job_events that end a job (until a client retries it)."""

STATUS_AFTER = {
    "submitted": "queued",
    "started": "running",
    "retry_scheduled": "scheduled",
    "requeued": "queued",
    "retried": "queued",
    "cancel_requested": "running",
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
}
"""The public status a job has right after each event (job_overview derives the current one)."""

QUEUE_SIZE = 256
"""Changes one subscription may have waiting; past that it is told to read again instead."""

REPLAY_WINDOW = 10_000
"""Most job_events ids a resumed `/events` stream looks back over."""

APPLICATION_NAME = "jobq-event-hub"
"""How the hub's connection shows in pg_stat_activity."""

CONNECT_TIMEOUT = 5.0
"""Seconds a new stream waits for the hub's connection before answering 503."""

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

_LOST = (*CONNECTION_ERRORS, asyncpg.PostgresError, asyncpg.InternalClientError, TimeoutError)
"""What losing the hub's connection raises (InternalClientError: killed in mid-command)."""


def stamp(at: datetime | None) -> int:
    """A progress time as whole microseconds since the epoch (exact: no float on the way)."""
    return 0 if at is None else (at - _EPOCH) // timedelta(microseconds=1)


@dataclass(frozen=True)
class Cursor:
    """Where a stream is; its text form is the SSE event id (`Last-Event-ID` to resume)."""

    event_id: int = 0
    progress_us: int = 0

    def __str__(self) -> str:
        return f"{self.event_id}-{self.progress_us}"

    @classmethod
    def parse(cls, raw: str) -> Cursor:
        event_id, dash, progress_us = raw.strip().partition("-")
        if dash and event_id.isdigit() and progress_us.isdigit() and len(raw) <= 40:
            return cls(int(event_id), int(progress_us))
        raise errors.InvalidRequest(
            "Last-Event-ID must be an event id this API sent, like 1234-1732390000000000; "
            "reconnect without it to start from the job's current state.",
            [errors.FieldError("Last-Event-ID", "not an event id of this API")])

    def past(self, change: StatusChange | ProgressChange) -> Cursor:
        if isinstance(change, StatusChange):
            return replace(self, event_id=max(self.event_id, change.id))
        return replace(self, progress_us=max(self.progress_us, change.stamp))


@dataclass(frozen=True)
class StatusChange:
    """A row of job_events: a change of a job's state."""

    id: int
    job_id: uuid.UUID
    queue: str
    type: str
    at: datetime
    event: str
    status: str
    attempt: int | None
    worker: str | None
    message: str | None
    error: dict[str, Any] | None
    owner: uuid.UUID | None = None
    """The API key that submitted the job (streams of a submitter carry only its own)."""

    @property
    def is_terminal(self) -> bool:
        return self.event in TERMINAL_EVENTS


@dataclass(frozen=True)
class ProgressChange:
    """A job's latest progress report."""

    job_id: uuid.UUID
    queue: str
    type: str
    progress: int
    stage: str | None
    message: str | None
    at: datetime
    stamp: int
    owner: uuid.UUID | None = None


RESYNC = "resync"
"""Put in a subscription when changes may have been missed: read again from the cursor."""
CLOSED = "closed"
"""Put in a subscription when the process stops: end the stream."""


# -- reading --------------------------------------------------------------------------------

# Every lookup one row by its key (OFFSET 0 keeps the planner from turning them into joins that
# scan a long history).
_EVENT_ROWS = """
SELECT e.id, e.job_id, e.at, e.event, e.attempt, e.worker_name, e.message, e.error,
       o.queue, o.type, o.status, o.scheduled_at, o.api_key_id
FROM {source}
CROSS JOIN LATERAL (
    SELECT v.queue, v.type, v.status, v.scheduled_at, v.api_key_id FROM job_overview AS v
    WHERE v.id = e.job_id OFFSET 0
) AS o
"""

_EVENTS_IN_RANGES = _EVENT_ROWS.format(source="""
unnest($1::bigint[], $2::bigint[]) AS r(lo, hi)
CROSS JOIN LATERAL (
    SELECT * FROM job_events AS x WHERE x.id BETWEEN r.lo AND r.hi OFFSET 0
) AS e""") + """
WHERE $3::uuid[] IS NULL OR e.job_id = ANY ($3)
ORDER BY e.id
"""

_JOB_EVENTS_AFTER = _EVENT_ROWS.format(source="job_events AS e") + """
WHERE e.job_id = $1 AND e.id > $2
ORDER BY e.id
"""

_EVENTS_BETWEEN = _EVENT_ROWS.format(source="job_events AS e") + """
WHERE e.id > $1 AND e.id <= $2
  AND (cardinality($3::text[]) = 0 OR o.queue = ANY ($3))
  AND (cardinality($4::text[]) = 0 OR o.type = ANY ($4))
  AND ($5::uuid IS NULL OR o.api_key_id = $5)
ORDER BY e.id
"""

_PROGRESS = """
SELECT o.id, o.queue, o.type, o.status, o.progress, o.stage, o.progress_message,
       o.progress_updated_at, o.api_key_id
FROM unnest($1::uuid[]) AS i(id)
CROSS JOIN LATERAL (SELECT * FROM job_overview AS v WHERE v.id = i.id OFFSET 0) AS o
WHERE o.progress_updated_at IS NOT NULL
"""

_RUNNING_PROGRESS_AFTER = """
SELECT o.id, o.queue, o.type, o.status, o.progress, o.stage, o.progress_message,
       o.progress_updated_at, o.api_key_id
FROM procrastinate_jobs AS pj
CROSS JOIN LATERAL (
    SELECT * FROM job_overview AS v WHERE v.queue_job_id = pj.id OFFSET 0
) AS o
WHERE pj.status = 'doing'
  AND o.progress_updated_at > $1
  AND (cardinality($2::text[]) = 0 OR o.queue = ANY ($2))
  AND (cardinality($3::text[]) = 0 OR o.type = ANY ($3))
  AND ($4::uuid IS NULL OR o.api_key_id = $4)
"""


def _status_change(row: asyncpg.Record) -> StatusChange:
    status = STATUS_AFTER.get(row["event"], row["status"])
    if row["event"] == "submitted" and row["scheduled_at"] > row["at"]:
        status = "scheduled"
    return StatusChange(
        id=row["id"], job_id=row["job_id"], queue=row["queue"], type=row["type"], at=row["at"],
        event=row["event"], status=status, attempt=row["attempt"], worker=row["worker_name"],
        message=row["message"], error=row["error"], owner=row["api_key_id"])


def _progress_change(row: asyncpg.Record) -> ProgressChange:
    return ProgressChange(
        job_id=row["id"], queue=row["queue"], type=row["type"], progress=row["progress"],
        stage=row["stage"], message=row["progress_message"], at=row["progress_updated_at"],
        stamp=stamp(row["progress_updated_at"]), owner=row["api_key_id"])


async def read_ranges(conn: asyncpg.Connection, ranges: list[tuple[int, int]],
                      job_ids: list[uuid.UUID] | None) -> list[StatusChange]:
    """The events with ids in `ranges` (of these jobs only, unless None), oldest first."""
    rows = await conn.fetch(_EVENTS_IN_RANGES, [lo for lo, _ in ranges],
                            [hi for _, hi in ranges], job_ids)
    return [_status_change(r) for r in rows]


async def read_job_events(conn: asyncpg.Connection, job_id: uuid.UUID,
                          after: int) -> list[StatusChange]:
    """A job's events after id `after`, oldest first."""
    return [_status_change(r) for r in await conn.fetch(_JOB_EVENTS_AFTER, job_id, after)]


async def read_progress(conn: asyncpg.Connection,
                        job_ids: Iterable[uuid.UUID]) -> list[ProgressChange]:
    """The latest progress of each of these jobs that has reported any."""
    return [_progress_change(r) for r in await conn.fetch(_PROGRESS, list(job_ids))]


async def read_job(conn: asyncpg.Connection, job_id: uuid.UUID) -> tuple[dict[str, Any], Cursor]:
    """A job (a job_overview row) and the cursor of its current state; JobNotFound."""
    row = await conn.fetchrow(
        "SELECT o.*, (SELECT max(e.id) FROM job_events AS e WHERE e.job_id = o.id) AS last_event "
        "FROM job_overview AS o WHERE o.id = $1", job_id)
    if row is None:
        raise errors.JobNotFound(job_id)
    job = dict(row)
    return job, Cursor(job.pop("last_event") or 0, stamp(job["progress_updated_at"]))


# -- the hub --------------------------------------------------------------------------------


class Subscription:
    """One open stream's inbox: the changes it asked for, RESYNC or CLOSED."""

    def __init__(self, job_id: uuid.UUID | None, queues: frozenset[str],
                 types: frozenset[str], owner: uuid.UUID | None = None) -> None:
        self.job_id = job_id
        self.queues = queues
        self.types = types
        self.owner = owner
        self._inbox: asyncio.Queue[Any] = asyncio.Queue(QUEUE_SIZE)

    def wants(self, change: StatusChange | ProgressChange) -> bool:
        return ((not self.queues or change.queue in self.queues)
                and (not self.types or change.type in self.types)
                and (self.owner is None or change.owner == self.owner))

    def offer(self, item: Any) -> None:
        """Never blocks the hub: a stream too slow to keep up is told to read again."""
        try:
            self._inbox.put_nowait(item)
        except asyncio.QueueFull:
            while not self._inbox.empty():
                self._inbox.get_nowait()
            self._inbox.put_nowait(CLOSED if item == CLOSED else RESYNC)

    async def next(self, timeout: float) -> Any:
        """The next item, or None after `timeout` seconds of silence."""
        try:
            return await asyncio.wait_for(self._inbox.get(), timeout)
        except TimeoutError:
            return None


class EventHub:
    """Listens on one connection for the whole process and fans changes out."""

    def __init__(self, database_url: str, liveness_interval: float = 15.0) -> None:
        self.database_url = database_url
        self.liveness_interval = liveness_interval
        self._by_job: dict[uuid.UUID, set[Subscription]] = {}
        self._everything: set[Subscription] = set()
        self._pending: list[str] = []
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._closed = False
        self.reconnects = 0

    @property
    def open_streams(self) -> int:
        return len(self._everything) + sum(len(s) for s in self._by_job.values())

    async def subscribe(self, job_id: uuid.UUID | None = None,
                        queues: Iterable[str] = (), types: Iterable[str] = (),
                        owner: uuid.UUID | None = None) -> Subscription:
        """A subscription that receives every change committed from now on (the hub is
        listening when this returns); DatabaseUnavailable if it cannot listen."""
        if self._closed:
            raise errors.DatabaseUnavailable("This API process is shutting down.")
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="event hub")
        subscription = Subscription(job_id, frozenset(queues), frozenset(types), owner)
        if job_id is None:
            self._everything.add(subscription)
        else:
            self._by_job.setdefault(job_id, set()).add(subscription)
        try:
            await asyncio.wait_for(self._connected.wait(), CONNECT_TIMEOUT)
        except TimeoutError:
            self.unsubscribe(subscription)
            raise errors.DatabaseUnavailable(
                "The event stream cannot listen to the database right now.") from None
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription.job_id is None:
            self._everything.discard(subscription)
            return
        subscribers = self._by_job.get(subscription.job_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._by_job[subscription.job_id]

    def end_streams(self) -> None:
        """The process is stopping: every stream ends now (clients reconnect elsewhere with
        their Last-Event-ID), and no new one starts."""
        self._closed = True
        for subscription in self._all():
            subscription.offer(CLOSED)

    async def close(self) -> None:
        self.end_streams()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _all(self) -> list[Subscription]:
        return [*self._everything, *(s for subs in self._by_job.values() for s in subs)]

    def _on_notification(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        self._pending.append(payload)
        self._wake.set()

    def _on_termination(self, _conn: object) -> None:
        self._wake.set()

    async def _run(self) -> None:
        delay = 0.5
        first = True
        while True:
            try:
                conn = await db_engine.connect(
                    self.database_url, timeout=CONNECT_TIMEOUT,
                    server_settings={"application_name": APPLICATION_NAME})
            except _LOST as exc:
                logger.warning("event hub cannot connect (%s); again in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
                continue
            try:
                await conn.add_listener(CHANNEL, self._on_notification)
                conn.add_termination_listener(self._on_termination)
                if not first:
                    # Notifications sent while we were away are lost: everyone reads again.
                    self.reconnects += 1
                    for subscription in self._all():
                        subscription.offer(RESYNC)
                first, delay = False, 0.5
                self._connected.set()
                await self._serve(conn)
            except _LOST as exc:
                logger.warning("event hub lost its connection (%s); reconnecting", exc)
            except Exception:
                # Never let the hub die: every stream of the process depends on it.
                logger.exception("event hub failed; reconnecting in %.1f s", delay)
                await asyncio.sleep(delay)
            finally:
                self._connected.clear()
                conn.terminate()

    async def _serve(self, conn: asyncpg.Connection) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.liveness_interval)
            except TimeoutError:
                # Quiet: make sure the connection (and so the LISTEN) is still there.
                await conn.fetchval("SELECT 1", timeout=CONNECT_TIMEOUT)
                continue
            self._wake.clear()
            if conn.is_closed():
                raise asyncpg.InterfaceError("the listening connection was closed")
            payloads, self._pending = self._pending, []
            await self._dispatch(conn, payloads)

    async def _dispatch(self, conn: asyncpg.Connection, payloads: list[str]) -> None:
        ranges: list[tuple[int, int]] = []
        progressed: set[uuid.UUID] = set()
        for payload in payloads:
            kind, _, rest = payload.partition(":")
            with contextlib.suppress(ValueError):
                if kind == "e":
                    first, _, last = rest.partition(":")
                    ranges.append((int(first), int(last)))
                elif kind == "p":
                    progressed.add(uuid.UUID(rest))
        watched = None if self._everything else list(self._by_job)
        if ranges and (watched is None or watched):
            seen: set[int] = set()
            for change in await read_ranges(conn, ranges, watched):
                if change.id not in seen:  # ranges of concurrent statements may overlap
                    seen.add(change.id)
                    self._deliver(change)
        if watched is not None:
            progressed &= self._by_job.keys()
        if progressed:
            for change in await read_progress(conn, progressed):
                self._deliver(change)

    def _deliver(self, change: StatusChange | ProgressChange) -> None:
        for subscription in self._by_job.get(change.job_id, ()):
            subscription.offer(change)
        for subscription in self._everything:
            if subscription.wants(change):
                subscription.offer(change)


# -- streams --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Item:
    """What a stream sends next: `job` (a job_overview row), `status`, `progress` or `gap`;
    `heartbeat` after a quiet interval."""

    kind: str
    cursor: Cursor
    data: Any = None


async def follow_job(hub: EventHub, backend: Backend, job_id: uuid.UUID, cursor: Cursor | None,
                     heartbeat: float) -> AsyncIterator[Item]:
    """One job's changes until its terminal state, which ends the stream with the job itself.
    Without a cursor the stream starts with the job as it is now (a finished job: only that)."""
    subscription = await hub.subscribe(job_id=job_id)
    try:
        async with backend.connection() as conn:
            job, now = await read_job(conn, job_id)
        if cursor is None:
            yield Item("job", now, job)
            if Status(job["status"]).is_terminal:
                return
            cursor = now
        else:
            async for item in _catch_up(backend, job_id, cursor):
                yield item
                if item.kind == "job":
                    return
                cursor = item.cursor
        while True:
            change = await subscription.next(heartbeat)
            if change is None:
                yield Item("heartbeat", cursor)
            elif change == CLOSED:
                return
            elif change == RESYNC:
                async for item in _catch_up(backend, job_id, cursor):
                    yield item
                    if item.kind == "job":
                        return
                    cursor = item.cursor
            elif isinstance(change, StatusChange) and change.id > cursor.event_id:
                cursor = cursor.past(change)
                yield Item("status", cursor, change)
                if change.is_terminal:
                    async with backend.connection() as conn:
                        job, _ = await read_job(conn, job_id)
                    yield Item("job", cursor, job)
                    return
            elif isinstance(change, ProgressChange) and change.stamp > cursor.progress_us:
                cursor = cursor.past(change)
                yield Item("progress", cursor, change)
    finally:
        hub.unsubscribe(subscription)


async def _catch_up(backend: Backend, job_id: uuid.UUID, cursor: Cursor) -> AsyncIterator[Item]:
    """What a stream at `cursor` missed, from the tables: events, then the latest progress;
    ends with a `job` item if the job reached its terminal state."""
    async with backend.connection() as conn:
        changes = await read_job_events(conn, job_id, cursor.event_id)
        progress = await read_progress(conn, [job_id])
        job = None
        if any(c.is_terminal for c in changes):
            job, _ = await read_job(conn, job_id)
    for change in changes:
        cursor = cursor.past(change)
        yield Item("status", cursor, change)
        if change.is_terminal:
            yield Item("job", cursor, job)
            return
    for change in progress:
        if change.stamp > cursor.progress_us:
            cursor = cursor.past(change)
            yield Item("progress", cursor, change)


async def has_news(backend: Backend, job_id: uuid.UUID, cursor: Cursor) -> bool:
    """Whether a stream resuming at `cursor` has anything left to receive: False once it has
    seen the job's terminal state. JobNotFound for an unknown job."""
    async with backend.connection() as conn:
        job, now = await read_job(conn, job_id)
    return not Status(job["status"]).is_terminal or now.event_id > cursor.event_id


class _Recent:
    """Ids of the status changes a stream sent lately, to drop ones it gets twice."""

    def __init__(self, size: int = 4096) -> None:
        self._order: deque[int] = deque(maxlen=size)
        self._ids: set[int] = set()

    def add(self, change_id: int) -> bool:
        """True the first time an id is seen."""
        if change_id in self._ids:
            return False
        if len(self._order) == self._order.maxlen:
            self._ids.discard(self._order[0])
        self._order.append(change_id)
        self._ids.add(change_id)
        return True


async def follow_all(hub: EventHub, backend: Backend, queues: frozenset[str],
                     types: frozenset[str], cursor: Cursor | None,
                     heartbeat: float, owner: uuid.UUID | None = None) -> AsyncIterator[Item]:
    """Every job's changes (of these queues and types, if given; of the jobs API key `owner`
    submitted, if given), from now or from `cursor`."""
    subscription = await hub.subscribe(queues=queues, types=types, owner=owner)
    recent = _Recent()
    try:
        if cursor is None:
            async with backend.connection() as conn:
                cursor = Cursor(
                    await conn.fetchval("SELECT coalesce(max(id), 0) FROM job_events"),
                    stamp(await conn.fetchval("SELECT now()")))
            yield Item("heartbeat", cursor)  # opens the stream at once
        else:
            async for item in _replay(backend, queues, types, cursor, recent, owner):
                cursor = item.cursor
                yield item
        while True:
            change = await subscription.next(heartbeat)
            if change is None:
                yield Item("heartbeat", cursor)
            elif change == CLOSED:
                return
            elif change == RESYNC:
                async for item in _replay(backend, queues, types, cursor, recent, owner):
                    cursor = item.cursor
                    yield item
            elif isinstance(change, StatusChange):
                if recent.add(change.id):
                    cursor = cursor.past(change)
                    yield Item("status", cursor, change)
            elif isinstance(change, ProgressChange):
                cursor = cursor.past(change)
                yield Item("progress", cursor, change)
    finally:
        hub.unsubscribe(subscription)


async def _replay(backend: Backend, queues: frozenset[str], types: frozenset[str],
                  cursor: Cursor, recent: _Recent,
                  owner: uuid.UUID | None = None) -> AsyncIterator[Item]:
    """Events after the cursor (at most REPLAY_WINDOW ids back: a `gap` item says what was
    skipped) and the progress of running jobs reported since."""
    async with backend.connection() as conn:
        newest = await conn.fetchval("SELECT coalesce(max(id), 0) FROM job_events")
        start = max(cursor.event_id, newest - REPLAY_WINDOW)
        changes = await conn.fetch(_EVENTS_BETWEEN, start, newest, list(queues), list(types),
                                   owner)
        progress = await conn.fetch(
            _RUNNING_PROGRESS_AFTER, _EPOCH + timedelta(microseconds=cursor.progress_us),
            list(queues), list(types), owner)
    if start > cursor.event_id:
        cursor = replace(cursor, event_id=start)
        yield Item("gap", cursor, {"skipped_through": start})
    for row in changes:
        change = _status_change(row)
        if recent.add(change.id):
            cursor = cursor.past(change)
            yield Item("status", cursor, change)
    for row in progress:
        change = _progress_change(row)
        cursor = cursor.past(change)
        yield Item("progress", cursor, change)
