"""A task: several data ids of one step, run in sequence in one kernel, by one process.

The same function runs a task on the local executor (``python -m twinkles.workflow.task SPEC``)
and in a Slurm array element (submitit calls :func:`run_task`). It writes one result file per
data id as soon as that data id is done, and a task record at the end; the driver reads those
files, so a task that is killed part-way loses only the data ids it had not finished.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time

from twinkles.files import INVALID_ENV
from twinkles.workflow.environment import task_environment
from twinkles.workflow.execute import execute_item, job_id
from twinkles.workflow.kernel import WarmKernel
from twinkles.workflow.records import TaskRecord, TaskSpec, write_record

__all__ = ["run_task"]


def _cpu_self_and_children() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
    return cpu, max(own.ru_maxrss, children.ru_maxrss) / 1024.0


def run_task(spec_path: str) -> TaskRecord:
    """Run every data id of the task described in ``spec_path``; returns the task record."""
    start, cpu0 = time.time(), _cpu_self_and_children()[0]
    spec = TaskSpec.read(spec_path)
    # the same threads and malloc settings on every executor (a Slurm job inherits the
    # submitting shell's environment), so products are bit-identical between them; and the
    # driver's list of datasets the run does not vouch for
    os.environ.update(task_environment(spec.cpus))
    if spec.common.invalid_datasets:
        os.environ[INVALID_ENV] = spec.common.invalid_datasets

    kernel = None
    if spec.kernel == "warm":
        kernel = WarmKernel(spec.common.kernel_name, tuple(spec.kernel_imports))
    done = 0
    try:
        for item in spec.items:
            write_record(execute_item(item, spec.common, kernel), item.result)
            done += 1
    finally:
        starts = kernel.starts if kernel is not None else done
        if kernel is not None:
            kernel.shutdown()
    cpu, peak = _cpu_self_and_children()
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


def main() -> int:
    """Entry point of a worker process: run the task spec given on the command line."""
    if len(sys.argv) != 2:
        print("usage: python -m twinkles.workflow.task TASK_SPEC.json", file=sys.stderr)
        return 2
    # matplotlib in the kernel must not look for a display
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    run_task(sys.argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
