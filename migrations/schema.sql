-- The schema of a jobq database at revision 0019, written from a migrated database by
-- `python -m service.db.schema write`: do not edit by hand. tests/migrations checks that it
-- is current. Alembic's revisions (migrations/versions) build the database; this file is for
-- reading, and for copying a function's current text into a new revision.
-- Objects named procrastinate_* are Procrastinate's (revision 0001), the rest are jobq's.

-- Types -----------------------------------------------------------------------------------------

CREATE TYPE procrastinate_job_event_type AS ENUM ('deferred', 'started', 'deferred_for_retry', 'failed', 'succeeded', 'cancelled', 'abort_requested', 'aborted', 'scheduled', 'retried');

CREATE TYPE procrastinate_job_status AS ENUM ('todo', 'doing', 'succeeded', 'failed', 'cancelled', 'aborting', 'aborted');

CREATE TYPE jobq_rate_window AS (
    slots integer[],
    slot bigint,
    slot_seconds double precision,
    used integer
);

CREATE TYPE procrastinate_job_to_defer_v1 AS (
    queue_name character varying,
    task_name character varying,
    priority integer,
    lock text,
    queueing_lock text,
    args jsonb,
    scheduled_at timestamp with time zone
);

-- Sequences -------------------------------------------------------------------------------------

CREATE SEQUENCE job_attempts_id_seq;

CREATE SEQUENCE job_events_id_seq;

CREATE SEQUENCE procrastinate_events_id_seq;

CREATE SEQUENCE procrastinate_jobs_id_seq;

CREATE SEQUENCE procrastinate_periodic_defers_id_seq;

CREATE SEQUENCE procrastinate_workers_id_seq;

CREATE SEQUENCE webhook_deliveries_id_seq;

-- Tables ----------------------------------------------------------------------------------------

CREATE TABLE api_key_rates (
    api_key_id uuid NOT NULL,
    tokens double precision NOT NULL,
    updated_at timestamp with time zone NOT NULL,
    CONSTRAINT pk_api_key_rates PRIMARY KEY (api_key_id),
    CONSTRAINT fk_api_key_rates_api_key_id_api_keys FOREIGN KEY (api_key_id) REFERENCES api_keys(id) ON DELETE CASCADE
);

CREATE TABLE api_key_upload_days (
    api_key_id uuid NOT NULL,
    day date NOT NULL,
    bytes bigint NOT NULL,
    CONSTRAINT pk_api_key_upload_days PRIMARY KEY (api_key_id, day),
    CONSTRAINT fk_api_key_upload_days_api_key_id_api_keys FOREIGN KEY (api_key_id) REFERENCES api_keys(id) ON DELETE CASCADE
);

CREATE TABLE api_key_upload_slots (
    id uuid NOT NULL,
    api_key_id uuid NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    CONSTRAINT pk_api_key_upload_slots PRIMARY KEY (id),
    CONSTRAINT fk_api_key_upload_slots_api_key_id_api_keys FOREIGN KEY (api_key_id) REFERENCES api_keys(id) ON DELETE CASCADE
);
CREATE INDEX ix_api_key_upload_slots_api_key_id ON public.api_key_upload_slots USING btree (api_key_id);

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
    CONSTRAINT ck_api_keys_role CHECK (role::text = ANY (ARRAY['submitter'::character varying, 'operator'::character varying, 'admin'::character varying]::text[]))
);

CREATE TABLE api_sessions (
    token_hash bytea NOT NULL,
    api_key_id uuid NOT NULL,
    csrf_token character varying(64) NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    CONSTRAINT pk_api_sessions PRIMARY KEY (token_hash),
    CONSTRAINT fk_api_sessions_api_key_id_api_keys FOREIGN KEY (api_key_id) REFERENCES api_keys(id) ON DELETE CASCADE
);
CREATE INDEX ix_api_sessions_api_key_id ON public.api_sessions USING btree (api_key_id);

CREATE TABLE conversion_cache (
    key character varying(64) NOT NULL,
    output_file_id uuid NOT NULL,
    result jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT pk_conversion_cache PRIMARY KEY (key),
    CONSTRAINT fk_conversion_cache_output_file_id_files FOREIGN KEY (output_file_id) REFERENCES files(id) ON DELETE CASCADE
);
CREATE INDEX ix_conversion_cache_output_file_id ON public.conversion_cache USING btree (output_file_id);

CREATE TABLE file_chunks (
    file_id uuid NOT NULL,
    seq integer NOT NULL,
    data bytea NOT NULL,
    CONSTRAINT pk_file_chunks PRIMARY KEY (file_id, seq),
    CONSTRAINT fk_file_chunks_file_id_files FOREIGN KEY (file_id) REFERENCES files(id) ON DELETE CASCADE
);
ALTER TABLE file_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE files (
    id uuid NOT NULL,
    name text NOT NULL,
    content_type text NOT NULL,
    size bigint NOT NULL,
    sha256 character varying(64) NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT pk_files PRIMARY KEY (id)
);
CREATE INDEX ix_files_sha256 ON public.files USING btree (sha256);

CREATE TABLE job_attempts (
    id bigint DEFAULT nextval('job_attempts_id_seq'::regclass) NOT NULL,
    job_id uuid NOT NULL,
    number integer NOT NULL,
    worker_id bigint,
    worker_name text,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    finished_at timestamp with time zone,
    outcome character varying(16),
    error jsonb,
    CONSTRAINT pk_job_attempts PRIMARY KEY (id)
);
CREATE UNIQUE INDEX ix_job_attempts_job_id_number ON public.job_attempts USING btree (job_id, number);
CREATE UNIQUE INDEX uq_job_attempts_open_per_job ON public.job_attempts USING btree (job_id) WHERE (finished_at IS NULL);

CREATE TABLE job_events (
    id bigint DEFAULT nextval('job_events_id_seq'::regclass) NOT NULL,
    job_id uuid NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    event character varying(32) NOT NULL,
    attempt integer,
    worker_name text,
    message text,
    error jsonb,
    CONSTRAINT pk_job_events PRIMARY KEY (id)
);
CREATE INDEX ix_job_events_job_id_id ON public.job_events USING btree (job_id, id);

CREATE TABLE job_failures_daily (
    day date NOT NULL,
    queue_name character varying(128) NOT NULL,
    task_name character varying(128) NOT NULL,
    error_type text NOT NULL,
    shard smallint NOT NULL,
    attempts bigint NOT NULL,
    jobs bigint NOT NULL,
    last_at timestamp with time zone NOT NULL,
    last_message text,
    CONSTRAINT pk_job_failures_daily PRIMARY KEY (day, queue_name, task_name, error_type, shard)
);

CREATE TABLE job_files (
    job_id uuid NOT NULL,
    role character varying(16) NOT NULL,
    "position" integer NOT NULL,
    file_id uuid NOT NULL,
    CONSTRAINT pk_job_files PRIMARY KEY (job_id, role, "position"),
    CONSTRAINT fk_job_files_file_id_files FOREIGN KEY (file_id) REFERENCES files(id),
    CONSTRAINT fk_job_files_job_id_jobs FOREIGN KEY (job_id) REFERENCES jobs(id) ON DELETE CASCADE
);
CREATE INDEX ix_job_files_file_id ON public.job_files USING btree (file_id);

CREATE TABLE job_stats_daily (
    day date NOT NULL,
    queue_name character varying(128) NOT NULL,
    task_name character varying(128) NOT NULL,
    shard smallint NOT NULL,
    submitted bigint DEFAULT 0 NOT NULL,
    succeeded bigint DEFAULT 0 NOT NULL,
    failed bigint DEFAULT 0 NOT NULL,
    cancelled bigint DEFAULT 0 NOT NULL,
    retried bigint DEFAULT 0 NOT NULL,
    started bigint DEFAULT 0 NOT NULL,
    requeued bigint DEFAULT 0 NOT NULL,
    client_retried bigint DEFAULT 0 NOT NULL,
    CONSTRAINT pk_job_stats_daily PRIMARY KEY (day, queue_name, task_name, shard)
);

