"""Real/bogus: features of every DIASource and the score that separates transients from
subtraction artifacts.

Most DIASources of a difference image are not astrophysical (DC2: ~90%, Sanchez et al. 2022,
arXiv:2111.06858): residuals of stars and galaxies where the kernel or the astrometry does not
match, the wings of bright stars beyond the kernel, the edges of saturation masks, cosmic
rays. Surveys score each one: DES with a random forest on pixel and catalog features
("autoScan", Goldstein et al. 2015, AJ 150, 82), Rubin with a convolutional network on
cutouts. Both learn from injected sources as the real class. The features here are those of
autoScan that a PSF-matched difference supports, each measured in the DIASource's own
polarity (a negative DIASource on ``-D``), so a fading variable is not bogus for being
negative:

``psfChi2``
    Reduced chi^2 of the PSF fit within 2 FWHM of the centroid: a point source fits (~1), a
    residual of a mismatched kernel (a ring, a dipole, a sharp core) does not.
``posFraction``
    Within one FWHM of the centroid, the summed positive flux over the summed absolute flux:
    ~1 for a point source at high S/N, ~0.5 for a dipole.
``apRatio``
    Flux in a 2-FWHM aperture over what the PSF fit puts there: 1 for a point source,
    larger for an extended residual (a galaxy's), smaller for a sharp one (a cosmic ray).
``templateContrast``
    log10(1 + template PSF flux / |psFlux|): how much brighter the template is at the
    DIASource than the change (subtraction residuals scale with it; a supernova on a bright
    host has it too, which is why injections go on galaxies).
``satDistance``
    Distance (arcsec) to the nearest saturated pixel of either image, at most 60".
``edgeDistance``
    Distance (pixels) to the nearest pixel without data (the sensor's edge, where the
    convolution has no input, or the template's), at most 100: the matching kernel is
    fitted on stars inside the sensor, and its spatial polynomial is least constrained at
    the edges.
``snr``
    |psFlux| / psFluxErr (the absolute value of the DIASource's own ``snr``).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from twinkles.image.exposure import Exposure, MaskPlane
from twinkles.psf.determine import cut_stamps

__all__ = [
    "EDGE_DISTANCE_CAP_PX",
    "REAL_BOGUS_FEATURES",
    "SAT_DISTANCE_CAP_ARCSEC",
    "dia_source_features",
]

#: The features of every DIASource (columns of diaSrc), in the classifier's order.
REAL_BOGUS_FEATURES = (
    "psfChi2",
    "posFraction",
    "apRatio",
    "templateContrast",
    "satDistance",
    "edgeDistance",
    "snr",
)

#: ``satDistance`` of a DIASource with no saturated pixel nearer (arcsec).
SAT_DISTANCE_CAP_ARCSEC = 60.0

#: ``edgeDistance`` of a DIASource with no pixel without data nearer (pixels).
EDGE_DISTANCE_CAP_PX = 100.0


def dia_source_features(
    difference: Exposure,
    template_on_visit: Exposure,
    x: np.ndarray,
    y: np.ndarray,
    polarity: np.ndarray,
    flux: np.ndarray,
    fwhm_px: float,
    pixel_scale: float,
    blends: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The real/bogus features (:data:`REAL_BOGUS_FEATURES`) of DIASources.

    DIASources of one blend (the images of a lensed quasar, 1-1.5" apart) are measured each
    with the others' PSF models, at their fitted fluxes, removed from its stamp, as LSST's
    measurement replaces a deblended child's neighbours: otherwise each image's light makes
    the others look extended (``apRatio`` ~2) and badly fitted.

    Parameters
    ----------
    difference : Exposure
        The difference image (nJy) with its PSF, variance and mask.
    template_on_visit : Exposure
        The template resampled onto the difference's pixels (nJy), before any convolution.
    x, y : array
        DIASource centroids (pixels).
    polarity : array
        +1 for a DIASource detected on ``D``, -1 for one detected on ``-D``.
    flux : array
        PSF flux (nJy, signed).
    fwhm_px : float
        The difference PSF's FWHM (pixels): the radii of ``posFraction`` and ``apRatio``.
    pixel_scale : float
        Arcsec per pixel (``satDistance``).
    blends : array of int, optional
        A blend label per DIASource; DIASources sharing one are measured without each
        other's light. Without it every DIASource is measured alone.

    Returns
    -------
    dict of str to array
        One float array per feature name but ``snr`` (the DIASource's own column).
    """
    x, y = np.atleast_1d(x).astype(float), np.atleast_1d(y).astype(float)
    n = len(x)
    if n == 0:
        return {name: np.zeros(0) for name in REAL_BOGUS_FEATURES if name != "snr"}
    sign = np.asarray(polarity, float)
    flux = np.asarray(flux, float)
    psf = difference.psf
    model, ix, iy = psf.images(x, y)
    half = psf.half
    data, inside = cut_stamps(difference.image, ix, iy, half)
    var, _ = cut_stamps(difference.variance, ix, iy, half, fill=np.inf)
    mask, _ = cut_stamps(difference.mask, ix, iy, half, fill=int(MaskPlane.NO_DATA))
    bad = int(MaskPlane.BAD | MaskPlane.NO_DATA | MaskPlane.SAT)
    good = inside & ((mask & bad) == 0) & np.isfinite(data) & np.isfinite(var) & (var > 0)
    fitted = np.where(np.isfinite(flux), flux, 0.0)
    if blends is not None:
        _remove_neighbours(data, model, fitted, ix, iy, np.asarray(blends))
    data = np.where(good, data, 0.0) * sign[:, None, None]
    signed_flux = fitted * sign
    fit = signed_flux[:, None, None] * model
    offsets = np.arange(-half, half + 1)
    # radii from the centroid, not from the stamp's central pixel
    dx = offsets[None, None, :] - (x - ix)[:, None, None]
    dy = offsets[None, :, None] - (y - iy)[:, None, None]
    r = np.hypot(dx, dy)
    core = good & (r <= fwhm_px)
    aperture = good & (r <= 2.0 * fwhm_px)
    with np.errstate(invalid="ignore", divide="ignore"):
        # where the PSF has its light: over the whole stamp, sky pixels dilute a misfit
        chi2 = np.where(aperture, (data - fit) ** 2 / np.where(good, var, 1.0), 0.0)
        psf_chi2 = chi2.sum(axis=(1, 2)) / np.maximum(aperture.sum(axis=(1, 2)) - 1, 1)
        pos = np.where(core, np.clip(data, 0.0, None), 0.0).sum(axis=(1, 2))
        total = np.where(core, np.abs(data), 0.0).sum(axis=(1, 2))
        pos_fraction = np.where(total > 0, pos / total, np.nan)
        ap_data = np.where(aperture, data, 0.0).sum(axis=(1, 2))
        ap_model = np.where(aperture, fit, 0.0).sum(axis=(1, 2))
        ap_ratio = np.where(np.abs(ap_model) > 0, ap_data / ap_model, np.nan)
    # the template's flux under the PSF, by the same weighting as a PSF fit (no variance
    # weighting: the template's noise is not the point)
    tdata, tinside = cut_stamps(template_on_visit.image, ix, iy, half)
    tmask, _ = cut_stamps(template_on_visit.mask, ix, iy, half, fill=int(MaskPlane.NO_DATA))
    tgood = tinside & ((tmask & int(MaskPlane.NO_DATA)) == 0) & np.isfinite(tdata)
    norm = np.where(tgood, model**2, 0.0).sum(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        tflux = np.where(norm > 0, np.where(tgood, model * tdata, 0.0).sum(axis=(1, 2)) / norm, 0.0)
        contrast = np.log10(1.0 + np.clip(tflux, 0.0, None) / np.abs(signed_flux))
    sat_y, sat_x = np.nonzero((difference.mask & int(MaskPlane.SAT)) != 0)
    sat_distance = np.full(n, SAT_DISTANCE_CAP_ARCSEC)
    if len(sat_x):
        dist, _ = cKDTree(np.column_stack([sat_x, sat_y])).query(np.column_stack([x, y]))
        sat_distance = np.minimum(dist * pixel_scale, SAT_DISTANCE_CAP_ARCSEC)
    return {
        "edgeDistance": _edge_distance(difference, x, y),
        "psfChi2": psf_chi2,
        "posFraction": pos_fraction,
        "apRatio": ap_ratio,
        "templateContrast": np.where(np.isfinite(contrast), contrast, np.nan),
        "satDistance": sat_distance,
    }


def _remove_neighbours(
    data: np.ndarray,
    model: np.ndarray,
    flux: np.ndarray,
    ix: np.ndarray,
    iy: np.ndarray,
    blends: np.ndarray,
) -> None:
    """Subtract from each stamp of ``data`` the PSF models (``flux`` x ``model``, stamps
    centred on pixels ``ix``, ``iy``) of the other members of its blend, in place."""
    size = data.shape[1]
    labels, counts = np.unique(blends, return_counts=True)
    for label in labels[counts > 1]:
        members = np.flatnonzero(blends == label)
        for i in members:
            for j in members[members != i]:
                dx, dy = int(ix[j] - ix[i]), int(iy[j] - iy[i])
                if abs(dx) >= size or abs(dy) >= size:
                    continue
                # pixel (a, b) of j's stamp is pixel (a + dy, b + dx) of i's
                rows_i = slice(max(dy, 0), size + min(dy, 0))
                cols_i = slice(max(dx, 0), size + min(dx, 0))
                rows_j = slice(max(-dy, 0), size + min(-dy, 0))
                cols_j = slice(max(-dx, 0), size + min(-dx, 0))
                data[i, rows_i, cols_i] -= flux[j] * model[j, rows_j, cols_j]


def _edge_distance(difference: Exposure, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Distance (pixels) from (x, y) to the nearest pixel without data (NO_DATA, or beyond
    the image), at most :data:`EDGE_DISTANCE_CAP_PX`."""
    h, w = difference.shape
    border = np.minimum.reduce([x + 1.0, y + 1.0, w - x, h - y])
    no_data = (difference.mask & int(MaskPlane.NO_DATA)) != 0
    # only the pixels of the no-data region that touch data can be nearest
    inner = no_data.copy()
    inner[1:, :] &= no_data[:-1, :]
    inner[:-1, :] &= no_data[1:, :]
    inner[:, 1:] &= no_data[:, :-1]
    inner[:, :-1] &= no_data[:, 1:]
    ey, ex = np.nonzero(no_data & ~inner)
    distance = border
    if len(ex):
        nearest, _ = cKDTree(np.column_stack([ex, ey])).query(np.column_stack([x, y]))
        distance = np.minimum(border, nearest)
    return np.minimum(distance, EDGE_DISTANCE_CAP_PX)
