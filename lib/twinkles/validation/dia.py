"""Difference imaging scored against the truth.

A difference image measures ``flux(t) - flux(template)``, and the template's flux of an object
is the weighted mean of its fluxes at the template's visits (the coadd weights, recorded in
``goodSeeingCoadd_summary``): a supernova that was already bright in a template visit leaves
a negative offset, a lensed quasar's images their flux at the template epochs. Every expected
difference flux here accounts for that.

Forced photometry at a DIAObject measures every variable source under its PSF, not only the
one it is matched to: two supernovae of one host, years apart, share a DIAObject, and a
source a pixel away still gives most of its flux to the fit. The flux a light-curve point
should have is therefore found by forward modelling (:func:`expected_forced_flux`): the truth's
difference fluxes drawn with the difference image's PSF on a noise-free copy of it, measured
by the same forced photometry.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
from astropy.io import fits
from astropy.table import Table, vstack
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from twinkles.diffim.injection import fit_efficiency
from twinkles.geometry import (
    chord_length,
    friends_of_friends,
    nearest_id_within,
    unit_vectors,
)
from twinkles.image.exposure import Exposure, MaskPlane, PhotoCalib
from twinkles.measurement.forced import (
    ForcedPhotometryConfig,
    ForcedPhotometryTask,
    footprint_reaches,
)
from twinkles.measurement.psf_flux import psf_flux
from twinkles.sim.galaxies import galaxy_flux
from twinkles.sim.truth import Truth
from twinkles.stats import IQR_TO_SIGMA, robust_std
from twinkles.units import AB_MAG_OF_1_NJY, njy_to_mag
from twinkles.validation.static_sky import match_sky

__all__ = [
    "ARTIFACT_CAUSES",
    "ArtifactCriteria",
    "DifferenceScores",
    "SensorFootprint",
    "artifact_rates",
    "brightest_dia_sources",
    "classify_artifacts",
    "dia_object_completeness_purity",
    "differenced_visits",
    "expected_difference_flux",
    "expected_forced_flux",
    "forced_dia_truth",
    "host_magnitudes",
    "injection_efficiency",
    "injection_results",
    "lensed_image_recovery",
    "lensed_systems",
    "light_curve_pulls",
    "real_bogus_examples",
    "score_dia_sources",
    "score_difference_images",
    "supernova_pulls",
    "template_summaries",
    "transient_peaks",
    "usable_forced_points",
    "variable_truth",
    "visible_transients",
]


def variable_truth(truth: Truth) -> Table:
    """Every object whose flux changes: supernovae, lensed-quasar images, variable stars."""
    stars = truth.stars[np.asarray(truth.stars["is_variable"], dtype=bool)]
    parts = [
        ("supernova", truth.supernovae),
        ("lensed_image", truth.lensed_images),
        ("variable_star", stars),
    ]
    return Table(
        {
            "truth_id": np.concatenate([np.asarray(t["id"], np.int64) for _, t in parts]),
            "kind": np.concatenate([np.full(len(t), k) for k, t in parts]),
            "ra": np.concatenate([np.asarray(t["ra"], float) for _, t in parts]),
            "dec": np.concatenate([np.asarray(t["dec"], float) for _, t in parts]),
        }
    )


def expected_difference_flux(
    truth: Truth, ids: np.ndarray, band: str, mjd: float, template: dict
) -> np.ndarray:
    """True difference flux (nJy) of objects ``ids`` at ``mjd`` against a template.

    ``template`` is a ``goodSeeingCoadd_summary``: ``mjds`` and ``weights`` of its visits;
    with ``footprints`` (:func:`template_summaries`), an object's template flux is the
    weighted mean over the visits whose sensor held it only (a template visit pointed or
    rotated elsewhere adds nothing at the object: near the template's coverage edge one visit
    can make it alone); NaN for an object no template visit held (the template has no data
    there, nor has the difference).
    """
    ids = np.asarray(ids, dtype=np.int64)
    now = truth.flux(ids, band, mjd)
    weights = np.broadcast_to(
        np.asarray(template["weights"], float), (len(ids), len(template["weights"]))
    )
    footprints = template.get("footprints")
    if footprints is not None and len(ids):
        ra, dec = truth.positions(ids)
        weights = weights * np.column_stack([f.holds(ra, dec) for f in footprints])
    ref = np.zeros(len(ids))
    for k, t in enumerate(template["mjds"]):
        ref += weights[:, k] * truth.flux(ids, band, float(t))
    total = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return now - np.where(total > 0, ref / total, np.nan)


@dataclass(frozen=True)
class SensorFootprint:
    """Where a visit's sensor lay on the sky, and its saturated pixels."""

    wcs: WCS
    shape: tuple[int, int]
    """(rows, columns)."""
    saturated: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    """(x, y) of the SAT-masked pixels."""

    def holds(self, ra: np.ndarray, dec: np.ndarray, margin: float = 0.0) -> np.ndarray:
        """Whether sky positions (deg) fall on the sensor at least ``margin`` pixels inside
        its edge (a negative margin: at most that far outside)."""
        h, w = self.shape
        x, y = self.wcs.all_world2pix(ra, dec, 0)
        lo = margin - 0.5
        return (x > lo) & (x < w - 1 - lo) & (y > lo) & (y < h - 1 - lo)

    def saturated_within(self, ra: np.ndarray, dec: np.ndarray, reach: float) -> np.ndarray:
        """Whether a saturated pixel lies within ``reach`` pixels (either axis) of each
        position."""
        if not len(self.saturated) or not len(ra):
            return np.zeros(len(ra), dtype=bool)
        x, y = self.wcs.all_world2pix(ra, dec, 0)
        dist, _ = cKDTree(self.saturated).query(np.column_stack([x, y]), p=np.inf)
        return dist <= reach


def expected_forced_flux(
    diff: Exposure,
    truth: Truth,
    variables: Table,
    band: str,
    mjd: float,
    template: dict,
    ra: np.ndarray,
    dec: np.ndarray,
    config: ForcedPhotometryConfig | None = None,
) -> np.ndarray:
    """The PSF flux (nJy) forced photometry at (ra, dec) on ``diff`` should measure.

    Every object of ``variables`` (:func:`variable_truth`) is drawn at its true position with
    its :func:`expected_difference_flux`, using the difference image's PSF, on a noise-free
    copy of ``diff`` (same mask and variance); :class:`ForcedPhotometryTask` with ``config``
    then measures all positions (ra, dec) as ``forced_dia_photometry`` does, joint fits of
    neighbouring positions included. The result is linear in the truth, so it is the exact
    expectation of the measurement for point sources, blends and all.

    Parameters
    ----------
    diff : Exposure
        The difference image (nJy), with its PSF and WCS.
    truth, variables : Truth, Table
        The simulation's truth and its variable objects.
    band, mjd, template
        The visit's filter and epoch, and its template's ``goodSeeingCoadd_summary``.
    ra, dec : array
        Every forced position of the visit (deg): all DIAObjects, since which positions are
        fitted together depends on all of them.
    config : ForcedPhotometryConfig, optional
        The forced photometry's configuration (the default is ``forced_dia_photometry``'s).

    Returns
    -------
    ndarray
        Expected ``psFlux`` per position; NaN off the image.
    """
    if diff.psf is None or diff.wcs is None:
        raise ValueError("expected_forced_flux needs a difference image with PSF and WCS")
    flux = expected_difference_flux(truth, variables["truth_id"], band, mjd, template)
    x, y = diff.wcs.all_world2pix(np.asarray(variables["ra"]), np.asarray(variables["dec"]), 0)
    # an object outside the template's coverage is where the difference has no data
    model = diff.psf.render(diff.shape, x, y, np.nan_to_num(flux)).astype(np.float32)
    noise_free = Exposure(
        model, diff.mask, diff.variance, diff.wcs, diff.psf, PhotoCalib(AB_MAG_OF_1_NJY), {}
    )
    psf_only = (config or ForcedPhotometryConfig()).model_copy(update={"aperture_radii": []})
    result = ForcedPhotometryTask(psf_only).run(noise_free, ra, dec, ap_corr=1.0)
    return np.asarray(result.catalog["psFlux"], float)


