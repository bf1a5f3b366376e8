"""A truth catalog brought with external images (``docs/truth-format.md``).

Two tables, FITS or Parquet:

* **objects**: one row per object: ``id`` (integer, unique), ``ra``, ``dec`` (degrees, ICRS),
  ``kind`` (``star``, ``galaxy``, ``variable_star`` or ``supernova``; a supernova stands for
  any transient), ``<band>_mag`` (AB; the mean magnitude of a star, galaxy or variable star,
  for every band the run observes), and optionally ``host_id`` (the galaxy a supernova sits
  in) and ``redshift``;
* **light curves** (needed when the objects include variable stars or supernovae): rows of
  ``id``, ``mjd``, ``band``, ``flux`` (nJy), at least the epochs of the visits; the true flux
  between rows is interpolated linearly and held at the first and last rows beyond them.

:func:`load_external_truth` checks both against the run's bands and returns a
:class:`~twinkles.sim.truth.Truth` that every validation recipe scores against, with the
problems it flagged but could go on with (light-curve rows whose id is in no object, rows of
static objects): those rows are left out and named.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.table import Table

from twinkles.bands import BANDS
from twinkles.inputs.tables import (
    InputCatalogError,
    check_finite,
    check_magnitudes,
    read_catalog,
    rename_columns,
)
from twinkles.sim.truth import LIGHT_CURVE_COLUMNS, Truth

__all__ = ["KINDS", "ExternalTruth", "TruthCatalogError", "load_external_truth"]

#: The kinds of object a truth catalog may hold.
KINDS = ("star", "galaxy", "variable_star", "supernova")
_VARIABLE = ("variable_star", "supernova")


class TruthCatalogError(InputCatalogError):
    """A truth catalog that cannot be scored against; the message names file and column."""


@dataclass
class ExternalTruth:
    """A loaded truth catalog and what was left out of it (each problem in a sentence)."""

    truth: Truth
    flagged: list[str] = field(default_factory=list)


def _require(table: Table, columns: Iterable[str], path: Path, what: str) -> None:
    missing = [c for c in columns if c not in table.colnames]
    if missing:
        raise TruthCatalogError(
            f"{what} {path}: no column {', '.join(repr(c) for c in missing)} "
            f"(docs/truth-format.md; map other names with inputs.truth_columns)"
        )


def _ids(table: Table, path: Path, what: str) -> np.ndarray:
    try:
        return np.asarray(table["id"]).astype(np.int64, casting="safe")
    except TypeError:
        raise TruthCatalogError(
            f"{what} {path}: column 'id' must hold integers (dtype {table['id'].dtype})"
        ) from None


def load_external_truth(
    objects_path: str | Path,
    light_curves_path: str | Path | None,
    bands: Iterable[str],
    columns: Mapping[str, str] | None = None,
) -> ExternalTruth:
    """Read and check a truth catalog; the run's :class:`Truth`.

    Parameters
    ----------
    objects_path : str or Path
        The objects table.
    light_curves_path : str or Path, optional
        The light-curve table; required when the objects include variable stars or
        supernovae.
    bands : iterable of str
        The bands the run observes.
    columns : mapping, optional
        ``canonical -> column in the file`` for the objects table (``{band}`` expanded).

    Raises
    ------
    TruthCatalogError
        Naming the file and the column: unreadable file, missing column or band, empty or
        repeated ids, unknown kinds, positions that are not finite, magnitudes that are
        fluxes, a variable object without a light curve in a band the run observes.
    """
    objects_path = Path(objects_path)
    bands = list(bands)
    what = "truth objects"
    try:
        objects = rename_columns(
            read_catalog(objects_path, what), columns or {}, objects_path, what
        )
    except InputCatalogError as exc:
        raise TruthCatalogError(str(exc)) from None
    _require(objects, ("id", "ra", "dec", "kind"), objects_path, what)
    if len(objects) == 0:
        raise TruthCatalogError(f"{what} {objects_path}: the catalog is empty")
    ids = _ids(objects, objects_path, what)
    unique, counts = np.unique(ids, return_counts=True)
    if np.any(counts > 1):
        raise TruthCatalogError(
            f"{what} {objects_path}: column 'id' repeats {unique[counts > 1][:5].tolist()}"
        )
    kinds = np.char.strip(np.asarray(objects["kind"]).astype(str))
    unknown = sorted(set(kinds.tolist()) - set(KINDS))
    if unknown:
        raise TruthCatalogError(
            f"{what} {objects_path}: column 'kind' has {unknown}; allowed: {', '.join(KINDS)}"
        )
    ra = check_finite(objects, "ra", objects_path, what, TruthCatalogError)
    dec = check_finite(objects, "dec", objects_path, what, TruthCatalogError)
    static = np.isin(kinds, ("star", "galaxy", "variable_star"))
    mags: dict[str, np.ndarray] = {}
    for band in BANDS:
        column = f"{band}_mag"
        if column not in objects.colnames:
            if band in bands and static.any():
                raise TruthCatalogError(
                    f"{what} {objects_path}: no column {column!r}: the run observes band "
                    f"{band}, and the stars and galaxies need their magnitude in it"
                )
            mags[band] = np.full(len(objects), np.nan)
            continue
        values = np.asarray(objects[column], dtype=float)
        check_magnitudes(values, column, objects_path, what, TruthCatalogError)
        if band in bands and not np.all(np.isfinite(values[static])):
            bad = np.asarray(ids)[static & ~np.isfinite(values)]
            raise TruthCatalogError(
                f"{what} {objects_path}: column {column!r} is not finite for "
                f"{len(bad)} stars or galaxies (ids {bad[:5].tolist()})"
            )
        mags[band] = values
    host = (
        np.asarray(objects["host_id"], dtype=np.int64)
        if "host_id" in objects.colnames
        else np.full(len(objects), -1, dtype=np.int64)
    )
    redshift = (
        np.asarray(objects["redshift"], dtype=float)
        if "redshift" in objects.colnames
        else np.full(len(objects), np.nan)
    )

    flagged: list[str] = []
    variable = np.isin(kinds, _VARIABLE)
    curves = Table(
        [np.zeros(0, np.int64), np.zeros(0), np.zeros(0, "U1"), np.zeros(0)],
        names=LIGHT_CURVE_COLUMNS,
    )
    if light_curves_path is not None:
        curves, flagged = _light_curves(Path(light_curves_path), ids, kinds, bands)
    elif variable.any():
        raise TruthCatalogError(
            f"{what} {objects_path}: {int(variable.sum())} variable objects (variable_star, "
            f"supernova) but no light curves (inputs.truth_light_curves)"
        )
    if variable.any():
        have = {(int(i), str(b)) for i, b in zip(curves["id"], curves["band"], strict=True)}
        lacking = [
            f"{i} ({b})"
            for i in np.asarray(ids)[variable].tolist()
            for b in bands
            if (i, b) not in have
        ]
        if lacking:
            raise TruthCatalogError(
                f"truth light curves {light_curves_path}: no rows for {len(lacking)} variable "
                f"object(s) and band(s) the run observes: {', '.join(lacking[:8])}"
                f"{', ...' if len(lacking) > 8 else ''}"
            )
    truth = _truth_tables(ids, ra, dec, kinds, mags, host, redshift, curves)
    return ExternalTruth(truth, flagged)


def _light_curves(
    path: Path, ids: np.ndarray, kinds: np.ndarray, bands: list[str]
) -> tuple[Table, list[str]]:
    what = "truth light curves"
    try:
        table = read_catalog(path, what)
    except InputCatalogError as exc:
        raise TruthCatalogError(str(exc)) from None
    _require(table, LIGHT_CURVE_COLUMNS, path, what)
    curve_ids = _ids(table, path, what)
    mjd = check_finite(table, "mjd", path, what, TruthCatalogError)
    flux = check_finite(table, "flux", path, what, TruthCatalogError)
    band = np.char.strip(np.asarray(table["band"]).astype(str))
    wrong_band = sorted(set(band.tolist()) - set(BANDS))
    if wrong_band:
        raise TruthCatalogError(
            f"{what} {path}: column 'band' has {wrong_band}; allowed: {', '.join(BANDS)}"
        )
    flagged = []
    kind_of = dict(zip(ids.tolist(), kinds.tolist(), strict=True))
    orphans = sorted({int(i) for i in curve_ids.tolist() if int(i) not in kind_of})
    if orphans:
        flagged.append(
            f"{what} {path}: rows of {len(orphans)} id(s) that are no object of the truth "
            f"left out: {orphans[:10]}{' ...' if len(orphans) > 10 else ''}"
        )
    static = sorted(
        {int(i) for i in curve_ids.tolist() if kind_of.get(int(i)) in ("star", "galaxy")}
    )
    if static:
        flagged.append(
            f"{what} {path}: rows of {len(static)} static object(s) (kind star or galaxy) "
            f"left out: {static[:10]}{' ...' if len(static) > 10 else ''}; give them kind "
            f"variable_star to use their light curves"
        )
    keep = np.array([kind_of.get(int(i)) in _VARIABLE for i in curve_ids.tolist()], dtype=bool)
    out = Table(
        [curve_ids[keep], mjd[keep], band[keep].astype("U1"), flux[keep]],
        names=LIGHT_CURVE_COLUMNS,
    )
    out["mjd"].unit = "d"
    out["flux"].unit = "nJy"
    return out, flagged


def _truth_tables(
    ids: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    kinds: np.ndarray,
    mags: dict[str, np.ndarray],
    host: np.ndarray,
    redshift: np.ndarray,
    curves: Table,
) -> Truth:
    """The truth tables of the simulator's layout, holding the catalog's objects."""

    def base(sel: np.ndarray) -> Table:
        t = Table()
        t["id"] = ids[sel]
        t["ra"] = ra[sel]
        t["dec"] = dec[sel]
        t["ra"].unit = t["dec"].unit = "deg"
        return t

    is_star = np.isin(kinds, ("star", "variable_star"))
    stars = base(is_star)
    for band in BANDS:
        stars[f"mag_{band}"] = mags[band][is_star]
    stars["is_variable"] = kinds[is_star] == "variable_star"
    # no pulsation model: a variable star's flux is its light curve
    for column in ("var_amplitude", "var_period", "var_epoch", "var_phase"):
        stars[column] = np.zeros(int(is_star.sum()))

    is_galaxy = kinds == "galaxy"
    galaxies = base(is_galaxy)
    galaxies["redshift"] = redshift[is_galaxy]
    for band in BANDS:
        # one component: the catalog's magnitude is the galaxy's total
        galaxies[f"bulge_mag_{band}"] = np.full(int(is_galaxy.sum()), np.inf)
        galaxies[f"disk_mag_{band}"] = mags[band][is_galaxy]
    galaxies["is_lens"] = np.zeros(int(is_galaxy.sum()), dtype=bool)

    is_sn = kinds == "supernova"
    supernovae = base(is_sn)
    supernovae["host_id"] = host[is_sn]
    supernovae["redshift"] = redshift[is_sn]

    lensed_systems = Table(
        [np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0)],
        names=("id", "ra", "dec", "z_source"),
    )
    lensed_images = Table(
        [np.zeros(0, np.int64), np.zeros(0, np.int64)] + [np.zeros(0) for _ in range(6)],
        names=(
            "id",
            "system_id",
            "ra",
            "dec",
            "dx_arcsec",
            "dy_arcsec",
            "magnification",
            "time_delay",
        ),
    )
    quasar_variability = Table(
        [np.zeros(0, np.int64), np.zeros(0), np.zeros(0)], names=("system_id", "mjd", "dmag_i")
    )
    return Truth(
        stars=stars,
        galaxies=galaxies,
        supernovae=supernovae,
        lensed_systems=lensed_systems,
        lensed_images=lensed_images,
        quasar_variability=quasar_variability,
        light_curves=curves,
    )
