"""The difference-imaging building blocks on synthetic images with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table
from scipy import ndimage

from twinkles.diffim.associate import associate_dia_sources
from twinkles.diffim.kernel import (
    AlardLuptonConfig,
    KernelFitError,
    decorrelated_variance_factors,
    decorrelation_kernel,
    fit_kernel,
    noise_correlation,
)
from twinkles.diffim.subtract import _kernel_map, kernel_sigma
from twinkles.diffim.template import (
    TemplateConfig,
    TemplateError,
    scale_variance_to_noise,
    select_template_visits,
)
from twinkles.image.convolve import fft_convolve_terms, fft_shape, kernel_fft
from twinkles.image.exposure import Exposure, PhotoCalib
from twinkles.image.masks import grow_bits, grow_square


def gaussian(sigma: float, half: int = 12) -> np.ndarray:
    u = np.arange(-half, half + 1)
    g = np.exp(-0.5 * (u[:, None] ** 2 + u[None, :] ** 2) / sigma**2)
    return g / g.sum()


@pytest.fixture(scope="module")
def star_field():
    """A 300 x 300 field of 60 stars with a Gaussian PSF (sigma 1.5 px), noise-free."""
    rng = np.random.default_rng(11)
    image = np.zeros((300, 300))
    x = rng.uniform(30, 270, 60)
    y = rng.uniform(30, 270, 60)
    image[np.rint(y).astype(int), np.rint(x).astype(int)] = rng.uniform(2e4, 1e5, 60)
    return ndimage.convolve(image, gaussian(1.5), mode="constant"), np.rint(x), np.rint(y)


def test_fft_convolution_equals_direct_convolution():
    rng = np.random.default_rng(2)
    image = rng.normal(size=(64, 80))
    kernel = rng.normal(size=(9, 9))
    direct = ndimage.convolve(image, kernel, mode="constant")
    np.testing.assert_allclose(fft_convolve_terms(image, kernel), direct, atol=1e-4)
    weights = np.stack([np.ones_like(image), np.linspace(-1, 1, 80)[None, :] * np.ones((64, 1))])
    two = fft_convolve_terms(image, np.stack([kernel, 0.5 * kernel]), weights)
    np.testing.assert_allclose(two, direct * (1 + 0.5 * weights[1]), atol=1e-4)


def test_fft_convolution_is_exact_to_the_edges_on_the_tightest_grid():
    """The grid is only the kernel's half-size longer than the image; no edge wraps into the
    opposite one, on the one-kernel path and the row-and-column-factor path alike."""
    rng = np.random.default_rng(8)
    half = 9
    image = rng.normal(size=(55, 71))  # 55 + 9 = 64 and 71 + 9 = 80 are fast lengths
    assert fft_shape(image.shape, half) == (64, 80)
    kernels = rng.normal(size=(2, 2 * half + 1, 2 * half + 1))
    direct = [ndimage.convolve(image, k, mode="constant") for k in kernels]
    np.testing.assert_allclose(fft_convolve_terms(image, kernels[0]), direct[0], atol=2e-4)
    wy, wx = np.linspace(-1, 1, 55), np.linspace(0, 2, 71)
    split = fft_convolve_terms(image, kernels, [(np.ones(55), wx), (wy, np.ones(71))])
    expected = direct[0] * wx[None, :] + direct[1] * wy[:, None]
    np.testing.assert_allclose(split, expected, atol=2e-4)


def test_kernel_map_is_the_bicubic_spline_through_its_grid():
    from types import SimpleNamespace

    from scipy.interpolate import RectBivariateSpline

    h, w = 130, 97

    def kernel(x, y):  # a kernel whose sum changes over the image, not as a polynomial
        return np.full((3, 3), (1.0 + 0.2 * np.sin(x / 17.0) * np.cos(y / 23.0)) / 9.0)

    solution = SimpleNamespace(kernel=kernel)
    mapped = _kernel_map(solution, (h, w), lambda k: float(k.sum()))
    gx, gy = np.linspace(0, w - 1, 7), np.linspace(0, h - 1, 7)
    grid = np.array([[kernel(x, y).sum() for x in gx] for y in gy])
    expected = RectBivariateSpline(gy, gx, grid, kx=3, ky=3)(np.arange(h), np.arange(w))
    assert mapped.shape == (h, w) and mapped.dtype == np.float32
    np.testing.assert_allclose(mapped, expected, atol=1e-6)
    np.testing.assert_allclose(mapped[np.ix_([0, -1], [0, -1])], grid[np.ix_([0, -1], [0, -1])])
    flat = _kernel_map(SimpleNamespace(kernel=lambda x, y: np.ones((3, 3))), (h, w), np.sum)
    assert np.all(flat == 9.0)


def test_kernel_transform_is_the_fft_of_the_wrapped_kernel():
    rng = np.random.default_rng(4)
    for shape, size in (((64, 90), 25), ((40, 41), 7), ((31, 31), 31)):
        kernel = rng.normal(size=(size, size))
        grid = np.zeros(shape)
        half = size // 2
        for a in range(size):
            for b in range(size):
                grid[(a - half) % shape[0], (b - half) % shape[1]] += kernel[a, b]
        np.testing.assert_allclose(kernel_fft(kernel, shape), np.fft.rfft2(grid), atol=1e-10)
        single = kernel_fft(kernel.astype(np.float32), shape)
        assert single.dtype == np.complex64
        np.testing.assert_allclose(single, np.fft.rfft2(grid), atol=1e-4)


def test_grown_masks_are_square_dilations():
    rng = np.random.default_rng(5)
    mask = rng.random((50, 37)) < 0.02
    mask[0, 5] = mask[49, 36] = True  # reaching the edges
    for half in (0, 1, 3, 12, 40):
        square = np.ones((2 * half + 1, 2 * half + 1), dtype=bool)
        expected = ndimage.binary_dilation(mask, square) if half else mask
        np.testing.assert_array_equal(grow_square(mask, half), expected)


def test_grown_mask_bits_are_each_planes_square_dilation():
    """Every plane asked for is grown on its own (a pixel gets exactly the bits of the
    planes within reach); the planes not asked for are dropped."""
    rng = np.random.default_rng(6)
    mask = np.zeros((60, 41), dtype=np.int32)
    for bit in (1, 2, 8, 256):
        mask[rng.random(mask.shape) < 0.01] |= bit
    for half in (0, 2, 9):
        square = np.ones((2 * half + 1, 2 * half + 1), dtype=bool)
        grown = grow_bits(mask, half, 1 | 8 | 256)
        assert grown.dtype == np.uint16  # the narrowest that holds bit 256
        for bit in (1, 2, 8, 256):
            plane = (mask & bit) != 0
            expected = ndimage.binary_dilation(plane, square) if half else plane
            if bit == 2:
                expected = np.zeros_like(plane)
            np.testing.assert_array_equal((grown & bit) != 0, expected)


def test_kernel_fit_recovers_broadening_scaling_and_background(star_field):
    narrow, x, y = star_field
    rng = np.random.default_rng(5)
    true_kernel = gaussian(np.sqrt(2.5**2 - 1.5**2), half=10)
    sigma_noise = 5.0
    wide = 1.04 * ndimage.convolve(narrow, true_kernel, mode="constant") + 3.0
    wide = wide + rng.normal(0, sigma_noise, wide.shape)
    variance = np.full(wide.shape, sigma_noise**2)
    solution = fit_kernel(narrow, wide, variance, x, y, 1.5, 2.5, AlardLuptonConfig())
    kernel = solution.kernel(150, 150)
    # scaling and background to the precision the noise allows on ~50 stamps
    assert kernel.sum() == pytest.approx(1.04, abs=0.002)
    assert solution.background[0] == pytest.approx(3.0, abs=0.2)
    # the kernel is constant here, and the fit says so (BIC): no noise of spatial terms
    assert solution.spatial_degree == 0
    # what a subtraction needs: a star convolved with the kernel is the wide PSF (the kernel's
    # own core is noisy, 1-15% of its peak over noise seeds, but the narrow PSF smooths that
    # away: 0.04-0.08% over 12 seeds)
    narrow_psf = gaussian(1.5, half=15)
    wide_psf = ndimage.convolve(narrow_psf, true_kernel, mode="constant")
    star = ndimage.convolve(narrow_psf, kernel / kernel.sum(), mode="constant")
    assert np.max(np.abs(star - wide_psf)) < 0.002 * wide_psf.max()
    assert solution.chi2_per_pixel == pytest.approx(1.0, abs=0.1)
    assert kernel_sigma(ndimage.convolve(gaussian(1.5), kernel)) == pytest.approx(2.5, rel=0.01)


def test_kernel_fit_recovers_a_sloped_background(star_field):
    """A background that is a plane (degree 1): its three coefficients, in the solution's
    normalised coordinates, and the kernel's sum, to what ~50 noisy stamps allow."""
    narrow, x, y = star_field
    rng = np.random.default_rng(8)
    true_kernel = gaussian(np.sqrt(2.2**2 - 1.5**2), half=10)
    yy, xx = np.mgrid[0:300, 0:300]
    plane = 2.0 + 0.01 * (xx - 149.5) - 0.006 * (yy - 149.5)
    wide = 0.97 * ndimage.convolve(narrow, true_kernel, mode="constant") + plane
    wide = wide + rng.normal(0, 4.0, wide.shape)
    config = AlardLuptonConfig(background_degree=1)
    solution = fit_kernel(narrow, wide, np.full(wide.shape, 16.0), x, y, 1.5, 2.2, config)
    assert solution.kernel(150, 150).sum() == pytest.approx(0.97, abs=0.002)
    # terms 1, X, Y with X = (x - x0) / scale
    expected = [2.0, 0.01 * solution.scale, -0.006 * solution.scale]
    assert solution.background == pytest.approx(expected, abs=0.15)
    fitted = solution.background_image((300, 300))
    assert np.abs(fitted - plane).max() < 0.3


