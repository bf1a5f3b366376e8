"""The calibrated single-visit source catalog (``src``), in LSST column names.

Positions in degrees (ICRS) from the fitted WCS, fluxes in nJy from the photometric
calibration (PSF fluxes aperture-corrected to total), instrumental values kept alongside.
Source ids are deterministic 64-bit integers: ``visit * 10^7 + index``.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS

from twinkles.image import PhotoCalib

__all__ = ["SOURCE_ID_STRIDE", "calibrated_source_catalog"]

SOURCE_ID_STRIDE = 10_000_000


def calibrated_source_catalog(
    catalog: Table,
    wcs: WCS,
    photo_calib: PhotoCalib,
    visit: int,
    correction_uncertainty: float = 0.0,
) -> Table:
    """Add sky positions and nJy fluxes to a measured catalog; returns the ``src`` table.

    ``correction_uncertainty`` (fractional: the aperture correction's over the sensor, common
    to the visit's sources but not to other visits) is added in quadrature to the PSF-flux
    errors.
    """
    n = len(catalog)
    if n >= SOURCE_ID_STRIDE:
        raise ValueError(f"visit {visit}: {n} sources exceed the id space of a visit")
    src = Table()
    src["id"] = np.int64(visit) * SOURCE_ID_STRIDE + np.arange(n, dtype=np.int64)
    src["visit"] = np.full(n, visit, dtype=np.int64)
    ra, dec = wcs.all_pix2world(np.asarray(catalog["x"]), np.asarray(catalog["y"]), 0)
    src["coord_ra"], src["coord_dec"] = ra % 360.0, dec
    src["x"], src["y"] = catalog["x"], catalog["y"]
    corr_flux = np.asarray(catalog["psfInstFluxCorr"])
    corr_err = np.hypot(
        np.asarray(catalog["psfInstFluxCorrErr"]), correction_uncertainty * corr_flux
    )
    src["psfFlux"] = photo_calib.to_njy(corr_flux)
    src["psfFluxErr"] = photo_calib.to_njy_err(corr_flux, corr_err)
    src["psfInstFlux"], src["psfInstFluxErr"] = catalog["psfInstFlux"], catalog["psfInstFluxErr"]
    src["psfApCorr"] = catalog["psfApCorr"]
    for name in catalog.colnames:
        if name.startswith("apFlux_") and name.endswith("_instFlux"):
            stem = name.removesuffix("_instFlux")
            inst, inst_err = np.asarray(catalog[name]), np.asarray(catalog[f"{stem}_instFluxErr"])
            src[stem] = photo_calib.to_njy(inst)
            src[f"{stem}Err"] = photo_calib.to_njy_err(inst, inst_err)
            src[f"{stem}_flag"] = catalog[f"{stem}_flag"]
    for name in ("ixx", "iyy", "ixy", "flux_radius", "extendedness", "concentration"):
        src[name] = catalog[name]
    for name in catalog.colnames:
        if name.startswith("flag_"):
            src[name] = catalog[name]
    for col in ("coord_ra", "coord_dec"):
        src[col].unit = "deg"
    for col in src.colnames:
        if col.startswith(("psfFlux", "apFlux_")) and not col.endswith("_flag"):
            src[col].unit = "nJy"
    return src
