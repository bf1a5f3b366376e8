"""PSF measurement, detection and measurement on synthetic scenes, against their truth."""

from __future__ import annotations

import numpy as np
import pytest

from twinkles.detection.background import BackgroundTask
from twinkles.detection.detect import DetectionConfig, DetectionTask
from twinkles.image.shift import lanczos, shift_matrices, shift_stamps, shift_stamps_transpose
from twinkles.isr.eimage import EimageIsrTask
from twinkles.measurement.apcorr import ApertureCorrectionError, ApertureCorrectionTask
from twinkles.psf.determine import PsfConfig, PsfError, PsfTask, cut_stamps
from twinkles.sim.psf import SimulatedPSF, make_profile, profile_fwhm_for_fwhm_eff
from twinkles.sim.render import render_visit
from twinkles.units import NEFF_PER_FWHM2

from scenes import make_scene, process_scene, scene_exposure

SIZE = 1024


@pytest.fixture(scope="module")
def stars(tmp_path_factory):
    scene = make_scene(
        render={"psf_variation": 0.05}, grid_mags=(17.0, 22.5), size=SIZE, spacing=50
    )
    return process_scene(scene, tmp_path_factory.mktemp("stars"))


def _truth_match(result):
    """Catalog rows of the grid stars (nearest within 1 pixel), and their true electrons."""
    from scipy.spatial import cKDTree

    d, i = cKDTree(np.column_stack([result.cat["x"], result.cat["y"]])).query(
        np.column_stack([result.scene.x, result.scene.y])
    )
    truth = result.rendered.truth
    flux = result.scene.sky.truth.flux(result.scene.sky.truth.stars["id"], "r", truth["mjd"])
    return i[d < 1.0], (flux * truth["electrons_per_njy"])[d < 1.0], d


def test_shift_stamps_moves_a_gaussian_and_keeps_its_flux():
    yy, xx = np.mgrid[0:25, 0:25]

    def gauss(cx, cy):
        return np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * 1.8**2))

    moved = shift_stamps(gauss(12, 12), 0.37, -0.21)
    assert np.abs(moved - gauss(12.37, 11.79)).max() < 0.01
    assert moved.sum() == pytest.approx(gauss(12, 12).sum(), rel=1e-6)


def test_shift_matrices_are_the_row_normalised_lanczos_kernel():
    # M[i, j] = L(i - j - s) / sum_j L(i - j - s), built from its diagonals
    rng = np.random.default_rng(3)
    for size in (25, 5, 1):
        for shifts in (rng.uniform(-0.5, 0.5, 50), [0.0, 2.7, -4.2], [30.0, -26.0]):
            shifts = np.asarray(shifts)
            i = np.arange(size)
            dense = lanczos(i[None, :, None] - i[None, None, :] - shifts[:, None, None])
            norm = dense.sum(axis=2, keepdims=True)
            expected = dense / np.where(norm == 0, 1.0, norm)
            np.testing.assert_allclose(
                shift_matrices(size, shifts, interpolation="lanczos"), expected, atol=1e-14
            )