def test_kernel_fit_needs_stars(star_field):
    narrow, x, y = star_field
    with pytest.raises(KernelFitError, match="only 2 usable star stamps"):
        fit_kernel(narrow, narrow, np.ones_like(narrow), x[:2], y[:2], 1.5, 2.0)


def test_decorrelation_whitens_the_difference():
    rng = np.random.default_rng(8)
    shape = (400, 400)
    sw, sn = 0.5, 2.0  # a noisy template: its convolved noise dominates the difference
    kernel = gaussian(1.8, half=10)
    diff = rng.normal(0, sw, shape) - fft_convolve_terms(rng.normal(0, sn, shape), kernel)
    psi = decorrelation_kernel(kernel, sw**2, sn**2)
    white = fft_convolve_terms(diff, psi)[20:-20, 20:-20]
    diff = diff[20:-20, 20:-20]

    def lag1(a):
        return np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1]

    assert lag1(diff) > 0.2  # the convolved template's noise is correlated
    assert abs(lag1(white)) < 0.03
    assert white.std() == pytest.approx(np.hypot(sw, sn), rel=0.03)


def test_noise_correlation_of_smoothed_noise_is_its_kernel_autocorrelation():
    rng = np.random.default_rng(5)
    smooth = gaussian(1.0, half=6)
    noise = fft_convolve_terms(rng.normal(size=(600, 600)), smooth)
    usable = np.ones(noise.shape, bool)
    usable[250:300, :] = False  # a masked band: its pairs are left out, not counted as zeros
    corr = noise_correlation(noise, np.full(noise.shape, noise.var()), usable, half=6)
    # the autocorrelation of a Gaussian of sigma s is a Gaussian of sigma s sqrt(2)
    expected = gaussian(np.sqrt(2.0), half=6)
    expected /= expected[6, 6]
    np.testing.assert_allclose(corr, expected, atol=0.01)
    assert corr.sum() == pytest.approx(expected.sum(), rel=0.03)  # ~4 pi s^2 = 12.6
    white = noise_correlation(rng.normal(size=(300, 300)), np.ones((300, 300)), usable[:300, :300])
    assert (
        white[6, 6] == 1.0 and np.abs(white - np.eye(13)[6][:, None] * np.eye(13)[6]).max() < 0.02
    )


