"""Boolean masks grown by whole pixels."""

from __future__ import annotations

import numpy as np

__all__ = ["grow_bits", "grow_square"]


def grow_square(mask: np.ndarray, half: int) -> np.ndarray:
    """Boolean ``mask`` grown by ``half`` pixels (a square), as two 1-D dilations.

    Each dilation ORs the mask with itself shifted by 1, 2, 4, ... pixels until the window is
    ``2 half + 1`` wide (log2 passes of byte-wise ORs): faster than scipy's
    ``maximum_filter1d`` on the two axes.
    """
    if half <= 0:
        return mask.astype(bool, copy=True)
    return np.ascontiguousarray(_dilate_axis(_dilate_axis(mask.astype(bool), half, 0), half, 1))


def grow_bits(mask: np.ndarray, half: int, planes: int) -> np.ndarray:
    """The bits ``planes`` of an integer mask, each ORed over a square of ``2 half + 1``
    pixels: what a convolution with a kernel of that size does to a mask (LSST's afw ORs
    the mask bits under the kernel). The other bits are zero; same dtype as ``mask``."""
    bits = mask & planes
    small = np.uint8 if planes < 1 << 8 else np.uint16 if planes < 1 << 16 else bits.dtype
    out = bits.astype(small)
    if half > 0:
        out = _dilate_axis(_dilate_axis(out, half, 0), half, 1)
    return np.ascontiguousarray(out).astype(mask.dtype, copy=False)


def _dilate_axis(mask: np.ndarray, half: int, axis: int) -> np.ndarray:
    """``mask`` ORed over windows of ``2 half + 1`` pixels centred along ``axis`` (boolean, or
    integer bit by bit)."""
    lines = np.moveaxis(mask, axis, 0)
    n, width = lines.shape[0], 2 * half + 1
    # out[i] ends up the OR of lines[i - width + 1 .. i]; the padding lets the last pixels'
    # windows run off the end
    out = np.zeros((n + half, *lines.shape[1:]), dtype=mask.dtype)
    out[:n] = lines
    covered = 1
    while covered < width:
        step = min(covered, width - covered)
        out[step:] |= out[:-step].copy()
        covered += step
    return np.moveaxis(out[half:], 0, axis)
