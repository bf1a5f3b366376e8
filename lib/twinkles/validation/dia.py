"""Difference imaging scored against the truth.

A difference image measures ``flux(t) - flux(template)``, and the template's flux of an object
is the weighted mean of its fluxes at the template's visits (the coadd weights, recorded in
``goodSeeingCoadd_summary``): a supernova that was already bright in a template visit leaves
a negative offset, a lensed quasar's images their flux at the template epochs. Every expected
difference flux here accounts for that.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table
from scipy.spatial import cKDTree

from twinkles.geometry import chord_length, unit_vectors
from twinkles.sim.truth import Truth
from twinkles.validation.static_sky import robust_std

__all__ = [
    "expected_difference_flux",
    "forced_dia_truth",
    "light_curve_pulls",
    "score_dia_sources",
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

    ``template`` is a ``goodSeeingCoadd_summary``: ``mjds`` and ``weights`` of its visits.
    """
    ids = np.asarray(ids, dtype=np.int64)
    now = truth.flux(ids, band, mjd)
    weights = np.asarray(template["weights"], float)
    ref = np.zeros(len(ids))
    for t, w in zip(template["mjds"], weights, strict=True):
        ref += w * truth.flux(ids, band, float(t))
    return now - ref / weights.sum()


def score_dia_sources(
    dia_sources: Table, visible: Table, radius_arcsec: float = 1.0, min_snr: float = 10.0
) -> dict:
    """Recovery of the visible transients of one visit, and DIASources that match nothing.

    Parameters
    ----------
    dia_sources : Table
        The visit's DIASources (``ra``, ``decl``).
    visible : Table
        Variable truth objects on the difference image with ``expected_snr``
        (|expected difference flux| / its measured error).
    radius_arcsec : float
        Match radius.
    min_snr : float
        Transients at least this significant count in the recovery.

    Returns
    -------
    dict
        ``n_expected``, ``n_recovered`` (of those with ``expected_snr >= min_snr``),
        ``n_dia_sources``, ``n_spurious`` (DIASources within ``radius_arcsec`` of no variable
        object), ``found`` (per ``visible`` row: a DIASource within ``radius_arcsec``),
        ``missed`` (truth ids).
    """
    dia_xyz = unit_vectors(dia_sources["ra"], dia_sources["decl"])
    chord = chord_length(radius_arcsec)
    near_truth = np.zeros(len(dia_sources), dtype=bool)
    found = np.zeros(len(visible), dtype=bool)
    if len(dia_sources) and len(visible):
        truth_xyz = unit_vectors(visible["ra"], visible["dec"])
        near_truth = cKDTree(truth_xyz).query(dia_xyz)[0] <= chord
        found = cKDTree(dia_xyz).query(truth_xyz)[0] <= chord
    strong = np.asarray(visible["expected_snr"]) >= min_snr
    recovered = found[strong]
    return {
        "n_expected": int(strong.sum()),
        "n_recovered": int(recovered.sum()),
        "n_dia_sources": len(dia_sources),
        "n_spurious": int((~near_truth).sum()),
        "found": found,
        "missed": np.asarray(visible["truth_id"])[strong][~recovered].tolist(),
    }


def light_curve_pulls(rows: Table) -> dict:
    """Pull statistics of forced difference photometry against the expected difference flux.

    ``rows`` need ``psFlux``, ``psFluxErr`` and ``expected_flux``; returns the robust standard
    deviation and the median of ``(psFlux - expected) / psFluxErr`` and the number of points.
    """
    flux = np.asarray(rows["psFlux"], float)
    err = np.asarray(rows["psFluxErr"], float)
    pulls = (flux - np.asarray(rows["expected_flux"], float)) / err
    pulls = pulls[np.isfinite(pulls)]
    if len(pulls) < 3:
        return {"n": len(pulls), "pull_std": float("nan"), "pull_median": float("nan")}
    return {
        "n": len(pulls),
        "pull_std": robust_std(pulls),
        "pull_median": float(np.median(pulls)),
    }


def visible_transients(
    diff, truth: Truth, variables: Table, band: str, mjd: float, template: dict
) -> Table:
    """Variable truth objects on a difference image: expected and measured difference flux.

    ``expected_snr`` is |expected difference flux| over the PSF-flux error measured at the
    true position; objects off the image or on missing data are left out.
    """
    from twinkles.image.exposure import MaskPlane
    from twinkles.measurement.psf_flux import psf_flux

    x, y = diff.wcs.all_world2pix(np.asarray(variables["ra"]), np.asarray(variables["dec"]), 0)
    h, w = diff.shape
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    inside = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h)
    inside[inside] = (diff.mask[iy[inside], ix[inside]] & int(MaskPlane.NO_DATA)) == 0
    out = variables[inside]
    out["x"], out["y"] = x[inside], y[inside]
    out["expected_flux"] = expected_difference_flux(truth, out["truth_id"], band, mjd, template)
    flux, err, _ = psf_flux(diff, out["x"], out["y"])
    out["psFlux"], out["psFluxErr"] = flux, err
    out["expected_snr"] = np.abs(out["expected_flux"]) / err
    return out


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
    gets ``truth_id``, ``kind``, ``band``, ``mjd``, ``expected_flux`` (against that band's
    template) and ``in_template`` (the visit is one of the template's: its difference is not
    independent of the template).
    """
    from astropy.table import vstack

    from twinkles.validation.static_sky import match_sky

    variables = variable_truth(truth)
    variables = variables[np.isin(variables["kind"], kinds)]
    if len(variables) == 0 or len(dia_objects) == 0:
        return Table()
    i_truth, i_obj, _ = match_sky(
        variables["ra"], variables["dec"], dia_objects["ra"], dia_objects["decl"], radius_arcsec
    )
    truth_of = dict(
        zip(
            np.asarray(dia_objects["diaObjectId"])[i_obj].tolist(),
            np.asarray(variables["truth_id"])[i_truth].tolist(),
            strict=True,
        )
    )
    kind_of = dict(zip(variables["truth_id"].tolist(), variables["kind"].tolist(), strict=True))
    parts = []
    for row in visits:
        visit, band = int(row["obsHistID"]), str(row["filter"])
        if not butler.exists("forced_diaSrc", visit=visit) or band not in templates:
            continue
        forced = butler.get("forced_diaSrc", visit=visit)
        forced = forced[np.isin(forced["diaObjectId"], list(truth_of))]
        if len(forced) == 0:
            continue
        forced["truth_id"] = np.array([truth_of[o] for o in forced["diaObjectId"].tolist()])
        forced["kind"] = np.array([kind_of[t] for t in forced["truth_id"].tolist()])
        forced["band"] = np.full(len(forced), band)
        forced["mjd"] = np.full(len(forced), float(row["expMJD"]))
        forced["expected_flux"] = expected_difference_flux(
            truth, forced["truth_id"], band, float(row["expMJD"]), templates[band]
        )
        forced["in_template"] = np.full(len(forced), visit in templates[band]["visits"])
        parts.append(forced)
    return vstack(parts, metadata_conflicts="silent") if parts else Table()
