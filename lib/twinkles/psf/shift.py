"""Sub-pixel shifts of small images by Lanczos interpolation.

A well-sampled image (FWHM >= ~2 pixels) is shifted by a fraction of a pixel by convolving it
with a Lanczos kernel ``L(x) = sinc(x) sinc(x / a)`` (a = 3 by default), separably in x and y.
Many stamps are shifted at once: each shift is a banded matrix, applied with one ``einsum``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lanczos", "shift_matrices", "shift_stamps", "shift_stamps_transpose"]


def lanczos(x: np.ndarray, order: int = 3) -> np.ndarray:
    """Lanczos kernel of ``order`` at ``x`` (zero for |x| >= order)."""
    x = np.asarray(x, dtype=float)
    return np.where(np.abs(x) < order, np.sinc(x) * np.sinc(x / order), 0.0)


def shift_matrices(size: int, shifts: np.ndarray, order: int = 3) -> np.ndarray:
    """Matrices ``M[n]`` (size x size) with ``(M[n] @ v)`` = ``v`` moved by ``shifts[n]`` pixels.

    A positive shift moves the content towards higher indices. Rows are normalised, so a
    constant stays constant (flux is conserved away from the edges).
    """
    shifts = np.atleast_1d(np.asarray(shifts, dtype=float))
    n = len(shifts)
    if n == 0:
        return np.zeros((0, size, size))
    # M[i, j] = L(i - j - s) is banded: only the diagonals t = i - j with |t - s| < order
    # are non-zero, so the kernel is evaluated on those (4x faster than on the whole matrix)
    lo = max(int(np.floor(shifts.min())) - order + 1, -(size - 1))
    hi = min(int(np.ceil(shifts.max())) + order - 1, size - 1)
    taps = np.arange(lo, hi + 1)
    weights = lanczos(taps[None, :] - shifts[:, None], order)
    rows = [np.arange(max(t, 0), min(size + t, size)) for t in taps]
    norm = np.zeros((n, size))
    for k, r in enumerate(rows):
        norm[:, r] += weights[:, k, None]
    norm[norm == 0] = 1.0
    out = np.zeros((n, size, size))
    for k, (t, r) in enumerate(zip(taps, rows, strict=True)):
        out[:, r, r - t] = weights[:, k, None] / norm[:, r]
    return out


def shift_stamps(stamps: np.ndarray, dx: np.ndarray, dy: np.ndarray, order: int = 3) -> np.ndarray:
    """Shift each stamp ``stamps[n]`` (ny x nx) by (dx[n], dy[n]) pixels."""
    stamps = np.asarray(stamps, dtype=float)
    squeeze = stamps.ndim == 2
    if squeeze:
        stamps = stamps[None]
    n, ny, nx = stamps.shape
    my = shift_matrices(ny, np.broadcast_to(dy, (n,)), order)
    mx = shift_matrices(nx, np.broadcast_to(dx, (n,)), order)
    out = np.matmul(np.matmul(my, stamps), mx.transpose(0, 2, 1))
    return out[0] if squeeze else out


def shift_stamps_transpose(
    stamps: np.ndarray, dx: np.ndarray, dy: np.ndarray, order: int = 3
) -> np.ndarray:
    """The transpose of :func:`shift_stamps` (for least-squares fits through the shift)."""
    stamps = np.asarray(stamps, dtype=float)
    n, ny, nx = stamps.shape
    my = shift_matrices(ny, np.broadcast_to(dy, (n,)), order)
    mx = shift_matrices(nx, np.broadcast_to(dx, (n,)), order)
    return np.matmul(np.matmul(my.transpose(0, 2, 1), stamps), mx)
