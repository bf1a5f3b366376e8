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
The coefficients come from :func:`spline_coefficients`, the same recursive filter compiled:
scipy's takes 0.46 s for the ~5.6k x 5.6k template area under a run1 sensor (its pass along
columns goes through memory with a stride); this one runs that pass a whole row at a time.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["resample_rows", "spline_coefficients"]


#: Output columns per strip of resample_rows: a few hundred, so that the input lines a strip's
#: row reads (image coefficients, variance and mask) are still in the cache for its next row
#: (``make bench``'s warp_run1_visit and image_difference_run1_visit measure it).
_STRIP = 256


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
    if rows.shape[0] == 0:
        return written
    # the output in strips of _STRIP columns, each row by row: where the transform rotates, an
    # output row walks diagonally through the input, and the input lines that a whole row
    # reads fall out of the cache before the next row needs them; a strip's stay
    for strip in range(first.min(), last.max() + 1, _STRIP):
        for r in range(rows.shape[0]):
            out_y = rows[r] - origin_y
            for x in range(max(first[r], strip), min(last[r], strip + _STRIP - 1) + 1):
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
                if ix >= 0 and iy >= 0 and ix + 3 < w and iy + 3 < h:
                    # all 16 coefficients inside the input (every pixel but the border's): unrolled
                    value = 0.0
                    for j in range(4):
                        row = iy + j
                        acc = (
                            wx[0] * coeffs[row, ix]
                            + wx[1] * coeffs[row, ix + 1]
                            + wx[2] * coeffs[row, ix + 2]
                            + wx[3] * coeffs[row, ix + 3]
                        )
                        value += wy[j] * acc
                else:
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
                    variance_factor[int(tx * n_phase + 0.5)]
                    * variance_factor[int(ty * n_phase + 0.5)]
                )
                out_x = x - origin_x
                image_out[out_y, out_x] = value * area * flux_scale
                variance_out[out_y, out_x] = (
                    variance[ny, nx] * factor * area * area * flux_scale * flux_scale
                )
                mask_out[out_y, out_x] = mask[ny, nx] & carried_planes
                written += 1
    return written


#: The pole of the cubic B-spline's recursive prefilter, and its gain (Unser 1999, IEEE Signal
#: Processing Magazine 16, 22).
_POLE = np.sqrt(3.0) - 2.0
_GAIN = (1.0 - _POLE) * (1.0 - 1.0 / _POLE)
#: Powers of the pole below this are dropped from the mirror boundary's initial sum.
_NEGLIGIBLE = 1e-18


@numba.njit(cache=True, nogil=True)
def _filter_rows(out: np.ndarray) -> None:
    """The prefilter along axis 1 of ``out`` (h, w), in place, one row at a time."""
    h, w = out.shape
    z = _POLE
    line = np.empty(w)
    z_n1 = z ** (w - 1)
    for r in range(h):
        for j in range(w):
            line[j] = out[r, j] * _GAIN
        first = line[0] + z_n1 * line[w - 1]
        z_i = z
        for j in range(1, w - 1):
            if abs(z_i) < _NEGLIGIBLE:
                break
            first += z_i * (line[j] + z_n1 * line[w - 1 - j])
            z_i *= z
        line[0] = first / (1.0 - z_n1 * z_n1)
        for j in range(1, w):
            line[j] += z * line[j - 1]
        line[w - 1] = z / (z * z - 1.0) * (z * line[w - 2] + line[w - 1])
        for j in range(w - 2, -1, -1):
            line[j] = z * (line[j + 1] - line[j])
        for j in range(w):
            out[r, j] = line[j]


@numba.njit(cache=True, nogil=True)
def _filter_columns(image: np.ndarray, out: np.ndarray) -> None:
    """The prefilter along axis 0 of ``image`` into ``out``, all columns side by side.

    Every pass runs down the rows and updates a whole row at a time, so memory is read in
    order; the running values are kept in float64.
    """
    h, w = image.shape
    z = _POLE
    z_n1 = z ** (h - 1)
    first = np.empty(w)
    for j in range(w):
        first[j] = _GAIN * (image[0, j] + z_n1 * image[h - 1, j])
    z_i = z
    for i in range(1, h - 1):
        if abs(z_i) < _NEGLIGIBLE:
            break
        for j in range(w):
            first[j] += z_i * _GAIN * (image[i, j] + z_n1 * image[h - 1 - i, j])
        z_i *= z
    previous = np.empty(w)
    for j in range(w):
        previous[j] = first[j] / (1.0 - z_n1 * z_n1)
        out[0, j] = previous[j]
    # causal pass; the last two rows' values are kept for the anti-causal start
    before_last = np.empty(w)
    for i in range(1, h):
        for j in range(w):
            if i == h - 1:
                before_last[j] = previous[j]
            previous[j] = _GAIN * image[i, j] + z * previous[j]
            out[i, j] = previous[j]
    for j in range(w):
        previous[j] = z / (z * z - 1.0) * (z * before_last[j] + previous[j])
        out[h - 1, j] = previous[j]
    for i in range(h - 2, -1, -1):
        for j in range(w):
            previous[j] = z * (previous[j] - out[i, j])
            out[i, j] = previous[j]


def spline_coefficients(image: np.ndarray) -> np.ndarray:
    """Cubic B-spline coefficients (float32) of a 2-D image, mirror boundary.

    Equal to ``scipy.ndimage.spline_filter(image, order=3, mode="mirror")`` to float32
    precision; non-finite pixels must be replaced beforehand.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise ValueError(f"spline_coefficients needs a 2-D image, not {image.ndim}-D")
    out = image.astype(np.float32, copy=True)
    # a line of one pixel is its own coefficient (as scipy leaves it)
    if image.shape[0] > 1:
        _filter_columns(image, out)
    if image.shape[1] > 1:
        _filter_rows(out)
    return out
