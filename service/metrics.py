"""`GET /metrics`: jobq's figures in Prometheus's text format, read from PostgreSQL at scrape
time, so every API process answers the same and no job is counted twice.

- Gauges (queue depth, oldest queued job, live workers) are counted from the queue's rows.
- Counters and histograms are the totals in job_counters, which revision 0011's trigger adds to
  in the transaction that writes each event: a job counts once, whichever process ran it, and
  the totals survive the deletion of the jobs (retention, DELETE). Deleted sessions' rows are
  folded together at each scrape; the sums do not change.
- `jobq_api_event_streams` is the one figure of the process that answers: its open streams.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from service.backend import Backend

CONTENT_TYPE = CONTENT_TYPE_LATEST

_DEPTH = """
SELECT pj.queue_name AS queue,
       CASE WHEN pj.status = 'doing' THEN 'running'
            WHEN pj.scheduled_at > now() THEN 'scheduled'
            ELSE 'queued' END AS status,
       count(*) AS n,
       extract(epoch FROM now() - min(coalesce(pj.scheduled_at, j.created_at))
                                  FILTER (WHERE pj.status = 'todo'
                                            AND coalesce(pj.scheduled_at, now()) <= now()))
           AS oldest_queued_age
FROM procrastinate_jobs AS pj
JOIN jobs AS j ON j.queue_job_id = pj.id
WHERE pj.status IN ('todo', 'doing')
GROUP BY 1, 2
"""
# The same mapping from queue state to public status as the job_overview view, written out so
# that the partial index on active jobs serves it: the view's derived status cannot use it.

_TOTALS = """
SELECT queue, type, event, bucket, sum(count)::bigint AS count, sum(seconds) AS seconds
FROM job_counters GROUP BY 1, 2, 3, 4
"""

_WORKERS = """
SELECT count(*) FROM procrastinate_workers
WHERE last_heartbeat > now() - make_interval(secs => $1)
"""

RETRY_REASONS = {"retry_scheduled": "backoff", "requeued": "requeued", "retried": "client"}
"""job_events that put a job back in line, and the `reason` label each gets."""

ATTEMPT_ENDS = frozenset({"succeeded", "failed", "retry_scheduled", "cancelled", "requeued"})
"""Events that end an attempt: their time is the attempt's run time."""

DELIVERY_OUTCOMES = {"succeeded": "delivered", "retry_scheduled": "retried", "failed": "failed"}
"""system.webhook attempt ends, as webhook delivery outcomes."""


@dataclass
class Scrape:
    """What one scrape read."""

    bounds: list[float]
    depth: list[dict[str, Any]]
    totals: list[dict[str, Any]]
    live_workers: int
    open_streams: int


async def read(backend: Backend, stall_seconds: float, open_streams: int) -> Scrape:
    """Everything /metrics shows, read in one transaction (one consistent snapshot)."""
    async with backend.transaction() as conn:
        await conn.execute("SELECT jobq_fold_counters()")
        bounds = list(await conn.fetchval("SELECT jobq_metric_buckets()"))
        depth = [dict(r) for r in await conn.fetch(_DEPTH)]
        totals = [dict(r) for r in await conn.fetch(_TOTALS)]
        workers = await conn.fetchval(_WORKERS, stall_seconds)
    return Scrape(bounds, depth, totals, workers, open_streams)


