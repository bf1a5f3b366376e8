"""The real/bogus classifier on difference images drawn with GalSim (not twinkles.sim).

Real: point sources of the PSF, some on galaxies of the template. Bogus: what subtractions
leave: dipoles of misregistered stars on bright template stars, residuals of extended
galaxies, single-pixel hits, and rings of a PSF core too narrow or too wide. A classifier grown
on one image must tell them apart on another, drawn with other seeds and another PSF width.
"""

from __future__ import annotations

import galsim
import numpy as np
import pytest
from astropy.table import Table

from twinkles.diffim.associate import associate_dia_sources
from twinkles.diffim.realbogus import dia_source_features
from twinkles.diffim.reliability import (
    TRAINING_SET,
    RealBogusClassifier,
    RealBogusConfig,
    default_classifier,
    feature_matrix,
)
from twinkles.diffim.subtract import ImageDifferenceTask
from twinkles.image.exposure import Exposure, PhotoCalib
from twinkles.image.psf import PixelPSF
from twinkles.measurement.psf_flux import psf_flux
from twinkles.sim.wcs import make_wcs

SIZE, SCALE, SKY = 1024, 0.2, 500.0
N_EACH = 40


def _stamp(obj: galsim.GSObject, x: float, y: float, image: np.ndarray, half: int = 30) -> None:
    ix, iy = round(x), round(y)
    drawn = obj.drawImage(
        nx=2 * half + 1, ny=2 * half + 1, scale=SCALE, offset=(x - ix, y - iy)
    ).array
    image[iy - half : iy + half + 1, ix - half : ix + half + 1] += drawn


def labelled_difference(seed: int, fwhm: float) -> Table:
    """DIASources (features and ``real``) of a GalSim difference image and its template."""
    rng = np.random.default_rng(seed)
    psf_obj = galsim.Moffat(beta=3.0, fwhm=fwhm)
    psf_image = psf_obj.drawImage(nx=25, ny=25, scale=SCALE).array
    psf = PixelPSF((psf_image / psf_image.sum())[None], 0, SIZE / 2, SIZE / 2, SIZE / 2)
    diff = np.zeros((SIZE, SIZE))
    template = np.zeros((SIZE, SIZE))
    # a grid of well-separated places, shuffled among the kinds
    grid = np.array([(x, y) for x in range(50, SIZE - 49, 60) for y in range(50, SIZE - 49, 60)])
    places = grid[rng.permutation(len(grid))[: 5 * N_EACH]] + rng.uniform(-3, 3, (5 * N_EACH, 2))
    kinds = np.repeat(["point", "dipole", "galaxy_residual", "hit", "ring"], N_EACH)
    noise_psf = np.sqrt(SKY * 4 * np.pi * (fwhm / SCALE / 2.355) ** 2)  # PSF-flux sigma
    for (x, y), kind in zip(places, kinds, strict=True):
        if kind == "point":
            flux = noise_psf * np.exp(rng.uniform(np.log(6), np.log(60)))
            _stamp(psf_obj.withFlux(flux), x, y, diff)
            if rng.uniform() < 0.5:  # on a host
                host = galsim.Exponential(half_light_radius=rng.uniform(0.5, 1.5), flux=5 * flux)
                _stamp(galsim.Convolve(host, psf_obj), x + 2, y, template)
        elif kind == "dipole":
            flux = rng.uniform(20, 200) * noise_psf
            shift = rng.uniform(0.2, 0.5) * SCALE
            _stamp(psf_obj.withFlux(flux).shift(shift, 0), x, y, diff)
            _stamp(psf_obj.withFlux(-flux).shift(-shift, 0), x, y, diff)
            _stamp(psf_obj.withFlux(flux), x, y, template)
        elif kind == "galaxy_residual":
            flux = rng.uniform(200, 1000) * noise_psf
            galaxy = galsim.Convolve(
                galsim.Exponential(half_light_radius=rng.uniform(0.8, 2.0), flux=flux), psf_obj
            )
            _stamp(galaxy.withFlux(0.05 * flux), x, y, diff)
            _stamp(galaxy, x, y, template)
        elif kind == "hit":
            diff[round(y), round(x)] += rng.uniform(8, 40) * np.sqrt(SKY)
        else:  # a core too narrow for the kernel: a positive core in a negative ring
            flux = rng.uniform(30, 300) * noise_psf
            narrow = galsim.Moffat(beta=3.0, fwhm=0.8 * fwhm, flux=flux)
            _stamp(narrow, x, y, diff)
            _stamp(psf_obj.withFlux(-flux), x, y, diff)
            _stamp(psf_obj.withFlux(flux), x, y, template)
    diff += rng.standard_normal(diff.shape) * np.sqrt(SKY)
    wcs = make_wcs(150.0, 2.0, 0.0, SCALE, SIZE, SIZE)
    variance = np.full((SIZE, SIZE), SKY, np.float32)
    mask = np.zeros((SIZE, SIZE), np.int32)
    exposure = Exposure(diff.astype(np.float32), mask, variance, wcs, psf, PhotoCalib(31.4))
    template_exposure = Exposure(template.astype(np.float32), mask.copy(), variance, wcs)
    x, y = places[:, 0], places[:, 1]
    flux, err, _ = psf_flux(exposure, x, y)
    features = dia_source_features(
        exposure, template_exposure, x, y, np.where(flux < 0, -1, 1), flux, fwhm / SCALE, SCALE
    )
    table = Table(features)
    table["snr"] = flux / err
    table["isDipole"] = np.zeros(len(x), bool)
    table["real"] = kinds == "point"
    table["kind"] = kinds
    return table


