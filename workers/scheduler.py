"""The maintenance scheduler: runs service/maintenance.py's operations now and then. Every
worker schedules them; an advisory lock lets one worker at a time run each."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable

from service import maintenance
from service.backend import Backend
from service.settings import Settings

logger = logging.getLogger(__name__)


class MaintenanceScheduler:
    """Periodic maintenance for one worker process."""

    def __init__(self, backend: Backend, settings: Settings, name: str) -> None:
        self.backend = backend
        self.settings = settings
        self.name = name

    async def run(self) -> None:
        await asyncio.gather(self._recover(), self._retain())

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
