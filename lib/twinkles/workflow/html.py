"""Executed notebooks as HTML pages: the provenance record a person reads in a browser.

Each page carries the notebook's provenance (status, host, job, wall time) in its header and
links one shared stylesheet, :data:`NOTEBOOK_CSS` (nbconvert's ``basic`` template inside a small
page, so hundreds of pages do not each carry nbconvert's CSS).
"""

from __future__ import annotations

import html
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat

from twinkles.files import atomic_path

if TYPE_CHECKING:
    import nbconvert

__all__ = ["NOTEBOOK_CSS", "render_html"]

#: The stylesheet every rendered notebook links.
NOTEBOOK_CSS = Path(__file__).parent / "templates" / "notebook.css"


@cache
def _exporter() -> nbconvert.HTMLExporter:
    """One exporter per process: a new one compiles its Jinja templates again (about half of
    the cost of a page). Its HTML sanitiser (bleach) and its syntax highlighter (pygments) are
    given a memory: the recipe's own markdown and code, the same in every notebook of a step,
    are then sanitised and highlighted once."""
    # imported here: nbconvert costs every command that imports the workflow ~0.35 s
    from nbconvert import HTMLExporter
    from nbconvert.filters import Highlight2HTML, clean_html

    exporter = HTMLExporter(template_name="basic")
    # the recipes are Python: IPython's lexer, as nbconvert picks for a python3 kernel
    highlight = Highlight2HTML(pygments_lexer="ipython3", parent=exporter)

    @lru_cache(maxsize=2048)
    def highlighted(source: str, language: str | None, magics: str | None) -> str:
        return highlight(source, language, {"magics_language": magics} if magics else None)

    def highlight_code(source: str, language: str | None = None, metadata=None) -> str:
        # of a cell's metadata, the highlighter reads only its magics language
        magics = (metadata or {}).get("magics_language")
        return highlighted(source, language, magics)

    # user filters win over the defaults (HTMLExporter takes its highlight_code from them too);
    # setting them rebuilds the Jinja environment, so both are set at once
    exporter.filters = {
        **exporter.filters,
        "clean_html": lru_cache(maxsize=2048)(clean_html),
        "highlight_code": highlight_code,
    }
    return exporter


def render_html(nb: nbformat.NotebookNode, path: Path, title: str, css_href: str) -> Path:
    """Write an executed notebook as an HTML page that links the stylesheet ``css_href``."""
    body, _ = _exporter().from_notebook_node(nb)
    prov = nb.metadata.get("twinkles", {})
    status = prov.get("status", "unknown")
    summary = ", ".join(
        f"{k} {html.escape(str(prov[k]))}" for k in ("status", "host", "job_id") if prov.get(k)
    )
    if prov.get("wall_s") is not None:
        summary += f", wall {prov['wall_s']:.1f} s"
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>"
        f'<link rel="stylesheet" href="{html.escape(css_href)}"></head>\n'
        f'<body class="notebook status-{html.escape(status)}"><header><h1>{html.escape(title)}</h1>'
        f'<p class="provenance">{summary}</p></header>\n<main>{body}</main></body></html>\n'
    )
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path
