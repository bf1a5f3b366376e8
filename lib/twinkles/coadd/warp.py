"""Resampling a calexp onto the patch (a "direct warp", as LSST's makeDirectWarp).

The transform from patch pixels to calexp pixels (patch TAN -> sky -> calexp TAN-SIP) is
evaluated exactly on a coarse grid (``grid_step`` patch pixels) and fitted there by a 2-D
polynomial, checked to ``max_transform_error`` pixels; evaluating the WCS at every pixel
costs 4.2 s for a 4k image against ~0.1 s for the polynomial
(../shared/reference/PERFORMANCE.md). Only patch pixels inside the calexp's footprint are
resampled, in one compiled pass per pixel (:mod:`twinkles.image.resample`; scipy took 3.6-4.5
s per run1 calexp, the compiled pass 0.9 s).

* **image**: cubic B-spline interpolation (``scipy.ndimage.map_coordinates``, order 3, with
  its prefilter), which reproduces polynomials to third order like the bicubic kernels of
  the LSST warper;
* **variance**: the nearest input pixel's variance times the variance factor of cubic-spline
  interpolation at the pixel's sub-pixel phase, ``r(fx) r(fy)``, ``r(f) = sum_k c_k(f)^2``
  over the interpolation's effective weights ``c_k`` (1 on the grid, 0.64 midway), so the
  warp's variance plane predicts its pixel noise (the covariance between warped pixels is
  not carried, as in LSST);
* **mask**: the nearest input pixel's bits (``NO_DATA`` outside the calexp);
* fluxes are scaled to nJy with the calexp's zero point, and by the ratio of pixel areas
  (the Jacobian of the transform, which the optical distortion makes vary), so a source's
  summed flux is the same on the warp as on the calexp and warps of different visits add.

The PSF is carried by :func:`warped_psf_kernel`: the calexp's PSF at the corresponding
position, resampled through the transform's local Jacobian.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS
from pydantic import Field
from scipy import ndimage

from twinkles.errors import TwinklesError
from twinkles.geometry import polynomial_terms
from twinkles.image import Exposure, MaskPlane, PhotoCalib
from twinkles.image.coadd_psf import patch_jacobian, warp_kernel
from twinkles.image.psf import PixelPSF
from twinkles.image.resample import resample_rows, spline_coefficients
from twinkles.section import Section

__all__ = [
    "CalexpModel",
    "WarpConfig",
    "WarpError",
    "WarpTask",
    "spline_variance_factor",
    "warped_psf_kernel",
]

#: Mask planes carried from the calexp to the warp.
CARRIED_PLANES = (
    MaskPlane.BAD
    | MaskPlane.SAT
    | MaskPlane.CR
    | MaskPlane.INTRP
    | MaskPlane.EDGE
    | MaskPlane.NO_DATA
)

#: Zero point of an image in nJy (AB magnitude of 1 nJy).
NJY_ZERO_POINT = 31.4


class WarpError(TwinklesError):
    """The calexp does not overlap the patch, or its transform cannot be fitted."""


class WarpConfig(Section):
    """Resampling onto the patch."""

    grid_step: int = Field(
        64, ge=8, description="Spacing (patch pixels) of the exact WCS evaluations."
    )
    max_transform_error: float = Field(
        0.005, gt=0, description="Largest allowed error of the fitted transform (pixels)."
    )
    max_degree: int = Field(
        8,
        ge=1,
        le=9,
        description="Highest polynomial degree tried for the transform (the lowest that fits "
        "is used; a calexp whose SIP bends strongly towards its corners needs 7-8).",
    )


@lru_cache(maxsize=1)
def _spline_weight_table(phases: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Effective 1-D weights of prefiltered cubic-spline interpolation at sub-pixel phases."""
    n = 64
    f = np.arange(phases + 1) / phases
    weights = np.empty((len(f), n))
    for k in range(n):
        delta = np.zeros(n)
        delta[k] = 1.0
        weights[:, k] = ndimage.map_coordinates(delta, [n // 2 + f], order=3, mode="mirror")
    return f, weights


@lru_cache(maxsize=1)
def _variance_factor_table() -> np.ndarray:
    """``sum_k c_k^2`` at the 65 phases of :func:`_spline_weight_table` (read-only)."""
    table = np.sum(_spline_weight_table()[1] ** 2, axis=1)
    table.flags.writeable = False
    return table


def spline_variance_factor(frac: np.ndarray) -> np.ndarray:
    """Variance of cubic-spline-interpolated white noise of unit variance at phase ``frac``.

    ``frac`` is the distance (pixels) from the nearest lower input pixel; the factor is
    ``sum_k c_k(frac)^2``, 1 at 0 and 1, its minimum midway.
    """
    table = _variance_factor_table()
    # nearest of 65 phases: the factor changes by < 0.4% between neighbouring phases
    index = (np.mod(frac, 1.0) * (len(table) - 1) + 0.5).astype(np.intp)
    return table[index]


@dataclass
class PixelTransform:
    """Polynomial map from patch pixels to calexp pixels (0-based)."""

    coeffs: np.ndarray  # (n_terms, 2)
    degree: int
    centre: tuple[float, float]
    scale: float
    max_error: float

    def row_coefficients(self, row: np.ndarray) -> np.ndarray:
        """Per patch row, the coefficients of each fitted quantity's polynomial in
        ``u = (x - centre_x) / scale``: array (n_rows, degree + 1, n_quantities), the
        quantities being calexp x, calexp y and the pixel-area ratio."""
        v = (np.asarray(row, dtype=float) - self.centre[1]) / self.scale
        d = self.degree
        exps = [(i, j) for n in range(d + 1) for j in range(n + 1) for i in [n - j]]
        per_row = np.zeros((len(v), d + 1, self.coeffs.shape[1]))
        for k, (i, j) in enumerate(exps):
            per_row[:, i, :] += np.outer(v**j, self.coeffs[k])
        return per_row


def _check_exponents(degree: int) -> None:
    # the Horner evaluation assumes polynomial_terms orders terms by total degree, then by
    # the power of y; fail loudly if that ever changes
    u, v = np.array([2.0]), np.array([3.0])
    terms = polynomial_terms(u, v, degree)[0]
    exps = [(i, j) for n in range(degree + 1) for j in range(n + 1) for i in [n - j]]
    expected = np.array([2.0**i * 3.0**j for i, j in exps])
    if not np.allclose(terms, expected):
        raise AssertionError(
            "polynomial_terms ordering changed; update PixelTransform.row_coefficients"
        )


def fit_transform(
    patch_wcs: WCS,
    calexp_wcs: WCS,
    bbox: tuple[int, int, int, int],
    config: WarpConfig,
) -> PixelTransform:
    """Fit patch pixel -> calexp pixel over ``bbox`` = (x0, y0, x1, y1), exclusive ends."""
    x0, y0, x1, y1 = bbox
    # at least 16 nodes a side, so a small box still constrains the higher degrees
    gx = np.linspace(x0, x1 - 1, max(16, (x1 - x0) // config.grid_step + 2))
    gy = np.linspace(y0, y1 - 1, max(16, (y1 - y0) // config.grid_step + 2))
    px, py = (a.ravel() for a in np.meshgrid(gx, gy))

    def to_calexp(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ra, dec = patch_wcs.wcs_pix2world(x, y, 0)
        return calexp_wcs.all_world2pix(ra, dec, 0)

    cx, cy = to_calexp(px, py)
    # calexp pixels per patch pixel: |det d(calexp)/d(patch)|, by central differences
    xp, yp = to_calexp(px + 0.5, py)
    xm, ym = to_calexp(px - 0.5, py)
    xq, yq = to_calexp(px, py + 0.5)
    xn, yn = to_calexp(px, py - 0.5)
    area = np.abs((xp - xm) * (yq - yn) - (xq - xn) * (yp - ym))
    centre = (0.5 * (x0 + x1 - 1), 0.5 * (y0 + y1 - 1))
    scale = max(x1 - x0, y1 - y0) / 2.0
    u, v = (px - centre[0]) / scale, (py - centre[1]) / scale
    target = np.column_stack([cx, cy, area])
    for degree in range(1, config.max_degree + 1):
        terms = polynomial_terms(u, v, degree)
        if terms.shape[1] > len(px) // 2:
            break
        coeffs, *_ = np.linalg.lstsq(terms, target, rcond=None)
        error = float(np.max(np.abs(terms @ coeffs[:, :2] - target[:, :2])))
        if error <= config.max_transform_error:
            _check_exponents(degree)
            return PixelTransform(coeffs, degree, centre, scale, error)
    raise WarpError(
        f"the patch -> calexp transform cannot be fitted to {config.max_transform_error} px "
        f"with a polynomial of degree <= {config.max_degree} (last error {error:.3g} px); "
        "lower grid_step or raise max_degree"
    )


def _footprint_spans(
    corners_x: np.ndarray, corners_y: np.ndarray, bbox: tuple[int, int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of the bbox and the first and last (inclusive) pixel of the convex footprint in
    each, padded by 2 pixels (pixels mapping outside the calexp become NO_DATA later)."""
    x0, y0, x1, y1 = bbox
    rows = np.arange(y0, y1)
    lo = np.full(len(rows), np.inf)
    hi = np.full(len(rows), -np.inf)
    n = len(corners_x)
    for k in range(n):
        xa, ya = corners_x[k], corners_y[k]
        xb, yb = corners_x[(k + 1) % n], corners_y[(k + 1) % n]
        if ya == yb:
            continue
        t = (rows - ya) / (yb - ya)
        on = (t >= -0.02) & (t <= 1.02)  # a little beyond, for rows at a corner
        xe = xa + np.clip(t, 0, 1) * (xb - xa)
        lo = np.where(on, np.minimum(lo, xe), lo)
        hi = np.where(on, np.maximum(hi, xe), hi)
    first = np.clip(np.floor(lo) - 2, x0, x1 - 1)
    last = np.clip(np.ceil(hi) + 2, x0, x1 - 1)
    keep = np.isfinite(lo) & (last >= first)
    return rows[keep], first[keep].astype(int), last[keep].astype(int)


class WarpTask:
    """Resample a calexp onto the patch.

    Parameters
    ----------
    config : WarpConfig
        Transform grid and tolerance.
    """

    def __init__(self, config: WarpConfig | None = None):
        self.config = config or WarpConfig()

    def run(self, calexp: Exposure, patch_wcs: WCS, patch_shape: tuple[int, int]) -> Exposure:
        """Resample a calexp onto the patch's pixel grid.

        Parameters
        ----------
        calexp : Exposure
            Calibrated exposure (electrons) with WCS, PSF and zero point.
        patch_wcs : `~astropy.wcs.WCS`
            The patch's WCS.
        patch_shape : tuple of int
            The patch's (height, width) in pixels.

        Returns
        -------
        Exposure
            The warp on the patch's bounding box of the calexp, in nJy. Its metadata carry
            ``x0``, ``y0`` (the box's offset on the patch) besides the calexp's; its WCS is the
            patch's, shifted to the box.

        Raises
        ------
        WarpError
            The calexp has no WCS or zero point, or does not overlap the patch.
        """
        if calexp.wcs is None or calexp.photo_calib is None:
            raise WarpError(f"visit {calexp.visit}: the calexp has no WCS or zero point")
        h, w = calexp.shape
        # footprint on the patch from the calexp's edges (sampled, as SIP bends them)
        t = np.linspace(-0.5, 1.0, 16)[:-1]
        ex = np.concatenate([t * w, np.full(15, w - 0.5), (1 - t) * w - 1, np.full(15, -0.5)])
        ey = np.concatenate([np.full(15, -0.5), t * h, np.full(15, h - 0.5), (1 - t) * h - 1])
        ra, dec = calexp.wcs.all_pix2world(ex, ey, 0)
        fx, fy = patch_wcs.wcs_world2pix(ra, dec, 0)
        ph, pw = patch_shape
        x0, y0 = max(int(np.floor(fx.min())) - 2, 0), max(int(np.floor(fy.min())) - 2, 0)
        x1, y1 = min(int(np.ceil(fx.max())) + 3, pw), min(int(np.ceil(fy.max())) + 3, ph)
        if x1 <= x0 or y1 <= y0:
            raise WarpError(f"visit {calexp.visit}: the calexp does not overlap the patch")
        bbox = (x0, y0, x1, y1)
        transform = fit_transform(patch_wcs, calexp.wcs, bbox, self.config)

        # corners of the footprint (the edge samples at the four sensor corners)
        corner_idx = [0, 15, 30, 45]
        rows, first, last = _footprint_spans(fx[corner_idx], fy[corner_idx], bbox)
        # spline interpolation needs finite inputs: masked-out pixels carry 0 into it
        src = np.where(np.isfinite(calexp.image), calexp.image, 0.0)
        coeffs = spline_coefficients(src)
        del src
        shape = (y1 - y0, x1 - x0)
        image_out = np.full(shape, np.nan, dtype=np.float32)
        var_out = np.full(shape, np.inf, dtype=np.float32)
        mask_out = np.full(shape, int(MaskPlane.NO_DATA), dtype=np.int32)
        resample_rows(
            coeffs,
            np.ascontiguousarray(calexp.variance, dtype=np.float32),
            np.ascontiguousarray(calexp.mask, dtype=np.int32),
            int(CARRIED_PLANES),
            transform.row_coefficients(rows),
            rows,
            first,
            last,
            transform.centre[0],
            transform.scale,
            x0,
            y0,
            calexp.photo_calib.njy_per_electron,
            _variance_factor_table(),
            image_out,
            var_out,
            mask_out,
        )

        wcs = patch_wcs.deepcopy()
        wcs.wcs.crpix = [wcs.wcs.crpix[0] - x0, wcs.wcs.crpix[1] - y0]
        wcs.wcs.set()
        metadata = {
            k: v for k, v in calexp.metadata.items() if k in ("visit", "filter", "mjd", "exptime")
        }
        metadata.update(
            x0=x0, y0=y0, warp_deg=transform.degree, warp_err=round(transform.max_error, 6)
        )
        return Exposure(
            image=image_out,
            mask=mask_out,
            variance=var_out,
            wcs=wcs,
            photo_calib=PhotoCalib(NJY_ZERO_POINT, calexp.photo_calib.zero_point_err),
            metadata=metadata,
        )


@dataclass
class CalexpModel:
    """What the coadd PSF needs of a calexp: its WCS, PSF and size (no pixels)."""

    visit: int
    wcs: WCS
    psf: PixelPSF
    shape: tuple[int, int]

    @classmethod
    def read(cls, path: str | Path) -> CalexpModel:
        """From a calexp file, reading the headers and the PSF only."""
        with fits.open(path, memmap=True) as hdul:
            header = hdul["IMAGE"].header
            return cls(
                visit=int(hdul[0].header["VISIT"]),
                wcs=WCS(header, relax=True),
                psf=PixelPSF.from_hdu(hdul["PSF"]),
                shape=(int(header["NAXIS2"]), int(header["NAXIS1"])),
            )


def warped_psf_kernel(model: CalexpModel, patch_wcs: WCS, x: float, y: float) -> np.ndarray:
    """A calexp's PSF at patch position (x, y), resampled onto the patch's pixel axes.

    The PSF kernel at the corresponding calexp position is mapped through the local Jacobian
    of patch -> calexp pixels (:func:`~twinkles.image.coadd_psf.warp_kernel`), and normalised
    to unit sum.
    """
    ra, dec = patch_wcs.wcs_pix2world([x], [y], 0)
    cx, cy = model.wcs.all_world2pix(ra, dec, 0)
    kernel = model.psf.kernel(float(cx[0]), float(cy[0]))
    out = warp_kernel(kernel, patch_jacobian(patch_wcs, model.wcs, x, y))
    return out / out.sum()
