"""Every change of a job's state is a jobq_* function; the dead jobq_finish_attempt goes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23

Cancel, retry and delete (Procrastinate's library and SQL strings in service/jobs.py before),
purge (service/retention.py) and pausing a queue (service/queues.py) are functions now, each
deciding in one statement, under the job's lock, whether the change is allowed.

Recovering a dead worker's job asks the job type's retry policy, like any other failed attempt:
jobq_recover_stalled, which requeued at once and counted the attempts itself, is replaced by
jobq_lock_stalled_attempts (which attempts were lost, locked) and jobq_finish_attempts with
p_lost (record the outcome Python decided, the attempt as `lost`). jobq_finish_attempts returns
each applied attempt with the outcome it recorded, and its rule for cancelled jobs covers lost
attempts too. jobq_claim_jobs also returns the job's own backoff, so that a failed attempt needs
no second read. jobq_hold_lease is the one test of "this attempt is still open" for single
writes (progress, a conversion's output); jobq_finish_attempts applies it to a whole batch.

The function texts are copied from migrations/schema.sql (the schema at 0008) and changed; the
downgrade restores them from the same file.
"""

from __future__ import annotations

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

LOCK_JOB = """
CREATE FUNCTION jobq_lock_job(
    p_job_id uuid,
    OUT queue_job_id bigint, OUT queue_name varchar, OUT status text, OUT abort_requested boolean
)
LANGUAGE sql AS $$
    -- A job's queue row, locked for the rest of the transaction, with its public status.
    -- All NULL when there is no such job.
    SELECT pj.id, pj.queue_name, v.status, pj.abort_requested
    FROM jobs AS j
    JOIN procrastinate_jobs AS pj ON pj.id = j.queue_job_id
    JOIN job_overview AS v ON v.id = j.id
    WHERE j.id = p_job_id
    FOR UPDATE OF pj
$$
"""

CANCEL_JOB = """
CREATE FUNCTION jobq_cancel_job(p_job_id uuid, OUT verdict text, OUT prior_status text)
LANGUAGE plpgsql AS $$
-- A client cancels a job. Queued or scheduled: cancelled now (verdict 'cancelled'). Running:
-- its worker is asked to stop it ('cancel_requested'; Procrastinate's trigger notifies the
-- worker, and jobq_finish_attempts records the attempt as cancelled); asked already:
-- 'unchanged'. Finished: 'refused'. No such job: both NULL. prior_status: the public status
-- the job had.
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM jobq_lock_job(p_job_id);
    IF r.queue_job_id IS NULL THEN
        RETURN;
    END IF;
    prior_status := r.status;
    IF r.status NOT IN ('queued', 'scheduled', 'running') THEN
        verdict := 'refused';
    ELSIF r.abort_requested THEN
        verdict := 'unchanged';
    ELSE
        PERFORM procrastinate_cancel_job_v1(r.queue_job_id, true, false);
        verdict := CASE WHEN r.status = 'running' THEN 'cancel_requested' ELSE 'cancelled' END;
        INSERT INTO job_events (job_id, event, message)
        VALUES (p_job_id, verdict, 'cancelled by a client');
    END IF;
END;
$$
"""

RETRY_JOB = """
CREATE FUNCTION jobq_retry_job(p_job_id uuid, OUT verdict text, OUT prior_status text)
LANGUAGE plpgsql AS $$
-- A client retries a failed or cancelled job: back to the queue with a fresh attempt budget
-- ('retried'); any other status: 'refused'. No such job: both NULL. Its attempts and events
-- stay: job_attempts.number keeps counting across budgets.
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM jobq_lock_job(p_job_id);
    IF r.queue_job_id IS NULL THEN
        RETURN;
    END IF;
    prior_status := r.status;
    IF r.status NOT IN ('failed', 'cancelled') THEN
        verdict := 'refused';
        RETURN;
    END IF;
    UPDATE procrastinate_jobs
    SET status = 'todo', attempts = 0, scheduled_at = NULL, abort_requested = false,
        worker_id = NULL
    WHERE id = r.queue_job_id;
    UPDATE jobs SET progress = 0, stage = NULL, progress_message = NULL, result = NULL
    WHERE id = p_job_id;
    INSERT INTO job_events (job_id, event, message)
    VALUES (p_job_id, 'retried', 'retried by a client with a fresh attempt budget');
    PERFORM jobq_notify_requeued(r.queue_name, r.queue_job_id);
    verdict := 'retried';
END;
$$
"""

