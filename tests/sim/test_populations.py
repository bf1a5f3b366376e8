"""Stars, galaxies, the truth API and the reference catalog of a simulated sky."""

from __future__ import annotations

import numpy as np
import pytest

from twinkles.config import load_run_config
from twinkles.sim.ids import ObjectKind, kind_of
from twinkles.sim.sky import field_radius_deg, make_sky
from twinkles.sim.stars import variable_delta_mag
from twinkles.units import mag_to_njy, njy_to_mag

from conftest import RUNS


@pytest.fixture(scope="module")
def demo_sky():
    return load_run_config(RUNS / "demo.yaml"), make_sky(load_run_config(RUNS / "demo.yaml"))


def test_counts_follow_the_densities(demo_sky):
    config, sky = demo_sky
    area = np.pi * field_radius_deg(config) ** 2
    t = config.truth
    r = np.asarray(sky.truth.stars["mag_r"])
    # the demo adds bright stars, uniform in r: counted apart (they share the id sequence)
    n_boost = t.bright_star_density * area
    assert t.bright_star_density > 0
    in_boost = (r >= t.bright_star_mag_min) & (r <= t.bright_star_mag_max)
    expected_in_boost = n_boost + t.star_density * area * _power_law_fraction(
        t.star_mag_min,
        t.star_mag_max,
        t.star_count_slope,
        t.bright_star_mag_min,
        t.bright_star_mag_max,
    )
    assert abs(in_boost.sum() - expected_in_boost) < 4 * np.sqrt(expected_in_boost)
    assert len(set(sky.truth.stars["id"].tolist())) == len(sky.truth.stars)
    for count, density in [
        (len(r) - n_boost, t.star_density),
        ((~sky.truth.galaxies["is_lens"]).sum(), t.galaxy_density),
    ]:
        expected = density * area
        assert abs(count - expected) < 4 * np.sqrt(expected)


def _power_law_fraction(lo: float, hi: float, slope: float, a: float, b: float) -> float:
    """Fraction of ``dN/dm ~ 10^(slope m)`` on [lo, hi] that lies in [a, b]."""

    def cumulative(m: float) -> float:
        return 10.0 ** (slope * m)

    return (cumulative(b) - cumulative(a)) / (cumulative(hi) - cumulative(lo))


def test_star_counts_slope_and_colours(demo_sky):
    config, sky = demo_sky
    r = np.asarray(sky.truth.stars["mag_r"])
    assert r.min() >= 16.0 and r.max() <= 26.0  # Twinkles left out r < 16
    # the counts' slope, outside the demo's bright-star boost
    t = config.truth
    r = r[(r < t.bright_star_mag_min) | (r > t.bright_star_mag_max)]
    hist, _ = np.histogram(r, bins=[21, 23.5, 26])
    # dN/dm ~ 10^(0.15 m): 21-23.5 and 23.5-26 differ by 10^(0.15 x 2.5)
    assert hist[1] / hist[0] == pytest.approx(10**0.375, rel=0.15)
    g_r = np.asarray(sky.truth.stars["mag_g"] - sky.truth.stars["mag_r"])
    u_g = np.asarray(sky.truth.stars["mag_u"] - sky.truth.stars["mag_g"])
    assert np.all((g_r >= 0.2 - 1e-9) & (g_r <= 1.5 + 1e-9))
    assert np.corrcoef(g_r, u_g)[0, 1] > 0.8  # the stellar locus


def test_variable_stars(demo_sky):
    config, sky = demo_sky
    stars = sky.truth.stars
    frac = np.mean(stars["is_variable"])
    assert frac == pytest.approx(config.truth.variable_star_fraction, abs=0.03)
    var = stars[stars["is_variable"]][:20]
    t = 60000.0 + np.linspace(0, 30, 301)
    dm = np.array([variable_delta_mag(var, "r", tt) for tt in t])
    np.testing.assert_allclose(np.ptp(dm, axis=0), var["var_amplitude"], rtol=0.05)
    const = stars[~stars["is_variable"]][:5]
    np.testing.assert_allclose(
        sky.truth.flux(const["id"], "r", 60000.0), mag_to_njy(const["mag_r"])
    )


