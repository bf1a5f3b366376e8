"""The Note and the run browser, built from the tiny run's executed notebooks.

The Note's numbers are compared one by one with ``twinkles report --json`` and
``metrics.json``; a missing figure label or a failed notebook must stop the build with a
message naming it; the run browser and the Note are opened in a real headless Chromium.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import shutil
import threading
from pathlib import Path
from urllib.parse import unquote

import nbformat
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from twinkles.cli import main
from twinkles.note.build import NOTE_SOURCE, build_note
from twinkles.note.notebooks import NoteError, executed_notebook, find_figure, labelled_figures
from twinkles.note.publish import headline
from twinkles.workflow.status import run_report

PNG = (  # a 1 x 1 pixel PNG
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwAD"
    "hgGAWjR9awAAAABJRU5ErkJggg=="
)


def _figure_cell(source: str, png: bool = True):
    cell = new_code_cell(source)
    if png:
        cell.outputs = [new_output("display_data", data={"image/png": PNG, "text/plain": "fig"})]
    return cell


def test_labelled_figures_are_found_by_their_label_line():
    nb = new_notebook(
        cells=[
            _figure_cell("#| label: psf-model\nplt.show()"),
            _figure_cell("plt.show()  # no label"),
            _figure_cell("#| label: not-drawn\nif figures: ...", png=False),
        ]
    )
    figures = labelled_figures(nb)
    assert set(figures) == {"psf-model"}
    assert figures["psf-model"].cell_index == 0 and figures["psf-model"].png.startswith(b"\x89PNG")
    nb.cells.append(_figure_cell("#| label: psf-model\nagain"))
    with pytest.raises(NoteError, match="'psf-model' is used by two cells"):
        labelled_figures(nb)


def _write_executed(
    path: Path, status: str, error_output: bool = False, drawn: bool = True
) -> None:
    nb = new_notebook(cells=[_figure_cell("#| label: f\nx", png=drawn)])
    if error_output:
        nb.cells[0].outputs.append(
            new_output("error", ename="ValueError", evalue="bad", traceback=[])
        )
    nb.metadata["twinkles"] = {
        "status": status,
        "error": "ValueError: bad" if status != "done" else None,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def test_executed_notebook_takes_the_first_success_and_refuses_failures(tmp_path):
    step = tmp_path / "notebooks" / "process_eimage"
    _write_executed(step / "visit=2.ipynb", "failed", error_output=True)
    _write_executed(step / "visit=10.ipynb", "done")
    _write_executed(step / "visit=3.ipynb", "done")
    path, _ = executed_notebook(tmp_path, "process_eimage")
    assert path.name == "visit=3.ipynb"  # natural order; visit=2 failed
    with pytest.raises(NoteError, match=r"visit=2.ipynb failed \(cell 0\): ValueError: bad"):
        executed_notebook(tmp_path, "process_eimage", "visit=2")
    with pytest.raises(NoteError, match=r"no executed notebook .*visit=99"):
        executed_notebook(tmp_path, "process_eimage", "visit=99")
    with pytest.raises(NoteError, match="no executed notebooks of step make_coadd"):
        executed_notebook(tmp_path, "make_coadd")


def test_find_figure_takes_the_first_notebook_that_drew_it(tmp_path):
    # per-visit recipes draw figures for a sample of visits (executor.figure_every)
    step = tmp_path / "notebooks" / "image_difference"
    _write_executed(step / "visit=1.ipynb", "failed", error_output=True)
    _write_executed(step / "visit=2.ipynb", "done", drawn=False)
    _write_executed(step / "visit=7.ipynb", "done")
    path, figure = find_figure(tmp_path, "image_difference", "f")
    assert path.name == "visit=7.ipynb" and figure.cell_index == 0
    with pytest.raises(NoteError, match=r"visit=2.ipynb has no figure labelled 'f'"):
        find_figure(tmp_path, "image_difference", "f", data_id="visit=2")
    with pytest.raises(NoteError, match=r"no successful notebook .* labelled 'g'"):
        find_figure(tmp_path, "image_difference", "g")


def test_the_pipeline_flow_is_drawn_from_the_pipelines_definition():
    from matplotlib.patches import FancyArrowPatch

    from twinkles.note.run_figures import pipeline_flow, step_layers
    from twinkles.workflow.spec import PIPELINE

    layers = step_layers(PIPELINE.steps)
    assert layers["simulate_visit"] == 0 and layers["process_eimage"] == 1
    for step in PIPELINE.steps:  # every step is right of everything it depends on
        assert all(layers[d] < layers[step.name] for d in step.depends)
    counts = {s.name: k + 1 for k, s in enumerate(PIPELINE.steps)}
    fig = pipeline_flow(PIPELINE.steps, counts)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.texts if t.get_text()]
    assert len(labels) == len(PIPELINE.steps)
    assert "image_difference\n[visit] x 9" in labels
    arrows = [a for a in ax.texts if isinstance(getattr(a, "arrow_patch", None), FancyArrowPatch)]
    assert len(arrows) == sum(len(s.depends) for s in PIPELINE.steps)


def test_efficiency_memory_and_disk_figures_show_the_records():
    from twinkles.note.run_figures import cpu_and_wall, disk_over_time, memory_by_step

    attempts = [
        {"step": "a", "cpu_s": 2.0, "wall_s": 4.0, "peak_rss_mb": 300.0},
        {"step": "a", "cpu_s": 3.0, "wall_s": 3.5, "peak_rss_mb": 500.0},
        {"step": "b", "cpu_s": 10.0, "wall_s": 10.5, "peak_rss_mb": 1200.0},
    ]
    tasks = [
        {"step": "a", "cpu_s": 5.0, "wall_s": 10.0, "cpus": 1},
        {"step": "b", "cpu_s": 10.0, "wall_s": 10.0, "cpus": 2},
    ]
    fig = cpu_and_wall(attempts, tasks, ["a", "b"])
    notes = [t.get_text().strip() for t in fig.axes[1].texts]
    assert notes == ["50%", "50%"]  # CPU over wall x cores, per step
    fig = memory_by_step(attempts, ["a", "b"])
    assert [t.get_text().strip() for t in fig.axes[0].texts] == ["500 MB", "1200 MB"]
    fig = disk_over_time([(0.0, 10**9), (3600.0, 3 * 10**9), (7200.0, 2 * 10**9)])
    line = fig.axes[0].lines[0]
    assert list(line.get_xdata()) == [0.0, 1.0, 2.0]
    assert "peak 3.00 GB" in [t.get_text() for t in fig.axes[0].texts]


# --- the tiny run, end to end --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_note(tiny_full):
    """The tiny run's Note and run browser, built by the CLI."""
    assert main(["note", str(tiny_full.dir)]) == 0
    return tiny_full


