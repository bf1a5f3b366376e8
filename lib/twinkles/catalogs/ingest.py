"""Ingest a run's catalogs into the catalog database: bulk, idempotent, one transaction per unit.

A run's products are ingested in *units*, each in one transaction that first deletes what the
unit wrote before and then bulk-inserts it again, so ingesting twice replaces rather than
duplicates, and a crash (or kill) leaves every unit either wholly in or wholly out:

``truth``
    TruthObject and TruthFlux from the run's truth tables (simulated, or an external truth
    catalog; a run without a truth has no such unit).
``objects``
    Object (``deepCoadd_ref``), DiaObject (``diaObject``) and DiaSource (``diaSourceTable``,
    the DIASources with the DIAObject each was associated with), when the run has them.
``visit=N``
    CcdVisit (``visitSummary`` and the cadence), Source (``src``), ForcedSource
    (``forced_src``) and DiaForcedSource (``forced_diaSrc``), when the run has them.

``IngestLog`` records a checksum of each unit's input files, written in the unit's
transaction: a rerun skips units whose files have not changed, so an interrupted ingest
resumes where it stopped. A unit that fails (a corrupt file, a catalog that does not fit the
schema) is rolled back and reported; the other units are ingested.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Connection, delete, select

from twinkles.bands import BANDS
from twinkles.butler import Butler
from twinkles.catalogs.database import CatalogDatabase, bulk_insert
from twinkles.catalogs.schema import CATALOG_TABLES, ingest_log_table
from twinkles.coadd.skymap import patch_ids
from twinkles.config import Run
from twinkles.sim.galaxies import galaxy_flux
from twinkles.sim.truth import TRUTH_DATASETS, Truth
from twinkles.units import njy_to_mag

__all__ = ["IngestConfig", "IngestResult", "IngestTask", "TableSource", "catalog_columns"]


@dataclass(frozen=True)
class TableSource:
    """How a catalog file becomes rows of a table.

    Attributes
    ----------
    table : str
        Table name (:data:`~twinkles.catalogs.schema.CATALOG_TABLES`).
    dataset : str
        Butler dataset type of the file.
    renames : dict
        File column -> table column, where the names differ.
    """

    table: str
    dataset: str
    renames: dict[str, str] = field(default_factory=dict)


#: Per-visit catalogs (data id ``visit``), in ingest order.
VISIT_SOURCES = (
    TableSource(
        "Source",
        "src",
        {
            "id": "sourceId",
            "visit": "ccdVisitId",
            "coord_ra": "ra",
            "coord_dec": "decl",
            "psfFlux": "psFlux",
            "psfFluxErr": "psFluxErr",
            "psfApCorr": "apCorr",
            "flux_radius": "fluxRadius",
        },
    ),
    TableSource("ForcedSource", "forced_src", {"group_size": "groupSize"}),
    TableSource("DiaForcedSource", "forced_diaSrc"),
)

#: Run-level catalogs (the Object table per patch; DIAObjects and associated DIASources).
OBJECT_SOURCES = (
    TableSource("Object", "deepCoadd_ref", {"parent": "parentObjectId"}),
    TableSource("DiaObject", "diaObject"),
    TableSource("DiaSource", "diaSourceTable"),
)

#: visitSummary key -> CcdVisit column.
_CCD_VISIT_SUMMARY = {
    "filter": "filterName",
    "mjd": "expMidptMJD",
    "exptime": "expTime",
    "airmass": "airmass",
    "psf_fwhm": "seeing",
    "psf_fwhm_eff": "psfFwhmEff",
    "zero_point": "zeroPoint",
    "zero_point_err": "zeroPointErr",
    "sky_level": "skyBg",
    "sky_noise": "skyNoise",
    "astrom_rms_mas": "astromRms",
    "astrom_bright_rms_mas": "astromBrightRms",
    "ap_corr": "apCorr",
    "ap_corr_err": "apCorrErr",
    "n_sources": "nSources",
}


def catalog_columns(
    source: TableSource, catalog: Any, constants: dict[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """The columns of ``catalog`` (an astropy Table) named as ``source.table`` names them.

    ``constants`` adds columns with one value for every row (``runId``, ``filterName``...).
    A catalog column the table has no place for is an error naming it: the schema and the
    catalogs must change together.
    """
    table = CATALOG_TABLES[source.table]
    out: dict[str, np.ndarray] = {}
    extra = []
    for name in catalog.colnames:
        target = source.renames.get(name, name)
        if target not in table.c:
            extra.append(name)
            continue
        col = catalog[name]
        masked = getattr(col, "mask", None) is not None and np.any(col.mask)
        out[target] = np.ma.MaskedArray(col) if masked else np.asarray(col)
    if extra:
        raise ValueError(
            f"{source.dataset} has columns {extra} that table {source.table} has no place for"
        )
    for name, value in (constants or {}).items():
        if name in out:
            if np.any(out[name] != value):
                raise ValueError(f"{source.dataset}: column {name} is not {value} everywhere")
            continue
        out[name] = np.full(len(catalog), value)
    return out


@dataclass
class IngestConfig:
    """Configuration of :class:`IngestTask`.

    Attributes
    ----------
    truth : bool
        Ingest the simulation's truth (TruthObject, TruthFlux). Default True.
    force : bool
        Re-ingest units whose files have not changed since the last ingest. Default False.
    chunk_rows : int
        Rows per bulk-insert buffer. Default 200,000 (~40 MB of ForcedSource).
    workers : int
        Units ingested at once, each in its own transaction, on a database server. Index
        upkeep on the server, not the client, limits one COPY stream (~250k ForcedSource
        rows/s measured); two streams use two server processes. SQLite has one writer, so it
        always takes one. Default 2.
    """

    truth: bool = True
    force: bool = False
    chunk_rows: int = 200_000
    workers: int = 2

    def validate(self) -> None:
        """Check the settings together.

        Raises
        ------
        ValueError
            ``chunk_rows`` or ``workers`` below 1.
        """
        if self.chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {self.chunk_rows}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")


@dataclass
class IngestResult:
    """What :meth:`IngestTask.run` did.

    Attributes
    ----------
    rows : dict
        Table -> rows inserted by this ingest.
    ingested, skipped : list of str
        Units written, and units unchanged since the last ingest.
    missing : list of str
        Visits with no processed products (their process_eimage failed or did not run, or
        the run database does not vouch for it).
    withdrawn : list of str
        Of those, the visits an earlier ingest had loaded: their rows were deleted, so the
        database holds no visit the run calls failed.
    failures : dict
        Unit -> error message; those units were rolled back, the others ingested.
    seconds : float
        Wall time.
    """

    rows: dict[str, int] = field(default_factory=dict)
    ingested: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    withdrawn: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when no file failed to ingest."""
        return not self.failures

    def summary(self) -> dict[str, Any]:
        """Rows per table, counts of ingested and skipped files, missing inputs, failures and
        seconds, as plain JSON-able values.
        """
        return {
            "rows": dict(self.rows),
            "n_ingested": len(self.ingested),
            "n_skipped": len(self.skipped),
            "missing": list(self.missing),
            "failures": dict(self.failures),
            "seconds": self.seconds,
        }


