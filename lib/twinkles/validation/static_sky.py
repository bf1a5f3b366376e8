"""Static-sky checks against the truth: Objects, forced light curves, repeatability.

* :func:`match_sky`: one-to-one nearest matches on the sky within a radius;
* :func:`completeness_purity`: of the Object table against the true stars and galaxies,
  per bin of true (completeness) or measured (purity) magnitude;
* :func:`photometric_repeatability`: PA1 and PF1 as lsst/faro measures them (LSST SRD,
  LPM-17): for bright unresolved stars (median S/N >= 200, at least 50 of them), each star's
  RMS about its mean over visits, the median over stars; PF1 the percentage of residuals
  beyond PA2 (15 mmag);
* :func:`pa1`: validate_drp's PA1 (stars of median S/N >= 50; one random pair of visits per
  star, ``dmag / sqrt(2)``, an IQR-based sigma over stars, repeated and the median taken),
  kept as information: at S/N 50 photon noise alone is ~22 mmag per measurement;
* :func:`forced_light_curves`: the ForcedSource rows of every visit with their band and MJD;
* :func:`star_light_curves`, :func:`forced_star_metrics`: ForcedSource of stars against
  their true fluxes: PA1 and pulls per band (PA1 also without a truth, on point-like Objects);
* :func:`pa1_noise`, :func:`repeatability_floor`: the PA1 the photometric errors alone give,
  and the scatter beyond them (the pipeline's systematic floor);
* :func:`photometry_vs_magnitude`: bias and scatter of forced photometry of non-variable
  stars against their true fluxes, per band and bin of true magnitude;
* :func:`pulls_by_snr`, :func:`flux_ramps`: pulls against the truth per bin of S/N, and the
  ramp of bright stars' flux over the sensor in each visit (linear and radial), which PA1
  cannot see when a star sits at about the same place in every visit;
* :func:`object_star_rows`: the Objects that are true stars with their coadd PSF fluxes,
  whose pulls test the coadds' photometry as the src pulls test a visit's;
* :func:`reference_stars`, :func:`star_positions`, :func:`am1`: the astrometric repeatability
  of validate_drp (LSST SRD AM1): the RMS over visits of the separation of star pairs about 5'
  apart;
* :func:`robust_std`: the IQR-based sigma used throughout.
"""

from __future__ import annotations

import itertools

import numpy as np
from astropy.table import Table, vstack

from twinkles.calibration.matching import match_nearest
from twinkles.geometry import chord_length, sky_to_tangent, unit_vectors
from twinkles.measurement.sensor_map import weighted_fit
from twinkles.sim.psf import SimulatedPSF
from twinkles.sim.truth import Truth
from twinkles.stats import mad_std, robust_std
from twinkles.units import MAG_PER_FRACTION, MMAG_PER_FRACTION, mag_to_njy
from twinkles.validation.metrics import MIN_PULLS_PER_BIN
from twinkles.validation.truth_match import isolated

__all__ = [
    "BLEND_LIGHT_FRACTION",
    "SOURCE_PULL_SNR_EDGES",
    "am1",
    "calibration_errors",
    "completeness_purity",
    "enclosed_light_mmag",
    "flux_ramps",
    "forced_light_curves",
    "forced_star_metrics",
    "match_sky",
    "object_star_rows",
    "pa1",
    "pa1_noise",
    "photometric_repeatability",
    "photometry_systematics",
    "photometry_vs_magnitude",
    "pooled_completeness_purity",
    "pulls_by_snr",
    "ramp_excess",
    "reference_stars",
    "repeatability_floor",
    "source_star_rows",
    "star_light_curves",
    "star_object_ids",
    "star_positions",
    "static_truth",
    "unblended_objects",
    "visit_bootstrap_median_error",
    "zero_point_residuals",
]


