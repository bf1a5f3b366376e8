"""One-to-one positional matching."""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["match_nearest"]


def match_nearest(
    x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, radius: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i1, i2) closer than ``radius``, each index used once, nearest pairs first.

    Works in any flat coordinates (pixels, or arcsec on a tangent plane). Returns the indices
    into the first and second sets and the separations.
    """
    if len(x1) == 0 or len(x2) == 0:
        empty = np.zeros(0, dtype=int)
        return empty, empty, np.zeros(0)
    tree = cKDTree(np.column_stack([x2, y2]))
    dist, idx = tree.query(np.column_stack([x1, y1]), k=3, distance_upper_bound=radius)
    i1 = np.repeat(np.arange(len(x1)), dist.shape[1])
    i2, d = idx.ravel(), dist.ravel()
    ok = np.isfinite(d)
    i1, i2, d = i1[ok], i2[ok], d[ok]
    order = np.argsort(d, kind="stable")
    taken1, taken2 = set(), set()
    keep = []
    for k in order:
        if i1[k] in taken1 or i2[k] in taken2:
            continue
        taken1.add(i1[k])
        taken2.add(i2[k])
        keep.append(k)
    keep = np.array(keep, dtype=int)
    return i1[keep], i2[keep], d[keep]
