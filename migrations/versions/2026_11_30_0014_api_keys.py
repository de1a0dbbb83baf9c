"""API keys and what hangs off them (issue 13): who submitted each job, dashboard sessions,
per-key rate and quota counters.

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30

- api_keys: one row per key. Only the SHA-256 of the key is stored (the key is 32 random
  bytes, so a fast hash is enough: nothing to guess from it); a key is found by its hash,
  through the unique index. A revoked key keeps its row (revoked_at), so its jobs still name it.
- jobs.api_key_id: the key that submitted the job (NULL: submitted with authentication off, or
  by Python code through jobs.enqueue). It is filled by its column default from the
  transaction-local setting `jobq.api_key`, which the API sets in the transaction that submits:
  so jobq_submit_jobs keeps its signature, and every way of submitting records the key.
- A job's `key` and `Idempotency-Key` are unique per API key, not across all keys: one client
  can neither find nor block another's jobs by guessing its keys.
- job_overview shows api_key_id as its last column (copied from migrations/schema.sql).
- api_sessions: the dashboard's cookie sessions (the token's and the CSRF token's hashes).
- api_key_rates, api_key_upload_days, api_key_upload_slots: the state behind per-key limits,
  in PostgreSQL so that every API process enforces the same limits.
"""

from __future__ import annotations

from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

NO_KEY = "'00000000-0000-0000-0000-000000000000'::uuid"

VIEW_WITH_API_KEY = """
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
    j.key,
    j.api_key_id
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
    pj.worker_id,
    j.key
   FROM jobs j
     JOIN procrastinate_jobs pj ON pj.id = j.queue_job_id;
"""


def upgrade() -> None:
    op.execute("""
    CREATE TABLE api_keys (
        id uuid NOT NULL,
        name character varying(100) NOT NULL,
        role character varying(16) NOT NULL,
        key_hash bytea NOT NULL,
        key_prefix character varying(16) NOT NULL,
        queues text[],
        job_types text[],
        submissions_per_second double precision,
        max_queued integer,
        upload_bytes_per_day bigint,
        max_timeout_seconds double precision,
        max_concurrent_uploads integer,
        created_at timestamp with time zone DEFAULT now() NOT NULL,
        revoked_at timestamp with time zone,
        CONSTRAINT pk_api_keys PRIMARY KEY (id),
        CONSTRAINT uq_api_keys_key_hash UNIQUE (key_hash),
        CONSTRAINT ck_api_keys_role CHECK (role IN ('submitter', 'operator', 'admin'))
    )""")
    op.execute("""
    ALTER TABLE jobs ADD COLUMN api_key_id uuid
        DEFAULT nullif(current_setting('jobq.api_key', true), '')::uuid
        CONSTRAINT fk_jobs_api_key_id_api_keys REFERENCES api_keys(id)""")
    op.execute("CREATE INDEX ix_jobs_api_key_id_created_at ON jobs (api_key_id, created_at)")
    op.execute("ALTER TABLE jobs DROP CONSTRAINT uq_jobs_key")
    op.execute("ALTER TABLE jobs DROP CONSTRAINT uq_jobs_idempotency_key")
    op.execute(f"CREATE UNIQUE INDEX uq_jobs_key ON jobs (coalesce(api_key_id, {NO_KEY}), key)")
    op.execute(f"CREATE UNIQUE INDEX uq_jobs_idempotency_key ON jobs "
               f"(coalesce(api_key_id, {NO_KEY}), idempotency_key)")
    op.execute(VIEW_WITH_API_KEY)
    op.execute("""
    CREATE TABLE api_sessions (
        token_hash bytea NOT NULL,
        api_key_id uuid NOT NULL,
        csrf_token character varying(64) NOT NULL,
        created_at timestamp with time zone DEFAULT now() NOT NULL,
        expires_at timestamp with time zone NOT NULL,
        CONSTRAINT pk_api_sessions PRIMARY KEY (token_hash),
        CONSTRAINT fk_api_sessions_api_key_id_api_keys FOREIGN KEY (api_key_id)
            REFERENCES api_keys(id) ON DELETE CASCADE
    )""")
    op.execute("CREATE INDEX ix_api_sessions_api_key_id ON api_sessions (api_key_id)")
    op.execute("""
    CREATE TABLE api_key_rates (
        api_key_id uuid NOT NULL,
        tokens double precision NOT NULL,
        updated_at timestamp with time zone NOT NULL,
        CONSTRAINT pk_api_key_rates PRIMARY KEY (api_key_id),
        CONSTRAINT fk_api_key_rates_api_key_id_api_keys FOREIGN KEY (api_key_id)
            REFERENCES api_keys(id) ON DELETE CASCADE
    )""")
    op.execute("""
    CREATE TABLE api_key_upload_days (
        api_key_id uuid NOT NULL,
        day date NOT NULL,
        bytes bigint NOT NULL,
        CONSTRAINT pk_api_key_upload_days PRIMARY KEY (api_key_id, day),
        CONSTRAINT fk_api_key_upload_days_api_key_id_api_keys FOREIGN KEY (api_key_id)
            REFERENCES api_keys(id) ON DELETE CASCADE
    )""")
    op.execute("""
    CREATE TABLE api_key_upload_slots (
        id uuid NOT NULL,
        api_key_id uuid NOT NULL,
        expires_at timestamp with time zone NOT NULL,
        CONSTRAINT pk_api_key_upload_slots PRIMARY KEY (id),
        CONSTRAINT fk_api_key_upload_slots_api_key_id_api_keys FOREIGN KEY (api_key_id)
            REFERENCES api_keys(id) ON DELETE CASCADE
    )""")
    op.execute("CREATE INDEX ix_api_key_upload_slots_api_key_id "
               "ON api_key_upload_slots (api_key_id)")
    op.execute(TAKE_TOKENS)