CREATE TABLE job_stats_histograms (
    day date NOT NULL,
    queue_name character varying(128) NOT NULL,
    task_name character varying(128) NOT NULL,
    metric character varying(8) NOT NULL,
    bucket smallint NOT NULL,
    shard smallint NOT NULL,
    n bigint NOT NULL,
    max_ms double precision NOT NULL,
    sum_ms double precision DEFAULT 0 NOT NULL,
    CONSTRAINT pk_job_stats_histograms PRIMARY KEY (day, queue_name, task_name, metric, bucket, shard)
);

CREATE TABLE jobs (
    id uuid NOT NULL,
    queue_job_id bigint NOT NULL,
    payload jsonb NOT NULL,
    max_attempts integer NOT NULL,
    timeout_seconds double precision NOT NULL,
    callback_url text,
    idempotency_key character varying(255),
    request_fingerprint character varying(64),
    progress smallint DEFAULT 0 NOT NULL,
    stage text,
    progress_message text,
    progress_updated_at timestamp with time zone,
    result jsonb,
    error jsonb,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    backoff jsonb,
    key character varying(255),
    retention jsonb,
    api_key_id uuid DEFAULT (NULLIF(current_setting('jobq.api_key'::text, true), ''::text))::uuid,
    CONSTRAINT pk_jobs PRIMARY KEY (id),
    CONSTRAINT uq_jobs_queue_job_id UNIQUE (queue_job_id),
    CONSTRAINT fk_jobs_api_key_id_api_keys FOREIGN KEY (api_key_id) REFERENCES api_keys(id),
    CONSTRAINT ck_jobs_max_attempts_positive CHECK (max_attempts >= 1),
    CONSTRAINT ck_jobs_progress_percent CHECK (progress >= 0 AND progress <= 100)
);
CREATE INDEX ix_jobs_api_key_id_created_at ON public.jobs USING btree (api_key_id, created_at);
CREATE INDEX ix_jobs_created_at_id ON public.jobs USING btree (created_at, id);
CREATE INDEX ix_jobs_retention_created_at ON public.jobs USING btree (created_at, id) WHERE (retention IS NOT NULL);
CREATE UNIQUE INDEX uq_jobs_idempotency_key ON public.jobs USING btree (COALESCE(api_key_id, '00000000-0000-0000-0000-000000000000'::uuid), idempotency_key) WHERE (idempotency_key IS NOT NULL);
CREATE UNIQUE INDEX uq_jobs_key ON public.jobs USING btree (COALESCE(api_key_id, '00000000-0000-0000-0000-000000000000'::uuid), key) WHERE (key IS NOT NULL);

CREATE TABLE procrastinate_events (
    id bigint DEFAULT nextval('procrastinate_events_id_seq'::regclass) NOT NULL,
    job_id bigint NOT NULL,
    type procrastinate_job_event_type,
    at timestamp with time zone DEFAULT now(),
    CONSTRAINT procrastinate_events_pkey PRIMARY KEY (id),
    CONSTRAINT procrastinate_events_job_id_fkey FOREIGN KEY (job_id) REFERENCES procrastinate_jobs(id) ON DELETE CASCADE
);
CREATE INDEX procrastinate_events_job_id_fkey_v1 ON public.procrastinate_events USING btree (job_id);

CREATE TABLE procrastinate_jobs (
    id bigint DEFAULT nextval('procrastinate_jobs_id_seq'::regclass) NOT NULL,
    queue_name character varying(128) NOT NULL,
    task_name character varying(128) NOT NULL,
    priority integer DEFAULT 0 NOT NULL,
    lock text,
    queueing_lock text,
    args jsonb DEFAULT '{}'::jsonb NOT NULL,
    status procrastinate_job_status DEFAULT 'todo'::procrastinate_job_status NOT NULL,
    scheduled_at timestamp with time zone,
    attempts integer DEFAULT 0 NOT NULL,
    abort_requested boolean DEFAULT false NOT NULL,
    worker_id bigint,
    CONSTRAINT procrastinate_jobs_pkey PRIMARY KEY (id),
    CONSTRAINT procrastinate_jobs_worker_id_fkey FOREIGN KEY (worker_id) REFERENCES procrastinate_workers(id) ON DELETE SET NULL,
    CONSTRAINT check_not_todo_abort_requested CHECK (NOT (status = 'todo'::procrastinate_job_status AND abort_requested = true))
);
CREATE INDEX idx_procrastinate_jobs_worker_not_null ON public.procrastinate_jobs USING btree (worker_id) WHERE ((worker_id IS NOT NULL) AND (status = 'doing'::procrastinate_job_status));
CREATE INDEX ix_procrastinate_jobs_queue_status ON public.procrastinate_jobs USING btree (queue_name, status);
CREATE INDEX ix_procrastinate_jobs_todo_scheduled ON public.procrastinate_jobs USING btree (queue_name, scheduled_at) WHERE ((status = 'todo'::procrastinate_job_status) AND (scheduled_at IS NOT NULL));
CREATE INDEX ix_procrastinate_jobs_todo_unscheduled ON public.procrastinate_jobs USING btree (queue_name, id) WHERE ((status = 'todo'::procrastinate_job_status) AND (scheduled_at IS NULL));
CREATE INDEX procrastinate_jobs_id_lock_idx_v1 ON public.procrastinate_jobs USING btree (id, lock) WHERE (status = ANY (ARRAY['todo'::procrastinate_job_status, 'doing'::procrastinate_job_status]));
CREATE UNIQUE INDEX procrastinate_jobs_lock_idx_v1 ON public.procrastinate_jobs USING btree (lock) WHERE (status = 'doing'::procrastinate_job_status);
CREATE INDEX procrastinate_jobs_priority_idx_v1 ON public.procrastinate_jobs USING btree (priority DESC, id) WHERE (status = 'todo'::procrastinate_job_status);
CREATE INDEX procrastinate_jobs_queue_name_idx_v1 ON public.procrastinate_jobs USING btree (queue_name);
CREATE UNIQUE INDEX procrastinate_jobs_queueing_lock_idx_v1 ON public.procrastinate_jobs USING btree (queueing_lock) WHERE (status = 'todo'::procrastinate_job_status);

CREATE TABLE procrastinate_periodic_defers (
    id bigint DEFAULT nextval('procrastinate_periodic_defers_id_seq'::regclass) NOT NULL,
    task_name character varying(128) NOT NULL,
    defer_timestamp bigint,
    job_id bigint,
    periodic_id character varying(128) DEFAULT ''::character varying NOT NULL,
    CONSTRAINT procrastinate_periodic_defers_pkey PRIMARY KEY (id),
    CONSTRAINT procrastinate_periodic_defers_unique UNIQUE (task_name, periodic_id, defer_timestamp),
    CONSTRAINT procrastinate_periodic_defers_job_id_fkey FOREIGN KEY (job_id) REFERENCES procrastinate_jobs(id)
);
CREATE INDEX procrastinate_periodic_defers_job_id_fkey_v1 ON public.procrastinate_periodic_defers USING btree (job_id);

CREATE TABLE procrastinate_workers (
    id bigint GENERATED ALWAYS AS IDENTITY NOT NULL,
    last_heartbeat timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT procrastinate_workers_pkey PRIMARY KEY (id)
);
CREATE INDEX idx_procrastinate_workers_last_heartbeat ON public.procrastinate_workers USING btree (last_heartbeat);

CREATE TABLE queue_counts (
    queue_name character varying(128) NOT NULL,
    status character varying(16) NOT NULL,
    shard smallint NOT NULL,
    n bigint NOT NULL,
    CONSTRAINT pk_queue_counts PRIMARY KEY (queue_name, status, shard)
);