DELETE_JOB = """
CREATE FUNCTION jobq_delete_job(p_job_id uuid, OUT verdict text, OUT prior_status text)
LANGUAGE plpgsql AS $$
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
$$
"""

PURGE_FINISHED = """
CREATE FUNCTION jobq_purge_finished(p_older_than interval, p_limit integer)
RETURNS integer LANGUAGE sql AS $$
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
$$
"""

SET_QUEUE_PAUSED = """
CREATE FUNCTION jobq_set_queue_paused(p_queue varchar, p_paused boolean)
RETURNS void LANGUAGE sql AS $$
    -- Pause or resume a queue for every worker (jobq_claim_jobs skips paused queues).
    INSERT INTO queues (name, paused, updated_at) VALUES (p_queue, p_paused, now())
    ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = now()
$$
"""

HOLD_LEASE = """
CREATE FUNCTION jobq_hold_lease(p_attempt_id bigint)
RETURNS uuid LANGUAGE sql AS $$
    -- The job of an attempt that is still open, the attempt locked until the caller's
    -- transaction ends, so that it cannot be closed (finished, recovered as lost) meanwhile;
    -- NULL once it is closed: the lease is lost and the caller must write nothing.
    SELECT a.job_id FROM job_attempts AS a
    WHERE a.id = p_attempt_id AND a.finished_at IS NULL
    FOR SHARE
$$
"""

REPORT_PROGRESS = """
CREATE FUNCTION jobq_report_progress(
    p_attempt_id bigint, p_percent integer, p_stage text, p_message text
)
RETURNS boolean LANGUAGE plpgsql AS $$
-- Store a running job's progress under its attempt's lease; false (and nothing written) once
-- the lease is lost.
DECLARE
    v_job uuid := jobq_hold_lease(p_attempt_id);
BEGIN
    IF v_job IS NULL THEN
        RETURN false;
    END IF;
    UPDATE jobs SET progress = p_percent, stage = p_stage, progress_message = p_message,
                    progress_updated_at = now()
    WHERE id = v_job;
    RETURN true;
END;
$$
"""

LOCK_STALLED_ATTEMPTS = """
CREATE FUNCTION jobq_lock_stalled_attempts(p_stall_seconds double precision)
RETURNS TABLE (
    attempt_id bigint, job_id uuid, task_name varchar, budget_attempt integer,
    max_attempts integer, backoff jsonb
)
LANGUAGE sql AS $$
    -- Open attempts whose worker is gone or silent for p_stall_seconds, with what the job's
    -- retry policy needs. They stay locked until the caller's transaction ends (attempts first,
    -- in id order, as jobq_finish_attempts locks them), which then records their outcome with
    -- jobq_finish_attempts(..., p_lost => true). Rows another recovery holds are skipped, so
    -- any number of recoveries may run at once.
    SELECT a.id, j.id, pj.task_name, pj.attempts + 1, j.max_attempts, j.backoff
    FROM procrastinate_jobs AS pj
    JOIN jobs AS j ON j.queue_job_id = pj.id
    JOIN job_attempts AS a ON a.job_id = j.id AND a.finished_at IS NULL
    LEFT JOIN procrastinate_workers AS w ON w.id = pj.worker_id
    WHERE pj.status = 'doing'
      AND (w.id IS NULL OR w.last_heartbeat < now() - make_interval(secs => p_stall_seconds))
    ORDER BY a.id
    FOR UPDATE OF a SKIP LOCKED
$$
"""

