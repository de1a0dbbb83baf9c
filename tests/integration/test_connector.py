"""The asyncpg connector under Procrastinate's own job manager and worker, on the real database.

Every test goes through Procrastinate's public API (job manager, app, worker) so the SQL is the
library's own, and checks what the connector left in `procrastinate_*` tables.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import procrastinate
import pytest
from procrastinate import exceptions, jobs, periodic

from service.backend import Backend

UTC = datetime.UTC


# -- builders and probes ---------------------------------------------------------------------


def make_job(
    queue: str = "q", task_name: str = "x", priority: int = 0, **fields: Any
) -> jobs.Job:
    fields.setdefault("lock", None)
    fields.setdefault("queueing_lock", None)
    return jobs.Job(queue=queue, task_name=task_name, priority=priority, **fields)


def unique_queue(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def job_row(backend: Backend, job_id: int) -> dict[str, Any] | None:
    async with backend.connection() as conn:
        row = await conn.fetchrow("SELECT * FROM procrastinate_jobs WHERE id = $1", job_id)
    return dict(row) if row else None


async def count_jobs(backend: Backend) -> int:
    async with backend.connection() as conn:
        return await conn.fetchval("SELECT count(*) FROM procrastinate_jobs")


async def event_types(backend: Backend, job_id: int) -> list[str]:
    async with backend.connection() as conn:
        rows = await conn.fetch(
            "SELECT type::text FROM procrastinate_events WHERE job_id = $1 ORDER BY id", job_id
        )
    return [r["type"] for r in rows]


async def fetch_doing(backend: Backend, job: jobs.Job) -> jobs.Job:
    """Defer `job` and take it as a worker would: the job comes back in status doing."""
    manager = backend.queue.job_manager
    await manager.defer_job_async(job)
    fetched = await manager.fetch_job(queues=[job.queue], worker_id=await manager.register_worker())
    assert fetched is not None
    return fetched


async def listener_pids(backend: Backend, channel: str) -> list[int]:
    """Sessions of this database whose last statement was LISTEN on `channel`."""
    async with backend.connection() as conn:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'LISTEN %' AND position($1 in query) > 0",
            channel,
        )
    return [r["pid"] for r in rows]


async def wait_until(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def listening(
    backend: Backend, queue: str
) -> AsyncIterator[asyncio.Queue[jobs.Notification]]:
    """Run `listen_for_jobs` on `queue` in a task; yield the notifications it receives."""
    received: asyncio.Queue[jobs.Notification] = asyncio.Queue()

    async def on_notification(*, channel: str, notification: jobs.Notification) -> None:
        received.put_nowait(notification)

    channel = f"procrastinate_queue_v1#{queue}"
    listener = asyncio.create_task(
        backend.queue.job_manager.listen_for_jobs(on_notification=on_notification, queues=[queue])
    )
    try:
        await wait_until(lambda: _is_listening(backend, channel, listener))
        yield received
    finally:
        listener.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await listener
        # Cancelling closes the LISTEN connection rather than leaking it.
        await wait_until(lambda: _is_not_listening(backend, channel))


async def _is_listening(backend: Backend, channel: str, listener: asyncio.Task) -> bool:
    if listener.done():
        listener.result()  # the listener died: show why
        raise AssertionError("listen_for_jobs returned")
    return bool(await listener_pids(backend, channel))


async def _is_not_listening(backend: Backend, channel: str) -> bool:
    return not await listener_pids(backend, channel)


async def next_notification(
    received: asyncio.Queue[jobs.Notification], timeout: float = 2.0
) -> jobs.Notification:
    return await asyncio.wait_for(received.get(), timeout)


# -- defer -----------------------------------------------------------------------------------


async def test_defer_through_a_configured_task_inserts_one_todo_row(backend: Backend):
    job_id = await backend.queue.configure_task(name="x", queue="q").defer_async(a=1)

    row = await job_row(backend, job_id)
    assert row is not None
    assert row["status"] == "todo"
    assert row["args"] == {"a": 1}
    assert row["queue_name"] == "q"
    assert row["task_name"] == "x"
    assert row["attempts"] == 0
    assert row["scheduled_at"] is None
    assert await count_jobs(backend) == 1
    assert await event_types(backend, job_id) == ["deferred"]


async def test_batch_defer_inserts_every_job_and_returns_ids_in_order(backend: Backend):
    batch = [
        make_job(queue="q1", task_name="first", task_kwargs={"n": 1}),
        make_job(queue="q2", task_name="second", task_kwargs={"n": 2}, priority=3),
        make_job(queue="q1", task_name="third", task_kwargs={"n": 3}, queueing_lock="only-one"),
    ]

    deferred = await backend.queue.job_manager.batch_defer_jobs_async(batch)

    ids = [job.id for job in deferred]
    assert all(isinstance(i, int) for i in ids)
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [job.status for job in deferred] == ["todo"] * 3
    for job, job_id in zip(batch, ids, strict=True):
        row = await job_row(backend, job_id)
        assert row is not None
        assert (row["task_name"], row["queue_name"], row["priority"], row["args"]) == (
            job.task_name, job.queue, job.priority, job.task_kwargs,
        )
        assert row["queueing_lock"] == job.queueing_lock
    assert await count_jobs(backend) == 3


async def test_json_arguments_round_trip_through_defer_and_fetch(backend: Backend):
    arguments = {
        "text": "héllo ✓ \"quoted\" \\ back",
        "nested": {"list": [1, 2.5, None, True], "empty": {}},
        "big": 2**53,
    }
    manager = backend.queue.job_manager
    deferred = await manager.defer_job_async(make_job(task_kwargs=arguments))

    fetched = await manager.fetch_job(queues=["q"], worker_id=await manager.register_worker())

    assert fetched is not None and fetched.id == deferred.id
    assert fetched.task_kwargs == arguments
    assert (await job_row(backend, deferred.id))["args"] == arguments


async def test_second_todo_job_with_the_same_queueing_lock_is_already_enqueued(backend: Backend):
    manager = backend.queue.job_manager
    await manager.defer_job_async(make_job(queueing_lock="L"))

    with pytest.raises(exceptions.AlreadyEnqueued, match=r"queueing lock L$"):
        await manager.defer_job_async(make_job(queueing_lock="L"))

    assert await count_jobs(backend) == 1


# -- fetch, finish, retry, cancel ------------------------------------------------------------


async def test_fetch_takes_highest_priority_then_oldest_and_marks_it_doing(backend: Backend):
    manager = backend.queue.job_manager
    low, high_old, high_new = await manager.batch_defer_jobs_async(
        [make_job(priority=0), make_job(priority=5), make_job(priority=5)]
    )
    worker_id = await manager.register_worker()

    order = [await manager.fetch_job(queues=["q"], worker_id=worker_id) for _ in range(3)]

    assert [job.id for job in order] == [high_old.id, high_new.id, low.id]
    for job in order:
        assert job.status == "doing"
        row = await job_row(backend, job.id)
        assert (row["status"], row["worker_id"]) == ("doing", worker_id)
    assert await manager.fetch_job(queues=["q"], worker_id=worker_id) is None


async def test_fetch_returns_none_when_only_future_or_other_queue_jobs_exist(backend: Backend):
    manager = backend.queue.job_manager
    later = datetime.datetime.now(UTC) + datetime.timedelta(hours=1)
    future = await manager.defer_job_async(make_job(priority=10, scheduled_at=later))
    elsewhere = await manager.defer_job_async(make_job(queue="other"))
    worker_id = await manager.register_worker()

    assert await manager.fetch_job(queues=["q"], worker_id=worker_id) is None

    row = await job_row(backend, future.id)
    assert (row["status"], row["scheduled_at"]) == ("todo", later)
    assert (await job_row(backend, elsewhere.id))["status"] == "todo"


async def test_fetch_with_no_queue_filter_takes_any_queue(backend: Backend):
    manager = backend.queue.job_manager
    deferred = await manager.defer_job_async(make_job(queue="anywhere"))

    fetched = await manager.fetch_job(queues=None, worker_id=await manager.register_worker())

    assert fetched is not None and fetched.id == deferred.id


async def test_finish_records_succeeded_or_failed_and_counts_the_attempt(backend: Backend):
    manager = backend.queue.job_manager
    succeeding = await fetch_doing(backend, make_job(task_name="ok"))
    failing = await fetch_doing(backend, make_job(task_name="ko"))

    await manager.finish_job(succeeding, status=jobs.Status.SUCCEEDED, delete_job=False)
    await manager.finish_job_by_id_async(failing.id, status=jobs.Status.FAILED, delete_job=False)

    ok, ko = await job_row(backend, succeeding.id), await job_row(backend, failing.id)
    assert (ok["status"], ok["attempts"]) == ("succeeded", 1)
    assert (ko["status"], ko["attempts"]) == ("failed", 1)
    assert await event_types(backend, failing.id) == ["deferred", "started", "failed"]


async def test_finish_with_delete_removes_the_job(backend: Backend):
    job = await fetch_doing(backend, make_job())

    await backend.queue.job_manager.finish_job(job, status=jobs.Status.SUCCEEDED, delete_job=True)

    assert await job_row(backend, job.id) is None


async def test_finishing_a_finished_job_raises_a_connector_exception(backend: Backend):
    manager = backend.queue.job_manager
    job = await fetch_doing(backend, make_job())
    await manager.finish_job(job, status=jobs.Status.SUCCEEDED, delete_job=False)

    with pytest.raises(exceptions.ConnectorException, match="not in"):
        await manager.finish_job(job, status=jobs.Status.FAILED, delete_job=False)

    assert (await job_row(backend, job.id))["status"] == "succeeded"


async def test_retry_puts_the_job_back_to_todo_at_the_given_time(backend: Backend):
    manager = backend.queue.job_manager
    job = await fetch_doing(backend, make_job())
    retry_at = datetime.datetime.now(UTC) + datetime.timedelta(minutes=10)

    await manager.retry_job_by_id_async(job.id, retry_at=retry_at)

    row = await job_row(backend, job.id)
    assert (row["status"], row["scheduled_at"], row["attempts"]) == ("todo", retry_at, 1)
    assert await manager.fetch_job(queues=["q"], worker_id=job.worker_id) is None
    # Both triggers fire on the same UPDATE; PostgreSQL orders them by trigger name.
    assert sorted(await event_types(backend, job.id)) == [
        "deferred", "deferred_for_retry", "scheduled", "started",
    ]


async def test_retry_can_move_the_job_to_another_queue_and_priority(backend: Backend):
    manager = backend.queue.job_manager
    job = await fetch_doing(backend, make_job())

    await manager.retry_job(job, priority=7, queue="elsewhere")

    row = await job_row(backend, job.id)
    assert (row["status"], row["queue_name"], row["priority"]) == ("todo", "elsewhere", 7)
    refetched = await manager.fetch_job(queues=["elsewhere"], worker_id=job.worker_id)
    assert refetched is not None and refetched.attempts == 1


async def test_cancel_of_a_todo_job_makes_it_cancelled(backend: Backend):
    manager = backend.queue.job_manager
    job = await manager.defer_job_async(make_job())

    assert await manager.cancel_job_by_id_async(job.id) is True

    assert (await job_row(backend, job.id))["status"] == "cancelled"
    assert await manager.fetch_job(queues=["q"], worker_id=await manager.register_worker()) is None
    assert await manager.cancel_job_by_id_async(job.id) is False


async def test_abort_of_a_doing_job_flags_it_for_the_worker(backend: Backend):
    manager = backend.queue.job_manager
    job = await fetch_doing(backend, make_job())

    # Without abort, a running job is left alone.
    assert await manager.cancel_job_by_id_async(job.id) is False
    assert not (await job_row(backend, job.id))["abort_requested"]

    assert await manager.cancel_job_by_id_async(job.id, abort=True) is True

    row = await job_row(backend, job.id)
    assert (row["status"], row["abort_requested"]) == ("doing", True)
    assert list(await manager.list_jobs_to_abort_async()) == [job.id]
    assert list(await manager.list_jobs_to_abort_async(queue="other")) == []


async def test_cancel_of_an_unknown_job_returns_false(backend: Backend):
    assert await backend.queue.job_manager.cancel_job_by_id_async(424242) is False


async def test_status_of_an_unknown_job_raises_no_result(backend: Backend):
    with pytest.raises(exceptions.NoResult):
        await backend.queue.job_manager.get_job_status_async(424242)


async def test_list_jobs_and_status_read_back_through_the_connector(backend: Backend):
    manager = backend.queue.job_manager
    first = await manager.defer_job_async(make_job(task_name="a", lock="k"))
    await manager.defer_job_async(make_job(task_name="b", queue="other"))

    listed = list(await manager.list_jobs_async(queue="q"))

    assert [(j.id, j.task_name, j.lock) for j in listed] == [(first.id, "a", "k")]
    assert await manager.get_job_status_async(first.id) == jobs.Status.TODO
    queues = {q["name"]: q for q in await manager.list_queues_async()}
    assert (queues["q"]["todo"], queues["other"]["todo"]) == (1, 1)


async def test_stalled_jobs_are_those_of_workers_silent_past_the_threshold(backend: Backend):
    # `seconds_since_heartbeat || ' SECOND'` makes the parameter text: a float must become str.
    manager = backend.queue.job_manager
    job = await fetch_doing(backend, make_job())

    assert list(await manager.get_stalled_jobs(seconds_since_heartbeat=3600)) == []
    stalled = list(await manager.get_stalled_jobs(seconds_since_heartbeat=0))

    assert [j.id for j in stalled] == [job.id]


async def test_delete_old_jobs_removes_finished_jobs_only(backend: Backend):
    # `nb_hours || 'HOUR'`: another parameter the server types as text.
    manager = backend.queue.job_manager
    finished = await fetch_doing(backend, make_job())
    await manager.finish_job(finished, status=jobs.Status.SUCCEEDED, delete_job=False)
    waiting = await manager.defer_job_async(make_job())

    await manager.delete_old_jobs(nb_hours=1)
    assert await count_jobs(backend) == 2
    await manager.delete_old_jobs(nb_hours=0)

    assert await job_row(backend, finished.id) is None
    assert await job_row(backend, waiting.id) is not None


# -- LISTEN/NOTIFY ---------------------------------------------------------------------------


async def test_listener_is_woken_by_a_deferred_job(backend: Backend):
    queue = unique_queue("listen")
    async with listening(backend, queue) as received:
        job = await backend.queue.job_manager.defer_job_async(make_job(queue=queue))

        notification = await next_notification(received)

    assert notification == {"type": "job_inserted", "job_id": job.id}


async def test_listener_hears_nothing_from_other_queues(backend: Backend):
    queue = unique_queue("listen")
    async with listening(backend, queue) as received:
        await backend.queue.job_manager.defer_job_async(make_job(queue=unique_queue("other")))
        mine = await backend.queue.job_manager.defer_job_async(make_job(queue=queue))

        notification = await next_notification(received)

    assert notification["job_id"] == mine.id
    assert received.empty()


async def test_job_deferred_in_a_transaction_notifies_only_at_commit(backend: Backend):
    queue = unique_queue("listen")
    async with listening(backend, queue) as received:
        async with backend.transaction() as conn:
            job = await backend.queue.job_manager.defer_job_async(
                make_job(queue=queue), connection=conn
            )
            await asyncio.sleep(0.5)
            assert received.empty(), "notified before COMMIT"

        notification = await next_notification(received)

    assert notification == {"type": "job_inserted", "job_id": job.id}


async def test_listener_reconnects_after_its_connection_is_killed(backend: Backend):
    queue = unique_queue("listen")
    channel = f"procrastinate_queue_v1#{queue}"
    async with listening(backend, queue) as received:
        [killed] = await listener_pids(backend, channel)
        async with backend.connection() as conn:
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", killed)

        async def listening_again() -> bool:
            return bool(set(await listener_pids(backend, channel)) - {killed})

        await wait_until(listening_again, timeout=10)
        job = await backend.queue.job_manager.defer_job_async(make_job(queue=queue))

        notification = await next_notification(received)

    assert notification == {"type": "job_inserted", "job_id": job.id}


async def test_abort_request_reaches_the_listener(backend: Backend):
    queue = unique_queue("listen")
    job = await fetch_doing(backend, make_job(queue=queue))
    async with listening(backend, queue) as received:
        await backend.queue.job_manager.cancel_job_by_id_async(job.id, abort=True)

        notification = await next_notification(received)

    assert notification == {"type": "abort_job_requested", "job_id": job.id}


# -- periodic --------------------------------------------------------------------------------


async def test_periodic_defer_creates_one_job_per_timestamp(backend: Backend):
    manager = backend.queue.job_manager
    tick = 1_800_000_000

    def job_at(timestamp: int) -> jobs.Job:
        return make_job(task_name="tick", task_kwargs={"timestamp": timestamp})

    first = await manager.defer_periodic_job(job_at(tick), periodic_id="p", defer_timestamp=tick)
    again = await manager.defer_periodic_job(job_at(tick), periodic_id="p", defer_timestamp=tick)

    assert isinstance(first, int)
    assert again is None
    assert await count_jobs(backend) == 1
    row = await job_row(backend, first)
    assert (row["task_name"], row["args"], row["status"]) == ("tick", {"timestamp": tick}, "todo")

    later = await manager.defer_periodic_job(
        job_at(tick + 60), periodic_id="p", defer_timestamp=tick + 60
    )
    assert isinstance(later, int) and later != first
    async with backend.connection() as conn:
        defers = await conn.fetch(
            "SELECT defer_timestamp, job_id FROM procrastinate_periodic_defers ORDER BY id"
        )
    # Only the newest defer per (task, periodic id) is kept.
    assert [(d["defer_timestamp"], d["job_id"]) for d in defers] == [(tick + 60, later)]


async def test_periodic_defer_refuses_a_job_without_its_timestamp(backend: Backend):
    with pytest.raises(exceptions.InvalidTimestamp):
        await backend.queue.job_manager.defer_periodic_job(
            make_job(task_kwargs={}), periodic_id="p", defer_timestamp=1
        )
    assert await count_jobs(backend) == 0


async def test_two_periodic_deferrers_defer_a_tick_once(backend: Backend):
    app = procrastinate.App(connector=backend.queue.connector)

    @app.periodic(cron="* * * * *", periodic_id="minutely")
    @app.task(name="connector_test.minutely", queue="q")
    async def minutely(timestamp: int) -> None:
        pass

    now = time.time()
    for _ in range(2):  # two workers, each with its own deferrer, at the same moment
        deferrer = periodic.PeriodicDeferrer(registry=app.periodic_registry)
        await deferrer.defer_jobs(deferrer.get_previous_tasks(at=now))

    async with backend.connection() as conn:
        rows = await conn.fetch("SELECT task_name, args FROM procrastinate_jobs")
    expected_tick = int(now // 60 * 60)
    assert [(r["task_name"], r["args"]) for r in rows] == [
        ("connector_test.minutely", {"timestamp": expected_tick})
    ]


# -- the caller's connection and transaction -------------------------------------------------


class Rollback(Exception):
    """Raised to roll the test's transaction back."""


