"""The batched Fourier drawer against GalSim's own FFT drawing, profile by profile.

The references are drawn by GalSim with tight accuracy settings (transforms kept down to 1e-7
of the flux, little folding), built here from GalSim's classes, not from ``twinkles.sim``;
tolerances are fractions of the photon noise of the brightest pixel.
"""

from __future__ import annotations

import warnings

import galsim
import numpy as np
import pytest

from twinkles.sim import fourier
from twinkles.sim.fourier import (
    RadialTransform,
    StampBatch,
    draw_stamps,
    quadratic_forms,
    reduced_shear_from_axis_ratio,
    reduced_shear_from_distortion,
)
from twinkles.sim.galaxies import BULGE_TRUNCATION, DISK_TRUNCATION
from twinkles.sim.psf import SimulatedPSF, unit_profile
from twinkles.sim.render import _unit_sersic
from twinkles.sim.wcs import make_wcs

TIGHT = galsim.GSParams(maxk_threshold=1e-7, folding_threshold=1e-4, maximum_fft_size=16384)
PIXEL = 0.2
# a rotated, flipped sky-to-pixel Jacobian (arcsec per pixel), as a real sensor's
ANGLE = np.radians(33.0)
JACOBIAN = PIXEL * np.array([[-np.cos(ANGLE), np.sin(ANGLE)], [np.sin(ANGLE), np.cos(ANGLE)]])
CANVAS = 200


def reference_psf(profile: str, fwhm: float, beta: float) -> galsim.GSObject:
    """The profile at FWHM ``fwhm``, built again from GalSim's classes with tight settings
    (composites scaled by the factor ``unit_profile`` found for them)."""
    if profile == "moffat":
        return galsim.Moffat(beta=beta, fwhm=fwhm, trunc=5.0 * fwhm, gsparams=TIGHT)
    if profile == "kolmogorov":
        return galsim.Kolmogorov(fwhm=fwhm, gsparams=TIGHT)
    if profile == "kolmogorov_optics":
        parts = galsim.Convolve(
            galsim.Kolmogorov(fwhm=1.0, gsparams=TIGHT),
            galsim.Gaussian(fwhm=0.4, gsparams=TIGHT),
        )
    else:
        parts = galsim.Add(
            [
                galsim.Gaussian(fwhm=1.0, flux=0.9, gsparams=TIGHT),
                galsim.Gaussian(fwhm=2.0, flux=0.1, gsparams=TIGHT),
            ]
        )
    unit_scale = unit_profile(profile, beta).jac[0, 0]  # 1 / the parts' FWHM
    return parts.dilate(unit_scale * fwhm)


def sersic(index: float, hlr: float, truncation: float, q: float, beta) -> galsim.GSObject:
    """A truncated Sersic component (truncation in half-light radii), tight settings."""
    profile = galsim.Sersic(n=index, half_light_radius=hlr, trunc=truncation * hlr, gsparams=TIGHT)
    return profile.shear(q=q, beta=beta)


def draw_reference(obj: galsim.GSObject, x: float, y: float, stamp: int) -> np.ndarray:
    canvas = galsim.ImageF(CANVAS, CANVAS, init_value=0.0)
    drawn = obj.drawImage(
        nx=stamp,
        ny=stamp,
        wcs=galsim.JacobianWCS(*JACOBIAN.ravel()),
        center=galsim.PositionD(x + 1.0, y + 1.0),
        method="fft",
    )
    overlap = drawn.bounds & canvas.bounds
    canvas[overlap] += drawn[overlap]
    return canvas.array.astype(float)


def psf_form(fwhm: float, e1: float, e2: float) -> np.ndarray:
    return quadratic_forms(np.array([fwhm]), *reduced_shear_from_distortion([e1], [e2]), JACOBIAN)


