"""Executed notebooks as figure sources.

A recipe labels a figure the way MyST and Quarto do, with a first line ``#| label: NAME`` in
the cell that draws it; the executed notebook's ``image/png`` output of that cell is the
figure. :func:`labelled_figures` finds them; :func:`executed_notebook` finds a step's
notebook for a data id and refuses one whose execution failed; :func:`find_figure` finds a
step's figure by label. (Notebooks as HTML pages: :mod:`twinkles.workflow.html`.)
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat

from twinkles.errors import TwinklesError

__all__ = [
    "Figure",
    "NoteError",
    "executed_notebook",
    "find_figure",
    "labelled_figures",
    "natural_key",
]

_LABEL = re.compile(r"^#\|\s*label:\s*([A-Za-z0-9_.-]+)\s*$")


class NoteError(TwinklesError):
    """The Note cannot be built as asked: a missing label, a failed notebook, a missing number."""


@dataclass(frozen=True)
class Figure:
    """A labelled figure of an executed notebook."""

    label: str
    cell_index: int
    png: bytes


def labelled_figures(nb: nbformat.NotebookNode) -> dict[str, Figure]:
    """The labelled figures of an executed notebook, by label.

    A label whose cell has no PNG output (it did not run, or drew nothing) is left out; a
    label used twice is an error.
    """
    out: dict[str, Figure] = {}
    for index, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        first = cell.source.split("\n", 1)[0]
        match = _LABEL.match(first)
        if not match:
            continue
        label = match.group(1)
        if label in out:
            raise NoteError(f"figure label {label!r} is used by two cells")
        pngs = [
            o["data"]["image/png"]
            for o in cell.get("outputs", [])
            if "image/png" in o.get("data", {})
        ]
        if pngs:
            out[label] = Figure(label, index, base64.b64decode(pngs[-1]))
    return out


def natural_key(data_id: str) -> tuple:
    """Sort key of data ids: ``visit=2`` before ``visit=10``."""
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", data_id))


def executed_notebook(
    run_dir: Path, step: str, data_id: str | None = None
) -> tuple[Path, nbformat.NotebookNode]:
    """A step's executed notebook: for ``data_id``, or the first (in natural order) that succeeded.

    Raises
    ------
    NoteError
        The step has no executed notebook, the one asked for is missing, or it failed (its
        provenance says so, or a cell holds an error).
    """
    folder = Path(run_dir) / "notebooks" / step
    if data_id is not None:
        path = folder / f"{data_id}.ipynb"
        if not path.exists():
            raise NoteError(f"no executed notebook {path}: has step {step} run for {data_id}?")
        nb = nbformat.read(path, as_version=4)
        _require_success(path, nb)
        return path, nb
    return _first_success(folder, step, lambda nb: nb, "")


def find_figure(
    run_dir: Path, step: str, label: str, data_id: str | None = None
) -> tuple[Path, Figure]:
    """The figure ``label`` of a step's executed notebook.

    For ``data_id``, or else from the first notebook (in natural order) that succeeded and
    drew it: per-visit recipes draw their figures for a sample of the visits
    (``executor.figure_every``).

    Raises
    ------
    NoteError
        The notebook asked for is missing or failed, or no successful notebook of the step has
        the label.
    """
    if data_id is not None:
        path, nb = executed_notebook(run_dir, step, data_id)
        figures = labelled_figures(nb)
        if label not in figures:
            have = ", ".join(sorted(figures)) or "none"
            raise NoteError(
                f"notebook {path} has no figure labelled {label!r} (labelled figures there: {have})"
            )
        return path, figures[label]
    return _first_success(
        Path(run_dir) / "notebooks" / step,
        step,
        lambda nb: labelled_figures(nb).get(label),
        f"no successful notebook of step {step} has a figure labelled {label!r}",
    )


def executed_notebooks(folder: Path, suffix: str = ".ipynb") -> list[Path]:
    """The executed notebooks (or their pages, ``suffix`` ``.html``) in ``folder``, in natural
    order; a notebook being written (``.<data id>.<pid>.tmp.ipynb``) is never one of them."""
    return sorted(
        (p for p in folder.glob(f"*{suffix}") if not p.name.startswith(".")),
        key=lambda p: natural_key(p.stem),
    )


def _first_success(folder: Path, step: str, pick, missing: str) -> tuple[Path, Any]:
    """The first notebook in ``folder`` (natural order) that succeeded and for which ``pick``
    gives something: (its path, what ``pick`` gave); ``missing`` is the error when none does."""
    paths = executed_notebooks(folder)
    if not paths:
        raise NoteError(f"no executed notebooks of step {step} in {folder}: run the step first")
    failures = []
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        try:
            _require_success(path, nb)
        except NoteError as exc:
            failures.append(str(exc))
            continue
        found = pick(nb)
        if found is not None:
            return path, found
    if len(failures) == len(paths):
        raise NoteError(f"every notebook of step {step} failed; the first: {failures[0]}")
    raise NoteError(
        f"{missing} (looked in {len(paths) - len(failures)} notebooks, e.g. {paths[0]})"
    )


def _require_success(path: Path, nb: nbformat.NotebookNode) -> None:
    status = nb.metadata.get("twinkles", {}).get("status")
    errors = [
        i
        for i, c in enumerate(nb.cells)
        if any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    if status != "done" or errors:
        where = f" (cell {errors[0]})" if errors else ""
        error = nb.metadata.get("twinkles", {}).get("error") or "no success recorded"
        raise NoteError(f"notebook {path} failed{where}: {error}")
