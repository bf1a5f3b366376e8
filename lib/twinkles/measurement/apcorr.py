"""Aperture correction of PSF fluxes, and extendedness.

The PSF model is a 25-pixel kernel normalised to unit sum, so a PSF flux counts the light inside
the kernel; in poor seeing a few percent of a star's light falls outside. The aperture
correction brings PSF fluxes to total fluxes along a curve of growth (Stetson 1990, PASP 102,
932), each step a map over the sensor fitted to the PSF stars
(:func:`~twinkles.measurement.sensor_map.fit_sensor_map`: a constant, a gradient, a gradient
and a radial term, as the stars demand):

1. ``inner`` aperture (6 pixels, 1.2") over PSF flux: how the PSF model's normalisation
   errs over the sensor; its 6-pixel aperture has a quarter of a 12-pixel one's sky noise.
   The two fluxes weigh the same pixels, so each ratio's error counts their covariance
   (:func:`~twinkles.measurement.psf_flux.psf_aperture_covariance`): added in quadrature,
   as for independent fluxes, the errors came out ~1.5 times the ratios' scatter, and the
   choice of map (by BIC on those errors) kept too few terms to follow the PSF model's
   error of second order along a strong gradient of width;
2. ``middle`` (12 pixels) over ``inner``, and ``radius`` (25 pixels, taken as the total)
   over ``middle``: the growth. It must follow the PSF: where the PSF is broader, less of a
   star's light falls inside ``inner`` and more must be added back. A single sensor-wide
   growth (what this module once did) turned a PSF whose width changes by 9% across the
   sensor into a ramp of calibrated fluxes of up to 3.7%; a growth map straight from 6 to
   25 pixels instead followed the noise of crowded 25-pixel apertures (neighbours scatter
   their ratios by several percent) into ramps of 20 mmag. Most of the change with the
   PSF's width lies within 12 pixels, where apertures are four times less crowded and
   noisy; the 12 to 25 pixel step keeps the wings of broad-winged profiles.

Every step changes with the PSF's width, but a few dozen stars' 12- and 25-pixel apertures
are too noisy to show by how much (a 12% change of width moves the 12 to 25 pixel growth of
a Moffat by under 1%, under the noise of 25 stars). So the PSF's width is mapped first, as a
core concentration (``core`` over ``inner`` aperture flux, which changes several times as
much and is measured within 6 pixels): the stars', or where they were too few for a
per-pixel PSF model the mode model's own (:meth:`ApertureCorrectionTask._psf_width_map`; it
is fitted to every pixel of their stamps). The first step may follow that map (the ``template``
model). A growth step follows it with the slope that the stars' mean curve of growth
predicts for a profile that keeps its shape as its width changes
(:meth:`ApertureCorrectionTask._growth_rates`; the ``scaled`` model, one number as a
constant); a richer map (``growth_map_model``) replaces it where the stars demand one, but
not in the last step (``outer_map_model``): there a slope of its own, fitted to crowded
25-pixel apertures whose neighbours' light the stars' errors do not carry, puts ramps into
single visits of crowded scenes, while inside 12 pixels the stars' second-order change of
growth under a strong change of width is real.

Where the width changes strongly along a gradient, a per-pixel PSF model linear in position
errs by the square of the change (a PSF's pixels are not linear in its width): stars at both
ends of the gradient read bright. A radial term, the same in every direction, cannot follow
that, so the first step may also take the square of the width map's change beside a gradient
(``map_follows_curvature``; the ``linear_curved`` model, chosen by BIC like every term). A
model linear in the radial term errs alike where the width grows radially, by a fourth power
of the radius: the square beside the radial term (``radial_curved``). Either fit then holds
the curvature of the inner aperture's share of the light too, which the growth gives back:
the ``scaled`` steps then follow the width map to second order, both orders predicted from
the stars' curve of growth.

Apertures leave out the footprints of other detections, and each star's sky comes from an
annulus (``annulus``): the clipped mean of its pixels outside any footprint. The mean keeps the
light of undetected faint galaxies, which lifts the sky in the aperture alike (0.5 e- per pixel
over 2000 pixels is a few percent of a 10^5 e- star); the clipping drops neighbours' wings.
Those galaxies differ from one annulus to the next, so the stars' local skies scatter beyond
their pixels' noise (by about half of it again on a run1 sensor; the background model's
residuals may add to it): that scatter is taken as part of each sky's error
(:func:`sky_scatter`). Left out, it came back as the first step's scatter beyond
the errors, a per-source systematic relative to the flux, which overstated the brightest
stars' errors.

Every PSF flux is multiplied by the correction, so corrected PSF fluxes are total fluxes, and
so are the calibrated ones. The stars' ratios also measure how well the PSF model fits a
star: their scatter beyond their statistical errors
(:func:`~twinkles.measurement.sensor_map.error_floor`) is a per-source
systematic of PSF fluxes (the model's imperfections), added in quadrature to every
corrected PSF flux error. The correction's own uncertainty is common to a visit's sources (the
zero point absorbs its constant part), so it is left out of the errors the calibration weighs
its stars with, and added to the calibrated fluxes' errors (``src``, forced photometry:
:attr:`ApertureCorrectionResult.flux_systematic`), where it changes from visit to visit, so
that the errors of bright stars are honest.

Twinkles failed visits with "Only 1 sources for calculation of aperture correction"; here too
few stars raise :class:`ApertureCorrectionError`, naming the visit.

Extendedness: a point source has the stars' concentration ``c = apFlux(r) / psfFlux``; a
galaxy is more extended. A source is extended (1) when its ``c`` exceeds the stars' (a map
over the sensor, fitted as the correction's steps are) by more than ``extendedness_excess``
and by ``extendedness_sigma`` times its uncertainty, else 0 (after the concentration
criterion of SDSS and LSST's extendedness).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Literal

import numpy as np
from astropy.table import Table
from pydantic import Field, model_validator
from scipy.spatial import cKDTree

from twinkles.errors import TwinklesError
from twinkles.image import Exposure
from twinkles.image.psf import PixelPSF
from twinkles.measurement.aperture import sum_circles
from twinkles.measurement.measure import aperture_name
from twinkles.measurement.psf_flux import psf_aperture_covariance
from twinkles.measurement.sensor_map import (
    CURVED_MODELS,
    SensorMap,
    SensorMapFit,
    fit_sensor_map,
    map_terms,
)
from twinkles.section import Section
from twinkles.stats import mad_std

__all__ = [
    "ApertureCorrectionConfig",
    "ApertureCorrectionError",
    "ApertureCorrectionMap",
    "ApertureCorrectionResult",
    "ApertureCorrectionTask",
    "StarApertures",
    "local_aperture_flux",
    "nested_ratio_error",
    "ratio_error",
    "sky_scatter",
]


class ApertureCorrectionError(TwinklesError):
    """Too few stars to measure the aperture correction."""


class ApertureCorrectionConfig(Section):
    """Aperture correction and extendedness."""

    core: float = Field(
        3.0,
        gt=0,
        description="Aperture of the stars' core concentration (core over inner flux), the "
        "measure of the PSF's width over the sensor that every step may follow (pixels).",
    )
    inner: float = Field(6.0, gt=0, description="Aperture of the first step (pixels).")
    middle: float = Field(
        12.0, ge=0, description="Intermediate aperture of the growth (pixels; 0: none)."
    )
    radius: float = Field(25.0, gt=0, description="Aperture taken as the total flux (pixels).")
    annulus: tuple[float, float] = Field(
        (30.0, 45.0), description="Inner and outer radius of the local-sky annulus (pixels)."
    )
    map_model: Literal["constant", "linear", "linear_radial", "quadratic"] = Field(
        "linear_radial",
        description="Richest map over the sensor tried for the first step (chosen by BIC).",
    )
    width_map_model: Literal["constant", "linear", "linear_radial", "quadratic"] = Field(
        "quadratic",
        description="Richest map tried for the stars' core concentration, the PSF-width map "
        "the steps may follow (chosen by BIC): a quadratic follows the curvature that a "
        "concentration, not linear in the width, has along a gradient of the width.",
    )
    map_follows_curvature: bool = Field(
        True,
        description="Whether the first step may take the square of the PSF-width map's change "
        "beside a gradient or a radial term (the linear_curved and radial_curved models, "
        "chosen by BIC): a PSF model linear in position errs by the square of a change of "
        "width.",
    )
    growth_map_model: Literal["constant", "linear", "linear_radial", "quadratic"] = Field(
        "linear_radial",
        description="Richest map tried for a growth step inside the total aperture, beside "
        "the one its curve of growth predicts (the scaled model) and the template model.",
    )
    outer_map_model: Literal["constant", "linear", "linear_radial", "quadratic"] = Field(
        "constant",
        description="The same for the last step, to the total aperture; 'constant': the "
        "scaled model alone, as a few dozen stars' crowded 25-pixel apertures cannot "
        "measure more.",
    )
    min_stars: int = Field(4, ge=1, description="Fewest stars (else ApertureCorrectionError).")
    min_stars_systematic: int = Field(
        20, ge=2, description="Fewest stars that measure a per-source systematic (else 0)."
    )
    clip_sigma: float = Field(3.0, gt=0, description="Clipping of outlying stars (sigma).")
    extendedness_radius: float = Field(
        12.0, gt=0, description="Aperture of the concentration (pixels)."
    )
    extendedness_excess: float = Field(
        0.03, ge=0, description="Fractional concentration excess of an extended source."
    )
    extendedness_sigma: float = Field(3.0, gt=0, description="Significance of that excess (sigma).")

    @property
    def radii(self) -> list[float]:
        """Every aperture of the curve of growth, from the core out (pixels)."""
        return [self.core, self.inner] + ([self.middle] if self.middle > 0 else []) + [self.radius]

    @model_validator(mode="after")
    def _apertures_grow(self) -> ApertureCorrectionConfig:
        if any(b <= a for a, b in pairwise(self.radii)):
            raise ValueError(
                f"apertures must grow: core {self.core:g} < inner {self.inner:g} < middle "
                f"{self.middle:g} (or 0) < radius {self.radius:g} pixels"
            )
        return self


_LEGACY_MODELS = {(0, False): "constant", (1, False): "linear", (1, True): "linear_radial"}


def _legacy_map(coefficients: list, degree: int, radial: bool) -> SensorMap:
    """A map written by an older twinkles (a polynomial of ``degree``, maybe a radial term)."""
    model = _LEGACY_MODELS.get((int(degree), bool(radial) and int(degree) == 1), "quadratic")
    return SensorMap.from_dict({"model": model, "coefficients": coefficients})


@dataclass
class ApertureCorrectionMap:
    """The aperture correction at any sensor position: the product of its steps' maps.

    Stored in the visit summary (:meth:`to_dict`) so that forced photometry corrects each
    position with the correction there: the PSF model's normalisation errs differently over
    the sensor, and the PSF's width, hence the light beyond each aperture, changes over it.
    """

    x0: float
    y0: float
    scale: float
    steps: list[SensorMap]
    """Inner aperture over PSF flux, then each growth step."""
    width: SensorMap | None = None
    """The stars' core concentration over its median: the PSF's width over the sensor, which
    steps of the ``template`` model follow (``None``: a map written before it existed, whose
    template steps follow the step before)."""

    def _normalised(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        X = (np.atleast_1d(np.asarray(x, dtype=float)) - self.x0) / self.scale
        Y = (np.atleast_1d(np.asarray(y, dtype=float)) - self.y0) / self.scale
        return X, Y

    def inner(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Inner aperture over PSF flux at pixel positions (x, y), 0-based."""
        return self.steps[0](*self._normalised(x, y))

    def growth(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Total over inner aperture flux at pixel positions (x, y), 0-based."""
        X, Y = self._normalised(x, y)
        out = np.ones(len(X))
        for step in self.steps[1:]:
            out = out * step(X, Y)
        return out

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The multiplicative correction of PSF fluxes at pixel positions (x, y), 0-based."""
        return self.inner(x, y) * self.growth(x, y)

    def to_dict(self) -> dict:
        """JSON-able form."""
        out = {
            "x0": float(self.x0),
            "y0": float(self.y0),
            "scale": float(self.scale),
            "steps": [step.to_dict() for step in self.steps],
        }
        if self.width is not None:
            out["width"] = self.width.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict) -> ApertureCorrectionMap:
        """The map written by `to_dict` (also reads the single-growth maps of older versions)."""
        width = SensorMap.from_dict(data["width"]) if "width" in data else None
        if "steps" in data:
            steps: list[SensorMap] = []
            for step in data["steps"]:
                template = width if width is not None else (steps[-1] if steps else None)
                steps.append(SensorMap.from_dict(step, template))
        else:  # written by an older twinkles: an inner polynomial and one growth
            radial = bool(data.get("radial", False))
            steps = [_legacy_map(data["coefficients"], data["degree"], radial)]
            if "growth_coefficients" in data:
                steps.append(
                    _legacy_map(data["growth_coefficients"], data["growth_degree"], radial)
                )
            else:
                steps.append(_legacy_map([float(data["growth"])], 0, False))
        return cls(float(data["x0"]), float(data["y0"]), float(data["scale"]), steps, width)

    @classmethod
    def from_summary(cls, summary: dict) -> ApertureCorrectionMap:
        """From a visit summary; an error naming the visit if it has none."""
        if "ap_corr_map" not in summary:
            raise ApertureCorrectionError(
                f"visit {summary.get('visit', '?')}: the visit summary has no aperture-"
                "correction map (written by an older twinkles); rerun process_eimage"
            )
        return cls.from_dict(summary["ap_corr_map"])


