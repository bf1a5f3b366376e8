"""The driver of ``twinkles run``: plan, check, submit, follow, record, resume.

1. **Plan.** Every step of the pipeline times every data id of its dimension is a *node*, with
   its dependencies, parameters (run directory, data id, the run config's overrides), inputs,
   outputs, notebook path and resources.
2. **Check.** Every parameter set of every node to run is checked against its recipe's
   contract before anything is submitted; all problems are reported in one message.
3. **Decide.** A node runs again when it is not done, when its fingerprint changed (recipe,
   library source, parameters), when a file it read or wrote changed since (the butler's
   record of its last execution: a template rebuilt by another run makes the difference
   images stale), when its outputs or notebook are gone, or when something it depends on runs
   again. ``force`` runs everything selected; ``only_failed`` only failed and blocked nodes.
4. **Run.** Ready nodes (dependencies done) are grouped per step into tasks of up to
   ``ids_per_task`` data ids and handed to the executor; before a node's new attempt its old
   outputs are removed, so nothing downstream reads them. Results are read back from files.
   A science failure is final (unless ``retry_science_failures``); an infrastructure failure is
   retried up to ``max_retries`` times (on Slurm with more memory). Dependants of a failed
   node are blocked, in the same pass; everything else goes on. The datasets of nodes the run
   database does not call done and verified (failed, blocked, stale) are listed for the
   butler (``work/invalid.json``), which hides them from every recipe: gathering steps take
   what the run database vouches for, never whatever files exist.
5. **Resume.** Only the driver writes the run database, and only one driver runs a run
   directory at a time (:mod:`twinkles.workflow.lock`). Nodes it finds ``running`` from a
   driver that died are stopped (their process group or Slurm job); those whose result came
   back done, with outputs that verify, are kept as done, the others run again; temporary
   notebooks are removed. Ctrl-C cancels the running tasks and leaves the database ready for
   the same command to resume.

Everything that can be refused is refused before the run directory is touched
(:func:`preflight`): unknown steps, ``--visits`` or recipe parameters, resource requests beyond
the machine or the Slurm partition, a sky too large for memory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from astropy.io import fits

from twinkles.config import ConfigError, Run
from twinkles.datasets import dataset_types
from twinkles.errors import TwinklesError
from twinkles.files import atomic_path, cached_checksum
from twinkles.inputs.eimages import find_eimages
from twinkles.sim.cadence import make_visit_table
from twinkles.sim.sky import random_stream, sky_size_problems
from twinkles.workflow.contract import ParameterError, read_contract
from twinkles.workflow.execute import code_versions
from twinkles.workflow.executors import (
    EXECUTORS,
    Executor,
    LocalExecutor,
    SlurmExecutor,
    Submission,
)
from twinkles.workflow.lock import RunLock
from twinkles.workflow.records import (
    ItemResult,
    TaskCommon,
    TaskRecord,
    TaskSpec,
    WorkItem,
    read_record,
)
from twinkles.workflow.rundb import NodeRow, RunDatabase, now
from twinkles.workflow.spec import PIPELINE, DataId, Pipeline, Resources, Step, data_id_str
from twinkles.workflow.storage import DiskMonitor, EphemeralFiles

__all__ = [
    "Node",
    "RunSummary",
    "executor_limits",
    "library_fingerprint",
    "make_plan",
    "planned_visits",
    "preflight",
    "run_pipeline",
    "submission_order",
]

Key = tuple[str, str]
_LIB = Path(__file__).resolve().parents[1]


@dataclass
class Node:
    """One step for one data id."""

    step: Step
    data_id: DataId
    deps: list[Key]
    parameters: dict[str, Any]
    outputs: list[Path]
    notebook: Path
    resources: Resources

    @property
    def key(self) -> Key:
        """(step, data id string): the node's key in the run database."""
        return (self.step.name, data_id_str(self.data_id))


@dataclass
class RunSummary:
    """What a call of :func:`run_pipeline` did."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    failures: list[NodeRow] = field(default_factory=list)
    interrupted: bool = False
    #: What preparing the inputs reported (ingested and refused files, ...).
    notes: list[str] = field(default_factory=list)
    #: Problems found after the run (an external input file changed, ...): the run fails.
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed, nothing was interrupted and preflight found no problem."""
        return not self.failures and not self.interrupted and not self.problems

    def lines(self) -> list[str]:
        """What the run did, as lines for the terminal: counts per step, then each failure with its
        cell and notebook, then problems.
        """
        out = list(self.notes)
        for step, c in self.counts.items():
            out.append(
                f"{step}: {c.get('done', 0)} done, {c.get('failed', 0)} failed, "
                f"{c.get('blocked', 0)} blocked, {c.get('skipped', 0)} up to date"
            )
        for row in self.failures:
            where = f" (cell {row.failed_cell})" if row.failed_cell is not None else ""
            out.append(
                f"  FAILED {row.step} {row.data_id}{where}: {row.error}"
                + (f"\n         {row.notebook}" if row.notebook else "")
            )
        out += [f"  PROBLEM {p}" for p in self.problems]
        return out


#: Library code that decides how recipes run, not what they compute: not in the fingerprint.
_ORCHESTRATION = ("cli.py", "workflow")


