"""The targets of issue 17, each checked against the run's medians: met, not met, or not
measured by this suite. Every target is a ratio to an anchor measured in the same run, except
the memory ones, which are absolute.

"No feature pays on the hot path" needs a build without the features to compare with, which
one run of one checkout cannot measure; the policies benchmark gives the drain with queue
limits in use beside the drain without.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MB_IN_MIB = 1_000_000 / 1_048_576
"""100 MB is this many MiB times 100: the RSS figures are in MiB, the target in MB."""


@dataclass(frozen=True)
class Target:
    text: str
    jobq: str | None
    """The jobq figure checked (None: not measured by this suite)."""
    anchor: str | None = None
    """The anchor's figure it is compared with; None for an absolute limit."""
    factor: float = 1.0
    """jobq must be at least (`at_least`) or at most `factor` times the anchor's figure (or
    `factor` itself when there is no anchor)."""
    at_least: bool = True


TARGETS = [
    Target("drain, 1 process, concurrency 10 ≥ PgQueuer's", "jobq.drain.c10.jobs_per_s",
           "pgqueuer.drain.c10.jobs_per_s"),
    Target("drain, concurrency 1 ≥ PgQueuer's", "jobq.drain.c1.jobs_per_s",
           "pgqueuer.drain.c1.jobs_per_s"),
    Target("drain, 2 processes x 10 ≥ PgQueuer's", "jobq.drain.2x10.jobs_per_s",
           "pgqueuer.drain.2x10.jobs_per_s"),
    Target("server CPU per job at c10 ≤ 1.3 x PgQueuer's",
           "jobq.drain.c10.server_cpu_us_per_job", "pgqueuer.drain.c10.server_cpu_us_per_job",
           1.3, at_least=False),
    Target("latency over HTTP, p50 ≤ PgQueuer's (through its library)",
           "jobq.latency_http.p50_ms", "pgqueuer.latency.p50_ms", at_least=False),
    Target("latency over HTTP, p99 ≤ 2 x BullMQ's", "jobq.latency_http.p99_ms",
           "bullmq.latency.p99_ms", 2.0, at_least=False),
    Target("bulk enqueue over HTTP (batches of 100) ≥ PgQueuer's library bulk insert",
           "jobq.enqueue.api_bulk100.jobs_per_s", "pgqueuer.enqueue.bulk100.jobs_per_s"),
    Target("… the same after an ANALYZE of near-empty tables (a fresh API)",
           "jobq.enqueue.api_bulk100_analyzed.jobs_per_s", "pgqueuer.enqueue.bulk100.jobs_per_s"),
    Target("… the same with a history of finished jobs (full size: 1M)",
           "jobq.scale.history.api_bulk100_jobs_per_s", "pgqueuer.enqueue.bulk100.jobs_per_s"),
    Target("single enqueue over HTTP, one client ≥ Procrastinate's defer_async",
           "jobq.enqueue.api_single.req_per_s", "stock.enqueue.defer_single.jobs_per_s"),
    Target("memory: an idle worker that ran no conversion has no child process (forkserver)",
           "jobq.memory.worker_tree.idle_processes", None, 1.0, at_least=False),
    Target("memory: that worker's RSS ≤ 100 MB (peak, after the c10 drain)",
           "jobq.memory.worker.peak_rss_mb", None, 100 * MB_IN_MIB, at_least=False),
    Target("memory: that worker's RSS ≤ 100 MB (idle)",
           "jobq.memory.worker.idle_rss_mb", None, 100 * MB_IN_MIB, at_least=False),
    Target("no feature pays on the hot path (≤ 10% of drain when unused)", None),
]


def verdicts(figures: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each target with the figures it was checked on and whether it is met (None: not
    measured in this run)."""
    found = []
    for target in TARGETS:
        row: dict[str, Any] = {"target": target.text, "figure": target.jobq,
                               "anchor_figure": target.anchor, "at_least": target.at_least,
                               "jobq": None, "anchor": None, "limit": None, "met": None}
        if target.jobq is not None and target.jobq in figures and (
                target.anchor is None or target.anchor in figures):
            value = figures[target.jobq]["median"]
            limit = target.factor * (figures[target.anchor]["median"] if target.anchor else 1)
            row.update(jobq=value, limit=limit,
                       anchor=figures[target.anchor]["median"] if target.anchor else None,
                       met=value >= limit if target.at_least else value <= limit)
        found.append(row)
    return found


def table(rows: list[dict[str, Any]]) -> str:
    width = max(len(row["target"]) for row in rows) + 1
    header = f"{'target (issue 17)':{width}} {'jobq':>9} {'needs':>11}  verdict"
    lines = [header, "-" * len(header)]
    for row in rows:
        if row["met"] is None:
            verdict = ("not measured by this suite" if row["figure"] is None
                       else "not measured in this run")
            lines.append(f"{row['target']:{width}} {'':>9} {'':>11}  {verdict}")
            continue
        needs = f"{'≥' if row['at_least'] else '≤'} {_num(row['limit'])}"
        lines.append(f"{row['target']:{width}} {_num(row['jobq']):>9} {needs:>11}  "
                     f"{'MET' if row['met'] else 'NOT MET'}")
    return "\n".join(lines)


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"
