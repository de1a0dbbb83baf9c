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

# -- retention ---------------------------------------------------------------------------------

# Jobs with their own retention, oldest first: the override pass walks only these.
JOB_RETENTION_INDEX = """
CREATE INDEX ix_jobs_retention_created_at ON jobs (created_at, id) WHERE retention IS NOT NULL
"""

# Changed from 0004: a statement-level trigger, and the files locked before the check. Two
# transactions deleting the last two jobs that share a file (a reused conversion output) each
# saw the other's link, not yet gone, and both kept the file: orphaned. Now the second waits
# for the first's lock on the file, and its check, a new statement, sees the first's deletion.
# Locks are taken in file-id order, so two deletions never wait for each other in a cycle. A
# transaction adding a link to an existing file takes FOR KEY SHARE on the file first
# (workers/tasks/mesh.py), which this lock waits for, and which waits for it.
FORGET_UNUSED_FILE = r"""
CREATE OR REPLACE FUNCTION jobq_forget_unused_file() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- A file goes with the last job that uses it (its chunks and cache entry cascade).
    PERFORM 1 FROM files AS f
    WHERE f.id IN (SELECT g.file_id FROM gone_links AS g)
    ORDER BY f.id
    FOR UPDATE OF f;
    DELETE FROM files AS f
    WHERE f.id IN (SELECT g.file_id FROM gone_links AS g)
      AND NOT EXISTS (SELECT 1 FROM job_files AS jf WHERE jf.file_id = f.id);
    RETURN NULL;
END;
$$
"""

FORGET_UNUSED_TRIGGER = """
CREATE TRIGGER job_files_forget_unused AFTER DELETE ON job_files
REFERENCING OLD TABLE AS gone_links
FOR EACH STATEMENT EXECUTE FUNCTION jobq_forget_unused_file()
"""

FINISHED_STATUSES = r"""
CREATE FUNCTION jobq_finished_statuses(p_status text) RETURNS procrastinate_job_status[]
LANGUAGE sql IMMUTABLE AS $$
    -- The queue statuses behind a public terminal status.
    SELECT CASE p_status
        WHEN 'succeeded' THEN ARRAY['succeeded']::procrastinate_job_status[]
        WHEN 'failed' THEN ARRAY['failed']::procrastinate_job_status[]
        WHEN 'cancelled' THEN ARRAY['cancelled', 'aborted']::procrastinate_job_status[]
    END
$$
"""

# Deleting finished jobs: one function for every way (the queue's policy, a job's own, the
# clean route), each call one short transaction of at most p_limit jobs. Finish time is
# job_overview's (the job's last event); created_at <= finish time, so the walk along
# ix_jobs_created_at_id can stop at the age bound. Rows another transaction holds are skipped.
CLEAN_QUEUE = r"""
CREATE FUNCTION jobq_clean_queue(p_queue varchar, p_status text, p_older_than_seconds float8,
                                 p_limit integer, p_policy boolean DEFAULT false)
RETURNS integer LANGUAGE plpgsql SET enable_sort = off SET jit = off AS $$
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
$$
"""

TRIM_QUEUE = r"""
CREATE FUNCTION jobq_trim_queue(p_queue varchar, p_status text, p_keep bigint,
                                p_limit integer)
RETURNS integer LANGUAGE plpgsql SET enable_sort = off SET jit = off AS $$
-- The count side of a queue's retention: delete the oldest jobs of queue p_queue that ended
-- p_status, beyond the newest p_keep (by submission), up to p_limit of them; jobs with their
-- own retention for this status are left to it. Returns how many.
DECLARE
    v_statuses procrastinate_job_status[] := jobq_finished_statuses(p_status);
    v_excess bigint;
    v_deleted integer;
BEGIN
    v_excess := jobq_count_jobs(p_queue, v_statuses) - p_keep;
    IF v_excess <= 0 THEN
        RETURN 0;
    END IF;
    WITH doomed AS (
        SELECT pj.id
        FROM jobs AS j
        JOIN procrastinate_jobs AS pj ON pj.id = j.queue_job_id
        WHERE pj.queue_name = p_queue
          AND pj.status = ANY (v_statuses)
          AND NOT coalesce(j.retention ? p_status, false)
        ORDER BY j.created_at, j.id
        LIMIT least(v_excess, p_limit)
        FOR UPDATE OF pj SKIP LOCKED
    ), gone AS (
        DELETE FROM procrastinate_jobs WHERE id IN (SELECT id FROM doomed) RETURNING id
    )
    SELECT count(*) INTO v_deleted FROM gone;
    RETURN v_deleted;
END;
$$
"""