@pytest.mark.parametrize(
    ("profile", "beta", "fwhm"),
    [
        ("moffat", 2.5, 0.45),  # reaches past the Nyquist frequency: folded
        ("moffat", 4.5, 0.6),
        ("moffat", 3.0, 1.0),
        ("kolmogorov", 4.765, 0.5),
        ("kolmogorov_optics", 4.765, 0.8),
        ("double_gaussian", 4.765, 0.7),
    ],
)
def test_a_bright_star_matches_galsim_to_a_small_fraction_of_its_photon_noise(profile, beta, fwhm):
    flux, x, y, e1, e2 = 1.0e6, 100.31, 99.62, 0.05, -0.03
    radius = SimulatedPSF(profile=profile, fwhm=fwhm, beta=beta).stamp_radius(fwhm, flux)
    stamp = 2 * int(np.ceil(radius / PIXEL)) + 1
    expected = draw_reference(
        reference_psf(profile, fwhm, beta).shear(e1=e1, e2=e2) * flux, x, y, stamp
    )
    canvas = np.zeros((CANVAS, CANVAS))
    table = RadialTransform.of(unit_profile(profile, beta))
    form = psf_form(fwhm, e1, e2)
    nothing = np.zeros(1)
    batch = StampBatch(
        np.array([x]),
        np.array([y]),
        np.array([stamp]),
        np.array([flux]),
        nothing,
        form,
        nothing,
        form,
        form,
    )
    draw_stamps(canvas, batch, table, table, table)

    noise = np.sqrt(expected + 1000.0)  # the star's photons and a dark sky's
    assert np.max(np.abs(canvas - expected) / noise) < 0.03
    assert np.max(np.abs(canvas - expected)) < 1e-4 * expected.max()
    # light beyond the stamp is not drawn: the Kolmogorov wings' share, <= 1e-3
    assert canvas.sum() == pytest.approx(expected.sum(), rel=1e-3)


def test_galaxies_match_galsim_across_sizes_shapes_and_bulge_fractions():
    rng = np.random.default_rng(5)
    n = 40
    fwhm, e1, e2 = 0.7, 0.02, 0.04
    x, y = rng.uniform(20, CANVAS - 20, n), rng.uniform(20, CANVAS - 20, n)
    total = 10 ** (-0.4 * (rng.uniform(17.0, 24.0, n) - 31.4))
    bulge_fraction = np.where(rng.random(n) < 0.3, 0.0, rng.uniform(0.0, 1.0, n))
    disk_hlr = rng.uniform(0.1, 1.2, n)
    bulge_hlr = disk_hlr * rng.uniform(0.2, 0.6, n)
    disk_q, bulge_q = rng.uniform(0.2, 1.0, n), rng.uniform(0.6, 1.0, n)
    beta = rng.uniform(0.0, np.pi, n)
    extent = np.maximum(DISK_TRUNCATION * disk_hlr / np.sqrt(disk_q), BULGE_TRUNCATION * bulge_hlr)
    stamp = 2 * np.ceil((extent + 5.5 * fwhm) / PIXEL).astype(int) + 1

    psf = reference_psf("moffat", fwhm, 3.5).shear(e1=e1, e2=e2)
    expected = np.zeros((CANVAS, CANVAS))
    for k in range(n):
        beta_k = beta[k] * galsim.radians
        parts = [
            sersic(1.0, disk_hlr[k], DISK_TRUNCATION, disk_q[k], beta_k).withFlux(
                total[k] * (1.0 - bulge_fraction[k])
            )
        ]
        if bulge_fraction[k] > 0:
            parts.append(
                sersic(4.0, bulge_hlr[k], BULGE_TRUNCATION, bulge_q[k], beta_k).withFlux(
                    total[k] * bulge_fraction[k]
                )
            )
        galaxy = galsim.Convolve([galsim.Add(parts), psf], gsparams=TIGHT)
        expected += draw_reference(galaxy, x[k], y[k], stamp[k])

    batch = StampBatch(
        x,
        y,
        stamp,
        np.zeros(n),
        total * (1.0 - bulge_fraction),
        quadratic_forms(disk_hlr, *reduced_shear_from_axis_ratio(disk_q, beta), JACOBIAN),
        total * bulge_fraction,
        quadratic_forms(bulge_hlr, *reduced_shear_from_axis_ratio(bulge_q, beta), JACOBIAN),
        np.repeat(psf_form(fwhm, e1, e2), n, axis=0),
    )
    canvas = np.zeros((CANVAS, CANVAS))
    draw_stamps(
        canvas,
        batch,
        RadialTransform.of(unit_profile("moffat", 3.5)),
        RadialTransform.of(_unit_sersic(1.0, DISK_TRUNCATION)),
        RadialTransform.of(_unit_sersic(4.0, BULGE_TRUNCATION)),
    )
    noise = np.sqrt(expected + 1000.0)
    assert np.max(np.abs(canvas - expected) / noise) < 0.03
    assert canvas.sum() == pytest.approx(expected.sum(), rel=1e-4)


