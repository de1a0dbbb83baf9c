"""The sandbox: answers, errors, timeouts, crashes, progress, and a loop that never stalls."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service import errors
from workers import convert, sandbox
from workers.sandbox import Sandbox

CORPUS = Path(__file__).resolve().parents[1] / "corpus"  # see tests/corpus/NOTICE
MEMORY_MB = 512


# Work for the children: module-level, so the child can import it by name.


def add(a: int, b: int, progress) -> int:
    progress(50, "adding")
    return a + b


def fail(progress) -> None:
    raise errors.PermanentJobError("bad input, never retry")


def fail_unpicklably(progress) -> None:
    raise errors.FileTooLarge("cube.obj", 10)  # its __init__ cannot be called with its message


def time_out_on_its_own(progress) -> None:
    raise TimeoutError("the work's own timeout")


def leave(progress) -> None:
    sys.exit(3)


def burn(seconds: float, progress) -> int:
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return n


def hog(progress) -> None:
    blocks = []
    while True:
        blocks.append(bytearray(64 * 1024 * 1024))


def die(progress) -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault(progress) -> None:
    ctypes.string_at(0)


def imported(progress) -> list[str]:
    return [name for name in ("trimesh", "workers.convert") if name in sys.modules]


@pytest.fixture(scope="module")
def pool() -> Sandbox:
    return Sandbox(size=2, memory_mb=MEMORY_MB)


async def test_returns_the_result_and_reports_progress(pool: Sandbox):
    seen = []

    async def record(percent: int, stage: str) -> None:
        seen.append((percent, stage))

    assert await pool.run(add, 2, 3, timeout=30, on_progress=record) == 5
    assert seen == [(50, "adding")]


async def test_children_start_warm(pool: Sandbox):
    await pool.warm_up()
    # Each child is forked from a forkserver that imported these once (0.3-1.5 s).
    assert await pool.run(imported, timeout=30) == ["trimesh", "workers.convert"]


async def test_exceptions_come_back_with_type_message_and_attributes(pool: Sandbox):
    with pytest.raises(errors.PermanentJobError, match="never retry") as caught:
        await pool.run(fail, timeout=30)
    assert caught.value.retryable is False
    assert "in fail" in str(caught.value.__cause__)  # the child's traceback, for the log


async def test_an_exception_that_cannot_come_back_is_named(pool: Sandbox):
    with pytest.raises(sandbox.RemoteError, match=r"service\.errors\.FileTooLarge: The file"):
        await pool.run(fail_unpicklably, timeout=30)


async def test_system_exit_in_the_child_does_not_stop_the_parent(pool: Sandbox):
    with pytest.raises(sandbox.RemoteError, match="SystemExit: 3"):
        await pool.run(leave, timeout=30)


async def test_the_works_own_timeout_error_is_not_a_sandbox_timeout(pool: Sandbox):
    with pytest.raises(TimeoutError, match="own timeout") as caught:
        await pool.run(time_out_on_its_own, timeout=30)
    assert not isinstance(caught.value, sandbox.SandboxTimeout)


async def test_timeout_kills_the_child_and_the_pool_keeps_working(pool: Sandbox):
    started = time.monotonic()
    with pytest.raises(sandbox.SandboxTimeout, match="killed after 1 s"):
        await pool.run(burn, 60, timeout=1)
    assert time.monotonic() - started < 2
    assert await pool.run(add, 1, 1, timeout=30) == 2


async def test_cancelling_the_caller_kills_the_child(pool: Sandbox):
    job = asyncio.create_task(pool.run(burn, 60, timeout=120))
    await asyncio.sleep(0.5)
    job.cancel()
    started = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert time.monotonic() - started < 2
    assert await pool.run(add, 2, 2, timeout=30) == 4


async def test_a_child_over_the_memory_limit_fails_clearly(pool: Sandbox):
    with pytest.raises(sandbox.SandboxCrashed, match=f"{MEMORY_MB} MB \\(the memory limit\\)"):
        await pool.run(hog, timeout=30)
    assert await pool.run(add, 1, 2, timeout=30) == 3


async def test_a_child_that_is_killed_is_reported(pool: Sandbox):
    with pytest.raises(sandbox.SandboxCrashed, match=r"exit code -9, SIGKILL.*memory limit"):
        await pool.run(die, timeout=30)


async def test_a_child_that_crashes_is_reported(pool: Sandbox):
    with pytest.raises(sandbox.SandboxCrashed, match="SIGSEGV"):
        await pool.run(segfault, timeout=30)


async def test_the_event_loop_keeps_ticking_while_children_burn_cpu(pool: Sandbox):
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.05)
            ticks += 1

    task = asyncio.create_task(ticker())
    await asyncio.gather(pool.run(burn, 1.5, timeout=30), pool.run(burn, 1.5, timeout=30))
    task.cancel()
    assert ticks >= 20  # 1.5 s of 50 ms ticks, with slack for a busy machine


async def test_a_conversion_runs_in_the_sandbox_with_its_progress(pool: Sandbox, tmp_path):
    stages = []

    async def record(percent: int, stage: str) -> None:
        stages.append(stage)

    files = [(name, CORPUS / name) for name in ("rabbit.obj", "rabbit.mtl")]
    result = await pool.run(convert.convert, files, "glb", {}, tmp_path, timeout=60,
                            on_progress=record)
    assert result.path.is_file() and result.stats["faces"] == 1252
    assert stages == ["loading", "converting", "exporting", "exported"]
    with pytest.raises(convert.InvalidMesh, match="holds no geometry"):
        await pool.run(convert.convert, [("empty.stl", CORPUS / "empty.stl")], "glb", {},
                       tmp_path, timeout=60)


async def test_close_kills_running_children_and_refuses_new_work():
    own = Sandbox(size=1, memory_mb=MEMORY_MB)
    job = asyncio.create_task(own.run(burn, 60, timeout=120))
    await asyncio.sleep(0.5)
    await own.close()
    with pytest.raises(sandbox.SandboxClosed):
        await asyncio.wait_for(job, 5)
    with pytest.raises(sandbox.SandboxClosed):
        await own.run(add, 1, 1, timeout=5)


ORPHAN_SCRIPT = '''
import asyncio, os, sys, time
from workers.sandbox import Sandbox

def linger(path, progress):
    with open(path, "w") as out:
        out.write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    asyncio.run(Sandbox(size=1, memory_mb=None, preload=()).run(linger, sys.argv[1], timeout=120))
'''


def is_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is dead
    except FileNotFoundError:
        return True


def test_children_die_with_their_parent(tmp_path):
    script, pid_file = tmp_path / "parent.py", tmp_path / "child.pid"
    script.write_text(ORPHAN_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    try:
        for _ in range(100):
            if pid_file.exists() and pid_file.read_text():
                break
            time.sleep(0.1)
        child = int(pid_file.read_text())
        assert not is_gone(child)
        parent.kill()
        for _ in range(50):
            if is_gone(child):
                break
            time.sleep(0.1)
        assert is_gone(child), "the child outlived its parent"
    finally:
        parent.kill()
        parent.wait()
