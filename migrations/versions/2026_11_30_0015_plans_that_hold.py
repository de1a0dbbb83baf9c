"""The hot path's plans cannot flip, and it writes less (issue 17).

Revision ID: 0015
Revises: 0014
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
down_revision = "0014"
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

# Functions whose comments named the cascade: the same text, the comment updated.
CLEAN_QUEUE = r"""
CREATE OR REPLACE FUNCTION public.jobq_clean_queue(p_queue character varying, p_status text, p_older_than_seconds double precision, p_limit integer, p_policy boolean DEFAULT false)
 RETURNS integer
 LANGUAGE plpgsql
 SET enable_sort TO 'off'
 SET jit TO 'off'
AS $function$
-- Delete up to p_limit jobs of queue p_queue that ended p_status (succeeded, failed,
-- cancelled) more than p_older_than_seconds ago, oldest first, with everything recorded about
-- them and their files; returns how many. p_policy: the queue's retention is applying this,
-- so jobs with their own retention for this status are left to it.
DECLARE
    v_statuses procrastinate_job_status[] := jobq_finished_statuses(p_status);
    v_before timestamptz := now() - make_interval(secs => p_older_than_seconds);
    v_deleted integer;
BEGIN
    IF v_statuses IS NULL THEN
        RAISE 'unknown finished status %', p_status USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH doomed AS (
        SELECT pj.id
        FROM jobs AS j
        JOIN procrastinate_jobs AS pj ON pj.id = j.queue_job_id
        WHERE j.created_at < v_before
          AND pj.queue_name = p_queue
          AND pj.status = ANY (v_statuses)
          AND NOT (p_policy AND coalesce(j.retention ? p_status, false))
          AND (SELECT max(e.at) FROM job_events AS e WHERE e.job_id = j.id) < v_before
        ORDER BY j.created_at, j.id
        LIMIT p_limit
        FOR UPDATE OF pj SKIP LOCKED
    ), gone AS (
        -- jobs, their attempts, events and file links follow (jobq_forget_jobs)
        DELETE FROM procrastinate_jobs WHERE id IN (SELECT id FROM doomed) RETURNING id
    )
    SELECT count(*) INTO v_deleted FROM gone;
    RETURN v_deleted;
END;
$function$;
"""

CLEAN_QUEUE_0013 = r"""
CREATE OR REPLACE FUNCTION public.jobq_clean_queue(p_queue character varying, p_status text, p_older_than_seconds double precision, p_limit integer, p_policy boolean DEFAULT false)
 RETURNS integer
 LANGUAGE plpgsql
 SET enable_sort TO 'off'
 SET jit TO 'off'
AS $function$
-- Delete up to p_limit jobs of queue p_queue that ended p_status (succeeded, failed,
-- cancelled) more than p_older_than_seconds ago, oldest first, with everything recorded about
-- them and their files; returns how many. p_policy: the queue's retention is applying this,
-- so jobs with their own retention for this status are left to it.
DECLARE
    v_statuses procrastinate_job_status[] := jobq_finished_statuses(p_status);
    v_before timestamptz := now() - make_interval(secs => p_older_than_seconds);
    v_deleted integer;
BEGIN
    IF v_statuses IS NULL THEN
        RAISE 'unknown finished status %', p_status USING ERRCODE = 'invalid_parameter_value';
    END IF;
    WITH doomed AS (
        SELECT pj.id
        FROM jobs AS j
        JOIN procrastinate_jobs AS pj ON pj.id = j.queue_job_id
        WHERE j.created_at < v_before
          AND pj.queue_name = p_queue
          AND pj.status = ANY (v_statuses)
          AND NOT (p_policy AND coalesce(j.retention ? p_status, false))
          AND (SELECT max(e.at) FROM job_events AS e WHERE e.job_id = j.id) < v_before
        ORDER BY j.created_at, j.id
        LIMIT p_limit
        FOR UPDATE OF pj SKIP LOCKED
    ), gone AS (
        -- jobs, their attempts, events and file links follow through ON DELETE CASCADE
        DELETE FROM procrastinate_jobs WHERE id IN (SELECT id FROM doomed) RETURNING id
    )
    SELECT count(*) INTO v_deleted FROM gone;
    RETURN v_deleted;
END;
$function$;
"""

DELETE_JOB = r"""
CREATE OR REPLACE FUNCTION public.jobq_delete_job(p_job_id uuid, OUT verdict text, OUT prior_status text)
 RETURNS record
 LANGUAGE plpgsql
