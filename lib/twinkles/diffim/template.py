"""Good-seeing templates (LSST's ``goodSeeingCoadd``): selected visits, PSF-homogenised, coadded.

Twinkles took visits with 2.6 < FWHM < 3.0 pixels. A fixed window does not travel between runs
with different seeing, so the window here is a quantile of the run's own seeing distribution
per filter (the best third by default), or an explicit FWHM range. Each chosen warp is
convolved to one target PSF, the widest chosen PSF anywhere on the patch broadened by a small
Gaussian, so every matching kernel only broadens; the matched warps are coadded with
:class:`~twinkles.coadd.assemble.CoaddTask`, and the template's PSF is the target, the same
everywhere on the patch.

A visit's PSF changes across its sensor (in width, by up to 10-15% from the centre to a
corner), so a warp is matched with a kernel that changes with position too, as LSST's
``ModelPsfMatchTask`` does: a kernel is fitted from the warp's PSF model to the target on a
grid of points over the visit's footprint (:func:`psf_grid`) and a polynomial of position
interpolates them. Matched at the patch's centre alone, the template's PSF still varied with
each visit's pattern, and its stars' PSF fluxes, read with the constant target, were off by
several per cent towards the corners: residuals at every bright star of every difference.

The template is the plain weighted mean (no outlier clipping, unlike the deep coadd): with a
handful of visits, per-pixel clipping takes the core of a supernova that was bright in one of
them and leaves its wings, a residual of the PSF's shape minus a ring, different at every
epoch's seeing. Unclipped, the transient is in the template at its weighted mean flux, and
every difference measures ``flux(t) - flux(template)``, as a light-curve fit with a constant
offset expects; a clipped template offsets the light curves through those pixels at every
epoch (make_template's recipe quotes by how much).

Matching a warp's PSF convolves noise that the warp's resampling had already correlated, and
the convolved variance plane (``K^2 * var``) assumes it had not: the coadded template's plane
predicts too little pixel noise.
:func:`scale_variance_to_noise` scales it to the noise measured on the template, as LSST's
``ScaleVarianceTask`` does.

No chosen visit is an error naming the filter and the window, never a silent bad template.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pydantic import Field
from scipy import ndimage

from twinkles.coadd.assemble import noise_ratio
from twinkles.coadd.warp import CalexpModel, warped_psf_kernel
from twinkles.diffim.kernel import AlardLuptonConfig, fit_kernel
from twinkles.diffim.subtract import kernel_sigma
from twinkles.errors import TwinklesError
from twinkles.geometry import polynomial_terms
from twinkles.image.convolve import fft_convolve_terms
from twinkles.image.exposure import Exposure, MaskPlane
from twinkles.image.masks import grow_bits, grow_square
from twinkles.image.psf import PixelPSF
from twinkles.section import Section

__all__ = [
    "TemplateConfig",
    "TemplateError",
    "match_warp",
    "psf_grid",
    "scale_variance_to_noise",
    "select_template_visits",
    "target_psf",
]


class TemplateError(TwinklesError):
    """No visit qualifies for a template."""


class TemplateConfig(Section):
    """Template visit selection and PSF homogenisation."""

    seeing_quantile: float = Field(
        0.34,
        gt=0,
        le=1,
        description="Take visits whose FWHMeff is at or below this quantile of the filter's "
        "visits (the run's own seeing distribution).",
    )
    fwhm_range_arcsec: tuple[float, float] | None = Field(
        None, description="An explicit FWHMeff window (arcsec) instead of the quantile."
    )
    min_visits: int = Field(
        2, ge=1, description="At least this many visits (the best-seeing ones) if available."
    )
    broaden_sigma_px: float = Field(
        0.5, gt=0, description="Gaussian width added to the widest chosen PSF for the target."
    )
    clip_outliers: bool = Field(
        False,
        description="Clip outlier pixels when coadding. Off by default: a transient bright in "
        "one template visit would lose its core pixels and keep its wings, a residual no "
        "light curve can be corrected for; unclipped it enters at its weighted mean flux.",
    )


def select_template_visits(
    visits: Sequence[int], fwhm_eff: Sequence[float], config: TemplateConfig, band: str = ""
) -> list[int]:
    """The template's visits: the seeing window, topped up to ``min_visits`` by FWHM order."""
    visits = np.asarray(visits, dtype=np.int64)
    fwhm = np.asarray(fwhm_eff, dtype=float)
    if len(visits) == 0:
        raise TemplateError(f"filter {band}: no processed visit to build a template from")
    if config.fwhm_range_arcsec is not None:
        lo, hi = config.fwhm_range_arcsec
        chosen = (fwhm >= lo) & (fwhm <= hi)
        if not chosen.any():
            raise TemplateError(
                f"filter {band}: no visit with FWHMeff in [{lo}, {hi}] arcsec "
                f"(the visits have {fwhm.min():.2f}-{fwhm.max():.2f}); widen the window"
            )
    else:
        chosen = fwhm <= np.quantile(fwhm, config.seeing_quantile)
    order = np.argsort(fwhm, kind="stable")
    need = min(config.min_visits, len(visits))
    chosen[order[:need]] = True
    return sorted(visits[chosen].tolist())


