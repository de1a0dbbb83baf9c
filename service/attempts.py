"""Recording how attempts ended: the one call to `jobq_finish_attempts`, for workers (the
outcomes of the jobs they ran) and for recovery (the attempts of dead workers)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from service.db import engine as db_engine
from service.domain import outcome


@dataclass(frozen=True)
class Ending:
    """An attempt's outcome ready to be written: result and error already JSON text."""

    attempt_id: int
    outcome: str
    result: str | None = None
    error: str | None = None
    retry_at: datetime | None = None

    @classmethod
    def of(cls, attempt_id: int, decision: outcome.Decision) -> Ending:
        """Encodes result and error; raises TypeError/ValueError if the result is not JSON."""
        result = outcome.result_of(decision)
        error = outcome.error_of(decision)
        return cls(attempt_id, decision.kind.value,
                   None if result is None else db_engine.dumps(result),
                   None if error is None else db_engine.dumps(error.to_json()),
                   outcome.retry_at_of(decision))


async def finish(conn: asyncpg.Connection, endings: list[Ending],
                 lost: bool = False) -> dict[int, str]:
    """Record many outcomes in one transaction. Returns, for each attempt whose outcome was
    applied, the outcome recorded (`cancelled` instead of the one given when a client asked
    to cancel the job meanwhile); the others had lost their lease, and nothing was written for
    them. `lost`: the attempts' worker is gone, they are recorded as `lost`."""
    rows = await conn.fetch(
        "SELECT * FROM jobq_finish_attempts($1, $2, $3, $4, $5, $6)",
        [e.attempt_id for e in endings], [e.outcome for e in endings],
        [e.result for e in endings], [e.error for e in endings],
        [e.retry_at for e in endings], lost,
    )
    return {r["attempt_id"]: r["outcome"] for r in rows}
