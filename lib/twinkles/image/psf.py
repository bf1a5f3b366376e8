"""The PSF model an exposure carries: pixelized, varying smoothly over the sensor (after PSFEx).

It lives beside the :class:`~twinkles.image.exposure.Exposure` that stores it (as LSST's
``afw`` holds the ``Psf``); :mod:`twinkles.psf` measures it.

The model is a ``size x size`` kernel (25 pixels, as Twinkles, so it can be PSF-matched later)
whose every pixel is a polynomial of degree ``degree`` in the normalised sensor position
``(X, Y) = ((x - x0) / scale, (y - y0) / scale)``: ``K(x, y) = sum_k c_k(X, Y) B_k`` with basis
images ``B_k`` (Bertin 2011, ASP Conf. Ser. 442, 435). The kernel is the PSF as sampled by the
pixels (pixel response included) for a source centred on a pixel centre; for a source at a
fractional position it is shifted by band-limited interpolation
(:func:`~twinkles.image.shift.shift_stamps`). Every evaluated kernel is
normalised to unit sum, so PSF fluxes are fluxes inside the kernel (aperture correction brings
them to total).

What every model gives from its kernels (stamps at fractional positions, rendering, n_eff,
widths) is :class:`KernelPSF`'s; a coadd's PSF (:mod:`twinkles.image.coadd_psf`) is the other
kind; an exposure's file holds either (:meth:`~twinkles.image.exposure.Exposure.read_fits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from astropy.io import fits

from twinkles.geometry import spatial_terms
from twinkles.image.shift import shift_stamps
from twinkles.units import NEFF_PER_FWHM2

__all__ = ["KernelPSF", "PixelPSF"]


class KernelPSF:
    """What every PSF model gives from its kernels: subclasses provide ``size`` (odd), a
    reference position ``x0``, ``y0`` and ``kernels(x, y)``, centred kernels of unit sum
    (n, size, size) for sources at pixel positions (x, y)."""

    size: int
    x0: float
    y0: float

    def kernels(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Centred kernels (n, size, size), unit sum, for sources at pixel positions (x, y)."""
        raise NotImplementedError

    @property
    def half(self) -> int:
        """Pixels from the kernel's centre to its edge."""
        return self.size // 2

    def kernel(self, x: float, y: float) -> np.ndarray:
        """Centred kernel (size, size) at pixel position (x, y)."""
        return self.kernels(np.array([x]), np.array([y]))[0]

    def images(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """PSF images on the pixel grid for sources at (x, y).

        Returns the stamps (n, size, size), each with unit sum, and the integer pixel
        (ix, iy) of each stamp's centre: stamp pixel (half, half) is image pixel (iy, ix).
        """
        x, y = np.atleast_1d(x).astype(float), np.atleast_1d(y).astype(float)
        ix, iy = np.rint(x).astype(int), np.rint(y).astype(int)
        dx, dy = x - ix, y - iy
        stamps = self.kernels(x, y)
        # a stamp centred on a pixel is the kernel itself (a grid of blank-sky positions)
        moved = (dx != 0) | (dy != 0)
        if moved.any():
            stamps[moved] = shift_stamps(stamps[moved], dx[moved], dy[moved])
        stamps /= stamps.sum(axis=(1, 2), keepdims=True)
        return stamps, ix, iy

    def render(
        self, shape: tuple[int, int], x: np.ndarray, y: np.ndarray, flux: np.ndarray
    ) -> np.ndarray:
        """A noise-free image (float64, ``shape``) of point sources of ``flux`` at (x, y).

        Each source is its :meth:`images` stamp times its flux; the parts of stamps beyond the
        image are dropped, so a source just off the edge still puts its wings on the image.
        """
        h, w = shape
        out = np.zeros((h, w))
        x, y = np.atleast_1d(x).astype(float), np.atleast_1d(y).astype(float)
        flux = np.broadcast_to(np.asarray(flux, dtype=float), x.shape)
        half = self.half
        near = (x > -half - 1) & (x < w + half) & (y > -half - 1) & (y < h + half)
        if not near.any():
            return out
        stamps, ix, iy = self.images(x[near], y[near])
        offsets = np.arange(-half, half + 1)
        rows = iy[:, None, None] + offsets[None, :, None]
        cols = ix[:, None, None] + offsets[None, None, :]
        rows, cols = np.broadcast_arrays(rows, cols)
        values = stamps * flux[near][:, None, None]
        inside = (rows >= 0) & (rows < h) & (cols >= 0) & (cols < w)
        np.add.at(out, (rows[inside], cols[inside]), values[inside])
        return out

    # --- summaries ------------------------------------------------------------------------------

    def neff(self, x: float, y: float, phases: int = 4) -> float:
        """Effective number of pixels, averaged over sub-pixel centrings (as FWHMeff is)."""
        frac = (np.arange(phases) + 0.5) / phases - 0.5
        fx, fy = np.meshgrid(frac, frac)
        n = fx.size
        stamps, _, _ = self.images(np.full(n, x) + fx.ravel(), np.full(n, y) + fy.ravel())
        return float(1.0 / np.mean(np.sum(stamps**2, axis=(1, 2))))

    def fwhm_eff(self, x: float, y: float) -> float:
        """FWHMeff (pixels): the Gaussian FWHM with the same n_eff."""
        return float(np.sqrt(self.neff(x, y) / NEFF_PER_FWHM2))

    def fwhm(self, x: float, y: float) -> float:
        """Half-maximum width (pixels) of the kernel's azimuthal average (pixel included)."""
        k = self.kernel(x, y)
        yy, xx = np.mgrid[0 : self.size, 0 : self.size] - self.half
        r = np.hypot(xx, yy).ravel()
        v = k.ravel()
        rings = np.rint(r * 2.0).astype(int)  # 0.5-pixel rings
        counts = np.bincount(rings)
        used = counts > 0
        radius = (np.bincount(rings, r) / np.maximum(counts, 1))[used]
        profile = (np.bincount(rings, v) / np.maximum(counts, 1))[used]
        below = np.flatnonzero(profile < 0.5 * profile[0])
        if len(below) == 0 or below[0] == 0:
            return float("nan")
        j = below[0]
        half = np.interp(0.5 * profile[0], [profile[j], profile[j - 1]], [radius[j], radius[j - 1]])
        return float(2.0 * half)

    @cached_property
    def moments(self) -> tuple[float, float, float]:
        """Second moments (Ixx, Iyy, Ixy; pixels^2) of the kernel at the normalisation centre."""
        k = self.kernel(self.x0, self.y0)
        yy, xx = np.mgrid[0 : self.size, 0 : self.size] - self.half
        return (
            float(np.sum(k * xx * xx)),
            float(np.sum(k * yy * yy)),
            float(np.sum(k * xx * yy)),
        )


@dataclass(frozen=True)
class PixelPSF(KernelPSF):
    """The model: basis images and how positions are normalised.

    Attributes
    ----------
    basis : ndarray, shape (n_terms, size, size)
        Basis images; the kernel at (X, Y) is ``polynomial_terms(X, Y) @ basis``.
    degree : int
        Polynomial degree of the spatial variation.
    x0, y0, scale : float
        Normalisation of pixel positions.
    radial : bool
        Whether a radial term ``X^2 + Y^2`` follows the polynomial's (:func:`spatial_terms`).
    modes : tuple of str
        For a mode model (:mod:`twinkles.psf.modes`), the deformations of the mean kernel
        its variation is made of; empty for per-pixel polynomials.
    """

    basis: np.ndarray
    degree: int
    x0: float
    y0: float
    scale: float
    radial: bool = False
    modes: tuple[str, ...] = ()

    @property
    def size(self) -> int:
        """Side of the kernel image in pixels (odd)."""
        return self.basis.shape[-1]

    def _normalised(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return (np.asarray(x) - self.x0) / self.scale, (np.asarray(y) - self.y0) / self.scale

    def terms(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """The spatial terms (n, n_terms) at pixel positions (x, y): a kernel is
        ``terms @ basis``, before normalising."""
        return spatial_terms(*self._normalised(x, y), self.degree, self.radial)

    def kernels(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Centred kernels (n, size, size), unit sum, for sources at pixel positions (x, y)."""
        k = np.tensordot(self.terms(x, y), self.basis, axes=(1, 0))
        return k / k.sum(axis=(1, 2), keepdims=True)

    # --- FITS -------------------------------------------------------------------------------

    def to_hdu(self) -> fits.ImageHDU:
        """The model as a FITS image HDU named PSF: the basis images and, in the header, the spatial
        model.
        """
        hdu = fits.ImageHDU(self.basis.astype(np.float64), name="PSF")
        hdu.header["PSFTYPE"] = ("pixel", "pixelized, polynomial spatial variation")
        hdu.header["PSFDEG"] = (self.degree, "polynomial degree")
        hdu.header["PSFRAD"] = (self.radial, "radial term X^2 + Y^2")
        hdu.header["PSFMODES"] = (",".join(self.modes), "deformations varied (empty: per pixel)")
        hdu.header["PSFX0"], hdu.header["PSFY0"] = self.x0, self.y0
        hdu.header["PSFSCAL"] = (self.scale, "position normalisation (pixels)")
        return hdu

    def to_hdus(self) -> list[fits.ImageHDU]:
        """The HDUs an exposure's file holds the model in: :meth:`to_hdu`'s."""
        return [self.to_hdu()]

    @classmethod
    def from_hdu(cls, hdu: fits.ImageHDU) -> PixelPSF:
        """The model written by `to_hdu`."""
        h = hdu.header
        return cls(
            basis=np.asarray(hdu.data, dtype=np.float64),
            degree=int(h["PSFDEG"]),
            radial=bool(h.get("PSFRAD", False)),
            modes=tuple(m for m in str(h.get("PSFMODES", "")).split(",") if m),
            x0=float(h["PSFX0"]),
            y0=float(h["PSFY0"]),
            scale=float(h["PSFSCAL"]),
        )
