"""Rendering physics, measured on the images against the truth.

Scenes are built from the real sky machinery with controlled content (a grid of isolated
stars) and drawn by the real renderer; every tolerance follows from the Poisson noise.
"""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from astropy.stats import sigma_clipped_stats

from twinkles.sim.render import eimage_hdulist, render_visit
from twinkles.sim.wcs import make_wcs, wcs_from_header_dict
from twinkles.units import NEFF_PER_FWHM2

from scenes import SIZE, Scene, make_scene


@pytest.fixture(scope="module")
def star_grid() -> Scene:
    scene = make_scene(render={"psf_variation": 0.0})
    scene.rendered = render_visit(scene.sky, scene.config, scene.visit)
    return scene


def _sky_model(rendered, shape):
    t = rendered.truth
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    half_diag = 0.5 * np.hypot(*shape)
    sx, sy = (xx - 0.5 * (shape[1] - 1)) / half_diag, (yy - 0.5 * (shape[0] - 1)) / half_diag
    return t["sky_level"] * (1 + t["sky_gradient"][0] * sx + t["sky_gradient"][1] * sy)


def _electrons_per_njy(sky, visit):
    """From the r-band zero point (SMTN-002: 28.36 for 1 e-/s), extinction and clouds."""
    row, cond = sky.visit(visit)
    zp = 28.36 + 2.5 * np.log10(30.0) - 0.13 * (row["airmass"] - 1) - cond["cloud"]
    return 10 ** (-0.4 * (31.4 - zp))


def test_star_fluxes_match_truth_within_poisson_noise(star_grid):
    sky = star_grid.sky
    visit = star_grid.visit
    x = star_grid.x
    y = star_grid.y
    rendered = star_grid.rendered
    image = rendered.image.astype(float)
    sky_model = _sky_model(rendered, image.shape)
    gain = _electrons_per_njy(sky, visit)
    assert gain == pytest.approx(rendered.truth["electrons_per_njy"], rel=1e-3)
    true_e = sky.truth.flux(sky.truth.stars["id"], "r", rendered.truth["mjd"]) * gain
    radius = 4.5 * rendered.psf.fwhm / 0.2  # < 2e-6 of a beta=4.765 Moffat lies outside
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    pulls = []
    for xi, yi, f in zip(x, y, true_e, strict=True):
        inside = (xx - xi) ** 2 + (yy - yi) ** 2 <= radius**2
        measured = image[inside].sum() - sky_model[inside].sum()
        pulls.append((measured - f) / np.sqrt(f + sky_model[inside].sum()))
    pulls = np.array(pulls)
    n = len(pulls)
    assert n > 100
    assert abs(pulls.mean()) < 3 / np.sqrt(n)
    assert abs(pulls.std(ddof=1) - 1) < 3 / np.sqrt(2 * n)


def test_psf_effective_fwhm_matches_fwhmeff(star_grid):
    sky = star_grid.sky
    x = star_grid.x
    y = star_grid.y
    rendered = star_grid.rendered
    image = rendered.image.astype(float)
    sky_model = _sky_model(rendered, image.shape)
    gain = rendered.truth["electrons_per_njy"]
    true_e = sky.truth.flux(sky.truth.stars["id"], "r", rendered.truth["mjd"]) * gain
    half = int(np.ceil(5 * rendered.psf.fwhm / 0.2))
    sum_sq = []
    for xi, yi, f in zip(x, y, true_e, strict=True):
        if f < 5e4:
            continue
        cx, cy = round(xi), round(yi)
        d = image[cy - half : cy + half + 1, cx - half : cx + half + 1]
        s = sky_model[cy - half : cy + half + 1, cx - half : cx + half + 1]
        # E[(d - s)^2 - d] = e^2 for Poisson d: an unbiased sum of squared star counts
        sum_sq.append(np.sum((d - s) ** 2 - d) / f**2)
    neff = 1.0 / np.mean(sum_sq)  # sub-pixel phases are random, so this is the phase average
    measured = np.sqrt(neff / NEFF_PER_FWHM2) * 0.2
    assert len(sum_sq) > 30
    assert measured == pytest.approx(rendered.truth["fwhm_eff"], rel=0.03)


def test_sky_level_matches_filtskybrightness(star_grid):
    sky = star_grid.sky
    visit = star_grid.visit
    rendered = star_grid.rendered
    row, _ = sky.visit(visit)
    zp1 = 28.36  # r, SMTN-002, 1 e-/s at zenith
    expected = 10 ** (-0.4 * (row["filtSkyBrightness"] - zp1)) * 30 * 0.2**2
    _, median, _ = sigma_clipped_stats(rendered.image, sigma=3)
    assert median == pytest.approx(expected, rel=0.005)


