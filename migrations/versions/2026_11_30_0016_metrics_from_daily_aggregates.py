"""One count of each fact: /metrics reads the daily aggregates; job_counters is gone (issue 17).

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-30

Revision 0011 counted every job event a second time, for /metrics, in job_counters: the trigger
on job_events looked up each new event's job, queue row and attempt and upserted a counter row,
at every claim and every finish. Revision 0013's daily aggregates (job_stats_daily, kept by the
statement trigger on procrastinate_jobs, and job_stats_histograms, written by the claim and the
finish) already count the same transitions, and outlive retention as job_counters did. /metrics
now sums them:

- job_stats_daily gains what /metrics needed beyond the reports: `started` (attempts started),
  `requeued` (an attempt stopped and not counted: shutdown, fencing) and `client_retried` (a
  client's retry of a finished job; `retried` counts these and the retries after a failed
  attempt, as before).
- job_stats_histograms gains `sum_ms`, the sum of each bucket's durations (a histogram's _sum).
- /metrics' histogram bounds are 2^k ms (k = 0..22), edges of the daily histograms' buckets, so
  its cumulative counts are exact sums (jobq_metric_buckets()).
- Its run-time and queue-wait histograms are the reports' (docs/reporting.md): run time of
  attempts that ended succeeded, failed or for a retry; wait of first attempts.

The trigger on job_events keeps its notification and webhooks. jobq_stats_bucket computes in
double precision instead of numeric (about 20 us a call less, at every claim and finish). Counts in the new columns start
at zero at this revision; the job_counters totals are dropped with the table (a counter reset,
which Prometheus's rate() and increase() allow for).

Function texts are copied from migrations/schema.sql at revision 0015; the downgrade restores
them.
"""

from __future__ import annotations

from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

NEW_COLUMNS = """
ALTER TABLE job_stats_daily
    ADD COLUMN started bigint DEFAULT 0 NOT NULL,
    ADD COLUMN requeued bigint DEFAULT 0 NOT NULL,
    ADD COLUMN client_retried bigint DEFAULT 0 NOT NULL
"""

SUM_COLUMN = "ALTER TABLE job_stats_histograms ADD COLUMN sum_ms double precision DEFAULT 0 NOT NULL"

JOB_COUNTERS_0015 = """
CREATE TABLE job_counters (
    shard integer NOT NULL,
    queue character varying(128) NOT NULL,
    type character varying(128) NOT NULL,
    event character varying(32) NOT NULL,
    bucket smallint NOT NULL,
    count bigint NOT NULL,
    seconds double precision NOT NULL,
    CONSTRAINT pk_job_counters PRIMARY KEY (shard, queue, type, event, bucket)
)
"""

COUNT_CHANGES = r"""
CREATE OR REPLACE FUNCTION public.jobq_count_changes()
 RETURNS trigger
 LANGUAGE plpgsql
 SET enable_seqscan TO 'on'
 SET enable_hashjoin TO 'on'
 SET enable_mergejoin TO 'on'
AS $function$
-- Keeps queue_counts and job_stats_daily in the transaction of every statement that inserts,
-- moves or deletes queue rows, whoever runs it (jobq_* functions, cascades, Procrastinate's
-- own functions). The daily aggregate first, then the counts, everywhere: one lock order.
-- job_stats_daily is also what /metrics counts (revision 0016): one count of each fact.
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
                                          failed, cancelled, retried, started, requeued,
                                          client_retried)
        SELECT jobq_today(), m.queue_name, m.task_name, jobq_shard(),
               count(*) FILTER (WHERE m.status = 'succeeded'),
               count(*) FILTER (WHERE m.status = 'failed'),
               count(*) FILTER (WHERE m.status IN ('cancelled', 'aborted')),
               count(*) FILTER (WHERE m.retried OR m.client_retried),
               count(*) FILTER (WHERE m.started),
               count(*) FILTER (WHERE m.requeued),
               count(*) FILTER (WHERE m.client_retried)
        FROM (
            SELECT n.queue_name, n.task_name, n.status,
                   -- back to the queue after a failed attempt (an interrupted attempt is not
                   -- counted, so is not a retry: it is requeued)
                   (o.status = 'doing' AND n.status = 'todo' AND n.attempts > o.attempts)
                       AS retried,
                   (o.status = 'doing' AND n.status = 'todo' AND n.attempts <= o.attempts)
                       AS requeued,
                   -- a client's retry of a finished job
                   (n.status = 'todo' AND o.status IN ('failed', 'cancelled', 'aborted'))
                       AS client_retried,
                   (o.status = 'todo' AND n.status = 'doing') AS started
            FROM old_rows AS o JOIN new_rows AS n ON n.id = o.id
            WHERE o.status <> n.status
        ) AS m
        WHERE m.status IN ('succeeded', 'failed', 'cancelled', 'aborted')
           OR m.retried OR m.requeued OR m.client_retried OR m.started
        GROUP BY m.queue_name, m.task_name ORDER BY m.queue_name, m.task_name
        ON CONFLICT (day, queue_name, task_name, shard) DO UPDATE
        SET succeeded = d.succeeded + excluded.succeeded, failed = d.failed + excluded.failed,
            cancelled = d.cancelled + excluded.cancelled, retried = d.retried + excluded.retried,
            started = d.started + excluded.started, requeued = d.requeued + excluded.requeued,
            client_retried = d.client_retried + excluded.client_retried;

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
$function$;
"""

