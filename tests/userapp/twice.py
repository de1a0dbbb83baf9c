"""Declares a type jobq already has: `--app tests.userapp.twice` must stop at start."""

import jobq

app = jobq.App()


@app.task(name="system.sleep")
async def sleep(seconds: float) -> None:
    """Not jobq's system.sleep."""
