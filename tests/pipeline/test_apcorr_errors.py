"""The aperture correction's ratios: the error of a ratio of nested apertures (the growth
steps) and of the inner aperture over the PSF flux (the first step), checked against the
scatter of the ratio over many noise realisations of one star (a Moffat profile drawn with
numpy, Poisson and sky noise)."""

from __future__ import annotations

import numpy as np
import pytest

from twinkles.image import Exposure
from twinkles.image.psf import PixelPSF
from twinkles.measurement.apcorr import local_aperture_flux, nested_ratio_error, ratio_error
from twinkles.measurement.aperture import sum_circles
from twinkles.measurement.psf_flux import psf_aperture_covariance, psf_flux

RADII = [6.0, 12.0, 25.0]
ANNULUS = (30.0, 45.0)


def _moffat_star(size: int, flux: float, fwhm: float, beta: float) -> np.ndarray:
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    profile = (1.0 + (xx**2 + yy**2) / alpha**2) ** -beta
    return flux * profile / profile.sum()


@pytest.mark.parametrize("flux", [3e4, 3e5])
def test_nested_ratio_errors_match_the_scatter_of_the_ratios(flux):
    rng = np.random.default_rng(7)
    size, sky = 121, 800.0
    model = _moffat_star(size, flux, fwhm=4.0, beta=3.0)
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    segmentation = (np.hypot(xx, yy) < 20).astype(np.int32)  # the star's footprint: label 1
    centre = np.array([size // 2], float)
    ratios, errors, naive = [], [], []
    for _ in range(400):
        image = (rng.poisson(model + sky) - sky).astype(np.float32)
        exposure = Exposure(
            image,
            np.zeros((size, size), np.int32),
            (model + sky).astype(np.float32),
        )
        f, e, s = local_aperture_flux(
            exposure, segmentation, [0], centre, centre, RADII, ANNULUS, sky_terms=True
        )
        f, e, s = f[0], e[0], s[0]
        ratios.append([f[1] / f[0], f[2] / f[1]])
        errors.append(
            [
                nested_ratio_error(f[1], e[1], s[1], f[0], e[0], s[0]),
                nested_ratio_error(f[2], e[2], s[2], f[1], e[1], s[1]),
            ]
        )
        naive.append(
            [
                f[1] / f[0] * np.hypot(e[1] / f[1], e[0] / f[0]),
                f[2] / f[1] * np.hypot(e[2] / f[2], e[1] / f[1]),
            ]
        )
    scatter = np.std(ratios, axis=0)
    predicted = np.median(errors, axis=0)
    # the std of 400 draws is known to ~3.5%
    np.testing.assert_allclose(predicted / scatter, 1.0, atol=0.1)
    # errors added as if the fluxes were independent overstate both growths
    assert np.all(np.median(naive, axis=0) / scatter > 1.15)


@pytest.mark.parametrize("flux", [3e4, 3e5])
def test_inner_over_psf_flux_errors_match_the_scatter_of_the_ratios(flux):
    rng = np.random.default_rng(11)
    size, sky = 121, 800.0
    # the star off the pixel grid, so the aperture's edge pixels are partly inside
    dx, dy = 0.3, -0.2
    yy, xx = np.mgrid[0:size, 0:size] - size // 2
    alpha = 4.0 / (2.0 * np.sqrt(2.0 ** (1.0 / 3.0) - 1.0))
    profile = (1.0 + ((xx - dx) ** 2 + (yy - dy) ** 2) / alpha**2) ** -3.0
    model = flux * profile / profile.sum()
    # the PSF model: the same profile, centred, on a 25-pixel kernel
    k = np.arange(-12, 13)
    kernel = (1.0 + (k[None, :] ** 2 + k[:, None] ** 2) / alpha**2) ** -3.0
    psf = PixelPSF((kernel / kernel.sum())[None], 0, size / 2, size / 2, size / 2)
    segmentation = (np.hypot(xx, yy) < 20).astype(np.int32)
    x, y = np.array([size // 2 + dx]), np.array([size // 2 + dy])
    ratios, errors, naive = [], [], []
    for _ in range(400):
        image = (rng.poisson(model + sky) - sky).astype(np.float32)
        exposure = Exposure(
            image, np.zeros((size, size), np.int32), (model + sky).astype(np.float32), psf=psf
        )
        inner, inner_err = local_aperture_flux(exposure, segmentation, [0], x, y, 6.0, ANNULUS)
        fit, fit_err, _ = psf_flux(exposure, x, y)
        shared = psf_aperture_covariance(exposure, x, y, 6.0, segmentation, np.array([1]))
        ratios.append(inner[0] / fit[0])
        errors.append(ratio_error(inner, inner_err, fit, fit_err, shared)[0])
        naive.append(inner[0] / fit[0] * np.hypot(inner_err[0] / inner[0], fit_err[0] / fit[0]))
    scatter = np.std(ratios)
    np.testing.assert_allclose(np.median(errors) / scatter, 1.0, atol=0.1)
    # as independent measurements, the errors overstate the ratio's by far
    assert np.median(naive) / scatter > 1.3


def test_psf_aperture_covariance_is_the_psf_weighted_variance_inside_the_circle():
    # flat variance, a constant kernel: cov = v sum(P a) / sum(P^2), with a = 1 in the
    # circle's whole pixels; outside the kernel's footprint no pixel adds
    size = 61
    kernel = np.zeros((25, 25))
    kernel[10:15, 10:15] = 1.0 / 25
    psf = PixelPSF(kernel[None], 0, size / 2, size / 2, size / 2)
    exposure = Exposure(
        np.zeros((size, size), np.float32),
        np.zeros((size, size), np.int32),
        np.full((size, size), 4.0, np.float32),
        psf=psf,
    )
    centre = np.array([30.0])
    # a circle of 6 pixels holds the whole 5 x 5 kernel: cov = 4 * 1 / (1 / 25)
    wide = psf_aperture_covariance(exposure, centre, centre, 6.0)
    np.testing.assert_allclose(wide, 4.0 * 25.0)
    # a smaller circle cuts the kernel's pixels: cov = 4 x the kernel's area inside it, as
    # the aperture photometry counts the pixels it overlaps (sub-sampled at the edge)
    block = np.zeros((size, size))
    block[28:33, 28:33] = 1.0
    for radius in (1.5, 2.3):
        area = sum_circles(block, centre, centre, [radius]).flux[0, 0]
        assert 0 < area < 25
        narrow = psf_aperture_covariance(exposure, centre, centre, radius)
        np.testing.assert_allclose(narrow, 4.0 * area, rtol=1e-12)
    # another source's segment is left out of the aperture
    segmentation = np.zeros((size, size), np.int32)
    segmentation[:, 31:] = 2
    half = psf_aperture_covariance(exposure, centre, centre, 6.0, segmentation, np.array([1]))
    np.testing.assert_allclose(half, 4.0 * 15.0)


def test_a_growth_maps_covariance_follows_the_nested_errors_unless_a_floor_was_added():
    from twinkles.measurement.apcorr import _nested_covariance
    from twinkles.measurement.sensor_map import SensorMap, SensorMapFit

    fitted = SensorMap("linear", np.array([1.1, 0.01, 0.0]), np.diag([4e-6, 1e-6, 1e-6]))
    used = np.array([True, True, True, False])
    quadrature = np.array([0.02, 0.03, 0.04, 0.05])
    nested = quadrature * np.array([0.7, 0.8, 0.75, 0.1])  # the unused star does not count

    def fit(floor: float) -> SensorMapFit:
        return SensorMapFit(fitted, np.zeros(4), used, floor, {})

    scaled = _nested_covariance(fit(0.0), quadrature, nested)
    np.testing.assert_allclose(scaled.covariance, fitted.covariance * 0.75**2)
    np.testing.assert_array_equal(scaled.coefficients, fitted.coefficients)
    assert scaled.model == fitted.model
    # where the scatter needed a floor, the inflated errors already measure it
    assert _nested_covariance(fit(0.003), quadrature, nested) is fitted


def test_sky_scatter_is_the_local_skies_spread_beyond_their_errors():
    from twinkles.measurement.apcorr import sky_scatter

    rng = np.random.default_rng(3)
    errors = rng.uniform(0.2, 0.4, 400)
    # pixel noise alone: nothing beyond it
    assert sky_scatter(rng.normal(size=400) * errors, errors) < 0.1
    # undetected galaxies lift each annulus differently: 0.5 per pixel beyond the noise
    skies = 0.3 + rng.normal(size=400) * errors + rng.normal(size=400) * 0.5
    assert sky_scatter(skies, errors) == pytest.approx(0.5, abs=0.06)
    # too few skies to tell
    assert sky_scatter(skies[:2], errors[:2]) == 0.0
