"""The point-spread function the simulation draws with.

OpSim's ``FWHMeff`` is defined through the PSF's effective number of pixels,
``n_eff = 1 / sum(p_i^2) = 2.266 (FWHMeff / pixel_scale)^2`` (the number that sets the
background-limited depth; Ivezic et al. 2019, LSST overview, eq. 6). A Moffat or Kolmogorov
profile with the same half-maximum width has a larger ``n_eff`` than a Gaussian, so the profile
is scaled until its ``n_eff`` (pixel response included, averaged over sub-pixel centring)
equals the visit's FWHMeff. The profile's own half-maximum width is OpSim's ``FWHMgeom``.

The PSF may vary linearly across the sensor in width and ellipticity
(:class:`SimulatedPSF`), as a real focal plane's does.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import galsim
import numpy as np
from scipy.ndimage import uniform_filter

__all__ = [
    "NEFF_PER_FWHM2",
    "SimulatedPSF",
    "make_profile",
    "neff_pixels",
    "profile_fwhm_for_fwhm_eff",
]

#: n_eff of a Gaussian per FWHM^2: 4 pi / (8 ln 2).
NEFF_PER_FWHM2 = np.pi / (2.0 * np.log(2.0))

#: The Moffat is truncated at this many FWHM (a beta = 4.765 Moffat has < 1e-6 of its flux
#: beyond), so a stamp of that radius holds the whole flux. Truncation also lets GalSim
#: tabulate the profile's Fourier transform: galaxies draw 2.5x faster than with the
#: untruncated Moffat, whose transform needs a Bessel function of fractional order per point.
MOFFAT_TRUNCATION_FWHM = 5.0


#: GalSim accuracy settings of every simulated profile; bright, large galaxies need FFTs
#: beyond GalSim's default 8192 limit. Set when a profile is built: changing them later
#: (withGSParams) makes GalSim recompute the profile's tables, ~17 ms per object.
GSPARAMS = galsim.GSParams(maximum_fft_size=16384)


@lru_cache(maxsize=16)
def _unit_profile(profile: str, beta: float) -> galsim.GSObject:
    if profile == "moffat":
        return galsim.Moffat(beta=beta, fwhm=1.0, trunc=MOFFAT_TRUNCATION_FWHM, gsparams=GSPARAMS)
    if profile == "kolmogorov":
        return galsim.Kolmogorov(fwhm=1.0, gsparams=GSPARAMS)
    raise ValueError(f"unknown PSF profile {profile!r}; use 'moffat' or 'kolmogorov'")


def make_profile(profile: str, fwhm: float, beta: float = 4.765) -> galsim.GSObject:
    """Unit-flux PSF profile with half-maximum width ``fwhm`` (in the caller's units).

    Built by dilating one unit-width profile, so GalSim computes the profile's tables
    (Fourier transform, maxk) once, not once per object.
    """
    return _unit_profile(profile, float(beta)).dilate(fwhm)


def neff_pixels(obj: galsim.GSObject, radius: float, oversampling: int = 4) -> float:
    """Effective number of pixels of a profile drawn with unit pixels, pixel response included.

    Equal to ``1 / integral(I^2)`` of the pixel-convolved profile, which is the mean of
    ``1 / sum(p_i^2)`` over random sub-pixel centrings. The profile (in pixel units) is sampled
    in real space out to ``radius`` pixels and boxcar-averaged over one pixel.
    """
    scale = 1.0 / oversampling
    n = 2 * int(np.ceil((radius + 2.0) * oversampling)) + 1
    sampled = obj.withFlux(1.0).drawImage(nx=n, ny=n, scale=scale, method="no_pixel").array
    # flux in a unit pixel centred on each sample point
    in_pixel = uniform_filter(sampled.astype(np.float64), size=oversampling) * oversampling**2
    return float(1.0 / (np.sum(in_pixel**2) * scale**2))


@lru_cache(maxsize=8)
def _neff_table(profile: str, beta: float) -> tuple[np.ndarray, np.ndarray]:
    fwhm_px = np.geomspace(1.0, 16.0, 30)
    # Kolmogorov wings are not truncated: sample far enough out that <0.1% of n_eff is missed
    reach = MOFFAT_TRUNCATION_FWHM if profile == "moffat" else 12.0
    neff = np.array(
        [neff_pixels(make_profile(profile, f, beta), radius=reach * f) for f in fwhm_px]
    )
    return np.log(fwhm_px), np.log(neff)


def profile_fwhm_for_fwhm_eff(
    fwhm_eff: float | np.ndarray, pixel_scale: float, profile: str = "moffat", beta: float = 4.765
) -> float | np.ndarray:
    """Half-maximum width (arcsec) of the profile whose pixelized n_eff matches ``fwhm_eff``.

    Parameters
    ----------
    fwhm_eff : float or array
        OpSim FWHMeff (arcsec).
    pixel_scale : float
        Pixel scale (arcsec/pixel).
    profile : {"moffat", "kolmogorov"}
        PSF profile.
    beta : float
        Moffat index (ignored for Kolmogorov).
    """
    log_fwhm, log_neff = _neff_table(profile, float(beta))
    target = np.log(NEFF_PER_FWHM2 * (np.asarray(fwhm_eff) / pixel_scale) ** 2)
    if np.any(target < log_neff[0]) or np.any(target > log_neff[-1]):
        raise ValueError(
            f"FWHMeff {fwhm_eff} arcsec is outside 1-16 pixels of {pixel_scale} arcsec"
        )
    out = np.exp(np.interp(target, log_neff, log_fwhm)) * pixel_scale
    return float(out) if np.ndim(out) == 0 else out


@dataclass(frozen=True)
class SimulatedPSF:
    """A PSF varying linearly over the sensor.

    Position is given in normalised sensor coordinates ``(X, Y) = (x - xc, y - yc) / R``, with
    ``R`` the half-diagonal, so the sensor corners lie at unit distance from the centre.

    Attributes
    ----------
    profile : str
        ``"moffat"`` or ``"kolmogorov"``.
    fwhm : float
        Half-maximum width at the centre (arcsec).
    beta : float
        Moffat index.
    e1, e2 : float
        Ellipticity (distortion, (a^2-b^2)/(a^2+b^2)) at the centre, in sky (u=east, v=north).
    fwhm_gradient : tuple of float
        Fractional change of the FWHM per unit X and per unit Y.
    e1_gradient, e2_gradient : tuple of float
        Change of e1 and e2 per unit X and per unit Y.
    """

    profile: str
    fwhm: float
    beta: float = 4.765
    e1: float = 0.0
    e2: float = 0.0
    fwhm_gradient: tuple[float, float] = (0.0, 0.0)
    e1_gradient: tuple[float, float] = (0.0, 0.0)
    e2_gradient: tuple[float, float] = (0.0, 0.0)

    @property
    def is_constant(self) -> bool:
        """Whether the PSF is the same everywhere on the sensor."""
        return not any(self.fwhm_gradient + self.e1_gradient + self.e2_gradient)

    def parameters_at(self, X: float, Y: float) -> tuple[float, float, float]:
        """FWHM (arcsec), e1, e2 at normalised position (X, Y)."""
        fwhm = self.fwhm * (1.0 + self.fwhm_gradient[0] * X + self.fwhm_gradient[1] * Y)
        e1 = self.e1 + self.e1_gradient[0] * X + self.e1_gradient[1] * Y
        e2 = self.e2 + self.e2_gradient[0] * X + self.e2_gradient[1] * Y
        return fwhm, e1, e2

    def at(self, X: float, Y: float) -> galsim.GSObject:
        """Unit-flux GalSim profile (sky units, arcsec) at normalised position (X, Y)."""
        fwhm, e1, e2 = self.parameters_at(X, Y)
        obj = make_profile(self.profile, fwhm, self.beta)
        if e1 or e2:
            obj = obj.shear(e1=e1, e2=e2)
        return obj

    def stamp_radius(self, fwhm: float, flux: float = 0.0) -> float:
        """Radius (arcsec) of a stamp that holds the profile's flux.

        The Moffat is truncated, so its truncation radius suffices. The Kolmogorov profile's
        wings fall as r^(-11/3); the radius grows with flux so the flux outside stays below
        ~1 electron per pixel at the stamp edge.
        """
        if self.profile == "moffat":
            return MOFFAT_TRUNCATION_FWHM * fwhm
        return fwhm * max(4.0, 2.5 * (max(flux, 1.0) / 1.0e3) ** (3.0 / 11.0))

    def to_dict(self) -> dict:
        """JSON-able description (stored in the visit's truth)."""
        return {
            "profile": self.profile,
            "fwhm": self.fwhm,
            "beta": self.beta,
            "e1": self.e1,
            "e2": self.e2,
            "fwhm_gradient": list(self.fwhm_gradient),
            "e1_gradient": list(self.e1_gradient),
            "e2_gradient": list(self.e2_gradient),
        }

    @classmethod
    def from_dict(cls, d: dict) -> SimulatedPSF:
        """Inverse of :meth:`to_dict`."""
        return cls(
            profile=d["profile"],
            fwhm=d["fwhm"],
            beta=d["beta"],
            e1=d["e1"],
            e2=d["e2"],
            fwhm_gradient=tuple(d["fwhm_gradient"]),
            e1_gradient=tuple(d["e1_gradient"]),
            e2_gradient=tuple(d["e2_gradient"]),
        )
