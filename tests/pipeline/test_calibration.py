"""Astrometric and photometric calibration against the truth."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.wcs.utils import fit_wcs_from_points

from twinkles.calibration.astrometry import AstrometryError, AstrometryTask
from twinkles.calibration.match_errors import PositionErrorModel
from twinkles.calibration.photometry import PhotoCalError, PhotoCalTask
from twinkles.calibration.wcs_fit import cross_validated_degree, fit_tan_sip
from twinkles.sim.wcs import make_wcs

from scenes import make_scene, process_scene, scene_refcat

SIZE = 768


def _wcs_error_mas(w, true, size=SIZE):
    g = np.linspace(0, size - 1, 30)
    x, y = (a.ravel() for a in np.meshgrid(g, g))
    r1, d1 = true.all_pix2world(x, y, 0)
    r2, d2 = w.all_pix2world(x, y, 0)
    return np.hypot((r1 - r2) * np.cos(np.deg2rad(d1)), d1 - d2) * 3.6e6


def test_tan_sip_fit_recovers_a_distorted_wcs():
    true = make_wcs(53.0123, -27.4412, 33.05, 0.2, 4000, 4072, 2.0)
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0, 3999, 300), rng.uniform(0, 4071, 300)
    ra, dec = true.all_pix2world(x, y, 0)
    fit = fit_tan_sip(x, y, ra, dec, (2000.5, 2036.5), (53.01, -27.44), 3, (4072, 4000))
    assert _wcs_error_mas(fit, true, 4000).max() < 0.1  # noiseless: exact
    # with 10 mas of noise it agrees with astropy's non-linear fit
    ra = ra + rng.normal(0, 10 / 3.6e6, 300) / np.cos(np.deg2rad(dec))
    dec = dec + rng.normal(0, 10 / 3.6e6, 300)
    ours = fit_tan_sip(x, y, ra, dec, (2000.5, 2036.5), (53.01, -27.44), 3, (4072, 4000))
    theirs = fit_wcs_from_points((x, y), SkyCoord(ra, dec, unit="deg"), sip_degree=3)
    assert np.median(_wcs_error_mas(ours, theirs, 4000)) < 1.0
    # world to pixel needs no iteration and inverts pixel to world
    px, py = ours.all_world2pix(*ours.all_pix2world(x, y, 0), 0)
    assert np.abs(px - x).max() < 1e-3 and np.abs(py - y).max() < 1e-3


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    scene = make_scene(grid_mags=(17.0, 22.0), size=SIZE, spacing=45, seed=21, scatter=True)
    result = process_scene(scene, tmp_path_factory.mktemp("cal"))
    result.refcat = scene_refcat(scene)
    return result


def _nominal(measured, d_east_arcsec, d_north_arcsec, d_rot_deg):
    """A header WCS off the truth by the given pointing and rotation errors (no distortion)."""
    true = measured.rendered.true_wcs
    ra0, dec0 = true.wcs.crval
    rot = np.rad2deg(np.arctan2(true.wcs.cd[1, 0], true.wcs.cd[1, 1]))
    return make_wcs(
        ra0 + d_east_arcsec / 3600 / np.cos(np.deg2rad(dec0)),
        dec0 + d_north_arcsec / 3600,
        rot + d_rot_deg,
        0.2,
        SIZE,
        SIZE,
    )


@pytest.mark.parametrize(
    ("east", "north", "rot"), [(10.0, 0.0, 0.5), (-7.0, 7.0, -0.5), (0.0, -3.0, 0.0)]
)
def test_astrometry_recovers_the_true_wcs_from_a_wrong_pointing(measured, east, north, rot):
    nominal = _nominal(measured, east, north, rot)
    cat = measured.cat.copy()
    result = AstrometryTask().run(cat, measured.refcat, nominal, measured.exp.shape, 3)
    err = _wcs_error_mas(result.wcs, measured.rendered.true_wcs)
    assert np.median(err) < 5.0 and err.max() < 25.0
    assert result.bright_rms_mas < 20.0 and result.n_matches > 50
    # the sky positions of the catalog come from the fitted WCS
    _, truth_dec = measured.rendered.true_wcs.all_pix2world(cat["x"], cat["y"], 0)
    assert np.median(np.abs(cat["coord_dec"] - truth_dec) * 3.6e6) < 5.0


def test_astrometry_beyond_the_search_range_is_a_clear_error(measured):
    nominal = _nominal(measured, 60.0, 0.0, 0.0)
    message = r"visit 3: no offset within 15.0\" .* is the pointing off by more\?"
    with pytest.raises(AstrometryError, match=message):
        AstrometryTask().run(measured.cat.copy(), measured.refcat, nominal, measured.exp.shape, 3)


def test_zero_point_matches_the_truth(measured):
    cat = measured.cat.copy()
    AstrometryTask().run(cat, measured.refcat, _nominal(measured, 2, 2, 0.1), measured.exp.shape, 3)
    result = PhotoCalTask().run(cat, measured.refcat, "r", 3)
    zp, err = result.photo_calib.zero_point, result.photo_calib.zero_point_err
    assert err < 0.005 and result.n_stars > 30
    # against the truth (the magnitude of one electron of *total* flux), the aperture
    # correction's uncertainty adds to the calibration's
    total_err = np.hypot(err, 1.0857 * measured.apcorr.uncertainty)
    assert abs(zp - measured.rendered.truth["zero_point"]) < 3 * total_err
    empty = measured.refcat[:0]
    with pytest.raises(PhotoCalError, match="visit 3: only 0 reference stars"):
        PhotoCalTask().run(cat, empty, "r", 3)


def _matches(distortion_px: float, n: int, noise_mas: float, seed: int):
    """``n`` matches on a 1024-px sensor whose true WCS has ``distortion_px`` of radial
    distortion at its corner, the reference positions off by ``noise_mas`` per axis."""
    true = make_wcs(9.45, -44.0, 64.0, 0.2, 1024, 1024, distortion_px)
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(0, 1023, n), rng.uniform(0, 1023, n)
    ra, dec = true.all_pix2world(x, y, 0)
    ra = ra + rng.normal(0, noise_mas / 3.6e6, n) / np.cos(np.deg2rad(dec))
    dec = dec + rng.normal(0, noise_mas / 3.6e6, n)
    return true, x, y, ra, dec


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_sky_without_distortion_gets_a_plain_tan_wcs_closer_to_the_truth(seed):
    """50 matches of 15 mas, as an external scene's sensor has: a cubic follows their noise
    and errs most at the corners; the cross-validated degree is 1 and closer to the truth."""
    true, x, y, ra, dec = _matches(0.0, 50, 15.0, seed)
    crpix, crval = (512.5, 512.5), (9.45, -44.0)
    assert cross_validated_degree(x, y, ra, dec, crpix, crval, 3) == 1
    cubic = _wcs_error_mas(fit_tan_sip(x, y, ra, dec, crpix, crval, 3), true, 1024)
    plane = _wcs_error_mas(fit_tan_sip(x, y, ra, dec, crpix, crval, 1), true, 1024)
    assert plane.max() < cubic.max() and np.median(plane) < np.median(cubic)


@pytest.mark.parametrize("seed", [0, 1])
def test_a_real_distortion_keeps_its_terms(seed):
    true, x, y, ra, dec = _matches(2.0, 120, 15.0, seed)
    crpix, crval = (512.5, 512.5), (9.45, -44.0)
    degree = cross_validated_degree(x, y, ra, dec, crpix, crval, 3)
    assert degree == 3
    assert _wcs_error_mas(fit_tan_sip(x, y, ra, dec, crpix, crval, degree), true, 1024).max() < 20


def test_cross_validated_degree_checks_its_arguments():
    _, x, y, ra, dec = _matches(0.0, 30, 10.0, 3)
    with pytest.raises(ValueError, match="max_degree"):
        cross_validated_degree(x, y, ra, dec, (512.5, 512.5), (9.45, -44.0), 0)
    with pytest.raises(ValueError, match="weights must be 30 finite positive"):
        cross_validated_degree(
            x, y, ra, dec, (512.5, 512.5), (9.45, -44.0), 3, weights=np.zeros(30)
        )
    with pytest.raises(ValueError, match="fit_tan_sip: weights must be 30"):
        fit_tan_sip(x, y, ra, dec, (512.5, 512.5), (9.45, -44.0), 3, weights=np.ones(29))
    # too few matches for the folds: the plane
    assert (
        cross_validated_degree(x[:8], y[:8], ra[:8], dec[:8], (512.5, 512.5), (9.45, -44.0), 3) == 1
    )


def _heteroscedastic_matches(distortion_px: float, seed: int):
    """180 matches on a 4000-px sensor, as a run1 visit in u or y has: S/N 5 to 1000
    (log-uniform), each position off by 500 mas / SNR (the centroid) and 8 mas (the reference)
    per axis; the true WCS has ``distortion_px`` of radial distortion at the corner."""
    true = make_wcs(53.0, -27.4, 20.0, 0.2, 4000, 4000, distortion_px)
    rng = np.random.default_rng(seed)
    n = 180
    x, y = rng.uniform(0, 3999, n), rng.uniform(0, 3999, n)
    snr = 5.0 * 10 ** rng.uniform(0, 2.3, n)
    sigma = np.hypot(500.0 / snr, 8.0)
    ra, dec = true.all_pix2world(x, y, 0)
    ra = ra + rng.normal(0, sigma / 3.6e6) / np.cos(np.deg2rad(dec))
    dec = dec + rng.normal(0, sigma / 3.6e6)
    return true, x, y, ra, dec, snr, sigma


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_weighted_matches_find_a_distortion_that_faint_centroids_hide(seed):
    """Half a pixel of distortion at the corner is below the faint centroids' noise: the
    unweighted cross-validation takes the plane, 14-16 mas from the truth; weighted by the
    matches' errors it keeps the cubic, and the weighted cubic is several times closer."""
    true, x, y, ra, dec, _, sigma = _heteroscedastic_matches(0.5, seed)
    crpix, crval = (2000.5, 2000.5), (53.0, -27.4)
    weights = 1.0 / sigma**2
    assert cross_validated_degree(x, y, ra, dec, crpix, crval, 3) == 1
    assert cross_validated_degree(x, y, ra, dec, crpix, crval, 3, weights=weights) == 3
    plane = _wcs_error_mas(fit_tan_sip(x, y, ra, dec, crpix, crval, 1), true, 4000)
    cubic = _wcs_error_mas(fit_tan_sip(x, y, ra, dec, crpix, crval, 3, weights=weights), true, 4000)
    rms = lambda err: np.sqrt(np.mean(err**2))  # noqa: E731
    assert rms(cubic) < 0.5 * rms(plane) and rms(cubic) < 8.0


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_weighted_matches_of_an_undistorted_sky_keep_the_plane(seed):
    _, x, y, ra, dec, _, sigma = _heteroscedastic_matches(0.0, seed)
    crpix, crval = (2000.5, 2000.5), (53.0, -27.4)
    assert cross_validated_degree(x, y, ra, dec, crpix, crval, 3, weights=1.0 / sigma**2) == 1


