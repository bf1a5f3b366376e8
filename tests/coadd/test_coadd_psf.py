"""The coadd PSF on visits drawn with GalSim directly: each visit with its own seeing, a PSF
width gradient in its own direction, rotation, distortion and pointing, so the patch holds
regions covered by different subsets of visits."""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from twinkles.coadd.apcorr import CoaddApertureCorrection, CoaddApertureCorrectionError
from twinkles.coadd.assemble import CoaddTask, coadd_psf
from twinkles.coadd.skymap import SkyMapConfig, make_skymap
from twinkles.coadd.warp import CalexpModel, WarpTask, warped_psf_kernel
from twinkles.geometry import spatial_terms
from twinkles.image import Exposure, PhotoCalib
from twinkles.image.coadd_psf import CoaddPSF
from twinkles.image.psf import PixelPSF
from twinkles.measurement.psf_flux import psf_flux
from twinkles.sim.wcs import make_wcs
from twinkles.validation.static_sky import match_sky

RA, DEC, SCALE = 150.1, 2.2, 0.2
SENSOR = (220, 200)  # (height, width) pixels
KERNEL = 25
SKY = 100.0  # electrons per pixel
ZP = 31.0
# (rotation deg, pointing offset in pixels (x, y), FWHM arcsec at the centre, gradient
# direction deg): seeing from 0.6" to 1.2", sensors overlapping only in part
VISITS = [
    (0.0, (-45, -40), 0.6, 30.0),
    (25.0, (40, -30), 1.2, 120.0),
    (50.0, (-30, 45), 0.8, 210.0),
    (75.0, (35, 40), 1.0, 300.0),
]
#: Fractional change of the PSF's width from the sensor's centre to its edge.
GRADIENT = 0.06


