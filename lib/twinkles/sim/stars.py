"""Stars: number counts, stellar-locus colours and periodic variables.

* **Counts.** ``dN/dm ~ 10^(a m)`` in r between ``star_mag_min`` and ``star_mag_max``; at the
  high galactic latitude of the CDFS (b = -54 deg) the halo dominates and ``a ~ 0.15``.
  Twinkles left out stars brighter than r = 16.
* **Colours.** g - r from a mix of halo turn-off stars (70%, g - r ~ 0.35) and disk dwarfs
  (30%, redder); the other colours follow the SDSS stellar locus as a function of g - r
  (after Covey et al. 2007, AJ 134, 2398; transformed to LSST bands without colour terms).
* **Variables.** A fraction of stars pulsate with an RR-Lyrae-like light curve (fast rise,
  slow decline: three harmonics), amplitude 0.05-0.5 mag in r, larger in the blue, period
  0.2-20 d (log-uniform). The magnitudes in the table are the time averages.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from twinkles.bands import BANDS
from twinkles.config import TruthConfig
from twinkles.sim.ids import ObjectKind, make_ids
from twinkles.units import mag_to_njy

__all__ = ["make_stars", "power_law_magnitudes", "star_flux", "stellar_locus", "variable_delta_mag"]

# SDSS stellar locus, tabulated against g - r (Covey et al. 2007, approximately)
_LOCUS_GR = np.array([0.20, 0.40, 0.60, 0.80, 1.00, 1.20, 1.40, 1.50])
_LOCUS = {
    "u-g": np.array([0.95, 1.15, 1.55, 2.05, 2.45, 2.60, 2.65, 2.70]),
    "r-i": np.array([0.05, 0.13, 0.22, 0.32, 0.45, 0.70, 1.10, 1.40]),
    "i-z": np.array([0.00, 0.05, 0.10, 0.17, 0.25, 0.38, 0.60, 0.78]),
    "z-y": np.array([0.00, 0.03, 0.05, 0.08, 0.12, 0.18, 0.28, 0.35]),
}

#: Pulsation amplitude in each band relative to r.
VARIABLE_AMPLITUDE_RATIO = {"u": 1.35, "g": 1.25, "r": 1.0, "i": 0.8, "z": 0.7, "y": 0.65}
_HARMONICS = np.array([1.0, 0.45, 0.22])
_HARMONIC_PHASES = np.array([0.0, 0.7, 1.4])


def power_law_magnitudes(
    n: int, m_min: float, m_max: float, slope: float, rng: np.random.Generator
) -> np.ndarray:
    """Magnitudes with ``dN/dm ~ 10^(slope m)`` between ``m_min`` and ``m_max``."""
    u = rng.random(n)
    if slope == 0:
        return m_min + u * (m_max - m_min)
    lo, hi = 10.0 ** (slope * m_min), 10.0 ** (slope * m_max)
    return np.log10(lo + u * (hi - lo)) / slope


def stellar_locus(g_r: np.ndarray) -> dict[str, np.ndarray]:
    """Colours u-g, r-i, i-z, z-y of the stellar locus at g - r."""
    return {name: np.interp(g_r, _LOCUS_GR, values) for name, values in _LOCUS.items()}


def _harmonic_sum(phase: np.ndarray) -> np.ndarray:
    k = np.arange(1, len(_HARMONICS) + 1)[:, None]
    angle = 2 * np.pi * k * np.asarray(phase, dtype=float)[None] + _HARMONIC_PHASES[:, None]
    return -np.sum(_HARMONICS[:, None] * np.sin(angle), axis=0)


_PULSATION_PEAK_TO_PEAK = float(np.ptp(_harmonic_sum(np.linspace(0.0, 1.0, 2049))))


def _pulsation_shape(phase: np.ndarray) -> np.ndarray:
    """Fast-rise, slow-decline pulsation; unit peak-to-peak, zero mean (magnitudes)."""
    return _harmonic_sum(phase) / _PULSATION_PEAK_TO_PEAK


def make_stars(
    config: TruthConfig,
    ra: np.ndarray,
    dec: np.ndarray,
    epoch_mjd: float,
    rng: np.random.Generator,
    r_mags: np.ndarray | None = None,
    first_id: int = 1,
) -> Table:
    """Stars at the given positions, with magnitudes, colours and variability.

    Parameters
    ----------
    config : TruthConfig
        Magnitude range, count slope and variable fraction.
    ra, dec : array
        Positions (deg); their number is the number of stars.
    epoch_mjd : float
        Reference epoch of the pulsation phases (MJD).
    rng : numpy.random.Generator
    r_mags : array, optional
        r magnitudes of the stars; by default drawn from the configured number counts.
    first_id : int
        Index of the first star's id (a second population continues the first's ids).
    """
    n = len(ra)
    r = (
        power_law_magnitudes(
            n, config.star_mag_min, config.star_mag_max, config.star_count_slope, rng
        )
        if r_mags is None
        else np.asarray(r_mags, dtype=float)
    )
    halo = rng.random(n) < 0.7
    g_r = np.where(halo, rng.normal(0.35, 0.08, n), rng.normal(1.05, 0.30, n))
    g_r = np.clip(g_r, 0.2, 1.5)
    locus = stellar_locus(g_r)
    scatter = {k: rng.normal(0.0, 0.03, n) for k in locus}
    g = r + g_r
    u = g + locus["u-g"] + scatter["u-g"]
    i = r - locus["r-i"] - scatter["r-i"]
    z = i - locus["i-z"] - scatter["i-z"]
    y = z - locus["z-y"] - scatter["z-y"]
    variable = rng.random(n) < config.variable_star_fraction

    table = Table()
    table["id"] = make_ids(ObjectKind.STAR, n, start=first_id)
    table["ra"] = ra
    table["dec"] = dec
    for band, mag in zip(BANDS, (u, g, r, i, z, y), strict=True):
        table[f"mag_{band}"] = mag
    table["is_variable"] = variable
    table["var_amplitude"] = np.where(variable, rng.uniform(0.05, 0.5, n), 0.0)
    table["var_period"] = np.where(variable, np.exp(rng.uniform(np.log(0.2), np.log(20.0), n)), 0.0)
    table["var_phase"] = rng.random(n)
    table["var_epoch"] = np.full(n, epoch_mjd)
    table["ra"].unit = table["dec"].unit = "deg"
    table["var_period"].unit = "d"
    return table


def variable_delta_mag(stars: Table, band: str, mjd: np.ndarray | float) -> np.ndarray:
    """Magnitude offset from the mean of each star at ``mjd`` (0 for constant stars)."""
    mjd = np.asarray(mjd, dtype=float)
    period = np.asarray(stars["var_period"])
    with np.errstate(divide="ignore", invalid="ignore"):
        phase = np.where(
            period > 0,
            (mjd - np.asarray(stars["var_epoch"])) / np.where(period > 0, period, 1.0)
            + np.asarray(stars["var_phase"]),
            0.0,
        )
    shape = _pulsation_shape(phase % 1.0)
    return np.asarray(stars["var_amplitude"]) * VARIABLE_AMPLITUDE_RATIO[band] * shape


def star_flux(stars: Table, band: str, mjd: np.ndarray | float) -> np.ndarray:
    """True flux (nJy) of each star in ``band`` at ``mjd``."""
    return mag_to_njy(np.asarray(stars[f"mag_{band}"]) + variable_delta_mag(stars, band, mjd))
