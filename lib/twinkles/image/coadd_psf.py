"""The PSF of a coadd, evaluated exactly from its inputs (as LSST's ``CoaddPsf``).

A coadd's pixel at patch position (x, y) is the weighted mean of the warps covering it, so a
point source there is imaged by the same weighted mean of the warped input PSFs (Bosch et al.
2018, PASJ 70, S5, section 3.3; Jee & Tyson 2011, PASP 123, 596):

    K(x, y) = sum_v w_v c_v(x, y) W_v[K_v(x_v, y_v)] / sum_v w_v c_v(x, y)

where ``K_v`` is input ``v``'s PSF at the calexp position ``(x_v, y_v)`` of (x, y), ``W_v``
resamples a kernel onto the patch's pixel axes through the local Jacobian of patch -> calexp
pixels, ``c_v`` is 1 where the input covers the position and ``w_v`` is the input's coadd
weight. The sum changes wherever a visit's edge crosses the patch, and each visit's PSF
varies over its own sensor, so no smooth polynomial over the patch holds it; the model keeps
its inputs and evaluates the sum where it is asked.

A visit's kernel is a square of ``size`` pixels on its own sensor; rotated onto the patch, the
square's corners turn away, and a kernel cut there would miss light that the warped star
still has. Every warped kernel is therefore cut to the square's inscribed circle (radius
``size // 2``), which turns onto itself: the coadd's PSF flux is the light inside that circle,
:meth:`CoaddPSF.kept_light` is each visit's share of its own PSF flux that falls in it, and
the coadd's aperture correction (:mod:`twinkles.coadd.apcorr`) takes it into account.

Resampling is linear, so it is done once per input on the input PSF's basis images (a
:class:`~twinkles.image.psf.PixelPSF` is a polynomial of position times fixed images), with
the Jacobian at the input's centre, and once more for their derivative in the warp's scale.
Over a sensor the Jacobian of a distorted calexp changes by a few tenths of a percent in
area and hundredths of a degree in rotation; the change of area moves a PSF flux at first
order (a kernel wider by a fraction returns as much more flux), the rest only at second, so
each input's kernel follows its scale over its sensor (a quadratic fitted to the Jacobian on
a 5 x 5 grid) to first order. A kernel is then a matrix product of the inputs' spatial terms
with their warped bases.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from twinkles.geometry import polynomial_terms
from twinkles.image.psf import KernelPSF, PixelPSF

__all__ = ["CoaddInput", "CoaddPSF", "patch_jacobian", "patch_jacobians", "warp_kernel"]


@dataclass(frozen=True, eq=False)
class CoaddInput:
    """One coadded calexp as its coadd's PSF needs it.

    Attributes
    ----------
    psf : PixelPSF
        The calexp's PSF model (calexp pixels).
    wcs : `~astropy.wcs.WCS`
        The calexp's WCS (with its distortion).
    shape : tuple of int
        The calexp's (height, width) in pixels: where it covers the patch.
    weight : float
        Its weight in the coadd.
    visit : int
        Its visit, to find what else was measured on it (its aperture correction).
    """

    psf: PixelPSF
    wcs: WCS
    shape: tuple[int, int]
    weight: float
    visit: int = 0


def patch_jacobian(patch_wcs: WCS, input_wcs: WCS, x: float, y: float) -> np.ndarray:
    """Jacobian (2, 2) of patch pixels -> input pixels at patch position (x, y), by central
    differences; ``jac[i, j] = d(input axis i) / d(patch axis j)``, axes in numpy's (y, x)
    order."""
    return patch_jacobians(patch_wcs, input_wcs, np.array([x]), np.array([y]))[0]


def patch_jacobians(patch_wcs: WCS, input_wcs: WCS, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """:func:`patch_jacobian` at many patch positions: array (n, 2, 2)."""
    x, y = np.atleast_1d(x).astype(float), np.atleast_1d(y).astype(float)
    ra, dec = patch_wcs.all_pix2world(
        np.concatenate([x + 0.5, x - 0.5, x, x]), np.concatenate([y, y, y + 0.5, y - 0.5]), 0
    )
    cx, cy = (a.reshape(4, -1) for a in input_wcs.all_world2pix(ra, dec, 0))
    jac = np.empty((len(x), 2, 2))
    jac[:, 0, 0], jac[:, 0, 1] = cy[2] - cy[3], cy[0] - cy[1]
    jac[:, 1, 0], jac[:, 1, 1] = cx[2] - cx[3], cx[0] - cx[1]
    return jac


def warp_kernel(kernel: np.ndarray, jac: np.ndarray) -> np.ndarray:
    """A centred kernel (or a stack of them, ``(..., size, size)``) resampled onto the patch's
    pixel axes: the output pixel at offset ``o`` from the centre takes the input's value at
    ``jac @ o`` (cubic spline). Linear in the kernel and not normalised: the sum scales by
    about ``1 / |det jac|``."""
    # imported here: every exposure's reader imports this module, few steps warp kernels,
    # and scipy.ndimage costs ~0.5 s to import
    from scipy import ndimage

    kernel = np.asarray(kernel, dtype=float)
    flat = kernel.reshape(-1, *kernel.shape[-2:])
    centre = (np.array(flat.shape[-2:], dtype=float) - 1) / 2
    offset = centre - jac @ centre
    out = np.stack(
        [ndimage.affine_transform(k, jac, offset=offset, order=3, mode="constant") for k in flat]
    )
    return out.reshape(kernel.shape)


#: Step (fraction) of the finite difference of a warped kernel in the warp's scale.
_SCALE_STEP = 0.01


@dataclass(frozen=True)
class _WarpedBases:
    """The inputs' bases on the patch (see :attr:`CoaddPSF._warped`)."""

    basis: np.ndarray
    """(n_rows, size^2): per input, its basis images warped at its centre's Jacobian, then
    their derivatives in the warp's scale, all cut to the kernel's inscribed circle."""
    sums: np.ndarray
    """Each row's sum."""
    box_sums: list[np.ndarray]
    """Per input, its basis images' sums over their own (square) box."""
    starts: np.ndarray
    """First row of each input's block (n_inputs + 1)."""
    areas: np.ndarray
    """Per input, the input pixels per patch pixel at its centre (|det J|)."""
    scales: list[np.ndarray]
    """Per input, quadratic coefficients (in its normalised sensor position) of the warp's
    scale relative to its centre's."""


