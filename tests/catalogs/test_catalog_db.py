"""The catalog database on SQLite and on a real PostgreSQL: ingest, idempotence, resume after a
kill, light curves value for value against the catalog files, errors and injection safety."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import create_engine, func, inspect, select, text

from twinkles.catalogs import CatalogDatabase, DatabaseError, IngestConfig, IngestTask
from twinkles.catalogs.database import SchemaVersionError, bulk_insert
from twinkles.catalogs.queries import cone_search, light_curve, row_counts, visits
from twinkles.catalogs.schema import CATALOG_TABLES, SCHEMA_VERSION, ingest_log_table
from twinkles.cli import main
from twinkles.config import load_run
from twinkles.sim.truth import Truth

REPO = Path(__file__).resolve().parents[2]


def file_counts(run) -> dict[str, int]:
    """Rows each table should hold, counted from the run's catalog files."""
    butler = run.butler
    visit_ids = [int(v) for v in butler.get("visitTable")["obsHistID"]]
    done = [v for v in visit_ids if butler.exists("visitSummary", visit=v)]
    truth = Truth.read(butler)
    n_points = len(truth.stars) + len(truth.supernovae) + len(truth.lensed_images)
    return {
        "CcdVisit": len(done),
        "Source": sum(len(butler.get("src", visit=v)) for v in done),
        "ForcedSource": sum(
            len(butler.get("forced_src", visit=v))
            for v in done
            if butler.exists("forced_src", visit=v)
        ),
        "Object": len(butler.get("deepCoadd_ref", patch=0)),
        "TruthObject": n_points + len(truth.galaxies),
        "TruthFlux": n_points * len(visit_ids),
    }


def assert_complete(db: CatalogDatabase, run) -> None:
    counts = row_counts(db, run.config.name)
    for table, n in file_counts(run).items():
        assert counts[table] == n, table
    forced = CATALOG_TABLES["ForcedSource"]
    with db.engine.connect() as conn:
        distinct = conn.execute(
            select(func.count()).select_from(
                select(forced.c.objectId, forced.c.ccdVisitId).distinct().subquery()
            )
        ).scalar_one()
    assert distinct == counts["ForcedSource"]


def test_ingest_twice_gives_identical_rows(tiny_static, catalog_url):
    db = CatalogDatabase(catalog_url)
    first = IngestTask().run(tiny_static, db)
    assert first.ok, first.failures
    assert first.rows["ForcedSource"] > 0 and first.rows["TruthFlux"] > 0
    assert_complete(db, tiny_static)
    counts = row_counts(db, "tiny")

    again = IngestTask().run(tiny_static, db)
    assert again.ingested == [] and len(again.skipped) == len(first.ingested)
    forced = IngestTask(IngestConfig(force=True)).run(tiny_static, db)
    assert len(forced.ingested) == len(first.ingested)
    assert row_counts(db, "tiny") == counts
    assert_complete(db, tiny_static)


def test_light_curve_equals_the_catalog_files(tiny_static, catalog_url):
    db = CatalogDatabase(catalog_url)
    assert IngestTask(IngestConfig(truth=False)).run(tiny_static, db).ok
    butler = tiny_static.butler
    visit_table = butler.get("visitTable")
    objects = butler.get("deepCoadd_ref", patch=0)
    rng = np.random.default_rng(3)
    for object_id in rng.choice(np.asarray(objects["objectId"]), size=5, replace=False):
        curve = light_curve(db, "tiny", int(object_id))
        assert len(curve) == len(visit_table)
        assert np.all(np.diff(curve["expMidptMJD"]) >= 0)
        for row in curve:
            visit = int(row["ccdVisitId"])
            forced = butler.get("forced_src", visit=visit)
            ref = forced[forced["objectId"] == object_id][0]
            for name in ("x", "y", "psFlux", "psFluxErr", "psfInstFlux", "apFlux_6"):
                np.testing.assert_array_equal(row[name], ref[name], err_msg=name)
            for name in ("flag_off_image", "flag_edge", "flag_bad", "flag_blended"):
                assert bool(row[name]) == bool(ref[name]), name
            assert row["groupSize"] == ref["group_size"]
            vrow = visit_table[visit_table["obsHistID"] == visit][0]
            assert row["filterName"] == vrow["filter"]
            assert row["expMidptMJD"] == vrow["expMJD"]
    only_r = light_curve(db, "tiny", int(objects["objectId"][0]), filter_name="r")
    assert set(only_r["filterName"]) == {"r"}


