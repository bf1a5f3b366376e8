"""PSF photometry at fixed positions: a linear fit of the PSF's amplitude.

For a source at (x, y), with the PSF image ``P`` (unit sum, shifted to the source's sub-pixel
position) and the background-subtracted data ``d`` on the stamp, the flux is

    F = sum(w P d) / sum(w P^2),   var(F) = sum(w P^2 v) / sum(w P^2)^2

with ``w`` = 0 on masked or non-finite pixels and outside the sensor, 1 elsewhere, and ``v``
the variance plane. Unweighted by the variance, the estimate stays unbiased whatever the
source's own Poisson noise (weighting by the total variance biases bright sources low); for
faint, background-dominated sources it is the optimal estimate. Vectorised over sources: 5000
positions on a 4k x 4k sensor in ~0.1 s, where photutils' PSFPhotometry with fixed positions
takes 6-9 s (../shared/reference/PERFORMANCE.md); the tests hold the two together
(``tests/pipeline/test_photutils_reference.py``).

Positions given a common group label are fitted jointly, so overlapping PSFs share their
light out instead of each counting it:

    f = N^-1 b,   cov(f) = N^-1 V N^-1,
    N_ab = sum(w P_a P_b),   V_ab = sum(w P_a P_b v),   b_a = sum(w P_a d),

the least-squares fit on the union of the members' stamps. Its diagonal and ``b`` are the
single fits' sums; only the members' overlaps are new, so a group costs a few of its pairs'
stamp products, all groups of one size being solved in one batched call.
"""

from __future__ import annotations

import numpy as np

from twinkles.image import Exposure, MaskPlane
from twinkles.measurement.aperture import sum_circles
from twinkles.psf.determine import cut_stamps

__all__ = ["psf_aperture_covariance", "psf_flux"]


