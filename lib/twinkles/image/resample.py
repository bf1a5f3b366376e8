"""Compiled inner loop of the warp: cubic B-spline resampling through a polynomial transform.

:class:`twinkles.coadd.warp.WarpTask` resamples a 4k calexp (16 M pixels) per visit, in
make_coadd, make_template and image_difference. With scipy the same work, the polynomial
transform evaluated per pixel, ``ndimage.map_coordinates`` and the nearest-pixel variance and
mask, took 3.6-4.5 s of CPU against a target of 1.5 s: 1.0-1.2 s in ``map_coordinates`` (and
as much in ``ndimage.affine_transform`` over affine tiles) and the rest in numpy passes over
16 M-element arrays. One pass per output pixel, compiled with numba, does all of it
(``benchmarks/run.py`` ``warp_run1_visit``).

The interpolation is the same as ``scipy.ndimage.map_coordinates(coeffs, ..., order=3,
prefilter=False, mode="mirror")`` on coefficients from
``scipy.ndimage.spline_filter(image, order=3, mode="mirror")``; the tests compare the two.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["resample_rows"]


@numba.njit(cache=True, nogil=True)
def _mirror(k: int, n: int) -> int:
    # scipy.ndimage's "mirror" extension: reflect about the first and last pixel centres
    if k < 0:
        k = -k
    if k >= n:
        k = 2 * (n - 1) - k
    return k


@numba.njit(cache=True, nogil=True)
def _bspline_weights(t: float, out: np.ndarray) -> None:
    # cubic B-spline weights of the coefficients at offsets -1, 0, 1, 2 from floor(position)
    s = 1.0 - t
    out[0] = s * s * s / 6.0
    out[1] = (3.0 * t * t * t - 6.0 * t * t + 4.0) / 6.0
    out[3] = t * t * t / 6.0
    out[2] = 1.0 - out[0] - out[1] - out[3]


@numba.njit(cache=True, nogil=True)
def resample_rows(
    coeffs: np.ndarray,
    variance: np.ndarray,
    mask: np.ndarray,
    carried_planes: int,
    per_row: np.ndarray,
    rows: np.ndarray,
    first: np.ndarray,
    last: np.ndarray,
    centre_x: float,
    scale: float,
    origin_x: int,
    origin_y: int,
    flux_scale: float,
    variance_factor: np.ndarray,
    image_out: np.ndarray,
    variance_out: np.ndarray,
    mask_out: np.ndarray,
) -> int:
    """Resample output pixels ``first[r]..last[r]`` of output rows ``rows[r]``.

    Parameters
    ----------
    coeffs : 2-D float array
        Cubic B-spline coefficients of the input image (mirror boundary).
    variance, mask : 2-D arrays
        The input's variance and mask planes; each output pixel takes its nearest input
        pixel's, the variance times ``variance_factor`` at the x and y sub-pixel phases and
        the mask restricted to ``carried_planes``.
    per_row : array (n_rows, degree + 1, 3)
        Per output row, the polynomial coefficients in ``u = (x - centre_x) / scale`` of the
        input x, the input y (0-based pixels) and the ratio of pixel areas.
    rows, first, last : int arrays
        Output rows and their first and last (inclusive) pixel to resample.
    origin_x, origin_y : int
        Output pixel (x, y) of element [0, 0] of the output arrays.
    flux_scale : float
        Multiplies the image (and its square the variance), besides the area ratio.
    variance_factor : 1-D float array
        The variance factor at phases ``k / (len - 1)``; the nearest phase is used.
    image_out, variance_out, mask_out : 2-D arrays
        Written where the transformed position falls on the input (within half a pixel of a
        pixel centre); left untouched elsewhere.

    Returns
    -------
    int
        The number of output pixels written.
    """
    h, w = coeffs.shape
    degree = per_row.shape[1] - 1
    n_phase = variance_factor.shape[0] - 1
    wx = np.empty(4)
    wy = np.empty(4)
    written = 0
    for r in range(rows.shape[0]):
        out_y = rows[r] - origin_y
        for x in range(first[r], last[r] + 1):
            u = (x - centre_x) / scale
            sx = per_row[r, degree, 0]
            sy = per_row[r, degree, 1]
            area = per_row[r, degree, 2]
            for i in range(degree - 1, -1, -1):
                sx = sx * u + per_row[r, i, 0]
                sy = sy * u + per_row[r, i, 1]
                area = area * u + per_row[r, i, 2]
            if not (sx > -0.5 and sx < w - 0.5 and sy > -0.5 and sy < h - 0.5):
                continue
            floor_x = np.floor(sx)
            floor_y = np.floor(sy)
            tx = sx - floor_x
            ty = sy - floor_y
            _bspline_weights(tx, wx)
            _bspline_weights(ty, wy)
            ix = int(floor_x) - 1
            iy = int(floor_y) - 1
            value = 0.0
            for j in range(4):
                yy = _mirror(iy + j, h)
                acc = 0.0
                for i in range(4):
                    acc += wx[i] * coeffs[yy, _mirror(ix + i, w)]
                value += wy[j] * acc
            nx = min(max(int(sx + 0.5), 0), w - 1)
            ny = min(max(int(sy + 0.5), 0), h - 1)
            factor = (
                variance_factor[int(tx * n_phase + 0.5)] * variance_factor[int(ty * n_phase + 0.5)]
            )
            out_x = x - origin_x
            image_out[out_y, out_x] = value * area * flux_scale
            variance_out[out_y, out_x] = (
                variance[ny, nx] * factor * area * area * flux_scale * flux_scale
            )
            mask_out[out_y, out_x] = mask[ny, nx] & carried_planes
            written += 1
    return written