def test_decorrelation_of_a_correlated_template_whitens_and_predicts_the_variance():
    # a coadded, PSF-homogenised template: noise correlated before the matching kernel
    rng = np.random.default_rng(9)
    shape = (500, 500)
    sw = 1.0  # the calexp (wide), white
    template = fft_convolve_terms(rng.normal(0, 3.0, shape), gaussian(1.0, half=6))
    kernel = gaussian(1.2, half=10)
    diff = rng.normal(0, sw, shape) - fft_convolve_terms(template, kernel)
    corr = noise_correlation(template, np.full(shape, template.var()), np.ones(shape, bool))
    psi = decorrelation_kernel(kernel, sw**2, template.var(), corr_narrow=corr)
    white = fft_convolve_terms(diff, psi)[30:-30, 30:-30]
    gain_w, gain_n = decorrelated_variance_factors(psi, kernel, None, corr)
    predicted = gain_w * sw**2 + gain_n * template.var()
    assert white.var() == pytest.approx(predicted, rel=0.03)
    lag1 = np.corrcoef(white[:, :-1].ravel(), white[:, 1:].ravel())[0, 1]
    assert abs(lag1) < 0.03
    # the white-noise kernel and variance, as before, get the template's share wrong
    naive = fft_convolve_terms(diff, decorrelation_kernel(kernel, sw**2, template.var()))
    assert naive[30:-30, 30:-30].var() / (sw**2 + template.var()) > 1.1