def _numbers(page: Path) -> list[tuple[str, str, object]]:
    text = page.read_text()
    pattern = re.compile(
        r'<span class="twinkles-number[^"]*" data-source="([^"]+)" data-key="([^"]+)" '
        r'data-value="([^"]*)">'
    )
    import html

    return [(s, k, json.loads(html.unescape(v))) for s, k, v in pattern.findall(text)]


@pytest.mark.recipe
@pytest.mark.slow
def test_validate_run_writes_every_metric_with_a_verdict(tiny_full):
    from twinkles.validation.metrics import read_metrics

    data = read_metrics(tiny_full.dir / "validation" / "metrics.json")
    static = tiny_full.butler.get("staticSkyMetrics")
    by_name = data["by_name"]
    for band, forced in static["forced"].items():
        drp = by_name[f"PA1_validate_drp_{band}"]
        if np.isfinite(forced["pa1_drp_mmag"]):
            assert drp["value"] == pytest.approx(forced["pa1_drp_mmag"])
        else:  # NaN is written as null
            assert drp["value"] is None
        assert by_name[f"PA1_{band}"]["requirement"] == "<= 5 mmag"
        # the tiny sensor holds fewer than faro's 50 stars of S/N >= 200: said, not hidden
        assert by_name[f"PA1_{band}"]["verdict"].startswith("not measured: ")
    statuses = {m["status"] for m in data["metrics"]}
    assert statuses <= {"pass", "fail", "not measured", "info"}
    assert sum(data["summary"].values()) == len(data["metrics"])
    for name in ("AM1", "transient_recovery", "dia_object_completeness", "lensed_image_recovery"):
        assert name in by_name
    monitor = tiny_full.butler.get("lightcurveMonitor")
    assert monitor["visits"] == len(tiny_full.butler.get("visitTable"))


