"""One recipe on one data id outside the workflow (``twinkles recipe run``), and JupyterLab for
the people who edit recipes (``make lab``): the server starts headless, lists the ``twinkles``
kernel, and a recipe whose parameters cell was edited runs in that kernel.

Both write into a copy of the tiny run, so the session's shared tiny run is left as the
workflow made it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from twinkles.config import Run, load_run
from twinkles.errors import TwinklesError
from twinkles.workflow.contract import ParameterError
from twinkles.workflow.manual import run_recipe

from conftest import REPO, _service_missing

LAB_VENV = REPO / ".venv-lab"
VISIT = 3

pytestmark = [pytest.mark.slow, pytest.mark.recipe]


@pytest.fixture(scope="module")
def run_copy(tiny_run: Run, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """A copy of the simulated tiny run (its configuration beside its directory)."""
    dest = tmp_path_factory.mktemp("manual") / "runs"
    shutil.copytree(tiny_run.config_path.parent, dest)
    return load_run(dest / tiny_run.config_path.name)


def _calexp(run: Run, visit: int) -> Path:
    return run.butler.path("calexp", visit=visit)


def _workflow_record(run: Run, visit: int) -> tuple:
    """The workflow's notebook of a visit (its bytes, if any) and its run-database row."""
    from twinkles.workflow.rundb import RunDatabase

    notebook = run.dir / "notebooks" / "process_eimage" / f"visit={visit}.ipynb"
    db = RunDatabase(run.dir / "run.db")
    try:
        row = db.node("process_eimage", f"visit={visit}")
    finally:
        db.close()
    return (notebook.read_bytes() if notebook.exists() else None), row


def test_recipe_run_executes_one_visit_with_its_provenance(run_copy: Run):
    workflow_before = _workflow_record(run_copy, VISIT)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "twinkles.cli",
            "recipe",
            "run",
            str(run_copy.config_path),
            "process_eimage",
            "--visit",
            str(VISIT),
            "-p",
            "figures",
            "false",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    notebook = run_copy.dir / "manual" / "process_eimage" / f"visit={VISIT}.ipynb"
    assert f"executed notebook: {notebook}" in result.stdout
    meta = nbformat.read(notebook, as_version=4).metadata["twinkles"]
    assert meta["status"] == "done"
    assert meta["parameters"] == {
        "run_dir": str(run_copy.dir.resolve()),
        "visit": VISIT,
        "figures": False,
    }
    assert meta["recipe"].endswith("cookbook/process_eimage.ipynb") and meta["recipe_checksum"]
    assert meta["git"]["commit"] and meta["versions"]["twinkles"]
    calexp = str(_calexp(run_copy, VISIT).relative_to(run_copy.dir))
    assert calexp in meta["writes"] and meta["writes"][calexp]
    assert any(path.startswith("repo/eimage") for path in meta["reads"])
    # outside the workflow: neither its notebooks nor its database know of it
    assert _workflow_record(run_copy, VISIT) == workflow_before


def test_what_it_writes_is_the_workflows_bit_for_bit(run_copy: Run, tiny_processed: Run):
    """The workflow's thread and malloc settings, and its parameters for that data id."""
    visit = VISIT + 2
    result = run_recipe(run_copy, "process_eimage", {"visit": visit})
    assert result.ok, result.record.error
    for dataset in ("calexp", "src"):
        ours = run_copy.butler.path(dataset, visit=visit)
        assert ours.read_bytes() == tiny_processed.butler.path(dataset, visit=visit).read_bytes()


def test_a_failed_edit_keeps_the_last_good_outputs(run_copy: Run, tmp_path: Path):
    calexp = _calexp(run_copy, VISIT)
    if not calexp.exists():
        run_recipe(run_copy, "process_eimage", {"visit": VISIT}, {"figures": False})
    before = calexp.read_bytes()
    recipe = nbformat.read(REPO / "cookbook" / "process_eimage.ipynb", as_version=4)
    code = [c for c in recipe.cells if c.cell_type == "code"]
    code[-1].source = 'raise ValueError("an edit that breaks")'
    edited = tmp_path / "process_eimage.ipynb"
    nbformat.write(recipe, edited)
    result = run_recipe(
        run_copy,
        "process_eimage",
        {"visit": VISIT},
        {"figures": False},
        recipe=edited,
        notebook=tmp_path / "out.ipynb",
    )
    assert not result.ok
    assert result.record.failure_class == "science"
    assert "an edit that breaks" in result.record.error
    assert calexp.read_bytes() == before


