"""Forced photometry with blended neighbours, the Object merge, and PA1, on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest
from test_warp_coadd import DEC, RA, SIGMA_PSF, make_calexp

from twinkles.coadd.objects import ObjectTask
from twinkles.measurement.forced import ForcedPhotometryTask
from twinkles.stats import robust_std
from twinkles.validation.static_sky import pa1


def test_forced_fluxes_of_a_blend_are_unbiased_with_honest_errors():
    # two stars 1.2 FWHM apart, one 3x the other, and an isolated one, at S/N 20-70 (where
    # noise, not the 0.2% of PSF interpolation, dominates); 60 noise draws
    fwhm_arcsec = 2.3548 * SIGMA_PSF * 0.2
    sep = 1.2 * fwhm_arcsec / 3600
    stars = [
        (RA, DEC, 6.0e3),
        (RA + sep / np.cos(np.deg2rad(DEC)), DEC, 2.0e3),
        (RA - 8 / 3600, DEC + 8 / 3600, 3.0e3),
    ]
    ra, dec, flux = (np.array(c) for c in zip(*stars, strict=True))
    pulls, joint = [], []
    for seed in range(60):
        calexp = make_calexp(15.0, seed=seed, stars=stars)
        result = ForcedPhotometryTask().run(calexp, ra, dec)
        cat = result.catalog
        pulls.append((np.asarray(cat["psFlux"]) - flux) / np.asarray(cat["psFluxErr"]))
        joint.append(list(cat["flag_blended"]))
    pulls = np.array(pulls)
    assert joint[0] == [True, True, False] and result.n_groups == 1
    for k in range(3):
        assert abs(np.mean(pulls[:, k])) < 0.45  # 3 sigma of a mean of 60
        assert robust_std(pulls[:, k]) == pytest.approx(1.0, abs=0.3)


def test_fitting_alone_would_bias_the_blend():
    # the same blend measured one star at a time counts the neighbour's light
    from twinkles.measurement.psf_flux import psf_flux

    fwhm_arcsec = 2.3548 * SIGMA_PSF * 0.2
    sep = 1.2 * fwhm_arcsec / 3600
    stars = [(RA, DEC, 6.0e4), (RA + sep / np.cos(np.deg2rad(DEC)), DEC, 2.0e4)]
    calexp = make_calexp(15.0, seed=1, stars=stars)
    ra, dec, flux = (np.array(c) for c in zip(*stars, strict=True))
    x, y = calexp.wcs.all_world2pix(ra, dec, 0)
    alone, _, _ = psf_flux(calexp, x, y)
    forced = ForcedPhotometryTask().run(calexp, ra, dec).catalog
    alone_njy = calexp.photo_calib.to_njy(alone)
    assert alone_njy[1] > 1.2 * flux[1]  # the faint one gains its neighbour's wing
    assert abs(forced["psFlux"][1] / flux[1] - 1) < 0.1


def test_joint_fits_are_the_least_squares_fit_on_the_union_of_stamps():
    # a triple, a pair across the image edge and a single, with masked pixels under them:
    # the batched fits equal a direct weighted least-squares fit of each group's union box
    from twinkles.image import MaskPlane
    from twinkles.measurement.psf_flux import psf_flux

    calexp = make_calexp(15.0, seed=5)
    rng = np.random.default_rng(5)
    h, w = calexp.shape
    x = np.array([40.3, 43.1, 45.8, 1.7, 5.2, 70.4])
    y = np.array([50.2, 52.6, 47.9, 30.3, 31.8, 20.1])
    groups = np.array([7, 7, 7, 3, 3, 9])
    calexp.mask[rng.random((h, w)) < 0.05] |= int(MaskPlane.BAD)
    calexp.image[48, 44] = np.nan  # a non-finite pixel counts as masked too
    flux, err, masked = psf_flux(calexp, x, y, groups=groups)
    bad = int(MaskPlane.BAD | MaskPlane.NO_DATA | MaskPlane.SAT)
    for label in np.unique(groups):
        members = np.flatnonzero(groups == label)
        models, ix, iy = calexp.psf.images(x[members], y[members])
        design = np.zeros((len(members), h, w))
        half = calexp.psf.half
        for k, (cx, cy) in enumerate(zip(ix, iy, strict=True)):
            padded = np.zeros((h + 2 * half, w + 2 * half))
            padded[cy : cy + 2 * half + 1, cx : cx + 2 * half + 1] = models[k]
            design[k] = padded[half:-half, half:-half]
        good = ((calexp.mask & bad) == 0) & np.isfinite(calexp.image)
        a = design[:, good]
        inverse = np.linalg.inv(a @ a.T)
        expected = inverse @ (a @ calexp.image[good])
        cov = inverse @ ((a * calexp.variance[good]) @ a.T) @ inverse
        np.testing.assert_allclose(flux[members], expected, rtol=1e-9)
        np.testing.assert_allclose(err[members], np.sqrt(np.diag(cov)), rtol=1e-9)
        np.testing.assert_allclose(masked[members], 1 - a.sum(axis=1), atol=1e-12)
    # without labels the triple's members are fitted alone, and differ
    alone, _, _ = psf_flux(calexp, x, y)
    assert alone[5] == pytest.approx(flux[5], rel=1e-12)
    assert np.all(np.abs(alone[:3] - flux[:3]) > 1e-3 * np.abs(flux[:3]))


def test_psf_footprints_reaching_missing_data_are_flagged_edge():
    from twinkles.image import MaskPlane
    from twinkles.measurement.forced import footprint_reaches

    mask = np.zeros((60, 80), dtype=np.int32)
    mask[:, 70:] |= int(MaskPlane.NO_DATA)  # a strip without data
    mask[10, 10] |= int(MaskPlane.BAD)
    ix, iy = np.array([57, 58, 40, 10]), np.array([30, 30, 30, 16])
    reach = footprint_reaches(mask, MaskPlane.NO_DATA, ix, iy, 12)
    assert list(reach) == [False, True, False, False]  # 58 + 12 reaches column 70
    assert list(footprint_reaches(mask, MaskPlane.BAD, ix, iy, 6)) == [False, False, False, True]
    calexp = make_calexp(0.0, seed=6)
    h, w = calexp.shape
    calexp.mask[:, w - 20 :] |= int(MaskPlane.NO_DATA)
    x = np.array([w / 2, w - 20 - calexp.psf.half + 1.0])
    ra, dec = calexp.wcs.all_pix2world(x, np.full(2, h / 2), 0)
    cat = ForcedPhotometryTask().run(calexp, ra, dec).catalog
    assert list(cat["flag_edge"]) == [False, True]


def test_positions_off_the_image_are_flagged_not_fatal():
    calexp = make_calexp(0.0, seed=2)
    cat = ForcedPhotometryTask().run(calexp, np.array([RA, RA + 1.0]), np.array([DEC, DEC])).catalog
    assert list(cat["flag_off_image"]) == [False, True]
    assert np.isfinite(cat["psFlux"][0]) and np.isnan(cat["psFlux"][1])
    assert cat["flag_bad"][1]


def test_objects_merge_bands_with_priority_and_keep_single_band_sources():
    both = (RA + 5 / 3600, DEC, 5.0e4)
    only_g = (RA - 6 / 3600, DEC + 4 / 3600, 5.0e4)
    only_i = (RA - 4 / 3600, DEC - 6 / 3600, 5.0e4)
    coadd_g = make_calexp(0.0, seed=3, stars=[both, only_g], zp=31.4)
    coadd_i = make_calexp(0.0, seed=4, stars=[both, only_i], zp=31.4)
    result = ObjectTask().run({"g": coadd_g, "i": coadd_i})
    objects = result.objects
    assert len(objects) == 3
    found = {}
    for ra, dec, _ in (both, only_g, only_i):
        d = np.hypot((objects["ra"] - ra) * np.cos(np.deg2rad(DEC)), objects["decl"] - dec) * 3600
        k = int(np.argmin(d))
        assert d[k] < 0.05
        found[(ra, dec)] = objects[k]
    assert found[both[:2]]["refBand"] == "i" and found[both[:2]]["detectBands"] == "ig"
    assert found[only_g[:2]]["refBand"] == "g"
    # every Object is measured in every band: a g-only star has i flux consistent with zero
    g_only = found[only_g[:2]]
    assert abs(g_only["i_psFlux"]) < 4 * g_only["i_psFluxErr"]
    assert g_only["g_psFlux"] == pytest.approx(5.0e4, rel=0.05)
    assert list(objects["objectId"]) == [1, 2, 3] and np.all(objects["parent"] == 0)


def test_pa1_recovers_the_scatter_of_synthetic_stars():
    rng = np.random.default_rng(5)
    mags = 18.0 + rng.normal(0, 0.005, size=(300, 20))
    mags[rng.random(mags.shape) < 0.2] = np.nan
    assert pa1(mags) == pytest.approx(0.005, rel=0.1)
    assert np.isnan(pa1(mags[:2]))


def test_faro_pa1_and_pf1_of_synthetic_stars():
    from twinkles.validation.static_sky import photometric_repeatability

    rng = np.random.default_rng(6)
    sigma = 0.005
    mags = 18.0 + rng.normal(0, 1, (200, 1)) + rng.normal(0, sigma, size=(200, 20))
    mags[rng.random(mags.shape) < 0.2] = np.nan
    pa1_faro, pf1, n = photometric_repeatability(mags)
    assert n == 200
    # the median over stars of an RMS about the mean (no ddof: faro's np.nanstd)
    assert pa1_faro == pytest.approx(sigma * np.sqrt(1 - 1 / 16), rel=0.06)
    # Gaussian residuals of 5 mmag beyond 15 mmag: 2 x (1 - Phi(3)), a little less about
    # each star's own mean
    assert pf1 == pytest.approx(0.27, abs=0.2)
    outliers = mags.copy()
    outliers[:, 0] += 0.05
    assert photometric_repeatability(outliers)[1] > 4.0  # one visit in ~16 off by 50 mmag
    # fewer than 50 stars measured in more than two visits: not measured, with the count
    sparse = mags[:60].copy()
    sparse[:20, 2:] = np.nan  # two visits at most: not counted
    assert np.isnan(photometric_repeatability(sparse)[0])
    assert photometric_repeatability(sparse)[2] == 40


def _star_rows(n_visits: int, ramp: float, radial: float, seed: int):
    """ForcedSource-like rows of 150 steady stars on a 1000-px sensor with a flux ramp."""
    from astropy.table import Table

    rng = np.random.default_rng(seed)
    rows = []
    true = np.exp(rng.uniform(np.log(2e3), np.log(3e6), 150))
    for visit in range(1, n_visits + 1):
        x, y = rng.uniform(0, 1000, 150), rng.uniform(0, 1000, 150)
        X, Y = (x - 499.5) / 707.1, (y - 499.5) / 707.1
        angle = rng.uniform(0, 2 * np.pi)
        gain = 1 + ramp * (X * np.cos(angle) + Y * np.sin(angle)) + radial * (X**2 + Y**2)
        err = np.sqrt(true + 200.0**2)
        flux = true * gain + rng.normal(size=150) * err
        for k in range(150):
            rows.append((k, visit, "r", x[k], y[k], flux[k], err[k], true[k], False))
    return Table(
        rows=rows,
        names=(
            "truth_id",
            "ccdVisitId",
            "band",
            "x",
            "y",
            "psFlux",
            "psFluxErr",
            "true_flux",
            "is_variable",
        ),
    )


def test_flux_ramps_recover_a_linear_and_a_radial_ramp_and_a_flat_sensor_gives_none():
    from twinkles.validation.static_sky import flux_ramps, photometry_systematics, pulls_by_snr

    flat = _star_rows(12, 0.0, 0.0, seed=1)
    ramps = flux_ramps(flat, 1000, 1000)
    assert len(ramps) == 12
    summary = photometry_systematics(pulls_by_snr(flat), ramps)["r"]
    # a flat sensor: the ramps are their noise, and their RMS beyond it is ~0
    assert summary["ramp_linear_mmag"] < 3 * summary["ramp_linear_err_mmag"] + 0.3
    assert summary["ramp_radial_mmag"] < 3 * summary["ramp_radial_err_mmag"] + 0.3
    # the worst of three bins of a few hundred pulls each: within the metric's allowance
    assert abs(summary["pull_std_worst"] - 1) < 0.1 + 2 * summary["pull_std_worst_err"]
    assert abs(summary["pull_median_worst"]) < 0.1 + 2 * summary["pull_median_worst_err"]
    # 1% per half-diagonal along a random direction, and 1% from centre to corner
    tilted = photometry_systematics(
        pulls_by_snr(_star_rows(12, 0.01, 0.0, 2)),
        flux_ramps(_star_rows(12, 0.01, 0.0, 2), 1000, 1000),
    )["r"]
    assert tilted["ramp_linear_mmag"] == pytest.approx(10.86, abs=1.5)
    bowl_rows = _star_rows(12, 0.0, 0.01, 3)
    bowl = flux_ramps(bowl_rows, 1000, 1000)
    assert np.median(bowl["radial_mmag"]) == pytest.approx(10.86, abs=1.5)
    # the bright stars' pulls spread with the ramp; the faint ones' do not
    pulls = pulls_by_snr(bowl_rows)
    assert pulls["robust_std"][pulls["snr_lo"] == 300][0] > 1.2
    assert pulls["robust_std"][pulls["snr_lo"] == 5][0] == pytest.approx(1.0, abs=0.2)


def test_a_flat_sensor_s_linear_ramps_are_their_noise_alone():
    """The length of a fitted gradient has the noise of both its components: over 36 visits
    of a flat sensor the mean square ramp is the mean square noise (within the ~17% scatter
    of that mean), not twice it, so the RMS beyond the noise is ~0, not ~the noise."""
    from astropy.table import vstack

    from twinkles.validation.static_sky import flux_ramps, ramp_excess

    ramps = vstack([flux_ramps(_star_rows(12, 0.0, 0.0, seed), 1000, 1000) for seed in (4, 5, 6)])
    ratio = np.mean(ramps["linear_mmag"] ** 2) / np.mean(ramps["linear_err_mmag"] ** 2)
    assert ratio == pytest.approx(1.0, abs=0.4)
    value, err = ramp_excess(ramps["linear_mmag"], ramps["linear_err_mmag"])
    assert value < np.sqrt(np.mean(ramps["linear_err_mmag"] ** 2)) and value < 2 * err + 0.1


def test_stars_with_a_true_neighbour_are_left_out_of_the_truth_comparisons():
    """A star blended with a neighbour the deblender did not separate is measured with the
    neighbour's light, which its true flux does not hold (and a sensor rotated about its
    centre keeps it at the same radius in every visit, so its error repeats as a radial
    ramp). Rows marked not isolated leave the pulls, the ramps and the bias, not PA1, which
    needs no truth."""
    from twinkles.validation.static_sky import flux_ramps, forced_star_metrics, pulls_by_snr
    from twinkles.validation.truth_match import isolated

    rows = _star_rows(12, 0.0, 0.0, seed=4)
    rows["ccdVisitId"] = rows["ccdVisitId"].astype(np.int64)
    ids = np.asarray(rows["truth_id"])
    blended = np.isin(ids, np.arange(0, 150, 5))  # 30 of the 150 stars
    every = (pulls_by_snr(rows), flux_ramps(rows, 1000, 1000), forced_star_metrics(rows))
    rows["isolated"] = ~blended
    kept = (pulls_by_snr(rows), flux_ramps(rows, 1000, 1000), forced_star_metrics(rows))
    assert every[0]["n"].sum() - kept[0]["n"].sum() > 0
    snr = np.asarray(rows["true_flux"] / rows["psFluxErr"])
    in_bins = snr >= 5.0
    assert every[0]["n"].sum() - kept[0]["n"].sum() == int((blended & in_bins).sum())
    bright = np.asarray(rows["psFlux"] >= 100 * rows["psFluxErr"])
    lost = [
        int((blended & bright & (rows["ccdVisitId"] == v)).sum()) for v in kept[1]["ccdVisitId"]
    ]
    np.testing.assert_array_equal(every[1]["n_stars"] - kept[1]["n_stars"], lost)
    assert kept[2]["pa1_drp_mmag"][0] == every[2]["pa1_drp_mmag"][0]
    assert kept[2]["n_pulls"][0] < every[2]["n_pulls"][0]
    # the isolation: no other object within 2" (positions in deg; one is 1" from another)
    ra = np.array([10.0, 10.0 + 1.0 / 3600, 10.01, 10.02])
    dec = np.full(4, -30.0)
    galaxy_ra, galaxy_dec = np.array([10.02 + 1.5 / 3600]), np.array([-30.0])
    alone = isolated(ra, dec, np.concatenate([ra, galaxy_ra]), np.concatenate([dec, galaxy_dec]))
    np.testing.assert_array_equal(alone, [False, False, True, False])


def test_the_median_pulls_error_counts_what_a_visit_and_the_band_share():
    """A visit's measurements share its zero point's error: the median pull of bright stars
    then scatters beyond 1.253 / sqrt(n), and its bootstrap over visits says by how much; a
    zero-point error common to the band widens the allowance by itself over the bin's
    fractional error."""
    from twinkles.validation.static_sky import flux_ramps, photometry_systematics, pulls_by_snr

    rng = np.random.default_rng(9)
    medians, errors = [], []
    for seed in range(30):
        rows = _star_rows(12, 0.0, 0.0, seed=100 + seed)
        offset = {v: rng.normal(0, 0.002) for v in set(rows["ccdVisitId"])}
        rows["psFlux"] = rows["psFlux"] * np.array([1 + offset[v] for v in rows["ccdVisitId"]])
        bright = pulls_by_snr(rows)
        bright = bright[bright["snr_lo"] == 300][0]
        medians.append(bright["median"])
        errors.append(bright["median_err"])
    naive = 1.253 / np.sqrt(bright["n"])
    scatter = np.std(medians)
    assert scatter > 2 * naive  # the visits' shared errors move the median
    assert np.median(errors) == pytest.approx(scatter, rel=0.35)
    rows = _star_rows(12, 0.0, 0.0, seed=5)
    pulls, ramps = pulls_by_snr(rows), flux_ramps(rows, 1000, 1000)
    alone = photometry_systematics(pulls, ramps)["r"]
    shared = photometry_systematics(pulls, ramps, calibration_err={"r": 0.002})["r"]
    j = np.flatnonzero(pulls["snr_lo"] == shared["pull_median_worst_bin"][0])[0]
    expected = np.hypot(alone["pull_median_worst_err"], 0.002 / pulls["rel_err"][j])
    assert shared["pull_median_worst_err"] == pytest.approx(expected)


def test_forced_photometry_applies_the_aperture_correction_where_each_object_is():
    from twinkles.measurement.apcorr import ApertureCorrectionError, ApertureCorrectionMap
    from twinkles.measurement.sensor_map import SensorMap

    stars = [(RA - 6 / 3600, DEC - 5 / 3600, 5.0e4), (RA + 6 / 3600, DEC + 5 / 3600, 5.0e4)]
    calexp = make_calexp(10.0, seed=4, stars=stars)
    ra, dec, _ = (np.array(c) for c in zip(*stars, strict=True))
    h, w = calexp.shape
    # +-5% across the sensor in x, times a growth of 1.02 rising 1% towards +y, times an
    # outer growth that follows the PSF's width (its core concentration falls 4% towards +x)
    width = SensorMap("linear", np.array([1.0, -0.08, 0.0]), np.zeros((3, 3)))
    correction = ApertureCorrectionMap(
        0.5 * (w - 1),
        0.5 * (h - 1),
        0.5 * np.hypot(w, h),
        [
            SensorMap("linear", np.array([1.0, 0.1, 0.0]), np.zeros((3, 3))),
            SensorMap("linear", np.array([1.02, 0.0, 0.01]), np.zeros((3, 3))),
            SensorMap("scaled", np.array([1.01]), np.zeros((1, 1)), width, -0.1),
        ],
        width,
    )
    plain = ForcedPhotometryTask().run(calexp, ra, dec).catalog
    corrected = ForcedPhotometryTask().run(calexp, ra, dec, ap_corr=correction).catalog
    expected = correction(plain["x"], plain["y"])
    assert abs(expected[1] / expected[0] - 1) > 0.02  # the two positions are corrected apart
    np.testing.assert_allclose(corrected["psFlux"] / plain["psFlux"], expected, rtol=1e-10)
    np.testing.assert_allclose(corrected["psFluxErr"] / plain["psFluxErr"], expected, rtol=1e-10)
    # a per-source systematic that changes with position (a coadd's) adds to each error there
    systematic = (
        ForcedPhotometryTask()
        .run(calexp, ra, dec, flux_systematic=lambda x, y: 0.01 * (1.0 + (x > 0.5 * w)))
        .catalog
    )
    share = 0.01 * (1.0 + (plain["x"] > 0.5 * w))
    np.testing.assert_allclose(
        systematic["psFluxErr"], np.hypot(plain["psFluxErr"], share * plain["psFlux"]), rtol=1e-10
    )
    assert len(set(share)) == 2
    # the visit summary carries it as JSON; a summary without it is an error naming the visit
    again = ApertureCorrectionMap.from_summary({"visit": 7, "ap_corr_map": correction.to_dict()})
    np.testing.assert_allclose(again(plain["x"], plain["y"]), expected)
    # a summary written when the growth was one sensor-wide number still reads
    legacy = {
        "coefficients": [1.0, 0.1, 0.0],
        "degree": 1,
        "x0": correction.x0,
        "y0": correction.y0,
        "scale": correction.scale,
        "growth": 1.02,
    }
    old = ApertureCorrectionMap.from_dict(legacy)
    np.testing.assert_allclose(old.growth(plain["x"], plain["y"]), 1.02)
    np.testing.assert_allclose(
        old.inner(plain["x"], plain["y"]), correction.inner(plain["x"], plain["y"])
    )
    with pytest.raises(ApertureCorrectionError, match=r"visit 7.*rerun process_eimage"):
        ApertureCorrectionMap.from_summary({"visit": 7, "ap_corr": 1.01})


def test_repeatability_floor_and_noise_pa1_separate_the_systematic_from_the_photon_noise():
    from twinkles.validation.static_sky import pa1_noise, repeatability_floor

    rng = np.random.default_rng(11)
    # 50 stars x 15 visits, photometric errors 2-20 mmag (S/N 50-500), and a 4 mmag floor
    errors = np.repeat(rng.uniform(0.002, 0.02, (50, 1)), 15, axis=1)
    mags = 20.0 + rng.normal(size=(50, 1)) + rng.normal(size=errors.shape) * np.hypot(errors, 0.004)
    mags[rng.uniform(size=mags.shape) < 0.1] = np.nan  # missed visits
    assert repeatability_floor(mags, errors) == pytest.approx(0.004, abs=0.001)
    # PA1 is the photon noise and the floor together; the noise PA1 is the first alone
    assert pa1(mags) > pa1_noise(errors) > 0.004
    assert np.hypot(pa1_noise(errors), 0.004) == pytest.approx(pa1(mags), rel=0.25)
    # no floor: errors explain the scatter; a 5-sigma outlier does not make one
    clean = 20.0 + rng.normal(size=errors.shape) * errors
    clean[0, 0] += 0.5
    assert repeatability_floor(clean, errors) < 0.0025  # the chi^2 noise of 700 residuals
