"""Queue policies in PostgreSQL: per-queue settings (pause, rate limit, global concurrency,
default attempts, backoff and timeout, retention per terminal status).

Revision ID: 0013
Revises: 0010
Create Date: 2026-11-30

Every queue that has jobs has a `queues` row: jobq_submit_jobs adds a missing one (its column
defaults are the default policy, stated once, here), and this revision adds the rows of the
queues that already have jobs. A queue's settings are changed by jobq_set_queue_settings only.

jobq_submit_jobs applies a queue's default attempts, timeout and backoff to a job whose request
left them to the job type (two more arrays say which did).

Function texts this revision replaces are copied from migrations/schema.sql at revision 0010;
the downgrade restores them.
"""

from __future__ import annotations

from alembic import op

revision = "0013"
down_revision = "0010"
branch_labels = None
depends_on = None

QUEUE_COLUMNS = """
ALTER TABLE queues
    ADD COLUMN rate_limit integer,
    ADD COLUMN rate_period_seconds double precision,
    ADD COLUMN concurrency_limit integer,
    ADD COLUMN max_attempts integer,
    ADD COLUMN timeout_seconds double precision,
    ADD COLUMN backoff jsonb,
    ADD COLUMN succeeded_max_age_seconds double precision DEFAULT 86400,
    ADD COLUMN succeeded_max_count integer DEFAULT 1000,
    ADD COLUMN failed_max_age_seconds double precision DEFAULT 604800,
    ADD COLUMN failed_max_count integer,
    ADD COLUMN cancelled_max_age_seconds double precision DEFAULT 86400,
    ADD COLUMN cancelled_max_count integer,
    ADD CONSTRAINT ck_queues_rate_limit_whole CHECK
        ((rate_limit IS NULL) = (rate_period_seconds IS NULL)
         AND (rate_limit IS NULL OR rate_limit >= 1)
         AND (rate_period_seconds IS NULL OR rate_period_seconds > 0)),
    ADD CONSTRAINT ck_queues_concurrency_limit_positive CHECK (concurrency_limit >= 1),
    ADD CONSTRAINT ck_queues_max_attempts_range CHECK (max_attempts BETWEEN 1 AND 100),
    ADD CONSTRAINT ck_queues_timeout_positive CHECK (timeout_seconds > 0),
    ADD CONSTRAINT ck_queues_retention_not_negative CHECK
        (succeeded_max_age_seconds >= 0 AND succeeded_max_count >= 0
         AND failed_max_age_seconds >= 0 AND failed_max_count >= 0
         AND cancelled_max_age_seconds >= 0 AND cancelled_max_count >= 0)
"""

# The queues that already have jobs get their row, with the default policy.
QUEUE_ROWS = """
INSERT INTO queues (name)
SELECT DISTINCT queue_name FROM procrastinate_jobs
ON CONFLICT (name) DO NOTHING
"""

