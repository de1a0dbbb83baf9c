"""Every figure a run reports: its key, what it means, its unit, and what it is compared with.

A jobq figure names the anchors' figures of the same measurement (stock Procrastinate,
PgQueuer, BullMQ) it is divided by in the report, or another jobq figure (`baseline`, for the
scale, conversion and streams benchmarks). The anchors' figures are listed too, so the JSON
holds every repetition of every system.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

ANCHORS = ("stock", "pgqueuer", "bullmq")
"""The systems jobq is compared with, in the table's order."""

ANCHOR_NAMES = {"stock": "Procrastinate", "pgqueuer": "PgQueuer", "bullmq": "BullMQ"}


@dataclass(frozen=True)
class Figure:
    key: str
    label: str
    unit: str
    higher_is_better: bool
    baseline: str | None = None
    """Key of another jobq figure this one is divided by in the report."""
    anchors: tuple[tuple[str, str], ...] = ()
    """(system, key) of each anchor's figure this one is divided by in the report."""


def _anchored(key: str, label: str, unit: str, higher: bool,
              stock: str | None = "", pgqueuer: str | None = "",
              bullmq: str | None = "") -> list[Figure]:
    """A jobq figure and the anchors' figures it is compared with: each anchor's key is
    `{system}.{key}` unless given (a suffix after the system's name), or None for none."""
    chosen = {"stock": stock, "pgqueuer": pgqueuer, "bullmq": bullmq}
    anchors = tuple((system, f"{system}.{suffix or key}")
                    for system, suffix in chosen.items() if suffix is not None)
    return [Figure(f"jobq.{key}", label, unit, higher, anchors=anchors),
            *(Figure(other, label, unit, higher) for _system, other in anchors)]


DRAIN_VARIANTS = {"c1": "1 worker, concurrency 1", "c10": "1 worker, concurrency 10",
                  "2x10": "2 workers, concurrency 10 each"}

_DRAIN = [
    figure
    for variant, label in DRAIN_VARIANTS.items()
    for figure in [
        *_anchored(f"drain.{variant}.jobs_per_s", f"drain: {label}", "jobs/s", True),
        *_anchored(f"drain.{variant}.cpu_us_per_job", f"drain: {label}, worker CPU", "µs/job",
                   False),
        *_anchored(f"drain.{variant}.server_cpu_us_per_job",
                   f"drain: {label}, server CPU", "µs/job", False),
    ]
]


def _enqueue(key: str, label: str, unit: str, stock: str | None, pgqueuer: str | None = None,
             bullmq: str | None = None) -> list[Figure]:
    higher = not (unit.startswith("ms") or unit.startswith("µs"))
    return [figure for figure in _anchored(
        f"enqueue.{key}", f"enqueue: {label}", unit, higher,
        stock=stock and f"enqueue.{stock}", pgqueuer=pgqueuer and f"enqueue.{pgqueuer}",
        bullmq=bullmq and f"enqueue.{bullmq}") if figure.key.startswith("jobq.")]


_ENQUEUE = [
    *_enqueue("api_single.req_per_s", "POST /jobs, 1 client", "req/s",
              "defer_single.jobs_per_s", "single.jobs_per_s", "single.jobs_per_s"),
    *_enqueue("api_single.p50_ms", "POST /jobs, 1 client, p50", "ms", "defer_single.p50_ms"),
    *_enqueue("api_single.p99_ms", "POST /jobs, 1 client, p99", "ms", "defer_single.p99_ms"),
    *_enqueue("api_single.api_cpu_us_per_job", "POST /jobs, 1 client, API CPU", "µs/job",
              None),
    *_enqueue("api_concurrent.req_per_s", "POST /jobs, 32 clients", "req/s",
              "defer_concurrent.jobs_per_s"),
    *_enqueue("api_concurrent.p50_ms", "POST /jobs, 32 clients, p50", "ms",
              "defer_concurrent.p50_ms"),
    *_enqueue("api_concurrent.p99_ms", "POST /jobs, 32 clients, p99", "ms",
              "defer_concurrent.p99_ms"),
    *_enqueue("api_concurrent.api_cpu_us_per_job", "POST /jobs, 32 clients, API CPU",
              "µs/job", None),
    *_enqueue("api_bulk100.jobs_per_s", "POST /jobs/batch of 100", "jobs/s",
              "defer_bulk100.jobs_per_s", "bulk100.jobs_per_s", "bulk100.jobs_per_s"),
    *_enqueue("api_bulk100.api_cpu_us_per_job", "POST /jobs/batch of 100, API CPU", "µs/job",
              None),
    *_enqueue("api_bulk100_analyzed.jobs_per_s",
              "POST /jobs/batch of 100, after ANALYZE near-empty", "jobs/s",
              "defer_bulk100.jobs_per_s", "bulk100.jobs_per_s", "bulk100.jobs_per_s"),
    *_enqueue("api_batch.jobs_per_s", "POST /jobs/batch of 1000", "jobs/s",
              "defer_batch.jobs_per_s"),
    *_enqueue("api_batch.api_cpu_us_per_job", "POST /jobs/batch of 1000, API CPU", "µs/job",
              None),
    *_enqueue("python_single.jobs_per_s", "jobs.enqueue, 1 per transaction", "jobs/s",
              "defer_single.jobs_per_s", "single.jobs_per_s", "single.jobs_per_s"),
    *_enqueue("python_single.p50_ms", "jobs.enqueue, 1 per transaction, p50", "ms",
              "defer_single.p50_ms"),
    *_enqueue("python_single.p99_ms", "jobs.enqueue, 1 per transaction, p99", "ms",
              "defer_single.p99_ms"),
    *_enqueue("python_batch.jobs_per_s", "jobs.enqueue, 1000 per transaction", "jobs/s",
              "defer_batch.jobs_per_s"),
]