def score_dia_sources(
    dia_sources: Table,
    visible: Table,
    radius_arcsec: float = 1.0,
    min_snr: float = 10.0,
    blend_px: float = 0.0,
) -> dict:
    """Recovery of the visible transients of one visit, and DIASources that match nothing.

    Transients closer together than ``blend_px`` (the images of a lensed quasar) are one
    blend: its light is one footprint, which may hold one DIASource at its brightest peak. A
    transient with no DIASource of its own counts as recovered through its blend when the blend
    has one; the number recovered only so is reported apart (``n_blended``).

    Parameters
    ----------
    dia_sources : Table
        The visit's DIASources (``ra``, ``decl``).
    visible : Table
        Variable truth objects on the difference image with ``expected_snr``
        (|expected difference flux| / its measured error), and ``x``, ``y`` (pixels) when
        ``blend_px`` is set.
    radius_arcsec : float
        Match radius.
    min_snr : float
        Transients at least this significant count in the recovery.
    blend_px : float
        Transients closer than this (pixels) are blended; 0: none are.

    Returns
    -------
    dict
        ``n_expected``, ``n_recovered`` (of those with ``expected_snr >= min_snr``, their
        blends' DIASources included), ``n_blended`` (of those, recovered only through their
        blend), ``n_dia_sources``, ``n_spurious`` (DIASources within ``radius_arcsec`` of no
        variable object), ``found`` (per ``visible`` row: a DIASource within
        ``radius_arcsec``), ``found_in_blend`` (per row: of it or of its blend) and ``missed``
        (truth ids).
    """
    dia_xyz = unit_vectors(dia_sources["ra"], dia_sources["decl"])
    chord = chord_length(radius_arcsec)
    near_truth = np.zeros(len(dia_sources), dtype=bool)
    found = np.zeros(len(visible), dtype=bool)
    if len(dia_sources) and len(visible):
        truth_xyz = unit_vectors(visible["ra"], visible["dec"])
        near_truth = cKDTree(truth_xyz).query(dia_xyz)[0] <= chord
        found = cKDTree(dia_xyz).query(truth_xyz)[0] <= chord
    found_in_blend = found.copy()
    if blend_px > 0 and len(visible):
        xy = np.column_stack([np.asarray(visible["x"]), np.asarray(visible["y"])])
        group = friends_of_friends(xy, blend_px)
        found_in_blend = np.isin(group, group[found])
    strong = np.asarray(visible["expected_snr"]) >= min_snr
    recovered = found_in_blend[strong]
    return {
        "n_expected": int(strong.sum()),
        "n_recovered": int(recovered.sum()),
        "n_blended": int(np.sum(recovered & ~found[strong])),
        "n_dia_sources": len(dia_sources),
        "n_spurious": int((~near_truth).sum()),
        "found": found,
        "found_in_blend": found_in_blend,
        "missed": np.asarray(visible["truth_id"])[strong][~recovered].tolist(),
    }


#: Causes of a spurious DIASource (one near no variable object), in the order they are tried.
ARTIFACT_CAUSES = (
    "edge",
    "cosmic_ray",
    "saturated",
    "bright_star",
    "star_wings",
    "bright_galaxy",
    "faint_object",
    "noise",
)


@dataclass(frozen=True)
class ArtifactCriteria:
    """Where a spurious DIASource lies, by cause (see :func:`classify_artifacts`)."""

    match_arcsec: float = 1.0
    """A DIASource this close to an object is on it (arcsec)."""
    edge_px: float = 10.0
    """Closer than this to the sensor's edge (pixels), or flagged ``flag_edge``: ``edge``."""
    cosmic_ray_px: float = 2.0
    """A CR-masked pixel of the calexp this close (pixels): ``cosmic_ray``."""
    saturated_arcsec: float = 6.0
    """A SAT-masked pixel of the calexp this close (arcsec), or ``flag_saturated``."""
    bright_star_mag: float = 19.0
    """Within ``bright_star_arcsec`` of a star brighter than this (AB, the visit's band):
    ``bright_star``."""
    bright_star_arcsec: float = 2.5
    """Reach of a star's subtraction residual (arcsec): where the two PSFs' wings differ it is
    a ring, out to about the matching kernel's half-width (10 px)."""
    wing_star_mag: float = 17.0
    """Within ``wing_arcsec`` of a star brighter than this: ``star_wings``."""
    wing_arcsec: float = 10.0
    """Reach of a bright star's wings (arcsec)."""
    bright_galaxy_mag: float = 22.0
    """On a galaxy brighter than this (within its extent): ``bright_galaxy``."""
    galaxy_extent: float = 2.0
    """A galaxy's extent: this many half-light radii (its larger component's), at least
    ``match_arcsec``; 1" where the truth gives no size."""


