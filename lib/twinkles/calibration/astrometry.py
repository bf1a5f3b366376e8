"""Astrometric calibration against the reference catalog.

The header WCS of an eimage is the *nominal* one: its pointing may be off by several arcsec
and its rotation by a fraction of a degree, and it knows nothing of the optical distortion.

1. **Coarse solution.** The reference stars are placed on the sensor with the nominal WCS and
   rotated about the sensor centre by each angle of a grid (``max_rotation_deg`` in steps of
   ``rotation_step_deg``); for each angle every source-reference offset shorter than
   ``max_offset_arcsec`` goes into a 2-d histogram, whose peak is the pointing error. The
   angle with the tallest peak wins. (Voting on offsets is immune to the sources that have no
   reference and to the references that were not detected.) The peak must stand out of the
   chance coincidences, ``min_significance`` Poisson sigma above the mean count per bin;
   otherwise no solution is claimed (a wrong one would pass for a calibration).
2. **Fit.** Sources and references matched within 3 pixels of the coarse solution give a first
   TAN fit; then, ``iterations`` times, all references are matched to the sources within
   ``match_radius_arcsec`` and a TAN-SIP WCS of degree ``sip_degree`` is fitted
   (:func:`~twinkles.calibration.wcs_fit.fit_tan_sip`), each match weighted by its position
   error (:class:`~twinkles.calibration.match_errors.PositionErrorModel`, fitted to the
   offsets of a first, unweighted fit) and clipped beyond ``clip_sigma`` times the rms of
   offset over error. The degree is lowered when matches are scarce, and then to the one
   that predicts held-out matches best
   (:func:`~twinkles.calibration.wcs_fit.cross_validated_degree`, with the same weights):
   distortion terms that the sky does not have follow the centroids' noise.
3. **Report**: the rms of the matches (mas), for all and for bright (S/N > 50) stars; every
   source of the catalog gets its sky position (``coord_ra``, ``coord_dec``).

Too few matches raises :class:`AstrometryError`, naming the visit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from astropy.wcs import WCS
from pydantic import Field
from scipy.spatial import cKDTree

from twinkles.calibration.match_errors import PositionErrorModel
from twinkles.calibration.matching import match_nearest
from twinkles.calibration.wcs_fit import cross_validated_degree, fit_tan_sip
from twinkles.errors import TwinklesError
from twinkles.section import Section

__all__ = [
    "AstrometryConfig",
    "AstrometryError",
    "AstrometryFit",
    "AstrometryPairs",
    "AstrometryResult",
    "AstrometryTask",
]


class AstrometryError(TwinklesError):
    """The exposure could not be matched to the reference catalog."""


class AstrometryConfig(Section):
    """Astrometric calibration."""

    max_offset_arcsec: float = Field(15.0, gt=0, description="Largest pointing error searched.")
    max_rotation_deg: float = Field(0.6, ge=0, description="Largest rotation error searched.")
    rotation_step_deg: float = Field(0.1, gt=0, description="Rotation grid step (deg).")
    match_radius_arcsec: float = Field(1.0, gt=0, description="Final matching radius.")
    sip_degree: int = Field(
        3,
        ge=1,
        le=5,
        description="Highest polynomial degree of the WCS (lowered while there are fewer than "
        "three matches per coefficient).",
    )
    cross_validate_degree: bool = Field(
        True,
        description="Fit the degree up to sip_degree that predicts held-out matches best "
        "(cross_validated_degree): where the sky has no distortion for the higher terms to "
        "follow, they follow the centroids' noise, most of all at the sensor's corners.",
    )
    min_matches: int = Field(6, ge=3, description="Fewest matches (else AstrometryError).")
    min_significance: float = Field(
        8.0, gt=0, description="Offset-vote peak above chance coincidences (Poisson sigma)."
    )
    source_snr_min: float = Field(10.0, gt=0, description="Sources used (signal-to-noise).")
    max_sources: int = Field(600, ge=10, description="Brightest sources used for the search.")
    clip_sigma: float = Field(
        3.0, gt=0, description="Matches clipped beyond this many rms of their offsets / errors."
    )
    weight_matches: bool = Field(
        True,
        description="Weight each match by its position error, modelled from the offsets as "
        "a / SNR^2 + b plus the reference's own error (PositionErrorModel): faint centroids "
        "then neither decide the fit nor its cross-validated degree.",
    )
    min_position_error_mas: float = Field(
        2.0,
        gt=0,
        description="Smallest per-coordinate position error a match is given (centroid and "
        "reference together): bounds the weights of the brightest stars.",
    )
    iterations: int = Field(3, ge=1, le=10, description="Match-fit-clip passes.")


@dataclass
class AstrometryPairs:
    """What the astrometry matches (:meth:`AstrometryTask.pairs`)."""

    x: np.ndarray
    y: np.ndarray
    """Every source's position (pixels)."""
    bright: np.ndarray
    """Rows of the brightest clean sources, the coarse solution's."""
    references: Table
    """Reference stars (unresolved) near the sensor."""
    ref_x: np.ndarray
    ref_y: np.ndarray
    """Their positions under the nominal WCS (pixels)."""
    pixel_scale: float
    """Arcsec per pixel of the nominal WCS."""


