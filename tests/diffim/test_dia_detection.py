"""What DIASource detection keeps and drops, on synthetic differences (no simulator): a bright
star's residual of half a per cent against a transient of the same significance on blank sky,
repairs under the source's centre, a bright transient's PSF sidelobes, and noise that is
correlated where the variance plane does not say so."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage, signal

from twinkles.diffim.subtract import ImageDifferenceConfig, ImageDifferenceTask
from twinkles.image import Exposure, MaskPlane, PhotoCalib
from twinkles.image.psf import PixelPSF
from twinkles.sim.wcs import make_wcs
from twinkles.units import AB_MAG_OF_1_NJY

SIZE, SKY_SIGMA, PSF_SIGMA = 200, 10.0, 1.8


def _psf(ring: float = 0.0) -> np.ndarray:
    """A Gaussian PSF (sigma 1.8 px), with a negative ring of ``ring`` of its peak at 9 px
    (a decorrelated PSF)."""
    yy, xx = np.indices((25, 25))
    r = np.hypot(yy - 12, xx - 12)
    psf = np.exp(-0.5 * (r / PSF_SIGMA) ** 2) - ring * np.exp(-0.5 * ((r - 9) / 1.2) ** 2)
    return psf / psf.sum()


def _difference(image: np.ndarray, variance: np.ndarray, psf: np.ndarray, mask=None) -> Exposure:
    h, w = image.shape
    return Exposure(
        image.astype(np.float32),
        np.zeros(image.shape, np.int32) if mask is None else mask,
        variance.astype(np.float32),
        make_wcs(150.0, 2.0, 0.0, 0.2, w, h),
        PixelPSF(psf[None], 0, w / 2, h / 2, max(w, h) / 2),
        PhotoCalib(AB_MAG_OF_1_NJY),
        {},
    )


def _stamp(psf: np.ndarray, x: int, y: int, flux: float, size: int = SIZE) -> np.ndarray:
    out = np.zeros((size, size))
    out[y - 12 : y + 13, x - 12 : x + 13] = flux * psf
    return out


@pytest.fixture
def star_and_transient():
    """A 1e7 nJy star at (60, 60) whose subtraction left 0.5% of it, and a transient at
    (140, 140) of the same PSF flux on blank sky; noise-free images, the variance plane the
    sky's plus the star's photon noise (1 nJy per electron)."""
    psf = _psf()
    star = _stamp(psf, 60, 60, 1e7)
    residual = 0.005 * star
    transient = _stamp(psf, 140, 140, 0.005 * 1e7)
    variance = SKY_SIGMA**2 + star
    return _difference(residual + transient, variance, psf), star


@pytest.mark.parametrize(("matching_error", "star_found"), [(0.0, True), (0.005, False)])
def test_a_bright_stars_residual_is_not_a_transient(star_and_transient, matching_error, star_found):
    diff, star = star_and_transient
    config = ImageDifferenceConfig(matching_error=matching_error, registration_error=0.0)
    task = ImageDifferenceTask(config)
    found = task._detect(diff, 1, 60000.0, 1.0, star.astype(np.float32))
    near = lambda x0, y0: np.any(np.hypot(found["x"] - x0, found["y"] - y0) < 2)  # noqa: E731
    assert near(140, 140)  # the transient keeps its significance: nothing static under it
    assert near(60, 60) == star_found


def test_repairs_under_a_sources_centre_drop_it():
    psf = _psf()
    image = _stamp(psf, 60, 60, 5e4) + _stamp(psf, 140, 60, 5e4) + _stamp(psf, 60, 140, 5e4)
    mask = np.zeros((SIZE, SIZE), np.int32)
    mask[55:66, 55:66] |= int(MaskPlane.SAT)  # a saturated core spread by the kernel
    mask[139:142, 139:141] |= int(MaskPlane.INTRP)  # part of the centre only
    mask[137:144, 57:64] |= int(MaskPlane.CR)  # not a plane that drops a source
    diff = _difference(image, np.full((SIZE, SIZE), SKY_SIGMA**2), psf, mask)
    found = ImageDifferenceTask()._detect(diff, 1, 60000.0)
    xy = {(round(x), round(y)) for x, y in zip(found["x"], found["y"], strict=True)}
    assert (60, 60) not in xy
    assert (140, 60) in xy and (60, 140) in xy


def test_a_brighter_sources_sidelobes_are_dropped():
    psf = _psf(ring=0.05)
    task = ImageDifferenceTask()
    auto = signal.fftconvolve(psf, psf[::-1, ::-1]) / np.sum(psf**2)
    lobe = auto[24, 24 + 9]  # what a PSF flux 9 px from a source reads of it
    assert lobe < 0
    bright = 1e6
    x = np.array([50.0, 59.0, 50.0, 53.0, 150.0])
    y = np.array([50.0, 50.0, 59.0, 50.0, 150.0])
    flux = np.array([bright, 0.8 * bright * lobe, 10 * bright * lobe, -0.2 * bright, -500.0])
    # the sidelobe; one ten times what the sidelobe explains; a dipole's other lobe; a real
    # negative far away
    np.testing.assert_array_equal(
        task._sidelobes(psf, x, y, flux), [False, True, False, False, False]
    )
    keep_all = ImageDifferenceTask(ImageDifferenceConfig(sidelobe_factor=0))
    assert not keep_all._sidelobes(psf, x, y, flux).any()


def test_a_ring_around_a_bright_source_is_not_a_second_source():
    """sep finds the negative ring of a decorrelated PSF as one footprint centred on the
    source; measured there it is the source itself, positive."""
    psf = _psf(ring=0.05)
    rng = np.random.default_rng(1)
    image = _stamp(psf, 100, 100, 6e4) + rng.normal(0, SKY_SIGMA, (SIZE, SIZE))
    diff = _difference(image, np.full((SIZE, SIZE), SKY_SIGMA**2), psf)
    found = ImageDifferenceTask()._detect(diff, 1, 60000.0)
    assert len(found) == 1 and found["psFlux"][0] > 0


@pytest.mark.parametrize("seed", [0, 1])
def test_noise_correlated_where_the_variance_does_not_say_so_is_not_detected(seed):
    """The left half's noise is correlated on the PSF's scale (as where a decorrelation made
    for the sensor's centre does not hold), with the per-pixel variance the plane says: its
    PSF-flux noise is ~1.5 times the plane's prediction. Measured locally, its peaks are no
    DIASources; transients of true S/N 9 on either half are found either way."""
    size, rng, psf = 512, np.random.default_rng(seed), _psf()
    image = rng.normal(0.0, SKY_SIGMA, (size, size))
    correlated = ndimage.gaussian_filter(rng.normal(0.0, 1.0, (size, size)), 0.5)
    image[:, :256] = (correlated * SKY_SIGMA / correlated.std())[:, :256]
    # a PSF flux of S/N 9 against white noise, 9 x 1.5 against the correlated half's plane
    flux = 9.0 * SKY_SIGMA * np.sqrt(4.0 * np.pi) * PSF_SIGMA
    transients = [(380, 120), (120, 380)]
    for x, y in transients:
        image += _stamp(psf, x, y, flux * (1.5 if x < 256 else 1.0), size)
    diff = _difference(image, np.full((size, size), SKY_SIGMA**2), psf)
    found = {}
    for local in (False, True):
        task = ImageDifferenceTask(ImageDifferenceConfig(local_noise=local))
        table = task._detect(diff, 1, 60000.0)
        real = np.zeros(len(table), bool)
        for x, y in transients:
            hit = np.hypot(table["x"] - x, table["y"] - y) < 2
            assert hit.any(), f"local_noise={local}: the transient at ({x}, {y}) was missed"
            real |= hit
        found[local] = int(np.sum(~real & (table["x"] < 250)))
    assert found[False] >= 2  # a threshold on the plane's noise finds the correlated peaks
    assert found[True] == 0


def _pair(seed: int, second: tuple[int, int]) -> Exposure:
    """Two transients, 3000 and 2000 nJy (S/N ~47 and ~31), at (95, 100) and ``second``."""
    psf = _psf()
    rng = np.random.default_rng(seed)
    image = _stamp(psf, 95, 100, 3000.0) + _stamp(psf, *second, 2000.0)
    image += rng.normal(0, SKY_SIGMA, (SIZE, SIZE))
    return _difference(image, np.full((SIZE, SIZE), SKY_SIGMA**2), psf)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_blended_transients_are_placed_at_their_own_peaks(seed):
    """Two images of a lensed quasar 8 px (1.9 FWHM) apart share a footprint: each DIASource
    lies within 0.3 px of its image, where the windowed centroid over its part of the
    footprint was pulled towards the other."""
    found = ImageDifferenceTask()._detect(_pair(seed, (103, 101)), 1, 60000.0)
    truth = np.array([[95.0, 100.0], [103.0, 101.0]])
    xy = np.column_stack([found["x"], found["y"]])
    assert len(found) == 2
    distance = np.hypot(*(xy[:, None, :] - truth[None, :, :]).transpose(2, 0, 1))
    assert np.all(distance.min(axis=0) < 0.3)


@pytest.mark.parametrize("seed", [0, 3, 4])
def test_a_shallow_saddle_still_splits_a_footprint(seed):
    """7 px (1.7 FWHM) apart, the fainter image's branch holds less than 0.5% of the
    footprint's flux: sep's usual contrast keeps one source, the difference's 0.1% two
    (in 6 of 8 noise draws; in the others the noise fills the saddle or the branch is big
    enough either way)."""
    diff = _pair(seed, (102, 101))
    assert len(ImageDifferenceTask()._detect(diff, 1, 60000.0)) == 2
    merged = ImageDifferenceTask(ImageDifferenceConfig(deblend_cont=0.005))
    assert len(merged._detect(diff, 1, 60000.0)) == 1


@pytest.mark.parametrize(("registration_error", "dipole_found"), [(0.0, True), (0.02, False)])
def test_a_bright_star_registered_off_leaves_no_dipole(registration_error, dipole_found):
    """A 1e7 nJy star whose two images are 0.015 px apart: the difference holds its dipole,
    many sigma strong. Against the variance plus the static sky's gradient times the
    registration error (ZOGY's astrometric term) it is not a DIASource, while a transient of
    S/N 30 on blank sky still is."""
    psf = _psf()
    yy, xx = np.indices((25, 25))

    def shifted(dx: float) -> np.ndarray:
        p = np.exp(-0.5 * (np.hypot(yy - 12, xx - 12 - dx) / PSF_SIGMA) ** 2)
        return p / p.sum()

    star = _stamp(psf, 60, 60, 1e7)
    dipole = 1e7 * (shifted(0.0075) - shifted(-0.0075))
    image = np.zeros((SIZE, SIZE))
    image[48:73, 48:73] = dipole
    # S/N 30 on blank sky: 30 x the PSF-flux noise, SKY_SIGMA sqrt(4 pi sigma^2)
    image += _stamp(psf, 140, 140, 30.0 * SKY_SIGMA * np.sqrt(4 * np.pi) * PSF_SIGMA)
    variance = SKY_SIGMA**2 + star
    image += np.random.default_rng(4).normal(0.0, np.sqrt(variance))
    diff = _difference(image, variance, psf)
    config = ImageDifferenceConfig(matching_error=0.0, registration_error=registration_error)
    found = ImageDifferenceTask(config)._detect(diff, 1, 60000.0, 1.0, star.astype(np.float32))
    near = lambda x0, y0: np.any(np.hypot(found["x"] - x0, found["y"] - y0) < 4)  # noqa: E731
    assert near(140, 140)
    assert near(60, 60) == dipole_found