def test_bad_requests_are_refused_before_anything_runs(run_copy: Run):
    with pytest.raises(TwinklesError, match="no data id visit=999; it has visit=1"):
        run_recipe(run_copy, "process_eimage", {"visit": 999})
    with pytest.raises(TwinklesError, match="unknown step 'process_image'"):
        run_recipe(run_copy, "process_image", {"visit": VISIT})
    with pytest.raises(ParameterError, match="did you mean 'figures'"):
        run_recipe(run_copy, "process_eimage", {"visit": VISIT}, {"figure": False})
    with pytest.raises(TwinklesError, match="no such notebook"):
        run_recipe(run_copy, "process_eimage", {"visit": VISIT}, recipe="nowhere.ipynb")


@pytest.fixture(scope="module")
def lab() -> Path:
    """The JupyterLab environment ``make lab-setup`` makes (``make test`` makes it first)."""
    if not (LAB_VENV / ".installed-stamp").exists():
        _service_missing("JupyterLab", f"no {LAB_VENV}: run make lab-setup")
    return LAB_VENV


def _in_project_venv(python: str) -> bool:
    """Whether an interpreter path is the project's ``.venv`` (its folder, not the binary,
    which a venv links to the system's Python)."""
    return Path(python).parent.parent.resolve() == (REPO / ".venv").resolve()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read()


def test_the_twinkles_kernel_is_the_projects_python(lab: Path):
    listed = subprocess.run(
        [lab / "bin" / "jupyter", "kernelspec", "list", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    specs = json.loads(listed.stdout)["kernelspecs"]
    for name in ("twinkles", "python3"):  # python3: the name the recipes carry
        assert _in_project_venv(specs[name]["spec"]["argv"][0]), name


def test_make_lab_starts_headless_and_offers_the_twinkles_kernel(lab: Path):
    port, token = _free_port(), "twinkles-test"
    server = subprocess.Popen(
        [
            "make",
            "--no-print-directory",
            "lab",
            f"LAB_ARGS=--no-browser --port={port} --ServerApp.token={token}",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                status, _ = _get(f"{base}/api/status?token={token}")
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    output = server.stdout.read().decode() if server.stdout else ""
                    pytest.fail(f"JupyterLab did not start:\n{output[-3000:]}")
                time.sleep(0.5)
        assert status == 200
        _, body = _get(f"{base}/api/kernelspecs?token={token}")
        assert "twinkles" in json.loads(body)["kernelspecs"]
        status, page = _get(f"{base}/lab/tree/cookbook?token={token}")
        assert status == 200 and b"JupyterLab" in page
        _, body = _get(f"{base}/api/contents/cookbook?token={token}")
        names = {entry["name"] for entry in json.loads(body)["content"]}
        assert "process_eimage.ipynb" in names
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def test_a_recipe_with_its_parameters_cell_edited_runs_in_the_twinkles_kernel(
    lab: Path, run_copy: Run, tmp_path: Path
):
    """As a person does in Lab: open a recipe, edit its parameters cell, run every cell; the
    front end's environment (not the project's) starts the kernel."""
    recipe = nbformat.read(REPO / "cookbook" / "process_eimage.ipynb", as_version=4)
    cell = next(c for c in recipe.cells if "parameters" in c.metadata.get("tags", []))
    cell.source += (
        f"\nrun_dir = {str(run_copy.dir.resolve())!r}\nvisit = {VISIT + 1}\nfigures = False\n"
    )
    recipe.cells.append(nbformat.v4.new_code_cell("import sys\nprint(sys.executable)"))
    edited = tmp_path / "process_eimage.ipynb"
    nbformat.write(recipe, edited)
    executed = tmp_path / "executed.ipynb"
    script = textwrap.dedent(
        f"""
        import nbclient, nbformat
        nb = nbformat.read({str(edited)!r}, as_version=4)
        nbclient.NotebookClient(nb, kernel_name="twinkles", timeout=600,
                                resources={{"metadata": {{"path": {str(tmp_path)!r}}}}}).execute()
        nbformat.write(nb, {str(executed)!r})
        """
    )
    subprocess.run([lab / "bin" / "python", "-c", script], check=True, timeout=900, cwd=tmp_path)
    out = nbformat.read(executed, as_version=4)
    printed = "".join(o.get("text", "") for o in out.cells[-1].outputs)
    assert _in_project_venv(printed.strip())
    assert _calexp(run_copy, VISIT + 1).exists()
