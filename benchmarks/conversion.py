"""Conversion: a 100k-face OBJ → GLB, called directly in this process, then through the queue
(uploaded with `POST /api/v1/conversions`, converted by `jobq worker`) by one worker process and
by two. Each worker converts one file at a time (JOBQ_CONVERSION_PROCESSES=1), so two workers
can at best double the rate; `reuse=false`, so every job converts.

Through the queue, the time runs from the first upload to the last job's `succeeded` event:
upload, storage in PostgreSQL, claim, the sandboxed conversion, storing the output.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import aiohttp
import trimesh

from benchmarks import database, drain, processes
from benchmarks.context import Case, Context, Figures
from workers import convert

SPHERE_COUNT = (224, 224)
"""uv_sphere segments: 2 x 224 x 223 = 99,904 faces."""

WORKER_ENV = {"JOBQ_CONVERSION_PROCESSES": "1"}


def cases() -> list[Case]:
    return [Case("conversion jobq", run)]


def mesh_obj() -> bytes:
    return trimesh.creation.uv_sphere(count=list(SPHERE_COUNT)).export(file_type="obj").encode()


async def run(ctx: Context) -> Figures:
    mesh = mesh_obj()
    count = ctx.size.conversions
    direct = await asyncio.to_thread(_direct, mesh, count)
    one = await _through_queue(ctx, mesh, count, workers=1)
    two = await _through_queue(ctx, mesh, count, workers=2)
    return {
        "jobq.conversion.direct.s_per_conversion": direct / count,
        "jobq.conversion.queue1.s_per_conversion": one / count,
        "jobq.conversion.queue1.conversions_per_s": count / one,
        "jobq.conversion.queue2.conversions_per_s": count / two,
    }


def _direct(mesh: bytes, count: int) -> float:
    """Seconds for `count` conversions by the converter itself, one after another."""
    with tempfile.TemporaryDirectory(prefix="jobq-bench-convert-") as work:
        source = Path(work) / "sphere.obj"
        source.write_bytes(mesh)
        convert.convert([("sphere.obj", source)], "glb", {}, Path(work))  # warm-up
        started = time.perf_counter()
        for _ in range(count):
            convert.convert([("sphere.obj", source)], "glb", {}, Path(work))
        return time.perf_counter() - started


async def _through_queue(ctx: Context, mesh: bytes, count: int, workers: int) -> float:
    await database.empty_tables(ctx.backend)
    port = processes.free_port()
    children = [await processes.jobq_api(ctx, port)]
    try:
        children += [await processes.jobq_worker(ctx, 10, number, env=WORKER_ENV)
                     for number in range(workers)]
        for worker in children[1:]:
            await worker.sighting(processes.JOBQ_REGISTERED, drain.START_TIMEOUT)
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as client:
            await processes.wait_http_ready(client, children[0])
            # The workers settle. Their forkserver starts with their first conversion, which
            # waits for it: counted, as a user's first conversion waits too.
            await asyncio.sleep(2)
            started = time.monotonic()
            for _ in range(count):
                form = aiohttp.FormData({"format": "glb", "reuse": "false"})
                form.add_field("file", mesh, filename="sphere.obj", content_type="text/plain")
                async with client.post("/api/v1/conversions", data=form) as response:
                    if response.status != 201:
                        raise RuntimeError(f"upload answered {response.status}: "
                                           f"{(await response.text())[:500]}")
        end = await drain.wait_until_done(ctx.backend, count, children[1:],
                                          must_stay_alive=True)
    finally:
        await processes.stop_all(children)
    return end - started