@dataclass
class StarApertures:
    """The stars' apertures (:meth:`ApertureCorrectionTask.star_apertures`)."""

    idx: np.ndarray
    """Rows of the catalog."""
    x: np.ndarray
    y: np.ndarray
    """Positions (pixels)."""
    frame: tuple[float, float, float]
    """Normalisation of positions: the sensor's centre (x0, y0) and half diagonal."""
    apertures: dict[float, tuple[np.ndarray, np.ndarray]]
    """Radius (pixels) -> (flux, error) in electrons, each less the star's local sky."""
    ratio: np.ndarray
    ratio_err: np.ndarray
    """Inner-aperture flux over PSF flux, and its error (the two fluxes' covariance in it:
    :func:`~twinkles.measurement.psf_flux.psf_aperture_covariance`)."""
    sky_terms: dict[float, np.ndarray]
    """Radius (pixels) -> the part of each flux error that the star's one sky estimate
    makes (shared by its apertures: :func:`nested_ratio_error`)."""

    def normalised_position(self) -> tuple[np.ndarray, np.ndarray]:
        """The stars' positions in the maps' normalised coordinates."""
        x0, y0, scale = self.frame
        return (self.x - x0) / scale, (self.y - y0) / scale


@dataclass
class ApertureCorrectionResult:
    """The correction over the sensor, the stars it came from and its uncertainty."""

    map: ApertureCorrectionMap
    stars: Table
    scatter: float
    uncertainty: float
    """Fractional uncertainty of the correction (every step) at the typical star."""
    systematic: float
    """Fractional per-source systematic of PSF fluxes (the PSF model's)."""
    shape_uncertainty: float = 0.0
    """The part of ``uncertainty`` that varies over the sensor: what the zero point, fitted
    to stars all over it, does not absorb."""

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.map(x, y)

    @property
    def median(self) -> float:
        """Median correction at the stars used."""
        return float(np.median(self(self.stars["x"], self.stars["y"])))

    @property
    def flux_systematic(self) -> float:
        """Fractional error of every calibrated PSF flux beyond its photon noise: the PSF
        model's per-source systematic and the correction's uncertainty over the sensor, in
        quadrature.

        The correction's error is common to a visit's sources, but it changes from visit to
        visit, so it is part of each measurement's error against the truth and in a light
        curve; without it the pulls of bright stars spread with their S/N. Its constant part
        is absorbed by the zero point, so only the part that varies over the sensor counts.
        """
        return float(np.hypot(self.systematic, self.shape_uncertainty))