def psf_flux(
    exposure: Exposure,
    x: np.ndarray,
    y: np.ndarray,
    bad: MaskPlane = MaskPlane.BAD | MaskPlane.NO_DATA | MaskPlane.SAT,
    chunk: int = 4096,
    groups: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PSF fluxes (image units), their errors, and the fraction of the PSF that was masked.

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
    groups : array of int, optional
        A label per position: positions sharing a label are fitted jointly (the labels of
        neighbours closer than a few FWHM, say). Without it every position is fitted alone.

    Returns
    -------
    flux, err, masked : array
        NaN flux and error where no usable pixel is under the PSF.
    """
    x, y = np.atleast_1d(x).astype(float), np.atleast_1d(y).astype(float)
    n = len(x)
    psf = exposure.psf
    joint = np.zeros(n, dtype=bool)
    if groups is not None and n:
        groups = np.asarray(groups)
        if groups.shape != x.shape:
            raise ValueError(f"psf_flux: {len(groups)} group labels for {n} positions")
        _, inverse, counts = np.unique(groups, return_inverse=True, return_counts=True)
        joint = counts[inverse] > 1
    norm, numer, var_numer, weight = np.zeros(n), np.zeros(n), np.zeros(n), np.zeros(n)
    # the joint fits' members keep their stamps for the overlaps
    kept = {key: [] for key in ("wp", "wpv", "model", "ix", "iy")}
    for start in range(0, n, chunk):
        sl = slice(start, start + chunk)
        model, ix, iy = psf.images(x[sl], y[sl])
        data, inside = cut_stamps(exposure.image, ix, iy, psf.half)
        var, _ = cut_stamps(exposure.variance, ix, iy, psf.half)
        mask, _ = cut_stamps(exposure.mask, ix, iy, psf.half, fill=int(MaskPlane.NO_DATA))
        w = inside & ((mask & int(bad)) == 0) & np.isfinite(data) & np.isfinite(var)
        wp = np.where(w, model, 0.0)
        var = np.where(w, var, 0.0)
        norm[sl] = np.einsum("nij,nij->n", wp, model)
        numer[sl] = np.einsum("nij,nij->n", wp, np.where(w, data, 0.0))
        var_numer[sl] = np.einsum("nij,nij,nij->n", wp, model, var)
        weight[sl] = wp.sum(axis=(1, 2))
        members = joint[sl]
        if members.any():
            kept["wp"].append(wp[members])
            kept["wpv"].append((wp * var)[members])
            kept["model"].append(model[members])
            kept["ix"].append(ix[members])
            kept["iy"].append(iy[members])
    ok = norm > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        flux = np.where(ok, numer / norm, np.nan)
        err = np.where(ok, np.sqrt(var_numer) / norm, np.nan)
    if joint.any():
        rows = np.flatnonzero(joint)
        stamps = {key: np.concatenate(value) for key, value in kept.items()}
        f, e = _joint_fits(groups[rows], stamps, norm[rows], numer[rows], var_numer[rows])
        flux[rows] = np.where(ok[rows], f, np.nan)
        err[rows] = np.where(ok[rows], e, np.nan)
    return flux, err, 1.0 - weight


def psf_aperture_covariance(
    exposure: Exposure,
    x: np.ndarray,
    y: np.ndarray,
    radius: float,
    segmentation: np.ndarray | None = None,
    seg_ids: np.ndarray | None = None,
    bad: MaskPlane = MaskPlane.BAD | MaskPlane.NO_DATA | MaskPlane.SAT,
    subpix: int = 5,
) -> np.ndarray:
    """The covariance of each position's PSF flux (:func:`psf_flux`, fitted alone) with its
    circular aperture sum of ``radius`` (image units squared).

    Both are linear in the same pixels: ``F = sum(w P d) / sum(w P^2)`` and
    ``A = sum(a d)``, with ``a`` each pixel's overlap with the circle, so
    ``cov(F, A) = sum(w P a v) / sum(w P^2)`` over the PSF's stamp: the aperture sum of
    ``w P v``, taken with :func:`~twinkles.measurement.aperture.sum_circles` (its sub-pixel
    overlaps, ``subpix``) as the aperture flux was. Most of a star's light,
    and of its noise, is in both: the error of their ratio is far below the two errors added
    in quadrature. With ``segmentation`` and ``seg_ids`` (each position's own segment),
    pixels of other segments are left out of the aperture, as ``sum_circles``'s
    ``unmasked_sum`` leaves them.
    """
    x, y = np.atleast_1d(x).astype(float), np.atleast_1d(y).astype(float)
    psf = exposure.psf
    model, ix, iy = psf.images(x, y)
    var, inside = cut_stamps(exposure.variance, ix, iy, psf.half)
    mask, _ = cut_stamps(exposure.mask, ix, iy, psf.half, fill=int(MaskPlane.NO_DATA))
    data, _ = cut_stamps(exposure.image, ix, iy, psf.half)
    w = inside & ((mask & int(bad)) == 0) & np.isfinite(data) & np.isfinite(var)
    wp = np.where(w, model, 0.0)
    norm = np.einsum("nij,nij->n", wp, model)
    # sum(w P a v) is the aperture sum of w P v on each star's stamp
    weighted = wp * np.where(w, var, 0.0)
    seg = cut_stamps(segmentation, ix, iy, psf.half)[0] if segmentation is not None else None
    cov = np.array(
        [
            sum_circles(
                weighted[k],
                [x[k] - ix[k] + psf.half],
                [y[k] - iy[k] + psf.half],
                [radius],
                segmentation=None if seg is None else seg[k],
                seg_ids=None if seg is None else [seg_ids[k]],
                subpix=subpix,
            ).unmasked_sum[0, 0]
            for k in range(len(x))
        ]
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, cov / norm, np.nan)


def _joint_fits(
    labels: np.ndarray,
    stamps: dict[str, np.ndarray],
    norm: np.ndarray,
    numer: np.ndarray,
    var_numer: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Fluxes and errors of the grouped positions, all groups of one size solved at once.

    ``stamps`` holds, per position, ``wp`` = w P and ``wpv`` = w P v on its stamp, its PSF
    image ``model`` and the stamp centre (``ix``, ``iy``).
    """
    flux, err = np.zeros(len(labels)), np.zeros(len(labels))
    order = np.argsort(labels, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(labels[order]) != 0])
    sizes = np.diff(np.r_[starts, len(order)])
    for m in np.unique(sizes):
        # members (n_groups, m): rows of the positions of each group of m
        members = order[starts[sizes == m][:, None] + np.arange(m)]
        a, b = np.triu_indices(m, 1)
        pa, pb = members[:, a].ravel(), members[:, b].ravel()
        cross, cross_var = _overlaps(stamps, pa, pb)
        normal = np.zeros((len(members), m, m))
        covar = np.zeros((len(members), m, m))
        diag = np.arange(m)
        normal[:, diag, diag] = norm[members]
        covar[:, diag, diag] = var_numer[members]
        normal[:, a, b] = normal[:, b, a] = cross.reshape(len(members), -1)
        covar[:, a, b] = covar[:, b, a] = cross_var.reshape(len(members), -1)
        try:
            inverse = np.linalg.inv(normal)
        except np.linalg.LinAlgError:  # a member with no usable pixel
            inverse = np.linalg.pinv(normal)
        flux[members] = np.einsum("gij,gj->gi", inverse, numer[members])
        cov = inverse @ covar @ inverse
        err[members] = np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0, None))
    return flux, err


def _overlaps(
    stamps: dict[str, np.ndarray], pa: np.ndarray, pb: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """sum(w P_a P_b) and sum(w P_a P_b v) of the pairs (pa, pb), on a's stamp.

    b's PSF image is moved onto a's stamp by the integer offset between the stamp centres;
    where it does not reach, it is zero.
    """
    size = stamps["model"].shape[-1]
    span = np.arange(size)
    rows = span[None, :] + (stamps["iy"][pa] - stamps["iy"][pb])[:, None]
    cols = span[None, :] + (stamps["ix"][pa] - stamps["ix"][pb])[:, None]
    reach = ((rows >= 0) & (rows < size))[:, :, None] & ((cols >= 0) & (cols < size))[:, None, :]
    moved = stamps["model"][
        pb[:, None, None],
        np.clip(rows, 0, size - 1)[:, :, None],
        np.clip(cols, 0, size - 1)[:, None, :],
    ]
    moved = np.where(reach, moved, 0.0)
    return (
        np.einsum("nij,nij->n", stamps["wp"][pa], moved),
        np.einsum("nij,nij->n", stamps["wpv"][pa], moved),
    )