def classify_artifacts(
    dia_sources: Table,
    exposure: Exposure,
    truth: Truth,
    band: str,
    pixel_scale: float,
    criteria: ArtifactCriteria | None = None,
) -> np.ndarray:
    """The cause of every DIASource of a visit that matches no variable object.

    Each spurious DIASource gets the first cause of :data:`ARTIFACT_CAUSES` it meets: on the
    sensor's edge; at a cosmic ray; near saturated pixels (a saturated star or its mask's
    edge); on or around a bright star (its subtraction residual: the kernel or the astrometry
    not matching the PSFs); in the wings of a very bright star (PSF light beyond the kernel);
    on a bright galaxy; on any other object; else noise. DIASources near a variable object
    (within ``match_arcsec``) get ``""``.

    Parameters
    ----------
    dia_sources : Table
        The visit's DIASources (``ra``, ``decl``, ``x``, ``y``, ``flag_edge``,
        ``flag_saturated``).
    exposure : Exposure
        The visit's calexp or its difference image, which carries the calexp's masks (its SAT
        and CR masks, its WCS for the truth's positions).
    truth : Truth
        The simulation's objects.
    band : str
        The visit's band.
    pixel_scale : float
        Arcsec per pixel.
    criteria : ArtifactCriteria
        Radii and magnitudes.

    Returns
    -------
    ndarray of str
        One cause per DIASource.
    """
    c = criteria or ArtifactCriteria()
    n = len(dia_sources)
    causes = np.full(n, "", dtype="U16")
    if not n:
        return causes
    if exposure.wcs is None:
        raise ValueError("classify_artifacts needs the exposure's WCS")
    x = np.asarray(dia_sources["x"], dtype=float)
    y = np.asarray(dia_sources["y"], dtype=float)
    here = np.column_stack([x, y])

    def pixels(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        px, py = exposure.wcs.all_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0)
        return np.column_stack([px, py])

    def distance_to(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance (arcsec) to the nearest point, and its index."""
        if not len(points):
            return np.full(n, np.inf), np.zeros(n, dtype=int)
        d, i = cKDTree(points).query(here)
        return d * pixel_scale, i

    variables = variable_truth(truth)
    spurious = distance_to(pixels(variables["ra"], variables["dec"]))[0] > c.match_arcsec

    def masked_within(planes: MaskPlane, radius_px: float) -> np.ndarray:
        ys, xs = np.nonzero(exposure.masked(planes))
        return distance_to(np.column_stack([xs, ys]))[0] / pixel_scale <= radius_px

    h, w = exposure.shape
    to_edge = np.minimum.reduce([x, y, w - 1 - x, h - 1 - y])
    steady = truth.stars[~np.asarray(truth.stars["is_variable"], dtype=bool)]
    star_mag = np.asarray(steady[f"mag_{band}"], dtype=float)
    d_star, i_star = distance_to(pixels(steady["ra"], steady["dec"]))
    very_bright = star_mag < c.wing_star_mag
    d_wings = distance_to(pixels(steady["ra"][very_bright], steady["dec"][very_bright]))[0]
    galaxies = truth.galaxies
    gal_mag = njy_to_mag(galaxy_flux(galaxies, band))
    if "disk_hlr" in galaxies.colnames:
        hlr = np.maximum(np.asarray(galaxies["disk_hlr"]), np.asarray(galaxies["bulge_hlr"]))
        extent = np.maximum(c.galaxy_extent * hlr, c.match_arcsec)
    else:
        extent = np.ones(len(galaxies))
    d_gal, i_gal = distance_to(pixels(galaxies["ra"], galaxies["dec"]))
    on_galaxy = d_gal <= (extent[i_gal] if len(galaxies) else 0.0)
    tests = {
        "edge": (to_edge < c.edge_px) | np.asarray(dia_sources["flag_edge"], dtype=bool),
        "cosmic_ray": masked_within(MaskPlane.CR, c.cosmic_ray_px),
        "saturated": masked_within(MaskPlane.SAT, c.saturated_arcsec / pixel_scale)
        | np.asarray(dia_sources["flag_saturated"], dtype=bool),
        "bright_star": (d_star <= c.bright_star_arcsec) & (star_mag[i_star] < c.bright_star_mag),
        "star_wings": d_wings <= c.wing_arcsec,
        "bright_galaxy": on_galaxy & (gal_mag[i_gal] < c.bright_galaxy_mag),
        "faint_object": on_galaxy | (d_star <= c.match_arcsec),
        "noise": np.ones(n, dtype=bool),
    }
    for cause in reversed(ARTIFACT_CAUSES):  # the first cause that holds wins
        causes[spurious & tests[cause]] = cause
    return causes


def artifact_rates(causes: np.ndarray, n_visits: int, area_deg2: float) -> Table:
    """Spurious DIASources per deg2 per visit, by cause.

    Parameters
    ----------
    causes : array of str
        The causes of every DIASource of the visits scored (:func:`classify_artifacts`;
        ``""`` for those near a variable object).
    n_visits : int
        How many visits were scored (those without a DIASource too).
    area_deg2 : float
        The sensor's area (deg2).

    Returns
    -------
    Table
        Per cause of :data:`ARTIFACT_CAUSES` and ``total``: ``n`` (over all visits),
        ``per_visit`` and ``per_deg2_per_visit``.
    """
    if not area_deg2 > 0 or n_visits < 1:
        raise ValueError(
            f"artifact rates need visits and a sensor area, got {n_visits} visits and "
            f"{area_deg2} deg2"
        )
    causes = np.asarray(causes)
    rows = []
    for cause in (*ARTIFACT_CAUSES, "total"):
        k = int(np.sum(causes != "")) if cause == "total" else int(np.sum(causes == cause))
        rows.append(
            {
                "cause": cause,
                "n": k,
                "per_visit": k / n_visits,
                "per_deg2_per_visit": k / n_visits / area_deg2,
            }
        )
    return Table(rows=rows)


def light_curve_pulls(rows: Table, n_boot: int = 2000, seed: int = 0) -> dict:
    """Pull statistics of forced difference photometry against the expected difference flux.

    ``rows`` need ``psFlux``, ``psFluxErr`` and ``expected_flux``; returns the robust standard
    deviation and the median of ``(psFlux - expected) / psFluxErr``, the number of points, and
    ``pull_std_err`` and ``pull_median_err``, their standard errors.

    The points of one light curve are not independent: every difference image of a band
    subtracts the same template, whose noise at the object's position (and any residual of
    its host) is common to all of them, so the statistics of a few light curves' points
    scatter by more than those of as many independent points (``1.25 / sqrt(n)`` for the
    median). With a ``truth_id`` column the standard errors are therefore a bootstrap over
    whole light curves (a cluster bootstrap; Efron & Tibshirani 1993, ch. 8); without one,
    over points.
    """
    flux = np.asarray(rows["psFlux"], float)
    err = np.asarray(rows["psFluxErr"], float)
    pulls = (flux - np.asarray(rows["expected_flux"], float)) / err
    finite = np.isfinite(pulls)
    pulls = pulls[finite]
    if len(pulls) < 3:
        return {
            "n": len(pulls),
            "pull_std": float("nan"),
            "pull_std_err": float("nan"),
            "pull_median": float("nan"),
            "pull_median_err": float("nan"),
        }
    if "truth_id" in rows.colnames:
        groups = np.asarray(rows["truth_id"])[finite]
    else:
        groups = np.arange(len(pulls))
    _, group_of = np.unique(groups, return_inverse=True)
    members = np.split(np.argsort(group_of, kind="stable"), np.cumsum(np.bincount(group_of))[:-1])
    rng = np.random.default_rng(seed)
    # each resample's quartiles and median: its robust std (as robust_std) and median
    quartiles = np.empty((n_boot, 3))
    for k in range(n_boot):
        chosen = rng.integers(0, len(members), len(members))
        quartiles[k] = np.percentile(
            pulls[np.concatenate([members[i] for i in chosen])], [25, 50, 75]
        )
    return {
        "n": len(pulls),
        "pull_std": robust_std(pulls),
        "pull_std_err": float(np.std((quartiles[:, 2] - quartiles[:, 0]) * IQR_TO_SIGMA)),
        "pull_median": float(np.median(pulls)),
        "pull_median_err": float(np.std(quartiles[:, 1])),
    }


def visible_transients(
    diff, truth: Truth, variables: Table, band: str, mjd: float, template: dict
) -> Table:
    """Variable truth objects on a difference image: expected and measured difference flux.

    ``expected_flux`` is the object's own difference flux; ``expected_psf_flux`` what a PSF
    fit at its place measures of every variable's light (:func:`expected_forced_flux`, one
    fit per place): a supernova's and an older one's on the same host, of opposite signs,
    cancel there. ``expected_snr`` is the smaller of the two in absolute value (0 where their
    signs differ: what is seen there is another object's), so that an object counts as
    detectable only if its own light is and is not cancelled, over the PSF-flux error
    measured at the true position, scaled as the DIASources' errors are
    (``psf_flux_err_scale``, the noise of PSF fluxes at blank places over the variance
    plane's prediction; as the injections' ``expected_snr``).

    Objects whose PSF footprint crosses the image's edge or reaches missing data are left out
    (the forced photometry flags them ``flag_edge``), and so are those whose footprint crosses
    the edge of a template visit's sensor or holds saturated pixels of it (``footprints`` of
    :func:`template_summaries`), where the template holds part of the object from that visit
    and part without it, which no single expected flux describes.
    """
    x, y = diff.wcs.all_world2pix(np.asarray(variables["ra"]), np.asarray(variables["dec"]), 0)
    h, w = diff.shape
    half = diff.psf.half
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    inside = (ix >= half) & (ix < w - half) & (iy >= half) & (iy < h - half)
    inside[inside] = ~footprint_reaches(diff.mask, MaskPlane.NO_DATA, ix[inside], iy[inside], half)
    ra, dec = np.asarray(variables["ra"], float), np.asarray(variables["dec"], float)
    for footprint in template.get("footprints") or ():
        # wholly on that visit's sensor or wholly off it, and not saturated there
        on = footprint.holds(ra, dec, margin=half)
        off = ~footprint.holds(ra, dec, margin=-half)
        inside &= (on & ~footprint.saturated_within(ra, dec, half)) | off
    out = variables[inside]
    out["x"], out["y"] = x[inside], y[inside]
    out["expected_flux"] = expected_difference_flux(truth, out["truth_id"], band, mjd, template)
    # one PSF fit per place, as a DIASource's own: of the place's light, neighbours' included
    alone = ForcedPhotometryConfig(group_radius=1e-6)
    out["expected_psf_flux"] = expected_forced_flux(
        diff, truth, variables, band, mjd, template, out["ra"], out["dec"], alone
    )
    flux, err, _ = psf_flux(diff, out["x"], out["y"])
    out["psFlux"] = flux
    out["psFluxErr"] = err * float(diff.metadata.get("psf_flux_err_scale", 1.0))
    own, seen = np.asarray(out["expected_flux"]), np.asarray(out["expected_psf_flux"])
    signal = np.where(np.sign(own) == np.sign(seen), np.minimum(np.abs(own), np.abs(seen)), 0.0)
    out["expected_snr"] = signal / out["psFluxErr"]
    return out


class _ForcedTruth:
    """DIAObjects matched to true transients, and the truth of their forced photometry on one
    visit at a time (:func:`forced_dia_truth`)."""

    def __init__(
        self,
        truth: Truth,
        dia_objects: Table,
        kinds: tuple[str, ...] = ("supernova", "lensed_image"),
        radius_arcsec: float = 0.5,
    ):
        self.truth = truth
        self.dia_objects = dia_objects
        self.variables = variable_truth(truth)
        targets = self.variables[np.isin(self.variables["kind"], kinds)]
        self.truth_of: dict[int, int] = {}
        if len(targets) and len(dia_objects):
            i_truth, i_obj, _ = match_sky(
                targets["ra"], targets["dec"], dia_objects["ra"], dia_objects["decl"], radius_arcsec
            )
            object_ids = np.asarray(dia_objects["diaObjectId"], dtype=np.int64)
            self.truth_of = dict(
                zip(
                    object_ids[i_obj].tolist(),
                    np.asarray(targets["truth_id"])[i_truth].tolist(),
                    strict=True,
                )
            )
            self.row_of = {int(o): k for k, o in enumerate(object_ids)}
        self.kind_of = dict(
            zip(targets["truth_id"].tolist(), targets["kind"].tolist(), strict=True)
        )

    def matched_forced(self, butler, visit: int) -> Table:
        """The visit's DiaForcedSource rows of matched DIAObjects (empty if none)."""
        if not self.truth_of or not butler.exists("forced_diaSrc", visit=visit):
            return Table()
        forced = butler.get("forced_diaSrc", visit=visit)
        return forced[np.isin(forced["diaObjectId"], list(self.truth_of))]

    def of_visit(
        self, forced: Table, diff: Exposure, visit: int, band: str, mjd: float, template: dict
    ) -> Table:
        """``forced`` (from :meth:`matched_forced`) with the truth columns of
        :func:`forced_dia_truth`, measured on the visit's difference image ``diff``."""
        forced["truth_id"] = np.array([self.truth_of[o] for o in forced["diaObjectId"].tolist()])
        forced["kind"] = np.array([self.kind_of[t] for t in forced["truth_id"].tolist()])
        forced["band"] = np.full(len(forced), band)
        forced["mjd"] = np.full(len(forced), mjd)
        forced["own_flux"] = expected_difference_flux(
            self.truth, forced["truth_id"], band, mjd, template
        )
        expected = expected_forced_flux(
            diff,
            self.truth,
            self.variables,
            band,
            mjd,
            template,
            np.asarray(self.dia_objects["ra"], float),
            np.asarray(self.dia_objects["decl"], float),
        )
        forced["expected_flux"] = expected[[self.row_of[int(o)] for o in forced["diaObjectId"]]]
        forced["in_template"] = np.full(len(forced), visit in template["visits"])
        return forced


