"""``twinkles status`` and ``twinkles report``: read-only views of a run database.

Status: per step, how many data ids are done, failed, blocked and pending (pending includes
data ids planned but never run), and each failure with its cell, error line and notebook.

Report: per step and for the whole run, data ids processed, CPU and wall hours, CPU
efficiency, success rate and peak memory; and the run directory's peak disk. CPU efficiency
is ``CPU / (wall x cores)`` of the *tasks* (processes or Slurm array elements), so start-up,
kernel warm-up and idle time count against it, as they did in Twinkles' own 2-4% figure at
NERSC. A run on the local executor also gets the efficiency of the machine: the tasks' CPU
over the time any task ran (``busy_hours``) times the local workers, so a core left idle
(one gathering step running alone, a step waiting on another) counts against it too. Time
while no driver ran (a run stopped and resumed the next day) is not counted.
"""

from __future__ import annotations

import os
from typing import Any

from twinkles.config import ConfigError, Run
from twinkles.workflow import spec
from twinkles.workflow.rundb import RunDatabase
from twinkles.workflow.spec import Pipeline

__all__ = ["busy_seconds", "run_report", "run_status"]


def _planned(run: Run, pipeline: Pipeline) -> dict[str, list[str]]:
    """Data ids each step would run, when the run's data ids can be enumerated."""
    from twinkles.workflow.driver import make_plan

    try:
        plan = make_plan(run, pipeline)
    except (FileNotFoundError, KeyError, ConfigError):
        return {}
    out: dict[str, list[str]] = {}
    for step, did in plan:
        out.setdefault(step, []).append(did)
    return out


def run_status(run: Run, pipeline: Pipeline | None = None) -> dict[str, Any]:
    """``{"steps": [{"step", "done", "failed", "blocked", "pending", "failures"}, ...]}``."""
    pipeline = (pipeline or spec.PIPELINE).for_run(run)
    db = RunDatabase(run.dir / "run.db")
    try:
        rows = db.nodes()
    finally:
        db.close()
    planned = _planned(run, pipeline)
    by_step: dict[str, dict[str, Any]] = {}
    order = [s.name for s in pipeline.steps] + sorted({r.step for r in rows} - set(planned))
    for name in order:
        by_step[name] = {
            "step": name,
            "done": 0,
            "failed": 0,
            "blocked": 0,
            "pending": 0,
            "failures": [],
        }
    seen = set()
    for r in rows:
        entry = by_step.setdefault(
            r.step,
            {"step": r.step, "done": 0, "failed": 0, "blocked": 0, "pending": 0, "failures": []},
        )
        state = r.state if r.state in ("done", "failed", "blocked") else "pending"
        entry[state] += 1
        seen.add((r.step, r.data_id))
        if state in ("failed", "blocked"):
            entry["failures"].append(
                {
                    "data_id": r.data_id,
                    "state": r.state,
                    "failure_class": r.failure_class,
                    "cell": r.failed_cell,
                    "error": r.error,
                    "attempts": r.attempts,
                    "notebook": r.notebook,
                }
            )
    for step, dids in planned.items():
        by_step[step]["pending"] += sum((step, d) not in seen for d in dids)
    return {"steps": [by_step[name] for name in order if name in by_step]}


def _sum(values: list[float | None]) -> float:
    return float(sum(v for v in values if v is not None))


def busy_seconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of (start, end) intervals: the time at least one of them covers."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _local_workers(run: Run, db: RunDatabase, tasks: list[dict[str, Any]]) -> int | None:
    """The cores a local run had: as its driver recorded them, else as configured (runs
    recorded before the driver kept them); None for runs that used another executor."""
    if not tasks or any(t["executor"] != "local" for t in tasks):
        return None
    recorded = db.meta("local_workers")
    if recorded is not None:
        return int(recorded)
    return run.config.executor.workers or len(os.sched_getaffinity(0))


def run_report(run: Run, pipeline: Pipeline | None = None) -> dict[str, Any]:
    """Throughput, cost, efficiency, success rate and memory of a run, per step and in total."""
    pipeline = (pipeline or spec.PIPELINE).for_run(run)
    db = RunDatabase(run.dir / "run.db")
    try:
        nodes, attempts, tasks = db.nodes(), db.attempts(), db.tasks()
        disk, removed = db.disk(), db.removed()
        workers = _local_workers(run, db, tasks)
    finally:
        db.close()
    steps = [s.name for s in pipeline.steps]
    steps += sorted({n.step for n in nodes} - set(steps))

    def summarise(node_rows, attempt_rows, task_rows) -> dict[str, Any]:
        done = sum(n.state == "done" for n in node_rows)
        failed = sum(n.state == "failed" for n in node_rows)
        measured = [t for t in task_rows if t["wall_s"] is not None and t["cpu_s"] is not None]
        task_cpu = _sum([t["cpu_s"] for t in measured])
        core_wall = _sum([t["wall_s"] * t["cpus"] for t in measured])
        peaks = [a["peak_rss_mb"] for a in attempt_rows if a["peak_rss_mb"] is not None]
        starts = [a["start"] for a in attempt_rows if a["start"] is not None]
        ends = [a["end"] for a in attempt_rows if a["end"] is not None]
        return {
            "data_ids_processed": done,
            "data_ids_failed": failed,
            "attempts": len(attempt_rows),
            "retries": max(
                len(attempt_rows) - len({(a["step"], a["data_id"]) for a in attempt_rows}), 0
            ),
            "cpu_hours": _sum([a["cpu_s"] for a in attempt_rows]) / 3600.0,
            "wall_hours": _sum([a["wall_s"] for a in attempt_rows]) / 3600.0,
            "task_cpu_hours": task_cpu / 3600.0,
            "task_core_hours": core_wall / 3600.0,
            "cpu_efficiency": task_cpu / core_wall if core_wall > 0 else None,
            "success_rate": done / (done + failed) if done + failed else None,
            "peak_rss_mb": max(peaks) if peaks else None,
            # first start to last end: the step's (or run's) span, idle time between runs too
            "elapsed_hours": (max(ends) - min(starts)) / 3600.0 if starts and ends else None,
            "tasks": len(task_rows),
        }

    total = summarise(nodes, attempts, tasks)
    busy = busy_seconds(
        [(t["start"], t["end"]) for t in tasks if t["start"] is not None and t["end"] is not None]
    )
    total["busy_hours"] = busy / 3600.0
    total["local_workers"] = workers
    total["run_cpu_efficiency"] = (
        total["task_cpu_hours"] * 3600.0 / (busy * workers) if workers and busy > 0 else None
    )
    out = {
        "run": run.config.name,
        "steps": [],
        "total": total,
        "disk": {
            # sampled while the driver ran (twinkles.workflow.storage.DiskMonitor)
            "peak_gb": max(b for _, b in disk) / 1e9 if disk else None,
            "last_gb": disk[-1][1] / 1e9 if disk else None,
            "samples": len(disk),
            "removed_files": len(removed),
            "removed_gb": _sum([r["size"] for r in removed.values()]) / 1e9,
        },
    }
    for name in steps:
        s_nodes = [n for n in nodes if n.step == name]
        if not s_nodes:
            continue
        entry = summarise(
            s_nodes,
            [a for a in attempts if a["step"] == name],
            [t for t in tasks if t["step"] == name],
        )
        out["steps"].append({"step": name, **entry})
    return out
