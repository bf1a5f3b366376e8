"""A data release you can trust, with the real recipes on the tiny run.

One driver per run directory; gathering steps and the catalog database take what the run
database calls done, never whatever files exist; provenance and the incremental check come
from what the recipes actually read; a driver killed mid-task leaves nothing finished to run
again; refusals come before the run directory is touched; the local and Slurm executors give
the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest
import yaml

from twinkles.config import ConfigError, Run, load_run
from twinkles.workflow.contract import ParameterError
from twinkles.workflow.driver import run_pipeline
from twinkles.workflow.rundb import RunDatabase

from conftest import copy_config


def copy_run(run: Run, dest: Path) -> Run:
    """A copy of a run (its configuration and directory) under ``dest``: run directories
    are relocatable (recorded paths are relative to them)."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(run.config_path, dest / run.config_path.name)
    shutil.copytree(run.dir, dest / run.dir.name, symlinks=True)
    return load_run(dest / run.config_path.name)


def simulated_copy(run: Run, dest: Path) -> Run:
    """A copy of a run as it was just after its simulation: its sky and eimages, and in its
    run database only the simulate_visit nodes (the shared tiny run is processed further by
    other fixtures)."""
    copy = copy_run(run, dest)
    for name in ("notebooks", "work", "logs"):
        shutil.rmtree(copy.dir / name, ignore_errors=True)
    keep = {"sim", "truth", "refcat", "eimage"}
    for folder in (copy.dir / "repo").iterdir():
        if folder.is_dir() and folder.name not in keep:
            shutil.rmtree(folder)
    shutil.rmtree(copy.dir / "validation", ignore_errors=True)
    db = RunDatabase(copy.dir / "run.db")
    try:
        with db.transaction() as conn:
            conn.execute("DELETE FROM nodes WHERE step != 'simulate_visit'")
            conn.execute("DELETE FROM attempts")
    finally:
        db.close()
    return copy


def with_parameters(run: Run, step: str, **parameters) -> Run:
    """The run with a step's recipe parameters changed in its configuration."""
    data = yaml.safe_load(run.config_path.read_text())
    data.setdefault("steps", {}).setdefault(step, {}).setdefault("parameters", {}).update(
        parameters
    )
    run.config_path.write_text(yaml.safe_dump(data))
    (run.dir / "config.yaml").unlink(missing_ok=True)
    return load_run(run.config_path)


def rows_of(run: Run):
    db = RunDatabase(run.dir / "run.db")
    try:
        return {(r.step, r.data_id): r for r in db.nodes()}, db.attempts()
    finally:
        db.close()