def forced_dia_truth(
    butler,
    truth: Truth,
    dia_objects: Table,
    visits: Table,
    templates: dict[str, dict],
    kinds: tuple[str, ...] = ("supernova", "lensed_image"),
    radius_arcsec: float = 0.5,
) -> Table:
    """DiaForcedSource rows of DIAObjects matched to true transients, with the truth.

    Each true object of ``kinds`` is matched to its nearest DIAObject within
    ``radius_arcsec`` (one to one); the matched DIAObject's forced photometry on every visit
    gets ``truth_id``, ``kind``, ``band``, ``mjd``, ``own_flux`` (the matched object's
    :func:`expected_difference_flux` against that band's template), ``expected_flux`` (what the
    forced photometry should measure there, every variable source under the PSF included:
    :func:`expected_forced_flux`) and ``in_template`` (the visit is one of the template's:
    its difference is not independent of the template). :func:`score_difference_images`
    gives the same rows from its own reading of each difference image.
    """
    matched = _ForcedTruth(truth, dia_objects, kinds, radius_arcsec)
    parts = []
    for row in visits:
        visit, band = int(row["obsHistID"]), str(row["filter"])
        if band not in templates:
            continue
        forced = matched.matched_forced(butler, visit)
        if len(forced) == 0:
            continue
        diff = butler.get("deepDiff_differenceExp", visit=visit)
        parts.append(
            matched.of_visit(forced, diff, visit, band, float(row["expMJD"]), templates[band])
        )
    return vstack(parts, metadata_conflicts="silent") if parts else Table()


