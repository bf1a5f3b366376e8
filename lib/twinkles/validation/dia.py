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

from twinkles.sim.truth import Truth
from twinkles.validation.static_sky import robust_std

__all__ = [
    "expected_difference_flux",
    "light_curve_pulls",
    "score_dia_sources",
    "variable_truth",
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
        object), ``missed`` (truth ids).
    """
    dia_xyz = _unit_vectors(dia_sources["ra"], dia_sources["decl"])
    strong = visible[np.asarray(visible["expected_snr"]) >= min_snr]
    chord = 2.0 * np.sin(np.radians(radius_arcsec / 3600.0) / 2.0)
    near_truth = np.zeros(len(dia_sources), dtype=bool)
    recovered = np.zeros(len(strong), dtype=bool)
    if len(dia_sources):
        tree = cKDTree(dia_xyz)
        if len(visible):
            dist, _ = cKDTree(_unit_vectors(visible["ra"], visible["dec"])).query(dia_xyz)
            near_truth = dist <= chord
        if len(strong):
            dist, _ = tree.query(_unit_vectors(strong["ra"], strong["dec"]))
            recovered = dist <= chord
    return {
        "n_expected": len(strong),
        "n_recovered": int(recovered.sum()),
        "n_dia_sources": len(dia_sources),
        "n_spurious": int((~near_truth).sum()),
        "missed": np.asarray(strong["truth_id"])[~recovered].tolist(),
    }


def _unit_vectors(ra, dec) -> np.ndarray:
    ra, dec = np.radians(np.asarray(ra, float)), np.radians(np.asarray(dec, float))
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


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
