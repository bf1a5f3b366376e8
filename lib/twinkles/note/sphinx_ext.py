"""Sphinx extension: a run's notebook figures and numbers in the Note's MyST source.

Configuration: ``twinkles_run_dir`` (the run directory; set by :func:`twinkles.note.build`).

Directives
----------
``notebook-figure STEP:LABEL``
    The figure labelled ``LABEL`` (``#| label: LABEL``) of step ``STEP``'s executed notebook,
    for the data id of the ``:data-id:`` option or the first that succeeded; the content is
    the caption, to which the source notebook (linked to its HTML page) and cell are added.
    Without ``:data-id:``, the first notebook in data-id order that succeeded and drew it.
    ``:name:`` makes it referable with ``{numref}``; ``:width:`` sizes it.
``metrics-table``
    Every metric of ``validation/metrics.json`` with its requirement and verdict.
``report-table``
    ``twinkles report`` per step.
``run-inputs``
    Where the run's images and truth came from (simulated, or brought from elsewhere).
``run-figure KIND``
    A figure of the run as a workflow, drawn at build time from the pipeline's definition or
    the run database (:mod:`twinkles.note.run_figures`): ``pipeline-flow``, ``cpu-and-wall``,
    ``memory``, ``disk``; the content is the caption.
``failures-table``
    The data ids that failed or were blocked, by step and cause.
``failing-metrics``
    The metrics that fail, each with the notebook and figure that show why.

Roles
-----
``{report}`KEY[:FORMAT]```
    A number of ``twinkles report --json``: ``total.cpu_hours``,
    ``steps.process_eimage.data_ids_processed`` (steps by name), with a Python format spec.
``{metric}`NAME[:FORMAT]```
    A metric's value and unit; ``{verdict}`NAME``` its status and requirement. A ``*`` in
    NAME gives every matching metric, labelled by what the ``*`` stands for:
    ``{metric}`PA1_*:.1f``` is "g 9.7 mmag, r 9.0 mmag and i 10.7 mmag" on a g, r, i run.

Every number is written as ``<span class="twinkles-number" data-source=... data-key=...
data-value=...>``, so a test can compare the Note with the report number for number. A
missing label, key or metric, or a figure of a failed notebook, raises :class:`NoteError`
naming it, and the build stops.
"""

from __future__ import annotations

import fnmatch
import html
import json
import math
from pathlib import Path
from typing import Any, ClassVar

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

from twinkles.bands import BANDS
from twinkles.config import load_run
from twinkles.note import run_figures
from twinkles.note.notebooks import NoteError, find_figure
from twinkles.sim.truth import Truth
from twinkles.validation.metrics import read_metrics
from twinkles.workflow.rundb import RunDatabase
from twinkles.workflow.spec import PIPELINE
from twinkles.workflow.status import run_report, run_status

__all__ = ["setup"]

FIGURE_DIR = "_notebook_figures"


def _run_dir(env) -> Path:
    run_dir = env.config.twinkles_run_dir
    if not run_dir:
        raise NoteError("twinkles_run_dir is not set: build the Note with `twinkles note RUN_DIR`")
    return Path(run_dir)


def _numbers(env) -> dict[str, Any]:
    """The run's report and metrics, read once per build."""
    cache = getattr(env, "twinkles_numbers", None)
    if cache is None:
        run_dir = _run_dir(env)
        report = run_report(load_run(run_dir))
        report["steps"] = {s["step"]: s for s in report["steps"]}
        cache = {"report": report, "metrics": read_metrics(run_dir / "validation" / "metrics.json")}
        env.twinkles_numbers = cache
    return cache


def _lookup(report: dict, key: str) -> Any:
    value: Any = report
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise NoteError(
                f"the Note asks for report number {key!r}, which `twinkles report` lacks"
            )
        value = value[part]
    return value


