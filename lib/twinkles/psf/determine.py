"""Measuring the PSF from the stars of an exposure.

1. **Candidates**: bright detections (``snr_min``) that are isolated (no other detection within
   ``isolation_radius``), not deblended, whose stamp is inside the sensor and free of
   saturated, bad, cosmic-ray and interpolated pixels, with a peak below ``max_peak_fraction``
   of the full well.
2. **Stars**: the candidates on the stellar locus of half-light radius. Stars are the most
   compact sources and all share the PSF's size; the locus is the smallest radius at which at
   least half as many candidates gather (within ``size_tolerance``) as at the densest radius.
   Galaxies lie above it.
3. **Fit**: every pixel of the kernel is a polynomial in the sensor position
   (:class:`~twinkles.image.psf.PixelPSF`). A first model stacks the stars recentred by the same
   interpolation; it is then refined as a *forward* model, ``d_n / F_n = S_n K(x_n, y_n)``
   with ``S_n`` the band-limited shift to star n's sub-pixel position
   (:mod:`twinkles.image.shift`), by iterated least-squares corrections
   ``K += fit(S_n^T residual_n)`` (as PSFEx fits without resampling the data). Resampling the
   stars instead biases PSF fluxes by a fraction of a percent; the forward fit is unbiased
   on noiseless stars (the tests hold it to 1e-5). A Lanczos-3 ``S_n`` could only average the
   kernel's error over the stars' sub-pixel positions: in good seeing, stars centred on a
   pixel then read bright and stars on a pixel corner faint, by mmag. Each star's
   sky is its own, the median of an annulus around its stamp (a
   global background 1 e-/pixel off would otherwise sharpen the core). Stars are weighted by
   signal-to-noise, so that each stamp's residuals count by their inverse variance, up to a
   cap near the full well (``snr_weight_cap``), where a sensor's response is least certain,
   and at most a few times the stars' median (``snr_weight_median_factor``): with a handful
   of stars, one or two bright ones would otherwise decide the model alone.
   With a few dozen stars the model's change over the sensor is noisy, and every PSF flux
   inherits it (an error of 0.3% in the width's gradient ramps them by ~3 mmag). A cap at
   a few hundred throws away most of what the brightest stars know of it, and worse: the
   model then fits them worse than their noise allows, and the clipping below drops them.
   Fluxes are re-measured with the model each pass, and stars whose residual chi^2 stands
   out are clipped.
   The spatial model is chosen by ``cv_folds``-fold cross-validation: for each polynomial
   degree up to ``degree``, and with ``radial`` also a radial term ``X^2 + Y^2`` alone and
   with a gradient (at most one coefficient per 4 stars), the stacked stars of all folds but
   one predict the held-out stars, and the model with the lowest held-out chi^2 wins (k-fold
   cross-validation, Stone 1974, JRSS B 36, 111). A model the stars cannot constrain fits
   their noise, and bright stars' PSF fluxes then scatter beyond their errors. A focal
   plane's PSF broadens outwards; a full degree 2 spends six coefficients per pixel on it,
   which 50-100 stars cannot constrain, so without the radial term the choice fell to a
   constant kernel (the aperture-correction maps then carry the whole pattern). Where the
   per-pixel models fall back to a constant kernel, mode models are tried
   (:mod:`twinkles.psf.modes`: the mean kernel's change of width, and of ellipticity, as a
   gradient, a radial term or both): a few numbers in all, which 25-30 stars constrain. They
   are not tried where a per-pixel variation is resolved: a deformation to first order
   predicts held-out stars' pixels as well, but where the width changes strongly its
   missing second order biases the corners' PSF fluxes, which a per-pixel polynomial, free
   in every pixel, does not.

Too few stars raises :class:`PsfError` with the visit, the number found and the number needed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from astropy.table import Table
from numpy.lib.stride_tricks import sliding_window_view
from pydantic import Field, field_validator
from scipy.spatial import cKDTree

from twinkles.errors import TwinklesError
from twinkles.geometry import spatial_terms
from twinkles.image import Exposure, MaskPlane
from twinkles.image.psf import PixelPSF
from twinkles.image.shift import shift_stamps, shift_stamps_transpose
from twinkles.psf.modes import MODES, ModeFit, deformation_modes
from twinkles.section import Section
from twinkles.stats import mad_std, stellar_locus

__all__ = [
    "PsfConfig",
    "PsfError",
    "PsfResult",
    "PsfTask",
    "cross_validated_degree",
    "cross_validated_model",
    "cut_stamps",
]


class PsfError(TwinklesError):
    """The PSF could not be measured (too few stars)."""


class PsfConfig(Section):
    """PSF measurement."""

    kernel_size: int = Field(25, ge=9, le=101, description="Kernel side (pixels, odd).")
    degree: int = Field(
        2, ge=0, le=4, description="Highest polynomial degree of spatial variation tried."
    )
    radial: bool = Field(
        True,
        description="Also try a radial term X^2 + Y^2 (alone and with a gradient): a focal "
        "plane's PSF broadens outwards, which a full degree 2 needs three more terms for.",
    )
    cv_folds: int = Field(
        5, ge=2, le=20, description="Folds of the cross-validation choosing the degree."
    )
    mode_sets: list[tuple[str, ...]] = Field(
        [("width",), ("width", "e1", "e2")],
        description="Deformations of the mean kernel (twinkles.psf.modes.MODES) that mode "
        "models vary over the sensor, each set tried with every non-constant spatial model "
        "where no per-pixel variation predicts held-out stars better than a constant kernel "
        "([]: per-pixel models only).",
    )
    min_stars: int = Field(5, ge=2, description="Fewest stars for a PSF (else PsfError).")
    max_stars: int = Field(300, ge=5, description="Most stars used (the brightest).")
    snr_min: float = Field(50.0, gt=0, description="Candidate signal-to-noise floor.")
    snr_weight_cap: float = Field(
        1000.0,
        gt=0,
        description="S/N beyond which weights stop growing (~1000: stars near the full well).",
    )
    snr_weight_median_factor: float = Field(
        5.0,
        gt=0,
        description="Weights also stop growing at this multiple of the stars' median S/N, so "
        "that where a sensor has only a handful of stars one or two bright ones do not decide "
        "the model alone.",
    )
    isolation_radius: float = Field(
        10.0, gt=0, description="No other detection this close to a star (pixels)."
    )
    size_tolerance: float = Field(
        0.12, gt=0, le=0.5, description="Fractional half-light-radius width of the star locus."
    )
    max_peak_fraction: float = Field(
        0.8, gt=0, le=1.0, description="Brightest peak allowed, as a fraction of the full well."
    )
    clip_sigma: float = Field(4.0, gt=0, description="Stars clipped beyond this chi^2 spread.")
    iterations: int = Field(3, ge=1, le=10, description="Clipping passes.")
    refinements: int = Field(
        3, ge=0, le=20, description="Forward-model corrections per clipping pass."
    )

    @field_validator("mode_sets")
    @classmethod
    def _known_modes(cls, v: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
        for modes in v:
            unknown = [m for m in modes if m not in MODES]
            if unknown or not modes:
                raise ValueError(
                    f"mode_sets: {list(modes)} must be a non-empty set of {sorted(MODES)}"
                )
        return [tuple(modes) for modes in v]

    @field_validator("kernel_size")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError("kernel_size: must be odd")
        return v


@dataclass
class StarStamps:
    """The PSF stars' stamps (:meth:`PsfTask.star_stamps`)."""

    x: np.ndarray
    y: np.ndarray
    """Positions (pixels)."""
    ix: np.ndarray
    iy: np.ndarray
    """The pixels the stamps are centred on."""
    data: np.ndarray
    """Stamps (electrons), each less its own sky."""
    var: np.ndarray
    """Their variance."""
    centred: np.ndarray
    """``data`` shifted to put each star at its stamp's centre."""
    flux: np.ndarray
    """First fluxes: the sums of ``centred``."""
    snr: np.ndarray
    """Weights: signal-to-noise, capped (``snr_weight_cap``, ``snr_weight_median_factor``)."""
    x0: float
    y0: float
    scale: float
    """Normalisation of positions: the sensor's centre and half diagonal."""

    def normalised_position(self) -> tuple[np.ndarray, np.ndarray]:
        """The stars' positions in the model's normalised coordinates."""
        return (self.x - self.x0) / self.scale, (self.y - self.y0) / self.scale


