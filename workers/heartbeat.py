"""Heartbeat and self-fencing: prove the worker is alive, and stop its jobs before anyone may
take them over. Also learns at each beat which running jobs clients cancelled (in case a
NOTIFY was lost) and hands back jobs claimed by a round trip whose answer was lost."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from service import attempts
from service.domain import outcome
from workers import leases

if TYPE_CHECKING:
    from workers.runtime import Worker

logger = logging.getLogger(__name__)

ORPHAN_AGE = 10.0
"""An open attempt of ours this old that we do not run was claimed by a lost round trip."""

FENCE_SHARE = 0.8
"""Past this share of the stall timeout without a heartbeat, other workers may soon take our
jobs over: the worker stops them first."""


class Heartbeat:
    """The worker's heartbeat loop."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.interval = worker.settings.heartbeat_interval.total_seconds()
        self.fence = worker.settings.stall_timeout.total_seconds() * FENCE_SHARE

    async def run(self) -> None:
        worker = self.worker
        last_ok = time.monotonic()
        while True:
            before = time.monotonic()
            await asyncio.sleep(self.interval)
            if time.monotonic() - before > self.fence:
                # The whole process was frozen (SIGSTOP, a suspended VM): assume the worst.
                worker.abandon_all("the process was paused for "
                                   f"{time.monotonic() - before:.0f} s")
            elif time.monotonic() - last_ok > self.fence:
                # Frozen for less than that, but on top of a wait for the last heartbeat: the
                # database may have declared us dead already. Stop before asking it (a round
                # trip more of the jobs running twice).
                worker.abandon_all("no heartbeat reached the database for "
                                   f"{time.monotonic() - last_ok:.1f} s")
            beat = asyncio.create_task(self._beat(), name="heartbeat-call")
            try:
                # A call stuck on a half-open connection (a partition) fails only when TCP gives
                # up on it, seconds later: the self-fencing must not wait for that.
                while not beat.done():
                    await asyncio.wait({beat}, timeout=self.interval)
                    if not beat.done() and time.monotonic() - last_ok > self.fence:
                        worker.abandon_all("no heartbeat reached the database for "
                                           f"{time.monotonic() - last_ok:.0f} s")
            except asyncio.CancelledError:
                beat.cancel()
                raise
            try:
                alive, to_abort, orphans, lost = beat.result()
            except Exception as exc:
                logger.warning("worker %s: heartbeat failed: %s", worker.name, exc)
                if time.monotonic() - last_ok > self.fence:
                    worker.abandon_all("no heartbeat reached the database for "
                                       f"{time.monotonic() - last_ok:.0f} s")
                continue
            last_ok = time.monotonic()
            try:
                if not alive:
                    await worker.lease_lost()
                for attempt_id in to_abort:
                    worker.stop_job(attempt_id, "cancelled by a client")
                for attempt_id in lost:
                    worker.stop_job(attempt_id, "its attempt was closed: the lease is lost")
                if orphans:
                    await self._release(orphans)
            except Exception:
                # The heartbeat must outlive any one failure, or the worker is declared dead.
                logger.exception("worker %s: acting on the heartbeat failed", worker.name)

    async def _beat(self) -> tuple[bool, set[int], set[int], set[int]]:
        """One heartbeat: (still registered, attempts clients cancelled, attempts held but not
        run here, attempts run here whose lease is gone)."""
        worker = self.worker
        async with worker.backend.connection() as conn:
            alive = await leases.heartbeat(conn, worker.worker_id)
            to_abort: set[int] = set()
            lost: set[int] = set()
            running = worker.running_ids()
            if alive and running:
                to_abort = await leases.abort_requested(conn, worker.worker_id)
                # Recovery may close our attempts and still miss our row (a heartbeat committed
                # between the two): the lease is the attempt, so check the attempts themselves.
                lost = await leases.closed_attempts(conn, sorted(running))
            held = await leases.held_attempts(conn, worker.worker_id, ORPHAN_AGE)
        return alive, to_abort, held - worker.held_ids(), lost

    async def _release(self, attempt_ids: set[int]) -> None:
        """Jobs the database says we hold but we never started: a claim committed while its
        answer was lost with the connection. Put them back in the queue."""
        logger.warning("worker %s: releasing %d job(s) claimed while the connection dropped",
                       self.worker.name, len(attempt_ids))
        try:
            async with self.worker.backend.connection() as conn:
                await attempts.finish(conn, [attempts.Ending.of(attempt_id, outcome.Interrupted())
                                             for attempt_id in attempt_ids])
        except Exception as exc:
            logger.warning("worker %s: release failed (%s); next heartbeat retries",
                           self.worker.name, exc)
