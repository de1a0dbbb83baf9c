"""A finished job's queue row no longer names the worker that ran it (issue 17).

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-30

procrastinate_jobs.worker_id references procrastinate_workers with ON DELETE SET NULL, and
jobq_finish_attempts left it set on jobs that ended. So when a worker unregistered (at every
stop, and when a stalled worker is pruned), PostgreSQL rewrote the queue row of every job that
worker had ever finished and was still kept: a worker that ran a million jobs rewrote a
million rows in its last statement, with the counting trigger reading them all as transition
tables. Measured with benchmarks/pg_cost.py on PostgreSQL 15 (pg_stat_statements), after a drain
of 4,000 jobs at concurrency 1 that took 4.6 s: the worker's unregistration took 1.6 s before
this revision, 1.2 ms after.

The finish now clears worker_id whatever the outcome; who ran an attempt stays in job_attempts
(worker_id, worker_name), which is what the API and the reports read. Rows left set by earlier
versions are cleared by their worker's next unregistration, as before.

Function text copied from migrations/schema.sql; the downgrade restores revision 0018's (the
same text with the one assignment it had).
"""

from __future__ import annotations

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

FINISH = r"""
CREATE OR REPLACE FUNCTION public.jobq_finish_attempts(p_attempt_ids bigint[], p_outcomes text[], p_results text[], p_errors text[], p_retry_at timestamp with time zone[], p_lost boolean DEFAULT false)
 RETURNS TABLE(attempt_id bigint, outcome text)
 LANGUAGE plpgsql
 SET jit TO 'off'
 SET plan_cache_mode TO 'force_generic_plan'
 SET enable_seqscan TO 'off'
 SET enable_hashjoin TO 'off'
 SET enable_mergejoin TO 'off'
 SET "jobq.keeps_history" TO 'on'
AS $function$
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
        SELECT a.id, a.job_id, a.number, a.worker_name, a.started_at
        FROM job_attempts AS a
        WHERE a.id = ANY (p_attempt_ids) AND a.finished_at IS NULL
        ORDER BY a.id
        FOR UPDATE OF a
    ), target AS MATERIALIZED (
        SELECT f.id AS attempt_id, f.job_id, f.number, f.worker_name,
               pj.id AS queue_job_id, pj.queue_name, pj.task_name,
               extract(epoch FROM now() - f.started_at) * 1000 AS ran_ms,
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
            -- the attempt keeps who ran it; the queue row names only a running job's worker,
            -- so a worker's unregistration (ON DELETE SET NULL) rewrites no finished row
            worker_id = NULL
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
    ), ran AS (
        -- Daily aggregates (docs/reporting.md): how long the attempts that ran to an end took,
        -- what each worker did, and the failures by error type.
        INSERT INTO job_stats_histograms AS h (day, queue_name, task_name, metric, bucket,
                                               shard, n, max_ms, sum_ms)
        SELECT jobq_today(), t.queue_name, t.task_name, 'run', jobq_stats_bucket(t.ran_ms),
               jobq_shard(), count(*), max(t.ran_ms), sum(t.ran_ms)
        FROM target AS t
        WHERE NOT p_lost AND t.outcome IN ('succeeded', 'failed', 'retry')
        GROUP BY t.queue_name, t.task_name, jobq_stats_bucket(t.ran_ms)
        ORDER BY t.queue_name, t.task_name, jobq_stats_bucket(t.ran_ms)
        ON CONFLICT (day, queue_name, task_name, metric, bucket, shard)
        DO UPDATE SET n = h.n + excluded.n, max_ms = greatest(h.max_ms, excluded.max_ms),
                      sum_ms = h.sum_ms + excluded.sum_ms
    ), by_worker AS (
        INSERT INTO worker_stats_daily AS w (day, worker_name, attempts, succeeded, failed,
                                             retried, cancelled, interrupted, lost, busy_ms)
        SELECT jobq_today(), coalesce(t.worker_name, ''), count(*),
               count(*) FILTER (WHERE NOT p_lost AND t.outcome = 'succeeded'),
               count(*) FILTER (WHERE NOT p_lost AND t.outcome = 'failed'),
               count(*) FILTER (WHERE NOT p_lost AND t.outcome = 'retry'),
               count(*) FILTER (WHERE NOT p_lost AND t.outcome = 'cancelled'),
               count(*) FILTER (WHERE NOT p_lost AND t.outcome = 'interrupted'),
               count(*) FILTER (WHERE p_lost),
               coalesce(sum(t.ran_ms) FILTER (WHERE NOT p_lost), 0)
        FROM target AS t
        GROUP BY coalesce(t.worker_name, '') ORDER BY coalesce(t.worker_name, '')
        ON CONFLICT (day, worker_name) DO UPDATE
        SET attempts = w.attempts + excluded.attempts, succeeded = w.succeeded + excluded.succeeded,
            failed = w.failed + excluded.failed, retried = w.retried + excluded.retried,
            cancelled = w.cancelled + excluded.cancelled,
            interrupted = w.interrupted + excluded.interrupted, lost = w.lost + excluded.lost,
            busy_ms = w.busy_ms + excluded.busy_ms
    ), failures AS (
        INSERT INTO job_failures_daily AS fd (day, queue_name, task_name, error_type, shard,
                                              attempts, jobs, last_at, last_message)
        SELECT jobq_today(), t.queue_name, t.task_name,
               coalesce(t.error->>'type', 'unknown'), jobq_shard(), count(*),
               count(*) FILTER (WHERE t.outcome = 'failed'), now(),
               (array_agg(t.error->>'message' ORDER BY t.attempt_id DESC))[1]
        FROM target AS t
        WHERE t.outcome IN ('failed', 'retry') AND t.error IS NOT NULL
        GROUP BY t.queue_name, t.task_name, coalesce(t.error->>'type', 'unknown')
        ORDER BY 2, 3, 4
        ON CONFLICT (day, queue_name, task_name, error_type, shard) DO UPDATE
        SET attempts = fd.attempts + excluded.attempts, jobs = fd.jobs + excluded.jobs,
            last_at = excluded.last_at, last_message = excluded.last_message
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
$function$;
"""

CLEARED = """\
            -- the attempt keeps who ran it; the queue row names only a running job's worker,
            -- so a worker's unregistration (ON DELETE SET NULL) rewrites no finished row
            worker_id = NULL
"""

KEPT = """\
            worker_id = CASE WHEN t.outcome IN ('retry', 'interrupted') THEN NULL
                             ELSE pj.worker_id END
"""

assert FINISH.count(CLEARED) == 1
FINISH_BEFORE = FINISH.replace(CLEARED, KEPT)
"""Revision 0018's text: the same function, which kept a finished job's worker_id."""


def upgrade() -> None:
    op.execute(FINISH)


def downgrade() -> None:
    op.execute(FINISH_BEFORE)
