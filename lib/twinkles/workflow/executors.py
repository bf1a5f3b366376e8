"""Executors: where tasks run. One interface, so the driver has one code path.

* :class:`LocalExecutor`: tasks are run by long-lived worker processes (``python -m
  twinkles.workflow.task --serve``), each in its own process group and keeping its warm kernel
  from task to task, at most ``workers`` CPUs' worth at once; a task past its time limit is
  killed with its worker.
* :class:`SlurmExecutor`: each submission is a job array (submitit ``map_array``), one array
  element per task, with the step's CPUs, memory and time limit. Without slurmdbd ``sacct``
  does not answer, so job states come from ``squeue`` (and ``scontrol`` for the final state).

An executor only reports that a task *ended* (and why, if it knows); what each data id did is
read by the driver from the result files the task wrote. :data:`EXECUTORS` is the registry.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from twinkles.errors import TwinklesError
from twinkles.workflow.environment import task_environment
from twinkles.workflow.records import TaskRecord
from twinkles.workflow.task import WORKER_ENDED, run_task

__all__ = [
    "EXECUTORS",
    "Ended",
    "Executor",
    "LocalExecutor",
    "SlurmExecutor",
    "Submission",
]


@dataclass
class Submission:
    """A task handed to an executor."""

    task_id: str
    spec_path: Path
    cpus: int
    mem_gb: float
    timeout_s: float
    name: str
    submitted: float = field(default_factory=time.time)
    job_id: str | None = None


@dataclass
class Ended:
    """A task that is no longer running, with what the executor knows of how it ended."""

    submission: Submission
    note: str


class Executor:
    """Interface of the executors."""

    name = "base"

    def free_cpus(self) -> int | None:
        """CPUs available for new tasks now (None: let the scheduler queue them)."""
        raise NotImplementedError

    def submit(self, submissions: list[Submission]) -> None:
        """Start the tasks; each submission's ``job_id`` is set."""
        raise NotImplementedError

    def poll(self) -> list[Ended]:
        """The tasks that ended since the last poll, with what the executor knows of how."""
        raise NotImplementedError

    def running(self) -> int:
        """Number of tasks started and not yet seen to end."""
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop every task this executor started."""
        raise NotImplementedError

    def close(self) -> None:
        """The run is over: release what the executor keeps between tasks."""

    @staticmethod
    def kill_stale(job_id: str) -> None:
        """Stop a task left running by a previous driver (``job_id`` as recorded)."""


@dataclass
class _Worker:
    """A long-lived local worker process and the task it runs (None: idle)."""

    proc: subprocess.Popen
    cpus: int
    task: Submission | None = None
    answers: str = ""


class LocalExecutor(Executor):
    """Tasks run by long-lived worker processes on this machine.

    A worker (``python -m twinkles.workflow.task --serve``, in its own process group so that
    its kernel goes with it) runs one task at a time and keeps its warm kernel from task to
    task, so the kernel's start and the science imports are paid once per worker rather than
    once per task. Workers are kept per CPU count (their kernels' thread settings), at most
    ``workers`` CPUs' worth busy at once. A task past its time limit is killed with its worker;
    a worker that dies is not reused.
    """

    name = "local"

    def __init__(self, workers: int, log_dir: Path):
        self.workers = workers
        self.log_dir = log_dir
        self._pool: list[_Worker] = []

    def free_cpus(self) -> int:
        return self.workers - sum(w.cpus for w in self._pool if w.task is not None)

    def running(self) -> int:
        return sum(w.task is not None for w in self._pool)

    def _start_worker(self, cpus: int) -> _Worker:
        # idle workers of another CPU count give way, so the processes stay as many as the CPUs
        for idle in [w for w in self._pool if w.task is None and w.cpus != cpus]:
            self._retire(idle)
        log = open(self.log_dir / f"worker-{len(self._pool)}-{time.time_ns()}.log", "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "twinkles.workflow.task", "--serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            start_new_session=True,  # its own process group: the kernel goes with it
            env=task_environment(cpus),
        )
        log.close()
        os.set_blocking(proc.stdout.fileno(), False)
        worker = _Worker(proc, cpus)
        self._pool.append(worker)
        return worker

    def submit(self, submissions: list[Submission]) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for sub in submissions:
            worker = next(
                (w for w in self._pool if w.task is None and w.cpus == sub.cpus), None
            ) or self._start_worker(sub.cpus)
            sub.submitted = time.time()
            sub.job_id = f"local-{worker.proc.pid}"
            worker.task = sub
            try:
                request = f"{sub.spec_path}\t{self.log_dir / sub.task_id}.log\n"
                worker.proc.stdin.write(request.encode())
                worker.proc.stdin.flush()
            except BrokenPipeError:  # it died while idle: poll reports the task as ended
                pass

    def _finished(self, worker: _Worker) -> bool:
        """Whether the worker has answered that its task ended."""
        try:
            worker.answers += os.read(worker.proc.stdout.fileno(), 65536).decode()
        except (BlockingIOError, ValueError, OSError):
            pass
        lines = worker.answers.split("\n")
        for line in lines[:-1]:
            if worker.task is not None and line.strip() == f"{WORKER_ENDED} {worker.task.task_id}":
                worker.answers = lines[-1]
                return True
        worker.answers = lines[-1]
        return False

    def poll(self) -> list[Ended]:
        ended = []
        for worker in list(self._pool):
            sub = worker.task
            if sub is None:
                if worker.proc.poll() is not None:  # an idle worker that died
                    self._retire(worker)
                continue
            # the exit status first: an answer written before the worker ended is then read
            code = worker.proc.poll()
            if self._finished(worker):
                worker.task = None
                ended.append(Ended(sub, "worker finished the task"))
                if code is not None:
                    self._retire(worker)
                continue
            if code is None and time.time() - sub.submitted > sub.timeout_s:
                self._kill(worker.proc)
                code = worker.proc.wait()
                note = f"timeout: killed after {sub.timeout_s:.0f} s"
            elif code is None:
                continue
            elif code < 0:
                note = f"worker killed by signal {-code} ({signal.Signals(-code).name})"
            else:
                note = f"worker exited with status {code}"
            self._retire(worker)
            ended.append(Ended(sub, note))
        return ended

    def _retire(self, worker: _Worker) -> None:
        """Stop a worker and whatever it started (its kernel), and forget it."""
        self._kill(worker.proc)
        worker.proc.wait()
        for stream in (worker.proc.stdin, worker.proc.stdout):
            try:
                stream.close()
            except (BrokenPipeError, OSError):
                pass
        self._pool.remove(worker)

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def cancel(self) -> None:
        for worker in list(self._pool):
            self._retire(worker)

    def close(self, timeout_s: float = 20.0) -> None:
        """Let idle workers stop their kernels and exit; stop any that do not in time."""
        for worker in self._pool:
            try:
                worker.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
        deadline = time.time() + timeout_s
        for worker in list(self._pool):
            if worker.task is None:
                try:
                    worker.proc.wait(max(0.0, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    pass
            self._retire(worker)

    @staticmethod
    def kill_stale(job_id: str) -> None:
        if not job_id.startswith("local-"):
            return
        pid = int(job_id.removeprefix("local-"))
        try:
            # the worker ran in its own process group, led by itself
            if os.getpgid(pid) == pid:
                os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _run_task_entry(spec_path: str) -> TaskRecord:
    """What a Slurm array element runs (pickled by reference by submitit)."""
    os.environ.setdefault("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    return run_task(spec_path)


class SlurmExecutor(Executor):
    """Tasks as elements of Slurm job arrays, submitted with submitit."""

    name = "slurm"

    def __init__(self, log_dir: Path, partition: str | None, array_parallelism: int):
        if not _command_works(["sinfo", "-h"]):
            raise TwinklesError(
                "Slurm is not reachable (sinfo failed): start it (scripts/services.sh start "
                "slurm) or run with --executor local"
            )
        self.log_dir = log_dir
        self.partition = partition
        self.array_parallelism = array_parallelism
        self._jobs: dict[str, tuple[Any, Submission]] = {}
        self._seen: set[str] = set()

    def free_cpus(self) -> None:
        return None

    def running(self) -> int:
        return len(self._jobs)

    def submit(self, submissions: list[Submission]) -> None:
        import submitit

        groups: dict[tuple, list[Submission]] = {}
        for sub in submissions:
            groups.setdefault((sub.name, sub.cpus, sub.mem_gb, sub.timeout_s), []).append(sub)
        for (name, cpus, mem_gb, timeout_s), subs in groups.items():
            executor = submitit.AutoExecutor(folder=self.log_dir / "%j", cluster="slurm")
            params: dict[str, Any] = dict(
                name=name,
                cpus_per_task=cpus,
                mem_gb=mem_gb,
                timeout_min=max(1, int(timeout_s / 60 + 0.999)),
                slurm_array_parallelism=self.array_parallelism,
            )
            if self.partition:
                params["slurm_partition"] = self.partition
            executor.update_parameters(**params)
            jobs = executor.map_array(_run_task_entry, [str(s.spec_path) for s in subs])
            for job, sub in zip(jobs, subs, strict=True):
                sub.job_id = str(job.job_id)
                self._jobs[sub.task_id] = (job, sub)

    def _active(self) -> dict[str, str]:
        proc = subprocess.run(
            ["squeue", "-h", "-r", "-o", "%i|%T"], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            raise TwinklesError(f"squeue failed: {proc.stderr.strip()}")
        out = {}
        for line in proc.stdout.splitlines():
            job, _, state = line.strip().partition("|")
            out[job] = state
        return out

    @staticmethod
    def final_state(job_id: str) -> str:
        """Slurm's state of a job (``COMPLETED``, ``FAILED``, ``OUT_OF_MEMORY``, ...), or
        ``UNKNOWN``.
        """
        proc = subprocess.run(
            ["scontrol", "show", "job", job_id], capture_output=True, text=True, check=False
        )
        for token in proc.stdout.split():
            if token.startswith("JobState="):
                return token.removeprefix("JobState=")
        return "UNKNOWN"

    def poll(self) -> list[Ended]:
        if not self._jobs:
            return []
        active = self._active()
        ended = []
        for task_id, (_job, sub) in list(self._jobs.items()):
            if sub.job_id in active:
                self._seen.add(sub.job_id)
                continue
            # a job just submitted may not be listed yet; give the scheduler a moment
            if sub.job_id not in self._seen and time.time() - sub.submitted < 10.0:
                continue
            state = self.final_state(sub.job_id)
            del self._jobs[task_id]
            ended.append(Ended(sub, f"Slurm job {sub.job_id} {state}"))
        return ended

    def cancel(self) -> None:
        ids = [sub.job_id for _, sub in self._jobs.values() if sub.job_id]
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True, check=False)
        self._jobs.clear()

    @staticmethod
    def kill_stale(job_id: str) -> None:
        if job_id and not job_id.startswith("local-"):
            subprocess.run(["scancel", job_id], capture_output=True, check=False)


def _command_works(cmd: list[str]) -> bool:
    try:
        return subprocess.run(cmd, capture_output=True, check=False, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


#: Executors by name: ``factory(run_dir, executor_config) -> Executor``.
EXECUTORS: dict[str, Callable[..., Executor]] = {
    "local": lambda run_dir, cfg, workers: LocalExecutor(workers, run_dir / "logs" / "local"),
    "slurm": lambda run_dir, cfg, workers: SlurmExecutor(
        run_dir / "logs" / "slurm", cfg.slurm_partition, cfg.slurm_array_parallelism
    ),
}
