"""Submitting carries Procrastinate's `lock` and `queueing_lock`, so a deferral through
Procrastinate's API on jobq's connector becomes a jobq job with nothing dropped.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29

jobq_submit_jobs is the one statement every submission goes through: the API, `jobs.enqueue`,
and now `task.defer_async()` / `configure_task(...).defer_async()` on jobq's connector, which
plans the deferred jobs like any other request and writes them here. It takes two more arrays,
the jobs' locks and queueing locks, and passes them to Procrastinate's own
procrastinate_defer_jobs_v1, which enforces them as it does for Procrastinate's users.
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

OLD_SIGNATURE = ("jobq_submit_jobs(uuid[], varchar[], varchar[], integer[], timestamptz[], "
                 "text[], integer[], double precision[], text[], text, text[], text[], boolean)")

NEW_SIGNATURE = ("jobq_submit_jobs(uuid[], varchar[], varchar[], integer[], timestamptz[], "
                 "text[], integer[], double precision[], text[], text, text[], text[], text[], "
                 "text[], boolean)")

SUBMIT_JOBS = """
CREATE FUNCTION jobq_submit_jobs(
    p_ids uuid[], p_queues varchar[], p_types varchar[], p_priorities integer[],
    p_scheduled_at timestamptz[], p_payloads text[], p_max_attempts integer[],
    p_timeouts double precision[], p_callback_urls text[], p_idempotency_key text,
    p_fingerprints text[], p_backoffs text[], p_locks text[], p_queueing_locks text[],
    p_overview boolean
)
RETURNS SETOF job_overview LANGUAGE plpgsql SET jit = off AS $$
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
$$
"""


# Revision 0008's function, copied as it was, for downgrade.
SUBMIT_JOBS_0008 = """
CREATE FUNCTION jobq_submit_jobs(
    p_ids uuid[], p_queues varchar[], p_types varchar[], p_priorities integer[],
    p_scheduled_at timestamptz[], p_payloads text[], p_max_attempts integer[],
    p_timeouts double precision[], p_callback_urls text[], p_idempotency_key text,
    p_fingerprints text[], p_backoffs text[], p_overview boolean
)
RETURNS SETOF job_overview LANGUAGE plpgsql SET jit = off AS $$
DECLARE
    v_queue_ids bigint[];
BEGIN
    v_queue_ids := procrastinate_defer_jobs_v1(ARRAY(
        SELECT ROW(u.queue, u.type, u.priority, NULL, NULL, '{}'::jsonb, u.scheduled_at)
                   ::procrastinate_job_to_defer_v1
        FROM unnest(p_queues, p_types, p_priorities, p_scheduled_at) WITH ORDINALITY
            AS u(queue, type, priority, scheduled_at, ord)
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
$$
"""


def upgrade() -> None:
    op.execute(f"DROP FUNCTION {OLD_SIGNATURE}")
    op.execute(SUBMIT_JOBS)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {NEW_SIGNATURE}")
    op.execute(SUBMIT_JOBS_0008)
