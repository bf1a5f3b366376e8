"""The point-spread function the simulation draws with.

OpSim's ``FWHMeff`` is defined through the PSF's effective number of pixels,
``n_eff = 1 / sum(p_i^2) = 2.266 (FWHMeff / pixel_scale)^2`` (the number that sets the
background-limited depth; Ivezic et al. 2019, LSST overview, eq. 6). A Moffat or Kolmogorov
profile with the same half-maximum width has a larger ``n_eff`` than a Gaussian, so the profile
is scaled until its ``n_eff`` (pixel response included, averaged over sub-pixel centring)
equals the visit's FWHMeff. The profile's own half-maximum width is OpSim's ``FWHMgeom``.

Profiles: a Moffat (``beta``), pure Kolmogorov turbulence, Kolmogorov convolved with a
Gaussian optics term (0.4 of the turbulence's width: the optics' share of LSST's PSF budget,
~0.4" of a 0.7-1" PSF; LSST Science Book, 2009, sec. 2.5), and a double Gaussian (10% of the
light in a Gaussian twice as wide, the form LSST's pipelines used for a first PSF).

The PSF varies across the sensor (:class:`SimulatedPSF`) in width, linearly along a
direction or radially (the width growing with the square of the distance from the centre,
as a focal plane's PSF broadens outwards), and in ellipticity, as a real sensor's does: PSF
widths on LSSTCam and HSC sensors change by several to ~15% across the focal plane, and the
ellipticity pattern is smooth across a sensor (Jarvis et al. 2021, MNRAS 501, 1282, for DES;
Mandelbaum et al. 2018, PASJ 70, S25, for HSC).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import galsim
import numpy as np
from scipy.ndimage import uniform_filter

from twinkles.units import NEFF_PER_FWHM2

__all__ = [
    "PROFILES",
    "SimulatedPSF",
    "make_profile",
    "neff_pixels",
    "profile_fwhm_for_fwhm_eff",
    "unit_profile",
]

#: The Moffat is truncated at this many FWHM (a beta = 4.765 Moffat has < 1e-6 of its flux
#: beyond), so a stamp of that radius holds the whole flux. Truncation also lets GalSim
#: tabulate the profile's Fourier transform: galaxies draw 2.5x faster than with the
#: untruncated Moffat, whose transform needs a Bessel function of fractional order per point.
MOFFAT_TRUNCATION_FWHM = 5.0


#: GalSim accuracy settings of every simulated profile; bright, large galaxies need FFTs
#: beyond GalSim's default 8192 limit. Set when a profile is built: changing them later
#: (withGSParams) makes GalSim recompute the profile's tables, ~17 ms per object.
GSPARAMS = galsim.GSParams(maximum_fft_size=16384)


#: The profiles the simulation can draw.
PROFILES = ("moffat", "kolmogorov", "kolmogorov_optics", "double_gaussian")

#: Width of the Gaussian optics term of ``kolmogorov_optics``, in units of the turbulence's.
OPTICS_FWHM_RATIO = 0.4


@lru_cache(maxsize=32)
def unit_profile(profile: str, beta: float = 4.765) -> galsim.GSObject:
    """Unit-flux ``profile`` of unit half-maximum width, built once per (profile, beta)."""
    if profile == "moffat":
        return galsim.Moffat(beta=beta, fwhm=1.0, trunc=MOFFAT_TRUNCATION_FWHM, gsparams=GSPARAMS)
    if profile == "kolmogorov":
        return galsim.Kolmogorov(fwhm=1.0, gsparams=GSPARAMS)
    if profile == "kolmogorov_optics":
        obj = galsim.Convolve(
            galsim.Kolmogorov(fwhm=1.0, gsparams=GSPARAMS),
            galsim.Gaussian(fwhm=OPTICS_FWHM_RATIO, gsparams=GSPARAMS),
        )
    elif profile == "double_gaussian":
        obj = galsim.Add(
            [
                galsim.Gaussian(fwhm=1.0, flux=0.9, gsparams=GSPARAMS),
                galsim.Gaussian(fwhm=2.0, flux=0.1, gsparams=GSPARAMS),
            ]
        )
    else:
        raise ValueError(f"unknown PSF profile {profile!r}; use one of {', '.join(PROFILES)}")
    # a composite's half-maximum width is not its parts': scale it to unit FWHM
    return obj.dilate(1.0 / obj.calculateFWHM())


def make_profile(profile: str, fwhm: float, beta: float = 4.765) -> galsim.GSObject:
    """Unit-flux PSF profile with half-maximum width ``fwhm`` (in the caller's units).

    Built by dilating one unit-width profile, so GalSim computes the profile's tables
    (Fourier transform, maxk) once, not once per object.
    """
    return unit_profile(profile, float(beta)).dilate(fwhm)


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


@lru_cache(maxsize=32)  # a mixed-profile run has a table per (profile, beta)
def _neff_table(profile: str, beta: float) -> tuple[np.ndarray, np.ndarray]:
    fwhm_px = np.geomspace(1.0, 16.0, 30)
    # other profiles are not truncated: sample far enough out that <0.1% of n_eff is missed
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
    profile : str
        PSF profile (one of :data:`PROFILES`).
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
    """A PSF varying over the sensor: linearly, and radially in width.

    Position is given in normalised sensor coordinates ``(X, Y) = (x - xc, y - yc) / R``, with
    ``R`` the half-diagonal, so the sensor corners lie at unit distance from the centre.

    Attributes
    ----------
    profile : str
        One of :data:`PROFILES`.
    fwhm : float
        Half-maximum width at the centre (arcsec).
    beta : float
        Moffat index.
    e1, e2 : float
        Ellipticity (distortion, (a^2-b^2)/(a^2+b^2)) at the centre, in sky (u=east, v=north).
    fwhm_gradient : tuple of float
        Fractional change of the FWHM per unit X and per unit Y.
    fwhm_radial : float
        Fractional change of the FWHM per unit ``X^2 + Y^2`` (centre to corner).
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
    fwhm_radial: float = 0.0

    @property
    def is_constant(self) -> bool:
        """Whether the PSF is the same everywhere on the sensor."""
        return not any(
            (*self.fwhm_gradient, *self.e1_gradient, *self.e2_gradient, self.fwhm_radial)
        )

    def parameters_at(self, X: float, Y: float) -> tuple[float, float, float]:
        """FWHM (arcsec), e1, e2 at normalised position (X, Y)."""
        fwhm = self.fwhm * (
            1.0
            + self.fwhm_gradient[0] * X
            + self.fwhm_gradient[1] * Y
            + self.fwhm_radial * (X * X + Y * Y)
        )
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
        if self.profile == "double_gaussian":  # the wide Gaussian's 7 sigma
            return 6.0 * fwhm
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
            "fwhm_radial": self.fwhm_radial,
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
            fwhm_radial=float(d.get("fwhm_radial", 0.0)),
        )
