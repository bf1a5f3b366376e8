"""Source detection and deblending.

Pixels are detected where the image, filtered with a kernel matched to the PSF, stands
``threshold`` sigma above the background (5 sigma by default), in connected groups of at least
``min_area`` pixels. The significance image is ``nu = (K * d) / (sigma_sky ||K||)`` with ``K``
the PSF kernel and ``sigma_sky`` the sky noise (the median of the variance plane): the matched
filter of SExtractor's usual mode, where a bright source's own Poisson noise does not raise its
threshold. It is computed here, as two 1-D passes for the Gaussian filter used before a PSF
exists (0.17 s on a 4k x 4k sensor) or one FFT convolution with a PSF kernel (1.0 s), because
sep's matched filter with a variance map takes 3.1 s. With ``variance_map`` (coadds, whose
depth varies over the patch) the filtered image is divided pixel by pixel by the filtered
variance, ``sqrt(K^2 * var)``; with ``sky_normalise`` (coadds, whose warped noise is
correlated and whose sky can be left high) the significance is then measured against its own
offset and noise on the sky (:meth:`DetectionTask.normalise_to_sky`). Blends are split by
``sep.extract`` on the significance image, by multi-threshold deblending: a branch of the
detection tree becomes its own source when it holds at least ``deblend_cont`` of the total
(Bertin & Arnouts 1996). (sep
detects ~3200 sources on a sensor in 0.6 s where photutils' detect + deblend + catalog takes
4.1 s: ../shared/reference/PERFORMANCE.md; the tests check that both find the same sources,
``tests/pipeline/test_photutils_reference.py``.)

Before a PSF exists the filter is a Gaussian whose FWHM is measured on the image
(:meth:`DetectionTask.estimate_fwhm`: the half-light radius of the stellar locus among bright
sources of a quick unfiltered pass), within a few percent of the PSF-matched filter's
sensitivity; the PSF stars are then chosen from that one detection pass.

A saturated star's interpolated core can hold two peaks (interpolation along rows across a
round core leaves a dip), which the deblender would split into two sources a few pixels apart,
each with part of the flux. Pieces whose peaks lie in, or within ``saturation_reach`` pixels of,
one connected region of SAT pixels are merged back into one source (:func:`merge_saturated`):
the flux-weighted centroid of the pieces, their summed flux and one footprint.

Multi-threshold deblending splits a branch only when it holds ``deblend_cont`` of the blend's
total: a faint star 2-3" from a star 100-1000 times brighter holds less, and stays in the bright
star's footprint. With ``peak_prominence`` (coadds), every peak of the filtered image that
rises that many sigma above the saddle joining it to a higher peak
(:func:`~twinkles.detection.peaks.peak_prominence`) and that no source stands for yet is a
source too, with its position from the filtered image's maximum and no footprint of its own
(``flag_peak``), as LSST's detection keeps every significant peak of a footprint for its
deblender. A neighbour on a star's steep wing makes no peak, only a shoulder: with
``star_subtraction_snr`` the bright point sources' PSF models, and the azimuthal median of
what they leave (the wings beyond the kernel), are subtracted, and the residual's prominent
peaks beside them are sources too (:meth:`DetectionTask._add_peaks_beside_stars`).

Each source gets a windowed centroid (SExtractor's XWIN/YWIN: iterative, Gaussian-weighted,
as precise as a PSF fit for isolated stars), its half-light radius, isophotal second moments,
its peak and whether it was deblended. Detected pixels are masked DETECTED.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import sep
from astropy.table import Table, vstack
from pydantic import Field
from scipy import ndimage
from scipy.spatial import cKDTree

from twinkles.detection.peaks import peak_prominence
from twinkles.geometry import friends_of_friends
from twinkles.image import BAD_PLANES, Exposure, MaskPlane
from twinkles.image.convolve import fft_convolve_terms
from twinkles.measurement.psf_flux import psf_flux
from twinkles.section import Section
from twinkles.stats import stellar_locus
from twinkles.units import FWHM_PER_SIGMA

__all__ = [
    "DetectionConfig",
    "DetectionResult",
    "DetectionTask",
    "gaussian_kernel_1d",
    "merge_saturated",
    "peak_centroid",
]

sep.set_sub_object_limit(4096)


def _sep_extract(data: np.ndarray, threshold: float, room: float, **kwargs) -> Any:
    """``sep.extract`` with working memory for ``room`` of the image's pixels above the
    threshold at once (at least 300,000), doubled up to every pixel where the image has more.

    sep allocates that memory on every call, so a sensor is given what it needs; a deep coadd,
    where galaxies too faint for one visit cover much of the sky, can need several times more.
    """
    pixstack = max(300_000, int(data.size * room))
    while True:
        sep.set_extract_pixstack(pixstack)
        try:
            return sep.extract(data, threshold, **kwargs)
        except Exception as exc:  # sep raises a bare Exception
            if "pixel buffer full" not in str(exc) or pixstack >= data.size:
                raise
            pixstack = min(2 * pixstack, data.size)


def gaussian_kernel_1d(fwhm: float, size: int | None = None) -> np.ndarray:
    """Normalised 1-D Gaussian with the given FWHM (pixels), out to 2.5 sigma by default."""
    sigma = fwhm / FWHM_PER_SIGMA
    size = size or (2 * int(np.ceil(2.5 * sigma)) + 1)
    r = np.arange(size) - size // 2
    g = np.exp(-0.5 * r**2 / sigma**2)
    return g / g.sum()


def _radial_profiles(
    image: np.ndarray, bad: np.ndarray, x: np.ndarray, y: np.ndarray, radius: int
) -> np.ndarray:
    """The azimuthal median profile of ``image`` about each position (x, y), out to
    ``radius`` pixels, as an image (float64): in rings one pixel wide, the median of the
    unmasked pixels, which a compact neighbour taking a small part of a ring does not move.
    The profiles of positions whose rings overlap are summed, each measured on ``image``
    less the profiles before it in the order given."""
    h, w = image.shape
    out = np.zeros((h, w))
    work = image.copy()
    offsets = np.arange(-radius, radius + 1)
    for cx, cy in zip(x, y, strict=True):
        ix, iy = int(np.rint(cx)), int(np.rint(cy))
        rows = slice(max(iy - radius, 0), min(iy + radius + 1, h))
        cols = slice(max(ix - radius, 0), min(ix + radius + 1, w))
        yy = offsets[rows.start - iy + radius : rows.stop - iy + radius]
        xx = offsets[cols.start - ix + radius : cols.stop - ix + radius]
        ring = np.rint(np.hypot(yy[:, None] + (iy - cy), xx[None, :] + (ix - cx))).astype(int)
        inside = ring <= radius
        good = inside & ~bad[rows, cols]
        if not good.any():
            continue
        index = np.arange(radius + 1)
        median = np.asarray(ndimage.median(work[rows, cols], np.where(good, ring, -1), index))
        median = np.nan_to_num(median)
        profile = np.where(inside, median[np.clip(ring, 0, radius)], 0.0)
        out[rows, cols] += profile
        work[rows, cols] -= profile
    return out


def _saturated_regions(saturated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The saturated pixels' (x, y) and the index of the 8-connected region each belongs to."""
    ys, xs = np.nonzero(saturated)
    points = np.column_stack([xs, ys]).astype(float)
    if not len(points):
        return points, np.zeros(0, dtype=int)
    return points, friends_of_friends(points, 1.5)