CREATE TABLE queues (
    name character varying(128) NOT NULL,
    paused boolean DEFAULT false NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    rate_limit integer,
    rate_period_seconds double precision,
    concurrency_limit integer,
    max_attempts integer,
    timeout_seconds double precision,
    backoff jsonb,
    succeeded_max_age_seconds double precision DEFAULT 86400,
    succeeded_max_count integer DEFAULT 1000,
    failed_max_age_seconds double precision DEFAULT 604800,
    failed_max_count integer,
    cancelled_max_age_seconds double precision DEFAULT 86400,
    cancelled_max_count integer,
    rate_slots integer[],
    rate_slot bigint,
    rate_slot_seconds double precision,
    CONSTRAINT pk_queues PRIMARY KEY (name),
    CONSTRAINT ck_queues_concurrency_limit_positive CHECK (concurrency_limit >= 1),
    CONSTRAINT ck_queues_max_attempts_range CHECK (max_attempts >= 1 AND max_attempts <= 100),
    CONSTRAINT ck_queues_rate_limit_whole CHECK ((rate_limit IS NULL) = (rate_period_seconds IS NULL) AND (rate_limit IS NULL OR rate_limit >= 1) AND (rate_period_seconds IS NULL OR rate_period_seconds > 0::double precision)),
    CONSTRAINT ck_queues_retention_not_negative CHECK (succeeded_max_age_seconds >= 0::double precision AND succeeded_max_count >= 0 AND failed_max_age_seconds >= 0::double precision AND failed_max_count >= 0 AND cancelled_max_age_seconds >= 0::double precision AND cancelled_max_count >= 0),
    CONSTRAINT ck_queues_timeout_positive CHECK (timeout_seconds > 0::double precision)
);

CREATE TABLE schedule_ticks (
    schedule_name character varying(128) NOT NULL,
    tick_at timestamp with time zone NOT NULL,
    job_id uuid,
    made_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT pk_schedule_ticks PRIMARY KEY (schedule_name, tick_at),
    CONSTRAINT fk_schedule_ticks_schedule_name_schedules FOREIGN KEY (schedule_name) REFERENCES schedules(name) ON DELETE CASCADE
);

CREATE TABLE schedules (
    name character varying(128) NOT NULL,
    cron text,
    interval_seconds double precision,
    timezone text DEFAULT 'UTC'::text NOT NULL,
    job jsonb NOT NULL,
    paused boolean DEFAULT false NOT NULL,
    origin character varying(8) DEFAULT 'api'::character varying NOT NULL,
    anchor_at timestamp with time zone DEFAULT now() NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT pk_schedules PRIMARY KEY (name),
    CONSTRAINT ck_schedules_cron_or_interval CHECK ((cron IS NULL) <> (interval_seconds IS NULL)),
    CONSTRAINT ck_schedules_origin_known CHECK (origin::text = ANY (ARRAY['api'::character varying, 'code'::character varying]::text[]))
);

CREATE TABLE webhook_deliveries (
    id bigint DEFAULT nextval('webhook_deliveries_id_seq'::regclass) NOT NULL,
    job_id uuid NOT NULL,
    delivery_id uuid NOT NULL,
    attempt integer NOT NULL,
    at timestamp with time zone DEFAULT now() NOT NULL,
    url text NOT NULL,
    status_code integer,
    duration_ms double precision NOT NULL,
    outcome character varying(16) NOT NULL,
    error text,
    CONSTRAINT pk_webhook_deliveries PRIMARY KEY (id),
    CONSTRAINT fk_webhook_deliveries_job_id_jobs FOREIGN KEY (job_id) REFERENCES jobs(id) ON DELETE CASCADE
);
CREATE INDEX ix_webhook_deliveries_job_id_id ON public.webhook_deliveries USING btree (job_id, id);

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
);

CREATE TABLE workers (
    id bigint NOT NULL,
    name text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    queues text[] NOT NULL,
    concurrency integer NOT NULL,
    started_at timestamp with time zone DEFAULT now() NOT NULL,
    CONSTRAINT pk_workers PRIMARY KEY (id),
    CONSTRAINT fk_workers_id_procrastinate_workers FOREIGN KEY (id) REFERENCES procrastinate_workers(id) ON DELETE CASCADE
);

-- Views -----------------------------------------------------------------------------------------

CREATE VIEW job_overview AS
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

CREATE VIEW report_daily AS
 WITH counts AS (
         SELECT job_stats_daily.day,
            job_stats_daily.queue_name,
            job_stats_daily.task_name,
            sum(job_stats_daily.submitted) AS submitted,
            sum(job_stats_daily.succeeded) AS succeeded,
            sum(job_stats_daily.failed) AS failed,
            sum(job_stats_daily.cancelled) AS cancelled,
            sum(job_stats_daily.retried) AS retried
           FROM job_stats_daily
          GROUP BY job_stats_daily.day, job_stats_daily.queue_name, job_stats_daily.task_name
        ), buckets AS (
         SELECT job_stats_histograms.day,
            job_stats_histograms.queue_name,
            job_stats_histograms.task_name,
            job_stats_histograms.metric,
            job_stats_histograms.bucket,
            sum(job_stats_histograms.n) AS n,
            max(job_stats_histograms.max_ms) AS max_ms
           FROM job_stats_histograms
          GROUP BY job_stats_histograms.day, job_stats_histograms.queue_name, job_stats_histograms.task_name, job_stats_histograms.metric, job_stats_histograms.bucket
        ), running AS (
         SELECT b.day,
            b.queue_name,
            b.task_name,
            b.metric,
            b.bucket,
            b.n,
            b.max_ms,
            sum(b.n) OVER (PARTITION BY b.day, b.queue_name, b.task_name, b.metric ORDER BY b.bucket) AS reached,
            sum(b.n) OVER (PARTITION BY b.day, b.queue_name, b.task_name, b.metric) AS total
           FROM buckets b
        ), percentiles AS (
         SELECT running.day,
            running.queue_name,
            running.task_name,
            running.metric,
            max(running.max_ms) AS max_ms,
            LEAST(jobq_stats_bucket_ms(min(running.bucket) FILTER (WHERE running.reached >= (0.5 * running.total))), max(running.max_ms)) AS p50_ms,
            LEAST(jobq_stats_bucket_ms(min(running.bucket) FILTER (WHERE running.reached >= (0.95 * running.total))), max(running.max_ms)) AS p95_ms
           FROM running
          GROUP BY running.day, running.queue_name, running.task_name, running.metric
        ), keys AS (
         SELECT counts.day,
            counts.queue_name,
            counts.task_name
           FROM counts
        UNION
         SELECT percentiles.day,
            percentiles.queue_name,
            percentiles.task_name
           FROM percentiles
        )
 SELECT k.day,
    k.queue_name AS queue,
    k.task_name AS type,
    COALESCE(c.submitted, 0::numeric) AS submitted,
    COALESCE(c.succeeded, 0::numeric) AS succeeded,
    COALESCE(c.failed, 0::numeric) AS failed,
    COALESCE(c.cancelled, 0::numeric) AS cancelled,
    COALESCE(c.retried, 0::numeric) AS retried,
    round(r.p50_ms::numeric, 1) AS run_p50_ms,
    round(r.p95_ms::numeric, 1) AS run_p95_ms,
    round(r.max_ms::numeric, 1) AS run_max_ms,
    round(w.p50_ms::numeric, 1) AS wait_p50_ms,
    round(w.p95_ms::numeric, 1) AS wait_p95_ms,
    round(w.max_ms::numeric, 1) AS wait_max_ms
   FROM keys k
     LEFT JOIN counts c USING (day, queue_name, task_name)
     LEFT JOIN percentiles r ON r.day = k.day AND r.queue_name::text = k.queue_name::text AND r.task_name::text = k.task_name::text AND r.metric::text = 'run'::text
     LEFT JOIN percentiles w ON w.day = k.day AND w.queue_name::text = k.queue_name::text AND w.task_name::text = k.task_name::text AND w.metric::text = 'wait'::text;