def match_sky(
    ra1: np.ndarray, dec1: np.ndarray, ra2: np.ndarray, dec2: np.ndarray, radius_arcsec: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one nearest matches: (index in 1, index in 2, separation in arcsec)."""
    ra0, dec0 = float(np.median(ra2)), float(np.median(dec2))
    x1, y1 = sky_to_tangent(np.asarray(ra1), np.asarray(dec1), ra0, dec0)
    x2, y2 = sky_to_tangent(np.asarray(ra2), np.asarray(dec2), ra0, dec0)
    return match_nearest(x1 * 3600, y1 * 3600, x2 * 3600, y2 * 3600, radius_arcsec)


def static_truth(truth: Truth, band: str) -> Table:
    """True stars and galaxies with their mean magnitude in ``band`` and whether a star.

    Supernovae and lensed-quasar images come and go and are not expected in a coadd; the
    lens galaxies are galaxies.
    """
    stars, galaxies = truth.stars, truth.galaxies
    gal_flux = 10 ** (-0.4 * (np.asarray(galaxies[f"bulge_mag_{band}"]) - 31.4)) + 10 ** (
        -0.4 * (np.asarray(galaxies[f"disk_mag_{band}"]) - 31.4)
    )
    out = Table()
    out["id"] = np.concatenate([np.asarray(stars["id"]), np.asarray(galaxies["id"])])
    out["ra"] = np.concatenate([np.asarray(stars["ra"]), np.asarray(galaxies["ra"])])
    out["dec"] = np.concatenate([np.asarray(stars["dec"]), np.asarray(galaxies["dec"])])
    out["mag"] = np.concatenate([np.asarray(stars[f"mag_{band}"]), 31.4 - 2.5 * np.log10(gal_flux)])
    out["is_star"] = np.concatenate(
        [np.ones(len(stars), dtype=bool), np.zeros(len(galaxies), dtype=bool)]
    )
    out["is_variable"] = np.concatenate(
        [np.asarray(stars["is_variable"], dtype=bool), np.zeros(len(galaxies), dtype=bool)]
    )
    return out


def completeness_purity(
    objects: Table,
    truth: Table,
    band: str,
    bins: np.ndarray,
    all_truth_ra: np.ndarray,
    all_truth_dec: np.ndarray,
    radius_arcsec: float = 1.0,
) -> Table:
    """Completeness and purity of Objects per magnitude bin.

    Parameters
    ----------
    objects : Table
        Object table (``ra``, ``decl``, ``{band}_psFlux``).
    truth : Table
        True objects that should be found (``ra``, ``dec``, ``mag``), already restricted to
        the area covered.
    bins : array
        Magnitude bin edges.
    all_truth_ra, all_truth_dec : array
        Every true object (transients and lensed images too): an Object matching any of them
        is real.
    """
    _i_obj, i_true, _ = match_sky(
        objects["ra"], objects["decl"], truth["ra"], truth["dec"], radius_arcsec
    )
    found = np.zeros(len(truth), dtype=bool)
    found[i_true] = True
    j_obj, _, _ = match_sky(
        objects["ra"], objects["decl"], all_truth_ra, all_truth_dec, radius_arcsec
    )
    real = np.zeros(len(objects), dtype=bool)
    real[j_obj] = True
    with np.errstate(invalid="ignore", divide="ignore"):
        obj_mag = 31.4 - 2.5 * np.log10(np.asarray(objects[f"{band}_psFlux"], dtype=float))
    rows = []
    for lo, hi in itertools.pairwise(bins):
        t = (truth["mag"] >= lo) & (truth["mag"] < hi)
        o = (obj_mag >= lo) & (obj_mag < hi)
        rows.append(
            {
                "mag_lo": lo,
                "mag_hi": hi,
                "n_true": int(t.sum()),
                "completeness": float(found[t].mean()) if t.any() else np.nan,
                "n_objects": int(o.sum()),
                "purity": float(real[o].mean()) if o.any() else np.nan,
            }
        )
    return Table(rows=rows)


def pa1(mags: np.ndarray, n_repeat: int = 50, seed: int = 0) -> float:
    """validate_drp's PA1 (mag) from a (stars x visits) array of magnitudes (NaN: missing).

    For each star with two or more measurements one random pair of visits gives
    ``(m1 - m2) / sqrt(2)``; the IQR-based sigma of those over the stars is one estimate;
    the median of ``n_repeat`` estimates is returned.
    """
    mags = np.asarray(mags, dtype=float)
    ok = np.isfinite(mags)
    usable = np.flatnonzero(ok.sum(axis=1) >= 2)
    if len(usable) < 3:
        return float("nan")
    rng = np.random.default_rng(seed)
    estimates = []
    for _ in range(n_repeat):
        diffs = np.empty(len(usable))
        for k, star in enumerate(usable):
            a, b = rng.choice(np.flatnonzero(ok[star]), size=2, replace=False)
            diffs[k] = (mags[star, a] - mags[star, b]) / np.sqrt(2.0)
        estimates.append(robust_std(diffs))
    return float(np.median(estimates))


def photometric_repeatability(
    mags: np.ndarray, min_stars: int = 50, threshold: float = 0.015
) -> tuple[float, float, int]:
    """PA1 and PF1 as lsst/faro measures them, from a (stars x visits) array of magnitudes.

    Each star measured in more than two visits has an RMS of its magnitudes about their mean
    (``std`` with no degrees-of-freedom correction, as faro's ``calcPhotRepeat``); PA1 is the
    median over those stars, PF1 the percentage of all their residuals about their means
    beyond ``threshold`` (PA2, the SRD design value 15 mmag). With fewer than ``min_stars``
    such stars (faro's ``nMinPhotRepeat``) neither is measured (NaN).

    Parameters
    ----------
    mags : ndarray
        (stars x visits) magnitudes of the bright stars (NaN: not measured).
    min_stars : int
        Fewest stars for a measurement.
    threshold : float
        PA2 (mag).

    Returns
    -------
    pa1 : float
        Median RMS (mag), NaN when too few stars.
    pf1 : float
        Percentage of residuals beyond ``threshold``, NaN when too few stars.
    n_stars : int
        Stars with more than two measurements.
    """
    mags = np.asarray(mags, dtype=float)
    ok = np.isfinite(mags)
    repeated = ok.sum(axis=1) > 2
    n_stars = int(repeated.sum())
    if n_stars < max(min_stars, 1):
        return float("nan"), float("nan"), n_stars
    m = mags[repeated]
    mean = np.nanmean(m, axis=1, keepdims=True)
    resid = (m - mean)[np.isfinite(m)]
    rms = np.nanstd(m, axis=1)
    return float(np.median(rms)), float(100.0 * np.mean(np.abs(resid) > threshold)), n_stars


def pa1_noise(mag_errors: np.ndarray, n_repeat: int = 50, seed: int = 0) -> float:
    """The PA1 that the measurement errors alone give (mag).

    :func:`pa1` of magnitudes drawn from ``N(0, mag_errors)`` for the same (stars x visits)
    array (NaN: missing). With validate_drp's S/N >= 50 cut most PA1 stars have S/N 50-200,
    whose photon noise alone is 5-20 mmag: PA1 is then this number, not the pipeline's floor.
    """
    errors = np.asarray(mag_errors, dtype=float)
    draws = np.random.default_rng(seed + 1).normal(size=errors.shape) * errors
    return pa1(draws, n_repeat, seed)


def repeatability_floor(mags: np.ndarray, mag_errors: np.ndarray, clip: float = 5.0) -> float:
    """The per-measurement scatter beyond the errors (mag), from all visits of every star.

    The ``s`` for which the residuals about each star's weighted mean have a chi^2 equal to
    their degrees of freedom with errors ``sqrt(e^2 + s^2)`` (the usual error floor of a
    photometric survey); 0 when the errors explain the scatter. Residuals beyond ``clip``
    sigma are left out. This is the systematic part of the repeatability, the one the SRD's
    PA1 of bright (noise-free) stars measures.
    """
    mags = np.asarray(mags, dtype=float)
    errors = np.asarray(mag_errors, dtype=float)
    ok = np.isfinite(mags) & np.isfinite(errors) & (errors > 0)
    ok &= ok.sum(axis=1, keepdims=True) >= 2

    def excess_chi2(floor: float) -> tuple[float, np.ndarray]:
        weight = np.where(ok, 1.0 / (errors**2 + floor**2), 0.0)
        mean = np.sum(np.where(ok, mags, 0.0) * weight, axis=1) / np.maximum(
            weight.sum(axis=1), 1e-300
        )
        z2 = np.where(ok, (mags - mean[:, None]) ** 2 * weight, 0.0)
        dof = ok.sum() - np.count_nonzero(ok.any(axis=1))
        return float(z2.sum() - dof), z2

    for _ in range(3):  # clip outliers at the current floor, then solve again
        if ok.sum() - np.count_nonzero(ok.any(axis=1)) < 2:
            return float("nan")
        if excess_chi2(0.0)[0] <= 0:
            floor = 0.0
        else:
            low, high = 0.0, 1.0
            for _ in range(60):
                mid = 0.5 * (low + high)
                low, high = (mid, high) if excess_chi2(mid)[0] > 0 else (low, mid)
            floor = 0.5 * (low + high)
        outliers = excess_chi2(floor)[1] > clip**2
        if not outliers.any():
            break
        ok &= ~outliers
        ok &= ok.sum(axis=1, keepdims=True) >= 2
    return floor


def forced_light_curves(butler, visits: Table, object_ids: np.ndarray | None = None) -> Table:
    """Every visit's ForcedSource rows that exist, with ``band`` and ``mjd`` added; with
    ``object_ids``, only those Objects' rows (all of a long run's rows at once would not fit
    in memory: Objects x visits)."""
    keep = None if object_ids is None else np.asarray(object_ids)
    parts = []
    for row in visits:
        visit = int(row["obsHistID"])
        if not butler.exists("forced_src", visit=visit):
            continue
        forced = butler.get("forced_src", visit=visit)
        if keep is not None:
            forced = forced[np.isin(np.asarray(forced["objectId"]), keep)]
        forced["band"] = np.full(len(forced), str(row["filter"]), dtype="U1")
        forced["mjd"] = np.full(len(forced), float(row["expMJD"]))
        parts.append(forced)
    if not parts:
        raise FileNotFoundError("no forced_src in the run: run forced_photometry first")
    return vstack(parts, metadata_conflicts="silent")


#: A blend's brightest member whose other members hold less than this fraction of its flux
#: is measured as if alone (:func:`unblended_objects`).
BLEND_LIGHT_FRACTION = 0.05


def unblended_objects(objects: Table, fraction: float = BLEND_LIGHT_FRACTION) -> np.ndarray:
    """The Objects whose PSF flux no neighbour in their blend shares: those in no blend
    (``parent`` 0), and a blend's brightest member where the others together hold less than
    ``fraction`` of its flux, in its reference band. A faint neighbour found on a bright
    star's wing is fitted jointly with it, and what it leaves in the star's flux is a small
    part of its own and the same in every visit: it changes the star's repeatability by
    nothing, and the pulls against the truth take isolated stars only
    (:func:`isolated_star_ids`).
    """
    parent = np.asarray(objects["parent"])
    alone = parent == 0
    bands = np.asarray(objects["refBand"]).astype(str)
    own = np.full(len(objects), np.nan)
    for band in np.unique(bands):
        rows = bands == band
        own[rows] = np.asarray(objects[f"{band}_psFlux"], dtype=float)[rows]
    for label in np.unique(parent[~alone]):
        members = np.flatnonzero(parent == label)
        if not np.isfinite(own[members]).any():
            continue
        top = members[np.nanargmax(own[members])]
        flux = np.asarray(objects[f"{bands[top]}_psFlux"], dtype=float)[members]
        others = np.nansum(np.clip(flux[members != top], 0.0, None))
        alone[top] = others < fraction * own[top]
    return alone


def _star_objects(
    objects: Table, truth: Truth | None, radius_arcsec: float
) -> tuple[dict[int, int], dict[int, bool]]:
    """The Objects taken for stars (see :func:`star_light_curves`): their true star's id by
    ``objectId`` and whether each true star varies."""
    isolated = unblended_objects(objects)
    if truth is None:
        point = isolated & (np.asarray(objects["extendedness"], dtype=float) == 0)
        star_ids = np.asarray(objects["objectId"])[point]
        star_of = dict(zip(star_ids.tolist(), star_ids.tolist(), strict=True))
        variable_of = dict.fromkeys(star_ids.tolist(), False)
    else:
        stars = truth.stars
        i_obj, i_star, _ = match_sky(
            objects["ra"], objects["decl"], stars["ra"], stars["dec"], radius_arcsec
        )
        keep = isolated[i_obj]
        i_obj, i_star = i_obj[keep], i_star[keep]
        star_of = dict(
            zip(
                np.asarray(objects["objectId"])[i_obj].tolist(),
                np.asarray(stars["id"])[i_star].tolist(),
                strict=True,
            )
        )
        variable_of = dict(
            zip(
                np.asarray(stars["id"])[i_star].tolist(),
                np.asarray(stars["is_variable"], dtype=bool)[i_star].tolist(),
                strict=True,
            )
        )
    return star_of, variable_of


def isolated_star_ids(truth: Truth) -> np.ndarray:
    """The ids of the true stars with no other true object (galaxies, transients and lensed
    images too) within :data:`~twinkles.validation.truth_match.ISOLATION_ARCSEC`: those the
    photometry is compared with the truth on. A star blended with a neighbour the deblender
    did not separate is measured with the neighbour's light, which its true flux does not
    hold; and as a rotated sensor keeps it at the same distance from the centre in every
    visit, a few such stars draw a radial ramp that repeats in every visit of a band."""
    all_ra, all_dec = truth.object_positions()
    stars = truth.stars
    alone = isolated(stars["ra"], stars["dec"], all_ra, all_dec)
    return np.asarray(stars["id"], dtype=np.int64)[alone]


def truth_comparable(rows: Table) -> np.ndarray:
    """The rows whose flux is compared with the truth: non-variable and isolated stars
    (``isolated``, where the rows have it)."""
    keep = ~np.asarray(rows["is_variable"], dtype=bool)
    if "isolated" in rows.colnames:
        keep &= np.asarray(rows["isolated"], dtype=bool)
    return keep


def star_object_ids(objects: Table, truth: Truth | None, radius_arcsec: float = 0.5) -> np.ndarray:
    """The ``objectId`` of the Objects :func:`star_light_curves` keeps: what to read of the
    ForcedSource tables (:func:`forced_light_curves`'s ``object_ids``)."""
    star_of, _ = _star_objects(objects, truth, radius_arcsec)
    return np.fromiter(star_of, dtype=np.int64, count=len(star_of))


def star_light_curves(
    objects: Table, light_curves: Table, truth: Truth | None, radius_arcsec: float = 0.5
) -> Table:
    """ForcedSource rows of stars, with the true flux at each epoch where the truth is known.

    With a truth, the stars are the Objects matched to true stars; without one (an external
    run brought no truth catalog), the Objects the coadd measured as point sources
    (``extendedness`` 0), whose ``truth_id`` is then their ``objectId``, ``is_variable``
    False (unknown) and ``true_flux`` NaN: PA1 and the floor need no truth, the pulls do.
    Objects in blends (but a blend's brightest member whose neighbours hold less than 5% of its
    flux, :func:`unblended_objects`) and rows flagged off-image, bad, on an edge or saturated
    are dropped.
    Columns added: ``truth_id``, ``is_variable``, ``true_flux`` (nJy) and ``isolated``
    (:func:`isolated_star_ids`; True without a truth).
    """
    star_of, variable_of = _star_objects(objects, truth, radius_arcsec)
    rows = light_curves[
        np.isin(light_curves["objectId"], list(star_of))
        & ~np.asarray(light_curves["flag_off_image"])
        & ~np.asarray(light_curves["flag_bad"])
        & ~np.asarray(light_curves["flag_edge"])
        & ~np.asarray(light_curves["flag_saturated"])
    ]
    rows["truth_id"] = np.array([star_of[o] for o in rows["objectId"].tolist()], dtype=np.int64)
    rows["is_variable"] = np.array([variable_of[t] for t in rows["truth_id"].tolist()], dtype=bool)
    true_flux = np.full(len(rows), np.nan)
    if truth is not None:
        for band in np.unique(rows["band"]):
            sel = np.asarray(rows["band"] == band)
            true_flux[sel] = truth.flux(
                np.asarray(rows["truth_id"])[sel], str(band), np.asarray(rows["mjd"])[sel]
            )
    rows["true_flux"] = true_flux
    rows["isolated"] = (
        np.isin(np.asarray(rows["truth_id"]), isolated_star_ids(truth))
        if truth is not None
        else np.ones(len(rows), dtype=bool)
    )
    return rows


def source_star_rows(butler, visits: Table, truth: Truth, radius_arcsec: float = 0.5) -> Table:
    """Every visit's single-visit sources (``src``) that are true stars, with their true flux.

    The counterpart of :func:`star_light_curves` for the ``src`` catalogs: PSF fluxes
    measured where each visit found the star, with its own PSF model and aperture
    correction, so their pulls test process_eimage alone (no coadd positions). Sources
    flagged blended, saturated, interpolated, on an edge, bad or hit by a cosmic ray are
    dropped. Columns: ``ccdVisitId``, ``band``, ``x``, ``y``, ``psFlux``, ``psFluxErr``
    (nJy), ``truth_id``, ``is_variable``, ``true_flux`` (nJy), ``isolated``
    (:func:`isolated_star_ids`).
    """
    stars = truth.stars
    alone = isolated_star_ids(truth)
    flags = (
        "flag_blended",
        "flag_saturated",
        "flag_interpolated",
        "flag_edge",
        "flag_bad",
        "flag_cr",
    )
    parts = []
    for row in visits:
        visit = int(row["obsHistID"])
        if not butler.exists("src", visit=visit):
            continue
        src = butler.get("src", visit=visit)
        src = src[~np.any([np.asarray(src[flag]) for flag in flags], axis=0)]
        i_src, i_star, _ = match_sky(
            src["coord_ra"], src["coord_dec"], stars["ra"], stars["dec"], radius_arcsec
        )
        band = str(row["filter"])
        ids = np.asarray(stars["id"])[i_star]
        parts.append(
            Table(
                {
                    "ccdVisitId": np.full(len(i_src), visit, dtype=np.int64),
                    "band": np.full(len(i_src), band, dtype="U1"),
                    "x": np.asarray(src["x"])[i_src],
                    "y": np.asarray(src["y"])[i_src],
                    "psFlux": np.asarray(src["psfFlux"])[i_src],
                    "psFluxErr": np.asarray(src["psfFluxErr"])[i_src],
                    "truth_id": ids.astype(np.int64),
                    "is_variable": np.asarray(stars["is_variable"], dtype=bool)[i_star],
                    "true_flux": truth.flux(ids, band, np.full(len(ids), float(row["expMJD"]))),
                    "isolated": np.isin(ids, alone),
                }
            )
        )
    if not parts:
        raise FileNotFoundError("no src in the run: run process_eimage first")
    return vstack(parts)


def object_star_rows(objects: Table, truth: Truth, radius_arcsec: float = 0.5) -> Table:
    """The Objects that are true stars, one row per band, with the coadd's PSF flux and the
    true flux: what :func:`pulls_by_snr` takes to test the coadds' photometry (their PSF,
    aperture correction and errors) as :func:`source_star_rows` tests a visit's.

    The Objects :func:`star_light_curves` keeps (matched to a true star, not in a blend);
    Objects flagged on an edge and a band's measurements flagged bad or inexact_psf (a
    visit's edge in the core) are dropped. Columns:
    ``ccdVisitId`` (0: one coadd per band), ``band``, ``objectId``, ``psFlux``,
    ``psFluxErr`` (nJy), ``truth_id``, ``is_variable``, ``true_flux`` (nJy, from the star's
    mean magnitude; variables are left out of the pulls), ``isolated``
    (:func:`isolated_star_ids`).
    """
    star_of, variable_of = _star_objects(objects, truth, radius_arcsec)
    stars = objects[
        np.isin(np.asarray(objects["objectId"]), list(star_of))
        & ~np.asarray(objects["flag_edge"], dtype=bool)
    ]
    ids = np.array([star_of[o] for o in stars["objectId"].tolist()], dtype=np.int64)
    alone = np.isin(ids, isolated_star_ids(truth))
    variable = np.array([variable_of[t] for t in ids.tolist()], dtype=bool)
    row_of = {int(i): k for k, i in enumerate(np.asarray(truth.stars["id"]).tolist())}
    true_rows = truth.stars[[row_of[int(t)] for t in ids.tolist()]]
    bands = [b for b in "ugrizy" if f"{b}_psFlux" in objects.colnames]
    parts = []
    for band in bands:
        ok = ~np.asarray(stars[f"{band}_flag_bad"], dtype=bool)
        if f"{band}_flag_inexact_psf" in stars.colnames:
            ok &= ~np.asarray(stars[f"{band}_flag_inexact_psf"], dtype=bool)
        n = int(ok.sum())
        parts.append(
            Table(
                {
                    "ccdVisitId": np.zeros(n, dtype=np.int64),
                    "band": np.full(n, band, dtype="U1"),
                    "objectId": np.asarray(stars["objectId"])[ok],
                    "psFlux": np.asarray(stars[f"{band}_psFlux"], dtype=float)[ok],
                    "psFluxErr": np.asarray(stars[f"{band}_psFluxErr"], dtype=float)[ok],
                    "truth_id": ids[ok],
                    "is_variable": variable[ok],
                    "true_flux": mag_to_njy(np.asarray(true_rows[f"mag_{band}"])[ok]),
                    "isolated": alone[ok],
                }
            )
        )
    if not parts:
        raise ValueError("the Object table has no band's psFlux column")
    return vstack(parts)


def reference_stars(truth: Truth | None, objects: Table) -> Table:
    """Stars whose positions AM1 compares: ``id``, ``ra``, ``dec`` (deg).

    The true non-variable stars; without a truth, the unblended Objects
    (:func:`unblended_objects`) the coadd measured as point sources.
    """
    if truth is not None:
        stars = truth.stars[~np.asarray(truth.stars["is_variable"], dtype=bool)]
        return Table({"id": stars["id"], "ra": stars["ra"], "dec": stars["dec"]})
    point = unblended_objects(objects) & (np.asarray(objects["extendedness"], dtype=float) == 0)
    chosen = objects[point]
    return Table({"id": chosen["objectId"], "ra": chosen["ra"], "dec": chosen["decl"]})


def _magnitude_matrix(
    ids: np.ndarray,
    column: np.ndarray,
    flux: np.ndarray,
    err: np.ndarray,
    chosen: np.ndarray,
    n_visits: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(stars x visits) magnitudes and errors of the ``chosen`` stars (NaN: not measured)."""
    mags = np.full((len(chosen), n_visits), np.nan)
    mag_errors = np.full_like(mags, np.nan)
    for k, star in enumerate(chosen):
        sel = (ids == star) & (flux > 0)
        mags[k, column[sel]] = -2.5 * np.log10(flux[sel])
        mag_errors[k, column[sel]] = err[sel] / flux[sel] * MAG_PER_FRACTION
    return mags, mag_errors


def forced_star_metrics(
    rows: Table,
    bright_snr: float = 200.0,
    min_stars: int = 50,
    drp_snr: float = 50.0,
    min_snr: float = 10.0,
) -> Table:
    """Per band, for non-variable stars: repeatability and pulls against the truth.

    ``rows`` come from :func:`star_light_curves`. Columns:

    * ``pa1_mmag``, ``pf1_percent``, ``n_pa1_stars``: :func:`photometric_repeatability` of the
      stars whose median S/N is at least ``bright_snr`` (faro: 200, at least ``min_stars``);
      ``pa1_noise_mmag`` the same estimator on magnitudes drawn from their errors alone;
    * ``pa1_drp_mmag``, ``pa1_drp_noise_mmag``, ``n_drp_stars``: validate_drp's :func:`pa1` of
      the stars of median S/N >= ``drp_snr`` and what their errors alone give;
    * ``floor_mmag``: :func:`repeatability_floor` of those same (``drp_snr``) stars;
    * ``pull_std``: robust std of ``(psFlux - true) / psFluxErr`` at S/N >= ``min_snr``;
    * ``bias``: the median of ``psFlux / true - 1`` of the ``drp_snr`` stars.

    PA1, PF1 and the floor need no truth and take every star; the pulls and the bias take
    the isolated ones (:func:`truth_comparable`).
    """
    out = []
    steady = rows[~np.asarray(rows["is_variable"])]
    rng = np.random.default_rng(1)
    for band in sorted(set(steady["band"])):
        b = steady[steady["band"] == band]
        flux = np.asarray(b["psFlux"], dtype=float)
        err = np.asarray(b["psFluxErr"], dtype=float)
        true = np.asarray(b["true_flux"], dtype=float)
        snr = flux / err
        stars = np.unique(b["truth_id"])
        ids = np.asarray(b["truth_id"])
        visits = np.unique(b["ccdVisitId"])
        median_snr = np.array([np.median(snr[ids == s]) for s in stars])
        col = np.searchsorted(visits, np.asarray(b["ccdVisitId"]))

        bright_mags, bright_errors = _magnitude_matrix(
            ids, col, flux, err, stars[median_snr >= bright_snr], len(visits)
        )
        pa1_faro, pf1, n_faro = photometric_repeatability(bright_mags, min_stars)
        noise_draws = rng.normal(size=bright_errors.shape) * bright_errors
        pa1_faro_noise = photometric_repeatability(noise_draws, min_stars)[0]
        drp = stars[median_snr >= drp_snr]
        mags, mag_errors = _magnitude_matrix(ids, col, flux, err, drp, len(visits))
        comparable = truth_comparable(b)
        in_pulls = (snr >= min_snr) & comparable
        is_drp = np.isin(ids, drp) & comparable
        out.append(
            {
                "band": str(band),
                "pa1_mmag": 1000.0 * pa1_faro,
                "pf1_percent": pf1,
                "n_pa1_stars": n_faro,
                "pa1_noise_mmag": 1000.0 * pa1_faro_noise,
                "pa1_drp_mmag": 1000.0 * pa1(mags),
                "pa1_drp_noise_mmag": 1000.0 * pa1_noise(mag_errors),
                "n_drp_stars": len(drp),
                "floor_mmag": 1000.0 * repeatability_floor(mags, mag_errors),
                "pull_std": robust_std(((flux - true) / err)[in_pulls]),
                "n_pulls": int(in_pulls.sum()),
                "bias": float(np.median(flux[is_drp] / true[is_drp] - 1.0))
                if is_drp.any()
                else float("nan"),
            }
        )
    return Table(rows=out)


#: Edges of the S/N bins of :func:`pulls_by_snr` (the issue's 5-30, 30-100, 100-300, > 300).
PULL_SNR_EDGES = (5.0, 30.0, 100.0, 300.0, np.inf)
#: The bins of single-visit sources' pulls: near the detection threshold a catalog of
#: detections holds the stars that fluctuated up (their true S/N 5-10 pulls have medians of
#: several tenths), which is selection, not photometry, so their bins start at S/N 30.
SOURCE_PULL_SNR_EDGES = (30.0, 100.0, 300.0, np.inf)


def pulls_by_snr(
    rows: Table,
    flux: str = "psFlux",
    edges: tuple[float, ...] = PULL_SNR_EDGES,
) -> Table:
    """Pulls ``(flux - true) / error`` of non-variable, isolated stars
    (:func:`truth_comparable`) per band and bin of true S/N.

    A PSF model or aperture correction that is wrong by a fraction ``f`` shows as pulls whose
    spread grows with S/N (``f x S/N`` beyond 1), where the noise no longer hides it; a bias
    of faint measurements shows as a median off zero in the faint bins. The S/N is the true
    flux over the error: binned by the measured S/N, each bin would select on the noise
    itself (near an edge only the measurements scattered inward stay), which alone spreads
    perfect pulls by ~15%.

    Parameters
    ----------
    rows : Table
        From :func:`star_light_curves` (``true_flux``, ``band``, ``is_variable``, ``flux`` and
        ``flux + "Err"``, in nJy).
    flux : str
        The flux column.
    edges : tuple of float
        Bin edges in true S/N.

    Returns
    -------
    Table
        Per band and bin: ``band``, ``snr_lo``, ``snr_hi``, ``n``, ``median`` and
        ``robust_std`` of the pulls (NaN with fewer than 5 measurements), ``median_err`` (the
        median's standard error, :func:`visit_bootstrap_median_error`) and ``rel_err`` (the
        measurements' median fractional error).
    """
    steady = rows[truth_comparable(rows)]
    value = np.asarray(steady[flux], dtype=float)
    error = np.asarray(steady[f"{flux}Err"], dtype=float)
    true = np.asarray(steady["true_flux"], dtype=float)
    ok = np.isfinite(value) & (error > 0) & np.isfinite(true)
    snr = np.where(ok, true / np.where(ok, error, 1.0), np.nan)
    pull = np.where(ok, (value - true) / np.where(ok, error, 1.0), np.nan)
    bands = np.asarray(steady["band"])
    visits = np.asarray(steady["ccdVisitId"])
    out = []
    for band in sorted(set(bands)):
        for lo, hi in itertools.pairwise(edges):
            sel = ok & (bands == band) & (snr >= lo) & (snr < hi)
            n = int(sel.sum())
            enough = n >= 5
            out.append(
                {
                    "band": str(band),
                    "snr_lo": float(lo),
                    "snr_hi": float(hi),
                    "n": n,
                    "median": float(np.median(pull[sel])) if enough else float("nan"),
                    "robust_std": robust_std(pull[sel]) if enough else float("nan"),
                    "median_err": visit_bootstrap_median_error(pull[sel], visits[sel])
                    if enough
                    else float("nan"),
                    "rel_err": float(np.median(error[sel] / true[sel])) if enough else float("nan"),
                }
            )
    return Table(
        rows=out,
        names=("band", "snr_lo", "snr_hi", "n", "median", "robust_std", "median_err", "rel_err"),
        dtype=("U1", float, float, int, float, float, float, float),
    )


def visit_bootstrap_median_error(
    values: np.ndarray, visits: np.ndarray, n_boot: int = 200, seed: int = 0
) -> float:
    """Standard error of the median of ``values``, resampling whole visits.

    A visit's measurements share its zero point and aperture correction, whose errors move
    them together, so they are not independent draws: where those shared errors are not
    small beside a measurement's own (bright stars), the Gaussian ``1.253 sigma / sqrt(n)``
    understates the median's error. The visits are resampled with replacement (a cluster
    bootstrap, Davison & Hinkley 1997, sec. 3.8); the result is never below the
    independent-draw value.
    """
    values, visits = np.asarray(values, dtype=float), np.asarray(visits)
    independent = 1.253 * robust_std(values) / np.sqrt(len(values))
    ids, groups = np.unique(visits, return_inverse=True)
    if len(ids) < 3:
        return float(independent)
    members = [np.flatnonzero(groups == k) for k in range(len(ids))]
    rng = np.random.default_rng(seed)
    medians = [
        np.median(values[np.concatenate([members[k] for k in rng.integers(0, len(ids), len(ids))])])
        for _ in range(n_boot)
    ]
    return float(max(np.std(medians), independent))


def calibration_errors(butler, visit_ids: list[int]) -> dict[str, float]:
    """Per band, the fractional error the zero points share: the median ``zero_point_err``.

    The zero point's error is mostly the reference catalog's (its stars' errors, floored at
    a few mmag, outweigh the bright calibration stars' photon noise), and every visit of a
    band is calibrated against the same stars, so it does not average down over visits: a
    median over many visits' measurements still carries it whole.
    """
    errors: dict[str, list[float]] = {}
    for visit in visit_ids:
        if butler.exists("visitSummary", visit=visit):
            summary = butler.get("visitSummary", visit=visit)
            errors.setdefault(str(summary["filter"]), []).append(float(summary["zero_point_err"]))
    return {band: float(np.median(e)) / MAG_PER_FRACTION for band, e in errors.items()}


def flux_ramps(
    rows: Table, width: int, height: int, min_snr: float = 100.0, min_stars: int = 8
) -> Table:
    """Per visit, the ramp of bright stars' measured over true flux across the sensor.

    ``psFlux / true_flux`` of non-variable, isolated stars (:func:`truth_comparable`) of
    S/N >= ``min_snr`` is fitted, weighted by its errors, as ``a (1 + g_x X + g_y Y)``
    (linear) and separately as ``a (1 + c R^2)``
    (radial), with ``X, Y`` the position from the sensor's centre over its half-diagonal and
    ``R^2 = X^2 + Y^2``. A PSF model or aperture correction that does not follow the PSF
    across the sensor leaves such a ramp; because each visit has its own rotator angle a
    linear ramp becomes scatter in PA1, but a radial one repeats and PA1 cannot see it.

    Returns
    -------
    Table
        Per visit (``ccdVisitId``, ``band``, ``n_stars``): ``linear_mmag`` (``1085.7 |g|``:
        the magnitude change from the centre to a corner along the gradient) and its noise
        ``linear_err_mmag``, the length of the fit's error vector (``hypot`` of the errors of
        ``g_x`` and ``g_y``), so that ``linear_mmag^2`` exceeds the true ramp's square by
        ``linear_err_mmag^2`` on average: a length has the noise of both components, and a
        flat sensor gives ``linear_mmag ~ linear_err_mmag``; ``radial_mmag`` (``1085.7 c``:
        centre to corner) and its error ``radial_err_mmag``. Visits with fewer than
        ``min_stars`` bright stars are left out.
    """
    steady = rows[truth_comparable(rows)]
    value = np.asarray(steady["psFlux"], dtype=float)
    error = np.asarray(steady["psFluxErr"], dtype=float)
    true = np.asarray(steady["true_flux"], dtype=float)
    ok = np.isfinite(value) & (error > 0) & (true > 0) & (value >= min_snr * error)
    x0, y0 = 0.5 * (width - 1), 0.5 * (height - 1)
    scale = 0.5 * float(np.hypot(width, height))
    X = (np.asarray(steady["x"], dtype=float) - x0) / scale
    Y = (np.asarray(steady["y"], dtype=float) - y0) / scale
    visit_ids = np.asarray(steady["ccdVisitId"])
    bands = np.asarray(steady["band"])
    out = []

    def fit(design: np.ndarray, ratio: np.ndarray, sigma: np.ndarray) -> tuple:
        """Weighted least squares; coefficients over the constant, and their errors."""
        coeffs, chi2, cov = weighted_fit(design, ratio, sigma)
        # errors scaled by the fit's reduced chi^2 when that exceeds 1 (outliers, blends)
        cov = cov * max(chi2 / max(len(ratio) - design.shape[1], 1), 1.0)
        return coeffs[1:] / coeffs[0], np.sqrt(np.diag(cov)[1:]) / coeffs[0]

    for visit in np.unique(visit_ids[ok]):
        sel = ok & (visit_ids == visit)
        if sel.sum() < min_stars:
            continue
        ratio = value[sel] / true[sel]
        sigma = error[sel] / true[sel]
        # one clipping pass: a blended or variable star would set the ramp alone
        med = np.median(ratio)
        keep = np.abs(ratio - med) < 5.0 * np.maximum(sigma, mad_std(ratio, med))
        if keep.sum() < min_stars:
            continue
        ratio, sigma = ratio[keep], sigma[keep]
        xs, ys = X[sel][keep], Y[sel][keep]
        ones = np.ones(len(ratio))
        (gx, gy), (ex, ey) = fit(np.column_stack([ones, xs, ys]), ratio, sigma)
        (c,), (ec,) = fit(np.column_stack([ones, xs**2 + ys**2]), ratio, sigma)
        g = float(np.hypot(gx, gy))
        g_err = float(np.hypot(ex, ey))
        out.append(
            {
                "ccdVisitId": int(visit),
                "band": str(bands[sel][0]),
                "n_stars": int(keep.sum()),
                "linear_mmag": MMAG_PER_FRACTION * g,
                "linear_err_mmag": MMAG_PER_FRACTION * g_err,
                "radial_mmag": MMAG_PER_FRACTION * float(c),
                "radial_err_mmag": MMAG_PER_FRACTION * float(ec),
            }
        )
    return Table(
        rows=out,
        names=(
            "ccdVisitId",
            "band",
            "n_stars",
            "linear_mmag",
            "linear_err_mmag",
            "radial_mmag",
            "radial_err_mmag",
        ),
        dtype=(np.int64, "U1", int, float, float, float, float),
    )


def ramp_excess(values: np.ndarray, errors: np.ndarray) -> tuple[float, float]:
    """The RMS over visits of fitted ramps beyond their errors, and its standard error.

    ``sqrt(max(mean(v^2 - e^2), 0))``: a noisy fit of a flat sensor still gives ``|v| ~ e``,
    so the plain RMS of the ramps would grow with the noise. ``e`` must be each ramp's noise
    in that sense, ``E[v^2] = true^2 + e^2`` (as :func:`flux_ramps` gives it). The standard
    error comes from the scatter of ``v^2 - e^2`` over visits (one sigma above the value).
    """
    v, e = np.asarray(values, dtype=float), np.asarray(errors, dtype=float)
    ok = np.isfinite(v) & np.isfinite(e)
    if not ok.any():
        return float("nan"), float("nan")
    excess = v[ok] ** 2 - e[ok] ** 2
    mean = max(float(np.mean(excess)), 0.0)
    se = float(np.std(excess) / np.sqrt(ok.sum())) if ok.sum() > 1 else float("nan")
    value = float(np.sqrt(mean))
    return value, float(np.sqrt(mean + se) - value) if np.isfinite(se) else float("nan")


def enclosed_light_mmag(
    psf_truth: dict,
    radius_px: float,
    pixel_scale: float,
    annulus: tuple[float, float] | None = None,
) -> float:
    """The light of a simulated PSF that an aperture of ``radius_px`` misses at the sensor's
    centre, in mmag (``-2.5 log10`` of the fraction it measures; 0 for a profile truncated
    within it).

    Without ``annulus``, the light beyond the aperture. With ``annulus`` (inner and outer
    radius, pixels), the aperture's flux as :mod:`~twinkles.measurement.apcorr` measures it:
    less a local sky from that annulus, whose mean per pixel, times the aperture's area,
    takes the wings' light in the annulus out of the aperture too (for Kolmogorov wings, a
    fifth as much again as the light beyond a 25-pixel aperture).

    ``psf_truth`` is the ``psf`` record of an ``eimageTruth``.
    """
    outer = max(radius_px, annulus[1] if annulus else 0.0)
    half = int(np.ceil(max(3 * radius_px, outer + 2)))
    image = SimulatedPSF.from_dict(psf_truth).at(0.0, 0.0)
    pixels = image.drawImage(nx=2 * half + 1, ny=2 * half + 1, scale=pixel_scale).array
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    radius = np.hypot(xx, yy)
    aperture = radius <= radius_px
    inside = float(pixels[aperture].sum())
    if annulus is not None:
        ring = (radius >= annulus[0]) & (radius <= annulus[1])
        inside -= float(pixels[ring].mean()) * int(aperture.sum())
    return -MMAG_PER_FRACTION * np.log(inside) if inside > 0 else float("nan")


def zero_point_residuals(
    butler,
    visit_ids: list[int],
    pixel_scale: float,
    radius_px: float = 25.0,
    annulus: tuple[float, float] | None = None,
) -> Table:
    """Per visit, the measured zero point against the simulation's, and its pull.

    The pipeline's zero point turns the flux in its calibration aperture (the aperture
    correction's total, ``radius_px``, less a local sky from ``annulus`` where given) into AB
    magnitudes; the simulation's turns the total flux. They are compared like with like: the
    simulated zero point less the light of its PSF that the aperture misses (``beyond_mmag``,
    :func:`enclosed_light_mmag`: ~3-10 mmag for a Kolmogorov profile, 0 for the truncated
    Moffat), which the calibration against the reference catalog absorbs.

    Only visits with a ``visitSummary`` and a simulated truth (``eimageTruth``: an external
    run has none) are listed. ``dzp_mmag`` is measured minus simulated; ``pull`` divides it
    by ``zero_point_total_err`` (the calibration stars' error and the aperture correction's).
    """
    rows = []
    for visit in visit_ids:
        if not (
            butler.exists("visitSummary", visit=visit) and butler.exists("eimageTruth", visit=visit)
        ):
            continue
        summary = butler.get("visitSummary", visit=visit)
        truth = butler.get("eimageTruth", visit=visit)
        error = 1000.0 * summary.get("zero_point_total_err", summary["zero_point_err"])
        beyond = enclosed_light_mmag(truth["psf"], radius_px, pixel_scale, annulus)
        dzp = 1000.0 * float(summary["zero_point"] - truth["zero_point"]) + beyond
        rows.append((int(visit), str(summary["filter"]), dzp, beyond, error, dzp / error))
    return Table(
        rows=rows,
        names=("visit", "band", "dzp_mmag", "beyond_mmag", "err_mmag", "pull"),
        dtype=(np.int64, "U1", float, float, float, float),
    )


def _edge(value: float) -> float | None:
    """A bin edge for JSON: None for an open end."""
    return float(value) if np.isfinite(value) else None


def photometry_systematics(
    pulls: Table,
    ramps: Table | None,
    min_n: int = MIN_PULLS_PER_BIN,
    calibration_err: dict[str, float] | None = None,
) -> dict[str, dict]:
    """Per band, what :func:`pulls_by_snr` and :func:`flux_ramps` show, for the metrics.

    The pull bin (of at least ``min_n`` measurements) whose robust std is furthest from 1 and
    the one whose median is furthest from 0, each with its standard error: the IQR-based
    std's ``1.166 / sqrt(n)`` for Gaussian pulls; the median's from a bootstrap over visits,
    and (where ``calibration_err``, the fractional error the band's zero points share, see
    :func:`calibration_errors`, is given) that error over the bin's fractional flux error:
    an offset of the reference catalog moves every measurement of the band alike, so in
    bright bins, whose errors are a few mmag, it alone moves the median by a few tenths. The
    ramps' RMS beyond their errors (:func:`ramp_excess`) with theirs, where ``ramps`` are
    given (a coadd has none: its stars are measured once).
    """
    out: dict[str, dict] = {}
    ramp_bands = set(ramps["band"]) if ramps is not None else set()
    for band in sorted(set(pulls["band"]) | ramp_bands):
        record: dict = {}
        b = pulls[(pulls["band"] == band) & (pulls["n"] >= min_n)]
        if len(b):
            k = int(np.argmax(np.abs(np.asarray(b["robust_std"]) - 1.0)))
            j = int(np.argmax(np.abs(np.asarray(b["median"]))))
            record["pull_std_worst"] = float(b["robust_std"][k])
            record["pull_std_worst_err"] = 1.166 / np.sqrt(float(b["n"][k]))
            record["pull_std_worst_bin"] = [_edge(b["snr_lo"][k]), _edge(b["snr_hi"][k])]
            shared = (calibration_err or {}).get(str(band), 0.0) / float(b["rel_err"][j])
            record["pull_median_worst"] = float(b["median"][j])
            record["pull_median_worst_err"] = float(np.hypot(b["median_err"][j], shared))
            record["pull_median_worst_bin"] = [_edge(b["snr_lo"][j]), _edge(b["snr_hi"][j])]
        record["pulls_by_snr"] = [
            {
                "snr_lo": _edge(r["snr_lo"]),
                "snr_hi": _edge(r["snr_hi"]),
                "n": int(r["n"]),
                "median": float(r["median"]),
                "median_err": float(r["median_err"]),
                "robust_std": float(r["robust_std"]),
            }
            for r in pulls[pulls["band"] == band]
        ]
        if ramps is None:
            out[str(band)] = record
            continue
        r = ramps[ramps["band"] == band]
        for kind in ("linear", "radial"):
            value, err = ramp_excess(r[f"{kind}_mmag"], r[f"{kind}_err_mmag"])
            record[f"ramp_{kind}_mmag"] = value
            record[f"ramp_{kind}_err_mmag"] = err
        record["ramp_n_visits"] = len(r)
        out[str(band)] = record
    return out


def pooled_completeness_purity(table: Table, max_mag: float) -> tuple[float, float, int, int]:
    """Completeness and purity over the bins of :func:`completeness_purity` brighter than
    ``max_mag``: (completeness, purity, number of true objects, number of Objects)."""
    bins = table[np.asarray(table["mag_hi"]) <= max_mag]
    n_true = int(np.sum(bins["n_true"]))
    n_obj = int(np.sum(bins["n_objects"]))
    found = float(np.nansum(bins["completeness"] * bins["n_true"]))
    real = float(np.nansum(bins["purity"] * bins["n_objects"]))
    return (
        found / n_true if n_true else float("nan"),
        real / n_obj if n_obj else float("nan"),
        n_true,
        n_obj,
    )


def _ratio_to_mmag(ratio: float) -> float:
    """A flux ratio as a magnitude difference (mmag); NaN for a ratio <= 0."""
    return -2500.0 * float(np.log10(ratio)) if ratio > 0 else float("nan")


def photometry_vs_magnitude(rows: Table, bin_mag: float = 0.5) -> Table:
    """Bias and scatter of forced PSF fluxes of non-variable, isolated stars per band and true
    magnitude.

    Parameters
    ----------
    rows : Table
        From :func:`star_light_curves` (``psFlux``, ``psFluxErr``, ``true_flux`` in nJy).
    bin_mag : float
        Width of the true-magnitude bins (mag).

    Returns
    -------
    Table
        Per band and bin: ``mag_lo``, ``mag_hi``, ``n``, ``bias_mmag``
        (``-2.5 log10`` of the median of ``psFlux / true``, mmag), ``scatter_mmag`` (the
        robust sigma of ``psFlux / true`` times 1085.7 mmag), ``expected_mmag`` (the median
        photometric error, ``1085.7 psFluxErr / true``) and ``pull_std`` (robust sigma of
        ``(psFlux - true) / psFluxErr``). Ratios of fluxes rather than magnitudes, so faint
        stars' negative fluxes count instead of being dropped (which biases toward bright).
    """
    steady = rows[truth_comparable(rows)]
    flux = np.asarray(steady["psFlux"], float)
    err = np.asarray(steady["psFluxErr"], float)
    true = np.asarray(steady["true_flux"], float)
    ok = (true > 0) & np.isfinite(flux) & (err > 0)
    mag = np.full(len(true), np.nan)
    mag[ok] = -2.5 * np.log10(true[ok]) + 31.4  # nJy -> AB
    ratio = np.full(len(true), np.nan)
    ratio[ok] = flux[ok] / true[ok]
    bands = np.asarray(steady["band"])
    out = []
    if not ok.any():
        return Table(names=("band", "mag_lo", "mag_hi", "n"), dtype=("U1", float, float, int))
    lo = np.floor(np.nanmin(mag) / bin_mag) * bin_mag
    edges = np.arange(lo, np.nanmax(mag) + bin_mag, bin_mag)
    for band in sorted(set(bands[ok])):
        for a, b in itertools.pairwise(edges):
            sel = ok & (bands == band) & (mag >= a) & (mag < b)
            if sel.sum() < 3:
                continue
            out.append(
                {
                    "band": str(band),
                    "mag_lo": float(a),
                    "mag_hi": float(b),
                    "n": int(sel.sum()),
                    "bias_mmag": _ratio_to_mmag(float(np.median(ratio[sel]))),
                    "scatter_mmag": 1085.7 * robust_std(ratio[sel]),
                    "expected_mmag": 1085.7 * float(np.median(err[sel] / true[sel])),
                    "pull_std": robust_std((flux[sel] - true[sel]) / err[sel]),
                }
            )
    return Table(rows=out)


def star_positions(
    butler,
    visits: Table,
    stars: Table,
    radius_arcsec: float = 1.0,
    min_snr: float = 50.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Measured positions of stars in every visit's ``src`` catalog.

    Each star (``ra``, ``dec``: :func:`reference_stars`) is matched one to one to the visit's
    sources within ``radius_arcsec``; sources that are saturated, blended, on an edge or
    bad, or below ``min_snr``, are left out.

    Returns
    -------
    ra, dec : ndarray
        (stars x visits) in degrees, NaN where the star was not measured.
    """
    ra = np.full((len(stars), len(visits)), np.nan)
    dec = np.full_like(ra, np.nan)
    for k, visit in enumerate(np.asarray(visits["obsHistID"], dtype=int)):
        if not butler.exists("src", visit=int(visit)):
            continue
        src = butler.get("src", visit=int(visit))
        good = np.asarray(src["psfFlux"], float) >= min_snr * np.asarray(src["psfFluxErr"], float)
        for flag in ("flag_saturated", "flag_blended", "flag_edge", "flag_bad"):
            good &= ~np.asarray(src[flag], dtype=bool)
        src = src[good]
        if len(src) == 0:
            continue
        i_src, i_star, _ = match_sky(
            src["coord_ra"], src["coord_dec"], stars["ra"], stars["dec"], radius_arcsec
        )
        ra[i_star, k] = np.asarray(src["coord_ra"], float)[i_src]
        dec[i_star, k] = np.asarray(src["coord_dec"], float)[i_src]
    return ra, dec


def am1(
    ra: np.ndarray,
    dec: np.ndarray,
    annulus_arcmin: tuple[float, float] = (4.0, 6.0),
    min_visits: int = 3,
    min_pairs: int = 10,
) -> tuple[float, int]:
    """validate_drp's AM1 (mas): astrometric repeatability of star pairs about 5' apart.

    For every pair of stars whose mean separation lies in ``annulus_arcmin`` (the SRD's
    5' +- 1'), the separation is measured in each visit where both stars are; the RMS of
    those separations about their mean is the pair's repeatability, and AM1 is the median
    over pairs (LSST SRD, LPM-17, table 18; validate_drp).

    Parameters
    ----------
    ra, dec : ndarray
        (stars x visits) positions in degrees, NaN where a star was not measured.
    annulus_arcmin : tuple of float
        Inner and outer pair separation (arcmin).
    min_visits : int
        Pairs measured together in fewer visits are left out.
    min_pairs : int
        Fewer qualifying pairs than this leave AM1 unmeasured: a median over a handful of
        pairs (the corners of a field barely larger than the annulus) says little.

    Returns
    -------
    am1_mas : float
        NaN when fewer than ``min_pairs`` pairs qualify (a field smaller than the annulus).
    n_pairs : int
        Pairs that qualified.
    """
    ra = np.asarray(ra, dtype=float)
    dec = np.asarray(dec, dtype=float)
    if ra.shape != dec.shape or ra.ndim != 2:
        raise ValueError(f"ra and dec must be (stars x visits) arrays of one shape, not {ra.shape}")
    inner, outer = annulus_arcmin
    if not 0 <= inner < outer:
        raise ValueError(
            f"annulus_arcmin must be (inner, outer) with 0 <= inner < outer: {annulus_arcmin}"
        )
    measured = np.isfinite(ra) & np.isfinite(dec)
    seen = measured.sum(axis=1) >= min_visits
    if seen.sum() < 2:
        return float("nan"), 0
    idx = np.flatnonzero(seen)
    mean_xyz = unit_vectors(np.nanmedian(ra[idx], axis=1), np.nanmedian(dec[idx], axis=1))
    from scipy.spatial import cKDTree

    pairs = cKDTree(mean_xyz).query_pairs(chord_length(outer * 60.0), output_type="ndarray")
    if len(pairs) == 0:
        return float("nan"), 0
    d = np.linalg.norm(mean_xyz[pairs[:, 0]] - mean_xyz[pairs[:, 1]], axis=1)
    pairs = pairs[d >= chord_length(inner * 60.0)]
    if len(pairs) == 0:
        return float("nan"), 0
    xyz = unit_vectors(np.nan_to_num(ra).ravel(), np.nan_to_num(dec).ravel()).reshape(*ra.shape, 3)
    rms = []
    for block in np.array_split(pairs, max(1, len(pairs) // 20000)):
        a, b = idx[block[:, 0]], idx[block[:, 1]]
        both = measured[a] & measured[b]
        chord = np.linalg.norm(xyz[a] - xyz[b], axis=2)
        sep_mas = np.degrees(2.0 * np.arcsin(chord / 2.0)) * 3.6e6
        sep_mas[~both] = np.nan
        keep = both.sum(axis=1) >= min_visits
        rms.append(np.nanstd(sep_mas[keep], axis=1))
    rms = np.concatenate(rms)
    if len(rms) < max(min_pairs, 1):
        return float("nan"), len(rms)
    return float(np.median(rms)), len(rms)