CLAIM_JOBS = """
CREATE FUNCTION jobq_claim_jobs(
    p_queues varchar[], p_worker_id bigint, p_worker_name text, p_limit integer
)
RETURNS TABLE (
    attempt_id bigint, job_id uuid, attempt integer, budget_attempt integer,
    task_name varchar, queue_name varchar, payload jsonb, max_attempts integer,
    timeout_seconds double precision, backoff jsonb
)
LANGUAGE plpgsql
-- Take the jobs in the priority index's order, never by sorting the whole queue: right after a
-- bulk insert the statistics claim a handful of queued rows, and the planner chose to sort the
-- 20,000 there were, on every call. Sorting only the few claimed rows is still allowed.
SET enable_sort = off
-- The cost that forbids the sort would otherwise pass JIT's threshold: compiling took 200 ms.
SET jit = off
AS $$
#variable_conflict use_column
DECLARE
    v_ids bigint[];
BEGIN
    -- Procrastinate's fetch order and lock rules (priority, then age; a job waits while an
    -- earlier or higher-priority job with its lock is queued or running), paused queues skipped.
    -- The checks are written so that they cannot become joins: evaluated row by row along the
    -- priority index, they stop at the limit, whatever the statistics say.
    SELECT array_agg(c.id) INTO v_ids FROM (
        SELECT pj.id
        FROM procrastinate_jobs AS pj
        WHERE pj.status = 'todo'
          AND (p_queues IS NULL OR pj.queue_name = ANY (p_queues))
          AND (pj.scheduled_at IS NULL OR pj.scheduled_at <= now())
          AND (SELECT true FROM jobs AS j WHERE j.queue_job_id = pj.id)
          AND NOT coalesce((SELECT q.paused FROM queues AS q WHERE q.name = pj.queue_name),
                           false)
          AND (pj.lock IS NULL OR NOT EXISTS (
              SELECT 1 FROM procrastinate_jobs AS other
              WHERE other.lock = pj.lock
                AND (other.status = 'doing'
                     OR (other.status = 'todo'
                         AND (other.priority > pj.priority
                              OR (other.priority = pj.priority AND other.id < pj.id))))
          ))
        ORDER BY pj.priority DESC, pj.id ASC
        LIMIT p_limit
        FOR UPDATE OF pj SKIP LOCKED
    ) AS c;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    -- Each claimed job gets an open attempt: its id is the lease's fencing token. Every step
    -- looks its rows up by the claimed ids.
    RETURN QUERY
    WITH claimed AS (
        UPDATE procrastinate_jobs AS pj
        SET status = 'doing', worker_id = p_worker_id
        WHERE pj.id = ANY (v_ids)
        RETURNING pj.id, pj.task_name, pj.queue_name, pj.attempts, pj.priority
    ), owned AS (
        SELECT j.id, j.queue_job_id, j.payload, j.max_attempts, j.timeout_seconds, j.backoff
        FROM jobs AS j WHERE j.queue_job_id = ANY (v_ids)
    ), opened AS (
        INSERT INTO job_attempts (job_id, number, worker_id, worker_name)
        SELECT w.id,
               COALESCE((SELECT max(a.number) FROM job_attempts AS a WHERE a.job_id = w.id), 0) + 1,
               p_worker_id, p_worker_name
        FROM owned AS w
        RETURNING id, job_id, number
    ), logged AS (
        INSERT INTO job_events (job_id, event, attempt, worker_name)
        SELECT o.job_id, 'started', o.number, p_worker_name FROM opened AS o
    )
    SELECT o.id, o.job_id, o.number, c.attempts + 1, c.task_name, c.queue_name,
           w.payload, w.max_attempts, w.timeout_seconds, w.backoff
    FROM opened AS o
    JOIN owned AS w ON w.id = o.job_id
    JOIN claimed AS c ON c.id = w.queue_job_id
    ORDER BY c.priority DESC, c.id ASC;
END;
$$
"""

