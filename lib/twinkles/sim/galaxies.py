"""Galaxies: bulge + disk Sersic profiles with sizes, shapes, colours and redshifts.

* **Counts.** ``dN/dm ~ 10^(a m)`` in r, ``a ~ 0.38`` (faint galaxy counts).
* **Types.** The red (early-type) fraction falls from 0.5 at r = 18 to 0.15 at r = 26. Red
  galaxies have bulge-to-total 0.5-0.95; blue ones 0-0.35, a third of them pure disks.
* **Sizes and shapes.** Disk half-light radius log-normal about
  ``0.9" x 10^(-0.1 (r - 20))`` (0.25 dex), bulge radius 0.2-0.6 of the disk's; disk axis
  ratio 0.2-1, bulge 0.6-1, aligned. Disk: Sersic n = 1 truncated at 4 half-light radii;
  bulge: n = 4 truncated at 5; the catalogued flux is the flux inside the truncation.
* **Colours.** Per component, fixed colours relative to r (bulges red, disks blue; the disks of
  red galaxies halfway between) with scatter; bulge and disk differ, so colour gradients come
  for free.
* **Redshifts.** Log-normal about a median rising with magnitude, ``0.25 + 0.15 (r - 20)``,
  for hosts of supernovae; colours do not follow the redshift (documented simplification).
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from twinkles.bands import BANDS
from twinkles.config import TruthConfig
from twinkles.sim.ids import ObjectKind, make_ids
from twinkles.sim.stars import power_law_magnitudes
from twinkles.units import mag_to_njy

__all__ = ["BULGE_TRUNCATION", "DISK_TRUNCATION", "galaxy_flux", "galaxy_table", "make_galaxies"]

#: Truncation radii in units of the component's half-light radius.
DISK_TRUNCATION = 4.0
BULGE_TRUNCATION = 5.0

# colour of each component relative to r: (u-r, g-r, 0, r-i... as m_band - m_r)
_BULGE_MINUS_R = np.array([2.45, 0.75, 0.0, -0.40, -0.70, -0.90])
_DISK_MINUS_R = np.array([1.15, 0.40, 0.0, -0.20, -0.32, -0.40])


def galaxy_table(
    ids: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    redshift: np.ndarray,
    mag_r: np.ndarray,
    bulge_to_total: np.ndarray,
    disk_hlr: np.ndarray,
    bulge_hlr: np.ndarray,
    disk_q: np.ndarray,
    bulge_q: np.ndarray,
    position_angle: np.ndarray,
    bulge_colour: np.ndarray,
    disk_colour: np.ndarray,
    is_lens: np.ndarray,
) -> Table:
    """Assemble the galaxy truth table; colours are (n, 6) arrays of m_band - m_r."""
    with np.errstate(divide="ignore"):
        bulge_r = mag_r - 2.5 * np.log10(bulge_to_total)
        disk_r = mag_r - 2.5 * np.log10(1.0 - bulge_to_total)
    table = Table()
    table["id"] = ids
    table["ra"] = ra
    table["dec"] = dec
    table["redshift"] = redshift
    table["mag_r"] = mag_r
    table["bulge_to_total"] = bulge_to_total
    table["disk_hlr"] = disk_hlr
    table["bulge_hlr"] = bulge_hlr
    table["disk_q"] = disk_q
    table["bulge_q"] = bulge_q
    table["position_angle"] = position_angle
    for k, band in enumerate(BANDS):
        table[f"bulge_mag_{band}"] = bulge_r + bulge_colour[:, k]
        table[f"disk_mag_{band}"] = disk_r + disk_colour[:, k]
    table["is_lens"] = is_lens
    for col in ("ra", "dec", "position_angle"):
        table[col].unit = "deg"
    for col in ("disk_hlr", "bulge_hlr"):
        table[col].unit = "arcsec"
    return table


def make_galaxies(
    config: TruthConfig, ra: np.ndarray, dec: np.ndarray, rng: np.random.Generator
) -> Table:
    """Galaxies at the given positions (see the module docstring for the models)."""
    n = len(ra)
    mag_r = power_law_magnitudes(
        n, config.galaxy_mag_min, config.galaxy_mag_max, config.galaxy_count_slope, rng
    )
    red_fraction = np.clip(0.5 - 0.35 * (mag_r - 18.0) / 8.0, 0.15, 0.5)
    red = rng.random(n) < red_fraction
    bt = np.where(red, rng.uniform(0.5, 0.95, n), rng.uniform(0.0, 0.35, n))
    bt = np.where(~red & (rng.random(n) < 1.0 / 3.0), 0.0, bt)

    disk_hlr = 0.9 * 10.0 ** (-0.1 * (mag_r - 20.0) + 0.25 * rng.standard_normal(n))
    disk_hlr = np.clip(disk_hlr, 0.12, 6.0)
    bulge_hlr = np.maximum(disk_hlr * rng.uniform(0.2, 0.6, n), 0.08)
    disk_q = rng.uniform(0.2, 1.0, n)
    bulge_q = rng.uniform(0.6, 1.0, n)
    pa = rng.uniform(0.0, 180.0, n)

    bulge_colour = (
        _BULGE_MINUS_R[None, :]
        + 0.05 * rng.standard_normal((n, 1)) * np.abs(_BULGE_MINUS_R)[None, :]
    )
    disk_base = np.where(red[:, None], 0.5 * (_BULGE_MINUS_R + _DISK_MINUS_R), _DISK_MINUS_R)
    disk_colour = disk_base + 0.1 * rng.standard_normal((n, 1)) * np.abs(_DISK_MINUS_R)[None, :]

    z_median = np.clip(0.25 + 0.15 * (mag_r - 20.0), 0.05, 1.2)
    redshift = np.clip(z_median * np.exp(0.35 * rng.standard_normal(n)), 0.01, 3.5)
    return galaxy_table(
        make_ids(ObjectKind.GALAXY, n),
        ra,
        dec,
        redshift,
        mag_r,
        bt,
        disk_hlr,
        bulge_hlr,
        disk_q,
        bulge_q,
        pa,
        bulge_colour,
        disk_colour,
        np.zeros(n, dtype=bool),
    )


def component_fluxes(galaxies: Table, band: str) -> tuple[np.ndarray, np.ndarray]:
    """Bulge and disk flux (nJy) of each galaxy in ``band`` (0 for an absent component)."""
    bulge = np.nan_to_num(mag_to_njy(np.asarray(galaxies[f"bulge_mag_{band}"])), nan=0.0)
    disk = np.nan_to_num(mag_to_njy(np.asarray(galaxies[f"disk_mag_{band}"])), nan=0.0)
    return bulge, disk


def galaxy_flux(galaxies: Table, band: str) -> np.ndarray:
    """Total true flux (nJy) of each galaxy in ``band``."""
    bulge, disk = component_fluxes(galaxies, band)
    return bulge + disk