def transient_peaks(
    truth: Truth, variables: Table, visits: Table, templates: dict[str, dict]
) -> Table:
    """Each variable object's brightest expected difference flux over the differenced visits.

    Parameters
    ----------
    truth : Truth
        The simulation's truth.
    variables : Table
        From :func:`variable_truth`.
    visits : Table
        The differenced visits: ``obsHistID``, ``filter``, ``expMJD`` and ``five_sigma_depth``
        (AB mag, the calexp's measured point-source depth).
    templates : dict
        ``goodSeeingCoadd_summary`` per band.

    Returns
    -------
    Table
        ``variables`` with ``peak_flux`` (the largest |expected difference flux|, nJy),
        ``peak_mag`` (its AB magnitude), ``peak_snr`` (that flux over the visit's 1-sigma
        point-source flux, from its 5-sigma depth: the calexp's noise, so the template's
        own noise is left out) and ``peak_visit``.
    """
    ids = np.asarray(variables["truth_id"], dtype=np.int64)
    flux = np.zeros((len(ids), len(visits)))
    sigma = np.ones(len(visits))
    for k, row in enumerate(visits):
        band = str(row["filter"])
        if band not in templates:
            continue
        expected = expected_difference_flux(truth, ids, band, float(row["expMJD"]), templates[band])
        flux[:, k] = np.abs(np.nan_to_num(expected))  # NaN: outside the template's coverage
        sigma[k] = 10.0 ** (-0.4 * (float(row["five_sigma_depth"]) - 31.4)) / 5.0
    out = variables.copy()
    if len(visits) == 0:
        out["peak_flux"] = out["peak_snr"] = out["peak_mag"] = np.full(len(ids), np.nan)
        out["peak_visit"] = np.full(len(ids), -1)
        return out
    snr = flux / sigma
    best = np.argmax(snr, axis=1)
    rows = np.arange(len(ids))
    out["peak_flux"] = flux[rows, best]
    out["peak_snr"] = snr[rows, best]
    with np.errstate(divide="ignore"):
        out["peak_mag"] = -2.5 * np.log10(out["peak_flux"]) + 31.4
    out["peak_visit"] = np.asarray(visits["obsHistID"], dtype=np.int64)[best]
    return out


def brightest_dia_sources(dia_objects: Table, dia_sources: Table) -> tuple[np.ndarray, np.ndarray]:
    """Per DIAObject, the largest ``|psFlux|`` (nJy) and the largest ``|psFlux| / psFluxErr``
    of its DIASources (0 for a DIAObject without any, and the S/N 0 without ``psFluxErr``);
    ``dia_sources`` may hold other DIAObjects' sources."""
    ids = np.asarray(dia_objects["diaObjectId"], dtype=np.int64)
    flux = np.zeros(len(ids))
    snr = np.zeros(len(ids))
    if len(dia_sources) and len(ids):
        src_obj = np.asarray(dia_sources["diaObjectId"], dtype=np.int64)
        mine = np.isin(src_obj, ids)
        order = np.argsort(ids)
        pos = order[np.searchsorted(ids, src_obj[mine], sorter=order)]
        src_flux = np.abs(np.asarray(dia_sources["psFlux"], float))[mine]
        np.maximum.at(flux, pos, np.nan_to_num(src_flux))
        if "psFluxErr" in dia_sources.colnames:
            src_snr = src_flux / np.asarray(dia_sources["psFluxErr"], float)[mine]
            np.maximum.at(snr, pos, np.nan_to_num(src_snr))
    return flux, snr


def dia_object_completeness_purity(
    dia_objects: Table,
    dia_sources: Table,
    peaks: Table,
    radius_arcsec: float = 1.0,
    bin_mag: float = 0.5,
) -> tuple[Table, np.ndarray, np.ndarray]:
    """DIAObjects against the variable truth, per bin of magnitude.

    Completeness: of the variable objects (:func:`transient_peaks`) per bin of ``peak_mag``,
    the fraction with a DIAObject within ``radius_arcsec``. Purity: of the DIAObjects per
    bin of their brightest DIASource's magnitude (|psFlux|), the fraction within
    ``radius_arcsec`` of a variable object.

    Returns
    -------
    table : Table
        ``mag_lo``, ``mag_hi``, ``n_true``, ``completeness``, ``n_dia_objects``, ``purity``.
    found : ndarray of bool
        Per row of ``peaks``: a DIAObject is within ``radius_arcsec``.
    real : ndarray of bool
        Per DIAObject: a variable object is within ``radius_arcsec``.
    """
    chord = chord_length(radius_arcsec)
    found = np.zeros(len(peaks), dtype=bool)
    real = np.zeros(len(dia_objects), dtype=bool)
    if len(peaks) and len(dia_objects):
        obj_xyz = unit_vectors(dia_objects["ra"], dia_objects["decl"])
        truth_xyz = unit_vectors(peaks["ra"], peaks["dec"])
        found = cKDTree(obj_xyz).query(truth_xyz)[0] <= chord
        real = cKDTree(truth_xyz).query(obj_xyz)[0] <= chord
    brightest, _ = brightest_dia_sources(dia_objects, dia_sources)
    with np.errstate(divide="ignore"):
        obj_mag = np.where(brightest > 0, -2.5 * np.log10(brightest) + 31.4, np.nan)
    true_mag = np.asarray(peaks["peak_mag"], float)
    mags = np.concatenate([true_mag[np.isfinite(true_mag)], obj_mag[np.isfinite(obj_mag)]])
    rows = []
    if len(mags):
        lo = np.floor(mags.min() / bin_mag) * bin_mag
        edges = np.arange(lo, mags.max() + bin_mag, bin_mag)
        for a, b in itertools.pairwise(edges):
            t = (true_mag >= a) & (true_mag < b)
            o = (obj_mag >= a) & (obj_mag < b)
            rows.append(
                {
                    "mag_lo": float(a),
                    "mag_hi": float(b),
                    "n_true": int(t.sum()),
                    "completeness": float(found[t].mean()) if t.any() else np.nan,
                    "n_dia_objects": int(o.sum()),
                    "purity": float(real[o].mean()) if o.any() else np.nan,
                }
            )
    return Table(rows=rows), found, real


