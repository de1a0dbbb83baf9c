"""Client-chosen job keys (BullMQ's jobId): a job may carry a `key` of its submitter's
choosing; while a job with that key exists, submitting the same key returns that job instead of
creating another, and the key finds the job over REST.

Revision ID: 0012
Revises: 0010
Create Date: 2026-11-29

jobs.key is unique (a deleted job frees its key). job_overview shows it as its last column.
jobq_submit_jobs takes the keys (p_keys, one per job, NULL for none) and writes them; the
service looks up existing keys first and submits only the requests whose key is free, so the
unique constraint only settles two submissions racing for one key. The function and the view are
copied from migrations/schema.sql as revision 0010 left them; only the key was added.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0010"
branch_labels = None
depends_on = None

OLD_SIGNATURE = "jobq_submit_jobs(uuid[], character varying[], character varying[], integer[], timestamp with time zone[], text[], integer[], double precision[], text[], text, text[], text[], text[], text[], boolean)"
NEW_SIGNATURE = "jobq_submit_jobs(uuid[], character varying[], character varying[], integer[], timestamp with time zone[], text[], integer[], double precision[], text[], text, text[], text[], text[], text[], text[], boolean)"

VIEW_WITH_KEY = """
CREATE OR REPLACE VIEW job_overview AS
 SELECT j.id,
    pj.task_name AS type,
    pj.queue_name AS queue,
        CASE
            WHEN pj.status = 'todo'::procrastinate_job_status AND pj.scheduled_at > now() THEN 'scheduled'::text
            WHEN pj.status = 'todo'::procrastinate_job_status THEN 'queued'::text
            WHEN pj.status = ANY (ARRAY['doing'::procrastinate_job_status, 'aborting'::procrastinate_job_status]) THEN 'running'::text
            WHEN pj.status = 'succeeded'::procrastinate_job_status THEN 'succeeded'::text
            WHEN pj.status = 'failed'::procrastinate_job_status THEN 'failed'::text
            ELSE 'cancelled'::text
        END AS status,
    pj.priority,
    j.progress,
    j.stage,
    j.progress_message,
    j.progress_updated_at,
    pj.attempts +
        CASE
            WHEN pj.status = 'doing'::procrastinate_job_status THEN 1
            ELSE 0
        END AS attempts,
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
    ( SELECT a.started_at
           FROM job_attempts a
          WHERE a.job_id = j.id
          ORDER BY a.number
         LIMIT 1) AS started_at,
        CASE
            WHEN pj.status = ANY (ARRAY['succeeded'::procrastinate_job_status, 'failed'::procrastinate_job_status, 'cancelled'::procrastinate_job_status, 'aborted'::procrastinate_job_status]) THEN ( SELECT max(e.at) AS max
               FROM job_events e
              WHERE e.job_id = j.id)
            ELSE NULL::timestamp with time zone
        END AS finished_at,
    pj.id AS queue_job_id,
    pj.worker_id,
    j.key
   FROM jobs j
     JOIN procrastinate_jobs pj ON pj.id = j.queue_job_id;
"""

VIEW_BEFORE = """
CREATE OR REPLACE VIEW job_overview AS
 SELECT j.id,
    pj.task_name AS type,
    pj.queue_name AS queue,
        CASE
            WHEN pj.status = 'todo'::procrastinate_job_status AND pj.scheduled_at > now() THEN 'scheduled'::text
            WHEN pj.status = 'todo'::procrastinate_job_status THEN 'queued'::text
            WHEN pj.status = ANY (ARRAY['doing'::procrastinate_job_status, 'aborting'::procrastinate_job_status]) THEN 'running'::text
            WHEN pj.status = 'succeeded'::procrastinate_job_status THEN 'succeeded'::text
            WHEN pj.status = 'failed'::procrastinate_job_status THEN 'failed'::text
            ELSE 'cancelled'::text
        END AS status,
    pj.priority,
    j.progress,
    j.stage,
    j.progress_message,
    j.progress_updated_at,
    pj.attempts +
        CASE
            WHEN pj.status = 'doing'::procrastinate_job_status THEN 1
            ELSE 0
        END AS attempts,
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
    ( SELECT a.started_at
           FROM job_attempts a
          WHERE a.job_id = j.id
          ORDER BY a.number
         LIMIT 1) AS started_at,
        CASE
            WHEN pj.status = ANY (ARRAY['succeeded'::procrastinate_job_status, 'failed'::procrastinate_job_status, 'cancelled'::procrastinate_job_status, 'aborted'::procrastinate_job_status]) THEN ( SELECT max(e.at) AS max
               FROM job_events e
              WHERE e.job_id = j.id)
            ELSE NULL::timestamp with time zone
        END AS finished_at,
    pj.id AS queue_job_id,
    pj.worker_id
   FROM jobs j
     JOIN procrastinate_jobs pj ON pj.id = j.queue_job_id;
"""

SUBMIT_JOBS = """
CREATE OR REPLACE FUNCTION public.jobq_submit_jobs(p_ids uuid[], p_queues character varying[], p_types character varying[], p_priorities integer[], p_scheduled_at timestamp with time zone[], p_payloads text[], p_max_attempts integer[], p_timeouts double precision[], p_callback_urls text[], p_idempotency_key text, p_fingerprints text[], p_backoffs text[], p_locks text[], p_queueing_locks text[], p_keys text[], p_overview boolean)
 RETURNS SETOF job_overview
 LANGUAGE plpgsql
 SET jit TO 'off'