def test_truth_flux_and_visit_table(tiny_static, catalog_url):
    db = CatalogDatabase(catalog_url)
    assert IngestTask().run(tiny_static, db).ok
    butler = tiny_static.butler
    truth = Truth.read(butler)
    table = CATALOG_TABLES["TruthFlux"]
    sn = int(truth.supernovae["id"][0])
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(table.c.ccdVisitId, table.c.trueFlux)
            .where(table.c.truthId == sn)
            .order_by(table.c.ccdVisitId)
        ).all()
    vt = butler.get("visitTable")
    expected = {
        int(r["obsHistID"]): truth.flux(sn, str(r["filter"]), float(r["expMJD"]))[0] for r in vt
    }
    assert {v: f for v, f in rows} == pytest.approx(expected, rel=1e-12)

    ccd = visits(db, "tiny")
    summary = butler.get("visitSummary", visit=int(ccd["ccdVisitId"][0]))
    assert ccd["zeroPoint"][0] == summary["zero_point"]
    assert ccd["seeing"][0] == summary["psf_fwhm"]


def test_cone_search_matches_brute_force(tiny_static, catalog_url):
    db = CatalogDatabase(catalog_url)
    assert IngestTask(IngestConfig(truth=False)).run(tiny_static, db).ok
    objects = tiny_static.butler.get("deepCoadd_ref", patch=0)
    ra0, dec0 = float(np.median(objects["ra"])), float(np.median(objects["decl"]))
    found = cone_search(db, "tiny", ra0, dec0, 10.0)
    dra = (np.asarray(objects["ra"]) - ra0) * np.cos(np.radians(dec0))
    dist = np.hypot(dra, np.asarray(objects["decl"]) - dec0) * 3600.0
    assert sorted(found["objectId"]) == sorted(np.asarray(objects["objectId"])[dist <= 10.0])
    assert np.all(np.diff(found["distance"]) >= 0)
    with pytest.raises(ValueError, match="radius"):
        cone_search(db, "tiny", ra0, dec0, -1.0)
    with pytest.raises(ValueError, match="sky position"):
        cone_search(db, "tiny", ra0, 95.0, 1.0)


def copy_run(run, dest: Path):
    shutil.copytree(run.dir, dest / run.config.name, ignore=shutil.ignore_patterns("*.db*"))
    return load_run(dest / run.config.name)


def test_bad_visit_fails_alone_and_is_reported(tiny_static, catalog_url, tmp_path):
    run = copy_run(tiny_static, tmp_path)
    path = run.butler.path("forced_src", visit=3)
    path.write_bytes(path.read_bytes()[:200])  # truncated
    db = CatalogDatabase(catalog_url)
    result = IngestTask().run(run, db)
    assert list(result.failures) == ["visit=3"]
    assert (
        "forced_src" in result.failures["visit=3"]
        or "parquet" in result.failures["visit=3"].lower()
    )
    ccd = visits(db, "tiny")
    assert 3 not in ccd["ccdVisitId"]  # the whole visit rolled back, not only ForcedSource
    assert len(ccd) == len(run.butler.get("visitTable")) - 1
    src = CATALOG_TABLES["Source"]
    with db.engine.connect() as conn:
        n3 = conn.execute(
            select(func.count()).select_from(src).where(src.c.ccdVisitId == 3)
        ).scalar_one()
    assert n3 == 0

    shutil.copy(tiny_static.butler.path("forced_src", visit=3), path)  # repaired
    again = IngestTask().run(run, db)
    assert again.ok and again.ingested == ["visit=3"]
    assert_complete(db, run)


