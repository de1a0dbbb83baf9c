"""Job types declared as a jobq user would: the declarations import nothing heavy; the CPU
job's code lives in tests/userapp/cpu.py and only workers import it."""

from __future__ import annotations

import time

import jobq

app = jobq.App(queue="userapp")


class Unfixable(Exception):
    """An error this package declares permanent for userapp.flaky."""


@app.task(name="userapp.add", priority=5)
async def add(ctx: jobq.Context, a: int, b: int = 1) -> dict:
    """Adds two numbers, reporting progress."""
    await ctx.progress(50, stage="adding", message=f"{a} + {b}")
    return {"sum": a + b, "attempt": ctx.attempt}


@app.task(name="userapp.spin", runs_in="process", timeout=60,
          implementation="tests.userapp.cpu:spin")
def spin(ctx: jobq.SyncContext, seconds: float) -> dict:
    """Burns CPU for `seconds` in a child process (the code is in tests/userapp/cpu.py)."""


@app.task(name="userapp.flaky", retry=jobq.Retry(max_attempts=4, backoff=jobq.delays(0.3, 1.2)),
          permanent_errors=(Unfixable,))
def flaky(ctx: jobq.SyncContext, fail_times: int = 0, error: str = "ValueError") -> dict:
    """Raises `error` on its first `fail_times` attempts, in a worker thread."""
    if ctx.attempt <= fail_times:
        kinds = {"ValueError": ValueError, "Unfixable": Unfixable,
                 "PermanentJobError": jobq.PermanentJobError}
        raise kinds[error](f"attempt {ctx.attempt} fails on purpose")
    return {"attempt": ctx.attempt}


@app.task(name="userapp.nap", retry=2, retry_timeouts=False, timeout=30)
def nap(ctx: jobq.SyncContext, seconds: float) -> dict:
    """Sleeps in a thread, stopping early when told to; its timeouts are not retried."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if ctx.should_stop():
            return {"stopped": True}
        time.sleep(0.05)
    return {"slept": seconds}