AS $function$
DECLARE
    v_queue_ids bigint[];
BEGIN
    -- Procrastinate's own defer: its lock and queueing-lock rules, its NOTIFY at commit. The
    -- payload is kept once, in jobs.payload.
    v_queue_ids := procrastinate_defer_jobs_v1(ARRAY(
        SELECT ROW(u.queue, u.type, u.priority, u.lock, u.queueing_lock, '{}'::jsonb,
                   u.scheduled_at)::procrastinate_job_to_defer_v1
        FROM unnest(p_queues, p_types, p_priorities, p_locks, p_queueing_locks, p_scheduled_at)
            WITH ORDINALITY AS u(queue, type, priority, lock, queueing_lock, scheduled_at, ord)
        ORDER BY u.ord));

    WITH inserted AS (
        INSERT INTO jobs (id, queue_job_id, payload, max_attempts, timeout_seconds,
                          callback_url, idempotency_key, request_fingerprint, backoff, key)
        SELECT u.id, u.queue_job_id, u.payload::jsonb, u.max_attempts, u.timeout_seconds,
               u.callback_url, p_idempotency_key, u.fingerprint, u.backoff::jsonb, u.key
        FROM unnest(p_ids, v_queue_ids, p_payloads, p_max_attempts, p_timeouts,
                    p_callback_urls, p_fingerprints, p_backoffs, p_keys)
            AS u(id, queue_job_id, payload, max_attempts, timeout_seconds, callback_url,
                 fingerprint, backoff, key)
        RETURNING id
    )
    INSERT INTO job_events (job_id, event) SELECT id, 'submitted' FROM inserted;

    IF p_overview THEN
        RETURN QUERY SELECT * FROM job_overview WHERE id = ANY (p_ids);
    END IF;
END;
$function$;
"""

SUBMIT_JOBS_BEFORE = """
CREATE OR REPLACE FUNCTION public.jobq_submit_jobs(p_ids uuid[], p_queues character varying[], p_types character varying[], p_priorities integer[], p_scheduled_at timestamp with time zone[], p_payloads text[], p_max_attempts integer[], p_timeouts double precision[], p_callback_urls text[], p_idempotency_key text, p_fingerprints text[], p_backoffs text[], p_locks text[], p_queueing_locks text[], p_overview boolean)
 RETURNS SETOF job_overview
 LANGUAGE plpgsql
 SET jit TO 'off'
AS $function$
DECLARE
    v_queue_ids bigint[];
BEGIN
    -- Procrastinate's own defer: its lock and queueing-lock rules, its NOTIFY at commit. The
    -- payload is kept once, in jobs.payload.
    v_queue_ids := procrastinate_defer_jobs_v1(ARRAY(
        SELECT ROW(u.queue, u.type, u.priority, u.lock, u.queueing_lock, '{}'::jsonb,
                   u.scheduled_at)::procrastinate_job_to_defer_v1
        FROM unnest(p_queues, p_types, p_priorities, p_locks, p_queueing_locks, p_scheduled_at)
            WITH ORDINALITY AS u(queue, type, priority, lock, queueing_lock, scheduled_at, ord)
        ORDER BY u.ord));

    WITH inserted AS (
        INSERT INTO jobs (id, queue_job_id, payload, max_attempts, timeout_seconds,
                          callback_url, idempotency_key, request_fingerprint, backoff)
        SELECT u.id, u.queue_job_id, u.payload::jsonb, u.max_attempts, u.timeout_seconds,
               u.callback_url, p_idempotency_key, u.fingerprint, u.backoff::jsonb
        FROM unnest(p_ids, v_queue_ids, p_payloads, p_max_attempts, p_timeouts,
                    p_callback_urls, p_fingerprints, p_backoffs)
            AS u(id, queue_job_id, payload, max_attempts, timeout_seconds, callback_url,
                 fingerprint, backoff)
        RETURNING id
    )
    INSERT INTO job_events (job_id, event) SELECT id, 'submitted' FROM inserted;

    IF p_overview THEN
        RETURN QUERY SELECT * FROM job_overview WHERE id = ANY (p_ids);
    END IF;
END;
$function$;
"""


def upgrade() -> None:
    op.add_column("jobs", sa.Column("key", sa.String(length=255), nullable=True))
    op.create_unique_constraint("uq_jobs_key", "jobs", ["key"])
    op.execute(VIEW_WITH_KEY)
    op.execute(f"DROP FUNCTION {OLD_SIGNATURE}")
    op.execute(SUBMIT_JOBS)


def downgrade() -> None:
    # A view cannot lose a column by CREATE OR REPLACE: drop it (with the function returning
    # its rows) and make both again as they were.
    op.execute(f"DROP FUNCTION {NEW_SIGNATURE}")
    op.execute("DROP VIEW job_overview")
    op.execute(VIEW_BEFORE)
    op.execute(SUBMIT_JOBS_BEFORE)
    op.drop_constraint("uq_jobs_key", "jobs", type_="unique")
    op.drop_column("jobs", "key")
