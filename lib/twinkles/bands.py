"""The LSST filters: their names and order, blue to red.

What each filter transmits (throughputs, zero points, sky) is the simulator's business
(:mod:`twinkles.sim.bands`); this module is only what every step shares: which bands exist.
"""

from __future__ import annotations

from typing import Literal

__all__ = ["BANDS", "Band", "band_order"]

#: The LSST filters, blue to red.
BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")

#: A filter name, for configuration fields.
Band = Literal["u", "g", "r", "i", "z", "y"]


def band_order(band: str) -> int:
    """Position of ``band`` from blue to red (0 for u); unknown names sort after y.

    Returns
    -------
    int
        The index of ``band`` in :data:`BANDS`, or ``len(BANDS)`` for another name.
    """
    return BANDS.index(band) if band in BANDS else len(BANDS)