def concentration_extended(
    conc: np.ndarray,
    conc_err: np.ndarray,
    star_conc: float | np.ndarray,
    excess: float,
    n_sigma: float,
) -> np.ndarray:
    """Whether a source is extended: its concentration (aperture over PSF flux) exceeds the
    stars' by ``excess`` (a fraction) and by ``n_sigma`` errors."""
    above = conc - star_conc
    with np.errstate(invalid="ignore"):
        return (above > excess * star_conc) & (above > n_sigma * conc_err)


#: Fewest sources whose local skies measure their scatter beyond the pixel noise.
_MIN_SKIES = 10


def local_aperture_flux(
    exposure: Exposure,
    segmentation: np.ndarray,
    index: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    radius: float | list[float],
    annulus: tuple[float, float],
    clip: float | None = 3.0,
    sky_terms: bool = False,
) -> tuple[np.ndarray, ...]:
    """Aperture fluxes of detections ``index`` without other footprints, less a local sky.

    The sky of each source is the ``clip``-sigma-clipped mean (plain mean: ``None``) of its
    annulus pixels that belong to no footprint; it is subtracted over the pixels the aperture
    actually used. With a list of radii, the fluxes and errors have one column per radius
    (the sky is found once per source). With ``sky_terms``, also the part of each error that
    the sky's subtraction makes (the sky's error times the aperture's area), which a source's
    apertures share (:func:`nested_ratio_error`). With at least ``_MIN_SKIES`` sources, each
    sky's error holds the skies' scatter beyond their pixels' noise (:func:`sky_scatter`).
    """
    image = exposure.image
    sums = sum_circles(
        image,
        x,
        y,
        [float(r) for r in np.atleast_1d(radius)],
        variance=exposure.variance,
        segmentation=segmentation,
        seg_ids=np.asarray(index) + 1,
    )
    # other footprints' pixels are left out: the sky is subtracted over the pixels used
    flux, var_sum = sums.unmasked_sum, sums.unmasked_var
    area = sums.area - sums.masked_area
    r_in, r_out = annulus
    offsets = np.arange(-int(np.ceil(r_out)), int(np.ceil(r_out)) + 1)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    ring = (np.hypot(dx, dy) >= r_in) & (np.hypot(dx, dy) < r_out)
    dy, dx = dy[ring], dx[ring]
    h, w = image.shape
    sky = np.zeros(len(x))
    sky_err = np.zeros(len(x))
    for k in range(len(x)):
        yy = round(y[k]) + dy
        xx = round(x[k]) + dx
        inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        yy, xx = yy[inside], xx[inside]
        values = image[yy, xx][segmentation[yy, xx] == 0]
        for _ in range(3 if clip else 0):
            if len(values) < 10:
                break
            mean, std = values.mean(), values.std()
            values = values[np.abs(values - mean) < clip * std]
        if len(values):
            sky[k] = values.mean()
            sky_err[k] = values.std() / np.sqrt(len(values))
    if len(x) >= _MIN_SKIES:
        sky_err = np.hypot(sky_err, sky_scatter(sky, sky_err))
    value = flux - sky[:, None] * area
    sky_term = sky_err[:, None] * area
    error = np.sqrt(var_sum + sky_term**2)
    out = (value, error, sky_term) if sky_terms else (value, error)
    if np.ndim(radius) == 0:
        return tuple(a[:, 0] for a in out)
    return out


