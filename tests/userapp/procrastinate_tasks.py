"""A Procrastinate project's tasks, unchanged but for the last line, run on jobq workers."""

from __future__ import annotations

import os

import procrastinate

import jobq.procrastinate
from service.queue.connector import AsyncpgConnector

app = procrastinate.App(connector=AsyncpgConnector(dsn=os.environ.get("DATABASE_URL", "")))


@app.task(name="userapp.greet", queue="greetings", retry=2)
async def greet(name: str, punctuation: str = "!") -> dict:
    return {"greeting": f"Hello, {name}{punctuation}"}


@app.task(name="userapp.tally", queue="greetings", pass_context=True)
def tally(context, numbers: list[int]) -> dict:
    context.progress(50, stage="adding")
    return {"total": sum(numbers), "attempt": context.attempt}


jobq.procrastinate.declare(app)
