"""Smooth maps over a sensor fitted to a few dozen stars, with only the terms they support.

A quantity measured on stars (an aperture ratio, a curve-of-growth step) is modelled as a
low-order function of the normalised sensor position ``(X, Y) = ((x - x0), (y - y0)) / scale``
(``scale`` the half-diagonal, so the corners lie at unit distance). The candidate models,
nested from the simplest:

* ``constant``;
* ``scaled``: ``1 + slope (t - 1) + curvature (t - 1)^2`` with ``t`` another map
  (:attr:`SensorMap.template`) and a slope and curvature known beforehand: one number, as a
  constant, for a quantity that physics ties
  to another (the growth of a star's light between two apertures and its core
  concentration, both set by the PSF's width), tried in place of the constant;
* ``template``: ``1, t - 1``: a quantity that changes as another does, with one number more
  than a constant;
* ``linear``: ``1, X, Y`` (a gradient in any direction);
* ``linear_radial``: ``1, X, Y, X^2 + Y^2`` (and a focal-plane-like radial pattern);
* ``linear_curved``: ``1, X, Y, (t - 1)^2`` (a gradient, and the square of the change of
  another map ``t``). A PSF model linear in position, of a PSF whose width changes along a
  gradient, errs by the square of the change (a PSF's pixels are not linear in its width):
  its fluxes over the stars' aperture fluxes curve along the width's gradient, which a radial
  term, the same in every direction, cannot follow;
* ``radial_curved``: ``1, X^2 + Y^2, (t - 1)^2``: the same for a PSF model linear in the
  radial term alone, of a PSF whose width changes radially (the square of the change then
  grows as the fourth power of the radius);
* ``quadratic``: every monomial up to degree 2.

The stars' values scatter beyond their photon noise (neighbours in an aperture, the PSF
model's imperfections), and a fit that trusts photon noise alone lets a few bright stars with
contaminated apertures draw a ramp of their own. So the errors are inflated by the scatter's
floor (:func:`error_floor`, found on the richest model the stars afford), outliers are
clipped, and the model is chosen by the Bayesian information criterion ``chi^2 + k ln n``
(Schwarz 1978, Ann. Stat. 6, 461) on those errors: a term stays only when the stars
demand it. Where the chosen model leaves less scatter beyond the errors than the richest
(one that follows another map can fit better), the floor is found again on its residuals:
the richest model's floor would count a curvature it cannot follow as scatter.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from twinkles.geometry import spatial_terms
from twinkles.stats import mad_std

__all__ = [
    "CURVED_MODELS",
    "FOLLOWING_MODELS",
    "MAP_MODELS",
    "SensorMap",
    "error_floor",
    "fit_sensor_map",
    "map_terms",
    "weighted_fit",
]

#: Models that follow another map (:attr:`SensorMap.template`).
FOLLOWING_MODELS = ("scaled", "template", "linear_curved", "radial_curved")
#: Following models that take the square of the other map's change (``curved``).
CURVED_MODELS = ("linear_curved", "radial_curved")
#: Candidate models from the simplest: (name, polynomial degree, radial term).
MAP_MODELS = (
    ("constant", 0, False),
    ("linear", 1, False),
    ("linear_radial", 1, True),
    ("quadratic", 2, False),
)
_MODEL = {name: (degree, radial) for name, degree, radial in MAP_MODELS}


def map_terms(
    X: np.ndarray,
    Y: np.ndarray,
    model: str,
    template: SensorMap | None = None,
    slope: float = 0.0,
    curvature: float = 0.0,
) -> np.ndarray:
    """The terms of ``model`` at normalised positions, shape (n, n_terms)."""
    if model in FOLLOWING_MODELS:
        if template is None:
            raise ValueError(f"a {model} model needs the map it follows")
        change = template(X, Y) - 1.0
        if model == "scaled":
            return (1.0 + slope * change + curvature * change**2)[:, None]
        if model == "linear_curved":
            return np.column_stack([spatial_terms(X, Y, 1, False), change**2])
        if model == "radial_curved":
            return np.column_stack([spatial_terms(X, Y, 0, True), change**2])
        return np.column_stack([np.ones(len(change)), change])
    degree, radial = _MODEL[model]
    return spatial_terms(X, Y, degree, radial)


def n_terms(model: str) -> int:
    """Number of coefficients of a sensor-map model (one of ``MAP_MODELS`` or
    ``FOLLOWING_MODELS``).
    """
    following = {"scaled": 1, "template": 2, "radial_curved": 3, "linear_curved": 4}
    if model in following:
        return following[model]
    degree, radial = _MODEL[model]
    return (degree + 1) * (degree + 2) // 2 + int(radial)


#: Median of a chi^2 variable of one degree of freedom.
CHI2_1_MEDIAN = 0.454936


def error_floor(residuals: np.ndarray, errors: np.ndarray, n_parameters: int = 0) -> float:
    """The ``s`` for which the residuals' ``r^2 / (e^2 + s^2)`` have the median of a chi^2 of
    one degree of freedom (scaled by ``n / (n - n_parameters)`` for the fitted parameters).

    The scatter of residuals beyond their statistical errors (0 when the errors explain
    it), as a survey's error floor is found, but on the median: a few stars with a
    neighbour in their aperture would otherwise set the floor of all; a median of
    ``r^2 - e^2`` instead is dominated by the faint stars, whose errors hide a floor of a few
    tenths of a percent.
    """
    r2, e2 = np.asarray(residuals, float) ** 2, np.asarray(errors, float) ** 2
    n = len(r2)
    if n - n_parameters < 1:
        return 0.0
    target = CHI2_1_MEDIAN * (n - n_parameters) / n

    def median_chi2(floor: float) -> float:
        return float(np.median(r2 / np.maximum(e2 + floor**2, 1e-300)))

    if median_chi2(0.0) <= target:
        return 0.0
    low, high = 0.0, float(np.sqrt(np.max(r2)))
    for _ in range(60):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if median_chi2(mid) > target else (low, mid)
    return 0.5 * (low + high)


@dataclass(frozen=True)
class SensorMap:
    """A fitted map: its model, coefficients and their covariance (and, for the models that
    follow another map, :data:`FOLLOWING_MODELS`, that map and the ``scaled`` slope and
    curvature)."""

    model: str
    coefficients: np.ndarray
    covariance: np.ndarray
    template: SensorMap | None = None
    slope: float = 0.0
    curvature: float = 0.0

    def _terms(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        return map_terms(
            np.atleast_1d(X),
            np.atleast_1d(Y),
            self.model,
            self.template,
            self.slope,
            self.curvature,
        )

    def __call__(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        return self._terms(X, Y) @ self.coefficients

    def error(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Standard error of the map at normalised positions."""
        terms = self._terms(X, Y)
        return np.sqrt(np.einsum("ij,jk,ik->i", terms, self.covariance, terms))

    def shape_error(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """Standard error of the map less its mean over the positions given: the error of
        its shape over them (0 for a constant)."""
        terms = self._terms(X, Y)
        centred = terms - terms.mean(axis=0)
        return np.sqrt(np.einsum("ij,jk,ik->i", centred, self.covariance, centred))

    def to_dict(self) -> dict:
        """JSON-able form (a template map is stored with the map it follows, not in it)."""
        out = {"model": self.model, "coefficients": [float(c) for c in self.coefficients]}
        if self.model == "scaled":
            out["slope"] = float(self.slope)
            out["curvature"] = float(self.curvature)
        return out

    @classmethod
    def from_dict(cls, data: dict, template: SensorMap | None = None) -> SensorMap:
        """The map written by `to_dict`; ``template`` is the map that a model of
        :data:`FOLLOWING_MODELS` follows.
        """
        coefficients = np.asarray(data["coefficients"], dtype=float)
        return cls(
            data["model"],
            coefficients,
            np.zeros((len(coefficients),) * 2),
            template if data["model"] in FOLLOWING_MODELS else None,
            float(data.get("slope", 0.0)),
            float(data.get("curvature", 0.0)),
        )


@dataclass(frozen=True)
class SensorMapFit:
    """A map and the stars behind it."""

    map: SensorMap
    residuals: np.ndarray
    used: np.ndarray
    floor: float
    bic: dict[str, float]


def weighted_fit(
    terms: np.ndarray, values: np.ndarray, sigma: np.ndarray
) -> tuple[np.ndarray, float, np.ndarray]:
    """Weighted linear least squares: the coefficients, the chi^2 and their covariance."""
    a = terms / sigma[:, None]
    coeffs, *_ = np.linalg.lstsq(a, values / sigma, rcond=None)
    chi2 = float(np.sum(((values - terms @ coeffs) / sigma) ** 2))
    return coeffs, chi2, np.linalg.pinv(a.T @ a)


def fit_sensor_map(
    X: np.ndarray,
    Y: np.ndarray,
    values: np.ndarray,
    errors: np.ndarray,
    richest: str = "linear_radial",
    clip_sigma: float = 3.0,
    min_stars_per_term: int = 4,
    template: SensorMap | None = None,
    slope: float | None = None,
    curvature: float = 0.0,
    follow: bool = True,
    curved: bool = False,
) -> SensorMapFit:
    """Fit ``values`` (errors ``errors``) over the sensor with the model the stars support.

    Parameters
    ----------
    X, Y : ndarray
        Normalised positions of the stars.
    values, errors : ndarray
        The measured quantity and its statistical error at each star.
    richest : str
        The richest model tried (one of :data:`MAP_MODELS`); models needing more than one
        term per ``min_stars_per_term`` stars are not tried.
    clip_sigma : float
        Stars beyond this many (floor-inflated) errors of the richest model are left out.
    template : SensorMap, optional
        A map the values may follow (the ``template`` model is then tried after
        ``constant``).
    slope : float, optional
        The values' fractional change per fractional change of ``template``, where physics
        gives it: the ``scaled`` model then takes the constant's place.
    curvature : float
        With ``slope``, the values' second-order change: ``curvature (t - 1)^2``.
    follow : bool
        Whether the ``template`` model (a slope of its own on ``template``) is tried.
    curved : bool
        Whether the curved models are tried too: ``radial_curved`` (after ``constant``)
        and ``linear_curved`` (after ``linear``, where that is).

    Returns
    -------
    SensorMapFit
        The chosen map (its covariance from the inflated errors), every star's residual,
        the stars used, the error floor and the BIC of each model tried.
    """
    X, Y = np.asarray(X, float), np.asarray(Y, float)
    values, errors = np.asarray(values, float), np.asarray(errors, float)
    names = [name for name, _, _ in MAP_MODELS]
    candidates = names[: names.index(richest) + 1]
    candidates = [m for m in candidates if len(values) >= min_stars_per_term * n_terms(m)]
    candidates = candidates or ["constant"]
    top = candidates[-1]
    top_terms = map_terms(X, Y, top)
    if curved and template is not None:
        after = {"radial_curved": "constant", "linear_curved": "linear"}
        for model, previous in after.items():
            if previous in candidates and len(values) >= min_stars_per_term * n_terms(model):
                candidates.insert(candidates.index(previous) + 1, model)
    if follow and template is not None and len(values) >= min_stars_per_term * n_terms("template"):
        candidates.insert(1, "template")
    if template is not None and slope is not None:
        candidates[0] = "scaled"
    used = np.ones(len(values), dtype=bool)
    floor = 0.0
    for _ in range(5):  # the floor and the clipping from the richest affordable model
        sigma = np.hypot(errors, floor)
        coeffs, _, _ = weighted_fit(top_terms[used], values[used], sigma[used])
        resid = values - top_terms @ coeffs
        floor = error_floor(resid[used], errors[used], top_terms.shape[1])
        sigma = np.hypot(errors, floor)
        new_used = np.abs(resid) < clip_sigma * np.maximum(sigma, mad_std(resid[used], center=0.0))
        if new_used.sum() < top_terms.shape[1] + 1 or np.array_equal(new_used, used):
            break
        used = new_used
    sigma = np.hypot(errors, floor)
    n = int(used.sum())
    bic, fits = {}, {}
    for model in candidates:
        terms = map_terms(X, Y, model, template, slope or 0.0, curvature)
        coeffs, chi2, cov = weighted_fit(terms[used], values[used], sigma[used])
        bic[model] = chi2 + terms.shape[1] * np.log(n)
        fits[model] = (coeffs, cov)
    best = min(candidates, key=lambda m: bic[m])
    coeffs, cov = fits[best]
    if floor > 0 and best != top:
        # a model of another shape than the richest (one that follows another map) may fit
        # better than it: the scatter beyond the errors is then what the chosen one leaves
        # (each floor with its own model's number of terms)
        terms = map_terms(X, Y, best, template, slope or 0.0, curvature)
        own = error_floor((values - terms @ coeffs)[used], errors[used], terms.shape[1])
        if own < floor:
            floor = own
            coeffs, _, cov = weighted_fit(terms[used], values[used], np.hypot(errors, floor)[used])
    follows = best in FOLLOWING_MODELS
    scaled = best == "scaled" and slope is not None
    chosen = SensorMap(
        best,
        coeffs,
        cov,
        template if follows else None,
        float(slope) if scaled else 0.0,
        float(curvature) if scaled else 0.0,
    )
    return SensorMapFit(chosen, values - chosen(X, Y), used, floor, bic)
