"""The hot path's plans cannot flip, and it writes less (issue 17).

Revision ID: 0015
Revises: 0013 (the lead re-chains it after the newest revision on main when merging)
Create Date: 2026-11-30

1. No foreign keys on the hot path. After `VACUUM ANALYZE` of near-empty tables a session
   cached plans that read whole tables: the per-row checks of `job_events.job_id`,
   `job_attempts.job_id` (to `jobs`) and `jobs.queue_job_id` (to `procrastinate_jobs`) became
   sequential scans, and every batch slowed as the tables grew. Those rows are written only by
   jobq_* functions that hold the job (jobq_submit_jobs writes `jobs` in the statement that
   defers its queue row; the others lock it), so the checks guard nothing those functions do not
   already; each also locked the parent row (FOR KEY SHARE) and wrote WAL for it. The deletes
   they cascaded are now statement-level triggers: a queue row's deletion deletes its `jobs`
   row, a `jobs` row's deletion its attempts and events (`job_files` and `webhook_deliveries`
   keep their foreign keys: they are not written per job run).
2. Plans by shape, not by statistics. The functions of the hot path (submit, claim, finish and
   the trigger on job_events) look every row up by key in batches of a few hundred at most;
   they run with sequential scans, hash and merge joins disabled, so a plan cached while the
   tables looked empty cannot read a whole table when they are not. jobq_count_changes, which
   joins only its transition tables, states its own settings so that it plans the same from
   whichever function fires it.
3. Procrastinate's status-event triggers (`procrastinate_events`: deferred, scheduled, started,
   succeeded, ...) no longer fire for changes made by jobq_* functions, which keep each job's
   history in job_events and job_attempts: two rows and two trigger calls per job that said
   nothing new. They fire as before for Procrastinate's own functions and any other writer.
   The functions say so by setting `jobq.keeps_history` for their duration; the triggers' WHEN
   clauses read it.
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0013"
branch_labels = None
depends_on = None

FOREIGN_KEYS = (
    # (table, constraint, column, parent table)
    ("job_events", "fk_job_events_job_id_jobs", "job_id", "jobs"),
    ("job_attempts", "fk_job_attempts_job_id_jobs", "job_id", "jobs"),
    ("jobs", "fk_jobs_queue_job_id_procrastinate_jobs", "queue_job_id", "procrastinate_jobs"),
)

FORGET_JOBS = r"""
CREATE FUNCTION jobq_forget_jobs()
RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
-- Deleted queue rows take their jobs rows with them (what a cascading foreign key did): any
-- writer's delete, jobq's or Procrastinate's. Each job is looked up by its key.
BEGIN
    DELETE FROM jobs AS j
    WHERE j.queue_job_id = ANY (ARRAY(SELECT o.id FROM old_rows AS o));
    RETURN NULL;
END;
$$
"""

FORGET_JOBS_TRIGGER = """
CREATE TRIGGER jobq_forget_jobs AFTER DELETE ON procrastinate_jobs
REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION jobq_forget_jobs()
"""

FORGET_HISTORY = r"""
CREATE FUNCTION jobq_forget_history()
RETURNS trigger LANGUAGE plpgsql
SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off SET jit = off
AS $$
-- Deleted jobs take their attempts and events with them, looked up by job.
DECLARE
    v_ids uuid[] := ARRAY(SELECT g.id FROM gone_jobs AS g);
BEGIN
    DELETE FROM job_attempts AS a WHERE a.job_id = ANY (v_ids);
    DELETE FROM job_events AS e WHERE e.job_id = ANY (v_ids);
    RETURN NULL;
END;
$$
"""

FORGET_HISTORY_TRIGGER = """
CREATE TRIGGER jobq_forget_history AFTER DELETE ON jobs
REFERENCING OLD TABLE AS gone_jobs FOR EACH STATEMENT EXECUTE FUNCTION jobq_forget_history()
"""

FORGET_COUNTS_0013 = r"""
CREATE OR REPLACE FUNCTION jobq_forget_counts()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- TRUNCATE of the queue: nothing is left to count.
    DELETE FROM queue_counts;
    RETURN NULL;
END;
$$
"""

FORGET_COUNTS = r"""
CREATE OR REPLACE FUNCTION jobq_forget_counts()
RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- TRUNCATE of the queue: nothing is left to count, and no job is left (what TRUNCATE ...
    -- CASCADE did through the foreign key; their history follows through jobq_forget_history).
    DELETE FROM queue_counts;
    DELETE FROM jobs;
    RETURN NULL;