def true_psf(fwhm: float, angle: float, x, y, wings: bool = False) -> galsim.GSObject:
    """The visit's PSF at calexp pixel (x, y): a Moffat truncated inside the kernel's stamp,
    so that a PSF flux is the total flux and the test measures the model, not its wings; with
    ``wings`` not truncated, so that 0.3-3% of the light falls beyond the kernel and the
    aperture correction must bring it back."""
    h, w = SENSOR
    X, Y = (x - 0.5 * (w - 1)) / (0.5 * w), (y - 0.5 * (h - 1)) / (0.5 * w)
    scale = 1.0 + GRADIENT * (X * np.cos(np.radians(angle)) + Y * np.sin(np.radians(angle)))
    trunc = 0.0 if wings else 0.95 * (KERNEL // 2) * SCALE
    return galsim.Moffat(beta=3.5, fwhm=fwhm * scale, trunc=trunc)


def sensor_grid() -> tuple[np.ndarray, np.ndarray]:
    """A 5 x 5 grid of sensor positions (pixels)."""
    h, w = SENSOR
    gx, gy = np.meshgrid(np.linspace(0, w - 1, 5), np.linspace(0, h - 1, 5))
    return gx.ravel(), gy.ravel()


def sensor_terms(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Degree-2 polynomial terms of sensor positions, normalised as the PSF models'."""
    h, w = SENSOR
    return spatial_terms((x - 0.5 * (w - 1)) / (0.5 * w), (y - 0.5 * (h - 1)) / (0.5 * w), 2)


def true_aperture_correction(fwhm: float, angle: float):
    """The visit's true aperture correction at its sensor positions: total flux over the
    flux inside the kernel's stamp, from the drawn PSF on a grid, fitted by a polynomial."""
    gx, gy = sensor_grid()
    inside = [
        true_psf(fwhm, angle, x, y, wings=True).drawImage(nx=KERNEL, ny=KERNEL, scale=SCALE)
        for x, y in zip(gx, gy, strict=True)
    ]
    ratio = np.array([1.0 / image.array.sum() for image in inside])
    coeffs, *_ = np.linalg.lstsq(sensor_terms(gx, gy), ratio, rcond=None)
    return lambda x, y: sensor_terms(np.asarray(x), np.asarray(y)) @ coeffs


def fitted_psf(fwhm: float, angle: float, wings: bool = False) -> PixelPSF:
    """A degree-2 PixelPSF fitted to the visit's true PSF (pixel included) drawn on a 5 x 5
    grid of sensor positions, as a PSF determination would give it."""
    h, w = SENSOR
    gx, gy = sensor_grid()
    stamps = [
        true_psf(fwhm, angle, x, y, wings).drawImage(nx=KERNEL, ny=KERNEL, scale=SCALE).array
        for x, y in zip(gx, gy, strict=True)
    ]
    basis, *_ = np.linalg.lstsq(
        sensor_terms(gx, gy), np.reshape(stamps, (len(stamps), -1)), rcond=None
    )
    return PixelPSF(basis.reshape(-1, KERNEL, KERNEL), 2, 0.5 * (w - 1), 0.5 * (h - 1), 0.5 * w)


def star_positions() -> tuple[np.ndarray, np.ndarray]:
    """Sky positions of bright stars on a jittered grid every 6" over the visits' union."""
    rng = np.random.default_rng(5)
    offsets = np.arange(-27.0, 27.5, 6.0) / 3600.0
    dra, ddec = (a.ravel() for a in np.meshgrid(offsets, offsets))
    dra = dra + rng.uniform(-1, 1, dra.size) / 3600.0
    ddec = ddec + rng.uniform(-1, 1, ddec.size) / 3600.0
    return RA + dra / np.cos(np.radians(DEC)), DEC + ddec


STAR_FLUX = 4.0e5  # electrons
#: Radial distortion at a sensor corner (pixels): the pixel area changes by 0.27% from the
#: sensor's centre to its corners, as over a demo calexp.
DISTORTION = 0.1


def galsim_visit(visit: int, rotation, offset, fwhm, angle, wings: bool = False) -> Exposure:
    """A calexp (sky subtracted) of the stars, drawn with GalSim under the visit's PSF
    (:func:`true_psf`)."""
    h, w = SENSOR
    centre = make_wcs(RA, DEC, 0.0, SCALE, w, h)
    ra, dec = centre.all_pix2world([0.5 * (w - 1) + offset[0]], [0.5 * (h - 1) + offset[1]], 0)
    wcs = make_wcs(float(ra[0]), float(dec[0]), rotation, SCALE, w, h, distortion_px=DISTORTION)
    image = galsim.ImageD(w, h, scale=SCALE, init_value=0.0)
    sx, sy = wcs.all_world2pix(*star_positions(), 0)
    # a Moffat of beta 3.5 holds 1e-4 of its light beyond 40 pixels
    half = 40 if wings else KERNEL // 2 + 2
    for x, y in zip(sx, sy, strict=True):
        if -half < x < w + half and -half < y < h + half:
            bounds = galsim.BoundsI(
                round(x) - half + 1, round(x) + half + 1, round(y) - half + 1, round(y) + half + 1
            )
            bounds = bounds & image.bounds
            if bounds.isDefined():
                true_psf(fwhm, angle, x, y, wings).withFlux(STAR_FLUX).drawImage(
                    image=image[bounds], add_to_image=True, center=galsim.PositionD(x + 1, y + 1)
                )
    rng = np.random.default_rng(visit)
    variance = image.array + SKY
    pixels = image.array + rng.normal(size=variance.shape) * np.sqrt(variance)
    return Exposure(
        image=pixels.astype(np.float32),
        mask=np.zeros(SENSOR, dtype=np.int32),
        variance=variance.astype(np.float32),
        wcs=wcs,
        psf=fitted_psf(fwhm, angle, wings),
        photo_calib=PhotoCalib(ZP, 0.0),
        metadata={"visit": visit, "filter": "r", "mjd": 60000.0 + visit},
    )


def coadd_visits(tmp, wings: bool = False):
    """The visits, the patch, the coadd and the coadd PSF."""
    calexps = [galsim_visit(v + 1, *spec, wings=wings) for v, spec in enumerate(VISITS)]
    corners = []
    for c in calexps:
        h, w = c.shape
        corners.append(c.wcs.all_pix2world([0, w - 1, w - 1, 0], [0, 0, h - 1, h - 1], 0))
    skymap = make_skymap(corners, RA, DEC, SkyMapConfig(pixel_scale=SCALE, margin_px=8))
    paths = []
    for c in calexps:
        paths.append(tmp / f"warp_{c.visit}.fits")
        WarpTask().run(c, skymap.wcs, skymap.shape).write_fits(paths[-1])
    result = CoaddTask().run(paths, skymap.wcs, skymap.shape, band="r")
    models = [CalexpModel(c.visit, c.wcs, c.psf, c.shape) for c in calexps]
    weights = [result.weights[c.visit] for c in calexps]
    result.coadd.psf = coadd_psf(models, weights, skymap.wcs, skymap.shape)
    return calexps, models, weights, skymap, result


@pytest.fixture(scope="module")
def coadded(tmp_path_factory):
    """Visits whose PSFs end inside the kernel, coadded."""
    return coadd_visits(tmp_path_factory.mktemp("coadd_psf"))


@pytest.fixture(scope="module")
def coadded_with_wings(tmp_path_factory):
    """Visits whose PSFs have wings beyond the kernel, coadded."""
    return coadd_visits(tmp_path_factory.mktemp("coadd_psf_wings"), wings=True)


def covering(models, patch_wcs, x, y) -> list[int]:
    ra, dec = patch_wcs.wcs_pix2world([x], [y], 0)
    out = []
    for v, m in enumerate(models):
        cx, cy = m.wcs.all_world2pix(ra, dec, 0)
        if 0 <= cx[0] < m.shape[1] and 0 <= cy[0] < m.shape[0]:
            out.append(v)
    return out


def test_coadd_psf_is_the_weighted_mean_of_the_warped_psfs_of_the_visits_covering(coadded):
    _, models, weights, skymap, result = coadded
    psf = result.coadd.psf
    rng = np.random.default_rng(3)
    subsets = set()
    yy, xx = np.mgrid[0:KERNEL, 0:KERNEL] - KERNEL // 2
    for x, y in rng.uniform(0, 1, (60, 2)) * [skymap.width, skymap.height]:
        cover = covering(models, skymap.wcs, x, y)
        if not cover:
            continue
        subsets.add(tuple(cover))
        # by brute force: each covering visit's PSF at its own position, warped there with
        # the Jacobian there, cut to the kernel's inscribed circle
        expected = sum(weights[v] * warped_psf_kernel(models[v], skymap.wcs, x, y) for v in cover)
        expected = np.where(np.hypot(xx, yy) <= KERNEL // 2, expected, 0.0)
        expected /= expected.sum()
        kernel = psf.kernel(x, y)
        assert kernel.sum() == pytest.approx(1.0)
        # the model follows the Jacobian's change of scale over each sensor to first order;
        # with the Jacobian of the sensor's centre everywhere it erred by up to 0.3% of the peak
        np.testing.assert_allclose(kernel, expected, atol=1e-3 * expected.max())
    # the positions span regions of one, two and more visits
    assert {len(s) for s in subsets} >= {1, 2, 3}
    # beyond every visit's edge, every visit contributes: finite, unit sum
    corner = psf.kernel(0.0, 0.0)
    assert not covering(models, skymap.wcs, 0.0, 0.0)
    assert np.isfinite(corner).all() and corner.sum() == pytest.approx(1.0)


def measurable_stars(skymap, result) -> tuple[np.ndarray, np.ndarray]:
    """Patch positions of the stars away from the patch's edge whose core lies on one set of
    visits: a star whose core straddles a visit's edge has one PSF on each side of it, which
    no kernel is (LSST flags it inexact_psf)."""
    x, y = skymap.wcs.wcs_world2pix(*star_positions(), 0)
    h, w = result.coadd.shape
    inside = (x > KERNEL) & (x < w - KERNEL) & (y > KERNEL) & (y < h - KERNEL)
    x, y = x[inside], y[inside]
    ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
    core = np.array(
        [result.n_image[j - 3 : j + 4, i - 3 : i + 4] for i, j in zip(ix, iy, strict=True)]
    )
    one_set = (core.min(axis=(1, 2)) == core.max(axis=(1, 2))) & (core.min(axis=(1, 2)) > 0)
    depth = result.n_image[iy[one_set], ix[one_set]]
    assert one_set.sum() >= 50 and set(depth) >= {1, 2, 3}
    return x[one_set], y[one_set]


def test_coadd_psf_fluxes_of_stars_are_their_true_fluxes_across_visit_edges(coadded):
    calexps, _, _, skymap, result = coadded
    coadd = result.coadd
    x, y = measurable_stars(skymap, result)
    true_njy = STAR_FLUX * calexps[0].photo_calib.njy_per_electron

    flux, err, _ = psf_flux(coadd, x, y)
    pulls = (flux - true_njy) / err
    assert np.all(np.isfinite(pulls))
    # the median of ~70 pulls scatters by ~0.15; the visits' own PSF models (polynomials
    # fitted to Moffats) bias their PSF fluxes by up to 0.1%, a few tenths of a sigma here
    assert abs(np.median(pulls)) < 0.4
    assert 0.8 < np.std(pulls) < 1.3
    assert np.max(np.abs(flux / true_njy - 1)) < 0.01

    # the same stars with one kernel for the whole patch (the coadd's at its centre): the
    # seeing changes by 2x across visit edges, and the fluxes are off by up to tens of percent
    exact = coadd.psf
    centre = exact.kernel(exact.x0, exact.y0)
    coadd.psf = PixelPSF(centre[None], 0, 0.0, 0.0, 1.0)
    try:
        single, _, _ = psf_flux(coadd, x, y)
    finally:
        coadd.psf = exact
    assert np.std((single - true_njy) / err) > 10


def test_coadd_aperture_correction_brings_coadd_psf_fluxes_to_total_fluxes(coadded_with_wings):
    """Each visit's PSF puts 0.3-3% of a star's light beyond the kernel, by its seeing and
    place on the sensor; the coadd's correction at a position is the harmonic mean of the
    covering visits' corrections there, shared as the coadd PSF is."""
    calexps, _, _, skymap, result = coadded_with_wings
    coadd = result.coadd
    x, y = measurable_stars(skymap, result)
    true_njy = STAR_FLUX * calexps[0].photo_calib.njy_per_electron
    corrections = {
        v + 1: true_aperture_correction(fwhm, angle) for v, (_, _, fwhm, angle) in enumerate(VISITS)
    }
    correction = CoaddApertureCorrection.from_visits(coadd.psf, corrections)
    flux, err, _ = psf_flux(coadd, x, y)
    factor = correction(x, y)
    assert np.all((factor > 1.0) & (factor < 1.04))
    pulls = (flux * factor - true_njy) / (err * factor)
    assert abs(np.median(pulls)) < 0.4
    assert 0.8 < np.std(pulls) < 1.3
    # one number for the patch (the visits' corrections at their centres, weighted): right
    # on average, off by a percent where one visit's seeing rules
    h, w = SENSOR
    weights = np.array([inp.weight for inp in coadd.psf.inputs])
    centres = np.array([corrections[v + 1](0.5 * (w - 1), 0.5 * (h - 1))[0] for v in range(4)])
    scalar = np.sum(weights * centres) / weights.sum()
    assert np.max(np.abs(flux * scalar - true_njy) / err) > 5
    with pytest.raises(CoaddApertureCorrectionError, match=r"visit\(s\) \[4\]"):
        CoaddApertureCorrection.from_visits(coadd.psf, {v: corrections[v] for v in (1, 2, 3)})


def test_coadd_flux_systematic_is_what_the_visits_errors_make_of_the_coadds(
    coadded_with_wings,
):
    """Each visit's PSF fluxes off by its own random fraction (``e_v`` rms, a different one
    per visit): over many such draws the coadd's correction scatters, star by star, as much as
    its flux_systematic says: less than any one visit's where visits overlap, one visit's
    where one covers the star alone."""
    _, _, _, skymap, result = coadded_with_wings
    coadd = result.coadd
    x, y = measurable_stars(skymap, result)
    corrections = {
        v + 1: true_aperture_correction(fwhm, angle) for v, (_, _, fwhm, angle) in enumerate(VISITS)
    }
    systematics = {1: 0.002, 2: 0.004, 3: 0.003, 4: 0.006}
    exact = CoaddApertureCorrection.from_visits(coadd.psf, corrections, systematics)
    predicted = exact.flux_systematic(x, y)
    rng = np.random.default_rng(5)
    draws = []
    for _ in range(300):
        off = {v: 1.0 + e * rng.standard_normal() for v, e in systematics.items()}
        perturbed = {
            v: (lambda c, f: lambda px, py: c(px, py) * f)(corrections[v], off[v])
            for v in corrections
        }
        draws.append(CoaddApertureCorrection.from_visits(coadd.psf, perturbed)(x, y))
    scatter = np.std(np.array(draws) / exact(x, y), axis=0)
    # 300 draws measure each scatter to ~4%
    np.testing.assert_allclose(scatter, predicted, rtol=0.15)
    # where visits overlap, below any one visit's; where one covers a star alone, its own
    assert predicted.min() < min(systematics.values())
    assert predicted.max() == pytest.approx(max(systematics.values()))
    # unknown systematics are none; a missing visit is named
    assert np.all(
        CoaddApertureCorrection.from_visits(coadd.psf, corrections).flux_systematic(x, y) == 0
    )
    with pytest.raises(CoaddApertureCorrectionError, match=r"no flux systematic .* \[4\]"):
        CoaddApertureCorrection.from_visits(
            coadd.psf, corrections, {v: systematics[v] for v in (1, 2, 3)}
        )


def test_coadd_psf_round_trips_through_the_coadds_file(coadded, tmp_path):
    _, models, _, skymap, result = coadded
    path = tmp_path / "coadd.fits"
    result.coadd.write_fits(path)
    back = Exposure.read_fits(path)
    assert isinstance(back.psf, CoaddPSF)
    assert len(back.psf.inputs) == len(models)
    xs = np.array([0.0, 40.5, skymap.width / 2, skymap.width - 30.2])
    ys = np.array([5.0, 60.3, skymap.height / 2, skymap.height - 41.7])
    np.testing.assert_allclose(
        back.psf.kernels(xs, ys), result.coadd.psf.kernels(xs, ys), atol=1e-12
    )


def test_coadd_psf_rejects_inputs_it_cannot_combine(coadded):
    _, models, _, skymap, _ = coadded
    from twinkles.image.coadd_psf import CoaddInput

    small = PixelPSF(np.ones((1, 15, 15)) / 225, 0, 0.0, 0.0, 1.0)
    good = CoaddInput(models[0].psf, models[0].wcs, models[0].shape, 1.0)
    with pytest.raises(ValueError, match="differ in size"):
        CoaddPSF((good, CoaddInput(small, models[1].wcs, models[1].shape, 1.0)), skymap.wcs, (9, 9))
    with pytest.raises(ValueError, match="finite and positive"):
        CoaddPSF(
            (CoaddInput(models[0].psf, models[0].wcs, models[0].shape, 0.0),), skymap.wcs, (9, 9)
        )
    with pytest.raises(ValueError, match="at least one input"):
        CoaddPSF((), skymap.wcs, (9, 9))


def test_objects_whose_core_a_visit_edge_crosses_are_flagged_inexact_psf(coadded):
    """Where a visit's edge crosses a star's core the coadd holds one PSF on each side, which
    no kernel is: those measurements are flagged, and the others are as good as the noise."""
    from twinkles.coadd.objects import ObjectTask

    calexps, _, _, _, result = coadded
    objects = ObjectTask().run({"r": result.coadd}, {"r": result.n_image}).objects
    ra, dec = star_positions()
    i_obj, _, _ = match_sky(objects["ra"], objects["decl"], ra, dec, 0.5)
    stars = objects[i_obj]
    true_njy = STAR_FLUX * calexps[0].photo_calib.njy_per_electron
    pulls = (np.asarray(stars["r_psFlux"]) - true_njy) / np.asarray(stars["r_psFluxErr"])
    usable = ~np.asarray(stars["flag_edge"]) & ~np.asarray(stars["r_flag_bad"])
    flagged = np.asarray(stars["r_flag_inexact_psf"], dtype=bool)
    assert (usable & flagged).sum() >= 5 and (usable & ~flagged).sum() >= 40
    assert np.std(pulls[usable & ~flagged]) < 1.3
    assert np.max(np.abs(pulls[usable & flagged])) > 5
