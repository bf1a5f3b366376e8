"""A long-lived local worker (``task.serve``): tasks read from its input run one after the
other in one kernel, and a task that breaks outside its notebooks does not end the worker."""

from __future__ import annotations

import json
import subprocess
import sys

from twinkles.workflow.environment import task_environment
from twinkles.workflow.records import (
    ItemResult,
    TaskCommon,
    TaskRecord,
    TaskSpec,
    WorkItem,
    read_record,
)
from twinkles.workflow.task import WORKER_ENDED

from sweep_pipeline import FIXTURES


def _spec(tmp_path, task_id: str, item: int, result_dir) -> str:
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    work = WorkItem(
        step="sweep",
        data_id=f"item={item}",
        recipe=str(FIXTURES / "sweep.ipynb"),
        parameters={"run_dir": str(run_dir), "item": item},
        notebook=str(run_dir / "notebooks" / f"item={item}.ipynb"),
        outputs=[str(run_dir / "repo" / "products" / f"item_{item}.json")],
        attempt=1,
        timeout_s=120.0,
        cwd=str(run_dir),
        result=str(result_dir / f"item={item}.json"),
    )
    common = TaskCommon("tok", {"commit": "f00", "dirty": False}, {"twinkles": "0"})
    spec = TaskSpec(task_id, 1, "warm", ["json"], common, [work], str(tmp_path / f"{task_id}.r"))
    spec.write(tmp_path / f"{task_id}.json")
    return str(tmp_path / f"{task_id}.json")


def test_a_worker_runs_tasks_in_turn_and_survives_a_broken_one(tmp_path):
    # the first task's result would go under a file: writing it fails after the notebook
    # ran, outside any notebook
    (tmp_path / "blocker").write_text("")
    broken = _spec(tmp_path, "t-1", 1, tmp_path / "blocker")
    (tmp_path / "results").mkdir()
    good = [_spec(tmp_path, f"t-{k}", k, tmp_path / "results") for k in (2, 3)]
    requests = [f"{broken}\t{tmp_path / 't-1.log'}\n"] + [f"{p}\n" for p in good]
    worker = subprocess.run(
        [sys.executable, "-m", "twinkles.workflow.task", "--serve"],
        input="".join(requests),
        capture_output=True,
        text=True,
        env=task_environment(1),
        timeout=300,
    )
    assert worker.returncode == 0, worker.stderr
    assert worker.stdout.split("\n")[:-1] == [f"{WORKER_ENDED} t-{k}" for k in (1, 2, 3)]
    log = (tmp_path / "t-1.log").read_text()
    assert "FileExistsError" in log and "blocker" in log
    assert read_record(TaskRecord, tmp_path / "t-1.r") is None  # it never finished
    records = [read_record(TaskRecord, tmp_path / f"t-{k}.r") for k in (2, 3)]
    # one kernel for both: the first task started it (and the broken one before them)
    assert [r.kernel_starts for r in records] == [0, 0]
    assert all(r.cpu_s > 0 and r.n_items == 1 for r in records)
    for k in (2, 3):
        result = read_record(ItemResult, tmp_path / "results" / f"item={k}.json")
        assert result.ok and result.kernel == "warm" and result.cpu_s > 0
        product = tmp_path / "run" / "repo" / "products" / f"item_{k}.json"
        assert json.loads(product.read_text()) == {"item": k, "value": float(k)}
