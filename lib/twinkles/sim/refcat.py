"""The reference catalog: what astrometric and photometric calibration match against.

Twinkles calibrated against a reference catalog built from its input catalogs (positions,
u..y magnitudes, ``resolved`` and ``variable`` flags). This one is built the same way but
carries realistic measurement errors, so calibration is tested honestly:

* stars brighter than ``mag_limit`` in r, with positions perturbed by a Gaussian error per
  coordinate growing from ``position_error_floor_mas`` for bright stars to
  ``position_error_at_limit_mas`` at the limit (as ``10^(0.2 (m - m_lim))``, photon noise);
* magnitudes perturbed by ``sqrt(floor^2 + (0.2 * 10^(0.4 (m - depth)))^2)`` per band (the
  error of a survey whose 5-sigma depth is ``depth_mag``); variable stars carry their mean;
* galaxies brighter than ``resolved_mag_limit`` with ``resolved = True`` (calibration must
  reject them).
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table, vstack

from twinkles.bands import BANDS
from twinkles.config import ReferenceCatalogConfig
from twinkles.sim.galaxies import galaxy_flux
from twinkles.units import njy_to_mag

__all__ = ["make_reference_catalog"]


def _mag_error(mag: np.ndarray, config: ReferenceCatalogConfig) -> np.ndarray:
    return np.hypot(config.photometric_floor_mag, 0.2 * 10.0 ** (0.4 * (mag - config.depth_mag)))


def _entries(
    ids: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    mags: dict[str, np.ndarray],
    resolved: bool,
    variable: np.ndarray,
    config: ReferenceCatalogConfig,
    rng: np.random.Generator,
) -> Table:
    n = len(ids)
    r = mags["r"]
    pos_err = np.hypot(
        config.position_error_floor_mas,
        config.position_error_at_limit_mas * 10.0 ** (0.2 * (r - config.mag_limit)),
    )
    table = Table()
    table["id"] = ids
    table["truth_id"] = ids
    dec_out = dec + pos_err * rng.standard_normal(n) / 3.6e6
    table["ra"] = ra + pos_err * rng.standard_normal(n) / 3.6e6 / np.cos(np.deg2rad(dec))
    table["dec"] = dec_out
    table["coord_err"] = pos_err
    for band in BANDS:
        err = _mag_error(mags[band], config)
        table[f"{band}_mag"] = mags[band] + err * rng.standard_normal(n)
        table[f"{band}_magErr"] = err
    table["resolved"] = np.full(n, resolved)
    table["variable"] = variable
    table["ra"].unit = table["dec"].unit = "deg"
    table["coord_err"].unit = "mas"
    return table


def make_reference_catalog(
    stars: Table, galaxies: Table, config: ReferenceCatalogConfig, rng: np.random.Generator
) -> Table:
    """Reference catalog from the truth (see the module docstring)."""
    bright = np.asarray(stars["mag_r"]) < config.mag_limit
    s = stars[bright]
    star_part = _entries(
        np.asarray(s["id"]),
        np.asarray(s["ra"]),
        np.asarray(s["dec"]),
        {b: np.asarray(s[f"mag_{b}"]) for b in BANDS},
        False,
        np.asarray(s["is_variable"]),
        config,
        rng,
    )
    gal_mag_r = njy_to_mag(galaxy_flux(galaxies, "r"))
    g = galaxies[gal_mag_r < config.resolved_mag_limit]
    gal_part = _entries(
        np.asarray(g["id"]),
        np.asarray(g["ra"]),
        np.asarray(g["dec"]),
        {b: njy_to_mag(galaxy_flux(g, b)) for b in BANDS},
        True,
        np.zeros(len(g), dtype=bool),
        config,
        rng,
    )
    refcat = vstack([star_part, gal_part]) if len(gal_part) else star_part
    refcat["id"] = np.arange(1, len(refcat) + 1, dtype=np.int64)
    return refcat
