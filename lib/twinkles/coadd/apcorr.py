"""The aperture correction of PSF fluxes on a coadd, from its visits' (as LSST's
``CoaddApCorrMap``, Bosch et al. 2018, PASJ 70, S5, section 3.3).

A visit's PSF kernel holds the light inside its 25 pixels, a fraction ``1 / a_v`` of a star's
total, ``a_v`` being the visit's aperture correction at the star's place on its sensor
(:class:`~twinkles.measurement.apcorr.ApertureCorrectionMap`), which changes over the sensor
with the PSF's width. On the coadd a star of total flux ``F`` is the weighted mean of its
warped images, ``F sum_v s_v P_v``, ``s_v`` being each visit's share there
(:meth:`~twinkles.image.coadd_psf.CoaddPSF.input_weights`). The coadd's kernel keeps the
light inside a circle (:mod:`twinkles.image.coadd_psf`), a fraction ``k_v`` of the visit's
kernel light (:meth:`~twinkles.image.coadd_psf.CoaddPSF.kept_light`), so inside it the star
is ``F sum_v s_v k_v K_v / a_v``, and a fit of the coadd's kernel returns
``F sum_v g_v k_v / a_v``, ``g_v`` being the visit's share of the fit
(:meth:`~twinkles.image.coadd_psf.CoaddPSF.fit_shares`: a sharp visit's kernel counts for
more than its share of the pixels). The coadd's correction at that position is the inverse,
a harmonic mean of the visits' corrections, each at its own sensor position, which changes
over the patch with the visits' PSFs and their edges.

Each visit's PSF fluxes also carry a fractional per-source systematic ``e_v`` beyond their
photon noise (its PSF model's and its correction's error over the sensor,
:attr:`~twinkles.measurement.apcorr.ApertureCorrectionResult.flux_systematic`), independent
from visit to visit. The coadd's fit returns the visits' fluxes with the shares ``g_v``, so
its PSF fluxes carry ``sqrt(sum_v g_v^2 e_v^2)``
(:meth:`CoaddApertureCorrection.flux_systematic`): less than one visit's where several overlap,
and for the brightest stars as large as the coadd's photon noise.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from twinkles.errors import TwinklesError
from twinkles.image.coadd_psf import CoaddPSF

__all__ = ["CoaddApertureCorrection", "CoaddApertureCorrectionError"]

#: A visit's aperture correction at its own sensor positions (x, y), 0-based pixels.
SensorCorrection = Callable[[np.ndarray, np.ndarray], np.ndarray]


class CoaddApertureCorrectionError(TwinklesError):
    """A coadded visit has no aperture correction."""


@dataclass(frozen=True, eq=False)
class CoaddApertureCorrection:
    """The correction of PSF fluxes on a coadd at any patch position.

    Attributes
    ----------
    psf : CoaddPSF
        The coadd's PSF, whose inputs say which visits cover a position and with what weight.
    corrections : tuple of callable
        Each input's aperture correction at positions on its own sensor, in the order of
        ``psf.inputs``.
    """

    psf: CoaddPSF
    corrections: tuple[SensorCorrection, ...]
    systematics: tuple[float, ...] | None = None
    """Each input's fractional per-source systematic of PSF fluxes, in the order of
    ``psf.inputs`` (None: not known, taken as 0)."""

    def __post_init__(self) -> None:
        if len(self.corrections) != len(self.psf.inputs):
            raise ValueError(
                f"{len(self.corrections)} aperture corrections for the coadd PSF's "
                f"{len(self.psf.inputs)} inputs"
            )
        if self.systematics is not None and len(self.systematics) != len(self.psf.inputs):
            raise ValueError(
                f"{len(self.systematics)} flux systematics for the coadd PSF's "
                f"{len(self.psf.inputs)} inputs"
            )

    @classmethod
    def from_visits(
        cls,
        psf: CoaddPSF,
        corrections: Mapping[int, SensorCorrection],
        systematics: Mapping[int, float] | None = None,
    ) -> CoaddApertureCorrection:
        """The coadd's correction from its visits' (by visit: each input's ``visit``), and
        with ``systematics`` (by visit: the visit summary's ``psf_flux_systematic``) the
        per-source systematic its PSF fluxes inherit."""
        visits = {inp.visit for inp in psf.inputs}
        for what, given in (("aperture correction", corrections), ("flux systematic", systematics)):
            missing = sorted(visits - set(given)) if given is not None else []
            if missing:
                hint = " (a coadd written before its inputs carried their visit: rerun make_coadd)"
                raise CoaddApertureCorrectionError(
                    f"no {what} for the coadded visit(s) {missing}"
                    + (hint if missing == [0] else "")
                )
        return cls(
            psf,
            tuple(corrections[inp.visit] for inp in psf.inputs),
            tuple(float(systematics[inp.visit]) for inp in psf.inputs)
            if systematics is not None
            else None,
        )

    def flux_systematic(self, x: np.ndarray, y: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """The fractional per-source systematic of coadd PSF fluxes at patch positions (x, y):
        ``sqrt(sum_v g_v^2 e_v^2)`` over the visits covering each position, ``g_v`` their
        shares of the fit (:meth:`~twinkles.image.coadd_psf.CoaddPSF.fit_shares`); 0 where
        the inputs' systematics are not known."""
        x, y = np.atleast_1d(x).astype(float), np.atleast_1d(y).astype(float)
        if self.systematics is None:
            return np.zeros(len(x))
        e2 = np.square(np.asarray(self.systematics, dtype=float))
        out = np.empty(len(x))
        for start in range(0, len(x), chunk):
            part = slice(start, start + chunk)
            fit_share, _ = self.psf.fit_shares(x[part], y[part])
            out[part] = np.sqrt(np.square(fit_share) @ e2)
        return out

    def __call__(self, x: np.ndarray, y: np.ndarray, chunk: int = 4096) -> np.ndarray:
        """The multiplicative correction of coadd PSF fluxes at patch positions (x, y);
        ``chunk`` positions at a time bound the memory (chunk x the inputs' basis terms)."""
        x, y = np.atleast_1d(x).astype(float), np.atleast_1d(y).astype(float)
        out = np.empty(len(x))
        for start in range(0, len(x), chunk):
            part = slice(start, start + chunk)
            out[part] = self._correction(x[part], y[part])
        return out

    def _correction(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        fit_share, positions = self.psf.fit_shares(x, y)
        kept = self.psf.kept_light(positions)
        inverse = np.zeros(len(x))
        for v, (correction, (cx, cy)) in enumerate(zip(self.corrections, positions, strict=True)):
            covered = fit_share[:, v] != 0
            if covered.any():
                a = np.asarray(correction(cx[covered], cy[covered]), dtype=float)
                inverse[covered] += fit_share[covered, v] * kept[covered, v] / a
        return 1.0 / inverse
