"""What a running job sees: its identity, throttled progress reports, and a stop signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from service.backend import Backend

logger = logging.getLogger(__name__)

# Writes one progress report; returns False when the job's lease is gone.
ProgressWriter = Callable[[int, str | None, str | None], Awaitable[bool]]


@dataclass
class JobRun:
    """Handed to every job function: report progress, learn that it must stop."""

    job_id: uuid.UUID
    attempt_id: int
    """The attempt's fencing token: writes about the job made under it are refused once the
    attempt is closed."""
    attempt: int
    """This attempt's number across the job's life, 1 for the first."""
    backend: Backend
    timeout: float
    """Seconds this attempt may run before it is stopped."""
    _writer: ProgressWriter
    _interval: float
    sandbox: Any = None
    """The worker's child processes for CPU-heavy work (workers/sandbox.py), for job code that
    runs part of its work there (mesh.convert); set when the job's code starts."""
    stop_requested: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the job must stop: cancelled by a client, worker shutdown or lost lease."""
    _pending: tuple[int, str | None, str | None] | None = None
    _last_write: float = 0.0
    _flush: asyncio.Task | None = None

    def should_stop(self) -> bool:
        return self.stop_requested.is_set()

    async def progress(self, percent: float, stage: str | None = None,
                       message: str | None = None) -> None:
        """Report progress (0-100). Reports closer together than the interval are coalesced:
        the latest one is written when the interval has passed."""
        self._pending = (max(0, min(100, round(percent))), stage, message)
        wait = self._interval - (time.monotonic() - self._last_write)
        if wait <= 0:
            await self._write()
        elif self._flush is None or self._flush.done():
            self._flush = asyncio.create_task(self._write_later(wait))

    async def _write_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._write()

    async def _write(self) -> None:
        pending, self._pending = self._pending, None
        if pending is None:
            return
        self._last_write = time.monotonic()
        try:
            alive = await self._writer(*pending)
        except Exception as exc:  # progress is best effort: never fail the job for it
            logger.warning("progress of job %s not written: %s", self.job_id, exc)
            return
        if not alive:
            logger.warning("job %s: lease lost, stopping it", self.job_id)
            self.stop_requested.set()

    async def close(self) -> None:
        """Drop reports still waiting: the job's outcome is written next."""
        if self._flush is not None:
            self._flush.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush
