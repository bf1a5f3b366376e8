"""The driver of ``twinkles run``: plan, check, submit, follow, record, resume.

1. **Plan.** Every step of the pipeline times every data id of its dimension is a *node*, with
   its dependencies, parameters (run directory, data id, the run config's overrides), inputs,
   outputs, notebook path and resources.
2. **Check.** Every parameter set of every node to run is checked against its recipe's
   contract before anything is submitted; all problems are reported in one message.
3. **Decide.** A node runs again when it is not done, when its fingerprint changed (recipe,
   library source, parameters, or the size and time of its inputs), when its outputs or
   notebook are gone, or when something it depends on runs again. ``force`` runs everything
   selected; ``only_failed`` only failed and blocked nodes.
4. **Run.** Ready nodes (dependencies done) are grouped per step into tasks of up to
   ``ids_per_task`` data ids and handed to the executor. Results are read back from files.
   A science failure is final (unless ``retry_science_failures``); an infrastructure failure is
   retried up to ``max_retries`` times (on Slurm with more memory). Dependants of a failed
   node are blocked; everything else goes on.
5. **Resume.** Only the driver writes the run database. Nodes it finds ``running`` from a driver
   that died are stopped (their process group or Slurm job) and run again; Ctrl-C cancels the
   running tasks and leaves the database ready for the same command to resume.
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

from twinkles.config import ConfigError, Run
from twinkles.errors import TwinklesError
from twinkles.workflow.contract import ParameterError, read_contract
from twinkles.workflow.execute import code_versions
from twinkles.workflow.executors import (
    EXECUTORS,
    Executor,
    LocalExecutor,
    SlurmExecutor,
    Submission,
)
from twinkles.workflow.rundb import NodeRow, RunDatabase, now
from twinkles.workflow.spec import PIPELINE, DataId, Pipeline, Resources, Step, data_id_str

__all__ = ["Node", "RunSummary", "library_fingerprint", "make_plan", "run_pipeline"]

Key = tuple[str, str]
_LIB = Path(__file__).resolve().parents[1]


@dataclass
class Node:
    """One step for one data id."""

    step: Step
    data_id: DataId
    deps: list[Key]
    parameters: dict[str, Any]
    inputs: list[Path]
    outputs: list[Path]
    notebook: Path
    resources: Resources

    @property
    def key(self) -> Key:
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
        return not self.failures and not self.interrupted and not self.problems

    def lines(self) -> list[str]:
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


def _stat(path: Path) -> list:
    try:
        st = path.stat()
    except FileNotFoundError:
        return [str(path), None]
    return [str(path), st.st_size, st.st_mtime_ns]


def node_fingerprint(node: Node, recipe_sum: str, library: str) -> str:
    """Recipe, library, parameters and inputs (size and modification time) of a node."""
    payload = {
        "recipe": recipe_sum,
        "library": library,
        "parameters": node.parameters,
        "inputs": [_stat(p) for p in node.inputs],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[
        :24
    ]


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
                inputs=[butler.path(ds, **d) for ds, d in step.inputs(run, data_id)],
                outputs=[butler.path(ds, **d) for ds, d in step.outputs(run, data_id)],
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
        self.common = {
            "token": self.token,
            "git": git_state(),
            "versions": code_versions(),
            "kernel_name": "python3",
        }
        self.workers = workers or self.cfg.workers or len(os.sched_getaffinity(0))
        self.progress = progress
        self._task_counter = itertools.count(1)

    def recipe_sum(self, node: Node) -> str:
        return _file_checksum_cached(
            node.step.recipe_path(self.pipeline.cookbook), self.recipe_sums
        )

    def fingerprint(self, node: Node) -> str:
        return node_fingerprint(node, self.recipe_sum(node), self.library)

    # -- deciding --------------------------------------------------------------------------

    def recover(self) -> None:
        """Stop and requeue nodes a previous driver left running."""
        stale = [r for r in self.db.nodes() if r.state == "running"]
        for row in stale:
            if row.job_id:
                (LocalExecutor if row.job_id.startswith("local-") else SlurmExecutor).kill_stale(
                    row.job_id
                )
        if stale:
            self.db.set_state([(r.step, r.data_id) for r in stale], "pending")

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
        todo: dict[Key, Node] = {}
        fresh: list[Node] = []
        for key, node in plan.items():
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
                    or row is None
                    or row.state != "done"
                    or row.fingerprint != self.fingerprint(node)
                    or not node.notebook.exists()
                    or not all(p.exists() for p in node.outputs)
                )
            # what depends on something that runs again runs again
            stale = stale or any(d in todo for d in node.deps)
            if stale:
                todo[key] = node
            elif not only_failed:  # with --only-failed the others are not judged
                fresh.append(node)
        return list(todo.values()), fresh

    # -- running ---------------------------------------------------------------------------

    def run_nodes(self, todo: list[Node]) -> RunSummary:
        executor = EXECUTORS[self.kind](self.run.dir, self.cfg, self.workers)
        plan_keys = {n.key: n for n in todo}
        rows = {(r.step, r.data_id): r for r in self.db.nodes()}
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
        try:
            while any(s in ("pending", "running") for s in state.values()):
                self._block_dependants(todo, state, rows)
                self._submit_ready(executor, todo, state, attempts, submitted)
                for ended in executor.poll():
                    sub, nodes, spec = submitted.pop(ended.submission.task_id)
                    self._collect(sub, nodes, spec, ended.note, state, attempts)
                if bar is not None:
                    finished = sum(s in ("done", "failed", "blocked") for s in state.values())
                    bar.n = finished
                    bar.refresh()
                if any(s in ("pending", "running") for s in state.values()):
                    time.sleep(self.cfg.poll_seconds if self.kind == "slurm" else 0.1)
        except KeyboardInterrupt:
            executor.cancel()
            running = [k for k, s in state.items() if s == "running"]
            self.db.set_state(running, "pending")
            summary.interrupted = True
        finally:
            if bar is not None:
                bar.close()
        for n in todo:
            c = summary.counts.setdefault(n.step.name, {})
            c[state[n.key]] = c.get(state[n.key], 0) + 1
        final = {(r.step, r.data_id): r for r in self.db.nodes()}
        summary.failures = [final[k] for k in plan_keys if state[k] in ("failed", "blocked")]
        return summary

    def _progress_bar(self, total: int):
        if not self.progress or not sys.stderr.isatty() or total == 0:
            return None
        from tqdm import tqdm

        return tqdm(total=total, unit="data id", desc=self.run.config.name, file=sys.stderr)

    def _block_dependants(
        self, todo: list[Node], state: dict[Key, str], rows: dict[Key, NodeRow]
    ) -> None:
        """Block pending nodes whose dependencies failed, or were not run and are not done."""
        blocked = []
        for node in todo:
            if state[node.key] != "pending":
                continue
            if node.step.partial:
                reason = self._partial_block_reason(node, state, rows)
                if reason:
                    blocked.append((node.key, reason))
                continue
            for dep in node.deps:
                if dep in state:  # runs in this invocation
                    if state[dep] in ("failed", "blocked"):
                        blocked.append((node.key, f"needs {dep[0]} {dep[1]}, which failed"))
                        break
                elif dep not in rows or rows[dep].state != "done":
                    was = rows[dep].state if dep in rows else "never run"
                    blocked.append(
                        (
                            node.key,
                            f"needs {dep[0]} {dep[1]} ({was}): twinkles run --steps {dep[0]}",
                        )
                    )
                    break
        for key, reason in blocked:
            state[key] = "blocked"
            self.db.set_state(
                [key], "blocked", failure_class="blocked", error=reason, failed_cell=None
            )

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
            if any(s in ("pending", "running") for s in states):
                return None  # not decided yet
            if not any(s == "done" for s in states):
                return f"no {name} input succeeded ({len(states)} failed or not run)"
        return None

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
        for step_name, nodes in by_step.items():
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
                    [n.key], "running", job_id=sub.job_id, start=now(), attempts=attempts[n.key]
                )

    def _make_task(
        self, step_name: str, nodes: list[Node], attempts: dict[Key, int], per_task: int
    ):
        task_id = f"{self.token}-{next(self._task_counter):05d}"
        items = []
        for n in nodes:
            attempts[n.key] += 1
            items.append(
                {
                    "step": n.step.name,
                    "data_id": data_id_str(n.data_id),
                    "recipe": str(n.step.recipe_path(self.pipeline.cookbook)),
                    "parameters": n.parameters,
                    "notebook": str(n.notebook),
                    "inputs": [str(p) for p in n.inputs],
                    "outputs": [str(p) for p in n.outputs],
                    "attempt": attempts[n.key],
                    "timeout_s": n.resources.timeout_min * 60.0,
                    "cwd": str(self.run.dir.resolve()),
                    "result": str(
                        self.work / "results" / n.step.name / f"{data_id_str(n.data_id)}.json"
                    ),
                }
            )
        spec = {
            "task_id": task_id,
            "kernel": self.cfg.kernel,
            "kernel_imports": list(self.pipeline.kernel_imports),
            "common": self.common,
            "items": items,
            "task_result": str(self.work / "tasks" / f"{task_id}.result.json"),
        }
        spec_path = self.work / "tasks" / f"{task_id}.json"
        spec_path.parent.mkdir(parents=True, exist_ok=True)
        spec_path.write_text(json.dumps(spec, indent=1))
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
        spec: dict,
        note: str,
        state: dict[Key, str],
        attempts: dict[Key, int],
    ) -> None:
        task_record = _read_json(Path(spec["task_result"]))
        ok_task = task_record is not None and task_record.get("token") == self.token
        self.db.record_task(
            task_id=sub.task_id,
            step=nodes[0].step.name,
            executor=self.kind,
            job_id=(task_record or {}).get("job_id") or sub.job_id,
            host=(task_record or {}).get("host"),
            n_items=len(nodes),
            cpus=sub.cpus,
            submitted=sub.submitted,
            start=task_record["start"] if ok_task else None,
            end=task_record["end"] if ok_task else now(),
            wall_s=task_record["wall_s"] if ok_task else None,
            cpu_s=task_record["cpu_s"] if ok_task else None,
            peak_rss_mb=task_record["peak_rss_mb"] if ok_task else None,
            kernel_starts=task_record["kernel_starts"] if ok_task else None,
            outcome="complete" if ok_task else note,
        )
        for node, item in zip(nodes, spec["items"], strict=True):
            result = _read_json(Path(item["result"]))
            if (
                result is None
                or result.get("token") != self.token
                or result.get("attempt") != item["attempt"]
            ):
                result = {
                    "status": "failed",
                    "failure_class": "infrastructure",
                    "error": f"no result ({note})",
                    "job_id": sub.job_id,
                }
            self._record(node, item["attempt"], result, sub, state, attempts)

    def _record(
        self,
        node: Node,
        attempt: int,
        result: dict,
        sub: Submission,
        state: dict[Key, str],
        attempts: dict[Key, int],
    ) -> None:
        measured = {
            key: result.get(key)
            for key in (
                "host",
                "start",
                "end",
                "wall_s",
                "cpu_s",
                "peak_rss_mb",
                "failure_class",
                "error",
            )
        }
        measured["job_id"] = result.get("job_id") or sub.job_id
        self.db.record_attempt(
            step=node.step.name,
            data_id=data_id_str(node.data_id),
            attempt=attempt,
            task_id=sub.task_id,
            outcome=result["status"],
            **measured,
        )
        values = dict(
            attempts=attempt,
            failed_cell=result.get("failed_cell"),
            notebook=result.get("notebook") or str(node.notebook),
            **measured,
        )
        if result["status"] == "done":
            state[node.key] = "done"
            self.db.set_state([node.key], "done", fingerprint=self.fingerprint(node), **values)
            return
        retry = result.get("failure_class") == "infrastructure" or self.cfg.retry_science_failures
        if retry and attempt <= self.cfg.max_retries:
            state[node.key] = "pending"
            self.db.set_state([node.key], "pending", **values)
            return
        state[node.key] = "failed"
        self.db.set_state([node.key], "failed", **values)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


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
    ConfigError, ParameterError
        Before anything runs, for an unknown step or a parameter set its recipe refuses.
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
    pipeline = pipeline.for_source(run.config.inputs.source)
    if steps:
        absent = [s for s in steps if s not in {p.name for p in pipeline.steps}]
        if absent:
            raise TwinklesError(
                f"step(s) {absent} are not part of a run whose inputs.source is "
                f"{run.config.inputs.source}"
            )
    report = pipeline.prepare(run) if pipeline.prepare is not None else None
    plan = make_plan(run, pipeline)
    driver = _Driver(run, pipeline, kind, workers, progress)
    try:
        driver.recover()
        restrict = {k: set(v) for k, v in (where or {}).items()}
        todo, fresh = driver.select(plan, steps, force, only_failed, restrict)
        check_parameters(todo, pipeline)
        summary = driver.run_nodes(todo) if todo else RunSummary()
        for node in fresh:
            c = summary.counts.setdefault(node.step.name, {})
            c["skipped"] = c.get("skipped", 0) + 1
        summary.notes = list(getattr(report, "lines", None) or [])
        if pipeline.finish is not None:
            summary.problems = pipeline.finish(run)
        return summary
    finally:
        driver.db.close()
