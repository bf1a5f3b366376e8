"""PSF photometry at fixed positions: a linear fit of the PSF's amplitude.

For a source at (x, y), with the PSF image ``P`` (unit sum, shifted to the source's sub-pixel
position) and the background-subtracted data ``d`` on the stamp, the flux is

    F = sum(w P d) / sum(w P^2),   var(F) = sum(w P^2 v) / sum(w P^2)^2

with ``w`` = 0 on masked pixels and outside the sensor, 1 elsewhere, and ``v`` the variance
plane. Unweighted by the variance, the estimate stays unbiased whatever the source's own
Poisson noise (weighting by the total variance biases bright sources low); for faint,
background-dominated sources it is the optimal estimate. Vectorised over sources: 5000
positions on a 4k x 4k sensor in ~0.1 s, where photutils' PSFPhotometry with fixed positions
takes 6-9 s (../shared/reference/PERFORMANCE.md). Neighbours are not modelled here; forced
photometry of Objects fits close neighbours together (issue 5).
"""

from __future__ import annotations

import numpy as np

from twinkles.image import Exposure, MaskPlane
from twinkles.psf.determine import cut_stamps

__all__ = ["psf_flux"]


def psf_flux(
    exposure: Exposure,
    x: np.ndarray,
    y: np.ndarray,
    bad: MaskPlane = MaskPlane.BAD | MaskPlane.NO_DATA | MaskPlane.SAT,
    chunk: int = 4096,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PSF fluxes (electrons), their errors, and the fraction of the PSF that was masked.

    Parameters
    ----------
    exposure : Exposure
        Background-subtracted, with a PSF model.
    x, y : array
        0-based pixel positions.
    bad : MaskPlane
        Planes whose pixels are left out of the fit.
    chunk : int
        Sources handled at once (bounds the memory: chunk x 25 x 25 doubles).
    """
    x, y = np.atleast_1d(x).astype(float), np.atleast_1d(y).astype(float)
    flux = np.full(len(x), np.nan)
    err = np.full(len(x), np.nan)
    masked = np.ones(len(x))
    psf = exposure.psf
    for start in range(0, len(x), chunk):
        sl = slice(start, start + chunk)
        model, ix, iy = psf.images(x[sl], y[sl])
        data, inside = cut_stamps(exposure.image, ix, iy, psf.half)
        var, _ = cut_stamps(exposure.variance, ix, iy, psf.half)
        mask, _ = cut_stamps(exposure.mask, ix, iy, psf.half, fill=int(MaskPlane.NO_DATA))
        w = (inside & ((mask & int(bad)) == 0)).astype(float)
        wp = w * model
        norm = np.sum(wp * model, axis=(1, 2))
        ok = norm > 0
        with np.errstate(invalid="ignore", divide="ignore"):
            flux[sl] = np.where(ok, np.sum(wp * data, axis=(1, 2)) / norm, np.nan)
            err[sl] = np.where(ok, np.sqrt(np.sum(wp * model * var, axis=(1, 2))) / norm, np.nan)
        masked[sl] = 1.0 - np.sum(wp, axis=(1, 2))
    return flux, err, masked
