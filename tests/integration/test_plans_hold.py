"""The hot path's plans cannot flip to reading whole tables.

Issue 17: after `VACUUM ANALYZE` of near-empty tables, one pooled session cached a plan that
scanned `jobs` sequentially for each foreign-key check of a new `job_events` row, and batches
of 100 slowed from 14 to 60 ms as the table grew. Time is a poor witness on a shared machine,
so this test counts what such a plan does: rows read by sequential scans of the job tables
(`pg_stat_user_tables.seq_tup_read`). One session submits, claims and finishes batches of 100
while the tables grow from empty (statistics taken when they were empty) — then again after
`ANALYZE` with a history of finished jobs. Every step looks its rows up by key, so the
sequential reads stay near zero whatever the tables hold; a flipped plan reads the whole table
once per row or per batch and is counted in the hundreds of thousands.
"""

from __future__ import annotations

import asyncio

import asyncpg

from service import jobs
from service.db import admin, migrate
from service.domain import jobtypes
from tests.conftest import new_database

NOOP = jobs.JobRequest(type=jobtypes.SYSTEM_NOOP.name)
HOT_TABLES = ("procrastinate_jobs", "jobs", "job_attempts", "job_events")
BATCH = 100


async def _seq_reads(conn: asyncpg.Connection) -> dict[str, int]:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    rows = await conn.fetch("SELECT relname, seq_tup_read FROM pg_stat_user_tables "
                            "WHERE relname = ANY($1::text[])", list(HOT_TABLES))
    return {r["relname"]: r["seq_tup_read"] for r in rows}


async def _finished(conn: asyncpg.Connection) -> int:
    await conn.execute("SELECT pg_stat_clear_snapshot()")
    return await conn.fetchval(
        "SELECT n_tup_upd FROM pg_stat_user_tables WHERE relname = 'job_attempts'")


async def _work(url: str, batches: int) -> None:
    """One session, as a pooled connection is: submit a batch, claim it, finish it."""
    conn = await asyncpg.connect(url)
    try:
        worker_id = await conn.fetchval("SELECT procrastinate_register_worker_v1()")
        for _ in range(batches):
            async with conn.transaction():
                await jobs.enqueue(conn, [NOOP] * BATCH)
            claimed = await conn.fetch("SELECT attempt_id FROM jobq_claim_jobs(NULL, $1, $2, $3)",
                                       worker_id, "plans", BATCH)
            assert len(claimed) == BATCH
            ids = [r["attempt_id"] for r in claimed]
            finished = await conn.fetch(
                "SELECT * FROM jobq_finish_attempts($1, $2, $3, $4, $5)", ids,
                ["succeeded"] * BATCH, ["null"] * BATCH, [None] * BATCH, [None] * BATCH)
            assert len(finished) == BATCH
    finally:
        await conn.close()  # its statistics are sent as the session ends


async def _measure(url: str, batches: int, before_updates: int) -> dict[str, int]:
    probe = await asyncpg.connect(url)
    try:
        before = await _seq_reads(probe)
        await _work(url, batches)
        for _ in range(100):  # the ended session's statistics arrive
            if await _finished(probe) >= before_updates + batches * BATCH:
                break
            await asyncio.sleep(0.1)
        after = await _seq_reads(probe)
    finally:
        await probe.close()
    return {t: after[t] - before[t] for t in HOT_TABLES}


async def test_plans_hold_after_analyze_of_empty_tables_and_with_a_history(server_url: str):
    url = await new_database(server_url, "jobq_plans")
    try:
        await asyncio.to_thread(migrate.upgrade, url)
        admin_conn = await asyncpg.connect(url)
        try:
            await admin_conn.execute("VACUUM ANALYZE")  # statistics of empty tables
        finally:
            await admin_conn.close()

        grown = await _measure(url, batches=60, before_updates=0)
        # 60 batches into tables that grow to 6,000 jobs: one whole-table scan per row
        # would read about 18 million rows, one per batch about 180,000.
        assert all(reads < 2 * BATCH for reads in grown.values()), grown

        admin_conn = await asyncpg.connect(url)
        try:
            await admin_conn.execute("VACUUM ANALYZE")  # now with a history of 6,000
        finally:
            await admin_conn.close()
        again = await _measure(url, batches=20, before_updates=60 * BATCH)
        assert all(reads < 2 * BATCH for reads in again.values()), again
    finally:
        await admin.drop_database(server_url, admin.database_name(url))
