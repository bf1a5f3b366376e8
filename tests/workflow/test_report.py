"""``twinkles report``: the whole run's CPU efficiency on the local executor."""

from __future__ import annotations

import pytest

from twinkles.workflow.rundb import RunDatabase
from twinkles.workflow.status import busy_seconds, run_report

from sweep_pipeline import make_run, sweep_pipeline


def test_busy_time_is_the_union_of_the_intervals():
    assert busy_seconds([]) == 0.0
    assert busy_seconds([(0.0, 10.0)]) == 10.0
    # overlapping, nested and touching intervals count once; a gap does not count
    intervals = [(5.0, 12.0), (0.0, 10.0), (2.0, 3.0), (12.0, 13.0), (20.0, 25.0)]
    assert busy_seconds(intervals) == pytest.approx(13.0 + 5.0)


def _task(task_id: str, start: float, end: float, cpu: float, executor: str = "local") -> dict:
    return {
        "task_id": task_id,
        "step": "sweep",
        "executor": executor,
        "job_id": f"{executor}-1",
        "host": "vm",
        "n_items": 1,
        "cpus": 1,
        "submitted": start,
        "start": start,
        "end": end,
        "wall_s": end - start,
        "cpu_s": cpu,
        "peak_rss_mb": 100.0,
        "kernel_starts": 1,
        "outcome": "complete",
    }


def test_an_idle_core_counts_against_the_machine_not_the_tasks(tmp_path):
    run = make_run(tmp_path)
    db = RunDatabase(run.dir / "run.db")
    db.set_meta("local_workers", "2")
    # two cores busy for 100 s, then one task alone for 100 s (the other core idle), then
    # a day without a driver, then two cores busy for another 100 s
    day = 86400.0
    tasks = [
        _task("a", 0.0, 100.0, 100.0),
        _task("b", 0.0, 200.0, 200.0),
        _task("c", day, day + 100.0, 100.0),
        _task("d", day, day + 100.0, 100.0),
    ]
    for t in tasks:
        db.record_task(**t)
    db.close()
    total = run_report(run, sweep_pipeline())["total"]
    assert total["cpu_efficiency"] == pytest.approx(1.0)  # every task used its core
    assert total["busy_hours"] == pytest.approx(300.0 / 3600.0)
    assert total["local_workers"] == 2
    assert total["run_cpu_efficiency"] == pytest.approx(500.0 / (300.0 * 2))


def test_no_machine_efficiency_for_a_cluster(tmp_path):
    run = make_run(tmp_path)
    db = RunDatabase(run.dir / "run.db")
    db.record_task(**_task("a", 0.0, 100.0, 90.0, executor="slurm"))
    db.close()
    total = run_report(run, sweep_pipeline())["total"]
    assert total["cpu_efficiency"] == pytest.approx(0.9)
    assert total["local_workers"] is None and total["run_cpu_efficiency"] is None
