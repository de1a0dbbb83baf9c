"""The benchmark report's verdicts on issue 17's targets, from given medians (no run)."""

from __future__ import annotations

from benchmarks import report, targets


def figures(**medians: float) -> dict:
    """`report.results` of one repetition per figure (keys with `__` for `.`)."""
    return report.results({key.replace("__", "."): [value] for key, value in medians.items()},
                          partial=True)


def verdict(rows: list[dict], text_start: str) -> dict:
    (row,) = [r for r in rows if r["target"].startswith(text_start)]
    return row


def test_a_throughput_target_is_met_at_or_above_the_anchor_and_not_below():
    rows = targets.verdicts(figures(jobq__drain__c10__jobs_per_s=3000,
                                    pgqueuer__drain__c10__jobs_per_s=3000,
                                    jobq__drain__c1__jobs_per_s=400,
                                    pgqueuer__drain__c1__jobs_per_s=500))
    assert verdict(rows, "drain, 1 process, concurrency 10")["met"] is True
    c1 = verdict(rows, "drain, concurrency 1")
    assert c1["met"] is False
    assert (c1["jobq"], c1["anchor"], c1["limit"]) == (400, 500, 500)


def test_a_cost_target_is_met_at_or_below_its_multiple_of_the_anchor():
    within = targets.verdicts(figures(jobq__drain__c10__server_cpu_us_per_job=260,
                                      pgqueuer__drain__c10__server_cpu_us_per_job=200))
    over = targets.verdicts(figures(jobq__drain__c10__server_cpu_us_per_job=261,
                                    pgqueuer__drain__c10__server_cpu_us_per_job=200))
    assert verdict(within, "server CPU")["met"] is True
    assert verdict(over, "server CPU")["met"] is False
    assert verdict(over, "server CPU")["limit"] == 1.3 * 200


def test_memory_targets_are_absolute_and_in_megabytes():
    # 100 MB is 95.4 MiB: 96 MiB is over it.
    rows = targets.verdicts(figures(jobq__memory__worker__peak_rss_mb=96,
                                    jobq__memory__worker__idle_rss_mb=84,
                                    jobq__memory__worker_tree__idle_processes=1))
    assert verdict(rows, "memory: that worker's RSS ≤ 100 MB (peak")["met"] is False
    assert verdict(rows, "memory: that worker's RSS ≤ 100 MB (idle")["met"] is True
    assert verdict(rows, "memory: an idle worker")["met"] is True
    two = targets.verdicts(figures(jobq__memory__worker_tree__idle_processes=2))
    assert verdict(two, "memory: an idle worker")["met"] is False


def test_targets_without_figures_are_reported_as_not_measured():
    rows = targets.verdicts(figures(jobq__drain__c10__jobs_per_s=3000))
    assert verdict(rows, "drain, 1 process, concurrency 10")["met"] is None  # no anchor figure
    assert verdict(rows, "no feature pays")["met"] is None
    table = targets.table(rows)
    assert "not measured in this run" in table
    assert "not measured by this suite" in table
