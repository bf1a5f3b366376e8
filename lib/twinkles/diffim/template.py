"""Good-seeing templates (LSST's ``goodSeeingCoadd``): selected visits, PSF-homogenised, coadded.

Twinkles took visits with 2.6 < FWHM < 3.0 pixels. A fixed window does not travel between runs
with different seeing, so the window here is a quantile of the run's own seeing distribution
per filter (the best third by default), or an explicit FWHM range. Each chosen warp is
convolved to one target PSF, the widest chosen PSF broadened by a small Gaussian, so every
matching kernel only broadens; the matched warps are coadded with
:class:`~twinkles.coadd.assemble.CoaddTask`, and the template's PSF is the target, the same
everywhere on the patch.

The template is the plain weighted mean (no outlier clipping, unlike the deep coadd): with a
handful of visits, per-pixel clipping takes the core of a supernova that was bright in one of
them and leaves its wings, a residual of the PSF's shape minus a ring, different at every
epoch's seeing. Unclipped, the transient is in the template at its weighted mean flux, and
every difference measures ``flux(t) - flux(template)``, as a light-curve fit with a constant
offset expects. On the demo, clipping took 53-191 template pixels per filter, most of g's and
r's at supernova cores; the light curves through those pixels were offset by 1-2 sigma at
every epoch.

Matching a warp's PSF convolves noise that the warp's resampling had already correlated, and
the convolved variance plane (``K^2 * var``) assumes it had not: the coadded template's plane
predicts too little pixel noise (by 1.14-1.15 on the demo).
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
from twinkles.config import Section
from twinkles.diffim.kernel import AlardLuptonConfig, fit_kernel
from twinkles.diffim.subtract import kernel_sigma
from twinkles.errors import TwinklesError
from twinkles.image.convolve import fft_convolve_terms
from twinkles.image.exposure import Exposure, MaskPlane
from twinkles.image.masks import grow_square
from twinkles.psf.pixel import PixelPSF

__all__ = [
    "TemplateConfig",
    "TemplateError",
    "match_warp",
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
    chi2: float


def match_warp(
    warp: Exposure, calexp: CalexpModel, patch_wcs, patch_shape, target: np.ndarray
) -> MatchedWarp:
    """Convolve a warp so its PSF (at the patch centre) becomes ``target``.

    The kernel is an Alard-Lupton fit of the target to the warp's PSF image (noise-free, one
    stamp, no spatial variation); the variance plane is convolved with the squared kernel and
    pixels within the kernel of missing data become ``NO_DATA``.
    """
    ph, pw = patch_shape
    source = warped_psf_kernel(calexp, patch_wcs, 0.5 * (pw - 1), 0.5 * (ph - 1))
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
    kernel = solution.spatial_kernels[0] / solution.spatial_kernels[0].sum()
    no_data = (warp.mask & int(MaskPlane.NO_DATA)) != 0
    image = fft_convolve_terms(np.where(no_data, 0.0, warp.image), kernel)
    variance = fft_convolve_terms(np.where(no_data, 0.0, warp.variance), kernel**2)
    grown = grow_square(no_data, kernel.shape[0] // 2)
    mask = warp.mask.copy()
    mask[grown] |= int(MaskPlane.NO_DATA)
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
    return MatchedWarp(matched, kernel, solution.chi2_per_pixel)


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
