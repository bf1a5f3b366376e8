"""Run-level validation: AM1, photometry against magnitude, DIAObject scoring, the metrics."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
from astropy.table import Table

from twinkles.sim.wcs import make_wcs
from twinkles.stats import robust_std
from twinkles.validation.dia import (
    SensorFootprint,
    dia_object_completeness_purity,
    expected_difference_flux,
    lensed_image_recovery,
    lensed_systems,
    light_curve_pulls,
    score_dia_sources,
    supernova_pulls,
    usable_forced_points,
)
from twinkles.validation.metrics import Metric, collect_metrics, read_metrics, write_metrics
from twinkles.validation.monitor import neighbours, psf_overlap, stamp_epochs
from twinkles.validation.static_sky import am1, photometry_vs_magnitude

MAS = 1.0 / 3.6e6  # degrees


def _star_grid(n_side: int, spacing_arcmin: float, n_visits: int, jitter_mas: float, seed: int):
    """Stars on a square grid near (ra, dec) = (53, -28) with Gaussian position jitter."""
    rng = np.random.default_rng(seed)
    offsets = (np.arange(n_side) - (n_side - 1) / 2) * spacing_arcmin / 60.0
    dx, dy = (a.ravel() for a in np.meshgrid(offsets, offsets))
    dec0 = -28.0
    ra = 53.0 + dx / np.cos(np.deg2rad(dec0))
    dec = dec0 + dy
    jitter = jitter_mas * MAS
    ra_v = ra[:, None] + rng.normal(0, jitter, (len(ra), n_visits)) / np.cos(np.deg2rad(dec0))
    dec_v = dec[:, None] + rng.normal(0, jitter, (len(ra), n_visits))
    return ra_v, dec_v


def test_am1_recovers_the_pair_separation_scatter():
    # each star jitters by sigma per coordinate: a pair's separation by sqrt(2) sigma
    ra, dec = _star_grid(n_side=9, spacing_arcmin=1.0, n_visits=40, jitter_mas=10.0, seed=1)
    value, pairs = am1(ra, dec)
    assert pairs > 100
    # the RMS over 40 visits of a sqrt(2) sigma Gaussian: scatter ~ 1/sqrt(80) of it
    assert value == pytest.approx(math.sqrt(2) * 10.0 * math.sqrt(39 / 40), rel=0.05)


def test_am1_ignores_missing_measurements_and_needs_pairs_in_the_annulus():
    ra, dec = _star_grid(n_side=9, spacing_arcmin=1.0, n_visits=20, jitter_mas=5.0, seed=2)
    ra[::3, ::2] = np.nan  # a third of the stars missed every other visit
    value, pairs = am1(ra, dec)
    assert np.isfinite(value) and value == pytest.approx(math.sqrt(2) * 5.0, rel=0.1)
    # a 2' field has no pair 4-6' apart: not measured rather than measured on the wrong scale
    small_ra, small_dec = _star_grid(
        n_side=5, spacing_arcmin=0.5, n_visits=10, jitter_mas=5, seed=3
    )
    value, pairs = am1(small_ra, small_dec)
    assert math.isnan(value) and pairs == 0
    # too few pairs: reported, not measured
    value, pairs = am1(ra, dec, min_pairs=10**6)
    assert math.isnan(value) and pairs > 100
    with pytest.raises(ValueError, match="annulus"):
        am1(ra, dec, annulus_arcmin=(6.0, 4.0))
    with pytest.raises(ValueError, match="stars x visits"):
        am1(ra[:, 0], dec[:, 0])


def test_photometry_vs_magnitude_recovers_bias_and_scatter():
    rng = np.random.default_rng(4)
    n = 4000
    true_mag = rng.uniform(18.0, 22.0, n)
    true = 10 ** (-0.4 * (true_mag - 31.4))
    err = 0.01 * true  # 10.9 mmag errors
    flux = true * 0.99 + rng.normal(0, 1, n) * err  # 1% too faint: +10.9 mmag
    rows = Table(
        {
            "psFlux": flux,
            "psFluxErr": err,
            "true_flux": true,
            "band": np.full(n, "r"),
            "is_variable": np.zeros(n, dtype=bool),
        }
    )
    table = photometry_vs_magnitude(rows, bin_mag=1.0)
    assert len(table) == 4 and set(table["band"]) == {"r"}
    assert np.all(np.abs(table["bias_mmag"] - 1085.7 * 0.01) < 2.0)
    assert np.all(np.abs(table["scatter_mmag"] - table["expected_mmag"]) < 1.5)
    # the errors describe a scatter of 0.99 (the flux is 1% low): pulls std ~0.99, bias apart
    assert np.all(np.abs(table["pull_std"] - 0.99) < 0.06)


def test_dia_object_completeness_and_purity():
    peaks = Table(
        {
            "truth_id": [1, 2, 3],
            "ra": [10.0, 10.001, 10.002],
            "dec": [0.0, 0.0, 0.0],
            "peak_mag": [20.2, 21.2, 22.2],
        }
    )
    dia_objects = Table(
        {
            "diaObjectId": [11, 12, 13],
            "ra": [10.0 + 0.3 / 3600, 10.001, 10.01],  # near 1, near 2, near nothing
            "decl": [0.0, 0.0, 0.0],
        }
    )
    sources = Table({"diaObjectId": [11, 11, 12, 13, 99], "psFlux": [-1e4, 5e3, 3e3, 6e3, 1e9]})
    table, found, real = dia_object_completeness_purity(dia_objects, sources, peaks, 1.0, 1.0)
    assert found.tolist() == [True, True, False]
    assert real.tolist() == [True, True, False]
    by_bin = {(r["mag_lo"], r["mag_hi"]): r for r in table}
    assert sum(table["n_true"]) == 3 and sum(table["n_dia_objects"]) == 3
    # brightest sources: 11 at |-1e4| nJy (21.4 mag) and 13 at 6e3 (21.95) share a bin
    assert by_bin[(21.0, 22.0)]["n_dia_objects"] == 2
    assert by_bin[(21.0, 22.0)]["purity"] == 0.5


def test_a_template_visit_counts_only_where_its_sensor_lay():
    """A variable at (53.0, -28.0) whose flux is 100 nJy times the MJD's last digit: of the
    template's two visits only the second sensor holds it, so the template has its flux then,
    whatever the weights; without the footprints, the weighted mean of both."""
    truth = SimpleNamespace(
        flux=lambda ids, band, mjd: np.full(len(ids), 100.0 * (float(mjd) % 10)),
        positions=lambda ids: (np.full(len(ids), 53.0), np.full(len(ids), -28.0)),
    )
    elsewhere = make_wcs(53.0, -27.0, 0.0, 0.2, 1024, 1024)  # 1 degree north
    here = make_wcs(53.0, -28.0, 30.0, 0.2, 1024, 1024)
    template = {"mjds": [60001.0, 60003.0], "weights": [3.0, 1.0]}
    ids = np.array([7])
    assert expected_difference_flux(truth, ids, "r", 60005.0, template)[0] == pytest.approx(
        500.0 - (3 * 100.0 + 300.0) / 4
    )
    template["footprints"] = [
        SensorFootprint(elsewhere, (1024, 1024)),
        SensorFootprint(here, (1024, 1024)),
    ]
    assert expected_difference_flux(truth, ids, "r", 60005.0, template)[0] == pytest.approx(200.0)
    x, y = here.all_world2pix([53.0], [-28.0], 0)
    saturated = SensorFootprint(here, (1024, 1024), np.array([[x[0] + 10.0, y[0] - 3.0]]))
    assert saturated.saturated_within(np.array([53.0]), np.array([-28.0]), 12.0)[0]
    assert not saturated.saturated_within(np.array([53.0]), np.array([-28.0]), 9.0)[0]


def test_a_blends_diasource_recovers_the_transients_it_holds():
    """Three images of a lensed quasar 6 px (1.2") apart, under one DIASource on the
    brightest; a supernova 100 px away with none; a faint image below the S/N cut."""
    scale = 0.2 / 3600.0  # degrees per pixel
    x = np.array([500.0, 506.0, 512.0, 600.0, 519.0])
    y = np.array([500.0, 500.0, 500.0, 500.0, 500.0])
    visible = Table(
        {
            "truth_id": [1, 2, 3, 4, 5],
            "ra": 53.0 + x * scale,
            "dec": np.full(5, 0.0),
            "x": x,
            "y": y,
            "expected_snr": [40.0, 20.0, 12.0, 30.0, 3.0],
        }
    )
    dia_sources = Table({"ra": [53.0 + 500.1 * scale, 53.0 + 800 * scale], "decl": [0.0, 0.0]})
    alone = score_dia_sources(dia_sources, visible)
    assert (alone["n_expected"], alone["n_recovered"], alone["n_blended"]) == (4, 1, 0)
    assert alone["missed"] == [2, 3, 4]
    assert alone["n_spurious"] == 1
    blended = score_dia_sources(dia_sources, visible, blend_px=8.0)
    assert (blended["n_recovered"], blended["n_blended"]) == (3, 2)
    assert blended["missed"] == [4]
    np.testing.assert_array_equal(blended["found"], alone["found"])
    # the chain 500 - 506 - 512 - (519, too faint to count) is one blend
    np.testing.assert_array_equal(blended["found_in_blend"], [True, True, True, False, True])


def test_lensed_image_recovery():

    arcsec = 1.0 / 3600
    images = Table(
        {
            "id": [1, 2, 3, 4],
            "system_id": [10, 10, 20, 20],
            "ra": [5.0, 5.0 + 2.0 * arcsec, 6.0, 6.0 + 0.8 * arcsec],
            "dec": [1.0, 1.0, 1.0, 1.0],
            "dx_arcsec": [0.0, 2.0, 0.0, 0.8],
            "dy_arcsec": [0.0, 0.0, 0.0, 0.0],
        }
    )
    # system 10 resolved, both images found, each its own DIAObject; system 20 (0.8") is not
    # resolved at 0.7" FWHM and its images share one DIAObject
    dia_objects = Table(
        {
            "diaObjectId": [100, 101, 200],
            "ra": [5.0, 5.0 + 2.0 * arcsec, 6.0 + 0.4 * arcsec],
            "decl": [1.0, 1.0, 1.0],
        }
    )
    peaks = Table({"truth_id": [1, 2, 3, 4], "peak_snr": [30.0, 4.0, 50.0, 50.0]})
    out = lensed_image_recovery(SimpleNamespace(lensed_images=images), dia_objects, peaks, 0.7)
    assert out["resolved"].tolist() == [True, True, False, False]
    assert out["diaObjectId"].tolist() == [100, 101, 200, 200]
    assert out["separate"].tolist() == [True, True, False, False]
    assert out["peak_snr"].tolist() == [30.0, 4.0, 50.0, 50.0]


def _forced_points(rng, kind, truth_ids, band, n_per, shift=0.0):
    """Forced points of light curves whose pulls are N(shift, 1)."""
    ids = np.repeat(truth_ids, n_per)
    expected = rng.uniform(100, 1000, len(ids))
    err = np.full(len(ids), 50.0)
    return Table(
        {
            "truth_id": ids,
            "kind": [kind] * len(ids),
            "band": [band] * len(ids),
            "psFlux": expected + err * (shift + rng.normal(size=len(ids))),
            "psFluxErr": err,
            "expected_flux": expected,
            "in_template": np.zeros(len(ids), bool),
            "flag_off_image": np.zeros(len(ids), bool),
            "flag_bad": np.zeros(len(ids), bool),
            "flag_edge": np.zeros(len(ids), bool),
        }
    )


def test_supernova_pulls_by_band_and_host():
    from astropy.table import vstack

    rng = np.random.default_rng(5)
    # supernovae 1-20 on faint hosts, 21-40 on bright ones whose subtraction leaves +1 sigma
    faint = _forced_points(rng, "supernova", np.arange(1, 21), "r", 30)
    bright = _forced_points(rng, "supernova", np.arange(21, 41), "r", 30, shift=1.0)
    quasars = _forced_points(rng, "lensed_image", [90, 91], "r", 30, shift=5.0)
    points = vstack([faint, bright, quasars])
    points["in_template"][:5] = True  # not independent of the template: left out
    usable = usable_forced_points(points)
    assert len(usable) == len(points) - 5
    host_mag = {t: (23.0 if t <= 20 else 20.0) for t in range(1, 41)}
    (row,) = supernova_pulls(usable, host_mag, bright_host_mag=21.5)
    assert row["band"] == "r" and row["n"] == 1195  # the quasars are not supernovae
    assert row["bright_host_n"] == 600
    assert row["bright_host_pull_median"] == pytest.approx(
        1.0, abs=4 * row["bright_host_pull_median_err"]
    )
    assert 0.3 < row["pull_median"] < 0.7  # half of them shifted by one sigma
    assert len(supernova_pulls(usable[:0], host_mag)) == 0


def test_lensed_systems_from_the_recovery_of_their_images():
    rng = np.random.default_rng(6)
    recovery = Table(
        {
            "truth_id": [1, 2, 3, 4, 5],
            "system_id": [10, 10, 20, 20, 30],
            "resolved": [True, True, True, True, False],
            "separate": [True, True, True, False, False],
        }
    )
    points = _forced_points(rng, "lensed_image", [1, 2, 3], "i", 40)
    table = lensed_systems(recovery, points)
    assert table["system"].tolist() == [10, 20]  # a single image is not a system
    assert table["n_resolved_separate"].tolist() == [2, 1]
    assert table["n_points"].tolist() == [80, 40]
    assert abs(table["pull_median"][0]) < 0.3 and 0.8 < table["pull_std"][0] < 1.2


def test_monitor_helpers():
    variables = Table({"truth_id": [1, 2, 3], "ra": [5.0, 5.0 + 0.5 / 3600, 6.0], "dec": [1.0] * 3})
    assert neighbours(variables, 5.0, 1.0, 1.0).tolist() == [1, 2]
    ids, sep = neighbours(variables, 5.0, 1.0, 1.0, with_separation=True)
    assert ids.tolist() == [1, 2]
    np.testing.assert_allclose(sep, [0.0, 0.5 * np.cos(np.radians(1.0))], atol=1e-6)
    # a PSF fit's share of a neighbour's light: the PSF's overlap with itself shifted,
    # summed on a fine grid (a Gaussian of FWHM 0.7")
    sigma = 0.7 / 2.3548
    u = np.arange(-4.0, 4.0, 0.01)
    xx, yy = np.meshgrid(u, u)
    psf = np.exp(-(xx**2 + yy**2) / (2 * sigma**2))
    for d in (0.0, 0.3, 0.6):
        shifted = np.exp(-((xx - d) ** 2 + yy**2) / (2 * sigma**2))
        fraction = np.sum(psf * shifted) / np.sum(psf**2)
        assert psf_overlap(np.array([d]), 0.7)[0] == pytest.approx(fraction, rel=1e-3)
    mjd = np.array([0.0, 10, 20, 30, 40])
    flux = np.array([0.0, 5, 100, 20, 1])
    assert stamp_epochs(mjd, flux, np.array([7, 8, 9, 10, 11])) == [7, 9, 11]
    assert stamp_epochs(mjd, np.full(5, np.nan), np.arange(5)) == []


def test_pull_errors_count_light_curves_not_points():
    # 40 light curves of 10 points; each shares an offset (a template's noise) of variance 0.5
    rng = np.random.default_rng(3)

    def light_curves():
        offsets = rng.normal(0, np.sqrt(0.5), 40)
        pulls = (offsets[:, None] + rng.normal(0, np.sqrt(0.5), (40, 10))).ravel()
        return Table(
            {
                "psFlux": pulls,
                "psFluxErr": np.ones(400),
                "expected_flux": np.zeros(400),
                "truth_id": np.repeat(np.arange(40), 10),
            }
        )

    samples = [light_curves()["psFlux"] for _ in range(400)]
    scatter = np.std([np.median(s) for s in samples])  # ~0.125
    std_scatter = np.std([robust_std(s) for s in samples])  # ~0.07
    stats = light_curve_pulls(light_curves(), n_boot=500)
    assert stats["n"] == 400 and stats["pull_std"] == pytest.approx(1.0, abs=0.15)
    # the bootstrap over light curves follows the real scatter of the median (0.09-0.18 over
    # seeds) and of the robust std (~0.08); over points the median's would be half of it
    assert 0.6 * scatter < stats["pull_median_err"] < 1.6 * scatter
    assert 0.5 * std_scatter < stats["pull_std_err"] < 1.6 * std_scatter
    points_only = light_curve_pulls(light_curves()[["psFlux", "psFluxErr", "expected_flux"]])
    assert points_only["pull_median_err"] < 0.65 * scatter


def test_metric_verdicts():
    def metric(value, comparison, threshold):
        return Metric("m", value, "", comparison, threshold, "test", "test")

    assert metric(4.0, "<=", 5.0).status == "pass"
    assert metric(6.0, "<=", 5.0).status == "fail"
    assert metric(1.09, "within", 0.1).status == "pass"
    assert metric(0.85, "within", 0.1).status == "fail"
    assert metric(-0.2, "abs<=", 0.1).status == "fail"
    assert metric(0.96, ">=", 0.95).status == "pass"
    assert metric(float("nan"), "<=", 5.0).status == "not measured"
    assert metric(3.0, None, None).status == "info"
    # a value with a standard error fails only beyond the threshold by two of them
    uncertain = Metric("m", 0.25, "sigma", "abs<=", 0.1, "test", "test", uncertainty=0.08)
    assert uncertain.status == "pass" and "0.08" in uncertain.requirement
    assert Metric("m", -0.27, "", "abs<=", 0.1, "t", "t", uncertainty=0.08).status == "fail"
    assert Metric("m", 0.25, "", "abs<=", 0.1, "t", "t", uncertainty=float("nan")).status == "fail"
    assert uncertain.to_dict()["uncertainty"] == 0.08
    with pytest.raises(ValueError, match="comparison and a threshold"):
        metric(1.0, "<=", None)
    with pytest.raises(ValueError, match="comparison must be"):
        metric(1.0, "<", 1.0)


def test_collect_and_write_metrics(tmp_path):
    static_sky = {
        "forced": {
            "r": {
                "pa1_mmag": 9.0,
                "pf1_percent": 12.0,
                "n_pa1_stars": 60,
                "pa1_noise_mmag": 8.0,
                "pa1_drp_mmag": 14.0,
                "pa1_drp_noise_mmag": 13.5,
                "floor_mmag": 4.0,
                "pull_std": 1.2,
                "pull_std_worst": 1.15,
                "pull_std_worst_err": 0.04,
                "pull_std_worst_bin": [300.0, None],
                "pull_median_worst": -0.15,
                "pull_median_worst_err": 0.05,
                "pull_median_worst_bin": [5.0, 30.0],
                "ramp_linear_mmag": 1.5,
                "ramp_linear_err_mmag": 0.4,
                "ramp_radial_mmag": 6.0,
                "ramp_radial_err_mmag": 1.0,
                "bias": 0.001,
            },
            "g": {"pa1_mmag": None, "n_pa1_stars": 17, "pa1_drp_mmag": 7.0},
        },
        "coadds": {"r": {"noise_ratio": 1.02}},
        "object_photometry": {
            "r": {
                "pull_std_worst": 1.6,
                "pull_std_worst_err": 0.14,
                "pull_std_worst_bin": [300.0, None],
                "pull_median_worst": -0.3,
                "pull_median_worst_err": 0.2,
                "pull_median_worst_bin": [300.0, None],
            },
            "g": {"pulls_by_snr": []},
        },
        "zero_points": {"n_visits": 60, "rms_mmag": 3.2, "pull_std": 1.35},
        "objects": {
            "completeness_1mag_above_depth": 0.97,
            "purity_1mag_above_depth": 0.99,
            "point_source_offset_median_mas": 3.0,
        },
    }
    dia = {
        "noise_ratio_min": 0.95,
        "noise_ratio_max": 1.05,
        "recovery": 0.9,
        "spurious_per_visit_mean": 2.0,
        "dia_sources_per_visit_mean": 3.0,
        "sn_pulls": [
            {
                "band": "r",
                "pull_std": 1.1,
                "pull_median": 0.05,
                "bright_host_mag": 21.5,
                "bright_host_pull_std": 1.3,
                "bright_host_pull_median": -0.05,
            }
        ],
    }
    metrics = collect_metrics(static_sky, dia, float("nan"), 0, 0.98, 0.8, 3, 2, 1)
    by_name = {m.name: m for m in metrics}
    # PA1 of noisy stars fails the SRD value; the floor beyond their errors passes it
    assert by_name["PA1_r"].status == "fail"
    assert by_name["expected_PA1_r"].status == "info"
    assert by_name["photometric_floor_r"].status == "pass"
    assert by_name["forced_pull_std_r"].status == "fail"
    assert by_name["forced_bias_r"].value == pytest.approx(0.1)  # percent
    assert by_name["PF1_r"].status == "fail"  # 12% beyond 15 mmag, against 10%
    assert by_name["PA1_validate_drp_r"].status == "info"
    assert "13.5 mmag" in by_name["PA1_validate_drp_r"].description
    # too few bright stars for faro: not measured, saying how many there were
    assert by_name["PA1_g"].verdict == (
        "not measured: 17 stars of median S/N >= 200 in more than two visits (faro needs 50)"
    )
    # pulls by S/N: the worst bins, named, held with their errors
    assert by_name["forced_pull_std_by_snr_r"].status == "pass"  # 0.15 - 2 x 0.04 <= 0.1
    assert "S/N > 300" in by_name["forced_pull_std_by_snr_r"].description
    assert by_name["forced_pull_median_by_snr_r"].status == "pass"  # 0.15 - 0.1 <= 0.1
    assert "S/N 5-30" in by_name["forced_pull_median_by_snr_r"].description
    # the coadd's: pulls spread 1.6 +- 0.14 fail, a median of -0.3 +- 0.2 passes
    assert by_name["object_pull_std_by_snr_r"].status == "fail"
    assert "Object (coadd)" in by_name["object_pull_std_by_snr_r"].description
    assert by_name["object_pull_median_by_snr_r"].status == "pass"
    assert "S/N > 300" in by_name["object_pull_median_by_snr_r"].description
    # too few stars in every bin: not measured, saying why
    assert by_name["object_pull_std_by_snr_g"].verdict == (
        "not measured: no S/N bin holds 20 measurements"
    )
    # ramps: a linear one within 2 errors of 1 mmag passes, a radial one of 6 +- 1 fails
    assert by_name["flux_ramp_linear_r"].status == "pass"
    assert by_name["flux_ramp_radial_r"].status == "fail"
    # zero points: within 5 mmag of the truth, but errors that understate the scatter fail
    assert by_name["zero_point_offset_rms"].status == "pass"
    assert by_name["zero_point_pull_std"].status == "fail"
    assert by_name["AM1"].status == "not measured"
    assert by_name["transient_recovery"].status == "fail"
    assert by_name["lensed_image_recovery"].value == 0.5
    # SNe on bright hosts are held to the same bounds as all SNe
    assert by_name["sn_pull_std_r"].status == "pass"
    assert by_name["sn_bright_host_pull_std_r"].status == "fail"
    assert by_name["sn_bright_host_pull_median_r"].status == "pass"
    assert "r < 21.5" in by_name["sn_bright_host_pull_std_r"].description
    path = tmp_path / "validation" / "metrics.json"
    written = write_metrics(path, "test", metrics)
    # AM1, and g's PA1, PF1, expected PA1 and its metrics that need the truth's records
    assert written["summary"]["not measured"] == sum(m.status == "not measured" for m in metrics)
    assert by_name["AM1"].status == "not measured"
    assert sum(written["summary"].values()) == len(metrics)
    data = read_metrics(path)
    assert data["by_name"]["AM1"]["value"] is None  # NaN is stored as null: valid JSON
    json.loads(path.read_text())
    with pytest.raises(ValueError, match="duplicate metric names: PA1_r"):
        write_metrics(path, "test", [*metrics, by_name["PA1_r"]])
    with pytest.raises(FileNotFoundError, match="validate_run"):
        read_metrics(tmp_path / "nowhere.json")


def test_metrics_without_a_truth_say_why_they_are_not_measured():
    """An external run without a truth catalog: what needs no truth is measured, the rest is
    'not measured: no truth', the SN pulls of each band included."""
    static_sky = {
        "truth": False,
        "forced": {
            b: {"pa1_mmag": 4.0, "pa1_noise_mmag": 3.0, "floor_mmag": 2.0, "pull_std": None}
            for b in ("g", "r")
        },
        "coadds": {"r": {"noise_ratio": 1.02}},
        "objects": {"completeness_1mag_above_depth": None},
        "object_photometry": {"g": {}, "r": {}},
    }
    dia = {"truth": False, "noise_ratio_min": 0.97, "noise_ratio_max": 1.04, "sn_pulls": []}
    dia["dia_sources_per_visit_mean"] = 12.5
    metrics = collect_metrics(
        static_sky,
        dia,
        float("nan"),
        3,
        float("nan"),
        float("nan"),
        truth=False,
        lensed_in_truth=False,
    )
    by_name = {m.name: m for m in metrics}
    for name in (
        "PA1_r",
        "photometric_floor_g",
        "coadd_noise_ratio_r",
        "difference_noise_ratio_min",
    ):
        assert by_name[name].status == "pass", name
    assert by_name["dia_sources_per_visit"].status == "info"
    assert by_name["zero_point_pull_std"].verdict == (
        "not measured: no simulated zero points (external images)"
    )
    for name in (
        "forced_pull_std_r",
        "object_completeness",
        "object_pull_std_by_snr_r",
        "object_pull_median_by_snr_g",
        "transient_recovery",
        "spurious_dia_sources_per_visit",
        "dia_object_completeness",
        "sn_pull_std_g",
        "sn_pull_median_r",
        "lensed_image_recovery",
    ):
        assert by_name[name].verdict == "not measured: no truth", name
    assert by_name["AM1"].verdict.startswith("not measured: 3 star pairs")
    assert by_name["sn_pull_std_r"].to_dict()["verdict"] == "not measured: no truth"
