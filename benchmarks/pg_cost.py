"""What a drain costs PostgreSQL, per job: server CPU, rows written, commits and statements.

A profiling tool, not a benchmark: run it against a PostgreSQL server of your own whose
processes are on this machine (their CPU is read from /proc), ideally one started with
`shared_preload_libraries = 'pg_stat_statements'` and `pg_stat_statements.track = all`, so
that it also lists the statements (nested ones too) that took the server's time:

    .venv/bin/python -m benchmarks.pg_cost --data-dir /tmp/pg/data --jobs 20000 \\
        --concurrency 10 --server-url postgresql://postgres@127.0.0.1:5499/postgres

It makes a database, migrates it, queues N no-op jobs, starts real `jobq worker` processes
held on a lock until all registered, then lets them drain the queue. `--analyze`: `VACUUM
ANALYZE` once the jobs are queued, as autovacuum does to a table that grew. CPU is the user +
system time of every process of the server (backends and background processes) from the
release to the moment the queue is empty. Rows are pg_stat_user_tables' inserts, updates and
deletes over the same span (plus the workers' idle heartbeats for the 11 s their sessions take
to send their statistics).

`--without PART` (repeatable) measures what a part of the hot path costs by leaving it out of
this run's database after migrating it: `events` (the claim's and the finish's job_events rows,
and with them their trigger), `aggregates` (the daily histograms, workers' and failures' rows
written by the claim and the finish), `counts` (the statement trigger that keeps queue_counts
and job_stats_daily on every update of the queue rows). The database is the run's own and is
dropped at the end; what it records without these parts is not jobq's behaviour, only its cost.

`--plans N` measures something else: issue 17's plan that went bad. `VACUUM ANALYZE` of the
empty tables, then one session submits, claims and finishes N batches of 100, each timed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import asyncpg

from benchmarks.context import WORKER_RETENTION_INTERVAL
from benchmarks.scale import write_history
from service import jobs
from service.db import admin, migrate
from service.domain import jobtypes

NOOP = jobs.JobRequest(type=jobtypes.SYSTEM_NOOP.name)
TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int | str) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def server_pids(data_dir: Path) -> list[int]:
    """The postmaster and its children."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(entry.name)
            if fields is not None and int(fields[1]) == postmaster:
                pids.append(int(entry.name))
    return pids


def _kind(pid: int) -> str:
    """client (a session's backend), autovacuum, or background (WAL writer, checkpointer...)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "background"
    if "autovacuum" in title:
        return "autovacuum"
    return "client" if "(" in title else "background"  # a session's title ends host(port)


class ServerCpu:
    """CPU seconds of the server's processes, including those that start meanwhile (a backend
    that exits between samples is counted up to its last sample)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.kinds: dict[int, str] = {}
        self.sampled = False

    def sample(self) -> None:
        for pid in server_pids(self.data_dir):
            fields = _stat(pid)
            if fields is None:
                continue
            seconds = (int(fields[11]) + int(fields[12])) / TICKS
            self.first.setdefault(pid, seconds if not self.sampled else 0.0)
            self.last[pid] = seconds
            self.kinds.setdefault(pid, _kind(pid))
        self.sampled = True

    def total(self, kind: str | None = None) -> float:
        return sum(self.last[p] - self.first[p] for p in self.last
                   if kind is None or self.kinds[p] == kind)


TABLE_STATS = """
SELECT relname, n_tup_ins AS ins, n_tup_upd AS upd, n_tup_del AS del, n_tup_hot_upd AS hot
FROM pg_stat_user_tables
"""


async def table_stats(conn: asyncpg.Connection) -> dict[str, dict[str, int]]:
    return {r["relname"]: dict(r) for r in await conn.fetch(TABLE_STATS)}


async def commits(conn: asyncpg.Connection) -> int:
    return await conn.fetchval(
        "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")


