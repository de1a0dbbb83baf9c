"""Maintenance operations: recovering the jobs of dead workers, applying the queues'
retention. Workers schedule them (workers/scheduler.py), one worker at a time through
`exclusively`; the API runs recovery on request. Each is safe to run twice and logs what it did.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime

from service import attempts, retention
from service.backend import Backend
from service.db.locks import LOCK_SPACE, LOCKS
from service.domain import outcome

logger = logging.getLogger(__name__)

OPERATIONS = {name: LOCKS[name]
              for name in ("recover_stalled", "purge_finished", "apply_retention")}
"""Maintenance operations and their advisory lock numbers (service/db/locks.py)."""

_COUNTED = {"retry": "requeued", "failed": "failed", "cancelled": "cancelled"}


async def recover_stalled(backend: Backend, stall_seconds: float,
                          now: datetime | None = None) -> dict[str, int]:
    """Close the open attempts of workers silent for `stall_seconds` as lost and move their
    jobs on as each job's retry policy says, then forget those workers. Returns how many jobs
    were requeued (after their backoff), failed (no attempts left) or cancelled (a client asked).
    Safe to run from many processes at once: rows another run holds are skipped."""
    now = now or datetime.now(UTC)
    async with backend.transaction() as conn:
        lost = await conn.fetch("SELECT * FROM jobq_lock_stalled_attempts($1)", stall_seconds)
        endings = [attempts.Ending.of(row["attempt_id"], _decide(row, now)) for row in lost]
        recorded = await attempts.finish(conn, endings, lost=True) if endings else {}
        await conn.execute("SELECT procrastinate_prune_stalled_workers_v1($1)", stall_seconds)
    counts = dict.fromkeys(_COUNTED.values(), 0)
    for kind in recorded.values():
        counts[_COUNTED[kind]] += 1
    if lost:
        by_attempt = {row["attempt_id"]: row["job_id"] for row in lost}
        logger.warning("recovered %d job(s) of dead workers: %s", len(recorded),
                       ", ".join(f"{by_attempt[a]} {kind}" for a, kind in recorded.items()))
    return counts


async def apply_retention(backend: Backend) -> dict[str, int]:
    """Delete the finished jobs each queue's retention policy, or the job's own, no longer
    keeps, in small paced batches (service/retention.py). Returns how many each deleted."""
    deleted = await retention.apply_retention(backend)
    if any(deleted.values()):
        logger.info("retention deleted %d job(s) by their queue's policy, %d by their own",
                    deleted["queues"], deleted["jobs"])
    return deleted


def _decide(row, now: datetime) -> outcome.Decision:
    policy = outcome.retry_policy(row["task_name"], row["backoff"])
    return outcome.decide(outcome.Lost(), attempt=row["budget_attempt"],
                          max_attempts=row["max_attempts"], policy=policy, now=now)


@contextlib.asynccontextmanager
async def exclusively(backend: Backend, operation: str) -> AsyncIterator[bool]:
    """Whether this process may run `operation` now: True while it holds the operation's
    advisory lock, which no other process can take meanwhile; False if another holds it.

    The lock belongs to one pooled connection, held for the duration. Should releasing it fail,
    that connection is closed rather than returned to the pool still holding the lock."""
    key = OPERATIONS[operation]
    async with backend.connection() as conn:
        mine = await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", LOCK_SPACE, key)
        try:
            yield mine
        finally:
            if mine:
                try:
                    await conn.execute("SELECT pg_advisory_unlock($1, $2)", LOCK_SPACE, key)
                except BaseException:
                    conn.terminate()
                    raise