END;
$$
"""

HOT_FUNCTIONS = (
    "jobq_submit_jobs(uuid[], varchar[], varchar[], integer[], timestamptz[], text[], "
    "integer[], double precision[], text[], text, text[], text[], text[], text[], text[], "
    "boolean, boolean[], boolean[], text[])",
    "jobq_claim_jobs(varchar[], bigint, text, integer)",
    "jobq_claim_limited(varchar[], varchar[], integer)",
    "jobq_finish_attempts(bigint[], text[], text[], text[], timestamptz[], boolean)",
    "jobq_job_events_inserted()",
)

KEEPS_HISTORY = (
    HOT_FUNCTIONS[0], HOT_FUNCTIONS[1], HOT_FUNCTIONS[3],
    "jobq_cancel_job(uuid)", "jobq_retry_job(uuid)",
)

NOT_JOBQ = "current_setting('jobq.keeps_history', true) IS DISTINCT FROM 'on'"

# Procrastinate's triggers (revision 0001), as they were, and with jobq's condition added.
STATUS_TRIGGERS = (
    ("procrastinate_trigger_status_events_insert_v1",
     "AFTER INSERT ON procrastinate_jobs FOR EACH ROW",
     "new.status = 'todo'::procrastinate_job_status",
     "procrastinate_trigger_function_status_events_insert_v1"),
    ("procrastinate_trigger_status_events_update_v1",
     "AFTER UPDATE OF status ON procrastinate_jobs FOR EACH ROW",
     None,
     "procrastinate_trigger_function_status_events_update_v1"),
    ("procrastinate_trigger_scheduled_events_v1",
     "AFTER INSERT OR UPDATE ON procrastinate_jobs FOR EACH ROW",
     "new.scheduled_at IS NOT NULL AND new.status = 'todo'::procrastinate_job_status",
     "procrastinate_trigger_function_scheduled_events_v1"),
)


def _status_trigger(name: str, timing: str, condition: str | None, function: str,
                    jobq: bool) -> str:
    conditions = [c for c in (condition, NOT_JOBQ if jobq else None) if c]
    when = f" WHEN ({' AND '.join(conditions)})" if conditions else ""
    return f"CREATE TRIGGER {name} {timing}{when} EXECUTE FUNCTION {function}()"


def upgrade() -> None:
    op.execute(FORGET_JOBS)
    op.execute(FORGET_JOBS_TRIGGER)
    op.execute(FORGET_HISTORY)
    op.execute(FORGET_HISTORY_TRIGGER)
    for table, constraint, _, _ in FOREIGN_KEYS:
        op.execute(f"ALTER TABLE {table} DROP CONSTRAINT {constraint}")
    op.execute(FORGET_COUNTS)
    for function in HOT_FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} SET enable_seqscan = off")
        op.execute(f"ALTER FUNCTION {function} SET enable_hashjoin = off")
        op.execute(f"ALTER FUNCTION {function} SET enable_mergejoin = off")
    for setting in ("enable_seqscan", "enable_hashjoin", "enable_mergejoin"):
        op.execute(f"ALTER FUNCTION jobq_count_changes() SET {setting} = on")
    for function in KEEPS_HISTORY:
        op.execute(f"ALTER FUNCTION {function} SET jobq.keeps_history = 'on'")
    for name, timing, condition, function in STATUS_TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON procrastinate_jobs")
        op.execute(_status_trigger(name, timing, condition, function, jobq=True))


def downgrade() -> None:
    for name, timing, condition, function in STATUS_TRIGGERS:
        op.execute(f"DROP TRIGGER {name} ON procrastinate_jobs")
        op.execute(_status_trigger(name, timing, condition, function, jobq=False))
    for function in KEEPS_HISTORY:
        op.execute(f"ALTER FUNCTION {function} RESET jobq.keeps_history")
    for setting in ("enable_seqscan", "enable_hashjoin", "enable_mergejoin"):
        op.execute(f"ALTER FUNCTION jobq_count_changes() RESET {setting}")
        for function in HOT_FUNCTIONS:
            op.execute(f"ALTER FUNCTION {function} RESET {setting}")
    op.execute(FORGET_COUNTS_0013)
    for table, constraint, column, parent in FOREIGN_KEYS:
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {constraint} FOREIGN KEY ({column}) "
                   f"REFERENCES {parent}(id) ON DELETE CASCADE")
    op.execute("DROP TRIGGER jobq_forget_history ON jobs")
    op.execute("DROP FUNCTION jobq_forget_history()")
    op.execute("DROP TRIGGER jobq_forget_jobs ON procrastinate_jobs")
    op.execute("DROP FUNCTION jobq_forget_jobs()")
