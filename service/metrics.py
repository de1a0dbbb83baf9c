"""`GET /metrics`: jobq's figures in Prometheus's text format, read from PostgreSQL at scrape
time, so every API process answers the same and no job is counted twice.

- Gauges (queue depth, oldest queued job, live workers) are counted from the queue's rows.
- Counters and histograms are the sums of the daily aggregates the reports read
  (job_stats_daily, job_stats_histograms; revision 0016), kept in the transaction of each change
  of state: a job counts once, whichever process ran it, and the totals survive the deletion of
  the jobs (retention, DELETE). Nothing else counts the same facts.
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
SELECT queue_name AS queue, task_name AS type,
       sum(submitted)::bigint AS submitted, sum(started)::bigint AS started,
       sum(succeeded)::bigint AS succeeded, sum(failed)::bigint AS failed,
       sum(cancelled)::bigint AS cancelled,
       sum(retried - client_retried)::bigint AS backoff, sum(requeued)::bigint AS requeued,
       sum(client_retried)::bigint AS client
FROM job_stats_daily GROUP BY 1, 2
"""

_HISTOGRAMS = """
SELECT task_name AS type, metric, least((bucket + 3) / 4, $1::integer) AS bound,
       sum(n)::bigint AS count, sum(sum_ms) / 1000.0 AS seconds
FROM job_stats_histograms GROUP BY 1, 2, 3
"""
# Histogram bucket b (jobq_stats_bucket) holds durations below 2^(b/4) ms; /metrics' bound k is
# 2^k ms, so bucket b counts up to bound ceil(b / 4); past the last bound, +Inf.

_WORKERS = """
SELECT count(*) FROM procrastinate_workers
WHERE last_heartbeat > now() - make_interval(secs => $1)
"""

RETRY_REASONS = ("backoff", "requeued", "client")
"""What put a job back in line (the `reason` label): a failed attempt with attempts left, an
attempt stopped and not counted (shutdown, fencing), a client's retry."""

DELIVERY_OUTCOMES = {"succeeded": "delivered", "backoff": "retried", "failed": "failed"}
"""system.webhook job counts, as webhook delivery outcomes."""

HISTOGRAMS = {"run": "jobq_job_run_seconds", "wait": "jobq_job_queue_wait_seconds"}


@dataclass
class Scrape:
    """What one scrape read."""

    bounds: list[float]
    depth: list[dict[str, Any]]
    totals: list[dict[str, Any]]
    histograms: list[dict[str, Any]]
    live_workers: int
    open_streams: int


async def read(backend: Backend, stall_seconds: float, open_streams: int) -> Scrape:
    """Everything /metrics shows, read in one transaction (one consistent snapshot)."""
    async with backend.transaction() as conn:
        bounds = list(await conn.fetchval("SELECT jobq_metric_buckets()"))
        depth = [dict(r) for r in await conn.fetch(_DEPTH)]
        totals = [dict(r) for r in await conn.fetch(_TOTALS)]
        histograms = [dict(r) for r in await conn.fetch(_HISTOGRAMS, len(bounds))]
        workers = await conn.fetchval(_WORKERS, stall_seconds)
    return Scrape(bounds, depth, totals, histograms, workers, open_streams)


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
    delivered: dict[str, int] = dict.fromkeys(DELIVERY_OUTCOMES.values(), 0)
    for row in sorted(scrape.totals, key=lambda r: (r["queue"], r["type"])):
        labels = [row["queue"], row["type"]]
        for event, family in per_type.items():
            if row[event]:
                family.add_metric(labels, row[event])
        for reason in RETRY_REASONS:
            if row[reason]:
                retried.add_metric([*labels, reason], row[reason])
        if row["type"] == "system.webhook":
            for column, outcome in DELIVERY_OUTCOMES.items():
                delivered[outcome] += row[column]
    for outcome, count in delivered.items():
        deliveries.add_metric([outcome], count)
    yield from per_type.values()
    yield retried
    yield deliveries


def _histograms(scrape: Scrape) -> Iterator[Metric]:
    run = HistogramMetricFamily(HISTOGRAMS["run"],
                                "How long attempts ran that ended succeeded, failed or for a "
                                "retry, per job type.", labels=["type"])
    wait = HistogramMetricFamily(HISTOGRAMS["wait"],
                                 "How long jobs waited between being due (run_at, else "
                                 "submission) and their first attempt's start, per job type.",
                                 labels=["type"])
    for family, metric in ((run, "run"), (wait, "wait")):
        counts: dict[str, list[int]] = defaultdict(lambda: [0] * (len(scrape.bounds) + 1))
        seconds: dict[str, float] = defaultdict(float)
        for row in scrape.histograms:
            if row["metric"] == metric:
                counts[row["type"]][row["bound"]] += row["count"]
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
