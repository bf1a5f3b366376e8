"""The run browser: ``runs/<name>/index.html``.

One page with the run's validation verdicts, the status and cost of every step, links to
every executed notebook rendered to HTML (failed ones marked, with their error), and to the
Note. Notebooks the workers did not render (an older run, a failed rendering) are rendered
here. Everything is a static file: the folder can be copied or served as it is.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import nbformat
from jinja2 import Environment, FileSystemLoader, select_autoescape

from twinkles.config import load_run
from twinkles.files import atomic_path
from twinkles.note.notebooks import executed_notebooks
from twinkles.workflow.html import NOTEBOOK_CSS, render_html
from twinkles.workflow.rundb import RunDatabase
from twinkles.workflow.status import run_report, run_status

__all__ = ["build_browser", "render_missing_html"]

_TEMPLATES = Path(__file__).parent / "templates"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if digits else f"{value:.0f}"
    return str(value)


def render_missing_html(run_dir: Path) -> int:
    """Render every executed notebook whose HTML page is missing or older; returns how many."""
    notebooks = Path(run_dir) / "notebooks"
    if not notebooks.exists():
        return 0
    shutil.copyfile(NOTEBOOK_CSS, notebooks / "notebook.css")
    count = 0
    for path in [
        p
        for folder in sorted(notebooks.iterdir())
        if folder.is_dir()
        for p in executed_notebooks(folder)
    ]:
        page = path.with_suffix(".html")
        if page.exists() and page.stat().st_mtime >= path.stat().st_mtime:
            continue
        nb = nbformat.read(path, as_version=4)
        render_html(nb, page, f"{path.parent.name} {path.stem}", "../notebook.css")
        count += 1
    return count


def build_browser(run_dir: str | Path) -> Path:
    """Write ``runs/<name>/index.html``; returns its path."""
    run = load_run(run_dir)
    run_dir = run.dir
    render_missing_html(run_dir)
    status = run_status(run)
    report = {s["step"]: s for s in run_report(run)["steps"]}
    db = RunDatabase(run_dir / "run.db")
    try:
        states = {(n.step, n.data_id): n.state for n in db.nodes()}
    finally:
        db.close()
    steps = []
    n_notebooks = 0
    for entry in status["steps"]:
        folder = run_dir / "notebooks" / entry["step"]
        pages = executed_notebooks(folder, ".html")
        n_notebooks += len(pages)
        steps.append(
            {
                **report.get(entry["step"], {}),
                **entry,
                "notebooks": [
                    {
                        "data_id": p.stem,
                        "href": p.relative_to(run_dir).as_posix(),
                        "state": states.get((entry["step"], p.stem), "unknown"),
                    }
                    for p in pages
                ],
            }
        )
    metrics_path = run_dir / "validation" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    note = run_dir / "note" / "index.html"
    pdf = run_dir / "note" / "note.pdf"
    visits = run.butler.get("visitTable") if run.butler.exists("visitTable") else None
    env = Environment(
        loader=FileSystemLoader(_TEMPLATES), autoescape=select_autoescape(["html", "j2"])
    )
    page = env.get_template("browser.html.j2").render(
        run=run.config.name,
        run_dir=str(run_dir),
        n_visits=len(visits) if visits is not None else 0,
        filters="".join(sorted(set(visits["filter"]))) if visits is not None else "-",
        n_notebooks=n_notebooks,
        built=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        note="note/index.html" if note.exists() else None,
        pdf="note/note.pdf" if pdf.exists() else None,
        metrics_href="validation/metrics.json" if metrics else None,
        metrics=metrics,
        steps=steps,
        fmt=_fmt,
    )
    out = run_dir / "index.html"
    with atomic_path(out) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return out
