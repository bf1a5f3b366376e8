"""The truth: every simulated object and its true flux in any band at any time.

:class:`Truth` holds the truth tables of a run (written by :func:`twinkles.sim.sky.make_sky`)
and answers the question every validation asks: what was the true flux (nJy) of object ``id``
in band ``b`` at MJD ``t``? Ids of every kind can be mixed in one call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table

from twinkles.sim.galaxies import galaxy_flux
from twinkles.sim.ids import ObjectKind, kind_of
from twinkles.sim.lensing import lensed_image_flux
from twinkles.sim.stars import star_flux
from twinkles.sim.supernovae import supernova_flux

__all__ = ["TRUTH_DATASETS", "Truth"]

#: Truth tables and the dataset type each is stored as.
TRUTH_DATASETS = {
    "stars": "truthStars",
    "galaxies": "truthGalaxies",
    "supernovae": "truthSupernovae",
    "lensed_systems": "truthLensedSystems",
    "lensed_images": "truthLensedImages",
    "quasar_variability": "truthQuasarVariability",
}


@dataclass
class Truth:
    """The truth tables of a run.

    Attributes
    ----------
    stars, galaxies, supernovae, lensed_systems, lensed_images, quasar_variability : Table
        See :mod:`twinkles.sim.stars`, :mod:`~twinkles.sim.galaxies`,
        :mod:`~twinkles.sim.supernovae` and :mod:`~twinkles.sim.lensing`.
    """

    stars: Table
    galaxies: Table
    supernovae: Table
    lensed_systems: Table
    lensed_images: Table
    quasar_variability: Table

    @classmethod
    def read(cls, butler) -> Truth:
        """Load the truth tables of a run's repository."""
        return cls(**{attr: butler.get(ds) for attr, ds in TRUTH_DATASETS.items()})

    def write(self, butler) -> None:
        """Store the truth tables in a run's repository."""
        for attr, ds in TRUTH_DATASETS.items():
            butler.put(getattr(self, attr), ds)

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
        kinds = kind_of(ids)
        for kind_value in np.unique(kinds):
            kind = ObjectKind(int(kind_value))
            sel = kinds == kind_value
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
        kinds = kind_of(ids)
        for kind_value in np.unique(kinds):
            kind = ObjectKind(int(kind_value))
            sel = kinds == kind_value
            table = self._table(kind)[self._rows(kind, ids[sel])]
            ra[sel], dec[sel] = np.asarray(table["ra"]), np.asarray(table["dec"])
        return ra, dec

    def point_sources(self, band: str, mjd: float) -> Table:
        """Every point source (stars, supernovae, lensed images) with its flux at ``mjd``."""
        parts = [
            (self.stars, star_flux(self.stars, band, mjd)),
            (self.supernovae, supernova_flux(self.supernovae, band, mjd)),
            (
                self.lensed_images,
                lensed_image_flux(
                    self.lensed_images, self.lensed_systems, self.quasar_variability, band, mjd
                ),
            ),
        ]
        out = Table()
        out["id"] = np.concatenate([np.asarray(t["id"], dtype=np.int64) for t, _ in parts])
        out["ra"] = np.concatenate([np.asarray(t["ra"], dtype=float) for t, _ in parts])
        out["dec"] = np.concatenate([np.asarray(t["dec"], dtype=float) for t, _ in parts])
        out["flux"] = np.concatenate([np.asarray(f, dtype=float) for _, f in parts])
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