def sky_scatter(sky: np.ndarray, sky_err: np.ndarray) -> float:
    """How far sources' local skies scatter beyond their own errors (image units per pixel).

    Each local sky is an annulus's mean, whose error from its pixels' scatter
    (``std / sqrt(n)``) is that of independent pixels; but the annulus also holds the light
    of faint galaxies nobody detected, which differs from one annulus to the next more
    than the mean of independent pixels would. Found as the robust variance of the skies less
    their median squared error (0 where that explains them).
    """
    sky, sky_err = np.asarray(sky, float), np.asarray(sky_err, float)
    ok = np.isfinite(sky) & np.isfinite(sky_err) & (sky_err > 0)
    if ok.sum() < 3:
        return 0.0
    excess = mad_std(sky[ok], np.median(sky[ok])) ** 2 - np.median(sky_err[ok] ** 2)
    return float(np.sqrt(max(excess, 0.0)))


def _nested_covariance(
    fit: SensorMapFit, quadrature_err: np.ndarray, nested_err: np.ndarray
) -> SensorMap:
    """A growth step's map with the covariance its stars' nested-aperture errors give.

    The fit weighs, clips and chooses its model on the errors added in quadrature
    (``quadrature_err``), which exceed the nested ratios' (``nested_err``,
    :func:`nested_ratio_error`) by nearly the same factor for every star: the weights, the
    stars used and the map are theirs (fitted on the smaller errors, the model choice and the
    clipping would tighten and the maps change). The covariance of weighted least squares
    scales as the errors do: it is multiplied by the median square of their ratio over the
    stars used, where the errors explain the scatter (no floor; with one, the floor-inflated
    errors already measure it).
    """
    if fit.floor > 0:
        return fit.map
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio2 = (nested_err[fit.used] / quadrature_err[fit.used]) ** 2
    ratio2 = ratio2[np.isfinite(ratio2)]
    if not len(ratio2):
        return fit.map
    return replace(fit.map, covariance=fit.map.covariance * float(np.median(ratio2)))


