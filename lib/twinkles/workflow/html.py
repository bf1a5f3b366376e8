"""Executed notebooks as HTML pages: the provenance record a person reads in a browser.

Each page carries the notebook's provenance (status, host, job, wall time) in its header and
links one shared stylesheet, :data:`NOTEBOOK_CSS` (nbconvert's ``basic`` template inside a small
page, so hundreds of pages do not each carry nbconvert's CSS).
"""

from __future__ import annotations

import html
import re
from functools import cache, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat

from twinkles.files import atomic_path

if TYPE_CHECKING:
    import nbconvert

__all__ = ["NOTEBOOK_CSS", "NO_ALT_TEXT", "figure_alt_text", "render_html"]

#: The stylesheet every rendered notebook links.
NOTEBOOK_CSS = Path(__file__).parent / "templates" / "notebook.css"


#: A figure's alternative text where its cell gives none: nbconvert's own words.
NO_ALT_TEXT = "No description has been provided for this image"
_LABEL = re.compile(r"^#\|\s*label:\s*(\S+)\s*$", re.MULTILINE)


def figure_alt_text(cell: dict) -> str:
    """A figure's alternative text: the ``#| label:`` its recipe cell carries (the name the
    Note knows it by, hyphens read as spaces), else :data:`NO_ALT_TEXT`."""
    found = _LABEL.search(cell.get("source", ""))
    return f"figure: {found.group(1).replace('-', ' ')}" if found else NO_ALT_TEXT


@cache
def _exporter() -> nbconvert.HTMLExporter:
    """One exporter per process: a new one compiles its Jinja templates again (about half of
    the cost of a page). Its HTML sanitiser (bleach) and its syntax highlighter (pygments) are
    given a memory: the recipe's own markdown and code, the same in every notebook of a step,
    are then sanitised and highlighted once.

    nbconvert's HTMLExporter ends by parsing the whole page with BeautifulSoup and writing it
    out again, only to add an alternative text to images that have none and tab stops to the
    ``lab`` template's cells (the ``basic`` template has none). With figures in base64 that
    pass was about half of a page's cost; here the template writes the alternative text
    itself (:func:`figure_alt_text`) and the pass is left out.
    """
    # imported here: nbconvert costs every command that imports the workflow ~0.35 s
    from nbconvert import HTMLExporter
    from nbconvert.exporters import TemplateExporter
    from nbconvert.filters import Highlight2HTML, clean_html, get_metadata
    from nbconvert.filters.widgetsdatatypefilter import WidgetsDataTypeFilter

    class PageExporter(HTMLExporter):
        def from_notebook_node(self, nb, resources=None, **kw):
            # HTMLExporter.from_notebook_node up to its BeautifulSoup pass
            resources = self._init_resources(resources)
            self.register_filter(
                "filter_data_type",
                WidgetsDataTypeFilter(
                    notebook_metadata=self._nb_metadata, parent=self, resources=resources
                ),
            )
            return TemplateExporter.from_notebook_node(self, nb, resources, **kw)

    def metadata_or_alt_text(node, key: str, mimetype: str | None = None):
        value = get_metadata(node, key, mimetype)
        # the template asks an image's output, then its cell, for "alt"
        if value is None and key == "alt" and "cell_type" in node:
            return figure_alt_text(node)
        return value

    exporter = PageExporter(template_name="basic")
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
        "get_metadata": metadata_or_alt_text,
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
