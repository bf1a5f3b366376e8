"""The OpSim stand-in: Run-1 filter mix, seeing, seasons, moon and depth."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from twinkles.config import RUN1_FILTER_COUNTS, ConfigError, load_run_config
from twinkles.sim.bands import LSST_BANDS
from twinkles.sim.cadence import SITE_LONGITUDE, altitude, fwhm_eff, gmst_deg, make_visit_table
from twinkles.sim.sky import random_stream
from twinkles.units import NEFF_PER_FWHM2

from conftest import RUNS

OPSIM_FIELDS = [
    "obsHistID",
    "expMJD",
    "night",
    "filter",
    "FWHMeff",
    "FWHMgeom",
    "airmass",
    "filtSkyBrightness",
    "fiveSigmaDepth",
    "rotSkyPos",
    "fieldRA",
    "fieldDec",
    "visitExpTime",
    "year",
]


@pytest.fixture(scope="module")
def run1_visits():
    c = load_run_config(RUNS / "run1.yaml")
    return c, make_visit_table(
        c.cadence, c.field, c.sensor, c.render, random_stream(c.seed, "cadence")
    )


def test_opsim_fields_present(run1_visits):
    _, visits = run1_visits
    for name in OPSIM_FIELDS:
        assert name in visits.colnames


def test_run1_filter_mix_and_uniqueness(run1_visits):
    _, visits = run1_visits
    counts = {f: int(np.sum(visits["filter"] == f)) for f in "ugrizy"}
    assert counts == RUN1_FILTER_COUNTS
    assert len(np.unique(visits["obsHistID"])) == len(visits) == 1227
    pairs = {(int(n), str(f)) for n, f in zip(visits["night"], visits["filter"], strict=True)}
    assert len(pairs) == len(visits)  # at most one visit per night and filter
    assert np.all(np.diff(visits["expMJD"]) > 0)
    assert np.array_equal(visits["year"], visits["night"] // 365)


def test_seeing_distribution(run1_visits):
    c, visits = run1_visits
    fwhm = np.asarray(visits["FWHMeff"])
    assert fwhm.min() >= c.cadence.fwhm_eff_min and fwhm.max() <= c.cadence.fwhm_eff_max
    assert 0.83 < np.median(fwhm) < 0.91  # Run 1: median 0.87"
    # FWHMgeom is the half-maximum width of the Moffat: ~15% below FWHMeff (OpSim: 0.822 x + 0.052)
    ratio = np.asarray(visits["FWHMgeom"] / visits["FWHMeff"])
    assert np.all((ratio > 0.8) & (ratio < 0.9))


def test_seeing_grows_with_airmass(run1_visits):
    _, visits = run1_visits
    # both terms of FWHMeff scale as X^0.6 (SMTN-002), so FWHMeff / FWHMeff(X=1) = X^0.6
    at_zenith = fwhm_eff(visits["seeing500"], visits["filter"], np.ones(len(visits)))
    np.testing.assert_allclose(
        np.asarray(visits["FWHMeff"]) / at_zenith, np.asarray(visits["airmass"]) ** 0.6, rtol=1e-12
    )
    assert np.ptp(visits["airmass"]) > 0.05


def test_observed_at_minimum_airmass_within_seasons(run1_visits):
    c, visits = run1_visits
    assert np.all(visits["airmass"] <= c.cadence.max_airmass + 1e-9)
    assert np.median(visits["airmass"]) < 1.1
    # the field transits near midnight in November: visits must avoid May-July
    lst = gmst_deg(np.asarray(visits["expMJD"])) + SITE_LONGITUDE
    alt = altitude(lst - c.field.ra, c.field.dec)
    assert np.all(alt > 40.0)
    for year in range(c.cadence.n_years):
        days = np.sort(np.asarray(visits["night"])[np.asarray(visits["year"]) == year])
        assert len(days) > 50
        gaps = np.diff(np.concatenate([days, [days[0] + 365]]))
        assert gaps.max() > 120  # the field is behind the Sun for months


def test_moon_brightens_the_sky_most_in_the_blue(run1_visits):
    _, visits = run1_visits
    moon = np.asarray(visits["moonPhase"]) > 80
    moon &= np.asarray(visits["moonAlt"]) > 30
    dark = (np.asarray(visits["moonPhase"]) < 10) | (np.asarray(visits["moonAlt"]) < -10)
    brightening = {}
    for band in "grz":
        sel = np.asarray(visits["filter"]) == band
        brightening[band] = np.median(visits["filtSkyBrightness"][sel & dark]) - np.median(
            visits["filtSkyBrightness"][sel & moon]
        )
    assert brightening["g"] > brightening["r"] > brightening["z"] > 0.2
    # u is kept away from bright moon, as LSST swaps the filter out
    u = np.asarray(visits["filter"]) == "u"
    assert np.median(np.asarray(visits["moonPhase"])[u]) < 30


def test_five_sigma_depth_is_consistent_with_sky_and_seeing(run1_visits):
    c, visits = run1_visits
    ps = c.sensor.pixel_scale
    for row in visits[:40]:
        neff = NEFF_PER_FWHM2 * (row["FWHMeff"] / ps) ** 2
        sky = row["skyCounts"]
        flux5 = brentq(lambda f, b=sky * neff: f / np.sqrt(f + b) - 5.0, 1.0, 1e7)
        assert row["zeroPoint"] - 2.5 * np.log10(flux5) == pytest.approx(
            row["fiveSigmaDepth"], abs=1e-6
        )
        # and the sky counts follow from filtSkyBrightness
        zp1 = LSST_BANDS[row["filter"]].zero_point_1s
        expect = 10 ** (-0.4 * (row["filtSkyBrightness"] - zp1)) * 30.0 * ps**2
        assert sky == pytest.approx(expect, rel=1e-9)


def test_median_depths_are_lsst_like(run1_visits):
    _, visits = run1_visits
    # SMTN-002 (current LSST throughputs) 30-s dark-sky depths. Run 1's 2016 OpSim was
    # 0.2-0.9 mag shallower (older throughputs, 2 x 15 s read noise); eimages have no read noise.
    smtn002 = {"g": 24.97, "r": 24.52, "i": 24.13, "z": 23.56, "y": 22.55}
    median = {b: np.median(visits["fiveSigmaDepth"][visits["filter"] == b]) for b in "ugrizy"}
    for band, depth in smtn002.items():
        # moonlight makes the median a little shallower than the dark-sky value
        assert -0.6 < median[band] - depth < 0.2, (band, median[band])
    # u sky is ~30 e-/pixel in 30 s, below the 2 x 9^2 e- of read-noise variance SMTN-002's
    # 23.7 includes, so an eimage without read noise is ~0.5 mag deeper
    assert 0.2 < median["u"] - 23.7 < 0.9


def test_same_seed_same_cadence():
    c = load_run_config(RUNS / "tiny.yaml")
    a = make_visit_table(c.cadence, c.field, c.sensor, c.render, random_stream(c.seed, "cadence"))
    b = make_visit_table(c.cadence, c.field, c.sensor, c.render, random_stream(c.seed, "cadence"))
    assert np.array_equal(np.asarray(a["expMJD"]), np.asarray(b["expMJD"]))


def test_too_many_visits_is_refused_naming_the_key():
    c = load_run_config(RUNS / "tiny.yaml")
    cadence = c.cadence.model_copy(update={"n_visits": 2000})
    with pytest.raises(ConfigError, match=r"cadence\.n_visits: 2000 visits"):
        make_visit_table(cadence, c.field, c.sensor, c.render, random_stream(1, "cadence"))
