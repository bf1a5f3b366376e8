"""Detection on coadd-like images: noise that the variance plane underestimates (warping
correlates it), a sky lifted by sources too faint to detect, and fields where more than a
quarter of the pixels lie above the threshold."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from twinkles.detection.detect import (
    DetectionConfig,
    DetectionTask,
    gaussian_kernel_1d,
    peak_centroid,
)
from twinkles.image import Exposure
from twinkles.image.psf import PixelPSF
from twinkles.units import FWHM_PER_SIGMA

SIZE = 1024
FWHM = 4.0  # pixels: the detection filter's (the guess used before a PSF exists)


def _gaussian_psf(fwhm: float) -> PixelPSF:
    yy, xx = np.mgrid[-12:13, -12:13]
    k = np.exp(-0.5 * (xx**2 + yy**2) / (fwhm / FWHM_PER_SIGMA) ** 2)
    return PixelPSF((k / k.sum())[None], 0, SIZE / 2, SIZE / 2, SIZE / 2)


def _exposure(image: np.ndarray, variance: float, psf: PixelPSF | None = None) -> Exposure:
    return Exposure(
        image.astype(np.float32),
        np.zeros(image.shape, np.int32),
        np.full(image.shape, variance, np.float32),
        psf=psf,
    )


def _gaussian_stars(rng, n: int, sigma: float, fluxes: np.ndarray) -> tuple[np.ndarray, ...]:
    x = rng.uniform(40, SIZE - 40, n)
    y = rng.uniform(40, SIZE - 40, n)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    image = np.zeros((SIZE, SIZE))
    for xi, yi, f in zip(x, y, fluxes, strict=True):
        box = (slice(int(yi) - 15, int(yi) + 16), slice(int(xi) - 15, int(xi) + 16))
        r2 = (xx[box] - xi) ** 2 + (yy[box] - yi) ** 2
        image[box] += f * np.exp(-0.5 * r2 / sigma**2) / (2 * np.pi * sigma**2)
    return image, x, y


@pytest.fixture(scope="module")
def correlated_field():
    """White noise correlated by a resampling-like kernel (the variance plane holds its true
    per-pixel variance, which underestimates the filtered noise), a sky offset, and stars."""
    rng = np.random.default_rng(7)
    smooth = np.array([0.1, 0.8, 0.1])  # per axis
    noise = ndimage.correlate1d(rng.normal(size=(SIZE, SIZE)), smooth, axis=0, mode="wrap")
    noise = ndimage.correlate1d(noise, smooth, axis=1, mode="wrap")
    pixel_var = float(np.sum(smooth**2) ** 2)
    # filtered noise, actual over predicted, for the separable Gaussian filter g:
    # per axis the variance ratio is sum((g * s)^2) / (sum(g^2) sum(s^2)); the two axes'
    # product is the variance ratio, whose square root is this per-axis ratio
    g = gaussian_kernel_1d(FWHM)
    ratio = float(np.sum(np.convolve(g, smooth) ** 2) / (np.sum(g**2) * np.sum(smooth**2)))
    # the sky offset's unit: the predicted filtered noise, sigma_pixel * sum(g^2)
    offset_unit = np.sqrt(pixel_var) * float(np.sum(g**2))
    n_stars = 150
    stars, x, y = _gaussian_stars(
        rng, n_stars, FWHM / FWHM_PER_SIGMA, rng.uniform(30, 400, n_stars)
    )
    return {
        "image": stars + noise,
        "offset_unit": offset_unit,
        "noise": noise,
        "variance": pixel_var,
        "ratio": ratio,
        "x": x,
        "y": y,
    }


def _spurious(sources, x, y, reach: float = 3.0) -> int:
    if len(sources) == 0:
        return 0
    d = np.hypot(sources["x"][:, None] - x[None, :], sources["y"][:, None] - y[None, :])
    return int(np.sum(d.min(axis=1) > reach))


@pytest.mark.parametrize("offset", [0.5, 3.0])
def test_sky_normalised_detection_measures_the_noise_the_variance_plane_misses(
    correlated_field, offset
):
    # offset: the sky left over, in units of the filtered noise the variance plane predicts
    # (a deep coadd's can be several, which hides most of the sky from a first estimate)
    f = {
        **correlated_field,
        "image": correlated_field["image"] + offset * correlated_field["offset_unit"],
    }
    plain = DetectionTask(DetectionConfig(guess_fwhm=FWHM))
    normed = DetectionTask(DetectionConfig(guess_fwhm=FWHM, sky_normalise=True))
    psf = _gaussian_psf(FWHM)
    exp = _exposure(f["image"], f["variance"], psf)

    # with a Gaussian filter of FWHM 4 px, the filtered noise is the analytic value
    nu4 = plain.significance(_exposure(f["noise"], f["variance"]), FWHM)
    assert float(np.std(nu4)) == pytest.approx(f["ratio"], rel=0.02)
    # the detection filters with the PSF, trimmed: what the sky normalisation must find
    nu_noise = plain.significance(_exposure(f["noise"], f["variance"], psf))
    actual = 1.4826 * float(np.median(np.abs(nu_noise - np.median(nu_noise))))
    assert actual > 1.3  # the variance plane misses a quarter of the noise or more

    before = plain.run(exp.copy())
    after = normed.run(exp.copy())
    assert before.sky_noise == 1.0
    # sep's clipped rms reads a Gaussian's sigma 2-3% low
    assert after.sky_noise == pytest.approx(actual, rel=0.04)
    # noise peaks taken for sources: many before, next to none after
    assert _spurious(before.sources, f["x"], f["y"]) >= 10
    assert _spurious(after.sources, f["x"], f["y"]) <= 2
    # the stars that stand 8 actual sigma above the sky are all still found
    nu = plain.significance(exp)
    z = (nu - np.median(nu)) / actual
    peak = ndimage.maximum_filter(z, size=5)[f["y"].astype(int), f["x"].astype(int)]
    bright = peak > 8.0
    assert bright.sum() > 50
    d = np.hypot(
        after.sources["x"][None, :] - f["x"][bright, None],
        after.sources["y"][None, :] - f["y"][bright, None],
    )
    assert np.all(d.min(axis=1) < 2.0)


def test_a_field_mostly_above_the_threshold_is_detected_whole():
    """A deep coadd can hold more pixels above the threshold than a sensor's working room
    (a quarter of the image): sep is given more, rather than failing."""
    rng = np.random.default_rng(3)
    step = 32
    centres = np.arange(step // 2, SIZE, step) + rng.uniform(-3, 3, (2, SIZE // step))
    x, y = np.meshgrid(centres[0], centres[1])
    x, y = x.ravel(), y.ravel()
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    image = rng.normal(0.0, 1.0, (SIZE, SIZE))
    sigma = 6.0
    for xi, yi in zip(x, y, strict=True):
        box = (
            slice(max(int(yi) - 30, 0), int(yi) + 31),
            slice(max(int(xi) - 30, 0), int(xi) + 31),
        )
        r2 = (xx[box] - xi) ** 2 + (yy[box] - yi) ** 2
        image[box] += 6.0 * np.exp(-0.5 * r2 / sigma**2)
    found = DetectionTask(DetectionConfig(guess_fwhm=FWHM)).run(_exposure(image, 1.0))
    assert np.mean(found.segmentation > 0) > 0.3  # beyond the first working room (300,000)
    d = np.hypot(found.sources["x"][:, None] - x[None, :], found.sources["y"][:, None] - y[None, :])
    assert np.all(d.min(axis=0) < 2.0)  # every galaxy found
    assert len(found.sources) == len(x)


@pytest.mark.parametrize(("x0", "y0"), [(40.0, 40.0), (40.3, 39.6), (39.55, 40.45)])
def test_peak_centroid_finds_a_point_source_between_pixels(x0, y0):
    """A noise-free point source (Gaussian PSF of sigma 2 px) filtered with the PSF: the
    parabola through the filtered peak and its neighbours lies within 0.05 px of the source,
    also where the variance plane carries the source's own photon noise (which moves the
    significance image's peak, not the filtered image's)."""
    yy, xx = np.mgrid[0:80, 0:80]
    image = 1e4 * np.exp(-0.5 * ((xx - x0) ** 2 + (yy - y0) ** 2) / 2.0**2)
    ky, kx = np.mgrid[-4:5, -4:5]
    kernel = np.exp(-0.5 * (kx**2 + ky**2) / 2.0**2)
    kernel /= kernel.sum()
    x, y = peak_centroid(image, kernel, np.array([round(x0)]), np.array([round(y0)]))
    assert abs(x[0] - x0) < 0.05 and abs(y[0] - y0) < 0.05


def test_peak_centroid_climbs_at_most_three_pixels_to_a_maximum():
    """Given a pixel two from the filtered maximum, it finds the maximum; on a slope with
    none, it stops three pixels uphill and keeps that pixel's coordinate."""
    yy, xx = np.mgrid[0:40, 0:40]
    kernel = np.ones((3, 3)) / 9.0
    bump = np.exp(-0.5 * ((xx - 20.2) ** 2 + (yy - 19.9) ** 2) / 3.0**2)
    x, y = peak_centroid(bump, kernel, np.array([18]), np.array([21]))
    assert abs(x[0] - 20.2) < 0.1 and abs(y[0] - 19.9) < 0.1
    x, y = peak_centroid(xx.astype(float), kernel, np.array([15]), np.array([15]))
    assert x[0] == 18.0 and y[0] == 15.0