@pytest.fixture(scope="module")
def scenes() -> tuple[Table, Table]:
    return labelled_difference(1, 0.7), labelled_difference(2, 0.95)


@pytest.mark.parametrize("classifier", ["random_forest", "gradient_boosting"])
def test_the_classifier_carries_to_another_scene(scenes, classifier):
    train, test = scenes
    model = RealBogusClassifier(RealBogusConfig(classifier=classifier)).fit(train, train["real"])
    score = model.score(test)
    real = np.asarray(test["real"])
    # 40 real and 160 bogus: a classifier that tells them apart keeps >= 90% of the real ones
    # and lets through <= 5% of the bogus ones at the default cut
    cut = RealBogusConfig().min_reliability
    assert np.mean(score[real] >= cut) >= 0.9
    assert np.mean(score[~real] >= cut) <= 0.05
    for kind in ("dipole", "galaxy_residual", "hit", "ring"):
        assert np.median(score[np.asarray(test["kind"]) == kind]) < cut, kind


def test_a_classifier_needs_both_classes_and_every_feature(scenes):
    train, _ = scenes
    with pytest.raises(ValueError, match="both real and bogus"):
        RealBogusClassifier().fit(train, np.ones(len(train), bool))
    with pytest.raises(ValueError, match="apRatio"):
        feature_matrix(train[[c for c in train.colnames if c != "apRatio"]])
    with pytest.raises(RuntimeError, match="fit it first"):
        RealBogusClassifier().score(train)


def test_the_packaged_classifier_scores_these_scenes(scenes):
    """The packaged training set (the project's own scenes) on GalSim's: it has never seen them
    and must still rank point sources above subtraction residuals."""
    assert TRAINING_SET.exists()
    _, test = scenes
    score = default_classifier().score(test)
    real = np.asarray(test["real"])
    cut = RealBogusConfig().min_reliability
    assert np.mean(score[real] >= cut) >= 0.8
    assert np.mean(score[~real] >= cut) <= 0.2


def test_dia_objects_count_their_reliable_dia_sources():
    sources = Table(
        {
            "diaSourceId": [1, 2, 3, 4],
            "ra": [10.0, 10.0 + 1e-5, 10.0, 20.0],
            "decl": [0.0, 0.0, 1e-5, 0.0],
            "midPointTai": [1.0, 2.0, 3.0, 4.0],
            "psFlux": [1.0, 1.0, 1.0, 1.0],
            "psFluxErr": [0.1, 0.1, 0.1, 0.1],
            "reliability": [0.9, 0.2, 0.6, 0.1],
        }
    )
    bands = np.array(["r"] * 4)
    _, objects = associate_dia_sources(sources, bands, 0.5, min_reliability=0.5)
    objects.sort("diaObjectId")
    assert list(objects["nDiaSources"]) == [3, 1]
    assert list(objects["nReliableDiaSources"]) == [2, 0]
    assert list(objects["reliabilityMax"]) == [0.9, 0.1]
    _, unscored = associate_dia_sources(sources, bands, 0.5)
    assert list(unscored["nReliableDiaSources"]) == [-1, -1]
    with pytest.raises(ValueError, match="no reliability column"):
        associate_dia_sources(
            sources[["diaSourceId", "ra", "decl", "midPointTai", "psFlux", "psFluxErr"]],
            bands,
            0.5,
            min_reliability=0.5,
        )


