"""Queue policies in PostgreSQL: per-queue settings (pause, rate limit, global concurrency,
default attempts, backoff and timeout, retention per terminal status).

Revision ID: 0013
Revises: 0012
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
down_revision = "0012"
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
    "double precision[], text[], text, text[], text[], text[], text[], text[], boolean)")
"""The signature before this revision (0012's, with p_keys); the name is kept from when this
revision was written on top of 0010."""

SUBMIT_SIGNATURE = (
    "jobq_submit_jobs(uuid[], varchar[], varchar[], integer[], timestamptz[], text[], integer[], "
    "double precision[], text[], text, text[], text[], text[], text[], text[], boolean, "
    "boolean[], boolean[], text[])")

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
    p_keys text[], p_overview boolean, p_attempts_defaulted boolean[] DEFAULT NULL,
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
    -- How many jobs of a queue are in these queue statuses, from the kept counts.
    SELECT coalesce(sum(c.n), 0)::bigint FROM queue_counts AS c
    WHERE c.queue_name = p_queue
      AND c.status IN (SELECT jobq_status_group(s) FROM unnest(p_statuses) AS s)
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
        WHERE (s.max_age IS NOT NULL OR s.max_count IS NOT NULL)
          -- none of that status: no walk (the kept counts say so at once)
          AND (SELECT sum(c.n) FROM queue_counts AS c
               WHERE c.queue_name = q.name AND c.status = s.status) > 0
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
        RETURNING pj.id, pj.task_name, pj.queue_name, pj.attempts, pj.priority, pj.scheduled_at
    ), owned AS (
        SELECT j.id, j.queue_job_id, j.payload, j.max_attempts, j.timeout_seconds, j.backoff,
               j.created_at
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
    ), waited AS (
        -- Daily aggregate (docs/reporting.md): how long first attempts waited to start, from
        -- submission or from the time the job was scheduled for.
        INSERT INTO job_stats_histograms AS h (day, queue_name, task_name, metric, bucket,
                                               shard, n, max_ms)
        SELECT jobq_today(), x.queue_name, x.task_name, 'wait', jobq_stats_bucket(x.ms),
               jobq_shard(), count(*), max(x.ms)
        FROM (SELECT c.queue_name, c.task_name,
                     greatest(extract(epoch FROM v_started
                                      - coalesce(c.scheduled_at, w.created_at)) * 1000, 0) AS ms
              FROM opened AS o
              JOIN owned AS w ON w.id = o.job_id
              JOIN claimed AS c ON c.id = w.queue_job_id
              WHERE o.number = 1) AS x
        GROUP BY x.queue_name, x.task_name, jobq_stats_bucket(x.ms)
        ORDER BY x.queue_name, x.task_name, jobq_stats_bucket(x.ms)
        ON CONFLICT (day, queue_name, task_name, metric, bucket, shard)
        DO UPDATE SET n = h.n + excluded.n, max_ms = greatest(h.max_ms, excluded.max_ms)
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

# -- counts and daily aggregates, kept in the transactions that change state ------------------

# Counts per queue and status group ('waiting' is queued + scheduled), in shards: a transaction
# adds its changes to the rows of shard pg_backend_pid() % 16, so concurrent workers rarely
# update the same row; readers sum the shards. The daily aggregates are per day (UTC), queue
# and job type; retention never deletes them.
COUNT_TABLES = """
CREATE TABLE queue_counts (
    queue_name varchar(128) NOT NULL,
    status varchar(16) NOT NULL,
    shard smallint NOT NULL,
    n bigint NOT NULL,
    CONSTRAINT pk_queue_counts PRIMARY KEY (queue_name, status, shard)
);
CREATE TABLE job_stats_daily (
    day date NOT NULL,
    queue_name varchar(128) NOT NULL,
    task_name varchar(128) NOT NULL,
    shard smallint NOT NULL,
    submitted bigint DEFAULT 0 NOT NULL,
    succeeded bigint DEFAULT 0 NOT NULL,
    failed bigint DEFAULT 0 NOT NULL,
    cancelled bigint DEFAULT 0 NOT NULL,
    retried bigint DEFAULT 0 NOT NULL,
    CONSTRAINT pk_job_stats_daily PRIMARY KEY (day, queue_name, task_name, shard)
);
CREATE TABLE job_stats_histograms (
    day date NOT NULL,
    queue_name varchar(128) NOT NULL,
    task_name varchar(128) NOT NULL,
    metric varchar(8) NOT NULL,
    bucket smallint NOT NULL,
    shard smallint NOT NULL,
    n bigint NOT NULL,
    max_ms double precision NOT NULL,
    CONSTRAINT pk_job_stats_histograms PRIMARY KEY (day, queue_name, task_name, metric, bucket, shard)
);
CREATE TABLE job_failures_daily (
    day date NOT NULL,
    queue_name varchar(128) NOT NULL,
    task_name varchar(128) NOT NULL,
    error_type text NOT NULL,
    shard smallint NOT NULL,
    attempts bigint NOT NULL,
    jobs bigint NOT NULL,
    last_at timestamptz NOT NULL,
    last_message text,
    CONSTRAINT pk_job_failures_daily PRIMARY KEY (day, queue_name, task_name, error_type, shard)
);
CREATE TABLE worker_stats_daily (
    day date NOT NULL,
    worker_name text NOT NULL,
    attempts bigint DEFAULT 0 NOT NULL,
    succeeded bigint DEFAULT 0 NOT NULL,
    failed bigint DEFAULT 0 NOT NULL,
    retried bigint DEFAULT 0 NOT NULL,
    cancelled bigint DEFAULT 0 NOT NULL,
    interrupted bigint DEFAULT 0 NOT NULL,
    lost bigint DEFAULT 0 NOT NULL,
    busy_ms double precision DEFAULT 0 NOT NULL,
    CONSTRAINT pk_worker_stats_daily PRIMARY KEY (day, worker_name)
)
"""

# The queued jobs of a queue in two halves, for GET /api/v1/queues: those without a time
# (oldest first by id) and those with one (by time), so that "how many are scheduled" and
# "how long has the oldest waited" are short index walks.
WAITING_INDEXES = """
CREATE INDEX ix_procrastinate_jobs_todo_unscheduled ON procrastinate_jobs (queue_name, id)
    WHERE status = 'todo' AND scheduled_at IS NULL;
CREATE INDEX ix_procrastinate_jobs_todo_scheduled ON procrastinate_jobs (queue_name, scheduled_at)
    WHERE status = 'todo' AND scheduled_at IS NOT NULL
"""

COUNT_HELPERS = r"""
CREATE FUNCTION jobq_shard() RETURNS smallint LANGUAGE sql STABLE AS $$
    -- The shard of the counting rows this session adds to.
    SELECT (pg_backend_pid() % 16)::smallint
$$;
CREATE FUNCTION jobq_today() RETURNS date LANGUAGE sql STABLE AS $$
    -- The day of the daily aggregates: the transaction's, in UTC.
    SELECT (now() AT TIME ZONE 'UTC')::date
$$;
CREATE FUNCTION jobq_status_group(p_status procrastinate_job_status) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    -- The counted group of a queue status (job_overview's public status; queued and
    -- scheduled together as 'waiting', told apart when read).
    SELECT CASE p_status
        WHEN 'todo' THEN 'waiting'
        WHEN 'doing' THEN 'running'
        WHEN 'aborting' THEN 'running'
        WHEN 'succeeded' THEN 'succeeded'
        WHEN 'failed' THEN 'failed'
        ELSE 'cancelled'
    END
$$;
CREATE FUNCTION jobq_stats_bucket(p_ms double precision) RETURNS smallint
LANGUAGE sql IMMUTABLE AS $$
    -- Histogram bucket of a duration: 0 below 1 ms, then four buckets per doubling (bucket b
    -- holds [2^((b-1)/4), 2^(b/4)) ms), so a percentile read from it is within 19 %.
    SELECT CASE WHEN p_ms < 1 THEN 0
                ELSE least(1 + floor(4 * log(2, p_ms::numeric)), 32000)::smallint END
$$;
CREATE FUNCTION jobq_stats_bucket_ms(p_bucket smallint) RETURNS double precision
LANGUAGE sql IMMUTABLE AS $$
    -- The value a bucket stands for in a percentile: its geometric middle (0.5 ms for 0).
    SELECT CASE WHEN p_bucket = 0 THEN 0.5 ELSE power(2, (p_bucket - 0.5) / 4.0) END
$$
"""

COUNT_TRIGGER = r"""
CREATE FUNCTION jobq_count_changes() RETURNS trigger LANGUAGE plpgsql AS $$
-- Keeps queue_counts and job_stats_daily in the transaction of every statement that inserts,
-- moves or deletes queue rows, whoever runs it (jobq_* functions, cascades, Procrastinate's
-- own functions). The daily aggregate first, then the counts, everywhere: one lock order.
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO job_stats_daily AS d (day, queue_name, task_name, shard, submitted)
        SELECT jobq_today(), r.queue_name, r.task_name, jobq_shard(), count(*)
        FROM new_rows AS r GROUP BY r.queue_name, r.task_name
        ORDER BY r.queue_name, r.task_name
        ON CONFLICT (day, queue_name, task_name, shard)
        DO UPDATE SET submitted = d.submitted + excluded.submitted;
        INSERT INTO queue_counts AS c (queue_name, status, shard, n)
        SELECT r.queue_name, jobq_status_group(r.status), jobq_shard(), count(*)
        FROM new_rows AS r GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (queue_name, status, shard) DO UPDATE SET n = c.n + excluded.n;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO queue_counts AS c (queue_name, status, shard, n)
        SELECT r.queue_name, jobq_status_group(r.status), jobq_shard(), -count(*)
        FROM old_rows AS r GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (queue_name, status, shard) DO UPDATE SET n = c.n + excluded.n;
    ELSE
        INSERT INTO job_stats_daily AS d (day, queue_name, task_name, shard, succeeded,
                                          failed, cancelled, retried)
        SELECT jobq_today(), m.queue_name, m.task_name, jobq_shard(),
               count(*) FILTER (WHERE m.status = 'succeeded'),
               count(*) FILTER (WHERE m.status = 'failed'),
               count(*) FILTER (WHERE m.status IN ('cancelled', 'aborted')),
               count(*) FILTER (WHERE m.retried)
        FROM (
            SELECT n.queue_name, n.task_name, n.status,
                   -- back to the queue after a failed attempt, or a client's retry (an
                   -- interrupted attempt is not counted, so is not a retry)
                   n.status = 'todo' AND (o.status IN ('failed', 'cancelled', 'aborted')
                                          OR (o.status = 'doing' AND n.attempts > o.attempts))
                       AS retried
            FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id
            WHERE o.status <> n.status
        ) AS m
        WHERE m.status IN ('succeeded', 'failed', 'cancelled', 'aborted') OR m.retried
        GROUP BY m.queue_name, m.task_name ORDER BY m.queue_name, m.task_name
        ON CONFLICT (day, queue_name, task_name, shard) DO UPDATE
        SET succeeded = d.succeeded + excluded.succeeded, failed = d.failed + excluded.failed,
            cancelled = d.cancelled + excluded.cancelled, retried = d.retried + excluded.retried;

        INSERT INTO queue_counts AS c (queue_name, status, shard, n)
        SELECT x.queue_name, x.status, jobq_shard(), sum(x.d)
        FROM old_rows AS o
        JOIN new_rows AS n ON n.id = o.id
        CROSS JOIN LATERAL (VALUES (o.queue_name, jobq_status_group(o.status), -1),
                                   (n.queue_name, jobq_status_group(n.status), 1))
            AS x(queue_name, status, d)
        WHERE o.status <> n.status OR o.queue_name <> n.queue_name
        GROUP BY x.queue_name, x.status HAVING sum(x.d) <> 0
        ORDER BY x.queue_name, x.status
        ON CONFLICT (queue_name, status, shard) DO UPDATE SET n = c.n + excluded.n;
    END IF;
    RETURN NULL;
