"""A two-step test pipeline on fixture recipes: ``sweep`` (8 items) then ``gather`` (run)."""

from __future__ import annotations

from pathlib import Path

import yaml

from twinkles.config import Run, load_run
from twinkles.datasets import dataset_types, register_dataset_type
from twinkles.workflow.spec import Pipeline, Resources, Step

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "recipes"

if "sweepProduct" not in dataset_types():
    register_dataset_type(
        "sweepProduct", ("item",), "products/item_{item}.json", "json", "test sweep product"
    )
    register_dataset_type("gatherProduct", (), "products/total.json", "json", "test total")


def sweep_pipeline(n: int = 8, partial_gather: bool = False) -> Pipeline:
    return Pipeline(
        steps=[
            Step(
                name="sweep",
                recipe=str(FIXTURES / "sweep.ipynb"),
                dimension="item",
                outputs=lambda run, did: [("sweepProduct", did)],
                resources=Resources(cpus=1, mem_gb=0.5, timeout_min=2.0),
            ),
            Step(
                name="gather",
                recipe=str(FIXTURES / "gather.ipynb"),
                dimension="run",
                depends=("sweep",),
                outputs=lambda run, did: [("gatherProduct", {})],
                resources=Resources(cpus=1, mem_gb=0.5, timeout_min=2.0),
                partial=partial_gather,
            ),
        ],
        dimensions={"item": lambda run: [{"item": i} for i in range(n)]},
        kernel_imports=("json", "pathlib"),
    )


def make_run(
    directory: Path,
    executor: str = "local",
    sweep: dict | None = None,
    gather: dict | None = None,
    step_resources: dict | None = None,
    **executor_cfg,
) -> Run:
    """Write ``directory/sweep.yaml`` and load it (the run directory is ``directory/sweep``)."""
    steps = {"sweep": {"parameters": sweep or {}, **(step_resources or {})}}
    if gather:
        steps["gather"] = {"parameters": gather}
    data = {
        "executor": {"kind": executor, "ids_per_task": 3, "poll_seconds": 0.5, **executor_cfg},
        "steps": steps,
    }
    path = directory / "sweep.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_run(path)
