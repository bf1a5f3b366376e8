"""``twinkles note RUN_DIR``: the DESC Note of a run, built from its executed notebooks.

The Note's source is MyST Markdown in ``docs/note/`` (``conf.py``, ``index.md``); Sphinx with
myst-parser builds it, and :mod:`twinkles.note.sphinx_ext` fills its figures (labelled
outputs of the run's executed notebooks) and numbers (``twinkles report``, the validation
metrics). The source is copied to ``runs/<name>/.note-build/source`` first, so the figures
extracted for a build never land in the repository. Any Sphinx warning (a broken reference,
a bad directive) stops the build, as a missing figure or number does.

The PDF is the HTML printed by headless Chromium (Debian's ``chromium``), when it is
installed: the same page, no LaTeX toolchain.
"""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from twinkles.note.notebooks import NoteError

__all__ = ["NOTE_SOURCE", "NoteResult", "build_note", "find_chromium", "print_to_pdf"]

NOTE_SOURCE = Path(__file__).resolve().parents[3] / "docs" / "note"
#: Flags for Chromium on a closed network, as root, without a screen.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


@dataclass
class NoteResult:
    """What :func:`build_note` made."""

    html: Path
    pdf: Path | None
    pdf_skipped: str | None = None
    figures: list[str] = field(default_factory=list)


def find_chromium() -> str | None:
    """The Chromium executable, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def print_to_pdf(html_path: Path, pdf_path: Path, chromium: str, timeout_s: float = 120.0) -> Path:
    """Print an HTML page to PDF with headless Chromium."""
    with tempfile.TemporaryDirectory(prefix="twinkles-chromium-") as profile:
        tmp = pdf_path.with_name(f".{pdf_path.name}.tmp")
        cmd = [
            chromium,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={tmp}",
            html_path.resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if proc.returncode != 0 or not tmp.exists() or tmp.stat().st_size == 0:
            tmp.unlink(missing_ok=True)
            raise NoteError(
                f"Chromium could not print {html_path} to PDF: {proc.stderr.strip()[-500:]}"
            )
        tmp.replace(pdf_path)
    return pdf_path


def build_note(
    run_dir: str | Path,
    source: str | Path = NOTE_SOURCE,
    out_dir: str | Path | None = None,
    pdf: bool = True,
) -> NoteResult:
    """Build the Note of a run to HTML (and PDF when Chromium is installed).

    Parameters
    ----------
    run_dir : path
        The run directory (``runs/<name>``).
    source : path
        The Note's source folder (``conf.py``, ``index.md``).
    out_dir : path, optional
        Where the HTML goes; ``runs/<name>/note`` by default.
    pdf : bool
        Also print ``note.pdf``.

    Raises
    ------
    NoteError
        A figure or number the Note asks for is missing, a figure's notebook failed, or
        Sphinx warned.
    """
    from sphinx.application import Sphinx

    run_dir = Path(run_dir).resolve()
    source = Path(source)
    if not (source / "conf.py").exists():
        raise NoteError(f"{source} is not a Note source: it has no conf.py")
    out = Path(out_dir) if out_dir else run_dir / "note"
    if (out / ".buildinfo").exists():  # a previous build: no stale figures or pages survive
        shutil.rmtree(out)
    work = out.parent / f".{out.name}-build"
    stage = work / "source"
    if stage.exists():
        shutil.rmtree(stage)
    shutil.copytree(source, stage)
    warnings = io.StringIO()
    app = Sphinx(
        srcdir=str(stage),
        confdir=str(stage),
        outdir=str(out),
        doctreedir=str(work / "doctrees"),
        buildername="html",
        confoverrides={"twinkles_run_dir": str(run_dir)},
        status=io.StringIO(),
        warning=warnings,
        freshenv=True,
    )
    app.build(force_all=True)
    warned = re.sub(r"\x1b\[[0-9;]*m", "", warnings.getvalue()).strip()
    if warned:
        raise NoteError("the Note's build warned:\n" + warned)
    html_path = out / "index.html"
    figures = sorted(p.name for p in (stage / "_notebook_figures").glob("*.png"))
    result = NoteResult(html=html_path, pdf=None, figures=figures)
    if pdf:
        chromium = find_chromium()
        if chromium is None:
            result.pdf_skipped = "Chromium is not installed (apt-get install chromium)"
        else:
            result.pdf = print_to_pdf(html_path, out / "note.pdf", chromium)
    return result
