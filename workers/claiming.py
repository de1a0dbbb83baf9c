"""The claim loop: take as many due jobs as there are free slots in one round trip
(jobq_claim_jobs), and sleep until Procrastinate's NOTIFY, a freed slot or the poll interval.
The same NOTIFY connection brings clients' cancellations of running jobs."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING

from procrastinate import manager as pq_manager

from service import errors
from workers import leases

if TYPE_CHECKING:
    from workers.runtime import Worker

logger = logging.getLogger(__name__)


class Claimer:
    """Feeds the worker's free slots."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.wake = asyncio.Event()
        """Set when there may be work: a notification, a freed slot, a stop request."""

    async def run(self) -> None:
        """Claim until the worker is asked to stop."""
        worker = self.worker
        poll = worker.settings.poll_interval.total_seconds()
        while not worker.stopping.is_set():
            free = worker.free_slots()
            claimed: list[leases.Claimed] = []
            if free > 0:
                self.wake.clear()
                try:
                    async with worker.backend.connection() as conn:
                        claimed = await leases.claim(
                            conn, worker.worker_id, worker.name, worker.queues, free)
                except errors.DatabaseUnavailable as exc:
                    logger.warning("worker %s: cannot claim jobs: %s", worker.name, exc)
                    await asyncio.sleep(1)
                    continue
                except Exception:
                    # Never let one bad claim end the worker; say so loudly and go on.
                    logger.exception("worker %s: claiming failed", worker.name)
                    await asyncio.sleep(1)
                    continue
                for job in claimed:
                    worker.start(job)
            if free > 0 and len(claimed) == free:
                continue  # there may be more work right away
            # Wait for a notification, a finished job (free slot) or the poll interval.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), timeout=poll)

    async def listen(self) -> None:
        """Hear Procrastinate's notifications for our queues: new jobs, cancellations."""

        async def on_notification(channel: str, payload: str) -> None:
            try:
                message = json.loads(payload)
            except ValueError:
                return
            if message.get("type") == "job_inserted":
                self.wake.set()
            elif message.get("type") == "abort_job_requested":
                await self._abort_queue_job(message.get("job_id"))

        channels = pq_manager.get_channel_for_queues(self.worker.queues)
        await self.worker.backend.queue.connector.listen_notify(on_notification, channels)

    async def _abort_queue_job(self, queue_job_id: int | None) -> None:
        if queue_job_id is None or not self.worker.running_ids():
            return
        async with self.worker.backend.connection() as conn:
            attempt_id = await leases.attempt_of_queue_job(conn, queue_job_id)
        if attempt_id is not None:
            self.worker.stop_job(attempt_id, "cancelled by a client")
