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

from benchmarks import figures
from benchmarks.context import PROJECT_ROOT

pytestmark = pytest.mark.slow

TIMEOUT = 600
"""Seconds: far above the ~40 s the smoke size takes, since others may load the machine."""


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
    assert report["machine"]["cpu_count"] >= 1
    assert set(report["figures"]) == set(figures.BY_KEY)
    for key, figure in report["figures"].items():
        values = figure["repetitions"]
        assert values, key
        assert all(math.isfinite(v) and v > 0 for v in values), (key, values)
        assert figure["median"] > 0, key
        if figure["baseline"] is not None:
            assert figure["ratio_to_baseline"] > 0, key

    for figure in figures.CATALOGUE:
        if figure.key.startswith("jobq."):
            assert figure.label in result.stdout, f"no row for {figure.label!r} in the table"