KILL_HARNESS = textwrap.dedent(
    """
    import os, sys
    import twinkles.catalogs.ingest as ingest
    from twinkles.catalogs import CatalogDatabase, IngestTask
    from twinkles.config import load_run

    calls = {"n": 0}
    original = ingest.bulk_insert

    def dying_bulk_insert(conn, table, columns, chunk_rows=200_000):
        if table.name == "ForcedSource":
            calls["n"] += 1
            if calls["n"] == int(sys.argv[3]):
                half = {k: v[: len(v) // 2] for k, v in columns.items()}
                original(conn, table, half, chunk_rows)
                os._exit(9)  # killed mid-transaction: no rollback, no cleanup
        return original(conn, table, columns, chunk_rows)

    ingest.bulk_insert = dying_bulk_insert
    IngestTask().run(load_run(sys.argv[1]), CatalogDatabase(sys.argv[2]))
    """
)


def test_killed_ingest_resumes_complete_and_duplicate_free(tiny_static, catalog_url, tmp_path):
    script = tmp_path / "harness.py"
    script.write_text(KILL_HARNESS)
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_static.dir), catalog_url, "5"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO / "lib")},
    )
    assert proc.returncode == 9, proc.stderr
    db = CatalogDatabase(catalog_url)
    counts = row_counts(db, "tiny")
    ccd = visits(db, "tiny")
    # the process died inside a visit's transaction: on SQLite (one writer) exactly four
    # visits were committed; on PostgreSQL two visits are in flight at once, so three to five
    assert 3 <= len(ccd) <= 5 and (len(ccd) == 4 or not catalog_url.startswith("sqlite"))
    expected = file_counts(tiny_static)
    assert 0 < counts["ForcedSource"] < expected["ForcedSource"]
    per_visit = {
        v: len(tiny_static.butler.get("forced_src", visit=int(v))) for v in ccd["ccdVisitId"]
    }
    assert counts["ForcedSource"] == sum(per_visit.values())  # no half visit
    assert counts["Source"] == sum(
        len(tiny_static.butler.get("src", visit=int(v))) for v in ccd["ccdVisitId"]
    )

    with db.begin() as conn:  # the units whose transaction was committed before the kill
        committed = {r[0] for r in conn.execute(select(ingest_log_table.c.unit))}
    assert {f"visit={v}" for v in ccd["ccdVisitId"]} <= committed
    result = IngestTask().run(tiny_static, db)
    assert result.ok
    assert set(result.skipped) == committed  # resumed: nothing committed is ingested again
    assert_complete(db, tiny_static)


def test_schema_of_another_version_is_refused(catalog_url):
    db = CatalogDatabase(catalog_url)
    with db.begin() as conn:
        conn.execute(text('UPDATE "SchemaVersion" SET version = :v'), {"v": SCHEMA_VERSION + 1})
    db.dispose()
    with pytest.raises(SchemaVersionError, match=f"schema version {SCHEMA_VERSION + 1}"):
        CatalogDatabase(catalog_url)


def test_foreign_tables_are_not_touched(catalog_url):
    engine = create_engine(catalog_url)
    with engine.begin() as conn:
        conn.execute(text('CREATE TABLE "Object" (x INTEGER)'))
    engine.dispose()
    with pytest.raises(SchemaVersionError, match="not written by twinkles"):
        CatalogDatabase(catalog_url)
    engine = create_engine(catalog_url)
    assert inspect(engine).get_table_names() == ["Object"]
    engine.dispose()


def test_queries_need_an_ingested_database(tmp_path):
    with pytest.raises(DatabaseError, match="is empty"):
        CatalogDatabase(f"sqlite:///{tmp_path / 'empty.db'}", create=False)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "cannot be parsed"),
        ("mysql+pymysql://me:hunter2@db.example/x", "'mysql' is not supported"),
        ("sqlite:////no/such/directory/catalogs.db", "does not exist"),
        ("postgresql+psycopg://me:hunter2@127.0.0.1:1/x", "cannot connect"),
    ],
)
def test_bad_database_urls_are_explained(url, message):
    with pytest.raises(DatabaseError, match=message) as info:
        CatalogDatabase(url)
    assert "hunter2" not in str(info.value)


