"""The static-sky branch end to end on the tiny run, scored against the truth.

The tiny run is a 256-pixel sensor at 20x Run-1 star density with 12 visits in g, r, i
(4 per band): crowded, and calibrated by a handful of stars per visit, so its per-visit zero
points scatter by ~9 mmag (tests/test_process_eimage.py). The bounds below are the issue's
where that does not matter (coadd noise, positions, completeness, bias) and are stated with
the reason where it does; the demo's numbers are in the closing note of the issue.
"""

from __future__ import annotations

import nbformat
import numpy as np
import pytest
from astropy.table import Table

from twinkles.sim.truth import Truth
from twinkles.validation.static_sky import (
    forced_light_curves,
    forced_star_metrics,
    object_star_rows,
    robust_std,
    star_light_curves,
    star_object_ids,
    truth_comparable,
    unblended_objects,
)
from twinkles.workflow.status import run_status


def assert_unit_pull_width(pull: np.ndarray) -> None:
    """1 +- 0.1 beyond twice the estimate's standard error, as validate_run holds pull widths
    (the IQR-based std's error is 1.166 / sqrt(n): 0.13 for ~75 pulls)."""
    n = len(pull)
    assert robust_std(pull) == pytest.approx(1.0, abs=0.1 + 2 * 1.166 / np.sqrt(n))


def test_every_step_ran_with_figures(tiny_static):
    status = {s["step"]: s for s in run_status(tiny_static)["steps"]}
    for step, n in [
        ("make_skymap", 1),
        ("make_coadd", 3),
        ("coadd_sources", 1),
        ("forced_photometry", 12),
        ("validate_static_sky", 1),
    ]:
        assert (status[step]["done"], status[step]["failed"]) == (n, 0), step
    for step in ("make_coadd", "coadd_sources", "validate_static_sky"):
        for path in (tiny_static.dir / "notebooks" / step).glob("*.ipynb"):
            nb = nbformat.read(path, as_version=4)
            figures = sum(
                "image/png" in o.get("data", {}) for c in nb.cells for o in c.get("outputs", [])
            )
            assert figures >= 2, path


def test_coadd_noise_is_what_the_variance_predicts(tiny_static):
    for band in "gri":
        summary = tiny_static.butler.get("deepCoadd_summary", filter=band)
        assert summary["max_n_image"] == 4
        assert abs(summary["noise_ratio"] - 1.0) < 0.10, band
        # depth: the variance plane ignores the covariance resampling adds, so it is a little
        # optimistic against the visits' own depths
        assert abs(summary["depth_measured"] - summary["depth_predicted"]) < 0.3, band


def test_objects_against_the_truth(tiny_static):
    metrics = tiny_static.butler.get("staticSkyMetrics")
    objects = metrics["objects"]
    # the median over the tiny run's point sources, most of them faint (coadd centroid noise
    # ~0.05 px); the pixels' quantisation on disk (storage.compression, 1/16 of the noise)
    # moved it from under 10 mas to 10.2: the limit is a sanity bound, not a noise-derived one
    assert objects["point_source_offset_median_mas"] < 12.0
    depth = metrics["coadds"][objects["reference_band"]]["depth_measured"]
    bins = [b for b in objects["completeness_purity"] if b["mag_hi"] <= depth - 1.0]
    n_true = sum(b["n_true"] for b in bins)
    found = sum(b["completeness"] * b["n_true"] for b in bins if b["n_true"])
    n_obj = sum(b["n_objects"] for b in bins)
    real = sum(b["purity"] * b["n_objects"] for b in bins if b["n_objects"])
    assert n_true > 20 and found / n_true >= 0.9  # blends of the crowded field are the misses
    # the requirement (object_purity): with ~35 Objects that bright, one unmatched in
    # this field at 20x Run 1's density is 3%
    assert real / n_obj >= 0.95


def test_forced_photometry_of_stars_against_the_truth(tiny_static):
    butler = tiny_static.butler
    objects, truth = butler.get("deepCoadd_ref", patch=0), Truth.read(butler)
    visits = butler.get("visitTable")
    everything = forced_light_curves(butler, visits)
    rows = star_light_curves(objects, everything, truth)
    # reading only the stars' rows (what a long run must do) gives the same rows
    stars = star_object_ids(objects, truth)
    only_stars = forced_light_curves(butler, visits, object_ids=stars)
    assert 0 < len(only_stars) < len(everything)
    assert set(np.unique(only_stars["objectId"])) <= set(stars.tolist())
    again = star_light_curves(objects, only_stars, truth)
    assert len(again) == len(rows)
    np.testing.assert_array_equal(again["psFlux"], rows["psFlux"])
    metrics = forced_star_metrics(rows)
    assert set(metrics["band"]) == {"g", "r", "i"}
    for m in metrics:
        # bright stars, median: within what the band's 4 zero points allow (each visit's
        # calibration error is common to its stars), and 0.5%
        errors = [
            butler.get("visitSummary", visit=int(v))["zero_point_total_err"]
            for v in visits["obsHistID"][visits["filter"] == m["band"]]
        ]
        allowed = 3 * np.sqrt(np.mean(np.square(errors)) / len(errors)) / 1.0857
        assert abs(m["bias"]) < max(0.005, allowed), (m["band"], allowed)
        # validate_drp's PA1 (S/N >= 50); faro's needs 50 stars of S/N >= 200, which so
        # small a sensor does not hold: not measured, with the count
        assert m["n_drp_stars"] >= 5 and np.isfinite(m["pa1_drp_mmag"])
        assert m["n_pa1_stars"] < 50 and np.isnan(m["pa1_mmag"])
    # noise-dominated pulls (S/N 30-100: zero-point errors of ~9 mmag are below the noise)
    steady = rows[~rows["is_variable"]]
    snr = steady["psFlux"] / steady["psFluxErr"]
    pull = (steady["psFlux"] - steady["true_flux"]) / steady["psFluxErr"]
    sel = (snr >= 30) & (snr < 100)
    assert sel.sum() > 50
    assert_unit_pull_width(pull[sel])
    assert abs(np.median(pull[sel])) < 0.2


