"""The run's results: medians and ratios to the baseline, as a table for people and as JSON
(with the machine, versions, settings and every repetition) for machines."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

from benchmarks import context, database, stock
from benchmarks.context import Context
from benchmarks.figures import BY_KEY, CATALOGUE, Figure

SAME_WITHIN = 0.02
"""Ratios this close to 1 read as "same" in the table."""

PACKAGES = ("jobq", "procrastinate", "psycopg", "psycopg-pool", "asyncpg", "sqlalchemy",
            "litestar", "uvicorn", "httpx")


async def environment(ctx: Context, embedded: bool, repetitions: int) -> dict[str, Any]:
    """What the figures depend on besides the code: machine, versions, settings."""
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "cpu": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "memory_mib": _meminfo_kib("MemTotal") // 1024,
            "load_average_at_start": os.getloadavg(),
        },
        "versions": {
            "python": platform.python_version(),
            "postgresql": await database.server_version(ctx.backend),
            **{name: _version(name) for name in PACKAGES},
            "git_commit": _git("rev-parse", "HEAD"),
            "git_dirty": bool(_git("status", "--porcelain", "--untracked-files=no")),
        },
        "settings": {
            "size": ctx.size.name,
            "repetitions": repetitions,
            "drain_jobs": ctx.size.drain_jobs,
            "api_single_requests": ctx.size.api_single,
            "api_concurrent_requests": ctx.size.api_concurrent,
            "concurrent_clients": context.CLIENTS,
            "batch_size": context.BATCH,
            "batches": ctx.size.batches,
            "latency_jobs": ctx.size.latency_jobs,
            "latency_arrival_per_s": context.ARRIVAL_RATE,
            "database": "embedded PostgreSQL" if embedded else "given server (DATABASE_URL)",
            "postgresql": await database.server_settings(ctx.backend),
            "jobq_environment": {k: v for k, v in sorted(os.environ.items())
                                 if k.startswith("JOBQ_")},
            "stock_defer_pool_size": stock.DEFER_POOL_SIZE,
            "stock_worker_pool_size": "concurrency + 2",
        },
    }


def results(samples: dict[str, list[float]], partial: bool = False) -> dict[str, dict[str, Any]]:
    """Every figure of the catalogue with its repetitions, median and ratio to its baseline;
    with `partial` (a run of some benchmarks only), the figures that were measured."""
    missing = [f.key for f in CATALOGUE if not samples.get(f.key)]
    unknown = [key for key in samples if key not in BY_KEY]
    if (missing and not partial) or unknown:
        raise RuntimeError(f"figures missing: {missing}; not in the catalogue: {unknown}")
    medians = {key: statistics.median(values) for key, values in samples.items()}
    return {
        f.key: {
            "label": f.label,
            "unit": f.unit,
            "higher_is_better": f.higher_is_better,
            "median": medians[f.key],
            "repetitions": samples[f.key],
            "baseline": f.baseline,
            "ratio_to_baseline": (medians[f.key] / medians[f.baseline]
                                  if f.baseline in medians else None),
        }
        for f in CATALOGUE if f.key in medians
    }


def table(figures: dict[str, dict[str, Any]]) -> str:
    """The jobq figures, each beside its stock counterpart."""
    header = (f"{'':52} {'unit':>7} {'jobq':>9} {'min-max':>17} {'vs':>9} {'ratio':>8}"
              f"  {'':6}  compared with (stock unless named)")
    lines = [header, "-" * len(header)]
    for f in CATALOGUE:
        if not f.key.startswith("jobq.") or f.key not in figures:
            continue
        row = figures[f.key]
        values = row["repetitions"]
        spread = f"{_num(min(values))}-{_num(max(values))}" if len(values) > 1 else ""
        line = f"{f.label:52} {f.unit:>7} {_num(row['median']):>9} {spread:>17}"
        if f.baseline in figures:
            base = BY_KEY[f.baseline]
            other = base.label if base.label != f.label else ""
            line += (f" {_num(figures[f.baseline]['median']):>9} "
                     f"{row['ratio_to_baseline']:>7.2f}x  {_verdict(f, row):6}  {other}")
        lines.append(line.rstrip())
    return "\n".join(lines)


def write_json(path: Path, env: dict[str, Any], figures: dict[str, dict[str, Any]]) -> None:
    path.write_text(json.dumps({**env, "figures": figures}, indent=2) + "\n")


def _verdict(figure: Figure, row: dict[str, Any]) -> str:
    ratio = row["ratio_to_baseline"]
    if abs(ratio - 1) <= SAME_WITHIN:
        return "same"
    return "better" if (ratio > 1) == figure.higher_is_better else "worse"


def _num(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                cwd=context.PROJECT_ROOT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _cpu_model() -> str | None:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def _meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)