SET_QUEUE_SETTINGS = r"""
CREATE FUNCTION jobq_set_queue_settings(p_queue varchar, p_settings jsonb)
RETURNS void LANGUAGE plpgsql AS $$
-- Change a queue's settings: each key of p_settings present sets its column (a JSON null
-- removes the limit); absent keys are left as they are. The queue's row is made if missing.
-- Values are checked by the API (service/domain/policies.py) and by the table's constraints.
DECLARE
    v_unknown text[];
BEGIN
    SELECT array_agg(k) INTO v_unknown FROM jsonb_object_keys(p_settings) AS k
    WHERE k NOT IN ('paused', 'rate_limit', 'rate_period_seconds', 'concurrency_limit',
                    'max_attempts', 'timeout_seconds', 'backoff',
                    'succeeded_max_age_seconds', 'succeeded_max_count',
                    'failed_max_age_seconds', 'failed_max_count',
                    'cancelled_max_age_seconds', 'cancelled_max_count');
    IF v_unknown IS NOT NULL THEN
        RAISE 'unknown queue settings: %', v_unknown USING ERRCODE = 'invalid_parameter_value';
    END IF;
    INSERT INTO queues (name) VALUES (p_queue) ON CONFLICT (name) DO NOTHING;
    UPDATE queues AS q SET
        paused = CASE WHEN p_settings ? 'paused'
                      THEN (p_settings->>'paused')::boolean ELSE q.paused END,
        rate_limit = CASE WHEN p_settings ? 'rate_limit'
                          THEN (p_settings->>'rate_limit')::integer ELSE q.rate_limit END,
        rate_period_seconds = CASE WHEN p_settings ? 'rate_period_seconds'
                                   THEN (p_settings->>'rate_period_seconds')::float8
                                   ELSE q.rate_period_seconds END,
        concurrency_limit = CASE WHEN p_settings ? 'concurrency_limit'
                                 THEN (p_settings->>'concurrency_limit')::integer
                                 ELSE q.concurrency_limit END,
        max_attempts = CASE WHEN p_settings ? 'max_attempts'
                            THEN (p_settings->>'max_attempts')::integer ELSE q.max_attempts END,
        timeout_seconds = CASE WHEN p_settings ? 'timeout_seconds'
                               THEN (p_settings->>'timeout_seconds')::float8
                               ELSE q.timeout_seconds END,
        backoff = CASE WHEN p_settings ? 'backoff'
                       THEN nullif(p_settings->'backoff', 'null') ELSE q.backoff END,
        succeeded_max_age_seconds = CASE WHEN p_settings ? 'succeeded_max_age_seconds'
            THEN (p_settings->>'succeeded_max_age_seconds')::float8
            ELSE q.succeeded_max_age_seconds END,
        succeeded_max_count = CASE WHEN p_settings ? 'succeeded_max_count'
            THEN (p_settings->>'succeeded_max_count')::integer ELSE q.succeeded_max_count END,
        failed_max_age_seconds = CASE WHEN p_settings ? 'failed_max_age_seconds'
            THEN (p_settings->>'failed_max_age_seconds')::float8
            ELSE q.failed_max_age_seconds END,
        failed_max_count = CASE WHEN p_settings ? 'failed_max_count'
            THEN (p_settings->>'failed_max_count')::integer ELSE q.failed_max_count END,
        cancelled_max_age_seconds = CASE WHEN p_settings ? 'cancelled_max_age_seconds'
            THEN (p_settings->>'cancelled_max_age_seconds')::float8
            ELSE q.cancelled_max_age_seconds END,
        cancelled_max_count = CASE WHEN p_settings ? 'cancelled_max_count'
            THEN (p_settings->>'cancelled_max_count')::integer ELSE q.cancelled_max_count END,
        updated_at = now()
    WHERE q.name = p_queue;
END;
$$
"""

SUBMIT_SIGNATURE_0010 = (
    "jobq_submit_jobs(uuid[], varchar[], varchar[], integer[], timestamptz[], text[], integer[], "
    "double precision[], text[], text, text[], text[], text[], text[], boolean)")

SUBMIT_SIGNATURE = (
    "jobq_submit_jobs(uuid[], varchar[], varchar[], integer[], timestamptz[], text[], integer[], "
    "double precision[], text[], text, text[], text[], text[], text[], boolean, boolean[], "
    "boolean[], text[])")

