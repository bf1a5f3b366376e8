"""Photometric calibration: the zero point from matched reference stars.

Clean, isolated point sources (no saturated, edge, cosmic-ray, interpolated or blended flag;
extendedness 0; photon-noise S/N above ``snr_min``; no other detection within
``isolation_arcsec``: a star sharing its light with a neighbour reads bright and pulls the
zero point) are matched within ``match_radius_arcsec`` to
reference stars that are neither resolved nor variable, with magnitude errors below
``max_ref_mag_err``. For each pair ``zp_i = m_ref - m_inst`` with ``m_inst = -2.5 log10(F)``
and ``F`` the aperture-corrected PSF flux (electrons). The zero point is the weighted mean
(weights ``1 / (sigma_ref^2 + sigma_inst^2)``), clipped at ``clip_sigma`` times the robust
scatter until stable; its error is that of the mean, inflated by sqrt(chi^2 per degree of
freedom) when the scatter exceeds the errors. The refcat is in LSST bands, so there is no
colour term. Too few stars raises :class:`PhotoCalError`, naming the visit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from pydantic import Field
from scipy.spatial import cKDTree

from twinkles.calibration.matching import match_nearest
from twinkles.errors import TwinklesError
from twinkles.geometry import sky_to_tangent
from twinkles.image import PhotoCalib
from twinkles.section import Section
from twinkles.stats import mad_std

__all__ = ["PhotoCalConfig", "PhotoCalError", "PhotoCalResult", "PhotoCalTask"]


class PhotoCalError(TwinklesError):
    """Too few calibration stars."""


class PhotoCalConfig(Section):
    """Photometric calibration."""

    match_radius_arcsec: float = Field(0.5, gt=0, description="Matching radius.")
    snr_min: float = Field(30.0, gt=0, description="Fewest signal-to-noise of a star used.")
    max_ref_mag_err: float = Field(0.05, gt=0, description="Largest reference magnitude error.")
    clip_sigma: float = Field(3.0, gt=0, description="Clipping (robust sigma).")
    min_stars: int = Field(3, ge=1, description="Fewest stars (else PhotoCalError).")
    isolation_arcsec: float = Field(
        2.5, ge=0, description="No other detection this close to a calibration star."
    )


@dataclass
class PhotoCalResult:
    """The calibration and the stars behind it."""

    photo_calib: PhotoCalib
    matches: Table
    scatter: float

    @property
    def n_stars(self) -> int:
        """Number of calibration stars kept after clipping."""
        return int(np.sum(self.matches["used"]))


class PhotoCalTask:
    """Zero point of an exposure from its reference stars (see the module docstring)."""

    def __init__(self, config: PhotoCalConfig | None = None):
        self.config = config or PhotoCalConfig()

    def run(
        self, catalog: Table, refcat: Table, band: str, visit: int | None = None
    ) -> PhotoCalResult:
        """Zero point of one exposure from its isolated, unflagged reference stars.

        Parameters
        ----------
        catalog : `~astropy.table.Table`
            Sources with aperture-corrected PSF fluxes ``psfInstFluxCorr`` and errors
            (electrons), ``extendedness``, the ``flag_*`` columns and ``ra``, ``dec`` (deg).
        refcat : `~astropy.table.Table`
            Reference catalog with ``ra``, ``dec`` (deg), ``resolved``, ``variable`` and
            ``{band}_mag`` (AB) with ``{band}_magErr``.
        band : str
            The exposure's filter.
        visit : int, optional
            Named in error messages.

        Returns
        -------
        PhotoCalResult
            The zero point (AB mag of one electron) with its error, the matched stars (``used``
            marks those kept after ``clip_sigma`` clipping) and their robust scatter (mag).

        Raises
        ------
        PhotoCalError
            Fewer than ``min_stars`` usable stars.
        """
        cfg = self.config
        flux = np.asarray(catalog["psfInstFluxCorr"])
        err = np.asarray(catalog["psfInstFluxCorrErr"])
        with np.errstate(invalid="ignore", divide="ignore"):
            # the photon-noise S/N: the PSF model's systematic weighs the stars, it does not
            # disqualify the brightest of them
            snr = np.asarray(catalog["psfInstFlux"]) / np.asarray(catalog["psfInstFluxErr"])
        clean = (snr > cfg.snr_min) & (np.asarray(catalog["extendedness"]) == 0)
        for flag in (
            "flag_saturated",
            "flag_edge",
            "flag_cr",
            "flag_interpolated",
            "flag_blended",
            "flag_bad",
        ):
            clean &= ~np.asarray(catalog[flag])
        refs = refcat[
            ~np.asarray(refcat["resolved"])
            & ~np.asarray(refcat["variable"])
            & (np.asarray(refcat[f"{band}_magErr"]) < cfg.max_ref_mag_err)
        ]
        ra0, dec0 = float(np.median(catalog["coord_ra"])), float(np.median(catalog["coord_dec"]))
        all_x, all_y = sky_to_tangent(
            np.asarray(catalog["coord_ra"]), np.asarray(catalog["coord_dec"]), ra0, dec0
        )
        if cfg.isolation_arcsec > 0:
            positions = np.column_stack([all_x, all_y]) * 3600.0
            neighbours = cKDTree(positions).query_ball_point(
                positions, cfg.isolation_arcsec, return_length=True
            )
            clean &= neighbours == 1
        src = np.flatnonzero(clean)
        sx, sy = all_x[src], all_y[src]
        rx, ry = sky_to_tangent(np.asarray(refs["ra"]), np.asarray(refs["dec"]), ra0, dec0)
        i_src, i_ref, _ = match_nearest(
            sx * 3600, sy * 3600, rx * 3600, ry * 3600, cfg.match_radius_arcsec
        )
        if len(i_src) < cfg.min_stars:
            raise PhotoCalError(
                f"visit {visit}: only {len(i_src)} reference stars for the zero point "
                f"(need {cfg.min_stars})"
            )
        src = src[i_src]
        m_inst = -2.5 * np.log10(flux[src])
        m_inst_err = 2.5 / np.log(10) * err[src] / flux[src]
        m_ref = np.asarray(refs[f"{band}_mag"])[i_ref]
        m_ref_err = np.asarray(refs[f"{band}_magErr"])[i_ref]
        zp_i = m_ref - m_inst
        sigma = np.hypot(m_ref_err, m_inst_err)
        weight = 1.0 / sigma**2
        used = np.ones(len(zp_i), dtype=bool)
        for _ in range(10):
            zp = np.sum(weight[used] * zp_i[used]) / np.sum(weight[used])
            scatter = mad_std(zp_i[used])
            new_used = np.abs(zp_i - zp) < cfg.clip_sigma * np.maximum(scatter, sigma)
            if np.array_equal(new_used, used) or new_used.sum() < cfg.min_stars:
                break
            used = new_used
        n = int(used.sum())
        chi2 = np.sum(weight[used] * (zp_i[used] - zp) ** 2) / max(n - 1, 1)
        zp_err = float(np.sqrt(1.0 / np.sum(weight[used])) * max(1.0, np.sqrt(chi2)))
        matches = Table(
            {
                "src_index": src,
                "ref_id": np.asarray(refs["id"])[i_ref],
                "m_ref": m_ref,
                "m_ref_err": m_ref_err,
                "m_inst": m_inst,
                "m_inst_err": m_inst_err,
                "zp": zp_i,
                "used": used,
            }
        )
        return PhotoCalResult(PhotoCalib(float(zp), zp_err), matches, float(scatter))
