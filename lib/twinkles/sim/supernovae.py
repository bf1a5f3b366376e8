"""Type Ia supernovae: a documented parametric model standing in for SALT2.

Twinkles drew SNe Ia with SALT2 parameters (x1 ~ N(0, 1), c ~ N(0, 0.1),
M_B ~ N(-19.3, 0.15), alpha = 0.11, beta = 3.14, flat LCDM H0 = 73, Om = 0.25, t0 uniform over
the survey). The SALT2 model files cannot be downloaded here, so the spectral time series is
the parametric model below; SALT2's parameters keep their meaning.

Rest-frame flux density at wavelength ``lam`` (Angstrom) and phase ``p`` (days from B maximum,
divided by the stretch ``s``)::

    f_nu(lam, p) = N * S_nu(lam) * 10^(-0.4 c CL(lam)) * shape(p, lam)

* ``S_nu``: the peak spectrum, a 11,000 K blackbody with line-blanketing suppression in the UV
  (``1 / (1 + (3380/lam)^13)``) and a 30% Ca II / O I deficit redward of 7500 A; this gives
  roughly the observed peak colours (U - B ~ +0.5 and R - I ~ -0.3 in AB).
* ``shape``: 1 at ``p = 0`` in every band. Before maximum a Gaussian rise of width 6.5 d
  (2.9 mag below peak at -15 d), tapered to zero at -22 d (explosion). After maximum a
  smoothed exponential decline with a wavelength-dependent time scale (Delta m15(B) ~ 1.1,
  slower in V and R) plus a 8% radioactive tail (tau = 75 d) and, redward of 5500 A, the
  secondary maximum near +28 d that SNe Ia show in i, z and y.
* ``CL``: colour law linear in 1/lam, zero at B (4400 A) and -1 at V (5500 A), so ``c`` shifts
  B - V by ``c`` (SALT2 convention); the B-band brightness shift ``beta c`` enters through
  the normalisation.
* ``s = 0.98 + 0.091 x1 + 0.003 x1^2 - 0.00075 x1^3`` (Guy et al. 2007, A&A 466, 11).
* ``N``: the rest-frame B magnitude (top-hat 3900-4900 A) at maximum at 10 pc is
  ``M_B - alpha x1 + beta c``.

Observer frame: ``f_nu,obs(lam) = (1 + z) f_nu(lam / (1 + z), p) 10^(-0.4 mu)`` with
``p = (t - t0) / ((1 + z) s)``; band fluxes are photon-weighted averages over the top-hat
filters. A band that is rest-frame B shifted by (1 + z) therefore gives exactly
``m = m_B - 2.5 log10(1 + z)`` at maximum, the textbook K-correction.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from astropy.table import Table

from twinkles.sim.bands import LSST_BANDS
from twinkles.sim.ids import ObjectKind, make_ids
from twinkles.units import mag_to_njy

__all__ = [
    "ALPHA",
    "BETA",
    "REST_B_BAND",
    "band_flux",
    "cosmology",
    "distance_modulus",
    "make_supernovae",
    "rest_flux_density",
    "stretch",
    "supernova_flux",
]

ALPHA = 0.11
BETA = 3.14
M_B_MEAN = -19.3
M_B_SCATTER = 0.15


@lru_cache(maxsize=1)
def cosmology():
    """Flat LCDM, H0 = 73, Om = 0.25 (Twinkles'), made when first needed: astropy.cosmology
    costs ~0.6 s to import, which every warm kernel would pay for recipes that never use it."""
    from astropy.cosmology import FlatLambdaCDM

    return FlatLambdaCDM(H0=73.0, Om0=0.25)


def __getattr__(name: str):
    if name == "COSMOLOGY":  # the module constant, made on first use
        return cosmology()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: Rest-frame B top-hat (Angstrom) that defines M_B.
REST_B_BAND = (3900.0, 4900.0)

_T_PEAK = 11000.0
_RISE_WIDTH = 6.5
_EXPLOSION = -22.0
_TAPER = 5.0
_PEAK_SOFTENING = 5.0
_TAIL_WEIGHT = 0.08
_TAIL_TAU = 75.0
_BUMP_PHASE, _BUMP_WIDTH = 28.0, 8.0
_DECLINE_LAM = np.array([2000.0, 3000.0, 3700.0, 4400.0, 5500.0, 6500.0, 8000.0, 12000.0])
_DECLINE_TAU = np.array([6.0, 6.5, 7.9, 9.5, 16.8, 18.0, 15.0, 15.0])
_BUMP_LAM = np.array([5500.0, 6500.0, 7500.0, 8500.0, 12000.0])
_BUMP_AMP = np.array([0.0, 0.15, 0.40, 0.55, 0.60])
_N_BAND_SAMPLES = 32


def stretch(x1: np.ndarray) -> np.ndarray:
    """SALT2 x1 to light-curve stretch (Guy et al. 2007)."""
    x1 = np.asarray(x1, dtype=float)
    return 0.98 + 0.091 * x1 + 0.003 * x1**2 - 0.00075 * x1**3


def distance_modulus(z: np.ndarray) -> np.ndarray:
    """Distance modulus (mag) in flat LCDM, H0 = 73, Om = 0.25."""
    return np.asarray(cosmology().distmod(np.asarray(z, dtype=float)).value)


def _peak_sed(lam: np.ndarray) -> np.ndarray:
    """Peak spectrum S_nu(lam), arbitrary units."""
    lam = np.asarray(lam, dtype=float)
    x = 1.4388e8 / (lam * _T_PEAK)  # h nu / k T with lam in Angstrom
    planck_nu = lam**-3 / np.expm1(np.minimum(x, 700.0))
    uv = 1.0 / (1.0 + (3380.0 / lam) ** 13)
    red = 1.0 - 0.3 / (1.0 + np.exp(-(lam - 7500.0) / 300.0))
    return planck_nu * uv * red


def _colour_law(lam: np.ndarray) -> np.ndarray:
    inv_b, inv_v = 1.0 / 4400.0, 1.0 / 5500.0
    return (1.0 / np.asarray(lam) - inv_b) / (inv_b - inv_v)


def _shape(phase: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """Light-curve shape at rest-frame phase (stretch-corrected) and wavelength; 1 at p = 0."""
    p = np.asarray(phase, dtype=float)
    lam = np.asarray(lam, dtype=float)
    rise = np.exp(-0.5 * (p / _RISE_WIDTH) ** 2)
    taper = np.clip((p - _EXPLOSION) / _TAPER, 0.0, 1.0)
    rise = rise * taper**2 * (3.0 - 2.0 * taper)
    soft = np.sqrt(np.maximum(p, 0.0) ** 2 + _PEAK_SOFTENING**2) - _PEAK_SOFTENING
    tau = np.interp(lam, _DECLINE_LAM, _DECLINE_TAU)
    bump_amp = np.interp(lam, _BUMP_LAM, _BUMP_AMP, left=0.0)
    bump = np.exp(-0.5 * ((p - _BUMP_PHASE) / _BUMP_WIDTH) ** 2)
    bump0 = np.exp(-0.5 * (_BUMP_PHASE / _BUMP_WIDTH) ** 2)
    decline = (1 - _TAIL_WEIGHT) * np.exp(-soft / tau) + _TAIL_WEIGHT * np.exp(-soft / _TAIL_TAU)
    decline = (decline + bump_amp * bump) / (1.0 + bump_amp * bump0)
    return np.where(p < 0, rise, decline)


def _band_samples(lam_min: float, lam_max: float) -> np.ndarray:
    """Wavelengths uniform in log(lam): the photon-weighted top-hat average is their mean."""
    edges = np.geomspace(lam_min, lam_max, _N_BAND_SAMPLES + 1)
    return np.sqrt(edges[:-1] * edges[1:])


@lru_cache(maxsize=1)
def _unit_b_normalisation() -> float:
    lam = _band_samples(*REST_B_BAND)
    return float(np.mean(_peak_sed(lam)))


def rest_flux_density(
    lam: np.ndarray, phase: np.ndarray, c: np.ndarray, absolute_b_mag: np.ndarray
) -> np.ndarray:
    """Rest-frame f_nu (nJy at 10 pc) at wavelength ``lam`` (A) and stretch-corrected phase.

    ``absolute_b_mag`` is the rest-frame B magnitude at maximum, ``M_B - alpha x1 + beta c``.
    Arrays broadcast together.
    """
    lam_b = _band_samples(*REST_B_BAND)
    c = np.asarray(c, dtype=float)
    # B-band mean of S_nu * 10^(-0.4 c CL) at peak, per supernova
    b_mean = np.mean(_peak_sed(lam_b) * 10.0 ** (-0.4 * c[..., None] * _colour_law(lam_b)), axis=-1)
    norm = mag_to_njy(absolute_b_mag) / b_mean
    return norm * _peak_sed(lam) * 10.0 ** (-0.4 * c * _colour_law(lam)) * _shape(phase, lam)


def band_flux(
    lam_min: float,
    lam_max: float,
    mjd: np.ndarray | float,
    z: np.ndarray,
    t0: np.ndarray,
    x1: np.ndarray,
    c: np.ndarray,
    absolute_b_mag: np.ndarray,
) -> np.ndarray:
    """Observed flux (nJy) in a top-hat band [lam_min, lam_max] (A) at ``mjd``.

    Parameters are per supernova (arrays of one length); ``mjd`` is a scalar or an array of
    that length. ``absolute_b_mag`` is ``M_B - alpha x1 + beta c`` (standardised peak).
    """
    z = np.asarray(z, dtype=float)
    phase = (np.asarray(mjd, dtype=float) - np.asarray(t0)) / ((1.0 + z) * stretch(x1))
    lam_obs = _band_samples(lam_min, lam_max)
    lam_rest = lam_obs[None, :] / (1.0 + z[:, None])
    f_rest = rest_flux_density(
        lam_rest,
        np.broadcast_to(phase, z.shape)[:, None],
        np.asarray(c, dtype=float)[:, None],
        np.asarray(absolute_b_mag, dtype=float)[:, None],
    )
    dimming = 10.0 ** (-0.4 * distance_modulus(z))
    return (1.0 + z) * dimming * np.mean(f_rest, axis=-1)


def supernova_flux(supernovae: Table, band: str, mjd: np.ndarray | float) -> np.ndarray:
    """True flux (nJy) of each supernova in LSST ``band`` at ``mjd``."""
    bp = LSST_BANDS[band]
    if len(supernovae) == 0:
        return np.zeros(0)
    return band_flux(
        bp.wavelength_min,
        bp.wavelength_max,
        mjd,
        np.asarray(supernovae["redshift"]),
        np.asarray(supernovae["t0"]),
        np.asarray(supernovae["x1"]),
        np.asarray(supernovae["c"]),
        np.asarray(supernovae["M_B"])
        - ALPHA * np.asarray(supernovae["x1"])
        + BETA * np.asarray(supernovae["c"]),
    )


def make_supernovae(
    n: int,
    hosts: Table,
    peak_mjds: np.ndarray,
    rng: np.random.Generator,
) -> Table:
    """``n`` SNe Ia in randomly chosen host galaxies.

    Parameters
    ----------
    n : int
        Number of supernovae.
    hosts : Table
        Candidate hosts (galaxy truth rows with redshift, disk_hlr, disk_q, position_angle).
    peak_mjds : array
        Epochs around which peaks are spread: each SN peaks within 20 d of one of them
        (the caller passes the visit epochs, so peaks fall in the observed seasons).
    rng : numpy.random.Generator
    """
    if n and len(hosts) == 0:
        raise ValueError("no candidate host galaxy for the supernovae (see truth.sn_max_redshift)")
    host = hosts[rng.integers(0, len(hosts), n)] if n else hosts[:0]
    z = np.asarray(host["redshift"], dtype=float)
    # offset from the host centre: exponential disk, projected with the disk's axis ratio
    scale_length = np.asarray(host["disk_hlr"]) / 1.678
    r = rng.gamma(2.0, 1.0, n) * scale_length
    phi = rng.uniform(0, 2 * np.pi, n)
    along, across = r * np.cos(phi), r * np.sin(phi) * np.asarray(host["disk_q"])
    pa = np.deg2rad(np.asarray(host["position_angle"]))
    d_north = along * np.cos(pa) - across * np.sin(pa)
    d_east = along * np.sin(pa) + across * np.cos(pa)
    dec = np.asarray(host["dec"]) + d_north / 3600.0
    ra = np.asarray(host["ra"]) + d_east / 3600.0 / np.cos(np.deg2rad(dec))

    x1 = rng.normal(0.0, 1.0, n)
    c = rng.normal(0.0, 0.1, n)
    m_b = rng.normal(M_B_MEAN, M_B_SCATTER, n)
    t0 = rng.choice(np.asarray(peak_mjds), n) + rng.uniform(-20.0, 20.0, n) if n else np.zeros(0)
    mu = distance_modulus(z) if n else np.zeros(0)
    apparent_b = m_b - ALPHA * x1 + BETA * c + mu

    table = Table()
    table["id"] = make_ids(ObjectKind.SUPERNOVA, n)
    table["host_id"] = np.asarray(host["id"], dtype=np.int64)
    table["ra"] = ra
    table["dec"] = dec
    table["redshift"] = z
    table["t0"] = t0
    table["x1"] = x1
    table["c"] = c
    table["M_B"] = m_b
    table["mu"] = mu
    table["mB"] = apparent_b
    # SALT2 amplitude for the same peak magnitude (Mosher et al. 2014 convention)
    table["x0"] = 10.0 ** (-0.4 * (apparent_b - 10.635))
    table["ra"].unit = table["dec"].unit = "deg"
    table["t0"].unit = "d"
    return table