def test_stars_are_where_the_true_wcs_puts_them(star_grid):
    sky = star_grid.sky
    x = star_grid.x
    y = star_grid.y
    rendered = star_grid.rendered
    image = rendered.image.astype(float) - _sky_model(rendered, rendered.image.shape)
    gain = rendered.truth["electrons_per_njy"]
    true_e = sky.truth.flux(sky.truth.stars["id"], "r", rendered.truth["mjd"]) * gain
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    radius = 3 * rendered.psf.fwhm / 0.2
    dx, dy = [], []
    for xi, yi, f in zip(x, y, true_e, strict=True):
        if f < 5e4:
            continue
        inside = (xx - xi) ** 2 + (yy - yi) ** 2 <= radius**2
        w = image[inside]
        dx.append(np.sum(w * xx[inside]) / w.sum() - xi)
        dy.append(np.sum(w * yy[inside]) / w.sum() - yi)
    dx, dy = np.array(dx), np.array(dy)
    assert abs(dx.mean()) < 0.01 and abs(dy.mean()) < 0.01
    assert np.median(np.hypot(dx, dy)) < 0.05
    # the header's nominal WCS is off by the pointing error: calibration is needed
    nominal = make_wcs(
        rendered.header["CRVAL1"],
        rendered.header["CRVAL2"],
        rendered.header["ROTANG"],
        0.2,
        SIZE,
        SIZE,
    )
    ra, dec = sky.truth.stars["ra"], sky.truth.stars["dec"]
    nx, ny = nominal.all_world2pix(ra, dec, 0)
    assert np.median(np.hypot(nx - x, ny - y)) > 0.5


def test_same_seed_same_pixels_other_seed_other_pixels(star_grid):
    sky = star_grid.sky
    visit = star_grid.visit
    rendered = star_grid.rendered
    config = star_grid.config
    again = render_visit(sky, config, visit)
    assert np.array_equal(again.image, rendered.image)
    other = render_visit(sky, config.model_copy(update={"seed": config.seed + 1}), visit)
    assert not np.array_equal(other.image, rendered.image)


def test_saturation_bleeds_along_columns_and_conserves_charge():
    scene = make_scene(grid_mags=(30.0, 30.1), extra=(256.3, 255.8, 14.0))
    config, sky = scene.config, scene.sky
    rendered = render_visit(sky, config, scene.visit)
    image = rendered.image.astype(float)
    full_well = config.sensor.saturation
    assert image.max() == full_well
    saturated = image >= full_well
    cols = np.flatnonzero(saturated.any(axis=0))
    rows = np.flatnonzero(saturated.any(axis=1))
    assert len(rows) > 3 * len(cols)  # a vertical trail, not a disc
    flux = (
        sky.truth.flux(sky.truth.stars["id"][-1:], "r", rendered.truth["mjd"])[0]
        * rendered.truth["electrons_per_njy"]
    )
    box = image[:, 200:313] - _sky_model(rendered, image.shape)[:, 200:313]
    sky_in_box = _sky_model(rendered, image.shape)[:, 200:313].sum()
    assert abs(box.sum() - flux) < 5 * np.sqrt(flux + sky_in_box)


def test_cosmic_rays_at_the_configured_rate():
    scene = make_scene(render={"cosmic_ray_rate": 100.0}, grid_mags=(30, 30.1))
    rendered = render_visit(scene.sky, scene.config, scene.visit)
    tracks = rendered.truth["cosmic_rays"]
    area_cm2 = SIZE * SIZE * (10e-4) ** 2
    expected = 100.0 * area_cm2 * 30 / 60
    assert abs(len(tracks) - expected) < 4 * np.sqrt(expected)
    image = rendered.image - rendered.truth["sky_level"]
    hits = 0
    for x0, y0, x1, y1, _ in tracks:
        xm, ym = round((x0 + x1) / 2), round((y0 + y1) / 2)
        if 0 <= xm < SIZE and 0 <= ym < SIZE:
            hits += image[ym, xm] > 5 * np.sqrt(rendered.truth["sky_level"])
    assert hits > 0.8 * sum(
        0 <= (t[0] + t[2]) / 2 < SIZE - 0.5 and 0 <= (t[1] + t[3]) / 2 < SIZE - 0.5 for t in tracks
    )


def test_header_carries_what_the_telescope_knows(star_grid):
    sky = star_grid.sky
    visit = star_grid.visit
    rendered = star_grid.rendered
    header = eimage_hdulist(rendered)[0].header
    row, _ = sky.visit(visit)
    assert header["OBSID"] == visit
    assert header["MJD-OBS"] == pytest.approx(row["expMJD"])
    assert header["FILTER"] == "r" and header["EXPTIME"] == 30.0
    assert header["AIRMASS"] == pytest.approx(row["airmass"])
    assert header["ROTANG"] == pytest.approx(row["rotSkyPos"])
    assert (header["RATEL"], header["DECTEL"]) == (row["fieldRA"], row["fieldDec"])
    for key in ("CTYPE1", "CRVAL1", "CRPIX1", "CD1_1", "CD2_2"):
        assert key in header
    # the truth is not in the header; it is in the truth record
    for key in ("ZEROPNT", "MAGZERO", "SEEING", "FWHM"):
        assert key not in header
    true_wcs = wcs_from_header_dict(rendered.truth["true_wcs"])
    assert "SIP" in true_wcs.wcs.ctype[0]
    assert rendered.image.dtype == np.float32