CREATE VIEW report_failures AS
 SELECT f.day,
    f.queue_name AS queue,
    f.task_name AS type,
    f.error_type,
    sum(f.attempts) AS failed_attempts,
    sum(f.jobs) AS failed_jobs,
    max(f.last_at) AS last_at,
    (array_agg(m.message ORDER BY f.last_at DESC))[1] AS last_message
   FROM job_failures_daily f
     CROSS JOIN LATERAL ( SELECT f.last_message AS message) m
  GROUP BY f.day, f.queue_name, f.task_name, f.error_type;

CREATE VIEW report_workers AS
 SELECT s.day,
    s.worker_name AS worker,
    s.attempts,
    s.succeeded,
    s.failed,
    s.retried,
    s.cancelled,
    s.interrupted,
    s.lost,
    round((s.busy_ms / 1000::double precision)::numeric, 3) AS busy_seconds,
    live.host,
    live.last_heartbeat,
    live.host IS NOT NULL AS live
   FROM worker_stats_daily s
     LEFT JOIN LATERAL ( SELECT w.host,
            pw.last_heartbeat
           FROM workers w
             JOIN procrastinate_workers pw ON pw.id = w.id
          WHERE w.name = s.worker_name
          ORDER BY pw.last_heartbeat DESC
         LIMIT 1) live ON true;

-- Functions -------------------------------------------------------------------------------------

CREATE OR REPLACE FUNCTION public.jobq_apply_job_retention(p_after_created timestamp with time zone, p_after_id uuid, p_scan integer, OUT deleted integer, OUT last_created timestamp with time zone, OUT last_id uuid)
 RETURNS record
 LANGUAGE plpgsql
 SET jit TO 'off'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION public.jobq_apply_retention(p_limit integer)
 RETURNS integer
 LANGUAGE plpgsql
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION public.jobq_cancel_job(p_job_id uuid, OUT verdict text, OUT prior_status text)
 RETURNS record
 LANGUAGE plpgsql
 SET "jobq.keeps_history" TO 'on'
AS $function$
-- A client cancels a job. Queued or scheduled: cancelled now (verdict 'cancelled'). Running:
-- its worker is asked to stop it ('cancel_requested'; Procrastinate's trigger notifies the
-- worker, and jobq_finish_attempts records the attempt as cancelled); asked already:
-- 'unchanged'. Finished: 'refused'. No such job: both NULL. prior_status: the public status
-- the job had.
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM jobq_lock_job(p_job_id);
    IF r.queue_job_id IS NULL THEN
        RETURN;
    END IF;
    prior_status := r.status;
    IF r.status NOT IN ('queued', 'scheduled', 'running') THEN
        verdict := 'refused';
    ELSIF r.abort_requested THEN
        verdict := 'unchanged';
    ELSE
        PERFORM procrastinate_cancel_job_v1(r.queue_job_id, true, false);
        verdict := CASE WHEN r.status = 'running' THEN 'cancel_requested' ELSE 'cancelled' END;
        INSERT INTO job_events (job_id, event, message)
        VALUES (p_job_id, verdict, 'cancelled by a client');
    END IF;
END;
$function$;

CREATE OR REPLACE FUNCTION public.jobq_claim_jobs(p_queues character varying[], p_worker_id bigint, p_worker_name text, p_limit integer)
 RETURNS TABLE(attempt_id bigint, job_id uuid, attempt integer, budget_attempt integer, task_name character varying, queue_name character varying, payload jsonb, max_attempts integer, timeout_seconds double precision, backoff jsonb)
 LANGUAGE plpgsql
 SET enable_sort TO 'off'
 SET jit TO 'off'
 SET enable_seqscan TO 'off'
 SET enable_hashjoin TO 'off'
 SET enable_mergejoin TO 'off'
 SET "jobq.keeps_history" TO 'on'
 SET plan_cache_mode TO 'force_generic_plan'
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

CREATE OR REPLACE FUNCTION public.jobq_claim_limited(p_queues character varying[], p_limited character varying[], p_limit integer, OUT ids bigint[], OUT claimed_at timestamp with time zone)
 RETURNS record
 LANGUAGE plpgsql
 SET plan_cache_mode TO 'force_generic_plan'
 SET enable_sort TO 'off'
 SET jit TO 'off'
 SET enable_seqscan TO 'off'
 SET enable_hashjoin TO 'off'
 SET enable_mergejoin TO 'off'
AS $function$
-- The claim of jobq_claim_jobs when some queue it may take from (p_limited) has a rate or a
-- concurrency limit: each limited queue's row locked (in name order, so claims take turns),
-- its allowance computed, then at most that many of its jobs taken. claimed_at: the start
-- time of the claimed jobs, read once every lock is held.
DECLARE
    q record;
    v_allow integer[] := '{}';
    v_given integer[] := '{}';
    v_windows jobq_rate_window[] := '{}';
    v_window jobq_rate_window;
    v_queues varchar[];
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
            v_window := jobq_rate_window(q.rate_slots, q.rate_slot, q.rate_slot_seconds,
                                         q.rate_period_seconds, claimed_at);
            v_windows[i] := v_window;
            v_allow[i] := least(v_allow[i], q.rate_limit - v_window.used);
        END IF;
        v_given[i] := v_allow[i];
        IF v_allow[i] <= 0 THEN
            v_exhausted := v_exhausted || q.name;
        END IF;
    END LOOP;

    IF (SELECT min(a) FROM unnest(v_allow) AS a) >= p_limit THEN
        -- No limit can bind in this claim: the jobs are taken as jobq_claim_jobs takes them.
        SELECT coalesce(array_agg(c.id), '{}'), array_agg(c.queue_name) INTO ids, v_queues
        FROM (
            SELECT pj.id, pj.queue_name
            FROM procrastinate_jobs AS pj
            WHERE pj.status = 'todo'
              AND (p_queues IS NULL OR pj.queue_name = ANY (p_queues))
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
            LIMIT p_limit
            FOR UPDATE OF pj SKIP LOCKED
        ) AS c;
        FOR i IN 1 .. cardinality(p_limited) LOOP
            v_allow[i] := v_allow[i] - cardinality(array_positions(v_queues, p_limited[i]));
        END LOOP;
    ELSE
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
                  AND NOT coalesce((SELECT q2.paused FROM queues AS q2
                                    WHERE q2.name = pj.queue_name), false)
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
    END IF;

    -- This claim's starts, in the window of each rate-limited queue it took jobs from.
    FOR i IN 1 .. cardinality(p_limited) LOOP
        CONTINUE WHEN v_given[i] - v_allow[i] <= 0 OR v_windows[i] IS NULL;
        v_window := v_windows[i];
        v_window.slots[(v_window.slot % 21 + 1)::integer] :=
            v_window.slots[(v_window.slot % 21 + 1)::integer] + v_given[i] - v_allow[i];
        UPDATE queues
        SET rate_slots = v_window.slots, rate_slot = v_window.slot,
            rate_slot_seconds = v_window.slot_seconds
        WHERE name = p_limited[i];
    END LOOP;
END;
$function$;

CREATE OR REPLACE FUNCTION public.jobq_clean_queue(p_queue character varying, p_status text, p_older_than_seconds double precision, p_limit integer, p_policy boolean DEFAULT false)
 RETURNS integer
 LANGUAGE plpgsql
 SET enable_sort TO 'off'
 SET jit TO 'off'
AS $function$
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
        -- jobs, their attempts, events and file links follow (jobq_forget_jobs)
        DELETE FROM procrastinate_jobs WHERE id IN (SELECT id FROM doomed) RETURNING id
    )
    SELECT count(*) INTO v_deleted FROM gone;
    RETURN v_deleted;
END;
$function$;

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

CREATE OR REPLACE FUNCTION public.jobq_count_jobs(p_queue character varying, p_statuses procrastinate_job_status[])
 RETURNS bigint
 LANGUAGE sql
 STABLE