FINISH_ATTEMPTS = """
CREATE FUNCTION jobq_finish_attempts(
    p_attempt_ids bigint[], p_outcomes text[], p_results text[], p_errors text[],
    p_retry_at timestamptz[], p_lost boolean DEFAULT false
)
RETURNS TABLE (attempt_id bigint, outcome text) LANGUAGE plpgsql
SET jit = off
-- Planned once per connection: replanning this statement cost more than running it.
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
-- Record how many attempts ended and move their jobs on, in a handful of statements whatever
-- the batch size: per attempt its row, the queue row, our job row and an event. The outcomes
-- are decided by the caller (service/domain/outcome.py), with one exception decided here, at
-- the moment of writing and under the job's lock: a job a client asked to cancel
-- (abort_requested) is never run again, so an outcome that would requeue it (retry,
-- interrupted, any outcome of a lost attempt) is recorded as cancelled.
-- Fenced: an attempt no longer open changes nothing and is not returned. The others are
-- returned with the outcome recorded. p_lost: the attempts' worker is gone (recovery): they
-- are recorded as `lost` and their job moves as the outcome says.
DECLARE
    v_applied bigint[];
    v_outcomes text[];
    v_requeued_queues varchar[];
    v_requeued_jobs bigint[];
    i integer;
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(p_outcomes) AS o(outcome)
               WHERE o.outcome IS NULL
                  OR o.outcome NOT IN ('succeeded', 'failed', 'retry', 'cancelled',
                                       'interrupted')) THEN
        RAISE 'unknown attempt outcome in %', p_outcomes;
    END IF;

    WITH input AS (
        SELECT * FROM unnest(p_attempt_ids, p_outcomes, p_results, p_errors, p_retry_at)
            AS t(attempt_id, outcome, result, error, retry_at)
    ), fenced AS (
        SELECT a.id, a.job_id, a.number, a.worker_name
        FROM job_attempts AS a
        WHERE a.id = ANY (p_attempt_ids) AND a.finished_at IS NULL
        ORDER BY a.id
        FOR UPDATE OF a
    ), target AS MATERIALIZED (
        SELECT f.id AS attempt_id, f.job_id, f.number, f.worker_name,
               pj.id AS queue_job_id, pj.queue_name,
               CASE WHEN pj.abort_requested AND (p_lost OR i.outcome IN ('retry', 'interrupted'))
                    THEN 'cancelled' ELSE i.outcome END AS outcome,
               i.result::jsonb AS result, i.error::jsonb AS error, i.retry_at
        FROM fenced AS f
        JOIN input AS i ON i.attempt_id = f.id
        JOIN jobs AS j ON j.id = f.job_id
        JOIN procrastinate_jobs AS pj ON pj.id = j.queue_job_id
        ORDER BY pj.id
        FOR UPDATE OF pj
    ), closed AS (
        UPDATE job_attempts AS a
        SET finished_at = now(), outcome = CASE WHEN p_lost THEN 'lost' ELSE t.outcome END,
            error = t.error
        FROM target AS t WHERE a.id = t.attempt_id
    ), moved AS (
        UPDATE procrastinate_jobs AS pj
        SET status = (CASE t.outcome
                          WHEN 'succeeded' THEN 'succeeded'
                          WHEN 'failed' THEN 'failed'
                          WHEN 'cancelled' THEN 'aborted'
                          ELSE 'todo'  -- retry, interrupted
                      END)::procrastinate_job_status,
            -- an interrupted attempt (worker shutdown) is not counted
            attempts = pj.attempts + CASE WHEN t.outcome = 'interrupted' THEN 0 ELSE 1 END,
            abort_requested = CASE WHEN t.outcome IN ('retry', 'interrupted')
                                   THEN pj.abort_requested ELSE false END,
            scheduled_at = CASE t.outcome WHEN 'retry' THEN t.retry_at
                                          WHEN 'interrupted' THEN NULL
                                          ELSE pj.scheduled_at END,
            worker_id = CASE WHEN t.outcome IN ('retry', 'interrupted') THEN NULL
                             ELSE pj.worker_id END
        FROM target AS t WHERE pj.id = t.queue_job_id
    ), recorded AS (
        UPDATE jobs AS j
        SET result = CASE WHEN t.outcome = 'succeeded' THEN t.result ELSE j.result END,
            error = CASE WHEN t.outcome = 'succeeded' THEN NULL ELSE t.error END,
            progress = CASE WHEN t.outcome = 'succeeded' THEN 100 ELSE j.progress END,
            stage = CASE WHEN t.outcome = 'succeeded' THEN NULL ELSE j.stage END,
            progress_message = CASE WHEN t.outcome = 'succeeded' THEN NULL
                                    ELSE j.progress_message END,
            progress_updated_at = CASE WHEN t.outcome = 'succeeded' THEN now()
                                       ELSE j.progress_updated_at END
        FROM target AS t
        WHERE j.id = t.job_id AND t.outcome IN ('succeeded', 'failed', 'retry')
    ), logged AS (
        INSERT INTO job_events (job_id, event, attempt, worker_name, error, message)
        SELECT t.job_id,
               CASE t.outcome WHEN 'retry' THEN 'retry_scheduled'
                              WHEN 'interrupted' THEN 'requeued'
                              ELSE t.outcome END,
               t.number, CASE WHEN p_lost THEN NULL ELSE t.worker_name END, t.error,
               concat_ws('; ',
                         CASE WHEN p_lost THEN 'recovered from a lost worker' END,
                         CASE WHEN t.outcome = 'retry'
                              THEN 'next attempt at ' || t.retry_at::text END)
        FROM target AS t
    )
    SELECT array_agg(t.attempt_id), array_agg(t.outcome),
           array_agg(t.queue_name) FILTER (WHERE t.outcome IN ('retry', 'interrupted')),
           array_agg(t.queue_job_id) FILTER (WHERE t.outcome IN ('retry', 'interrupted'))
    INTO v_applied, v_outcomes, v_requeued_queues, v_requeued_jobs
    FROM target AS t;

    FOR i IN 1 .. coalesce(cardinality(v_requeued_jobs), 0) LOOP
        PERFORM jobq_notify_requeued(v_requeued_queues[i], v_requeued_jobs[i]);
    END LOOP;
    RETURN QUERY SELECT * FROM unnest(v_applied, v_outcomes);
END;
$$
"""