def _unit_checksum(butler: Butler, files: list[tuple[str, dict]]) -> str:
    digest = hashlib.sha256()
    for name, data_id in files:
        digest.update(f"{name}{sorted(data_id.items())}:".encode())
        digest.update(butler.checksum(name, **data_id).encode())
    return digest.hexdigest()


def _registered(butler: Butler, name: str) -> bool:
    try:
        butler.dataset_type(name)
    except KeyError:
        return False
    return True


class IngestTask:
    """Ingest a run's catalogs (see the module docstring for units and guarantees).

    Parameters
    ----------
    config : IngestConfig, optional
    """

    def __init__(self, config: IngestConfig | None = None):
        self.config = config or IngestConfig()
        self.config.validate()

    # -- units --------------------------------------------------------------------------------

    def units(self, run: Run) -> list[tuple[str, list[tuple[str, dict]]]]:
        """``(unit, input files)`` for every unit the run's products make, in ingest order."""
        butler = run.butler
        visit_table = butler.get("visitTable")
        units: list[tuple[str, list[tuple[str, dict]]]] = []
        if self.config.truth and Truth.exists(butler):  # an external run may bring none
            units.append(
                (
                    "truth",
                    [("visitTable", {})]
                    + [(ds, {}) for ds in TRUTH_DATASETS.values() if butler.exists(ds)],
                )
            )
        object_files = []
        for src in OBJECT_SOURCES:
            if not _registered(butler, src.dataset):
                continue
            per_patch = "patch" in butler.dataset_type(src.dataset).dimensions
            for did in patch_ids() if per_patch else [{}]:
                if butler.exists(src.dataset, **did):
                    object_files.append((src.dataset, did))
        if object_files:
            units.append(("objects", object_files))
        for visit in np.asarray(visit_table["obsHistID"]).tolist():
            files = [("visitSummary", {"visit": visit})] + [
                (src.dataset, {"visit": visit})
                for src in VISIT_SOURCES
                if _registered(butler, src.dataset) and butler.exists(src.dataset, visit=visit)
            ]
            units.append((f"visit={visit}", files))
        return units

    # -- the run ------------------------------------------------------------------------------

    def run(
        self,
        run: Run,
        database: CatalogDatabase,
        progress: Callable[[str, int, int], None] | None = None,
    ) -> IngestResult:
        """Ingest every unit of ``run`` whose files changed since the last ingest.

        Parameters
        ----------
        run : Run
        database : CatalogDatabase
        progress : callable, optional
            Called as ``progress(unit, done, total)`` after each unit.

        Returns
        -------
        IngestResult
        """
        start = time.perf_counter()
        butler = run.butler
        result = IngestResult(rows={name: 0 for name in CATALOG_TABLES})
        config_text = run.config_path.read_text() if run.config_path.exists() else None
        run_id = database.run_id(run.config.name, config_text, create=True)
        visit_table = butler.get("visitTable")
        visit_rows = {int(r["obsHistID"]): r for r in visit_table}
        units = []
        for unit, files in self.units(run):
            if unit.startswith("visit=") and not butler.exists("visitSummary", visit=int(unit[6:])):
                result.missing.append(unit)
            else:
                units.append((unit, files))

        for unit in result.missing:
            if self._withdraw_visit(database, run_id, int(unit[6:])):
                result.withdrawn.append(unit)

        def ingest(unit: str, files: list) -> dict[str, int] | None:
            checksum = _unit_checksum(butler, files)
            with database.begin() as conn:
                logged = conn.execute(
                    select(ingest_log_table.c.checksum).where(
                        (ingest_log_table.c.runId == run_id) & (ingest_log_table.c.unit == unit)
                    )
                ).first()
                if logged is not None and logged[0] == checksum and not self.config.force:
                    return None
                if unit == "truth":
                    rows = self._ingest_truth(conn, run_id, Truth.read(butler), visit_table)
                elif unit == "objects":
                    rows = self._ingest_objects(conn, run_id, butler, files)
                else:
                    visit_row = visit_rows[int(unit[6:])]
                    rows = self._ingest_visit(conn, run_id, butler, visit_row, files)
                conn.execute(
                    delete(ingest_log_table).where(
                        (ingest_log_table.c.runId == run_id) & (ingest_log_table.c.unit == unit)
                    )
                )
                conn.execute(
                    ingest_log_table.insert().values(
                        runId=run_id,
                        unit=unit,
                        checksum=checksum,
                        nRows=sum(rows.values()),
                        ingestedAt=time.time(),
                    )
                )
            return rows

        def record(unit: str, outcome: Any) -> None:
            if isinstance(outcome, BaseException):  # a bad unit fails alone and is reported
                result.failures[unit] = f"{type(outcome).__name__}: {outcome}"
            elif outcome is None:
                result.skipped.append(unit)
            else:
                for name, n in outcome.items():
                    result.rows[name] += n
                result.ingested.append(unit)
            if progress is not None:
                progress(
                    unit,
                    len(result.ingested) + len(result.skipped) + len(result.failures),
                    len(units),
                )

        workers = 1 if database.dialect == "sqlite" else self.config.workers
        if workers == 1:
            for unit, files in units:
                try:
                    outcome = ingest(unit, files)
                except Exception as exc:
                    outcome = exc
                record(unit, outcome)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(ingest, unit, files): unit for unit, files in units}
                for future in as_completed(futures):
                    record(futures[future], future.exception() or future.result())
        order = {unit: k for k, (unit, _) in enumerate(units)}
        result.ingested.sort(key=order.get)
        result.skipped.sort(key=order.get)
        result.seconds = time.perf_counter() - start
        return result

    @staticmethod
    def _withdraw_visit(database: CatalogDatabase, run_id: int, visit: int) -> bool:
        """Delete an earlier ingest's rows of a visit that has no usable products now;
        whether there were any."""
        with database.begin() as conn:
            logged = conn.execute(
                select(ingest_log_table.c.unit).where(
                    (ingest_log_table.c.runId == run_id)
                    & (ingest_log_table.c.unit == f"visit={visit}")
                )
            ).first()
            if logged is None:
                return False
            for name in ("CcdVisit", *(src.table for src in VISIT_SOURCES)):
                table = CATALOG_TABLES[name]
                conn.execute(
                    delete(table).where((table.c.runId == run_id) & (table.c.ccdVisitId == visit))
                )
            conn.execute(
                delete(ingest_log_table).where(
                    (ingest_log_table.c.runId == run_id)
                    & (ingest_log_table.c.unit == f"visit={visit}")
                )
            )
        return True

    def _replace(
        self, conn: Connection, table_name: str, run_id: int, columns: dict, **where: Any
    ) -> int:
        table = CATALOG_TABLES[table_name]
        cond = table.c.runId == run_id
        for key, value in where.items():
            cond = cond & (table.c[key] == value)
        conn.execute(delete(table).where(cond))
        return bulk_insert(conn, table, columns, self.config.chunk_rows)

    def _ingest_visit(
        self, conn: Connection, run_id: int, butler: Butler, visit_row: Any, files: list
    ) -> dict[str, int]:
        visit = int(visit_row["obsHistID"])
        summary = butler.get("visitSummary", visit=visit)
        ccd = {col: summary.get(key) for key, col in _CCD_VISIT_SUMMARY.items()}
        ccd.update(
            runId=run_id,
            ccdVisitId=visit,
            visitId=visit,
            filterName=str(visit_row["filter"]),
            expMidptMJD=float(visit_row["expMJD"]),
            fiveSigmaDepth=float(visit_row["fiveSigmaDepth"]),
        )
        ccd = {col: np.array([np.nan if value is None else value]) for col, value in ccd.items()}
        rows = {"CcdVisit": self._replace(conn, "CcdVisit", run_id, ccd, ccdVisitId=visit)}
        present = {name for name, _ in files}
        constants = {"runId": run_id, "ccdVisitId": visit}
        for src in VISIT_SOURCES:
            table = CATALOG_TABLES[src.table]
            if src.dataset not in present:
                # a product that is gone (or never made) leaves no stale rows behind
                conn.execute(
                    delete(table).where((table.c.runId == run_id) & (table.c.ccdVisitId == visit))
                )
                continue
            catalog = butler.get(src.dataset, visit=visit)
            extra = dict(constants)
            if "filterName" in table.c:
                extra["filterName"] = str(visit_row["filter"])
            columns = catalog_columns(src, catalog, extra)
            rows[src.table] = self._replace(conn, src.table, run_id, columns, ccdVisitId=visit)
        return rows

    def _ingest_objects(
        self, conn: Connection, run_id: int, butler: Butler, files: list
    ) -> dict[str, int]:
        rows = {}
        for src in OBJECT_SOURCES:
            table = CATALOG_TABLES[src.table]
            conn.execute(delete(table).where(table.c.runId == run_id))
            n = 0
            for dataset, data_id in files:
                if dataset != src.dataset:
                    continue
                catalog = butler.get(dataset, **data_id)
                columns = catalog_columns(src, catalog, {"runId": run_id})
                n += bulk_insert(conn, table, columns, self.config.chunk_rows)
            rows[src.table] = n
        return rows

    def _ingest_truth(
        self, conn: Connection, run_id: int, truth: Truth, visit_table: Any
    ) -> dict[str, int]:
        objects = truth_object_columns(truth)
        objects["runId"] = np.full(len(objects["truthId"]), run_id)
        n_obj = self._replace(conn, "TruthObject", run_id, objects)
        flux = truth_flux_columns(truth, visit_table)
        flux["runId"] = np.full(len(flux["truthId"]), run_id)
        n_flux = self._replace(conn, "TruthFlux", run_id, flux)
        return {"TruthObject": n_obj, "TruthFlux": n_flux}


