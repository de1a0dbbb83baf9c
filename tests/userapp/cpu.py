"""userapp.spin's code: pure CPU, run in a worker's child process."""

from __future__ import annotations

import os
import time


def spin(ctx, seconds: float) -> dict:
    started = time.monotonic()
    turns = 0
    while (elapsed := time.monotonic() - started) < seconds:
        turns += 1
        if turns % 200_000 == 0:
            ctx.progress(100 * elapsed / seconds, stage="spinning")
    return {"turns": turns, "pid": os.getpid()}
