"""The sandbox: answers, errors, timeouts, crashes, progress, and a loop that never stalls."""

from __future__ import annotations

import asyncio
import time

import pytest

from service import errors
from workers import sandbox
from workers.sandbox import Sandbox


def add(a: int, b: int, progress) -> int:
    progress(50, "adding")
    return a + b


def fail(progress) -> None:
    raise errors.PermanentJobError("bad input, never retry")


def burn(seconds: float, progress) -> int:
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return n


def hog(progress) -> int:
    blocks = []
    while True:
        blocks.append(bytearray(64 * 1024 * 1024))


def die(progress) -> None:
    import os
    import signal
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def pool() -> Sandbox:
    return Sandbox(size=2, memory_mb=1024)


async def test_returns_the_result_and_reports_progress(pool: Sandbox):
    seen = []

    async def record(percent: int, stage: str) -> None:
        seen.append((percent, stage))

    assert await pool.run(add, 2, 3, timeout=30, on_progress=record) == 5
    assert seen == [(50, "adding")]


async def test_exceptions_come_back_with_type_and_message(pool: Sandbox):
    with pytest.raises(errors.PermanentJobError, match="never retry"):
        await pool.run(fail, timeout=30)


async def test_timeout_kills_the_child_and_the_pool_keeps_working(pool: Sandbox):
    started = time.monotonic()
    with pytest.raises(sandbox.SandboxTimeout):
        await pool.run(burn, 60, timeout=1)
    assert time.monotonic() - started < 3
    assert await pool.run(add, 1, 1, timeout=30) == 2


async def test_memory_hog_fails_clearly(pool: Sandbox):
    with pytest.raises((sandbox.SandboxCrashed, MemoryError)):
        await pool.run(hog, timeout=30)


async def test_a_child_that_dies_is_reported(pool: Sandbox):
    with pytest.raises(sandbox.SandboxCrashed, match="exit code -9"):
        await pool.run(die, timeout=30)


async def test_the_event_loop_keeps_ticking_while_a_child_burns_cpu(pool: Sandbox):
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    task = asyncio.create_task(ticker())
    await pool.run(burn, 1.5, timeout=30)
    task.cancel()
    assert ticks >= 20  # 1.5 s of 50 ms ticks, with slack for a busy machine


async def test_cancelling_the_caller_kills_the_child(pool: Sandbox):
    job = asyncio.create_task(pool.run(burn, 60, timeout=120))
    await asyncio.sleep(1)
    job.cancel()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert time.monotonic() - started < 6
    assert await pool.run(add, 2, 2, timeout=30) == 4
