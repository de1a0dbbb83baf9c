"""The benchmark suite at its smoke size: every benchmark runs and reports every figure.

It checks that the figures exist and are sane, never how fast anything is.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import figures, targets
from benchmarks.context import PROJECT_ROOT

pytestmark = pytest.mark.slow

TIMEOUT = 600
"""Seconds: far above the ~2 min the smoke size takes, since others may load the machine."""


def run_smoke(out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "benchmarks", "run", "--size", "smoke", "--out", str(out)]
    server = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL")
    if server:
        command += ["--database-url", server]
    return subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=TIMEOUT)


def test_smoke_run_reports_every_figure(tmp_path: Path):
    out = tmp_path / "results.json"
    result = run_smoke(out)
    assert result.returncode == 0, result.stderr[-5000:]

    report = json.loads(out.read_text())
    assert report["settings"]["size"] == "smoke"
    assert report["versions"]["postgresql"]
    assert report["versions"]["procrastinate"]
    assert report["versions"]["pgqueuer"]
    assert report["versions"]["bullmq"]
    assert report["machine"]["cpu_count"] >= 1
    assert set(report["figures"]) == set(figures.BY_KEY)
    for key, figure in report["figures"].items():
        values = figure["repetitions"]
        assert values, key
        assert all(math.isfinite(v) and v > 0 for v in values), (key, values)
        assert figure["median"] > 0, key
        if figure["baseline"] is not None:
            assert figure["ratio_to_baseline"] > 0, key
        expected = {system for system, _key in figures.BY_KEY[key].anchors}
        assert set(figure["anchors"]) == expected, key
        assert all(a["ratio"] > 0 for a in figure["anchors"].values()), key

    # Every measure of the table is compared with all three anchors.
    for key in ("drain.c10.jobs_per_s", "drain.c1.jobs_per_s", "drain.2x10.jobs_per_s",
                "drain.c10.server_cpu_us_per_job", "drain.c10.cpu_us_per_job",
                "latency_http.p50_ms", "latency_http.p99_ms", "enqueue.api_bulk100.jobs_per_s",
                "enqueue.api_single.req_per_s", "memory.worker.peak_rss_mb"):
        assert set(report["figures"][f"jobq.{key}"]["anchors"]) == {"stock", "pgqueuer",
                                                                    "bullmq"}, key

    for figure in figures.CATALOGUE:
        if figure.key.startswith("jobq."):
            assert figure.label in result.stdout, f"no row for {figure.label!r} in the table"

    # Each target of the issue is reported, met or not, or said not to be measured here.
    verdicts = {row["target"]: row for row in report["targets"]}
    assert set(verdicts) == {t.text for t in targets.TARGETS}
    for target in targets.TARGETS:
        row = verdicts[target.text]
        assert (row["met"] is None) == (target.jobq is None), row
        assert target.text in result.stdout
