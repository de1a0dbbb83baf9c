"""jobq's Procrastinate connector, through Procrastinate's own public API, on the real database.

A deferral through Procrastinate's API is a jobq job (its rows, its history, the REST API, a
real `jobq worker` runs it); the queries of Procrastinate's worker are refused; reading and
LISTEN/NOTIFY work; the sync API and a caller's connection behave as documented.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import procrastinate
import psycopg
import pytest
from procrastinate import exceptions, jobs, sql

from service import errors
from service import jobs as service_jobs
from service.backend import Backend
from service.domain import jobtypes
from service.queue import connector as jobq_connector
from workers import leases

UTC = datetime.UTC
NOOP = jobtypes.SYSTEM_NOOP.name
SLEEP = jobtypes.SYSTEM_SLEEP.name


# -- builders and probes ---------------------------------------------------------------------


def make_job(queue: str = "q", task_name: str = NOOP, priority: int = 0, **fields: Any) -> jobs.Job:
    fields.setdefault("lock", None)
    fields.setdefault("queueing_lock", None)
    return jobs.Job(queue=queue, task_name=task_name, priority=priority, **fields)


def unique_queue(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def job_row(backend: Backend, queue_job_id: int) -> dict[str, Any] | None:
    async with backend.connection() as conn:
        row = await conn.fetchrow("SELECT * FROM procrastinate_jobs WHERE id = $1", queue_job_id)
    return dict(row) if row else None


async def jobq_job(backend: Backend, queue_job_id: int) -> dict[str, Any] | None:
    """The jobq side of a Procrastinate job: its job_overview row and its events."""
    async with backend.connection() as conn:
        row = await conn.fetchrow("SELECT * FROM job_overview WHERE queue_job_id = $1",
                                  queue_job_id)
        if row is None:
            return None
        events = await conn.fetch("SELECT event FROM job_events WHERE job_id = $1 ORDER BY id",
                                  row["id"])
    return {**dict(row), "events": [e["event"] for e in events]}


async def count_jobs(backend: Backend) -> tuple[int, int]:
    """Rows in procrastinate_jobs and in jobs: a deferral must leave both or neither."""
    async with backend.connection() as conn:
        return (await conn.fetchval("SELECT count(*) FROM procrastinate_jobs"),
                await conn.fetchval("SELECT count(*) FROM jobs"))


async def listener_pids(backend: Backend, channel: str) -> list[int]:
    """Sessions of this database whose last statement was LISTEN on `channel`."""
    async with backend.connection() as conn:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'LISTEN %' AND position($1 in query) > 0",
            channel,
        )
    return [r["pid"] for r in rows]


async def wait_until(check: Callable[[], Awaitable[Any]], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)
    return value


async def claim_one(backend: Backend, queue: str) -> leases.Claimed:
    """Take a job as a jobq worker does (a lease with its fencing token)."""
    async with backend.connection() as conn:
        worker_id = await leases.register(conn, "connector-test", "host", 1, [queue], 1)
        [claimed] = await leases.claim(conn, worker_id, "connector-test", [queue], 1)
    return claimed


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


class Rollback(Exception):
    """Raised to roll the test's transaction back."""


# -- a deferral is a jobq job ----------------------------------------------------------------


async def test_a_deferred_task_is_a_jobq_job_with_its_rows_and_history(backend: Backend, client):
    queue_job_id = await backend.queue.configure_task(name=SLEEP, queue="q", priority=3
                                                      ).defer_async(seconds=0.5)

    row = await job_row(backend, queue_job_id)
    assert (row["status"], row["task_name"], row["queue_name"], row["priority"]) == (
        "todo", SLEEP, "q", 3)
    job = await jobq_job(backend, queue_job_id)
    assert job["events"] == ["submitted"]
    # Planned like any request: the type's defaults filled in, the payload checked.
    assert job["payload"] == {"seconds": 0.5, "fail_times": 0, "permanent": False,
                              "ignore_cancel": False}
    assert job["max_attempts"] == jobtypes.SYSTEM_SLEEP.retry.max_attempts
    assert job["timeout_seconds"] == jobtypes.SYSTEM_SLEEP.timeout.total_seconds()
    listed = (await client.get("/api/v1/jobs")).json()["items"]
    assert [(j["id"], j["type"], j["status"]) for j in listed] == [
        (str(job["id"]), SLEEP, "queued")]


