"""The truth a forced difference flux is scored against, blends included, on synthetic images."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from twinkles.image import Exposure, MaskPlane, PhotoCalib
from twinkles.image.psf import PixelPSF
from twinkles.measurement.forced import ForcedPhotometryTask
from twinkles.measurement.psf_flux import psf_flux
from twinkles.sim.wcs import make_wcs
from twinkles.units import AB_MAG_OF_1_NJY
from twinkles.validation.dia import expected_forced_flux

SIGMA = 2.0  # PSF sigma, pixels
SHAPE = (120, 130)
SKY_SIGMA = 5.0  # nJy per pixel


def gaussian_psf(size: int = 25) -> PixelPSF:
    r = np.arange(size) - size // 2
    k = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / SIGMA**2)
    return PixelPSF((k / k.sum())[None], 0, 0.0, 0.0, 1.0)


class FakeTruth:
    """Fluxes per id: ``now`` at any epoch but the template's, ``then`` at the template's."""

    def __init__(self, now: dict[int, float], then: dict[int, float], template_mjd: float):
        self.now, self.then, self.template_mjd = now, then, template_mjd

    def flux(self, ids, band, mjd):
        ids = np.atleast_1d(ids)
        table = self.then if float(mjd) == self.template_mjd else self.now
        return np.array([table[int(i)] for i in ids])


@pytest.fixture
def difference():
    wcs = make_wcs(53.0, -27.4, 0.0, 0.2, SHAPE[1], SHAPE[0])
    return Exposure(
        np.zeros(SHAPE, np.float32),
        np.zeros(SHAPE, np.int32),
        np.full(SHAPE, SKY_SIGMA**2, np.float32),
        wcs,
        gaussian_psf(),
        PhotoCalib(AB_MAG_OF_1_NJY),
        {},
    )


def sky(exposure, x, y):
    ra, dec = exposure.wcs.all_pix2world(np.atleast_1d(x), np.atleast_1d(y), 0)
    return np.asarray(ra, float), np.asarray(dec, float)


def test_render_draws_unit_psfs_and_keeps_wings_of_sources_off_the_edge():
    psf = gaussian_psf()
    image = psf.render(SHAPE, np.array([40.3, 80.7]), np.array([50.6, 30.2]), [1000.0, 250.0])
    assert image.sum() == pytest.approx(1250.0, rel=1e-9)
    exposure = Exposure(
        image.astype(np.float32),
        np.zeros(SHAPE, np.int32),
        np.ones(SHAPE, np.float32),
        None,
        psf,
        PhotoCalib(AB_MAG_OF_1_NJY),
        {},
    )
    flux, _, _ = psf_flux(exposure, np.array([40.3, 80.7]), np.array([50.6, 30.2]))
    np.testing.assert_allclose(flux, [1000.0, 250.0], rtol=1e-5)
    # 3 px beyond the right edge: the wings that fall on the image are drawn
    edge = psf.render(SHAPE, np.array([SHAPE[1] + 2.0]), np.array([60.0]), [1000.0])
    expected_on = 1000.0 * psf.kernel(0, 0)[:, : psf.half - 2].sum()
    assert edge.sum() == pytest.approx(expected_on, rel=1e-6)
    assert psf.render(SHAPE, np.array([-50.0]), np.array([-50.0]), [1.0]).sum() == 0.0


def test_a_neighbour_one_pixel_away_counts_with_the_psf_overlap(difference):
    # two supernovae of one host, 1 px (0.2") apart; the template holds neither
    x = np.array([60.2, 61.2])
    y = np.array([55.4, 55.4])
    ra, dec = sky(difference, x, y)
    variables = Table({"truth_id": [1, 2], "ra": ra, "dec": dec})
    template = {"mjds": [59000.0], "weights": [1.0]}
    truth = FakeTruth({1: 1000.0, 2: 500.0}, {1: 0.0, 2: 0.0}, 59000.0)
    # one forced position (one DIAObject): the fit at it takes the neighbour's overlap,
    # exp(-d^2 / (4 sigma^2)) for a Gaussian PSF
    one = expected_forced_flux(
        difference, truth, variables, "r", 60000.0, template, ra[:1], dec[:1]
    )
    overlap = np.exp(-(1.0**2) / (4 * SIGMA**2))
    assert one[0] == pytest.approx(1000.0 + 500.0 * overlap, rel=2e-3)
    # both positions forced: the joint fit separates them exactly
    both = expected_forced_flux(difference, truth, variables, "r", 60000.0, template, ra, dec)
    np.testing.assert_allclose(both, [1000.0, 500.0], rtol=1e-4)
    # flux in the template comes out of the difference
    dimmer = FakeTruth({1: 1000.0, 2: 500.0}, {1: 200.0, 2: 0.0}, 59000.0)
    later = expected_forced_flux(difference, dimmer, variables, "r", 60000.0, template, ra, dec)
    np.testing.assert_allclose(later, [800.0, 500.0], rtol=1e-4)


def test_measured_blends_scatter_about_the_expectation_by_their_errors(difference):
    rng = np.random.default_rng(11)
    x = np.array([60.2, 61.0, 30.0])
    y = np.array([55.4, 56.1, 90.0])
    ra, dec = sky(difference, x, y)
    variables = Table({"truth_id": [1, 2, 3], "ra": ra, "dec": dec})
    template = {"mjds": [59000.0], "weights": [1.0]}
    truth = FakeTruth({1: 800.0, 2: 900.0, 3: 300.0}, {1: 0.0, 2: 0.0, 3: 0.0}, 59000.0)
    where = (ra[[0, 2]], dec[[0, 2]])  # DIAObjects at sources 1 and 3; source 2 has none
    expected = expected_forced_flux(difference, truth, variables, "r", 60000.0, template, *where)
    model = difference.psf.render(SHAPE, x, y, [800.0, 900.0, 300.0])
    pulls = []
    for _ in range(200):
        noisy = Exposure(
            (model + rng.normal(0.0, SKY_SIGMA, SHAPE)).astype(np.float32),
            difference.mask,
            difference.variance,
            difference.wcs,
            difference.psf,
            difference.photo_calib,
            {},
        )
        cat = ForcedPhotometryTask().run(noisy, *where).catalog
        pulls.append((cat["psFlux"] - expected) / cat["psFluxErr"])
    pulls = np.array(pulls)
    # 200 draws: the mean within 4 standard errors of 0, the spread within 15% of 1
    assert np.all(np.abs(pulls.mean(axis=0)) < 4 / np.sqrt(200))
    np.testing.assert_allclose(pulls.std(axis=0), 1.0, atol=0.15)
    # ignoring the neighbour would be a bias of many sigma
    assert (expected[0] - 800.0) / np.median(cat["psFluxErr"]) > 10


def test_positions_off_the_image_are_nan_and_masks_are_respected(difference):
    difference.mask[50:60, 55:65] |= int(MaskPlane.BAD)
    ra, dec = sky(difference, np.array([60.0, -40.0]), np.array([55.0, 10.0]))
    variables = Table({"truth_id": [1], "ra": ra[:1], "dec": dec[:1]})
    truth = FakeTruth({1: 1000.0}, {1: 0.0}, 59000.0)
    template = {"mjds": [59000.0], "weights": [1.0]}
    out = expected_forced_flux(difference, truth, variables, "r", 60000.0, template, ra, dec)
    # the unmasked part of the PSF still fits the point source's flux
    assert out[0] == pytest.approx(1000.0, rel=1e-4)
    assert np.isnan(out[1])
