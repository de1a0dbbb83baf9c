"""The job_overview view and the functions workers claim, finish and recover jobs with.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

A job's status is stored once, in procrastinate_jobs.status (+ scheduled_at); job_overview
derives the public status from it. Every function that moves a job between states writes the
queue row, our rows and a job_events row in the same transaction.
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

JOB_OVERVIEW = """
CREATE VIEW job_overview AS
SELECT
    j.id,
    pj.task_name AS type,
    pj.queue_name AS queue,
    CASE
        WHEN pj.status = 'todo' AND pj.scheduled_at > now() THEN 'scheduled'
        WHEN pj.status = 'todo' THEN 'queued'
        WHEN pj.status IN ('doing', 'aborting') THEN 'running'
        WHEN pj.status = 'succeeded' THEN 'succeeded'
        WHEN pj.status = 'failed' THEN 'failed'
        ELSE 'cancelled'
    END AS status,
    pj.priority,
    j.progress,
    j.stage,
    j.progress_message,
    j.progress_updated_at,
    -- attempts started in the current budget (a manual retry starts a fresh one)
    pj.attempts + CASE WHEN pj.status = 'doing' THEN 1 ELSE 0 END AS attempts,
    j.max_attempts,
    j.timeout_seconds,
    j.payload,
    j.result,
    j.error,
    j.callback_url,
    j.idempotency_key,
    pj.abort_requested AS cancel_requested,
    j.created_at,
    COALESCE(pj.scheduled_at, j.created_at) AS scheduled_at,
    (SELECT a.started_at FROM job_attempts a
      WHERE a.job_id = j.id ORDER BY a.number LIMIT 1) AS started_at,
    CASE WHEN pj.status IN ('succeeded', 'failed', 'cancelled', 'aborted') THEN
        (SELECT max(e.at) FROM job_events e WHERE e.job_id = j.id)
    END AS finished_at,
    pj.id AS queue_job_id,
    pj.worker_id
FROM jobs j
JOIN procrastinate_jobs pj ON pj.id = j.queue_job_id
"""

NOTIFY_REQUEUED = """
CREATE FUNCTION jobq_notify_requeued(p_queue varchar, p_queue_job_id bigint)
RETURNS void LANGUAGE sql AS $$
    -- The same message Procrastinate's insert trigger sends, so idle workers wake up.
    SELECT pg_notify(channel, json_build_object('type', 'job_inserted', 'job_id', p_queue_job_id)::text)
    FROM unnest(ARRAY['procrastinate_queue_v1#' || p_queue, 'procrastinate_any_queue_v1']) AS channel;
$$
"""

CLAIM_JOBS = """
CREATE FUNCTION jobq_claim_jobs(
    p_queues varchar[], p_worker_id bigint, p_worker_name text, p_limit integer
)
RETURNS TABLE (
    attempt_id bigint, job_id uuid, attempt integer, budget_attempt integer,
    task_name varchar, queue_name varchar, payload jsonb, max_attempts integer,
    timeout_seconds double precision
)
LANGUAGE sql AS $$
    -- Procrastinate's fetch (priority, then age; a job waits while an earlier or higher-priority
    -- job with its lock is queued or running), for up to p_limit jobs at once, skipping paused
    -- queues. Each claimed job gets an open attempt: its id is the lease's fencing token.
    WITH candidate AS (
        SELECT pj.id
        FROM procrastinate_jobs AS pj
        JOIN jobs AS j ON j.queue_job_id = pj.id
        WHERE pj.status = 'todo'
          AND (p_queues IS NULL OR pj.queue_name = ANY (p_queues))
          AND (pj.scheduled_at IS NULL OR pj.scheduled_at <= now())
          AND NOT EXISTS (SELECT 1 FROM queues AS q WHERE q.name = pj.queue_name AND q.paused)
          AND NOT EXISTS (
              SELECT 1 FROM procrastinate_jobs AS other
              WHERE pj.lock IS NOT NULL
                AND other.lock = pj.lock
                AND (other.status = 'doing'
                     OR (other.status = 'todo'
                         AND (other.priority > pj.priority
                              OR (other.priority = pj.priority AND other.id < pj.id))))
          )
        ORDER BY pj.priority DESC, pj.id ASC
        LIMIT p_limit
        FOR UPDATE OF pj SKIP LOCKED
    ), claimed AS (
        UPDATE procrastinate_jobs AS pj
        SET status = 'doing', worker_id = p_worker_id
        FROM candidate
        WHERE pj.id = candidate.id
        RETURNING pj.id, pj.task_name, pj.queue_name, pj.attempts, pj.priority
    ), opened AS (
        INSERT INTO job_attempts (job_id, number, worker_id, worker_name)
        SELECT j.id,
               COALESCE((SELECT max(a.number) FROM job_attempts AS a WHERE a.job_id = j.id), 0) + 1,
               p_worker_id, p_worker_name
        FROM claimed AS c JOIN jobs AS j ON j.queue_job_id = c.id
        RETURNING id, job_id, number
    ), logged AS (
        INSERT INTO job_events (job_id, event, attempt, worker_name)
        SELECT o.job_id, 'started', o.number, p_worker_name FROM opened AS o
    )
    SELECT o.id, o.job_id, o.number, c.attempts + 1, c.task_name, c.queue_name,
           j.payload, j.max_attempts, j.timeout_seconds
    FROM opened AS o
    JOIN jobs AS j ON j.id = o.job_id
    JOIN claimed AS c ON c.id = j.queue_job_id
    ORDER BY c.priority DESC, c.id ASC
$$
"""

FINISH_ATTEMPT = """
CREATE FUNCTION jobq_finish_attempt(
    p_attempt_id bigint, p_outcome text, p_result jsonb, p_error jsonb, p_retry_at timestamptz
)
RETURNS boolean LANGUAGE plpgsql AS $$
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
        UPDATE jobs SET result = p_result, error = NULL, progress = 100,
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
$$
"""

RECOVER_STALLED = """
CREATE FUNCTION jobq_recover_stalled(p_stall_seconds double precision)
RETURNS TABLE (job_id uuid, outcome text) LANGUAGE plpgsql AS $$
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
$$
"""

INDEXES = [
    # Stats per queue and status without touching finished rows' payloads.
    "CREATE INDEX ix_procrastinate_jobs_queue_status ON procrastinate_jobs (queue_name, status)",
]


def upgrade() -> None:
    for statement in (JOB_OVERVIEW, NOTIFY_REQUEUED, CLAIM_JOBS, FINISH_ATTEMPT, RECOVER_STALLED,
                      *INDEXES):
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_procrastinate_jobs_queue_status")
    op.execute("DROP FUNCTION IF EXISTS jobq_recover_stalled(double precision)")
    op.execute("DROP FUNCTION IF EXISTS jobq_finish_attempt(bigint, text, jsonb, jsonb, timestamptz)")
    op.execute("DROP FUNCTION IF EXISTS jobq_claim_jobs(varchar[], bigint, text, integer)")
    op.execute("DROP FUNCTION IF EXISTS jobq_notify_requeued(varchar, bigint)")
    op.execute("DROP VIEW IF EXISTS job_overview")
