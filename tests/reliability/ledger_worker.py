"""`python -m tests.reliability.ledger_worker NAME CONCURRENCY`: a jobq worker like
`jobq worker`, whose `system.sleep` records every execution in the ledger table (see
ledger.recorded_sleep). Configured by DATABASE_URL and JOBQ_* like any worker."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys

import uvloop

from service.backend import Backend
from service.settings import load_settings
from tests.reliability import ledger
from workers.runtime import Worker


async def work(name: str, concurrency: int) -> None:
    settings = dataclasses.replace(load_settings(), worker_concurrency=concurrency)
    assert settings.database_url
    backend = await Backend.open(settings.database_url, settings.pool_size)
    try:
        worker = Worker(backend, settings, {"system.sleep": ledger.recorded_sleep}, name=name)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.request_stop)
        await worker.run()
    finally:
        await backend.close()


def main() -> None:
    name, concurrency = sys.argv[1], int(sys.argv[2])
    os.environ["JOBQ_LEDGER_WORKER"] = name
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvloop.run(work(name, concurrency))


if __name__ == "__main__":
    main()