def nested_ratio_error(
    outer: np.ndarray,
    outer_err: np.ndarray,
    outer_sky: np.ndarray,
    inner: np.ndarray,
    inner_err: np.ndarray,
    inner_sky: np.ndarray,
) -> np.ndarray:
    """The error of ``outer / inner`` for two apertures about one centre, the inner inside the
    outer, each less the same local sky (:func:`local_aperture_flux` with ``sky_terms``).

    The two fluxes share the inner aperture's pixels and the sky estimate, so their errors
    are correlated: ``cov = inner_err^2 + inner_sky (outer_sky - inner_sky)`` (``*_sky``: the
    sky's error times the aperture's area), and the ratio's relative variance is
    ``(outer_err / outer)^2 + (inner_err / inner)^2 - 2 cov / (outer inner)``. Adding the two
    relative errors in quadrature, as for independent fluxes, overstates it: for sky-limited
    stars in apertures of 6, 12 and 25 pixels the growths' errors come out about 30% too
    large, only the ring between the apertures being their own noise.
    """
    cov = inner_err**2 + inner_sky * (outer_sky - inner_sky)
    return ratio_error(outer, outer_err, inner, inner_err, cov)


def ratio_error(
    numerator: np.ndarray,
    numerator_err: np.ndarray,
    denominator: np.ndarray,
    denominator_err: np.ndarray,
    covariance: np.ndarray,
) -> np.ndarray:
    """The error of ``numerator / denominator`` for two correlated measurements, to first
    order: ``|a / b| sqrt((s_a / a)^2 + (s_b / b)^2 - 2 cov / (a b))``."""
    a, b = numerator, denominator
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = (numerator_err / a) ** 2 + (denominator_err / b) ** 2
        relative = relative - 2.0 * covariance / (a * b)
        return np.abs(a / b) * np.sqrt(np.maximum(relative, 0.0))


#: Apertures either side of each radius, as factors, whose fluxes give the curve of growth's
#: logarithmic slope there (:meth:`ApertureCorrectionTask._growth_rates`).
_WIDEN = (1 / 1.2, 1.2)


