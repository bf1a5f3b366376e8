"""Matching measured sources to the simulation's truth.

For a processed visit: every true point source (star, supernova, lensed-quasar image) that the
true WCS puts on the sensor, with its true flux at the visit's epoch, its expected
signal-to-noise (``F / sqrt(F + sigma_sky^2 n_eff)`` in electrons, with the visit's measured
sky noise and the true PSF's effective area) and whether it is isolated (no other true
object, galaxies included, within ``isolation_arcsec``); and the one-to-one match of those to
the ``src`` catalog.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from twinkles.calibration.matching import match_nearest
from twinkles.geometry import sky_to_tangent
from twinkles.sim.ids import ObjectKind, kind_of
from twinkles.sim.truth import Truth
from twinkles.sim.wcs import wcs_from_header_dict
from twinkles.units import NEFF_PER_FWHM2

__all__ = ["ISOLATION_ARCSEC", "isolated", "match_to_truth", "truth_point_sources"]

#: A true source with another true object (galaxies too) this close is not isolated (arcsec):
#: its measured flux holds the neighbour's light, which its own true flux does not.
ISOLATION_ARCSEC = 2.0


def isolated(
    ra: np.ndarray,
    dec: np.ndarray,
    all_ra: np.ndarray,
    all_dec: np.ndarray,
    radius_arcsec: float = ISOLATION_ARCSEC,
) -> np.ndarray:
    """Whether each position (deg) has no other of ``all_ra, all_dec`` within
    ``radius_arcsec``; each position is itself among those (so one match is its own)."""
    from scipy.spatial import cKDTree

    ra, dec = np.asarray(ra, dtype=float), np.asarray(dec, dtype=float)
    if not len(ra):
        return np.zeros(0, dtype=bool)
    ra0, dec0 = float(np.median(ra)), float(np.median(dec))
    ax, ay = sky_to_tangent(
        np.asarray(all_ra, dtype=float), np.asarray(all_dec, dtype=float), ra0, dec0
    )
    px, py = sky_to_tangent(ra, dec, ra0, dec0)
    counts = cKDTree(np.column_stack([ax, ay]) * 3600).query_ball_point(
        np.column_stack([px, py]) * 3600, radius_arcsec, return_length=True
    )
    return np.asarray(counts) == 1


def truth_point_sources(
    truth: Truth,
    eimage_truth: dict,
    sky_noise: float,
    shape: tuple[int, int],
    pixel_scale: float,
    isolation_arcsec: float = ISOLATION_ARCSEC,
    edge: float = 15.0,
) -> Table:
    """True point sources on the sensor of one visit (at least ``edge`` pixels inside)."""
    band, mjd = eimage_truth["filter"], eimage_truth["mjd"]
    points = truth.point_sources(band, mjd)
    wcs = wcs_from_header_dict(eimage_truth["true_wcs"])
    x, y = wcs.all_world2pix(np.asarray(points["ra"]), np.asarray(points["dec"]), 0)
    h, w = shape
    on = (x > edge) & (x < w - 1 - edge) & (y > edge) & (y < h - 1 - edge)
    # isolation from every true object (galaxies too)
    all_ra = np.concatenate([np.asarray(points["ra"]), np.asarray(truth.galaxies["ra"])])
    all_dec = np.concatenate([np.asarray(points["dec"]), np.asarray(truth.galaxies["dec"])])
    alone = isolated(points["ra"], points["dec"], all_ra, all_dec, isolation_arcsec)
    electrons = np.asarray(points["flux"]) * eimage_truth["electrons_per_njy"]
    neff = NEFF_PER_FWHM2 * (eimage_truth["fwhm_eff"] / pixel_scale) ** 2
    with np.errstate(invalid="ignore"):
        snr = electrons / np.sqrt(np.maximum(electrons, 0) + sky_noise**2 * neff)
    out = points[on]
    out["x"], out["y"] = x[on], y[on]
    out["kind"] = kind_of(out["id"])
    out["electrons"] = electrons[on]
    out["snr"] = snr[on]
    out["isolated"] = alone[on]
    out["is_star"] = out["kind"] == ObjectKind.STAR
    return out


def match_to_truth(
    src: Table, truth: Table, radius_arcsec: float = 0.5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matches (src index, truth index, separation in arcsec)."""
    ra0, dec0 = float(np.median(truth["ra"])), float(np.median(truth["dec"]))
    sx, sy = sky_to_tangent(np.asarray(src["coord_ra"]), np.asarray(src["coord_dec"]), ra0, dec0)
    tx, ty = sky_to_tangent(np.asarray(truth["ra"]), np.asarray(truth["dec"]), ra0, dec0)
    return match_nearest(sx * 3600, sy * 3600, tx * 3600, ty * 3600, radius_arcsec)