CLAIM_JOBS = r"""
CREATE OR REPLACE FUNCTION public.jobq_claim_jobs(p_queues character varying[], p_worker_id bigint, p_worker_name text, p_limit integer)
 RETURNS TABLE(attempt_id bigint, job_id uuid, attempt integer, budget_attempt integer, task_name character varying, queue_name character varying, payload jsonb, max_attempts integer, timeout_seconds double precision, backoff jsonb)
 LANGUAGE plpgsql
 SET enable_sort TO 'off'
 SET jit TO 'off'
 SET enable_seqscan TO 'off'
 SET enable_hashjoin TO 'off'
 SET enable_mergejoin TO 'off'
 SET "jobq.keeps_history" TO 'on'
AS $function$
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
                                               shard, n, max_ms, sum_ms)
        SELECT jobq_today(), x.queue_name, x.task_name, 'wait', jobq_stats_bucket(x.ms),
               jobq_shard(), count(*), max(x.ms), sum(x.ms)
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
        DO UPDATE SET n = h.n + excluded.n, max_ms = greatest(h.max_ms, excluded.max_ms),
                      sum_ms = h.sum_ms + excluded.sum_ms
    )
    SELECT o.id, o.job_id, o.number, c.attempts + 1, c.task_name, c.queue_name,
           w.payload, w.max_attempts, w.timeout_seconds, w.backoff
    FROM opened AS o
    JOIN owned AS w ON w.id = o.job_id
    JOIN claimed AS c ON c.id = w.queue_job_id
    ORDER BY c.priority DESC, c.id ASC;
END;
$function$;
"""

FINISH_ATTEMPTS = r"""
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

JOB_EVENTS_INSERTED = r"""
CREATE OR REPLACE FUNCTION public.jobq_job_events_inserted()
 RETURNS trigger
 LANGUAGE plpgsql
 SET jit TO 'off'
 SET enable_seqscan TO 'off'
 SET enable_hashjoin TO 'off'
 SET enable_mergejoin TO 'off'
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
$function$;
"""

STATS_BUCKET = r"""
CREATE OR REPLACE FUNCTION public.jobq_stats_bucket(p_ms double precision)
 RETURNS smallint
 LANGUAGE sql
 IMMUTABLE