def test_galaxies_have_bulge_disk_and_colours(demo_sky):
    _, sky = demo_sky
    gals = sky.truth.galaxies
    assert np.all(gals["disk_q"] <= 1) and np.all(gals["disk_q"] >= 0.2)
    assert np.any(gals["bulge_to_total"] == 0) and np.any(gals["bulge_to_total"] > 0.5)
    total_r = njy_to_mag(sky.truth.flux(gals["id"], "r", 60000.0))
    np.testing.assert_allclose(total_r, gals["mag_r"], atol=1e-9)
    # bright galaxies are bigger than faint ones
    bright, faint = gals["mag_r"] < 21, gals["mag_r"] > 25
    assert np.median(gals["disk_hlr"][bright]) > 2 * np.median(gals["disk_hlr"][faint])


def test_supernovae_and_lensed_quasars_are_placed(demo_sky):
    config, sky = demo_sky
    t = sky.truth
    assert len(t.supernovae) == config.truth.n_supernovae
    assert np.all(np.isin(t.supernovae["host_id"], t.galaxies["id"]))
    assert len(t.lensed_systems) == config.truth.n_lensed_quasars
    assert set(np.asarray(t.lensed_systems["n_images"])) <= {2, 4}
    assert np.all(kind_of(t.lensed_images["id"]) == ObjectKind.LENSED_IMAGE)
    # every SN peaks within 20 days of a visit
    gap = np.min(
        np.abs(np.asarray(t.supernovae["t0"])[:, None] - np.asarray(sky.visits["expMJD"])[None]),
        axis=1,
    )
    assert gap.max() <= 20.0


def test_truth_api_mixes_kinds_and_refuses_unknown_ids(demo_sky):
    _, sky = demo_sky
    t = sky.truth
    ids = np.array(
        [t.stars["id"][0], t.galaxies["id"][0], t.supernovae["id"][0], t.lensed_images["id"][0]]
    )
    flux = t.flux(ids, "i", 61000.0)
    assert flux.shape == (4,) and np.all(np.isfinite(flux))
    ra, dec = t.positions(ids)
    assert (ra[0], dec[0]) == (t.stars["ra"][0], t.stars["dec"][0])
    with pytest.raises(KeyError, match="no object with id"):
        t.flux([10_000_000_000 + 10**8], "r", 6e4)


def test_reference_catalog(demo_sky):
    config, sky = demo_sky
    ref, stars = sky.refcat, sky.truth.stars
    stellar = ref[~ref["resolved"]]
    assert len(stellar) == np.sum(stars["mag_r"] < config.refcat.mag_limit)
    truth_rows = {int(i): k for k, i in enumerate(stars["id"])}
    rows = [truth_rows[int(i)] for i in stellar["truth_id"]]
    dra = (stellar["ra"] - stars["ra"][rows]) * np.cos(np.deg2rad(stars["dec"][rows])) * 3.6e6
    ddec = (stellar["dec"] - stars["dec"][rows]) * 3.6e6
    pulls = np.concatenate([dra / stellar["coord_err"], ddec / stellar["coord_err"]])
    assert np.std(pulls) == pytest.approx(1.0, abs=0.15)  # errors are what the catalog says
    dmag = (stellar["r_mag"] - stars["mag_r"][rows]) / stellar["r_magErr"]
    assert np.std(dmag) == pytest.approx(1.0, abs=0.15)
    assert np.array_equal(np.asarray(stellar["variable"]), np.asarray(stars["is_variable"][rows]))
    assert np.any(ref["resolved"])  # bright galaxies, flagged


def test_changing_the_sn_count_leaves_the_stars_alone():
    config = load_run_config(RUNS / "tiny.yaml")
    a = make_sky(config)
    b = make_sky(
        config.model_copy(update={"truth": config.truth.model_copy(update={"n_supernovae": 5})})
    )
    assert np.array_equal(np.asarray(a.truth.stars["ra"]), np.asarray(b.truth.stars["ra"]))
    assert len(b.truth.supernovae) == 5