def test_eimage_is_valid_fits(tmp_path, star_grid):
    rendered = star_grid.rendered
    path = tmp_path / "e.fits"
    eimage_hdulist(rendered).writeto(path)
    with fits.open(path) as hdul:
        hdul.verify("exception")
        assert hdul[0].data.shape == (SIZE, SIZE)


def test_a_mixed_psf_run_spans_profiles_patterns_and_amplitudes_at_the_visits_fwhm_eff():
    """``psf_profile: mixed`` and a psf_variation range: every visit its own profile and
    pattern and amplitude in the configured range, each profile drawn at the n_eff its
    FWHMeff asks for."""
    from twinkles.config import parse_run_config
    from twinkles.sim.psf import make_profile, neff_pixels
    from twinkles.sim.render import simulated_psf
    from twinkles.sim.sky import make_sky

    render = {
        "psf_profile": "mixed",
        "psf_variation": 0.15,
        "psf_variation_min": 0.05,
        "psf_pattern": "mixed",
        "cosmic_ray_rate": 0.0,
    }
    data = {
        "seed": 11,
        "sensor": {"width_px": 64, "height_px": 64},
        "cadence": {"n_years": 1, "n_visits": 40, "filters": ["r"]},
        "truth": {"star_density": 0.0, "galaxy_density": 0.0, "n_supernovae": 0},
        "render": render,
    }
    config = parse_run_config(data, "mixed", default_name="mixed")
    sky = make_sky(config)
    psfs = [simulated_psf(sky.visit(int(v))[1]) for v in sky.visits["obsHistID"]]
    assert {p.profile for p in psfs} == {"moffat", "kolmogorov_optics", "double_gaussian"}
    betas = [p.beta for p in psfs if p.profile == "moffat"]
    assert min(betas) >= 2.5 and max(betas) <= 4.5
    radial = [p for p in psfs if p.fwhm_radial]
    linear = [p for p in psfs if any(p.fwhm_gradient)]
    assert len(radial) + len(linear) == len(psfs) and 8 <= len(radial) <= 32
    amplitudes = [p.fwhm_radial for p in radial] + [np.hypot(*p.fwhm_gradient) for p in linear]
    assert min(amplitudes) >= 0.05 - 1e-12 and max(amplitudes) <= 0.15 + 1e-12
    # each visit's profile has the n_eff of its FWHMeff (the depth the cadence promised)
    pixel = config.sensor.pixel_scale
    for psf, fwhm_eff in zip(psfs[:6], sky.visits["FWHMeff"][:6], strict=True):
        neff = neff_pixels(
            make_profile(psf.profile, psf.fwhm / pixel, psf.beta), 15 * psf.fwhm / pixel
        )
        assert neff == pytest.approx(NEFF_PER_FWHM2 * (fwhm_eff / pixel) ** 2, rel=0.01)


def test_light_beyond_the_calibration_aperture():
    """What the zero-point check subtracts: none for the truncated Moffat; for Kolmogorov
    wings (I ~ r^-11/3, so the light beyond r falls as r^-5/3) a few mmag, less for a
    sharper PSF."""
    from twinkles.sim.psf import SimulatedPSF
    from twinkles.validation.static_sky import enclosed_light_mmag

    def beyond(profile: str, fwhm: float) -> float:
        return enclosed_light_mmag(SimulatedPSF(profile, fwhm).to_dict(), 25.0, 0.2)

    assert beyond("moffat", 0.8) == pytest.approx(0.0, abs=1e-3)
    sharp, broad = beyond("kolmogorov_optics", 0.6), beyond("kolmogorov_optics", 1.0)
    assert 0.5 < sharp < broad < 10.0
    assert broad / sharp == pytest.approx((1.0 / 0.6) ** (5 / 3), rel=0.35)
    # a local sky from a 30-45 px annulus takes the wings' light there out of the aperture
    # too: for I ~ r^-11/3, 25^2 / (45^2 - 30^2) x ((30/25)^-5/3 - (45/25)^-5/3) = 0.20 of
    # the light beyond 25 px
    profile = SimulatedPSF("kolmogorov_optics", 1.0).to_dict()
    with_sky = enclosed_light_mmag(profile, 25.0, 0.2, (30.0, 45.0))
    assert 1.1 * broad < with_sky < 1.35 * broad
    moffat = SimulatedPSF("moffat", 0.8).to_dict()
    assert enclosed_light_mmag(moffat, 25.0, 0.2, (30.0, 45.0)) == pytest.approx(0.0, abs=1e-3)