async def test_batch_defer_keeps_order_priorities_and_locks(backend: Backend):
    batch = [
        make_job(queue="q1", priority=0),
        make_job(queue="q2", priority=3, lock="reports"),
        make_job(queue="q1", queueing_lock="only-one",
                 scheduled_at=datetime.datetime(2030, 1, 1, tzinfo=UTC)),
    ]

    deferred = await backend.queue.job_manager.batch_defer_jobs_async(batch)

    ids = [job.id for job in deferred]
    assert ids == sorted(ids) and len(set(ids)) == 3
    assert [job.status for job in deferred] == ["todo"] * 3
    for job, queue_job_id in zip(batch, ids, strict=True):
        row = await job_row(backend, queue_job_id)
        assert (row["queue_name"], row["priority"], row["lock"], row["queueing_lock"],
                row["scheduled_at"]) == (job.queue, job.priority, job.lock, job.queueing_lock,
                                         job.scheduled_at)
        assert (await jobq_job(backend, queue_job_id))["events"] == ["submitted"]
    assert (await jobq_job(backend, ids[2]))["status"] == "scheduled"


async def test_an_unknown_task_is_refused_naming_the_known_types(backend: Backend):
    with pytest.raises(errors.UnknownJobType, match=NOOP):
        await backend.queue.configure_task(name="nobody.declared.this").defer_async()
    assert await count_jobs(backend) == (0, 0)


async def test_a_payload_its_type_refuses_names_the_field(backend: Backend):
    with pytest.raises(errors.InvalidRequest) as caught:
        await backend.queue.configure_task(name=SLEEP).defer_async(seconds="soon")
    assert [f.field for f in caught.value.fields] == ["payload.seconds"]
    assert await count_jobs(backend) == (0, 0)


async def test_second_todo_job_with_the_same_queueing_lock_is_already_enqueued(backend: Backend):
    manager = backend.queue.job_manager
    await manager.defer_job_async(make_job(queueing_lock="L"))

    with pytest.raises(exceptions.AlreadyEnqueued, match=r"queueing lock L$"):
        await manager.defer_job_async(make_job(queueing_lock="L"))

    assert await count_jobs(backend) == (1, 1)


# -- the caller's transaction, and a real worker ---------------------------------------------


async def test_deferred_in_a_committed_transaction_runs_on_a_jobq_worker(
    backend: Backend, client, start_worker
):
    queue = unique_queue("tx")
    async with backend.transaction() as conn:
        await conn.execute("INSERT INTO queues (name) VALUES ($1)", queue)
        deferrer = backend.queue.configure_task(name=SLEEP, queue=queue, connection=conn)
        queue_job_id = await deferrer.defer_async(seconds=0.1)
        assert await count_jobs(backend) == (0, 0), "visible outside before COMMIT"
    start_worker("--queues", queue)

    async def succeeded() -> dict | None:
        items = (await client.get(f"/api/v1/jobs?queue={queue}")).json()["items"]
        return items[0] if items and items[0]["status"] == "succeeded" else None

    job = await wait_until(succeeded, timeout=30)
    assert job["type"] == SLEEP and job["attempts"] == 1
    history = (await client.get(f"/api/v1/jobs/{job['id']}/history")).json()
    assert [e["event"] for e in history["items"]] == ["submitted", "started", "succeeded"]
    # Run under a jobq lease: one attempt, recorded with its worker.
    assert [a["outcome"] for a in history["attempts"]] == ["succeeded"]
    assert history["attempts"][0]["worker"]
    assert (await job_row(backend, queue_job_id))["status"] == "succeeded"


