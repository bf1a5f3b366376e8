"""Coadding warps: an inverse-variance weighted, outlier-clipped mean, streamed by rows.

Each warp ``v`` gets one weight, ``w_v = 1 / median(variance_v)`` (a per-visit weight, as
LSST's assembleCoadd uses, so a source's own Poisson noise does not bias its coadded flux).
The patch is assembled in blocks of rows; for each block every warp's rows are read once
(decompressed, the costly part) and held for two passes (the block has fewer rows when many
warps would not fit ``block_memory_mb``):

1. the weighted mean ``m`` and its variance ``var_m`` of the unmasked pixels;
2. pixels deviating from it by more than ``clip_sigma * sqrt(var_v + var_m) +
   clip_model_fraction * |m|`` are left out (cosmic rays missed by the calexp, satellites,
   transients), and the mean is recomputed:

    coadd = sum(w_v x_v) / sum(w_v),   variance = sum(w_v^2 var_v) / (sum w_v)^2

with the n-image plane counting the warps kept at each pixel. The ``|m|`` term lets
sources vary with the seeing (a star's core is 2x brighter in good seeing) without being
clipped. Memory depends on the patch and the block, not on the number of visits.

The coadd PSF is the weighted mean of the warped PSFs (:func:`coadd_psf`), kept as its
inputs and evaluated exactly where it is asked (:class:`~twinkles.image.coadd_psf.CoaddPSF`):
the sum changes at every visit's edge and each visit's PSF varies over its sensor, which no
smooth polynomial over the patch follows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from pydantic import Field
from scipy.special import (
    ndtr,
    ndtri,
)  # the normal CDF and its inverse (scipy.stats costs 0.6 s to import)

from twinkles.coadd.warp import NJY_ZERO_POINT, CalexpModel
from twinkles.errors import TwinklesError
from twinkles.image import Exposure, MaskPlane, PhotoCalib
from twinkles.image.coadd_psf import CoaddInput, CoaddPSF
from twinkles.image.compression import restore_infinities
from twinkles.section import Section
from twinkles.stats import IQR_TO_SIGMA

__all__ = [
    "CoaddConfig",
    "CoaddError",
    "CoaddResult",
    "CoaddTask",
    "coadd_psf",
    "measured_depth",
    "noise_ratio",
    "predicted_depth",
]

#: Warp pixels with these bits are left out of the coadd.
REJECTED_PLANES = MaskPlane.NO_DATA | MaskPlane.BAD | MaskPlane.SAT | MaskPlane.CR


class CoaddError(TwinklesError):
    """No warp to coadd."""


class CoaddConfig(Section):
    """Coadd assembly."""

    clip: bool = Field(
        True,
        description="Leave out outlier pixels (a second pass over the warps); off, the coadd "
        "is the plain weighted mean.",
    )
    clip_sigma: float = Field(4.0, gt=0, description="Outlier threshold (sigma).")
    clip_model_fraction: float = Field(
        2.0,
        ge=0,
        description="Deviation allowed as a fraction of the mean itself (seeing changes).",
    )
    saturated_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="A coadd pixel is SAT where warps holding this fraction of the weight "
        "there were saturated. 1: where every visit covering it saturated, the hole a "
        "saturated core leaves, whose rim must not read as sources. LSST's "
        "maskPropagationThresholds take 0.1, which also marks pixels the other visits "
        "measured: templates of PSF-matched warps (whose SAT planes the matching grows) then "
        "lose pixels far into bright stars' wings, and the transients there.",
    )
    block_rows: int = Field(256, ge=16, description="Rows of the patch assembled at once.")
    block_memory_mb: float = Field(
        512.0,
        gt=0,
        description="Memory for the block's warp rows, held so that both passes read each "
        "warp once (MB): with many warps the block has fewer rows, down to 16.",
    )


@dataclass
class CoaddResult:
    """The coadd and what went into it."""

    coadd: Exposure
    """Image and variance in nJy; mask: NO_DATA where no warp contributed, SAT where warps of
    at least ``saturated_fraction`` of the weight there were saturated (``CLIPPED`` bits are
    not kept); metadata: filter, number of visits."""
    n_image: np.ndarray
    """Warps contributing to each pixel (int16)."""
    weights: dict[int, float]
    """Per-visit weight (1/nJy^2)."""
    n_clipped: int
    """Warp pixels left out as outliers."""


class _WarpReader:
    """A warp on disk, read by rows of the patch without loading it.

    Rows are read through astropy's ``section`` (a seek and a read per block), not a memory
    map: mapped pages count in the process's resident memory, which would then grow with the
    number of warps.
    """

    def __init__(self, path: Path):
        self.hdul = fits.open(path, memmap=False, lazy_load_hdus=True)
        try:
            header = self.hdul[0].header
            self.visit = int(header["VISIT"])
            self.x0, self.y0 = int(header["X0"]), int(header["Y0"])
            self.image = self.hdul["IMAGE"].section
            self.variance = self.hdul["VARIANCE"].section
            self.headers = {name: self.hdul[name].header for name in ("IMAGE", "VARIANCE")}
            self.mask = self.hdul["MASK"].section
            self.height, self.width = self.hdul["IMAGE"].shape
        except KeyError as exc:
            self.hdul.close()
            raise CoaddError(f"{path} is not a warp: {exc}") from exc
        step = max(1, self.height // 64)
        sample = np.asarray(self.variance[::step, ::16], dtype=float)
        good = np.isfinite(sample) & (sample > 0)
        if not good.any():
            raise CoaddError(f"warp of visit {self.visit} has no valid pixel ({path})")
        self.weight = 1.0 / float(np.median(sample[good]))

    def rows(self, start: int, stop: int, patch_width: int):
        """(y slice on the block, x slice on the patch, image, variance, usable, inside,
        saturated) for patch rows [start, stop): ``inside`` the calexp's footprint,
        ``saturated`` by the calexp."""
        lo, hi = max(start, self.y0), min(stop, self.y0 + self.height)
        if hi <= lo:
            return None
        sl = slice(lo - self.y0, hi - self.y0)
        # a section read is a new array: infinities go back in place
        image = restore_infinities(
            np.asarray(self.image[sl], dtype=np.float32), self.headers["IMAGE"], copy=False
        )
        variance = restore_infinities(
            np.asarray(self.variance[sl], dtype=np.float32), self.headers["VARIANCE"], copy=False
        )
        mask = np.asarray(self.mask[sl])
        usable = (mask & int(REJECTED_PLANES)) == 0
        usable &= np.isfinite(image) & np.isfinite(variance)
        # the warp's own pixels (not beyond its calexp), and those its calexp saturated
        inside = (mask & int(MaskPlane.NO_DATA)) == 0
        saturated = inside & ((mask & int(MaskPlane.SAT)) != 0)
        return (
            slice(lo - start, hi - start),
            slice(self.x0, self.x0 + self.width),
            image,
            variance,
            usable,
            inside,
            saturated,
        )

    def close(self) -> None:
        self.hdul.close()


class CoaddTask:
    """Assemble warps (written by :class:`~twinkles.coadd.warp.WarpTask`) into a coadd."""

    def __init__(self, config: CoaddConfig | None = None):
        self.config = config or CoaddConfig()

    def block_rows(self, readers: Sequence[_WarpReader]) -> int:
        """Rows per block: ``block_rows``, fewer where the warps' rows for the block (image,
        variance and the usable, inside and saturated flags: 11 bytes a pixel) would exceed
        ``block_memory_mb``; a multiple of 16 (the rows of a compressed tile), at least 16."""
        per_row = 11 * sum(r.width for r in readers)
        fit = int(self.config.block_memory_mb * 2**20 // max(per_row, 1))
        return max(16, min(self.config.block_rows, fit // 16 * 16))

    def run(
        self,
        warp_paths: Sequence[Path],
        patch_wcs: WCS,
        patch_shape: tuple[int, int],
        psf: CoaddPSF | None = None,
        band: str = "",
    ) -> CoaddResult:
        """Coadd the warps at ``warp_paths`` onto the patch.

        Parameters
        ----------
        warp_paths : sequence of Path
            Warp files (FITS exposures with X0, Y0 offsets).
        patch_wcs, patch_shape
            The patch.
        psf : CoaddPSF, optional
            The coadd PSF (from :func:`coadd_psf`), attached to the result.
        band : str
            Filter, for the metadata.

        Returns
        -------
        CoaddResult
            The coadd (nJy), the number of warps behind each pixel, each visit's weight and
            the number of warp pixels clipped as outliers.
        """
        cfg = self.config
        if not warp_paths:
            raise CoaddError(f"no warp to coadd in band {band!r}")
        readers = [_WarpReader(Path(p)) for p in warp_paths]
        height, width = patch_shape
        image = np.full(patch_shape, np.nan, dtype=np.float32)
        variance = np.full(patch_shape, np.inf, dtype=np.float32)
        n_image = np.zeros(patch_shape, dtype=np.int16)
        saturated = np.zeros(patch_shape, dtype=bool)
        n_clipped = 0
        rows_per_block = self.block_rows(readers)
        try:
            for start in range(0, height, rows_per_block):
                stop = min(start + rows_per_block, height)
                block = (stop - start, width)
                # sum of weights, of weight x image, of weight^2 x variance
                sums = np.zeros((3, *block))
                count = np.zeros(block, dtype=np.int16)
                # each warp's rows are decompressed once and serve both passes
                parts = [(r.weight, r.rows(start, stop, width)) for r in readers]
                parts = [(weight, part) for weight, part in parts if part is not None]
                # pass 1: weighted mean of usable pixels (no mean yet: nothing clipped)
                unclipped = (_NO_MEAN, 0.0, 0.0)
                # weight of the warps whose footprint holds each pixel, and of those saturated
                inside_weight, saturated_weight = np.zeros(block), np.zeros(block)
                for weight, (ys, xs, x, v, ok, inside, sat) in parts:
                    _accumulate(sums, count, ys.start, xs.start, x, v, ok, weight, *unclipped)
                    inside_weight[ys, xs] += weight * inside
                    saturated_weight[ys, xs] += weight * sat
                saturated[start:stop] = (saturated_weight > 0) & (
                    saturated_weight >= cfg.saturated_fraction * inside_weight
                )
                # pass 2 (optional): clip and recompute
                if cfg.clip:
                    with np.errstate(invalid="ignore", divide="ignore"):
                        mean = np.stack([sums[1] / sums[0], sums[2] / sums[0] ** 2])
                    sums[:] = 0.0
                    count[:] = 0
                    limits = (cfg.clip_sigma, cfg.clip_model_fraction)
                    for weight, (ys, xs, x, v, ok, _, _) in parts:
                        n_clipped += _accumulate(
                            sums, count, ys.start, xs.start, x, v, ok, weight, mean, *limits
                        )
                del parts
                sw, swx, sw2v = sums
                covered = sw > 0
                with np.errstate(invalid="ignore", divide="ignore"):
                    image[start:stop] = np.where(covered, swx / sw, np.nan)
                    variance[start:stop] = np.where(covered, sw2v / sw**2, np.inf)
                n_image[start:stop] = count
            weights = {r.visit: r.weight for r in readers}
        finally:
            for r in readers:
                r.close()
        empty = n_image == 0
        mask = np.zeros(patch_shape, dtype=np.int32)
        mask[empty] = int(MaskPlane.NO_DATA)
        mask[saturated] |= int(MaskPlane.SAT)
        image[empty] = 0.0
        coadd = Exposure(
            image=image,
            mask=mask,
            variance=variance,
            wcs=patch_wcs,
            psf=psf,
            photo_calib=PhotoCalib(NJY_ZERO_POINT, 0.0),
            metadata={"filter": band, "n_visits": len(readers)},
        )
        return CoaddResult(coadd, n_image, weights, n_clipped)


#: The first pass has no mean yet, so it clips nothing.
_NO_MEAN = np.zeros((2, 0, 0))


@numba.njit(cache=True, nogil=True)
def _accumulate(
    sums, count, row0, col0, x, v, ok, weight, mean, clip_sigma, clip_fraction
):  # pragma: no cover - compiled
    """Add one warp's usable pixels ``x`` (variance ``v``), placed at ``row0``, ``col0`` of the
    block, to the block's ``sums`` (of w, w x, w^2 v; float64) and ``count``. Given the
    block's ``mean`` (its value and its variance), pixels deviating by more than
    ``clip_sigma sqrt(v + var_mean) + clip_fraction |mean|`` are left out; returns how many."""
    clip = mean.shape[1] > 0
    n_clipped = 0
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            if not ok[i, j]:
                continue
            yi, xj = row0 + i, col0 + j
            xv = np.float64(x[i, j])
            vv = np.float64(v[i, j])
            if clip:
                m = mean[0, yi, xj]
                limit = clip_sigma * np.sqrt(vv + mean[1, yi, xj]) + clip_fraction * abs(m)
                if abs(xv - m) > limit:
                    n_clipped += 1
                    continue
            sums[0, yi, xj] += weight
            sums[1, yi, xj] += weight * xv
            sums[2, yi, xj] += weight * weight * vv
            count[yi, xj] += 1
    return n_clipped


def coadd_psf(
    calexps: Sequence[CalexpModel],
    weights: Sequence[float],
    patch_wcs: WCS,
    patch_shape: tuple[int, int],
) -> CoaddPSF:
    """The coadd's PSF: the weighted mean of the warped calexp PSFs, evaluated exactly at any
    patch position (:class:`~twinkles.image.coadd_psf.CoaddPSF`).

    Parameters
    ----------
    calexps : sequence of CalexpModel
        The coadded calexps' WCS, PSF and size.
    weights : sequence of float
        Their coadd weights, in the same order.
    patch_wcs, patch_shape
        The patch.
    """
    if not calexps:
        raise CoaddError("no calexp: no coadd PSF")
    inputs = tuple(
        CoaddInput(m.psf, m.wcs, m.shape, float(w), m.visit)
        for m, w in zip(calexps, weights, strict=True)
    )
    return CoaddPSF(inputs, patch_wcs, tuple(patch_shape))


def noise_ratio(coadd: Exposure, n_image: np.ndarray, clip_sigma: float = 3.0) -> float:
    """Measured pixel noise of a coadd over the noise its variance plane predicts.

    The robust (IQR) spread of ``image / sqrt(variance)`` over pixels with the most
    contributing warps, sources removed by iterative clipping. 1 when the variance plane is
    right; the covariance that resampling puts between pixels is not in the variance plane
    (as in LSST), so this is a per-pixel statement.
    """
    full = (n_image == n_image.max()) & (n_image > 0) & np.isfinite(coadd.variance)
    z = coadd.image[full] / np.sqrt(coadd.variance[full])
    z = z[np.isfinite(z)]
    for _ in range(5):
        q25, med, q75 = np.percentile(z, [25, 50, 75])
        sigma = (q75 - q25) * IQR_TO_SIGMA
        z = z[np.abs(z - med) < clip_sigma * sigma]
    q25, q75 = np.percentile(z, [25, 75])
    # the spread of a clipped Gaussian: undo the truncation at clip_sigma
    truncated_iqr = 2 * ndtri(0.5 + 0.25 * (2 * ndtr(clip_sigma) - 1))
    return float((q75 - q25) / truncated_iqr)


def predicted_depth(five_sigma_depths: np.ndarray) -> float:
    """5-sigma point-source depth (AB mag) of an optimally weighted coadd of visits with
    these depths: ``1.25 log10(sum 10^(0.8 m5))``."""
    m5 = np.asarray(five_sigma_depths, dtype=float)
    return float(1.25 * np.log10(np.sum(10 ** (0.8 * m5))))


def measured_depth(coadd: Exposure, n_image: np.ndarray) -> float:
    """5-sigma point-source depth (AB mag) of a coadd in nJy from its variance plane and PSF:
    ``31.4 - 2.5 log10(5 sqrt(n_eff var))`` over the fully covered pixels."""
    full = (n_image == n_image.max()) & (n_image > 0)
    var = float(np.median(coadd.variance[full]))
    h, w = coadd.shape
    neff = coadd.psf.neff(0.5 * (w - 1), 0.5 * (h - 1))
    return float(NJY_ZERO_POINT - 2.5 * np.log10(5.0 * np.sqrt(neff * var)))