def test_the_position_error_model_is_recovered_from_the_offsets():
    """Offsets drawn from the model itself give back its terms within their noise (~10%
    for 2000 matches), and the reference catalog's own error is not counted twice."""
    rng = np.random.default_rng(7)
    n = 2000
    snr = 5.0 * 10 ** rng.uniform(0, 2.3, n)
    reference_var = rng.uniform(0, 50.0, n)  # mas^2
    variance = 2.5e5 / snr**2 + 40.0 + reference_var
    offset_sq = (rng.normal(0, 1, n) ** 2 + rng.normal(0, 1, n) ** 2) / 2 * variance
    model = PositionErrorModel.fit(offset_sq, snr, reference_var, minimum=4.0)
    assert model.snr_term == pytest.approx(2.5e5, rel=0.1)
    assert model.floor == pytest.approx(40.0, rel=0.25)
    # the brightest matches are bounded below
    assert PositionErrorModel(0.0, 0.0, 4.0).variance(np.array([1e4]), np.zeros(1))[0] == 4.0
    with pytest.raises(ValueError, match="differ in length"):
        PositionErrorModel.fit(offset_sq, snr[:-1], reference_var, minimum=4.0)
    with pytest.raises(ValueError, match="snr must be > 0"):
        PositionErrorModel.fit(offset_sq, -snr, reference_var, minimum=4.0)
