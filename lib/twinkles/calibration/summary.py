"""The visit summary: one row of the CcdVisit table per processed visit."""

from __future__ import annotations

from typing import Any

import numpy as np

from twinkles.image import Exposure
from twinkles.units import MAG_PER_FRACTION

__all__ = ["visit_summary"]


def visit_summary(
    exposure: Exposure,
    pixel_scale: float,
    psf_result: Any,
    apcorr: Any,
    astrometry: Any,
    photocal: Any,
    n_sources: int,
    n_cosmic_ray_pixels: int,
    n_saturated_pixels: int,
) -> dict[str, Any]:
    """Quality numbers of a processed visit (JSON-able).

    The 5-sigma depth is that of a point source on this visit's measured sky noise, PSF
    (effective area) and zero point, background-limited. ``zero_point_err`` is the error of
    the calibration of fluxes (nJy) from the calibration stars; the zero point as
    electrons-to-total-magnitude also carries the aperture correction's error,
    ``ap_corr_err`` (fractional), which the calibration absorbs: ``zero_point_total_err`` is
    both in quadrature, the error of the zero point itself. ``psf_flux_systematic`` is the
    fractional error added to every PSF flux (the PSF model's and the correction's).
    """
    meta = exposure.metadata
    neff = psf_result.psf.neff(psf_result.psf.x0, psf_result.psf.y0)
    sky_noise = float(meta.get("sky_noise", np.nan))
    zp = photocal.photo_calib.zero_point
    return {
        "visit": int(meta["visit"]),
        "filter": meta["filter"],
        "mjd": float(meta["mjd"]),
        "exptime": float(meta["exptime"]),
        "airmass": float(meta.get("airmass", np.nan)),
        "psf_fwhm": psf_result.fwhm * pixel_scale,
        "psf_fwhm_eff": psf_result.fwhm_eff * pixel_scale,
        "psf_n_stars": psf_result.n_stars,
        "psf_degree": int(psf_result.stars.meta["degree"]),
        "psf_radial": bool(psf_result.stars.meta.get("radial", False)),
        "psf_modes": list(psf_result.stars.meta.get("modes", [])),
        "ap_corr": apcorr.median,
        "ap_corr_map": apcorr.map.to_dict(),
        "ap_corr_err": apcorr.uncertainty,
        "psf_flux_systematic": apcorr.flux_systematic,
        "ap_corr_n_stars": int(np.sum(apcorr.stars["used"])),
        "zero_point": zp,
        "zero_point_err": photocal.photo_calib.zero_point_err,
        "zero_point_total_err": float(
            np.hypot(photocal.photo_calib.zero_point_err, MAG_PER_FRACTION * apcorr.uncertainty)
        ),
        "photocal_n_stars": photocal.n_stars,
        "sky_level": float(meta.get("sky_level", np.nan)),
        "sky_noise": sky_noise,
        "five_sigma_depth": float(zp - 2.5 * np.log10(5.0 * sky_noise * np.sqrt(neff))),
        "astrom_rms_mas": astrometry.rms_mas,
        "astrom_bright_rms_mas": astrometry.bright_rms_mas,
        "astrom_n_matches": astrometry.n_matches,
        "astrom_sip_degree": astrometry.sip_degree,
        "pointing_offset_arcsec": list(astrometry.offset_arcsec),
        "rotation_offset_deg": astrometry.rotation_deg,
        "n_sources": int(n_sources),
        "n_cosmic_ray_pixels": int(n_cosmic_ray_pixels),
        "n_saturated_pixels": int(n_saturated_pixels),
    }