def _format(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if spec:
        return format(value, spec)
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _number(source: str, key: str, value: Any, shown: str, extra_class: str = "") -> nodes.raw:
    attrs = (
        f'class="twinkles-number{extra_class}" data-source="{source}" '
        f'data-key="{html.escape(key)}" data-value="{html.escape(json.dumps(value))}"'
    )
    return nodes.raw("", f"<span {attrs}>{html.escape(shown)}</span>", format="html")


def report_role(name, rawtext, text, lineno, inliner, options=None, content=()):
    """A number from the run's report (``twinkles report --json``) by dotted key, with an optional
    format (``:report:`total.cpu_hours:.2f```).
    """
    env = inliner.document.settings.env
    key, _, spec = text.partition(":")
    value = _lookup(_numbers(env)["report"], key.strip())
    return [_number("report", key.strip(), value, _format(value, spec))], []


def _metrics(env, pattern: str) -> list[dict]:
    """The metric ``pattern`` names, or every metric it matches (``PA1_*``: one per band)."""
    metrics = _numbers(env)["metrics"]["by_name"]
    if "*" in pattern:
        found = [m for name, m in metrics.items() if fnmatch.fnmatchcase(name, pattern)]
        if not found:
            raise NoteError(
                f"the Note asks for metrics {pattern!r}; validation/metrics.json has none"
            )
        return found
    if pattern not in metrics:
        raise NoteError(
            f"the Note asks for metric {pattern!r}, which validation/metrics.json lacks"
        )
    return [metrics[pattern]]


def _suffix(m: dict, pattern: str) -> str:
    """What a pattern's ``*`` stands for in this metric's name (the band of ``PA1_*``)."""
    head, _, tail = pattern.partition("*")
    return m["name"][len(head) : len(m["name"]) - len(tail)] + " "


def _joined(parts: list[nodes.Node]) -> list[nodes.Node]:
    out: list[nodes.Node] = []
    for i, part in enumerate(parts):
        if i:
            out.append(nodes.Text(", " if i < len(parts) - 1 else " and "))
        out.append(part)
    return out


def metric_role(name, rawtext, text, lineno, inliner, options=None, content=()):
    """A metric's value and unit; with ``*``, each matching metric's, labelled (``r 9.0 mmag``)."""
    env = inliner.document.settings.env
    pattern, _, spec = text.partition(":")
    pattern = pattern.strip()
    parts = []
    for m in _metrics(env, pattern):
        shown = _format(m["value"], spec)
        if m["unit"] and m["value"] is not None:
            shown += f" {m['unit']}"
        label = _suffix(m, pattern) if "*" in pattern else ""
        parts.append(_number("metrics", m["name"], m["value"], label + shown))
    return _joined(parts), []


def verdict_role(name, rawtext, text, lineno, inliner, options=None, content=()):
    """A metric's verdict and requirement; with ``*``, each matching metric's."""
    env = inliner.document.settings.env
    pattern = text.strip()
    parts = []
    for m in _metrics(env, pattern):
        verdict = m.get("verdict", m["status"])
        shown = verdict + (f" ({m['requirement']})" if m["requirement"] else "")
        label = _suffix(m, pattern) if "*" in pattern else ""
        status_class = " status-" + m["status"].replace(" ", "-")
        parts.append(_number("metrics-status", m["name"], m["status"], label + shown, status_class))
    return _joined(parts), []


def _figure_with_caption(
    directive: SphinxDirective, file_name: str, alt: str
) -> tuple[nodes.figure, nodes.caption]:
    """A figure node showing ``FIGURE_DIR/file_name`` (the directive's ``:width:``), and its
    caption started with the directive's content; the caller adds the source and the caption
    to the figure."""
    figure = nodes.figure()
    image = nodes.image(uri=f"{FIGURE_DIR}/{file_name}", alt=alt)
    if "width" in directive.options:
        image["width"] = directive.options["width"]
    figure += image
    caption = nodes.caption()
    if directive.content:
        holder = nodes.Element()
        directive.state.nested_parse(directive.content, directive.content_offset, holder)
        for para in holder.findall(nodes.paragraph):
            caption.extend(para.children)
            caption += nodes.Text(" ")
    return figure, caption


class NotebookFigure(SphinxDirective):
    """A labelled figure of an executed notebook of the run, captioned with its source."""

    required_arguments = 1
    has_content = True
    option_spec: ClassVar[dict] = {
        "data-id": directives.unchanged,
        "name": directives.unchanged,
        "width": directives.length_or_percentage_or_unitless,
    }

    def run(self) -> list[nodes.Node]:
        """The figure labelled LABEL in STEP's executed notebook (``STEP:LABEL``), copied into the
        Note with its caption.
        """
        step, sep, label = self.arguments[0].partition(":")
        if not sep or not step or not label:
            raise NoteError(
                f"{self.get_location()}: notebook-figure wants STEP:LABEL, "
                f"not {self.arguments[0]!r}"
            )
        run_dir = _run_dir(self.env)
        try:
            path, fig = find_figure(run_dir, step, label, self.options.get("data-id"))
        except NoteError as exc:
            raise NoteError(f"{self.get_location()}: {exc}") from None
        out = Path(self.env.srcdir) / FIGURE_DIR / f"{step}--{path.stem}--{label}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(fig.png)
        self.env.note_dependency(str(path))

        figure, caption = _figure_with_caption(self, out.name, f"{step} {path.stem}: {label}")
        rel = path.relative_to(run_dir)
        caption += nodes.Text("Source: ")
        caption += nodes.reference(
            "", str(rel), refuri=f"../{rel.with_suffix('.html').as_posix()}", classes=["source"]
        )
        caption += nodes.Text(f", cell {fig.cell_index}.")
        figure += caption
        figure["classes"].append("notebook-figure")
        figure["twinkles_source"] = str(rel)
        self.add_name(figure)
        return [figure]


#: What each ``run-figure`` draws, and from what (added to its caption).
RUN_FIGURES = {
    "pipeline-flow": "the pipeline's definition (twinkles.workflow.spec), as the driver ran it",
    "cpu-and-wall": "the run database (run.db): every executed notebook and task",
    "memory": "the run database (run.db): every executed notebook",
    "disk": "the run database (run.db): the driver's samples of the run directory",
}


class RunFigure(SphinxDirective):
    """A figure of the run as a workflow (:mod:`twinkles.note.run_figures`), drawn from the
    pipeline's definition or the run database; the content is the caption."""

    required_arguments = 1
    has_content = True
    option_spec: ClassVar[dict] = {
        "name": directives.unchanged,
        "width": directives.length_or_percentage_or_unitless,
    }

    def run(self) -> list[nodes.Node]:
        """A figure of the run's records (one of `RUN_FIGURES`), drawn now and placed with its
        caption.
        """
        import matplotlib.pyplot as plt

        kind = self.arguments[0]
        if kind not in RUN_FIGURES:
            raise NoteError(
                f"{self.get_location()}: run-figure {kind!r} is not one of {', '.join(RUN_FIGURES)}"
            )
        fig = _draw_run_figure(_run_dir(self.env), kind)
        out = Path(self.env.srcdir) / FIGURE_DIR / f"workflow--{kind}.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=110)
        plt.close(fig)
        figure, caption = _figure_with_caption(self, out.name, f"run figure: {kind}")
        caption += nodes.Text(f"Drawn by twinkles note from {RUN_FIGURES[kind]}.")
        figure += caption
        figure["classes"].append("run-figure")
        self.add_name(figure)
        return [figure]


def _draw_run_figure(run_dir: Path, kind: str):
    run = load_run(run_dir)
    pipeline = PIPELINE.for_run(run)
    db = RunDatabase(run.dir / "run.db")
    try:
        nodes_, attempts, tasks, disk = db.nodes(), db.attempts(), db.tasks(), db.disk()
    finally:
        db.close()
    steps = [s.name for s in pipeline.steps]
    if kind == "pipeline-flow":
        counts: dict[str, int] = {}
        for n in nodes_:
            counts[n.step] = counts.get(n.step, 0) + 1
        return run_figures.pipeline_flow(pipeline.steps, counts)
    if kind == "cpu-and-wall":
        return run_figures.cpu_and_wall(attempts, tasks, steps)
    if kind == "memory":
        return run_figures.memory_by_step(attempts, steps)
    return run_figures.disk_over_time(disk)


def _table(headers: list[str], rows: list[list[str]], classes: list[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        f'<tr class="{html.escape(c)}">' + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>"
        for row, c in zip(rows, classes, strict=True)
    )
    return (
        f'<table class="twinkles-table"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def _span(source: str, key: str, value: Any, shown: str) -> str:
    return _number(source, key, value, shown).astext()


class MetricsTable(SphinxDirective):
    """Every validation metric: value, requirement, verdict, reference."""

    def run(self) -> list[nodes.Node]:
        """Every validation metric: value, requirement, verdict and description, each number tagged
        with its source.
        """
        metrics = _numbers(self.env)["metrics"]["metrics"]
        rows, classes = [], []
        for m in metrics:
            shown = _format(m["value"], ".4g") + (
                f" {m['unit']}" if m["unit"] and m["value"] is not None else ""
            )
            rows.append(
                [
                    html.escape(m["name"]),
                    _span("metrics", m["name"], m["value"], shown),
                    html.escape(m["requirement"]),
                    _span("metrics-status", m["name"], m["status"], m.get("verdict", m["status"])),
                    html.escape(m["description"]),
                ]
            )
            classes.append("status-" + m["status"].replace(" ", "-"))
        table = _table(["metric", "value", "requirement", "verdict", "what"], rows, classes)
        return [nodes.raw("", table, format="html")]


class ReportTable(SphinxDirective):
    """``twinkles report`` per step and in total."""

    COLUMNS = (
        ("data_ids_processed", "processed", ""),
        ("data_ids_failed", "failed", ""),
        ("cpu_hours", "CPU h", ".4f"),
        ("wall_hours", "wall h", ".4f"),
        ("cpu_efficiency", "CPU eff.", ".3f"),
        ("success_rate", "success", ".3f"),
        ("peak_rss_mb", "peak MB", ".0f"),
    )

    def run(self) -> list[nodes.Node]:
        """The run report's per-step and total rows: data ids processed and failed, CPU and wall
        hours, CPU efficiency, success rate and peak memory.
        """
        report = _numbers(self.env)["report"]
        entries = [(f"steps.{name}", name, s) for name, s in report["steps"].items()]
        entries.append(("total", "total", report["total"]))
        rows = []
        for prefix, name, entry in entries:
            cells = [html.escape(name)]
            for key, _, spec in self.COLUMNS:
                value = entry.get(key)
                cells.append(_span("report", f"{prefix}.{key}", value, _format(value, spec)))
            rows.append(cells)
        table = _table(["step", *[c[1] for c in self.COLUMNS]], rows, [""] * len(rows))
        return [nodes.raw("", table, format="html")]


class FailuresTable(SphinxDirective):
    """The data ids that failed or were blocked, by step and cause (error line), with their
    number and one example notebook; a sentence saying so when none did."""

    def run(self) -> list[nodes.Node]:
        """Failed and blocked data ids grouped by step and cause, most frequent first, each with an
        example notebook.
        """
        run_dir = _run_dir(self.env)
        causes: dict[tuple[str, str, str], list[dict]] = {}
        for step in run_status(load_run(run_dir))["steps"]:
            for f in step["failures"]:
                cause = (f["error"] or "no error recorded").splitlines()[0]
                kind = f["failure_class"] or f["state"]
                causes.setdefault((step["step"], kind, cause), []).append(f)
        if not causes:
            text = '<p class="twinkles-failures">No data id failed or was blocked.</p>'
            return [nodes.raw("", text, format="html")]
        rows = []
        for (step, kind, cause), failures in sorted(causes.items(), key=lambda c: -len(c[1])):
            example = failures[0]
            rows.append(
                [
                    html.escape(step),
                    html.escape(kind),
                    _span("failures", f"{step}:{cause}", len(failures), str(len(failures))),
                    html.escape(cause),
                    html.escape(example["data_id"]),
                ]
            )
        table = _table(
            ["step", "class", "data ids", "cause (error line)", "e.g."], rows, [""] * len(rows)
        )
        return [nodes.raw("", table, format="html")]


#: Where a metric's figure is (step, figure label), by the metric name's prefix; the first
#: matching prefix wins.
WHERE_TO_LOOK = (
    ("flux_ramp", ("validate_static_sky", "flux-ramps")),
    ("object_completeness", ("validate_static_sky", "object-completeness")),
    ("forced_pull", ("validate_static_sky", "forced-pulls")),
    ("src_pull", ("validate_static_sky", "forced-pulls")),
    ("object_pull", ("validate_static_sky", "forced-pulls")),
    ("PA1", ("validate_run", "photometry-vs-magnitude")),
    ("PF1", ("validate_run", "photometry-vs-magnitude")),
    ("photometric_floor", ("validate_run", "photometry-vs-magnitude")),
    ("dia_artifacts", ("validate_dia", "dia-artifacts-by-cause")),
    ("dia_injection", ("validate_dia", "dia-injection-efficiency")),
    ("dia_object", ("validate_run", "dia-object-completeness")),
    ("difference_noise", ("validate_dia", "difference-noise")),
    ("transient_recovery", ("validate_dia", "dia-recovery-spurious")),
    ("spurious", ("validate_dia", "dia-recovery-spurious")),
    ("sn_", ("validate_dia", "sn-light-curve")),
    ("lensed", ("validate_dia", "lensed-quasar-light-curves")),
)


def where_to_look(metric: str) -> tuple[str, str]:
    """(step, figure label) showing why a metric has its value."""
    for prefix, place in WHERE_TO_LOOK:
        if metric.startswith(prefix):
            return place
    return ("validate_run", "metrics-summary")


class FailingMetrics(SphinxDirective):
    """The metrics that fail, each with its value, requirement and the executed notebook (and
    figure) that shows why; a sentence saying so when none does."""

    def run(self) -> list[nodes.Node]:
        """The failing metrics as a list, each with its value, requirement and the notebook and
        figure that show why.
        """
        metrics = [m for m in _numbers(self.env)["metrics"]["metrics"] if m["status"] == "fail"]
        if not metrics:
            text = '<p class="twinkles-failing">No metric fails.</p>'
            return [nodes.raw("", text, format="html")]
        items = []
        for m in metrics:
            step, label = where_to_look(m["name"])
            shown = _format(m["value"], ".4g") + (f" {m['unit']}" if m["unit"] else "")
            href = f"../notebooks/{step}/run.html"
            items.append(
                f"<li><code>{html.escape(m['name'])}</code> "
                f"{_span('metrics', m['name'], m['value'], shown)} against "
                f"{html.escape(m['requirement'])}: {html.escape(m['description'])}; see "
                f'<a class="where" href="{href}">{html.escape(step)}</a>, figure '
                f"<code>{html.escape(label)}</code>.</li>"
            )
        text = f'<ul class="twinkles-failing">{"".join(items)}</ul>'
        return [nodes.raw("", text, format="html")]


def inputs_paragraph(run_dir: Path) -> str:
    """Where a run's images and truth came from, in a sentence or two."""
    run = load_run(run_dir)
    butler = run.butler
    visits = butler.get("visitTable")
    bands = ", ".join(b for b in BANDS if b in set(visits["filter"]))
    if not run.external:
        return (
            f"The {len(visits)} images of this run ({bands}) were rendered by twinkles' own "
            f"simulator (the simulate_visit recipe), which also wrote the truth every metric "
            f"is scored against."
        )
    manifest = butler.get("inputManifest")
    refused = len(manifest.get("refused", {}))
    truth = (
        "Its truth catalog came with the images; every metric it allows is scored against it."
        if Truth.exists(butler)
        else "No truth catalog came with the images: the metrics that need one are reported as "
        "not measured."
    )
    return (
        f"The {len(visits)} images of this run ({bands}) were not simulated by twinkles: they "
        f"were brought as eimages from elsewhere, checked against the format and ingested "
        f"({refused} file(s) refused), with their own reference catalog; there is no "
        f"simulate_visit step. {truth}"
    )


class RunInputs(SphinxDirective):
    """A paragraph saying where the run's images and truth came from."""

    def run(self) -> list[nodes.Node]:
        """A paragraph saying where the run's images and truth came from."""
        text = inputs_paragraph(_run_dir(self.env))
        return [nodes.paragraph("", text)]


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the Note's directives (figures and tables from the run) and roles (numbers from the
    report and metrics) with Sphinx.
    """
    app.add_config_value("twinkles_run_dir", "", "env", str)
    app.add_directive("notebook-figure", NotebookFigure)
    app.add_directive("metrics-table", MetricsTable)
    app.add_directive("report-table", ReportTable)
    app.add_directive("run-inputs", RunInputs)
    app.add_directive("run-figure", RunFigure)
    app.add_directive("failures-table", FailuresTable)
    app.add_directive("failing-metrics", FailingMetrics)
    app.add_role("report", report_role)
    app.add_role("metric", metric_role)
    app.add_role("verdict", verdict_role)
    return {"version": "1", "parallel_read_safe": False, "parallel_write_safe": True}