# Changed from 0010: p_attempts_defaulted / p_timeout_defaulted (true where the request left
# max_attempts / timeout_seconds to the job type: the queue's setting, if any, wins there);
# the queue's backoff for a job without its own; a `queues` row for a queue seen the first
# time; p_retention, the job's own retention (remove_on_complete / remove_on_fail), JSON.
SUBMIT_JOBS = r"""
CREATE FUNCTION jobq_submit_jobs(
    p_ids uuid[], p_queues varchar[], p_types varchar[], p_priorities integer[],
    p_scheduled_at timestamptz[], p_payloads text[], p_max_attempts integer[],
    p_timeouts double precision[], p_callback_urls text[], p_idempotency_key text,
    p_fingerprints text[], p_backoffs text[], p_locks text[], p_queueing_locks text[],
    p_overview boolean, p_attempts_defaulted boolean[] DEFAULT NULL,
    p_timeout_defaulted boolean[] DEFAULT NULL, p_retention text[] DEFAULT NULL
)
RETURNS SETOF job_overview LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    v_queue_ids bigint[];
BEGIN
    -- Every queue with jobs has a row: its settings, the default policy until changed.
    INSERT INTO queues (name)
    SELECT DISTINCT u.queue FROM unnest(p_queues) AS u(queue)
    WHERE NOT EXISTS (SELECT 1 FROM queues AS q WHERE q.name = u.queue)
    ON CONFLICT (name) DO NOTHING;

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
                          callback_url, idempotency_key, request_fingerprint, backoff,
                          retention)
        SELECT u.id, u.queue_job_id, u.payload::jsonb,
               CASE WHEN u.attempts_defaulted THEN coalesce(q.max_attempts, u.max_attempts)
                    ELSE u.max_attempts END,
               CASE WHEN u.timeout_defaulted THEN coalesce(q.timeout_seconds, u.timeout_seconds)
                    ELSE u.timeout_seconds END,
               u.callback_url, p_idempotency_key, u.fingerprint,
               coalesce(u.backoff::jsonb, q.backoff), u.retention::jsonb
        FROM unnest(p_ids, v_queue_ids, p_payloads, p_max_attempts, p_timeouts,
                    p_callback_urls, p_fingerprints, p_backoffs, p_queues,
                    p_attempts_defaulted, p_timeout_defaulted, p_retention)
            AS u(id, queue_job_id, payload, max_attempts, timeout_seconds, callback_url,
                 fingerprint, backoff, queue, attempts_defaulted, timeout_defaulted, retention)
        LEFT JOIN queues AS q ON q.name = u.queue
        RETURNING id
    )
    INSERT INTO job_events (job_id, event) SELECT id, 'submitted' FROM inserted;

    IF p_overview THEN
        RETURN QUERY SELECT * FROM job_overview WHERE id = ANY (p_ids);
    END IF;
END;
$$
"""

JOB_RETENTION_COLUMN = "ALTER TABLE jobs ADD COLUMN retention jsonb"


def upgrade() -> None:
    op.execute(QUEUE_COLUMNS)
    op.execute(QUEUE_ROWS)
    op.execute(SET_QUEUE_SETTINGS)
    op.execute(JOB_RETENTION_COLUMN)
    op.execute(f"DROP FUNCTION {SUBMIT_SIGNATURE_0010}")
    op.execute(SUBMIT_JOBS)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SUBMIT_SIGNATURE}")
    op.execute(SUBMIT_JOBS_0010)
    op.execute("ALTER TABLE jobs DROP COLUMN retention")
    op.execute("DROP FUNCTION jobq_set_queue_settings(varchar, jsonb)")
    op.execute("""
        ALTER TABLE queues
            DROP CONSTRAINT ck_queues_rate_limit_whole,
            DROP CONSTRAINT ck_queues_concurrency_limit_positive,
            DROP CONSTRAINT ck_queues_max_attempts_range,
            DROP CONSTRAINT ck_queues_timeout_positive,
            DROP CONSTRAINT ck_queues_retention_not_negative,
            DROP COLUMN rate_limit, DROP COLUMN rate_period_seconds,
            DROP COLUMN concurrency_limit, DROP COLUMN max_attempts,
            DROP COLUMN timeout_seconds, DROP COLUMN backoff,
            DROP COLUMN succeeded_max_age_seconds, DROP COLUMN succeeded_max_count,
            DROP COLUMN failed_max_age_seconds, DROP COLUMN failed_max_count,
            DROP COLUMN cancelled_max_age_seconds, DROP COLUMN cancelled_max_count
    """)


# -- texts at revision 0010 (migrations/schema.sql), restored by the downgrade -------------------

SUBMIT_JOBS_0010 = r"""
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
$function$
"""