@pytest.mark.recipe
@pytest.mark.slow
def test_the_notes_numbers_equal_the_report_and_the_metrics(tiny_note, capsys):
    capsys.readouterr()
    assert main(["report", str(tiny_note.dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    report["steps"] = {s["step"]: s for s in report["steps"]}
    metrics = json.loads((tiny_note.dir / "validation" / "metrics.json").read_text())
    metrics = {m["name"]: m for m in metrics["metrics"]}
    numbers = _numbers(tiny_note.dir / "note" / "index.html")
    sources = {s for s, _, _ in numbers}
    assert (
        {"report", "metrics", "metrics-status"}
        <= sources
        <= {
            "report",
            "metrics",
            "metrics-status",
            "failures",
        }
    )
    assert len(numbers) > 100  # the report and metrics tables, and the text's numbers
    for source, key, value in numbers:
        if source == "report":
            expected = functools.reduce(lambda d, k: d[k], key.split("."), report)
            assert value == pytest.approx(expected) if expected is not None else value is None, key
        elif source == "metrics":
            assert (
                value == pytest.approx(metrics[key]["value"])
                if value is not None
                else (metrics[key]["value"] is None)
            ), key
        else:
            assert value == metrics[key]["status"], key
    # the seed Note's sentence, filled
    text = (tiny_note.dir / "note" / "index.html").read_text()
    # the Discussion lists exactly the failing metrics, each with where to look
    failing = sorted(name for name, m in metrics.items() if m["status"] == "fail")
    listed = re.search(r'<ul class="twinkles-failing">(.*?)</ul>', text, re.S)
    if failing:
        shown = sorted(re.findall(r"<li><code>([^<]+)</code>", listed.group(1)))
        assert shown == failing
        for step in re.findall(r'<a class="where" href="\.\./([^"]+)"', listed.group(1)):
            assert (tiny_note.dir / step).exists(), step
    else:
        assert listed is None and "No metric fails." in text
    assert "XX" not in text
    assert re.search(r"We were able to process\s*<span[^>]*>\d+</span>\s*images", text)


@pytest.mark.recipe
@pytest.mark.slow
def test_a_published_run_carries_its_report_metrics_and_note(tiny_note, tmp_path, capsys):
    dest = tmp_path / "results" / "tiny"
    capsys.readouterr()
    assert main(["publish", str(tiny_note.dir), str(dest)]) == 0
    printed = capsys.readouterr().out
    assert sorted(p.name for p in dest.iterdir()) == [
        "README.md",
        "metrics.json",
        "note.pdf",
        "report.json",
        "run.yaml",
    ]
    report = json.loads((dest / "report.json").read_text())
    assert report == json.loads(json.dumps(run_report(tiny_note)))
    assert (dest / "note.pdf").read_bytes() == (tiny_note.dir / "note" / "note.pdf").read_bytes()
    metrics = json.loads((dest / "metrics.json").read_text())
    assert (
        metrics["metrics"]
        == json.loads((tiny_note.dir / "validation" / "metrics.json").read_text())["metrics"]
    )
    readme = (dest / "README.md").read_text()
    line = headline(report)
    processed = report["steps"][[s["step"] for s in report["steps"]].index("process_eimage")]
    assert line in readme and line in printed
    assert line.startswith(f"{processed['data_ids_processed']} images processed in ")
    for m in metrics["metrics"]:  # every failing metric is listed, and only those
        assert (f"| {m['name']} |" in readme) == (m["status"] == "fail"), m["name"]


def test_an_unvalidated_run_is_not_published(tmp_path, capsys):
    config = tmp_path / "fresh.yaml"
    config.write_text("seed: 3\n")
    assert main(["publish", str(config), str(tmp_path / "out")]) == 1
    assert "validation/metrics.json is missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.recipe
@pytest.mark.slow
def test_every_note_figure_is_a_labelled_output_captioned_with_its_notebook(tiny_note):
    page = (tiny_note.dir / "note" / "index.html").read_text()
    images = re.findall(r'<img[^>]+src="([^"]+)"', page)
    figures = [src for src in images if not Path(src).name.startswith("workflow--")]
    sources = re.findall(r'<a class="[^"]*\bsource\b[^"]*" href="([^"]+)"', page)
    index = (NOTE_SOURCE / "index.md").read_text()
    wanted = re.findall(r"```\{notebook-figure\} (\S+)", index)
    assert len(figures) == len(sources) == len(wanted) >= 8
    for src, href in zip(figures, sources, strict=True):
        assert (tiny_note.dir / "note" / unquote(src)).stat().st_size > 1000
        assert (tiny_note.dir / "note" / unquote(href)).resolve().exists(), href
    # the workflow's figures: drawn from the pipeline's definition and the run database
    drawn = [src for src in images if Path(src).name.startswith("workflow--")]
    assert len(drawn) == len(re.findall(r"```\{run-figure\} (\S+)", index)) == 4
    for src in drawn:
        assert (tiny_note.dir / "note" / unquote(src)).stat().st_size > 5000
    assert page.count("Drawn by twinkles note from") == 4


@pytest.mark.recipe
@pytest.mark.slow
def test_a_missing_label_or_a_failed_notebook_stops_the_build(tiny_full, tmp_path):
    source = tmp_path / "note"
    shutil.copytree(NOTE_SOURCE, source)
    index = source / "index.md"
    index.write_text(index.read_text() + "\n```{notebook-figure} make_skymap:no-such-label\n```\n")
    with pytest.raises(
        NoteError, match=r"no successful notebook of step make_skymap has a figure labelled 'no"
    ):
        build_note(tiny_full.dir, source=source, out_dir=tmp_path / "out1", pdf=False)

    shutil.copytree(NOTE_SOURCE, source, dirs_exist_ok=True)  # the original index again
    index.write_text(index.read_text() + "\n{report}`total.no_such_number`\n")
    with pytest.raises(NoteError, match=r"'total\.no_such_number'"):
        build_note(tiny_full.dir, source=source, out_dir=tmp_path / "out2", pdf=False)

    # a copy of the run whose validate_run notebook failed
    run_copy = tmp_path / "run"
    shutil.copytree(tiny_full.dir, run_copy, ignore=shutil.ignore_patterns("repo", "note"))
    (run_copy / "repo").symlink_to(tiny_full.dir / "repo")
    failed = run_copy / "notebooks" / "validate_run" / "run.ipynb"
    nb = nbformat.read(failed, as_version=4)
    nb.metadata["twinkles"]["status"] = "failed"
    nb.metadata["twinkles"]["error"] = "RuntimeError: injected"
    nbformat.write(nb, failed)
    with pytest.raises(NoteError, match=r"validate_run/run.ipynb failed: RuntimeError: injected"):
        build_note(run_copy, out_dir=tmp_path / "out3", pdf=False)
    assert main(["note", str(run_copy), "--no-pdf"]) == 2


@pytest.fixture(scope="module")
def served(tiny_note):
    """The run directory on an HTTP server on localhost."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tiny_note.dir))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    from twinkles.note.build import CHROMIUM_FLAGS

    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=[f for f in CHROMIUM_FLAGS if f != "--headless"],
        )
        yield launched
        launched.close()


def _check_page(page, url: str) -> list[str]:
    """Open a page: it loads, its images decode, its local links answer 200; returns them."""
    response = page.goto(url)
    assert response is not None and response.ok, url
    page.wait_for_load_state("load")
    broken = page.eval_on_selector_all(
        "img", "imgs => imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)"
    )
    assert broken == [], f"{url}: images that did not render: {broken[:5]}"
    links = page.eval_on_selector_all("a[href]", "as => as.map(a => a.href)")
    local = sorted(
        {
            link.split("#")[0]
            for link in links
            if link.startswith(url.split("/")[0] + "//" + url.split("/")[2])
        }
    )
    for link in local:
        answer = page.request.get(link)
        assert answer.ok, f"{url}: link {link} answers {answer.status}"
    return local


@pytest.mark.browser
@pytest.mark.recipe
@pytest.mark.slow
def test_the_run_browser_and_the_note_in_headless_chromium(tiny_note, served, browser):
    page = browser.new_page()
    links = _check_page(page, f"{served}/index.html")
    # the status table has a row per step, the notebooks are linked, and so is the Note
    from twinkles.workflow.spec import PIPELINE

    rows = page.eval_on_selector_all(
        "#status tr td:first-child", "tds => tds.map(t => t.innerText)"
    )
    assert rows == [s.name for s in PIPELINE.steps]
    notebooks = [link for link in links if "/notebooks/" in link]
    assert len(notebooks) == len(list((tiny_note.dir / "notebooks").glob("*/*.ipynb")))
    assert page.get_attribute("#note-link", "href") == "note/index.html"
    assert page.get_attribute("#pdf-link", "href") == "note/note.pdf"
    metrics = page.eval_on_selector_all("#metrics tr", "trs => trs.length")
    assert metrics - 1 == len(
        json.loads((tiny_note.dir / "validation/metrics.json").read_text())["metrics"]
    )

    note_links = _check_page(page, f"{served}/note/index.html")
    figures = page.eval_on_selector_all(
        "figure.notebook-figure img", "imgs => imgs.map(i => i.naturalWidth)"
    )
    assert len(figures) >= 8 and min(figures) > 100
    assert any("/notebooks/" in link for link in note_links)
    # a notebook page renders its figures
    _check_page(page, notebooks[0])
    assert (tiny_note.dir / "note" / "note.pdf").read_bytes().startswith(b"%PDF")
    page.close()