async def test_job_deferred_on_the_callers_connection_vanishes_on_rollback(backend: Backend):
    with pytest.raises(Rollback):
        async with backend.transaction() as conn:
            job = await backend.queue.job_manager.defer_job_async(make_job(), connection=conn)
            assert await conn.fetchval(
                "SELECT count(*) FROM procrastinate_jobs WHERE id = $1", job.id
            ) == 1
            assert await count_jobs(backend) == 0, "visible outside before COMMIT"
            raise Rollback

    assert await count_jobs(backend) == 0


async def test_task_configured_with_the_callers_connection_commits_with_it(backend: Backend):
    async with backend.transaction() as conn:
        await conn.execute("INSERT INTO queues (name) VALUES ('mine')")
        deferrer = backend.queue.configure_task(name="x", queue="q", connection=conn)
        job_id = await deferrer.defer_async(a=1)
        assert await count_jobs(backend) == 0, "visible outside before COMMIT"

    assert (await job_row(backend, job_id))["args"] == {"a": 1}
    async with backend.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM queues WHERE name = 'mine'") == 1


async def test_queueing_lock_clash_in_a_savepoint_leaves_the_outer_transaction_usable(
    backend: Backend,
):
    manager = backend.queue.job_manager
    async with backend.transaction() as conn:
        await conn.execute("INSERT INTO queues (name) VALUES ('x')")
        first = await manager.defer_job_async(make_job(queueing_lock="L"), connection=conn)

        with pytest.raises(exceptions.AlreadyEnqueued, match=r"queueing lock L$"):
            async with conn.transaction():  # nested: a SAVEPOINT
                await manager.defer_job_async(make_job(queueing_lock="L"), connection=conn)

        # The transaction is still alive: this would fail if it were aborted.
        assert await conn.fetchval("SELECT count(*) FROM queues WHERE name = 'x'") == 1
        assert await count_jobs(backend) == 0, "the first job must wait for our COMMIT"

    async with backend.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM queues WHERE name = 'x'") == 1
        locked = await conn.fetch("SELECT id FROM procrastinate_jobs WHERE queueing_lock = 'L'")
    assert [r["id"] for r in locked] == [first.id]


