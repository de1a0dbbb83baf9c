"""How fast `GET /api/v1/jobs/{id}` answers while two 200k+-face conversions run.

    python -m benchmarks.conversion_latency [--repeat 3] [--subdivisions 7]

Uses DATABASE_URL's server if set (creating and dropping its own database), else an embedded
PostgreSQL; starts a real `jobq serve` and a real `jobq worker`. Prints the latencies seen while
both conversions were running. A measurement, never a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import trimesh

from benchmarks.figures import percentile
from benchmarks.processes import free_port
from service.db import admin, migrate
from service.db.embedded import EmbeddedPostgres


async def one_round(url: str, mesh: bytes) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        ids = []
        for _ in range(2):
            response = await client.post(
                "/api/v1/conversions", files=[("file", ("sphere.obj", mesh, "text/plain"))],
                data={"format": "glb", "reuse": "false"})
            response.raise_for_status()
            ids.append(response.json()["id"])
        latencies: list[float] = []
        jobs: dict[str, dict] = {}
        while True:
            for job_id in ids:
                started = time.perf_counter()
                jobs[job_id] = (await client.get(f"/api/v1/jobs/{job_id}")).json()
                elapsed = (time.perf_counter() - started) * 1000
                if all(j.get("status") == "running" for j in jobs.values()) and len(jobs) == 2:
                    latencies.append(elapsed)
            if all(j["status"] in ("succeeded", "failed") for j in jobs.values()):
                break
            await asyncio.sleep(0.005)
    return {
        "samples_while_both_ran": len(latencies),
        "p50_ms": round(percentile(latencies, 0.5), 2) if latencies else None,
        "p99_ms": round(percentile(latencies, 0.99), 2) if latencies else None,
        "max_ms": round(max(latencies), 2) if latencies else None,
        "statuses": [j["status"] for j in jobs.values()],
        "convert_seconds": [j["result"]["convert_seconds"] for j in jobs.values()
                            if j["result"]],
    }


async def wait_ready(url: str) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        for _ in range(300):
            try:
                if (await client.get("/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("the API did not become ready")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--subdivisions", type=int, default=7,
                        help="icosphere subdivisions: 7 gives 327,680 faces")
    args = parser.parse_args()
    sphere = trimesh.creation.icosphere(subdivisions=args.subdivisions)
    mesh = sphere.export(file_type="obj").encode()
    with tempfile.TemporaryDirectory(prefix="jobq-bench-") as work:
        server = None
        server_url = os.environ.get("DATABASE_URL")
        if not server_url:
            server = EmbeddedPostgres(Path(work) / "pg")
            server_url = server.start()
        name = f"jobq_bench_{uuid.uuid4().hex[:8]}"
        url = await admin.ensure_database(server_url, name)
        await asyncio.to_thread(migrate.upgrade, url)
        env = {**os.environ, "DATABASE_URL": url, "JOBQ_AUTH": "off"}  # as benchmarks/processes.py
        port = free_port()
        api = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port",
                                str(port)], env=env, stderr=subprocess.DEVNULL)
        worker = subprocess.Popen([sys.executable, "-m", "service.cli", "worker"], env=env,
                                  stderr=subprocess.DEVNULL)
        try:
            base = f"http://127.0.0.1:{port}"
            await wait_ready(base)
            rounds = [await one_round(base, mesh) for _ in range(args.repeat)]
        finally:
            for process in (api, worker):
                process.send_signal(signal.SIGTERM)
                process.wait(30)
            await admin.drop_database(server_url, name)
            if server:
                server.stop()
    p99s = [r["p99_ms"] for r in rounds if r["p99_ms"] is not None]
    print(json.dumps({
        "benchmark": "GET /api/v1/jobs/{id} while two conversions run",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{os.cpu_count()} cores, {platform.platform()}, Python "
                   f"{platform.python_version()}",
        "faces": len(sphere.faces), "obj_bytes": len(mesh),
        "median_p99_ms": statistics.median(p99s) if p99s else None,
        "rounds": rounds,
    }, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