@pytest.mark.parametrize("size", [25, 24, 5, 1])
def test_sinc_shifts_are_the_fourier_phase_ramp(size):
    # shifting by s multiplies the DFT by exp(-2 pi i k s / N); an even N's Nyquist term by
    # cos(pi s), so the result stays real
    rng = np.random.default_rng(size)
    stamps = rng.random((6, size, size))
    dx, dy = rng.uniform(-3, 3, 6), rng.uniform(-3, 3, 6)
    dx[0] = dy[0] = 0.0
    dx[1], dy[1] = 2.0, -1.0
    k = np.fft.fftfreq(size)
    ramp_x = np.exp(-2j * np.pi * k[None, :] * dx[:, None])
    ramp_y = np.exp(-2j * np.pi * k[None, :] * dy[:, None])
    if size % 2 == 0:
        ramp_x[:, size // 2], ramp_y[:, size // 2] = np.cos(np.pi * dx), np.cos(np.pi * dy)
    expected = np.fft.ifft2(np.fft.fft2(stamps) * ramp_y[:, :, None] * ramp_x[:, None, :]).real
    moved = shift_stamps(stamps, dx, dy)
    np.testing.assert_allclose(moved, expected, atol=1e-12)
    np.testing.assert_allclose(moved[0], stamps[0], atol=1e-13)
    np.testing.assert_allclose(moved[1], np.roll(stamps[1], (-1, 2), axis=(0, 1)), atol=1e-12)
    # the transpose used by the PSF fit is the opposite shift; for odd N also its inverse
    np.testing.assert_allclose(
        shift_stamps_transpose(stamps, dx, dy), shift_stamps(stamps, -dx, -dy), atol=1e-12
    )
    if size % 2:
        np.testing.assert_allclose(shift_stamps(moved, -dx, -dy), stamps, atol=1e-12)


@pytest.mark.parametrize("fwhm_arcsec", [0.5, 0.7])
def test_sinc_shift_keeps_psf_fluxes_of_a_sharp_psf(fwhm_arcsec):
    # a pixel-sampled Moffat of 2.5-3.5 pixels, moved half a pixel in x and y from its
    # centred image, fits the star drawn there: Lanczos-3 biases the PSF flux by -7 to -3 mmag
    def draw(dx, dy):
        image = make_profile("moffat", fwhm_arcsec).drawImage(
            nx=25, ny=25, scale=0.2, offset=(dx, dy), method="auto"
        )
        return image.array / image.array.sum()

    centred, star = draw(0.0, 0.0), draw(0.5, 0.5)

    def flux_bias(model):
        model = model / model.sum()
        return np.sum(model * star) / np.sum(model**2) - 1.0

    assert abs(flux_bias(shift_stamps(centred, 0.5, 0.5))) < 3e-4
    assert flux_bias(shift_stamps(centred, 0.5, 0.5, interpolation="lanczos")) < -3e-3


def test_cut_stamps_copies_the_image_and_fills_beyond_its_edges():
    image = np.arange(40 * 30, dtype=np.int32).reshape(40, 30)
    ix = np.array([15, 0, 29, 3, 27, -4, 12])
    iy = np.array([20, 0, 39, 38, 1, 5, 44])
    stamps, inside = cut_stamps(image, ix, iy, 3, fill=-1)
    assert stamps.shape == inside.shape == (7, 7, 7) and stamps.dtype == np.int32
    for k in range(len(ix)):
        for a in range(7):
            for b in range(7):
                y, x = iy[k] + a - 3, ix[k] + b - 3
                on = 0 <= y < 40 and 0 <= x < 30
                assert inside[k, a, b] == on
                assert stamps[k, a, b] == (image[y, x] if on else -1)
    # an image smaller than a stamp has only edge stamps
    small, small_inside = cut_stamps(image[:4, :4].astype(np.float32), [1], [2], 3)
    assert small.dtype == np.float32 and small_inside.sum() == 16 and small.sum() == 744


def test_psf_fwhm_matches_the_truth_over_the_sensor(stars):
    truth = stars.rendered.truth
    psf = stars.psf.psf
    # FWHMeff (n_eff based) at the centre, as OpSim's
    measured = psf.fwhm_eff(SIZE / 2, SIZE / 2) * 0.2
    assert measured == pytest.approx(truth["fwhm_eff"], rel=0.03)
    # the spatial variation: the ratio corner/centre follows the true PSF's
    sim = SimulatedPSF.from_dict(truth["psf"])
    for corner in [(0, 0), (SIZE - 1, SIZE - 1), (0, SIZE - 1)]:
        half_diag = 0.5 * np.hypot(SIZE, SIZE)
        X = (corner[0] - 0.5 * (SIZE - 1)) / half_diag
        Y = (corner[1] - 0.5 * (SIZE - 1)) / half_diag
        true_ratio = sim.parameters_at(X, Y)[0] / sim.fwhm
        ratio = psf.fwhm_eff(*corner) / psf.fwhm_eff(SIZE / 2, SIZE / 2)
        assert ratio == pytest.approx(true_ratio, abs=0.01)
    assert stars.psf.n_stars > 80
    assert np.sqrt(psf.neff(SIZE / 2, SIZE / 2) / NEFF_PER_FWHM2) == pytest.approx(
        psf.fwhm_eff(SIZE / 2, SIZE / 2)
    )
    assert profile_fwhm_for_fwhm_eff(truth["fwhm_eff"], 0.2) == pytest.approx(sim.fwhm, rel=1e-3)


def test_psf_residuals_are_noise(stars):
    used = stars.psf.stars["used"]
    mean_resid = np.mean(stars.psf.residuals[used], axis=0)
    peak = stars.psf.psf.kernel(SIZE / 2, SIZE / 2).max()
    assert np.abs(mean_resid).max() < 0.01 * peak


def test_psf_fluxes_match_the_truth_within_their_errors(stars):
    rows, true_e, _ = _truth_match(stars)
    cat = stars.cat[rows]
    ok = ~np.asarray(cat["flag_saturated"] | cat["flag_edge"])
    flux = np.asarray(cat["psfInstFluxCorr"])[ok]
    err = np.asarray(cat["psfInstFluxCorrErr"])[ok]
    true = true_e[ok]
    # pulls where the errors are statistical (S/N 10-300): above, the PSF model's ~0.1%
    # per-star interpolation scatter exceeds them, and the flux ratio is the test
    snr = true / err
    stat = (snr > 10) & (snr < 300)
    pulls = (flux[stat] - true[stat]) / err[stat]
    n = len(pulls)
    assert n > 200
    assert abs(np.median(pulls)) < 3 * 1.25 / np.sqrt(n)
    # a MAD-based sigma has a standard error of 1.16 / sqrt(n)
    robust = 1.4826 * np.median(np.abs(pulls - np.median(pulls)))
    assert robust == pytest.approx(1.0, abs=min(0.15, 3 * 1.16 / np.sqrt(n)))
    bright = true > 2e5
    assert bright.sum() > 20
    assert np.median(flux[bright] / true[bright]) == pytest.approx(1.0, abs=0.003)


def test_aperture_correction_matches_the_profile(stars):
    # the kernel holds the light within 12 pixels; beyond, the Moffat of the truth
    sim = SimulatedPSF.from_dict(stars.rendered.truth["psf"])
    alpha = sim.fwhm / 0.2 / (2 * np.sqrt(2 ** (1 / sim.beta) - 1))
    outside_12 = (1 + (12 / alpha) ** 2) ** (1 - sim.beta)
    rows, true_e, _ = _truth_match(stars)
    # PSF flux is the light within the kernel: about 1 - outside_12 of the total
    psf_over_true = np.median(np.asarray(stars.cat["psfInstFlux"])[rows] / true_e)
    assert psf_over_true == pytest.approx(1 - outside_12, abs=0.004)
    assert stars.apcorr.median == pytest.approx(
        1 / psf_over_true, abs=max(0.004, 3 * stars.apcorr.uncertainty)
    )


def test_stars_are_point_sources(stars):
    rows, true_e, _ = _truth_match(stars)
    ext = np.asarray(stars.cat["extendedness"])[rows]
    assert np.mean(ext[true_e > 1e4] == 0) > 0.97


def test_galaxies_are_extended(tmp_path):
    scene = make_scene(grid_mags=(18.0, 20.0), size=512, spacing=60, galaxy_density=3e6, seed=11)
    result = process_scene(scene, tmp_path)
    from scipy.spatial import cKDTree

    gals = scene.sky.truth.galaxies
    wcs = result.rendered.true_wcs
    gx, gy = wcs.all_world2pix(gals["ra"], gals["dec"], 0)
    big = (np.asarray(gals["disk_hlr"]) > 0.6) & (np.asarray(gals["mag_r"]) < 22.5)
    d, i = cKDTree(np.column_stack([result.cat["x"], result.cat["y"]])).query(
        np.column_stack([gx[big], gy[big]])
    )
    ext = np.asarray(result.cat["extendedness"])[i[d < 2.0]]
    assert len(ext) >= 5 and np.mean(ext == 1) > 0.9


def test_detection_completeness_for_isolated_stars(stars):
    _, _, d = _truth_match(stars)
    sky_sigma = np.sqrt(stars.rendered.truth["sky_level"])
    neff = NEFF_PER_FWHM2 * (stars.rendered.truth["fwhm_eff"] / 0.2) ** 2
    flux = stars.scene.sky.truth.flux(
        stars.scene.sky.truth.stars["id"], "r", stars.rendered.truth["mjd"]
    )
    electrons = flux * stars.rendered.truth["electrons_per_njy"]
    snr = electrons / np.sqrt(electrons + sky_sigma**2 * neff)
    assert np.mean(d[snr >= 10] < 1.0) >= 0.99


def test_too_few_stars_is_a_clear_error(tmp_path):
    scene = make_scene(grid_mags=(17.0, 18.0), size=256, spacing=120)
    rendered = render_visit(scene.sky, scene.config, scene.visit)
    exp = scene_exposure(rendered, tmp_path)
    EimageIsrTask().run(exp)
    BackgroundTask().run(exp)
    candidates = DetectionTask(DetectionConfig(threshold=10.0)).run(exp)
    with pytest.raises(PsfError, match=rf"visit {scene.visit}: only \d stars usable for the PSF"):
        PsfTask().run(exp, candidates.sources)


def test_too_few_aperture_correction_stars_is_a_clear_error(stars):
    with pytest.raises(ApertureCorrectionError, match=r"only 1 stars for the aperture correction"):
        ApertureCorrectionTask().run(
            stars.exp,
            stars.cat.copy(),
            stars.det.segmentation,
            stars.cat["x"][:1],
            stars.cat["y"][:1],
        )


def _gaussian_stamps(u, v, sigma, snr, rng, half=12):
    """Unit-flux Gaussian stamps of widths ``sigma`` with white noise at S/N ``snr``."""
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    stamps = np.exp(-(xx**2 + yy**2)[None] / (2 * sigma[:, None, None] ** 2))
    stamps /= stamps.sum(axis=(1, 2), keepdims=True)
    # per pixel, so that the PSF-fit S/N, sqrt(sum P^2) / noise, is snr
    noise = np.sqrt(np.sum(stamps**2, axis=(1, 2))) / snr
    variance = np.broadcast_to((noise**2)[:, None, None], stamps.shape).copy()
    return stamps + rng.normal(size=stamps.shape) * np.sqrt(variance), variance


def test_cross_validated_degree_follows_what_the_stars_constrain():
    from twinkles.psf.determine import cross_validated_degree

    rng = np.random.default_rng(5)
    # 28 stars and a constant PSF: a degree-2 fit of 6 coefficients per pixel fits noise
    u, v = rng.uniform(-0.7, 0.7, 28), rng.uniform(-0.7, 0.7, 28)
    snr = np.full(28, 200.0)
    stamps, variance = _gaussian_stamps(u, v, np.full(28, 1.8), snr, rng)
    degree, chi2 = cross_validated_degree(stamps, variance, u, v, snr, 2)
    assert degree == 0 and chi2[2] > chi2[1] > chi2[0]
    assert chi2[0] == pytest.approx(1.0, abs=0.1)  # held-out residuals are the noise
    # 80 stars, the width changing by +-10% across the sensor: the variation is fitted
    u, v = rng.uniform(-0.7, 0.7, 80), rng.uniform(-0.7, 0.7, 80)
    snr = np.full(80, 200.0)
    stamps, variance = _gaussian_stamps(u, v, 1.8 * (1 + 0.14 * u), snr, rng)
    degree, chi2 = cross_validated_degree(stamps, variance, u, v, snr, 2)
    # degree 1 leaves the noise; 0 leaves the variation; 2 adds fitted noise
    assert degree == 1 and chi2[1] == pytest.approx(1.0, abs=0.1)
    assert chi2[0] > chi2[1] + 0.2 and chi2[2] > chi2[1]


def test_a_radial_pattern_is_followed_with_one_radial_term():
    """A PSF broadening towards the corners, as a focal plane's does, with 70 stars: a full
    degree 2 overfits and degree 0 misses it; the radial term alone fits it."""
    from twinkles.psf.determine import cross_validated_model

    rng = np.random.default_rng(8)
    u, v = rng.uniform(-0.7, 0.7, 70), rng.uniform(-0.7, 0.7, 70)
    snr = np.full(70, 200.0)
    stamps, variance = _gaussian_stamps(u, v, 1.8 * (1 + 0.12 * (u**2 + v**2) / 0.5), snr, rng)
    models = [(0, False), (0, True), (1, False), (1, True), (2, False)]
    model, chi2 = cross_validated_model(stamps, variance, u, v, snr, models)
    assert model == (0, True), chi2
    assert chi2[1] == pytest.approx(1.0, abs=0.1)  # what is left is the noise
    assert chi2[0] > chi2[1] + 0.1 and chi2[4] > chi2[1]


def test_a_few_stars_follow_a_width_change_with_the_width_mode():
    """28 stars of S/N 100 and a PSF whose width changes by +-10% across the sensor: a
    gradient of every pixel (3 x 625 numbers) fits no better than a constant kernel, so a
    per-pixel model falls back to one; the gradient of the width alone (2 numbers) leaves
    little more than the noise and is chosen."""
    from twinkles.psf.determine import cross_validated_model

    wins = 0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        u, v = rng.uniform(-0.7, 0.7, 28), rng.uniform(-0.7, 0.7, 28)
        snr = np.full(28, 100.0)
        stamps, variance = _gaussian_stamps(u, v, 1.8 * (1 + 0.14 * u), snr, rng)
        models = [(0, False), (1, False), (1, False, ("width",))]
        model, chi2 = cross_validated_model(stamps, variance, u, v, snr, models)
        assert model == (1, False, ("width",)), chi2
        assert chi2[2] < min(chi2[0], chi2[1]) - 0.05, chi2
        assert chi2[2] == pytest.approx(1.0, abs=0.1)  # the noise and the mean kernel's
        wins += chi2[1] > chi2[0]
    assert wins >= 2  # the per-pixel gradient loses to a constant kernel


def test_the_brightest_stars_count_by_their_signal_to_noise():
    """30 stars of S/N ~100-2000 under a GalSim Moffat whose width changes by 12% across the
    sensor: every PSF flux inherits the model's error of that change, which the brightest
    stars measure best. Weighted by S/N up to 1000 (the default; five times the median S/N
    does not bind here), the model's core
    concentration tracks the truth over the sensor to under 0.7 per mille in each of 8 scenes,
    and the clipping keeps nearly all the stars; with weights capped at S/N 300, the brightest
    stars fit worse than their noise allows, are clipped, and the model misses by more."""
    from galsim_scenes import PIXEL_SCALE, psf_pattern_exposure, psf_profile

    from twinkles.measurement.aperture import sum_circles

    def concentration(kernels: np.ndarray) -> np.ndarray:
        centre = np.full(1, kernels.shape[-1] // 2, dtype=float)
        sums = np.array([sum_circles(k, centre, centre, [3.0, 6.0]).flux[0] for k in kernels])
        return sums[:, 0] / sums[:, 1]

    misses: dict[float, list[float]] = {300.0: [], PsfConfig().snr_weight_cap: []}
    for seed in range(1, 9):
        scene = psf_pattern_exposure(
            "linear", "moffat", 0.12, 0.9, seed, size=512, spacing=64, flux_range=(2e4, 3e6)
        )
        BackgroundTask().run(scene.exposure)
        candidates = DetectionTask(DetectionConfig(threshold=10.0)).run(scene.exposure)
        true = concentration(
            np.stack(
                [
                    psf_profile("moffat", 0.9 * s).drawImage(nx=25, ny=25, scale=PIXEL_SCALE).array
                    for s in scene.width_scale
                ]
            )
        )
        for cap, miss in misses.items():
            config = PsfConfig(snr_weight_cap=cap, max_stars=30)
            psf = PsfTask(config).run(scene.exposure, candidates.sources)
            ratio = concentration(psf.psf.kernels(scene.x, scene.y)) / true
            miss.append(float(np.std(ratio / np.median(ratio))))
            if cap == PsfConfig().snr_weight_cap:
                assert psf.n_stars >= 25, (seed, psf.n_stars)
    default = np.array(misses[PsfConfig().snr_weight_cap])
    assert np.all(default < 7e-4), default
    assert np.median(default) < 0.8 * np.median(misses[300.0]), misses


def test_deformation_modes_are_the_first_order_changes_of_the_kernel():
    from twinkles.psf.modes import ModeFit, deformation_modes

    yy, xx = np.mgrid[-12:13, -12:13]

    def gaussian(sx: float, sy: float) -> np.ndarray:
        g = np.exp(-0.5 * ((xx / sx) ** 2 + (yy / sy) ** 2))
        return g / g.sum()

    kernel = gaussian(1.8, 1.8)
    modes = deformation_modes(kernel, ("width", "e1", "e2"))
    assert np.allclose(modes.sum(axis=(1, 2)), 0.0, atol=1e-12)  # the model keeps unit sum
    for mode, (sx, sy) in zip(modes[:2], [(1.854, 1.854), (1.854, 1.8 / 1.03)], strict=True):
        change = gaussian(sx, sy) - kernel
        amplitude = np.sum(change * mode)
        # a 3% deformation is the mode to within its second order
        assert np.sum((change - amplitude * mode) ** 2) < 0.01 * np.sum(change**2)
    # e2 (shear along the diagonals) is orthogonal to a change of width or of e1
    assert abs(np.sum(modes[2] * modes[0])) < 1e-6 and abs(np.sum(modes[2] * modes[1])) < 1e-6
    # a fit recovers the width's gradient from noiseless stamps
    u = np.linspace(-0.7, 0.7, 15)
    stamps = np.stack([gaussian(1.8 * (1 + 0.05 * s), 1.8 * (1 + 0.05 * s)) for s in u])
    terms = np.column_stack([np.ones_like(u), u])
    basis = ModeFit(terms, np.ones_like(u), modes[:1]).fit(stamps)
    model = np.tensordot(terms, basis, axes=1)
    assert np.max(np.abs(model - stamps)) < 0.02 * kernel.max()
    with pytest.raises(ValueError, match=r"modes: \['coma'\] not among"):
        deformation_modes(kernel, ("coma",))


def test_mode_sets_name_known_deformations():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"mode_sets: \['width', 'tilt'\] must be"):
        PsfConfig(mode_sets=[("width", "tilt")])


def test_a_mode_model_says_so_in_its_fits_header():
    from twinkles.image.psf import PixelPSF

    basis = np.zeros((3, 25, 25))
    basis[0, 12, 12] = 1.0
    psf = PixelPSF(basis, 1, 10.0, 20.0, 30.0, False, ("width", "e1"))
    again = PixelPSF.from_hdu(psf.to_hdu())
    assert again.modes == ("width", "e1") and again.degree == 1
    assert PixelPSF.from_hdu(PixelPSF(basis, 1, 10.0, 20.0, 30.0).to_hdu()).modes == ()