COUNT_JOBS = r"""
CREATE FUNCTION jobq_count_jobs(p_queue varchar, p_statuses procrastinate_job_status[])
RETURNS bigint LANGUAGE sql STABLE AS $$
    -- How many jobs of a queue are in these queue statuses.
    SELECT count(*) FROM procrastinate_jobs
    WHERE queue_name = p_queue AND status = ANY (p_statuses)
$$
"""

APPLY_RETENTION = r"""
CREATE FUNCTION jobq_apply_retention(p_limit integer) RETURNS integer
LANGUAGE plpgsql AS $$
-- One step of the queues' retention: up to p_limit finished jobs deleted, by each queue's
-- age and count limits per terminal status, in one transaction; returns how many. The caller
-- repeats until fewer than p_limit come back (service/retention.py, paced).
DECLARE
    r record;
    v_deleted integer := 0;
BEGIN
    FOR r IN
        SELECT q.name, s.status, s.max_age, s.max_count
        FROM queues AS q
        CROSS JOIN LATERAL (VALUES
            ('succeeded', q.succeeded_max_age_seconds, q.succeeded_max_count),
            ('failed', q.failed_max_age_seconds, q.failed_max_count),
            ('cancelled', q.cancelled_max_age_seconds, q.cancelled_max_count))
            AS s(status, max_age, max_count)
        WHERE s.max_age IS NOT NULL OR s.max_count IS NOT NULL
        ORDER BY q.name, s.status
    LOOP
        IF r.max_age IS NOT NULL AND v_deleted < p_limit THEN
            v_deleted := v_deleted + jobq_clean_queue(r.name, r.status, r.max_age,
                                                      p_limit - v_deleted, true);
        END IF;
        IF r.max_count IS NOT NULL AND v_deleted < p_limit THEN
            v_deleted := v_deleted + jobq_trim_queue(r.name, r.status, r.max_count,
                                                     p_limit - v_deleted);
        END IF;
    END LOOP;
    RETURN v_deleted;
END;
$$
"""

APPLY_JOB_RETENTION = r"""
CREATE FUNCTION jobq_apply_job_retention(
    p_after_created timestamptz, p_after_id uuid, p_scan integer,
    OUT deleted integer, OUT last_created timestamptz, OUT last_id uuid)
LANGUAGE plpgsql SET jit = off AS $$
-- One step of the jobs' own retention (remove_on_complete / remove_on_fail): the next p_scan
-- jobs that have one, after (p_after_created, p_after_id) in submission order, are checked and
-- those due are deleted. Returns how many, and where to go on from (NULL: the end was
-- reached). A job is due when it ended the way its override names and it ended longer than
-- max_age_seconds ago, or max_count or more jobs of its queue submitted after it ended the same
-- way; {"keep": true} never is.
BEGIN
    WITH scanned AS MATERIALIZED (
        SELECT j.id, j.created_at, j.queue_job_id, j.retention
        FROM jobs AS j
        WHERE j.retention IS NOT NULL
          AND (p_after_created IS NULL OR (j.created_at, j.id) > (p_after_created, p_after_id))
        ORDER BY j.created_at, j.id
        LIMIT p_scan
    ), due AS (
        SELECT pj.id
        FROM scanned AS s
        JOIN procrastinate_jobs AS pj ON pj.id = s.queue_job_id
        CROSS JOIN LATERAL (SELECT s.retention -> pj.status::text AS rule) AS k
        WHERE pj.status IN ('succeeded', 'failed')
          AND k.rule IS NOT NULL
          AND NOT coalesce((k.rule->>'keep')::boolean, false)
          AND ((k.rule->>'max_age_seconds' IS NOT NULL
                AND (SELECT max(e.at) FROM job_events AS e WHERE e.job_id = s.id)
                    < now() - make_interval(secs => (k.rule->>'max_age_seconds')::float8))
            OR (k.rule->>'max_count' IS NOT NULL
                AND (SELECT count(*) FROM (
                        SELECT 1 FROM jobs AS j2
                        JOIN procrastinate_jobs AS p2 ON p2.id = j2.queue_job_id
                        WHERE (j2.created_at, j2.id) > (s.created_at, s.id)
                          AND p2.queue_name = pj.queue_name AND p2.status = pj.status
                        LIMIT (k.rule->>'max_count')::integer) AS newer)
                    >= (k.rule->>'max_count')::integer))
        FOR UPDATE OF pj SKIP LOCKED
    ), gone AS (
        DELETE FROM procrastinate_jobs WHERE id IN (SELECT id FROM due) RETURNING id
    )
    SELECT (SELECT count(*) FROM gone), s.created_at, s.id
    INTO deleted, last_created, last_id
    FROM scanned AS s ORDER BY s.created_at DESC, s.id DESC LIMIT 1;
    IF last_id IS NULL THEN
        deleted := 0;
    END IF;
END;
$$
"""

