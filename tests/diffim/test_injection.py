"""Source injection and the real/bogus features, on images drawn with GalSim (not twinkles.sim).

The calexp is sky noise under a GalSim Moffat PSF (beta 2.5, with the wings the project's
simulator does not draw), the PSF model its pixel image; injections must come out with their
flux and their photon noise, be placed where the configuration says, and the efficiency fit
must return the curve it was drawn from.
"""

from __future__ import annotations

import galsim
import numpy as np
import pytest
from astropy.table import Table

from twinkles.config import InjectionConfig
from twinkles.diffim.injection import (
    efficiency_curve,
    fit_efficiency,
    host_galaxies,
    inject_point_sources,
    match_injections,
    plan_injections,
)
from twinkles.diffim.realbogus import dia_source_features
from twinkles.image.exposure import Exposure, MaskPlane, PhotoCalib
from twinkles.image.psf import PixelPSF
from twinkles.measurement.psf_flux import psf_flux
from twinkles.sim.wcs import make_wcs

SIZE, SCALE, SKY = 512, 0.2, 600.0
FWHM_ARCSEC = 0.8


def moffat_psf() -> PixelPSF:
    image = galsim.Moffat(beta=2.5, fwhm=FWHM_ARCSEC).drawImage(nx=25, ny=25, scale=SCALE)
    kernel = image.array / image.array.sum()
    return PixelPSF(kernel[None], 0, SIZE / 2, SIZE / 2, SIZE / 2)


def blank_calexp(seed: int) -> Exposure:
    """Sky-subtracted sky noise (electrons) with a PSF, a WCS and a zero point of 31."""
    rng = np.random.default_rng(seed)
    return Exposure(
        (rng.standard_normal((SIZE, SIZE)) * np.sqrt(SKY)).astype(np.float32),
        np.zeros((SIZE, SIZE), np.int32),
        np.full((SIZE, SIZE), SKY, np.float32),
        make_wcs(53.0, -28.0, 30.0, SCALE, SIZE, SIZE),
        moffat_psf(),
        PhotoCalib(31.0),
        {"filter": "r", "visit": 7},
    )


def objects_with_galaxies(calexp: Exposure, n: int, seed: int) -> Table:
    """An Object table: ``n`` galaxies of r 19-24 and as many stars."""
    rng = np.random.default_rng(seed)
    x, y = rng.uniform(60, SIZE - 60, (2, 2 * n))
    ra, dec = calexp.wcs.all_pix2world(x, y, 0)
    return Table(
        {
            "ra": ra,
            "decl": dec,
            "extendedness": np.repeat([1.0, 0.0], n),
            "r_apFlux": 10 ** (-0.4 * (rng.uniform(19.0, 24.0, 2 * n) - 31.4)),
            "x": x,
            "y": y,
        }
    )


@pytest.mark.parametrize("seed", [1, 2])
def test_injections_come_out_with_their_flux_and_photon_noise(seed):
    calexp = blank_calexp(seed)
    rng = np.random.default_rng(seed + 10)
    config = InjectionConfig(n_per_visit=50, snr_min=20.0, snr_max=200.0, galaxy_fraction=0.0)
    no_galaxies = Table({"ra": [], "dec": []})
    pulls = []
    for _ in range(4):
        planned = plan_injections(calexp, no_galaxies, config, rng)
        injected = inject_point_sources(calexp, planned, rng)
        flux_e = np.asarray(planned["flux"]) / calexp.photo_calib.njy_per_electron
        # the variance plane carries every injected electron (the margin keeps the PSF
        # stamps on the sensor)
        np.testing.assert_allclose(
            (injected.variance - calexp.variance).sum(), flux_e.sum(), rtol=1e-4
        )
        # sources closer than a PSF stamp blend: keep the isolated ones
        x, y = np.asarray(planned["x"]), np.asarray(planned["y"])
        d = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :])
        np.fill_diagonal(d, np.inf)
        alone = d.min(axis=1) > 26
        flux, err, _ = psf_flux(injected, x[alone], y[alone])
        pulls.append((flux - flux_e[alone]) / err)
    pull = np.concatenate(pulls)
    n = len(pull)
    assert n > 80
    # the error includes the sources' own photon noise: pulls are N(0, 1) within 3 standard
    # errors (mean: 1/sqrt(n); std: 1/sqrt(2n))
    assert abs(np.mean(pull)) < 3 / np.sqrt(n)
    assert abs(np.std(pull) - 1) < 3 / np.sqrt(2 * n)


