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


#: The static-sky steps after process_eimage.
STATIC_SKY_STEPS = [
    "make_skymap",
    "make_coadd",
    "coadd_sources",
    "forced_photometry",
    "validate_static_sky",
]


@pytest.fixture(scope="session")
def tiny_static(tiny_processed: Run) -> Run:
    """The tiny run through the static-sky branch (coadds, Objects, ForcedSource)."""
    from twinkles.workflow.driver import run_pipeline

    summary = run_pipeline(tiny_processed, steps=STATIC_SKY_STEPS, progress=False)
    assert summary.ok, summary.lines()
    return tiny_processed


#: The difference-imaging steps.
DIA_STEPS = [
    "make_template",
    "image_difference",
    "inject_sources",
    "associate_dia",
    "forced_dia_photometry",
    "validate_dia",
]


@pytest.fixture(scope="session")
def tiny_dia(tiny_static: Run) -> Run:
    """The tiny run through the difference-imaging branch as well."""
    from twinkles.workflow.driver import run_pipeline

    summary = run_pipeline(tiny_static, steps=DIA_STEPS, progress=False)
    assert summary.ok, summary.lines()
    return tiny_static


#: The run-level steps that close the run: the catalog database, validation and the monitor.
CLOSING_STEPS = ["ingest_catalogs", "validate_run", "monitor_lightcurves"]


@pytest.fixture(scope="session")
def tiny_full(tiny_dia: Run) -> Run:
    """The tiny run through every step: ingested, validated and monitored."""
    from twinkles.workflow.driver import run_pipeline

    summary = run_pipeline(tiny_dia, steps=CLOSING_STEPS, progress=False)
    assert summary.ok, summary.lines()
    return tiny_dia


#: Demo visits processed by the tests (a spread over the ten years and the filters).
DEMO_VISITS = [1, 8, 15, 22, 29, 36, 43, 50]


@pytest.fixture(scope="session")
def demo_processed(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Eight visits of the demo run, simulated and processed (nothing beyond process_eimage:
    the tests of the later steps have their own runs)."""
    from twinkles.workflow.driver import run_pipeline

    run = load_run(copy_config("demo", tmp_path_factory.mktemp("runs")))
    summary = run_pipeline(
        run,
        steps=["simulate_visit", "process_eimage"],
        where={"visit": DEMO_VISITS},
        progress=False,
    )
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


@pytest.fixture(scope="session")
def postgres_server() -> str:
    """The URL of the test database of the PostgreSQL that scripts/services.sh started."""
    url = os.environ.get("TWINKLES_TEST_POSTGRES_URL")
    if not url:
        _service_missing("PostgreSQL", "no TWINKLES_TEST_POSTGRES_URL")
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        _service_missing("PostgreSQL", str(exc).splitlines()[0])
    finally:
        engine.dispose()
    return url


@pytest.fixture
def postgres_url(postgres_server: str):
    """A new, empty PostgreSQL database for one test, dropped afterwards."""
    import uuid

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"twinkles_{uuid.uuid4().hex[:12]}"
    admin = create_engine(postgres_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_server).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def catalog_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh catalog database: SQLite in a temporary directory, and a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'catalogs.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def chromium() -> str:
    """The headless Chromium that scripts/services.sh installed and checked."""
    import shutil

    path = os.environ.get("TWINKLES_CHROMIUM") or shutil.which("chromium")
    if not path or not Path(path).exists():
        _service_missing("Chromium", "not installed")
    return path