def test_what_cannot_be_batched_is_refused():
    table = RadialTransform.of(unit_profile("moffat", 3.0))
    one = np.ones(1)
    form = psf_form(0.7, 0.0, 0.0)
    wide = StampBatch(one * 50, one * 50, np.array([301]), one, 0 * one, form, 0 * one, form, form)
    with pytest.raises(ValueError, match="wider than 256"):
        draw_stamps(np.zeros((100, 100)), wide, table, table, table)
    # a PSF of 0.1" on 0.2" pixels: its transform reaches past 3 pi per pixel
    sharp = psf_form(0.1, 0.0, 0.0)
    narrow = StampBatch(
        one * 50, one * 50, np.array([11]), one, 0 * one, sharp, 0 * one, sharp, sharp
    )
    with pytest.raises(ValueError, match="under-sampled"):
        draw_stamps(np.zeros((100, 100)), narrow, table, table, table)
    with pytest.raises(ValueError, match="not radially symmetric"):
        RadialTransform.of(galsim.Gaussian(sigma=1.0).shear(e1=0.3))


def test_objects_too_wide_for_a_batch_are_drawn_by_galsim_with_the_same_light(monkeypatch):
    from twinkles.sim import render
    from twinkles.units import electrons_per_njy

    from scenes import make_scene

    scene = make_scene(render={"psf_variation": 0.1}, galaxy_density=100.0)
    row, cond = scene.sky.visit(scene.visit)
    band, mjd = str(row["filter"]), float(row["expMJD"])
    gain = float(electrons_per_njy(float(cond["zeroPoint"])))
    true_wcs = make_wcs(
        float(cond["true_ra"]),
        float(cond["true_dec"]),
        float(cond["true_rotation"]),
        PIXEL,
        512,
        512,
    )

    def expectation() -> tuple[np.ndarray, int]:
        stamper = render._Stamper.for_visit(true_wcs, render.simulated_psf(cond), 512, 512)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", galsim.GalSimWarning)
            points = render._draw_point_sources(
                stamper, scene.sky.truth.point_sources(band, mjd), gain
            )
            galaxies = render._draw_galaxies(stamper, scene.sky.truth.galaxies, band, gain)
        return stamper.canvas.array.astype(float), len(points[0]) + len(galaxies[0])

    batched, n_batched = expectation()
    monkeypatch.setattr(fourier, "FFT_SIZES", (16,))  # nearly every stamp goes to GalSim
    by_galsim, n_galsim = expectation()
    assert n_batched == n_galsim > 100
    noise = np.sqrt(by_galsim + float(cond["skyCounts"]))
    # GalSim's default settings cut transforms at 1e-3 of the flux: up to ~0.4 sigma at the
    # peaks of the brightest stars (test_a_bright_star_matches_galsim...: 0.03 with tight ones)
    assert np.max(np.abs(batched - by_galsim) / noise) < 0.5
    assert np.percentile(np.abs(batched - by_galsim) / noise, 99) < 0.02
    assert batched.sum() == pytest.approx(by_galsim.sum(), rel=1e-3)
