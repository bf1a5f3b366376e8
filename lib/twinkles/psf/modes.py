"""A PSF whose variation over the sensor is a few deformations of one kernel.

A pixel PSF whose every pixel is its own polynomial of the position
(:class:`~twinkles.image.psf.PixelPSF`) spends ``n_terms x size^2`` numbers on the variation;
a few dozen faint stars do not constrain that, and cross-validation falls back to a constant
kernel where the variation is real, leaving PSF fluxes to ramp with the PSF's change across
the sensor. What changes over a real sensor is mostly the PSF's width (focus and seeing over
the field) and its ellipticity (astigmatism, guiding): deformations of one kernel. Here the
kernel at ``(X, Y)`` is

    ``K(X, Y) = K0 + sum_a t_a(X, Y) sum_j c_aj M_j``

with ``K0`` the mean kernel, ``M_j`` the first-order changes of ``K0`` under a dilation
(``width``) and the two shears (``e1``, ``e2``), and ``t_a`` the spatial terms
(:func:`~twinkles.geometry.spatial_terms` but the constant): a gradient and a radial term
cost two and one numbers per mode, which a few dozen stars constrain. The result is an
ordinary :class:`~twinkles.image.psf.PixelPSF` (basis ``[K0, sum_j c_1j M_j, ...]``), so
everything that reads a PSF model reads it unchanged. The approach is that of PSF models
built on a few principal or physical components (Jarvis & Jain 2004, arXiv:astro-ph/0412234;
the optical terms of PIFF, Jarvis et al. 2021, MNRAS 501, 1282). The deformations are first
order, so a strong change of width is better followed by per-pixel polynomials where the
stars constrain them (:class:`~twinkles.psf.determine.PsfTask` tries these first).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["MODES", "ModeFit", "deformation_modes"]

#: The deformations a mode model may use, and the linear map of the coordinates each applies.
MODES: dict[str, np.ndarray] = {
    "width": np.array([[1.0, 0.0], [0.0, 1.0]]),
    "e1": np.array([[1.0, 0.0], [0.0, -1.0]]),
    "e2": np.array([[0.0, 1.0], [1.0, 0.0]]),
}

_STEP = 0.02  # fractional deformation of the finite difference (the spline is exact to it)


def deformation_modes(kernel: np.ndarray, modes: tuple[str, ...]) -> np.ndarray:
    """First-order changes of a centred kernel under small deformations of its coordinates.

    For a linear map ``A = 1 + e G`` of the coordinates, ``K_e(r) = K(A^-1 r) / det A``; the
    mode is ``dK_e / de`` at ``e = 0``, a symmetric finite difference of cubic-spline
    resamplings of ``kernel``. Each mode has its projection on ``kernel`` removed from its sum
    (so a model built on them keeps unit sum) and unit norm.

    Parameters
    ----------
    kernel : ndarray (size, size)
        Centred at pixel (size // 2, size // 2), unit sum.
    modes : tuple of str
        Names in :data:`MODES`.

    Returns
    -------
    ndarray (len(modes), size, size)
    """
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ValueError(f"modes: {unknown} not among {sorted(MODES)}")
    size = kernel.shape[-1]
    half = size // 2
    yy, xx = np.mgrid[0:size, 0:size] - half
    coords = np.stack([xx.ravel(), yy.ravel()]).astype(float)
    spline = ndimage.spline_filter(kernel, order=3, mode="constant")
    out = np.empty((len(modes), size, size))
    for k, name in enumerate(modes):
        generator = MODES[name]
        sides = []
        for e in (_STEP, -_STEP):
            A = np.eye(2) + e * generator
            x, y = np.linalg.solve(A, coords)
            resampled = ndimage.map_coordinates(
                spline, [y + half, x + half], order=3, mode="constant", prefilter=False
            )
            sides.append(resampled.reshape(size, size) / np.linalg.det(A))
        mode = (sides[0] - sides[1]) / (2 * _STEP)
        mode -= mode.sum() * kernel / kernel.sum()
        out[k] = mode / np.sqrt(np.sum(mode**2))
    return out


class ModeFit:
    """Weighted least-squares fits of the mode model to stars' stamps.

    The spatial terms are centred on the stars' weighted mean first, so the mean kernel and
    the modes' coefficients separate: ``K0`` is the stars' weighted mean stamp and the
    coefficients a small linear system (``(n_terms - 1) x n_modes`` unknowns), solved with
    the modes held fixed (:meth:`fit`) so that it also fits corrections of a forward model.

    Parameters
    ----------
    terms : ndarray (n_stars, n_terms)
        The stars' spatial terms, the first the constant.
    weight : ndarray (n_stars,)
        Each star's weight (its stamp's residuals count with ``weight^2``).
    modes : ndarray (n_modes, size, size)
        From :func:`deformation_modes`.
    """

    def __init__(self, terms: np.ndarray, weight: np.ndarray, modes: np.ndarray):
        if not np.allclose(terms[:, 0], 1.0):
            raise ValueError("terms: the first column must be the constant")
        self.modes = modes.reshape(len(modes), -1)
        w2 = np.asarray(weight, dtype=float) ** 2
        self.w2 = w2 / w2.sum()
        self.mean_terms = self.w2 @ terms[:, 1:]
        self.centred = terms[:, 1:] - self.mean_terms
        n_terms, n_modes = self.centred.shape[1], len(self.modes)
        gram = self.modes @ self.modes.T
        spatial = (self.centred * self.w2[:, None]).T @ self.centred
        self.normal = np.kron(spatial, gram).reshape(n_terms, n_modes, n_terms, n_modes)
        self.n_terms, self.n_modes = n_terms, n_modes

    def fit(self, images: np.ndarray) -> np.ndarray:
        """The basis ``(n_terms, size, size)`` of the model fitting ``images`` (n, size, size)."""
        n, size = len(images), images.shape[-1]
        flat = images.reshape(n, -1)
        mean = self.w2 @ flat
        if self.n_terms == 0:
            return mean.reshape(1, size, size)
        projected = (flat - mean) @ self.modes.T  # (n, n_modes)
        rhs = (self.centred * self.w2[:, None]).T @ projected  # (n_terms, n_modes)
        size_c = self.n_terms * self.n_modes
        coeffs = np.linalg.lstsq(self.normal.reshape(size_c, size_c), rhs.ravel(), rcond=None)[
            0
        ].reshape(self.n_terms, self.n_modes)
        variation = coeffs @ self.modes  # (n_terms, size^2)
        constant = mean - self.mean_terms @ variation
        return np.concatenate([constant[None], variation]).reshape(-1, size, size)
