"""jobq's benchmark suite, one command:

    python -m benchmarks run [--size smoke|full] [--database-url URL] [--out FILE]

(from the repository root: the benchmarks are not part of the installed package).

Against the PostgreSQL server of --database-url (or DATABASE_URL) it creates, migrates and
finally drops a database of its own; without one it starts an embedded server in a temporary
directory. Every benchmark runs once per repetition, the benchmarks interleaved (jobq, then
the anchors: stock Procrastinate, PgQueuer and BullMQ, each driven through its own library;
then the next), each on emptied tables; the table shows medians and every jobq figure as a
ratio to each anchor's, then whether each of the targets of issue 17 is met. A measurement,
never a test: it asserts nothing about speed. Run `full` on a quiet machine: about 40 minutes.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from benchmarks import (
    anchor_bullmq,
    anchor_pgqueuer,
    conversion,
    database,
    drain,
    enqueue,
    latency,
    policies,
    report,
    scale,
    stock,
    streams,
    targets,
)
from benchmarks.context import SIZES, Case, Context, Size
from service.backend import Backend
from service.db import admin


def cases(only: list[str] | None = None) -> list[Case]:
    """Every benchmark, or those whose name contains one of `only`."""
    every = [*drain.cases(), *enqueue.cases(), *latency.cases(), *scale.cases(),
             *policies.cases(), *conversion.cases(), *streams.cases()]
    return [case for case in every if not only or any(part in case.name for part in only)]


async def measure(ctx: Context, repetitions: int,
                  only: list[str] | None = None) -> dict[str, list[float]]:
    """Every case once per repetition, on emptied tables; returns each figure's values."""
    samples: dict[str, list[float]] = defaultdict(list)
    chosen = cases(only)
    if not chosen:
        raise SystemExit(f"no benchmark name contains any of {only}")
    for repetition in range(1, repetitions + 1):
        for case in chosen:
            await database.empty_tables(ctx.backend)
            started = time.monotonic()
            figures = await case.run(ctx)
            for key, value in figures.items():
                samples[key].append(value)
            summary = "  ".join(f"{key.split('.', 1)[1]}={value:.2f}"
                                for key, value in figures.items())
            _say(f"[{repetition}/{repetitions}] {case.name} "
                 f"({time.monotonic() - started:.1f} s): {summary}")
    return samples


async def run(size: Size, server_url: str | None, out: Path | None, repetitions: int,
              only: list[str] | None = None) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="jobq-bench-"))
    try:
        (scratch / "logs").mkdir()
        async with database.bench_database(server_url, scratch) as (url, server):
            backend = await Backend.open(url)
            stock_app = stock.make_app(url)
            await stock_app.open_async()
            ctx = Context(size, url, backend, stock_app, log_dir=scratch / "logs",
                          postmaster_pid=await database.postmaster_pid(backend))
            try:
                ctx.pgqueuer = await anchor_pgqueuer.PgQueuerAnchor.open(
                    server, admin.database_name(url))
                ctx.bullmq = await anchor_bullmq.BullMQ.start(ctx, scratch)
                env = await report.environment(ctx, server_url is None, repetitions)
                _say(f"jobq benchmarks, size {size.name}, {repetitions} repetition(s), "
                     f"PostgreSQL {env['versions']['postgresql']}, "
                     f"anchors: PgQueuer {env['versions']['pgqueuer']}, "
                     f"BullMQ {env['versions']['bullmq']}")
                samples = await measure(ctx, repetitions, only)
            finally:
                if ctx.bullmq is not None:
                    await ctx.bullmq.close()
                if ctx.pgqueuer is not None:
                    await ctx.pgqueuer.close()
                await stock_app.close_async()
                await backend.close()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    figures = report.results(samples, partial=bool(only))
    verdicts = targets.verdicts(figures)
    print(report.table(figures))
    print()
    print(targets.table(verdicts))
    if out is not None:
        report.write_json(out, env, figures, verdicts)
        _say(f"results written to {out}")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run_parser = sub.add_parser("run", help="run every benchmark and report")
    run_parser.add_argument("--size", choices=sorted(SIZES), default="full",
                            help="smoke: seconds, every benchmark once, figures meaningless; "
                            "full: the real run, 3 repetitions (default)")
    run_parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"),
                            help="a PostgreSQL server to create the benchmark's database on "
                            "(default DATABASE_URL; without either, an embedded server)")
    run_parser.add_argument("--out", type=Path, help="write the results as JSON to this file")
    run_parser.add_argument("--repetitions", type=int,
                            help="override the size's repetitions (the median needs 3)")
    run_parser.add_argument("--only", action="append", metavar="TEXT",
                            help="run only the benchmarks whose name contains TEXT (repeatable; "
                            "e.g. --only 'drain jobq'); the names are printed as they run")
    return parser


def main() -> None:
    args = _parser().parse_args()
    logging.basicConfig(level=logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    size = SIZES[args.size]
    repetitions = args.repetitions or size.repetitions
    if repetitions < 1:
        sys.exit("--repetitions must be at least 1")
    asyncio.run(run(size, args.database_url or None, args.out, repetitions, args.only))


if __name__ == "__main__":
    main()
