"""Cosmic-ray detection and repair.

A cosmic ray deposits charge in one or a few pixels along a track; no astronomical source can
be that sharp, because every source is blurred by the PSF. A pixel is taken for a cosmic ray
when, in the background-subtracted image,

1. it is ``threshold`` sigma above the background, and ``threshold`` sigma above the mean of
   its 8 neighbours (6 sigma leaves ~0.02 false pixels in a 16-Mpixel sensor of pure noise;
   a typical cosmic ray is ~25 sigma);
2. it is more than ``contrast`` times that neighbour mean: for any PSF wider than
   ``min_fwhm`` pixels the peak-to-neighbour ratio stays below ~2 (1.8 for a 2.5-pixel FWHM
   Gaussian centred on a pixel), while a cosmic ray's neighbours hold little or no charge;
3. it is not saturated (a saturated star is flat-topped, not sharp).

Only pixels passing the first, cheap test are examined further, so the cost is one pass over
the image plus work proportional to the bright pixels. Detected pixels are grown by ``grow``
pixels (charge diffuses), replaced by the mean of the
unaffected pixels around them, masked CR and INTRP, and the search is repeated
``iterations`` times so the rest of a track is found once its brightest pixels are gone.
After L.A.Cosmic (van Dokkum 2001, PASP 113, 1420) and the LSST repair step, simplified.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import Field

from twinkles.image import Exposure, MaskPlane
from twinkles.section import Section

__all__ = ["CosmicRayConfig", "CosmicRayResult", "CosmicRayTask"]


class CosmicRayConfig(Section):
    """Cosmic-ray detection and repair."""

    threshold: float = Field(
        6.0, gt=0, description="Significance above background and neighbours (sigma)."
    )
    contrast: float = Field(
        3.0, gt=1.0, description="Minimum ratio of a pixel to the mean of its 8 neighbours."
    )
    grow: int = Field(1, ge=0, le=5, description="Pixels by which each detection is grown.")
    iterations: int = Field(3, ge=1, le=10, description="Detection-repair passes.")
    repair_box: int = Field(5, ge=3, le=15, description="Side of the box averaged for repair.")


@dataclass
class CosmicRayResult:
    """Pixels found and repaired (also masked CR and INTRP in the exposure)."""

    n_pixels: int
    n_events: int
    y: np.ndarray
    x: np.ndarray


_NEIGHBOURS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]


def _neighbour_mean_at(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Mean of the 8 neighbours of pixels (ys, xs); edges reuse the nearest pixel."""
    h, w = image.shape
    total = np.zeros(len(ys), dtype=np.float64)
    for dy, dx in _NEIGHBOURS:
        total += image[np.clip(ys + dy, 0, h - 1), np.clip(xs + dx, 0, w - 1)]
    return total / 8.0


