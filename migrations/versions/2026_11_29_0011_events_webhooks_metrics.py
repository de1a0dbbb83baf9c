"""Events out: a notification per change, a webhook delivery per finished job, counters per type.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-23

Every change of a job's state writes a job_events row, whichever function makes it. One
statement-level trigger on job_events therefore serves every present and future jobq_* function,
once per statement (a batch of 500 outcomes costs what one costs), in the same transaction:

- NOTIFY jobq_events 'e:<first id>:<last id>': the range of event ids the statement wrote. Only
  ids travel (NOTIFY's payload is limited to 8000 bytes); listeners read the rows. The API's event
  hub turns these into Server-Sent Events (service/events.py).
- A `system.webhook` job for each terminal event (succeeded, failed, cancelled) of a job with a
  callback_url, submitted through jobq_submit_jobs: no outcome commits without its delivery.
- Counters and histogram buckets per queue, type and event (job_counters), for /metrics. Each
  database session adds to rows of its own (shard = its backend pid), so no two transactions
  ever wait for one another's counter rows; jobq_fold_counters() folds the rows of sessions that
  are gone into shard 0, keeping every total.

Progress is not an event (job_events would grow by a row per report): jobq_report_progress
stores it and notifies 'p:<job id>'.
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

WEBHOOK_QUEUE = "webhooks"
WEBHOOK_MAX_ATTEMPTS = 10
WEBHOOK_TIMEOUT_SECONDS = 60.0
"""The system.webhook job's queue, attempts and timeout; service/domain/jobtypes.py declares the
same (tests/integration/test_webhooks.py checks they agree)."""

TABLES = ["""
CREATE TABLE webhook_deliveries (
    id bigserial CONSTRAINT pk_webhook_deliveries PRIMARY KEY,
    job_id uuid NOT NULL CONSTRAINT fk_webhook_deliveries_job_id_jobs
        REFERENCES jobs (id) ON DELETE CASCADE,
    delivery_id uuid NOT NULL,
    attempt integer NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    url text NOT NULL,
    status_code integer,
    duration_ms double precision NOT NULL,
    outcome varchar(16) NOT NULL,
    error text
)
""", """
CREATE INDEX ix_webhook_deliveries_job_id_id ON webhook_deliveries (job_id, id)
""", """
CREATE TABLE job_counters (
    shard integer NOT NULL,
    queue varchar(128) NOT NULL,
    type varchar(128) NOT NULL,
    event varchar(32) NOT NULL,
    bucket smallint NOT NULL,
    count bigint NOT NULL,
    seconds double precision NOT NULL,
    CONSTRAINT pk_job_counters PRIMARY KEY (shard, queue, type, event, bucket)
)
"""]

BUCKETS = """
CREATE FUNCTION jobq_metric_buckets() RETURNS double precision[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    -- Upper bounds (seconds) of the run-time and queue-wait histograms. job_counters.bucket is
    -- width_bucket(seconds, these): 0 below the first bound, i from bound i on, -1 for events
    -- that measure no time. /metrics reads the bounds from here.
    SELECT '{0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10,30,60,300,900,3600}'::double precision[]
$$
"""

EVENTS_INSERTED = f"""
CREATE FUNCTION jobq_job_events_inserted() RETURNS trigger
LANGUAGE plpgsql SET jit = off AS $$
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
                array_fill('{WEBHOOK_QUEUE}'::varchar, ARRAY[v_count]),
                array_fill('system.webhook'::varchar, ARRAY[v_count]),
                array_fill(0, ARRAY[v_count]),
                array_fill(NULL::timestamptz, ARRAY[v_count]),
                v_payloads,
                array_fill({WEBHOOK_MAX_ATTEMPTS}, ARRAY[v_count]),
                array_fill({WEBHOOK_TIMEOUT_SECONDS}::double precision, ARRAY[v_count]),
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
$$
"""

EVENTS_TRIGGER = """
CREATE TRIGGER jobq_job_events_inserted
AFTER INSERT ON job_events
REFERENCING NEW TABLE AS new_events
FOR EACH STATEMENT EXECUTE FUNCTION jobq_job_events_inserted()
"""

REPORT_PROGRESS = """
CREATE OR REPLACE FUNCTION jobq_report_progress(
    p_attempt_id bigint, p_percent integer, p_stage text, p_message text
)
RETURNS boolean LANGUAGE plpgsql AS $$
-- Store a running job's progress under its attempt's lease and notify 'p:<job id>' (at
-- commit); false (and nothing written) once the lease is lost.
DECLARE
    v_job uuid := jobq_hold_lease(p_attempt_id);
BEGIN
    IF v_job IS NULL THEN
        RETURN false;
    END IF;
    UPDATE jobs SET progress = p_percent, stage = p_stage, progress_message = p_message,
                    progress_updated_at = now()
    WHERE id = v_job;
    PERFORM pg_notify('jobq_events', 'p:' || v_job);
    RETURN true;
END;
$$
"""

REPORT_PROGRESS_0009 = """
CREATE OR REPLACE FUNCTION jobq_report_progress(
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
"""Revision 0009's text, restored by the downgrade (copied from migrations/schema.sql)."""

RECORD_DELIVERY = """
CREATE FUNCTION jobq_record_webhook_delivery(
    p_attempt_id bigint, p_job_id uuid, p_url text, p_status_code integer,
    p_duration_ms double precision, p_outcome text, p_error text
)
RETURNS boolean LANGUAGE sql AS $$
    -- One delivery attempt of a webhook, in the history of the job it is about; written under
    -- the delivery job's lease (false, and nothing written, once that is lost). The delivery
    -- id is the delivery job's id, the same for every attempt.
    INSERT INTO webhook_deliveries (job_id, delivery_id, attempt, url, status_code, duration_ms,
                                    outcome, error)
    SELECT p_job_id, a.job_id, a.number, p_url, p_status_code, p_duration_ms, p_outcome, p_error
    FROM job_attempts AS a
    WHERE a.id = p_attempt_id AND a.finished_at IS NULL
      AND EXISTS (SELECT 1 FROM jobs AS j WHERE j.id = p_job_id)
    RETURNING true
$$
"""

FOLD_COUNTERS = """
CREATE FUNCTION jobq_fold_counters() RETURNS bigint
LANGUAGE plpgsql AS $$
-- Fold the counter rows of database sessions that have ended into shard 0; every total stays
-- the same (rows are moved, in one statement). One fold at a time; returns the rows folded.
DECLARE
    v_folded bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtext('jobq_fold_counters')) THEN
        RETURN 0;
    END IF;
    WITH gone AS (
        DELETE FROM job_counters AS c
        WHERE c.shard <> 0
          AND NOT EXISTS (SELECT 1 FROM pg_stat_activity AS s WHERE s.pid = c.shard)
        RETURNING c.queue, c.type, c.event, c.bucket, c.count, c.seconds
    ), folded AS (
        INSERT INTO job_counters AS c (shard, queue, type, event, bucket, count, seconds)
        SELECT 0, g.queue, g.type, g.event, g.bucket, sum(g.count), sum(g.seconds)
        FROM gone AS g
        GROUP BY 2, 3, 4, 5
        ORDER BY 2, 3, 4, 5
        ON CONFLICT (shard, queue, type, event, bucket)
        DO UPDATE SET count = c.count + excluded.count, seconds = c.seconds + excluded.seconds
    )
    SELECT count(*) INTO v_folded FROM gone;
    RETURN v_folded;
END;
$$
"""


def upgrade() -> None:
    for statement in (*TABLES, BUCKETS, REPORT_PROGRESS, RECORD_DELIVERY, FOLD_COUNTERS,
                      EVENTS_INSERTED, EVENTS_TRIGGER):
        op.execute(statement)

def downgrade() -> None:
    op.execute("DROP TRIGGER jobq_job_events_inserted ON job_events")
    op.execute("DROP FUNCTION jobq_job_events_inserted()")
    op.execute("DROP FUNCTION jobq_fold_counters()")
    op.execute("DROP FUNCTION jobq_record_webhook_delivery(bigint, uuid, text, integer, "
               "double precision, text, text)")
    op.execute(REPORT_PROGRESS_0009)
    op.execute("DROP FUNCTION jobq_metric_buckets()")
    op.execute("DROP TABLE job_counters")
    op.execute("DROP TABLE webhook_deliveries")