@dataclass(frozen=True)
class PsfGrid:
    """A warp's PSF at points of the patch over the visit's footprint."""

    x: np.ndarray
    """Patch x of each point (pixels)."""
    y: np.ndarray
    """Patch y of each point (pixels)."""
    kernels: list[np.ndarray]
    """The PSF at each point, on the patch's pixel axes, unit sum."""


def psf_grid(
    calexp: CalexpModel, patch_wcs, patch_shape: tuple[int, int], n: int = 7, margin: int = 8
) -> PsfGrid:
    """A calexp's PSF on an ``n`` x ``n`` grid of patch points spanning its footprint.

    Points whose calexp position lies outside the calexp (less ``margin`` pixels) are left out:
    a PSF model's polynomial is not evaluated where it has no stars.
    """
    ph, pw = patch_shape
    ch, cw = calexp.shape
    corners_x = np.array([0.0, cw - 1.0, 0.0, cw - 1.0])
    corners_y = np.array([0.0, 0.0, ch - 1.0, ch - 1.0])
    ra, dec = calexp.wcs.all_pix2world(corners_x, corners_y, 0)
    px, py = patch_wcs.all_world2pix(ra, dec, 0)
    gx = np.linspace(max(px.min(), 0.0), min(px.max(), pw - 1.0), n)
    gy = np.linspace(max(py.min(), 0.0), min(py.max(), ph - 1.0), n)
    xs, ys = (a.ravel() for a in np.meshgrid(gx, gy))
    ra, dec = patch_wcs.all_pix2world(xs, ys, 0)
    cx, cy = calexp.wcs.all_world2pix(ra, dec, 0)
    inside = (cx >= margin) & (cx <= cw - 1 - margin) & (cy >= margin) & (cy <= ch - 1 - margin)
    xs, ys = xs[inside], ys[inside]
    kernels = [warped_psf_kernel(calexp, patch_wcs, x, y) for x, y in zip(xs, ys, strict=True)]
    return PsfGrid(xs, ys, kernels)


def target_psf(kernels: Sequence[np.ndarray], broaden_sigma_px: float) -> np.ndarray:
    """The widest kernel convolved with a Gaussian of ``broaden_sigma_px``, unit sum."""
    widest = max(kernels, key=kernel_sigma)
    out = ndimage.gaussian_filter(widest, broaden_sigma_px, mode="constant")
    return out / out.sum()


@dataclass
class MatchedWarp:
    """A warp convolved to the target PSF, and the kernel that did it."""

    warp: Exposure
    kernel: np.ndarray
    """The matching kernel at the patch's centre."""
    chi2: float
    """The largest chi^2 per pixel of the kernel fits at the grid's points."""
    spatial_degree: int = 0
    """Polynomial degree of the kernel's variation over the patch."""


def _matching_kernel(source: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, float]:
    """The unit-sum Alard-Lupton kernel that turns one PSF image into another (noise-free,
    one stamp), and its fit's chi^2 per pixel."""
    half = source.shape[0] // 2
    # the fitted region holds all the convolved PSF's flux, so the fit sees the kernel's sum
    config = AlardLuptonConfig(spatial_degree=0, background_degree=0, min_stamps=1)
    config = config.model_copy(update={"stamp_half": half + config.kernel_half})
    pad = config.kernel_half + config.stamp_half
    size = 2 * pad + 1
    narrow = np.zeros((size, size))
    wide = np.zeros((size, size))
    c = pad
    narrow[c - half : c + half + 1, c - half : c + half + 1] = source
    wide[c - half : c + half + 1, c - half : c + half + 1] = target
    solution = fit_kernel(
        narrow,
        wide,
        np.full((size, size), 1e-8),
        np.array([c]),
        np.array([c]),
        kernel_sigma(source),
        kernel_sigma(target),
        config,
    )
    # both PSFs have unit sum: any departure of the kernel's sum is a fitting residual
    kernel = solution.spatial_kernels[0]
    return kernel / kernel.sum(), solution.chi2_per_pixel