AS $function$
    -- Histogram bucket of a duration: 0 below 1 ms, then four buckets per doubling (bucket b
    -- holds [2^((b-1)/4), 2^(b/4)) ms), so a percentile read from it is within 19 %. In double
    -- precision (numeric's log took about 20 us a call, at every claim and finish): exact at
    -- the powers of two, /metrics' bounds; like numeric's from a double, it may put a value
    -- within a rounding error of another edge in the next bucket.
    SELECT CASE WHEN p_ms < 1 THEN 0
                ELSE least(1 + floor(4 * ln(p_ms) / ln(2::double precision)), 32000)::smallint
           END
$function$;
"""

STATS_BUCKET_0015 = r"""
CREATE OR REPLACE FUNCTION public.jobq_stats_bucket(p_ms double precision)
 RETURNS smallint
 LANGUAGE sql
 IMMUTABLE
AS $function$
    -- Histogram bucket of a duration: 0 below 1 ms, then four buckets per doubling (bucket b
    -- holds [2^((b-1)/4), 2^(b/4)) ms), so a percentile read from it is within 19 %.
    SELECT CASE WHEN p_ms < 1 THEN 0
                ELSE least(1 + floor(4 * log(2, p_ms::numeric)), 32000)::smallint END
$function$;
"""

METRIC_BUCKETS = r"""
CREATE OR REPLACE FUNCTION public.jobq_metric_buckets()
 RETURNS double precision[]
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    -- Upper bounds (seconds) of /metrics' run-time and queue-wait histograms: 2^k ms for
    -- k = 0..22, the upper edge of every fourth bucket of jobq_stats_bucket (bucket 4k holds
    -- durations below 2^k ms), so that the counts up to each bound are exact sums of the
    -- daily histograms. Bucket b is counted up to bound number ceil(b / 4).
    SELECT array_agg(power(2, k) / 1000.0 ORDER BY k)::double precision[]
    FROM generate_series(0, 22) AS k
$function$;
"""

COUNT_CHANGES_0015 = r"""
CREATE OR REPLACE FUNCTION public.jobq_count_changes()
 RETURNS trigger
 LANGUAGE plpgsql
 SET enable_seqscan TO 'on'
 SET enable_hashjoin TO 'on'
 SET enable_mergejoin TO 'on'
AS $function$
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
$function$;
"""

CLAIM_JOBS_0015 = r"""
CREATE OR REPLACE FUNCTION public.jobq_claim_jobs(p_queues character varying[], p_worker_id bigint, p_worker_name text, p_limit integer)
 RETURNS TABLE(attempt_id bigint, job_id uuid, attempt integer, budget_attempt integer, task_name character varying, queue_name character varying, payload jsonb, max_attempts integer, timeout_seconds double precision, backoff jsonb)
 LANGUAGE plpgsql
 SET enable_sort TO 'off'
 SET jit TO 'off'
 SET enable_seqscan TO 'off'
 SET enable_hashjoin TO 'off'
 SET enable_mergejoin TO 'off'
 SET "jobq.keeps_history" TO 'on'
AS $function$
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
$function$;
"""

FINISH_ATTEMPTS_0015 = r"""
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
$function$;
"""

JOB_EVENTS_INSERTED_0015 = r"""
CREATE OR REPLACE FUNCTION public.jobq_job_events_inserted()
 RETURNS trigger
 LANGUAGE plpgsql
 SET jit TO 'off'
 SET enable_seqscan TO 'off'
 SET enable_hashjoin TO 'off'
 SET enable_mergejoin TO 'off'
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
$function$;
"""

METRIC_BUCKETS_0015 = r"""
CREATE OR REPLACE FUNCTION public.jobq_metric_buckets()
 RETURNS double precision[]
 LANGUAGE sql
 IMMUTABLE PARALLEL SAFE
AS $function$
    -- Upper bounds (seconds) of the run-time and queue-wait histograms. job_counters.bucket is
    -- width_bucket(seconds, these): 0 below the first bound, i from bound i on, -1 for events
    -- that measure no time. /metrics reads the bounds from here.
    SELECT '{0.005,0.01,0.025,0.05,0.1,0.25,0.5,1,2.5,5,10,30,60,300,900,3600}'::double precision[]
$function$;
"""

FOLD_COUNTERS_0015 = r"""
CREATE OR REPLACE FUNCTION public.jobq_fold_counters()
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
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
$function$;
"""


def upgrade() -> None:
    op.execute(NEW_COLUMNS)
    op.execute(SUM_COLUMN)
    for function in (COUNT_CHANGES, CLAIM_JOBS, FINISH_ATTEMPTS, JOB_EVENTS_INSERTED,
                     METRIC_BUCKETS, STATS_BUCKET):
        op.execute(function)
    op.execute("DROP FUNCTION jobq_fold_counters()")
    op.execute("DROP TABLE job_counters")


def downgrade() -> None:
    op.execute(JOB_COUNTERS_0015)
    op.execute(FOLD_COUNTERS_0015)
    for function in (STATS_BUCKET_0015, METRIC_BUCKETS_0015, JOB_EVENTS_INSERTED_0015,
                     FINISH_ATTEMPTS_0015, CLAIM_JOBS_0015, COUNT_CHANGES_0015):
        op.execute(function)
    op.execute("ALTER TABLE job_stats_histograms DROP COLUMN sum_ms")
    op.execute("ALTER TABLE job_stats_daily DROP COLUMN started, DROP COLUMN requeued, "
               "DROP COLUMN client_retried")