NEW_FUNCTIONS = {
    "jobq_lock_job(uuid)": LOCK_JOB,
    "jobq_cancel_job(uuid)": CANCEL_JOB,
    "jobq_retry_job(uuid)": RETRY_JOB,
    "jobq_delete_job(uuid)": DELETE_JOB,
    "jobq_purge_finished(interval, integer)": PURGE_FINISHED,
    "jobq_set_queue_paused(varchar, boolean)": SET_QUEUE_PAUSED,
    "jobq_hold_lease(bigint)": HOLD_LEASE,
    "jobq_report_progress(bigint, integer, text, text)": REPORT_PROGRESS,
    "jobq_lock_stalled_attempts(double precision)": LOCK_STALLED_ATTEMPTS,
}
"""Functions this revision adds, by signature, in an order that creates each after what it
calls."""

REPLACED = {
    "jobq_claim_jobs(varchar[], bigint, text, integer)": CLAIM_JOBS,
    "jobq_finish_attempts(bigint[], text[], text[], text[], timestamptz[])": FINISH_ATTEMPTS,
}
"""Functions whose result changes: dropped and created again."""

DROPPED = [
    "jobq_finish_attempt(bigint, text, jsonb, jsonb, timestamptz)",  # nothing calls it
    "jobq_recover_stalled(double precision)",  # jobq_lock_stalled_attempts + finish, p_lost
]

NEW_FINISH_ATTEMPTS = ("jobq_finish_attempts(bigint[], text[], text[], text[], timestamptz[], "
                       "boolean)")


def upgrade() -> None:
    for signature in DROPPED:
        op.execute(f"DROP FUNCTION {signature}")
    for signature, text in REPLACED.items():
        op.execute(f"DROP FUNCTION {signature}")
        op.execute(text)
    for text in NEW_FUNCTIONS.values():
        op.execute(text)


def downgrade() -> None:
    for signature in reversed(NEW_FUNCTIONS):
        op.execute(f"DROP FUNCTION {signature}")
    op.execute(f"DROP FUNCTION {NEW_FINISH_ATTEMPTS}")
    op.execute("DROP FUNCTION jobq_claim_jobs(varchar[], bigint, text, integer)")
    for text in (CLAIM_JOBS_0008, FINISH_ATTEMPTS_0008, FINISH_ATTEMPT_0008,
                 RECOVER_STALLED_0008):
        op.execute(text)


# -- as they were at revision 0008, copied from migrations/schema.sql of that revision ----------

CLAIM_JOBS_0008 = """
CREATE FUNCTION jobq_claim_jobs(p_queues character varying[], p_worker_id bigint, p_worker_name text, p_limit integer)
 RETURNS TABLE(attempt_id bigint, job_id uuid, attempt integer, budget_attempt integer, task_name character varying, queue_name character varying, payload jsonb, max_attempts integer, timeout_seconds double precision)
 LANGUAGE plpgsql
 SET enable_sort TO 'off'
 SET jit TO 'off'
AS $function$
#variable_conflict use_column
DECLARE
    v_ids bigint[];
BEGIN
    -- Procrastinate's fetch order and lock rules (priority, then age; a job waits while an
    -- earlier or higher-priority job with its lock is queued or running), paused queues skipped.
    -- The checks are written so that they cannot become joins: evaluated row by row along the
    -- priority index, they stop at the limit, whatever the statistics say.
    SELECT array_agg(c.id) INTO v_ids FROM (
        SELECT pj.id
        FROM procrastinate_jobs AS pj
        WHERE pj.status = 'todo'
          AND (p_queues IS NULL OR pj.queue_name = ANY (p_queues))
          AND (pj.scheduled_at IS NULL OR pj.scheduled_at <= now())
          AND (SELECT true FROM jobs AS j WHERE j.queue_job_id = pj.id)
          AND NOT coalesce((SELECT q.paused FROM queues AS q WHERE q.name = pj.queue_name),
                           false)
          AND (pj.lock IS NULL OR NOT EXISTS (
              SELECT 1 FROM procrastinate_jobs AS other
              WHERE other.lock = pj.lock
                AND (other.status = 'doing'
                     OR (other.status = 'todo'
                         AND (other.priority > pj.priority
                              OR (other.priority = pj.priority AND other.id < pj.id))))
          ))
        ORDER BY pj.priority DESC, pj.id ASC
        LIMIT p_limit
        FOR UPDATE OF pj SKIP LOCKED
    ) AS c;
    IF v_ids IS NULL THEN
        RETURN;
    END IF;
    -- Each claimed job gets an open attempt: its id is the lease's fencing token. Every step
    -- looks its rows up by the claimed ids.
    RETURN QUERY
    WITH claimed AS (
        UPDATE procrastinate_jobs AS pj
        SET status = 'doing', worker_id = p_worker_id
        WHERE pj.id = ANY (v_ids)
        RETURNING pj.id, pj.task_name, pj.queue_name, pj.attempts, pj.priority
    ), owned AS (
        SELECT j.id, j.queue_job_id, j.payload, j.max_attempts, j.timeout_seconds
        FROM jobs AS j WHERE j.queue_job_id = ANY (v_ids)
    ), opened AS (
        INSERT INTO job_attempts (job_id, number, worker_id, worker_name)
        SELECT w.id,
               COALESCE((SELECT max(a.number) FROM job_attempts AS a WHERE a.job_id = w.id), 0) + 1,
               p_worker_id, p_worker_name
        FROM owned AS w
        RETURNING id, job_id, number
    ), logged AS (
        INSERT INTO job_events (job_id, event, attempt, worker_name)
        SELECT o.job_id, 'started', o.number, p_worker_name FROM opened AS o
    )
    SELECT o.id, o.job_id, o.number, c.attempts + 1, c.task_name, c.queue_name,
           w.payload, w.max_attempts, w.timeout_seconds
    FROM opened AS o
    JOIN owned AS w ON w.id = o.job_id
    JOIN claimed AS c ON c.id = w.queue_job_id
    ORDER BY c.priority DESC, c.id ASC;
END;
$function$
"""