def render(scrape: Scrape) -> bytes:
    """The scrape in Prometheus's text exposition format."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(scrape))
    return generate_latest(registry)


class _Collector:
    def __init__(self, scrape: Scrape) -> None:
        self.scrape = scrape

    def collect(self) -> Iterator[Metric]:
        yield from _gauges(self.scrape)
        yield from _counters(self.scrape)
        yield from _histograms(self.scrape)


def _gauges(scrape: Scrape) -> Iterator[Metric]:
    depth = GaugeMetricFamily("jobq_queue_jobs", "Jobs waiting or running, per queue and status "
                              "(queued, scheduled, running).", labels=["queue", "status"])
    oldest = GaugeMetricFamily("jobq_queue_oldest_queued_age_seconds",
                               "Age of the oldest job that is due and not running, per queue "
                               "(0 when none waits).", labels=["queue"])
    # Every queue that ever had a job gets every series, zeros included: a series that
    # disappears when a queue empties reads as "no data", not as 0.
    queues = {row["queue"] for row in scrape.totals} | {row["queue"] for row in scrape.depth}
    counts = {(row["queue"], row["status"]): row["n"] for row in scrape.depth}
    ages: dict[str, float] = dict.fromkeys(queues, 0.0)
    for row in scrape.depth:
        ages[row["queue"]] = max(ages[row["queue"]], float(row["oldest_queued_age"] or 0))
    for queue in sorted(queues):
        for status in ("queued", "scheduled", "running"):
            depth.add_metric([queue, status], counts.get((queue, status), 0))
        oldest.add_metric([queue], ages[queue])
    yield depth
    yield oldest
    yield GaugeMetricFamily("jobq_workers_live", "Workers whose heartbeat is recent.",
                            value=scrape.live_workers)
    yield GaugeMetricFamily("jobq_api_event_streams",
                            "Event streams open on the API process that answered this scrape.",
                            value=scrape.open_streams)


def _counters(scrape: Scrape) -> Iterator[Metric]:
    per_type = {event: CounterMetricFamily(f"jobq_jobs_{name}", text, labels=["queue", "type"])
                for event, name, text in (
                    ("submitted", "submitted", "Jobs submitted."),
                    ("started", "started", "Attempts started."),
                    ("succeeded", "succeeded", "Jobs that succeeded."),
                    ("failed", "failed", "Jobs that failed for good."),
                    ("cancelled", "cancelled", "Jobs cancelled."))}
    retried = CounterMetricFamily(
        "jobq_jobs_retried", "Jobs put back in line: after a failed attempt (backoff), after "
        "a worker stopped or was lost (requeued), by a client (client).",
        labels=["queue", "type", "reason"])
    deliveries = CounterMetricFamily(
        "jobq_webhook_deliveries", "Webhook delivery attempts: delivered, retried (failed, "
        "tried again later), failed (for good, or refused).", labels=["outcome"])
    sums: dict[tuple[str, ...], int] = defaultdict(int)
    for row in scrape.totals:
        sums[(row["queue"], row["type"], row["event"])] += row["count"]
    delivered: dict[str, int] = dict.fromkeys(DELIVERY_OUTCOMES.values(), 0)
    for (queue, job_type, event), count in sorted(sums.items()):
        if event in per_type:
            per_type[event].add_metric([queue, job_type], count)
        elif event in RETRY_REASONS:
            retried.add_metric([queue, job_type, RETRY_REASONS[event]], count)
        if job_type == "system.webhook" and event in DELIVERY_OUTCOMES:
            delivered[DELIVERY_OUTCOMES[event]] += count
    for outcome, count in delivered.items():
        deliveries.add_metric([outcome], count)
    yield from per_type.values()
    yield retried
    yield deliveries


def _histograms(scrape: Scrape) -> Iterator[Metric]:
    run = HistogramMetricFamily("jobq_job_run_seconds",
                                "How long attempts ran, per job type.", labels=["type"])
    wait = HistogramMetricFamily("jobq_job_queue_wait_seconds",
                                 "How long jobs waited between being due (run_at or retry time, "
                                 "else submission) and starting, per job type.",
                                 labels=["type"])
    for family, events in ((run, ATTEMPT_ENDS), (wait, frozenset({"started"}))):
        counts: dict[str, list[int]] = defaultdict(lambda: [0] * (len(scrape.bounds) + 1))
        seconds: dict[str, float] = defaultdict(float)
        for row in scrape.totals:
            if row["event"] in events and row["bucket"] >= 0:
                counts[row["type"]][row["bucket"]] += row["count"]
                seconds[row["type"]] += row["seconds"]
        for job_type in sorted(counts):
            family.add_metric([job_type], _cumulative(scrape.bounds, counts[job_type]),
                              sum_value=seconds[job_type])
        yield family


def _cumulative(bounds: list[float], counts: list[int]) -> list[tuple[str, float]]:
    """Bucket b holds observations from bound b-1 up to bound b (b=0: below the first bound;
    b=len(bounds): from the last bound up); Prometheus wants counts up to each bound."""
    out, running = [], 0
    for bound, count in zip(bounds, counts, strict=False):
        running += count
        out.append((_le(bound), running))
    out.append(("+Inf", running + counts[len(bounds)]))
    return out


def _le(bound: float) -> str:
    return repr(float(bound))