def driver_process(run: Run, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "twinkles.cli", "run", str(run.config_path), "-q", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("timed out")


# --- one driver per run directory -------------------------------------------------------------


@pytest.mark.slow
def test_a_second_driver_is_refused_and_the_first_completes(tiny_run, tmp_path):
    run = simulated_copy(tiny_run, tmp_path)
    visits = ["1", "2", "3", "4"]
    first = driver_process(run, "--steps", "process_eimage", "--visits", *visits)
    lock = run.dir / "run.lock"
    wait_for(lambda: lock.exists() and lock.read_text().strip())
    second = subprocess.run(
        [sys.executable, "-m", "twinkles.cli", "run", str(run.config_path), "-q"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 2
    holder = json.loads(lock.read_text())
    assert f"is being run by pid {first.pid} on {holder['host']}" in second.stderr
    # status reads the run meanwhile
    status = subprocess.run(
        [sys.executable, "-m", "twinkles.cli", "status", str(run.dir)], capture_output=True
    )
    assert status.returncode == 0
    assert first.wait(timeout=300) == 0, first.stderr.read()
    rows, attempts = rows_of(run)
    mine = [a for a in attempts if a["step"] == "process_eimage"]
    assert len(mine) == len(visits)  # attempts == nodes: nothing ran twice
    assert all(rows[("process_eimage", f"visit={v}")].state == "done" for v in visits)
    assert lock.read_text() == ""  # released


# --- gathering from the run database ----------------------------------------------------------


@pytest.mark.slow
def test_a_failed_rerun_is_left_out_of_the_coadd_and_the_database(tiny_full, tmp_path):
    from twinkles.catalogs import CatalogDatabase, IngestTask
    from twinkles.catalogs.queries import visits as ccd_visits

    run = copy_run(tiny_full, tmp_path)
    visit_table = run.butler.get("visitTable")
    band = str(visit_table["filter"][0])
    bad = [int(v) for v in visit_table["obsHistID"][visit_table["filter"] == band][:2]]
    for v in bad:  # corrupt the eimages, as a disk error or a bad copy would
        path = run.butler.path("eimage", visit=v)
        path.write_bytes(path.read_bytes()[:5000])
    summary = run_pipeline(
        run, steps=["process_eimage"], force=True, where={"visit": bad}, progress=False
    )
    assert summary.counts["process_eimage"] == {"failed": 2}
    for v in bad:  # the failed attempt left no calexp behind for anyone to read
        assert not run.butler.path("calexp", visit=v).exists()

    summary = run_pipeline(run, steps=["make_skymap", "make_coadd"], force=True, progress=False)
    assert summary.ok, summary.lines()
    coadd = run.butler.get("deepCoadd_summary", filter=band)
    assert not set(bad) & set(coadd["visits"])
    assert sorted(coadd["missing_calexp"]) == sorted(bad)
    for v in bad:
        assert "process_eimage" in coadd["left_out"][str(v)]
        assert "failed" in coadd["left_out"][str(v)]

    database = CatalogDatabase.for_run(run)
    result = IngestTask().run(run, database)
    assert sorted(result.missing) == sorted(f"visit={v}" for v in bad)
    assert sorted(result.withdrawn) == sorted(result.missing)  # loaded before, now deleted
    ingested = set(np.asarray(ccd_visits(database, run.config.name)["ccdVisitId"]).tolist())
    assert not set(bad) & ingested
    assert len(ingested) == len(visit_table) - len(bad)


@pytest.mark.slow
def test_a_stale_product_is_hidden_from_gathering_steps(tiny_full, tmp_path):
    """A forced_src whose calexp was redone differently since is stale: the run does not
    vouch for it until forced_photometry runs again."""
    from twinkles.files import INVALID_ENV

    run = copy_run(tiny_full, tmp_path)
    visit = int(run.butler.get("visitTable")["obsHistID"][0])
    run = with_parameters(run, "process_eimage", detection_threshold=7.0)
    summary = run_pipeline(run, steps=["process_eimage"], where={"visit": [visit]}, progress=False)
    assert summary.ok and summary.counts["process_eimage"] == {"done": 1}
    invalid = json.loads((run.dir / "work" / "invalid.json").read_text())
    forced = str(run.butler.path("forced_src", visit=visit))
    assert forced in invalid and "is stale: its input" in invalid[forced]
    assert str(run.butler.path("forced_src", visit=visit + 1)) not in invalid
    os.environ[INVALID_ENV] = str(run.dir / "work" / "invalid.json")
    try:
        assert not run.butler.exists("forced_src", visit=visit)
        assert run.butler.exists("forced_src", visit=visit + 1)
        with pytest.raises(FileNotFoundError, match=r"no usable forced_src dataset .* stale"):
            run.butler.get("forced_src", visit=visit)
    finally:
        del os.environ[INVALID_ENV]


def test_declared_reads_cover_what_the_recipes_read_from_their_dependencies(tiny_full):
    """A step that declares what it reads (so ephemeral files need not wait for it) read
    nothing else its dependencies wrote, in every node of the tiny run."""
    from twinkles.workflow.spec import PIPELINE

    db = RunDatabase(tiny_full.dir / "run.db")
    try:
        rows = [r for r in db.nodes() if r.state == "done"]
    finally:
        db.close()
    written: dict[str, set[str]] = {}
    for row in rows:
        written.setdefault(row.step, set()).update(
            w["dataset"] for w in json.loads(row.writes or "[]") if w.get("dataset")
        )
    declared = [s for s in PIPELINE.steps if s.reads is not None]
    assert declared, "no step declares what it reads"
    for step in declared:
        upstream = set().union(*(written.get(d, set()) for d in step.depends))
        assert set(step.reads) <= upstream, (step.name, set(step.reads) - upstream)
        nodes = [r for r in rows if r.step == step.name]
        assert nodes, step.name
        for row in nodes:
            read = {r["dataset"] for r in json.loads(row.reads or "[]")} & upstream
            assert read <= set(step.reads), (step.name, read - set(step.reads))


# --- provenance from what recipes read --------------------------------------------------------


@pytest.mark.slow
def test_a_rebuilt_template_makes_the_difference_images_stale(tiny_dia, tmp_path):
    run = copy_run(tiny_dia, tmp_path)
    visits = run.butler.get("visitTable")
    band = str(visits["filter"][0])
    template = run.butler.path("goodSeeingCoadd", filter=band)
    notebook = run.dir / "notebooks" / "image_difference" / f"visit={visits['obsHistID'][0]}.ipynb"
    meta = nbformat.read(notebook, as_version=4).metadata["twinkles"]
    relative = str(template.relative_to(run.dir))
    assert meta["reads"][relative].startswith("sha256:")  # declared nowhere: it was read
    assert relative not in meta["writes"]
    before = meta["reads"][relative]
    # nothing changed: nothing runs
    assert run_pipeline(run, steps=["image_difference"], progress=False).counts == {
        "image_difference": {"skipped": len(visits)}
    }
    # one band's template rebuilt from more visits by another invocation: the difference
    # images of that band, and only those, read something that changed
    run = with_parameters(run, "make_template", min_visits=3)
    rebuilt = run_pipeline(run, steps=["make_template"], where={"filter": [band]}, progress=False)
    assert rebuilt.counts["make_template"] == {"done": 1}
    summary = run_pipeline(run, steps=["image_difference"], progress=False)
    assert summary.ok, summary.lines()
    in_band = int(np.sum(visits["filter"] == band))
    assert summary.counts["image_difference"] == {"done": in_band, "skipped": len(visits) - in_band}
    meta = nbformat.read(notebook, as_version=4).metadata["twinkles"]
    assert meta["reads"][relative] != before
    assert meta["reads"][relative] == "sha256:" + hashlib.sha256(template.read_bytes()).hexdigest()


# --- exact resume -----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_killed_driver_leaves_nothing_finished_to_run_again(tiny_run, tmp_path):
    run = simulated_copy(tiny_run, tmp_path)
    visits = ["1", "2", "3", "4", "5", "6", "7", "8"]
    first = driver_process(run, "--steps", "process_eimage", "--visits", *visits)
    results = run.dir / "work" / "results" / "process_eimage"

    def finished() -> list[str]:
        out = []
        for path in results.glob("*.json") if results.exists() else []:
            try:
                if json.loads(path.read_text())["status"] == "done":
                    out.append(path.stem)
            except (json.JSONDecodeError, KeyError):
                continue
        return out

    wait_for(lambda: len(finished()) >= 2)
    os.kill(first.pid, signal.SIGKILL)  # the driver only: its tasks go on, then are stopped
    first.wait()
    done_before = set(finished())
    rows, _ = rows_of(run)
    assert any(r.state == "running" for r in rows.values())
    # a worker killed mid-notebook leaves its temporary notebook behind
    (run.dir / "notebooks" / "process_eimage" / ".visit=99.12345.tmp.ipynb").write_text("{}")

    summary = run_pipeline(
        run, steps=["process_eimage"], where={"visit": [int(v) for v in visits]}, progress=False
    )
    assert summary.ok, summary.lines()
    rows, attempts = rows_of(run)
    per_node: dict[str, int] = {}
    for a in attempts:
        per_node[a["data_id"]] = per_node.get(a["data_id"], 0) + 1
    for data_id in done_before:
        # finished inside the dead driver's task: kept, not run again
        assert per_node[data_id] == 1, data_id
    assert all(r.state == "done" for k, r in rows.items() if k[0] == "process_eimage")
    assert not list((run.dir / "notebooks").glob("*/.*.tmp.ipynb"))


# --- refusals before anything is created ------------------------------------------------------


@pytest.mark.parametrize(
    "change, where, key",
    [
        ({}, {"visit": [999]}, "--visits: [999] are not visits of the run"),
        ({"truth": {"star_density": 1e15}}, None, "truth.star_density: about"),
        ({"steps": {"process_eimage": {"mem_gb": 1e12}}}, None, "steps.process_eimage.mem_gb"),
        ({"steps": {"process_eimage": {"cpus": 200}}}, None, "steps.process_eimage.cpus"),
        ({"database": {"url": "file:///etc/passwd"}}, None, "database.url"),
    ],
)
def test_refusals_name_the_key_and_leave_the_run_directory_untouched(tmp_path, change, where, key):
    config = copy_config("tiny", tmp_path)
    data = yaml.safe_load(config.read_text())
    for section, values in change.items():
        data.setdefault(section, {}).update(values)
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        run_pipeline(load_run(config), where=where, progress=False)
    assert key in str(info.value)
    assert not (tmp_path / "tiny").exists()


def test_a_bad_recipe_parameter_is_refused_before_the_run_directory_exists(tmp_path):
    config = copy_config("tiny", tmp_path)
    data = yaml.safe_load(config.read_text())
    data["steps"] = {"process_eimage": {"parameters": {"detection_threshold": "high"}}}
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(ParameterError, match="detection_threshold' must be float"):
        run_pipeline(load_run(config), progress=False)
    assert not (tmp_path / "tiny").exists()


# --- a blank sky ------------------------------------------------------------------------------


def test_a_blank_sky_fails_with_no_psf_star_candidates():
    from twinkles.detection.detect import DetectionTask
    from twinkles.image import Exposure
    from twinkles.psf.determine import PsfError, PsfTask

    rng = np.random.default_rng(1)
    sky = rng.normal(0.0, 30.0, (200, 200)).astype(np.float32)
    exposure = Exposure(
        image=sky,
        mask=np.zeros(sky.shape, np.int32),
        variance=np.full(sky.shape, 900.0, np.float32),
        metadata={"visit": 7},
    )
    detections = DetectionTask().run(exposure).sources
    with pytest.raises(PsfError, match=r"visit 7: no PSF star candidates \(\d+ detections"):
        PsfTask().run(exposure, detections)


# --- the same bytes from both executors -------------------------------------------------------


def _product_checksums(run: Run, folders: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for folder in folders:
        for path in sorted((run.dir / "repo" / folder).glob("*")):
            if path.suffix in (".fits", ".parquet") and not path.name.startswith("."):
                out[str(path.relative_to(run.dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.mark.slurm
@pytest.mark.slow
def test_local_and_slurm_products_are_identical(tiny_dia, tmp_path, slurm):
    """Templates and difference images (where the executors differed, from threads) made on
    Slurm are byte for byte the local ones."""
    steps = ["make_template", "image_difference"]
    visits = tiny_dia.butler.get("visitTable")
    band = str(visits["filter"][0])
    where = {
        "filter": [band],
        "visit": [int(v) for v in visits["obsHistID"][visits["filter"] == band]],
    }
    local = _product_checksums(tiny_dia, ("template", "diff"))
    assert any(f"template_{band}" in p for p in local) and any("diffexp_" in p for p in local)
    run = copy_run(tiny_dia, tmp_path)
    summary = run_pipeline(
        run, executor="slurm", steps=steps, force=True, where=where, progress=False
    )
    # the warps went once the template that reads them was made (ephemeral): forcing the
    # template makes its filter's coadd step write them again first
    assert summary.counts == {
        "make_coadd": {"done": 1},
        "make_template": {"done": 1},
        "image_difference": {"done": 4},
    }
    assert summary.ok, summary.lines()
    rows, _ = rows_of(run)
    rerun = [("make_template", f"filter={band}")]
    rerun += [("image_difference", f"visit={v}") for v in where["visit"]]
    assert all(not rows[k].job_id.startswith("local-") for k in rerun)  # Slurm array elements
    assert _product_checksums(run, ("template", "diff")) == local