def test_variance_of_a_convolved_calexp_against_a_correlated_template():
    # the visit has the better seeing: the white calexp is convolved, the template (wide)
    # is not; its noise is correlated (sum of the correlation ~10, as on the demo) and a
    # tenth of the calexp's per pixel; psi is DMTN-021's for white inputs
    rng = np.random.default_rng(12)
    shape = (500, 500)
    sn = 3.0  # the calexp (narrow), white
    template = fft_convolve_terms(rng.normal(0, 3.0, shape), gaussian(0.9, half=6))
    kernel = gaussian(1.3, half=10)
    diff = fft_convolve_terms(rng.normal(0, sn, shape), kernel) - template
    corr = noise_correlation(template, np.full(shape, template.var()), np.ones(shape, bool))
    psi = decorrelation_kernel(kernel, template.var(), sn**2)
    out = fft_convolve_terms(diff, psi)[30:-30, 30:-30]
    gain_w, gain_n = decorrelated_variance_factors(psi, kernel, corr, None)
    assert out.var() == pytest.approx(gain_w * template.var() + gain_n * sn**2, rel=0.02)
    # the white-input variance (each input's at unit gain) overstates it (0.73 in sigma):
    # the template's high frequencies that psi would restore are not there
    assert np.sqrt(out.var() / (template.var() + sn**2)) < 0.8


def test_association_is_order_independent_and_groups_within_the_radius():
    rng = np.random.default_rng(4)
    centres = np.column_stack([53.0 + rng.uniform(0, 0.01, 6), -28.0 + rng.uniform(0, 0.01, 6)])
    rows = []
    for k, (ra, dec) in enumerate(centres):
        for visit in range(1, 6 + k):
            jitter = rng.normal(0, 0.05 / 3600, 2)  # 50 mas scatter: well inside 0.5"
            rows.append((visit * 100_000 + k, ra + jitter[0], dec + jitter[1], 59000.0 + visit))
    table = Table(rows=rows, names=["diaSourceId", "ra", "decl", "midPointTai"])
    table["psFlux"] = np.where(np.arange(len(table)) % 2 == 0, 100.0, 200.0)
    table["psFluxErr"] = np.where(np.arange(len(table)) % 2 == 0, 10.0, 20.0)
    bands = np.array(["r"] * len(table))
    sources, objects = associate_dia_sources(table, bands, 0.5)
    assert len(objects) == 6
    assert sorted(objects["nDiaSources"]) == [5, 6, 7, 8, 9, 10]
    first = objects[np.argmin(objects["nDiaSources"])]
    members = sources[sources["diaObjectId"] == first["diaObjectId"]]
    assert first["diaObjectId"] == members["diaSourceId"].min()
    w = 1 / members["psFluxErr"] ** 2
    assert first["r_psFluxMean"] == pytest.approx(np.sum(w * members["psFlux"]) / w.sum())
    assert first["r_psFluxNdata"] == len(members) and first["g_psFluxNdata"] == 0
    shuffled = rng.permutation(len(table))
    again, objects_again = associate_dia_sources(table[shuffled], bands[shuffled], 0.5)
    assert np.array_equal(sources["diaObjectId"], again["diaObjectId"])
    assert set(objects["diaObjectId"]) == set(objects_again["diaObjectId"])
    with pytest.raises(ValueError, match="positive"):
        associate_dia_sources(table, bands, 0.0)


def test_template_visit_selection():
    visits = [1, 2, 3, 4, 5, 6]
    fwhm = [0.9, 0.6, 0.7, 1.1, 0.65, 1.0]
    config = TemplateConfig(seeing_quantile=0.34, min_visits=2)
    assert select_template_visits(visits, fwhm, config) == [2, 5]
    assert select_template_visits(visits, fwhm, TemplateConfig(min_visits=4)) == [1, 2, 3, 5]
    assert select_template_visits(
        visits, fwhm, TemplateConfig(fwhm_range_arcsec=(0.6, 0.7), min_visits=1)
    ) == [2, 3, 5]
    with pytest.raises(TemplateError, match="filter r: no visit with FWHMeff in"):
        select_template_visits(visits, fwhm, TemplateConfig(fwhm_range_arcsec=(0.3, 0.4)), band="r")
    with pytest.raises(TemplateError, match="filter g: no processed visit"):
        select_template_visits([], [], config, band="g")


