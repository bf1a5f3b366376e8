"""The environment of the processes that run recipes, the same on every executor.

A Slurm job inherits the submitting shell's environment, so the thread counts and malloc
settings are set explicitly: products are then bit-identical between executors.
"""

from __future__ import annotations

import os

__all__ = ["MALLOC_ENV", "task_environment"]

#: glibc malloc settings for the processes that run recipes: large arrays come from the heap,
#: and memory freed stays in the process for the next array instead of going back to the
#: system. On the Firecracker VMs this runs on a page fault costs ~17 us: image_difference on
#: a run1-size visit took 252k of them, 4.4 s of system time against 5.4 s of user time, with
#: glibc's default of one mmap per large array, and 87k (1.2 s) with these, for 5% more peak
#: memory (benchmarks/run.py runs its benchmarks under the same settings).
MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(64 * 2**30)}


def task_environment(cpus: int) -> dict[str, str]:
    """The environment of a task's process: ``cpus`` OpenMP/BLAS threads, and MALLOC_ENV."""
    threads = str(cpus)
    return {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads, **MALLOC_ENV}
