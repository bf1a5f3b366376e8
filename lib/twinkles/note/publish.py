"""``twinkles publish RUN_DIR DEST``: a run's results, small enough to keep in the repository.

A run directory holds tens of GB of images; what a reader of the project needs from a
finished run is a few MB: its report (``twinkles report --json``), its validation metrics,
its configuration, the Note's PDF and a ``README.md`` that states the headline numbers and
lists every failing metric, all taken from those files (nothing is typed by hand). The
project's published run is ``docs/results/run1/``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from twinkles.config import load_run
from twinkles.files import atomic_path
from twinkles.validation.metrics import read_metrics
from twinkles.workflow.status import run_report, run_status

__all__ = ["PublishError", "headline", "publish_run"]


class PublishError(RuntimeError):
    """A run that cannot be published as it is (no metrics, no Note, steps not done)."""


def _number(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def headline(report: dict[str, Any]) -> str:
    """The run in one sentence, as the 2016 Note meant to state it: images, CPU hours, CPU
    efficiency, wall-clock hours, peak memory and peak disk."""
    total, disk = report["total"], report["disk"]
    images = next(
        (s["data_ids_processed"] for s in report["steps"] if s["step"] == "process_eimage"), 0
    )
    machine = (
        f", keeping its {total['local_workers']} cores "
        f"{_number(total['run_cpu_efficiency'], '.0%')} busy"
        if total.get("run_cpu_efficiency") is not None
        else ""
    )
    return (
        f"{images} images processed in {total['cpu_hours']:.2f} CPU hours at "
        f"{_number(total['cpu_efficiency'], '.0%')} CPU efficiency{machine}, in "
        f"{total['busy_hours']:.2f} hours of wall-clock time while tasks ran; "
        f"{total['data_ids_failed']} data ids failed; peak memory "
        f"{_number(total['peak_rss_mb'], '.0f')} MB, peak disk "
        f"{_number(disk['peak_gb'], '.1f')} GB."
    )


def _readme(
    run_name: str, report: dict[str, Any], metrics: dict[str, Any], files: list[str]
) -> str:
    summary = metrics["summary"]
    lines = [
        f"# Run {run_name}: published results",
        "",
        "Written by `twinkles publish` from the run directory; every number here comes from",
        "the files beside it.",
        "",
        headline(report),
        "",
        "Validation metrics: "
        + ", ".join(f"{summary[k]} {k}" for k in ("pass", "fail", "not measured", "info"))
        + ".",
        "",
    ]
    failing = [m for m in metrics["metrics"] if m["status"] == "fail"]
    if failing:
        lines += ["| failing metric | value | requirement |", "|---|---|---|"]
        for m in failing:
            unit = f" {m['unit']}" if m.get("unit") else ""
            value = "n/a" if m["value"] is None else f"{m['value']:.4g}{unit}"
            lines.append(f"| {m['name']} | {value} | {m['requirement']} |")
        lines.append("")
    lines += ["Files:", ""] + [f"- `{name}`" for name in files] + [""]
    return "\n".join(lines)


def publish_run(run_dir: str | Path, dest: str | Path, require_pdf: bool = True) -> list[Path]:
    """Copy a finished run's results to ``dest`` (created); returns the files written.

    Parameters
    ----------
    run_dir : str or Path
        The run directory (``runs/<name>``) or its configuration.
    dest : str or Path
        The folder to write (``docs/results/<name>``); files there of the same names are
        replaced.
    require_pdf : bool
        Refuse a run whose Note has no PDF (``twinkles note`` makes it where Chromium is
        installed); without it the Note's HTML is not copied either.

    Raises
    ------
    PublishError
        No validation metrics, no Note PDF (when required), or data ids not run yet (failed
        and blocked ones are published, with their causes in the report).
    """
    run = load_run(run_dir)
    metrics_path = run.dir / "validation" / "metrics.json"
    if not metrics_path.exists():
        raise PublishError(f"{metrics_path} is missing: the run has not been validated")
    pdf = run.dir / "note" / "note.pdf"
    if require_pdf and not pdf.exists():
        raise PublishError(f"{pdf} is missing: build the Note with `twinkles note {run.dir}`")
    pending = {s["step"]: s["pending"] for s in run_status(run)["steps"] if s["pending"]}
    if pending:
        raise PublishError(
            "data ids not run yet: "
            + ", ".join(f"{step} {n}" for step, n in pending.items())
            + f"; finish the run with `twinkles run {run.config_path}`"
        )
    report = run_report(run)
    metrics = read_metrics(metrics_path)
    metrics.pop("by_name")
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    texts = {
        "report.json": json.dumps(report, indent=1) + "\n",
        "metrics.json": json.dumps(metrics, indent=1) + "\n",
        "run.yaml": run.config_path.read_text(),
    }
    copies = {"note.pdf": pdf} if pdf.exists() else {}
    names = sorted([*texts, *copies])
    texts["README.md"] = _readme(run.config.name, report, metrics, names)
    written = []
    for name, text in texts.items():
        with atomic_path(dest / name) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written.append(dest / name)
    for name, source in copies.items():
        with atomic_path(dest / name) as tmp:
            shutil.copyfile(source, tmp)
        written.append(dest / name)
    return written