class CosmicRayTask:
    """Find cosmic rays in a background-subtracted exposure and repair them in place."""

    def __init__(self, config: CosmicRayConfig | None = None):
        self.config = config or CosmicRayConfig()

    def run(self, exposure: Exposure) -> CosmicRayResult:
        """Find cosmic-ray pixels in a background-subtracted exposure and repair them in place.

        Parameters
        ----------
        exposure : Exposure
            Background-subtracted image (electrons) with its variance; SAT and BAD pixels are
            left alone.

        Returns
        -------
        CosmicRayResult
            Number of pixels and of connected events, and the pixels' positions; the exposure's
            pixels are replaced and masked CR and INTRP.
        """
        cfg = self.config
        image, variance, mask = exposure.image, exposure.variance, exposure.mask
        h, w = image.shape
        protect = int(MaskPlane.SAT | MaskPlane.BAD)
        # one pass over the image: no pixel can pass the tests unless it stands `threshold`
        # times above the lowest noise on the sensor (a sparse sample estimates that floor)
        floor = float(np.sqrt(max(np.percentile(variance[::16, ::16], 1), 1e-6)))
        ys, xs = np.nonzero(image > cfg.threshold * floor)
        keep = ((mask[ys, xs] & protect) == 0) & (
            image[ys, xs].astype(np.float64) ** 2 > cfg.threshold**2 * variance[ys, xs]
        )
        ys, xs = ys[keep], xs[keep]
        found: set[int] = set()
        for _ in range(cfg.iterations):
            if len(ys) == 0:
                break
            value = image[ys, xs].astype(np.float64)
            sigma = np.sqrt(variance[ys, xs].astype(np.float64))
            neighbours = _neighbour_mean_at(image, ys, xs)
            sharp = (value - neighbours > cfg.threshold * sigma) & (
                value > cfg.contrast * np.maximum(neighbours, 0.0)
            )
            if not sharp.any():
                break
            gy, gx = _grow(ys[sharp], xs[sharp], cfg.grow, h, w)
            flat = gy * w + gx
            new = ~np.isin(flat, list(found)) & ((mask[gy, gx] & protect) == 0)
            gy, gx = gy[new], gx[new]
            found.update((gy * w + gx).tolist())
            self._repair(exposure, gy, gx, found)
            # next pass: the remaining candidates near what was just repaired
            near_y, near_x = _grow(gy, gx, 2, h, w)
            near = np.isin(ys * w + xs, near_y * w + near_x)
            rest = ~sharp & near & ~np.isin(ys * w + xs, gy * w + gx)
            ys, xs = ys[rest], xs[rest]
        flat = np.fromiter(found, dtype=np.int64, count=len(found))
        cy, cx = flat // w, flat % w
        mask[cy, cx] |= int(MaskPlane.CR | MaskPlane.INTRP)
        return CosmicRayResult(len(flat), _count_events(cy, cx), cy, cx)

    def _repair(
        self, exposure: Exposure, ys: np.ndarray, xs: np.ndarray, excluded: set[int]
    ) -> None:
        """Replace pixels (ys, xs) by the mean of the unaffected pixels in a box around each."""
        half = self.config.repair_box // 2
        h, w = exposure.shape
        protect = int(MaskPlane.SAT | MaskPlane.BAD)
        excluded_flat = np.fromiter(excluded, dtype=np.int64, count=len(excluded))
        total = np.zeros(len(ys))
        var_total = np.zeros(len(ys))
        count = np.zeros(len(ys))
        for dy in range(-half, half + 1):
            for dx in range(-half, half + 1):
                yy, xx = ys + dy, xs + dx
                inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
                yy, xx = np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)
                use = inside & ((exposure.mask[yy, xx] & protect) == 0)
                use &= ~np.isin(yy * w + xx, excluded_flat)
                total += np.where(use, exposure.image[yy, xx], 0.0)
                var_total += np.where(use, exposure.variance[yy, xx], 0.0)
                count += use
        ok = count > 0
        exposure.image[ys[ok], xs[ok]] = total[ok] / count[ok]
        exposure.variance[ys[ok], xs[ok]] = var_total[ok] / count[ok]


def _grow(ys: np.ndarray, xs: np.ndarray, by: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixels within ``by`` (Chebyshev distance) of (ys, xs), each once."""
    offsets = np.arange(-by, by + 1)
    gy = (ys[:, None, None] + offsets[None, :, None]).clip(0, h - 1)
    gx = (xs[:, None, None] + offsets[None, None, :]).clip(0, w - 1)
    gy, gx = np.broadcast_arrays(gy, gx)
    flat = np.unique(gy.ravel() * w + gx.ravel())
    return flat // w, flat % w


def _count_events(ys: np.ndarray, xs: np.ndarray) -> int:
    """Connected groups (8-connectivity) among the pixels (ys, xs)."""
    if len(ys) == 0:
        return 0
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pairs = cKDTree(np.column_stack([ys, xs])).query_pairs(1.5, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(ys),) * 2)
    return int(connected_components(graph, directed=False)[0])