FINISH_ATTEMPTS_0008 = """
CREATE FUNCTION jobq_finish_attempts(p_attempt_ids bigint[], p_outcomes text[], p_results text[], p_errors text[], p_retry_at timestamp with time zone[])
 RETURNS SETOF bigint
 LANGUAGE plpgsql
 SET jit TO 'off'
 SET plan_cache_mode TO 'force_generic_plan'
AS $function$
-- jobq_finish_attempt for many attempts at once, set by set: a handful of statements whatever
-- the batch size. Fenced the same way: an attempt no longer open changes nothing and is not
-- returned.
DECLARE
    v_applied bigint[];
    v_requeued_queues varchar[];
    v_requeued_jobs bigint[];
    i integer;
BEGIN
    IF EXISTS (SELECT 1 FROM unnest(p_outcomes) AS o(outcome)
               WHERE o.outcome IS NULL
                  OR o.outcome NOT IN ('succeeded', 'failed', 'retry', 'cancelled',
                                       'interrupted')) THEN
        RAISE 'unknown attempt outcome in %', p_outcomes;
    END IF;

    WITH input AS (
        SELECT * FROM unnest(p_attempt_ids, p_outcomes, p_results, p_errors, p_retry_at)
            AS t(attempt_id, outcome, result, error, retry_at)
    ), fenced AS (
        SELECT a.id, a.job_id, a.number, a.worker_name
        FROM job_attempts AS a
        WHERE a.id = ANY (p_attempt_ids) AND a.finished_at IS NULL
        ORDER BY a.id
        FOR UPDATE OF a
    ), target AS MATERIALIZED (
        SELECT f.id AS attempt_id, f.job_id, f.number, f.worker_name,
               pj.id AS queue_job_id, pj.queue_name,
               -- a client cancelled the job meanwhile: do not run it again
               CASE WHEN pj.abort_requested AND i.outcome IN ('retry', 'interrupted')
                    THEN 'cancelled' ELSE i.outcome END AS outcome,
               i.result::jsonb AS result, i.error::jsonb AS error, i.retry_at
        FROM fenced AS f
        JOIN input AS i ON i.attempt_id = f.id
        JOIN jobs AS j ON j.id = f.job_id
        JOIN procrastinate_jobs AS pj ON pj.id = j.queue_job_id
        ORDER BY pj.id
        FOR UPDATE OF pj
    ), closed AS (
        UPDATE job_attempts AS a
        SET finished_at = now(), outcome = t.outcome, error = t.error
        FROM target AS t WHERE a.id = t.attempt_id
    ), moved AS (
        UPDATE procrastinate_jobs AS pj
        SET status = (CASE t.outcome
                          WHEN 'succeeded' THEN 'succeeded'
                          WHEN 'failed' THEN 'failed'
                          WHEN 'cancelled' THEN 'aborted'
                          ELSE 'todo'  -- retry, interrupted
                      END)::procrastinate_job_status,
            -- an interrupted attempt (worker shutdown) is not counted
            attempts = pj.attempts + CASE WHEN t.outcome = 'interrupted' THEN 0 ELSE 1 END,
            abort_requested = CASE WHEN t.outcome IN ('retry', 'interrupted')
                                   THEN pj.abort_requested ELSE false END,
            scheduled_at = CASE t.outcome WHEN 'retry' THEN t.retry_at
                                          WHEN 'interrupted' THEN NULL
                                          ELSE pj.scheduled_at END,
            worker_id = CASE WHEN t.outcome IN ('retry', 'interrupted') THEN NULL
                             ELSE pj.worker_id END
        FROM target AS t WHERE pj.id = t.queue_job_id
    ), recorded AS (
        UPDATE jobs AS j
        SET result = CASE WHEN t.outcome = 'succeeded' THEN t.result ELSE j.result END,
            error = CASE WHEN t.outcome = 'succeeded' THEN NULL ELSE t.error END,
            progress = CASE WHEN t.outcome = 'succeeded' THEN 100 ELSE j.progress END,
            stage = CASE WHEN t.outcome = 'succeeded' THEN NULL ELSE j.stage END,
            progress_message = CASE WHEN t.outcome = 'succeeded' THEN NULL
                                    ELSE j.progress_message END,
            progress_updated_at = CASE WHEN t.outcome = 'succeeded' THEN now()
                                       ELSE j.progress_updated_at END
        FROM target AS t
        WHERE j.id = t.job_id AND t.outcome IN ('succeeded', 'failed', 'retry')
    ), logged AS (
        INSERT INTO job_events (job_id, event, attempt, worker_name, error, message)
        SELECT t.job_id,
               CASE t.outcome WHEN 'retry' THEN 'retry_scheduled'
                              WHEN 'interrupted' THEN 'requeued'
                              ELSE t.outcome END,
               t.number, t.worker_name, t.error,
               CASE WHEN t.outcome = 'retry' THEN 'next attempt at ' || t.retry_at::text END
        FROM target AS t
    )
    SELECT array_agg(t.attempt_id),
           array_agg(t.queue_name) FILTER (WHERE t.outcome IN ('retry', 'interrupted')),
           array_agg(t.queue_job_id) FILTER (WHERE t.outcome IN ('retry', 'interrupted'))
    INTO v_applied, v_requeued_queues, v_requeued_jobs
    FROM target AS t;

    FOR i IN 1 .. coalesce(cardinality(v_requeued_jobs), 0) LOOP
        PERFORM jobq_notify_requeued(v_requeued_queues[i], v_requeued_jobs[i]);
    END LOOP;
    RETURN QUERY SELECT unnest(v_applied);
END;
$function$
"""