def peak_centroid(
    image: np.ndarray,
    kernel: np.ndarray,
    x_peak: np.ndarray,
    y_peak: np.ndarray,
    bad: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sub-pixel position of peaks of the image correlated with a (PSF) kernel.

    The correlation ``kernel * image`` is evaluated at the peak pixel and its eight
    neighbours, and a parabola through three values along each axis gives the position, as
    SDSS's centroid does on the PSF-smoothed image (Pier et al. 2003, AJ 125, 1559): the peak
    of the matched-filtered image is the maximum-likelihood position of a point source, and
    unlike a centroid over a footprint it is not pulled by a blended neighbour. The image is
    filtered, not a significance image: dividing by a noise map that follows the sources
    (their own photon noise, a matching error on the static sky) moves its peaks.

    Parameters
    ----------
    image : array
        The image.
    kernel : array
        The filter (odd square), e.g. the PSF.
    x_peak, y_peak : array of int
        Peak pixels (column, row).
    bad : array of bool, optional
        Pixels taken as 0 (as the detection's filter takes masked pixels).

    Returns
    -------
    x, y : array of float
        Positions (pixels), from the filtered image's maximum nearest each peak pixel (three
        steps at most); where that is not a maximum along an axis, its coordinate on it.
    """
    ix = np.array(x_peak, dtype=int)
    iy = np.array(y_peak, dtype=int)
    h, w = image.shape
    size = kernel.shape[0]
    half = size // 2 + 1
    k = np.asarray(kernel, dtype=float)
    reach = np.arange(-half, half + 1)

    def filtered_3x3(ix: np.ndarray, iy: np.ndarray) -> np.ndarray:
        # stamps gathered from the image, 0 beyond its edge and on bad pixels
        rows, cols = iy[:, None] + reach[None, :], ix[:, None] + reach[None, :]
        on = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
        at = (np.clip(rows, 0, h - 1)[:, :, None], np.clip(cols, 0, w - 1)[:, None, :])
        if bad is not None:
            on &= ~bad[at]
        stamps = np.where(on, image[at], 0.0)
        values = np.empty((len(ix), 3, 3))
        for dy in range(3):
            for dx in range(3):
                window = stamps[:, dy : dy + size, dx : dx + size]
                values[:, dy, dx] = np.einsum("nij,ij->n", window, k)
        return values

    # the filtered image's own maximum: the peak pixel came from another image (a
    # significance), whose maximum can lie a pixel away; climb to it, a few steps at most
    values = filtered_3x3(ix, iy)
    # of equal values, the one nearest the centre
    detour = np.array([2, 1, 2, 1, 0, 1, 2, 1, 2]) * 1e-9
    for _ in range(3):
        flat = values.reshape(len(ix), 9)
        scale = np.max(np.abs(flat), axis=1, keepdims=True)
        best = np.argmax(flat - detour[None, :] * scale, axis=1)
        step_y, step_x = best // 3 - 1, best % 3 - 1
        moving = (step_x != 0) | (step_y != 0)
        moving &= (ix + step_x >= 0) & (ix + step_x < w) & (iy + step_y >= 0) & (iy + step_y < h)
        if not moving.any():
            break
        ix[moving] += step_x[moving]
        iy[moving] += step_y[moving]
        values[moving] = filtered_3x3(ix[moving], iy[moving])

    def vertex(before: np.ndarray, centre: np.ndarray, after: np.ndarray) -> np.ndarray:
        curvature = before - 2.0 * centre + after
        with np.errstate(invalid="ignore", divide="ignore"):
            offset = 0.5 * (before - after) / curvature
        # a maximum's vertex lies within half a pixel; elsewhere keep the pixel
        return np.where((curvature < 0) & (np.abs(offset) <= 0.5), offset, 0.0)

    dx = vertex(values[:, 1, 0], values[:, 1, 1], values[:, 1, 2])
    dy = vertex(values[:, 0, 1], values[:, 1, 1], values[:, 2, 1])
    return ix + dx, iy + dy


def merge_saturated(
    objects: np.ndarray, segmentation: np.ndarray, saturated: np.ndarray, reach: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """One source per saturated core: deblended pieces of one saturated region merged.

    Parameters
    ----------
    objects : structured array
        ``sep.extract``'s sources (``xpeak``, ``ypeak``, ``x``, ``y``, ``flux``, ``npix``).
    segmentation : array of int
        Its segmentation image (0: background, k: source k - 1).
    saturated : array of bool
        The SAT mask.
    reach : float
        A peak this close (pixels) to a region's pixels belongs to it.

    Returns
    -------
    objects, segmentation, n_merged
        The pieces of each region folded into its brightest (flux-weighted centroid, summed
        flux and area, one segmentation label), and how many pieces were folded.
    """
    points, region_of_point = _saturated_regions(saturated)
    if len(objects) < 2 or not len(points):
        return objects, segmentation, 0
    peaks = np.column_stack([objects["xpeak"], objects["ypeak"]]).astype(float)
    distance, nearest = cKDTree(points).query(peaks, distance_upper_bound=reach)
    near = np.isfinite(distance)
    region = np.full(len(objects), -1)
    region[near] = region_of_point[nearest[near]]
    target = np.arange(len(objects))
    for r in np.unique(region[near]):
        pieces = np.flatnonzero(region == r)
        if len(pieces) < 2:
            continue
        main = pieces[np.argmax(objects["flux"][pieces])]
        weights = np.clip(objects["flux"][pieces], 1e-6, None)
        objects["x"][main] = np.average(objects["x"][pieces], weights=weights)
        objects["y"][main] = np.average(objects["y"][pieces], weights=weights)
        objects["flux"][main] = objects["flux"][pieces].sum()
        objects["npix"][main] = objects["npix"][pieces].sum()
        target[pieces] = main
    keep = target == np.arange(len(objects))
    n_merged = int(np.sum(~keep))
    if n_merged:
        new_label = np.concatenate([[0], np.cumsum(keep)[target]]).astype(segmentation.dtype)
        segmentation = new_label[segmentation]
        objects = objects[keep]
    return objects, segmentation, n_merged


class DetectionConfig(Section):
    """Source detection."""

    threshold: float = Field(5.0, gt=0, description="Detection threshold (sigma, filtered).")
    min_area: int = Field(5, ge=1, description="Fewest connected pixels of a detection.")
    deblend_nthresh: int = Field(32, ge=1, description="Deblending sub-thresholds.")
    deblend_cont: float = Field(
        0.005, ge=0, le=1, description="Flux fraction a branch needs to become a source."
    )
    filter_half_size: int = Field(
        4, ge=1, le=12, description="Half size of the PSF-matched filter kernel (pixels)."
    )
    clean: bool = Field(
        False,
        description="SExtractor's CLEAN of detections in bright neighbours' wings. Off: with "
        "a variance map and matched filter, sep's CLEAN dropped half the real sources of a "
        "crowded field (tiny visit 9: 51 -> 27, isolated S/N 20-40 stars lost), whatever its "
        "Moffat index.",
    )
    variance_map: bool = Field(
        False,
        description="Normalise the filtered image by the filtered variance plane, pixel by "
        "pixel (coadds, whose depth varies), instead of by the median sky noise.",
    )
    sky_normalise: bool = Field(
        False,
        description="Measure the significance image's offset and noise on the sky (pixels "
        "outside the grown detections) in cells of sky_cell pixels and detect relative to "
        "them, as LSST's DynamicDetectionTask does on coadds: warping correlates a coadd's "
        "noise, so its variance plane underestimates the filtered noise, and sources too "
        "faint to detect raise the sky.",
    )
    sky_cell: int = Field(
        128, ge=16, description="Cell size (pixels) of the sky normalisation's offset and noise."
    )
    guess_fwhm: float = Field(
        4.0, gt=0, description="FWHM (pixels) of the Gaussian filter used before a PSF exists."
    )
    saturation_reach: float = Field(
        2.0,
        ge=0,
        description="Deblended peaks within this distance (pixels) of one saturated region "
        "are one source.",
    )
    peak_prominence: float = Field(
        0.0,
        ge=0,
        description="Peaks of the filtered image inside a detection that rise this many sigma "
        "above the saddle joining them to a higher peak are sources too, where deblending did "
        "not split them (a faint neighbour on a bright star's wings); 0: off.",
    )
    star_subtraction_snr: float = Field(
        0.0,
        ge=0,
        description="With peak_prominence: point sources detected at this significance or more "
        "have their PSF model subtracted, and the residual's peaks near them that rise "
        "peak_prominence sigma above their saddle are sources too (a faint neighbour on a "
        "bright star's steep wing makes no peak of its own, only a shoulder); 0: off.",
    )
    star_profile_radius: int = Field(
        30,
        ge=1,
        description="Radius (pixels) out to which a subtracted star's residual is also "
        "subtracted as its azimuthal median profile (the wings beyond the PSF kernel).",
    )
    star_model_error: float = Field(
        0.05,
        ge=0,
        description="Fractional error of a subtracted star's PSF model, per pixel of its "
        "filtered image: added in quadrature to the noise its residual's peaks are measured "
        "against, so that what the model misses of the star is not a neighbour.",
    )


@dataclass
class DetectionResult:
    """Detected sources and the segmentation image (0: background, k: source k - 1)."""

    sources: Table
    segmentation: np.ndarray
    fwhm: float
    """FWHM (pixels) of the seeing the filter was matched to: measured on the image before a
    PSF exists (:meth:`DetectionTask.estimate_fwhm`), else the PSF's at the sensor's centre."""
    sky_noise: float = 1.0
    """The significance image's noise on the sky, in units of the one the variance predicts
    (median over the cells; 1 without ``sky_normalise``)."""


class DetectionTask:
    """Detect and deblend sources on a background-subtracted exposure."""

    def __init__(self, config: DetectionConfig | None = None):
        self.config = config or DetectionConfig()

    def estimate_fwhm(self, exposure: Exposure) -> float:
        """Seeing FWHM (pixels) from the bright sources of a quick unfiltered pass.

        Stars are the most compact sources and share one half-light radius; for a Gaussian
        the FWHM is twice it. Falls back on ``guess_fwhm`` without enough bright sources.
        """
        data = np.ascontiguousarray(exposure.image, dtype=np.float32)
        bad = exposure.masked(BAD_PLANES | MaskPlane.SAT)
        sigma = float(np.sqrt(np.median(exposure.variance[::16, ::16])))
        objects = _sep_extract(data, 20.0 * sigma, 1 / 8, mask=bad, minarea=5, filter_kernel=None)
        if len(objects) < 5:
            return self.config.guess_fwhm
        radius, _ = sep.flux_radius(
            data,
            objects["x"],
            objects["y"],
            np.clip(6.0 * objects["a"], 3.0, 30.0),
            0.5,
            normflux=objects["flux"],
            mask=bad,
            subpix=5,
        )
        locus = stellar_locus(radius, 0.12)
        return float(2.0 * locus) if np.isfinite(locus) and locus > 0.5 else self.config.guess_fwhm

    def filter_kernel(self, exposure: Exposure) -> np.ndarray:
        """The PSF at the sensor centre, trimmed to ``filter_half_size`` and renormalised."""
        h, w = exposure.shape
        k = exposure.psf.kernel(0.5 * (w - 1), 0.5 * (h - 1))
        c, half = k.shape[0] // 2, self.config.filter_half_size
        k = k[c - half : c + half + 1, c - half : c + half + 1]
        return k / k.sum()

    def filter_fwhm(self, exposure: Exposure) -> float:
        """FWHM (pixels) of the detection filter: the PSF's at the centre, or the seeing
        measured on the image (:meth:`estimate_fwhm`) before a PSF exists."""
        if exposure.psf is None:
            return self.estimate_fwhm(exposure)
        h, w = exposure.shape
        return float(exposure.psf.fwhm(0.5 * (w - 1), 0.5 * (h - 1)))

    def significance(self, exposure: Exposure, fwhm: float | None = None) -> np.ndarray:
        """The matched-filter significance image (sigma), float32.

        Before a PSF exists the filter is a Gaussian of FWHM ``fwhm`` (pixels; measured on the
        image when not given), applied as two 1-D passes (0.17 s for a 4k x 4k sensor, against
        1.0 s for the 2-D FFT convolution a PSF kernel needs).
        """
        return self._significance(exposure, fwhm)[0]

    def _significance(
        self, exposure: Exposure, fwhm: float | None = None
    ) -> tuple[np.ndarray, np.ndarray | float]:
        """:meth:`significance` and the filtered image's noise (a plane with ``variance_map``,
        else a number): their product is the filtered image."""
        bad = exposure.masked(BAD_PLANES)
        data = np.where(bad, np.float32(0.0), exposure.image.astype(np.float32, copy=False))
        if exposure.psf is None:
            fwhm = self.estimate_fwhm(exposure) if fwhm is None else fwhm
            g = gaussian_kernel_1d(fwhm).astype(np.float32)
            filtered = ndimage.correlate1d(data, g, axis=0, mode="constant")
            ndimage.correlate1d(filtered, g, axis=1, mode="constant", output=filtered)
            kernel_norm = float(np.sum(g.astype(float) ** 2))  # |g x g| = |g|^2
        else:
            kernel = self.filter_kernel(exposure)
            # correlation with the kernel: convolution with it flipped
            filtered = fft_convolve_terms(data, kernel[::-1, ::-1].astype(np.float32))
            kernel_norm = float(np.sqrt(np.sum(kernel**2)))
        if self.config.variance_map:
            # var(K (x) d) = K^2 (x) var; pixels without data have no significance
            var = exposure.variance.astype(np.float32, copy=False)
            var = np.where(bad | ~np.isfinite(var), np.float32(0.0), var)
            if exposure.psf is None:
                g2 = (g.astype(float) ** 2).astype(np.float32)
                var_f = ndimage.correlate1d(var, g2, axis=0, mode="constant")
                ndimage.correlate1d(var_f, g2, axis=1, mode="constant", output=var_f)
            else:
                var_f = fft_convolve_terms(var, (kernel[::-1, ::-1] ** 2).astype(np.float32))
            # FFT round-off leaves ~1e-7 relative noise where there is no data; the floor's
            # scale needs no more than a sparse sample of the plane
            sample = var_f[::4, ::4]
            floor = 1e-4 * float(np.median(sample[sample > 0])) if np.any(sample > 0) else 0.0
            no_data = ~(var_f > floor)
            # in place: the two sensor-size planes are this function's own
            with np.errstate(invalid="ignore", divide="ignore"):
                filtered /= np.sqrt(var_f, out=var_f)
            filtered[no_data] = 0.0
            return filtered, var_f
        sky_sigma = float(np.sqrt(np.median(exposure.variance[::16, ::16])))
        filtered *= np.float32(1.0 / (sky_sigma * kernel_norm))
        return filtered, sky_sigma * kernel_norm

    def normalise_to_sky(
        self,
        nu: np.ndarray,
        bad: np.ndarray,
        threshold: float,
        two_sided: bool = False,
        passes: int = 3,
        min_noise: float = 0.0,
        stride: int = 1,
    ) -> tuple[np.ndarray, float]:
        """The significance image relative to its own offset and noise on the sky.

        Pixels above ``threshold`` (with ``two_sided``, below ``-threshold`` too: a difference
        image's negative sources), grown by 4 pixels, and ``bad`` pixels are left out; in
        cells of ``sky_cell`` pixels the sky's offset and noise are sep's clipped mode and
        standard deviation, interpolated between cells by a bicubic spline (Bertin & Arnouts
        1996, A&A 117, 393): the background estimate, run on the significance image. After
        the first pass, each judges which pixels are above ``threshold`` on the previous
        pass's normalised image. This is the correction of LSST's DynamicDetectionTask (a
        threshold scaled to the measured noise of PSF fluxes at empty places, and a background
        tweak), made per cell. The noise is taken as at least ``min_noise``. With ``stride``
        > 1 the offset and noise are measured on every ``stride``-th pixel of each axis (a
        significance image is correlated over the PSF, so little is lost) and applied to
        every pixel.

        Returns
        -------
        nu : array
            ``(nu - offset) / noise``, float32.
        sky_noise : float
            The median of the noise map (1 where the variance plane told the truth).
        """
        cell = self.config.sky_cell // stride
        nu32 = np.ascontiguousarray(nu, dtype=np.float32)
        sample = np.ascontiguousarray(nu32[::stride, ::stride])
        sample_bad = bad[::stride, ::stride]
        out = sample
        # the pixels above threshold are judged on the normalised image of the pass before:
        # where the raw image's offset is several sigma, the first pass leaves most of the sky
        # out, and the next ones settle it
        for _ in range(passes):
            above = np.abs(out) > threshold if two_sided else out > threshold
            sources = ndimage.binary_dilation(above, iterations=max(4 // stride, 1))
            sky = sep.Background(sample, mask=sources | sample_bad, bw=cell, bh=cell, fw=3, fh=3)
            noise = sky.rms()
            good = noise > 0
            if not np.any(good[~sample_bad]):
                return nu, 1.0
            if not good.all():  # a median over the whole map, only where it has holes to fill
                noise = np.where(good, noise, np.median(noise[good]))
            noise = np.maximum(noise, min_noise).astype(np.float32)
            offset = sky.back()
            out = (sample - offset) / noise
            out[sample_bad] = 0.0
        sky_noise = float(np.median(noise[~sample_bad]))
        if stride > 1:
            # each sampled pixel's offset and noise over its stride x stride block, by
            # broadcasting on a padded copy rather than by building full-size maps
            (h, w), (hs, ws) = nu32.shape, sample.shape
            padded = np.zeros((hs * stride, ws * stride), np.float32)
            padded[:h, :w] = nu32
            blocks = padded.reshape(hs, stride, ws, stride)
            blocks -= offset[:, None, :, None]
            blocks /= noise[:, None, :, None]
            out = padded[:h, :w]
            out[bad] = 0.0
        return out.astype(np.float32, copy=False), sky_noise

    def run(
        self,
        exposure: Exposure,
        threshold: float | None = None,
        significance: np.ndarray | None = None,
    ) -> DetectionResult:
        """Detect, deblend and measure sources above ``threshold`` (default: the config's).

        Parameters
        ----------
        exposure : Exposure
            Background-subtracted image (electrons or nJy) with variance and mask.
        threshold : float, optional
            Detection threshold in sigma of the matched-filtered image.
        significance : array, optional
            The matched-filtered significance image, when it is already known (the negative
            polarity of a difference image is minus the positive one's); otherwise computed.

        Returns
        -------
        DetectionResult
            The sources (positions in pixels, fluxes in the image's unit, second moments,
            ``flux_radius``, the peak pixel ``x_peak``, ``y_peak``, blend and centroid flags,
            ``flag_peak`` for a source found as a prominent peak), the segmentation image and
            the FWHM (pixels) the filter was matched to.
        """
        cfg = self.config
        data = np.ascontiguousarray(exposure.image, dtype=np.float32)
        bad = exposure.masked(BAD_PLANES)
        fwhm = self.filter_fwhm(exposure)
        # a given significance image comes without its noise: its peaks are then ranked in
        # sigma rather than in filtered flux
        nu, noise = (
            self._significance(exposure, fwhm) if significance is None else (significance, 1.0)
        )
        threshold = threshold if threshold is not None else cfg.threshold
        sky_noise = 1.0
        if cfg.sky_normalise:
            nu, sky_noise = self.normalise_to_sky(nu, bad, threshold)
        objects, segmap = _sep_extract(
            nu,
            threshold,
            1 / 4,
            err=1.0,
            mask=bad,
            minarea=cfg.min_area,
            filter_kernel=None,
            deblend_nthresh=cfg.deblend_nthresh,
            deblend_cont=cfg.deblend_cont,
            clean=cfg.clean,
            segmentation_map=True,
        )
        objects, segmap, _ = merge_saturated(
            objects, segmap, exposure.masked(MaskPlane.SAT), cfg.saturation_reach
        )
        exposure.mask[segmap > 0] |= int(MaskPlane.DETECTED)
        x, y = objects["x"].astype(float), objects["y"].astype(float)
        # fluxes on the data: a circular aperture of 2.5 times the isophotal size
        radius_max = np.clip(6.0 * objects["a"], 3.0, 40.0)
        flux, flux_err, _ = sep.sum_circle(
            data,
            x,
            y,
            np.clip(2.5 * objects["a"], 2.0, 20.0),
            var=np.ascontiguousarray(exposure.variance, dtype=np.float32),
            mask=bad,
            subpix=1,
        )
        flux_radius, _ = sep.flux_radius(
            data, x, y, radius_max, 0.5, normflux=np.maximum(flux, 1.0), mask=bad, subpix=5
        )
        # the window of SExtractor's XWIN, capped: a galaxy's centroid needs no wider window
        sig = np.clip(2.0 * flux_radius / FWHM_PER_SIGMA, 0.5, 5.0)
        xwin, ywin, win_flag = sep.winpos(data, x, y, sig, mask=bad, subpix=1)
        moved = ~np.isfinite(xwin) | ~np.isfinite(ywin) | (np.hypot(xwin - x, ywin - y) > 2.0)
        xwin, ywin = np.where(moved, x, xwin), np.where(moved, y, ywin)
        peak = data[objects["ypeak"], objects["xpeak"]].astype(float)
        table = Table(
            {
                "x": xwin,
                "y": ywin,
                "x_iso": x,
                "y_iso": y,
                "x_peak": objects["xpeak"].astype(int),
                "y_peak": objects["ypeak"].astype(int),
                "peak": peak,
                "significance": objects["peak"].astype(float),
                "flux": flux,
                "flux_err": flux_err,
                "npix": objects["npix"].astype(int),
                "flux_radius": flux_radius,
                "x2": objects["x2"].astype(float),
                "y2": objects["y2"].astype(float),
                "xy": objects["xy"].astype(float),
                "a": objects["a"].astype(float),
                "b": objects["b"].astype(float),
                "theta": objects["theta"].astype(float),
                "flag_blended": (objects["flag"] & sep.OBJ_MERGED) != 0,
                "flag_truncated": (objects["flag"] & sep.OBJ_TRUNC) != 0,
                "flag_centroid": moved | (win_flag != 0),
                "flag_peak": np.zeros(len(objects), dtype=bool),
            }
        )
        if cfg.peak_prominence > 0 and len(table):
            filtered = nu * noise
            table = self._add_prominent_peaks(
                table, exposure, filtered, noise, segmap, threshold, fwhm
            )
            if cfg.star_subtraction_snr > 0 and exposure.psf is not None:
                table = self._add_peaks_beside_stars(
                    table, exposure, filtered, noise, segmap, threshold, fwhm
                )
        return DetectionResult(table, segmap, fwhm, sky_noise)

    def _add_peaks_beside_stars(
        self,
        table: Table,
        exposure: Exposure,
        filtered: np.ndarray,
        noise: np.ndarray | float,
        segmap: np.ndarray,
        threshold: float,
        fwhm: float,
    ) -> Table:
        """``table`` with the sources that appear beside bright stars once their PSF models
        are subtracted.

        The point sources (half-light radius within 12% of the stellar locus) detected at
        ``star_subtraction_snr`` or more are fitted with the PSF (:func:`~twinkles.measurement.\
psf_flux.psf_flux`) and their models, filtered as the image was, subtracted from the
        filtered image. Where the residual stands above the threshold against the noise plus
        ``star_model_error`` times the filtered models, its peaks that rise
        ``peak_prominence`` sigma above their saddle, lie beyond one FWHM of the star they
        were beside (and within ``star_profile_radius`` less the filter's half-size) and
        half a FWHM from every known source become sources, as
        :meth:`_add_prominent_peaks` adds them (``flag_peak``). This is the subtraction of
        DAOPHOT's iterative star finding (Stetson 1987, PASP 99, 191), kept to the wings of
        stars: a galaxy's profile is not the PSF's.
        """
        cfg = self.config
        radius = np.asarray(table["flux_radius"], dtype=float)
        significance = np.asarray(table["significance"], dtype=float)
        measured = np.isfinite(radius) & ~np.asarray(table["flag_peak"], dtype=bool)
        locus = stellar_locus(radius[measured & (significance >= threshold * 4)], 0.12)
        if not np.isfinite(locus):
            return table
        stars = np.flatnonzero(
            measured
            & (significance >= cfg.star_subtraction_snr)
            & (np.abs(radius / locus - 1.0) <= 0.12)
        )
        if not len(stars):
            return table
        x, y = np.asarray(table["x"], float)[stars], np.asarray(table["y"], float)[stars]
        flux, _, masked = psf_flux(exposure, x, y)
        # a star fitted on few of its pixels (saturated, at an edge) has no model to trust
        keep = np.isfinite(flux) & (flux > 0) & (masked < 0.2)
        x, y, flux = x[keep], y[keep], flux[keep]
        if not len(x):
            return table
        model = exposure.psf.render(exposure.shape, x, y, flux)
        # what the PSF model leaves of each star, symmetric about it: the wings beyond the
        # kernel (a coadd's kernel ends at its inscribed circle) and any error in its width
        model += _radial_profiles(
            np.asarray(exposure.image, dtype=float) - model,
            exposure.masked(BAD_PLANES | MaskPlane.SAT),
            x,
            y,
            cfg.star_profile_radius,
        )
        model = model.astype(np.float32)
        kernel = self.filter_kernel(exposure)
        filtered_model = fft_convolve_terms(model, kernel[::-1, ::-1].astype(np.float32))
        residual = filtered - filtered_model
        noise_plane = np.broadcast_to(np.asarray(noise, dtype=np.float32), filtered.shape)
        sigma = np.sqrt(noise_plane**2 + (np.float32(cfg.star_model_error) * filtered_model) ** 2)
        near_star = filtered_model > threshold * noise_plane
        above = near_star & (residual > threshold * sigma)
        py, px, height = peak_prominence(residual, above)
        with np.errstate(invalid="ignore", divide="ignore"):
            prominence = height / sigma[py, px]
        # a region's highest peak has no saddle: standing above the threshold is its test
        candidate = np.isinf(prominence) | (prominence >= cfg.peak_prominence)
        py, px = py[candidate], px[candidate]
        if not len(px):
            return table
        to_star, _ = cKDTree(np.column_stack([x, y])).query(np.column_stack([px, py]))
        # within the profiles' reach, the filter's half-size short of where they stop
        reach = cfg.star_profile_radius - kernel.shape[0] // 2 - 1
        new = (to_star > fwhm) & (to_star < reach)
        data = np.ascontiguousarray(exposure.image, dtype=np.float32) - model
        return self._peak_rows(
            table, exposure, data, residual, sigma, segmap, px[new], py[new], fwhm
        )

    def _add_prominent_peaks(
        self,
        table: Table,
        exposure: Exposure,
        filtered: np.ndarray,
        noise: np.ndarray | float,
        segmap: np.ndarray,
        threshold: float,
        fwhm: float,
    ) -> Table:
        """``table`` with a row for each peak of the filtered image that rises at least
        ``peak_prominence`` sigma above its saddle (:func:`~twinkles.detection.peaks.\
peak_prominence`, on the pixels above the threshold) and that no source yet stands for: no
        source's peak or centroid within half a FWHM, and not at a saturated core.

        The prominence is measured on the filtered image, not on the significance: where the
        variance plane holds a bright star's own photon noise, dividing by it flattens the
        star's profile, and a neighbour's bump with it. A peak's row has its position from the
        filtered image's maximum (:func:`peak_centroid`), an aperture flux of one FWHM's
        radius, no footprint (``npix`` 0, no shape) and ``flag_peak`` and ``flag_blended``
        set; the source whose footprint holds it is flagged blended too.
        """
        cfg = self.config
        noise_plane = np.broadcast_to(np.asarray(noise, dtype=np.float32), filtered.shape)
        above = (segmap > 0) & (filtered > threshold * noise_plane)
        py, px, height = peak_prominence(filtered, above)
        with np.errstate(invalid="ignore", divide="ignore"):
            sigma = height / noise_plane[py, px]
        # a region's highest peak (infinite prominence) is kept too: it is the footprint's own
        # source unless the filtered image and the significance rank the footprint's peaks
        # differently, and then the source is another of them
        candidate = ~np.isnan(sigma) & (sigma >= cfg.peak_prominence)
        py, px = py[candidate], px[candidate]
        if not len(px):
            return table
        data = np.ascontiguousarray(exposure.image, dtype=np.float32)
        return self._peak_rows(table, exposure, data, filtered, noise_plane, segmap, px, py, fwhm)

    def _peak_rows(
        self,
        table: Table,
        exposure: Exposure,
        data: np.ndarray,
        filtered: np.ndarray,
        noise_plane: np.ndarray,
        segmap: np.ndarray,
        px: np.ndarray,
        py: np.ndarray,
        fwhm: float,
    ) -> Table:
        """``table`` with a source at each peak pixel (``px``, ``py``) of ``filtered``
        (``data`` filtered) that no source stands for yet (none's peak or centroid within half
        a FWHM) and that is not at a saturated core (within ``saturation_reach`` of one): its
        position from the filtered image's maximum (:func:`peak_centroid` on
        ``data``), an aperture flux of ``data`` of one FWHM's radius, no footprint (``npix``
        0, no shape), ``flag_peak`` and ``flag_blended`` set; the source whose footprint
        holds it is flagged blended too."""
        cfg = self.config
        if len(px):
            known = np.concatenate(
                [
                    np.column_stack([table["x_peak"], table["y_peak"]]),
                    np.column_stack([table["x"], table["y"]]),
                ]
            ).astype(float)
            distance, _ = cKDTree(known).query(np.column_stack([px, py]).astype(float))
            px, py = px[distance > 0.5 * fwhm], py[distance > 0.5 * fwhm]
        saturated_points, _ = _saturated_regions(exposure.masked(MaskPlane.SAT))
        if len(saturated_points) and len(px):
            to_saturated, _ = cKDTree(saturated_points).query(np.column_stack([px, py]))
            away = to_saturated > cfg.saturation_reach
            px, py = px[away], py[away]
        if not len(px):
            return table
        bad = exposure.masked(BAD_PLANES)
        if exposure.psf is not None:
            x, y = peak_centroid(data, self.filter_kernel(exposure), px, py, bad)
        else:
            x, y = px.astype(float), py.astype(float)
        flux, flux_err, _ = sep.sum_circle(
            data,
            x,
            y,
            max(fwhm, 2.0),
            var=np.ascontiguousarray(exposure.variance, dtype=np.float32),
            mask=bad,
            subpix=1,
        )
        n = len(px)
        nan = np.full(n, np.nan)
        rows = Table(
            {
                "x": x,
                "y": y,
                "x_iso": x,
                "y_iso": y,
                "x_peak": px.astype(int),
                "y_peak": py.astype(int),
                "peak": data[py, px].astype(float),
                "significance": (filtered[py, px] / noise_plane[py, px]).astype(float),
                "flux": flux,
                "flux_err": flux_err,
                "npix": np.zeros(n, dtype=int),
                "flux_radius": nan,
                "x2": nan,
                "y2": nan,
                "xy": nan,
                "a": nan,
                "b": nan,
                "theta": nan,
                "flag_blended": np.ones(n, dtype=bool),
                "flag_truncated": np.zeros(n, dtype=bool),
                "flag_centroid": np.zeros(n, dtype=bool),
                "flag_peak": np.ones(n, dtype=bool),
            }
        )
        holder = segmap[py, px] - 1
        table["flag_blended"][holder[holder >= 0]] = True
        return vstack([table, rows])