_ANCHOR_ENQUEUE = [
    Figure("stock.enqueue.defer_single.jobs_per_s", "defer_async, one at a time", "jobs/s", True),
    Figure("stock.enqueue.defer_single.p50_ms", "defer_async, one at a time, p50", "ms", False),
    Figure("stock.enqueue.defer_single.p99_ms", "defer_async, one at a time, p99", "ms", False),
    Figure("stock.enqueue.defer_concurrent.jobs_per_s", "defer_async, 32 at once", "jobs/s",
           True),
    Figure("stock.enqueue.defer_concurrent.p50_ms", "defer_async, 32 at once, p50", "ms", False),
    Figure("stock.enqueue.defer_concurrent.p99_ms", "defer_async, 32 at once, p99", "ms", False),
    Figure("stock.enqueue.defer_batch.jobs_per_s", "batch_defer_async of 1000", "jobs/s", True),
    Figure("stock.enqueue.defer_bulk100.jobs_per_s", "batch_defer_async of 100", "jobs/s", True),
    Figure("pgqueuer.enqueue.single.jobs_per_s", "Queries.enqueue, one at a time", "jobs/s",
           True),
    Figure("pgqueuer.enqueue.bulk100.jobs_per_s", "Queries.enqueue, lists of 100", "jobs/s",
           True),
    Figure("bullmq.enqueue.single.jobs_per_s", "Queue.add, one at a time", "jobs/s", True),
    Figure("bullmq.enqueue.bulk100.jobs_per_s", "Queue.addBulk of 100", "jobs/s", True),
]

_LATENCY = [
    figure
    for q in ("p50", "p95", "p99")
    for figure in _anchored(f"latency.{q}_ms", f"latency: enqueue → started at 100/s, {q}",
                            "ms", False)
]

_LATENCY_HTTP = [
    figure
    for q in ("p50", "p95", "p99")
    for figure in _anchored(f"latency_http.{q}_ms",
                            f"latency: POST /jobs → started at 100/s, {q}", "ms", False,
                            stock=f"latency.{q}_ms", pgqueuer=f"latency.{q}_ms",
                            bullmq=f"latency.{q}_ms")
    if figure.key.startswith("jobq.")
]

_MEMORY = [
    Figure("jobq.memory.api.idle_rss_mb", "memory: API process, idle RSS", "MiB", False),
    Figure("jobq.memory.api.peak_rss_mb", "memory: API process, peak RSS", "MiB", False),
    *_anchored("memory.worker.idle_rss_mb", "memory: worker process, idle RSS", "MiB", False),
    *_anchored("memory.worker.peak_rss_mb", "memory: worker process, peak RSS (c10 drain)",
               "MiB", False),
    *[figure for figure in _anchored(
        "memory.worker_tree.idle_rss_mb", "memory: worker + its child processes, idle RSS",
        "MiB", False, stock="memory.worker.idle_rss_mb", pgqueuer="memory.worker.idle_rss_mb",
        bullmq="memory.worker.idle_rss_mb") if figure.key.startswith("jobq.")],
    Figure("jobq.memory.worker_tree.idle_processes",
           "memory: processes of an idle worker (itself + children)", "procs", False),
]

