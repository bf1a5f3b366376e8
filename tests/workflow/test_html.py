"""Executed notebooks as HTML pages: the memoised sanitiser and highlighter, and the page written
without nbconvert's BeautifulSoup pass, change nothing but the figures' alternative text."""

from __future__ import annotations

import base64

import nbformat
from bs4 import BeautifulSoup
from nbconvert import HTMLExporter

from twinkles.workflow.html import NO_ALT_TEXT, _exporter, render_html

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


def _with_figures(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Two figure cells after the notebook's own: one labelled as recipes label them."""
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n not a real image").decode()
    for source in ("#| label: kernel-residuals\nplt.imshow(x)", "plt.plot(y)"):
        cell = nbformat.v4.new_code_cell(source)
        cell.outputs = [
            nbformat.v4.new_output("display_data", data={"image/png": png, "text/plain": "fig"})
        ]
        nb.cells.append(cell)
    return nb


def _tree_without_alt(page: str) -> tuple[BeautifulSoup, list[str]]:
    soup = BeautifulSoup(page, "html.parser")
    alts = [img.attrs.pop("alt", None) for img in soup.find_all("img")]
    return soup, alts


def test_pages_are_what_nbconvert_writes(tmp_path):
    plain = HTMLExporter(template_name="basic")
    for value in (1, 2, 1):  # the third is served from the memories
        nb = _with_figures(_executed_like("emit.ipynb", value))
        body, _ = _exporter().from_notebook_node(nb)
        expected, _ = plain.from_notebook_node(nb)
        # the same document, as a browser parses it
        ours, alts = _tree_without_alt(body)
        theirs, their_alts = _tree_without_alt(expected)
        assert ours == theirs
        assert alts == ["figure: kernel residuals", NO_ALT_TEXT]
        assert their_alts == [NO_ALT_TEXT, NO_ALT_TEXT]
        assert f'item</span> <span class="o">=</span> <span class="mi">{value}' in body
    page = render_html(nb, tmp_path / "page.html", "emit item=1", "notebook.css").read_text()
    assert page.startswith("<!DOCTYPE html>") and "status done, host test, wall 1.2 s" in page
    assert '<link rel="stylesheet" href="notebook.css">' in page
    assert 'alt="figure: kernel residuals"' in page