class ApertureCorrectionTask:
    """Measure the aperture correction on PSF stars; apply it and classify extendedness."""

    def __init__(self, config: ApertureCorrectionConfig | None = None):
        self.config = config or ApertureCorrectionConfig()

    def run(
        self,
        exposure: Exposure,
        catalog: Table,
        segmentation: np.ndarray,
        star_x: np.ndarray,
        star_y: np.ndarray,
    ) -> ApertureCorrectionResult:
        """Measure the aperture correction on the stars and apply it to ``catalog``.

        Parameters
        ----------
        exposure : Exposure
            Background-subtracted image (electrons) with PSF, variance and mask.
        catalog : `~astropy.table.Table`
            The measured sources (``x``, ``y``, ``psfInstFlux``, ``psfInstFluxErr``, flags);
            ``psfApCorr``, ``psfInstFluxCorr``, ``psfInstFluxCorrErr``, ``concentration``
            and ``extendedness`` are added in place.
        segmentation : array
            Detection segmentation image: neighbours' pixels are kept out of the apertures.
        star_x, star_y : array
            Positions (pixels) of the stars to measure it on (the PSF stars).

        Returns
        -------
        ApertureCorrectionResult
            The correction map over the sensor, the stars used, their scatter, the
            correction's fractional uncertainty and the PSF fluxes' fractional systematic.

        Raises
        ------
        ApertureCorrectionError
            Too few usable stars.
        """
        stars = self.star_apertures(exposure, catalog, segmentation, star_x, star_y)
        steps, width, first = self.fit_steps(exposure, stars)
        result = self.summarise(stars, steps, width, first)
        self.apply(catalog, result, stars.idx[first.used], stars.frame)
        return result

    def star_apertures(
        self,
        exposure: Exposure,
        catalog: Table,
        segmentation: np.ndarray,
        star_x: np.ndarray,
        star_y: np.ndarray,
    ) -> StarApertures:
        """Sub-step 1: every aperture the correction uses, on the clean stars (each star's
        sky found once), and their inner-aperture over PSF flux.

        Parameters
        ----------
        exposure, catalog, segmentation, star_x, star_y
            As :meth:`run`.

        Returns
        -------
        StarApertures

        Raises
        ------
        ApertureCorrectionError
            Fewer than ``min_stars`` stars with a finite ratio.
        """
        cfg = self.config
        visit = exposure.metadata.get("visit")
        x, y = np.asarray(catalog["x"]), np.asarray(catalog["y"])
        dist, idx = cKDTree(np.column_stack([x, y])).query(np.column_stack([star_x, star_y]))
        idx = idx[dist < 1.0]
        clean = ~np.asarray(
            catalog["flag_saturated"]
            | catalog["flag_bad"]
            | catalog["flag_edge"]
            | catalog["flag_cr"]
        )
        idx = idx[clean[idx]]
        seg = np.ascontiguousarray(segmentation, dtype=np.int32)
        every = sorted(set(cfg.radii) | {r * f for r in cfg.radii for f in _WIDEN})
        all_flux, all_err, all_sky = local_aperture_flux(
            exposure, seg, idx, x[idx], y[idx], every, cfg.annulus, sky_terms=True
        )
        apertures = {r: (all_flux[:, k], all_err[:, k]) for k, r in enumerate(every)}
        inner, inner_err = apertures[cfg.inner]
        psf = np.asarray(catalog["psfInstFlux"])[idx]
        # the inner aperture and the PSF fit weigh the same pixels: most of a star's noise
        # is in both, and their ratio's error is far below the two added in quadrature
        shared = psf_aperture_covariance(
            exposure, x[idx], y[idx], cfg.inner, segmentation=seg, seg_ids=idx + 1
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = inner / psf
        ratio_err = ratio_error(
            inner, inner_err, psf, np.asarray(catalog["psfInstFluxErr"])[idx], shared
        )
        ok = np.isfinite(ratio) & (psf > 0) & (inner > 0)
        if ok.sum() < cfg.min_stars:
            raise ApertureCorrectionError(
                f"visit {visit}: only {int(ok.sum())} stars for the aperture correction "
                f"(need {cfg.min_stars})"
            )
        h, w = exposure.shape
        x0, y0, scale = 0.5 * (w - 1), 0.5 * (h - 1), 0.5 * float(np.hypot(w, h))
        idx = idx[ok]
        return StarApertures(
            idx,
            x[idx],
            y[idx],
            (x0, y0, scale),
            {r: (f[ok], e[ok]) for r, (f, e) in apertures.items()},
            ratio[ok],
            ratio_err[ok],
            {r: all_sky[ok, k] for k, r in enumerate(every)},
        )

    def fit_steps(
        self, exposure: Exposure, stars: StarApertures
    ) -> tuple[list[SensorMap], SensorMap | None, SensorMapFit]:
        """Sub-step 2: the correction as maps over the sensor, step by step: the inner
        aperture over the PSF flux, then each growth to the next aperture out to the total.

        Parameters
        ----------
        exposure : Exposure
            Its PSF model gives the width map where it is a mode model.
        stars : StarApertures
            From :meth:`star_apertures`.

        Returns
        -------
        steps : list of SensorMap
            One map per step; their product is the correction.
        width : SensorMap or None
            The PSF-width map the steps may follow.
        first : SensorMapFit
            The first step's fit (its stars used, residuals and scatter floor).

        Raises
        ------
        ApertureCorrectionError
            Fewer than ``min_stars`` stars with a finite growth at some step.
        """
        cfg = self.config
        visit = exposure.metadata.get("visit")
        X, Y = stars.normalised_position()
        apertures = stars.apertures
        width = self._psf_width_map(exposure.psf, stars.frame, exposure.shape)
        if width is None:
            width = self._width_map(apertures, X, Y)
        rates = self._growth_rates(apertures) if width is not None else {}
        # step 1: inner aperture over PSF flux
        first = fit_sensor_map(
            X,
            Y,
            stars.ratio,
            stars.ratio_err,
            cfg.map_model,
            cfg.clip_sigma,
            template=width,
            curved=cfg.map_follows_curvature,
        )
        steps = [first.map]
        # the growth, step by step to the total aperture; it gives back the curvature of the
        # inner aperture's share of the light only where the first step took it out (else
        # neither has it, and the PSF model's own error stays as it was)
        curved = first.map.model in CURVED_MODELS
        flux, flux_err = apertures[cfg.inner]
        for previous, radius in pairwise(cfg.radii[1:]):  # inner, (middle,) total
            outer, outer_err = apertures[radius]
            with np.errstate(invalid="ignore", divide="ignore"):
                step = outer / flux
                step_err = np.abs(step) * np.hypot(outer_err / outer, flux_err / flux)
            # the inner aperture's noise is in the outer's too: only the ring is the step's
            nested_err = nested_ratio_error(
                outer,
                outer_err,
                stars.sky_terms[radius],
                flux,
                flux_err,
                stars.sky_terms[previous],
            )
            good = np.isfinite(step) & np.isfinite(step_err) & (step_err > 0) & (outer > 0)
            if good.sum() < cfg.min_stars:
                raise ApertureCorrectionError(
                    f"visit {visit}: only {int(good.sum())} stars for the aperture-correction "
                    f"growth to {radius:g} px (need {cfg.min_stars})"
                )
            richest = cfg.outer_map_model if radius == cfg.radius else cfg.growth_map_model
            rate = rates.get((previous, radius))
            fit = fit_sensor_map(
                X[good],
                Y[good],
                step[good],
                step_err[good],
                richest,
                cfg.clip_sigma,
                template=width,
                slope=rate[0] if rate else None,
                curvature=rate[1] if rate and curved else 0.0,
                follow=richest != "constant",
            )
            steps.append(_nested_covariance(fit, step_err[good], nested_err[good]))
            flux, flux_err = outer, outer_err
        return steps, width, first

    def summarise(
        self,
        stars: StarApertures,
        steps: list[SensorMap],
        width: SensorMap | None,
        first: SensorMapFit,
    ) -> ApertureCorrectionResult:
        """Sub-step 3: the correction's map and its uncertainties: each step's error at the
        stars in quadrature, the part of it that varies over the sensor, and the PSF model's
        per-source systematic (the first step's scatter beyond the errors).

        Parameters
        ----------
        stars : StarApertures
            From :meth:`star_apertures`.
        steps, width, first
            From :meth:`fit_steps`.

        Returns
        -------
        ApertureCorrectionResult
        """
        cfg = self.config
        X, Y = stars.normalised_position()
        used = first.used
        table = Table(
            {
                "x": stars.x,
                "y": stars.y,
                "ratio": stars.ratio,
                "ratio_err": stars.ratio_err,
                "used": used,
            }
        )
        # each step's error at the stars, relative, in quadrature: the correction's; and
        # the part of it that varies over the sensor (the zero point absorbs the rest)
        relative = [np.median(m.error(X, Y) / np.abs(m(X, Y))) for m in steps]
        uncertainty = float(np.sqrt(np.sum(np.square(relative))))
        shape = [np.median(m.shape_error(X, Y) / np.abs(m(X, Y))) for m in steps]
        shape_uncertainty = float(np.sqrt(np.sum(np.square(shape))))
        # the PSF model's per-star systematic: the first step's scatter beyond the errors,
        # where enough stars measure it (from a few, the floor is mostly their own noise and
        # their apertures' neighbours)
        systematic = (
            float(first.floor / np.median(stars.ratio[used]))
            if used.sum() >= cfg.min_stars_systematic
            else 0.0
        )
        scatter = mad_std(first.residuals[used], center=0.0)
        x0, y0, scale = stars.frame
        return ApertureCorrectionResult(
            ApertureCorrectionMap(x0, y0, scale, steps, width),
            table,
            scatter,
            uncertainty,
            systematic,
            shape_uncertainty,
        )

    def apply(
        self,
        catalog: Table,
        result: ApertureCorrectionResult,
        star_rows: np.ndarray,
        frame: tuple[float, float, float],
    ) -> None:
        """Sub-step 4: the corrected PSF fluxes of every source, with the systematic in their
        errors, and each source's concentration and extendedness (against the stars at
        ``star_rows`` of ``catalog``), added to ``catalog`` in place."""
        x, y = np.asarray(catalog["x"]), np.asarray(catalog["y"])
        corr = result(x, y)  # includes the growth to the total aperture
        catalog["psfApCorr"] = corr
        catalog["psfInstFluxCorr"] = catalog["psfInstFlux"] * corr
        catalog["psfInstFluxCorrErr"] = (
            np.hypot(
                np.asarray(catalog["psfInstFluxErr"]),
                result.systematic * np.asarray(catalog["psfInstFlux"]),
            )
            * corr
        )
        self._extendedness(catalog, star_rows, frame)

    def _psf_width_map(
        self, psf: object, frame: tuple[float, float, float], shape: tuple[int, int]
    ) -> SensorMap | None:
        """The PSF model's core concentration (``core`` over ``inner`` aperture flux of its
        kernel) over the sensor, divided by its median: the width map where the model is a
        mode model (else ``None``: the stars' own map).

        A mode model is made where the stars are too few or faint for a per-pixel one; its
        change of width, a few numbers fitted to every pixel of their stamps, is then better
        measured than by their noisy 3- and 6-pixel apertures. Where a per-pixel model
        varies the stars are enough for their own map, which also sees what a model of the
        width's first order misses. The model is sampled on a 9 x 9 grid and fitted by a
        quadratic, which follows a model whose terms are at most quadratic to well under a
        thousandth.
        """
        if not isinstance(psf, PixelPSF) or not psf.modes:
            return None
        cfg = self.config
        x0, y0, scale = frame
        h, w = shape
        gx, gy = np.meshgrid(np.linspace(0, w - 1, 9), np.linspace(0, h - 1, 9))
        kernels = psf.kernels(gx.ravel(), gy.ravel())
        n, size = len(kernels), kernels.shape[-1]
        # the kernels side by side, each aperture inside its own tile
        mosaic = kernels.transpose(1, 0, 2).reshape(size, n * size)
        centres = (np.arange(n) * size + size // 2).astype(float)
        sums = sum_circles(mosaic, centres, np.full(n, float(size // 2)), [cfg.core, cfg.inner])
        concentration = sums.flux[:, 0] / sums.flux[:, 1]
        X, Y = (gx.ravel() - x0) / scale, (gy.ravel() - y0) / scale
        terms = map_terms(X, Y, "quadratic")
        coefficients, *_ = np.linalg.lstsq(terms, concentration, rcond=None)
        median = float(np.median(concentration))
        return SensorMap("quadratic", coefficients / median, np.zeros((terms.shape[1],) * 2))

    def _width_map(self, apertures: dict, X: np.ndarray, Y: np.ndarray) -> SensorMap | None:
        """The stars' core concentration (``core`` over ``inner`` aperture flux) over the
        sensor, divided by its median at the stars: where the PSF is broader, less of a
        star's light is in its core and more lies beyond every aperture.

        Each step of the correction changes with the PSF's width, but by a fraction of a
        percent to a few percent across the sensor, under the noise of a few dozen stars'
        12- and 25-pixel apertures; the core concentration changes several times as much and
        is measured within 6 pixels, so its pattern (a gradient, a radial change, any of the
        map models) is clear where theirs is not, and a step that follows it (the
        ``template`` model) needs one number more than a constant. ``None`` when the stars
        show no change of width.
        """
        cfg = self.config
        core, core_err = apertures[cfg.core]
        inner, inner_err = apertures[cfg.inner]
        with np.errstate(invalid="ignore", divide="ignore"):
            conc = core / inner
            # the core is inside the inner aperture, so these errors overstate the ratio's
            conc_err = np.abs(conc) * np.hypot(core_err / core, inner_err / inner)
        good = np.isfinite(conc) & np.isfinite(conc_err) & (conc_err > 0) & (core > 0)
        if good.sum() < cfg.min_stars:
            return None
        fit = fit_sensor_map(
            X[good], Y[good], conc[good], conc_err[good], cfg.width_map_model, cfg.clip_sigma
        )
        if fit.map.model == "constant":
            return None
        median = float(np.median(fit.map(X[good], Y[good])))
        return SensorMap(
            fit.map.model, fit.map.coefficients / median, fit.map.covariance / median**2
        )

    def _growth_rates(self, apertures: dict) -> dict[tuple[float, float], tuple[float, float]]:
        """How much each growth step changes per change of the core concentration, to second
        order, from the stars' mean curve of growth, for a PSF whose profile keeps its shape
        as its width changes.

        If ``F(r; w) = F(r / w)``, a ratio of fluxes in apertures ``r1 < r2`` changes with
        the width as ``d ln[F(r2) / F(r1)] / d ln w = s(r1) - s(r2)``, with
        ``s(r) = d ln F / d ln r`` the logarithmic slope of the curve of growth, and
        ``d^2 ln[F(r2) / F(r1)] / d (ln w)^2 = k(r2) - k(r1)``, with ``k = ds / d ln r``; the
        core concentration ``c`` the same with ``core`` and ``inner``. So ``ln G`` of a step
        changes with ``ln c`` at the rate ``a = (s(r2) - s(r1)) / (s(core) - s(inner))``
        and the curvature ``b = (k(r2) - k(r1) - a (k(core) - k(inner))) / (s(core) -
        s(inner))^2``; as a function of ``t = c / median(c)``,
        ``G / median(G) = 1 + a (t - 1) + (a^2 - a + b) / 2 (t - 1)^2``. The curvature
        matters where the width changes by tens of percent: a 6-pixel aperture's share of
        the light is not linear in the width, and a first step that follows its curvature
        needs a growth that gives it back. ``s`` and ``k`` come from the stars' summed
        fluxes in apertures 1.2 times wider and narrower than each radius (Stetson 1990's
        curve of growth, differentiated twice); bright stars dominate the sums, as their
        growth is best measured. Empty when the core concentration does not change
        measurably with the width (its slopes equal).

        Returns
        -------
        dict
            ``(r1, r2)`` -> ``(slope, curvature)`` of each growth step.
        """
        cfg = self.config
        narrower, wider = _WIDEN
        step = np.log(wider / narrower) / 2.0
        log_slope, log_curvature = {}, {}
        for radius in cfg.radii:
            wide, narrow = apertures[radius * wider][0], apertures[radius * narrower][0]
            mid = apertures[radius][0]
            good = (
                np.isfinite(wide)
                & np.isfinite(narrow)
                & np.isfinite(mid)
                & (narrow > 0)
                & (wide > 0)
                & (mid > 0)
            )
            if good.sum() < cfg.min_stars:
                return {}
            ln_wide, ln_mid = np.log(wide[good].sum()), np.log(mid[good].sum())
            ln_narrow = np.log(narrow[good].sum())
            log_slope[radius] = float((ln_wide - ln_narrow) / (2.0 * step))
            log_curvature[radius] = float((ln_wide - 2.0 * ln_mid + ln_narrow) / step**2)
        core_change = log_slope[cfg.core] - log_slope[cfg.inner]
        if not core_change > 0.05:
            return {}
        core_curvature = log_curvature[cfg.core] - log_curvature[cfg.inner]
        out = {}
        for r1, r2 in pairwise(cfg.radii[1:]):
            a = (log_slope[r2] - log_slope[r1]) / core_change
            b = (log_curvature[r2] - log_curvature[r1] - a * core_curvature) / core_change**2
            out[(r1, r2)] = (a, 0.5 * (a * a - a + b))
        return out

    def _extendedness(self, catalog: Table, stars: np.ndarray, frame: tuple) -> None:
        """Concentration relative to the stars' at the same place (see the module docstring).

        The stars' concentration changes over the sensor as the PSF's width does (by several
        percent where the width changes by 10-15%, as much as ``extendedness_excess``), so
        it is a map fitted to the stars as the correction's steps are, not one median.
        """
        cfg = self.config
        ext = aperture_name(cfg.extendedness_radius)
        flux = np.asarray(catalog[f"{ext}_instFlux"])
        psf = np.asarray(catalog["psfInstFlux"])
        with np.errstate(invalid="ignore", divide="ignore"):
            conc = flux / psf
            conc_err = np.abs(conc) * np.hypot(
                np.asarray(catalog[f"{ext}_instFluxErr"]) / flux,
                np.asarray(catalog["psfInstFluxErr"]) / psf,
            )
        x0, y0, scale = frame
        X = (np.asarray(catalog["x"], dtype=float) - x0) / scale
        Y = (np.asarray(catalog["y"], dtype=float) - y0) / scale
        good = stars[np.isfinite(conc[stars]) & np.isfinite(conc_err[stars])]
        good = good[conc_err[good] > 0]
        if len(good) >= 3:
            fit = fit_sensor_map(
                X[good], Y[good], conc[good], conc_err[good], cfg.map_model, cfg.clip_sigma
            )
            star_conc = fit.map(X, Y)
        else:
            star_conc = np.full(len(conc), float(np.nanmedian(conc[stars])))
        extended = concentration_extended(
            conc, conc_err, star_conc, cfg.extendedness_excess, cfg.extendedness_sigma
        )
        catalog["concentration"] = conc
        catalog["extendedness"] = np.where(np.isfinite(conc), extended.astype(float), np.nan)