def library_fingerprint() -> str:
    """Checksum of the twinkles library source that recipes compute with.

    A change anywhere in it reruns everything; the command line and the workflow package are
    left out, since they decide how recipes run, not what they compute.
    """
    digest = hashlib.sha256()
    for path in sorted(_LIB.rglob("*.py")):
        if path.relative_to(_LIB).parts[0] in _ORCHESTRATION:
            continue
        digest.update(str(path.relative_to(_LIB)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def git_state() -> dict[str, Any]:
    """Commit of the source tree and whether it has uncommitted changes."""
    root = _LIB.parents[1]

    def git(*args: str) -> str | None:
        try:
            proc = subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return proc.stdout.strip() if proc.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status) if status is not None else None}


def _file_checksum_cached(path: Path, cache: dict[Path, str]) -> str:
    if path not in cache:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        cache[path] = digest
    return cache[path]


def node_fingerprint(node: Node, recipe_sum: str, library: str) -> str:
    """Recipe, library and parameters of a node (what it read is checked apart:
    :func:`io_changed`)."""
    # where the run directory is (run_dir) is not what a node computes: a moved or copied
    # run directory is still up to date
    parameters = {k: v for k, v in node.parameters.items() if k != "run_dir"}
    payload = {"recipe": recipe_sum, "library": library, "parameters": parameters}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[
        :24
    ]


def _file_changed(entry: dict, base: Path, ephemeral: EphemeralFiles | None = None) -> bool:
    """Whether a recorded file (path relative to the run directory ``base``, size, mtime_ns,
    checksum) is gone or its bytes differ; a file removed as ephemeral with the same checksum
    is unchanged."""
    path = base / entry["path"]
    try:
        st = os.stat(path)
    except OSError:
        return ephemeral is None or not ephemeral.was_removed(entry)
    if st.st_size == entry["size"] and st.st_mtime_ns == entry["mtime_ns"]:
        return False
    # touched: the same bytes again (a deterministic rerun) leave it unchanged
    return entry.get("checksum") is None or cached_checksum(path) != entry["checksum"]


def io_changed(row: NodeRow, base: Path, ephemeral: EphemeralFiles | None = None) -> str | None:
    """Why a done node's record no longer holds (a file it read or wrote changed), or None;
    ``base`` is the run directory its paths are relative to."""
    for column, what in (("writes", "its output"), ("reads", "its input")):
        for entry in json.loads(getattr(row, column) or "[]"):
            if _file_changed(entry, base, ephemeral):
                return f"{what} {entry['path']} changed since it ran"
    return None


def submission_order(ready: list[Step], pipeline: Pipeline) -> list[Step]:
    """The order in which steps with ready data ids get the free CPUs.

    Gathering steps (a filter's, a patch's, the run's) first: their dependants wait on them
    alone, while per-visit work fills the other CPUs meanwhile (ordering by fewest ready
    items instead splits per-visit steps into more, smaller tasks). Within each kind, the
    step furthest down the pipeline first: finishing what is under way before starting
    more frees its intermediates soonest (a filter's warps once its template is made,
    rather than every filter's coadd first with all their warps on disk; an eimage once it
    is calibrated) and lets its dependants start.
    """
    position = {step.name: k for k, step in enumerate(pipeline.steps)}
    return sorted(ready, key=lambda step: (step.dimension == "visit", -position[step.name]))


def _step_resources(step: Step, run: Run) -> Resources:
    override = run.config.steps.get(step.name)
    if override is None:
        return step.resources
    return Resources(
        cpus=override.cpus or step.resources.cpus,
        mem_gb=override.mem_gb or step.resources.mem_gb,
        timeout_min=override.timeout_min or step.resources.timeout_min,
    )


def make_plan(run: Run, pipeline: Pipeline) -> dict[Key, Node]:
    """Every node of the pipeline for this run, in dependency order."""
    unknown = sorted(set(run.config.steps) - {s.name for s in pipeline.steps})
    if unknown:
        known = ", ".join(s.name for s in pipeline.steps)
        raise ConfigError(
            str(run.config_path),
            [f"steps.{name}: unknown step (the pipeline has {known})" for name in unknown],
        )
    butler = run.butler
    filters: dict[int, str] = {}
    if butler.exists("visitTable"):
        visits = butler.get("visitTable")
        filters = {
            int(v): str(f) for v, f in zip(visits["obsHistID"], visits["filter"], strict=True)
        }
    plan: dict[Key, Node] = {}
    every = run.config.executor.figure_every
    for step in pipeline.steps:
        overrides = run.config.steps.get(step.name)
        extra = dict(overrides.parameters) if overrides else {}
        resources = _step_resources(step, run)
        sampled = (
            every > 1
            and step.dimension == "visit"
            and "figures" not in extra
            and "figures" in read_contract(step.recipe_path(pipeline.cookbook)).names()
        )
        for rank, data_id in enumerate(pipeline.data_ids(run, step.dimension)):
            if sampled:
                extra = {**extra, "figures": rank % every == 0}
            clash = sorted(set(extra) & (set(data_id) | {"run_dir"}))
            if clash:
                raise ConfigError(
                    str(run.config_path),
                    [
                        f"steps.{step.name}.parameters.{k}: set by the pipeline for each data id"
                        for k in clash
                    ],
                )
            deps = []
            for name in step.depends:
                upstream = pipeline.step(name)
                deps += [
                    (name, data_id_str(d))
                    for d in pipeline.upstream(run, step, data_id, upstream, filters)
                ]
            did = data_id_str(data_id)
            node = Node(
                step=step,
                data_id=data_id,
                deps=deps,
                parameters={"run_dir": str(run.dir.resolve()), **data_id, **extra},
                outputs=[
                    butler.path(ds, **d)
                    for ds, d in step.output_datasets(run, data_id, pipeline.cookbook)
                ],
                notebook=run.dir / "notebooks" / step.name / f"{did}.ipynb",
                resources=resources,
            )
            plan[node.key] = node
    return plan