async def test_queueing_lock_clash_without_a_savepoint_aborts_the_callers_transaction(
    backend: Backend,
):
    """Why the savepoint above is needed: PostgreSQL aborts the whole transaction."""
    manager = backend.queue.job_manager
    with pytest.raises(exceptions.ConnectorException, match="aborted"):
        async with backend.transaction() as conn:
            await manager.defer_job_async(make_job(queueing_lock="L"), connection=conn)
            with pytest.raises(exceptions.AlreadyEnqueued):
                await manager.defer_job_async(make_job(queueing_lock="L"), connection=conn)
            await manager.defer_job_async(make_job(), connection=conn)

    assert await count_jobs(backend) == 0


# -- the stock Procrastinate worker ----------------------------------------------------------


def worker_app(backend: Backend) -> procrastinate.App:
    """A fresh app (its own task registry) on the backend's open connector."""
    return procrastinate.App(connector=backend.queue.connector)


async def run_worker_until_idle(app: procrastinate.App, queue: str) -> None:
    await asyncio.wait_for(
        app.run_worker_async(queues=[queue], wait=False, install_signal_handlers=False),
        timeout=30,
    )


async def test_stock_worker_runs_a_job_to_success(backend: Backend):
    app, queue, seen = worker_app(backend), unique_queue("work"), []

    @app.task(name="connector_test.record", queue=queue)
    async def record(value: str) -> str:
        seen.append(value)
        return value

    job_id = await record.defer_async(value="ran")
    await run_worker_until_idle(app, queue)

    assert seen == ["ran"]
    row = await job_row(backend, job_id)
    assert (row["status"], row["attempts"]) == ("succeeded", 1)
    assert await event_types(backend, job_id) == ["deferred", "started", "succeeded"]
    async with backend.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM procrastinate_workers") == 0


