"""numba's one-time start in a process.

The first call of any compiled function in a process costs 0.2-0.3 s on the CI kind of machine
(numba sets up its typing and code-generation contexts), whichever function it is; the first
call of each further cached function then costs ~5 ms. Nearly every per-visit recipe calls
compiled loops (aperture sums, warps, the spline prefilter), so a warm kernel, which serves many
visits, pays the start once when it starts, as it pays its imports.
"""

from __future__ import annotations

import time

import numba

__all__ = ["initialize"]


@numba.njit(cache=True)
def _probe(value: int) -> int:  # pragma: no cover - compiled
    return value + 1


def initialize() -> float:
    """Start numba in this process (a call of a tiny cached function); the seconds it took."""
    start = time.perf_counter()
    _probe(1)
    return time.perf_counter() - start
