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
the Jacobian at the input's centre: over a sensor the Jacobian of a distorted calexp changes
by a few tenths of a percent in area and hundredths of a degree in rotation, far less than
the PSF itself varies. A kernel is then a matrix product of the inputs' spatial terms with
their warped bases.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from twinkles.geometry import spatial_terms
from twinkles.image.psf import KernelPSF, PixelPSF

__all__ = ["CoaddInput", "CoaddPSF", "patch_jacobian", "warp_kernel"]


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
    ra, dec = patch_wcs.all_pix2world([x + 0.5, x - 0.5, x, x], [y, y, y + 0.5, y - 0.5], 0)
    cx, cy = input_wcs.all_world2pix(ra, dec, 0)
    return np.array([[cy[2] - cy[3], cy[0] - cy[1]], [cx[2] - cx[3], cx[0] - cx[1]]])


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
    def _warped(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The inputs' basis images warped and cut to the kernel's inscribed circle, stacked
        (n_terms_total, size^2); each term's sum there; the same in the input's flux units
        (times the pixel-area ratio) and each term's sum over the input's own box, whose
        ratio is the light of the input's kernel that the circle keeps; and the first row of
        each input's block (n_inputs + 1)."""
        yy, xx = np.mgrid[0 : self.size, 0 : self.size] - self.half
        circle = np.hypot(xx, yy) <= self.half
        blocks, starts, areas = [], [0], []
        for inp in self.inputs:
            h, w = inp.shape
            ra, dec = inp.wcs.all_pix2world([0.5 * (w - 1)], [0.5 * (h - 1)], 0)
            px, py = self.wcs.all_world2pix(ra, dec, 0)
            jac = patch_jacobian(self.wcs, inp.wcs, float(px[0]), float(py[0]))
            warped = warp_kernel(inp.psf.basis, jac) * circle
            blocks.append(warped.reshape(len(inp.psf.basis), -1))
            areas.append(np.full(len(inp.psf.basis), abs(np.linalg.det(jac))))
            starts.append(starts[-1] + len(inp.psf.basis))
        basis = np.concatenate(blocks)
        sums = basis.sum(axis=1)
        box_sums = np.concatenate([inp.psf.basis.sum(axis=(1, 2)) for inp in self.inputs])
        return basis, sums, sums * np.concatenate(areas), box_sums, np.array(starts)

    def _terms(self, v: int, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
        """Input ``v``'s PSF model's spatial terms at positions on its sensor."""
        psf = self.inputs[v].psf
        return spatial_terms(
            (cx - psf.x0) / psf.scale, (cy - psf.y0) / psf.scale, psf.degree, psf.radial
        )

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

    def _coefficients(
        self, share: np.ndarray, positions: list[tuple[np.ndarray, np.ndarray]]
    ) -> np.ndarray:
        """Coefficients (n, n_terms_total) of the warped bases: each input's kernel at its
        position, of unit sum (its warp carries the flux), times its share."""
        _, sums, _, _, starts = self._warped
        coeffs = np.zeros((len(share), starts[-1]))
        for v, (cx, cy) in enumerate(positions):
            terms = self._terms(v, cx, cy)
            block = slice(starts[v], starts[v + 1])
            coeffs[:, block] = terms * (share[:, v] / (terms @ sums[block]))[:, None]
        return coeffs

    def kernels(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Centred kernels (n, size, size), unit sum, for sources at patch positions (x, y)."""
        basis = self._warped[0]
        share, positions = self.input_weights(x, y)
        k = (self._coefficients(share, positions) @ basis).reshape(len(share), self.size, self.size)
        return k / k.sum(axis=(1, 2), keepdims=True)

    @cached_property
    def _gram(self) -> np.ndarray:
        """Inner products of the warped bases (n_terms_total, n_terms_total)."""
        basis = self._warped[0]
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
        _, _, _, _, starts = self._warped
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
        _, _, light, box_sums, starts = self._warped
        out = np.empty((len(positions[0][0]), len(positions)))
        for v, (cx, cy) in enumerate(positions):
            terms = self._terms(v, cx, cy)
            block = slice(starts[v], starts[v + 1])
            out[:, v] = (terms @ light[block]) / (terms @ box_sums[block])
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