AS $function$
-- A client deletes a finished job with everything recorded about it ('deleted'); a queued,
-- scheduled or running job is 'refused'. No such job: both NULL.
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM jobq_lock_job(p_job_id);
    IF r.queue_job_id IS NULL THEN
        RETURN;
    END IF;
    prior_status := r.status;
    IF r.status NOT IN ('succeeded', 'failed', 'cancelled') THEN
        verdict := 'refused';
        RETURN;
    END IF;
    -- Our rows (job, attempts, events, file links) follow (jobq_forget_jobs).
    DELETE FROM procrastinate_jobs WHERE id = r.queue_job_id;
    verdict := 'deleted';
END;
$function$;
"""

DELETE_JOB_0013 = r"""
CREATE OR REPLACE FUNCTION public.jobq_delete_job(p_job_id uuid, OUT verdict text, OUT prior_status text)
 RETURNS record
 LANGUAGE plpgsql
AS $function$
-- A client deletes a finished job with everything recorded about it ('deleted'); a queued,
-- scheduled or running job is 'refused'. No such job: both NULL.
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM jobq_lock_job(p_job_id);
    IF r.queue_job_id IS NULL THEN
        RETURN;
    END IF;
    prior_status := r.status;
    IF r.status NOT IN ('succeeded', 'failed', 'cancelled') THEN
        verdict := 'refused';
        RETURN;
    END IF;
    -- Our rows (job, attempts, events, file links) follow through ON DELETE CASCADE.
    DELETE FROM procrastinate_jobs WHERE id = r.queue_job_id;
    verdict := 'deleted';
END;
$function$;
"""

PURGE_FINISHED = r"""
CREATE OR REPLACE FUNCTION public.jobq_purge_finished(p_older_than interval, p_limit integer)
 RETURNS integer
 LANGUAGE sql
AS $function$
    -- Delete up to p_limit finished jobs submitted more than p_older_than ago, with their
    -- history; returns how many. Rows another transaction holds are skipped.
    WITH doomed AS (
        SELECT pj.id
        FROM procrastinate_jobs AS pj
        JOIN jobs AS j ON j.queue_job_id = pj.id
        WHERE pj.status IN ('succeeded', 'failed', 'cancelled', 'aborted')
          AND j.created_at < now() - p_older_than
        LIMIT p_limit
        FOR UPDATE OF pj SKIP LOCKED
    ), gone AS (
        -- jobs, their attempts, events and file links follow (jobq_forget_jobs)
        DELETE FROM procrastinate_jobs WHERE id IN (SELECT id FROM doomed) RETURNING id
    )
    SELECT count(*)::integer FROM gone
$function$;
"""

PURGE_FINISHED_0013 = r"""
CREATE OR REPLACE FUNCTION public.jobq_purge_finished(p_older_than interval, p_limit integer)
 RETURNS integer
 LANGUAGE sql
AS $function$
    -- Delete up to p_limit finished jobs submitted more than p_older_than ago, with their
    -- history; returns how many. Rows another transaction holds are skipped.
    WITH doomed AS (
        SELECT pj.id
        FROM procrastinate_jobs AS pj
        JOIN jobs AS j ON j.queue_job_id = pj.id
        WHERE pj.status IN ('succeeded', 'failed', 'cancelled', 'aborted')
          AND j.created_at < now() - p_older_than
        LIMIT p_limit
        FOR UPDATE OF pj SKIP LOCKED
    ), gone AS (
        -- jobs, their attempts, events and file links follow through ON DELETE CASCADE
        DELETE FROM procrastinate_jobs WHERE id IN (SELECT id FROM doomed) RETURNING id
    )
    SELECT count(*)::integer FROM gone
$function$;
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
    for function in (CLEAN_QUEUE, DELETE_JOB, PURGE_FINISHED):
        op.execute(function)
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
    for function in (CLEAN_QUEUE_0013, DELETE_JOB_0013, PURGE_FINISHED_0013):
        op.execute(function)
    for table, constraint, column, parent in FOREIGN_KEYS:
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {constraint} FOREIGN KEY ({column}) "
                   f"REFERENCES {parent}(id) ON DELETE CASCADE")
    op.execute("DROP TRIGGER jobq_forget_history ON jobs")
    op.execute("DROP FUNCTION jobq_forget_history()")
    op.execute("DROP TRIGGER jobq_forget_jobs ON procrastinate_jobs")
    op.execute("DROP FUNCTION jobq_forget_jobs()")
