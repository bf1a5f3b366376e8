"""The position error of a source-reference match, modelled from the matches themselves.

A match's offset from the fitted WCS is the centroid's error and the reference position's.
The centroid error of a PSF-like image is proportional to its width over its signal-to-noise
ratio (King 1983, PASP 95, 163), so per coordinate

    sigma^2 = snr_term / SNR^2 + floor + sigma_ref^2,

where ``floor`` takes what does not shrink with the signal (the reference catalog's error
where the catalog does not state it, the PSF model's and the pixels' limits) and
``sigma_ref`` is the catalog's own ``coord_err`` where it has one. ``snr_term`` and ``floor``
are fitted to the matches' squared offsets by non-negative least squares. The model weights
the WCS fit and its cross-validation: without it, the faintest centroids, whose offsets are
many times the bright stars', dominate both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

__all__ = ["PositionErrorModel"]


@dataclass(frozen=True)
class PositionErrorModel:
    """Per-coordinate variance (mas^2) of a match's offset, as a function of its S/N."""

    snr_term: float
    """Coefficient of 1 / SNR^2 (mas^2)."""
    floor: float
    """Variance that does not depend on the signal (mas^2)."""
    minimum: float
    """Smallest variance a match is given (mas^2): bounds the brightest stars' weights."""

    @classmethod
    def fit(
        cls,
        offset_sq: np.ndarray,
        snr: np.ndarray,
        reference_var: np.ndarray,
        minimum: float,
    ) -> PositionErrorModel:
        """Fit the model to matches' offsets.

        Parameters
        ----------
        offset_sq : array
            Squared offset per coordinate (mas^2): ``(dra^2 + ddec^2) / 2``.
        snr : array
            The sources' PSF-flux signal-to-noise ratios (> 0).
        reference_var : array
            The reference positions' own variance per coordinate (mas^2); 0 where unknown.
        minimum : float
            Smallest variance returned by :meth:`variance` (mas^2, > 0).

        Returns
        -------
        PositionErrorModel
        """
        offset_sq, snr = np.asarray(offset_sq, float), np.asarray(snr, float)
        reference_var = np.asarray(reference_var, float)
        if not (len(offset_sq) == len(snr) == len(reference_var)):
            raise ValueError(
                "PositionErrorModel.fit: offset_sq, snr and reference_var differ in length "
                f"({len(offset_sq)}, {len(snr)}, {len(reference_var)})"
            )
        if minimum <= 0 or np.any(~(snr > 0)):
            raise ValueError("PositionErrorModel.fit: minimum and every snr must be > 0")
        design = np.column_stack([1.0 / snr**2, np.ones(len(snr))])
        (snr_term, floor), _ = nnls(design, offset_sq - reference_var)
        return cls(float(snr_term), float(floor), float(minimum))

    def variance(self, snr: np.ndarray, reference_var: np.ndarray) -> np.ndarray:
        """Variance per coordinate (mas^2) of matches of S/N ``snr`` whose reference
        positions have ``reference_var`` (mas^2)."""
        snr = np.asarray(snr, float)
        modelled = self.snr_term / snr**2 + self.floor + np.asarray(reference_var, float)
        return np.maximum(modelled, self.minimum)