@pytest.mark.parametrize("seed", [3, 4])
def test_the_images_of_a_lensed_quasar_are_scored_as_point_sources(seed):
    """Quads drawn with GalSim (Moffat PSF, FWHM 0.8"; images on a 1" Einstein ring, each at
    S/N 15-40 on the difference): measured alone, each image's aperture holds its neighbours'
    light. As one blend, each is measured without the others, fits the PSF and passes the
    packaged classifier; the lobes of dipoles 0.2-0.3" long, of opposite signs, are not a
    blend and are scored as alone."""
    rng = np.random.default_rng(seed)
    fwhm = 0.8
    psf_obj = galsim.Moffat(beta=3.0, fwhm=fwhm)
    psf_image = psf_obj.drawImage(nx=25, ny=25, scale=SCALE).array
    psf = PixelPSF((psf_image / psf_image.sum())[None], 0, SIZE / 2, SIZE / 2, SIZE / 2)
    noise_psf = np.sqrt(SKY * 4 * np.pi * (fwhm / SCALE / 2.355) ** 2)
    diff = np.zeros((SIZE, SIZE))
    places, polarity = [], []
    for cx in range(100, SIZE - 99, 120):
        cy = 300.0
        angles = rng.uniform(0, 2 * np.pi) + np.array([0.0, 0.5, 1.0, 1.5]) * np.pi
        angles += rng.uniform(-0.25, 0.25, 4)
        for a in angles:
            x, y = cx + 5.0 * np.cos(a), cy + 5.0 * np.sin(a)  # 5 px = 1"
            _stamp(psf_obj.withFlux(-rng.uniform(15, 40) * noise_psf), x, y, diff)
            places.append((x, y))
            polarity.append(-1)
        shift = rng.uniform(0.2, 0.3) / 2  # arcsec
        flux = rng.uniform(30, 100) * noise_psf
        _stamp(psf_obj.withFlux(flux).shift(shift, 0), cx, 700.0, diff)
        _stamp(psf_obj.withFlux(-flux).shift(-shift, 0), cx, 700.0, diff)
        offset = shift / SCALE + 0.6  # the lobes' peaks lie beyond the shift
        places += [(cx + offset, 700.0), (cx - offset, 700.0)]
        polarity += [1, -1]
    diff += rng.standard_normal(diff.shape) * np.sqrt(SKY)
    wcs = make_wcs(150.0, 2.0, 0.0, SCALE, SIZE, SIZE)
    mask = np.zeros((SIZE, SIZE), np.int32)
    variance = np.full((SIZE, SIZE), SKY, np.float32)
    exposure = Exposure(diff.astype(np.float32), mask, variance, wcs, psf, PhotoCalib(31.4))
    template = Exposure(np.zeros((SIZE, SIZE), np.float32), mask.copy(), variance, wcs)
    x, y = np.array(places).T
    polarity = np.array(polarity)
    fwhm_px = fwhm / SCALE
    blends = ImageDifferenceTask()._blends(x, y, polarity, fwhm_px)
    lensed = np.tile([True] * 4 + [False] * 2, len(x) // 6)
    classifier = default_classifier()
    scores = {}
    for name, labels in (("alone", None), ("blend", blends)):
        flux, err, _ = psf_flux(exposure, x, y, groups=labels)
        table = Table(
            dia_source_features(
                exposure, template, x, y, polarity, flux, fwhm_px, SCALE, blends=labels
            )
        )
        table["snr"] = np.abs(flux / err)
        table["isDipole"] = ~lensed
        scores[name] = (table, classifier.score(table))
    alone, blend = scores["alone"][0][lensed], scores["blend"][0][lensed]
    assert np.median(alone["apRatio"]) > 1.3
    assert np.all(np.abs(blend["apRatio"] - 1) < 0.25)
    assert np.median(blend["psfChi2"]) < 1.5
    cut = RealBogusConfig().min_reliability
    assert np.mean(scores["alone"][1][lensed] >= cut) < 0.8
    assert np.mean(scores["blend"][1][lensed] >= cut) >= 0.9
    # a dipole is scored as it was alone: its lobes are not one blend
    np.testing.assert_allclose(scores["blend"][1][~lensed], scores["alone"][1][~lensed])
