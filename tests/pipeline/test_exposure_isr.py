"""The Exposure, reading eimages (with their failure modes), ISR, cosmic rays, background."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from galsim_scenes import field_exposure, saturated_stars_exposure

from twinkles.detection.background import BackgroundModel, BackgroundTask
from twinkles.detection.detect import DetectionTask
from twinkles.image import Exposure, MaskPlane, PhotoCalib
from twinkles.image.psf import PixelPSF
from twinkles.isr.cosmic_rays import CosmicRayTask
from twinkles.isr.eimage import EimageError, EimageIsrTask, grow_diamond, read_eimage
from twinkles.sim.render import eimage_hdulist, render_visit
from twinkles.units import AB_MAG_OF_1_NJY

from scenes import make_scene, scene_exposure


@pytest.fixture(scope="module")
def scene_eimage(tmp_path_factory):
    scene = make_scene(render={"cosmic_ray_rate": 300.0}, grid_mags=(18.0, 21.0))
    rendered = render_visit(scene.sky, scene.config, scene.visit)
    path = tmp_path_factory.mktemp("eimage") / "eimage.fits"
    eimage_hdulist(rendered).writeto(path)
    return scene, rendered, path


def test_exposure_fits_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    from twinkles.sim.wcs import make_wcs

    psf = PixelPSF(rng.random((3, 25, 25)), 1, 100.0, 120.0, 150.0)
    exp = Exposure(
        image=rng.normal(size=(40, 50)).astype(np.float32),
        mask=rng.integers(0, 512, (40, 50)).astype(np.int32),
        variance=rng.random((40, 50)).astype(np.float32),
        wcs=make_wcs(53.0, -27.4, 12.0, 0.2, 50, 40, 0.3),
        psf=psf,
        photo_calib=PhotoCalib(31.9, 0.002),
        metadata={"visit": 7, "filter": "r", "mjd": 60000.5, "sky_level": 880.5},
    )
    exp.write_fits(tmp_path / "c.fits")
    back = Exposure.read_fits(tmp_path / "c.fits")
    for plane in ("image", "mask", "variance"):
        assert np.array_equal(getattr(back, plane), getattr(exp, plane))
    assert back.metadata == exp.metadata
    assert back.photo_calib == exp.photo_calib
    np.testing.assert_allclose(back.psf.kernel(10, 20), psf.kernel(10, 20))
    np.testing.assert_allclose(back.wcs.all_pix2world(5, 6, 0), exp.wcs.all_pix2world(5, 6, 0))


def test_photocalib_to_njy():
    calib = PhotoCalib(AB_MAG_OF_1_NJY, 0.0)  # one electron is one nJy
    assert calib.to_njy(100.0) == pytest.approx(100.0)
    assert PhotoCalib(AB_MAG_OF_1_NJY + 2.5, 0.0).to_njy(100.0) == pytest.approx(10.0)
    with_err = PhotoCalib(AB_MAG_OF_1_NJY, 0.01).to_njy_err(np.array([1000.0]), np.array([0.0]))
    assert with_err[0] == pytest.approx(1000.0 * 0.4 * np.log(10) * 0.01)


def _broken(path, tmp_path, edit):
    with fits.open(path) as hdul:
        hdul = fits.HDUList([h.copy() for h in hdul])
    edit(hdul)
    out = tmp_path / "broken.fits"
    hdul.writeto(out, overwrite=True)
    return out


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda h: h[0].header.remove("FILTER"), r"lacks header keys FILTER"),
        (
            lambda h: [h[0].header.remove(k) for k in ("OBSID", "CD1_1")],
            r"lacks header keys OBSID, CD1_1",
        ),
        (lambda h: h[0].data.fill(np.nan), r"every pixel .* is NaN"),
        (lambda h: h[0].data.fill(0.0), r"every pixel .* is zero"),
        (lambda h: h[0].header.__setitem__("FILTER", "H"), r"FILTER 'H' is not one of"),
        (lambda h: h[0].header.__setitem__("OBSID", 99), r"is visit 99 \(OBSID\), not"),
    ],
)
def test_bad_eimages_are_refused_naming_visit_and_cause(scene_eimage, tmp_path, edit, message):
    scene, _, path = scene_eimage
    bad = _broken(path, tmp_path, edit)
    with pytest.raises(EimageError, match=rf"^visit {scene.visit}: .*{message}"):
        read_eimage(bad, scene.visit)


def test_truncated_eimage_is_refused(scene_eimage, tmp_path):
    scene, _, path = scene_eimage
    data = path.read_bytes()
    bad = tmp_path / "truncated.fits"
    bad.write_bytes(data[: len(data) // 3])
    with pytest.raises(EimageError, match=rf"visit {scene.visit}: .* not a readable FITS image"):
        read_eimage(bad, scene.visit)
    with pytest.raises(EimageError, match="no eimage at"):
        read_eimage(tmp_path / "absent.fits", scene.visit)


def test_some_nan_pixels_are_masked_not_fatal(scene_eimage, tmp_path):
    scene, _, path = scene_eimage
    bad = _broken(
        path, tmp_path, lambda h: h[0].data.__setitem__((slice(0, 5), slice(None)), np.nan)
    )
    exp = read_eimage(bad, scene.visit)
    assert np.all(exp.masked(MaskPlane.NO_DATA)[:5]) and not exp.masked(MaskPlane.NO_DATA)[5:].any()
    assert np.all(np.isfinite(exp.image))


def test_isr_variance_saturation_and_interpolation(tmp_path):
    scene = make_scene(grid_mags=(30.0, 30.1), extra=(256.3, 255.8, 14.0))
    rendered = render_visit(scene.sky, scene.config, scene.visit)
    exp = scene_exposure(rendered, tmp_path)
    raw = exp.image.copy()
    result = EimageIsrTask().run(exp)
    sat = exp.masked(MaskPlane.SAT)
    # every pixel at the full well is masked, the trail is interpolated, variance = counts
    assert np.all(sat[raw >= 100000.0])
    assert result.n_saturated >= np.sum(raw >= 100000.0)
    assert np.all(exp.masked(MaskPlane.INTRP)[sat])
    assert np.all(exp.image[sat] < 100000.0)
    clean = ~sat
    np.testing.assert_allclose(exp.variance[clean], np.maximum(raw[clean], 0.0))


def test_saturation_growth_is_the_iterated_cross_dilation():
    from scipy import ndimage

    rng = np.random.default_rng(7)
    mask = rng.random((40, 50)) < 0.01
    mask[0, 0] = mask[39, 25] = True  # at the edges
    for radius in (0, 1, 2, 4):
        expected = ndimage.binary_dilation(mask, iterations=radius) if radius else mask
        np.testing.assert_array_equal(grow_diamond(mask, radius), expected)
        # too many pixels to grow one by one: scipy's dilation, the same mask
        np.testing.assert_array_equal(grow_diamond(mask, radius, max_points=1), expected)


def test_isr_variance_follows_gain_and_read_noise():
    from twinkles.image import Exposure

    image = np.array([[-50.0, 0.0, 400.0, 9000.0]], dtype=np.float32)
    exp = Exposure(
        image.copy(),
        np.zeros(image.shape, np.int32),
        np.zeros_like(image),
        metadata={"gain": 2.0, "rdnoise": 5.0, "saturate": 1e6},
    )
    EimageIsrTask().run(exp)
    np.testing.assert_allclose(exp.variance, np.maximum(image, 0) / 2.0 + 25.0)


def test_cosmic_rays_found_and_stars_spared(scene_eimage, tmp_path):
    scene, rendered, path = scene_eimage
    exp = read_eimage(path, scene.visit)
    EimageIsrTask().run(exp)
    BackgroundTask().run(exp)
    result = CosmicRayTask().run(exp)
    tracks = rendered.truth["cosmic_rays"]
    found = exp.masked(MaskPlane.CR)
    h, w = exp.shape
    hit = [
        found[round(y0), round(x0)]
        for x0, y0, *_ in tracks
        if 1 <= round(x0) < w - 1 and 1 <= round(y0) < h - 1
    ]
    assert len(hit) > 20 and np.mean(hit) > 0.9  # track starts are found
    # no star core is taken for a cosmic ray
    for x, y in zip(scene.x, scene.y, strict=True):
        ix, iy = round(x), round(y)
        assert not found[iy - 1 : iy + 2, ix - 1 : ix + 2].any()
    assert result.n_events >= 0.8 * len(hit)


def test_cosmic_rays_no_false_positives_on_noise():
    rng = np.random.default_rng(4)
    image = rng.normal(0.0, 30.0, (1024, 1024)).astype(np.float32)
    exp = Exposure(image, np.zeros(image.shape, np.int32), np.full(image.shape, 900.0, np.float32))
    assert CosmicRayTask().run(exp).n_pixels == 0


def test_background_recovers_a_gradient_and_round_trips():
    rng = np.random.default_rng(2)
    yy, xx = np.mgrid[0:600, 0:700]
    truth = (900.0 + 0.05 * xx - 0.03 * yy).astype(np.float32)
    image = (truth + rng.normal(0, 30.0, truth.shape)).astype(np.float32)
    exp = Exposure(image, np.zeros(image.shape, np.int32), image.copy())
    result = BackgroundTask().run(exp)
    model = result.model.evaluate()
    assert np.abs(model - truth)[64:-64, 64:-64].max() < 3.0  # 0.1 sigma of a pixel
    assert abs(np.mean(exp.image)) < 0.5
    back = BackgroundModel.from_hdulist(result.model.to_hdulist())
    np.testing.assert_allclose(back.evaluate(), model, rtol=1e-6)
    assert exp.metadata["sky_noise"] == pytest.approx(30.0, rel=0.05)


@pytest.mark.parametrize("seed", [1, 2])
def test_the_sky_estimated_again_without_the_sources_is_the_sky(seed):
    # a GalSim field (stars with Moffat beta 2.5 wings, exponential galaxies) on a flat sky:
    # the first estimate sees the sources' outskirts, the second leaves them out
    scene = field_exposure(seed=seed)
    exp = scene.exposure
    original = exp.image.copy()
    sigma = np.sqrt(scene.sky)
    task = BackgroundTask()
    first = task.run(exp)
    detections = DetectionTask().run(exp)
    first_bias = (first.model.evaluate().mean() - scene.sky) / sigma
    refined = task.refine(exp, first.model, detections.fwhm)
    refined_bias = (refined.model.evaluate().mean() - scene.sky) / sigma
    # the noise of a mean over the sensor is ~0.002 sigma: these are the sources' light
    assert first_bias > 0.04
    assert abs(refined_bias) < 0.3 * first_bias and abs(refined_bias) < 0.025
    # the stored model is the whole background: model + image gives back the pixels
    restored = refined.model.evaluate() + exp.image
    assert np.abs(restored - original)[64:-64, 64:-64].max() < 0.01 * sigma
    assert exp.metadata["sky_level"] == pytest.approx(refined.model.median_level)


def test_refining_the_sky_needs_a_seeing():
    exp = Exposure(
        np.zeros((64, 64), np.float32), np.zeros((64, 64), np.int32), np.ones((64, 64), np.float32)
    )
    model = BackgroundTask().run(exp).model
    with pytest.raises(ValueError, match="seeing FWHM"):
        BackgroundTask().refine(exp, model, 0.0)


@pytest.mark.parametrize(("profile", "fwhm"), [("moffat", 0.5), ("kolmogorov", 0.7)])
def test_a_saturated_star_is_one_source(profile, fwhm):
    # interpolated saturated cores hold two peaks; the deblender split 15-20% of these stars
    for seed in (1, 2, 3):
        scene = saturated_stars_exposure(seed=seed, profile=profile, fwhm=fwhm)
        exp = scene.exposure
        EimageIsrTask().run(exp)
        BackgroundTask().run(exp)
        detections = DetectionTask().run(exp)
        src = detections.sources
        for x, y in zip(scene.x, scene.y, strict=True):
            near = np.hypot(src["x"] - x, src["y"] - y) < 10.0
            assert near.sum() == 1, (seed, x, y)
            assert np.hypot(*(np.array([src["x"][near][0] - x, src["y"][near][0] - y]))) < 1.0
        # one segmentation label per source, every label used
        labels = np.unique(detections.segmentation)
        np.testing.assert_array_equal(labels, np.arange(len(src) + 1))
