"""Forced photometry: PSF and aperture fluxes at given sky positions, neighbours fitted together.

For each position the PSF amplitude is fitted with the exposure's PSF model at fixed
position (see :mod:`twinkles.measurement.psf_flux` for the estimator and why it is
unweighted). Positions closer than ``group_radius`` PSF FWHMs are linked into groups, and a
group's amplitudes are fitted simultaneously on the union of their stamps:

    f = (A^T W A)^-1 A^T W d,   cov(f) = (A^T W A)^-1 (A^T W V W A) (A^T W A)^-1

with ``A`` the members' PSF images, ``W`` the usable-pixel mask and ``V`` the variance, so a
blend's light is shared out instead of being counted by each member (LSST's forced
photometry replaces neighbours by noise; with fixed positions a joint linear fit is exact
for point sources). Positions off the image are kept, flagged ``flag_off_image``, with NaN
fluxes. Used by ``forced_photometry`` (Objects on calexps), ``coadd_sources`` (merged peaks
on coadds) and the difference-imaging branch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from pydantic import Field

from twinkles.geometry import friends_of_friends
from twinkles.image import BAD_PLANES, Exposure, MaskPlane
from twinkles.measurement.aperture import sum_circles
from twinkles.measurement.measure import aperture_name
from twinkles.measurement.psf_flux import psf_flux
from twinkles.psf.determine import cut_stamps
from twinkles.section import Section

__all__ = [
    "ForcedPhotometryConfig",
    "ForcedPhotometryResult",
    "ForcedPhotometryTask",
    "footprint_reaches",
]


class ForcedPhotometryConfig(Section):
    """Forced photometry at fixed positions."""

    group_radius: float = Field(
        2.0, gt=0, description="Positions closer than this (PSF FWHMs) are fitted together."
    )
    aperture_radii: list[float] = Field(
        default_factory=lambda: [3.0, 6.0, 12.0],
        description="Circular aperture radii (pixels); neighbours are not removed from them.",
    )
    max_masked_psf: float = Field(
        0.5, gt=0, le=1, description="Masked PSF fraction beyond which the flux is flagged."
    )
    core_radius: int = Field(
        2, ge=0, le=10, description="Half-size of the core checked for saturation (pixels)."
    )


@dataclass
class ForcedPhotometryResult:
    """Instrumental (image-unit) and calibrated (nJy) fluxes, one row per position."""

    catalog: Table
    n_groups: int
    """Groups of two or more positions fitted jointly."""


class ForcedPhotometryTask:
    """Measure fluxes at fixed sky positions on an exposure with a PSF and a WCS."""

    def __init__(self, config: ForcedPhotometryConfig | None = None):
        self.config = config or ForcedPhotometryConfig()

    def run(
        self,
        exposure: Exposure,
        ra: np.ndarray,
        dec: np.ndarray,
        ap_corr: float | Callable[[np.ndarray, np.ndarray], np.ndarray] = 1.0,
        flux_systematic: float | Callable[[np.ndarray, np.ndarray], np.ndarray] = 0.0,
    ) -> ForcedPhotometryResult:
        """Fluxes at (ra, dec) (deg).

        Parameters
        ----------
        exposure : Exposure
            Background-subtracted (or a difference image), with PSF, WCS and zero point.
        ra, dec : array
            Positions (deg).
        ap_corr : float or callable
            Aperture correction multiplying the PSF fluxes: one number, or a function of the
            pixel position (x, y) such as the calexp's
            :class:`~twinkles.measurement.apcorr.ApertureCorrectionMap`.
        flux_systematic : float or callable
            Fractional per-source systematic added in quadrature to the PSF-flux errors: one
            number, or a function of the pixel position (x, y) such as a coadd's
            :meth:`~twinkles.coadd.apcorr.CoaddApertureCorrection.flux_systematic`.

        Returns
        -------
        ForcedPhotometryResult
            ``catalog`` columns: ``x``, ``y`` (0-based pixels), ``psfInstFlux``,
            ``psfInstFluxErr`` (image units, aperture-corrected), ``psFlux``, ``psFluxErr``
            (nJy), ``apFlux_<r>``, ``apFlux_<r>Err`` (nJy), ``group_size`` and the flags
            ``flag_off_image``, ``flag_edge`` (the PSF's footprint crosses the image's edge
            or reaches pixels without data), ``flag_bad``, ``flag_saturated``,
            ``flag_blended``.
        """
        cfg = self.config
        if exposure.psf is None or exposure.wcs is None or exposure.photo_calib is None:
            raise ValueError("forced photometry needs an exposure with PSF, WCS and zero point")
        ra, dec = np.atleast_1d(ra).astype(float), np.atleast_1d(dec).astype(float)
        n = len(ra)
        h, w = exposure.shape
        x, y = exposure.wcs.all_world2pix(ra, dec, 0) if n else (np.zeros(0), np.zeros(0))
        on = np.isfinite(x) & np.isfinite(y) & (x > -0.5) & (x < w - 0.5)
        on &= (y > -0.5) & (y < h - 0.5)
        idx = np.flatnonzero(on)
        flux = np.full(n, np.nan)
        err = np.full(n, np.nan)
        masked = np.ones(n)
        group_size = np.zeros(n, dtype=int)

        psf = exposure.psf
        fwhm = psf.fwhm(0.5 * (w - 1), 0.5 * (h - 1))
        labels = friends_of_friends(np.column_stack([x[idx], y[idx]]), cfg.group_radius * fwhm)
        sizes = np.bincount(labels) if len(labels) else np.zeros(0, dtype=int)
        group_size[idx] = sizes[labels] if len(labels) else 0
        if len(idx):
            flux[idx], err[idx], masked[idx] = psf_flux(
                exposure, x[idx], y[idx], bad=BAD_PLANES | MaskPlane.SAT, groups=labels
            )
        n_groups = int(np.sum(sizes > 1))

        correction = np.full(n, np.nan)
        if callable(ap_corr):
            correction[idx] = ap_corr(x[idx], y[idx])
        else:
            correction[:] = ap_corr
        systematic = np.full(n, np.nan)
        if callable(flux_systematic):
            systematic[idx] = flux_systematic(x[idx], y[idx])
        else:
            systematic[:] = flux_systematic
        flux *= correction
        err = np.hypot(err * correction, systematic * flux)
        calib = exposure.photo_calib
        cat = Table()
        cat["x"], cat["y"] = x, y
        cat["psfInstFlux"], cat["psfInstFluxErr"] = flux, err
        cat["psFlux"] = calib.to_njy(flux)
        cat["psFluxErr"] = calib.to_njy_err(flux, err)
        n_radii = len(cfg.aperture_radii)
        ap_flux, ap_err = np.full((n, n_radii), np.nan), np.full((n, n_radii), np.nan)
        if len(idx) and n_radii:
            sums = sum_circles(
                exposure.image,
                x[idx],
                y[idx],
                cfg.aperture_radii,
                variance=exposure.variance,
                bad=exposure.masked(BAD_PLANES | MaskPlane.SAT),
            )
            ap_flux[idx], ap_err[idx] = sums.flux, sums.flux_err
        for k, radius in enumerate(cfg.aperture_radii):
            af, ae = ap_flux[:, k], ap_err[:, k]
            name = aperture_name(radius)
            cat[name] = calib.to_njy(af)
            cat[f"{name}Err"] = calib.to_njy_err(af, ae)
        half = psf.half
        ix = np.rint(np.where(on, x, 0)).astype(int)
        iy = np.rint(np.where(on, y, 0)).astype(int)
        core, _ = cut_stamps(exposure.mask, ix, iy, cfg.core_radius, fill=int(MaskPlane.NO_DATA))
        cat["group_size"] = group_size
        cat["flag_off_image"] = ~on
        # the PSF's footprint crosses the image's edge or reaches pixels without data (a
        # difference image's edges, where its convolutions had nothing to work on)
        near_edge = (ix < half) | (iy < half) | (ix >= w - half) | (iy >= h - half)
        cat["flag_edge"] = on & (
            near_edge | footprint_reaches(exposure.mask, MaskPlane.NO_DATA, ix, iy, half)
        )
        cat["flag_bad"] = ~on | ~np.isfinite(flux) | (masked > cfg.max_masked_psf)
        cat["flag_saturated"] = on & np.any((core & int(MaskPlane.SAT)) != 0, axis=(1, 2))
        cat["flag_blended"] = group_size > 1
        return ForcedPhotometryResult(cat, n_groups)


def footprint_reaches(
    mask: np.ndarray, plane: MaskPlane, ix: np.ndarray, iy: np.ndarray, half: int, block: int = 32
) -> np.ndarray:
    """Whether the square footprint of side ``2 half + 1`` centred on each pixel (ix, iy) holds
    a pixel of ``plane``.

    The plane is first reduced to ``block`` x ``block`` blocks; only positions whose footprint
    overlaps a block holding such a pixel (near a difference image's edge strips, say) get
    their footprint cut out and looked at: ~30 ms for 5000 positions on a 4k difference image.
    """
    ix, iy = np.asarray(ix, dtype=int), np.asarray(iy, dtype=int)
    out = np.zeros(len(ix), dtype=bool)
    hit = (mask & int(plane)) != 0
    if len(ix) == 0 or not hit.any():
        return out
    h, w = hit.shape
    nby, nbx = -(-h // block), -(-w // block)
    padded = np.zeros((nby * block, nbx * block), dtype=bool)
    padded[:h, :w] = hit
    blocks = padded.reshape(nby, block, nbx, block).any(axis=(1, 3))
    # a summed-area table of the blocks: any hit among the blocks a footprint overlaps
    table = np.zeros((nby + 1, nbx + 1), dtype=np.int64)
    table[1:, 1:] = blocks.cumsum(axis=0).cumsum(axis=1)
    y0 = np.clip((iy - half) // block, 0, nby - 1)
    y1 = np.clip((iy + half) // block, 0, nby - 1) + 1
    x0 = np.clip((ix - half) // block, 0, nbx - 1)
    x1 = np.clip((ix + half) // block, 0, nbx - 1) + 1
    count = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    near = np.flatnonzero(count > 0)
    if len(near):
        stamps, inside = cut_stamps(hit.view(np.uint8), ix[near], iy[near], half)
        out[near] = np.any((stamps != 0) & inside, axis=(1, 2))
    return out
