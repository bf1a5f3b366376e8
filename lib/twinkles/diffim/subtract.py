"""PSF-matched image subtraction and DIASource detection (LSST's imageDifference).

1. The template (a PSF-homogenised coadd on the patch, nJy) is resampled onto the visit's
   calexp with the warper (:class:`~twinkles.coadd.warp.WarpTask`, patch -> calexp). Its
   variance plane is scaled to its measured pixel noise on blank sky (LSST's
   ``doScaleTemplateVariance``): the resampling propagates variance as if its input's noise
   were white, and the template's is not, so the plane predicts too little pixel noise
   (the recipe quotes by how much).
2. An Alard-Lupton kernel (:mod:`~twinkles.diffim.kernel`) is fitted on stamps around
   reference-catalog stars, convolving whichever image has the narrower PSF, so the kernel
   only ever broadens.
3. The difference ``D = science - K * template`` (or ``K * science - template``; positive
   always means brighter at the visit) gets the variance of both inputs, the union of their
   masks, and the difference PSF (the wider image's).
4. Optionally the noise that the convolution correlated is whitened (decorrelation, Reiss &
   Lupton 2016, DMTN-021); the PSF is convolved with the same kernel. A convolved template's
   own correlated noise (its measured autocorrelation) is whitened too. In both cases the
   variance plane is the exact per-pixel variance of what the decorrelation leaves, for the
   template's measured noise spectrum; the decorrelation is the one of the kernel at the
   sensor's centre, but the noise the convolved image carries follows the local kernel
   (whose shape follows the PSFs), so its factor is mapped over the sensor.
5. DIASources are detected at ``threshold`` times the PSF-flux noise on ``D`` and on ``-D``
   (the matched filter's significance divided by the measured spread of PSF flux / error at
   blank positions, which is > 1 where the noise left is not white) and measured: PSF flux
   (nJy) and error (scaled by that spread), centroid, S/N, a dipole flag where a positive and
   a negative detection lie within one PSF FWHM of each other (a misregistered or moving
   source), and pixel flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from astropy.table import Table
from pydantic import Field
from scipy import ndimage, signal
from scipy.interpolate import BSpline, RectBivariateSpline
from scipy.spatial import cKDTree

from twinkles.coadd.warp import CalexpModel, WarpTask, warped_psf_kernel
from twinkles.detection.background import masked_background
from twinkles.detection.detect import DetectionConfig, DetectionTask, peak_centroid
from twinkles.diffim.kernel import (
    AlardLuptonConfig,
    KernelFitError,
    KernelSolution,
    decorrelated_variance_factors,
    decorrelation_kernel,
    fit_kernel,
    noise_correlation,
    sized_for,
)
from twinkles.diffim.realbogus import REAL_BOGUS_FEATURES, dia_source_features
from twinkles.errors import TwinklesError
from twinkles.geometry import (
    chord_length,
    friends_of_friends,
    pixel_scale_arcsec,
    unit_vectors,
)
from twinkles.image.convolve import fft_convolve_terms
from twinkles.image.exposure import BAD_PLANES, Exposure, MaskPlane, PhotoCalib
from twinkles.image.masks import grow_bits, grow_square
from twinkles.image.psf import PixelPSF
from twinkles.measurement.psf_flux import psf_flux
from twinkles.section import Section
from twinkles.stats import robust_std
from twinkles.units import AB_MAG_OF_1_NJY, FWHM_PER_SIGMA

__all__ = [
    "DIA_SOURCE_COLUMNS",
    "DiaSourceDetection",
    "ImageDifferenceConfig",
    "ImageDifferenceError",
    "ImageDifferenceResult",
    "ImageDifferenceTask",
    "KernelMatch",
    "Subtraction",
    "TemplateOnVisit",
    "kernel_sigma",
]

#: Columns of a visit's DIASource catalog (the DiaSource table less diaObjectId).
DIA_SOURCE_COLUMNS = (
    "diaSourceId",
    "ccdVisitId",
    "midPointTai",
    "ra",
    "decl",
    "x",
    "y",
    "psFlux",
    "psFluxErr",
    "snr",
    "isDipole",
    "flag_edge",
    "flag_saturated",
    "flag_bad",
    *(name for name in REAL_BOGUS_FEATURES if name != "snr"),
)

#: Mask planes a difference pixel inherits from either input.
_CARRIED = MaskPlane.BAD | MaskPlane.SAT | MaskPlane.NO_DATA | MaskPlane.CR | MaskPlane.INTRP
_UNUSABLE = MaskPlane.BAD | MaskPlane.SAT | MaskPlane.NO_DATA


class ImageDifferenceError(TwinklesError):
    """The visit cannot be differenced (no overlap with the template, no kernel stars)."""


class ImageDifferenceConfig(Section):
    """Image differencing."""

    kernel: AlardLuptonConfig = Field(default_factory=AlardLuptonConfig)
    decorrelate: bool = Field(
        True, description="Whiten the noise the matching convolution correlated (DMTN-021)."
    )
    threshold: float = Field(5.5, gt=0, description="DIASource detection threshold (sigma).")
    stamp_mag_range: tuple[float, float] = Field(
        (16.5, 22.0),
        description="Reference-star magnitudes used for kernel stamps: bright enough to "
        "constrain the kernel, faint enough not to saturate.",
    )
    stamp_isolation_arcsec: float = Field(
        3.0, gt=0, description="Kernel stars need no other reference source this close."
    )
    scale_template_variance: bool = Field(
        True,
        description="Scale the template's variance plane, on the visit's pixels, to its measured "
        "pixel noise on blank sky (LSST's doScaleTemplateVariance): the template's noise is "
        "correlated by its PSF homogenisation and the resampling onto the visit, which the "
        "variance propagation of both steps assumes it is not.",
    )
    empirical_errors: bool = Field(
        True,
        description="Scale PSF-flux errors, and the detection significance, by the measured "
        "spread of PSF flux / error at blank positions (what the decorrelation leaves "
        "correlated, mostly the template's noise when the calexp is the image convolved).",
    )
    local_noise: bool = Field(
        True,
        description="Detect relative to the significance image's own offset and noise, "
        "measured on the sky in 128-px cells (DetectionTask.normalise_to_sky, two-sided): "
        "the decorrelation is computed at the sensor's centre and the template's variance "
        "scaled by one number, so where the matching kernel differs most (the corners) or "
        "the template is shallow (near its coverage edge) the noise on the PSF's scale can "
        "exceed what the variance plane predicts, and its peaks pass a global threshold. "
        "The threshold is never lowered below the plane's prediction.",
    )
    deblend_cont: float = Field(
        0.001,
        ge=0,
        le=1,
        description="Flux fraction a branch of a footprint needs to become its own DIASource.",
    )
    blend_radius_fwhm: float = Field(
        2.0,
        gt=0,
        description="DIASources of one sign closer than this (PSF FWHMs) are a blend: their "
        "PSF fluxes are fitted together (as forced photometry's group_radius) and each one's "
        "real/bogus features are measured with the others' PSF models removed, so that the "
        "images of a lensed quasar are not scored as extended residuals for each other's "
        "light. A dipole's lobes, of opposite signs, keep each other.",
    )
    dipole_separation_fwhm: float = Field(
        1.0, gt=0, description="A positive and a negative DIASource this close are a dipole."
    )
    matching_error: float = Field(
        0.005,
        ge=0,
        description="Fractional error of the PSF matching, per pixel of the static sky: "
        "DIASources are detected against the variance plus (matching_error x static sky)^2, "
        "so that a bright star's residual of a fraction of a per cent is not a detection, "
        "while a transient on faint sky keeps its significance (the source-noise terms of "
        "ZOGY, Zackay, Ofek & Gal-Yam 2016, ApJ 830, 27, eq. 30-33). PSF fluxes and their "
        "errors do not include it.",
    )
    registration_error: float = Field(
        0.02,
        ge=0,
        description="Registration error (pixels, per axis) of the two images: DIASources are "
        "detected against the variance plus this squared times the static sky's squared "
        "gradient, the astrometric terms of ZOGY (Zackay, Ofek & Gal-Yam 2016, eq. 31-33): "
        "a bright star registered a few milliarcseconds off leaves a dipole of many sigma. "
        "PSF fluxes and their errors do not include it.",
    )
    background_mesh: int = Field(
        256,
        ge=0,
        description="Box size (pixels) of the difference's own background, measured on its "
        "blank sky after the subtraction and subtracted (0: none): the calexp and the template "
        "each had their sky estimated on its own, and what the estimates left differs from "
        "visit to visit on the mesh scale, an offset under every forced measurement that the "
        "kernel's constant differential background, fitted on star stamps, does not remove.",
    )
    sidelobe_factor: float = Field(
        2.0,
        ge=0,
        description="A DIASource of the sign a brighter one's PSF sidelobe predicts at its "
        "place, and no more than this many times what it predicts, is that sidelobe and is "
        "dropped (the decorrelation that whitens a convolved visit's noise sharpens the PSF and "
        "rings it: bright transients had negative DIASources around them); 0 keeps them.",
    )
    bad_center_planes: list[Literal["BAD", "SAT", "INTRP", "CR", "SUSPECT", "NO_DATA"]] = Field(
        ["SAT", "INTRP", "BAD", "NO_DATA"],
        description="A DIASource whose 3 x 3 central pixels all carry one of these mask planes "
        "is dropped: what it measures is a repair or a saturated core spread by the kernel, "
        "not the sky (LSST's DetectAndMeasureTask badSourceFlags: saturatedCenterAll, "
        "interpolatedCenterAll, badCenterAll, nodataCenterAll).",
    )


@dataclass
class ImageDifferenceResult:
    """The difference image and its DIASources.

    Attributes
    ----------
    difference : Exposure
        nJy; PSF, WCS of the calexp, zero point of nJy (31.4).
    dia_sources : Table
        :data:`DIA_SOURCE_COLUMNS`; negative detections have negative ``psFlux``.
    kernel : KernelSolution
    convolved : str
        ``"template"`` or ``"science"``: which image was convolved.
    template_on_visit : Exposure
        The template resampled onto the calexp (for cutouts).
    noise_ratio : float
        Robust spread of ``D / sqrt(variance)`` over unmasked, undetected pixels.
    psf_flux_err_scale : float
        Robust spread of PSF flux / error at blank positions (>= 1); DIASource errors are
        multiplied by it, and forced photometry on the difference should be too.
    template_variance_scale : float
        Measured pixel noise of the template on the visit over its variance plane's
        prediction (its variance plane was multiplied by the square).
    """

    difference: Exposure
    dia_sources: Table
    kernel: KernelSolution
    convolved: Literal["template", "science"]
    template_on_visit: Exposure
    noise_ratio: float
    psf_flux_err_scale: float = 1.0
    template_variance_scale: float = 1.0


def kernel_sigma(kernel: np.ndarray) -> float:
    """Gaussian-equivalent width (pixels) of a PSF image from its effective area,
    ``Neff = 1 / sum(k^2) = 4 pi sigma^2`` (second moments would be ruled by the wings)."""
    k = kernel / kernel.sum()
    return float(np.sqrt(1.0 / (4.0 * np.pi * np.sum(k**2))))


def _crop_under(template: Exposure, calexp: Exposure, margin: int = 8) -> Exposure:
    """The part of the template under the calexp (plus ``margin`` pixels), WCS shifted."""
    h, w = calexp.shape
    t = np.linspace(0.0, 1.0, 9)
    ex = np.concatenate([t * (w - 1), np.full(9, w - 1.0), (1 - t) * (w - 1), np.zeros(9)])
    ey = np.concatenate([np.zeros(9), t * (h - 1), np.full(9, h - 1.0), (1 - t) * (h - 1)])
    ra, dec = calexp.wcs.all_pix2world(ex, ey, 0)
    tx, ty = template.wcs.all_world2pix(ra, dec, 0)
    th, tw = template.shape
    x0, y0 = max(int(np.floor(tx.min())) - margin, 0), max(int(np.floor(ty.min())) - margin, 0)
    x1, y1 = (
        min(int(np.ceil(tx.max())) + margin + 1, tw),
        min(int(np.ceil(ty.max())) + margin + 1, th),
    )
    if x1 <= x0 or y1 <= y0:
        return template  # no overlap: the warper says so, naming the visit
    wcs = template.wcs.deepcopy()
    wcs.wcs.crpix = [wcs.wcs.crpix[0] - x0, wcs.wcs.crpix[1] - y0]
    wcs.wcs.set()
    box = (slice(y0, y1), slice(x0, x1))
    return Exposure(
        template.image[box],
        template.mask[box],
        template.variance[box],
        wcs,
        template.psf,
        template.photo_calib,
        dict(template.metadata),
    )


def _convolve_psf(psf: PixelPSF, kernel: np.ndarray) -> PixelPSF:
    """``psf`` convolved with ``kernel`` (each basis image: the model is linear in them)."""
    basis = np.array([ndimage.convolve(b, kernel, mode="constant") for b in psf.basis])
    return PixelPSF(basis, psf.degree, psf.x0, psf.y0, psf.scale, psf.radial)


def _kernel_map(
    solution: KernelSolution,
    shape: tuple[int, int],
    value: Callable[[np.ndarray], float],
    n_grid: int = 7,
) -> np.ndarray:
    """``value`` of the local matching kernel over the image (float32): evaluated on an
    ``n_grid`` x ``n_grid`` grid and interpolated by a bicubic spline. The kernel is a
    polynomial of low degree in position, so what it carries varies smoothly."""
    h, w = shape
    gx, gy = np.linspace(0, w - 1, n_grid), np.linspace(0, h - 1, n_grid)
    grid = np.array([[value(solution.kernel(x, y)) for x in gx] for y in gy])
    if np.ptp(grid) == 0:
        return np.full(shape, grid[0, 0], dtype=np.float32)
    # the spline is a tensor product: on the pixel grid it is B_y C B_x^T, with B the B-spline
    # basis at the rows and at the columns, two matrix products instead of fitpack's
    # evaluation pixel by pixel (five times slower)
    knots_y, knots_x, coeffs = RectBivariateSpline(gy, gx, grid, kx=3, ky=3).tck
    basis_y = BSpline.design_matrix(np.arange(h, dtype=float), knots_y, 3).toarray()
    basis_x = BSpline.design_matrix(np.arange(w, dtype=float), knots_x, 3).toarray()
    rows = basis_y @ coeffs.reshape(len(knots_y) - 4, len(knots_x) - 4)
    return rows.astype(np.float32) @ basis_x.T.astype(np.float32)


def _add_registration_variance(variance: np.ndarray, static_sky: np.ndarray, error: float) -> None:
    """Add ZOGY's astrometric variance, ``error^2 |grad static_sky|^2`` (central differences,
    0 on the outermost pixels), to ``variance`` in place: what a shift of ``error`` pixels
    per axis leaves of the static sky."""
    step = np.empty(static_sky.shape, np.float32)
    half_error = np.float32(0.5 * error)
    for axis in (0, 1):
        ahead = [slice(None)] * 2
        behind = [slice(None)] * 2
        inner = [slice(None)] * 2
        ahead[axis], behind[axis], inner[axis] = slice(2, None), slice(None, -2), slice(1, -1)
        np.subtract(static_sky[tuple(ahead)], static_sky[tuple(behind)], out=step[tuple(inner)])
        edges = [slice(None)] * 2
        edges[axis] = [0, -1]
        step[tuple(edges)] = 0.0
        step *= half_error
        np.square(step, out=step)
        variance += step


def _blank_blocks(diff: Exposure, usable: np.ndarray) -> np.ndarray:
    """Which blocks of a grid of PSF footprints (``2 half + 1`` pixels a side, from the
    image's corner; ravelled) are ``usable`` throughout: the footprints of the grid's points
    tile the image, so "blank under the PSF" is a check per block."""
    half = diff.psf.half
    step = 2 * half + 1
    h, w = diff.shape
    # as many blocks as grid points, np.mgrid[half : h - half : step, half : w - half : step]
    ny, nx = len(range(half, h - half, step)), len(range(half, w - half, step))
    blocks = usable[: ny * step, : nx * step].reshape(ny, step, nx, step)
    return blocks.all(axis=(1, 3)).ravel()


def _pull_spread(pulls: np.ndarray | None) -> float:
    """Robust spread of PSF flux / error at blank positions, at least 1: how far the
    independent-pixel error understates the PSF-flux error because the noise the
    decorrelation leaves is not white (a convolved calexp's difference lacks the template's
    high frequencies, so its per-pixel variance understates its noise on the PSF's scale;
    close to 1 with a convolved template). 1 with fewer than 30 points."""
    if pulls is None:
        return 1.0
    pulls = pulls[np.isfinite(pulls)]
    if pulls.size < 30:
        return 1.0
    return float(max(robust_std(pulls), 1.0))


@dataclass
class TemplateOnVisit:
    """Stage 1: the template resampled onto the visit's pixels."""

    exposure: Exposure
    """nJy on the calexp's pixels; NO_DATA (image 0, variance +inf) where the template has none;
    its variance plane scaled by ``variance_scale**2``."""
    variance_scale: float
    """Measured pixel noise of the template on blank sky over its variance plane's prediction
    (1 when not scaled)."""
    psf_kernel: np.ndarray
    """The template's PSF, resampled onto the visit, at the sensor's centre."""
    unusable: np.ndarray
    """Pixels BAD, SAT or NO_DATA in either image."""
    blank: np.ndarray
    """Blank sky: usable, not near a source detected on the calexp, covered by the template."""


@dataclass
class KernelMatch:
    """Stage 2: which image is convolved, and the kernel that matches it to the other."""

    convolved: Literal["template", "science"]
    solution: KernelSolution
    narrow: np.ndarray
    """The image convolved (nJy; non-finite pixels set to 0)."""
    wide: np.ndarray
    """The other image (nJy)."""
    var_narrow: np.ndarray
    var_wide: np.ndarray


@dataclass
class Subtraction:
    """Stage 3: the difference before decorrelation."""

    image: np.ndarray
    """``wide - K * narrow`` (or ``K * narrow - wide``): brighter at the visit is positive (nJy)."""
    mask: np.ndarray
    """The union of the inputs' BAD, SAT, NO_DATA, CR and INTRP planes, the convolved
    image's grown by the kernel's reach; NO_DATA also within the kernel's half-width of the
    sensor's edge or of either image's missing data."""
    edge: np.ndarray
    """Where the convolution is incomplete (the NO_DATA the subtraction added)."""
    blank: np.ndarray
    """Blank sky (:attr:`TemplateOnVisit.blank`) away from ``edge``."""
    static_sky: np.ndarray
    """The template on the difference's pixels and PSF (convolved with the kernel when the
    template is the image convolved), nJy: what the matching error scales with."""


@dataclass
class DiaSourceDetection:
    """Stage 5: the DIASources and how their errors were scaled."""

    sources: Table
    """:data:`DIA_SOURCE_COLUMNS`; negative detections have negative ``psFlux``."""
    psf_flux_err_scale: float
    """Robust spread of PSF flux / error at blank positions away from detections; the errors
    are multiplied by it."""
    detection_scale: float
    """The same spread before detection, by which the threshold was raised."""
    usable: np.ndarray
    """Pixels neither masked, near the edge nor detected: where the noise is measured."""


class ImageDifferenceTask:
    """Subtract a PSF-matched template from a calexp and detect DIASources."""

    def __init__(self, config: ImageDifferenceConfig | None = None):
        self.config = config or ImageDifferenceConfig()

    def kernel_stars(
        self, calexp: Exposure, refcat: Table, band: str
    ) -> tuple[np.ndarray, np.ndarray]:
        """Pixel positions of isolated, unresolved, non-variable reference stars."""
        lo, hi = self.config.stamp_mag_range
        ra, dec = np.asarray(refcat["ra"], float), np.asarray(refcat["dec"], float)
        mag = np.asarray(refcat[f"{band}_mag"], float)
        xyz = unit_vectors(ra, dec)
        tree = cKDTree(xyz)
        neighbours = tree.query(xyz, k=2)[0][:, 1] if len(xyz) > 1 else np.full(len(xyz), np.inf)
        isolation = chord_length(self.config.stamp_isolation_arcsec)
        good = (
            (mag >= lo)
            & (mag <= hi)
            & ~np.asarray(refcat["resolved"], bool)
            & ~np.asarray(refcat["variable"], bool)
            & (neighbours > isolation)
        )
        x, y = calexp.wcs.all_world2pix(ra[good], dec[good], 0)
        return x, y

    def run(
        self,
        calexp: Exposure,
        template: Exposure,
        refcat: Table,
        visit_mjd: float,
    ) -> ImageDifferenceResult:
        """Difference a calexp (electrons) against a template on the patch (nJy).

        The stages, each a method a recipe may call in turn: :meth:`warp_template`,
        :meth:`match_kernel`, :meth:`subtract`, :meth:`decorrelate`,
        :meth:`detect_dia_sources`, :meth:`noise_ratio`.

        Parameters
        ----------
        calexp : Exposure
            With WCS, PSF and zero point; its ``metadata["filter"]`` names the band.
        template : Exposure
            The PSF-homogenised template (``goodSeedCoadd``) with its PSF.
        refcat : Table
            Reference catalog: kernel stars are chosen from it.
        visit_mjd : float
            Mid-exposure MJD (DIASources' ``midPointTai``).

        Returns
        -------
        ImageDifferenceResult
            The decorrelated difference image (nJy), its DIASources, the kernel solution,
            which image was convolved, the template on the visit's pixels and the difference's
            noise ratio.
        """
        on_visit = self.warp_template(calexp, template)
        match = self.match_kernel(calexp, on_visit, refcat)
        subtraction = self.subtract(calexp, on_visit, match)
        difference = self.decorrelate(calexp, on_visit, match, subtraction)
        found = self.detect_dia_sources(difference, calexp, on_visit, subtraction, visit_mjd)
        return ImageDifferenceResult(
            difference,
            found.sources,
            match.solution,
            match.convolved,
            on_visit.exposure,
            self.noise_ratio(difference, found.usable),
            found.psf_flux_err_scale,
            on_visit.variance_scale,
        )

    def warp_template(self, calexp: Exposure, template: Exposure) -> TemplateOnVisit:
        """Stage 1: resample the template onto the calexp's pixels (only the part under the
        visit), and scale its variance plane to its measured noise on blank sky.

        Parameters
        ----------
        calexp : Exposure
            With WCS, PSF and zero point (electrons).
        template : Exposure
            The template on the patch (nJy) with its PSF.

        Returns
        -------
        TemplateOnVisit
            The template on the visit (nJy), its variance scale, its PSF at the sensor's
            centre, and the unusable and blank-sky pixels of both images.

        Raises
        ------
        ImageDifferenceError
            The calexp has no PSF, WCS or zero point, or does not overlap the template.
        """
        visit = int(calexp.visit or 0)
        if calexp.psf is None or calexp.wcs is None or calexp.photo_calib is None:
            raise ImageDifferenceError(f"visit {visit}: the calexp has no PSF, WCS or zero point")
        h, w = calexp.shape
        try:
            warped = WarpTask().run(_crop_under(template, calexp), calexp.wcs, (h, w))
        except TwinklesError as exc:
            raise ImageDifferenceError(f"visit {visit}: template -> calexp: {exc}") from None
        x0, y0 = warped.metadata["x0"], warped.metadata["y0"]
        wh, ww = warped.shape
        tmpl = np.zeros((h, w), dtype=np.float32)
        tmpl_var = np.full((h, w), np.inf, dtype=np.float32)
        tmpl_mask = np.full((h, w), int(MaskPlane.NO_DATA), dtype=np.int32)
        tmpl[y0 : y0 + wh, x0 : x0 + ww] = np.nan_to_num(warped.image)
        tmpl_var[y0 : y0 + wh, x0 : x0 + ww] = warped.variance
        tmpl_mask[y0 : y0 + wh, x0 : x0 + ww] = warped.mask
        no_data_t = (tmpl_mask & int(MaskPlane.NO_DATA)) != 0
        tmpl[no_data_t] = 0.0
        exposure = Exposure(
            tmpl, tmpl_mask, tmpl_var, calexp.wcs, None, PhotoCalib(AB_MAG_OF_1_NJY), {}
        )
        xc, yc = 0.5 * (w - 1), 0.5 * (h - 1)
        template_model = CalexpModel(0, template.wcs, template.psf, template.shape)
        psf_kernel = warped_psf_kernel(template_model, calexp.wcs, xc, yc)
        unusable = ((calexp.mask | tmpl_mask) & int(_UNUSABLE)) != 0
        # blank sky: neither masked nor near a source detected on the calexp
        detected = (calexp.mask & int(MaskPlane.DETECTED)) != 0
        blank = ~unusable & ~grow_square(detected, 3) & ~no_data_t & np.isfinite(tmpl_var)
        scale = 1.0
        if self.config.scale_template_variance:
            # every fourth row and column is plenty (~1 M pixels on a run1 sensor: 0.1%)
            sub = blank[::4, ::4]
            z_t = tmpl[::4, ::4][sub] / np.sqrt(tmpl_var[::4, ::4][sub])
            if z_t.size > 1000:
                scale = robust_std(z_t)
                tmpl_var *= np.float32(scale**2)
        return TemplateOnVisit(exposure, scale, psf_kernel, unusable, blank)

    def match_kernel(
        self, calexp: Exposure, on_visit: TemplateOnVisit, refcat: Table
    ) -> KernelMatch:
        """Stage 2: fit the kernel that turns the image of narrower PSF (at the sensor's
        centre) into the other, on stamps around isolated reference stars.

        Parameters
        ----------
        calexp : Exposure
            With WCS, PSF and zero point (electrons).
        on_visit : TemplateOnVisit
            From :meth:`warp_template`.
        refcat : Table
            Reference catalog (``ra``, ``dec`` in deg, ``{band}_mag``, ``resolved``,
            ``variable``).

        Returns
        -------
        KernelMatch
            Which image is convolved, the kernel solution, and both images with their
            variances in nJy.

        Raises
        ------
        ImageDifferenceError
            The kernel cannot be fitted (too few usable stamps).
        """
        visit = int(calexp.visit or 0)
        band = str(calexp.metadata.get("filter", ""))
        h, w = calexp.shape
        scale = calexp.photo_calib.njy_per_electron
        science = calexp.image.astype(np.float32) * np.float32(scale)
        sci_var = calexp.variance.astype(np.float32) * np.float32(scale**2)
        tmpl, tmpl_var = on_visit.exposure.image, on_visit.exposure.variance
        sci_kernel = calexp.psf.kernel(0.5 * (w - 1), 0.5 * (h - 1))
        sigma_sci, sigma_tmpl = kernel_sigma(sci_kernel), kernel_sigma(on_visit.psf_kernel)
        convolved: Literal["template", "science"] = (
            "template" if sigma_tmpl <= sigma_sci else "science"
        )
        if convolved == "template":
            narrow, wide, var_n, var_w = tmpl, science, tmpl_var, sci_var
            sigma_n, sigma_w = sigma_tmpl, sigma_sci
        else:
            narrow, wide, var_n, var_w = science, tmpl, sci_var, tmpl_var
            sigma_n, sigma_w = sigma_sci, sigma_tmpl
        narrow = np.where(np.isfinite(narrow), narrow, 0.0).astype(np.float32)
        sx, sy = self.kernel_stars(calexp, refcat, band)
        try:
            solution = fit_kernel(
                narrow,
                wide,
                var_w + var_n,
                sx,
                sy,
                sigma_n,
                sigma_w,
                sized_for(self.config.kernel, FWHM_PER_SIGMA * sigma_w),
                bad=grow_square(on_visit.unusable, 1),
            )
        except KernelFitError as exc:
            raise ImageDifferenceError(f"visit {visit}: {exc}") from None
        return KernelMatch(convolved, solution, narrow, wide, var_n, var_w)

    def subtract(
        self, calexp: Exposure, on_visit: TemplateOnVisit, match: KernelMatch
    ) -> Subtraction:
        """Stage 3: convolve the narrower image with the kernel (and add its differential
        background) and subtract, so that brighter at the visit is positive; then remove the
        difference's own background, measured on its blank sky (``background_mesh``).

        Parameters
        ----------
        calexp : Exposure
            The calexp (its mask is carried).
        on_visit : TemplateOnVisit
            From :meth:`warp_template`.
        match : KernelMatch
            From :meth:`match_kernel`.

        Returns
        -------
        Subtraction
            The difference (nJy), its mask, the incomplete edge, and the blank sky left.
        """
        h, w = calexp.shape
        solution = match.solution
        conv = fft_convolve_terms(
            match.narrow, solution.spatial_kernels, self._spatial_terms(solution, h, w)
        )
        conv += solution.background_image((h, w))
        difference = match.wide - conv if match.convolved == "template" else conv - match.wide
        tmpl_mask = on_visit.exposure.mask
        half = solution.spatial_kernels.shape[-1] // 2
        edge = grow_square(((calexp.mask | tmpl_mask) & int(MaskPlane.NO_DATA)) != 0, half)
        edge[:half, :] = edge[-half:, :] = True
        edge[:, :half] = edge[:, -half:] = True
        # the convolution spreads every pixel of the convolved image over the kernel, a
        # saturated core's or a cosmic ray's repaired values too: its mask planes grow by the
        # kernel's reach (as afw's convolution ORs the mask under the kernel)
        convolved_mask = tmpl_mask if match.convolved == "template" else calexp.mask
        mask = ((calexp.mask | tmpl_mask) & int(_CARRIED)) | grow_bits(
            convolved_mask, half, int(_CARRIED & ~MaskPlane.NO_DATA)
        )
        mask[edge] |= int(MaskPlane.NO_DATA)
        blank = on_visit.blank & ~edge
        if self.config.background_mesh:
            difference -= masked_background(difference, ~blank, self.config.background_mesh)
        static_sky = conv if match.convolved == "template" else match.wide
        return Subtraction(difference, mask, edge, blank, static_sky)

    def decorrelate(
        self,
        calexp: Exposure,
        on_visit: TemplateOnVisit,
        match: KernelMatch,
        subtraction: Subtraction,
    ) -> Exposure:
        """Stage 4: whiten the noise the convolution correlated (with ``decorrelate``), and
        give the difference its variance plane and PSF.

        Parameters
        ----------
        calexp : Exposure
            The calexp (its PSF, WCS and visit metadata).
        on_visit : TemplateOnVisit
            From :meth:`warp_template`.
        match : KernelMatch
            From :meth:`match_kernel`.
        subtraction : Subtraction
            From :meth:`subtract`.

        Returns
        -------
        Exposure
            The difference image (nJy): variance +inf and image 0 at the edge; PSF the wider
            image's (convolved with the decorrelation kernel); zero point of nJy; metadata
            with the kernel's and template's figures.
        """
        cfg = self.config
        h, w = calexp.shape
        xc, yc = 0.5 * (w - 1), 0.5 * (h - 1)
        solution, convolved, edge = match.solution, match.convolved, subtraction.edge
        var_w, var_n = match.var_wide, match.var_narrow
        k_centre = solution.kernel(xc, yc)
        k_sum = float(k_centre.sum())
        wide_psf = (
            calexp.psf
            if convolved == "template"
            else PixelPSF(on_visit.psf_kernel[None], 0, xc, yc, max(h, w) / 2.0)
        )
        if cfg.decorrelate:
            # the typical variances: a sparse sample of the planes is as good as every pixel
            inner = ~edge[::2, ::2]
            var_w_med = float(np.median(var_w[::2, ::2][inner])) if inner.any() else 1.0
            var_n_med = float(np.median(var_n[::2, ::2][inner])) if inner.any() else 1.0
            # the template's noise is correlated by its resampling and PSF homogenisation
            # (the calexp's is white): its measured spectrum
            corr_t = noise_correlation(
                on_visit.exposure.image, on_visit.exposure.variance, subtraction.blank
            )
            if convolved == "template":
                # psi whitens with the template's spectrum
                psi = decorrelation_kernel(k_centre, var_w_med, var_n_med, corr_narrow=corr_t)
                corr_wide, corr_narrow = None, corr_t
            else:
                # a convolved calexp: both inputs are poor in high frequencies, so the exact
                # whitening would deconvolve the calexp and amplify the template's measured
                # spectrum where it is least known (it biased PSF fluxes: the recipe says by
                # how much); DMTN-021's kernel for white inputs. The noise it leaves lacks the
                # template's high frequencies: the variance plane is what it leaves, and the
                # PSF-flux errors and detection are scaled by the measured spread
                # tapered: against a template far deeper than the visit it rings (it made
                # echoes of bright sources 12 px away), and what it leaves is measured anyway
                psi = decorrelation_kernel(k_centre, var_w_med, var_n_med, taper=True)
                corr_wide, corr_narrow = corr_t, None
            gain_w, _ = decorrelated_variance_factors(psi, k_centre, corr_wide, corr_narrow)
            difference = fft_convolve_terms(np.where(edge, 0.0, subtraction.image), psi)
            # one decorrelation for the sensor (DMTN-021's, from the kernel at its centre), but
            # the kernel's shape follows the PSFs, and with it the noise that the convolved
            # image carries: its gain is mapped over the sensor
            gain_n = _kernel_map(
                solution,
                (h, w),
                lambda k: (
                    decorrelated_variance_factors(psi, k, corr_wide, corr_narrow)[1]
                    * float(k.sum()) ** 2
                ),
            )
            variance = var_w * np.float32(gain_w) + var_n * gain_n
            diff_psf = _convolve_psf(wide_psf, psi)
        else:
            difference = subtraction.image
            variance = var_w + var_n * _kernel_map(solution, (h, w), lambda k: float(np.sum(k**2)))
            diff_psf = wide_psf
        difference = difference.astype(np.float32)
        difference[edge] = 0.0
        variance = np.where(edge | ~np.isfinite(variance), np.inf, variance).astype(np.float32)
        return Exposure(
            difference,
            subtraction.mask.astype(np.int32),
            variance,
            calexp.wcs,
            diff_psf,
            PhotoCalib(AB_MAG_OF_1_NJY, 0.0),
            {
                "visit": int(calexp.visit or 0),
                "filter": str(calexp.metadata.get("filter", "")),
                "mjd": calexp.metadata.get("mjd"),  # detect_dia_sources sets the visit's
                "convolved": convolved,
                "kernel_n_stamps": solution.n_stamps,
                "kernel_chi2": round(solution.chi2_per_pixel, 4),
                "kernel_sum": round(k_sum, 6),
                "template_variance_scale": round(on_visit.variance_scale, 4),
            },
        )

    def detect_dia_sources(
        self,
        difference: Exposure,
        calexp: Exposure,
        on_visit: TemplateOnVisit,
        subtraction: Subtraction,
        visit_mjd: float,
    ) -> DiaSourceDetection:
        """Stage 5: detect DIASources in both polarities, measure them, and score their
        real/bogus features.

        The threshold is in units of the PSF-flux spread measured at blank positions; the
        errors' scale is measured again without the difference's own detections (the
        template's faint sources widen it). The difference's mask gets DETECTED and
        DETECTED_NEGATIVE, and its metadata the MJD and both scales.

        Parameters
        ----------
        difference : Exposure
            From :meth:`decorrelate`.
        calexp : Exposure
            The calexp (its WCS gives the pixel scale).
        on_visit : TemplateOnVisit
            From :meth:`warp_template` (the template's contrast is a feature).
        subtraction : Subtraction
            From :meth:`subtract` (its edge and blank sky).
        visit_mjd : float
            Mid-exposure MJD (``midPointTai``).

        Returns
        -------
        DiaSourceDetection
            The DIASources (fluxes in nJy), the error and detection scales, and the pixels
            where the noise is measured.
        """
        cfg = self.config
        diff, edge = difference, subtraction.edge
        visit = int(calexp.visit or 0)
        h, w = calexp.shape
        xc, yc = 0.5 * (w - 1), 0.5 * (h - 1)
        diff.metadata["mjd"] = visit_mjd
        blank = subtraction.blank
        grid_pulls = self._blank_grid_pulls(diff, blank) if cfg.empirical_errors else None
        detect_scale = _pull_spread(grid_pulls)
        sources = self._detect(diff, visit, visit_mjd, detect_scale, subtraction.static_sky)
        usable = (
            ~edge
            & ~on_visit.unusable
            & ((diff.mask & int(MaskPlane.DETECTED | MaskPlane.DETECTED_NEGATIVE)) == 0)
        )
        # the same grid's points, less those whose footprint the detections reach
        scale = (
            _pull_spread(grid_pulls[_blank_blocks(diff, usable & blank)])
            if grid_pulls is not None
            else 1.0
        )
        sources["psFluxErr"] *= scale
        sources["snr"] /= scale
        # what a real/bogus score reads (twinkles.diffim.realbogus)
        fwhm = FWHM_PER_SIGMA * kernel_sigma(diff.psf.kernel(xc, yc))
        flux = np.asarray(sources["psFlux"], float)
        x, y = np.asarray(sources["x"], float), np.asarray(sources["y"], float)
        polarity = np.where(flux < 0, -1, 1)
        features = dia_source_features(
            diff,
            on_visit.exposure,
            x,
            y,
            polarity,
            flux,
            fwhm,
            pixel_scale_arcsec(calexp.wcs),
            blends=self._blends(x, y, polarity, fwhm),
        )
        for name, values in features.items():
            sources[name] = values
        diff.metadata["psf_flux_err_scale"] = round(scale, 4)
        diff.metadata["detection_scale"] = round(detect_scale, 4)
        return DiaSourceDetection(sources, scale, detect_scale, usable)

    @staticmethod
    def noise_ratio(difference: Exposure, usable: np.ndarray) -> float:
        """Stage 6: robust spread of difference / sigma over ``usable`` pixels (1 for a right
        variance plane; NaN with fewer than 100 pixels)."""
        # every other row and column: 4 M pixels on a run1 sensor set it to ~0.05%
        sub = usable[::2, ::2]
        z = difference.image[::2, ::2][sub] / np.sqrt(difference.variance[::2, ::2][sub])
        return robust_std(z) if z.size > 100 else float("nan")

    @staticmethod
    def _blank_grid_pulls(diff: Exposure, usable: np.ndarray) -> np.ndarray:
        """PSF flux / error on a grid of points one PSF footprint apart, NaN at the points
        whose footprint is not all ``usable`` (see :func:`_blank_blocks`)."""
        half = diff.psf.half
        step = 2 * half + 1
        h, w = diff.shape
        yy, xx = np.mgrid[half : h - half : step, half : w - half : step]
        blank = _blank_blocks(diff, usable)
        pulls = np.full(blank.size, np.nan)
        if blank.any():
            x, y = xx.ravel()[blank].astype(float), yy.ravel()[blank].astype(float)
            flux, err, _ = psf_flux(diff, x, y)
            with np.errstate(invalid="ignore", divide="ignore"):
                pulls[blank] = flux / err
        return pulls

    @staticmethod
    def _spatial_terms(
        solution: KernelSolution, h: int, w: int
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """The spatial polynomial's monomials as (row factor, column factor) pairs, float32."""
        xs = ((np.arange(w) - solution.x0) / solution.scale).astype(np.float32)
        ys = ((np.arange(h) - solution.y0) / solution.scale).astype(np.float32)
        d = solution.spatial_degree
        terms = []  # the order of polynomial_terms: X^i Y^(deg - i), i from deg down to 0
        for deg in range(d + 1):
            for i in range(deg, -1, -1):
                terms.append((ys ** (deg - i), xs**i))
        return terms

    def _blends(
        self, x: np.ndarray, y: np.ndarray, polarity: np.ndarray, fwhm: float
    ) -> np.ndarray:
        """Blend label of each DIASource: one sign, closer than ``blend_radius_fwhm``."""
        labels = np.zeros(len(x), dtype=int)
        radius = self.config.blend_radius_fwhm * fwhm
        for sign in (1, -1):
            part = np.flatnonzero(polarity == sign)
            if len(part):
                labels[part] = friends_of_friends(np.column_stack([x[part], y[part]]), radius)
                labels[part] += 0 if sign > 0 else len(x)
        return labels

    @staticmethod
    def _positions(
        found: Table,
        image: np.ndarray,
        kernel: np.ndarray,
        bad: np.ndarray,
        pulled_px: float = 0.5,
    ) -> tuple[np.ndarray, np.ndarray]:
        """DIASource positions: the windowed centroid, unless the footprint was deblended
        and the centroid lies more than ``pulled_px`` from the source's matched-filter peak
        (:func:`peak_centroid`), where a neighbour pulled it and the peak is used: the images
        of a lensed quasar 1-1.5" apart came out 1.0-1.4" from every image. Where nothing
        pulled it, the windowed centroid is the more precise (its window spans the whole
        PSF; the peak's parabola, three pixels)."""
        x, y = np.array(found["x"], float), np.array(found["y"], float)
        blended = np.flatnonzero(np.asarray(found["flag_blended"], bool))
        if len(blended):
            xp = np.asarray(found["x_peak"])[blended]
            yp = np.asarray(found["y_peak"])[blended]
            px, py = peak_centroid(image, kernel, xp, yp, bad)
            pulled = np.hypot(x[blended] - px, y[blended] - py) > pulled_px
            x[blended[pulled]], y[blended[pulled]] = px[pulled], py[pulled]
        return x, y

    def _bad_centres(self, mask: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Sources whose 3 x 3 central pixels all carry one of ``bad_center_planes``."""
        h, w = mask.shape
        ix = np.clip(np.rint(x).astype(int), 1, w - 2)
        iy = np.clip(np.rint(y).astype(int), 1, h - 2)
        d = np.arange(-1, 2)
        centres = mask[iy[:, None, None] + d[None, :, None], ix[:, None, None] + d[None, None, :]]
        bad = np.zeros(len(ix), dtype=bool)
        for name in self.config.bad_center_planes:
            bad |= np.all((centres & int(MaskPlane[name])) != 0, axis=(1, 2))
        return bad

    def _sidelobes(
        self, psf: np.ndarray, x: np.ndarray, y: np.ndarray, flux: np.ndarray
    ) -> np.ndarray:
        """Sources that a brighter source's PSF sidelobe explains: where the PSF's
        autocorrelation (what a PSF flux reads of a PSF displaced by the separation) is
        negative, of the sign it predicts, and no more than ``sidelobe_factor`` times it."""
        lobe = np.zeros(len(x), dtype=bool)
        factor = self.config.sidelobe_factor
        if len(x) < 2 or factor <= 0:
            return lobe
        auto = signal.fftconvolve(psf, psf[::-1, ::-1]) / float(np.sum(psf**2))
        c = auto.shape[0] // 2
        for i, j in cKDTree(np.column_stack([x, y])).query_pairs(c, p=np.inf):
            faint, bright = (i, j) if abs(flux[i]) < abs(flux[j]) else (j, i)
            dx = int(np.rint(x[faint] - x[bright]))
            dy = int(np.rint(y[faint] - y[bright]))
            expected = flux[bright] * auto[c + dy, c + dx]
            # a sidelobe's expectation is negative relative to its source, never zero
            if auto[c + dy, c + dx] < 0 and expected != 0 and 0 < flux[faint] / expected <= factor:
                lobe[faint] = True
        return lobe

    def _detect(
        self,
        diff: Exposure,
        visit: int,
        mjd: float,
        scale: float = 1.0,
        static_sky: np.ndarray | None = None,
    ) -> Table:
        """Detect and measure at ``threshold`` times ``scale`` the PSF-flux sigma of the
        variance plane plus the matching error on ``static_sky`` (``scale``: the measured
        spread of PSF flux / error)."""
        cfg = self.config
        detector = DetectionTask(
            DetectionConfig(
                threshold=cfg.threshold, variance_map=True, deblend_cont=cfg.deblend_cont
            )
        )
        parts = []
        against = diff
        if static_sky is not None and (cfg.matching_error > 0 or cfg.registration_error > 0):
            # in place: two full-sensor temporaries fewer
            variance = np.multiply(static_sky, np.float32(cfg.matching_error), dtype=np.float32)
            np.square(variance, out=variance)
            variance += diff.variance
            if cfg.registration_error > 0:
                _add_registration_variance(variance, static_sky, cfg.registration_error)
            against = Exposure(
                diff.image, diff.mask, variance, diff.wcs, diff.psf, diff.photo_calib, {}
            )
        # the matched filter is linear: the negative image's significance is minus the positive's
        significance = detector.significance(against) / np.float32(scale)
        if cfg.local_noise:
            # the sky offset is fitted too: a difference should have none, and a cell whose
            # sky is off is not where to look for sources
            significance, _ = detector.normalise_to_sky(
                significance,
                diff.masked(_UNUSABLE),
                cfg.threshold,
                two_sided=True,
                passes=2,
                min_noise=1.0,  # as the global scale: never below what the variance predicts
                stride=2,
            )
        kernel, bad = detector.filter_kernel(diff), diff.masked(BAD_PLANES)
        for polarity in (1, -1):
            work = Exposure(
                diff.image * np.float32(polarity),
                diff.mask.copy(),
                diff.variance,
                diff.wcs,
                diff.psf,
                diff.photo_calib,
                diff.metadata,
            )
            nu = significance if polarity > 0 else -significance
            found = detector.run(work, significance=np.ascontiguousarray(nu)).sources
            plane = MaskPlane.DETECTED if polarity > 0 else MaskPlane.DETECTED_NEGATIVE
            diff.mask[(work.mask & int(MaskPlane.DETECTED)) != 0] |= int(plane)
            if len(found):
                parts.append((polarity, *self._positions(found, work.image, kernel, bad)))
        if parts:
            polarity = np.concatenate([np.full(len(p[1]), p[0]) for p in parts])
            x = np.concatenate([p[1] for p in parts])
            y = np.concatenate([p[2] for p in parts])
        else:
            polarity, x, y = np.zeros(0, int), np.zeros(0), np.zeros(0)
        keep = ~self._bad_centres(diff.mask, x, y)
        polarity, x, y = polarity[keep], x[keep], y[keep]
        flux, err, masked = psf_flux(diff, x, y) if len(x) else (x, x, x)
        centre_psf = diff.psf.kernel(diff.shape[1] / 2, diff.shape[0] / 2)
        # a footprint of one sign centred on a source of the other (the ring a decorrelated
        # PSF draws around a bright source) measures that source: not a second one
        keep = ~(flux * polarity < 0) & ~self._sidelobes(centre_psf, x, y, flux)
        polarity, x, y, masked = (a[keep] for a in (polarity, x, y, masked))
        fwhm = FWHM_PER_SIGMA * kernel_sigma(centre_psf)
        if len(x):
            # a blend's members share their light out instead of each counting the others'
            flux, err, _ = psf_flux(diff, x, y, groups=self._blends(x, y, polarity, fwhm))
        else:
            flux, err = x, x
        ra, dec = diff.wcs.all_pix2world(x, y, 0) if len(x) else (x, y)
        dipole = np.zeros(len(x), dtype=bool)
        pos, neg = polarity > 0, polarity < 0
        if pos.any() and neg.any():
            tree = cKDTree(np.column_stack([x[neg], y[neg]]))
            dist, idx = tree.query(np.column_stack([x[pos], y[pos]]))
            pair = dist <= cfg.dipole_separation_fwhm * fwhm
            dipole[np.flatnonzero(pos)[pair]] = True
            dipole[np.flatnonzero(neg)[idx[pair]]] = True
        ix = np.clip(np.rint(x).astype(int), 0, diff.shape[1] - 1)
        iy = np.clip(np.rint(y).astype(int), 0, diff.shape[0] - 1)
        near = diff.mask[iy, ix] if len(x) else np.zeros(0, int)
        table = Table(
            {
                "diaSourceId": np.int64(visit) * 100_000 + np.arange(len(x), dtype=np.int64),
                "ccdVisitId": np.full(len(x), visit, dtype=np.int64),
                "midPointTai": np.full(len(x), mjd),
                "ra": np.asarray(ra, float),
                "decl": np.asarray(dec, float),
                "x": x,
                "y": y,
                "psFlux": flux,
                "psFluxErr": err,
                "snr": flux / err,
                "isDipole": dipole,
                "flag_edge": (near & int(MaskPlane.NO_DATA)) != 0,
                "flag_saturated": (near & int(MaskPlane.SAT)) != 0,
                "flag_bad": (masked > 0.2) | ~np.isfinite(flux),
            }
        )
        return table
