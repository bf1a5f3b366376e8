"""Objects from the coadds: per-band detection, cross-band merge, multi-band measurement.

As LSST's multiband processing (detectCoaddSources, mergeCoaddDetections,
measureCoaddSources, mergeCoaddMeasurements):

1. each band's coadd is searched at ``threshold`` sigma, the matched filter normalised by
   the coadd's own variance plane (its depth varies over the patch), with sep's deblending;
2. the peaks are merged across bands in ``priority`` order (i, r, z, g, y, u): a band's peak
   becomes a new Object unless it lies within ``merge_radius`` of one already kept; an
   Object's position and shape come from its *reference band*, the first band that found it;
3. every Object is measured in every band at its merged position: PSF flux by forced
   photometry with the coadd PSF, close neighbours fitted together
   (:mod:`twinkles.measurement.forced`), and an aperture flux;
4. extendedness compares the reference band's aperture and PSF fluxes with the stars'
   (:func:`~twinkles.measurement.apcorr.concentration_extended`).

``parent`` groups the children of one blend: Objects whose detection footprints touch share
a positive blend number; an Object alone in its footprint has ``parent = 0``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from pydantic import Field
from scipy import ndimage
from scipy.spatial import cKDTree

from twinkles.detection.detect import DetectionConfig, DetectionTask
from twinkles.errors import TwinklesError
from twinkles.image import Exposure, MaskPlane
from twinkles.measurement.apcorr import concentration_extended
from twinkles.measurement.forced import ForcedPhotometryConfig, ForcedPhotometryTask
from twinkles.measurement.measure import aperture_name
from twinkles.section import Section
from twinkles.stats import stellar_locus

__all__ = ["ObjectConfig", "ObjectError", "ObjectResult", "ObjectTask"]


class ObjectError(TwinklesError):
    """No coadd to detect on."""


class ObjectConfig(Section):
    """Coadd detection, merging and measurement."""

    threshold: float = Field(5.0, gt=0, description="Detection threshold (sigma).")
    priority: list[str] = Field(
        default_factory=lambda: ["i", "r", "z", "g", "y", "u"],
        description="Band order of the merge; the first band to find an Object is its reference.",
    )
    merge_radius: float = Field(
        1.0, gt=0, description="Peaks closer than this (arcsec) are one Object."
    )
    peak_prominence: float = Field(
        5.0,
        ge=0,
        description="Peaks inside a detection that rise this many sigma above the saddle "
        "joining them to a higher peak are Objects too, where deblending did not split them "
        "(DetectionConfig.peak_prominence); 0: off.",
    )
    star_subtraction_snr: float = Field(
        50.0,
        ge=0,
        description="Point sources detected at this significance or more have their PSF model "
        "subtracted, and the residual's prominent peaks beside them are Objects too "
        "(DetectionConfig.star_subtraction_snr): a faint neighbour on a bright star's wing "
        "makes a shoulder, not a peak; 0: off.",
    )
    extendedness_radius: float = Field(
        12.0, gt=0, description="Aperture (pixels) of the concentration for extendedness."
    )
    extendedness_excess: float = Field(
        0.03, ge=0, description="Fractional concentration excess of an extended Object."
    )
    extendedness_sigma: float = Field(3.0, gt=0, description="Significance of that excess (sigma).")
    edge_n_image: int = Field(
        1, ge=0, description="Objects where fewer warps than this contributed are flagged edge."
    )
    inexact_psf_radius: int = Field(
        6,
        ge=1,
        description="A band's measurement of an Object is flagged <band>_flag_inexact_psf "
        "where the visits coadded change within this many pixels of it (a visit's edge): the "
        "coadd holds one PSF on each side, which no kernel is (LSST's inexact_psf).",
    )
    inexact_psf_fraction: float = Field(
        0.05,
        gt=0,
        le=1,
        description="The inexact-PSF flag needs the number of visits to change within the "
        "radius by at least this fraction of the most there: one edge among 200 visits moves "
        "the PSF by too little to count.",
    )


@dataclass
class ObjectResult:
    """The Object table and each band's detections (patch pixels)."""

    objects: Table
    detections: dict[str, Table]