@dataclass
class AstrometryFit:
    """The refined solution and its matches (:meth:`AstrometryTask.refine`)."""

    wcs: WCS
    src: np.ndarray
    ref: np.ndarray
    """The matches: rows of the catalog and of the on-sensor references."""
    used: np.ndarray
    """The matches kept after clipping."""
    degree: int
    """The SIP degree fitted."""
    dra_mas: np.ndarray
    ddec_mas: np.ndarray
    """Each match's residual under ``wcs`` (mas)."""


@dataclass
class AstrometryResult:
    """The fitted WCS and the matches behind it."""

    wcs: WCS
    matches: Table
    rms_mas: float
    bright_rms_mas: float
    offset_arcsec: tuple[float, float]
    rotation_deg: float
    sip_degree: int
    """Polynomial degree of the fit: ``sip_degree`` of the config, lowered while there are
    fewer than three matches per coefficient, then to the cross-validated one (1 means a
    plain TAN WCS)."""

    @property
    def n_matches(self) -> int:
        """Number of matches used in the final fit."""
        return int(np.sum(self.matches["used"]))


def _good_sources(catalog: Table, snr_min: float) -> np.ndarray:
    flux, err = np.asarray(catalog["psfInstFlux"]), np.asarray(catalog["psfInstFluxErr"])
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = flux / err
    bad = np.zeros(len(catalog), dtype=bool)
    for flag in ("flag_saturated", "flag_edge", "flag_bad", "flag_cr", "flag_centroid"):
        bad |= np.asarray(catalog[flag])
    return np.flatnonzero((snr > snr_min) & ~bad)


