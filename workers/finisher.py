"""The finisher: writes the outcomes waiting at each moment in one transaction
(jobq_finish_attempts), so the commits per job fall as the load rises, and keeps every outcome
until it is written, whatever happens to the database meanwhile."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from service import attempts, errors
from service import backend as backend_module
from service.backend import Backend

logger = logging.getLogger(__name__)

FINISH_BATCH = 500
"""Most outcomes written in one transaction."""

_UNWRITTEN = object()
"""Not written this time (an error of its own): stays waiting."""


@dataclass
class _Pending:
    """An outcome waiting to be written; `recorded` resolves once it is committed."""

    ending: attempts.Ending
    recorded: asyncio.Future


class Finisher:
    """Outcomes in, committed batches out."""

    def __init__(self, backend: Backend, name: str) -> None:
        self.backend = backend
        self.name = name
        self._pending: list[_Pending] = []
        self._ready = asyncio.Event()

    async def record(self, ending: attempts.Ending) -> str | None:
        """Hand over an outcome and wait until it is committed. Returns the outcome recorded
        (`cancelled` when a client had asked), or None: the lease was lost, nothing written."""
        pending = _Pending(ending, asyncio.get_running_loop().create_future())
        self._pending.append(pending)
        self._ready.set()
        return await pending.recorded

    async def run(self) -> None:
        """Write the waiting outcomes, all of them in one transaction; keep trying while the
        database is away, so that none is lost. Never ends while the worker runs: without it
        no job would ever finish."""
        delay = 0.5
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._pending:
                batch = self._pending[:FINISH_BATCH]
                try:
                    results = await self._write(batch)
                except Exception as exc:
                    # The database is away (or failing in a way not recognised as that): the
                    # same outcomes are tried again, nothing is dropped.
                    log = (logger.warning if isinstance(exc, errors.DatabaseUnavailable)
                           else logger.exception)
                    log("worker %s: %d outcome(s) not recorded yet (%s); retrying in %.1f s",
                        self.name, len(batch), exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 10)
                    continue
                written = {id(p) for p, r in zip(batch, results, strict=True)
                           if r is not _UNWRITTEN}
                self._pending = [p for p in self._pending if id(p) not in written]
                for pending, result in zip(batch, results, strict=True):
                    if result is not _UNWRITTEN and not pending.recorded.done():
                        pending.recorded.set_result(result)
                if len(written) < len(batch):
                    await asyncio.sleep(delay)  # some are left: try them again later
                    delay = min(delay * 2, 10)
                else:
                    delay = 0.5

    async def _write(self, batch: list[_Pending]) -> list[str | object | None]:
        """For each outcome: the outcome recorded, None (refused for a lost lease) or
        _UNWRITTEN (it stays queued). Raises when the database is away."""
        try:
            async with self.backend.connection() as conn:
                recorded = await attempts.finish(conn, [p.ending for p in batch])
            return [recorded.get(p.ending.attempt_id) for p in batch]
        except errors.DatabaseUnavailable:
            raise
        except Exception as exc:
            if backend_module.is_connection_loss(exc):
                raise
            if len(batch) == 1:
                logger.exception("worker %s: outcome of attempt %d not recorded; trying again",
                                 self.name, batch[0].ending.attempt_id)
                return [_UNWRITTEN]
            # Not the connection (a deadlock, a bad value): write them one by one, so that one
            # outcome cannot hold the others back.
            logger.exception("worker %s: writing %d outcomes together failed; one by one now",
                             self.name, len(batch))
        return [(await self._write([pending]))[0] for pending in batch]
