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
    """The tiny run, simulated once per test session through the workflow (`twinkles run`)."""
    from twinkles.workflow.driver import run_pipeline

    config = copy_config("tiny", tmp_path_factory.mktemp("runs"))
    run = load_run(config)
    summary = run_pipeline(run, steps=["simulate_visit"], progress=False)
    assert summary.ok, summary.lines()
    return run


@pytest.fixture(scope="session")
def tiny_processed(tiny_run: Run) -> Run:
    """The tiny run with every visit processed (process_eimage)."""
    from twinkles.workflow.driver import run_pipeline

    summary = run_pipeline(tiny_run, steps=["process_eimage"], progress=False)
    assert summary.ok, summary.lines()
    return tiny_run


#: Demo visits processed by the tests (a spread over the ten years and the filters).
DEMO_VISITS = [1, 8, 15, 22, 29, 36, 43, 50]


@pytest.fixture(scope="session")
def demo_processed(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Eight visits of the demo run, simulated and processed."""
    from twinkles.workflow.driver import run_pipeline

    run = load_run(copy_config("demo", tmp_path_factory.mktemp("runs")))
    summary = run_pipeline(run, where={"visit": DEMO_VISITS}, progress=False)
    assert summary.ok, summary.lines()
    return run


# --- real services (scripts/services.sh) -----------------------------------------------------

import os  # noqa: E402
import subprocess  # noqa: E402

SERVICES_ENV = REPO / ".services" / "services.env"


def _load_services_env() -> None:
    """Export what scripts/services.sh wrote (SLURM_CONF, ...) to this test session."""
    path = Path(os.environ.get("TWINKLES_SERVICES_DIR", REPO / ".services")) / "services.env"
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            if key and value:
                os.environ.setdefault(key.strip(), value.strip())


_load_services_env()


def _service_missing(name: str, why: str) -> None:
    """Fail when services are required (make test, CI); skip otherwise."""
    message = f"{name} is not running ({why}); start it with scripts/services.sh start"
    if os.environ.get("TWINKLES_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def slurm() -> str:
    """A usable single-node Slurm; returns its SLURM_CONF."""
    conf = os.environ.get("SLURM_CONF")
    if not conf:
        _service_missing("Slurm", "no SLURM_CONF")
    try:
        proc = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        _service_missing("Slurm", str(exc))
    if proc.returncode != 0 or ("idle" not in proc.stdout and "mix" not in proc.stdout):
        _service_missing("Slurm", proc.stderr.strip() or proc.stdout.strip())
    return conf
