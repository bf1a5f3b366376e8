"""Deterministic 64-bit ids of simulated objects: ``kind * ID_BASE + index``.

The kind can be read back from any id (:func:`kind_of`), so one truth query serves every
population. Ids depend only on the seed and the configuration, never on processing order.
"""

from __future__ import annotations

from enum import IntEnum

import numpy as np

__all__ = ["ID_BASE", "ObjectKind", "kind_of", "make_ids"]

ID_BASE = 10_000_000_000


class ObjectKind(IntEnum):
    """What a truth id refers to."""

    STAR = 1
    GALAXY = 2
    SUPERNOVA = 3
    LENSED_IMAGE = 4
    LENS_SYSTEM = 5


def make_ids(kind: ObjectKind, n: int, start: int = 1) -> np.ndarray:
    """``n`` consecutive ids of one kind."""
    return int(kind) * ID_BASE + np.arange(start, start + n, dtype=np.int64)


def kind_of(ids: np.ndarray) -> np.ndarray:
    """The :class:`ObjectKind` value of each id."""
    return np.asarray(ids, dtype=np.int64) // ID_BASE
