"""The typed records between the driver and its workers: written and read back with their
types; anything else reads as None (a result that never came)."""

from __future__ import annotations

import json

from twinkles.workflow.records import (
    ItemResult,
    TaskCommon,
    TaskRecord,
    TaskSpec,
    WorkItem,
    read_record,
    write_record,
)


def _spec(tmp_path) -> TaskSpec:
    item = WorkItem(
        step="process_eimage",
        data_id="visit=3",
        recipe="/cookbook/process_eimage.ipynb",
        parameters={"run_dir": "/runs/tiny", "visit": 3, "figures": False},
        notebook="/runs/tiny/notebooks/process_eimage/visit=3.ipynb",
        outputs=["/runs/tiny/repo/calexp/calexp_00000003.fits"],
        attempt=2,
        timeout_s=1200.0,
        cwd="/runs/tiny",
        result=str(tmp_path / "visit=3.json"),
    )
    common = TaskCommon("abc123", {"commit": "f00", "dirty": False}, {"twinkles": "0.1.0"})
    return TaskSpec("abc123-00001", 1, "warm", ["numpy"], common, [item], str(tmp_path / "t.json"))


def test_a_task_spec_reads_back_as_written(tmp_path):
    spec = _spec(tmp_path)
    spec.write(tmp_path / "spec.json")
    back = TaskSpec.read(tmp_path / "spec.json")
    assert back == spec
    assert isinstance(back.common, TaskCommon) and isinstance(back.items[0], WorkItem)
    assert back.items[0].parameters["figures"] is False


def test_results_read_back_or_read_as_none(tmp_path):
    result = ItemResult("abc123", "process_eimage", "visit=3", 2, "failed", "science", 7, "boom")
    write_record(result, tmp_path / "r.json")
    back = read_record(ItemResult, tmp_path / "r.json")
    assert back == result and not back.ok
    assert read_record(ItemResult, tmp_path / "missing.json") is None
    (tmp_path / "truncated.json").write_text('{"token": "abc')
    assert read_record(ItemResult, tmp_path / "truncated.json") is None
    # another shape: a task record is not an item result, and keys must be known
    task = TaskRecord("abc123", "abc123-00001", None, "host", 0.0, 1.0, 1.0, 0.9, 300.0, 1, 1)
    write_record(task, tmp_path / "task.json")
    assert read_record(ItemResult, tmp_path / "task.json") is None
    assert read_record(TaskRecord, tmp_path / "task.json") == task
    data = json.loads((tmp_path / "r.json").read_text())
    (tmp_path / "extra.json").write_text(json.dumps({**data, "surprise": 1}))
    assert read_record(ItemResult, tmp_path / "extra.json") is None