def lensed_image_recovery(
    truth: Truth,
    dia_objects: Table,
    peaks: Table,
    fwhm_arcsec: float,
    radius_arcsec: float = 1.0,
) -> Table:
    """Whether each lensed-quasar image is a DIAObject of its own.

    Parameters
    ----------
    truth : Truth
        The lensed images (``id``, ``system_id``, ``ra``, ``dec``, ``dx_arcsec``,
        ``dy_arcsec``).
    dia_objects : Table
        ``diaObjectId``, ``ra``, ``decl``.
    peaks : Table
        From :func:`transient_peaks`: the images' ``peak_snr``.
    fwhm_arcsec : float
        The run's PSF FWHM: images at least 2 FWHM from every other image of their system
        are *resolved*.
    radius_arcsec : float
        Match radius of an image to its nearest DIAObject.

    Returns
    -------
    Table
        Per image: ``truth_id``, ``system_id``, ``separation_arcsec`` (to the nearest other
        image), ``resolved``, ``peak_snr``, ``diaObjectId`` (-1: none within the radius) and
        ``separate`` (its DIAObject is no other image's of the system).
    """
    images = truth.lensed_images
    out = Table()
    out["truth_id"] = np.asarray(images["id"], dtype=np.int64)
    out["system_id"] = np.asarray(images["system_id"], dtype=np.int64)
    sep = np.full(len(images), np.inf)
    for system in np.unique(out["system_id"]):
        k = np.flatnonzero(out["system_id"] == system)
        dx, dy = np.asarray(images["dx_arcsec"])[k], np.asarray(images["dy_arcsec"])[k]
        d = np.hypot(dx[:, None] - dx[None, :], dy[:, None] - dy[None, :])
        np.fill_diagonal(d, np.inf)
        sep[k] = d.min(axis=1)
    out["separation_arcsec"] = sep
    out["resolved"] = sep >= 2.0 * fwhm_arcsec
    snr_of = dict(
        zip(peaks["truth_id"].tolist(), np.asarray(peaks["peak_snr"]).tolist(), strict=True)
    )
    out["peak_snr"] = [snr_of.get(int(t), np.nan) for t in out["truth_id"]]
    match = nearest_id_within(
        images["ra"],
        images["dec"],
        dia_objects["ra"],
        dia_objects["decl"],
        dia_objects["diaObjectId"],
        radius_arcsec,
    )
    out["diaObjectId"] = match
    separate = np.zeros(len(images), dtype=bool)
    for k in range(len(images)):
        same_system = out["system_id"] == out["system_id"][k]
        shared = np.sum(same_system & (match == match[k]))
        separate[k] = match[k] >= 0 and shared == 1
    out["separate"] = separate
    return out


def real_bogus_examples(butler, truth: Truth, pixel_scale: float) -> Table:
    """Labelled DIASources of a run, for training and testing a real/bogus classifier.

    Real: DIASources of the injected differences matched to an injection (``injected`` or,
    placed on a galaxy, ``injected_gal``) and DIASources of the run's own differences within
    the match radius of a variable object (``variable``). Bogus: every other DIASource of the
    run's own differences, labelled with its cause (:func:`classify_artifacts`).

    Parameters
    ----------
    butler : Butler
        The run's repository: ``diaSrc``, ``deepDiff_differenceExp`` and, where the run
        injected, ``injectedSources`` and ``injectedDiaSrc`` of each visit.
    truth : Truth
        The run's truth.
    pixel_scale : float
        Arcsec per pixel.

    Returns
    -------
    Table
        The DIASource columns (features included) with ``real``, ``label``, ``visit`` and
        ``band``.
    """
    visits = butler.get("visitTable")
    parts = []
    for row in visits:
        visit, band = int(row["obsHistID"]), str(row["filter"])
        if not butler.exists("diaSrc", visit=visit):
            continue
        own = butler.get("diaSrc", visit=visit)
        causes = classify_artifacts(
            own, butler.get("deepDiff_differenceExp", visit=visit), truth, band, pixel_scale
        )
        own["label"] = np.where(causes == "", "variable", causes).astype("U16")
        own["real"] = causes == ""
        parts.append((visit, band, own))
        if butler.exists("injectedSources", visit=visit):
            injections = butler.get("injectedSources", visit=visit)
            injected = butler.get("injectedDiaSrc", visit=visit)
            found = injections[np.asarray(injections["found"], bool)]
            on_galaxy = dict(
                zip(found["diaSourceId"].tolist(), found["on_galaxy"].tolist(), strict=True)
            )
            injected = injected[np.isin(injected["diaSourceId"], list(on_galaxy))]
            injected["label"] = np.array(
                [
                    "injected_gal" if on_galaxy[i] else "injected"
                    for i in injected["diaSourceId"].tolist()
                ],
                dtype="U16",
            )
            injected["real"] = np.ones(len(injected), bool)
            parts.append((visit, band, injected))
    tables = []
    for visit, band, table in parts:
        table["visit"] = np.full(len(table), visit, dtype=np.int64)
        table["band"] = np.full(len(table), band, dtype="U1")
        tables.append(table)
    if not tables:
        return Table(names=("real", "label", "visit", "band"), dtype=(bool, "U16", np.int64, "U1"))
    return vstack(tables, metadata_conflicts="silent")


def injection_results(butler, classifier, min_reliability: float) -> Table:
    """Every injection of the run, with its band and the real/bogus score of the DIASource
    that found it.

    Parameters
    ----------
    butler : Butler
        The run's repository (``injectedSources``, ``injectedDiaSrc``, ``visitTable``).
    classifier : RealBogusClassifier
        Scores the injected differences' DIASources
        (:class:`~twinkles.diffim.reliability.RealBogusClassifier`).
    min_reliability : float
        The cut: ``found_reliable`` is ``found`` by a DIASource at least this reliable.

    Returns
    -------
    Table
        The injections (:data:`~twinkles.diffim.injection.INJECTION_COLUMNS`) with ``band``,
        ``reliability`` (NaN where not found) and ``found_reliable``; empty if the run did
        not inject.
    """
    visits = butler.get("visitTable")
    parts, found_by = [], []
    for row in visits:
        visit = int(row["obsHistID"])
        if not butler.exists("injectedSources", visit=visit):
            continue
        injections = butler.get("injectedSources", visit=visit)
        injections["band"] = np.full(len(injections), str(row["filter"]), dtype="U1")
        parts.append(injections)
        found_by.append(butler.get("injectedDiaSrc", visit=visit))
    if not parts:
        return Table()
    table = vstack(parts, metadata_conflicts="silent")
    # every visit's DIASources scored in one call: a forest has a fixed cost per call
    dia = vstack(found_by, metadata_conflicts="silent")
    score = dict(zip(dia["diaSourceId"].tolist(), classifier.score(dia).tolist(), strict=True))
    table["reliability"] = np.array(
        [
            score.get(i, np.nan) if f else np.nan
            for i, f in zip(table["diaSourceId"].tolist(), table["found"].tolist(), strict=True)
        ],
        dtype=float,
    )
    table["found_reliable"] = np.asarray(table["found"], bool) & (
        np.nan_to_num(np.asarray(table["reliability"], float), nan=-1.0) >= min_reliability
    )
    return table


