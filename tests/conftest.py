"""Shared fixtures: the repository's run configs and a simulated tiny run."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from twinkles.config import Run, load_run

REPO = Path(__file__).resolve().parents[1]
RUNS = REPO / "runs"


def copy_config(name: str, dest: Path) -> Path:
    """Copy ``runs/<name>.yaml`` into ``dest`` (so the run writes under ``dest``)."""
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / f"{name}.yaml"
    shutil.copy(RUNS / f"{name}.yaml", target)
    return target


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The tiny run, simulated once per test session (sky and every eimage)."""
    from twinkles.sim.simulate import simulate_run

    config = copy_config("tiny", tmp_path_factory.mktemp("runs"))
    run = load_run(config)
    simulate_run(run, jobs=1)
    return run
