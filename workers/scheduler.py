"""The maintenance scheduler: runs service/maintenance.py's operations now and then. Every
worker schedules them; an advisory lock lets one worker at a time run each."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from service import maintenance, schedules
from service.backend import Backend
from service.settings import Settings

logger = logging.getLogger(__name__)

SCHEDULE_POLL_SECONDS = 1.0
"""How often each worker looks for due schedule ticks: a tick's job is made within about this
long of its time."""


class MaintenanceScheduler:
    """Periodic maintenance for one worker process."""

    def __init__(self, backend: Backend, settings: Settings, name: str) -> None:
        self.backend = backend
        self.settings = settings
        self.name = name

    async def run(self) -> None:
        await asyncio.gather(self._recover(), self._retain(), self._tick())

    async def _tick(self) -> None:
        """Schedules: every worker looks each second; a tick makes one job whoever fires it
        (service/schedules.py)."""
        synced = False
        while True:
            try:
                if not synced:
                    await schedules.sync_declared(self.backend)
                    synced = True
                await schedules.fire_due(self.backend)
            except Exception as exc:
                logger.warning("worker %s: firing schedules failed: %s", self.name, exc)
            await asyncio.sleep(SCHEDULE_POLL_SECONDS * (0.75 + random.random() / 2))

    async def _recover(self) -> None:
        stall = self.settings.stall_timeout.total_seconds()
        while True:
            # At most stall/4 between runs, so a dead worker's job runs again within about
            # stall timeout + stall/4 (plus its backoff); jitter spreads the workers' turns.
            await asyncio.sleep(stall / 6 * (0.5 + random.random()))
            await self._run_once(
                "recover_stalled", lambda: maintenance.recover_stalled(self.backend, stall))

    async def _retain(self) -> None:
        interval = self.settings.retention_interval.total_seconds()
        while True:
            # Each worker tries about once per interval; the one holding the lock runs a whole
            # pass, the others find it taken and wait for their next turn.
            await asyncio.sleep(interval * (0.5 + random.random()))
            await self._run_once(
                "apply_retention", lambda: maintenance.apply_retention(self.backend))

    async def _run_once(self, operation: str, work: Callable[[], Awaitable[object]]) -> None:
        """Run `work` unless another worker is running `operation` right now."""
        try:
            async with maintenance.exclusively(self.backend, operation) as mine:
                if mine:
                    await work()
        except Exception as exc:
            logger.warning("worker %s: %s failed: %s", self.name, operation, exc)
