"""Submitting jobs from Python, inside the caller's own transaction."""

from __future__ import annotations

import uuid
from typing import Any

from service import errors, jobs
from service.domain import jobtypes, requests
from service.queue import connector


async def enqueue(connection: Any, task: jobtypes.Task | str, payload: dict[str, Any] | None = None,
                  /, **options: Any) -> uuid.UUID:
    """Submit one job of `task` (a declared task or a type's name) on `connection`: the
    asyncpg connection of your transaction, or a SQLAlchemy AsyncConnection on asyncpg. The job
    exists, and wakes a worker, only if that transaction commits. Returns the job's id.

    `options` are those of `POST /api/v1/jobs`: queue, priority, run_at, delay_seconds,
    max_attempts, timeout_seconds, callback_url, backoff (a dict), lock, queueing_lock, key.
    A payload or option the type refuses raises jobq.InvalidRequest naming the field.
    """
    name = task.name if isinstance(task, jobtypes.Task) else task
    backoff = options.pop("backoff", None)
    try:
        request = requests.JobRequest(
            type=name, payload=payload or {},
            backoff=None if backoff is None else requests.Backoff(**backoff), **options)
    except TypeError as exc:
        raise errors.InvalidRequest(f"enqueue: {exc}") from None
    conn = await connector._driver(connection)
    [job_id] = await jobs.enqueue(conn, [request])
    return job_id


jobtypes.Task.deferrer = enqueue
