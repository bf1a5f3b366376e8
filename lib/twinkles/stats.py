"""Robust statistics shared by every step: Gaussian-equivalent widths from quantiles.

For a normal distribution of standard deviation sigma, the interquartile range is
``2 Phi^-1(0.75) sigma = 1.349 sigma`` and the median absolute deviation is
``Phi^-1(0.75) sigma = sigma / 1.4826`` (e.g. Rousseeuw & Croux 1993, JASA 88, 1273). Both
ignore the few outliers (cosmic rays, blends, variables) that would set a standard deviation.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["IQR_TO_SIGMA", "MAD_TO_SIGMA", "mad_std", "robust_std", "stellar_locus"]

#: Gaussian sigma per unit interquartile range, 1 / (2 Phi^-1(0.75)).
IQR_TO_SIGMA = 1.0 / 1.349

#: Gaussian sigma per unit median absolute deviation, 1 / Phi^-1(0.75).
MAD_TO_SIGMA = 1.4826


def robust_std(values: ArrayLike) -> float:
    """Gaussian-equivalent standard deviation from the interquartile range.

    Parameters
    ----------
    values : array_like
        Samples, in any unit; non-finite values are ignored.

    Returns
    -------
    float
        ``IQR / 1.349`` in the unit of ``values``; NaN with fewer than two finite values.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return float("nan")
    q25, q75 = np.percentile(v, [25, 75])
    return float((q75 - q25) * IQR_TO_SIGMA)


def mad_std(values: ArrayLike, center: float | None = None) -> float:
    """Gaussian-equivalent standard deviation from the median absolute deviation.

    Parameters
    ----------
    values : array_like
        Samples, in any unit (all finite: this is called inside clipping loops on selected
        values).
    center : float, optional
        The value deviations are taken from; default the median of ``values``. Residuals
        of a fit pass 0.

    Returns
    -------
    float
        ``1.4826 median(|values - center|)`` in the unit of ``values``.
    """
    v = np.asarray(values, dtype=float)
    if center is None:
        center = float(np.median(v))
    return float(MAD_TO_SIGMA * np.median(np.abs(v - center)))


def stellar_locus(size: ArrayLike, tolerance: float) -> float:
    """Where the point sources sit in a size measure (half-light radius, concentration).

    Stars share one size, so they pile up in a narrow cluster at the small end; galaxies
    spread above it. The locus is the median of the smallest-size cluster of values within
    ``1 +- tolerance`` of each other that holds at least half as many as the densest one
    (and at least 3).

    Parameters
    ----------
    size : array_like
        A positive size per source (any unit); non-finite and non-positive values are ignored.
    tolerance : float
        Fractional half-width of a cluster (0.12 for half-light radii in a visit).

    Returns
    -------
    float
        The locus, in the unit of ``size``; NaN without any usable value.
    """
    r = np.asarray(size, dtype=float)
    r = np.sort(r[np.isfinite(r) & (r > 0)])
    if len(r) == 0:
        return float("nan")
    lo = np.searchsorted(r, r * (1 - tolerance))
    hi = np.searchsorted(r, r * (1 + tolerance), side="right")
    counts = hi - lo
    first = int(np.flatnonzero(counts >= max(3, 0.5 * counts.max()))[0]) if counts.max() >= 3 else 0
    return float(np.median(r[lo[first] : hi[first]]))