def match_warp(
    warp: Exposure,
    calexp: CalexpModel,
    patch_wcs,
    patch_shape,
    target: np.ndarray,
    grid: PsfGrid | None = None,
    max_degree: int = 3,
) -> MatchedWarp:
    """Convolve a warp so its PSF becomes ``target`` everywhere on the patch.

    A kernel is fitted from the warp's PSF to the target at each point of ``grid`` (by default
    :func:`psf_grid`); a polynomial of position of degree up to ``max_degree`` (lower where
    the grid has fewer than two points per term) interpolates them, and the warp is convolved
    with that spatially varying kernel. The variance plane is convolved with the square of the
    kernel at the patch's centre (the template's variance is scaled to its measured noise
    afterwards); pixels within the kernel of missing data become ``NO_DATA``, and every other
    mask plane is grown by the kernel's reach (``SAT``, ``CR``, ``BAD``: what the coadd leaves
    out), as LSST's convolution ORs the mask under the kernel.
    """
    ph, pw = patch_shape
    grid = grid if grid is not None else psf_grid(calexp, patch_wcs, patch_shape)
    if not len(grid.x):
        raise TemplateError(f"visit {calexp.visit}: no PSF grid point on the patch")
    fits = [_matching_kernel(k, target) for k in grid.kernels]
    node_kernels = np.array([k for k, _ in fits])
    x0, y0, scale = 0.5 * (pw - 1), 0.5 * (ph - 1), 0.5 * max(ph, pw)
    degree = max_degree
    while degree > 0 and len(grid.x) < 2 * (degree + 1) * (degree + 2) // 2:
        degree -= 1
    terms = polynomial_terms((grid.x - x0) / scale, (grid.y - y0) / scale, degree)
    ks = node_kernels.shape[-1]
    coef = np.linalg.lstsq(terms, node_kernels.reshape(len(node_kernels), -1), rcond=None)[0]
    basis = coef.reshape(-1, ks, ks)
    # a warp covers its box of the patch, from (x0, y0)
    wh, ww = warp.shape
    box_x0, box_y0 = int(warp.metadata.get("x0", 0)), int(warp.metadata.get("y0", 0))
    xs = (box_x0 + np.arange(ww) - x0) / scale
    ys = (box_y0 + np.arange(wh) - y0) / scale
    weights = [(ys ** (d - i), xs**i) for d in range(degree + 1) for i in range(d, -1, -1)]
    centre_kernel = basis[0] / basis[0].sum()
    no_data = (warp.mask & int(MaskPlane.NO_DATA)) != 0
    image = fft_convolve_terms(np.where(no_data, 0.0, warp.image), basis, weights)
    variance = fft_convolve_terms(np.where(no_data, 0.0, warp.variance), centre_kernel**2)
    grown = grow_square(no_data, ks // 2)
    mask = warp.mask.copy()
    mask[grown] |= int(MaskPlane.NO_DATA)
    # as afw's convolution does, a matched pixel carries the mask bits of every pixel under
    # the kernel: a saturated core's or a cosmic ray's repaired values, spread by the kernel
    # into their neighbours, must be left out of the template with the pixels themselves
    mask |= grow_bits(warp.mask, ks // 2, int(~MaskPlane.NO_DATA))
    image[grown] = np.nan
    variance[grown] = np.inf
    matched = Exposure(
        image.astype(np.float32),
        mask,
        variance.astype(np.float32),
        warp.wcs,
        PixelPSF(target[None], 0, 0.5 * (pw - 1), 0.5 * (ph - 1), 0.5 * max(ph, pw)),
        warp.photo_calib,
        dict(warp.metadata),
    )
    return MatchedWarp(matched, centre_kernel, max(c for _, c in fits), degree)


def scale_variance_to_noise(template: Exposure, n_image: np.ndarray) -> float:
    """Scale a template's variance plane, in place, to its measured pixel noise.

    The measured noise over the predicted one is :func:`~twinkles.coadd.assemble.noise_ratio`
    (the clipped robust spread of ``image / sqrt(variance)`` where every chosen visit
    contributes); the variance plane is multiplied by its square. Returns the ratio (1, and
    nothing scaled, when it cannot be measured).
    """
    ratio = noise_ratio(template, n_image)
    if not np.isfinite(ratio) or ratio <= 0:
        return 1.0
    template.variance *= np.float32(ratio**2)
    return float(ratio)
