"""Flux and magnitude conventions, and Gaussian PSF-width conversions, used throughout twinkles.

Fluxes are in nanojansky (nJy), magnitudes are AB: ``m = -2.5 log10(f / 3631 Jy)``, so
``m = 31.4 - 2.5 log10(f / nJy)``.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: AB magnitude of a 1 nJy source: 2.5 log10(3631e9).
AB_MAG_OF_1_NJY = 2.5 * np.log10(3631.0e9)


def mag_to_njy(mag: ArrayLike) -> NDArray[np.float64]:
    """AB magnitude to flux density in nJy."""
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - AB_MAG_OF_1_NJY))


def njy_to_mag(flux: ArrayLike) -> NDArray[np.float64]:
    """Flux density in nJy to AB magnitude (NaN for non-positive flux)."""
    flux = np.asarray(flux, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(flux > 0, AB_MAG_OF_1_NJY - 2.5 * np.log10(flux), np.nan)


def electrons_per_njy(zero_point: ArrayLike) -> NDArray[np.float64]:
    """Electrons collected per nJy of source flux, for a zero point ``zero_point``.

    ``zero_point`` is the AB magnitude of a source that yields one electron in the whole
    exposure (the exposure time is folded in).
    """
    return 10.0 ** (-0.4 * (AB_MAG_OF_1_NJY - np.asarray(zero_point, dtype=float)))


#: Millimagnitudes per unit fractional flux change, 2500 / ln(10): ``dm = -1085.7 df / f``.
MMAG_PER_FRACTION = 2500.0 / np.log(10.0)

#: Magnitudes per unit fractional flux change, 2.5 / ln(10).
MAG_PER_FRACTION = MMAG_PER_FRACTION / 1000.0

#: FWHM of a Gaussian per unit sigma, 2 sqrt(2 ln 2).
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))

#: Effective area (noise-equivalent number of pixels, sum(p)^2 / sum(p^2)) of a Gaussian per
#: unit FWHM^2: 4 pi sigma^2 = pi / (2 ln 2) FWHM^2.
NEFF_PER_FWHM2 = np.pi / (2.0 * np.log(2.0))
