"""Executed notebooks as HTML pages: the memoised sanitiser and highlighter change nothing."""

from __future__ import annotations

import nbformat
from nbconvert import HTMLExporter

from twinkles.workflow.html import _exporter, render_html

from sweep_pipeline import FIXTURES


def _executed_like(source_nb: str, value: int) -> nbformat.NotebookNode:
    """A recipe notebook with a parameter cell and outputs, as a worker leaves it."""
    nb = nbformat.read(FIXTURES / source_nb, as_version=4)
    nb.metadata["language_info"] = {"name": "python", "pygments_lexer": "ipython3"}
    nb.metadata["twinkles"] = {"status": "done", "host": "test", "wall_s": 1.25}
    code = [c for c in nb.cells if c.cell_type == "code"]
    code[0].source += f"\nitem = {value}"
    code[-1].outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{value}\n")]
    code[-1].metadata["magics_language"] = "bash"  # the one metadata key the highlighter reads
    return nb


def test_pages_are_what_nbconvert_writes(tmp_path):
    plain = HTMLExporter(template_name="basic")
    for value in (1, 2, 1):  # the third is served from the memories
        nb = _executed_like("emit.ipynb", value)
        body, _ = _exporter().from_notebook_node(nb)
        expected, _ = plain.from_notebook_node(nb)
        assert body == expected
        assert f'item</span> <span class="o">=</span> <span class="mi">{value}' in body
    page = render_html(nb, tmp_path / "page.html", "emit item=1", "notebook.css").read_text()
    assert page.startswith("<!DOCTYPE html>") and "status done, host test, wall 1.2 s" in page
    assert '<link rel="stylesheet" href="notebook.css">' in page
