"""Queue-level use-cases: statistics, settings (pause, limits, defaults, retention), live
workers."""

from __future__ import annotations

from typing import Any

from service import errors
from service.backend import Backend
from service.db import engine as db_engine
from service.domain import policies, requests
from service.domain.status import Status
from service.jobs import QUEUE_NAME

_STATS = """
WITH counts AS (
    -- Kept by triggers in the transaction of every change (revision 0013), in shards.
    SELECT queue_name, status, sum(n) AS n FROM queue_counts GROUP BY queue_name, status
), names AS (
    SELECT queue_name AS name FROM counts WHERE n <> 0 UNION SELECT name FROM queues
)
SELECT n.name,
       COALESCE((SELECT jsonb_object_agg(c.status, c.n) FROM counts c WHERE c.queue_name = n.name),
                '{}') AS counts,
       -- 'waiting' is queued + scheduled; the scheduled ones are those with a future time.
       (SELECT count(*) FROM procrastinate_jobs pj
         WHERE pj.queue_name = n.name AND pj.status = 'todo' AND pj.scheduled_at > now()
       ) AS scheduled,
       extract(epoch FROM now() - least(
           (SELECT j.created_at FROM procrastinate_jobs pj JOIN jobs j ON j.queue_job_id = pj.id
             WHERE pj.queue_name = n.name AND pj.status = 'todo' AND pj.scheduled_at IS NULL
             ORDER BY pj.id LIMIT 1),
           (SELECT min(pj.scheduled_at) FROM procrastinate_jobs pj
             WHERE pj.queue_name = n.name AND pj.status = 'todo'
               AND pj.scheduled_at IS NOT NULL AND pj.scheduled_at <= now())
       )) AS oldest_queued_age_seconds,
       (SELECT extract(epoch FROM now() - min(a.started_at))
          FROM procrastinate_jobs pj JOIN jobs j ON j.queue_job_id = pj.id
          JOIN job_attempts a ON a.job_id = j.id AND a.finished_at IS NULL
         WHERE pj.queue_name = n.name AND pj.status = 'doing') AS oldest_running_age_seconds
FROM names n
ORDER BY n.name
"""

_GROUPS = {Status.RUNNING: "running", Status.SUCCEEDED: "succeeded", Status.FAILED: "failed",
           Status.CANCELLED: "cancelled"}


async def queue_stats(backend: Backend) -> list[dict[str, Any]]:
    """Every queue that has jobs or settings, with its settings and counts per public
    status."""
    async with backend.connection() as conn:
        rows = [dict(r) for r in await conn.fetch(_STATS)]
        settings = {r["name"]: dict(r) for r in await conn.fetch("SELECT * FROM queues")}
    for row in rows:
        counts, scheduled = row["counts"], row.pop("scheduled")
        row["counts"] = {status.value: int(counts.get(group, 0))
                         for status, group in _GROUPS.items()}
        row["counts"][Status.SCHEDULED.value] = scheduled
        row["counts"][Status.QUEUED.value] = int(counts.get("waiting", 0)) - scheduled
        row["counts"] = {status.value: row["counts"][status.value] for status in Status}
        for key in ("oldest_queued_age_seconds", "oldest_running_age_seconds"):
            if row[key] is not None:
                row[key] = round(float(row[key]), 3)
        if row["name"] in settings:
            row.update(policies.queue_json(settings[row["name"]]))
        else:  # jobs deferred without jobq (Procrastinate's own connectors): no settings row
            row["paused"] = False
    return rows


def check_name(name: str) -> None:
    """InvalidRequest unless `name` can name a queue."""
    if not QUEUE_NAME.match(name):
        raise errors.InvalidRequest(
            f"The queue name {requests.QUEUE_NAME_RULE}.",
            [errors.FieldError("name", requests.QUEUE_NAME_RULE)],
        )


async def get_queue(backend: Backend, name: str) -> dict[str, Any]:
    """One queue: its settings, counts and ages; NotFound if it has neither jobs nor
    settings."""
    check_name(name)
    found = [q for q in await queue_stats(backend) if q["name"] == name]
    if not found:
        raise errors.NotFound(
            f"No queue named {name!r}: a queue exists once it has jobs or settings "
            f"(PATCH /api/v1/queues/{name} makes it).")
    return found[0]


async def update_queue(backend: Backend, name: str, patch: policies.QueuePatch) -> dict[str, Any]:
    """Change a queue's settings; every worker obeys them from its next claim."""
    check_name(name)
    changes = policies.settings_of(patch)
    async with backend.connection() as conn:
        await conn.execute("SELECT jobq_set_queue_settings($1, $2::jsonb)", name,
                           db_engine.dumps(changes))
    return await get_queue(backend, name)


async def set_paused(backend: Backend, name: str, paused: bool) -> dict[str, Any]:
    """Pause or resume a queue for every worker; persists across restarts."""
    check_name(name)
    async with backend.connection() as conn:
        await conn.execute("SELECT jobq_set_queue_paused($1, $2)", name, paused)
    return await get_queue(backend, name)


async def live_workers(backend: Backend) -> list[dict[str, Any]]:
    """Registered workers with their heartbeat age and running jobs."""
    async with backend.connection() as conn:
        rows = await conn.fetch(
            """
            SELECT w.id, w.name, w.host, w.pid, w.queues, w.concurrency, w.started_at,
                   pw.last_heartbeat,
                   extract(epoch FROM now() - pw.last_heartbeat) AS heartbeat_age_seconds,
                   COALESCE((SELECT array_agg(j.id ORDER BY j.id)
                               FROM procrastinate_jobs pj JOIN jobs j ON j.queue_job_id = pj.id
                              WHERE pj.worker_id = w.id AND pj.status = 'doing'),
                            '{}') AS running_jobs
            FROM workers w JOIN procrastinate_workers pw ON pw.id = w.id
            ORDER BY w.started_at
            """
        )
    return [dict(r) for r in rows]
