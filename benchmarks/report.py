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

from benchmarks import anchor_bullmq, context, database, stock
from benchmarks.context import Context
from benchmarks.figures import ANCHOR_NAMES, ANCHORS, BY_KEY, CATALOGUE, Figure

SAME_WITHIN = 0.02
"""Ratios this close to 1 read as "same" in the table."""

PACKAGES = ("jobq", "procrastinate", "pgqueuer", "psycopg", "psycopg-pool", "asyncpg",
            "sqlalchemy", "litestar", "uvicorn", "httpx")


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
            "bullmq": _node_version(anchor_bullmq.DRIVER_DIR, "bullmq"),
            "node": _run("node", "--version"),
            "redis": _run("redis-server", "--version"),
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
            "bulk_size": context.BULK,
            "redis": "our own redis-server, appendonly yes, appendfsync everysec",
            "pgqueuer_worker": "batch_size = concurrency, no concurrency limit, uvloop",
        },
    }


def results(samples: dict[str, list[float]], partial: bool = False) -> dict[str, dict[str, Any]]:
    """Every figure of the catalogue with its repetitions, median and ratios (to its baseline and
    to each anchor's figure); with `partial` (a run of some benchmarks only), the figures that
    were measured."""
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
            "anchors": {system: {"key": key, "median": medians[key],
                                 "ratio": medians[f.key] / medians[key]}
                        for system, key in f.anchors if key in medians},
        }
        for f in CATALOGUE if f.key in medians
    }


def table(figures: dict[str, dict[str, Any]]) -> str:
    """The jobq figures, each beside every anchor's with their ratio (jobq ÷ anchor; `+` where
    jobq is better, `-` where worse, `=` within 2%), or beside the jobq figure it is compared
    with."""
    width = max(len(f.label) for f in CATALOGUE if f.key in figures) + 1
    columns = "".join(f" {ANCHOR_NAMES[a]:>10} {'ratio':>7}" for a in ANCHORS)
    header = (f"{'':{width}} {'unit':>7} {'jobq':>9} {'min-max':>17}{columns}"
              f"   other comparison")
    lines = [header, "-" * len(header)]
    for f in CATALOGUE:
        if not f.key.startswith("jobq.") or f.key not in figures:
            continue
        row = figures[f.key]
        values = row["repetitions"]
        spread = f"{_num(min(values))}-{_num(max(values))}" if len(values) > 1 else ""
        line = f"{f.label:{width}} {f.unit:>7} {_num(row['median']):>9} {spread:>17}"
        for system in ANCHORS:
            anchor = row["anchors"].get(system)
            if anchor is None:
                line += f" {'':>10} {'':>7}"
            else:
                line += (f" {_num(anchor['median']):>10} "
                         f"{anchor['ratio']:>6.2f}{_mark(f, anchor['ratio'])}")
        if f.baseline in figures:
            line += (f"   {row['ratio_to_baseline']:.2f}x {_verdict(f, row['ratio_to_baseline'])}"
                     f" vs {BY_KEY[f.baseline].label}")
        lines.append(line.rstrip())
    return "\n".join(lines)


def write_json(path: Path, env: dict[str, Any], figures: dict[str, dict[str, Any]],
               verdicts: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({**env, "figures": figures, "targets": verdicts}, indent=2,
                               ensure_ascii=False) + "\n")


def _mark(figure: Figure, ratio: float) -> str:
    return {"same": "=", "better": "+", "worse": "-"}[_verdict(figure, ratio)]


def _verdict(figure: Figure, ratio: float) -> str:
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


def _run(*command: str) -> str | None:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _node_version(directory: Path, package: str) -> str | None:
    try:
        manifest = directory / "node_modules" / package / "package.json"
        return json.loads(manifest.read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
