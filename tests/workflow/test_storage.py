"""Ephemeral intermediates (removed once their readers are done, rebuilt when needed) and the
run's disk use, on a two-step fixture pipeline that reads and writes through the butler."""

from __future__ import annotations

import json

import yaml

from twinkles.config import ConfigError, load_run
from twinkles.datasets import dataset_types, register_dataset_type
from twinkles.workflow.driver import run_pipeline
from twinkles.workflow.rundb import RunDatabase
from twinkles.workflow.spec import Pipeline, Resources, Step
from twinkles.workflow.status import run_report
from twinkles.workflow.storage import disk_usage

from sweep_pipeline import FIXTURES

N_ITEMS = 4
if "stageProduct" not in dataset_types():  # the recipes register them in their kernels too
    register_dataset_type("stageProduct", ("item",), "stage/item_{item}.json", "json", "test")
    register_dataset_type("stageTotal", (), "stage/total.json", "json", "test total")


def stage_pipeline(audit_reads: tuple[str, ...] | bool | None = False) -> Pipeline:
    """emit (per item) -> consume (the run); with ``audit_reads`` other than False, a second
    dependant of emit, ``audit``, that declares those reads."""
    res = Resources(cpus=1, mem_gb=0.5, timeout_min=2.0)
    audit = [
        Step(
            name="audit",
            recipe=str(FIXTURES / "consume.ipynb"),
            dimension="run",
            depends=("emit",),
            reads=audit_reads,
            outputs=lambda run, did: [],
            resources=res,
        )
    ]
    return Pipeline(
        steps=[
            Step(
                name="emit",
                recipe=str(FIXTURES / "emit.ipynb"),
                dimension="item",
                outputs=lambda run, did: [],
                resources=res,
            ),
            Step(
                name="consume",
                recipe=str(FIXTURES / "consume.ipynb"),
                dimension="run",
                depends=("emit",),
                outputs=lambda run, did: [("stageTotal", {})],
                resources=res,
            ),
        ]
        + (audit if audit_reads is not False else []),
        dimensions={"item": lambda run: [{"item": i} for i in range(N_ITEMS)]},
        kernel_imports=("json",),
    )


def make_stage_run(tmp_path, consume=None, ephemeral=("stageProduct",), audit=None):
    data = {
        "executor": {"ids_per_task": 4, "poll_seconds": 0.2},
        "steps": {
            "consume": {"parameters": {"n_items": N_ITEMS, **(consume or {})}},
            **({"audit": {"parameters": audit}} if audit is not None else {}),
        },
        "storage": {"ephemeral": list(ephemeral)},
    }
    path = tmp_path / "stage.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_run(path)


def _products(run):
    return sorted(p.name for p in (run.dir / "repo" / "stage").glob("item_*.json"))


def _removed(run):
    db = RunDatabase(run.dir / "run.db")
    try:
        return db.removed()
    finally:
        db.close()


def test_intermediates_go_once_read_and_come_back_when_a_reader_runs_again(tmp_path):
    pipeline = stage_pipeline()
    run = make_stage_run(tmp_path)
    assert run_pipeline(run, pipeline, progress=False).ok
    total = json.loads((run.dir / "repo" / "stage" / "total.json").read_text())
    assert total["total"] == 2 * sum(range(N_ITEMS))
    assert _products(run) == []  # read by their only reader, then removed
    removed = _removed(run)
    assert len(removed) == N_ITEMS
    assert {r["step"] for r in removed.values()} == {"emit"}
    assert all(r["checksum"].startswith("sha256:") for r in removed.values())

    # a removed intermediate makes neither its writer nor its reader stale
    again = run_pipeline(run, pipeline, progress=False)
    assert again.counts == {"emit": {"skipped": N_ITEMS}, "consume": {"skipped": 1}}

    # a reader that must run again has its inputs rebuilt first, then removed again
    run = make_stage_run(tmp_path, consume={"label": "sum"})
    redone = run_pipeline(run, pipeline, progress=False)
    assert redone.ok, redone.lines()
    assert redone.counts == {"emit": {"done": N_ITEMS}, "consume": {"done": 1}}
    assert json.loads((run.dir / "repo" / "stage" / "total.json").read_text())["label"] == "sum"
    assert _products(run) == []

    report = run_report(run, pipeline)
    assert report["disk"]["removed_files"] == N_ITEMS
    assert report["disk"]["samples"] >= 2
    assert report["disk"]["peak_gb"] >= report["disk"]["last_gb"] > 0


def test_a_failed_reader_keeps_the_intermediates(tmp_path):
    pipeline = stage_pipeline()
    run = make_stage_run(tmp_path, consume={"fail": True})
    assert not run_pipeline(run, pipeline, progress=False).ok
    assert len(_products(run)) == N_ITEMS  # kept for the rerun of the failed reader
    assert _removed(run) == {}
    run = make_stage_run(tmp_path)
    fixed = run_pipeline(run, pipeline, progress=False)
    assert fixed.counts == {"emit": {"skipped": N_ITEMS}, "consume": {"done": 1}}
    assert _products(run) == []


def test_a_failed_dependant_keeps_them_only_if_it_may_read_them(tmp_path):
    # audit depends on emit, reads none of its products (n_items=0), and fails
    cases = [((), 0), (("stageTotal",), 0), (None, N_ITEMS), (("stageProduct",), N_ITEMS)]
    for i, (reads, kept) in enumerate(cases):
        folder = tmp_path / str(i)
        folder.mkdir()
        run = make_stage_run(folder, audit={"n_items": 0, "fail": True})
        summary = run_pipeline(run, stage_pipeline(audit_reads=reads), progress=False)
        assert summary.counts["consume"] == {"done": 1}, summary.lines()
        assert summary.counts["audit"] == {"failed": 1}, summary.lines()
        assert len(_products(run)) == kept, reads
        assert len(_removed(run)) == N_ITEMS - kept, reads


def test_kept_unless_named_and_unknown_names_are_refused(tmp_path):
    pipeline = stage_pipeline()
    run = make_stage_run(tmp_path, ephemeral=())
    assert run_pipeline(run, pipeline, progress=False).ok
    assert len(_products(run)) == N_ITEMS and _removed(run) == {}
    # turning it on later removes what every reader is done with, without running anything
    run = make_stage_run(tmp_path)
    nothing = run_pipeline(run, pipeline, progress=False)
    assert nothing.counts == {"emit": {"skipped": N_ITEMS}, "consume": {"skipped": 1}}
    assert _products(run) == []

    run = make_stage_run(tmp_path, ephemeral=("stageProdcut",))
    try:
        run_pipeline(run, pipeline, progress=False)
    except ConfigError as exc:
        assert "storage.ephemeral: 'stageProdcut' is not a dataset type" in str(exc)
    else:
        raise AssertionError("an unknown ephemeral dataset type was accepted")


def test_disk_usage_counts_allocated_blocks(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f.bin").write_bytes(b"x" * 100_000)
    (tmp_path / "link").symlink_to(tmp_path / "a" / "f.bin")
    used = disk_usage(tmp_path)
    assert 100_000 <= used < 100_000 + 3 * 4096 + 8192  # the file's blocks, not the link's target
