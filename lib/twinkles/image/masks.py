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
    the mask bits under the kernel). The other bits are zero. The result is unsigned, as
    narrow as ``planes`` allows (mask planes use at most 16 bits), to OR into a mask."""
    planes &= 0xFFFF
    small = np.uint8 if planes < 1 << 8 else np.uint16
    # the cast keeps the low bits, which are all that ``planes`` reads
    out = mask.astype(small) & small(planes)
    if half > 0:
        out = _dilate_axis(_dilate_axis(out, half, 0), half, 1)
    return np.ascontiguousarray(out)


def _dilate_axis(mask: np.ndarray, half: int, axis: int) -> np.ndarray:
    """``mask`` ORed over windows of ``2 half + 1`` pixels centred along ``axis`` (boolean, or
    integer bit by bit)."""
    n, width = mask.shape[axis], 2 * half + 1

    def span(start: int | None, stop: int | None) -> tuple[slice, ...]:
        return tuple(slice(start, stop) if i == axis else slice(None) for i in range(mask.ndim))

    # out[i] ends up the OR of mask[i - width + 1 .. i]; the padding lets the last pixels'
    # windows run off the end. Slicing along the axis in place (no transposes), between two
    # buffers, so that no pass ORs a buffer with an overlapping view of itself
    shape = list(mask.shape)
    shape[axis] = n + half
    out = np.zeros(shape, dtype=mask.dtype)
    out[span(0, n)] = mask
    spare = np.empty_like(out)
    covered = 1
    while covered < width:
        step = min(covered, width - covered)
        spare[span(0, step)] = out[span(0, step)]
        np.bitwise_or(out[span(step, None)], out[span(0, -step)], out=spare[span(step, None)])
        out, spare = spare, out
        covered += step
    return out[span(half, None)]
