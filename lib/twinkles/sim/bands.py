"""The LSST filters as the simulation sees them.

Numbers after the LSST system-engineering throughputs summarised in SMTN-002 (Jones & Yoachim,
"Calculating LSST limiting magnitudes and SNR"): instrumental zero points for 1 e-/s at
airmass 1, extinction coefficients and dark-sky brightness at zenith. The bandpasses are
modelled as top-hats between the edges below; that is all the supernova model needs to compute
band fluxes and K-corrections, and it is documented as such.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["LSST_BANDS", "Bandpass", "instrumental_zero_point", "sky_counts_per_pixel"]


@dataclass(frozen=True)
class Bandpass:
    """One filter.

    Attributes
    ----------
    name : str
        Filter name (``u`` ... ``y``).
    wavelength_min, wavelength_max : float
        Top-hat edges (Angstrom).
    zero_point_1s : float
        AB magnitude giving 1 electron per second at airmass 1.
    extinction : float
        Atmospheric extinction (mag per unit airmass).
    dark_sky : float
        Dark-sky brightness at zenith (AB mag/arcsec^2).
    moon_factor : float
        Fractional sky brightening by a full moon high in the sky, well away from the field.
    """

    name: str
    wavelength_min: float
    wavelength_max: float
    zero_point_1s: float
    extinction: float
    dark_sky: float
    moon_factor: float

    @property
    def wavelength_eff(self) -> float:
        """Geometric-mean wavelength of the top-hat (Angstrom)."""
        return float(np.sqrt(self.wavelength_min * self.wavelength_max))


LSST_BANDS: dict[str, Bandpass] = {
    b.name: b
    for b in [
        Bandpass("u", 3200.0, 4000.0, 26.52, 0.47, 23.05, 20.0),
        Bandpass("g", 4000.0, 5520.0, 28.51, 0.21, 22.25, 9.0),
        Bandpass("r", 5520.0, 6910.0, 28.36, 0.13, 21.20, 4.0),
        Bandpass("i", 6910.0, 8180.0, 28.17, 0.10, 20.46, 2.0),
        Bandpass("z", 8180.0, 9220.0, 27.78, 0.07, 19.61, 1.0),
        Bandpass("y", 9480.0, 10600.0, 26.82, 0.17, 18.60, 0.5),
    ]
}


def instrumental_zero_point(
    band: str, exposure_time: float, airmass: float | np.ndarray, cloud: float | np.ndarray = 0.0
) -> float | np.ndarray:
    """AB magnitude that yields one electron in the whole exposure.

    Parameters
    ----------
    band : str
        Filter name.
    exposure_time : float
        Exposure time (s).
    airmass : float or array
        Airmass of the observation.
    cloud : float or array
        Grey cloud extinction (mag).
    """
    bp = LSST_BANDS[band]
    return (
        bp.zero_point_1s
        + 2.5 * np.log10(exposure_time)
        - bp.extinction * (np.asarray(airmass) - 1.0)
        - np.asarray(cloud)
    )


def sky_counts_per_pixel(
    band: str, sky_brightness: float | np.ndarray, exposure_time: float, pixel_scale: float
) -> float | np.ndarray:
    """Sky electrons per pixel for a sky brightness in AB mag/arcsec^2.

    The sky brightness is the one measured through the atmosphere (as OpSim's
    ``filtSkyBrightness``), so it is converted with the zenith zero point.
    """
    bp = LSST_BANDS[band]
    per_arcsec2 = 10.0 ** (-0.4 * (np.asarray(sky_brightness) - bp.zero_point_1s))
    return per_arcsec2 * exposure_time * pixel_scale**2