async def test_deferred_in_a_rolled_back_transaction_never_exists(
    backend: Backend, client, start_worker
):
    queue = unique_queue("tx")
    start_worker("--queues", queue)
    with pytest.raises(Rollback):
        async with backend.transaction() as conn:
            queue_job_id = await backend.queue.configure_task(
                name=NOOP, queue=queue, connection=conn).defer_async()
            assert await conn.fetchval(
                "SELECT count(*) FROM jobs j JOIN procrastinate_jobs pj ON pj.id = j.queue_job_id"
                " WHERE pj.id = $1", queue_job_id) == 1
            raise Rollback

    # Another job on the same queue runs, so the worker was there to run the first one too.
    witness = await backend.queue.configure_task(name=NOOP, queue=queue).defer_async()
    await wait_until(lambda: _status_is(backend, witness, "succeeded"), timeout=30)
    assert await job_row(backend, queue_job_id) is None
    assert len((await client.get(f"/api/v1/jobs?queue={queue}")).json()["items"]) == 1


async def _status_is(backend: Backend, queue_job_id: int, status: str) -> bool:
    job = await jobq_job(backend, queue_job_id)
    return job is not None and job["status"] == status


async def test_a_sqlalchemy_connection_is_the_callers_transaction_too(backend: Backend):
    with pytest.raises(Rollback):
        async with backend.engine.begin() as conn:
            await backend.queue.configure_task(name=NOOP, connection=conn).defer_async()
            raise Rollback
    assert await count_jobs(backend) == (0, 0)

    async with backend.engine.begin() as conn:
        queue_job_id = await backend.queue.configure_task(name=NOOP, connection=conn
                                                          ).defer_async()
    assert (await jobq_job(backend, queue_job_id))["events"] == ["submitted"]


async def test_a_foreign_connection_gets_a_connector_exception(backend: Backend, database_url):
    async with await psycopg.AsyncConnection.connect(database_url) as foreign:
        with pytest.raises(exceptions.ConnectorException, match="psycopg"):
            await backend.queue.configure_task(name=NOOP, connection=foreign).defer_async()
    with pytest.raises(exceptions.ConnectorException, match=r"builtins\.object"):
        await backend.queue.configure_task(name=NOOP, connection=object()).defer_async()
    assert await count_jobs(backend) == (0, 0)


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

    async with backend.connection() as conn:
        locked = await conn.fetch("SELECT id FROM procrastinate_jobs WHERE queueing_lock = 'L'")
    assert [r["id"] for r in locked] == [first.id]
    assert await count_jobs(backend) == (1, 1)


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

    assert await count_jobs(backend) == (0, 0)


# -- JSON hooks ------------------------------------------------------------------------------


async def test_json_dumps_encodes_the_arguments_of_a_deferral(backend: Backend, database_url):
    def dumps(value: Any) -> str:
        return json.dumps(value, default=float)  # Decimal, which JSON has no word for

    connector = jobq_connector.AsyncpgConnector(dsn=database_url, json_dumps=dumps)
    async with procrastinate.App(connector=connector).open_async() as app:
        queue_job_id = await app.configure_task(name=SLEEP).defer_async(
            seconds=decimal.Decimal("0.25"))
    assert (await jobq_job(backend, queue_job_id))["payload"]["seconds"] == 0.25


async def test_json_loads_decodes_the_json_columns_read(backend: Backend, database_url):
    seen: list[str] = []

    def loads(text: str) -> Any:
        seen.append(text)
        return {"decoded": json.loads(text)}

    connector = jobq_connector.AsyncpgConnector(dsn=database_url, json_loads=loads)
    async with procrastinate.App(connector=connector).open_async() as app:
        await app.configure_task(name=NOOP, queue="q").defer_async()
        [listed] = list(await app.job_manager.list_jobs_async(queue="q"))
    # A jobq job's payload lives in jobs.payload; Procrastinate's args column holds {}.
    assert listed.task_kwargs == {"decoded": {}}
    assert seen == ["{}"]


# -- the synchronous API ---------------------------------------------------------------------


async def test_sync_defer_in_a_thread_uses_a_connection_of_its_own(backend: Backend,
                                                                   database_url):
    app = procrastinate.App(connector=jobq_connector.AsyncpgConnector(dsn=database_url))

    def defer_twice() -> list[int]:
        with app.open():
            return [app.configure_task(name=NOOP).defer(),
                    app.configure_task(name=SLEEP).defer(seconds=0.1)]

    ids = await asyncio.to_thread(defer_twice)

    assert [(await jobq_job(backend, i))["type"] for i in ids] == [NOOP, SLEEP]
    assert app.connector._pool is None  # nothing pooled, nothing left open