FINISH_ATTEMPT_0008 = """
CREATE FUNCTION jobq_finish_attempt(p_attempt_id bigint, p_outcome text, p_result jsonb, p_error jsonb, p_retry_at timestamp with time zone)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
-- Record how an attempt ended and move its job on, all or nothing. Fenced: an attempt that is no
-- longer open (recovered as lost, or finished already) changes nothing and returns false.
DECLARE
    v_job uuid;
    v_number integer;
    v_worker text;
    v_queue_job bigint;
    v_queue varchar;
    v_abort boolean;
    v_outcome text := p_outcome;
    v_event text;
BEGIN
    SELECT a.job_id, a.number, a.worker_name INTO v_job, v_number, v_worker
    FROM job_attempts AS a WHERE a.id = p_attempt_id AND a.finished_at IS NULL
    FOR UPDATE;
    IF v_job IS NULL THEN
        RETURN false;
    END IF;
    SELECT pj.id, pj.queue_name, pj.abort_requested INTO v_queue_job, v_queue, v_abort
    FROM jobs AS j JOIN procrastinate_jobs AS pj ON pj.id = j.queue_job_id
    WHERE j.id = v_job
    FOR UPDATE OF pj;
    IF v_abort AND v_outcome IN ('retry', 'interrupted') THEN
        v_outcome := 'cancelled';  -- a client cancelled the job meanwhile: do not run it again
    END IF;

    UPDATE job_attempts SET finished_at = now(), outcome = v_outcome, error = p_error
    WHERE id = p_attempt_id;

    IF v_outcome = 'succeeded' THEN
        UPDATE procrastinate_jobs SET status = 'succeeded', attempts = attempts + 1,
            abort_requested = false
        WHERE id = v_queue_job;
        UPDATE jobs SET result = p_result, error = NULL, progress = 100, stage = NULL, progress_message = NULL,
            progress_updated_at = now()
        WHERE id = v_job;
        v_event := 'succeeded';
    ELSIF v_outcome = 'failed' THEN
        UPDATE procrastinate_jobs SET status = 'failed', attempts = attempts + 1,
            abort_requested = false
        WHERE id = v_queue_job;
        UPDATE jobs SET error = p_error WHERE id = v_job;
        v_event := 'failed';
    ELSIF v_outcome = 'retry' THEN
        UPDATE procrastinate_jobs SET status = 'todo', attempts = attempts + 1,
            scheduled_at = p_retry_at, worker_id = NULL
        WHERE id = v_queue_job;
        UPDATE jobs SET error = p_error WHERE id = v_job;
        PERFORM jobq_notify_requeued(v_queue, v_queue_job);
        v_event := 'retry_scheduled';
    ELSIF v_outcome = 'cancelled' THEN
        UPDATE procrastinate_jobs SET status = 'aborted', attempts = attempts + 1,
            abort_requested = false
        WHERE id = v_queue_job;
        v_event := 'cancelled';
    ELSIF v_outcome = 'interrupted' THEN
        -- Stopped by a worker shutdown: back to the queue, the attempt not counted.
        UPDATE procrastinate_jobs SET status = 'todo', scheduled_at = NULL, worker_id = NULL
        WHERE id = v_queue_job;
        PERFORM jobq_notify_requeued(v_queue, v_queue_job);
        v_event := 'requeued';
    ELSE
        RAISE 'unknown attempt outcome %', v_outcome;
    END IF;

    INSERT INTO job_events (job_id, event, attempt, worker_name, error, message)
    VALUES (v_job, v_event, v_number, v_worker, p_error,
            CASE WHEN v_event = 'retry_scheduled' THEN 'next attempt at ' || p_retry_at::text END);
    RETURN true;
END;
$function$
"""

