"""The fast paths held against photutils, the field's reference implementation, on the same
GalSim images (not made by ``twinkles.sim``).

twinkles measures with sep, numba and vectorised numpy where photutils was measured too slow
for the per-visit targets (the module docstrings of ``detection.background``,
``detection.detect`` and ``measurement.psf_flux`` give the costs). These tests say how closely
the two agree, and where they differ, which of them is closer to the truth:

* circular apertures: ``sum_circles`` is photutils' ``subpixel`` method (same sub-pixel
  sampling), to float round-off; with fine sampling it reaches the ``exact`` overlap;
* PSF fluxes at fixed positions: the same linear fit as ``PSFPhotometry`` with an
  ``ImagePSF`` and fixed centres, differing only in how the kernel is shifted to a sub-pixel
  position (band-limited shift here, a spline there);
* the sky: the same SExtractor estimator on the same mesh as ``Background2D``;
* detection: the same threshold on the same matched filter as ``SourceFinder``.
"""

from __future__ import annotations

import galsim
import numpy as np
import pytest
from astropy.convolution import convolve
from astropy.stats import SigmaClip
from astropy.table import Table
from galsim_scenes import PIXEL_SCALE, field_exposure, psf_pattern_exposure, psf_profile
from photutils.aperture import CircularAperture, aperture_photometry
from photutils.background import Background2D, SExtractorBackground
from photutils.psf import ImagePSF, PSFPhotometry
from photutils.segmentation import SourceCatalog, SourceFinder, make_2dgaussian_kernel
from scipy.spatial import cKDTree

from twinkles.detection.background import BackgroundConfig, BackgroundTask, masked_background
from twinkles.detection.detect import DetectionTask
from twinkles.image import Exposure, MaskPlane
from twinkles.image.masks import grow_square
from twinkles.image.psf import PixelPSF
from twinkles.measurement.aperture import sum_circles
from twinkles.measurement.psf_flux import psf_flux
from twinkles.units import FWHM_PER_SIGMA

KERNEL = 25  # pixels: the PSF model's kernel size


@pytest.fixture(scope="module")
def field():
    """Stars and galaxies on a flat sky of 800 electrons per pixel (768 x 768 px)."""
    return field_exposure(seed=4, size=768)


def test_apertures_are_photutils_subpixel_apertures(field):
    exposure = field.exposure
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-2, 770, (2, 200))  # some apertures cross the edges
    radii = [3.0, 6.0, 12.0, 25.0]
    ours = sum_circles(exposure.image, x, y, radii, exposure.variance)
    image = exposure.image.astype(np.float64)
    error = np.sqrt(exposure.variance.astype(np.float64))
    for k, radius in enumerate(radii):
        theirs = aperture_photometry(
            image,
            CircularAperture(np.column_stack([x, y]), radius),
            error=error,
            method="subpixel",
            subpixels=5,
        )
        np.testing.assert_allclose(ours.flux[:, k], theirs["aperture_sum"], rtol=1e-10)
        np.testing.assert_allclose(ours.flux_err[:, k], theirs["aperture_sum_err"], rtol=1e-10)


def test_finely_sampled_apertures_reach_the_exact_overlap(field):
    """5 x 5 sub-pixels leave a sampling error on the pixels the circle's edge crosses; with
    25 x 25 it is a few hundredths of the photon noise, at every radius."""
    exposure = field.exposure
    rng = np.random.default_rng(2)
    x, y = rng.uniform(30, 738, (2, 200))
    radii = [3.0, 6.0, 12.0, 25.0]
    coarse = sum_circles(exposure.image, x, y, radii, exposure.variance)
    fine = sum_circles(exposure.image, x, y, radii, exposure.variance, subpix=25)
    for k, radius in enumerate(radii):
        exact = aperture_photometry(
            exposure.image.astype(np.float64),
            CircularAperture(np.column_stack([x, y]), radius),
            method="exact",
        )["aperture_sum"]
        fine_pull = (fine.flux[:, k] - exact) / fine.flux_err[:, k]
        coarse_pull = (coarse.flux[:, k] - exact) / coarse.flux_err[:, k]
        assert np.abs(fine_pull).max() < 0.25, radius
        assert np.std(fine_pull) < 0.5 * np.std(coarse_pull), radius