class AstrometryTask:
    """Fit the WCS of an exposure to the reference catalog (see the module docstring)."""

    def __init__(self, config: AstrometryConfig | None = None):
        self.config = config or AstrometryConfig()

    def coarse(
        self,
        sx: np.ndarray,
        sy: np.ndarray,
        rx: np.ndarray,
        ry: np.ndarray,
        centre: tuple[float, float],
        pixel_scale: float,
    ) -> tuple[float, float, float, float]:
        """(rotation_deg, dx, dy, significance): the rotation and shift taking references to
        sources, and how far its vote stands above chance (Poisson sigma)."""
        cfg = self.config
        radius = cfg.max_offset_arcsec / pixel_scale
        tree = cKDTree(np.column_stack([sx, sy]))
        bins = np.arange(-radius, radius + 2.0, 2.0)
        best = (0.0, 0.0, 0.0, -1)
        n_steps = round(cfg.max_rotation_deg / cfg.rotation_step_deg)
        for k in range(-n_steps, n_steps + 1):
            angle = np.deg2rad(k * cfg.rotation_step_deg)
            c, s = np.cos(angle), np.sin(angle)
            qx = centre[0] + c * (rx - centre[0]) - s * (ry - centre[1])
            qy = centre[1] + s * (rx - centre[0]) + c * (ry - centre[1])
            near = tree.query_ball_point(np.column_stack([qx, qy]), radius)
            pairs = [(i, j) for i, js in enumerate(near) for j in js]
            if not pairs:
                continue
            ref_i, src_j = np.array(pairs).T
            dx, dy = sx[src_j] - qx[ref_i], sy[src_j] - qy[ref_i]
            hist, ex, ey = np.histogram2d(dx, dy, bins=[bins, bins])
            peak = np.unravel_index(np.argmax(hist), hist.shape)
            chance = max(len(dx) / hist.size, 1.0)
            significance = (hist[peak] - chance) / np.sqrt(chance)
            if significance > best[3]:
                cx, cy = (
                    0.5 * (ex[peak[0]] + ex[peak[0] + 1]),
                    0.5 * (ey[peak[1]] + ey[peak[1] + 1]),
                )
                near_peak = np.hypot(dx - cx, dy - cy) < 3.0
                best = (
                    k * cfg.rotation_step_deg,
                    float(np.mean(dx[near_peak])),
                    float(np.mean(dy[near_peak])),
                    float(significance),
                )
        return best

    def run(
        self,
        catalog: Table,
        refcat: Table,
        wcs: WCS,
        shape: tuple[int, int],
        visit: int | None = None,
    ) -> AstrometryResult:
        """Fit the WCS of one exposure to the reference stars.

        Parameters
        ----------
        catalog : `~astropy.table.Table`
            The exposure's sources, with ``x``, ``y`` (pixels) and ``psfInstFlux``.
        refcat : `~astropy.table.Table`
            Reference objects with ``ra``, ``dec`` (deg) and ``resolved``; only point sources
            are matched.
        wcs : `~astropy.wcs.WCS`
            The pointing's nominal WCS, the starting guess.
        shape : tuple of int
            Image shape (height, width) in pixels.
        visit : int, optional
            Named in error messages.

        Returns
        -------
        AstrometryResult
            The fitted WCS, the matches (``used`` marks those kept after clipping), the rms of
            the used matches in mas, the coarse offset (arcsec) and rotation (deg) found.

        Raises
        ------
        AstrometryError
            Too few sources or references on the sensor, no significant coarse solution within
            ``max_offset_arcsec`` and ``max_rotation_deg``, or fewer than ``min_matches``
            matches.
        """
        visit = visit if visit is not None else "?"
        pairs = self.pairs(catalog, refcat, wcs, shape, visit)
        first, rotation, dx, dy = self.coarse_fit(pairs, wcs, shape, visit)
        refined = self.refine(catalog, pairs, first, wcs, shape, visit)
        fit, src, ref, used = refined.wcs, refined.src, refined.ref, refined.used
        dra, ddec = refined.dra_mas, refined.ddec_mas
        sx, sy, stars = pairs.x, pairs.y, pairs.references
        flux = np.asarray(catalog["psfInstFlux"])
        sep = np.hypot(dra, ddec)
        pixel_scale = pairs.pixel_scale
        snr = flux[src] / np.asarray(catalog["psfInstFluxErr"])[src]
        matches = Table(
            {
                "src_index": src,
                "ref_index": np.asarray(stars["id"])[ref],
                "x": sx[src],
                "y": sy[src],
                "dra_mas": dra,
                "ddec_mas": ddec,
                "snr": snr,
                "used": used,
            }
        )
        catalog["coord_ra"], catalog["coord_dec"] = fit.all_pix2world(sx, sy, 0)
        catalog["coord_ra"] = np.asarray(catalog["coord_ra"]) % 360.0
        bright_ok = used & (snr > 50)
        bright_rms = (
            float(np.sqrt(np.mean(sep[bright_ok] ** 2))) if bright_ok.any() else float("nan")
        )
        return AstrometryResult(
            wcs=fit,
            matches=matches,
            rms_mas=float(np.sqrt(np.mean(sep[used] ** 2))),
            bright_rms_mas=bright_rms,
            offset_arcsec=(dx * pixel_scale, dy * pixel_scale),
            rotation_deg=rotation,
            sip_degree=refined.degree,
        )

    def pairs(
        self, catalog: Table, refcat: Table, wcs: WCS, shape: tuple[int, int], visit: object
    ) -> AstrometryPairs:
        """Sub-step 1: the bright, clean sources and the reference stars the nominal WCS puts
        on the sensor (or within the largest pointing error of it).

        Raises
        ------
        AstrometryError
            Fewer than ``min_matches`` of either.
        """
        cfg = self.config
        h, w = shape
        good = _good_sources(catalog, cfg.source_snr_min)
        flux = np.asarray(catalog["psfInstFlux"])
        bright = good[np.argsort(-flux[good])][: cfg.max_sources]
        sx, sy = np.asarray(catalog["x"], float), np.asarray(catalog["y"], float)
        stars = refcat[~np.asarray(refcat["resolved"])]
        rx, ry = wcs.all_world2pix(np.asarray(stars["ra"]), np.asarray(stars["dec"]), 0)
        pixel_scale = float(np.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix)))) * 3600.0
        margin = cfg.max_offset_arcsec / pixel_scale + 0.01 * max(h, w)
        inside = (rx > -margin) & (rx < w + margin) & (ry > -margin) & (ry < h + margin)
        stars, rx, ry = stars[inside], rx[inside], ry[inside]
        if len(bright) < cfg.min_matches or len(stars) < cfg.min_matches:
            raise AstrometryError(
                f"visit {visit}: {len(bright)} usable sources and {len(stars)} reference stars "
                f"on the sensor; need {cfg.min_matches} of each"
            )
        return AstrometryPairs(sx, sy, bright, stars, rx, ry, pixel_scale)

    def coarse_fit(
        self, pairs: AstrometryPairs, wcs: WCS, shape: tuple[int, int], visit: object
    ) -> tuple[WCS, float, float, float]:
        """Sub-step 2: the coarse solution (:meth:`coarse`), and a first TAN fit to the
        sources and references it matches within 3 pixels.

        Returns
        -------
        fit : WCS
            The first fit.
        rotation, dx, dy : float
            The coarse rotation (deg) and offset (pixels).

        Raises
        ------
        AstrometryError
            No significant coarse solution, or too few matches under it.
        """
        cfg = self.config
        h, w = shape
        bright, rx, ry = pairs.bright, pairs.ref_x, pairs.ref_y
        sx, sy = pairs.x[bright], pairs.y[bright]
        centre = (0.5 * (w - 1), 0.5 * (h - 1))
        rotation, dx, dy, significance = self.coarse(sx, sy, rx, ry, centre, pairs.pixel_scale)
        if significance < cfg.min_significance:
            raise AstrometryError(
                f'visit {visit}: no offset within {cfg.max_offset_arcsec}" and rotation within '
                f"{cfg.max_rotation_deg} deg matches the reference catalog (best vote "
                f"{significance:.1f} sigma above chance); is the pointing off by more?"
            )
        angle = np.deg2rad(rotation)
        qx = centre[0] + np.cos(angle) * (rx - centre[0]) - np.sin(angle) * (ry - centre[1]) + dx
        qy = centre[1] + np.sin(angle) * (rx - centre[0]) + np.cos(angle) * (ry - centre[1]) + dy
        i_src, i_ref, _ = match_nearest(sx, sy, qx, qy, 3.0)
        if len(i_src) < cfg.min_matches:
            raise AstrometryError(
                f"visit {visit}: only {len(i_src)} sources match the reference catalog (need "
                f'{cfg.min_matches}); is the pointing off by more than {cfg.max_offset_arcsec}"?'
            )
        crpix = tuple(float(c) for c in wcs.wcs.crpix)
        crval = tuple(float(c) for c in wcs.wcs.crval)
        src, stars = bright[i_src], pairs.references
        fit = fit_tan_sip(
            pairs.x[src],
            pairs.y[src],
            stars["ra"][i_ref],
            stars["dec"][i_ref],
            crpix,
            crval,
            1,
            shape,
        )
        return fit, rotation, dx, dy

    def refine(
        self,
        catalog: Table,
        pairs: AstrometryPairs,
        fit: WCS,
        wcs: WCS,
        shape: tuple[int, int],
        visit: object,
    ) -> AstrometryFit:
        """Sub-step 3: ``iterations`` times, every reference matched to the sources within
        ``match_radius_arcsec`` and a TAN-SIP WCS fitted, weighted by the matches' modelled
        errors (``weight_matches``) and clipping matches beyond ``clip_sigma`` times the rms
        of offset over error; the degree lowered while matches are scarce, then to the
        cross-validated one (``cross_validate_degree``).

        Returns
        -------
        AstrometryFit

        Raises
        ------
        AstrometryError
            Fewer than ``min_matches`` matches.
        """
        cfg = self.config
        sx, sy, stars = pairs.x, pairs.y, pairs.references
        crpix = tuple(float(c) for c in wcs.wcs.crpix)
        crval = tuple(float(c) for c in wcs.wcs.crval)
        all_good = _good_sources(catalog, min(cfg.source_snr_min, 5.0))
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = np.asarray(catalog["psfInstFlux"]) / np.asarray(catalog["psfInstFluxErr"])
        reference_var = (
            np.nan_to_num(np.asarray(stars["coord_err"], float)) ** 2
            if "coord_err" in stars.colnames
            else np.zeros(len(stars))
        )
        used = np.ones(0, dtype=bool)
        src = ref = np.zeros(0, dtype=int)
        dra = ddec = np.zeros(0)
        degree = cfg.sip_degree
        for _ in range(cfg.iterations):
            px, py = fit.all_world2pix(np.asarray(stars["ra"]), np.asarray(stars["dec"]), 0)
            i_src, i_ref, _ = match_nearest(
                sx[all_good], sy[all_good], px, py, cfg.match_radius_arcsec / pairs.pixel_scale
            )
            src, ref = all_good[i_src], i_ref
            if len(src) < cfg.min_matches:
                raise AstrometryError(
                    f'visit {visit}: only {len(src)} matches within {cfg.match_radius_arcsec}" '
                    f"(need {cfg.min_matches})"
                )
            degree = cfg.sip_degree
            while degree > 1 and len(src) < 3 * (degree + 1) * (degree + 2) // 2:
                degree -= 1
            matched = (sx[src], sy[src], stars[ref], snr[src], reference_var[ref])
            fit, used, dra, ddec, var = self._fit_clipped(*matched, crpix, crval, degree, shape)
            if cfg.cross_validate_degree and degree > 1:
                # on the matches the richest fit kept: the degree they can support
                chosen = cross_validated_degree(
                    sx[src][used],
                    sy[src][used],
                    stars["ra"][ref][used],
                    stars["dec"][ref][used],
                    crpix,
                    tuple(float(c) for c in fit.wcs.crval),
                    degree,
                    weights=1.0 / var[used] if var is not None else None,
                )
                if chosen < degree:
                    degree = chosen
                    fit, used, dra, ddec, var = self._fit_clipped(
                        *matched, crpix, crval, degree, shape
                    )
            crval = tuple(float(c) for c in fit.wcs.crval)
        return AstrometryFit(fit, src, ref, used, degree, dra, ddec)

    def _fit_clipped(
        self,
        x: np.ndarray,
        y: np.ndarray,
        refs: Table,
        snr: np.ndarray,
        reference_var: np.ndarray,
        crpix: tuple[float, float],
        crval: tuple[float, float],
        degree: int,
        shape: tuple[int, int],
    ) -> tuple[WCS, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """A TAN-SIP fit of ``degree`` to the matches, clipping those whose offset over its
        error is beyond ``clip_sigma`` times the rms (up to four fits): the WCS, the
        matches kept, every match's offset (mas) and, with ``weight_matches``, its variance
        per coordinate (mas^2; else None).

        The first fit is unweighted; the error model is fitted to its offsets and every
        later fit weighted by it."""
        cfg = self.config
        used = np.ones(len(x), dtype=bool)
        var = None
        passes = 4
        for attempt in range(passes):
            fit = fit_tan_sip(
                x[used],
                y[used],
                refs["ra"][used],
                refs["dec"][used],
                crpix,
                crval,
                degree,
                shape,
                weights=None if var is None else 1.0 / var[used],
            )
            dra, ddec = self._residuals_mas(fit, x, y, refs)
            offset_sq = (dra**2 + ddec**2) / 2.0
            weighted = var is not None
            if cfg.weight_matches and used.sum() > 2:
                var = PositionErrorModel.fit(
                    offset_sq[used], snr[used], reference_var[used], cfg.min_position_error_mas**2
                ).variance(snr, reference_var)
            chi = np.sqrt(offset_sq / var) if var is not None else np.sqrt(offset_sq)
            new_used = chi < cfg.clip_sigma * np.sqrt(np.mean(chi[used] ** 2))
            settled = np.array_equal(new_used, used) and (weighted or not cfg.weight_matches)
            if settled or new_used.sum() < cfg.min_matches or attempt == passes - 1:
                break
            used = new_used
        return fit, used, dra, ddec, var

    @staticmethod
    def _residuals_mas(
        wcs: WCS, x: np.ndarray, y: np.ndarray, refs: Table
    ) -> tuple[np.ndarray, np.ndarray]:
        ra, dec = wcs.all_pix2world(x, y, 0)
        cos_dec = np.cos(np.deg2rad(np.asarray(refs["dec"])))
        dra = ((ra - np.asarray(refs["ra"]) + 180.0) % 360.0 - 180.0) * cos_dec * 3.6e6
        ddec = (dec - np.asarray(refs["dec"])) * 3.6e6
        return dra, ddec
