"""Single-visit source measurement: the ``src`` catalog's columns, in electrons.

For every detection:

* centroid: the windowed centroid from detection (``x``, ``y``; 0-based pixels);
* PSF flux and error (:func:`~twinkles.measurement.psf_flux.psf_flux`);
* circular aperture fluxes at the Twinkles radii (3, 4.5, 6, 9, 12, 17, 25, 35, 50, 70 pixels),
  with pixel overlap sub-sampled 5x5, all radii in one pass
  (:func:`~twinkles.measurement.aperture.sum_circles`, sep's sums); pixels of *other* detections
  (their segmentation footprints, deblended children included) are replaced by the mean of the
  aperture's other pixels, so a large aperture measures the source and not its neighbours (as
  LSST measures each source with its neighbours replaced by noise). Masked (bad, saturated)
  pixels are replaced the same way and flagged;
* second moments ``ixx``, ``iyy``, ``ixy`` (pixels^2, isophotal);
* flags: ``flag_saturated`` (a saturated pixel within ``core_radius``), ``flag_interpolated``
  and ``flag_cr`` (interpolated or cosmic-ray pixels within it), ``flag_edge`` (the PSF stamp
  leaves the sensor), ``flag_blended`` (deblended), ``flag_bad`` (no usable PSF flux).

Aperture correction and extendedness follow in :mod:`twinkles.measurement.apcorr`, the
calibration to nJy in :mod:`twinkles.calibration`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from pydantic import Field

from twinkles.image import BAD_PLANES, Exposure, MaskPlane
from twinkles.measurement.aperture import sum_circles
from twinkles.measurement.psf_flux import psf_flux
from twinkles.psf.determine import cut_stamps
from twinkles.section import Section

__all__ = [
    "TWINKLES_APERTURES",
    "MeasurementConfig",
    "MeasurementResult",
    "MeasurementTask",
    "aperture_name",
]

#: Aperture radii of Twinkles' processEimage (pixels).
TWINKLES_APERTURES = [3.0, 4.5, 6.0, 9.0, 12.0, 17.0, 25.0, 35.0, 50.0, 70.0]


def aperture_name(radius: float) -> str:
    """Column stem of an aperture, after the LSST names: 4.5 -> ``apFlux_4_5``."""
    return "apFlux_" + f"{radius:g}".replace(".", "_")


class MeasurementConfig(Section):
    """Source measurement."""

    aperture_radii: list[float] = Field(
        default_factory=lambda: list(TWINKLES_APERTURES),
        description="Circular aperture radii (pixels).",
    )
    core_radius: int = Field(
        2, ge=0, le=10, description="Half-size of the core checked for flags (pixels)."
    )
    max_masked_psf: float = Field(
        0.5, gt=0, le=1, description="Masked PSF fraction beyond which the PSF flux is flagged."
    )


@dataclass
class MeasurementResult:
    """The measured catalog (electrons, pixels)."""

    catalog: Table


class MeasurementTask:
    """Measure every detection on an exposure with a PSF."""

    def __init__(self, config: MeasurementConfig | None = None):
        self.config = config or MeasurementConfig()

    def run(
        self, exposure: Exposure, detections: Table, segmentation: np.ndarray | None = None
    ) -> MeasurementResult:
        """Measure every detection with the exposure's PSF.

        Parameters
        ----------
        exposure : Exposure
            Background-subtracted image (electrons) with PSF, variance and mask.
        detections : `~astropy.table.Table`
            From :class:`~twinkles.detection.DetectionTask`: positions (pixels), second
            moments, ``flux_radius`` and the blend and centroid flags.
        segmentation : array, optional
            Detection segmentation image: neighbours' pixels are kept out of each fit.

        Returns
        -------
        MeasurementResult
            The catalog: positions and moments (pixels), PSF fluxes and errors (electrons),
            the masked fraction of each PSF and the ``flag_*`` columns.
        """
        cfg = self.config
        x = np.asarray(detections["x"], dtype=float)
        y = np.asarray(detections["y"], dtype=float)
        cat = Table()
        cat["x"], cat["y"] = x, y
        flux, err, masked = psf_flux(exposure, x, y)
        cat["psfInstFlux"], cat["psfInstFluxErr"] = flux, err
        cat["psfMaskedFraction"] = masked
        bad = exposure.masked(BAD_PLANES | MaskPlane.SAT)
        seg = {}
        if segmentation is not None:
            seg = dict(segmentation=segmentation, seg_ids=np.arange(1, len(x) + 1))
        apertures = sum_circles(
            exposure.image, x, y, cfg.aperture_radii, variance=exposure.variance, bad=bad, **seg
        )
        for k, radius in enumerate(cfg.aperture_radii):
            name = aperture_name(radius)
            cat[f"{name}_instFlux"] = apertures.flux[:, k]
            cat[f"{name}_instFluxErr"] = apertures.flux_err[:, k]
            # neighbours' pixels are replaced, not flagged: the flag is for bad pixels
            cat[f"{name}_flag"] = apertures.truncated[:, k] | apertures.has_bad[:, k]
        cat["ixx"], cat["iyy"], cat["ixy"] = detections["x2"], detections["y2"], detections["xy"]
        cat["flux_radius"] = detections["flux_radius"]
        ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
        core, _ = cut_stamps(exposure.mask, ix, iy, cfg.core_radius, fill=int(MaskPlane.NO_DATA))

        def any_in_core(plane: MaskPlane) -> np.ndarray:
            return np.any((core & int(plane)) != 0, axis=(1, 2))

        half = exposure.psf.half
        h, w = exposure.shape
        cat["flag_saturated"] = any_in_core(MaskPlane.SAT)
        cat["flag_interpolated"] = any_in_core(MaskPlane.INTRP)
        cat["flag_cr"] = any_in_core(MaskPlane.CR)
        cat["flag_edge"] = (ix < half) | (iy < half) | (ix >= w - half) | (iy >= h - half)
        cat["flag_blended"] = detections["flag_blended"]
        cat["flag_centroid"] = detections["flag_centroid"]
        cat["flag_bad"] = ~np.isfinite(flux) | (masked > cfg.max_masked_psf)
        return MeasurementResult(cat)