AS $function$
    -- How many jobs of a queue are in these queue statuses, from the kept counts.
    SELECT coalesce(sum(c.n), 0)::bigint FROM queue_counts AS c
    WHERE c.queue_name = p_queue
      AND c.status IN (SELECT jobq_status_group(s) FROM unnest(p_statuses) AS s)
$function$;

CREATE OR REPLACE FUNCTION public.jobq_delete_job(p_job_id uuid, OUT verdict text, OUT prior_status text)
 RETURNS record
 LANGUAGE plpgsql
AS $function$
-- A client deletes a finished job with everything recorded about it ('deleted'); a queued,
-- scheduled or running job is 'refused'. No such job: both NULL.
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM jobq_lock_job(p_job_id);
    IF r.queue_job_id IS NULL THEN
        RETURN;
    END IF;
    prior_status := r.status;
    IF r.status NOT IN ('succeeded', 'failed', 'cancelled') THEN
        verdict := 'refused';
        RETURN;
    END IF;
    -- Our rows (job, attempts, events, file links) follow (jobq_forget_jobs).
    DELETE FROM procrastinate_jobs WHERE id = r.queue_job_id;
    verdict := 'deleted';
END;
$function$;

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

CREATE OR REPLACE FUNCTION public.jobq_finished_statuses(p_status text)
 RETURNS procrastinate_job_status[]
 LANGUAGE sql
 IMMUTABLE
AS $function$
    -- The queue statuses behind a public terminal status.
    SELECT CASE p_status
        WHEN 'succeeded' THEN ARRAY['succeeded']::procrastinate_job_status[]
        WHEN 'failed' THEN ARRAY['failed']::procrastinate_job_status[]
        WHEN 'cancelled' THEN ARRAY['cancelled', 'aborted']::procrastinate_job_status[]
    END
$function$;

CREATE OR REPLACE FUNCTION public.jobq_forget_counts()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    -- TRUNCATE of the queue: nothing is left to count, and no job is left (what TRUNCATE ...
    -- CASCADE did through the foreign key; their history follows through jobq_forget_history).
    DELETE FROM queue_counts;
    DELETE FROM jobs;
    RETURN NULL;
END;
$function$;

CREATE OR REPLACE FUNCTION public.jobq_forget_history()
 RETURNS trigger
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET enable_hashjoin TO 'off'
 SET enable_mergejoin TO 'off'
 SET jit TO 'off'
AS $function$
-- Deleted jobs take their attempts and events with them, looked up by job.
DECLARE
    v_ids uuid[] := ARRAY(SELECT g.id FROM gone_jobs AS g);
BEGIN
    DELETE FROM job_attempts AS a WHERE a.job_id = ANY (v_ids);
    DELETE FROM job_events AS e WHERE e.job_id = ANY (v_ids);
    RETURN NULL;
END;
$function$;

CREATE OR REPLACE FUNCTION public.jobq_forget_jobs()
 RETURNS trigger
 LANGUAGE plpgsql
 SET enable_seqscan TO 'off'
 SET enable_hashjoin TO 'off'
 SET enable_mergejoin TO 'off'
 SET jit TO 'off'
AS $function$
-- Deleted queue rows take their jobs rows with them (what a cascading foreign key did): any
-- writer's delete, jobq's or Procrastinate's. Each job is looked up by its key.
BEGIN
    DELETE FROM jobs AS j
    WHERE j.queue_job_id = ANY (ARRAY(SELECT o.id FROM old_rows AS o));
    RETURN NULL;
END;
$function$;

CREATE OR REPLACE FUNCTION public.jobq_forget_unused_file()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION public.jobq_hold_lease(p_attempt_id bigint)
 RETURNS uuid
 LANGUAGE sql
AS $function$
    -- The job of an attempt that is still open, the attempt locked until the caller's
    -- transaction ends, so that it cannot be closed (finished, recovered as lost) meanwhile;
    -- NULL once it is closed: the lease is lost and the caller must write nothing.
    SELECT a.job_id FROM job_attempts AS a
    WHERE a.id = p_attempt_id AND a.finished_at IS NULL
    FOR SHARE
$function$;

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

CREATE OR REPLACE FUNCTION public.jobq_lock_job(p_job_id uuid, OUT queue_job_id bigint, OUT queue_name character varying, OUT status text, OUT abort_requested boolean)
 RETURNS record
 LANGUAGE sql
AS $function$
    -- A job's queue row, locked for the rest of the transaction, with its public status.
    -- All NULL when there is no such job.
    SELECT pj.id, pj.queue_name, v.status, pj.abort_requested
    FROM jobs AS j
    JOIN procrastinate_jobs AS pj ON pj.id = j.queue_job_id
    JOIN job_overview AS v ON v.id = j.id
    WHERE j.id = p_job_id
    FOR UPDATE OF pj
$function$;

CREATE OR REPLACE FUNCTION public.jobq_lock_stalled_attempts(p_stall_seconds double precision)
 RETURNS TABLE(attempt_id bigint, job_id uuid, task_name character varying, budget_attempt integer, max_attempts integer, backoff jsonb)
 LANGUAGE sql
AS $function$
    -- Open attempts whose worker is gone or silent for p_stall_seconds, with what the job's
    -- retry policy needs. They stay locked until the caller's transaction ends (attempts first,
    -- in id order, as jobq_finish_attempts locks them), which then records their outcome with
    -- jobq_finish_attempts(..., p_lost => true). Rows another recovery holds are skipped, so
    -- any number of recoveries may run at once.
    SELECT a.id, j.id, pj.task_name, pj.attempts + 1, j.max_attempts, j.backoff
    FROM procrastinate_jobs AS pj
    JOIN jobs AS j ON j.queue_job_id = pj.id
    JOIN job_attempts AS a ON a.job_id = j.id AND a.finished_at IS NULL
    LEFT JOIN procrastinate_workers AS w ON w.id = pj.worker_id
    WHERE pj.status = 'doing'
      AND (w.id IS NULL OR w.last_heartbeat < now() - make_interval(secs => p_stall_seconds))
    ORDER BY a.id
    FOR UPDATE OF a SKIP LOCKED
$function$;

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

CREATE OR REPLACE FUNCTION public.jobq_notify_requeued(p_queue character varying, p_queue_job_id bigint)
 RETURNS void
 LANGUAGE sql
AS $function$
    -- The same message Procrastinate's insert trigger sends, so idle workers wake up.
    SELECT pg_notify(channel, json_build_object('type', 'job_inserted', 'job_id', p_queue_job_id)::text)
    FROM unnest(ARRAY['procrastinate_queue_v1#' || p_queue, 'procrastinate_any_queue_v1']) AS channel;
$function$;

CREATE OR REPLACE FUNCTION public.jobq_purge_finished(p_older_than interval, p_limit integer)
 RETURNS integer
 LANGUAGE sql
AS $function$
    -- Delete up to p_limit finished jobs submitted more than p_older_than ago, with their
    -- history; returns how many. Rows another transaction holds are skipped.
    WITH doomed AS (
        SELECT pj.id
        FROM procrastinate_jobs AS pj
        JOIN jobs AS j ON j.queue_job_id = pj.id
        WHERE pj.status IN ('succeeded', 'failed', 'cancelled', 'aborted')
          AND j.created_at < now() - p_older_than
        LIMIT p_limit
        FOR UPDATE OF pj SKIP LOCKED
    ), gone AS (
        -- jobs, their attempts, events and file links follow (jobq_forget_jobs)
        DELETE FROM procrastinate_jobs WHERE id IN (SELECT id FROM doomed) RETURNING id
    )
    SELECT count(*)::integer FROM gone
$function$;

CREATE OR REPLACE FUNCTION public.jobq_rate_window(p_slots integer[], p_slot bigint, p_slot_seconds double precision, p_period_seconds double precision, p_at timestamp with time zone)
 RETURNS jobq_rate_window
 LANGUAGE plpgsql
 IMMUTABLE
