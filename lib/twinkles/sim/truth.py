"""The truth: every object of a run's sky and its true flux in any band at any time.

:class:`Truth` holds the truth tables of a run and answers the question every validation
asks: what was the true flux (nJy) of object ``id`` in band ``b`` at MJD ``t``? Ids of every
kind can be mixed in one call.

The tables come from the built-in simulator (:func:`twinkles.sim.sky.make_sky`) or from a
truth catalog brought with external images (:mod:`twinkles.inputs.truth`,
``docs/truth-format.md``). An object's flux is its model (a star's magnitudes and pulsation,
a galaxy's components, a supernova's SALT2 parameters, a lensed image's delayed quasar) or,
where the truth tabulates one, its light curve (``light_curves``: ``id, mjd, band, flux``
rows), interpolated linearly in time and held at its first and last values beyond them.
An object's kind is looked up from the table that holds it, so ids need only be unique.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from astropy.table import Table

from twinkles.sim.galaxies import galaxy_flux
from twinkles.sim.ids import ObjectKind
from twinkles.sim.lensing import lensed_image_flux
from twinkles.sim.stars import star_flux
from twinkles.sim.supernovae import supernova_flux

__all__ = ["LIGHT_CURVE_COLUMNS", "TRUTH_DATASETS", "Truth", "empty_light_curves"]

#: Truth tables and the dataset type each is stored as.
TRUTH_DATASETS = {
    "stars": "truthStars",
    "galaxies": "truthGalaxies",
    "supernovae": "truthSupernovae",
    "lensed_systems": "truthLensedSystems",
    "lensed_images": "truthLensedImages",
    "quasar_variability": "truthQuasarVariability",
    "light_curves": "truthLightCurves",
}

#: Columns of the tabulated light curves.
LIGHT_CURVE_COLUMNS = ("id", "mjd", "band", "flux")


def empty_light_curves() -> Table:
    """A light-curve table without rows."""
    return Table(
        [np.zeros(0, np.int64), np.zeros(0), np.zeros(0, "U1"), np.zeros(0)],
        names=LIGHT_CURVE_COLUMNS,
    )


@dataclass
class Truth:
    """The truth tables of a run.

    Attributes
    ----------
    stars, galaxies, supernovae, lensed_systems, lensed_images, quasar_variability : Table
        See :mod:`twinkles.sim.stars`, :mod:`~twinkles.sim.galaxies`,
        :mod:`~twinkles.sim.supernovae` and :mod:`~twinkles.sim.lensing`.
    light_curves : Table
        Tabulated light curves (``id``, ``mjd``, ``band``, ``flux`` in nJy) that replace the
        model of their objects in the bands they cover; empty for a simulated run.
    """

    stars: Table
    galaxies: Table
    supernovae: Table
    lensed_systems: Table
    lensed_images: Table
    quasar_variability: Table
    light_curves: Table = field(default_factory=empty_light_curves)

    def __setattr__(self, name: str, value: object) -> None:
        super().__setattr__(name, value)
        # a table replaced (tests swap in their own stars) invalidates the lookups made of it
        self.__dict__.pop("_kind_index", None)
        self.__dict__.pop("_curves", None)

    @staticmethod
    def exists(butler) -> bool:
        """Whether a run's repository holds a truth (an external run may come without one)."""
        return butler.exists(TRUTH_DATASETS["stars"])

    @classmethod
    def read(cls, butler) -> Truth:
        """Load the truth tables of a run's repository."""
        tables = {
            attr: butler.get(ds)
            for attr, ds in TRUTH_DATASETS.items()
            if attr != "light_curves" or butler.exists(ds)
        }
        return cls(**tables)

    def write(self, butler) -> None:
        """Store the truth tables in a run's repository."""
        for attr, ds in TRUTH_DATASETS.items():
            butler.put(getattr(self, attr), ds)

    # -- lookups -----------------------------------------------------------------------------

    @cached_property
    def _kind_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted ids, their kinds) over every table: an id's kind is where it is held."""
        ids, kinds = [], []
        for kind in ObjectKind:
            table_ids = np.asarray(self._table(kind)["id"], dtype=np.int64)
            ids.append(table_ids)
            kinds.append(np.full(len(table_ids), int(kind)))
        ids_all, kinds_all = np.concatenate(ids), np.concatenate(kinds)
        order = np.argsort(ids_all, kind="stable")
        return ids_all[order], kinds_all[order]

    def kinds(self, ids: np.ndarray | int) -> np.ndarray:
        """The :class:`ObjectKind` value of each id; ``KeyError`` for an id the truth lacks."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        known, kinds = self._kind_index
        pos = np.clip(np.searchsorted(known, ids), 0, max(len(known) - 1, 0))
        if len(known) == 0 or np.any(known[pos] != ids):
            missing = ids if len(known) == 0 else ids[known[pos] != ids]
            raise KeyError(f"no object with id {missing[:5].tolist()} in the truth")
        return kinds[pos]

    @cached_property
    def _curves(self) -> dict[tuple[int, str], tuple[np.ndarray, np.ndarray]]:
        """(id, band) -> (mjd, flux) of each tabulated light curve, sorted in time."""
        curves = self.light_curves
        if len(curves) == 0:
            return {}
        ids = np.asarray(curves["id"], dtype=np.int64)
        bands = np.asarray(curves["band"]).astype(str)
        mjd = np.asarray(curves["mjd"], dtype=float)
        flux = np.asarray(curves["flux"], dtype=float)
        order = np.lexsort((mjd, bands, ids))
        ids, bands, mjd, flux = ids[order], bands[order], mjd[order], flux[order]
        keys = np.char.add(ids.astype(str), np.char.add(":", bands))
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
        ends = np.r_[starts[1:], len(keys)]
        return {
            (int(ids[a]), str(bands[a])): (mjd[a:b], flux[a:b])
            for a, b in zip(starts, ends, strict=True)
        }

    def has_light_curve(self, ids: np.ndarray | int, band: str) -> np.ndarray:
        """Whether each id has a tabulated light curve in ``band``."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        if not self._curves:
            return np.zeros(ids.shape, dtype=bool)
        return np.array([(int(i), band) in self._curves for i in ids], dtype=bool)

    def _table(self, kind: ObjectKind) -> Table:
        return {
            ObjectKind.STAR: self.stars,
            ObjectKind.GALAXY: self.galaxies,
            ObjectKind.SUPERNOVA: self.supernovae,
            ObjectKind.LENSED_IMAGE: self.lensed_images,
            ObjectKind.LENS_SYSTEM: self.lensed_systems,
        }[kind]

    def _rows(self, kind: ObjectKind, ids: np.ndarray) -> np.ndarray:
        table_ids = np.asarray(self._table(kind)["id"])
        order = np.argsort(table_ids)
        pos = np.searchsorted(table_ids, ids, sorter=order)
        pos = np.clip(pos, 0, len(table_ids) - 1)
        rows = order[pos] if len(table_ids) else pos
        if len(table_ids) == 0 or np.any(table_ids[rows] != ids):
            missing = ids if len(table_ids) == 0 else ids[table_ids[rows] != ids]
            raise KeyError(f"no {kind.name.lower()} with id {missing[:5].tolist()} in the truth")
        return rows

    def flux(self, ids: np.ndarray | int, band: str, mjd: np.ndarray | float) -> np.ndarray:
        """True flux (nJy) of objects ``ids`` in ``band`` at ``mjd``.

        Parameters
        ----------
        ids : int or array of int
            Truth ids of any kind (a lens-system id gives the sum of its images).
        band : str
            Filter name.
        mjd : float or array
            Time(s); an array must have the length of ``ids``.
        """
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        mjd = np.broadcast_to(np.asarray(mjd, dtype=float), ids.shape)
        out = np.zeros(ids.shape)
        kinds = self.kinds(ids)
        tabulated = self.has_light_curve(ids, band)
        for k in np.flatnonzero(tabulated):
            times, values = self._curves[(int(ids[k]), band)]
            out[k] = np.interp(mjd[k], times, values)
        for kind_value in np.unique(kinds[~tabulated]):
            kind = ObjectKind(int(kind_value))
            sel = (kinds == kind_value) & ~tabulated
            if kind is ObjectKind.LENS_SYSTEM:
                sys_rows = self._rows(kind, ids[sel])
                img_sys = np.asarray(self.lensed_images["system_id"])
                total = np.zeros(sel.sum())
                for k, sid in enumerate(np.asarray(self.lensed_systems["id"])[sys_rows]):
                    imgs = np.asarray(self.lensed_images["id"])[img_sys == sid]
                    total[k] = self.flux(imgs, band, mjd[sel][k]).sum()
                out[sel] = total
                continue
            rows = self._rows(kind, ids[sel])
            table = self._table(kind)[rows]
            if kind is ObjectKind.STAR:
                out[sel] = star_flux(table, band, mjd[sel])
            elif kind is ObjectKind.GALAXY:
                out[sel] = galaxy_flux(table, band)
            elif kind is ObjectKind.SUPERNOVA:
                out[sel] = supernova_flux(table, band, mjd[sel])
            elif kind is ObjectKind.LENSED_IMAGE:
                out[sel] = lensed_image_flux(
                    table, self.lensed_systems, self.quasar_variability, band, mjd[sel]
                )
        return out

    def positions(self, ids: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """True (ra, dec) in deg of objects ``ids``."""
        ids = np.atleast_1d(np.asarray(ids, dtype=np.int64))
        ra, dec = np.empty(ids.shape), np.empty(ids.shape)
        kinds = self.kinds(ids)
        for kind_value in np.unique(kinds):
            kind = ObjectKind(int(kind_value))
            sel = kinds == kind_value
            table = self._table(kind)[self._rows(kind, ids[sel])]
            ra[sel], dec[sel] = np.asarray(table["ra"]), np.asarray(table["dec"])
        return ra, dec

    def object_positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(ra, dec) in deg of every star, galaxy, supernova and lensed-quasar image."""
        tables = (self.stars, self.galaxies, self.supernovae, self.lensed_images)
        return (
            np.concatenate([np.asarray(t["ra"], dtype=float) for t in tables]),
            np.concatenate([np.asarray(t["dec"], dtype=float) for t in tables]),
        )

    def point_sources(self, band: str, mjd: float) -> Table:
        """Every point source (stars, supernovae, lensed images) with its flux at ``mjd``."""
        parts = (self.stars, self.supernovae, self.lensed_images)
        out = Table()
        out["id"] = np.concatenate([np.asarray(t["id"], dtype=np.int64) for t in parts])
        out["ra"] = np.concatenate([np.asarray(t["ra"], dtype=float) for t in parts])
        out["dec"] = np.concatenate([np.asarray(t["dec"], dtype=float) for t in parts])
        out["flux"] = self.flux(np.asarray(out["id"]), band, mjd)
        out["flux"].unit = "nJy"
        return out

    def variable_ids(self) -> np.ndarray:
        """Ids of every object whose flux changes with time."""
        return np.concatenate(
            [
                np.asarray(self.stars["id"])[np.asarray(self.stars["is_variable"])],
                np.asarray(self.supernovae["id"]),
                np.asarray(self.lensed_images["id"]),
            ]
        ).astype(np.int64)
