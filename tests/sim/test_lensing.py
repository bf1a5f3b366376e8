"""Lensed quasars: images solve the lens equation, delays follow the Fermat potential."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from twinkles.config import TruthConfig
from twinkles.sim.lensing import (
    SISShearLens,
    damped_random_walk,
    make_lensed_quasars,
    time_delay_distance_days,
)
from twinkles.sim.truth import Truth


def test_sis_analytic_images_magnifications_and_delay():
    lens = SISShearLens(theta_e=1.2)
    imgs = lens.images(0.3, 0.0)
    order = np.argsort(-imgs.x)
    np.testing.assert_allclose(imgs.x[order], [1.5, -0.9])
    np.testing.assert_allclose(imgs.magnification[order], [1 + 1.2 / 0.3, 1 - 1.2 / 0.3])
    # SIS: delay = 2 theta_E beta D_dt / c
    dt = time_delay_distance_days(0.5, 2.0)
    delay = (imgs.fermat.max() - imgs.fermat.min()) * dt
    assert delay == pytest.approx(2 * 1.2 * 0.3 * dt)
    assert 1 < delay < 100  # days to weeks


@pytest.mark.parametrize("beta", [(0.05, 0.02), (0.4, -0.3), (0.02, 0.6)])
def test_shear_lens_images_solve_the_lens_equation(beta):
    lens = SISShearLens(theta_e=1.0, gamma1=0.08, gamma2=-0.04)
    imgs = lens.images(*beta)
    assert len(imgs.x) in (2, 4)
    bx, by = lens.deflected(imgs.x, imgs.y)
    np.testing.assert_allclose(bx, beta[0], atol=1e-8)
    np.testing.assert_allclose(by, beta[1], atol=1e-8)
    # a source near the centre makes a quad; far out a double
    if np.hypot(*beta) < 0.06:
        assert len(imgs.x) == 4
    if np.hypot(*beta) > 0.45:
        assert len(imgs.x) == 2


def test_random_lenses_always_give_two_or_four_exact_images():
    rng = np.random.default_rng(0)
    for _ in range(300):
        theta_e = rng.uniform(0.5, 1.8)
        lens = SISShearLens(theta_e, *rng.normal(0, 0.05, 2))
        b, a = 0.9 * theta_e * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
        imgs = lens.images(b * np.cos(a), b * np.sin(a))
        assert len(imgs.x) in (2, 4)
        bx, by = lens.deflected(imgs.x, imgs.y)
        assert np.max(np.hypot(bx - b * np.cos(a), by - b * np.sin(a))) < 1e-8


def test_make_lensed_quasars_has_quads():
    systems, *_ = make_lensed_quasars(
        TruthConfig(), 200, 53.0, -27.4, 0.01, (60000.0, 60100.0), 1, np.random.default_rng(2)
    )
    quads = np.mean(systems["n_images"] == 4)
    assert 0.08 < quads < 0.4


def test_quad_magnifications_by_finite_difference():
    lens = SISShearLens(theta_e=1.0, gamma1=0.1, gamma2=0.0)
    imgs = lens.images(0.03, 0.02)
    h = 1e-6
    for x, y, mu in zip(imgs.x, imgs.y, imgs.magnification, strict=True):
        bx1, by1 = lens.deflected(x + h, y)
        bx0, by0 = lens.deflected(x - h, y)
        bx3, by3 = lens.deflected(x, y + h)
        bx2, by2 = lens.deflected(x, y - h)
        det = ((bx1 - bx0) * (by3 - by2) - (bx3 - bx2) * (by1 - by0)) / (2 * h) ** 2
        assert mu == pytest.approx(1 / det, rel=1e-4)


def test_drw_statistics():
    rng = np.random.default_rng(3)
    tau, sf = 50.0, 0.3
    x = damped_random_walk(200_000, 1.0, tau, sf, rng)
    assert np.var(x) == pytest.approx(sf**2 / 2, rel=0.1)
    lag = int(tau)
    corr = np.corrcoef(x[:-lag], x[lag:])[0, 1]
    assert corr == pytest.approx(np.exp(-1), abs=0.05)


def test_images_vary_with_their_stated_delays():
    rng = np.random.default_rng(11)
    config = TruthConfig(lens_theta_e_min=1.0, lens_theta_e_max=1.5)
    systems, images, variability, lenses = make_lensed_quasars(
        config, 3, 53.0, -27.4, 0.01, (60000.0, 60400.0), galaxy_id_start=1, rng=rng
    )
    empty = Table({"id": np.zeros(0, dtype=np.int64)})
    truth = Truth(empty, lenses, empty, systems, images, variability)
    for sid in systems["id"]:
        sel = images["system_id"] == sid
        ids, delays = np.asarray(images["id"][sel]), np.asarray(images["time_delay"][sel])
        mu = np.abs(np.asarray(images["magnification"][sel]))
        t = np.linspace(60050.0, 60300.0, 40)
        # each image, read at t + its delay and divided by its magnification, is the source
        curves = np.array(
            [
                truth.flux(np.full(len(t), i), "r", t + d) / m
                for i, d, m in zip(ids, delays, mu, strict=True)
            ]
        )
        np.testing.assert_allclose(curves, np.broadcast_to(curves[0], curves.shape), rtol=1e-9)
        assert np.ptp(curves[0]) / np.mean(curves[0]) > 0.01  # it does vary
        # the lens-system id gives the sum of the images
        total = truth.flux(sid, "r", 60100.0)
        assert total[0] == pytest.approx(truth.flux(ids, "r", 60100.0).sum())
    assert np.all(lenses["is_lens"])