async def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--server-url", required=True)
    parser.add_argument("--data-dir", type=Path, required=True,
                        help="the server's data directory (its postmaster.pid)")
    parser.add_argument("--jobs", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--statements", type=int, default=25, help="top statements listed")
    parser.add_argument("--history", type=int, default=0, metavar="N",
                        help="first write N finished jobs (the scale benchmark's history), "
                             "then VACUUM ANALYZE them")
    parser.add_argument("--analyze", action="store_true",
                        help="VACUUM ANALYZE once the jobs are queued")
    parser.add_argument("--without", action="append", choices=sorted(WITHOUT), default=[],
                        help="leave this part of the hot path out of the run's database "
                             "(repeatable; see above)")
    parser.add_argument("--plans", type=int, metavar="BATCHES",
                        help="instead: VACUUM ANALYZE the empty tables, then on one session "
                             "submit, claim and finish BATCHES batches of 100, timing each")
    args = parser.parse_args()

    name = f"jobq_cost_{uuid.uuid4().hex[:10]}"
    url = await admin.ensure_database(args.server_url, name)
    try:
        await asyncio.to_thread(migrate.upgrade, url)
        if args.without:
            await leave_out(url, args.without)
        await (plans(args, url) if args.plans else run(args, url))
    finally:
        await admin.drop_database(args.server_url, name)


WITHOUT: dict[str, dict[str, list[str]]] = {
    # part: {function: the common table expressions taken out of it}
    "events": {"jobq_claim_jobs": ["logged"], "jobq_finish_attempts": ["logged"]},
    "aggregates": {"jobq_claim_jobs": ["waited"],
                   "jobq_finish_attempts": ["ran", "by_worker", "failures"]},
    "counts": {},
}
"""What `--without` takes out of the claim and the finish; `counts` drops a trigger instead."""


def _cut(definition: str, name: str) -> str:
    """`definition` without its common table expression `name`: from the `),` that opens it
    to the `)` that closes it (both at the functions' four-space indentation)."""
    opening = f"\n    ), {name} AS ("
    start = definition.find(opening)
    if start < 0:
        raise SystemExit(f"--without: no CTE {name!r} in the function; update WITHOUT")
    return definition[:start] + definition[definition.index("\n    )", start + 1):]


async def leave_out(url: str, parts: list[str]) -> None:
    conn = await asyncpg.connect(url)
    try:
        cuts: dict[str, list[str]] = {}
        for part in parts:
            for function, names in WITHOUT[part].items():
                cuts.setdefault(function, []).extend(names)
        for function, names in cuts.items():
            definition = await conn.fetchval(
                "SELECT pg_get_functiondef(oid) FROM pg_proc WHERE proname = $1", function)
            for name in names:
                definition = _cut(definition, name)
            await conn.execute(definition)
        if "counts" in parts:
            await conn.execute("DROP TRIGGER jobq_count_updated ON procrastinate_jobs")
    finally:
        await conn.close()
    print(f"left out: {', '.join(parts)}")


async def run(args: argparse.Namespace, url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        if args.history:
            await write_history(conn, args.history)
        for start in range(0, args.jobs, 1000):
            async with conn.transaction():
                await jobs.enqueue(conn, [NOOP] * min(1000, args.jobs - start))
        if args.analyze:
            await conn.execute("VACUUM ANALYZE")
        has_pss = True
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await conn.execute("SELECT pg_stat_statements_reset()")
        except asyncpg.PostgresError as error:
            has_pss = False
            print(f"(no statement statistics: {error})")
        await asyncio.sleep(11)  # the enqueue's statistics sent before the first reading
        lock = conn.transaction()
        await lock.start()
        await conn.execute("LOCK TABLE procrastinate_jobs IN EXCLUSIVE MODE")
        # The retention pass held off as in the benchmarks: at its default it may delete the
        # drained jobs mid-drain, and its deletions would be counted as the drain's cost.
        env = {"JOBQ_RETENTION_INTERVAL_SECONDS": WORKER_RETENTION_INTERVAL, **os.environ,
               "DATABASE_URL": url}
        workers = [subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker", "--concurrency",
             str(args.concurrency), "--name", f"cost-{n}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for n in range(args.processes)]
        try:
            deadline = time.monotonic() + 60
            probe = await asyncpg.connect(url)
            try:
                while await probe.fetchval("SELECT count(*) FROM workers") < args.processes:
                    if time.monotonic() > deadline:
                        raise TimeoutError("the workers did not register")
                    await asyncio.sleep(0.2)
                await asyncio.sleep(2)  # start-up writes flushed to the statistics
                rows_before = await table_stats(probe)
                commits_before = await commits(probe)
                cpu = ServerCpu(args.data_dir)
                cpu.sample()
                started = time.monotonic()
                await lock.rollback()
                while True:
                    await asyncio.sleep(0.1)
                    cpu.sample()
                    if not await probe.fetchval(
                            "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status = 'todo')"
                            " OR EXISTS (SELECT 1 FROM procrastinate_jobs WHERE status = 'doing')"):
                        break
                cpu.sample()
                seconds = time.monotonic() - started
                # Idle sessions send their statistics within 10 s; the workers still run, so
                # what their exit writes (their jobs' worker_id set to NULL by the foreign
                # key) is not counted.
                await asyncio.sleep(11)
                rows_after = await table_stats(probe)
                commits_after = await commits(probe)
            finally:
                await probe.close()
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=30)
        report(args, seconds, cpu, commits_after - commits_before, rows_before, rows_after)
        if has_pss:
            await statements(conn, args)
    finally:
        await conn.close()


async def plans(args: argparse.Namespace, url: str) -> None:
    """Issue 17's plan that went bad: statistics taken while the tables were empty, then one
    session (as a pooled connection) works in batches of 100 while the tables grow."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("VACUUM ANALYZE")
        worker_id = await conn.fetchval("SELECT procrastinate_register_worker_v1()")
        times: list[tuple[float, float, float]] = []
        for _ in range(args.plans):
            t0 = time.perf_counter()
            async with conn.transaction():
                await jobs.enqueue(conn, [NOOP] * 100)
            t1 = time.perf_counter()
            ids = [r["attempt_id"] for r in await conn.fetch(
                "SELECT attempt_id FROM jobq_claim_jobs(NULL, $1, 'plans', 100)", worker_id)]
            t2 = time.perf_counter()
            await conn.fetch("SELECT * FROM jobq_finish_attempts($1, $2, $3, $4, $5)", ids,
                             ["succeeded"] * len(ids), ["null"] * len(ids), [None] * len(ids),
                             [None] * len(ids))
            t3 = time.perf_counter()
            times.append((t1 - t0, t2 - t1, t3 - t2))
    finally:
        await conn.close()
    print("batches of 100 after VACUUM ANALYZE of empty tables (ms): submit / claim / finish")
    for number in sorted({1, 2, args.plans // 4, args.plans // 2, args.plans}):
        if number >= 1:
            submit, claim, finish = (t * 1000 for t in times[number - 1])
            print(f"  batch {number:5}: {submit:7.1f} / {claim:7.1f} / {finish:7.1f}")


def report(args: argparse.Namespace, seconds: float, cpu: ServerCpu, commit_count: int,
           before: dict, after: dict) -> None:
    n = args.jobs
    print(f"{n} jobs, {args.processes} x concurrency {args.concurrency}"
          f"{', analyzed' if args.analyze else ''}: {seconds:.2f} s, "
          f"{n / seconds:,.0f} jobs/s")
    print(f"server CPU per job: {cpu.total() / n * 1e6:,.0f} us (every server process; "
          f"{cpu.total():.2f} s): sessions {cpu.total('client') / n * 1e6:,.0f}, autovacuum "
          f"{cpu.total('autovacuum') / n * 1e6:,.0f}, background (WAL writer, checkpointer...) "
          f"{cpu.total('background') / n * 1e6:,.0f}")
    print(f"commits per job: {commit_count / n:.3f}")
    print("rows per job          inserted updated deleted (HOT updates)")
    total = 0.0
    for table in sorted(after):
        b = before.get(table, {"ins": 0, "upd": 0, "del": 0, "hot": 0})
        d = {k: (after[table][k] - b[k]) / n for k in ("ins", "upd", "del", "hot")}
        if any(abs(v) >= 0.0005 for v in d.values()):
            total += d["ins"] + d["upd"] + d["del"]
            print(f"  {table:26} {d['ins']:6.3f} {d['upd']:6.3f} {d['del']:6.3f}"
                  f"  ({d['hot']:.3f})")
    print(f"  {'every table':26} {total:6.3f} rows written")


async def statements(conn: asyncpg.Connection, args: argparse.Namespace) -> None:
    rows = await conn.fetch(
        """
        SELECT toplevel, calls, total_exec_time,
               regexp_replace(left(query, 120), '\\s+', ' ', 'g') AS query
        FROM pg_stat_statements
        WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
        ORDER BY total_exec_time DESC LIMIT $1
        """, args.statements)
    print("statements by execution time: us per job, calls per job (nested ones marked -)")
    for r in rows:
        print(f"  {'' if r['toplevel'] else '-'}{r['total_exec_time'] * 1000 / args.jobs:7.1f}"
              f" {r['calls'] / args.jobs:6.3f}  {r['query']}")


if __name__ == "__main__":
    asyncio.run(main())
