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
    def _warped(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The inputs' warped basis images stacked (n_terms_total, size^2), each term's sum,
        and the first row of each input's block (n_inputs + 1)."""
        blocks, starts = [], [0]
        for inp in self.inputs:
            h, w = inp.shape
            ra, dec = inp.wcs.all_pix2world([0.5 * (w - 1)], [0.5 * (h - 1)], 0)
            px, py = self.wcs.all_world2pix(ra, dec, 0)
            jac = patch_jacobian(self.wcs, inp.wcs, float(px[0]), float(py[0]))
            blocks.append(warp_kernel(inp.psf.basis, jac).reshape(len(inp.psf.basis), -1))
            starts.append(starts[-1] + len(inp.psf.basis))
        basis = np.concatenate(blocks)
        return basis, basis.sum(axis=1), np.array(starts)

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

    def kernels(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Centred kernels (n, size, size), unit sum, for sources at patch positions (x, y)."""
        basis, sums, starts = self._warped
        share, positions = self.input_weights(x, y)
        coeffs = np.zeros((len(share), len(basis)))
        for v, (inp, (cx, cy)) in enumerate(zip(self.inputs, positions, strict=True)):
            psf = inp.psf
            terms = spatial_terms(
                (cx - psf.x0) / psf.scale, (cy - psf.y0) / psf.scale, psf.degree, psf.radial
            )
            block = slice(starts[v], starts[v + 1])
            # each input's warped kernel normalised to unit sum (its warp carries the flux),
            # weighted by its share
            coeffs[:, block] = terms * (share[:, v] / (terms @ sums[block]))[:, None]
        k = (coeffs @ basis).reshape(len(share), self.size, self.size)
        return k / k.sum(axis=(1, 2), keepdims=True)

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