# -- rate limits and global concurrency --------------------------------------------------------

# The starts of rate-limited queues, one row per claim, kept for one period (the claim deletes
# older ones). Only claims of rate-limited queues write here.
QUEUE_STARTS = """
CREATE TABLE queue_starts (
    queue_name varchar(128) NOT NULL,
    started_at timestamptz NOT NULL,
    starts integer NOT NULL,
    CONSTRAINT pk_queue_starts PRIMARY KEY (queue_name, started_at)
)
"""

# The claim's walk for workers that take jobs from queues with limits. It locks those queues'
# rows first (in name order, so claimers never wait for each other in a cycle): claims of a
# limited queue are serialised, and each sees every start and every running job the ones before
# it committed. Then each limited queue's allowance (concurrency: the limit minus its running
# jobs; rate: the limit minus the starts of the last period) caps what the walk takes from it;
# a queue whose allowance runs out is left out and the walk looks again for the slots still
# free, so its jobs never hold back other queues'. Jobs held back stay queued.
# claimed_at: the time of these starts, read after the locks were granted, so that the starts
# of a limited queue are in the order of its claims (job_attempts.started_at takes it).
CLAIM_LIMITED = r"""
CREATE FUNCTION jobq_claim_limited(p_queues varchar[], p_limited varchar[], p_limit integer,
                                   OUT ids bigint[], OUT claimed_at timestamptz)
LANGUAGE plpgsql SET enable_sort = off SET jit = off AS $$
DECLARE
    q record;
    v_allow integer[] := '{}';
    v_given integer[] := '{}';
    v_periods float8[] := '{}';
    v_exhausted varchar[] := '{}';
    v_held_back boolean;
    v_free integer;
    r record;
    i integer;
BEGIN
    PERFORM 1 FROM queues WHERE name = ANY (p_limited) ORDER BY name FOR UPDATE;
    claimed_at := clock_timestamp();
    FOR q IN SELECT * FROM queues WHERE name = ANY (p_limited) ORDER BY name LOOP
        i := array_position(p_limited, q.name);
        v_allow[i] := p_limit;
        IF q.concurrency_limit IS NOT NULL THEN
            v_allow[i] := least(v_allow[i], q.concurrency_limit - (
                SELECT count(*) FROM procrastinate_jobs AS pj
                WHERE pj.queue_name = q.name AND pj.status = 'doing'));
        END IF;
        IF q.rate_limit IS NOT NULL THEN
            v_allow[i] := least(v_allow[i], q.rate_limit - coalesce((
                SELECT sum(s.starts) FROM queue_starts AS s
                WHERE s.queue_name = q.name
                  AND s.started_at > claimed_at - make_interval(secs => q.rate_period_seconds)
                ), 0));
        END IF;
        v_given[i] := v_allow[i];
        v_periods[i] := q.rate_period_seconds;
        IF v_allow[i] <= 0 THEN
            v_exhausted := v_exhausted || q.name;
        END IF;
    END LOOP;

    ids := '{}';
    LOOP
        v_held_back := false;
        v_free := p_limit - cardinality(ids);
        FOR r IN
            SELECT pj.id, pj.queue_name
            FROM procrastinate_jobs AS pj
            WHERE pj.status = 'todo'
              AND (p_queues IS NULL OR pj.queue_name = ANY (p_queues))
              AND NOT (pj.queue_name = ANY (v_exhausted))
              AND (pj.scheduled_at IS NULL OR pj.scheduled_at <= now())
              AND (SELECT true FROM jobs AS j WHERE j.queue_job_id = pj.id)
              AND NOT coalesce((SELECT q2.paused FROM queues AS q2 WHERE q2.name = pj.queue_name),
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
            LIMIT v_free
            FOR UPDATE OF pj SKIP LOCKED
        LOOP
            i := array_position(p_limited, r.queue_name);
            IF i IS NULL THEN
                ids := ids || r.id;
            ELSIF v_allow[i] > 0 THEN
                ids := ids || r.id;
                v_allow[i] := v_allow[i] - 1;
                IF v_allow[i] = 0 THEN
                    v_exhausted := v_exhausted || r.queue_name;
                END IF;
            ELSE
                v_held_back := true;
            END IF;
        END LOOP;
        -- Each new pass leaves out one more exhausted queue, so there are at most as many
        -- passes as limited queues, plus one.
        EXIT WHEN NOT v_held_back OR cardinality(ids) >= p_limit;
    END LOOP;

    -- The starts of rate-limited queues, and the end of the ones no period counts any more.
    FOR i IN 1 .. cardinality(p_limited) LOOP
        CONTINUE WHEN v_periods[i] IS NULL;
        IF v_given[i] - v_allow[i] > 0 THEN
            INSERT INTO queue_starts (queue_name, started_at, starts)
            VALUES (p_limited[i], claimed_at, v_given[i] - v_allow[i]);
        END IF;
        DELETE FROM queue_starts AS s
        WHERE s.queue_name = p_limited[i]
          AND s.started_at <= claimed_at - make_interval(secs => v_periods[i]);
    END LOOP;
END;
$$
"""