@pytest.mark.parametrize("profile", ["moffat", "kolmogorov"])
def test_psf_fluxes_are_photutils_psf_photometry_at_fixed_positions(profile):
    """Both fit the PSF's amplitude by least squares with equal weights (photutils given a
    constant error): they differ only in how the kernel is shifted to each sub-pixel
    position, a part in 10^3 of a star's flux at most."""
    rng = np.random.default_rng(3)
    size, sky = 400, 800.0
    psf = psf_profile(profile, 0.8)
    stamp = galsim.ImageD(KERNEL, KERNEL, scale=PIXEL_SCALE)
    psf.drawImage(image=stamp)
    kernel = stamp.array / stamp.array.sum()
    grid = np.arange(30.0, size - 30, 34.0)
    gx, gy = np.meshgrid(grid, grid)
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    flux = np.exp(rng.uniform(np.log(2e3), np.log(5e5), x.size))
    image = galsim.ImageD(size, size, scale=PIXEL_SCALE)
    for f, xi, yi in zip(flux, x, y, strict=True):
        bounds = galsim.BoundsI(round(xi) - 40, round(xi) + 42, round(yi) - 40, round(yi) + 42)
        psf.withFlux(f).drawImage(
            image=image[bounds & image.bounds],
            add_to_image=True,
            center=galsim.PositionD(xi + 1, yi + 1),
        )
    variance = image.array + sky
    data = image.array + rng.normal(size=variance.shape) * np.sqrt(variance)
    exposure = Exposure(
        image=data.astype(np.float32),
        mask=np.zeros(data.shape, dtype=np.int32),
        variance=variance.astype(np.float32),
        psf=PixelPSF(basis=kernel[None], degree=0, x0=size / 2, y0=size / 2, scale=size / 2),
    )
    ours, ours_err, _ = psf_flux(exposure, x, y)

    model = ImagePSF(kernel)
    model.x_0.fixed = True
    model.y_0.fixed = True
    photometry = PSFPhotometry(model, (KERNEL, KERNEL), aperture_radius=5)
    theirs = photometry(
        data,
        error=np.full(data.shape, np.sqrt(sky)),
        init_params=Table({"x": x, "y": y, "flux": flux}),
    )["flux_fit"]
    difference = (ours - np.asarray(theirs)) / ours_err
    assert np.abs(ours / np.asarray(theirs) - 1).max() < 1e-3
    assert np.abs(difference).max() < 0.3
    assert np.std(difference) < 0.1
    # and both measure the light inside the kernel: pulls against the truth
    pulls = (ours - flux * stamp.array.sum()) / ours_err
    assert abs(np.median(pulls)) < 0.3
    assert 0.85 < np.std(pulls) < 1.2


