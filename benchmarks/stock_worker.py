"""Procrastinate's stock worker on DATABASE_URL, running the no-op task of `stock_app.py`.

    python -m benchmarks.stock_worker --concurrency 10 [--wait]

Without --wait it stops as soon as the queue is empty (`run_worker_async(wait=False)`). It
prints a line when it has registered, and one with its CPU time and peak RSS when its run
returned: a draining worker may be gone before the benchmark could read /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from benchmarks import stock_app


async def work(database_url: str, concurrency: int, wait: bool) -> None:
    # One connection per running job, one for LISTEN, one for heartbeats and abort polls.
    app = stock_app.make_app(database_url, pool_size=concurrency + 2)
    register = app.job_manager.register_worker

    async def register_and_tell() -> int:
        worker_id = await register()
        print(stock_app.REGISTERED, flush=True)
        return worker_id

    # Only the announcement is added; the worker itself runs as shipped.
    app.job_manager.register_worker = register_and_tell  # type: ignore[method-assign]
    async with app.open_async():
        await app.run_worker_async(concurrency=concurrency, wait=wait)
        print(stock_app.STOPPED, stock_app.usage(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.stock_worker",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--wait", action="store_true",
                        help="keep waiting for jobs until SIGTERM (default: stop when empty)")
    args = parser.parse_args()
    asyncio.run(work(os.environ["DATABASE_URL"], args.concurrency, args.wait))


if __name__ == "__main__":
    main()
