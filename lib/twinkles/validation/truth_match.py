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

__all__ = ["match_to_truth", "truth_point_sources"]


def truth_point_sources(
    truth: Truth,
    eimage_truth: dict,
    sky_noise: float,
    shape: tuple[int, int],
    pixel_scale: float,
    isolation_arcsec: float = 2.0,
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
    ra0, dec0 = float(np.median(points["ra"])), float(np.median(points["dec"]))
    all_ra = np.concatenate([np.asarray(points["ra"]), np.asarray(truth.galaxies["ra"])])
    all_dec = np.concatenate([np.asarray(points["dec"]), np.asarray(truth.galaxies["dec"])])
    ax, ay = sky_to_tangent(all_ra, all_dec, ra0, dec0)
    px, py = sky_to_tangent(np.asarray(points["ra"]), np.asarray(points["dec"]), ra0, dec0)
    from scipy.spatial import cKDTree

    counts = cKDTree(np.column_stack([ax, ay]) * 3600).query_ball_point(
        np.column_stack([px, py]) * 3600, isolation_arcsec, return_length=True
    )
    electrons = np.asarray(points["flux"]) * eimage_truth["electrons_per_njy"]
    neff = NEFF_PER_FWHM2 * (eimage_truth["fwhm_eff"] / pixel_scale) ** 2
    with np.errstate(invalid="ignore"):
        snr = electrons / np.sqrt(np.maximum(electrons, 0) + sky_noise**2 * neff)
    out = points[on]
    out["x"], out["y"] = x[on], y[on]
    out["kind"] = kind_of(out["id"])
    out["electrons"] = electrons[on]
    out["snr"] = snr[on]
    out["isolated"] = counts[on] == 1
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