TAKE_TOKENS = """
CREATE OR REPLACE FUNCTION public.jobq_take_tokens(p_key uuid, p_rate double precision, p_count integer)
 RETURNS double precision
 LANGUAGE plpgsql
AS $function$
-- A token bucket per API key, shared by every API process: it holds up to p_rate tokens (one
-- second's worth) and refills at p_rate per second. Takes p_count tokens and answers 0, or
-- takes none and answers the seconds until p_count would be there. The key's row is locked
-- while it is read and written, so concurrent requests are counted one after the other.
DECLARE
    v_now timestamptz := clock_timestamp();
    v_capacity double precision := greatest(p_rate, p_count);
    v_tokens double precision;
BEGIN
    INSERT INTO api_key_rates AS r (api_key_id, tokens, updated_at)
    VALUES (p_key, v_capacity, v_now)
    ON CONFLICT (api_key_id) DO NOTHING;
    SELECT least(v_capacity, r.tokens + p_rate * extract(epoch FROM v_now - r.updated_at))
    INTO v_tokens
    FROM api_key_rates AS r WHERE r.api_key_id = p_key
    FOR UPDATE;
    IF v_tokens >= p_count THEN
        UPDATE api_key_rates SET tokens = v_tokens - p_count, updated_at = v_now
        WHERE api_key_id = p_key;
        RETURN 0;
    END IF;
    UPDATE api_key_rates SET tokens = v_tokens, updated_at = v_now WHERE api_key_id = p_key;
    RETURN (p_count - v_tokens) / p_rate;
END;
$function$;
"""


# jobq_submit_jobs returns job_overview rows: a downgrade, which must drop the view to take its
# column away, drops the function first and makes it again, unchanged (from schema.sql).
SUBMIT_JOBS = """
CREATE OR REPLACE FUNCTION public.jobq_submit_jobs(p_ids uuid[], p_queues character varying[], p_types character varying[], p_priorities integer[], p_scheduled_at timestamp with time zone[], p_payloads text[], p_max_attempts integer[], p_timeouts double precision[], p_callback_urls text[], p_idempotency_key text, p_fingerprints text[], p_backoffs text[], p_locks text[], p_queueing_locks text[], p_keys text[], p_overview boolean, p_attempts_defaulted boolean[] DEFAULT NULL::boolean[], p_timeout_defaulted boolean[] DEFAULT NULL::boolean[], p_retention text[] DEFAULT NULL::text[])
 RETURNS SETOF job_overview
 LANGUAGE plpgsql
 SET jit TO 'off'
AS $function$
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
                          retention, key)
        SELECT u.id, u.queue_job_id, u.payload::jsonb,
               CASE WHEN u.attempts_defaulted THEN coalesce(q.max_attempts, u.max_attempts)
                    ELSE u.max_attempts END,
               CASE WHEN u.timeout_defaulted THEN coalesce(q.timeout_seconds, u.timeout_seconds)
                    ELSE u.timeout_seconds END,
               u.callback_url, p_idempotency_key, u.fingerprint,
               coalesce(u.backoff::jsonb, q.backoff), u.retention::jsonb, u.key
        FROM unnest(p_ids, v_queue_ids, p_payloads, p_max_attempts, p_timeouts,
                    p_callback_urls, p_fingerprints, p_backoffs, p_queues,
                    p_attempts_defaulted, p_timeout_defaulted, p_retention, p_keys)
            AS u(id, queue_job_id, payload, max_attempts, timeout_seconds, callback_url,
                 fingerprint, backoff, queue, attempts_defaulted, timeout_defaulted, retention,
                 key)
        LEFT JOIN queues AS q ON q.name = u.queue
        RETURNING id
    )
    INSERT INTO job_events (job_id, event) SELECT id, 'submitted' FROM inserted;

    IF p_overview THEN
        RETURN QUERY SELECT * FROM job_overview WHERE id = ANY (p_ids);
    END IF;
END;
$function$;
"""
SUBMIT_JOBS_SIGNATURE = ("jobq_submit_jobs(uuid[], character varying[], character varying[], "
                         "integer[], timestamp with time zone[], text[], integer[], "
                         "double precision[], text[], text, text[], text[], text[], text[], "
                         "text[], boolean, boolean[], boolean[], text[])")


def downgrade() -> None:
    op.execute("DROP FUNCTION jobq_take_tokens(uuid, double precision, integer)")
    op.execute("DROP TABLE api_key_upload_slots")
    op.execute("DROP TABLE api_key_upload_days")
    op.execute("DROP TABLE api_key_rates")
    op.execute("DROP TABLE api_sessions")
    op.execute(f"DROP FUNCTION {SUBMIT_JOBS_SIGNATURE}")
    op.execute("DROP VIEW job_overview")
    op.execute(VIEW_BEFORE)
    op.execute(SUBMIT_JOBS)
    op.execute("DROP INDEX uq_jobs_idempotency_key")
    op.execute("DROP INDEX uq_jobs_key")
    op.execute("DROP INDEX ix_jobs_api_key_id_created_at")
    op.execute("ALTER TABLE jobs DROP COLUMN api_key_id")
    op.execute("ALTER TABLE jobs ADD CONSTRAINT uq_jobs_key UNIQUE (key)")
    op.execute("ALTER TABLE jobs ADD CONSTRAINT uq_jobs_idempotency_key UNIQUE (idempotency_key)")
    op.execute("DROP TABLE api_keys")
