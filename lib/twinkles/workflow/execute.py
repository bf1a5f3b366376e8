"""Execute one recipe for one data id, and keep the executed notebook as its provenance.

The executed notebook (``runs/<name>/notebooks/<step>/<data id>.ipynb``) carries, in its
metadata under ``twinkles``: the step, data id and parameters; the recipe and its checksum; the
git commit of the code and whether the tree was dirty; the versions of twinkles and of the key
dependencies; every dataset it read and wrote, with checksums, as the butler recorded them
(``TWINKLES_IO_LOG``: what the notebook actually did, not a declaration); host, job id,
attempt; wall and CPU seconds and peak RSS; and how it ended. A failed notebook keeps
papermill's error marker. The notebook is written atomically: papermill works on a temporary
copy (``.<data id>.<pid>.tmp.ipynb``) that replaces the final path at the end, and is removed
whatever happens.

Failures are classified:

* ``science``: an exception in a recipe cell (``PapermillExecutionError``), or a recipe that
  finished without writing its outputs. Not retried by default.
* ``infrastructure``: a dead kernel, a timeout, an executor error, or (seen by the driver) a
  result that never came. Retried.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import socket
import time
import traceback
from dataclasses import asdict
from importlib import metadata
from pathlib import Path
from typing import Any

import nbformat
import papermill
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from papermill.exceptions import PapermillExecutionError

from twinkles.files import INVALID_ENV, IO_LOG_ENV, cached_checksum, file_checksum
from twinkles.workflow.html import render_html
from twinkles.workflow.kernel import ENGINE_NAME, WarmKernel
from twinkles.workflow.records import ItemResult, TaskCommon, WorkItem

log = logging.getLogger(__name__)

__all__ = ["KEY_PACKAGES", "code_versions", "collect_io", "execute_item", "job_id"]

#: Dependencies whose versions go into every notebook's provenance.
KEY_PACKAGES = (
    "twinkles",
    "numpy",
    "scipy",
    "astropy",
    "photutils",
    "sep",
    "galsim",
    "sqlalchemy",
    "papermill",
    "nbclient",
    "ipykernel",
    "submitit",
    "matplotlib",
)


def code_versions() -> dict[str, str]:
    """Python and key package versions."""
    out = {"python": platform.python_version()}
    for name in KEY_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def job_id() -> str:
    """Identifier of the job this process runs in (Slurm array element, job, or local pid)."""
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '0')}"
    if "SLURM_JOB_ID" in env:
        return env["SLURM_JOB_ID"]
    return f"local-{os.getpid()}"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _first_line(text: str) -> str:
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[0][:500] if lines else ""


def _file_record(
    path: str, dataset: str | None, data_id: Any, checksum: bool, base: Path
) -> dict | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    # relative to the run directory, so a run directory can be moved or copied
    shown = os.path.relpath(path, base) if Path(path).is_relative_to(base) else path
    return {
        "path": shown,
        "dataset": dataset,
        "data_id": data_id,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "checksum": cached_checksum(path) if checksum else None,
    }


def collect_io(
    log: Path, outputs: list[str], since_ns: int, base: Path, checksums: bool = True
) -> tuple[list[dict], list[dict]]:
    """What a notebook read and wrote: (reads, writes), each file once, with its path (relative
    to ``base``, the run directory, when inside it), size, modification time and
    (``checksums``) checksum.

    ``log`` is the butler's record of the notebook (``TWINKLES_IO_LOG``). The step's declared
    outputs modified since ``since_ns`` count as written (a recipe may write one without the
    butler, as validate_run writes its metrics); a file both read and written is a write.
    """
    reads: dict[str, tuple] = {}
    writes: dict[str, tuple] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            target = writes if entry["io"] == "write" else reads
            target.setdefault(entry["path"], (entry["dataset"], entry["data_id"]))
    for path in outputs:
        try:
            if os.stat(path).st_mtime_ns >= since_ns:
                writes.setdefault(path, (None, None))
        except OSError:
            continue
    for path in writes:
        reads.pop(path, None)

    def records(entries: dict[str, tuple]) -> list[dict]:
        out = [
            _file_record(p, ds, did, checksums, base) for p, (ds, did) in sorted(entries.items())
        ]
        return [r for r in out if r is not None]

    return records(reads), records(writes)


def execute_item(item: WorkItem, common: TaskCommon, kernel: WarmKernel | None) -> ItemResult:
    """Execute one data id of a step; returns its result record (also the provenance).

    Parameters
    ----------
    item : WorkItem
        The data id: its recipe, parameters, notebook, outputs, attempt, timeout and working
        directory.
    common : TaskCommon
        Shared by the items of a run: the driver's token, git state, versions, kernel name.
    kernel : WarmKernel or None
        The task's warm kernel; None for a fresh kernel per notebook.

    Returns
    -------
    ItemResult
        How it ended, what it measured, read and wrote; the executed notebook carries the
        same in its metadata under ``twinkles``.
    """
    notebook = Path(item.notebook)
    notebook.parent.mkdir(parents=True, exist_ok=True)
    tmp = notebook.with_name(f".{notebook.stem}.{os.getpid()}.tmp.ipynb")
    io_log = notebook.with_name(f".{notebook.stem}.{os.getpid()}.io.jsonl")
    try:
        return _execute(item, common, kernel, notebook, tmp, io_log)
    finally:  # never a leftover, whatever happened
        tmp.unlink(missing_ok=True)
        io_log.unlink(missing_ok=True)


def _execute(
    item: WorkItem,
    common: TaskCommon,
    kernel: WarmKernel | None,
    notebook: Path,
    tmp: Path,
    io_log: Path,
) -> ItemResult:
    start = time.time()
    start_ns = time.time_ns()
    io_log.unlink(missing_ok=True)
    # per notebook, not per kernel: a worker's kernel outlives the task that started it
    env = {IO_LOG_ENV: str(io_log), INVALID_ENV: common.invalid_datasets}
    record = ItemResult(
        token=common.token,
        step=item.step,
        data_id=item.data_id,
        attempt=item.attempt,
        status="done",
        notebook=str(notebook),
        host=socket.gethostname(),
        job_id=job_id(),
        start=start,
    )
    cpu_s = peak = None
    base = None
    kwargs = dict(
        parameters=item.parameters,
        kernel_name=common.kernel_name,
        progress_bar=False,
        execution_timeout=item.timeout_s,
        request_save_on_cell_execute=True,
    )
    try:
        if kernel is not None:
            base = kernel.reset(item.cwd, env, item.recipe)
            papermill.execute_notebook(
                item.recipe, str(tmp), engine_name=ENGINE_NAME, warm_kernel=kernel, **kwargs
            )
        else:
            os.environ.update(env)  # the fresh kernel inherits it
            cpu0 = _children_cpu()
            try:
                papermill.execute_notebook(item.recipe, str(tmp), cwd=item.cwd, **kwargs)
            finally:
                cpu_s = _children_cpu() - cpu0
                peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    except PapermillExecutionError as exc:
        record.status, record.failure_class = "failed", "science"
        record.failed_cell = exc.cell_index
        record.error = _first_line(f"{exc.ename}: {exc.evalue}")
    except (DeadKernelError, CellTimeoutError, TimeoutError) as exc:
        kind = "timeout" if not isinstance(exc, DeadKernelError) else "kernel died"
        record.status, record.failure_class = "failed", "infrastructure"
        record.error = f"{kind}: {_first_line(exc)}"
        if kernel is not None:
            kernel.shutdown()  # may still be busy: the next data id gets a new kernel
    except Exception as exc:
        record.status, record.failure_class = "failed", "infrastructure"
        record.error = _first_line(f"{type(exc).__name__}: {exc}")
        record.traceback = traceback.format_exc(limit=5)
    # the kernel answers only when idle: not after a timeout or a death (it was restarted)
    if base is not None and record.failure_class != "infrastructure" and kernel.alive():
        usage = kernel.usage()
        cpu_s, peak = usage.cpu_s - base.cpu_s, usage.peak_rss_mb
    if record.ok:
        missing = [p for p in item.outputs if not Path(p).exists()]
        if missing:
            record.status, record.failure_class = "failed", "science"
            record.error = f"the recipe finished without writing {', '.join(missing)}"
    # checksums only of a success's files: a failure's are not kept
    record.reads, record.writes = collect_io(
        io_log, item.outputs, start_ns, Path(item.cwd), record.ok
    )
    end = time.time()
    record.end, record.wall_s = end, end - start
    record.cpu_s, record.peak_rss_mb = cpu_s, peak
    record.kernel = "warm" if kernel is not None else "fresh"
    if tmp.exists():
        nb = nbformat.read(tmp, as_version=4)
        if record.failure_class == "science" and record.failed_cell is not None:
            # papermill put its error marker on top and an anchor before the failing cell:
            # point at the cell that holds the error, as the saved notebook numbers it
            record.failed_cell = next(
                (
                    i
                    for i, c in enumerate(nb.cells)
                    if any(o.get("output_type") == "error" for o in c.get("outputs", []))
                ),
                record.failed_cell,
            )
        nb.metadata["twinkles"] = {
            **{
                k: v
                for k, v in asdict(record).items()
                if k not in ("token", "traceback", "reads", "writes")
            },
            "parameters": item.parameters,
            "recipe": str(item.recipe),
            "recipe_checksum": file_checksum(item.recipe),
            "git": common.git,
            "versions": common.versions,
            "reads": {r["path"]: r["checksum"] for r in record.reads},
            "writes": {w["path"]: w["checksum"] for w in record.writes},
        }
        nbformat.write(nb, tmp)
        os.replace(tmp, notebook)
        # the run browser's page of this notebook, made here so it is paid in parallel (and on
        # the Slurm nodes) rather than by the browser build; a page that cannot be made is
        # logged, tried again when the run browser is built, and never fails the science
        try:
            render_html(
                nb,
                notebook.with_suffix(".html"),
                f"{item.step} {item.data_id}",
                "../notebook.css",
            )
        except Exception as exc:  # any nbconvert failure
            log.warning("could not render %s to HTML: %s", notebook, exc)
    else:
        record.notebook = None
    return record