def test_injections_are_placed_as_configured():
    calexp = blank_calexp(3)
    objects = objects_with_galaxies(calexp, 80, 4)
    # an injection within 1" of a host and none within 3" of another: one per host at most
    config = InjectionConfig(
        n_per_visit=100, snr_min=3.0, snr_max=30.0, galaxy_fraction=0.3, margin_px=40
    )
    hosts = host_galaxies(objects, "r", config.galaxy_mag_max)
    is_host = (objects["extendedness"] > 0.5) & (objects["r_apFlux"] >= 10 ** (-0.4 * (23 - 31.4)))
    assert len(hosts) == is_host.sum() > 5
    planned = plan_injections(calexp, hosts, config, np.random.default_rng(5))
    refcat = objects[is_host]
    x, y = np.asarray(planned["x"]), np.asarray(planned["y"])
    assert len(planned) == 100
    assert np.all((x >= 40) & (x <= SIZE - 41) & (y >= 40) & (y <= SIZE - 41))
    apart = np.hypot(x[:, None] - x[None, :], y[:, None] - y[None, :]) + 1e9 * np.eye(len(x))
    assert apart.min() * SCALE >= config.min_separation_arcsec
    gal = np.asarray(planned["on_galaxy"])
    assert gal.sum() == 30
    to_galaxy = np.hypot(x[:, None] - refcat["x"][None, :], y[:, None] - refcat["y"][None, :])
    nearest_arcsec = to_galaxy.min(axis=1) * SCALE
    assert np.all(nearest_arcsec[gal] <= config.galaxy_offset_arcsec + 1e-6)
    # the S/N on the calexp alone is drawn between the bounds
    _, err_e, _ = psf_flux(calexp, x, y)
    snr = np.asarray(planned["flux"]) / calexp.photo_calib.njy_per_electron / err_e
    assert snr.min() >= 3.0 - 1e-6 and snr.max() <= 30.0 + 1e-6
    # log-uniform: half of them below the geometric mean, within 3 binomial sigma
    assert abs(np.mean(snr < np.sqrt(3.0 * 30.0)) - 0.5) < 3 * 0.5 / np.sqrt(100)
    with pytest.raises(ValueError, match="snr_max"):
        InjectionConfig(snr_min=5.0, snr_max=4.0)


def test_each_dia_source_finds_at_most_one_injection():
    calexp = blank_calexp(6)
    injections = Table(
        {
            "injection_id": [0, 1, 2],
            "x": [100.0, 101.5, 300.0],
            "y": [100.0, 100.0, 300.0],
            "ra": [0.0] * 3,
            "dec": [0.0] * 3,
            "flux": [1000.0] * 3,
            "mag": [23.9] * 3,
            "on_galaxy": [False] * 3,
        }
    )
    dia = Table(
        {
            "diaSourceId": [11, 12],
            "x": [101.4, 300.2],
            "y": [100.1, 300.0],
            "psFlux": [900.0, -800.0],  # the second is negative: it finds nothing
        }
    )
    matched = match_injections(injections, dia, calexp, 1.0, visit=7)
    assert list(matched["found"]) == [False, True, False]
    assert list(matched["diaSourceId"]) == [-1, 11, -1]
    assert matched["separation_arcsec"][1] == pytest.approx(np.hypot(0.1, 0.1) * SCALE)
    assert np.all(matched["visit"] == 7)


