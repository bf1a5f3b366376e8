"""The reference catalog format (``docs/refcat-format.md``): what calibration matches against.

Astrometric calibration matches a visit's sources to the catalog's unresolved objects;
photometric calibration takes the zero point from its unresolved, non-variable stars with
small enough magnitude errors. A catalog is a FITS or Parquet table with:

* required: ``id`` (integer, unique), ``ra`` and ``dec`` (degrees, ICRS), and for every band
  the run observes ``<band>_mag`` and ``<band>_magErr`` (AB magnitudes);
* optional, with the value used when absent: ``resolved`` (False: a galaxy must be flagged
  or calibration takes it for a star), ``variable`` (False), ``coord_err`` (NaN, mas per
  coordinate).

Columns named otherwise are mapped by the run configuration's ``inputs.refcat_columns``
(``canonical: theirs``, ``{band}`` expanded). :func:`load_reference_catalog` checks a file and
returns the catalog in the canonical form the pipeline reads; :func:`check_reference_catalog`
checks an in-memory catalog (the simulator's passes it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from astropy.table import Table

from twinkles.inputs.tables import (
    InputCatalogError,
    check_finite,
    check_magnitudes,
    read_catalog,
    rename_columns,
)

__all__ = [
    "OPTIONAL_COLUMNS",
    "REQUIRED_COLUMNS",
    "ReferenceCatalogError",
    "check_reference_catalog",
    "load_reference_catalog",
]

WHAT = "reference catalog"

#: Columns every reference catalog has; plus ``<band>_mag`` and ``<band>_magErr`` per band.
REQUIRED_COLUMNS = ("id", "ra", "dec")
#: Optional columns and the value each takes when the catalog has none.
OPTIONAL_COLUMNS = {"resolved": False, "variable": False, "coord_err": np.nan}


class ReferenceCatalogError(InputCatalogError):
    """A reference catalog that calibration cannot use."""


def _band_columns(bands: Iterable[str]) -> list[str]:
    return [c for b in bands for c in (f"{b}_mag", f"{b}_magErr")]


def check_reference_catalog(
    table: Table, bands: Iterable[str], source: str | Path = "reference catalog"
) -> None:
    """Raise :class:`ReferenceCatalogError` if ``table`` lacks what calibration reads.

    Parameters
    ----------
    table : Table
        A catalog in the canonical form.
    bands : iterable of str
        The bands the run calibrates.
    source : str or Path
        What to call it in messages (its file).
    """
    bands = list(bands)
    missing = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c not in table.colnames]
    if missing:
        raise ReferenceCatalogError(
            f"{WHAT} {source}: no column {', '.join(repr(c) for c in missing)}"
        )
    missing_bands = [b for b in bands if f"{b}_mag" not in table.colnames]
    if missing_bands:
        raise ReferenceCatalogError(
            f"{WHAT} {source}: no magnitudes in band {', '.join(missing_bands)} (columns "
            f"{', '.join(f'{b}_mag' for b in missing_bands)}), which the run observes"
        )
    no_err = [f"{b}_magErr" for b in bands if f"{b}_magErr" not in table.colnames]
    if no_err:
        raise ReferenceCatalogError(f"{WHAT} {source}: no column {', '.join(no_err)}")


def load_reference_catalog(
    path: str | Path, bands: Iterable[str], columns: Mapping[str, str] | None = None
) -> Table:
    """Read, map and check a reference catalog; the canonical table calibration reads.

    Parameters
    ----------
    path : str or Path
        FITS or Parquet file.
    bands : iterable of str
        The bands the run observes: each needs ``<band>_mag`` and ``<band>_magErr``.
    columns : mapping, optional
        ``canonical -> column in the file`` (``{band}`` placeholders allowed).

    Returns
    -------
    Table
        ``id``, ``ra``, ``dec`` (deg), ``coord_err`` (mas), ``<band>_mag`` and
        ``<band>_magErr`` for the run's bands, ``resolved``, ``variable``.

    Raises
    ------
    ReferenceCatalogError
        Naming the file and the column: unreadable file, a missing required column or band,
        an empty catalog, positions that are not finite degrees, duplicate ids, magnitudes
        that are clearly fluxes, negative magnitude errors.
    """
    path = Path(path)
    bands = list(bands)
    try:
        table = rename_columns(read_catalog(path, WHAT), columns or {}, path, WHAT)
    except InputCatalogError as exc:
        raise ReferenceCatalogError(str(exc)) from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.colnames]
    if missing:
        raise ReferenceCatalogError(
            f"{WHAT} {path}: no column {', '.join(repr(c) for c in missing)} (a reference "
            f"catalog needs id, ra, dec and <band>_mag, <band>_magErr; map other names with "
            f"inputs.refcat_columns, docs/refcat-format.md)"
        )
    for band in bands:
        for column in (f"{band}_mag", f"{band}_magErr"):
            if column not in table.colnames:
                raise ReferenceCatalogError(
                    f"{WHAT} {path}: no column {column!r}: the run observes band {band}, and "
                    f"calibrating it needs {band}_mag and {band}_magErr"
                )
    if len(table) == 0:
        raise ReferenceCatalogError(f"{WHAT} {path}: the catalog is empty")
    try:
        ids = np.asarray(table["id"]).astype(np.int64, casting="safe")
    except TypeError:
        raise ReferenceCatalogError(
            f"{WHAT} {path}: column 'id' must hold integers (dtype {table['id'].dtype})"
        ) from None
    unique, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        raise ReferenceCatalogError(
            f"{WHAT} {path}: column 'id' repeats {unique[counts > 1][:5].tolist()}"
        )
    ra = _degrees(table, "ra", path)
    dec = _degrees(table, "dec", path)
    if np.any((ra < 0) | (ra >= 360)) or np.any(np.abs(dec) > 90):
        raise ReferenceCatalogError(
            f"{WHAT} {path}: columns 'ra', 'dec' must be degrees (0 <= ra < 360, |dec| <= 90); "
            f"found ra {ra.min():.4g}..{ra.max():.4g}, dec {dec.min():.4g}..{dec.max():.4g}"
        )
    out = Table()
    out["id"] = ids
    out["ra"] = ra
    out["dec"] = dec
    coord_err = table["coord_err"] if "coord_err" in table.colnames else None
    out["coord_err"] = (
        np.full(len(table), np.nan) if coord_err is None else np.asarray(coord_err, float)
    )
    for band in bands:
        mag = np.asarray(table[f"{band}_mag"], dtype=float)
        err = np.asarray(table[f"{band}_magErr"], dtype=float)
        check_magnitudes(mag, f"{band}_mag", path, WHAT, ReferenceCatalogError)
        if np.any(err < 0):
            raise ReferenceCatalogError(
                f"{WHAT} {path}: column '{band}_magErr' has {int(np.sum(err < 0))} negative errors"
            )
        out[f"{band}_mag"] = mag
        out[f"{band}_magErr"] = err
    for column in ("resolved", "variable"):
        if column in table.colnames:
            out[column] = _flags(table, column, path)
        else:
            out[column] = np.full(len(table), OPTIONAL_COLUMNS[column])
    out["ra"].unit = out["dec"].unit = "deg"
    out["coord_err"].unit = "mas"
    out.meta["source"] = str(path)
    return out


def _degrees(table: Table, column: str, path: Path) -> np.ndarray:
    values = check_finite(table, column, path, WHAT, ReferenceCatalogError)
    unit = getattr(table[column], "unit", None)
    if unit is not None and str(unit) not in ("", "deg"):
        try:
            values = (values * unit).to_value("deg")
        except Exception:
            raise ReferenceCatalogError(
                f"{WHAT} {path}: column {column!r} is in {unit}, not an angle"
            ) from None
    return values


def _flags(table: Table, column: str, path: Path) -> np.ndarray:
    values = np.asarray(table[column])
    if values.dtype.kind == "b":
        return values
    if values.dtype.kind in "iu" and set(np.unique(values).tolist()) <= {0, 1}:
        return values.astype(bool)
    raise ReferenceCatalogError(
        f"{WHAT} {path}: column {column!r} must be boolean (or 0/1), not {values.dtype}"
    )