def test_template_variance_scaled_to_its_pixel_noise():
    # smoothed noise whose variance plane is 1/1.3^2 of its pixel variance, a star on it
    rng = np.random.default_rng(21)
    noise = fft_convolve_terms(rng.normal(size=(400, 400)), gaussian(0.8, half=5))
    image = (noise / noise.std()).astype(np.float32)
    image[100:103, 100:103] += 50.0
    variance = np.full(image.shape, 1 / 1.3**2, np.float32)
    template = Exposure(
        image, np.zeros(image.shape, np.int32), variance, None, None, PhotoCalib(31.4), {}
    )
    ratio = scale_variance_to_noise(template, np.full(image.shape, 5))
    assert ratio == pytest.approx(1.3, rel=0.02)
    z = template.image / np.sqrt(template.variance)
    assert np.std(z[200:, 200:]) == pytest.approx(1.0, rel=0.03)  # away from the star


def _radial_pattern_pair(seed: int = 3, size: int = 400, n: int = 150):
    """Stars under a constant narrow PSF (sigma 1.5 px) and a wide one whose width grows by
    15% from the centre to the corners (radially, as a focal plane's does), with noise."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(25, size - 25, n)
    y = rng.uniform(25, size - 25, n)
    flux = rng.uniform(2e4, 2e5, n)
    centre, half_diagonal = 0.5 * (size - 1), 0.5 * np.hypot(size, size)
    r2 = ((x - centre) ** 2 + (y - centre) ** 2) / half_diagonal**2
    narrow = np.zeros((size, size))
    wide = np.zeros((size, size))
    yy, xx = np.mgrid[0:size, 0:size]
    for xs, ys, f, rr in zip(x, y, flux, r2, strict=True):
        sl = (slice(int(ys) - 15, int(ys) + 16), slice(int(xs) - 15, int(xs) + 16))
        d2 = (xx[sl] - xs) ** 2 + (yy[sl] - ys) ** 2
        for image, sigma in ((narrow, 1.5), (wide, 2.2 * (1 + 0.15 * rr))):
            image[sl] += f * np.exp(-0.5 * d2 / sigma**2) / (2 * np.pi * sigma**2)
    noise = 5.0
    wide += rng.normal(0, noise, wide.shape)
    return narrow, wide, np.full(wide.shape, noise**2), np.rint(x), np.rint(y)


def test_a_kernel_follows_a_radial_pattern_of_the_psf_width():
    narrow, wide, variance, x, y = _radial_pattern_pair()
    residuals = {}
    for degree in (1, 3):
        solution = fit_kernel(
            narrow, wide, variance, x, y, 1.5, 2.2, AlardLuptonConfig(spatial_degree=degree)
        )
        h, w = wide.shape
        xs = (np.arange(w) - solution.x0) / solution.scale
        ys = (np.arange(h) - solution.y0) / solution.scale
        terms = [
            (ys ** (d - i), xs**i)
            for d in range(solution.spatial_degree + 1)
            for i in range(d, -1, -1)
        ]
        model = fft_convolve_terms(narrow, solution.spatial_kernels, terms)
        model += solution.background_image((h, w))
        diff = wide - model
        # each star's residual: the largest |difference| within 3 px, over its noise (5 e-)
        iy, ix = y.astype(int), x.astype(int)
        peaks = [
            np.abs(diff[j - 3 : j + 4, i - 3 : i + 4]).max() / 5.0
            for i, j in zip(ix, iy, strict=True)
        ]
        residuals[degree] = (solution.spatial_degree, np.median(peaks), np.max(peaks))
    chosen, median_peak, worst = residuals[3]
    assert chosen >= 2  # the stamps support more than a gradient, and the fit takes it
    # noise alone: the largest of 49 pixels is ~2.5 sigma; a gradient leaves ~15 sigma
    assert median_peak < 3.5 < residuals[1][1]
    assert worst < 0.2 * residuals[1][2]


@pytest.mark.parametrize(
    ("beta", "fixed_error", "sized_error"), [(2.5, 0.03, 0.02), (3.5, 0.015, 0.006)]
)
def test_a_kernel_sized_for_bad_seeing_keeps_the_flux(beta, fixed_error, sized_error):
    """Stars drawn with GalSim in Moffat PSFs of FWHM 0.8" and 1.5" (0.2" pixels), equal
    fluxes: the matching kernel must sum to 1. The 21-px kernel cannot reach the wings the
    wider PSF adds, and the fit takes their light from the core (a sum 2-5% low, which every
    static source leaves in the difference); sized to four FWHM of the wider PSF it keeps
    all but 0.4-1.5% of it."""
    import galsim

    from twinkles.diffim.kernel import sized_for
    from twinkles.units import FWHM_PER_SIGMA

    rng = np.random.default_rng(2)
    size, scale, n = 600, 0.2, 80
    x, y = rng.uniform(50, size - 50, n), rng.uniform(50, size - 50, n)
    flux = rng.uniform(2e5, 1e6, n)

    def field(psf: galsim.GSObject) -> np.ndarray:
        image = galsim.ImageD(size, size, scale=scale)
        for xi, yi, fi in zip(x, y, flux, strict=True):
            offset = (xi - round(xi), yi - round(yi))
            stamp = psf.withFlux(fi).drawImage(nx=81, ny=81, scale=scale, offset=offset)
            stamp.setCenter(round(xi) + 1, round(yi) + 1)
            bounds = stamp.bounds & image.bounds
            image[bounds] += stamp[bounds]
        return image.array.astype(np.float32)

    narrow_psf, wide_psf = galsim.Moffat(beta=beta, fwhm=0.8), galsim.Moffat(beta=beta, fwhm=1.5)
    narrow = field(narrow_psf)
    wide = field(wide_psf) + rng.normal(0, 5.0, (size, size)).astype(np.float32)
    variance = np.full((size, size), 25.0, np.float32)
    sigma_n = kernel_sigma(narrow_psf.drawImage(nx=25, ny=25, scale=scale).array)
    sigma_w = kernel_sigma(wide_psf.drawImage(nx=25, ny=25, scale=scale).array)
    sums = {}
    for name, config in (
        ("fixed", AlardLuptonConfig(kernel_fwhm_scaling=0)),
        ("sized", sized_for(AlardLuptonConfig(), FWHM_PER_SIGMA * sigma_w)),
    ):
        solution = fit_kernel(
            narrow, wide, variance, np.rint(x), np.rint(y), sigma_n, sigma_w, config
        )
        sums[name] = float(solution.kernel(size / 2, size / 2).sum())
    assert abs(sums["fixed"] - 1.0) > fixed_error
    assert abs(sums["sized"] - 1.0) < sized_error


def test_kernel_size_follows_the_wider_psf():
    from twinkles.diffim.kernel import sized_for

    config = AlardLuptonConfig()
    assert sized_for(config, 4.0).kernel_half == 10  # the smallest kernel for good seeing
    wide = sized_for(config, 7.5)
    assert wide.kernel_half == 15 and wide.stamp_half == config.stamp_half + 5
    assert sized_for(config, 30.0).kernel_half == config.kernel_half_max
    assert sized_for(AlardLuptonConfig(kernel_fwhm_scaling=0), 30.0).kernel_half == 10


def test_a_tapered_decorrelation_kernel_has_no_edge():
    """Against a template 90 times less noisy per pixel than the convolved visit (as a deep
    template and a bright-sky visit are), DMTN-021's kernel sharpens ~9x at high frequency;
    for a matching kernel whose transform has near-zeros (a smoothed 5 x 5 box here; a kernel
    fitted on noisy stamps has them too) it still rings at its 25-px edge. The tapered one goes
    smoothly to 0 there; both keep unit sum and the same core."""
    kernel = np.zeros((21, 21))
    kernel[8:13, 8:13] = 1.0
    kernel = ndimage.convolve(kernel, gaussian(0.6, half=3))
    kernel /= kernel.sum()
    sharp = decorrelation_kernel(kernel, 12.5, 1108.0)
    tapered = decorrelation_kernel(kernel, 12.5, 1108.0, taper=True)
    edge = np.ones(sharp.shape, bool)
    edge[1:-1, 1:-1] = False
    assert np.max(np.abs(sharp[edge])) > 1e-3 * sharp.max()
    assert np.max(np.abs(tapered[edge])) < 1e-4 * tapered.max()
    assert sharp.sum() == pytest.approx(1.0) and tapered.sum() == pytest.approx(1.0)
    assert tapered[12, 12] == pytest.approx(sharp[12, 12], rel=0.1)