async def test_stock_worker_runs_a_sync_task_that_defers_another_job(backend: Backend):
    # A sync task runs in a thread; its blocking `defer` reaches the connector through
    # Procrastinate's async_to_sync, which runs the query on the worker's event loop.
    app, queue, seen = worker_app(backend), unique_queue("work"), []

    @app.task(name="connector_test.follow_up", queue=queue)
    def follow_up(value: int) -> None:
        seen.append(("follow_up", value))

    @app.task(name="connector_test.sync_record", queue=queue)
    def sync_record(value: int) -> None:
        seen.append(("sync_record", value))
        follow_up.defer(value=value * 10)

    job_id = await sync_record.defer_async(value=4)
    await run_worker_until_idle(app, queue)

    assert seen == [("sync_record", 4), ("follow_up", 40)]
    async with backend.connection() as conn:
        rows = await conn.fetch(
            "SELECT task_name, args, status FROM procrastinate_jobs ORDER BY id"
        )
    assert [(r["task_name"], r["args"], r["status"]) for r in rows] == [
        ("connector_test.sync_record", {"value": 4}, "succeeded"),
        ("connector_test.follow_up", {"value": 40}, "succeeded"),
    ]
    assert (await job_row(backend, job_id))["attempts"] == 1


async def test_stock_worker_fails_a_job_after_its_one_retry(backend: Backend):
    app, queue, runs = worker_app(backend), unique_queue("work"), []

    @app.task(name="connector_test.broken", queue=queue, retry=1)
    async def broken() -> None:
        runs.append(time.monotonic())
        raise RuntimeError("always broken")

    job_id = await broken.defer_async()
    await run_worker_until_idle(app, queue)

    # retry=1 is RetryStrategy(max_attempts=1): one retry, so two runs.
    assert len(runs) == 2
    row = await job_row(backend, job_id)
    assert (row["status"], row["attempts"]) == ("failed", 2)
    assert sorted(await event_types(backend, job_id)) == [
        "deferred", "deferred_for_retry", "failed", "scheduled", "started", "started",
    ]