async def test_sync_defer_beside_the_open_async_app_shares_none_of_its_connections(
    backend: Backend,
):
    # The backend's app is open on this event loop's pool; a sync call from another thread
    # runs in another event loop and must not borrow those connections.
    queue_job_id = await asyncio.to_thread(
        lambda: backend.queue.configure_task(name=NOOP).defer())
    assert (await jobq_job(backend, queue_job_id))["events"] == ["submitted"]


async def test_sync_api_refuses_a_pool_and_a_callers_connection(database_url):
    app = procrastinate.App(connector=jobq_connector.AsyncpgConnector(dsn=database_url))
    with pytest.raises(exceptions.ConnectorException, match="pass no pool"):
        app.open(object())

    def defer_on(connection: object) -> None:
        with app.open():
            app.configure_task(name=NOOP, connection=connection).defer()

    with pytest.raises(exceptions.ConnectorException, match="synchronous code"):
        await asyncio.to_thread(defer_on, object())


async def test_sync_api_before_open_says_the_app_is_not_open(database_url):
    app = procrastinate.App(connector=jobq_connector.AsyncpgConnector(dsn=database_url))
    with pytest.raises(exceptions.AppNotOpen):
        await asyncio.to_thread(lambda: app.configure_task(name=NOOP).defer())


# -- what Procrastinate does not do in jobq --------------------------------------------------


@pytest.mark.parametrize("name", sorted(jobq_connector.REFUSED))
async def test_queries_of_procrastinates_worker_are_refused(backend: Backend, name: str):
    with pytest.raises(exceptions.ConnectorException, match=name):
        await backend.queue.connector.execute_query_all_async(sql.queries[name])


async def test_procrastinates_worker_does_not_start_on_jobqs_connector(backend: Backend):
    app = procrastinate.App(connector=backend.queue.connector)
    await app.configure_task(name=NOOP, queue="q").defer_async()

    with pytest.raises(exceptions.ConnectorException, match="jobq worker"):
        await asyncio.wait_for(
            app.run_worker_async(queues=["q"], wait=False, install_signal_handlers=False),
            timeout=30)

    assert (await job_row(backend, 1))["status"] == "todo"


# -- reading, LISTEN/NOTIFY ------------------------------------------------------


async def test_status_of_an_unknown_job_raises_no_result(backend: Backend):
    with pytest.raises(exceptions.NoResult):
        await backend.queue.job_manager.get_job_status_async(424242)


async def test_list_jobs_and_status_read_back_through_the_connector(backend: Backend):
    manager = backend.queue.job_manager
    first = await manager.defer_job_async(make_job(lock="k"))
    await manager.defer_job_async(make_job(queue="other"))

    listed = list(await manager.list_jobs_async(queue="q"))

    assert [(j.id, j.task_name, j.lock) for j in listed] == [(first.id, NOOP, "k")]
    assert await manager.get_job_status_async(first.id) == jobs.Status.TODO
    queues = {q["name"]: q for q in await manager.list_queues_async()}
    assert (queues["q"]["todo"], queues["other"]["todo"]) == (1, 1)


async def test_stalled_jobs_are_those_of_workers_silent_past_the_threshold(backend: Backend):
    # `seconds_since_heartbeat || ' SECOND'` makes the parameter text: a float must become str.
    manager = backend.queue.job_manager
    job = await manager.defer_job_async(make_job())
    await claim_one(backend, "q")

    assert list(await manager.get_stalled_jobs(seconds_since_heartbeat=3600)) == []
    stalled = list(await manager.get_stalled_jobs(seconds_since_heartbeat=0))

    assert [j.id for j in stalled] == [job.id]


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
    job = await backend.queue.job_manager.defer_job_async(make_job(queue=queue))
    claimed = await claim_one(backend, queue)
    async with listening(backend, queue) as received:
        # jobq cancels through jobq_cancel_job; Procrastinate's trigger announces the abort.
        await service_jobs.cancel_job(backend, claimed.job_id)

        notification = await next_notification(received)

    assert notification == {"type": "abort_job_requested", "job_id": job.id}
