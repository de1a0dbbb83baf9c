"""Client-chosen job keys (BullMQ's jobId): a job may carry a `key` of its submitter's
choosing; while a job with that key exists, submitting the same key returns that job instead of
creating another, and the key finds the job over REST.

Revision ID: 0012
Revises: 0011
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
down_revision = "0011"
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


# Revision 0011's trigger submits webhook deliveries through jobq_submit_jobs: it passes the
# new p_keys too (no key). Both texts are copied from migrations/schema.sql.
EVENTS_INSERTED = """
CREATE OR REPLACE FUNCTION public.jobq_job_events_inserted()
 RETURNS trigger
 LANGUAGE plpgsql
 SET jit TO 'off'
AS $function$
DECLARE
    v_first bigint;
    v_last bigint;
    v_terminal boolean;
    v_ids uuid[];
    v_payloads text[];
    v_count integer;
BEGIN
    SELECT min(n.id), max(n.id), bool_or(n.event IN ('succeeded', 'failed', 'cancelled'))
    INTO v_first, v_last, v_terminal
    FROM new_events AS n;
    IF v_first IS NULL THEN
        RETURN NULL;
    END IF;
    -- Delivered at commit, in commit order; nothing at all if the transaction rolls back.
    PERFORM pg_notify('jobq_events', 'e:' || v_first || ':' || v_last);

    -- Time measured per event: a start waited since the job was due (its run_at or retry
    -- time, its previous attempt's end, else its creation); an attempt's end ran since its
    -- start. Other events count without a time. Every lookup is one row by its key (OFFSET 0
    -- keeps them per row): the planner takes a transition table for 1000 rows, and as a join
    -- it hashed the whole queue, 7.9 ms per claim of 10 with 20,000 jobs queued instead of
    -- 0.11 ms (auto_explain), which made drains 5x slower.
    INSERT INTO job_counters AS c (shard, queue, type, event, bucket, count, seconds)
    SELECT pg_backend_pid(), m.queue, m.type, m.event,
           coalesce(width_bucket(m.seconds, jobq_metric_buckets()), -1),
           count(*), coalesce(sum(m.seconds), 0)
    FROM new_events AS n
    CROSS JOIN LATERAL (
        SELECT pj.queue_name AS queue, pj.task_name AS type, n.event,
               CASE
                   WHEN n.event = 'started' THEN extract(epoch FROM n.at - greatest(
                       coalesce(pj.scheduled_at, j.created_at),
                       (SELECT a.finished_at FROM job_attempts AS a
                         WHERE a.job_id = n.job_id AND a.number = n.attempt - 1)))
                   WHEN n.attempt IS NOT NULL
                        AND n.event IN ('succeeded', 'failed', 'retry_scheduled', 'cancelled',
                                        'requeued') THEN
                       (SELECT extract(epoch FROM n.at - a.started_at) FROM job_attempts AS a
                         WHERE a.job_id = n.job_id AND a.number = n.attempt)
               END::double precision AS seconds
        FROM jobs AS j
        JOIN procrastinate_jobs AS pj ON pj.id = j.queue_job_id
        WHERE j.id = n.job_id
        OFFSET 0
    ) AS m
    GROUP BY 2, 3, 4, 5
    ORDER BY 2, 3, 4, 5
    ON CONFLICT (shard, queue, type, event, bucket)
    DO UPDATE SET count = c.count + excluded.count, seconds = c.seconds + excluded.seconds;

    IF v_terminal THEN
        -- The job as it is at this outcome, kept in the delivery's payload: the POST describes
        -- this outcome even if the job is retried or deleted before it is sent.
        SELECT array_agg(gen_random_uuid()),
               array_agg(jsonb_build_object(
                   'job_id', n.job_id, 'event_id', n.id, 'event', n.event,
                   'url', w.callback_url, 'job', w.job)::text ORDER BY n.id),
               count(*)
        INTO v_ids, v_payloads, v_count
        FROM new_events AS n
        CROSS JOIN LATERAL (
            SELECT o.callback_url, to_jsonb(o) AS job FROM job_overview AS o
            WHERE o.id = n.job_id
              AND (SELECT j.callback_url FROM jobs AS j WHERE j.id = n.job_id) IS NOT NULL
            OFFSET 0
        ) AS w
        WHERE n.event IN ('succeeded', 'failed', 'cancelled');
        IF v_count > 0 THEN
            PERFORM jobq_submit_jobs(
                v_ids,
                array_fill('webhooks'::varchar, ARRAY[v_count]),
                array_fill('system.webhook'::varchar, ARRAY[v_count]),
                array_fill(0, ARRAY[v_count]),
                array_fill(NULL::timestamptz, ARRAY[v_count]),
                v_payloads,
                array_fill(10, ARRAY[v_count]),
                array_fill(60.0::double precision, ARRAY[v_count]),
                array_fill(NULL::text, ARRAY[v_count]),
                NULL,
                array_fill(NULL::text, ARRAY[v_count]),
                array_fill(NULL::text, ARRAY[v_count]),
                array_fill(NULL::text, ARRAY[v_count]),
                array_fill(NULL::text, ARRAY[v_count]),
                array_fill(NULL::text, ARRAY[v_count]),
                false);
        END IF;
    END IF;
    RETURN NULL;
END;
$function$
"""

EVENTS_INSERTED_0011 = """
CREATE OR REPLACE FUNCTION public.jobq_job_events_inserted()
 RETURNS trigger
 LANGUAGE plpgsql
 SET jit TO 'off'
AS $function$
DECLARE
    v_first bigint;
    v_last bigint;
    v_terminal boolean;
    v_ids uuid[];
    v_payloads text[];
    v_count integer;
BEGIN
    SELECT min(n.id), max(n.id), bool_or(n.event IN ('succeeded', 'failed', 'cancelled'))
    INTO v_first, v_last, v_terminal
    FROM new_events AS n;
    IF v_first IS NULL THEN
        RETURN NULL;
    END IF;
    -- Delivered at commit, in commit order; nothing at all if the transaction rolls back.
    PERFORM pg_notify('jobq_events', 'e:' || v_first || ':' || v_last);

    -- Time measured per event: a start waited since the job was due (its run_at or retry
    -- time, its previous attempt's end, else its creation); an attempt's end ran since its
    -- start. Other events count without a time. Every lookup is one row by its key (OFFSET 0
    -- keeps them per row): the planner takes a transition table for 1000 rows, and as a join
    -- it hashed the whole queue, 7.9 ms per claim of 10 with 20,000 jobs queued instead of
    -- 0.11 ms (auto_explain), which made drains 5x slower.
    INSERT INTO job_counters AS c (shard, queue, type, event, bucket, count, seconds)
    SELECT pg_backend_pid(), m.queue, m.type, m.event,
           coalesce(width_bucket(m.seconds, jobq_metric_buckets()), -1),
           count(*), coalesce(sum(m.seconds), 0)
    FROM new_events AS n
    CROSS JOIN LATERAL (
        SELECT pj.queue_name AS queue, pj.task_name AS type, n.event,
               CASE
                   WHEN n.event = 'started' THEN extract(epoch FROM n.at - greatest(
                       coalesce(pj.scheduled_at, j.created_at),
                       (SELECT a.finished_at FROM job_attempts AS a
                         WHERE a.job_id = n.job_id AND a.number = n.attempt - 1)))
                   WHEN n.attempt IS NOT NULL
                        AND n.event IN ('succeeded', 'failed', 'retry_scheduled', 'cancelled',
                                        'requeued') THEN
                       (SELECT extract(epoch FROM n.at - a.started_at) FROM job_attempts AS a
                         WHERE a.job_id = n.job_id AND a.number = n.attempt)
               END::double precision AS seconds
        FROM jobs AS j
        JOIN procrastinate_jobs AS pj ON pj.id = j.queue_job_id
        WHERE j.id = n.job_id
        OFFSET 0
    ) AS m
    GROUP BY 2, 3, 4, 5
    ORDER BY 2, 3, 4, 5
    ON CONFLICT (shard, queue, type, event, bucket)
    DO UPDATE SET count = c.count + excluded.count, seconds = c.seconds + excluded.seconds;

    IF v_terminal THEN
        -- The job as it is at this outcome, kept in the delivery's payload: the POST describes
        -- this outcome even if the job is retried or deleted before it is sent.
        SELECT array_agg(gen_random_uuid()),
               array_agg(jsonb_build_object(
                   'job_id', n.job_id, 'event_id', n.id, 'event', n.event,
                   'url', w.callback_url, 'job', w.job)::text ORDER BY n.id),
               count(*)
        INTO v_ids, v_payloads, v_count
        FROM new_events AS n
        CROSS JOIN LATERAL (
            SELECT o.callback_url, to_jsonb(o) AS job FROM job_overview AS o
            WHERE o.id = n.job_id
              AND (SELECT j.callback_url FROM jobs AS j WHERE j.id = n.job_id) IS NOT NULL
            OFFSET 0
        ) AS w
        WHERE n.event IN ('succeeded', 'failed', 'cancelled');
        IF v_count > 0 THEN
            PERFORM jobq_submit_jobs(
                v_ids,
                array_fill('webhooks'::varchar, ARRAY[v_count]),
                array_fill('system.webhook'::varchar, ARRAY[v_count]),
                array_fill(0, ARRAY[v_count]),
                array_fill(NULL::timestamptz, ARRAY[v_count]),
                v_payloads,
                array_fill(10, ARRAY[v_count]),
                array_fill(60.0::double precision, ARRAY[v_count]),
                array_fill(NULL::text, ARRAY[v_count]),
                NULL,
                array_fill(NULL::text, ARRAY[v_count]),
                array_fill(NULL::text, ARRAY[v_count]),
                array_fill(NULL::text, ARRAY[v_count]),
                array_fill(NULL::text, ARRAY[v_count]),
                false);
        END IF;
    END IF;
    RETURN NULL;
END;
$function$
"""


def upgrade() -> None:
    op.add_column("jobs", sa.Column("key", sa.String(length=255), nullable=True))
    op.create_unique_constraint("uq_jobs_key", "jobs", ["key"])
    op.execute(VIEW_WITH_KEY)
    op.execute(f"DROP FUNCTION {OLD_SIGNATURE}")
    op.execute(SUBMIT_JOBS)
    op.execute(EVENTS_INSERTED)


def downgrade() -> None:
    # A view cannot lose a column by CREATE OR REPLACE: drop it (with the function returning
    # its rows) and make both again as they were.
    op.execute(f"DROP FUNCTION {NEW_SIGNATURE}")
    op.execute("DROP VIEW job_overview")
    op.execute(VIEW_BEFORE)
    op.execute(SUBMIT_JOBS_BEFORE)
    op.execute(EVENTS_INSERTED_0011)
    op.drop_constraint("uq_jobs_key", "jobs", type_="unique")
    op.drop_column("jobs", "key")
