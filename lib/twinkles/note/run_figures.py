"""Figures of a run as a workflow, drawn from its own records rather than from a notebook.

* :func:`pipeline_flow`: the steps of the pipeline the run used (``spec.PIPELINE.for_run``)
  as boxes, each with its dimension and its number of data ids, and an arrow for every
  dependency: drawn from the definition the driver runs, so it cannot drift from it.
* :func:`cpu_and_wall`: every notebook's CPU time against its wall time (the 2016 Note's
  "Efficiency: wallclock vs CPU time"), and per step the tasks' CPU hours against the core
  hours they held (CPU efficiency).
* :func:`memory_by_step`: the peak memory of every notebook, per step.
* :func:`disk_over_time`: the run directory's size on disk as the driver sampled it.

Each takes the run's database records (:class:`~twinkles.workflow.rundb.RunDatabase`) and
returns a matplotlib figure; ``twinkles note`` draws them (the ``run-figure`` directive).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

__all__ = ["cpu_and_wall", "disk_over_time", "memory_by_step", "pipeline_flow", "step_layers"]


def step_layers(steps: list[Any]) -> dict[str, int]:
    """Each step's layer: 0 for a step without dependencies, else one more than the deepest
    step it depends on (the longest path to it)."""
    layer: dict[str, int] = {}
    for step in steps:  # a pipeline lists dependencies before dependants
        layer[step.name] = 1 + max((layer[d] for d in step.depends), default=-1)
    return layer


def pipeline_flow(steps: list[Any], n_data_ids: dict[str, int]) -> Figure:
    """The pipeline as a flow diagram: steps by layer (left to right), arrows for
    dependencies.

    Parameters
    ----------
    steps : list of Step
        The run's steps, dependencies first (``Pipeline.steps``).
    n_data_ids : dict
        Data ids of each step in the run (shown under its name).
    """
    layer = step_layers(steps)
    columns: dict[int, list[str]] = defaultdict(list)
    for step in steps:
        columns[layer[step.name]].append(step.name)
    height = max(len(c) for c in columns.values())
    position: dict[str, tuple[float, float]] = {}
    for x, names in columns.items():
        for k, name in enumerate(names):  # each column centred on y = 0
            position[name] = (float(x), (len(names) - 1) / 2.0 - k)
    fig, ax = plt.subplots(figsize=(1.75 * len(columns) + 0.5, 1.1 * height + 1.0))
    box = {"boxstyle": "round,pad=0.35", "fc": "#eef3fa", "ec": "#34558b", "lw": 1.0}
    by_name = {s.name: s for s in steps}
    for step in steps:
        for dep in step.depends:
            ax.annotate(
                "",
                xy=position[step.name],
                xytext=position[dep],
                arrowprops={
                    "arrowstyle": "-|>",
                    "color": "#7a8899",
                    "lw": 0.8,
                    "shrinkA": 34,
                    "shrinkB": 34,
                    "connectionstyle": "arc3,rad=0.08",
                },
            )
    for name, (x, y) in position.items():
        step = by_name[name]
        label = f"{name}\n[{step.dimension}] x {n_data_ids.get(name, 0)}"
        ax.text(x, y, label, ha="center", va="center", fontsize=7.5, bbox=box, zorder=3)
    ax.set_xlim(-0.6, len(columns) - 0.4)
    ax.set_ylim(-height / 2.0 - 0.2, height / 2.0 + 0.2)
    ax.axis("off")
    fig.tight_layout()
    return fig


def cpu_and_wall(attempts: list[dict], tasks: list[dict], steps: list[str]) -> Figure:
    """Left: each executed notebook's CPU time against its wall time, by step; right: per
    step, the tasks' CPU hours and the core hours they held (wall time x cores), with the
    CPU efficiency (their ratio)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(steps), 1)))
    for colour, step in zip(colours, steps, strict=True):
        rows = [a for a in attempts if a["step"] == step and a["cpu_s"] and a["wall_s"]]
        if rows:
            left.scatter(
                [a["wall_s"] for a in rows],
                [a["cpu_s"] for a in rows],
                s=8,
                color=colour,
                label=step,
                alpha=0.8,
            )
    lo = min([a["wall_s"] for a in attempts if a["wall_s"]] or [0.1])
    hi = max([a["wall_s"] for a in attempts if a["wall_s"]] or [1.0])
    line = np.array([max(lo, 1e-2) / 2, hi * 2])
    left.plot(line, line, color="0.4", lw=0.8, ls="--", label="CPU = wall")
    left.set_xscale("log")
    left.set_yscale("log")
    left.set_xlabel("wall time of a notebook (s)")
    left.set_ylabel("CPU time (s)")
    left.legend(fontsize=6.5, ncol=2, loc="upper left")
    cpu_h, core_h = [], []
    for step in steps:
        measured = [
            t for t in tasks if t["step"] == step and t["cpu_s"] is not None and t["wall_s"]
        ]
        cpu_h.append(sum(t["cpu_s"] for t in measured) / 3600.0)
        core_h.append(sum(t["wall_s"] * t["cpus"] for t in measured) / 3600.0)
    y = np.arange(len(steps))
    right.barh(y + 0.2, core_h, height=0.4, color="#c9d3e0", label="core hours held")
    right.barh(y - 0.2, cpu_h, height=0.4, color="#34558b", label="CPU hours")
    for k, (c, w) in enumerate(zip(cpu_h, core_h, strict=True)):
        if w > 0:
            right.text(w, k, f" {c / w:.0%}", va="center", fontsize=7)
    right.set_yticks(y, steps, fontsize=7)
    right.invert_yaxis()
    right.set_xlabel("hours (tasks' CPU efficiency at the bar's end)")
    right.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def memory_by_step(attempts: list[dict], steps: list[str]) -> Figure:
    """The peak resident memory of every executed notebook, per step (points), with each
    step's largest."""
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(steps) + 1.2))
    rng = np.random.default_rng(0)  # jitter only, so the points of a step do not overlap
    for k, step in enumerate(steps):
        peaks = [a["peak_rss_mb"] for a in attempts if a["step"] == step and a["peak_rss_mb"]]
        if not peaks:
            continue
        ax.scatter(peaks, k + rng.uniform(-0.25, 0.25, len(peaks)), s=6, color="#34558b")
        ax.text(max(peaks), k, f"  {max(peaks):.0f} MB", va="center", fontsize=7)
    ax.set_yticks(np.arange(len(steps)), steps, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("peak resident memory of a notebook (MB)")
    fig.tight_layout()
    return fig


def disk_over_time(samples: list[tuple[float, int]]) -> Figure:
    """The run directory's size on disk (GB) against hours since the first sample."""
    fig, ax = plt.subplots(figsize=(8, 3.2))
    if samples:
        t = np.array([s[0] for s in samples])
        size = np.array([s[1] for s in samples]) / 1e9
        ax.plot((t - t[0]) / 3600.0, size, color="#34558b", lw=1.2, drawstyle="steps-post")
        ax.axhline(size.max(), color="0.5", lw=0.8, ls=":")
        ax.text(0, size.max(), f"peak {size.max():.2f} GB", va="bottom", fontsize=8)
    ax.set_xlabel("hours since the driver's first sample")
    ax.set_ylabel("run directory on disk (GB)")
    fig.tight_layout()
    return fig