def check_parameters(nodes: list[Node], pipeline: Pipeline) -> None:
    """Check every parameter set against its recipe; one :class:`ParameterError` for all."""
    problems: list[str] = []
    for step_name, group in itertools.groupby(nodes, key=lambda n: n.step.name):
        step = pipeline.step(step_name)
        contract = read_contract(step.recipe_path(pipeline.cookbook))
        seen: set[str] = set()
        for node in group:
            for problem in contract.problems(node.parameters, context=f"steps.{step_name}"):
                if problem not in seen:
                    seen.add(problem)
                    problems.append(problem)
    if problems:
        raise ParameterError(problems)


class _Driver:
    def __init__(
        self,
        run: Run,
        pipeline: Pipeline,
        executor_kind: str,
        workers: int | None,
        progress: bool,
    ):
        self.run = run
        self.pipeline = pipeline
        self.cfg = run.config.executor
        self.kind = executor_kind
        self.db = RunDatabase(run.dir / "run.db")
        self.token = uuid.uuid4().hex[:12]
        self.work = run.dir / "work"
        self.library = library_fingerprint()
        self.recipe_sums: dict[Path, str] = {}
        self.common = TaskCommon(
            token=self.token,
            git=git_state(),
            versions=code_versions(),
            kernel_name="python3",
            invalid_datasets=str(self.work / "invalid.json"),
        )
        self.workers = workers or self.cfg.workers or len(os.sched_getaffinity(0))
        self.progress = progress
        self._task_counter = itertools.count(1)
        self.ephemeral: EphemeralFiles | None = None
        self.fresh: set[Key] = set()
        self.disk = DiskMonitor(run.dir, self.db)

    def track_storage(self, plan: dict[Key, Node]) -> None:
        """Index the ephemeral files that done nodes hold (see :mod:`.storage`)."""
        rows = {(r.step, r.data_id): r for r in self.db.nodes()}
        datasets = self.run.config.storage.ephemeral_datasets(self.run.external)
        self.ephemeral = EphemeralFiles(self.run.dir, self.db, datasets, plan, rows)

    def recipe_sum(self, node: Node) -> str:
        return _file_checksum_cached(
            node.step.recipe_path(self.pipeline.cookbook), self.recipe_sums
        )

    def fingerprint(self, node: Node) -> str:
        return node_fingerprint(node, self.recipe_sum(node), self.library)

    # -- deciding --------------------------------------------------------------------------

    def recover(self, plan: dict[Key, Node]) -> list[Key]:
        """Take over what a driver that died left running; returns the nodes kept as done.

        Its tasks are stopped first (their process group, or Slurm job). A node whose result
        file came back done from that driver's last attempt, with outputs that still verify,
        is kept as done (nothing finished runs again); the others run again. Temporary
        notebooks and I/O records of killed workers are removed.
        """
        stale = [r for r in self.db.nodes() if r.state == "running"]
        for row in stale:
            if row.job_id:
                (LocalExecutor if row.job_id.startswith("local-") else SlurmExecutor).kill_stale(
                    row.job_id
                )
        kept = []
        for row in stale:
            key = (row.step, row.data_id)
            result = read_record(
                ItemResult, self.work / "results" / row.step / f"{row.data_id}.json"
            )
            node = plan.get(key)
            if (
                node is not None
                and result is not None
                and result.ok
                and row.token is not None
                and result.token == row.token
                and result.attempt == row.attempts
                and node.notebook.exists()
                and not any(_file_changed(w, self.run.dir, self.ephemeral) for w in result.writes)
            ):
                self._record_done(node, row.attempts, result, row.job_id)
                kept.append(key)
            else:
                self.db.set_state([key], "pending")
        notebooks = self.run.dir / "notebooks"
        if notebooks.exists():
            for leftover in [*notebooks.glob("*/.*.tmp.ipynb"), *notebooks.glob("*/.*.io.jsonl")]:
                leftover.unlink(missing_ok=True)
        return kept

    def _record_done(
        self,
        node: Node,
        attempt: int,
        result: ItemResult,
        job_id: str | None,
        task_id: str | None = None,
    ) -> None:
        """A node's success in the run database: measurements, fingerprint, what it read and
        wrote."""
        measured = _measured(result, job_id)
        self.db.record_attempt(
            step=node.step.name,
            data_id=data_id_str(node.data_id),
            attempt=attempt,
            task_id=task_id,
            outcome="done",
            **measured,
        )
        self.db.set_state(
            [node.key],
            "done",
            fingerprint=self.fingerprint(node),
            attempts=attempt,
            failed_cell=None,
            notebook=result.notebook or str(node.notebook),
            reads=json.dumps(result.reads),
            writes=json.dumps(result.writes),
            **measured,
        )

    def select(
        self,
        plan: dict[Key, Node],
        steps: list[str] | None,
        force: bool,
        only_failed: bool,
        where: dict[str, set] | None = None,
    ) -> tuple[list[Node], list[Node]]:
        """(nodes to run, selected nodes already up to date)."""
        chosen = set(steps) if steps else {s.name for s in self.pipeline.steps}
        where = where or {}
        rows = {(r.step, r.data_id): r for r in self.db.nodes()}
        # writers that must rebuild a removed intermediate for a reader that runs again
        rebuild: set[Key] = set()
        while True:
            todo, fresh = self._select_pass(plan, rows, chosen, where, force, only_failed, rebuild)
            more = set()
            if self.ephemeral is not None:
                more = self.ephemeral.writers_to_rerun(todo, rows) & set(plan)
            if more <= rebuild:
                break
            rebuild |= more
        self.fresh = {n.key for n in fresh}
        return list(todo.values()), fresh

    def _select_pass(
        self,
        plan: dict[Key, Node],
        rows: dict[Key, NodeRow],
        chosen: set[str],
        where: dict[str, set],
        force: bool,
        only_failed: bool,
        rebuild: set[Key],
    ) -> tuple[dict[Key, Node], list[Node]]:
        todo: dict[Key, Node] = {}
        fresh: list[Node] = []
        for key, node in plan.items():
            if key not in rebuild:
                if node.step.name not in chosen:
                    continue
                if any(k in node.data_id and node.data_id[k] not in v for k, v in where.items()):
                    continue
            row = rows.get(key)
            if only_failed:
                stale = row is not None and row.state in ("failed", "blocked")
            else:
                stale = (
                    force
                    or key in rebuild
                    or row is None
                    or row.state != "done"
                    or row.fingerprint != self.fingerprint(node)
                    or not node.notebook.exists()
                    or not all(self._output_present(p) for p in node.outputs)
                    or io_changed(row, self.run.dir, self.ephemeral) is not None
                )
            # what depends on something that runs again runs again
            stale = stale or any(d in todo for d in node.deps)
            if stale:
                todo[key] = node
            elif not only_failed:  # with --only-failed the others are not judged
                fresh.append(node)
        return todo, fresh

    def _output_present(self, path: Path) -> bool:
        """A declared output exists, or was removed as ephemeral (its record says so)."""
        return path.exists() or (self.ephemeral is not None and self.ephemeral.output_removed(path))

    # -- running ---------------------------------------------------------------------------

    def run_nodes(self, todo: list[Node], plan: dict[Key, Node]) -> RunSummary:
        executor = EXECUTORS[self.kind](self.run.dir, self.cfg, self.workers)
        if self.kind == "local":  # the cores the whole run's CPU efficiency is counted against
            self.db.set_meta("local_workers", str(self.workers))
        plan_keys = {n.key: n for n in todo}
        rows = {(r.step, r.data_id): r for r in self.db.nodes()}
        self._watch_io(plan, rows, plan_keys)
        attempts = {n.key: 0 for n in todo}
        self.db.upsert(
            NodeRow(
                step=n.step.name,
                data_id=data_id_str(n.data_id),
                state="pending",
                notebook=str(n.notebook),
                fingerprint=rows[n.key].fingerprint if n.key in rows else None,
            )
            for n in todo
        )
        state = {n.key: "pending" for n in todo}
        submitted: dict[str, tuple[Submission, list[Node], dict]] = {}
        summary = RunSummary()
        bar = self._progress_bar(len(todo))
        self._write_validity(state)
        try:
            changed = True  # states change only when tasks end: scan the plan only then
            while any(s in ("pending", "running") for s in state.values()):
                if changed:
                    self._block_dependants(todo, state, rows)
                    self._submit_ready(executor, todo, state, attempts, submitted)
                ended_tasks = executor.poll()
                changed = bool(ended_tasks)
                for ended in ended_tasks:
                    sub, nodes, spec = submitted.pop(ended.submission.task_id)
                    self._collect(sub, nodes, spec, ended.note, state, attempts)
                    self._recheck_readers(nodes)
                    self._hold_intermediates([n for n in nodes if state[n.key] == "done"])
                if ended_tasks:
                    self._write_validity(state)
                    self.release_intermediates(state)
                self.disk.sample()
                if bar is not None:
                    finished = sum(s in ("done", "failed", "blocked") for s in state.values())
                    bar.n = finished
                    bar.refresh()
                if any(s in ("pending", "running") for s in state.values()):
                    time.sleep(self.cfg.poll_seconds if self.kind == "slurm" else 0.1)
            self.release_intermediates(state)
            self.disk.sample(force=True)
        except KeyboardInterrupt:
            executor.cancel()
            running = [k for k, s in state.items() if s == "running"]
            self.db.set_state(running, "pending")
            summary.interrupted = True
        finally:
            executor.close()
            if bar is not None:
                bar.close()
        for n in todo:
            c = summary.counts.setdefault(n.step.name, {})
            c[state[n.key]] = c.get(state[n.key], 0) + 1
        final = {(r.step, r.data_id): r for r in self.db.nodes()}
        summary.failures = [final[k] for k in plan_keys if state[k] in ("failed", "blocked")]
        return summary

    # -- what the run vouches for ------------------------------------------------------------

    def _watch_io(self, plan: dict[Key, Node], rows: dict[Key, NodeRow], todo: dict) -> None:
        """Check once what the done nodes outside this invocation read and wrote, and index
        which of them read which file, so a file redone now re-checks only its readers."""
        self.plan = plan
        self.rows = rows
        self.io_state: dict[Key, str | None] = {}
        self.readers: dict[str, set[Key]] = defaultdict(set)
        for key, row in rows.items():
            if key in todo or key not in plan or row.state != "done":
                continue
            self.io_state[key] = io_changed(row, self.run.dir, self.ephemeral)
            for entry in json.loads(row.reads or "[]"):
                self.readers[str(self.run.dir / entry["path"])].add(key)

    def _hold_intermediates(self, nodes: list[Node]) -> None:
        """Nodes just done: the ephemeral files they wrote wait for their readers."""
        if self.ephemeral is None or not self.ephemeral.datasets:
            return
        for node in nodes:
            row = self.db.node(*node.key)
            if row is not None:
                self.ephemeral.hold(node.key, json.loads(row.writes or "[]"))

    def release_intermediates(self, state: dict[Key, str]) -> None:
        """Remove the ephemeral files whose readers are all done (see :mod:`.storage`)."""
        if self.ephemeral is None or not self.ephemeral.datasets:
            return
        if self.ephemeral.release(state, self.fresh):
            self.disk.sample(force=True)

    def _recheck_readers(self, nodes: list[Node]) -> None:
        """The done nodes that read a file these nodes rewrote or removed: checked again."""
        for node in nodes:
            for path in node.outputs:
                for key in self.readers.get(str(path), ()):
                    self.io_state[key] = io_changed(self.rows[key], self.run.dir, self.ephemeral)

    def _write_validity(self, state: dict[Key, str]) -> None:
        """``work/invalid.json``: the datasets of nodes the run database does not vouch for,
        with the reason; the butler hides them (see the module docstring)."""
        invalid: dict[str, str] = {}
        for key, node in self.plan.items():
            if state.get(key) in ("pending", "running", "done"):
                continue  # redone in this invocation: its readers wait for it
            row = self.rows.get(key)
            if row is None:
                reason = "never run in this run"
            elif row.state == "done":
                if self.io_state.get(key) is None:
                    continue
                reason = f"is stale: {self.io_state[key]}"
            else:
                reason = row.state + (f" ({row.error})" if row.error else "")
            if state.get(key) in ("failed", "blocked"):
                reason = state[key]
            paths = [str(p) for p in node.outputs]
            if row is not None and row.writes:
                paths += [str(self.run.dir / w["path"]) for w in json.loads(row.writes)]
            for path in paths:
                invalid[path] = f"{node.step.name} {key[1]} {reason}"
        self.work.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.invalid_path) as tmp:
            tmp.write_text(json.dumps(invalid, indent=0, sort_keys=True))

    @property
    def invalid_path(self) -> Path:
        return self.work / "invalid.json"

    def _progress_bar(self, total: int):
        if not self.progress or not sys.stderr.isatty() or total == 0:
            return None
        from tqdm import tqdm

        return tqdm(total=total, unit="data id", desc=self.run.config.name, file=sys.stderr)

    def _block_dependants(
        self, todo: list[Node], state: dict[Key, str], rows: dict[Key, NodeRow]
    ) -> None:
        """Block pending nodes whose dependencies failed, or were not run and are not done.

        A node blocked here counts at once for the nodes after it, in the same pass, so a
        gathering step whose upstream step was just blocked is blocked too, never submitted
        on inputs that will not come.
        """
        changed = True
        while changed:
            changed = False
            for node in todo:
                if state[node.key] != "pending":
                    continue
                reason = (
                    self._partial_block_reason(node, state, rows)
                    if node.step.partial
                    else self._block_reason(node, state, rows)
                )
                if reason:
                    state[node.key] = "blocked"
                    self.db.set_state(
                        [node.key],
                        "blocked",
                        failure_class="blocked",
                        error=reason,
                        failed_cell=None,
                    )
                    changed = True

    @staticmethod
    def _block_reason(node: Node, state: dict[Key, str], rows: dict[Key, NodeRow]) -> str | None:
        for dep in node.deps:
            if dep in state:  # runs in this invocation
                if state[dep] in ("failed", "blocked"):
                    return f"needs {dep[0]} {dep[1]}, which failed"
            elif dep not in rows or rows[dep].state != "done":
                was = rows[dep].state if dep in rows else "never run"
                return f"needs {dep[0]} {dep[1]} ({was}): twinkles run --steps {dep[0]}"
        return None

    @staticmethod
    def _partial_block_reason(
        node: Node, state: dict[Key, str], rows: dict[Key, NodeRow]
    ) -> str | None:
        """A gathering step waits for its inputs to finish and runs on those that succeeded;
        it is blocked only when every input of an upstream step failed or never ran."""

        def final(dep: Key) -> str:
            if dep in state:
                return state[dep]
            return rows[dep].state if dep in rows else "never run"

        by_step: dict[str, list[str]] = defaultdict(list)
        for dep in node.deps:
            by_step[dep[0]].append(final(dep))
        for name, states in by_step.items():
            undecided = any(s in ("pending", "running") for s in states)
            if not undecided and not any(s == "done" for s in states):
                return f"no {name} input succeeded ({len(states)} failed or not run)"
        return None  # every upstream step has a success, or may still have one

    def _submit_ready(
        self,
        executor: Executor,
        todo: list[Node],
        state: dict[Key, str],
        attempts: dict[Key, int],
        submitted: dict,
    ) -> None:
        ready = [
            n
            for n in todo
            if state[n.key] == "pending"
            and (
                all(state.get(d, "done") == "done" for d in n.deps)
                or (  # _block_dependants has blocked those with no usable input
                    n.step.partial
                    and all(state.get(d, "done") in ("done", "failed", "blocked") for d in n.deps)
                )
            )
        ]
        if not ready:
            return
        free = executor.free_cpus()
        by_step: dict[str, list[Node]] = defaultdict(list)
        for n in ready:
            by_step[n.step.name].append(n)
        submissions = []
        ordered = [
            (step.name, by_step[step.name])
            for step in submission_order(
                [nodes[0].step for nodes in by_step.values()], self.pipeline
            )
        ]
        for step_name, nodes in ordered:
            res = nodes[0].resources
            if free is None:  # a scheduler queues the tasks: fill them to share start-up
                per_task = self.cfg.ids_per_task
            else:  # balance over the local workers
                slots = self.workers // res.cpus or 1
                per_task = min(self.cfg.ids_per_task, max(1, math.ceil(len(nodes) / slots)))
            chunks = [nodes[i : i + per_task] for i in range(0, len(nodes), per_task)]
            if free is not None:
                chunks = chunks[: free // res.cpus]
                free -= len(chunks) * res.cpus
            for chunk in chunks:
                sub, spec = self._make_task(step_name, chunk, attempts, per_task)
                submissions.append(sub)
                submitted[sub.task_id] = (sub, chunk, spec)
                for n in chunk:
                    state[n.key] = "running"
        if not submissions:
            return
        executor.submit(submissions)
        for sub in submissions:
            for n in submitted[sub.task_id][1]:
                self.db.set_state(
                    [n.key],
                    "running",
                    job_id=sub.job_id,
                    start=now(),
                    attempts=attempts[n.key],
                    token=self.token,
                )

    def _make_task(
        self, step_name: str, nodes: list[Node], attempts: dict[Key, int], per_task: int
    ):
        task_id = f"{self.token}-{next(self._task_counter):05d}"
        items = []
        for n in nodes:
            attempts[n.key] += 1
            _remove_outputs(n)
            items.append(
                WorkItem(
                    step=n.step.name,
                    data_id=data_id_str(n.data_id),
                    recipe=str(n.step.recipe_path(self.pipeline.cookbook)),
                    parameters=n.parameters,
                    notebook=str(n.notebook),
                    outputs=[str(p) for p in n.outputs],
                    attempt=attempts[n.key],
                    timeout_s=n.resources.timeout_min * 60.0,
                    cwd=str(self.run.dir.resolve()),
                    result=str(
                        self.work / "results" / n.step.name / f"{data_id_str(n.data_id)}.json"
                    ),
                )
            )
        spec = TaskSpec(
            task_id=task_id,
            cpus=nodes[0].resources.cpus,
            kernel=self.cfg.kernel,
            kernel_imports=list(self.pipeline.kernel_imports),
            common=self.common,
            items=items,
            task_result=str(self.work / "tasks" / f"{task_id}.result.json"),
        )
        spec_path = self.work / "tasks" / f"{task_id}.json"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec.write(spec_path)
        res = nodes[0].resources
        worst_attempt = max(attempts[n.key] for n in nodes)
        mem = res.mem_gb * self.cfg.memory_growth_on_retry ** (worst_attempt - 1)
        sub = Submission(
            task_id=task_id,
            spec_path=spec_path,
            cpus=res.cpus,
            mem_gb=mem,
            # a task runs its data ids one after the other, plus start-up; the same limit for
            # every task of a step, so one submission is one job array
            timeout_s=res.timeout_min * 60.0 * per_task + 120.0,
            name=f"twinkles-{step_name}",
        )
        return sub, spec

    def _collect(
        self,
        sub: Submission,
        nodes: list[Node],
        spec: TaskSpec,
        note: str,
        state: dict[Key, str],
        attempts: dict[Key, int],
    ) -> None:
        record = read_record(TaskRecord, spec.task_result)
        if record is not None and record.token != self.token:
            record = None  # a dead driver's
        self.db.record_task(
            task_id=sub.task_id,
            step=nodes[0].step.name,
            executor=self.kind,
            job_id=(record.job_id if record else None) or sub.job_id,
            host=record.host if record else None,
            n_items=len(nodes),
            cpus=sub.cpus,
            submitted=sub.submitted,
            start=record.start if record else None,
            end=record.end if record else now(),
            wall_s=record.wall_s if record else None,
            cpu_s=record.cpu_s if record else None,
            peak_rss_mb=record.peak_rss_mb if record else None,
            kernel_starts=record.kernel_starts if record else None,
            outcome="complete" if record else note,
        )
        for node, item in zip(nodes, spec.items, strict=True):
            result = read_record(ItemResult, item.result)
            if result is None or result.token != self.token or result.attempt != item.attempt:
                result = ItemResult(
                    token=self.token,
                    step=item.step,
                    data_id=item.data_id,
                    attempt=item.attempt,
                    status="failed",
                    failure_class="infrastructure",
                    error=f"no result ({note})",
                    job_id=sub.job_id,
                )
            self._record(node, item.attempt, result, sub, state, attempts)

    def _record(
        self,
        node: Node,
        attempt: int,
        result: ItemResult,
        sub: Submission,
        state: dict[Key, str],
        attempts: dict[Key, int],
    ) -> None:
        if result.ok:
            state[node.key] = "done"
            self._record_done(node, attempt, result, sub.job_id, sub.task_id)
            return
        measured = _measured(result, sub.job_id)
        self.db.record_attempt(
            step=node.step.name,
            data_id=data_id_str(node.data_id),
            attempt=attempt,
            task_id=sub.task_id,
            outcome=result.status,
            **measured,
        )
        values = dict(
            attempts=attempt,
            failed_cell=result.failed_cell,
            notebook=result.notebook or str(node.notebook),
            **measured,
        )
        retry = result.failure_class == "infrastructure" or self.cfg.retry_science_failures
        if retry and attempt <= self.cfg.max_retries:
            state[node.key] = "pending"
            self.db.set_state([node.key], "pending", **values)
            return
        state[node.key] = "failed"
        self.db.set_state([node.key], "failed", **values)


#: What a result record measured of a data id's execution, as the run database stores it.
_MEASURED = ("host", "start", "end", "wall_s", "cpu_s", "peak_rss_mb", "failure_class", "error")


def _measured(result: ItemResult, job_id: str | None) -> dict[str, Any]:
    """The run database's columns of a result: :data:`_MEASURED` and the job id."""
    return {**{key: getattr(result, key) for key in _MEASURED}, "job_id": result.job_id or job_id}


def _remove_outputs(node: Node) -> None:
    """Remove a node's outputs before its new attempt, so nothing downstream reads the old
    ones if it fails (and their cached checksums with them)."""
    for path in node.outputs:
        for p in (path, path.with_name(f".{path.name}.sha256")):
            p.unlink(missing_ok=True)


def executor_limits(kind: str, cfg: Any) -> tuple[int, float, str]:
    """(CPUs, memory in GB, what they are of) that one task may ask for on this executor.

    Local: this machine. Slurm: the largest node of the partition (``sinfo``).
    """
    if kind == "local":
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        return len(os.sched_getaffinity(0)), pages / 1e9, "this machine"
    cmd = ["sinfo", "-h", "-o", "%c %m"] + (
        ["-p", cfg.slurm_partition] if cfg.slurm_partition else []
    )
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise TwinklesError(
            f"Slurm is not reachable ({exc}): start it or use --executor local"
        ) from None
    lines = [line.split() for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise TwinklesError(
            f"Slurm is not reachable (sinfo: {proc.stderr.strip() or 'no nodes'}): start it "
            f"(scripts/services.sh start slurm) or run with --executor local"
        )
    cpus = max(int(c.rstrip("+")) for c, _ in lines)
    mem_gb = max(float(m.rstrip("+")) for _, m in lines) / 1000.0
    partition = cfg.slurm_partition or "the default partition"
    return cpus, mem_gb, f"a node of Slurm's {partition}"


def planned_visits(run: Run) -> set[int]:
    """The visits the run has (or will have, once its sky is made or its images ingested),
    found without writing anything."""
    butler = run.butler
    if butler.exists("visitTable"):
        return {int(v) for v in butler.get("visitTable")["obsHistID"]}
    if run.external:
        files, _ = find_eimages(run.config.inputs.eimages, run.config_path.parent)
        visits = set()
        for path in files:
            try:
                visits.add(int(fits.getheader(path)["OBSID"]))
            except (OSError, KeyError, ValueError, TypeError):
                continue  # ingest will name it
        return visits
    c = run.config
    table = make_visit_table(
        c.cadence, c.field, c.sensor, c.render, random_stream(c.seed, "cadence")
    )
    return {int(v) for v in table["obsHistID"]}


def preflight(
    run: Run, pipeline: Pipeline, kind: str, where: dict[str, list] | None = None
) -> None:
    """Refuse, before the run directory is touched, everything that can be known wrong.

    Unknown steps in the configuration, a step's CPUs or memory beyond what the executor has,
    a simulated sky too large for memory, ``--visits`` the run does not have: one
    :class:`ConfigError` naming every offending key; recipe parameters a recipe refuses, and
    nothing else: a :class:`ParameterError`.
    """
    problems: list[str] = []
    parameter_problems: list[str] = []
    known = {s.name for s in pipeline.steps}
    for name in sorted(set(run.config.steps) - known):
        problems.append(f"steps.{name}: unknown step (the pipeline has {', '.join(known)})")
    cpus, mem_gb, where_ = executor_limits(kind, run.config.executor)
    known_datasets = dataset_types()
    for name in run.config.storage.ephemeral:
        if name not in known_datasets:
            problems.append(
                f"storage.ephemeral: {name!r} is not a dataset type (known: "
                f"{', '.join(sorted(known_datasets))})"
            )
    for step in pipeline.steps:
        overrides = run.config.steps.get(step.name)
        if overrides is not None and overrides.parameters:
            contract = read_contract(step.recipe_path(pipeline.cookbook))
            defaults = {p.name: p.default for p in contract.parameters if not p.required}
            keys = {"run_dir", *dims_of(step.dimension)}
            for key in sorted(keys & set(overrides.parameters)):
                problems.append(
                    f"steps.{step.name}.parameters.{key}: set by the pipeline for each data id"
                )
            stub = {k: defaults.get(k, 0) for k in keys}
            stub["run_dir"] = str(run.dir)
            parameter_problems += contract.problems(
                {**stub, **overrides.parameters}, context=f"steps.{step.name}"
            )
        res = _step_resources(step, run)
        if res.cpus > cpus:
            problems.append(
                f"steps.{step.name}.cpus: {res.cpus} CPUs per task, but {where_} has {cpus}"
            )
        if res.mem_gb > mem_gb:
            problems.append(
                f"steps.{step.name}.mem_gb: {res.mem_gb:g} GB per task, but {where_} has "
                f"{mem_gb:.1f} GB"
            )
    if not run.external and not run.butler.exists("skyFingerprint"):
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        problems += sky_size_problems(run.config, 0.5 * pages)
    if where and where.get("visit") and not problems and not parameter_problems:
        unknown = sorted(set(where["visit"]) - planned_visits(run))
        if unknown:
            problems.append(
                f"--visits: {unknown[:10]}{' ...' if len(unknown) > 10 else ''} are not visits "
                f"of the run"
            )
    if problems:
        raise ConfigError(str(run.config_path), problems + parameter_problems)
    if parameter_problems:
        raise ParameterError(parameter_problems)


def dims_of(dimension: str) -> tuple[str, ...]:
    """The data-id keys of a dimension (``run``: none)."""
    return () if dimension == "run" else (dimension,)


def run_pipeline(
    run: Run,
    pipeline: Pipeline = PIPELINE,
    executor: str | None = None,
    steps: list[str] | None = None,
    force: bool = False,
    only_failed: bool = False,
    workers: int | None = None,
    progress: bool = True,
    where: dict[str, list] | None = None,
) -> RunSummary:
    """Run the pipeline (or the chosen steps) for a run; see the module docstring.

    ``where`` restricts data ids, e.g. ``{"visit": [1, 2, 3]}``: nodes of steps with that
    dimension run only for those values (steps without it are not restricted).

    Raises
    ------
    ConfigError, ParameterError, TwinklesError
        Before the run directory is touched: an unknown step, ``--visits`` or parameter, a
        resource request or a sky beyond the machine (:func:`preflight`).
    RunLockedError
        Another driver runs this run directory.
    """
    kind = executor or run.config.executor.kind
    if kind not in EXECUTORS:
        raise TwinklesError(f"unknown executor {kind!r}; use {', '.join(EXECUTORS)}")
    if steps:
        known = {s.name for s in pipeline.steps}
        unknown = [s for s in steps if s not in known]
        if unknown:
            raise TwinklesError(
                f"unknown step(s) {unknown}; the pipeline has {', '.join(sorted(known))}"
            )
    pipeline = pipeline.for_run(run)
    if steps:
        absent = [s for s in steps if s not in {p.name for p in pipeline.steps}]
        if absent:
            raise TwinklesError(
                f"step(s) {absent} are not part of a run whose inputs.source is "
                f"{run.config.inputs.source}"
            )
    preflight(run, pipeline, kind, where)
    with RunLock(run.dir):
        report = pipeline.prepare(run) if pipeline.prepare is not None else None
        plan = make_plan(run, pipeline)
        driver = _Driver(run, pipeline, kind, workers, progress)
        try:
            driver.track_storage(plan)
            kept = driver.recover(plan)
            driver._hold_intermediates([plan[k] for k in kept])
            restrict = {k: set(v) for k, v in (where or {}).items()}
            todo, fresh = driver.select(plan, steps, force, only_failed, restrict)
            check_parameters(todo, pipeline)
            if todo:
                summary = driver.run_nodes(todo, plan)
            else:  # nothing to run; intermediates that every reader is done with can go
                summary = RunSummary()
                driver.release_intermediates({})
            for node in fresh:
                c = summary.counts.setdefault(node.step.name, {})
                c["skipped"] = c.get("skipped", 0) + 1
            summary.notes = list(getattr(report, "lines", None) or [])
            if pipeline.finish is not None:
                summary.problems = pipeline.finish(run)
            return summary
        finally:
            driver.db.close()