async def test_stock_worker_defers_and_runs_a_periodic_task(backend: Backend):
    app, queue, ticks = worker_app(backend), unique_queue("work"), []

    @app.periodic(cron="* * * * * *", periodic_id="every-second")  # sixth field: seconds
    @app.task(name="connector_test.every_second", queue=queue)
    async def every_second(timestamp: int) -> None:
        ticks.append(timestamp)

    async def ran_once() -> bool:
        async with backend.connection() as conn:
            return await conn.fetchval(
                "SELECT count(*) FROM procrastinate_jobs"
                " WHERE task_name = 'connector_test.every_second' AND status = 'succeeded'"
            ) > 0

    started = time.time()
    worker = asyncio.create_task(
        app.run_worker_async(
            queues=[queue], install_signal_handlers=False, fetch_job_polling_interval=0.2
        )
    )
    try:
        await wait_until(ran_once, timeout=10)
    finally:
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(worker, timeout=10)

    assert ticks and started - 2 <= ticks[0] <= time.time()
    async with backend.connection() as conn:
        defers = await conn.fetch(
            "SELECT d.defer_timestamp, j.args FROM procrastinate_periodic_defers d"
            " JOIN procrastinate_jobs j ON j.id = d.job_id WHERE d.periodic_id = 'every-second'"
        )
    # The deferrer keeps its newest tick, linked to the job it created for that tick.
    assert [d["args"] for d in defers] == [{"timestamp": d["defer_timestamp"]} for d in defers]
    assert len(defers) == 1