def test_coadd_photometry_of_stars_against_the_truth_and_the_visits(tiny_static):
    """Objects' PSF fluxes on the coadds, fitted with the coadd PSF evaluated from its visits'
    and corrected to total with their aperture corrections."""
    butler = tiny_static.butler
    objects, truth = butler.get("deepCoadd_ref", patch=0), Truth.read(butler)
    rows = object_star_rows(objects, truth)
    assert set(rows["band"]) == {"g", "r", "i"}
    # one row per band for each star Object
    for band in "gri":
        ids = rows["objectId"][rows["band"] == band]
        assert len(ids) == len(set(ids.tolist())) > 20
    steady = rows[truth_comparable(rows)]
    snr = steady["true_flux"] / steady["psFluxErr"]
    pull = (steady["psFlux"] - steady["true_flux"]) / steady["psFluxErr"]
    sel = (snr >= 30) & (snr < 300)
    # enough for the width, whose tolerance follows the count; a bright star with a
    # neighbour of 5% of its light or more is in a blend and left out
    assert sel.sum() >= 25
    assert_unit_pull_width(pull[sel])
    # the medians carry the tiny run's crowding and its 4 visits' zero points (~9 mmag
    # each), which the visits' forced fluxes of the same stars share: the coadd must measure
    # what the visits measure, their inverse-variance mean
    light_curves = forced_light_curves(
        butler, butler.get("visitTable"), object_ids=np.unique(steady["objectId"])
    )
    for band in "gri":
        ratios = []
        for row in steady[sel & (steady["band"] == band)]:
            visits = light_curves[
                (light_curves["objectId"] == row["objectId"]) & (light_curves["band"] == band)
            ]
            ok = np.isfinite(visits["psFlux"]) & ~visits["flag_bad"]
            weight = 1.0 / np.asarray(visits["psFluxErr"][ok]) ** 2
            mean = np.sum(weight * np.asarray(visits["psFlux"][ok])) / np.sum(weight)
            ratios.append(row["psFlux"] / mean)
        assert len(ratios) >= 5 and abs(np.median(ratios) - 1.0) < 0.005, band
    # validate_static_sky records the pulls for validate_run
    record = butler.get("staticSkyMetrics")["object_photometry"]
    assert set(record) == {"g", "r", "i"}
    assert all(r["pulls_by_snr"] for r in record.values())


def test_forced_sources_cover_every_object_on_every_visit(tiny_static):
    butler = tiny_static.butler
    objects = butler.get("deepCoadd_ref", patch=0)
    forced = butler.get("forced_src", visit=1)
    assert list(forced["objectId"]) == list(objects["objectId"])
    on = ~np.asarray(forced["flag_off_image"])
    assert on.mean() > 0.6  # the patch is larger than the rotated sensor
    assert np.all(np.isnan(np.asarray(forced["psFlux"])[~on]))


def test_a_blends_brightest_member_with_faint_neighbours_counts_as_unblended():
    """Alone, a star with neighbours holding 3% of its flux in its reference band (the
    neighbours' other bands do not count), and not: two stars of one blend of comparable flux,
    or a star whose neighbours hold 6% together."""
    objects = Table(
        {
            "objectId": np.arange(1, 10),
            "parent": [0, 5, 5, 5, 7, 7, 9, 9, 9],
            "refBand": ["i", "i", "i", "r", "i", "i", "i", "i", "i"],
            "i_psFlux": [1e3, 1e5, 2e3, 1e3, 1e4, 8e3, 1e5, 3e3, 3e3],
            "r_psFlux": [1e3, 1e5, 1e5, 1e3, 1e4, 8e3, 1e2, 1e6, 1e6],
        }
    )
    np.testing.assert_array_equal(
        unblended_objects(objects), [True, True, False, False, False, False, False, False, False]
    )
    objects["i_psFlux"][7:9] = [2e3, 2e3]  # 4% together in the brightest member's band
    assert unblended_objects(objects)[6]
