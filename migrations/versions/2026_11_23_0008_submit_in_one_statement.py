"""Jobs are submitted in one statement: the Procrastinate jobs, our rows and their events.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23

Submitting one job took five round trips (BEGIN, Procrastinate's defer, our insert, COMMIT, and
reading the job back); on this kind of machine a round trip costs about 0.1 ms of the API's CPU
in system calls. jobq_submit_jobs defers through Procrastinate's own procrastinate_defer_jobs_v1
(its triggers still notify the workers, at commit), inserts our rows and `submitted` events, and
can return the new jobs as job_overview rows, so that a single job is one round trip. Run alone
it is its own transaction; run inside a caller's, it commits with it.
"""

from __future__ import annotations

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

SUBMIT_JOBS = """
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
    op.execute(SUBMIT_JOBS)


def downgrade() -> None:
    op.execute("DROP FUNCTION jobq_submit_jobs(uuid[], varchar[], varchar[], integer[], "
               "timestamptz[], text[], integer[], double precision[], text[], text, text[], "
               "text[], boolean)")