def test_the_sky_agrees_with_background2d_and_follows_the_truth(field):
    """A sky gradient added to the field: both estimates are within a few hundredths of the
    pixel noise of each other inside the sensor (where neither extrapolates), and of the
    truth; the sources' wings raise both alike."""
    exposure = field.exposure.copy()
    yy, xx = np.mgrid[: exposure.shape[0], : exposure.shape[1]]
    gradient = 40.0 * xx / exposure.shape[1] + 25.0 * np.sin(yy / 300.0)
    exposure.image += gradient.astype(np.float32)
    truth = field.sky + gradient
    sigma = np.sqrt(field.sky)
    mesh = 64
    ours = (
        BackgroundTask(BackgroundConfig(mesh_size=mesh, filter_size=3))
        .run(exposure, subtract=False)
        .model.evaluate()
    )
    theirs = Background2D(
        exposure.image.astype(np.float64),
        mesh,
        filter_size=3,
        sigma_clip=SigmaClip(3.0),
        bkg_estimator=SExtractorBackground(),
    ).background
    inner = (slice(mesh // 2, -mesh // 2),) * 2
    assert np.std((ours - theirs)[inner]) / sigma < 0.1
    assert np.abs(np.median((ours - theirs)[inner])) / sigma < 0.03
    for estimate in (ours, theirs):
        residual = (estimate - truth)[inner] / sigma
        assert 0.0 < np.median(residual) < 0.15  # the sources' wings
        assert np.std(residual) < 0.12


def test_a_masked_sky_agrees_with_background2d_and_follows_the_truth(field):
    """``masked_background`` (a difference image's background: sources left out by a mask, the
    estimate made on every other pixel) against Background2D with the same mask on every
    pixel, and both against the truth."""
    detected = field.exposure.copy()
    BackgroundTask().run(detected)
    DetectionTask().run(detected)
    ignore = grow_square(detected.masked(MaskPlane.DETECTED), 3)
    exposure = field.exposure
    yy, xx = np.mgrid[: exposure.shape[0], : exposure.shape[1]]
    gradient = 40.0 * xx / exposure.shape[1] + 25.0 * np.sin(yy / 300.0)
    image = exposure.image + gradient.astype(np.float32)
    sky = field.sky + gradient
    sigma = float(np.sqrt(np.median(exposure.variance)))
    mesh = 64
    ours = masked_background(image, ignore, mesh)
    theirs = Background2D(
        image.astype(np.float64),
        mesh,
        mask=ignore,
        filter_size=3,
        sigma_clip=SigmaClip(3.0),
        bkg_estimator=SExtractorBackground(),
    ).background
    inner = (slice(mesh // 2, -mesh // 2),) * 2
    assert ours.shape == image.shape and ours.dtype == np.float32
    assert np.std((ours - theirs)[inner]) / sigma < 0.1
    assert np.abs(np.median((ours - theirs)[inner])) / sigma < 0.03
    for estimate in (ours, theirs):
        residual = (estimate - sky)[inner] / sigma
        assert abs(np.median(residual)) < 0.05
        assert np.std(residual) < 0.1
    assert not masked_background(image, np.ones(image.shape, bool), mesh).any()
    with pytest.raises(ValueError, match="background mesh of 3 px"):
        masked_background(image, ignore, 3)


def test_detection_finds_what_source_finder_finds():
    """Stars of S/N 3-200 under a PSF whose width changes over the sensor: at the same 5-sigma
    threshold on the same matched filter both find the same sources, every star of S/N >= 10,
    and place the bright ones within a tenth of a pixel of the truth."""
    scene = psf_pattern_exposure(seed=5, size=512, flux_range=(300.0, 2.0e5))
    exposure = scene.exposure
    BackgroundTask().run(exposure)
    detected = DetectionTask().run(exposure)
    ours = np.column_stack([detected.sources["x"], detected.sources["y"]])

    data = exposure.image.astype(np.float64)
    sky_sigma = float(np.sqrt(np.median(exposure.variance)))
    kernel = make_2dgaussian_kernel(detected.fwhm, size=2 * int(2 * detected.fwhm) + 1)
    filtered = convolve(data, kernel)
    filtered_sigma = sky_sigma * np.sqrt(np.sum(kernel.array**2))
    segmentation = SourceFinder(n_pixels=5, progress_bar=False)(filtered, 5.0 * filtered_sigma)
    catalog = SourceCatalog(data, segmentation, convolved_data=filtered)
    theirs = np.column_stack([catalog.x_centroid, catalog.y_centroid])

    # one to one: each finds what the other finds
    d_ours, _ = cKDTree(theirs).query(ours)
    d_theirs, _ = cKDTree(ours).query(theirs)
    assert np.mean(d_ours < 1.5) >= 0.95 and np.mean(d_theirs < 1.5) >= 0.95

    truth = np.column_stack([scene.x, scene.y])
    n_eff = 4 * np.pi * (detected.fwhm / FWHM_PER_SIGMA) ** 2
    snr = scene.flux / (sky_sigma * np.sqrt(n_eff))
    assert np.sum(snr >= 10) > 100
    for positions in (ours, theirs):
        distance, _ = cKDTree(positions).query(truth)
        assert np.all(distance[snr >= 10] < 1.5)
        bright = snr >= 50
        assert np.sqrt(np.mean(distance[bright] ** 2)) < 0.15