def _sensor_normalised(
    inp: CoaddInput, cx: np.ndarray, cy: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Positions on an input's sensor, from its centre in units of its half width."""
    h, w = inp.shape
    half = 0.5 * max(h, w)
    return (np.asarray(cx) - 0.5 * (w - 1)) / half, (np.asarray(cy) - 0.5 * (h - 1)) / half


@dataclass(frozen=True, eq=False)
class CoaddPSF(KernelPSF):
    """The weighted mean of a coadd's warped input PSFs, at any patch position.

    Attributes
    ----------
    inputs : tuple of CoaddInput
        The coadded calexps, each with its PSF, WCS, size and weight.
    wcs : `~astropy.wcs.WCS`
        The coadd's (patch's) WCS.
    shape : tuple of int
        The coadd's (height, width) in pixels.

    Notes
    -----
    Where no input covers a position (beyond every visit's edge), every input contributes,
    at the nearest position of its own sensor. Masked pixels of single warps (saturated
    cores, cosmic rays) are not followed, as in LSST: the sum changes only at visit edges.
    """

    inputs: tuple[CoaddInput, ...]
    wcs: WCS
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        if not self.inputs:
            raise ValueError("a coadd PSF needs at least one input")
        sizes = {inp.psf.size for inp in self.inputs}
        if len(sizes) != 1:
            raise ValueError(f"the inputs' PSF kernels differ in size: {sorted(sizes)}")
        weights = np.array([inp.weight for inp in self.inputs])
        if not np.all(np.isfinite(weights) & (weights > 0)):
            raise ValueError("the inputs' coadd weights must be finite and positive")

    @property
    def size(self) -> int:
        """Side of the kernel image in pixels (odd)."""
        return self.inputs[0].psf.size

    @property
    def x0(self) -> float:
        """The patch's centre (pixels), where summaries are taken."""
        return 0.5 * (self.shape[1] - 1)

    @property
    def y0(self) -> float:
        """The patch's centre (pixels), where summaries are taken."""
        return 0.5 * (self.shape[0] - 1)

    @cached_property
    def _warped(self) -> _WarpedBases:
        """The inputs' bases warped onto the patch and cut to the kernel's inscribed circle,
        with their derivatives in the warp's scale, and each input's scale over its sensor."""
        yy, xx = np.mgrid[0 : self.size, 0 : self.size] - self.half
        circle = np.hypot(xx, yy) <= self.half
        rows, starts, areas, scales = [], [0], [], []
        for inp in self.inputs:
            h, w = inp.shape
            # the Jacobian on a 5 x 5 grid of the input's sensor: at its centre (the grid's
            # middle point) for the warp, and its change of scale over the sensor
            # (distortion), fitted by a quadratic
            gx, gy = (g.ravel() for g in np.meshgrid(*(np.linspace(0, n - 1, 5) for n in (w, h))))
            ra, dec = inp.wcs.all_pix2world(gx, gy, 0)
            px, py = self.wcs.all_world2pix(ra, dec, 0)
            jacs = patch_jacobians(self.wcs, inp.wcs, px, py)
            centre = jacs[len(jacs) // 2]
            area = abs(np.linalg.det(centre))
            change = np.sqrt(np.abs(np.linalg.det(jacs)) / area) - 1.0
            coeffs, *_ = np.linalg.lstsq(
                polynomial_terms(*_sensor_normalised(inp, gx, gy), 2), change, rcond=None
            )
            basis = inp.psf.basis
            warped = warp_kernel(basis, centre) * circle
            step = _SCALE_STEP
            derivative = (
                (warp_kernel(basis, centre * (1 + step)) - warp_kernel(basis, centre * (1 - step)))
                * circle
                / (2 * step)
            )
            rows += [warped.reshape(len(basis), -1), derivative.reshape(len(basis), -1)]
            starts.append(starts[-1] + 2 * len(basis))
            areas.append(area)
            scales.append(coeffs)
        stacked = np.concatenate(rows)
        return _WarpedBases(
            stacked,
            stacked.sum(axis=1),
            [inp.psf.basis.sum(axis=(1, 2)) for inp in self.inputs],
            np.array(starts),
            np.array(areas),
            scales,
        )

    def _scale(self, v: int, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
        """Input ``v``'s warp scale at positions on its sensor, relative to its centre's."""
        terms = polynomial_terms(*_sensor_normalised(self.inputs[v], cx, cy), 2)
        return terms @ self._warped.scales[v]

    def input_weights(
        self, x: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """Each input's share of the coadd at patch positions (x, y), and where they fall
        on it.

        Returns
        -------
        weights : ndarray, shape (n, n_inputs)
            The inputs' coadd weights over the inputs covering each position, normalised to
            sum 1 (every input, where none covers it).
        positions : list of (cx, cy)
            Per input, the positions on its own sensor (pixels), clipped to the sensor.
        """
        x, y = np.atleast_1d(x).astype(float), np.atleast_1d(y).astype(float)
        ra, dec = self.wcs.all_pix2world(x, y, 0)
        covered = np.zeros((len(x), len(self.inputs)), dtype=bool)
        positions = []
        for v, inp in enumerate(self.inputs):
            h, w = inp.shape
            cx, cy = inp.wcs.all_world2pix(ra, dec, 0)
            covered[:, v] = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
            positions.append((np.clip(cx, 0, w - 1), np.clip(cy, 0, h - 1)))
        weights = np.array([inp.weight for inp in self.inputs])
        share = np.where(covered.any(axis=1, keepdims=True), covered * weights, weights)
        return share / share.sum(axis=1, keepdims=True), positions

    def _input_kernels(
        self, v: int, cx: np.ndarray, cy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Input ``v`` at positions on its sensor: the coefficients (n, 2 n_terms) of its
        block of warped bases, of unit sum inside the circle; that sum before normalising;
        the warp's scale there; and its PSF model's spatial terms there."""
        warped = self._warped
        terms = self.inputs[v].psf.terms(cx, cy)
        scale = self._scale(v, cx, cy)
        coeffs = np.concatenate([terms, terms * scale[:, None]], axis=1)
        inside = coeffs @ warped.sums[warped.starts[v] : warped.starts[v + 1]]
        return coeffs / inside[:, None], inside, scale, terms

    def _coefficients(
        self, share: np.ndarray, positions: list[tuple[np.ndarray, np.ndarray]]
    ) -> np.ndarray:
        """Coefficients (n, n_rows) of the warped bases: each input's kernel at its position,
        of unit sum (its warp carries the flux), times its share."""
        starts = self._warped.starts
        coeffs = np.zeros((len(share), starts[-1]))
        for v, (cx, cy) in enumerate(positions):
            unit, _, _, _ = self._input_kernels(v, cx, cy)
            coeffs[:, starts[v] : starts[v + 1]] = unit * share[:, v : v + 1]
        return coeffs

    def kernels(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Centred kernels (n, size, size), unit sum, for sources at patch positions (x, y)."""
        share, positions = self.input_weights(x, y)
        k = self._coefficients(share, positions) @ self._warped.basis
        k = k.reshape(len(share), self.size, self.size)
        return k / k.sum(axis=(1, 2), keepdims=True)

    @cached_property
    def _gram(self) -> np.ndarray:
        """Inner products of the warped bases (n_rows, n_rows)."""
        basis = self._warped.basis
        return basis @ basis.T

    def fit_shares(
        self, x: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
        """Each input's share of the flux that a fit of the coadd's kernel ``K`` returns at
        patch positions (x, y), and the inputs' positions (as :meth:`input_weights`).

        A star there is ``sum_v s_v f_v K_v``, each input's kernel ``K_v`` (unit sum) with its
        share ``s_v`` and the flux ``f_v`` its kernel holds; the fit
        ``<data, K> / <K, K>`` returns ``sum_v s_v f_v <K_v, K> / <K, K>``: a sharp input's
        kernel, more like the core of ``K``, counts for more than its share. Returns the
        weights ``s_v <K_v, K> / <K, K>`` (n, n_inputs), which sum to 1."""
        share, positions = self.input_weights(x, y)
        starts = self._warped.starts
        coeffs = self._coefficients(share, positions)
        projected = coeffs @ self._gram
        total = np.einsum("ij,ij->i", coeffs, projected)
        out = np.empty_like(share)
        for v in range(len(self.inputs)):
            block = slice(starts[v], starts[v + 1])
            out[:, v] = np.einsum("ij,ij->i", coeffs[:, block], projected[:, block]) / total
        return out, positions

    def kept_light(self, positions: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Per input, at its sensor positions (from :meth:`input_weights`), the light of its
        own kernel (the calexp's PSF flux) that the coadd kernel's circle keeps: array
        (n, n_inputs), 1 for a PSF that ends inside the circle, less where its wings reach
        the corners of the input's box."""
        warped = self._warped
        out = np.empty((len(positions[0][0]), len(positions)))
        for v, (cx, cy) in enumerate(positions):
            _, inside, scale, terms = self._input_kernels(v, cx, cy)
            # a warped pixel holds |det J| input pixels' light
            area = warped.areas[v] * (1.0 + scale) ** 2
            out[:, v] = inside * area / (terms @ warped.box_sums[v])
        return out

    # --- FITS -------------------------------------------------------------------------------

    def to_hdus(self) -> list[fits.ImageHDU | fits.BinTableHDU]:
        """The model as two HDUs: ``PSF`` (the inputs' basis images, stacked; PSFTYPE
        ``coadd``) and ``PSFCOMP`` (a row per input: its spatial model, size, weight, visit and
        WCS header). The coadd's own WCS is the exposure's."""
        basis = np.concatenate([inp.psf.basis for inp in self.inputs]).astype(np.float64)
        image = fits.ImageHDU(basis, name="PSF")
        image.header["PSFTYPE"] = ("coadd", "weighted mean of warped input PSFs")
        image.header["NINPUTS"] = (len(self.inputs), "coadded calexps (rows of PSFCOMP)")
        image.header["PSFNX"], image.header["PSFNY"] = self.shape[1], self.shape[0]
        wcs_headers = [inp.wcs.to_header(relax=True).tostring() for inp in self.inputs]
        psfs = [inp.psf for inp in self.inputs]
        columns = [
            fits.Column("NTERMS", "J", array=[len(p.basis) for p in psfs]),
            fits.Column("DEGREE", "J", array=[p.degree for p in psfs]),
            fits.Column("RADIAL", "L", array=[p.radial for p in psfs]),
            fits.Column("X0", "D", array=[p.x0 for p in psfs]),
            fits.Column("Y0", "D", array=[p.y0 for p in psfs]),
            fits.Column("SCALE", "D", array=[p.scale for p in psfs]),
            fits.Column("HEIGHT", "J", array=[inp.shape[0] for inp in self.inputs]),
            fits.Column("WIDTH", "J", array=[inp.shape[1] for inp in self.inputs]),
            fits.Column("WEIGHT", "D", array=[inp.weight for inp in self.inputs]),
            fits.Column("VISIT", "K", array=[inp.visit for inp in self.inputs]),
            fits.Column("MODES", "A64", array=[",".join(p.modes) for p in psfs]),
            fits.Column("WCSHDR", f"A{max(len(s) for s in wcs_headers)}", array=wcs_headers),
        ]
        return [image, fits.BinTableHDU.from_columns(columns, name="PSFCOMP")]

    @classmethod
    def from_hdulist(cls, hdul: fits.HDUList, wcs: WCS) -> CoaddPSF:
        """The model written by :meth:`to_hdus`, for the coadd whose WCS is ``wcs``."""
        header = hdul["PSF"].header
        basis = np.asarray(hdul["PSF"].data, dtype=float)
        if "PSFCOMP" not in hdul:
            raise ValueError("a coadd PSF HDU without its PSFCOMP table (the inputs)")
        rows = hdul["PSFCOMP"].data
        if len(rows) != header["NINPUTS"] or int(np.sum(rows["NTERMS"])) != len(basis):
            raise ValueError(
                f"PSFCOMP has {len(rows)} inputs of {int(np.sum(rows['NTERMS']))} basis images; "
                f"the PSF HDU holds {header['NINPUTS']} inputs and {len(basis)} images"
            )
        inputs, start = [], 0
        for row in rows:
            n_terms = int(row["NTERMS"])
            modes = str(row["MODES"]).strip()
            psf = PixelPSF(
                basis[start : start + n_terms],
                int(row["DEGREE"]),
                float(row["X0"]),
                float(row["Y0"]),
                float(row["SCALE"]),
                bool(row["RADIAL"]),
                tuple(modes.split(",")) if modes else (),
            )
            start += n_terms
            input_wcs = WCS(fits.Header.fromstring(str(row["WCSHDR"])), relax=True)
            shape = (int(row["HEIGHT"]), int(row["WIDTH"]))
            # files written before inputs carried their visit read as visit 0
            visit = int(row["VISIT"]) if "VISIT" in rows.names else 0
            inputs.append(CoaddInput(psf, input_wcs, shape, float(row["WEIGHT"]), visit))
        return cls(tuple(inputs), wcs, (int(header["PSFNY"]), int(header["PSFNX"])))
