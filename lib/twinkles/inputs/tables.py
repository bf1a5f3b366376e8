"""Reading a catalog a user brings: FITS or Parquet, columns renamed by a mapping, checked.

Every problem is an :class:`InputCatalogError` whose message names the file and the column,
so a catalog from another project (Gaia-like, DC2-like) can be fixed or mapped without
reading this code.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
from astropy.table import Table

from twinkles.bands import BANDS
from twinkles.errors import TwinklesError

__all__ = [
    "InputCatalogError",
    "check_finite",
    "check_magnitudes",
    "expand_column_map",
    "read_catalog",
    "rename_columns",
]

_FITS_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".fts")
_PARQUET_SUFFIXES = (".parquet", ".pq")


class InputCatalogError(TwinklesError):
    """A catalog brought to a run that cannot be used; the message names file and column."""


def read_catalog(path: str | Path, what: str) -> Table:
    """Read a FITS binary table (first table HDU) or a Parquet file.

    Parameters
    ----------
    path : str or Path
        The file; its suffix says its format (``.fits``, ``.fit``, ``.fits.gz`` or
        ``.parquet``).
    what : str
        What the catalog is, for messages ("reference catalog", "truth objects").

    Raises
    ------
    InputCatalogError
        Missing file, unknown suffix, or a file that does not read as a table.
    """
    path = Path(path)
    name = path.name.lower()
    if not path.exists():
        raise InputCatalogError(f"{what} {path}: no such file")
    if name.endswith(_PARQUET_SUFFIXES):
        fmt = "parquet"
    elif name.endswith(_FITS_SUFFIXES):
        fmt = "fits"
    else:
        raise InputCatalogError(
            f"{what} {path}: unknown format (the name must end in .fits, .fits.gz or .parquet)"
        )
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            arrow = pq.read_table(path)
            table = Table()
            for column in arrow.column_names:
                values = arrow.column(column).to_numpy(zero_copy_only=False)
                if values.dtype == object:
                    values = np.asarray(values.tolist(), dtype=str)
                table[column] = values
        else:
            table = Table.read(path, format="fits")
    except Exception as exc:  # any reader's error on a damaged or foreign file
        raise InputCatalogError(
            f"{what} {path}: not a readable {fmt} table ({type(exc).__name__}: {exc})"
        ) from None
    return table


def expand_column_map(columns: Mapping[str, str], bands: Iterable[str] = BANDS) -> dict[str, str]:
    """``canonical name -> column in the file``, with ``{band}`` expanded for every band.

    ``{"{band}_mag": "mag_{band}", "ra": "coord_ra"}`` maps ``g_mag`` to ``mag_g`` and so on.
    """
    out: dict[str, str] = {}
    for canonical, theirs in columns.items():
        if "{band}" in canonical:
            for band in bands:
                out[canonical.format(band=band)] = theirs.format(band=band)
        else:
            out[canonical] = theirs
    return out


def rename_columns(table: Table, columns: Mapping[str, str], path: Path, what: str) -> Table:
    """Rename the file's columns to canonical names (``columns``: canonical -> file column).

    A mapped column that is not in the file is an error naming both; mapped columns absent
    for bands the file does not have (a ``{band}`` template) are left to the caller's checks.
    """
    mapping = expand_column_map(columns)
    out = table.copy(copy_data=False)
    templated = {c.format(band=b) for c, t in columns.items() if "{band}" in c for b in BANDS}
    for canonical, theirs in mapping.items():
        if theirs not in table.colnames:
            if canonical in templated:
                continue
            raise InputCatalogError(
                f"{what} {path}: the column map names {theirs!r} for {canonical!r}, but the "
                f"file has no column {theirs!r} (it has {', '.join(table.colnames[:12])}"
                f"{', ...' if len(table.colnames) > 12 else ''})"
            )
        if canonical != theirs:
            if canonical in out.colnames and canonical not in mapping.values():
                out.remove_column(canonical)
            out.rename_column(theirs, canonical)
    return out


def check_finite(
    table: Table,
    column: str,
    path: Path,
    what: str,
    error: type[InputCatalogError] = InputCatalogError,
) -> np.ndarray:
    """The column as float, every value finite; else ``error`` counting the bad rows."""
    try:
        values = np.asarray(table[column], dtype=float)
    except (TypeError, ValueError):
        raise error(
            f"{what} {path}: column {column!r} is not numeric (dtype {table[column].dtype})"
        ) from None
    bad = ~np.isfinite(values)
    if bad.any():
        raise error(
            f"{what} {path}: column {column!r} has {int(bad.sum())} rows that are NaN or "
            f"infinite (first at row {int(np.flatnonzero(bad)[0])})"
        )
    return values


def check_magnitudes(
    values: np.ndarray,
    column: str,
    path: Path,
    what: str,
    error: type[InputCatalogError] = InputCatalogError,
) -> None:
    """Refuse a magnitude column that clearly holds fluxes (or is empty of magnitudes).

    AB magnitudes of astronomical sources lie between about -2 and 35; a column whose median
    is above 40 holds fluxes (nJy fluxes of 24-16 mag sources are 10^3-10^6).
    """
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return
    median = float(np.median(finite))
    if median > 40.0 or median < -5.0:
        raise error(
            f"{what} {path}: column {column!r} has a median of {median:.4g}: fluxes, not AB "
            f"magnitudes (convert them, m = 31.4 - 2.5 log10(flux / nJy))"
        )