_SCALE = [
    Figure("jobq.scale.empty.queues_ms", "scale: GET /queues, empty history", "ms", False),
    Figure("jobq.scale.history.queues_ms", "scale: GET /queues, 1M finished jobs", "ms", False,
           baseline="jobq.scale.empty.queues_ms"),
    Figure("jobq.scale.empty.api_bulk100_jobs_per_s",
           "scale: POST /jobs/batch of 100, empty history", "jobs/s", True),
    Figure("jobq.scale.history.api_bulk100_jobs_per_s",
           "scale: POST /jobs/batch of 100, 1M finished jobs", "jobs/s", True,
           baseline="jobq.scale.empty.api_bulk100_jobs_per_s",
           anchors=(("stock", "stock.enqueue.defer_bulk100.jobs_per_s"),
                    ("pgqueuer", "pgqueuer.enqueue.bulk100.jobs_per_s"),
                    ("bullmq", "bullmq.enqueue.bulk100.jobs_per_s"))),
    Figure("jobq.scale.empty.drain_jobs_per_s", "scale: drain c10, empty history", "jobs/s",
           True),
    Figure("jobq.scale.history.drain_jobs_per_s", "scale: drain c10, 1M finished jobs",
           "jobs/s", True, baseline="jobq.scale.empty.drain_jobs_per_s"),
    Figure("jobq.scale.purging.drain_jobs_per_s", "scale: drain c10 while 1M are deleted",
           "jobs/s", True, baseline="jobq.scale.history.drain_jobs_per_s"),
    Figure("jobq.scale.purge.jobs_per_s", "scale: cleanup rate during that drain", "jobs/s",
           True),
]

_CONVERSION = [
    Figure("jobq.conversion.direct.s_per_conversion",
           "conversion 100k faces OBJ→GLB, called directly", "s", False),
    Figure("jobq.conversion.queue1.s_per_conversion",
           "conversion through the queue, 1 worker", "s", False,
           baseline="jobq.conversion.direct.s_per_conversion"),
    Figure("jobq.conversion.queue2.conversions_per_s",
           "conversions through the queue, 2 workers", "conv/s", True,
           baseline="jobq.conversion.queue1.conversions_per_s"),
    Figure("jobq.conversion.queue1.conversions_per_s",
           "conversions through the queue, 1 worker", "conv/s", True),
]

_POLICIES = [
    Figure("jobq.policies.unlimited.drain_jobs_per_s", "policies: drain c10, no limits",
           "jobs/s", True),
    Figure("jobq.policies.limited.drain_jobs_per_s",
           "policies: drain c10, rate and concurrency limits set", "jobs/s", True,
           baseline="jobq.policies.unlimited.drain_jobs_per_s"),
    Figure("jobq.policies.unlimited.server_cpu_us_per_job",
           "policies: server CPU per job, no limits", "us", False),
    Figure("jobq.policies.limited.server_cpu_us_per_job",
           "policies: server CPU per job, limits set", "us", False,
           baseline="jobq.policies.unlimited.server_cpu_us_per_job"),
    Figure("jobq.policies.history.queues_ms", "policies: GET /queues, 1M finished jobs", "ms",
           False),
    *[Figure(f"jobq.policies.history.{view}_ms", f"policies: SELECT * FROM {view}, 1M jobs",
             "ms", False) for view in ("report_daily", "report_failures", "report_workers")],
    Figure("jobq.policies.history.drain_jobs_per_s", "policies: drain c10, 1M finished jobs",
           "jobs/s", True),
    Figure("jobq.policies.retention.drain_jobs_per_s",
           "policies: drain c10 while retention deletes 1M", "jobs/s", True,
           baseline="jobq.policies.history.drain_jobs_per_s"),
    Figure("jobq.policies.retention.jobs_per_s", "policies: retention rate during that drain",
           "jobs/s", True),
]

_STREAMS = [
    Figure("jobq.streams.idle_rss_mb", "streams: API RSS before they open", "MiB", False),
    Figure("jobq.streams.open_rss_mb", "streams: API RSS with all open", "MiB", False,
           baseline="jobq.streams.idle_rss_mb"),
    Figure("jobq.streams.db_connections", "streams: API's database connections, all open",
           "conns", False),
    Figure("jobq.streams.delay_p50_ms", "streams: progress write → event at client, p50",
           "ms", False),
    Figure("jobq.streams.delay_p99_ms", "streams: progress write → event at client, p99",
           "ms", False),
]

CATALOGUE: list[Figure] = [*_DRAIN, *_ENQUEUE, *_ANCHOR_ENQUEUE, *_LATENCY, *_LATENCY_HTTP,
                           *_MEMORY, *_SCALE, *_POLICIES, *_CONVERSION, *_STREAMS]

BY_KEY = {figure.key: figure for figure in CATALOGUE}


def percentile(values: Sequence[float], share: float) -> float:
    """The nearest-rank percentile: the smallest value with `share` of values at or below."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def latency_figures(prefix: str, seconds: Sequence[float],
                    shares: Sequence[float] = (0.5, 0.99)) -> dict[str, float]:
    """`{prefix}.p50_ms`, ... of latencies given in seconds."""
    return {f"{prefix}.p{round(share * 100)}_ms": percentile(seconds, share) * 1000
            for share in shares}