def test_the_efficiency_fit_returns_the_curve_it_was_drawn_from():
    rng = np.random.default_rng(8)
    snr = np.exp(rng.uniform(np.log(1.0), np.log(50.0), 4000))
    eps_max, s0, width = 0.96, 5.5, 0.7
    truth = eps_max / (1 + np.exp(-(snr - s0) / width))
    found = rng.uniform(size=snr.size) < truth
    fit = fit_efficiency(snr, found)
    true_snr50 = s0 - width * np.log(2 * eps_max - 1)
    # 4000 draws, ~1/4 of them within 2 widths of the transition: the 50% point to ~0.1
    assert fit["snr50"] == pytest.approx(true_snr50, abs=0.3)
    assert fit["eps_max"] == pytest.approx(eps_max, abs=0.02)
    curve = efficiency_curve(snr, found, np.array([0, 3, 5, 10, 100]))
    assert list(curve["n"]) == [
        np.sum((snr >= a) & (snr < b)) for a, b in [(0, 3), (3, 5), (5, 10), (10, 100)]
    ]
    assert curve["efficiency"][-1] == pytest.approx(eps_max, abs=3 * curve["error"][-1] + 0.01)
    assert np.isnan(fit_efficiency(snr[:5], found[:5])["snr50"])


def _difference(seed: int) -> tuple[Exposure, Exposure]:
    """A difference image (nJy, white noise) and a template with one bright galaxy."""
    calexp = blank_calexp(seed)
    template = np.zeros((SIZE, SIZE), np.float32)
    galaxy = galsim.Convolve(
        galsim.Exponential(half_light_radius=1.0, flux=2.0e5), galsim.Moffat(2.5, fwhm=0.8)
    ).drawImage(nx=61, ny=61, scale=SCALE)
    template[370:431, 370:431] = galaxy.array
    blank = Exposure(template, np.zeros_like(calexp.mask), calexp.variance, calexp.wcs)
    return calexp, blank


def test_features_tell_a_point_source_from_a_dipole_and_an_extended_residual():
    diff, template = _difference(9)
    psf = diff.psf
    fwhm = FWHM_ARCSEC / SCALE
    # S/N ~140; the noise of its 2-FWHM aperture sum is 1.7% of its flux
    point = psf.render(diff.shape, np.array([100.3]), np.array([120.6]), np.array([20000.0]))
    # a dipole: the same source shifted by 1.2 px, subtracted
    dipole = psf.render(diff.shape, np.array([300.0]), np.array([100.0]), np.array([8000.0]))
    dipole -= psf.render(diff.shape, np.array([301.2]), np.array([100.0]), np.array([8000.0]))
    # a galaxy's residual: 5% of an extended profile
    extended = galsim.Convolve(
        galsim.Exponential(half_light_radius=1.2, flux=6000.0), galsim.Moffat(2.5, fwhm=0.8)
    ).drawImage(nx=61, ny=61, scale=SCALE)
    residual = np.zeros(diff.shape)
    residual[370:431, 370:431] = extended.array
    diff.image += (point + dipole + residual).astype(np.float32)
    diff.mask[200:205, 450:455] |= int(MaskPlane.SAT)
    diff.mask[:, 480:] |= int(MaskPlane.NO_DATA)  # the template ends at column 480
    x, y = np.array([100.3, 299.6, 400.0]), np.array([120.6, 100.0, 400.0])
    flux, _, _ = psf_flux(diff, x, y)
    features = dia_source_features(diff, template, x, y, np.sign(flux), flux, fwhm, SCALE)
    # a point source fits its PSF and is positive throughout its core; the reduced chi2 of a
    # fit over the ~200 pixels within 2 FWHM scatters by sqrt(2 / 200) = 0.1
    assert features["psfChi2"][0] < 1 + 3 * 0.1
    assert features["posFraction"][0] > 0.9
    assert features["apRatio"][0] == pytest.approx(1.0, abs=3 * 0.017)
    # the dipole's core holds both lobes; its PSF fit fails by far more than the noise
    assert features["posFraction"][1] < 0.8
    assert features["psfChi2"][1] > 1 + 5 * 0.1
    # the extended residual holds more light in an aperture than its PSF fit, and sits on a
    # galaxy far brighter than itself
    assert features["apRatio"][2] > 1.3
    assert features["templateContrast"][2] > 1.0
    assert features["templateContrast"][0] < 0.05
    # distance to the saturated block: from (299.6, 100) to (450, 200) is 180 px = 36"
    assert features["satDistance"][1] == pytest.approx(
        np.hypot(450 - 299.6, 200 - 100) * SCALE, abs=0.1
    )
    # distance to the data's edge: the no-data columns from 480 on; 101 px from the image's
    # border is beyond the cap
    assert features["edgeDistance"][2] == pytest.approx(80.0)
    assert features["edgeDistance"][1] == 100.0
