"""Warping and coadding on synthetic exposures with known stars and noise."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from twinkles.coadd.assemble import (
    CoaddConfig,
    CoaddTask,
    _WarpReader,
    coadd_psf,
    noise_ratio,
)
from twinkles.coadd.skymap import SkyMapConfig, make_skymap
from twinkles.coadd.warp import CalexpModel, WarpTask, spline_variance_factor
from twinkles.image import Exposure, MaskPlane, PhotoCalib
from twinkles.image.psf import PixelPSF
from twinkles.sim.wcs import make_wcs

RA, DEC, SCALE = 53.01, -27.44, 0.2
SIGMA_PSF = 1.8  # pixels
SKY_SIGMA = 10.0  # electrons


def gaussian_psf(size: int = 25, sigma: float = SIGMA_PSF) -> PixelPSF:
    r = np.arange(size) - size // 2
    k = np.exp(-0.5 * (r[:, None] ** 2 + r[None, :] ** 2) / sigma**2)
    return PixelPSF((k / k.sum())[None], 0, 0.0, 0.0, 1.0)


def star_image(shape, x, y, flux, sigma=SIGMA_PSF):
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    img = np.zeros(shape)
    for xi, yi, fi in zip(x, y, flux, strict=True):
        img += fi * np.exp(-0.5 * ((xx - xi) ** 2 + (yy - yi) ** 2) / sigma**2)
    return img / (2 * np.pi * sigma**2)


def make_calexp(rotation, seed, shape=(160, 150), stars=(), distortion=0.0, zp=31.0, visit=1):
    """A calexp with Gaussian stars at sky positions ``stars`` = [(ra, dec, flux_njy)]."""
    rng = np.random.default_rng(seed)
    wcs = make_wcs(RA, DEC, rotation, SCALE, shape[1], shape[0], distortion_px=distortion)
    calib = PhotoCalib(zp, 0.0)
    image = rng.normal(0.0, SKY_SIGMA, shape)
    if stars:
        ra, dec, flux = (np.array(c) for c in zip(*stars, strict=True))
        x, y = wcs.all_world2pix(ra, dec, 0)
        image += star_image(shape, x, y, flux / calib.njy_per_electron)
    return Exposure(
        image=image.astype(np.float32),
        mask=np.zeros(shape, dtype=np.int32),
        variance=np.full(shape, SKY_SIGMA**2, dtype=np.float32),
        wcs=wcs,
        psf=gaussian_psf(),
        photo_calib=calib,
        metadata={"visit": visit, "filter": "r", "mjd": 60000.0 + visit},
    )


def patch_for(calexps):
    corners = []
    for c in calexps:
        h, w = c.shape
        corners.append(c.wcs.all_pix2world([0, w - 1, w - 1, 0], [0, 0, h - 1, h - 1], 0))
    return make_skymap(corners, RA, DEC, SkyMapConfig(pixel_scale=SCALE, margin_px=8))


def centroid(image, x, y, half=6):
    ix, iy = round(x), round(y)
    stamp = image[iy - half : iy + half + 1, ix - half : ix + half + 1].astype(float)
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    return ix + np.sum(stamp * xx) / stamp.sum(), iy + np.sum(stamp * yy) / stamp.sum()


def test_spline_variance_factor_is_one_on_the_grid_and_lower_between():
    f = spline_variance_factor(np.array([0.0, 0.25, 0.5, 0.75, 0.999]))
    assert f[0] == pytest.approx(1.0, abs=1e-6)
    assert f[2] < f[1] < f[0] and f[1] == pytest.approx(f[3], rel=1e-3)
    # white noise interpolated at random phases has the predicted variance
    rng = np.random.default_rng(3)
    noise = rng.normal(size=(400, 400))
    from scipy import ndimage

    fx, fy = 0.37, 0.61
    yy, xx = np.mgrid[10:390, 10:390].astype(float)
    out = ndimage.map_coordinates(noise, [yy + fy, xx + fx], order=3, mode="mirror")
    predicted = np.prod(spline_variance_factor(np.array([fx, fy])))
    assert np.var(out) == pytest.approx(predicted, rel=0.03)


@pytest.mark.parametrize("distortion", [0.0, 2.0])
def test_warp_puts_stars_at_their_sky_positions_and_keeps_flux_and_noise(distortion):
    stars = [(RA + dx / 3600, DEC + dy / 3600, 2.0e5) for dx, dy in [(-6, -5), (4, 6), (7, -6)]]
    calexp = make_calexp(27.0, seed=1, stars=stars, distortion=distortion)
    skymap = patch_for([calexp])
    warp = WarpTask().run(calexp, skymap.wcs, skymap.shape)
    x0, y0 = warp.metadata["x0"], warp.metadata["y0"]
    for ra, dec, flux in stars:
        px, py = skymap.wcs.wcs_world2pix(ra, dec, 0)
        cx, cy = centroid(warp.image, px - x0, py - y0)
        assert np.hypot(cx - (px - x0), cy - (py - y0)) < 0.03  # pixels, noise-limited
        ix, iy = round(px - x0), round(py - y0)
        total = warp.image[iy - 10 : iy + 11, ix - 10 : ix + 11].sum()
        assert total == pytest.approx(flux, rel=0.01)  # nJy, noise ~0.3%
    # outside the rotated sensor: NO_DATA; inside: the variance plane predicts the noise
    no_data = warp.masked(MaskPlane.NO_DATA)
    assert no_data.any() and (~no_data).sum() > 0.9 * calexp.image.size
    sky = ~no_data
    for ra, dec, _ in stars:
        px, py = skymap.wcs.wcs_world2pix(ra, dec, 0)
        yy, xx = np.mgrid[0 : warp.shape[0], 0 : warp.shape[1]]
        sky &= np.hypot(xx - (px - x0), yy - (py - y0)) > 12
    z = warp.image[sky] / np.sqrt(warp.variance[sky])
    assert np.std(z) == pytest.approx(1.0, abs=0.03)


def test_coadd_clips_an_artefact_predicts_its_noise_and_streams(tmp_path):
    star = (RA + 3 / 3600, DEC - 2 / 3600, 1.0e5)
    calexps = [
        make_calexp(rot, seed=10 + k, stars=[star], visit=k + 1)
        for k, rot in enumerate([0.0, 20.0, 45.0, 70.0, 110.0, 160.0])
    ]
    # a satellite trail the calexp missed, on visit 3
    calexps[2].image[70:73, :] += 400.0
    skymap = patch_for(calexps)
    paths = []
    for c in calexps:
        path = tmp_path / f"warp_{c.visit}.fits"
        WarpTask().run(c, skymap.wcs, skymap.shape).write_fits(path)
        paths.append(path)
    result = CoaddTask(CoaddConfig(block_rows=16)).run(paths, skymap.wcs, skymap.shape)
    coadd = result.coadd
    assert result.n_image.max() == 6 and result.n_clipped > 100
    # the trail is gone: no pixel stands out
    full = result.n_image >= 5
    z = coadd.image[full] / np.sqrt(coadd.variance[full])
    px, py = skymap.wcs.wcs_world2pix(star[0], star[1], 0)
    yy, xx = np.mgrid[0 : skymap.height, 0 : skymap.width]
    away = (np.hypot(xx - px, yy - py) > 12)[full]
    assert np.abs(z[away]).max() < 6.0
    assert noise_ratio(coadd, result.n_image) == pytest.approx(1.0, abs=0.05)
    # the star keeps its flux
    ix, iy = round(float(px)), round(float(py))
    assert coadd.image[iy - 10 : iy + 11, ix - 10 : ix + 11].sum() == pytest.approx(1.0e5, rel=0.01)
    # streaming: block size does not change the answer
    whole = CoaddTask(CoaddConfig(block_rows=4096)).run(paths, skymap.wcs, skymap.shape)
    np.testing.assert_allclose(whole.coadd.image, coadd.image, rtol=1e-5, atol=1e-3)
    # nor does a memory budget that holds 16 rows of the six warps at a time
    readers = [_WarpReader(p) for p in paths]
    row_mb = 11 * sum(r.width for r in readers) / 2**20
    tight = CoaddTask(CoaddConfig(block_rows=4096, block_memory_mb=20 * row_mb))
    assert tight.block_rows(readers) == 16
    for r in readers:
        r.close()
    squeezed = tight.run(paths, skymap.wcs, skymap.shape)
    np.testing.assert_array_equal(squeezed.coadd.image, coadd.image)
    assert squeezed.n_clipped == result.n_clipped
    # unclipped (templates): the plain weighted mean, the trail at its weight's share
    plain = CoaddTask(CoaddConfig(clip=False)).run(paths, skymap.wcs, skymap.shape)
    assert plain.n_clipped == 0
    tx, ty = skymap.wcs.wcs_world2pix(*calexps[2].wcs.all_pix2world([75.0], [71.0], 0), 0)
    tx, ty = round(float(tx[0])), round(float(ty[0]))
    w = plain.weights
    share = w[3] / sum(w[v] for v in w)  # every warp covers the trail's middle
    assert plain.n_image[ty, tx] == 6
    assert plain.coadd.image[ty, tx] - coadd.image[ty, tx] == pytest.approx(
        400.0 * calexps[2].photo_calib.njy_per_electron * share, rel=0.25
    )
    # the coadd PSF is the (rotation-invariant) Gaussian, unit sum
    for c in calexps:
        c.write_fits(tmp_path / f"calexp_{c.visit}.fits")
    models = [CalexpModel.read(tmp_path / f"calexp_{c.visit}.fits") for c in calexps]
    psf = coadd_psf(models, [1.0] * 6, skymap.wcs, skymap.shape)
    kernel = psf.kernel(skymap.width / 2, skymap.height / 2)
    np.testing.assert_allclose(kernel, gaussian_psf().kernel(0, 0), atol=2e-4)


def test_coadd_of_nothing_is_a_clear_error(tmp_path):
    from twinkles.coadd.assemble import CoaddError

    skymap = patch_for([make_calexp(0.0, seed=1)])
    with pytest.raises(CoaddError, match="no warp"):
        CoaddTask().run([], skymap.wcs, skymap.shape, band="g")
    bad = tmp_path / "bad.fits"
    fits.HDUList([fits.PrimaryHDU()]).writeto(bad)
    with pytest.raises(CoaddError, match=r"bad\.fits is not a warp"):
        CoaddTask().run([bad], skymap.wcs, skymap.shape, band="g")


@pytest.mark.parametrize("n_saturated", [4, 3])
def test_a_star_saturated_in_the_visits_is_one_object_on_a_sat_masked_coadd(tmp_path, n_saturated):
    """A star whose core saturated is left out of the coadd where the visits' cores were
    masked; the hole (or the core that one visit measured) must read as one source, not as
    a ring of peaks around it."""
    from twinkles.coadd.objects import ObjectTask

    star = (RA + 2e-4, DEC - 1e-4, 3e7)  # nJy: ~1e6 electrons at the peak
    calexps = []
    for k, rotation in enumerate((0.0, 30.0, 60.0, 90.0)):
        calexp = make_calexp(rotation, seed=k, stars=[star], visit=k + 1)
        if k < n_saturated:
            x, y = calexp.wcs.all_world2pix([star[0]], [star[1]], 0)
            yy, xx = np.mgrid[0 : calexp.shape[0], 0 : calexp.shape[1]]
            calexp.mask[np.hypot(xx - x[0], yy - y[0]) < 3.5] |= int(MaskPlane.SAT)
        calexps.append(calexp)
    skymap = patch_for(calexps)
    paths = []
    for c in calexps:
        paths.append(tmp_path / f"warp_{c.visit}.fits")
        WarpTask().run(c, skymap.wcs, skymap.shape).write_fits(paths[-1])
    result = CoaddTask().run(paths, skymap.wcs, skymap.shape)
    models = [CalexpModel(c.visit, c.wcs, c.psf, c.shape) for c in calexps]
    weights = [result.weights[c.visit] for c in calexps]
    result.coadd.psf = coadd_psf(models, weights, skymap.wcs, skymap.shape)
    sx, sy = (float(v[0]) for v in skymap.wcs.wcs_world2pix([star[0]], [star[1]], 0))
    core = (round(sy), round(sx))
    # with one visit unsaturated the core has data; with none it is a hole, SAT as well
    hole = n_saturated == 4
    assert bool(result.coadd.mask[core] & int(MaskPlane.NO_DATA)) == hole
    assert bool(result.coadd.mask[core] & int(MaskPlane.SAT)) == hole
    far = (round(sy) + 30, round(sx))
    assert not result.coadd.mask[far] & int(MaskPlane.SAT)

    def objects_at_the_star(coadd):
        objects = ObjectTask().run({"r": coadd}, {"r": result.n_image}).objects
        return int(np.sum(np.hypot(objects["x"] - sx, objects["y"] - sy) < 8))

    assert objects_at_the_star(result.coadd) == 1
    if n_saturated == 4:
        # without the SAT plane the hole's rim is a ring of prominent peaks
        result.coadd.mask &= ~int(MaskPlane.SAT)
        assert objects_at_the_star(result.coadd) > 1