END;
$$;
CREATE FUNCTION jobq_forget_counts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- TRUNCATE of the queue: nothing is left to count.
    DELETE FROM queue_counts;
    RETURN NULL;
END;
$$;
CREATE TRIGGER jobq_count_inserted AFTER INSERT ON procrastinate_jobs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION jobq_count_changes();
CREATE TRIGGER jobq_count_updated AFTER UPDATE ON procrastinate_jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION jobq_count_changes();
CREATE TRIGGER jobq_count_deleted AFTER DELETE ON procrastinate_jobs
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION jobq_count_changes();
CREATE TRIGGER jobq_count_truncated AFTER TRUNCATE ON procrastinate_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION jobq_forget_counts()
"""

# The counts of the jobs that exist now, in shard 0.
COUNT_BACKFILL = """
INSERT INTO queue_counts (queue_name, status, shard, n)
SELECT queue_name, jobq_status_group(status), 0, count(*)
FROM procrastinate_jobs GROUP BY 1, 2
"""


# Changed from 0010: the daily aggregates of the attempts recorded (the `ran`, `by_worker` and
# `failures` steps), with the attempt's start and the job's type carried for them.
FINISH_ATTEMPTS = r"""
CREATE OR REPLACE FUNCTION jobq_finish_attempts(p_attempt_ids bigint[], p_outcomes text[], p_results text[], p_errors text[], p_retry_at timestamp with time zone[], p_lost boolean DEFAULT false)
 RETURNS TABLE(attempt_id bigint, outcome text)
 LANGUAGE plpgsql
 SET jit TO 'off'
 SET plan_cache_mode TO 'force_generic_plan'
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
    ), ran AS (
        -- Daily aggregates (docs/reporting.md): how long the attempts that ran to an end took,
        -- what each worker did, and the failures by error type.
        INSERT INTO job_stats_histograms AS h (day, queue_name, task_name, metric, bucket,
                                               shard, n, max_ms)
        SELECT jobq_today(), t.queue_name, t.task_name, 'run', jobq_stats_bucket(t.ran_ms),
               jobq_shard(), count(*), max(t.ran_ms)
        FROM target AS t
        WHERE NOT p_lost AND t.outcome IN ('succeeded', 'failed', 'retry')
        GROUP BY t.queue_name, t.task_name, jobq_stats_bucket(t.ran_ms)
        ORDER BY t.queue_name, t.task_name, jobq_stats_bucket(t.ran_ms)
        ON CONFLICT (day, queue_name, task_name, metric, bucket, shard)
        DO UPDATE SET n = h.n + excluded.n, max_ms = greatest(h.max_ms, excluded.max_ms)
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
$$
"""

# -- reports (docs/reporting.md): views over the daily aggregates, which retention never deletes

REPORT_VIEWS = r"""
CREATE VIEW report_daily AS
WITH counts AS (
    SELECT day, queue_name, task_name, sum(submitted) AS submitted,
           sum(succeeded) AS succeeded, sum(failed) AS failed, sum(cancelled) AS cancelled,
           sum(retried) AS retried
    FROM job_stats_daily GROUP BY day, queue_name, task_name
), buckets AS (
    SELECT day, queue_name, task_name, metric, bucket, sum(n) AS n, max(max_ms) AS max_ms
    FROM job_stats_histograms GROUP BY day, queue_name, task_name, metric, bucket
), running AS (
    SELECT b.*,
           sum(b.n) OVER (PARTITION BY b.day, b.queue_name, b.task_name, b.metric
                          ORDER BY b.bucket) AS reached,
           sum(b.n) OVER (PARTITION BY b.day, b.queue_name, b.task_name, b.metric) AS total
    FROM buckets AS b
), percentiles AS (
    SELECT day, queue_name, task_name, metric, max(max_ms) AS max_ms,
           least(jobq_stats_bucket_ms(min(bucket) FILTER (WHERE reached >= 0.5 * total)),
                 max(max_ms)) AS p50_ms,
           least(jobq_stats_bucket_ms(min(bucket) FILTER (WHERE reached >= 0.95 * total)),
                 max(max_ms)) AS p95_ms
    FROM running GROUP BY day, queue_name, task_name, metric
), keys AS (
    SELECT day, queue_name, task_name FROM counts
    UNION SELECT day, queue_name, task_name FROM percentiles
)
SELECT k.day, k.queue_name AS queue, k.task_name AS type,
       coalesce(c.submitted, 0) AS submitted, coalesce(c.succeeded, 0) AS succeeded,
       coalesce(c.failed, 0) AS failed, coalesce(c.cancelled, 0) AS cancelled,
       coalesce(c.retried, 0) AS retried,
       round(r.p50_ms::numeric, 1) AS run_p50_ms, round(r.p95_ms::numeric, 1) AS run_p95_ms,
       round(r.max_ms::numeric, 1) AS run_max_ms,
       round(w.p50_ms::numeric, 1) AS wait_p50_ms, round(w.p95_ms::numeric, 1) AS wait_p95_ms,
       round(w.max_ms::numeric, 1) AS wait_max_ms
FROM keys AS k
LEFT JOIN counts AS c USING (day, queue_name, task_name)
LEFT JOIN percentiles AS r
       ON (r.day, r.queue_name, r.task_name, r.metric) = (k.day, k.queue_name, k.task_name, 'run')
LEFT JOIN percentiles AS w
       ON (w.day, w.queue_name, w.task_name, w.metric) = (k.day, k.queue_name, k.task_name, 'wait');

CREATE VIEW report_failures AS
SELECT f.day, f.queue_name AS queue, f.task_name AS type, f.error_type,
       sum(f.attempts) AS failed_attempts, sum(f.jobs) AS failed_jobs, max(f.last_at) AS last_at,
       (array_agg(m.message ORDER BY f.last_at DESC))[1] AS last_message
FROM job_failures_daily AS f
-- A second relation keeps every column qualified when PostgreSQL prints the view: 16 and
-- later drop the qualification in single-relation views, 15 keeps it, and
-- migrations/schema.sql must read the same from both.
CROSS JOIN LATERAL (SELECT f.last_message AS message) AS m
GROUP BY f.day, f.queue_name, f.task_name, f.error_type;

CREATE VIEW report_workers AS
SELECT s.day, s.worker_name AS worker, s.attempts, s.succeeded, s.failed, s.retried,
       s.cancelled, s.interrupted, s.lost, round((s.busy_ms / 1000)::numeric, 3) AS busy_seconds,
       live.host, live.last_heartbeat, live.host IS NOT NULL AS live
FROM worker_stats_daily AS s
LEFT JOIN LATERAL (
    SELECT w.host, pw.last_heartbeat FROM workers AS w
    JOIN procrastinate_workers AS pw ON pw.id = w.id
    WHERE w.name = s.worker_name ORDER BY pw.last_heartbeat DESC LIMIT 1
) AS live ON true;
"""


def _statements(script: str) -> list[str]:
    """The statements of a script, one by one (asyncpg runs one per call): they end with a
    `;` at the end of a line, except inside a function's $$ body."""
    statements, current, in_body = [], [], False
    for line in script.strip().splitlines():
        current.append(line)
        in_body ^= line.count("$$") % 2 == 1
        if line.rstrip().endswith(";") and not in_body:
            statements.append("\n".join(current).rstrip().rstrip(";"))
            current = []
    if "".join(current).strip():
        statements.append("\n".join(current))
    return statements


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
    for statement in (FINISHED_STATUSES, CLEAN_QUEUE, TRIM_QUEUE, APPLY_RETENTION,
                      APPLY_JOB_RETENTION):
        op.execute(statement)
    op.execute(QUEUE_STARTS)
    op.execute(CLAIM_LIMITED)
    op.execute(CLAIM_JOBS)
    op.execute(SCHEDULES)
    op.execute(SCHEDULE_TICKS)
    for script in (COUNT_TABLES, WAITING_INDEXES, COUNT_HELPERS, COUNT_TRIGGER):
        for statement in _statements(script):
            op.execute(statement)
    op.execute(COUNT_BACKFILL)
    op.execute(COUNT_JOBS)  # reads queue_counts, made just above
    op.execute(FINISH_ATTEMPTS)
    for statement in _statements(REPORT_VIEWS):
        op.execute(statement)


def downgrade() -> None:
    for view in ("report_workers", "report_failures", "report_daily"):
        op.execute(f"DROP VIEW {view}")
    op.execute(FINISH_ATTEMPTS_0010)
    for trigger in ("jobq_count_inserted", "jobq_count_updated", "jobq_count_deleted",
                    "jobq_count_truncated"):
        op.execute(f"DROP TRIGGER {trigger} ON procrastinate_jobs")
    for function in ("jobq_forget_counts()", "jobq_count_changes()",
                     "jobq_stats_bucket_ms(smallint)", "jobq_stats_bucket(double precision)",
                     "jobq_status_group(procrastinate_job_status)", "jobq_today()",
                     "jobq_shard()"):
        op.execute(f"DROP FUNCTION {function}")
    op.execute("DROP INDEX ix_procrastinate_jobs_todo_unscheduled")
    op.execute("DROP INDEX ix_procrastinate_jobs_todo_scheduled")
    for table in ("worker_stats_daily", "job_failures_daily", "job_stats_histograms",
                  "job_stats_daily", "queue_counts"):
        op.execute(f"DROP TABLE {table}")
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
        RETURNING pj.id, pj.task_name, pj.queue_name, pj.attempts, pj.priority, pj.scheduled_at
    ), owned AS (
        SELECT j.id, j.queue_job_id, j.payload, j.max_attempts, j.timeout_seconds, j.backoff,
               j.created_at
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

FINISH_ATTEMPTS_0010 = r"""
CREATE OR REPLACE FUNCTION public.jobq_finish_attempts(p_attempt_ids bigint[], p_outcomes text[], p_results text[], p_errors text[], p_retry_at timestamp with time zone[], p_lost boolean DEFAULT false)
 RETURNS TABLE(attempt_id bigint, outcome text)
 LANGUAGE plpgsql
 SET jit TO 'off'
 SET plan_cache_mode TO 'force_generic_plan'
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
$function$
"""
