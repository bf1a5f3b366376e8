"""Aperture correction of PSF fluxes, and extendedness.

The PSF model is a 25-pixel kernel normalised to unit sum, so a PSF flux counts the light inside
the kernel; in poor seeing a few percent of a star's light falls outside. The aperture
correction brings PSF fluxes to total fluxes in two stages, a curve of growth (Stetson 1990,
PASP 102, 932):

1. ``inner`` aperture (6 pixels, 1.2") over PSF flux, measured on the PSF stars and fitted
   as a polynomial of degree ``degree`` over the sensor, with clipping. The map's slope is
   what forced photometry keeps (a constant error goes into the zero point), and it is only
   as good as the ~25 stars' ratios: on the demo run's z and i visits its error, measured
   against the truth, was 6.3 and 3.9 mmag per half-diagonal with LSST's 12-pixel
   calibration aperture, 4.0 and 3.4 with 6 pixels, whose sky noise is half;
2. the growth from ``inner`` to ``radius`` (25 pixels: all but ~1e-3 of a star's light in
   1.6" seeing), also a map over the sensor (``growth_degree``, with a radial term
   ``X^2 + Y^2`` when ``radial``), fitted by weighted least squares: the noise of a 25-pixel
   aperture is its sky (~1300 e- in r), 1-4% of a 10^5 e- star, so the brightest stars
   decide. The growth must follow the PSF: where the PSF is broader, less of a star's light
   falls inside ``inner`` and more must be added back. A single sensor-wide growth (what this
   module did before) turned a PSF whose width changes by 9% across the sensor into a ramp of
   calibrated fluxes of up to 3.7% (the inner map falls where the growth should rise); the
   map follows gradients in any direction and radial (focal-plane-like) patterns with four
   numbers, which the ~25-100 bright stars of a visit can constrain.

Apertures leave out the footprints of other detections, and each star's sky comes from an
annulus (``annulus``): the clipped mean of its pixels outside any footprint. The mean keeps the
light of undetected faint galaxies, which lifts the sky in the aperture alike (0.5 e- per pixel
over 2000 pixels is a few percent of a 10^5 e- star); the clipping drops neighbours' wings.

Every PSF flux is multiplied by the correction, so corrected PSF fluxes are total fluxes, and
so are the calibrated ones. The stars' ratios also measure how well the PSF model fits a
star: their scatter beyond their statistical errors is a per-source systematic of PSF fluxes
(the model's imperfections, ~0.3% in the demo run), added in quadrature to every PSF flux
error, so that the errors of bright stars are honest.

Twinkles failed visits with "Only 1 sources for calculation of aperture correction"; here too
few stars raise :class:`ApertureCorrectionError`, naming the visit.

Extendedness: a point source has the stars' concentration ``c = apFlux(r) / psfFlux``; a
galaxy is more extended. A source is extended (1) when its ``c`` exceeds the stars' median by
more than ``extendedness_excess`` and by ``extendedness_sigma`` times its uncertainty, else 0
(after the concentration criterion of SDSS and LSST's extendedness).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from pydantic import Field
from scipy.spatial import cKDTree

from twinkles.config import Section
from twinkles.errors import TwinklesError
from twinkles.image import Exposure
from twinkles.measurement.aperture import sum_circles
from twinkles.measurement.measure import aperture_name
from twinkles.psf.pixel import polynomial_terms

__all__ = [
    "ApertureCorrectionConfig",
    "ApertureCorrectionError",
    "ApertureCorrectionMap",
    "ApertureCorrectionResult",
    "ApertureCorrectionTask",
    "local_aperture_flux",
]


class ApertureCorrectionError(TwinklesError):
    """Too few stars to measure the aperture correction."""


class ApertureCorrectionConfig(Section):
    """Aperture correction and extendedness."""

    inner: float = Field(6.0, gt=0, description="Aperture of the first stage (pixels).")
    radius: float = Field(25.0, gt=0, description="Aperture taken as the total flux (pixels).")
    annulus: tuple[float, float] = Field(
        (30.0, 45.0), description="Inner and outer radius of the local-sky annulus (pixels)."
    )
    degree: int = Field(1, ge=0, le=3, description="Polynomial degree over the sensor.")
    growth_degree: int = Field(
        1, ge=0, le=3, description="Polynomial degree of the growth map over the sensor."
    )
    radial: bool = Field(
        True, description="Add a radial term (X^2 + Y^2) to both maps where the degree is 1."
    )
    min_stars: int = Field(4, ge=1, description="Fewest stars (else ApertureCorrectionError).")
    clip_sigma: float = Field(3.0, gt=0, description="Clipping of outlying stars (sigma).")
    extendedness_radius: float = Field(
        12.0, gt=0, description="Aperture of the concentration (pixels)."
    )
    extendedness_excess: float = Field(
        0.03, ge=0, description="Fractional concentration excess of an extended source."
    )
    extendedness_sigma: float = Field(3.0, gt=0, description="Significance of that excess (sigma).")


def map_terms(X: np.ndarray, Y: np.ndarray, degree: int, radial: bool) -> np.ndarray:
    """Terms of a map over the sensor: the monomials up to ``degree`` (order as
    :func:`~twinkles.psf.pixel.polynomial_terms`), and ``X^2 + Y^2`` if ``radial`` and the
    degree is 1 (a degree of 2 or more already spans it)."""
    terms = polynomial_terms(X, Y, degree)
    if radial and degree == 1:
        terms = np.column_stack([terms, np.asarray(X, float) ** 2 + np.asarray(Y, float) ** 2])
    return terms


def _n_terms(degree: int, radial: bool) -> int:
    return (degree + 1) * (degree + 2) // 2 + (1 if radial and degree == 1 else 0)


@dataclass
class ApertureCorrectionMap:
    """The aperture correction at any sensor position: the inner map times the growth map.

    Stored in the visit summary (:meth:`to_dict`) so that forced photometry corrects each
    position with the correction there: the PSF model is fitted with its own spatial degree,
    its flux normalisation errors vary over the sensor, and so does the PSF's width, hence
    the light beyond the inner aperture; a single median would leave both.
    """

    coefficients: np.ndarray
    degree: int
    x0: float
    y0: float
    scale: float
    growth_coefficients: np.ndarray
    growth_degree: int = 0
    radial: bool = False

    def _terms(self, x: np.ndarray, y: np.ndarray, degree: int) -> np.ndarray:
        X = (np.atleast_1d(np.asarray(x, dtype=float)) - self.x0) / self.scale
        Y = (np.atleast_1d(np.asarray(y, dtype=float)) - self.y0) / self.scale
        return map_terms(X, Y, degree, self.radial)

    def inner(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Inner aperture over PSF flux at pixel positions (x, y), 0-based."""
        return self._terms(x, y, self.degree) @ np.asarray(self.coefficients)

    def growth(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Total over inner aperture flux at pixel positions (x, y), 0-based."""
        return self._terms(x, y, self.growth_degree) @ np.asarray(self.growth_coefficients)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The multiplicative correction of PSF fluxes at pixel positions (x, y), 0-based."""
        return self.inner(x, y) * self.growth(x, y)

    def to_dict(self) -> dict:
        """JSON-able form."""
        return {
            "coefficients": [float(c) for c in np.asarray(self.coefficients)],
            "degree": int(self.degree),
            "x0": float(self.x0),
            "y0": float(self.y0),
            "scale": float(self.scale),
            "growth_coefficients": [float(c) for c in np.asarray(self.growth_coefficients)],
            "growth_degree": int(self.growth_degree),
            "radial": bool(self.radial),
        }

    @classmethod
    def from_dict(cls, data: dict) -> ApertureCorrectionMap:
        if "growth_coefficients" in data:
            growth = np.asarray(data["growth_coefficients"], dtype=float)
            growth_degree = int(data["growth_degree"])
        else:  # a summary written before the growth was a map: one sensor-wide number
            growth, growth_degree = np.array([float(data["growth"])]), 0
        return cls(
            np.asarray(data["coefficients"], dtype=float),
            int(data["degree"]),
            float(data["x0"]),
            float(data["y0"]),
            float(data["scale"]),
            growth,
            growth_degree,
            bool(data.get("radial", False)),
        )

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
class ApertureCorrectionResult:
    """The correction over the sensor, the stars it came from and its uncertainty."""

    map: ApertureCorrectionMap
    stars: Table
    scatter: float
    growth_n_stars: int
    uncertainty: float
    """Fractional uncertainty of the correction (both stages)."""
    systematic: float
    """Fractional per-source systematic of PSF fluxes (added to their errors)."""

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return self.map(x, y)

    @property
    def median(self) -> float:
        return float(np.median(self(self.stars["x"], self.stars["y"])))

    @property
    def growth(self) -> float:
        """The median growth from the inner to the total aperture over the stars."""
        return float(np.median(self.map.growth(self.stars["x"], self.stars["y"])))


def _fit_map(
    terms: np.ndarray,
    values: np.ndarray,
    errors: np.ndarray,
    clip_sigma: float,
    min_stars: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Weighted least-squares map with iterative clipping.

    Returns the coefficients, the residuals of every star, the stars used and the robust
    scatter of the used residuals.
    """
    used = np.ones(len(values), dtype=bool)
    weight = 1.0 / np.maximum(errors, 1e-4)
    for _ in range(5):
        coeffs, *_ = np.linalg.lstsq(
            terms[used] * weight[used, None], values[used] * weight[used], rcond=None
        )
        resid = values - terms @ coeffs
        scatter = 1.4826 * float(np.median(np.abs(resid[used] - np.median(resid[used]))))
        new_used = np.abs(resid) < clip_sigma * np.maximum(scatter, errors)
        if new_used.sum() < min_stars or np.array_equal(new_used, used):
            break
        used = new_used
    return coeffs, resid, used, scatter


def _affordable_degree(degree: int, radial: bool, n_stars: int) -> int:
    """The highest degree up to ``degree`` with at least four stars per term."""
    while degree > 0 and n_stars < 4 * _n_terms(degree, radial):
        degree -= 1
    return degree


def concentration_extended(
    conc: np.ndarray, conc_err: np.ndarray, star_conc: float, excess: float, n_sigma: float
) -> np.ndarray:
    """Whether a source is extended: its concentration (aperture over PSF flux) exceeds the
    stars' by ``excess`` (a fraction) and by ``n_sigma`` errors."""
    above = conc - star_conc
    with np.errstate(invalid="ignore"):
        return (above > excess * star_conc) & (above > n_sigma * conc_err)


def local_aperture_flux(
    exposure: Exposure,
    segmentation: np.ndarray,
    index: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    radius: float,
    annulus: tuple[float, float],
    clip: float | None = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Aperture fluxes of detections ``index`` without other footprints, less a local sky.

    The sky of each source is the ``clip``-sigma-clipped mean (plain mean: ``None``) of its
    annulus pixels that belong to no footprint; it is subtracted over the pixels the aperture
    actually used.
    """
    image = exposure.image
    sums = sum_circles(
        image,
        x,
        y,
        [radius],
        variance=exposure.variance,
        segmentation=segmentation,
        seg_ids=np.asarray(index) + 1,
    )
    # other footprints' pixels are left out: the sky is subtracted over the pixels used
    flux, var_sum = sums.unmasked_sum[:, 0], sums.unmasked_var[:, 0]
    area = sums.area[:, 0] - sums.masked_area[:, 0]
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
    return flux - sky * area, np.sqrt(var_sum + (sky_err * area) ** 2)


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
        """Measure the correction on the stars at (star_x, star_y); apply it to ``catalog``."""
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
        inner, inner_err = local_aperture_flux(
            exposure, seg, idx, x[idx], y[idx], cfg.inner, cfg.annulus
        )
        psf = np.asarray(catalog["psfInstFlux"])[idx]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = inner / psf
            ratio_err = ratio * np.hypot(
                inner_err / inner, np.asarray(catalog["psfInstFluxErr"])[idx] / psf
            )
        ok = np.isfinite(ratio) & (psf > 0) & (inner > 0)
        if ok.sum() < cfg.min_stars:
            raise ApertureCorrectionError(
                f"visit {visit}: only {int(ok.sum())} stars for the aperture correction "
                f"(need {cfg.min_stars})"
            )
        h, w = exposure.shape
        x0, y0, scale = 0.5 * (w - 1), 0.5 * (h - 1), 0.5 * float(np.hypot(w, h))
        # stage 2: growth from the inner to the total aperture over the sensor; its noise is
        # the total aperture's sky, so the weights let the brightest stars decide
        total, total_err = local_aperture_flux(
            exposure, seg, idx[ok], x[idx][ok], y[idx][ok], cfg.radius, cfg.annulus
        )
        growths = total / inner[ok]
        growth_errs = growths * np.hypot(total_err / total, inner_err[ok] / inner[ok])
        good = np.isfinite(growths) & (growth_errs > 0)
        # the stars that decide: those whose growth is known to 1% count fully
        n_weighty = int(np.sum(np.minimum((0.01 / growth_errs[good]) ** 2, 1.0)))
        growth_degree = _affordable_degree(cfg.growth_degree, cfg.radial, n_weighty)
        gx, gy = (x[idx][ok][good] - x0) / scale, (y[idx][ok][good] - y0) / scale
        growth_terms = map_terms(gx, gy, growth_degree, cfg.radial)
        growth_coeffs, _, growth_used, _ = _fit_map(
            growth_terms, growths[good], growth_errs[good], cfg.clip_sigma, cfg.min_stars
        )
        # uncertainty of the growth map at the typical star, from the fit's covariance
        g_weight = 1.0 / growth_errs[good][growth_used] ** 2
        g_cov = np.linalg.pinv(
            growth_terms[growth_used].T @ (growth_terms[growth_used] * g_weight[:, None])
        )
        growth_at_stars = growth_terms @ growth_coeffs
        growth_err = float(
            np.sqrt(np.median(np.einsum("ij,jk,ik->i", growth_terms, g_cov, growth_terms)))
        )
        n_growth = int(growth_used.sum())
        # stage 1: inner aperture over PSF flux, over the sensor
        idx, ratio, ratio_err = idx[ok], ratio[ok], ratio_err[ok]
        degree = _affordable_degree(cfg.degree, cfg.radial, len(idx))
        terms = map_terms((x[idx] - x0) / scale, (y[idx] - y0) / scale, degree, cfg.radial)
        coeffs, resid, used, scatter = _fit_map(
            terms, ratio, ratio_err, cfg.clip_sigma, cfg.min_stars
        )
        stars = Table(
            {"x": x[idx], "y": y[idx], "ratio": ratio, "ratio_err": ratio_err, "used": used}
        )
        stage1_err = max(scatter, float(np.median(ratio_err[used]))) / np.sqrt(used.sum())
        # scatter beyond the statistical errors: the PSF model's per-star systematic
        excess = (resid[used] ** 2 - ratio_err[used] ** 2) / np.median(ratio[used]) ** 2
        systematic = float(np.sqrt(max(np.median(excess), 0.0)))
        uncertainty = float(
            np.hypot(stage1_err / np.median(ratio[used]), growth_err / np.median(growth_at_stars))
        )
        correction_map = ApertureCorrectionMap(
            coeffs, degree, x0, y0, scale, growth_coeffs, growth_degree, cfg.radial
        )
        result = ApertureCorrectionResult(
            correction_map, stars, float(scatter), n_growth, uncertainty, systematic
        )
        corr = result(x, y)  # includes the growth to the total aperture
        catalog["psfApCorr"] = corr
        catalog["psfInstFluxCorr"] = catalog["psfInstFlux"] * corr
        catalog["psfInstFluxCorrErr"] = (
            np.hypot(
                np.asarray(catalog["psfInstFluxErr"]),
                systematic * np.asarray(catalog["psfInstFlux"]),
            )
            * corr
        )
        self._extendedness(catalog, idx[used])
        return result

    def _extendedness(self, catalog: Table, stars: np.ndarray) -> None:
        """Concentration relative to the stars' (see the module docstring)."""
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
        star_conc = float(np.median(conc[stars]))
        extended = concentration_extended(
            conc, conc_err, star_conc, cfg.extendedness_excess, cfg.extendedness_sigma
        )
        catalog["concentration"] = conc
        catalog["extendedness"] = np.where(np.isfinite(conc), extended.astype(float), np.nan)
