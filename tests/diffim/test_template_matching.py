"""PSF homogenisation of a template warp whose PSF changes across the sensor, drawn with
GalSim (not twinkles.sim): after matching, every star has the target PSF, in the corners as at
the centre, so the template's PSF model (the target) measures their fluxes."""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from twinkles.coadd.warp import CalexpModel
from twinkles.diffim.subtract import kernel_sigma
from twinkles.diffim.template import match_warp, psf_grid, target_psf
from twinkles.geometry import polynomial_terms
from twinkles.image.exposure import Exposure, MaskPlane, PhotoCalib
from twinkles.image.psf import PixelPSF
from twinkles.measurement.psf_flux import psf_flux
from twinkles.sim.wcs import make_wcs
from twinkles.units import AB_MAG_OF_1_NJY

SIZE, SCALE, FWHM, HALF = 400, 0.2, 0.75, 12


def _width(pattern: str, x, y):
    """The PSF's FWHM over the one at the centre: 15% wider at the corners (radial), or 15%
    wider from one corner to the opposite one (linear)."""
    c = 0.5 * (SIZE - 1)
    X, Y = (np.asarray(x) - c) / c, (np.asarray(y) - c) / c
    if pattern == "radial":
        return 1.0 + 0.075 * (X**2 + Y**2)
    if pattern == "none":
        return np.ones_like(X)
    return 1.0 + 0.0375 * (X + Y)


def _profile(profile: str, fwhm: float) -> galsim.GSObject:
    if profile == "moffat":
        return galsim.Moffat(beta=3.0, fwhm=fwhm)
    return galsim.Convolve(
        galsim.Kolmogorov(fwhm=np.sqrt(fwhm**2 - 0.3**2)), galsim.Gaussian(fwhm=0.3)
    )


def _psf_model(profile: str, pattern: str) -> PixelPSF:
    """A PixelPSF of degree 2 fitted to GalSim images on a 5 x 5 grid."""
    grid = np.linspace(0, SIZE - 1, 5)
    xs, ys = (a.ravel() for a in np.meshgrid(grid, grid))
    images = np.array(
        [
            _profile(profile, FWHM * _width(pattern, x, y))
            .drawImage(nx=2 * HALF + 1, ny=2 * HALF + 1, scale=SCALE)
            .array.ravel()
            for x, y in zip(xs, ys, strict=True)
        ]
    )
    c = 0.5 * (SIZE - 1)
    basis = np.linalg.lstsq(polynomial_terms((xs - c) / c, (ys - c) / c, 2), images, rcond=None)[0]
    return PixelPSF(basis.reshape(-1, 2 * HALF + 1, 2 * HALF + 1), 2, c, c, c)


@pytest.mark.parametrize(("profile", "pattern"), [("moffat", "radial"), ("kolmogorov", "linear")])
def test_a_matched_warp_has_the_target_psf_everywhere(profile, pattern):
    rng = np.random.default_rng(11)
    grid = np.arange(25, SIZE - 24, 35, dtype=float)
    x, y = (a.ravel() + rng.uniform(-3, 3, a.size) for a in np.meshgrid(grid, grid))
    flux = np.full(x.size, 1e6)
    image = galsim.ImageD(SIZE, SIZE, scale=SCALE)
    for xi, yi, fi in zip(x, y, flux, strict=True):
        star = _profile(profile, FWHM * _width(pattern, xi, yi)).withFlux(fi)
        bounds = (
            galsim.BoundsI(round(xi) - 24, round(xi) + 26, round(yi) - 24, round(yi) + 26)
            & image.bounds
        )
        star.drawImage(
            image=image[bounds], add_to_image=True, center=galsim.PositionD(xi + 1, yi + 1)
        )
    wcs = make_wcs(150.0, 2.0, 0.0, SCALE, SIZE, SIZE)
    psf = _psf_model(profile, pattern)
    warp = Exposure(
        image.array.astype(np.float32),
        np.zeros((SIZE, SIZE), np.int32),
        np.ones((SIZE, SIZE), np.float32),
        wcs,
        psf,
        PhotoCalib(AB_MAG_OF_1_NJY),
        {},
    )
    model = CalexpModel(1, wcs, psf, (SIZE, SIZE))
    points = psf_grid(model, wcs, (SIZE, SIZE))
    sigmas = [kernel_sigma(k) for k in points.kernels]
    assert max(sigmas) / min(sigmas) > 1.04  # the PSF does change over the sensor
    target = target_psf(points.kernels, 0.5)
    matched = match_warp(warp, model, wcs, (SIZE, SIZE), target, points)
    assert matched.spatial_degree >= 2
    # every star now has the target's shape: its flux read with the target PSF is the same
    # part of its flux in the corners as at the centre (the old match at the centre alone:
    # 1.6-2% scatter), and its width is the target's
    inner = (x > 30) & (x < SIZE - 31) & (y > 30) & (y < SIZE - 31)
    measured, _, _ = psf_flux(matched.warp, x[inner], y[inner])
    ratio = measured / flux[inner]
    corner = np.hypot(x[inner] - SIZE / 2, y[inner] - SIZE / 2) > 0.35 * SIZE
    assert np.std(ratio) < 0.003
    assert abs(np.median(ratio[corner]) - np.median(ratio[~corner])) < 0.004
    widths = [
        kernel_sigma(
            matched.warp.image[
                round(yi) - HALF : round(yi) + HALF + 1, round(xi) - HALF : round(xi) + HALF + 1
            ]
        )
        for xi, yi in zip(x[inner], y[inner], strict=True)
    ]
    assert np.max(np.abs(np.array(widths) / kernel_sigma(target) - 1)) < 0.02


def test_pixels_the_kernel_spreads_a_saturated_core_into_are_masked():
    """A saturated core's repaired values reach every pixel under the kernel; those pixels
    must carry SAT so the template leaves them out (they made bright stars 3-8% faint in the
    demo's templates, a residual at them in every difference)."""
    star = _profile("moffat", FWHM).withFlux(3e6)
    image = star.drawImage(nx=SIZE, ny=SIZE, scale=SCALE).array.astype(np.float32)
    full_well = 0.2 * image.max()
    saturated = image > full_well
    clipped = np.where(saturated, full_well, image).astype(np.float32)  # a flat-topped repair
    mask = np.where(saturated, int(MaskPlane.SAT), 0).astype(np.int32)
    wcs = make_wcs(150.0, 2.0, 0.0, SCALE, SIZE, SIZE)
    psf = _psf_model("moffat", "none")
    model = CalexpModel(1, wcs, psf, (SIZE, SIZE))
    points = psf_grid(model, wcs, (SIZE, SIZE))
    target = target_psf(points.kernels, 0.5)

    def matched(pixels, planes):
        warp = Exposure(
            pixels,
            planes,
            np.ones((SIZE, SIZE), np.float32),
            wcs,
            psf,
            PhotoCalib(AB_MAG_OF_1_NJY),
            {},
        )
        return match_warp(warp, model, wcs, (SIZE, SIZE), target, points).warp

    true, repaired = matched(image, np.zeros_like(mask)), matched(clipped, mask)
    flagged = (repaired.mask & int(MaskPlane.SAT)) != 0
    wrong = np.abs(repaired.image - true.image) > 1e-4 * full_well
    assert saturated.sum() >= 9 and wrong.sum() > 2 * saturated.sum()
    assert not np.any(wrong & ~flagged)
    # and no more than the kernel's reach is given up
    assert flagged.sum() <= (np.sqrt(saturated.sum()) + 2 * 10 + 2) ** 2
