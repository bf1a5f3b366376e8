"""A task: several data ids of one step, run in sequence in one kernel, by one process.

The same function runs a task on the local executor and in a Slurm array element (submitit
calls :func:`run_task`). It writes one result file per data id as soon as that data id is done,
and a task record at the end; the driver reads those files, so a task that is killed part-way
loses only the data ids it had not finished.

On the local executor a task runs in a long-lived *worker* (``python -m
twinkles.workflow.task --serve``, :func:`serve`): it reads task specs from its standard input,
one path per line, runs each in the same warm kernel, and answers ``ended TASK_ID`` on its
standard output. The kernel's start and the science imports (~3-4 s of CPU) are then paid once
per worker, not once per task; the kernel is reset between data ids as within a task.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time
import traceback
from collections.abc import Iterable
from typing import TextIO

from twinkles.workflow.environment import task_environment
from twinkles.workflow.execute import execute_item, job_id
from twinkles.workflow.kernel import WarmKernel
from twinkles.workflow.records import TaskRecord, TaskSpec, write_record

__all__ = ["WORKER_ENDED", "run_task", "serve"]

#: What a worker answers on its standard output when a task is done: this, then the task id.
WORKER_ENDED = "ended"


def _cpu_self_and_children() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return cpu, max(own.ru_maxrss, children.ru_maxrss) / 1024.0


def _live_kernel_cpu(kernel: WarmKernel | None) -> float:
    """CPU seconds of the kernel running now (0 without one): a kernel that has ended is in
    this process's children's usage instead."""
    if kernel is None or not kernel.alive():
        return 0.0
    try:
        return kernel.usage().cpu_s
    except Exception:  # busy or dying: what it used shows once it has been reaped
        return 0.0


def run_task(spec_path: str, kernel: WarmKernel | None = None) -> TaskRecord:
    """Run every data id of the task described in ``spec_path``; returns the task record.

    Parameters
    ----------
    spec_path : str
        The task's spec (:class:`~twinkles.workflow.records.TaskSpec` as JSON).
    kernel : WarmKernel, optional
        A warm kernel lent by a long-lived worker, used for the task's data ids and left
        running; without it, a warm task starts its own and stops it at the end.

    Returns
    -------
    TaskRecord
        The task's CPU (its process, its kernels), wall time, peak memory and kernel starts.
    """
    start = time.time()
    spec = TaskSpec.read(spec_path)
    # the same threads and malloc settings on every executor (a Slurm job inherits the
    # submitting shell's environment), so products are bit-identical between them
    os.environ.update(task_environment(spec.cpus))
    lent = kernel is not None and spec.kernel == "warm"
    if not lent:
        kernel = None
        if spec.kernel == "warm":
            kernel = WarmKernel(spec.common.kernel_name, tuple(spec.kernel_imports))
    # a lent kernel's CPU so far belongs to earlier tasks; if it dies in this one, all of it
    # moves into the children's usage, and the same baseline still applies
    cpu0 = _cpu_self_and_children()[0] + _live_kernel_cpu(kernel if lent else None)
    starts0 = kernel.starts if kernel is not None else 0
    done, peaks = 0, []
    try:
        for item in spec.items:
            result = execute_item(item, spec.common, kernel)
            write_record(result, item.result)
            done += 1
            if result.peak_rss_mb is not None:
                peaks.append(result.peak_rss_mb)
    finally:
        starts = kernel.starts - starts0 if kernel is not None else done
        if kernel is not None and not lent:
            kernel.shutdown()
    cpu, peak = _cpu_self_and_children()
    cpu += _live_kernel_cpu(kernel if lent else None)
    if lent:  # the children's peak is that of every kernel this worker ever had
        peak = max([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, *peaks])
    end = time.time()
    record = TaskRecord(
        token=spec.common.token,
        task_id=spec.task_id,
        job_id=job_id(),
        host=socket.gethostname(),
        start=start,
        end=end,
        wall_s=end - start,
        cpu_s=cpu - cpu0,
        peak_rss_mb=peak,
        kernel_starts=starts,
        n_items=done,
    )
    write_record(record, spec.task_result)
    return record


def serve(requests: Iterable[str] = sys.stdin, answers: TextIO | None = None) -> int:
    """Run tasks as they come, in one warm kernel, until ``requests`` ends.

    Each request line is ``SPEC_PATH`` or ``SPEC_PATH<TAB>LOG_PATH``: the task's output goes to
    LOG_PATH (the worker's own standard output and error are redirected there while it runs).
    After each task the worker writes ``ended TASK_ID`` to ``answers`` (by default a copy of
    its standard output taken at start).
    """
    if answers is None:
        answers = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    # the kernel outlives the task that starts it: its output goes to the worker's own log
    kernel_output = os.dup(sys.stderr.fileno())
    kernel: WarmKernel | None = None
    try:
        for line in requests:
            spec_path, _, log_path = line.rstrip("\n").partition("\t")
            if not spec_path:
                continue
            spec = TaskSpec.read(spec_path)
            if kernel is None or (kernel.kernel_name, kernel.imports) != (
                spec.common.kernel_name,
                tuple(spec.kernel_imports),
            ):
                if kernel is not None:
                    kernel.shutdown()
                kernel = WarmKernel(
                    spec.common.kernel_name, tuple(spec.kernel_imports), output=kernel_output
                )
            if log_path:
                _redirect_output(log_path)
            try:
                run_task(spec_path, kernel)
            except Exception:  # a bug outside the notebooks: this task's data ids come to
                # nothing (the driver retries them), and the worker goes on
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                answers.write(f"{WORKER_ENDED} {spec.task_id}\n")
                answers.flush()
    finally:
        if kernel is not None:
            kernel.shutdown()
    return 0


def _redirect_output(path: str) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.dup2(fd, 1)
        os.dup2(fd, 2)
    finally:
        os.close(fd)


def main() -> int:
    """Entry point of a worker process: run the task spec given on the command line, or
    (``--serve``) the task specs read from standard input."""
    if len(sys.argv) != 2:
        print("usage: python -m twinkles.workflow.task TASK_SPEC.json | --serve", file=sys.stderr)
        return 2
    # matplotlib in the kernel must not look for a display
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    if sys.argv[1] == "--serve":
        return serve()
    run_task(sys.argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
