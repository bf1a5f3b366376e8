"""Static-sky checks against the truth: Objects, forced light curves, repeatability.

* :func:`match_sky`: one-to-one nearest matches on the sky within a radius;
* :func:`completeness_purity`: of the Object table against the true stars and galaxies,
  per bin of true (completeness) or measured (purity) magnitude;
* :func:`pa1`: the photometric repeatability of validate_drp (LSST SRD PA1): for bright
  unresolved stars, one random pair of visits per star, ``dmag / sqrt(2)``, an IQR-based
  sigma over stars, repeated and the median taken;
* :func:`forced_light_curves`: the ForcedSource rows of every visit with their band and MJD;
* :func:`star_light_curves`, :func:`forced_star_metrics`: ForcedSource of stars against
  their true fluxes: PA1 and pulls per band (PA1 also without a truth, on point-like Objects);
* :func:`pa1_noise`, :func:`repeatability_floor`: the PA1 the photometric errors alone give,
  and the scatter beyond them (the pipeline's systematic floor);
* :func:`photometry_vs_magnitude`: bias and scatter of forced photometry of non-variable
  stars against their true fluxes, per band and bin of true magnitude;
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
from twinkles.sim.truth import Truth

__all__ = [
    "am1",
    "completeness_purity",
    "forced_light_curves",
    "forced_star_metrics",
    "match_sky",
    "pa1",
    "pa1_noise",
    "photometry_vs_magnitude",
    "pooled_completeness_purity",
    "reference_stars",
    "repeatability_floor",
    "robust_std",
    "star_light_curves",
    "star_positions",
    "static_truth",
]

IQR_TO_SIGMA = 1.0 / 1.349


def robust_std(values: np.ndarray) -> float:
    """Gaussian-equivalent sigma from the interquartile range."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) < 2:
        return float("nan")
    q25, q75 = np.percentile(v, [25, 75])
    return float((q75 - q25) * IQR_TO_SIGMA)


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


def forced_light_curves(butler, visits: Table) -> Table:
    """Every visit's ForcedSource rows that exist, with ``band`` and ``mjd`` added."""
    parts = []
    for row in visits:
        visit = int(row["obsHistID"])
        if not butler.exists("forced_src", visit=visit):
            continue
        forced = butler.get("forced_src", visit=visit)
        forced["band"] = np.full(len(forced), str(row["filter"]), dtype="U1")
        forced["mjd"] = np.full(len(forced), float(row["expMJD"]))
        parts.append(forced)
    if not parts:
        raise FileNotFoundError("no forced_src in the run: run forced_photometry first")
    return vstack(parts, metadata_conflicts="silent")


def star_light_curves(
    objects: Table, light_curves: Table, truth: Truth | None, radius_arcsec: float = 0.5
) -> Table:
    """ForcedSource rows of stars, with the true flux at each epoch where the truth is known.

    With a truth, the stars are the Objects matched to true stars; without one (an external
    run brought no truth catalog), the Objects the coadd measured as point sources
    (``extendedness`` 0), whose ``truth_id`` is then their ``objectId``, ``is_variable``
    False (unknown) and ``true_flux`` NaN: PA1 and the floor need no truth, the pulls do.
    Objects in blends and rows flagged off-image, bad, on an edge or saturated are dropped.
    Columns added: ``truth_id``, ``is_variable``, ``true_flux`` (nJy).
    """
    isolated = np.asarray(objects["parent"]) == 0
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
    return rows


def reference_stars(truth: Truth | None, objects: Table) -> Table:
    """Stars whose positions AM1 compares: ``id``, ``ra``, ``dec`` (deg).

    The true non-variable stars; without a truth, the isolated Objects the coadd measured as
    point sources.
    """
    if truth is not None:
        stars = truth.stars[~np.asarray(truth.stars["is_variable"], dtype=bool)]
        return Table({"id": stars["id"], "ra": stars["ra"], "dec": stars["dec"]})
    point = (np.asarray(objects["parent"]) == 0) & (
        np.asarray(objects["extendedness"], dtype=float) == 0
    )
    chosen = objects[point]
    return Table({"id": chosen["objectId"], "ra": chosen["ra"], "dec": chosen["decl"]})


def forced_star_metrics(rows: Table, bright_snr: float = 50.0, min_snr: float = 10.0) -> Table:
    """Per band, for non-variable stars: PA1 of the bright ones and pulls against the truth.

    ``rows`` come from :func:`star_light_curves`. PA1 uses stars whose median S/N is at least
    ``bright_snr``, as do the PA1 their errors alone would give (:func:`pa1_noise`) and the
    scatter beyond their errors (:func:`repeatability_floor`); pulls
    ``(psFlux - true) / psFluxErr`` use S/N >= ``min_snr``; the bias is the median of
    ``psFlux / true - 1`` for the bright stars.
    """
    out = []
    steady = rows[~np.asarray(rows["is_variable"])]
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
        bright = stars[median_snr >= bright_snr]
        mags = np.full((len(bright), len(visits)), np.nan)
        mag_errors = np.full_like(mags, np.nan)
        col = np.searchsorted(visits, np.asarray(b["ccdVisitId"]))
        for k, s in enumerate(bright):
            sel = (ids == s) & (flux > 0)
            mags[k, col[sel]] = -2.5 * np.log10(flux[sel])
            mag_errors[k, col[sel]] = 2.5 / np.log(10.0) * err[sel] / flux[sel]
        in_pulls = snr >= min_snr
        is_bright = np.isin(ids, bright)
        out.append(
            {
                "band": str(band),
                "pa1_mmag": 1000.0 * pa1(mags),
                "pa1_noise_mmag": 1000.0 * pa1_noise(mag_errors),
                "floor_mmag": 1000.0 * repeatability_floor(mags, mag_errors),
                "n_pa1_stars": len(bright),
                "pull_std": robust_std(((flux - true) / err)[in_pulls]),
                "n_pulls": int(in_pulls.sum()),
                "bias": float(np.median(flux[is_bright] / true[is_bright] - 1.0))
                if is_bright.any()
                else float("nan"),
            }
        )
    return Table(rows=out)


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
    """Bias and scatter of forced PSF fluxes of non-variable stars, per band and true magnitude.

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
    steady = rows[~np.asarray(rows["is_variable"], dtype=bool)]
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
