"""Deleting finished jobs: a batch at a time, so that a large cleanup never holds long locks
or one huge transaction while workers drain the queue, and pausing between batches, so that it
leaves the database's CPU and disk to the workers most of the time.

Three ways, each a loop over one jobq_* function: the queues' retention policies
(`apply_retention`, run by the maintenance scheduler), a client's clean of one queue
(`clean`, `POST /api/v1/queues/{name}/clean`), and a plain purge by age (`purge_finished`).
A job goes with its attempts, events and files (docs/queues.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta

from service import errors
from service.backend import Backend
from service.domain import policies

PURGE_BATCH = 5_000
"""Jobs deleted per transaction by purge_finished."""

RETENTION_BATCH = 1_000
"""Jobs deleted per transaction by retention and clean: small, so a step's locks and WAL are
short while workers drain."""

JOB_RETENTION_SCAN = 5_000
"""Jobs with their own retention looked at per step."""

PAUSE_RATIO = 1.0
"""After each batch the cleanup waits this many times as long as the batch took: at 1.0 it
works half the time. Deleting a million jobs at full speed cut a concurrent drain by 32%;
paced, by 17% (docs/performance.md)."""

RETENTION_PAUSE_RATIO = 5.0
"""The retention pass waits five times as long as each batch took: it works a sixth of the
time. Deleting a history of a million jobs, working half the time it cut a concurrent c10 drain
by 35 % (reduced size), a quarter of the time by 22 % at 2,650 jobs/s (docs/performance.md)."""

MAX_CLEAN = 1_000_000
"""Most jobs one clean request deletes."""


async def _paced(step: Callable[[], Awaitable[tuple[int, bool]]], pause_ratio: float) -> int:
    """Run `step` (deleted, more to do?) until it says it is done, pausing after each."""
    total = 0
    while True:
        started = time.monotonic()
        deleted, more = await step()
        total += deleted
        if not more:
            return total
        await asyncio.sleep((time.monotonic() - started) * pause_ratio)


async def purge_finished(backend: Backend, older_than: timedelta, batch: int = PURGE_BATCH,
                         pause_ratio: float = PAUSE_RATIO) -> int:
    """Delete finished jobs (succeeded, failed, cancelled) submitted more than `older_than`
    ago, with their history; returns how many. Queued and running jobs are never touched."""
    async def step() -> tuple[int, bool]:
        async with backend.connection() as conn:
            deleted = await conn.fetchval("SELECT jobq_purge_finished($1, $2)", older_than, batch)
        return deleted, deleted == batch

    return await _paced(step, pause_ratio)


async def apply_retention(backend: Backend, batch: int = RETENTION_BATCH,
                          pause_ratio: float = RETENTION_PAUSE_RATIO) -> dict[str, int]:
    """One pass of retention: each queue's policy (age and count per terminal status), then
    the jobs' own (remove_on_complete / remove_on_fail). Returns how many jobs each deleted."""
    async def by_queue() -> tuple[int, bool]:
        async with backend.connection() as conn:
            deleted = await conn.fetchval("SELECT jobq_apply_retention($1)", batch)
        return deleted, deleted >= batch

    cursor: list = [None, None]

    async def by_job() -> tuple[int, bool]:
        async with backend.connection() as conn:
            row = await conn.fetchrow("SELECT * FROM jobq_apply_job_retention($1, $2, $3)",
                                      *cursor, JOB_RETENTION_SCAN)
        cursor[:] = [row["last_created"], row["last_id"]]
        return row["deleted"], row["last_id"] is not None

    return {"queues": await _paced(by_queue, pause_ratio),
            "jobs": await _paced(by_job, pause_ratio)}


async def clean(backend: Backend, queue: str, status: str, older_than_seconds: float,
                limit: int, pause_ratio: float = PAUSE_RATIO) -> int:
    """Delete up to `limit` jobs of `queue` that ended `status` more than
    `older_than_seconds` ago, oldest first, with their history and files; returns how many."""
    problems = []
    if status not in policies.TERMINAL:
        problems.append(errors.FieldError(
            "status", f"must be one of {', '.join(policies.TERMINAL)}"))
    if not 0 <= older_than_seconds <= policies.MAX_AGE_SECONDS:
        problems.append(errors.FieldError(
            "older_than_seconds", f"must be between 0 and {policies.MAX_AGE_SECONDS}"))
    if not 1 <= limit <= MAX_CLEAN:
        problems.append(errors.FieldError("limit", f"must be between 1 and {MAX_CLEAN}"))
    if problems:
        raise errors.InvalidRequest("; ".join(f"{p.field}: {p.message}" for p in problems),
                                    problems)
    left = [limit]

    async def step() -> tuple[int, bool]:
        batch = min(RETENTION_BATCH, left[0])
        async with backend.connection() as conn:
            deleted = await conn.fetchval("SELECT jobq_clean_queue($1, $2, $3, $4)",
                                          queue, status, older_than_seconds, batch)
        left[0] -= deleted
        return deleted, deleted == batch and left[0] > 0

    return await _paced(step, pause_ratio)
