"""Circular apertures at many radii in one pass: sep's sums, and the flux of a known source."""

from __future__ import annotations

import numpy as np
import pytest
import sep

from twinkles.measurement.aperture import sum_circles

RADII = [3.0, 4.5, 6.0, 9.0, 12.0, 17.0, 25.0]


@pytest.fixture(scope="module")
def scene():
    """Noise, sources on a segmentation map, bad pixels, a NaN and positions near the edges."""
    rng = np.random.default_rng(7)
    h, w = 180, 150
    image = rng.normal(0.0, 3.0, (h, w)).astype(np.float32)
    variance = rng.uniform(8.0, 10.0, (h, w)).astype(np.float32)
    # near and on the edges; not round numbers, whose sub-pixel distances can tie the radius
    # exactly (3-4-5 triangles), where sep and these sums may round either way
    x = np.concatenate([rng.uniform(20, w - 20, 25), [1.3137, w - 2.2291, 70.1173, 40.5379]])
    y = np.concatenate([rng.uniform(20, h - 20, 25), [90.0713, 15.7211, 0.4129, h - 1.0381]])
    segmentation = np.zeros((h, w), dtype=np.int32)
    yy, xx = np.mgrid[:h, :w]
    for i, (xc, yc) in enumerate(zip(x, y, strict=True)):
        image += (200.0 * np.exp(-((xx - xc) ** 2 + (yy - yc) ** 2) / 8.0)).astype(np.float32)
        segmentation[(np.hypot(xx - xc, yy - yc) < 3.0) & (segmentation == 0)] = i + 1
    bad = rng.random((h, w)) < 0.01
    return image, variance, x, y, bad, segmentation


def test_sums_equal_sep_at_every_radius(scene):
    image, variance, x, y, bad, segmentation = scene
    ids = np.arange(1, len(x) + 1, dtype=np.int32)
    got = sum_circles(image, x, y, RADII, variance, bad, segmentation, ids)
    assert got.flux.shape == (len(x), len(RADII))
    for k, r in enumerate(RADII):
        flux, err, _ = sep.sum_circle(
            image, x, y, r, var=variance, mask=bad, segmap=segmentation, seg_id=ids, subpix=5
        )
        np.testing.assert_allclose(got.flux[:, k], flux, rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(got.flux_err[:, k], err, rtol=1e-9)
        # without a mask sep leaves neighbours' pixels out instead of replacing them
        left_out, left_out_err, _ = sep.sum_circle(
            np.where(bad, 0, image),
            x,
            y,
            r,
            var=np.where(bad, 0, variance),
            segmap=segmentation,
            seg_id=ids,
            subpix=5,
        )
        np.testing.assert_allclose(got.unmasked_sum[:, k], left_out, rtol=1e-9, atol=1e-6)
        np.testing.assert_allclose(got.unmasked_var[:, k], left_out_err**2, rtol=1e-9)
        # a bad pixel overlaps the aperture (sep's own flag also counts neighbours' pixels,
        # and bad pixels near the edge that the circle misses)
        bad_overlap = sep.sum_circle(bad.astype(np.float32), x, y, r, subpix=5)[0]
        np.testing.assert_array_equal(got.has_bad[:, k], bad_overlap > 0)
        # truncation: the circle reaches beyond the image's outer pixel edges
        beyond = (x - r < -0.5) | (y - r < -0.5) | (x + r > 149.5) | (y + r > 179.5)
        np.testing.assert_array_equal(got.truncated[:, k], beyond)


def test_area_and_masked_area(scene):
    image, variance, x, y, bad, segmentation = scene
    ids = np.arange(1, len(x) + 1, dtype=np.int32)
    got = sum_circles(image, x, y, RADII, variance, bad, segmentation, ids)
    ones = np.ones_like(image)
    for k, r in enumerate(RADII):
        area = sep.sum_circle(ones, x, y, r, subpix=5)[0]
        np.testing.assert_allclose(got.area[:, k], area, rtol=1e-12)
        masked = bad | ((segmentation != 0) & (segmentation != ids[:, None, None]))
        unmasked = np.array(
            [
                sep.sum_circle(ones * ~m, x[i : i + 1], y[i : i + 1], r, subpix=5)[0][0]
                for i, m in enumerate(masked)
            ]
        )
        np.testing.assert_allclose(got.masked_area[:, k], area - unmasked, atol=1e-9)


def test_radii_in_any_order_and_without_options(scene):
    image, _, x, y, _, _ = scene
    radii = [9.0, 3.0, 17.0]
    got = sum_circles(image, x, y, radii)
    for k, r in enumerate(radii):
        np.testing.assert_allclose(
            got.flux[:, k], sep.sum_circle(image, x, y, r, subpix=5)[0], rtol=1e-9, atol=1e-6
        )
    assert np.all(np.isnan(got.flux_err))
    assert not got.has_bad.any()


def test_flux_of_a_gaussian_star_within_its_error():
    """A noisy Gaussian star: the 5-sigma aperture holds 1 - exp(-12.5) of its flux."""
    rng = np.random.default_rng(3)
    h = w = 101
    yy, xx = np.mgrid[:h, :w]
    sigma, flux, sky_var = 2.0, 5.0e4, 25.0
    xc, yc = 50.3, 49.8
    # pixel-integrated profile: fine sub-sampling of the Gaussian
    fine = 8
    offsets = (np.arange(fine) + 0.5) / fine - 0.5
    model = np.zeros((h, w))
    for oy in offsets:
        for ox in offsets:
            model += np.exp(-((xx + ox - xc) ** 2 + (yy + oy - yc) ** 2) / (2 * sigma**2))
    model *= flux / (2 * np.pi * sigma**2 * fine**2)
    variance = sky_var + model
    image = model + rng.normal(0.0, np.sqrt(variance))
    got = sum_circles(image, [xc], [yc], [5 * sigma], variance)
    expected = flux * (1 - np.exp(-12.5))
    assert abs(got.flux[0, 0] - expected) < 4 * got.flux_err[0, 0]
    assert got.flux_err[0, 0] == pytest.approx(np.sqrt(np.pi * 100 * sky_var + expected), rel=0.02)


def test_non_finite_pixels_are_masked_and_flagged():
    image = np.ones((40, 40), dtype=np.float32)
    image[20, 21] = np.nan
    got = sum_circles(image, [20.0], [20.0], [2.0, 5.0], np.ones_like(image))
    assert got.has_bad[0].all()
    np.testing.assert_allclose(got.flux[0], got.area[0])  # replaced by the mean, 1


def test_all_masked_gives_nan():
    image = np.ones((30, 30), dtype=np.float32)
    got = sum_circles(image, [15.0], [15.0], [3.0], bad=np.ones(image.shape, dtype=bool))
    assert np.isnan(got.flux[0, 0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(radii=[3.0, 3.0]), "radii must differ"),
        (dict(radii=[-1.0]), "radii must be positive"),
        (dict(x=[np.nan]), "positions must be finite"),
        (dict(variance=np.ones((5, 5))), "variance has shape"),
        (dict(segmentation=np.zeros((30, 30), dtype=np.int32)), "seg_id per source"),
    ],
)
def test_bad_arguments_name_the_problem(kwargs, message):
    args = dict(image=np.zeros((30, 30)), x=[10.0], y=[10.0], radii=[3.0])
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        sum_circles(**args)
