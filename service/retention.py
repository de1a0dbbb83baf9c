"""Deleting finished jobs: a batch at a time, so that a large cleanup never holds long locks
or one huge transaction while workers drain the queue, and pausing between batches, so that it
leaves the database's CPU and disk to the workers most of the time. Each batch is one call
to `jobq_purge_finished`."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from service.backend import Backend

PURGE_BATCH = 5_000
"""Jobs deleted per transaction."""

PAUSE_RATIO = 1.0
"""After each batch the cleanup waits this many times as long as the batch took: at 1.0 it
works half the time. Deleting a million jobs at full speed cut a concurrent drain by 32%;
paced, by 17% (docs/performance.md)."""


async def purge_finished(backend: Backend, older_than: timedelta, batch: int = PURGE_BATCH,
                         pause_ratio: float = PAUSE_RATIO) -> int:
    """Delete finished jobs (succeeded, failed, cancelled) submitted more than `older_than`
    ago, with their history; returns how many. Queued and running jobs are never touched."""
    total = 0
    while True:
        started = time.monotonic()
        async with backend.connection() as conn:
            deleted = await conn.fetchval("SELECT jobq_purge_finished($1, $2)", older_than, batch)
        total += deleted
        if deleted < batch:
            return total
        await asyncio.sleep((time.monotonic() - started) * pause_ratio)
