"""Render the visits of a run into its repository, in parallel, skipping finished visits."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field

from twinkles.config import Run, load_run
from twinkles.errors import TwinklesError
from twinkles.inputs.source import prepare_run_dir
from twinkles.sim.render import RenderedVisit, eimage_hdulist, render_visit
from twinkles.sim.sky import Sky, ensure_sky

__all__ = [
    "SimulationSummary",
    "simulate_run",
    "simulate_visit",
    "write_visit",
]


def write_visit(run: Run, rendered: RenderedVisit) -> None:
    """Write a rendered visit's truth and eimage into the run's repository."""
    butler = run.butler
    butler.put(rendered.truth, "eimageTruth", visit=rendered.visit)
    # the eimage goes last: its presence means the visit is done
    butler.put(eimage_hdulist(rendered, butler.compression), "eimage", visit=rendered.visit)


def simulate_visit(run: Run, visit: int, sky: Sky | None = None) -> RenderedVisit:
    """Render one visit and write its eimage and truth into the run's repository."""
    sky = sky if sky is not None else ensure_sky(run)
    rendered = render_visit(sky, run.config, visit)
    write_visit(run, rendered)
    return rendered


def _render_worker(run_path: str, visits: list[int]) -> list[tuple[int, float]]:
    run = load_run(run_path)
    sky = Sky.read(run.butler)
    done = []
    for visit in visits:
        start = time.process_time()
        simulate_visit(run, visit, sky)
        done.append((visit, time.process_time() - start))
    return done


@dataclass
class SimulationSummary:
    """What :func:`simulate_run` did."""

    rendered: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    cpu_seconds: float = 0.0


def simulate_run(
    run: Run,
    jobs: int | None = None,
    visits: Iterable[int] | None = None,
    force: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SimulationSummary:
    """Make the run's sky (once) and render every visit not rendered yet.

    Parameters
    ----------
    run : Run
        The run.
    jobs : int, optional
        Worker processes (default: the CPUs available).
    visits : iterable of int, optional
        Only these visits (default: all).
    force : bool
        Simulate the sky again and re-render every visit.
    progress : callable, optional
        Called with (visits finished, visits to do).
    """
    if run.external:
        raise TwinklesError(
            f"{run.config_path} brings its own eimages (inputs.source: external): there is "
            f"nothing to simulate; `twinkles run` ingests them"
        )
    prepare_run_dir(run)
    if force:
        for path in (run.butler.root / "eimage").glob("*.fits"):
            path.unlink()
    sky = ensure_sky(run, force=force)
    all_visits = [int(v) for v in sky.visits["obsHistID"]]
    wanted = all_visits if visits is None else [int(v) for v in visits]
    unknown = sorted(set(wanted) - set(all_visits))
    if unknown:
        raise KeyError(f"visits {unknown[:10]} are not in {run.config_path}'s visit table")
    summary = SimulationSummary()
    todo = []
    for v in wanted:
        (summary.skipped if run.butler.exists("eimage", visit=v) else todo).append(v)
    jobs = jobs or len(os.sched_getaffinity(0))
    if not todo:
        return summary
    if jobs == 1 or len(todo) == 1:
        for k, v in enumerate(todo):
            start = time.process_time()
            simulate_visit(run, v, sky)
            summary.cpu_seconds += time.process_time() - start
            summary.rendered.append(v)
            if progress:
                progress(k + 1, len(todo))
        return summary
    # a few visits per task amortises reading the sky in each worker
    chunks = [todo[i :: jobs * 4] for i in range(min(len(todo), jobs * 4))]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_render_worker, str(run.config_path), c) for c in chunks]
        for fut in as_completed(futures):
            for v, cpu in fut.result():
                summary.rendered.append(v)
                summary.cpu_seconds += cpu
            if progress:
                progress(len(summary.rendered), len(todo))
    summary.rendered.sort()
    return summary
