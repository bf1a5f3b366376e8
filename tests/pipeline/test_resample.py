"""The compiled resampling loop against scipy.ndimage, which it replaces for speed."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from twinkles.image.resample import resample_rows, spline_coefficients


@pytest.fixture(scope="module")
def scene():
    rng = np.random.default_rng(7)
    image = rng.normal(100.0, 10.0, (60, 70)).astype(np.float32)
    variance = rng.uniform(50.0, 150.0, image.shape).astype(np.float32)
    mask = rng.integers(0, 16, image.shape).astype(np.int32)
    return image, variance, mask


def affine_rows(n_rows: int, n_cols: int):
    """Per-row coefficients (degree 1 in u = x) of a rotation by 20 deg and shift, area 1.1."""
    c, s = np.cos(np.radians(20.0)), np.sin(np.radians(20.0))
    rows = np.arange(n_rows)
    per_row = np.zeros((n_rows, 2, 3))
    per_row[:, 0, 0] = -8.0 - s * rows  # input x = c x - s y - 8
    per_row[:, 1, 0] = c
    per_row[:, 0, 1] = 12.0 + c * rows  # input y = s x + c y + 12
    per_row[:, 1, 1] = s
    per_row[:, 0, 2] = 1.1
    first = np.zeros(n_rows, dtype=np.int64)
    last = np.full(n_rows, n_cols - 1, dtype=np.int64)
    sx = per_row[:, 0, 0][:, None] + c * np.arange(n_cols)[None, :]
    sy = per_row[:, 0, 1][:, None] + s * np.arange(n_cols)[None, :]
    return rows, first, last, per_row, sx, sy


def test_spline_coefficients_equal_scipys_prefilter():
    rng = np.random.default_rng(6)
    for shape in ((1, 9), (9, 1), (2, 2), (3, 8), (61, 47), (700, 90)):
        image = (rng.normal(size=shape) * 50 + 200).astype(np.float32)
        expected = ndimage.spline_filter(image.astype(float), order=3, mode="mirror")
        got = spline_coefficients(image)
        assert got.dtype == np.float32 and got.shape == shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.abs(expected).max())
    with pytest.raises(ValueError, match="2-D"):
        spline_coefficients(np.zeros(5))


def test_resample_matches_map_coordinates_and_marks_what_falls_off(scene):
    image, variance, mask = scene
    rows, first, last, per_row, sx, sy = affine_rows(50, 80)
    factor_table = np.linspace(1.0, 0.5, 65)  # any table: checks the phase look-up
    out = np.full((50, 80), np.nan, dtype=np.float32)
    out_var = np.full((50, 80), np.inf, dtype=np.float32)
    out_mask = np.full((50, 80), -1, dtype=np.int32)
    coeffs = ndimage.spline_filter(image.astype(float), order=3, mode="mirror")
    written = resample_rows(
        coeffs, variance, mask, 0b0101, per_row, rows, first, last,
        0.0, 1.0, 0, 0, 2.0, factor_table, out, out_var, out_mask,
    )  # fmt: skip
    h, w = image.shape
    inside = (sx > -0.5) & (sx < w - 0.5) & (sy > -0.5) & (sy < h - 0.5)
    assert written == inside.sum() and 0 < written < inside.size  # some pixels fall off
    expected = ndimage.map_coordinates(image.astype(float), [sy, sx], order=3, mode="mirror")
    np.testing.assert_allclose(out[inside], 2.0 * 1.1 * expected[inside], rtol=1e-5)
    assert np.all(np.isnan(out[~inside])) and np.all(out_mask[~inside] == -1)
    nx = np.clip(np.floor(sx + 0.5).astype(int), 0, w - 1)
    ny = np.clip(np.floor(sy + 0.5).astype(int), 0, h - 1)
    np.testing.assert_array_equal(out_mask[inside], (mask[ny, nx] & 0b0101)[inside])
    phase = lambda t: factor_table[np.floor((t - np.floor(t)) * 64 + 0.5).astype(int)]  # noqa: E731
    np.testing.assert_allclose(
        out_var[inside], (variance[ny, nx] * phase(sx) * phase(sy) * 4.0 * 1.21)[inside], rtol=1e-5
    )


def test_resample_evaluates_the_polynomial_per_row(scene):
    image, variance, mask = scene
    # input x = 5 + 0.3 x + 0.01 x^2 (u = x / 10, so coefficients scale), input y = row + 3
    rows = np.arange(5, 40)
    per_row = np.zeros((len(rows), 3, 3))
    per_row[:, 0, 0], per_row[:, 1, 0], per_row[:, 2, 0] = 5.0, 3.0, 1.0
    per_row[:, 0, 1] = rows + 3.0
    per_row[:, 0, 2] = 1.0
    first = np.full(len(rows), 2, dtype=np.int64)
    last = np.full(len(rows), 30, dtype=np.int64)
    out = np.full((40, 31), np.nan, dtype=np.float32)
    coeffs = ndimage.spline_filter(image.astype(float), order=3, mode="mirror")
    resample_rows(
        coeffs, variance, mask, 0, per_row, rows, first, last,
        0.0, 10.0, 0, 0, 1.0, np.ones(65), out, np.zeros_like(out), np.zeros(out.shape, np.int32),
    )  # fmt: skip
    x = np.arange(2, 31, dtype=float)
    sx = np.broadcast_to(5.0 + 0.3 * x + 0.01 * x**2, (len(rows), len(x)))
    sy = np.broadcast_to((rows + 3.0)[:, None], sx.shape)
    expected = ndimage.map_coordinates(image.astype(float), [sy, sx], order=3, mode="mirror")
    np.testing.assert_allclose(out[5:40, 2:31], expected, rtol=1e-5)
    assert np.all(np.isnan(out[:5])) and np.all(np.isnan(out[:, :2]))


def test_rows_longer_than_a_strip_are_resampled_once_each():
    """Output rows span several of the loop's column strips, and each row has its own first
    and last pixel: every pixel in them is written once, with map_coordinates' value, and
    none outside them."""
    from twinkles.image.resample import _STRIP

    rng = np.random.default_rng(9)
    image = rng.normal(100.0, 10.0, (400, 3 * _STRIP)).astype(np.float32)
    n_rows, n_cols = 120, 3 * _STRIP - 60
    rows, _, _, per_row, sx, sy = affine_rows(n_rows, n_cols)
    first = rng.integers(0, _STRIP + 10, n_rows)
    last = np.maximum(first, rng.integers(_STRIP - 10, n_cols, n_rows))
    out = np.full((n_rows, n_cols), np.nan, dtype=np.float32)
    coeffs = ndimage.spline_filter(image.astype(float), order=3, mode="mirror")
    written = resample_rows(
        coeffs, np.ones_like(image), np.zeros(image.shape, np.int32), 0, per_row, rows, first,
        last, 0.0, 1.0, 0, 0, 1.0, np.ones(65), out, np.zeros_like(out),
        np.zeros(out.shape, np.int32),
    )  # fmt: skip
    h, w = image.shape
    columns = np.arange(n_cols)[None, :]
    wanted = (columns >= first[:, None]) & (columns <= last[:, None])
    inside = wanted & (sx > -0.5) & (sx < w - 0.5) & (sy > -0.5) & (sy < h - 0.5)
    assert written == inside.sum() > 0.5 * wanted.sum()
    expected = ndimage.map_coordinates(image.astype(float), [sy, sx], order=3, mode="mirror")
    np.testing.assert_allclose(out[inside], 1.1 * expected[inside], rtol=1e-5)
    assert np.all(np.isnan(out[~inside]))