# Changed from 0010: workers that take jobs from queues with a rate or concurrency limit claim
# through jobq_claim_limited (above); the others' claim is the same statement as before, after
# one look at `queues`. The attempts' started_at is the claim's time (the limited claim's, for
# those).
CLAIM_JOBS = r"""
CREATE OR REPLACE FUNCTION jobq_claim_jobs(p_queues varchar[], p_worker_id bigint,
                                           p_worker_name text, p_limit integer)
RETURNS TABLE(attempt_id bigint, job_id uuid, attempt integer, budget_attempt integer,
              task_name varchar, queue_name varchar, payload jsonb, max_attempts integer,
              timeout_seconds double precision, backoff jsonb)
LANGUAGE plpgsql SET enable_sort = off SET jit = off AS $$
#variable_conflict use_column
DECLARE
    v_ids bigint[];
    v_limited varchar[];
    v_started timestamptz := now();
BEGIN
    SELECT array_agg(q.name) INTO v_limited FROM queues AS q
    WHERE (q.rate_limit IS NOT NULL OR q.concurrency_limit IS NOT NULL)
      AND NOT q.paused
      AND (p_queues IS NULL OR q.name = ANY (p_queues));
    IF v_limited IS NOT NULL THEN
        SELECT l.ids, l.claimed_at INTO v_ids, v_started
        FROM jobq_claim_limited(p_queues, v_limited, p_limit) AS l;
        IF cardinality(v_ids) = 0 THEN
            RETURN;
        END IF;
    ELSE
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
        INSERT INTO job_attempts (job_id, number, worker_id, worker_name, started_at)
        SELECT w.id,
               COALESCE((SELECT max(a.number) FROM job_attempts AS a WHERE a.job_id = w.id), 0) + 1,
               p_worker_id, p_worker_name, v_started
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

# -- schedules ---------------------------------------------------------------------------------

SCHEDULES = """
CREATE TABLE schedules (
    name varchar(128) NOT NULL,
    cron text,
    interval_seconds double precision,
    timezone text DEFAULT 'UTC' NOT NULL,
    job jsonb NOT NULL,
    paused boolean DEFAULT false NOT NULL,
    origin varchar(8) DEFAULT 'api' NOT NULL,
    anchor_at timestamptz DEFAULT now() NOT NULL,
    created_at timestamptz DEFAULT now() NOT NULL,
    updated_at timestamptz DEFAULT now() NOT NULL,
    CONSTRAINT pk_schedules PRIMARY KEY (name),
    CONSTRAINT ck_schedules_cron_or_interval CHECK ((cron IS NULL) <> (interval_seconds IS NULL)),
    CONSTRAINT ck_schedules_origin_known CHECK (origin IN ('api', 'code'))
)
"""

# One row per tick that made a job: the primary key is what makes a tick's job exactly one,
# however many workers look at the schedule at once.
SCHEDULE_TICKS = """
CREATE TABLE schedule_ticks (
    schedule_name varchar(128) NOT NULL,
    tick_at timestamptz NOT NULL,
    job_id uuid,
    made_at timestamptz DEFAULT now() NOT NULL,
    CONSTRAINT pk_schedule_ticks PRIMARY KEY (schedule_name, tick_at),
    CONSTRAINT fk_schedule_ticks_schedule_name_schedules FOREIGN KEY (schedule_name)
        REFERENCES schedules (name) ON DELETE CASCADE
)
"""


def upgrade() -> None:
    op.execute(QUEUE_COLUMNS)
    op.execute(QUEUE_ROWS)
    op.execute(SET_QUEUE_SETTINGS)
    op.execute(JOB_RETENTION_COLUMN)
    op.execute(f"DROP FUNCTION {SUBMIT_SIGNATURE_0010}")
    op.execute(SUBMIT_JOBS)
    op.execute(JOB_RETENTION_INDEX)
    op.execute("DROP TRIGGER job_files_forget_unused ON job_files")
    op.execute(FORGET_UNUSED_FILE)
    op.execute(FORGET_UNUSED_TRIGGER)
    for statement in (FINISHED_STATUSES, COUNT_JOBS, CLEAN_QUEUE, TRIM_QUEUE, APPLY_RETENTION,
                      APPLY_JOB_RETENTION):
        op.execute(statement)
    op.execute(QUEUE_STARTS)
    op.execute(CLAIM_LIMITED)
    op.execute(CLAIM_JOBS)
    op.execute(SCHEDULES)
    op.execute(SCHEDULE_TICKS)


def downgrade() -> None:
    op.execute("DROP TABLE schedule_ticks")
    op.execute("DROP TABLE schedules")
    op.execute(CLAIM_JOBS_0010)
    op.execute("DROP FUNCTION jobq_claim_limited(varchar[], varchar[], integer)")
    op.execute("DROP TABLE queue_starts")
    for function in ("jobq_apply_job_retention(timestamptz, uuid, integer)",
                     "jobq_apply_retention(integer)",
                     "jobq_trim_queue(varchar, text, bigint, integer)",
                     "jobq_clean_queue(varchar, text, float8, integer, boolean)",
                     "jobq_count_jobs(varchar, procrastinate_job_status[])",
                     "jobq_finished_statuses(text)"):
        op.execute(f"DROP FUNCTION {function}")
    op.execute("DROP TRIGGER job_files_forget_unused ON job_files")
    op.execute(FORGET_UNUSED_FILE_0004)
    op.execute("CREATE TRIGGER job_files_forget_unused AFTER DELETE ON job_files "
               "FOR EACH ROW EXECUTE FUNCTION jobq_forget_unused_file()")
    op.execute("DROP INDEX ix_jobs_retention_created_at")
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

FORGET_UNUSED_FILE_0004 = r"""
CREATE OR REPLACE FUNCTION public.jobq_forget_unused_file()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    -- A file goes with the last job that uses it (its chunks and cache entry cascade).
    DELETE FROM files f
    WHERE f.id = OLD.file_id
      AND NOT EXISTS (SELECT 1 FROM job_files jf WHERE jf.file_id = OLD.file_id);
    RETURN NULL;
END;
$function$
"""

CLAIM_JOBS_0010 = r"""
CREATE OR REPLACE FUNCTION public.jobq_claim_jobs(p_queues character varying[], p_worker_id bigint, p_worker_name text, p_limit integer)
 RETURNS TABLE(attempt_id bigint, job_id uuid, attempt integer, budget_attempt integer, task_name character varying, queue_name character varying, payload jsonb, max_attempts integer, timeout_seconds double precision, backoff jsonb)
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
$function$
"""