def _band_order(bands: list[str], priority: list[str]) -> list[str]:
    return [b for b in priority if b in bands] + sorted(b for b in bands if b not in priority)


class ObjectTask:
    """Detect, merge and measure Objects on the coadds of one patch."""

    def __init__(self, config: ObjectConfig | None = None):
        self.config = config or ObjectConfig()

    def _inexact_psf(self, n_image: np.ndarray) -> np.ndarray:
        """Where the number of visits changes within ``inexact_psf_radius`` pixels by at
        least ``inexact_psf_fraction`` of the most there."""
        size = 2 * self.config.inexact_psf_radius + 1
        most = ndimage.maximum_filter(n_image, size=size, mode="nearest").astype(float)
        least = ndimage.minimum_filter(n_image, size=size, mode="nearest")
        return (most - least) >= self.config.inexact_psf_fraction * np.maximum(most, 1.0)

    def run(
        self,
        coadds: dict[str, Exposure],
        n_images: dict[str, np.ndarray] | None = None,
        ap_corr: dict[str, float | Callable[[np.ndarray, np.ndarray], np.ndarray]] | None = None,
        flux_systematic: dict[str, float | Callable[[np.ndarray, np.ndarray], np.ndarray]]
        | None = None,
    ) -> ObjectResult:
        """The Object table of the patch.

        Parameters
        ----------
        coadds : dict
            Band -> coadd (nJy, with PSF and WCS), all on the same patch.
        n_images : dict, optional
            Band -> n-image plane, for the edge and inexact-PSF flags.
        ap_corr : dict, optional
            Band -> aperture correction of coadd PSF fluxes: a number, or a function of the
            patch position such as :class:`~twinkles.coadd.apcorr.CoaddApertureCorrection`.
        flux_systematic : dict, optional
            Band -> fractional per-source systematic of coadd PSF fluxes, added to their
            errors in quadrature: a number, or a function of the patch position such as
            :meth:`~twinkles.coadd.apcorr.CoaddApertureCorrection.flux_systematic`.

        Returns
        -------
        ObjectResult
            The Object table (one row per merged detection, every band's measurements) and
            each band's detections (patch pixels).
        """
        cfg = self.config
        if not coadds:
            raise ObjectError("no coadd to detect Objects on: run make_coadd first")
        bands = _band_order(list(coadds), cfg.priority)
        first = coadds[bands[0]]
        pixel_scale = float(np.sqrt(abs(np.linalg.det(first.wcs.pixel_scale_matrix)))) * 3600
        detect = DetectionTask(
            DetectionConfig(
                threshold=cfg.threshold,
                variance_map=True,
                sky_normalise=True,
                peak_prominence=cfg.peak_prominence,
                star_subtraction_snr=cfg.star_subtraction_snr,
            )
        )
        detections: dict[str, Table] = {}
        footprints = np.zeros(first.shape, dtype=bool)
        for band in bands:
            exposure = coadds[band].copy()
            found = detect.run(exposure)
            detections[band] = found.sources
            # the filtered noise relative to the variance plane's (warping correlates it)
            detections[band].meta["sky_noise"] = found.sky_noise
            footprints |= exposure.masked(MaskPlane.DETECTED)

        # merge in priority order
        x = np.zeros(0)
        y = np.zeros(0)
        ref_band: list[str] = []
        ref_row: list[int] = []
        found_in: list[set[str]] = []
        radius = cfg.merge_radius / pixel_scale
        for band in bands:
            det = detections[band]
            dx, dy = np.asarray(det["x"], dtype=float), np.asarray(det["y"], dtype=float)
            if len(x):
                dist, nearest = cKDTree(np.column_stack([x, y])).query(
                    np.column_stack([dx, dy]), distance_upper_bound=radius
                )
            else:
                dist, nearest = np.full(len(dx), np.inf), np.zeros(len(dx), dtype=int)
            for i in np.flatnonzero(np.isfinite(dist)):
                found_in[nearest[i]].add(band)
            new = np.flatnonzero(~np.isfinite(dist))
            x, y = np.append(x, dx[new]), np.append(y, dy[new])
            ref_band += [band] * len(new)
            ref_row += list(new)
            found_in += [{band} for _ in new]

        n = len(x)
        objects = Table()
        objects["objectId"] = np.arange(1, n + 1, dtype=np.int64)
        labels, _ = ndimage.label(footprints)
        ix = np.clip(np.rint(x).astype(int), 0, first.shape[1] - 1)
        iy = np.clip(np.rint(y).astype(int), 0, first.shape[0] - 1)
        blend = labels[iy, ix]
        members = np.bincount(blend, minlength=labels.max() + 1)
        objects["parent"] = np.where((blend > 0) & (members[blend] > 1), blend, 0).astype(np.int64)
        ra, dec = first.wcs.wcs_pix2world(x, y, 0)
        objects["ra"], objects["decl"] = ra % 360.0, dec
        objects["x"], objects["y"] = x, y
        objects["refBand"] = np.array(ref_band, dtype="U1") if n else np.zeros(0, dtype="U1")
        objects["detectBands"] = np.array(
            ["".join(b for b in bands if b in s) for s in found_in], dtype="U8"
        )
        for name in ("x2", "y2", "xy"):
            col = np.full(n, np.nan)
            for band in bands:
                rows = np.flatnonzero(objects["refBand"] == band)
                col[rows] = np.asarray(detections[band][name])[np.asarray(ref_row)[rows]]
            objects[{"x2": "ixx", "y2": "iyy", "xy": "ixy"}[name]] = col

        forced = ForcedPhotometryTask(
            ForcedPhotometryConfig(aperture_radii=[cfg.extendedness_radius])
        )
        ap = aperture_name(cfg.extendedness_radius)
        conc = np.full(n, np.nan)
        conc_err = np.full(n, np.nan)
        ref_snr = np.full(n, np.nan)
        flag_edge = np.zeros(n, dtype=bool)
        for band in bands:
            result = forced.run(
                coadds[band],
                ra,
                dec,
                ap_corr=(ap_corr or {}).get(band, 1.0),
                flux_systematic=(flux_systematic or {}).get(band, 0.0),
            )
            cat = result.catalog
            objects[f"{band}_psFlux"] = cat["psFlux"]
            objects[f"{band}_psFluxErr"] = cat["psFluxErr"]
            objects[f"{band}_apFlux"] = cat[ap]
            objects[f"{band}_apFluxErr"] = cat[f"{ap}Err"]
            objects[f"{band}_flag_bad"] = cat["flag_bad"]
            inexact = np.zeros(n, dtype=bool)
            if n_images is not None and band in n_images:
                flag_edge |= n_images[band][iy, ix] < cfg.edge_n_image
                inexact = self._inexact_psf(n_images[band])[iy, ix]
            objects[f"{band}_flag_inexact_psf"] = inexact
            is_ref = objects["refBand"] == band
            with np.errstate(invalid="ignore", divide="ignore"):
                psf_flux = np.asarray(cat["psFlux"])
                c = np.asarray(cat[ap]) / psf_flux
                ce = np.abs(c) * np.hypot(
                    np.asarray(cat[f"{ap}Err"]) / np.asarray(cat[ap]),
                    np.asarray(cat["psFluxErr"]) / psf_flux,
                )
                ref_snr[is_ref] = (psf_flux / np.asarray(cat["psFluxErr"]))[is_ref]
            conc[is_ref], conc_err[is_ref] = c[is_ref], ce[is_ref]
        bright = np.isfinite(conc) & (ref_snr > 30)
        star_conc = stellar_locus(conc[bright], 0.02) if bright.sum() >= 3 else np.nan
        if not np.isfinite(star_conc):
            star_conc = 1.0
        extended = concentration_extended(
            conc, conc_err, star_conc, cfg.extendedness_excess, cfg.extendedness_sigma
        )
        objects["concentration"] = conc
        objects["extendedness"] = np.where(np.isfinite(conc), extended.astype(float), np.nan)
        objects["flag_blended"] = objects["parent"] > 0
        objects["flag_edge"] = flag_edge
        objects.meta["star_concentration"] = float(star_conc)
        return ObjectResult(objects, detections)