AS $function$
-- A queue's rate window at p_at. The starts are counted in 21 slots of a twentieth of the
-- period each (queues.rate_slots, a ring: slot number s is at index s % 21 + 1; rate_slot is
-- the newest slot's number). slots, slot: the ring moved on to p_at's slot (the slots that
-- left the window emptied); the claim adds its starts at slot. used: the starts of p_at's slot
-- and the 20 before it, which hold every start of (p_at - period, p_at] and, at most, those of
-- one twentieth of a period more. Counted so, a queue never starts more than its limit in any
-- window of its period, and under a limit that binds it starts at least 20/21 of it.
DECLARE
    w jobq_rate_window;
    v_now bigint;
    k integer;
BEGIN
    w.slot_seconds := p_period_seconds / 20;
    v_now := floor(extract(epoch FROM p_at) / w.slot_seconds)::bigint;
    w.slots := array_fill(0, ARRAY[21]);
    IF p_slots IS NULL OR p_slot IS NULL THEN
        w.slot := v_now;
    ELSIF p_slot_seconds IS DISTINCT FROM w.slot_seconds THEN
        -- The period changed: the starts of the old window that may still be in a period count
        -- as made now (never fewer starts counted than were made).
        w.slot := v_now;
        IF extract(epoch FROM p_at) < (p_slot + 21) * p_slot_seconds THEN
            w.slots[(v_now % 21 + 1)::integer] :=
                (SELECT coalesce(sum(x), 0) FROM unnest(p_slots) AS x);
        END IF;
    ELSE
        w.slot := greatest(p_slot, v_now);
        IF w.slot - p_slot < 21 THEN
            w.slots := p_slots;
            FOR k IN 1 .. (w.slot - p_slot)::integer LOOP
                w.slots[((p_slot + k) % 21 + 1)::integer] := 0;
            END LOOP;
        END IF;
    END IF;
    w.used := (SELECT coalesce(sum(x), 0) FROM unnest(w.slots) AS x);
    RETURN w;
END;
$function$;

CREATE OR REPLACE FUNCTION public.jobq_record_webhook_delivery(p_attempt_id bigint, p_job_id uuid, p_url text, p_status_code integer, p_duration_ms double precision, p_outcome text, p_error text)
 RETURNS boolean
 LANGUAGE sql
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION public.jobq_report_progress(p_attempt_id bigint, p_percent integer, p_stage text, p_message text)
 RETURNS boolean
 LANGUAGE plpgsql
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION public.jobq_retry_job(p_job_id uuid, OUT verdict text, OUT prior_status text)
 RETURNS record
 LANGUAGE plpgsql
 SET "jobq.keeps_history" TO 'on'
AS $function$
-- A client retries a failed or cancelled job: back to the queue with a fresh attempt budget
-- ('retried'); any other status: 'refused'. No such job: both NULL. Its attempts and events
-- stay: job_attempts.number keeps counting across budgets.
DECLARE
    r record;
BEGIN
    SELECT * INTO r FROM jobq_lock_job(p_job_id);
    IF r.queue_job_id IS NULL THEN
        RETURN;
    END IF;
    prior_status := r.status;
    IF r.status NOT IN ('failed', 'cancelled') THEN
        verdict := 'refused';
        RETURN;
    END IF;
    UPDATE procrastinate_jobs
    SET status = 'todo', attempts = 0, scheduled_at = NULL, abort_requested = false,
        worker_id = NULL
    WHERE id = r.queue_job_id;
    UPDATE jobs SET progress = 0, stage = NULL, progress_message = NULL, result = NULL
    WHERE id = p_job_id;
    INSERT INTO job_events (job_id, event, message)
    VALUES (p_job_id, 'retried', 'retried by a client with a fresh attempt budget');
    PERFORM jobq_notify_requeued(r.queue_name, r.queue_job_id);
    verdict := 'retried';
END;
$function$;

CREATE OR REPLACE FUNCTION public.jobq_set_queue_paused(p_queue character varying, p_paused boolean)
 RETURNS void
 LANGUAGE sql
AS $function$
    -- Pause or resume a queue for every worker (jobq_claim_jobs skips paused queues).
    INSERT INTO queues (name, paused, updated_at) VALUES (p_queue, p_paused, now())
    ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = now()
$function$;

CREATE OR REPLACE FUNCTION public.jobq_set_queue_settings(p_queue character varying, p_settings jsonb)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION public.jobq_shard()
 RETURNS smallint
 LANGUAGE sql
 STABLE
AS $function$
    -- The shard of the counting rows this session adds to.
    SELECT (pg_backend_pid() % 16)::smallint
$function$;

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

CREATE OR REPLACE FUNCTION public.jobq_stats_bucket_ms(p_bucket smallint)
 RETURNS double precision
 LANGUAGE sql
 IMMUTABLE
AS $function$
    -- The value a bucket stands for in a percentile: its geometric middle (0.5 ms for 0).
    SELECT CASE WHEN p_bucket = 0 THEN 0.5 ELSE power(2, (p_bucket - 0.5) / 4.0) END
$function$;

CREATE OR REPLACE FUNCTION public.jobq_status_group(p_status procrastinate_job_status)
 RETURNS text
 LANGUAGE sql
 IMMUTABLE
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION public.jobq_submit_jobs(p_ids uuid[], p_queues character varying[], p_types character varying[], p_priorities integer[], p_scheduled_at timestamp with time zone[], p_payloads text[], p_max_attempts integer[], p_timeouts double precision[], p_callback_urls text[], p_idempotency_key text, p_fingerprints text[], p_backoffs text[], p_locks text[], p_queueing_locks text[], p_keys text[], p_overview boolean, p_attempts_defaulted boolean[] DEFAULT NULL::boolean[], p_timeout_defaulted boolean[] DEFAULT NULL::boolean[], p_retention text[] DEFAULT NULL::text[])
 RETURNS SETOF job_overview
 LANGUAGE plpgsql
 SET jit TO 'off'
 SET enable_seqscan TO 'off'
 SET enable_hashjoin TO 'off'
 SET enable_mergejoin TO 'off'
 SET "jobq.keeps_history" TO 'on'
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

CREATE OR REPLACE FUNCTION public.jobq_today()
 RETURNS date
 LANGUAGE sql
 STABLE
AS $function$
    -- The day of the daily aggregates: the transaction's, in UTC.
    SELECT (now() AT TIME ZONE 'UTC')::date
$function$;

CREATE OR REPLACE FUNCTION public.jobq_trim_queue(p_queue character varying, p_status text, p_keep bigint, p_limit integer)
 RETURNS integer
 LANGUAGE plpgsql
 SET enable_sort TO 'off'
 SET jit TO 'off'
AS $function$
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
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_cancel_job_v1(job_id bigint, abort boolean, delete_job boolean)
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
DECLARE
    _job_id bigint;
BEGIN
    IF delete_job THEN
        DELETE FROM procrastinate_jobs
        WHERE id = job_id AND status = 'todo'
        RETURNING id INTO _job_id;
    END IF;
    IF _job_id IS NULL THEN
        IF abort THEN
            UPDATE procrastinate_jobs
            SET abort_requested = true,
                status = CASE status
                    WHEN 'todo' THEN 'cancelled'::procrastinate_job_status ELSE status
                END
            WHERE id = job_id AND status IN ('todo', 'doing')
            RETURNING id INTO _job_id;
        ELSE
            UPDATE procrastinate_jobs
            SET status = 'cancelled'::procrastinate_job_status
            WHERE id = job_id AND status = 'todo'
            RETURNING id INTO _job_id;
        END IF;
    END IF;
    RETURN _job_id;
END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_defer_jobs_v1(jobs procrastinate_job_to_defer_v1[])
 RETURNS bigint[]
 LANGUAGE plpgsql
AS $function$
DECLARE
    job_ids bigint[];
BEGIN
    WITH inserted_jobs AS (
        INSERT INTO procrastinate_jobs (queue_name, task_name, priority, lock, queueing_lock, args, scheduled_at)
        SELECT (job).queue_name,
               (job).task_name,
               (job).priority,
               (job).lock,
               (job).queueing_lock,
               (job).args,
               (job).scheduled_at
        FROM unnest(jobs) AS job
        RETURNING id
    )
    SELECT array_agg(id) FROM inserted_jobs INTO job_ids;

    RETURN job_ids;
END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_defer_periodic_job_v2(_queue_name character varying, _lock character varying, _queueing_lock character varying, _task_name character varying, _priority integer, _periodic_id character varying, _defer_timestamp bigint, _args jsonb)
 RETURNS bigint
 LANGUAGE plpgsql
AS $function$
DECLARE
	_job_id bigint;
	_defer_id bigint;
BEGIN
    INSERT
        INTO procrastinate_periodic_defers (task_name, periodic_id, defer_timestamp)
        VALUES (_task_name, _periodic_id, _defer_timestamp)
        ON CONFLICT DO NOTHING
        RETURNING id into _defer_id;

    IF _defer_id IS NULL THEN
        RETURN NULL;
    END IF;

    UPDATE procrastinate_periodic_defers
        SET job_id = (
            SELECT COALESCE((
                SELECT unnest(procrastinate_defer_jobs_v1(
                    ARRAY[
                        ROW(
                            _queue_name,
                            _task_name,
                            _priority,
                            _lock,
                            _queueing_lock,
                            _args,
                            NULL::timestamptz
                        )
                    ]::procrastinate_job_to_defer_v1[]
                ))
            ), NULL)
        )
        WHERE id = _defer_id
        RETURNING job_id INTO _job_id;

    DELETE
        FROM procrastinate_periodic_defers
        USING (
            SELECT id
            FROM procrastinate_periodic_defers
            WHERE procrastinate_periodic_defers.task_name = _task_name
            AND procrastinate_periodic_defers.periodic_id = _periodic_id
            AND procrastinate_periodic_defers.defer_timestamp < _defer_timestamp
            ORDER BY id
            FOR UPDATE
        ) to_delete
        WHERE procrastinate_periodic_defers.id = to_delete.id;

    RETURN _job_id;
END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_fetch_job_v2(target_queue_names character varying[], p_worker_id bigint)
 RETURNS procrastinate_jobs
 LANGUAGE plpgsql
AS $function$
DECLARE
	found_jobs procrastinate_jobs;
BEGIN
    WITH candidate AS (
        SELECT jobs.*
            FROM procrastinate_jobs AS jobs
            WHERE
                -- reject the job if its lock has earlier or higher priority jobs
                NOT EXISTS (
                    SELECT 1
                        FROM procrastinate_jobs AS other_jobs
                        WHERE
                            jobs.lock IS NOT NULL
                            AND other_jobs.lock = jobs.lock
                            AND (
                                -- job with same lock is already running
                                other_jobs.status = 'doing'
                                OR
                                -- job with same lock is waiting and has higher priority (or same priority but was queued first)
                                (
                                    other_jobs.status = 'todo'
                                    AND (
                                        other_jobs.priority > jobs.priority
                                        OR (
                                        other_jobs.priority = jobs.priority
                                        AND other_jobs.id < jobs.id
                                        )
                                    )
                                )
                            )
                )
                AND jobs.status = 'todo'
                AND (target_queue_names IS NULL OR jobs.queue_name = ANY( target_queue_names ))
                AND (jobs.scheduled_at IS NULL OR jobs.scheduled_at <= now())
            ORDER BY jobs.priority DESC, jobs.id ASC LIMIT 1
            FOR UPDATE OF jobs SKIP LOCKED
    )
    UPDATE procrastinate_jobs
        SET status = 'doing', worker_id = p_worker_id
        FROM candidate
        WHERE procrastinate_jobs.id = candidate.id
        RETURNING procrastinate_jobs.* INTO found_jobs;

 RETURN found_jobs;
END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_finish_job_v1(job_id bigint, end_status procrastinate_job_status, delete_job boolean)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    _job_id bigint;
BEGIN
    IF end_status NOT IN ('succeeded', 'failed', 'aborted') THEN
        RAISE 'End status should be either "succeeded", "failed" or "aborted" (job id: %)', job_id;
    END IF;
    IF delete_job THEN
        DELETE FROM procrastinate_jobs
        WHERE id = job_id AND status IN ('todo', 'doing')
        RETURNING id INTO _job_id;
    ELSE
        UPDATE procrastinate_jobs
        SET status = end_status,
            abort_requested = false,
            attempts = CASE status
                WHEN 'doing' THEN attempts + 1 ELSE attempts
            END
        WHERE id = job_id AND status IN ('todo', 'doing')
        RETURNING id INTO _job_id;
    END IF;
    IF _job_id IS NULL THEN
        RAISE 'Job was not found or not in "doing" or "todo" status (job id: %)', job_id;
    END IF;
END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_notify_queue_abort_job_v1()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    payload TEXT;
BEGIN
    SELECT json_build_object('type', 'abort_job_requested', 'job_id', NEW.id)::text INTO payload;
	PERFORM pg_notify('procrastinate_queue_v1#' || NEW.queue_name, payload);
	PERFORM pg_notify('procrastinate_any_queue_v1', payload);
	RETURN NEW;
END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_notify_queue_job_inserted_v1()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
DECLARE
    payload TEXT;
BEGIN
    SELECT json_build_object('type', 'job_inserted', 'job_id', NEW.id)::text INTO payload;
	PERFORM pg_notify('procrastinate_queue_v1#' || NEW.queue_name, payload);
	PERFORM pg_notify('procrastinate_any_queue_v1', payload);
	RETURN NEW;
END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_prune_stalled_workers_v1(seconds_since_heartbeat double precision)
 RETURNS TABLE(worker_id bigint)
 LANGUAGE plpgsql
AS $function$
BEGIN
    RETURN QUERY
    DELETE FROM procrastinate_workers
    WHERE last_heartbeat < NOW() - (seconds_since_heartbeat || 'SECOND')::INTERVAL
    RETURNING procrastinate_workers.id;
END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_register_worker_v1()
 RETURNS TABLE(worker_id bigint)
 LANGUAGE plpgsql
AS $function$
BEGIN
    RETURN QUERY
    INSERT INTO procrastinate_workers DEFAULT VALUES
    RETURNING procrastinate_workers.id;
END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_retry_job_v1(job_id bigint, retry_at timestamp with time zone, new_priority integer, new_queue_name character varying, new_lock character varying)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    _job_id bigint;
    _abort_requested boolean;
BEGIN
    SELECT abort_requested FROM procrastinate_jobs
    WHERE id = job_id AND status = 'doing'
    FOR UPDATE
    INTO _abort_requested;
    IF _abort_requested THEN
        UPDATE procrastinate_jobs
        SET status = 'failed'::procrastinate_job_status
        WHERE id = job_id AND status = 'doing'
        RETURNING id INTO _job_id;
    ELSE
        UPDATE procrastinate_jobs
        SET status = 'todo'::procrastinate_job_status,
            attempts = attempts + 1,
            scheduled_at = retry_at,
            priority = COALESCE(new_priority, priority),
            queue_name = COALESCE(new_queue_name, queue_name),
            lock = COALESCE(new_lock, lock)
        WHERE id = job_id AND status = 'doing'
        RETURNING id INTO _job_id;
    END IF;

    IF _job_id IS NULL THEN
        RAISE 'Job was not found or not in "doing" status (job id: %)', job_id;
    END IF;
END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_retry_job_v2(job_id bigint, retry_at timestamp with time zone, new_priority integer, new_queue_name character varying, new_lock character varying)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
DECLARE
    _job_id bigint;
    _abort_requested boolean;
    _current_status procrastinate_job_status;
BEGIN
    SELECT status, abort_requested FROM procrastinate_jobs
    WHERE id = job_id AND status IN ('doing', 'failed')
    FOR UPDATE
    INTO _current_status, _abort_requested;
    IF _current_status = 'doing' AND _abort_requested THEN
        UPDATE procrastinate_jobs
        SET status = 'failed'::procrastinate_job_status
        WHERE id = job_id AND status = 'doing'
        RETURNING id INTO _job_id;
    ELSE
        UPDATE procrastinate_jobs
        SET status = 'todo'::procrastinate_job_status,
            attempts = attempts + 1,
            scheduled_at = retry_at,
            priority = COALESCE(new_priority, priority),
            queue_name = COALESCE(new_queue_name, queue_name),
            lock = COALESCE(new_lock, lock)
        WHERE id = job_id AND status IN ('doing', 'failed')
        RETURNING id INTO _job_id;
    END IF;

    IF _job_id IS NULL THEN
        RAISE 'Job was not found or has an invalid status to retry (job id: %)', job_id;
    END IF;

END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_trigger_abort_requested_events_procedure_v1()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    INSERT INTO procrastinate_events(job_id, type)
        VALUES (NEW.id, 'abort_requested'::procrastinate_job_event_type);
    RETURN NEW;
END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_trigger_function_scheduled_events_v1()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    INSERT INTO procrastinate_events(job_id, type, at)
        VALUES (NEW.id, 'scheduled'::procrastinate_job_event_type, NEW.scheduled_at);

	RETURN NEW;
END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_trigger_function_status_events_insert_v1()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    INSERT INTO procrastinate_events(job_id, type)
        VALUES (NEW.id, 'deferred'::procrastinate_job_event_type);
	RETURN NEW;
END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_trigger_function_status_events_update_v1()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    WITH t AS (
        SELECT CASE
            WHEN OLD.status = 'todo'::procrastinate_job_status
                AND NEW.status = 'doing'::procrastinate_job_status
                THEN 'started'::procrastinate_job_event_type
            WHEN OLD.status = 'doing'::procrastinate_job_status
                AND NEW.status = 'todo'::procrastinate_job_status
                THEN 'deferred_for_retry'::procrastinate_job_event_type
            WHEN OLD.status = 'doing'::procrastinate_job_status
                AND NEW.status = 'failed'::procrastinate_job_status
                THEN 'failed'::procrastinate_job_event_type
            WHEN OLD.status = 'doing'::procrastinate_job_status
                AND NEW.status = 'succeeded'::procrastinate_job_status
                THEN 'succeeded'::procrastinate_job_event_type
            WHEN OLD.status = 'todo'::procrastinate_job_status
                AND (
                    NEW.status = 'cancelled'::procrastinate_job_status
                    OR NEW.status = 'failed'::procrastinate_job_status
                    OR NEW.status = 'succeeded'::procrastinate_job_status
                )
                THEN 'cancelled'::procrastinate_job_event_type
            WHEN OLD.status = 'doing'::procrastinate_job_status
                AND NEW.status = 'aborted'::procrastinate_job_status
                THEN 'aborted'::procrastinate_job_event_type
            WHEN OLD.status = 'failed'::procrastinate_job_status
                AND NEW.status = 'todo'::procrastinate_job_status
                THEN 'retried'::procrastinate_job_event_type
            ELSE NULL
        END as event_type
    )
    INSERT INTO procrastinate_events(job_id, type)
        SELECT NEW.id, t.event_type
        FROM t
        WHERE t.event_type IS NOT NULL;
	RETURN NEW;
END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_unlink_periodic_defers_v1()
 RETURNS trigger
 LANGUAGE plpgsql
AS $function$
BEGIN
    UPDATE procrastinate_periodic_defers
    SET job_id = NULL
    WHERE job_id = OLD.id;
    RETURN OLD;
END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_unregister_worker_v1(worker_id bigint)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
BEGIN
    DELETE FROM procrastinate_workers
    WHERE id = worker_id;
END;
$function$;

CREATE OR REPLACE FUNCTION public.procrastinate_update_heartbeat_v1(worker_id bigint)
 RETURNS void
 LANGUAGE plpgsql
AS $function$
BEGIN
    UPDATE procrastinate_workers
    SET last_heartbeat = NOW()
    WHERE id = worker_id;
END;
$function$;

-- Triggers --------------------------------------------------------------------------------------

CREATE TRIGGER jobq_job_events_inserted AFTER INSERT ON job_events REFERENCING NEW TABLE AS new_events FOR EACH STATEMENT EXECUTE FUNCTION jobq_job_events_inserted();

CREATE TRIGGER job_files_forget_unused AFTER DELETE ON job_files REFERENCING OLD TABLE AS gone_links FOR EACH STATEMENT EXECUTE FUNCTION jobq_forget_unused_file();

CREATE TRIGGER jobq_forget_history AFTER DELETE ON jobs REFERENCING OLD TABLE AS gone_jobs FOR EACH STATEMENT EXECUTE FUNCTION jobq_forget_history();

CREATE TRIGGER jobq_count_deleted AFTER DELETE ON procrastinate_jobs REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION jobq_count_changes();

CREATE TRIGGER jobq_count_inserted AFTER INSERT ON procrastinate_jobs REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION jobq_count_changes();

CREATE TRIGGER jobq_count_truncated AFTER TRUNCATE ON procrastinate_jobs FOR EACH STATEMENT EXECUTE FUNCTION jobq_forget_counts();

CREATE TRIGGER jobq_count_updated AFTER UPDATE ON procrastinate_jobs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION jobq_count_changes();

CREATE TRIGGER jobq_forget_jobs AFTER DELETE ON procrastinate_jobs REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION jobq_forget_jobs();

CREATE TRIGGER procrastinate_jobs_notify_queue_job_aborted_v1 AFTER UPDATE OF abort_requested ON procrastinate_jobs FOR EACH ROW WHEN (old.abort_requested = false AND new.abort_requested = true AND new.status = 'doing'::procrastinate_job_status) EXECUTE FUNCTION procrastinate_notify_queue_abort_job_v1();

CREATE TRIGGER procrastinate_jobs_notify_queue_job_inserted_v1 AFTER INSERT ON procrastinate_jobs FOR EACH ROW WHEN (new.status = 'todo'::procrastinate_job_status) EXECUTE FUNCTION procrastinate_notify_queue_job_inserted_v1();

CREATE TRIGGER procrastinate_trigger_abort_requested_events_v1 AFTER UPDATE OF abort_requested ON procrastinate_jobs FOR EACH ROW WHEN (new.abort_requested = true) EXECUTE FUNCTION procrastinate_trigger_abort_requested_events_procedure_v1();

CREATE TRIGGER procrastinate_trigger_delete_jobs_v1 BEFORE DELETE ON procrastinate_jobs FOR EACH ROW EXECUTE FUNCTION procrastinate_unlink_periodic_defers_v1();

CREATE TRIGGER procrastinate_trigger_scheduled_events_v1 AFTER INSERT OR UPDATE ON procrastinate_jobs FOR EACH ROW WHEN (new.scheduled_at IS NOT NULL AND new.status = 'todo'::procrastinate_job_status AND current_setting('jobq.keeps_history'::text, true) IS DISTINCT FROM 'on'::text) EXECUTE FUNCTION procrastinate_trigger_function_scheduled_events_v1();

CREATE TRIGGER procrastinate_trigger_status_events_insert_v1 AFTER INSERT ON procrastinate_jobs FOR EACH ROW WHEN (new.status = 'todo'::procrastinate_job_status AND current_setting('jobq.keeps_history'::text, true) IS DISTINCT FROM 'on'::text) EXECUTE FUNCTION procrastinate_trigger_function_status_events_insert_v1();

CREATE TRIGGER procrastinate_trigger_status_events_update_v1 AFTER UPDATE OF status ON procrastinate_jobs FOR EACH ROW WHEN (current_setting('jobq.keeps_history'::text, true) IS DISTINCT FROM 'on'::text) EXECUTE FUNCTION procrastinate_trigger_function_status_events_update_v1();