@dataclass
class ModelChoice:
    """The spatial model cross-validation chose (:meth:`PsfTask.choose_model`)."""

    degree: int
    radial: bool
    modes: tuple[str, ...]
    """Deformations of a mode model; empty for a per-pixel polynomial."""
    cv_chi2: dict
    """Held-out chi^2 of each model tried."""
    candidates: list
    """The models tried last."""


@dataclass
class StarFit:
    """The stars under the fitted model (:meth:`PsfTask.fit`)."""

    flux: np.ndarray
    chi2: np.ndarray
    """Residual chi^2 per pixel."""
    used: np.ndarray
    """Kept after clipping."""
    residuals: np.ndarray
    """Stamp minus flux times model (electrons)."""


@dataclass
class PsfResult:
    """The PSF model and the stars it came from."""

    psf: PixelPSF
    stars: Table
    residuals: np.ndarray
    stamps: np.ndarray
    fwhm: float
    fwhm_eff: float

    @property
    def n_stars(self) -> int:
        """Number of stars used in the final fit."""
        return int(np.sum(self.stars["used"]))


def cut_stamps(
    image: np.ndarray, ix: np.ndarray, iy: np.ndarray, half: int, fill: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Stamps (n, 2 half + 1, 2 half + 1) centred on integer pixels, and where they are inside.

    Stamps wholly inside the image are copied block by block from a strided window view
    (~8x faster than gathering them pixel by pixel, which matters for forced photometry of
    tens of thousands of positions); only those crossing an edge are gathered and filled.
    """
    ix, iy = np.asarray(ix, dtype=int), np.asarray(iy, dtype=int)
    size = 2 * half + 1
    h, w = image.shape
    stamps = np.empty((len(ix), size, size), dtype=np.result_type(image.dtype, fill))
    inside = np.ones(stamps.shape, dtype=bool)
    interior = (ix >= half) & (ix < w - half) & (iy >= half) & (iy < h - half)
    if interior.any():
        windows = sliding_window_view(image, (size, size))
        stamps[interior] = windows[iy[interior] - half, ix[interior] - half]
    edge = np.flatnonzero(~interior)
    if len(edge):
        offsets = np.arange(-half, half + 1)
        yy = iy[edge, None, None] + offsets[None, :, None]
        xx = ix[edge, None, None] + offsets[None, None, :]
        on = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        gathered = image[np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
        stamps[edge] = np.where(on, gathered, fill)
        inside[edge] = on
    return stamps, inside


SpatialModel = tuple[int, bool] | tuple[int, bool, tuple[str, ...]]
"""A PSF's spatial model: ``(degree, radial)`` (every pixel a polynomial, see
:func:`~twinkles.geometry.spatial_terms`) or ``(degree, radial, modes)`` (the mean kernel's
deformations ``modes`` vary with those terms, :mod:`twinkles.psf.modes`)."""


def basis_fitter(
    stamps: np.ndarray, terms: np.ndarray, weight: np.ndarray, modes: tuple[str, ...] = ()
) -> Callable[[np.ndarray], np.ndarray]:
    """A function fitting the basis of a spatial model to stamps of the stars ``terms`` and
    ``weight`` describe: per-pixel weighted least squares, or with ``modes`` a
    :class:`~twinkles.psf.modes.ModeFit` whose deformations are those of the weighted mean
    of ``stamps`` (held fixed, so the function also fits a forward model's corrections)."""
    if modes:
        mean = np.tensordot(weight**2 / np.sum(weight**2), stamps, axes=1)
        return ModeFit(terms, weight, deformation_modes(mean, modes)).fit
    size = stamps.shape[-1]

    def per_pixel(images: np.ndarray) -> np.ndarray:
        coeffs, *_ = np.linalg.lstsq(
            terms * weight[:, None], images.reshape(len(images), -1) * weight[:, None], rcond=None
        )
        return coeffs.reshape(-1, size, size)

    return per_pixel


def cross_validated_model(
    stamps: np.ndarray,
    variance: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    weight: np.ndarray,
    models: list[SpatialModel],
    folds: int = 5,
) -> tuple[SpatialModel, list[float]]:
    """The spatial model of a pixel PSF that best predicts unseen stars.

    Parameters
    ----------
    stamps : array (n, k, k)
        The stars' stamps, centred and normalised to unit flux.
    variance : array (n, k, k)
        Their variance (in the same normalisation).
    u, v : array (n,)
        The stars' scaled sensor positions.
    weight : array (n,)
        The stars' weights in the fit (their signal-to-noise, as the PSF fit).
    models : list of SpatialModel
        The candidate models: polynomial degree, whether a radial term follows
        (:func:`~twinkles.geometry.spatial_terms`) and, for a mode model, the deformations
        that vary (:mod:`twinkles.psf.modes`).
    folds : int
        Each star is held out once, in one of ``folds`` groups (assigned at random with a
        fixed seed, so the choice is reproducible).

    Returns
    -------
    model : SpatialModel
        The model with the lowest held-out chi^2 (the first, among equals).
    chi2 : list of float
        Held-out chi^2 per pixel of each model, in the order given.
    """
    n = len(stamps)
    flat = stamps.reshape(n, -1)
    inverse_variance = 1.0 / variance.reshape(n, -1)
    group = np.random.default_rng(0).permutation(n) % min(folds, n)
    scores = []
    for model in models:
        degree, radial, modes = (*model, ())[:3]
        terms = spatial_terms(u, v, degree, radial)
        chi2 = 0.0
        for k in np.unique(group):
            train, test = group != k, group == k
            fit = basis_fitter(stamps[train], terms[train], weight[train], modes)
            basis = fit(stamps[train]).reshape(terms.shape[1], -1)
            chi2 += float(np.sum((flat[test] - terms[test] @ basis) ** 2 * inverse_variance[test]))
        scores.append(chi2 / flat.size)
    return models[int(np.argmin(scores))], scores


def cross_validated_degree(
    stamps: np.ndarray,
    variance: np.ndarray,
    u: np.ndarray,
    v: np.ndarray,
    weight: np.ndarray,
    max_degree: int,
    folds: int = 5,
) -> tuple[int, list[float]]:
    """:func:`cross_validated_model` among the polynomials of degree 0 to ``max_degree``:
    the degree and the held-out chi^2 of each degree."""
    models = [(degree, False) for degree in range(max_degree + 1)]
    (degree, _), scores = cross_validated_model(stamps, variance, u, v, weight, models, folds)
    return degree, scores


class PsfTask:
    """Measure the PSF of an exposure from its bright, isolated stars."""

    def __init__(self, config: PsfConfig | None = None):
        self.config = config or PsfConfig()

    def select(self, exposure: Exposure, candidates: Table) -> tuple[np.ndarray, float]:
        """Indices of PSF stars among ``candidates``, and the stellar-locus radius."""
        cfg = self.config
        half = cfg.kernel_size // 2
        x, y = np.asarray(candidates["x"]), np.asarray(candidates["y"])
        snr = np.asarray(candidates["flux"]) / np.asarray(candidates["flux_err"])
        ok = (snr > cfg.snr_min) & ~np.asarray(candidates["flag_blended"])
        h, w = exposure.shape
        ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
        ok &= (ix >= half) & (ix < w - half) & (iy >= half) & (iy < h - half)
        # isolation from every detection, faint ones included
        tree = cKDTree(np.column_stack([x, y]))
        neighbours = tree.query_ball_point(np.column_stack([x, y]), cfg.isolation_radius)
        ok &= np.array([len(n) == 1 for n in neighbours], dtype=bool)
        # clean stamps, peak below the full well
        bad = MaskPlane.SAT | MaskPlane.BAD | MaskPlane.CR | MaskPlane.INTRP | MaskPlane.NO_DATA
        idx = np.flatnonzero(ok)
        if len(idx):
            masks, _ = cut_stamps(exposure.mask, ix[idx], iy[idx], half, fill=int(MaskPlane.BAD))
            clean = ~np.any((masks & int(bad)) != 0, axis=(1, 2))
            full_well = exposure.metadata.get("saturate", 100000.0)
            peak = np.asarray(candidates["peak"])[idx] + exposure.metadata.get("sky_level", 0.0)
            clean &= peak < cfg.max_peak_fraction * full_well
            ok[idx[~clean]] = False
        locus = stellar_locus(np.asarray(candidates["flux_radius"])[ok], cfg.size_tolerance)
        r = np.asarray(candidates["flux_radius"])
        ok &= np.abs(r - locus) <= cfg.size_tolerance * locus
        idx = np.flatnonzero(ok)
        # the brightest max_stars
        idx = idx[np.argsort(-snr[idx])][: cfg.max_stars]
        return idx, locus

    def run(self, exposure: Exposure, candidates: Table) -> PsfResult:
        """Determine the PSF model of one exposure from its stars.

        Parameters
        ----------
        exposure : Exposure
            Background-subtracted image (electrons) with variance and mask.
        candidates : `~astropy.table.Table`
            Detections with ``x``, ``y`` (pixels), ``flux`` and ``flux_err`` (electrons),
            ``peak``, ``flux_radius`` (pixels; the stellar locus is found in it) and
            ``flag_blended``.

        Returns
        -------
        PsfResult
            The PSF model, the stars selected (``used`` marks those kept after clipping), their
            normalised residuals and stamps, and the model's FWHM and effective FWHM (pixels) at
            the sensor's centre.

        Raises
        ------
        PsfError
            No candidate above ``snr_min``, or fewer than ``min_stars`` usable stars.
        """
        cfg = self.config
        visit = exposure.metadata.get("visit", "?")
        snr = np.asarray(candidates["flux"]) / np.asarray(candidates["flux_err"])
        if not np.any(snr > cfg.snr_min):  # a blank or empty sky: nothing to select from
            raise PsfError(
                f"visit {visit}: no PSF star candidates ({len(candidates)} detections, none "
                f"with S/N > {cfg.snr_min:g})"
            )
        idx, locus = self.select(exposure, candidates)
        if len(idx) < cfg.min_stars:
            raise PsfError(
                f"visit {visit}: only {len(idx)} stars usable for the PSF (need "
                f"{cfg.min_stars}: bright, isolated, unsaturated, on the stellar locus)"
            )
        stars = self.star_stamps(exposure, candidates, idx)
        choice = self.choose_model(stars)
        psf, fit = self.fit(stars, choice)
        table = Table(
            {
                "x": stars.x,
                "y": stars.y,
                "flux": fit.flux,
                "chi2": fit.chi2,
                "used": fit.used,
                "flux_radius": np.asarray(candidates["flux_radius"])[idx],
            }
        )
        table.meta["stellar_locus_radius"] = locus
        table.meta["degree"] = choice.degree
        table.meta["radial"] = choice.radial
        table.meta["modes"] = list(choice.modes)
        table.meta["degree_cv_chi2"] = choice.cv_chi2
        table.meta["cv_models"] = choice.candidates
        return PsfResult(
            psf=psf,
            stars=table,
            residuals=fit.residuals / fit.flux[:, None, None],
            stamps=stars.data / fit.flux[:, None, None],
            fwhm=psf.fwhm(stars.x0, stars.y0),
            fwhm_eff=psf.fwhm_eff(stars.x0, stars.y0),
        )

    def star_stamps(self, exposure: Exposure, candidates: Table, idx: np.ndarray) -> StarStamps:
        """Sub-step 2: the selected stars' stamps, each less its own sky, and their first
        fluxes and weights.

        Parameters
        ----------
        exposure : Exposure
            Background-subtracted image (electrons) with its variance.
        candidates : `~astropy.table.Table`
            The detections (``x``, ``y``, ``flux``, ``flux_err``).
        idx : array of int
            Rows of ``candidates`` that are PSF stars (:meth:`select`).

        Returns
        -------
        StarStamps
        """
        cfg = self.config
        half = cfg.kernel_size // 2
        x = np.asarray(candidates["x"], dtype=float)[idx]
        y = np.asarray(candidates["y"], dtype=float)[idx]
        ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
        data, _ = cut_stamps(exposure.image, ix, iy, half)
        var, _ = cut_stamps(exposure.variance, ix, iy, half)
        # each star's own sky: the median of an annulus just outside the kernel (a Moffat
        # wing there holds a negligible part of the flux per pixel). A global background
        # off by a fraction of an electron puts a pedestal under a star's normalised stamp,
        # which the unit-sum kernel turns into too sharp a core; a sky taken inside the
        # kernel would subtract the star's own wings instead.
        outer = half + 8
        around, inside = cut_stamps(exposure.image, ix, iy, outer)
        radius = np.hypot(*np.mgrid[-outer : outer + 1, -outer : outer + 1])
        ring = (radius >= half + 3) & (radius <= outer)
        local_sky = np.array(
            [
                np.median(a[ring & m]) if np.any(ring & m) else 0.0
                for a, m in zip(around, inside, strict=True)
            ]
        )
        data = data - local_sky[:, None, None]
        centred = shift_stamps(data, -(x - ix), -(y - iy))
        snr = np.asarray(candidates["flux"])[idx] / np.asarray(candidates["flux_err"])[idx]
        snr = np.minimum(
            snr, min(cfg.snr_weight_cap, cfg.snr_weight_median_factor * float(np.median(snr)))
        )
        h, w = exposure.shape
        x0, y0, scale = 0.5 * (w - 1), 0.5 * (h - 1), 0.5 * float(np.hypot(w, h))
        return StarStamps(
            x, y, ix, iy, data, var, centred, centred.sum(axis=(1, 2)), snr, x0, y0, scale
        )

    def choose_model(self, stars: StarStamps) -> ModelChoice:
        """Sub-step 3: the spatial model the stars support, by cross-validation.

        Per-pixel polynomials up to ``degree`` (and radial terms with ``radial``), each with
        at least four stars per coefficient; where they fall back to a constant kernel, mode
        models (the mean kernel's deformations) too.

        Parameters
        ----------
        stars : StarStamps
            From :meth:`star_stamps`.

        Returns
        -------
        ModelChoice
        """
        cfg = self.config
        n = len(stars.x)
        models = [(d, False) for d in range(cfg.degree + 1)]
        if cfg.radial:
            models = sorted(models + [(d, True) for d in range(min(cfg.degree, 1) + 1)])
        models = [(d, r) for d, r in models if n >= 4 * spatial_terms(0.0, 0.0, d, r).shape[1]]
        u, v = stars.normalised_position()
        stamps = stars.centred / stars.flux[:, None, None]
        normalised_var = np.maximum(stars.var, 1e-6) / stars.flux[:, None, None] ** 2
        model_choice, cv_chi2 = cross_validated_model(
            stamps, normalised_var, u, v, stars.snr, models, cfg.cv_folds
        )
        if model_choice == (0, False):
            # the stars cannot follow a per-pixel variation: may a few deformations do?
            modes = [(d, r, m) for m in cfg.mode_sets for d, r in models if d or r]
            models = [model_choice, *modes]
            model_choice, cv_chi2 = cross_validated_model(
                stamps, normalised_var, u, v, stars.snr, models, cfg.cv_folds
            )
        degree, radial, modes = (*model_choice, ())[:3]
        return ModelChoice(degree, radial, tuple(modes), cv_chi2, models)

    def fit(self, stars: StarStamps, choice: ModelChoice) -> tuple[PixelPSF, StarFit]:
        """Sub-step 4: fit the model as a forward model of the stars, clipping the stars
        whose residual stands out.

        Parameters
        ----------
        stars : StarStamps
            From :meth:`star_stamps`.
        choice : ModelChoice
            From :meth:`choose_model`.

        Returns
        -------
        psf : PixelPSF
            The model.
        fit : StarFit
            Each star's flux, residual chi^2 per pixel, whether it was used, and residual.
        """
        cfg = self.config
        u, v = stars.normalised_position()
        terms = spatial_terms(u, v, choice.degree, choice.radial)
        x, y, data, var, snr = stars.x, stars.y, stars.data, stars.var, stars.snr
        flux = stars.flux
        stamps = stars.centred / flux[:, None, None]
        dx, dy = x - stars.ix, y - stars.iy
        modes, shape = choice.modes, (stars.x0, stars.y0, stars.scale)
        used = np.ones(len(x), dtype=bool)
        basis = basis_fitter(stamps, terms, snr, modes)(stamps)
        for _ in range(cfg.iterations):
            # the used stars' weighted fit (a mode model's deformations those of their mean)
            fit_basis = basis_fitter(stamps, terms, snr * used, modes)
            for _refine in range(cfg.refinements):
                psf = PixelPSF(basis, choice.degree, *shape, choice.radial, modes)
                model, _, _ = psf.images(x, y)
                fit_flux = np.sum(model * data, axis=(1, 2)) / np.sum(model**2, axis=(1, 2))
                flux = np.where(fit_flux > 0, fit_flux, flux)
                resid = data / flux[:, None, None] - model
                basis = basis + fit_basis(shift_stamps_transpose(resid, dx, dy))
            psf = PixelPSF(basis, choice.degree, *shape, choice.radial, modes)
            model, _, _ = psf.images(x, y)
            fit_flux = np.sum(model * data, axis=(1, 2)) / np.sum(model**2, axis=(1, 2))
            flux = np.where(fit_flux > 0, fit_flux, flux)
            resid = data - flux[:, None, None] * model
            chi2 = np.sum(resid**2 / np.maximum(var, 1e-6), axis=(1, 2)) / cfg.kernel_size**2
            med = np.median(chi2[used])
            spread = mad_std(chi2[used], med) + 1e-9
            new_used = chi2 < med + cfg.clip_sigma * spread
            if new_used.sum() < cfg.min_stars or np.array_equal(new_used, used):
                break
            used = new_used
        return psf, StarFit(flux, chi2, used, resid)
