"""The workflow on a test sweep, on the local executor and on a real Slurm."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import nbformat
import pytest

from twinkles.cli import main
from twinkles.workflow.contract import ParameterError
from twinkles.workflow.driver import run_pipeline
from twinkles.workflow.rundb import RunDatabase
from twinkles.workflow.status import run_report, run_status

from sweep_pipeline import FIXTURES, make_run, sweep_pipeline

EXECUTORS = ["local", pytest.param("slurm", marks=pytest.mark.slurm)]
PROVENANCE = (
    "git",
    "versions",
    "parameters",
    "reads",
    "writes",
    "host",
    "job_id",
    "wall_s",
    "cpu_s",
    "peak_rss_mb",
    "recipe_checksum",
    "attempt",
    "status",
)


@pytest.fixture
def executor_kind(request):
    if request.param == "slurm":
        request.getfixturevalue("slurm")
    return request.param


def _rows(run):
    db = RunDatabase(run.dir / "run.db")
    try:
        return {(r.step, r.data_id): r for r in db.nodes()}, db.attempts(), db.tasks()
    finally:
        db.close()


def _step(status, name):
    return next(s for s in status["steps"] if s["step"] == name)


@pytest.mark.parametrize("executor_kind", EXECUTORS, indirect=True)
def test_sweep_of_eight(tmp_path, executor_kind):
    run = make_run(tmp_path, executor_kind, workers=2)
    summary = run_pipeline(run, sweep_pipeline(), progress=False)
    assert summary.ok, summary.lines()
    notebooks = sorted((run.dir / "notebooks" / "sweep").glob("*.ipynb"))
    assert len(notebooks) == 8
    for path in notebooks:
        meta = nbformat.read(path, as_version=4).metadata["twinkles"]
        for key in PROVENANCE:
            assert key in meta, key
        assert meta["status"] == "done" and meta["cpu_s"] > 0 and meta["peak_rss_mb"] > 10
        assert meta["versions"]["papermill"] and "commit" in meta["git"]
    rows, _, tasks = _rows(run)
    sweep_rows = [r for k, r in rows.items() if k[0] == "sweep"]
    assert len(sweep_rows) == 8
    for r in sweep_rows:
        assert r.state == "done" and r.cpu_s > 0 and r.peak_rss_mb > 10 and r.wall_s > 0
        assert r.host and r.job_id and r.notebook
    if executor_kind == "slurm":
        assert all("_" in r.job_id for r in sweep_rows)  # array elements
    total = json.loads((run.dir / "repo" / "products" / "total.json").read_text())
    assert total == {"label": "total", "total": 28.0, "n": 8}
    # tasks ran 3 data ids each in one warm kernel, namespace reset in between (the recipe
    # asserts it), and measured their own CPU and wall time
    sweep_tasks = [t for t in tasks if t["step"] == "sweep"]
    assert sum(t["n_items"] for t in sweep_tasks) == 8
    assert max(t["n_items"] for t in sweep_tasks) == 3  # ids_per_task
    if executor_kind == "slurm":  # a kernel per array element
        assert all(t["kernel_starts"] == 1 for t in sweep_tasks)
    else:  # long-lived workers: a kernel per worker, kept from task to task and step to step
        assert len(tasks) >= 4 and sum(t["kernel_starts"] for t in tasks) == 2
    assert all(t["cpu_s"] > 0 and t["wall_s"] > 0 for t in sweep_tasks)
    report = run_report(run, sweep_pipeline())
    assert report["total"]["data_ids_processed"] == 9
    assert 0 < report["total"]["cpu_efficiency"] <= 1.05
    if executor_kind == "local":  # the driver records the cores it ran on
        assert report["total"]["local_workers"] == len(os.sched_getaffinity(0))
        assert 0 < report["total"]["run_cpu_efficiency"] <= 1.05
    else:
        assert report["total"]["run_cpu_efficiency"] is None


@pytest.mark.parametrize("executor_kind", EXECUTORS, indirect=True)
def test_a_failing_data_id_fails_alone(tmp_path, executor_kind):
    run = make_run(tmp_path, executor_kind, sweep={"fail_item": 3})
    summary = run_pipeline(run, sweep_pipeline(), progress=False)
    assert not summary.ok
    status = run_status(run, sweep_pipeline())
    sweep, gather = _step(status, "sweep"), _step(status, "gather")
    assert (sweep["done"], sweep["failed"], sweep["pending"]) == (7, 1, 0)
    assert gather["blocked"] == 1 and "item=3, which failed" in gather["failures"][0]["error"]
    failure = sweep["failures"][0]
    assert failure["data_id"] == "item=3" and failure["failure_class"] == "science"
    assert failure["error"] == "ValueError: item 3 is bad"
    assert failure["attempts"] == 1  # science failures are not retried
    nb = nbformat.read(failure["notebook"], as_version=4)
    assert "# compute" in nb.cells[failure["cell"]].source  # the cell that raised
    tags = [t for c in nb.cells for t in c.metadata.get("tags", [])]
    assert "papermill-error-cell-tag" in tags  # papermill's error marker is kept
    assert nb.metadata["twinkles"]["status"] == "failed"


def test_a_partial_gathering_step_runs_on_what_succeeded(tmp_path):
    run = make_run(tmp_path, sweep={"fail_item": 3})
    summary = run_pipeline(run, sweep_pipeline(partial_gather=True), progress=False)
    assert not summary.ok  # item 3 failed, and is reported
    status = run_status(run, sweep_pipeline(partial_gather=True))
    assert _step(status, "gather")["done"] == 1
    total = json.loads((run.dir / "repo" / "products" / "total.json").read_text())
    assert total["n"] == 7 and total["total"] == 28.0 - 3.0

    # every input failed: blocked, naming the step
    (tmp_path / "all").mkdir()
    run = make_run(tmp_path / "all", sweep={"fail_item": 0})
    one = sweep_pipeline(n=1, partial_gather=True)
    run_pipeline(run, one, progress=False)
    gather = _step(run_status(run, one), "gather")
    assert gather["blocked"] == 1
    assert "no sweep input succeeded" in gather["failures"][0]["error"]


def test_killed_worker_is_retried(tmp_path):
    run = make_run(tmp_path, sweep={"kill_worker_item": 5})
    summary = run_pipeline(run, sweep_pipeline(), progress=False)
    assert summary.ok, summary.lines()
    rows, attempts, _ = _rows(run)
    assert rows[("sweep", "item=5")].attempts == 2
    first = next(a for a in attempts if a["data_id"] == "item=5")
    assert first["outcome"] == "failed" and first["failure_class"] == "infrastructure"
    assert "signal 9" in first["error"]


@pytest.mark.slurm
def test_cancelled_slurm_job_is_retried(tmp_path, slurm):
    run = make_run(tmp_path, "slurm", sweep={"cancel_job_item": 2})
    summary = run_pipeline(run, sweep_pipeline(), progress=False)
    assert summary.ok, summary.lines()
    rows, attempts, _ = _rows(run)
    assert rows[("sweep", "item=2")].attempts == 2
    first = next(a for a in attempts if a["data_id"] == "item=2")
    assert first["failure_class"] == "infrastructure" and "CANCELLED" in first["error"]


def test_rerun_does_nothing_and_a_changed_parameter_reruns_what_it_affects(tmp_path):
    pipeline = sweep_pipeline()
    run = make_run(tmp_path)
    assert run_pipeline(run, pipeline, progress=False).ok
    _, attempts_before, _ = _rows(run)

    again = run_pipeline(run, pipeline, progress=False)
    assert again.counts == {"sweep": {"skipped": 8}, "gather": {"skipped": 1}}
    assert len(_rows(run)[1]) == len(attempts_before)

    run = make_run(tmp_path, gather={"label": "sum"})
    changed = run_pipeline(run, pipeline, progress=False)
    assert changed.counts == {"gather": {"done": 1}, "sweep": {"skipped": 8}}
    assert json.loads((run.dir / "repo" / "products" / "total.json").read_text())["label"] == "sum"

    run = make_run(tmp_path, sweep={"scale": 2.0}, gather={"label": "sum"})
    rescaled = run_pipeline(run, pipeline, progress=False)
    assert rescaled.counts == {"sweep": {"done": 8}, "gather": {"done": 1}}

    # a deleted output is noticed
    (run.dir / "repo" / "products" / "item_4.json").unlink()
    repaired = run_pipeline(run, pipeline, progress=False)
    assert repaired.counts == {"sweep": {"done": 1, "skipped": 7}, "gather": {"done": 1}}


def test_steps_force_and_only_failed(tmp_path):
    pipeline = sweep_pipeline()
    run = make_run(tmp_path, sweep={"fail_item": 6})
    run_pipeline(run, pipeline, progress=False)
    run = make_run(tmp_path)  # fixed: item 6 would pass now, but --steps gather alone is blocked
    only_gather = run_pipeline(run, pipeline, steps=["gather"], progress=False)
    assert only_gather.counts == {"gather": {"blocked": 1}}
    fixed = run_pipeline(run, pipeline, only_failed=True, progress=False)
    # every sweep item's parameters changed (fail_item), but --only-failed touches the failed ones
    assert fixed.counts == {"sweep": {"done": 1}, "gather": {"done": 1}}
    forced = run_pipeline(run, pipeline, steps=["gather"], force=True, progress=False)
    assert forced.counts == {"gather": {"done": 1}}


def test_unknown_or_mistyped_parameters_are_refused_before_submission(tmp_path, capsys):
    run = make_run(tmp_path, sweep={"scal": 2.0, "sleep_s": "long"})
    with pytest.raises(ParameterError) as info:
        run_pipeline(run, sweep_pipeline(), progress=False)
    text = str(info.value)
    assert "steps.sweep: sweep.ipynb: unknown parameter 'scal' (did you mean 'scale'?)" in text
    assert "steps.sweep: sweep.ipynb: parameter 'sleep_s' must be float, got 'long'" in text
    assert len(info.value.problems) == 2  # once per step, not once per data id
    assert not (run.dir / "notebooks").exists()
    assert not (run.dir / "work" / "tasks").exists()


def test_unknown_step_in_config_is_named(tmp_path):
    run = make_run(tmp_path)
    run.config_path.write_text(run.config_path.read_text() + "  gahter:\n    parameters: {}\n")
    from twinkles.config import ConfigError, load_run

    with pytest.raises(ConfigError, match=r"steps\.gahter: unknown step"):
        run_pipeline(load_run(run.config_path), sweep_pipeline(), progress=False)


def test_a_local_worker_outlives_a_notebook_that_times_out(tmp_path):
    """One worker runs every task; the notebook past its time limit fails alone (an
    infrastructure failure), its kernel is replaced, and the worker goes on with the rest."""
    run = make_run(
        tmp_path,
        sweep={"hang_item": 1},
        step_resources={"timeout_min": 0.1},
        ids_per_task=1,
        workers=1,
        max_retries=0,
    )
    summary = run_pipeline(run, sweep_pipeline(n=3), progress=False)
    assert not summary.ok
    rows, _, tasks = _rows(run)
    states = {k[1]: r.state for k, r in rows.items() if k[0] == "sweep"}
    assert states == {"item=0": "done", "item=1": "failed", "item=2": "done"}
    failure = _step(run_status(run, sweep_pipeline(n=3)), "sweep")["failures"][0]
    assert failure["failure_class"] == "infrastructure" and failure["error"].startswith("timeout")
    sweep_tasks = [t for t in tasks if t["step"] == "sweep"]
    assert len(sweep_tasks) == 3 and len({t["job_id"] for t in sweep_tasks}) == 1
    assert sum(t["kernel_starts"] for t in sweep_tasks) == 2  # the first, and its replacement


def test_notebook_timeout_is_an_infrastructure_failure(tmp_path):
    run = make_run(
        tmp_path, sweep={"sleep_s": 30.0}, step_resources={"timeout_min": 0.05}, max_retries=0
    )
    summary = run_pipeline(run, sweep_pipeline(n=1), progress=False)
    assert not summary.ok
    failure = _step(run_status(run, sweep_pipeline(n=1)), "sweep")["failures"][0]
    assert failure["failure_class"] == "infrastructure" and failure["error"].startswith("timeout")


def _driver_process(run, setup: str = "", **popen) -> subprocess.Popen:
    """The sweep pipeline's driver on ``run`` in a process of its own (exit status 130 when
    interrupted), after the Python statements ``setup``."""
    helper = os.path.dirname(__file__)
    code = (
        f"import sys; sys.path.insert(0, {helper!r});"
        "from sweep_pipeline import sweep_pipeline;"
        "from twinkles.config import load_run;"
        "from twinkles.workflow.driver import run_pipeline;"
        f"{setup}"
        f"s = run_pipeline(load_run({str(run.config_path)!r}), sweep_pipeline(), progress=False);"
        "sys.exit(130 if s.interrupted else 0)"
    )
    return subprocess.Popen([sys.executable, "-c", code], start_new_session=True, **popen)


def _wait_for_states(run, enough) -> None:
    """Poll the run database (up to 60 s) until ``enough(states of its nodes)``."""
    db_path = run.dir / "run.db"
    deadline = time.time() + 60
    while time.time() < deadline:
        states = []
        if db_path.exists():
            db = RunDatabase(db_path)
            states = [r.state for r in db.nodes()]
            db.close()
        if enough(states):
            return
        time.sleep(0.1)


def test_resume_after_the_driver_is_killed(tmp_path):
    run = make_run(tmp_path, sweep={"sleep_s": 1.5}, ids_per_task=1, workers=2)
    driver = _driver_process(run)
    # some data ids done and others in flight
    _wait_for_states(run, lambda s: s.count("done") >= 1 and s.count("running") >= 1)
    driver.send_signal(signal.SIGKILL)  # no cleanup: tasks are left running
    driver.wait()
    rows, _, _ = _rows(run)
    orphans = [r.job_id for r in rows.values() if r.state == "running"]
    assert orphans, "the driver was killed with tasks running"

    summary = run_pipeline(run, sweep_pipeline(), progress=False)
    assert summary.ok, summary.lines()
    rows, _, _ = _rows(run)
    assert all(r.state == "done" for r in rows.values()) and len(rows) == 9
    for job in orphans:  # the previous driver's tasks were stopped, not left to race
        pid = int(job.removeprefix("local-"))
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_status_and_report_commands(tmp_path, capsys, monkeypatch):
    import twinkles.workflow.spec as spec

    run = make_run(tmp_path, sweep={"fail_item": 1})
    run_pipeline(run, sweep_pipeline(), progress=False)
    monkeypatch.setattr(spec, "PIPELINE", sweep_pipeline())
    assert main(["status", str(run.dir), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [s["step"] for s in status["steps"]] == ["sweep", "gather"]
    assert set(status["steps"][0]) == {"step", "done", "failed", "blocked", "pending", "failures"}
    assert status["steps"][0]["failed"] == 1
    assert main(["status", str(run.dir)]) == 0
    text = capsys.readouterr().out
    assert "sweep item=1: failed (science cell" in text and "ValueError: item 1 is bad" in text
    assert main(["report", str(run.dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    sweep = report["steps"][0]
    assert sweep["data_ids_processed"] == 7 and sweep["data_ids_failed"] == 1
    assert sweep["success_rate"] == pytest.approx(7 / 8)
    assert sweep["cpu_hours"] > 0 and sweep["peak_rss_mb"] > 0


def test_fixture_recipes_exist():
    assert (FIXTURES / "sweep.ipynb").exists()


def test_figure_every_samples_the_figures_of_per_visit_recipes(tiny_run):
    from dataclasses import replace

    from twinkles.workflow.driver import make_plan
    from twinkles.workflow.spec import PIPELINE

    executor = tiny_run.config.executor.model_copy(update={"figure_every": 3})
    run = replace(tiny_run, config=tiny_run.config.model_copy(update={"executor": executor}))
    plan = make_plan(run, PIPELINE)
    drawn = {}
    for (step, _), node in plan.items():
        drawn.setdefault(step, []).append(node.parameters.get("figures"))
    # every third visit, the first included; run-level and per-filter steps always draw
    assert drawn["process_eimage"][:7] == [True, False, False, True, False, False, True]
    assert sum(drawn["image_difference"]) == -(-len(drawn["image_difference"]) // 3)
    assert drawn["simulate_visit"][:4] == [True, False, False, True]
    assert drawn["make_coadd"] == [None] * len(drawn["make_coadd"])
    assert drawn["validate_run"] == [None]
    # a step's own figures parameter wins
    from twinkles.config import StepConfig

    steps = {"process_eimage": StepConfig(parameters={"figures": True})}
    run = replace(run, config=run.config.model_copy(update={"steps": steps}))
    plan = make_plan(run, PIPELINE)
    assert all(n.parameters["figures"] for (s, _), n in plan.items() if s == "process_eimage")


def test_an_optional_step_belongs_to_the_runs_that_enable_it(tmp_path):
    """inject_sources runs only where ``injection.enabled``; without it, nothing depends on it."""
    from twinkles.config import load_run
    from twinkles.workflow.spec import PIPELINE

    (tmp_path / "on.yaml").write_text("injection:\n  enabled: true\n")
    (tmp_path / "off.yaml").write_text("seed: 3\n")
    on = PIPELINE.for_run(load_run(tmp_path / "on.yaml"))
    off = PIPELINE.for_run(load_run(tmp_path / "off.yaml"))
    assert "inject_sources" in [s.name for s in on.steps]
    assert "inject_sources" in on.step("validate_dia").depends
    assert "inject_sources" not in [s.name for s in off.steps]
    assert "inject_sources" not in off.step("validate_dia").depends


def test_ready_steps_go_gathering_first_then_furthest_down_the_pipeline_first():
    from twinkles.workflow.driver import submission_order
    from twinkles.workflow.spec import PIPELINE

    by_name = {s.name: s for s in PIPELINE.steps}
    ready = [
        by_name[n]
        for n in (
            "simulate_visit",
            "make_coadd",
            "process_eimage",
            "make_template",
            "associate_dia",
        )
    ]
    ordered = [s.name for s in submission_order(ready, PIPELINE)]
    # a filter's template (which frees its warps) before another filter's coadd; calibrating
    # a simulated eimage (which frees it) before simulating more
    assert ordered == [
        "associate_dia",
        "make_template",
        "make_coadd",
        "process_eimage",
        "simulate_visit",
    ]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_driver_cleanly(tmp_path, stop_signal):
    """SIGTERM, or SIGINT to a driver started in the background (SIGINT ignored, as a shell's
    ``&`` leaves it), cancels the running tasks and leaves the run ready to resume."""
    run = make_run(tmp_path, sweep={"sleep_s": 1.5}, ids_per_task=1, workers=2)
    driver = _driver_process(
        run,
        "from twinkles.cli import stop_on_signals; stop_on_signals();",
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    _wait_for_states(run, lambda s: s.count("running") >= 1)  # tasks in flight
    driver.send_signal(stop_signal)
    assert driver.wait(timeout=60) == 130
    rows, _, _ = _rows(run)
    assert not [r for r in rows.values() if r.state == "running"]
    assert any(r.state != "done" for r in rows.values())
    summary = run_pipeline(run, sweep_pipeline(), progress=False)
    assert summary.ok, summary.lines()
