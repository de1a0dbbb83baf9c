"""Rate limits counted in a window of 21 slots on the queue's row, not a row per claim; the
claim's statements planned once per connection (issues 14 and 17).

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-30

Revision 0013 logged each claim of a rate-limited queue as a row of queue_starts, summed the
rows of the last period at every claim, and deleted the ones older than the period. Limits that never bound
cost 14 % of a c10 drain (median of 4 alternated pairs, 2026-11-30); pg_stat_statements put
the limited claim at 0.75 ms, of which 0.14 ms was the selection of jobs every claim makes. The queue's row now holds its window: 21 counters of a twentieth of
the period each (rate_slots, a ring; rate_slot the newest one's number; rate_slot_seconds
their width, so a change of the period is seen). The claim, which already locks the row,
reads the sum of the 21 counters and adds its starts to the newest.

The limit still holds for every window of the period, now counted conservatively: the 21 slots
cover the period and at most a twentieth more, so a limit that binds admits at least 20/21 of
its rate. A change of the period counts the old window's starts as made at the change.

Both claim functions now plan their statements once per connection (plan_cache_mode
force_generic_plan). PostgreSQL's plan cache compares a generic plan's estimate with custom
plans', and the custom plan of the job selection, which can drop `p_queues IS NULL OR ...` at
planning time, always looked cheaper: pg_stat_statements showed it planned at every call in
the limited claim (0.37 ms of planning against 0.14 ms of execution) and, on some statistics,
in the unlimited one too. The statements are written to run row by row along the priority index
whatever the parameters, so the generic plan is the plan they were written for. A limited
claim in which no limit can bind (every allowance at least the claim's size) takes its jobs
in one statement, as the plain claim does, instead of row by row.

queue_starts is dropped: its rows lived one period, so nothing of lasting worth goes with it.
Function texts are copied from migrations/schema.sql; the downgrade restores revision 0016's.
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

COLUMNS = """
ALTER TABLE queues
    ADD COLUMN rate_slots integer[],
    ADD COLUMN rate_slot bigint,
    ADD COLUMN rate_slot_seconds double precision
"""

RATE_WINDOW_TYPE = """
CREATE TYPE jobq_rate_window AS (
    slots integer[],
    slot bigint,
    slot_seconds double precision,
    used integer
)
"""

RATE_WINDOW = r"""
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
"""

CLAIM_LIMITED = r"""
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
"""

GENERIC_CLAIM = """
ALTER FUNCTION jobq_claim_jobs(character varying[], bigint, text, integer)
    SET plan_cache_mode TO 'force_generic_plan'
"""

QUEUE_STARTS_0016 = """
CREATE TABLE queue_starts (
    queue_name character varying(128) NOT NULL,
    started_at timestamp with time zone NOT NULL,
    starts integer NOT NULL,
    CONSTRAINT pk_queue_starts PRIMARY KEY (queue_name, started_at)
);
"""

CLAIM_LIMITED_0016 = r"""
CREATE OR REPLACE FUNCTION public.jobq_claim_limited(p_queues character varying[], p_limited character varying[], p_limit integer, OUT ids bigint[], OUT claimed_at timestamp with time zone)
 RETURNS record
 LANGUAGE plpgsql
 SET enable_sort TO 'off'
 SET jit TO 'off'
 SET enable_seqscan TO 'off'
 SET enable_hashjoin TO 'off'
 SET enable_mergejoin TO 'off'
AS $function$
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
$function$;
"""


def upgrade() -> None:
    op.execute(COLUMNS)
    op.execute(RATE_WINDOW_TYPE)
    op.execute(RATE_WINDOW)
    op.execute(CLAIM_LIMITED)
    op.execute(GENERIC_CLAIM)
    op.execute("DROP TABLE queue_starts")


def downgrade() -> None:
    op.execute(QUEUE_STARTS_0016)
    op.execute(CLAIM_LIMITED_0016)
    op.execute("ALTER FUNCTION jobq_claim_jobs(character varying[], bigint, text, integer) "
               "RESET plan_cache_mode")
    op.execute("DROP FUNCTION jobq_rate_window(integer[], bigint, double precision, "
               "double precision, timestamp with time zone)")
    op.execute("DROP TYPE jobq_rate_window")
    op.execute("ALTER TABLE queues DROP COLUMN rate_slots, DROP COLUMN rate_slot, "
               "DROP COLUMN rate_slot_seconds")