def injection_efficiency(injections: Table, min_snr: float = 10.0) -> Table:
    """Efficiency of the injections per band and in all, before and after the real/bogus cut.

    Returns
    -------
    Table
        One row per band and one ``all``: ``n``; ``snr50`` and ``snr50_reliable`` (the S/N
        on the difference of 50% efficiency, :func:`~twinkles.diffim.injection.fit_efficiency`);
        ``eps_max``; ``efficiency_bright`` and ``efficiency_bright_reliable``: the fraction
        found among injections of S/N >= ``min_snr``.
    """
    rows = []
    bands = sorted(set(np.asarray(injections["band"], str).tolist()))
    for band in [*bands, "all"]:
        sel = (
            np.ones(len(injections), bool)
            if band == "all"
            else np.asarray(injections["band"] == band)
        )
        part = injections[sel]
        snr = np.asarray(part["expected_snr"], float)
        found = np.asarray(part["found"], bool)
        kept = np.asarray(part["found_reliable"], bool)
        bright = snr >= min_snr
        fit, fit_kept = fit_efficiency(snr, found), fit_efficiency(snr, kept)
        rows.append(
            {
                "band": band,
                "n": len(part),
                "snr50": fit["snr50"],
                "snr50_reliable": fit_kept["snr50"],
                "eps_max": fit["eps_max"],
                "efficiency_bright": float(found[bright].mean()) if bright.any() else np.nan,
                "efficiency_bright_reliable": (
                    float(kept[bright].mean()) if bright.any() else np.nan
                ),
            }
        )
    return Table(rows=rows)


@dataclass
class DifferenceScores:
    """Every difference image of a run scored against the truth (see
    :func:`score_difference_images`)."""

    scores: Table
    """Per visit: ``visit``, ``in_template``, ``n_dia_sources`` and, with a truth,
    ``n_expected``, ``n_recovered``, ``n_blended``, ``n_spurious`` (as
    :func:`score_dia_sources`), the same
    counted with the DIASources that pass the real/bogus cut (``n_recovered_reliable``,
    ``n_spurious_reliable``) and ``missed`` (truth ids, as text)."""
    visible: Table
    """The visible transients of every visit (:func:`visible_transients`) with ``visit``,
    ``found`` and ``found_in_blend``; empty without a truth."""
    causes: np.ndarray
    """The cause of each spurious DIASource (:func:`classify_artifacts`), over all visits."""
    causes_reliable: np.ndarray
    """The same for the DIASources that pass the cut."""
    area_deg2: float
    """The sensor's area (deg2), for rates per deg2."""
    forced: Table = field(default_factory=Table)
    """With ``dia_objects``: the forced photometry of DIAObjects matched to true transients,
    with the truth (as :func:`forced_dia_truth`); else empty."""

    def recovery(self, reliable: bool = False) -> tuple[int, int, float]:
        """(recovered, expected, fraction) of the transients of S/N >= the scoring's
        ``min_snr``; with ``reliable``, recovered by a DIASource that passes the cut."""
        if "n_expected" not in self.scores.colnames:
            return 0, 0, float("nan")
        expected = int(np.sum(self.scores["n_expected"]))
        column = "n_recovered_reliable" if reliable else "n_recovered"
        recovered = int(np.sum(self.scores[column]))
        return recovered, expected, recovered / expected if expected else float("nan")


def score_difference_images(
    butler,
    truth: Truth | None,
    visits: Table,
    templates: dict[str, dict],
    reliability: dict[int, float],
    pixel_scale: float,
    match_arcsec: float = 1.0,
    min_snr: float = 10.0,
    min_reliability: float = 0.5,
    dia_objects: Table | None = None,
    blend_fwhm: float = 2.0,
) -> DifferenceScores:
    """Score every difference image of a run: recovery of the visible transients, DIASources
    near no variable object, and those classified by cause, before and after the real/bogus
    cut; with ``dia_objects``, also the truth of their forced photometry
    (:func:`forced_dia_truth`), from the same reading of each image.

    Parameters
    ----------
    butler : Butler
        The run's repository (``deepDiff_summary``, ``diaSrc``, ``deepDiff_differenceExp``).
    truth : Truth or None
        The simulation's truth; without it only the DIASources are counted.
    visits : Table
        The visit table (``obsHistID``, ``filter``, ``expMJD``); visits with no difference
        image are skipped.
    templates : dict
        ``goodSeeingCoadd_summary`` per band.
    reliability : dict
        ``diaSourceId`` -> real/bogus score (as association gave it).
    pixel_scale : float
        Arcsec per pixel.
    match_arcsec : float
        A DIASource within this of a variable object is on it.
    min_snr : float
        Transients of expected S/N at least this count in the recovery.
    min_reliability : float
        The real/bogus cut.
    dia_objects : Table, optional
        The run's DIAObjects (``diaObject``), to score their forced photometry.
    blend_fwhm : float
        Transients closer than this many FWHM of the difference image's PSF are one blend
        (:func:`score_dia_sources`), the resolution :func:`lensed_image_recovery` asks of
        separate DIAObjects.

    Returns
    -------
    DifferenceScores
    """
    variables = variable_truth(truth) if truth is not None else None
    forced_truth = (
        _ForcedTruth(truth, dia_objects) if truth is not None and dia_objects is not None else None
    )
    forced_parts = []
    rows, visible_all, causes, causes_reliable = [], [], [], []
    area_deg2 = float("nan")
    for vrow in visits:
        visit, band = int(vrow["obsHistID"]), str(vrow["filter"])
        if not butler.exists("deepDiff_differenceExp", visit=visit):
            continue
        dia_sources = butler.get("diaSrc", visit=visit)
        row = {
            "visit": visit,
            "in_template": butler.get("deepDiff_summary", visit=visit)["in_template"],
        }
        if truth is None:
            rows.append({**row, "n_dia_sources": len(dia_sources)})
            continue
        diff = butler.get("deepDiff_differenceExp", visit=visit)
        area_deg2 = diff.shape[0] * diff.shape[1] * (pixel_scale / 3600.0) ** 2
        visible = visible_transients(
            diff, truth, variables, band, float(vrow["expMJD"]), templates[band]
        )
        visible["visit"] = np.full(len(visible), visit)
        reliable = np.array(
            [reliability.get(i, np.nan) >= min_reliability for i in dia_sources["diaSourceId"]],
            dtype=bool,
        )
        # the difference carries the calexp's SAT and CR masks and its WCS
        visit_causes = classify_artifacts(dia_sources, diff, truth, band, pixel_scale)
        causes.append(visit_causes)
        causes_reliable.append(visit_causes[reliable])
        blend_px = blend_fwhm * diff.psf.fwhm_eff(0.5 * diff.shape[1], 0.5 * diff.shape[0])
        kept = score_dia_sources(dia_sources[reliable], visible, match_arcsec, min_snr, blend_px)
        row["n_recovered_reliable"] = kept["n_recovered"]
        row["n_spurious_reliable"] = kept["n_spurious"]
        score = score_dia_sources(dia_sources, visible, match_arcsec, min_snr, blend_px)
        visible["found"] = score.pop("found")
        visible["found_in_blend"] = score.pop("found_in_blend")
        visible_all.append(visible)
        missed = score.pop("missed")
        rows.append({**row, **score, "missed": str(missed)})
        if forced_truth is not None:
            forced = forced_truth.matched_forced(butler, visit)
            if len(forced):
                forced_parts.append(
                    forced_truth.of_visit(
                        forced, diff, visit, band, float(vrow["expMJD"]), templates[band]
                    )
                )
    return DifferenceScores(
        Table(rows=rows) if rows else Table(),
        vstack(visible_all) if visible_all else Table(),
        np.concatenate(causes) if causes else np.zeros(0, dtype=str),
        np.concatenate(causes_reliable) if causes_reliable else np.zeros(0, dtype=str),
        area_deg2,
        vstack(forced_parts, metadata_conflicts="silent") if forced_parts else Table(),
    )


