"""Peaks by their prominence: how far each local maximum rises above its surroundings.

The prominence of a local maximum is its height above the highest saddle joining it to a
higher maximum: the level at which, lowering a threshold through the image, its island of
pixels above the threshold first joins the island of a higher peak. A region's highest
maximum has none (infinite prominence). It is a leaf's height above its merge level in a
dendrogram (``min_delta`` of astrodendro: Rosolowsky et al. 2008, ApJ 679, 1338), the
0-dimensional persistence of the superlevel sets (Edelsbrunner, Letscher & Zomorodian 2002,
Discrete Comput. Geom. 28, 511), and what multi-threshold deblending (Bertin & Arnouts 1996,
A&AS 117, 393) measures in steps, without its condition on the branch's share of the flux.

It is computed in one pass over the pixels from the highest down, each joined to its already
visited 8-neighbours by a union-find: O(n log n) for the sort of ``n`` pixels, then nearly
linear.
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["peak_prominence"]


def peak_prominence(
    image: np.ndarray, include: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The local maxima of ``image`` among the ``include`` pixels, with their prominences.

    Parameters
    ----------
    image : array (h, w)
        The image (e.g. a matched-filtered image, in its own units).
    include : array of bool (h, w)
        The pixels considered (e.g. those above a detection threshold); each 8-connected
        region of them is a landscape of its own.

    Returns
    -------
    y, x : array of int
        The maxima's pixels: every pixel none of whose included 8-neighbours is higher (of
        equal values, the first in row-major order counts as the higher; so a flat top's first
        pixel is a maximum, of prominence 0 where the top touches a higher pixel).
    prominence : array of float
        Height above the highest saddle joining the maximum to a higher one (image units);
        ``inf`` for the highest maximum of each region.
    """
    image = np.asarray(image)
    include = np.asarray(include, dtype=bool)
    if image.ndim != 2 or image.shape != include.shape:
        raise ValueError(
            f"peak_prominence: image {image.shape} and include {include.shape} must be one "
            "2-D shape"
        )
    values = np.ascontiguousarray(image, dtype=np.float64).ravel()
    chosen = np.flatnonzero(include.ravel() & np.isfinite(values))
    # from the highest down; a stable sort keeps row-major order among equal values
    order = chosen[np.argsort(-values[chosen], kind="stable")]
    h, w = image.shape
    peaks, prominence = _prominence(values, order.astype(np.int64), h, w)
    y, x = np.divmod(peaks, w)
    return y, x, prominence


@numba.njit(cache=True)
def _root(parent: np.ndarray, i: int) -> int:  # pragma: no cover - compiled
    root = i
    while parent[root] != root:
        root = parent[root]
    while parent[i] != root:  # path compression
        following = parent[i]
        parent[i] = root
        i = following
    return root


@numba.njit(cache=True)
def _prominence(
    values: np.ndarray, order: np.ndarray, h: int, w: int
) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    n = len(order)
    # rank of each visited pixel in ``order`` (-1: not included), so the union-find's arrays
    # hold the included pixels only
    rank = np.full(h * w, -1, dtype=np.int64)
    parent = np.empty(n, dtype=np.int64)
    top = np.empty(n, dtype=np.int64)  # a root's highest pixel (its rank)
    prominence = np.full(n, np.nan)
    for k in range(n):
        pixel = order[k]
        rank[pixel] = k
        parent[k] = k
        top[k] = k
        row = pixel // w
        col = pixel - row * w
        joined = False
        for dy in range(-1, 2):
            r = row + dy
            if r < 0 or r >= h:
                continue
            for dx in range(-1, 2):
                c = col + dx
                if (dy == 0 and dx == 0) or c < 0 or c >= w:
                    continue
                other = rank[r * w + c]
                if other < 0:
                    continue
                a = _root(parent, k)
                b = _root(parent, other)
                if a == b:
                    continue
                if not joined and a == k:
                    # the pixel joins a visited island: it is no maximum
                    parent[k] = b
                    joined = True
                    continue
                # two islands meet at this pixel's level: the one with the lower top ends
                # (a lower rank is a higher value, or equal and first in row-major order)
                low, high = (a, b) if top[a] > top[b] else (b, a)
                prominence[top[low]] = values[order[top[low]]] - values[pixel]
                parent[low] = high
        if not joined:
            prominence[k] = np.inf  # a new island: a maximum, the highest of it so far
    maxima = np.flatnonzero(~np.isnan(prominence))
    return order[maxima], prominence[maxima]