RECOVER_STALLED_0008 = """
CREATE FUNCTION jobq_recover_stalled(p_stall_seconds double precision)
 RETURNS TABLE(job_id uuid, outcome text)
 LANGUAGE plpgsql
AS $function$
-- Running jobs whose worker is gone or silent for p_stall_seconds: close the open attempt as
-- lost, then requeue the job (failed if its attempts are used up, cancelled if a client asked).
-- Safe to run from many workers at once: rows another run holds are skipped.
DECLARE
    r record;
    v_error jsonb;
    v_outcome text;
BEGIN
    FOR r IN
        SELECT pj.id AS queue_job_id, pj.queue_name, pj.attempts, pj.abort_requested,
               j.id AS job, j.max_attempts
        FROM procrastinate_jobs AS pj
        JOIN jobs AS j ON j.queue_job_id = pj.id
        LEFT JOIN procrastinate_workers AS w ON w.id = pj.worker_id
        WHERE pj.status = 'doing'
          AND (w.id IS NULL
               OR w.last_heartbeat < now() - make_interval(secs => p_stall_seconds))
        FOR UPDATE OF pj SKIP LOCKED
    LOOP
        v_error := jsonb_build_object(
            'type', 'WorkerLost',
            'message', 'The worker running this job stopped sending heartbeats.',
            'retryable', true);
        UPDATE job_attempts AS a SET finished_at = now(), outcome = 'lost', error = v_error
        WHERE a.job_id = r.job AND a.finished_at IS NULL;

        IF r.abort_requested THEN
            v_outcome := 'cancelled';
            UPDATE procrastinate_jobs SET status = 'aborted', attempts = attempts + 1,
                abort_requested = false
            WHERE id = r.queue_job_id;
        ELSIF r.attempts + 1 < r.max_attempts THEN
            v_outcome := 'requeued';
            UPDATE procrastinate_jobs SET status = 'todo', attempts = attempts + 1,
                scheduled_at = NULL, worker_id = NULL
            WHERE id = r.queue_job_id;
            PERFORM jobq_notify_requeued(r.queue_name, r.queue_job_id);
        ELSE
            v_outcome := 'failed';
            UPDATE procrastinate_jobs SET status = 'failed', attempts = attempts + 1
            WHERE id = r.queue_job_id;
            UPDATE jobs SET error = v_error WHERE id = r.job;
        END IF;

        INSERT INTO job_events (job_id, event, attempt, error, message)
        SELECT r.job, v_outcome,
               (SELECT max(a.number) FROM job_attempts AS a WHERE a.job_id = r.job),
               v_error, 'recovered from a lost worker';
        job_id := r.job;
        outcome := v_outcome;
        RETURN NEXT;
    END LOOP;
END;
$function$
"""