def test_bulk_insert_nan_is_null_and_unknown_columns_rejected(catalog_url):
    db = CatalogDatabase(catalog_url)
    table = CATALOG_TABLES["ForcedSource"]
    with db.begin() as conn:
        n = bulk_insert(
            conn,
            table,
            {
                "runId": np.array([7, 7, 7]),
                "objectId": np.array([1, 2, 3]),
                "ccdVisitId": np.array([9, 9, 9]),
                "psFlux": np.array([1.5, np.nan, -2.0]),
                "flag_bad": np.array([False, True, False]),
            },
            chunk_rows=2,
        )
    assert n == 3
    with db.engine.connect() as conn:
        nulls = conn.execute(
            select(func.count()).select_from(table).where(table.c.psFlux.is_(None))
        ).scalar_one()
        fluxes = conn.execute(
            select(table.c.psFlux).where(table.c.psFlux.is_not(None)).order_by(table.c.objectId)
        ).scalars()
        assert list(fluxes) == [1.5, -2.0]
    assert nulls == 1
    with pytest.raises(ValueError, match="no columns"):
        with db.begin() as conn:
            bulk_insert(conn, table, {"objectId": np.array([1]), "psFlux ; --": np.array([1.0])})


INJECTIONS = [
    '1; DROP TABLE "ForcedSource"; --',
    "1 OR 1=1",
    "' OR ''='",
    "-1",
    "1e3",
    "99999999999999999999999",
]


@pytest.mark.parametrize("bad", INJECTIONS)
def test_cli_rejects_injection_strings(bad, capsys):
    with pytest.raises(SystemExit) as info:
        main(["lightcurve", "runs/tiny", bad])
    assert info.value.code == 2
    assert "object id" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["lightcurve", "runs/tiny", "1", "--filter", "r' OR 'a'='a"])


def test_injection_through_the_api_changes_nothing(tiny_static, catalog_url):
    db = CatalogDatabase(catalog_url)
    assert IngestTask(IngestConfig(truth=False)).run(tiny_static, db).ok
    counts = row_counts(db, "tiny")
    for name in ['tiny\'; DROP TABLE "ForcedSource"; --', "tiny' OR '1'='1"]:
        with pytest.raises(KeyError, match="not in the catalog database"):
            light_curve(db, name, 1)
    with pytest.raises(ValueError, match="not one of"):
        light_curve(db, "tiny", 1, filter_name="r' OR 'a'='a")
    with pytest.raises(ValueError, match="not a non-negative integer"):
        light_curve(db, "tiny", "1 OR 1=1")
    assert row_counts(db, "tiny") == counts
    assert set(CATALOG_TABLES) <= set(inspect(db.engine).get_table_names())


def test_cli_ingest_and_lightcurve_with_plot(tiny_static, tmp_path, capsys):
    run = copy_run(tiny_static, tmp_path)
    assert main(["ingest", str(run.dir), "-q"]) == 0
    assert (run.dir / "catalogs.db").exists()
    out = capsys.readouterr().out
    assert "ForcedSource" in out and str(run.dir / "catalogs.db") in out
    objects = run.butler.get("deepCoadd_ref", patch=0)
    object_id = int(objects["objectId"][np.argmax(np.nan_to_num(objects["r_psFlux"]))])
    plot = tmp_path / "lc.png"
    assert main(["lightcurve", str(run.dir), str(object_id), "--plot", str(plot)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") >= len(run.butler.get("visitTable")) + 2
    assert plot.stat().st_size > 10_000
    assert main(["lightcurve", str(run.dir), "123456789"]) == 1
    assert main(["lightcurve", str(run.dir), "1", "--db-url", "sqlite:////nope/x.db"]) == 2


@pytest.mark.recipe
def test_ingest_step_runs_through_the_workflow(tiny_dia):
    import nbformat

    from twinkles.workflow.driver import run_pipeline

    # the step gathers both branches' catalogs, so it runs after the DIA steps
    summary = run_pipeline(tiny_dia, steps=["ingest_catalogs"], progress=False)
    assert summary.ok, summary.lines()
    record = tiny_dia.butler.get("catalogIngest")
    assert record["failures"] == {} and record["database"].startswith("sqlite:///")
    for table, n in file_counts(tiny_dia).items():
        assert record["counts"][table] == n, table
    assert record["counts"]["DiaForcedSource"] == 12 * len(tiny_dia.butler.get("diaObject"))
    (notebook,) = (tiny_dia.dir / "notebooks" / "ingest_catalogs").glob("*.ipynb")
    nb = nbformat.read(notebook, as_version=4)
    assert any("image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", []))
