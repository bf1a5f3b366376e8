"""Recipes, executed by papermill on the tiny run."""

from __future__ import annotations

import json

import nbformat
import numpy as np
import papermill
import pytest
from astropy.io import fits

from conftest import REPO

pytestmark = pytest.mark.recipe
COOKBOOK = REPO / "cookbook"


def _figures(nb) -> int:
    return sum(
        "image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", [])
    )


def test_recipes_are_committed_clean_with_a_parameters_cell():
    for path in sorted(COOKBOOK.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name
        tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1, path.name
        assert nb.cells[0].cell_type == "markdown" and nb.cells[0].source.startswith("# ")


def test_simulate_visit_recipe(tiny_run, tmp_path):
    visit = 2
    eimage = tiny_run.butler.path("eimage", visit=visit)
    before = fits.getdata(eimage)
    out = tmp_path / "simulate_visit.ipynb"
    papermill.execute_notebook(
        str(COOKBOOK / "simulate_visit.ipynb"),
        str(out),
        parameters={"run_dir": str(tiny_run.dir), "visit": visit},
        cwd=str(tmp_path),
        progress_bar=False,
    )
    nb = nbformat.read(out, as_version=4)
    assert _figures(nb) >= 4
    # the kernel, another process, draws the same pixels from the same seed
    assert np.array_equal(fits.getdata(eimage), before)
    truth = json.loads(tiny_run.butler.path("eimageTruth", visit=visit).read_text())
    assert truth["visit"] == visit
