"""Tile-compressed images: masks bit for bit; quantised planes within their step, unbiased,
with the added noise the step predicts; photometry unchanged within a small fraction of its
errors; the same bytes for the same pixels; compressed eimages read like plain ones."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits
from galsim_scenes import field_exposure

from twinkles.coadd.assemble import _WarpReader
from twinkles.image import Exposure, MaskPlane
from twinkles.image.compression import ImageCompression, sky_noise
from twinkles.isr.eimage import read_eimage
from twinkles.sim.render import eimage_hdulist, render_visit

from scenes import make_scene


@pytest.fixture(scope="module")
def field():
    scene = field_exposure(seed=3, size=512)
    exp = scene.exposure
    exp.mask[100:110, 200:260] |= int(MaskPlane.SAT)
    exp.mask[:, :5] |= int(MaskPlane.NO_DATA)
    exp.image[:, :5] = 0.0  # no data: exact zeros, as a warp's border
    exp.image[300, 300] = np.nan
    return scene


def _round_trip(exp, path, compression):
    exp.write_fits(path, compression)
    return Exposure.read_fits(path)


def test_quantised_planes_stay_within_their_step_unbiased(field, tmp_path):
    exp = field.exposure
    compression = ImageCompression()
    back = _round_trip(exp, tmp_path / "c.fits", compression)
    assert np.array_equal(back.mask, exp.mask)
    noise = sky_noise(exp.variance)
    assert noise == pytest.approx(np.sqrt(field.sky), rel=0.05)
    for plane, step in (
        ("image", compression.image_step * noise),
        ("variance", compression.variance_step * noise**2),
    ):
        before, after = getattr(exp, plane), getattr(back, plane)
        finite = np.isfinite(before)
        assert np.array_equal(finite, np.isfinite(after))  # NaN stays NaN
        err = (after - before)[finite].astype(np.float64)
        assert np.abs(err).max() <= 0.5 * step * 1.001
        # dithered rounding: uniform in a step, so std step/sqrt(12) and mean 0
        assert err.std() == pytest.approx(step / np.sqrt(12.0), rel=0.02)
        assert abs(err.mean()) < 5 * err.std() / np.sqrt(err.size)
    assert np.all(back.image[:, :5] == 0.0)  # exact zeros are kept
    # the noise added is the step's: sigma**2 (1 + image_step**2 / 12)
    sky = (exp.mask == 0) & np.isfinite(exp.image)
    resid = (back.image - exp.image)[sky]
    assert np.corrcoef(resid, exp.image[sky])[0, 1] == pytest.approx(0.0, abs=0.01)


def test_photometry_of_compressed_images_agrees_within_a_fraction_of_its_error(field, tmp_path):
    exp = field.exposure
    back = _round_trip(exp, tmp_path / "c.fits", ImageCompression())
    yy, xx = np.mgrid[-8:9, -8:9]
    aperture = xx**2 + yy**2 <= 64
    rng = np.random.default_rng(0)
    centres = rng.integers(20, 490, (300, 2))

    def flux(img):
        return np.array(
            [np.nansum(img[y - 8 : y + 9, x - 8 : x + 9][aperture]) for y, x in centres]
        )

    error = np.sqrt(aperture.sum() * field.sky)
    diff = (flux(back.image) - flux(exp.image)) / error
    # per pixel the step adds 1/16 / sqrt(12) = 1.8% of the sky noise
    assert np.nanstd(diff) < 0.025
    assert abs(np.nanmean(diff)) < 0.005


def test_compressed_files_are_small_and_deterministic(field, tmp_path):
    exp = field.exposure
    exp.write_fits(tmp_path / "plain.fits")
    exp.write_fits(tmp_path / "a.fits", ImageCompression())
    exp.write_fits(tmp_path / "b.fits", ImageCompression())
    plain, a = (tmp_path / "plain.fits").stat().st_size, (tmp_path / "a.fits").stat().st_size
    assert a < plain / 3
    assert (tmp_path / "a.fits").read_bytes() == (tmp_path / "b.fits").read_bytes()
    lossless = _round_trip(exp, tmp_path / "l.fits", ImageCompression(mode="lossless"))
    for plane in ("image", "mask", "variance"):
        assert np.array_equal(getattr(lossless, plane), getattr(exp, plane), equal_nan=True)


def test_a_streamed_reader_reads_compressed_rows(field, tmp_path):
    exp = field.exposure
    exp.metadata.update({"visit": 5, "x0": 0, "y0": 0})
    path = tmp_path / "warp.fits"
    exp.write_fits(path, ImageCompression(tile_rows=16))
    whole = Exposure.read_fits(path)
    reader = _WarpReader(path)
    try:
        _, _, image, variance, usable, _, _ = reader.rows(37, 90, exp.image.shape[1])
    finally:
        reader.close()
    np.testing.assert_array_equal(image, whole.image[37:90])
    np.testing.assert_array_equal(variance, whole.variance[37:90])
    assert not usable[:, :5].any()


def test_compressed_eimage_reads_as_the_plain_one(tmp_path):
    scene = make_scene(grid_mags=(18.0, 21.0))
    rendered = render_visit(scene.sky, scene.config, scene.visit)
    eimage_hdulist(rendered).writeto(tmp_path / "plain.fits")
    eimage_hdulist(rendered, ImageCompression()).writeto(tmp_path / "packed.fits")
    with fits.open(tmp_path / "packed.fits") as hdul:
        assert hdul[0].data is None and isinstance(hdul[1], fits.CompImageHDU)
    plain = read_eimage(tmp_path / "plain.fits", scene.visit)
    packed = read_eimage(tmp_path / "packed.fits", scene.visit)
    assert packed.metadata == plain.metadata
    np.testing.assert_allclose(packed.wcs.wcs.crval, plain.wcs.wcs.crval)
    err = packed.image - plain.image
    noise = np.sqrt(np.median(plain.image))
    assert np.abs(err).max() < 0.06 * noise  # within half a step of 1/16 of the noise
    assert np.abs(err).std() < 0.025 * noise
    assert (tmp_path / "packed.fits").stat().st_size < (tmp_path / "plain.fits").stat().st_size / 3


def test_infinite_variance_is_kept_without_losing_the_compression(field, tmp_path):
    """No-data pixels of a difference image or template have variance +inf: kept as +inf, and
    the tiles holding them are still quantised (a quantised tile cannot hold an infinity;
    the FITS library would store such tiles losslessly, ~3x larger)."""
    exp = Exposure(
        image=field.exposure.image.copy(),
        mask=field.exposure.mask.copy(),
        variance=field.exposure.variance.copy(),
        wcs=field.exposure.wcs,
        metadata={"visit": 5, "x0": 0, "y0": 0},
    )
    exp.image[300, 300] = 0.0  # no NaN in this plane
    exp.variance[:, :5] = np.inf
    exp.write_fits(tmp_path / "inf.fits", ImageCompression())
    clean = Exposure(exp.image, exp.mask, field.exposure.variance.copy(), exp.wcs)
    clean.variance[:, :5] = 1.0
    clean.write_fits(tmp_path / "finite.fits", ImageCompression())
    with_inf, finite = ((tmp_path / n).stat().st_size for n in ("inf.fits", "finite.fits"))
    assert with_inf < 1.1 * finite
    back = Exposure.read_fits(tmp_path / "inf.fits")
    assert np.array_equal(np.isposinf(back.variance), np.isposinf(exp.variance))
    assert not np.isnan(back.variance).any()
    with fits.open(tmp_path / "inf.fits") as hdul:  # a caller's HDUList is left as it was
        again = Exposure.from_hdulist(hdul)
        assert np.isposinf(again.variance[:, :5]).all()
        assert np.isnan(hdul["VARIANCE"].data[:, :5]).all()
    reader = _WarpReader(tmp_path / "inf.fits")
    try:
        _, _, _, variance, usable, _, _ = reader.rows(0, 50, exp.image.shape[1])
    finally:
        reader.close()
    assert np.isposinf(variance[:, :5]).all() and not usable[:, :5].any()