# --- truth ------------------------------------------------------------------------------------


def truth_object_columns(truth: Truth) -> dict[str, np.ndarray]:
    """TruthObject columns: every simulated star, galaxy, supernova and lensed-quasar image."""
    parts = []

    def part(table: Any, kind: str, **cols: Any) -> None:
        n = len(table)
        row = {
            "truthId": np.asarray(table["id"], dtype=np.int64),
            "kind": np.full(n, kind, dtype=object),
            "ra": np.asarray(table["ra"], dtype=float),
            "decl": np.asarray(table["dec"], dtype=float),
            "redshift": np.full(n, np.nan),
            "hostId": np.full(n, None, dtype=object),
            "isVariable": np.zeros(n, dtype=bool),
        }
        for b in BANDS:
            row[f"mag_{b}"] = np.full(n, np.nan)
        row.update(cols)
        parts.append(row)

    stars = truth.stars
    part(
        stars,
        "star",
        isVariable=np.asarray(stars["is_variable"], dtype=bool),
        **{f"mag_{b}": np.asarray(stars[f"mag_{b}"], dtype=float) for b in BANDS},
    )
    gals = truth.galaxies
    part(
        gals,
        "galaxy",
        redshift=np.asarray(gals["redshift"], dtype=float),
        **{f"mag_{b}": njy_to_mag(galaxy_flux(gals, b)) for b in BANDS},
    )
    sne = truth.supernovae
    part(
        sne,
        "supernova",
        redshift=np.asarray(sne["redshift"], dtype=float),
        hostId=np.asarray(sne["host_id"], dtype=object),
        isVariable=np.ones(len(sne), dtype=bool),
    )
    images = truth.lensed_images
    systems = truth.lensed_systems
    z_source = dict(
        zip(np.asarray(systems["id"]).tolist(), np.asarray(systems["z_source"]), strict=True)
    )
    part(
        images,
        "lensed_image",
        redshift=np.array([z_source[s] for s in np.asarray(images["system_id"]).tolist()]),
        hostId=np.asarray(images["system_id"], dtype=object),
        isVariable=np.ones(len(images), dtype=bool),
    )
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def truth_flux_columns(truth: Truth, visit_table: Any) -> dict[str, np.ndarray]:
    """TruthFlux columns: the true flux (nJy) of every point source at every visit.

    Galaxies are static; their fluxes are the magnitudes of TruthObject.
    """
    ids = np.concatenate(
        [
            np.asarray(truth.stars["id"], dtype=np.int64),
            np.asarray(truth.supernovae["id"], dtype=np.int64),
            np.asarray(truth.lensed_images["id"], dtype=np.int64),
        ]
    )
    visits = np.asarray(visit_table["obsHistID"], dtype=np.int64)
    flux = np.empty((len(visits), len(ids)))
    for k, row in enumerate(visit_table):
        flux[k] = truth.flux(ids, str(row["filter"]), float(row["expMJD"]))
    return {
        "truthId": np.tile(ids, len(visits)),
        "ccdVisitId": np.repeat(visits, len(ids)),
        "trueFlux": flux.ravel(),
    }