def usable_forced_points(forced: Table) -> Table:
    """The forced points a light curve is scored on: independent of the template (the visit
    is not one of its), on the image, not flagged bad or at the edge."""
    if len(forced) == 0:
        return forced
    keep = (
        ~np.asarray(forced["in_template"])
        & ~np.asarray(forced["flag_off_image"])
        & ~np.asarray(forced["flag_bad"])
        & ~np.asarray(forced["flag_edge"])
    )
    return forced[keep]


def host_magnitudes(truth: Truth, band: str = "r") -> dict[int, float]:
    """Each supernova's host galaxy magnitude (AB; inf for a host-less one)."""
    gal_ids = np.asarray(truth.galaxies["id"])
    mags = njy_to_mag(galaxy_flux(truth.galaxies, band))
    out = {}
    for sn_id, host in zip(
        np.asarray(truth.supernovae["id"]).tolist(),
        np.asarray(truth.supernovae["host_id"]).tolist(),
        strict=True,
    ):
        k = np.flatnonzero(gal_ids == host)
        out[int(sn_id)] = float(mags[k[0]]) if len(k) else np.inf
    return out


def supernova_pulls(
    points: Table, host_mag: dict[int, float], bright_host_mag: float = 21.5
) -> Table:
    """Per band, the pulls of supernovae's forced difference photometry against the truth
    (:func:`light_curve_pulls`), for all of them and for those on hosts brighter than
    ``bright_host_mag`` (``bright_host_*`` columns).

    ``points`` are :func:`usable_forced_points` of :func:`forced_dia_truth` (any kind; the
    supernovae are taken); ``host_mag`` is :func:`host_magnitudes`.
    """
    if len(points) == 0:
        return Table()
    sne = points[points["kind"] == "supernova"]
    bright = np.array(
        [host_mag.get(t, np.inf) < bright_host_mag for t in sne["truth_id"].tolist()], dtype=bool
    )
    rows = []
    for band in sorted(set(sne["band"])):
        sel = np.asarray(sne["band"] == band)
        bright_stats = light_curve_pulls(sne[sel & bright])
        rows.append(
            {
                "band": band,
                **light_curve_pulls(sne[sel]),
                "bright_host_mag": bright_host_mag,
                "bright_host_n": bright_stats["n"],
                "bright_host_pull_std": bright_stats["pull_std"],
                "bright_host_pull_std_err": bright_stats["pull_std_err"],
                "bright_host_pull_median": bright_stats["pull_median"],
                "bright_host_pull_median_err": bright_stats["pull_median_err"],
            }
        )
    return Table(rows=rows) if rows else Table()


def lensed_systems(recovery: Table, points: Table) -> Table:
    """Per lensed-quasar system: its images, how many are resolved, how many of those are
    DIAObjects of their own, and the pulls of its images' forced photometry.

    ``recovery`` is :func:`lensed_image_recovery`; ``points`` the usable forced points of
    :func:`forced_dia_truth`.
    """
    rows = []
    for system in np.unique(np.asarray(recovery["system_id"])):
        images = recovery[recovery["system_id"] == system]
        if len(images) < 2:
            continue
        mine = points
        if len(points):
            lensed = np.asarray(points["kind"] == "lensed_image")
            mine = points[lensed & np.isin(points["truth_id"], images["truth_id"])]
        stats = light_curve_pulls(mine) if len(mine) else {"n": 0, "pull_std": np.nan}
        resolved = np.asarray(images["resolved"])
        rows.append(
            {
                "system": int(system),
                "n_images": len(images),
                "n_resolved": int(resolved.sum()),
                "n_resolved_separate": int(np.sum(resolved & np.asarray(images["separate"]))),
                "n_points": stats["n"],
                "pull_std": stats["pull_std"],
                "pull_median": stats.get("pull_median", np.nan),
            }
        )
    return Table(rows=rows) if rows else Table()


def differenced_visits(butler, visits: Table) -> Table:
    """The rows of ``visits`` that have a difference image, with their calexps' measured
    ``five_sigma_depth`` (AB mag, what :func:`transient_peaks` reads) and ``psf_fwhm``
    (arcsec), from one read of each visit summary."""
    differenced = [
        int(v) for v in visits["obsHistID"] if butler.exists("deepDiff_differenceExp", visit=int(v))
    ]
    out = visits[np.isin(visits["obsHistID"], differenced)]
    summaries = [butler.get("visitSummary", visit=int(v)) for v in out["obsHistID"]]
    out["five_sigma_depth"] = [s["five_sigma_depth"] for s in summaries]
    out["psf_fwhm"] = [s["psf_fwhm"] for s in summaries]
    return out


def template_summaries(butler, bands) -> dict[str, dict]:
    """``goodSeeingCoadd_summary`` of each of ``bands`` that has a template, by band, with
    ``footprints``: each template visit's :class:`SensorFootprint`, from its calexp's image
    header and mask, so that :func:`expected_difference_flux` counts a visit only where its
    sensor lay."""
    out = {}
    for band in sorted(set(bands)):
        if not butler.exists("goodSeeingCoadd_summary", filter=band):
            continue
        summary = dict(butler.get("goodSeeingCoadd_summary", filter=band))
        if all(butler.exists("calexp", visit=int(v)) for v in summary["visits"]):
            summary["footprints"] = [
                _sensor_footprint(butler.input_path("calexp", visit=int(v)))
                for v in summary["visits"]
            ]
        out[band] = summary
    return out


def _sensor_footprint(path) -> SensorFootprint:
    """The :class:`SensorFootprint` of an exposure's FITS file (its image header and mask)."""
    with fits.open(path, memmap=False) as hdul:
        header = hdul["IMAGE"].header
        mask = np.asarray(hdul["MASK"].data)
    sat_y, sat_x = np.nonzero((mask & int(MaskPlane.SAT)) != 0)
    return SensorFootprint(
        WCS(header, relax=True), mask.shape, np.column_stack([sat_x, sat_y]).astype(float)
    )
