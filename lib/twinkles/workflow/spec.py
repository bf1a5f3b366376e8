"""The pipeline specification: steps, their recipes, granularity, dependencies and resources.

A :class:`Step` runs one recipe (``cookbook/<recipe>``) once per data id of its *dimension*:
``visit`` (one per visit), ``filter`` (one per filter observed), ``patch`` or ``run`` (one).
A step depends on earlier steps; which upstream data ids a data id needs follows from the
dimensions: the same visit for visit -> visit, every visit of the filter for visit -> filter,
everything for anything -> run.

:data:`PIPELINE` is the Twinkles cookbook (../shared/DESIGN.md section 3); steps are added as
their recipes land. Tests build their own :class:`Pipeline` with fixture recipes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from twinkles.coadd.skymap import patch_ids
from twinkles.config import Run
from twinkles.datasets import dataset_type
from twinkles.inputs.source import prepare_inputs, verify_inputs
from twinkles.workflow.contract import read_contract
from twinkles.workflow.kernel import SCIENCE_IMPORTS

__all__ = [
    "COOKBOOK",
    "PIPELINE",
    "DataId",
    "Pipeline",
    "Resources",
    "Step",
    "data_id_str",
    "parse_data_id",
]

#: Where the recipes live.
COOKBOOK = Path(__file__).resolve().parents[3] / "cookbook"

DataId = dict[str, Any]


def data_id_str(data_id: DataId) -> str:
    """``{"visit": 3}`` -> ``"visit=3"``; the run-level data id ``{}`` -> ``"run"``."""
    return ",".join(f"{k}={v}" for k, v in sorted(data_id.items())) or "run"


def parse_data_id(text: str) -> DataId:
    """Inverse of :func:`data_id_str` (integers come back as int)."""
    if text == "run":
        return {}
    out: DataId = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        out[key] = int(value) if value.lstrip("-").isdigit() else value
    return out


@dataclass(frozen=True)
class Resources:
    """What one data id of a step needs."""

    cpus: int = 1
    mem_gb: float = 2.0
    timeout_min: float = 30.0


@dataclass(frozen=True)
class Step:
    """One recipe run per data id.

    Attributes
    ----------
    name : str
        Step name (``twinkles run --steps NAME``).
    recipe : str
        Notebook file name in the cookbook (or an absolute path).
    dimension : str
        ``visit``, ``filter``, ``patch``, ``run`` or a dimension the pipeline defines.
    depends : tuple of str
        Steps whose outputs this one reads.
    outputs : callable, optional
        ``outputs(run, data_id) -> [(dataset_type, data_id), ...]``: files a successful
        execution must leave (removed before each new attempt, so a failed attempt leaves
        none for downstream steps to read). By default the dataset types the recipe declares
        (:attr:`~twinkles.workflow.contract.RecipeContract.outputs`), each for the part of the
        data id its dimensions name. What a step reads is recorded by the butler as the recipe
        runs (provenance, and the incremental check).
    reads : tuple of str, optional
        The dataset types the step reads from the steps it depends on, where declared (None:
        any of their products). An ephemeral file waits only for the dependants whose step
        may read its type (:mod:`.storage`), so a dependant that reads none of it (detection
        on the coadds, beside the warps the coadds were made of) does not keep it on disk
        when it fails.
    resources : Resources
        Default resources per data id.
    doc : str
        One line for ``twinkles recipe show`` and the status table.
    partial : bool
        A gathering step (a coadd of a filter's visits, say) that runs on the upstream data
        ids that succeeded, once all have finished, rather than being blocked by one failed
        visit; blocked only if none of an upstream step's data ids succeeded.
    sources : tuple of str
        The input sources (``inputs.source``) of runs the step belongs to: an external run
        has no simulation step.
    enabled : callable
        ``enabled(run) -> bool``: whether the run includes the step (an optional step, such
        as source injection, that the run configuration turns on).
    """

    name: str
    recipe: str
    dimension: str
    depends: tuple[str, ...] = ()
    outputs: Callable[[Run, DataId], list[tuple[str, DataId]]] | None = field(
        default=None, repr=False
    )
    reads: tuple[str, ...] | None = None
    resources: Resources = Resources()
    doc: str = ""
    partial: bool = False
    sources: tuple[str, ...] = ("simulate", "external")
    enabled: Callable[[Run], bool] = field(default=lambda run: True, repr=False)

    def recipe_path(self, cookbook: Path = COOKBOOK) -> Path:
        """The recipe notebook's path (relative recipes are found in ``cookbook``)."""
        path = Path(self.recipe)
        return path if path.is_absolute() else cookbook / path

    def output_datasets(
        self, run: Run, data_id: DataId, cookbook: Path = COOKBOOK
    ) -> list[tuple[str, DataId]]:
        """``[(dataset type, data id), ...]`` a successful execution for ``data_id`` leaves:
        ``outputs`` if the step gives it, else the recipe's declared outputs."""
        if self.outputs is not None:
            return self.outputs(run, data_id)
        out = []
        for name in read_contract(self.recipe_path(cookbook)).outputs:
            dimensions = dataset_type(name).dimensions
            missing = [d for d in dimensions if d not in data_id]
            if missing:
                raise ValueError(
                    f"{self.recipe}: output {name} needs {', '.join(missing)}, which a "
                    f"{self.dimension} data id does not have"
                )
            out.append((name, {d: data_id[d] for d in dimensions}))
        return out


def _visit_ids(run: Run) -> list[DataId]:
    visits = run.butler.get("visitTable")
    return [{"visit": int(v)} for v in visits["obsHistID"]]


def _filter_ids(run: Run) -> list[DataId]:
    visits = run.butler.get("visitTable")
    return [{"filter": str(f)} for f in sorted(set(visits["filter"]))]


@dataclass
class Pipeline:
    """An ordered set of steps and how to enumerate their data ids.

    Parameters
    ----------
    steps : list of Step
        In execution order (dependencies before dependants).
    dimensions : dict
        ``name -> function(run) -> [data_id, ...]``; ``run`` is always ``[{}]``.
    prepare : callable, optional
        Called with the run before data ids are enumerated (simulate the sky, or ingest the
        external inputs); may return an object whose ``lines`` the run's summary shows.
    finish : callable, optional
        Called with the run after its nodes ran; returns problems (lines) that make the run
        fail (an external run's input files changed, say).
    cookbook : Path
        Where relative recipe names are found.
    kernel_imports : tuple of str
        Modules a warm kernel imports once, before its first notebook.
    """

    steps: list[Step]
    dimensions: dict[str, Callable[[Run], list[DataId]]] = field(default_factory=dict)
    prepare: Callable[[Run], Any] | None = None
    finish: Callable[[Run], list[str]] | None = None
    cookbook: Path = COOKBOOK
    kernel_imports: tuple[str, ...] = SCIENCE_IMPORTS

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for step in self.steps:
            if step.name in seen:
                raise ValueError(f"step {step.name} is defined twice")
            unknown = [d for d in step.depends if d not in seen]
            if unknown:
                raise ValueError(f"step {step.name} depends on {unknown}, not defined before it")
            seen.add(step.name)

    def for_run(self, run: Run) -> Pipeline:
        """The steps that ``run`` includes: those of its input source that it enables,
        dependencies on the others dropped."""
        return self._keep(
            [s for s in self.steps if run.config.inputs.source in s.sources and s.enabled(run)]
        )

    def _keep(self, kept: list[Step]) -> Pipeline:
        if len(kept) == len(self.steps):
            return self
        names = {s.name for s in kept}
        steps = [replace(s, depends=tuple(d for d in s.depends if d in names)) for s in kept]
        return replace(self, steps=steps)

    def step(self, name: str) -> Step:
        """The step called ``name``; KeyError naming the known steps otherwise."""
        for step in self.steps:
            if step.name == name:
                return step
        known = ", ".join(s.name for s in self.steps)
        raise KeyError(f"unknown step {name!r}; the pipeline has: {known}")

    def data_ids(self, run: Run, dimension: str) -> list[DataId]:
        """The data ids of a dimension in this run (``run``: the one empty id)."""
        if dimension == "run":
            return [{}]
        if dimension not in self.dimensions:
            raise KeyError(f"the pipeline cannot enumerate data ids of dimension {dimension!r}")
        return self.dimensions[dimension](run)

    def upstream(
        self, run: Run, step: Step, data_id: DataId, upstream: Step, filters: dict[int, str]
    ) -> list[DataId]:
        """Data ids of ``upstream`` that ``step``'s ``data_id`` needs."""
        if upstream.dimension == "run":
            return [{}]
        if step.dimension == "run":
            return self.data_ids(run, upstream.dimension)
        if upstream.dimension == step.dimension:
            return [data_id]
        if upstream.dimension == "visit" and step.dimension == "filter":
            return [{"visit": v} for v, f in filters.items() if f == data_id["filter"]]
        if upstream.dimension == "filter" and step.dimension == "visit":
            return [{"filter": filters[data_id["visit"]]}]
        if "patch" in (upstream.dimension, step.dimension):
            return self.data_ids(run, upstream.dimension)
        raise ValueError(
            f"no rule for {step.name} ({step.dimension}) depending on "
            f"{upstream.name} ({upstream.dimension})"
        )


# --- the Twinkles cookbook --------------------------------------------------------------------


PIPELINE = Pipeline(
    steps=[
        Step(
            name="simulate_visit",
            recipe="simulate_visit.ipynb",
            dimension="visit",
            resources=Resources(cpus=1, mem_gb=2.0, timeout_min=20.0),
            doc="render one visit into an eimage (the PhoSim stand-in)",
            sources=("simulate",),
        ),
        Step(
            name="process_eimage",
            recipe="process_eimage.ipynb",
            dimension="visit",
            depends=("simulate_visit",),
            resources=Resources(cpus=1, mem_gb=3.0, timeout_min=20.0),
            doc="single-visit calibration and measurement: calexp, src (processEimage)",
        ),
        Step(
            name="make_skymap",
            recipe="make_skymap.ipynb",
            dimension="run",
            depends=("process_eimage",),
            resources=Resources(cpus=1, mem_gb=1.0, timeout_min=10.0),
            doc="the tract/patch covering every calexp (makeSkyMap)",
            partial=True,
        ),
        Step(
            name="make_coadd",
            recipe="make_coadd.ipynb",
            dimension="filter",
            depends=("make_skymap", "process_eimage"),
            resources=Resources(cpus=1, mem_gb=4.0, timeout_min=120.0),
            doc="warp a filter's calexps onto the patch and coadd them (makeCoaddTempExp, "
            "assembleCoadd)",
            partial=True,
        ),
        Step(
            name="coadd_sources",
            recipe="coadd_sources.ipynb",
            dimension="patch",
            depends=("make_coadd",),
            # the coadds, not the warps they were made of
            reads=("deepCoadd", "deepCoadd_nImage", "deepCoadd_summary"),
            # every band's coadd at once: six of Run 1's patch need more than 4 GB
            resources=Resources(cpus=1, mem_gb=8.0, timeout_min=60.0),
            doc="detect on each coadd, merge across filters, measure: the Object table",
            partial=True,
        ),
        Step(
            name="forced_photometry",
            recipe="forced_photometry.ipynb",
            dimension="visit",
            depends=("coadd_sources", "process_eimage"),
            resources=Resources(cpus=1, mem_gb=3.0, timeout_min=20.0),
            doc="PSF and aperture photometry of every Object on a calexp: ForcedSource",
        ),
        Step(
            name="validate_static_sky",
            recipe="validate_static_sky.ipynb",
            dimension="run",
            depends=("forced_photometry", "coadd_sources"),
            resources=Resources(cpus=1, mem_gb=4.0, timeout_min=30.0),
            doc="static-sky checks against the truth: Objects, PA1, light curves, pulls",
            partial=True,
        ),
        Step(
            name="make_template",
            recipe="make_template.ipynb",
            dimension="filter",
            depends=("make_coadd", "process_eimage"),
            resources=Resources(cpus=1, mem_gb=4.0, timeout_min=60.0),
            doc="good-seeing template: best-seeing warps, PSF-homogenised, coadded",
            partial=True,
        ),
        Step(
            name="image_difference",
            recipe="image_difference.ipynb",
            dimension="visit",
            depends=("make_template", "process_eimage"),
            resources=Resources(cpus=1, mem_gb=4.0, timeout_min=20.0),
            doc="Alard-Lupton PSF-matched subtraction of the template, DIASources",
        ),
        Step(
            name="inject_sources",
            recipe="inject_sources.ipynb",
            dimension="visit",
            depends=("coadd_sources", "image_difference"),
            resources=Resources(cpus=1, mem_gb=4.0, timeout_min=20.0),
            doc="point sources injected into the calexp, subtracted again: efficiency",
            enabled=lambda run: run.config.injection.enabled,
        ),
        Step(
            name="associate_dia",
            recipe="associate_dia.ipynb",
            dimension="run",
            depends=("image_difference",),
            resources=Resources(cpus=1, mem_gb=2.0, timeout_min=30.0),
            doc="DIASources of every visit into DIAObjects (order-independent)",
            partial=True,
        ),
        Step(
            name="forced_dia_photometry",
            recipe="forced_dia_photometry.ipynb",
            dimension="visit",
            depends=("associate_dia", "image_difference"),
            resources=Resources(cpus=1, mem_gb=3.0, timeout_min=20.0),
            doc="PSF flux of every DIAObject on a difference image: DiaForcedSource",
        ),
        Step(
            name="validate_dia",
            recipe="validate_dia.ipynb",
            dimension="run",
            depends=("forced_dia_photometry", "associate_dia", "inject_sources"),
            resources=Resources(cpus=1, mem_gb=4.0, timeout_min=30.0),
            doc="difference imaging against the truth: noise, recovery, spurious, SN pulls",
            partial=True,
        ),
        Step(
            name="ingest_catalogs",
            recipe="ingest_catalogs.ipynb",
            dimension="run",
            depends=(
                "process_eimage",
                "coadd_sources",
                "forced_photometry",
                "associate_dia",
                "forced_dia_photometry",
            ),
            resources=Resources(cpus=1, mem_gb=4.0, timeout_min=120.0),
            doc="every catalog and the truth into the SQL database, one transaction per visit",
            partial=True,
        ),
        Step(
            name="validate_run",
            recipe="validate_run.ipynb",
            dimension="run",
            depends=("validate_static_sky", "validate_dia"),
            resources=Resources(cpus=1, mem_gb=4.0, timeout_min=30.0),
            doc="every metric against the truth with its requirement: validation/metrics.json",
            partial=True,
        ),
        Step(
            name="monitor_lightcurves",
            recipe="monitor_lightcurves.ipynb",
            dimension="run",
            # it reads catalogs, images and the truth, no validation product: so it runs beside
            # validate_dia
            depends=("ingest_catalogs",),
            resources=Resources(cpus=1, mem_gb=4.0, timeout_min=30.0),
            doc="the SN/SL monitor: light curves against the truth, postage stamps, depth",
            partial=True,
        ),
    ],
    dimensions={"visit": _visit_ids, "filter": _filter_ids, "patch": lambda run: patch_ids()},
    prepare=prepare_inputs,
    finish=verify_inputs,
)
