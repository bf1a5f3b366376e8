"""One recipe on one data id, outside the workflow: ``twinkles recipe run``.

For the person editing a recipe. The step gets the parameters ``twinkles run`` would give it
for that data id (the run directory, the data id, the run configuration's overrides), changed
by any given here, and is checked against the recipe's contract before anything runs. The
recipe runs in a fresh kernel (``python3``, the environment of the ``twinkles`` command, or a
named one such as the ``twinkles`` kernel ``make lab`` registers) with the workflow's thread and
malloc settings, so that what it writes is the workflow's bit for bit; the executed notebook
keeps the same provenance as a workflow's: parameters, the recipe's checksum, the git state,
the versions, and every dataset read and written with its checksum.

The notebook goes to ``<run>/manual/<step>/<data id>.ipynb``, apart from the workflow's
``notebooks/``: the run database does not know of it. The datasets it writes are the run's
own, written atomically, so a failed attempt leaves the previous ones in place; the next
``twinkles run`` sees files whose checksums changed and reruns what read them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twinkles.config import Run
from twinkles.errors import TwinklesError
from twinkles.files import INVALID_ENV
from twinkles.workflow.contract import ParameterError, read_contract
from twinkles.workflow.driver import git_state, make_plan
from twinkles.workflow.environment import task_environment
from twinkles.workflow.execute import code_versions, execute_item
from twinkles.workflow.records import ItemResult, TaskCommon, WorkItem
from twinkles.workflow.spec import PIPELINE, DataId, Pipeline, data_id_str

__all__ = ["ManualRun", "run_recipe"]


@dataclass
class ManualRun:
    """What one recipe execution did."""

    record: ItemResult
    """The execution's record (also in the notebook's metadata under ``twinkles``): status,
    failure class, failed cell, error, wall and CPU seconds, peak memory, reads, writes."""
    notebook: Path
    """The executed notebook."""
    missing: list[str]
    """Outputs the step declares that this execution did not write."""

    @property
    def ok(self) -> bool:
        """True when the recipe ran to its end and wrote every declared output."""
        return self.record.ok and not self.missing


def run_recipe(
    run: Run,
    step: str,
    data_id: DataId,
    parameters: dict[str, Any] | None = None,
    recipe: str | Path | None = None,
    notebook: str | Path | None = None,
    kernel_name: str = "python3",
    pipeline: Pipeline = PIPELINE,
) -> ManualRun:
    """Execute one step's recipe on one data id of a run, with its provenance.

    Parameters
    ----------
    run : Run
        The run (its inputs must exist: simulated or ingested, and upstream steps done).
    step : str
        The pipeline step (``twinkles recipe show STEP`` lists its parameters).
    data_id : dict
        The data id, such as ``{"visit": 3}``; ``{}`` for a run-level step.
    parameters : dict, optional
        Values replacing or adding to the step's parameters for this data id.
    recipe : str or Path, optional
        An edited copy of the recipe to execute instead of the cookbook's.
    notebook : str or Path, optional
        Where to write the executed notebook (default
        ``<run>/manual/<step>/<data id>.ipynb``).
    kernel_name : str
        Jupyter kernel to execute in.
    pipeline : Pipeline
        The pipeline the step belongs to.

    Returns
    -------
    ManualRun
        The execution's record, the notebook's path and any declared output not written.

    Raises
    ------
    TwinklesError
        An unknown step, a data id the run does not have, a missing recipe, or (as
        :class:`~twinkles.workflow.contract.ParameterError`) parameters that break the
        recipe's contract.
    """
    try:
        pipeline.step(step)
    except KeyError as exc:
        raise TwinklesError(exc.args[0]) from None
    pipeline = pipeline.for_run(run)
    try:
        the_step = pipeline.step(step)
    except KeyError:
        raise TwinklesError(
            f"{run.config.name}: step {step} is not part of this run (turned off in its "
            f"configuration, or not made for its input source {run.config.inputs.source!r})"
        ) from None
    key = (step, data_id_str(data_id))
    plan = make_plan(run, pipeline)
    if key not in plan:
        known = [did for name, did in plan if name == step]
        shown = ", ".join(known[:8]) + (f", ... ({len(known)} in all)" if len(known) > 8 else "")
        raise TwinklesError(
            f"{run.config.name}: step {step} has no data id {key[1]}; it has {shown or 'none'}"
        )
    node = plan[key]
    values = {**node.parameters, **(parameters or {})}
    recipe_path = Path(recipe) if recipe is not None else the_step.recipe_path(pipeline.cookbook)
    if not recipe_path.exists():
        raise TwinklesError(f"recipe {recipe_path}: no such notebook")
    problems = read_contract(recipe_path).problems(values, context=f"{step} {key[1]}")
    if problems:
        raise ParameterError(problems)
    out = Path(notebook) if notebook is not None else run.dir / "manual" / step / f"{key[1]}.ipynb"
    # the kernel inherits this process's environment: the workflow's threads and malloc
    # settings, so that the products are bit for bit the workflow's
    environment = task_environment(node.resources.cpus)
    invalid = run.dir / "work" / "invalid.json"
    if invalid.exists():  # the datasets the workflow holds invalid stay refused
        environment[INVALID_ENV] = str(invalid)
    item = WorkItem(
        step=step,
        data_id=key[1],
        recipe=str(recipe_path.resolve()),
        parameters=values,
        notebook=str(out.resolve()),
        # not removed first, as the workflow does: a failed edit must not cost the run its
        # last good outputs (the butler replaces each only once it is written whole)
        outputs=[str(p) for p in node.outputs],
        attempt=1,
        timeout_s=node.resources.timeout_min * 60.0,
        cwd=str(run.dir.resolve()),
    )
    common = TaskCommon(
        token="manual", git=git_state(), versions=code_versions(), kernel_name=kernel_name
    )
    saved = dict(os.environ)
    os.environ.update(environment)
    try:
        record = execute_item(item, common, kernel=None)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    base = run.dir.resolve()
    written = {(base / w["path"]).resolve() for w in record.writes}
    missing = []
    if record.ok:
        missing = [str(p) for p in node.outputs if Path(p).resolve() not in written]
    return ManualRun(record, out, missing)
