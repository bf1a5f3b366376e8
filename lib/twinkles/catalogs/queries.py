"""Queries of the catalog database: light curves, cone searches, the visit table.

Every query binds its values (``runName``, ids, coordinates) as parameters. Light curves are
one range scan of the ``(runId, objectId, ccdVisitId)`` index joined to CcdVisit for the time
and filter of each point.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table
from sqlalchemy import Select, and_, func, select
from sqlalchemy.types import Float

from twinkles.bands import BANDS
from twinkles.catalogs.database import CatalogDatabase
from twinkles.catalogs.schema import (
    CATALOG_TABLES,
    ccd_visit_table,
    dia_forced_source_table,
    dia_object_table,
    forced_source_table,
    object_table,
)
from twinkles.geometry import unit_vectors

__all__ = [
    "cone_search",
    "light_curve",
    "row_counts",
    "validate_filter",
    "validate_object_id",
    "visits",
]

_MAX_ID = 2**63 - 1


def validate_object_id(value: str | int) -> int:
    """An object id from user input: a non-negative 64-bit integer, or a ``ValueError``."""
    text = str(value).strip()
    if not text.isdigit():
        raise ValueError(f"object id {value!r} is not a non-negative integer")
    number = int(text)
    if number > _MAX_ID:
        raise ValueError(f"object id {value!r} does not fit in 64 bits")
    return number


def validate_filter(value: str) -> str:
    """A filter name from user input: one of ugrizy, or a ``ValueError``."""
    if value not in BANDS:
        raise ValueError(f"filter {value!r} is not one of {', '.join(BANDS)}")
    return value


def _table(db: CatalogDatabase, statement: Select) -> Table:
    """Rows of ``statement`` as an astropy Table (NULL floats as NaN)."""
    with db.engine.connect() as conn:
        result = conn.execute(statement)
        names = list(result.keys())
        rows = result.fetchall()
    columns = {}
    for k, name in enumerate(names):
        values = [row[k] for row in rows]
        expr = statement.selected_columns[k]
        if isinstance(expr.type, Float):
            columns[name] = np.array([np.nan if v is None else v for v in values], dtype=float)
        else:
            columns[name] = np.array(values)
    return Table(columns, names=names)


def light_curve(
    db: CatalogDatabase,
    run_name: str,
    object_id: int,
    dia: bool = False,
    filter_name: str | None = None,
) -> Table:
    """The light curve of an Object (ForcedSource) or a DIAObject (DiaForcedSource).

    Parameters
    ----------
    db : CatalogDatabase
    run_name : str
    object_id : int
        ``objectId`` (or ``diaObjectId`` with ``dia``).
    dia : bool
        Forced photometry on the difference images instead of the calexps.
    filter_name : str, optional
        Only this band.

    Returns
    -------
    Table
        One row per visit, in time order: ``ccdVisitId``, ``filterName``, ``expMidptMJD``, the
        forced-photometry columns (``psFlux``, ``psFluxErr`` in nJy, flags).

    Raises
    ------
    KeyError
        The run is not in the database.
    """
    run_id = db.run_id(run_name)
    forced = dia_forced_source_table if dia else forced_source_table
    key = forced.c.diaObjectId if dia else forced.c.objectId
    visit_cols = [ccd_visit_table.c.filterName, ccd_visit_table.c.expMidptMJD]
    forced_cols = [c for c in forced.c if c.name != "runId"]
    cond = and_(forced.c.runId == run_id, key == validate_object_id(object_id))
    if filter_name is not None:
        cond = and_(cond, ccd_visit_table.c.filterName == validate_filter(filter_name))
    statement = (
        select(*forced_cols, *visit_cols)
        .select_from(
            forced.join(
                ccd_visit_table,
                and_(
                    ccd_visit_table.c.runId == forced.c.runId,
                    ccd_visit_table.c.ccdVisitId == forced.c.ccdVisitId,
                ),
            )
        )
        .where(cond)
        .order_by(ccd_visit_table.c.expMidptMJD, forced.c.ccdVisitId)
    )
    return _table(db, statement)


def cone_search(
    db: CatalogDatabase,
    run_name: str,
    ra: float,
    dec: float,
    radius_arcsec: float,
    dia: bool = False,
) -> Table:
    """Objects (or DIAObjects) within ``radius_arcsec`` of (``ra``, ``dec``) in degrees.

    The database narrows by a declination band and a right-ascension box (index on
    ``decl, ra``); the exact great-circle distance is applied here. A column ``distance``
    (arcsec) is added and rows come nearest first.
    """
    if not (np.isfinite(ra) and np.isfinite(dec) and -90.0 <= dec <= 90.0):
        raise ValueError(f"cone centre ({ra}, {dec}) is not a sky position in degrees")
    if not radius_arcsec > 0:
        raise ValueError(f"cone radius must be positive, got {radius_arcsec} arcsec")
    run_id = db.run_id(run_name)
    table = dia_object_table if dia else object_table
    radius = radius_arcsec / 3600.0
    cos_dec = max(np.cos(np.radians(min(abs(dec) + radius, 90.0))), 1e-6)
    half_ra = min(radius / cos_dec, 180.0)
    cond = and_(
        table.c.runId == run_id,
        table.c.decl.between(dec - radius, dec + radius),
    )
    if half_ra < 180.0:
        lo, hi = (ra - half_ra) % 360.0, (ra + half_ra) % 360.0
        box = table.c.ra.between(lo, hi) if lo <= hi else (table.c.ra >= lo) | (table.c.ra <= hi)
        cond = and_(cond, box)
    rows = _table(db, select(*[c for c in table.c if c.name != "runId"]).where(cond))
    chord = np.linalg.norm(unit_vectors(rows["ra"], rows["decl"]) - unit_vectors(ra, dec), axis=1)
    distance = np.degrees(2 * np.arcsin(np.clip(chord / 2, 0, 1))) * 3600.0
    rows["distance"] = distance
    rows = rows[distance <= radius_arcsec]
    rows.sort("distance")
    return rows


def visits(db: CatalogDatabase, run_name: str) -> Table:
    """The CcdVisit table of a run, in time order."""
    run_id = db.run_id(run_name)
    cols = [c for c in ccd_visit_table.c if c.name != "runId"]
    statement = (
        select(*cols)
        .where(ccd_visit_table.c.runId == run_id)
        .order_by(ccd_visit_table.c.expMidptMJD)
    )
    return _table(db, statement)


def row_counts(db: CatalogDatabase, run_name: str) -> dict[str, int]:
    """Rows of each catalog table that belong to ``run_name``."""
    run_id = db.run_id(run_name)
    with db.engine.connect() as conn:
        return {
            name: int(
                conn.execute(
                    select(func.count()).select_from(table).where(table.c.runId == run_id)
                ).scalar_one()
            )
            for name, table in CATALOG_TABLES.items()
        }
