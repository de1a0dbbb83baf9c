"""Built-in job types for tests and benchmarks: system.noop and system.sleep."""

from __future__ import annotations

import asyncio
import time

from service import errors
from service.domain.builtin import NoopPayload, SleepPayload
from workers.progress import JobRun


async def noop(run: JobRun, payload: NoopPayload) -> None:
    """Does nothing."""


async def sleep(run: JobRun, payload: SleepPayload) -> dict:
    """Sleeps, reporting progress; fails its first `fail_times` attempts."""
    if run.attempt <= payload.fail_times:
        failure = errors.PermanentJobError if payload.permanent else errors.TransientJobError
        raise failure(
            f"failing on purpose: attempt {run.attempt} of the first {payload.fail_times}"
        )
    started = time.monotonic()
    steps = max(1, min(100, int(payload.seconds * 10)))
    await run.progress(0, stage="sleeping")
    for step in range(1, steps + 1):
        await _sleep(payload.seconds / steps, payload.ignore_cancel)
        await run.progress(100 * step / steps, stage="sleeping")
    return {"slept_seconds": round(time.monotonic() - started, 3)}


async def _sleep(seconds: float, ignore_cancel: bool) -> None:
    if not ignore_cancel:
        await asyncio.sleep(seconds)
        return
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            await asyncio.sleep(left)
        except asyncio.CancelledError:
            continue  # deliberately deaf to cancellation
