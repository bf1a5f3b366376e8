"""The SN Ia model: peak magnitude from the distance modulus, peak epoch, shape."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from twinkles.sim.bands import LSST_BANDS
from twinkles.sim.supernovae import (
    ALPHA,
    BETA,
    COSMOLOGY,
    REST_B_BAND,
    band_flux,
    distance_modulus,
    make_supernovae,
    supernova_flux,
)
from twinkles.units import njy_to_mag


def _mag(lam_min, lam_max, mjd, z, t0=60000.0, x1=0.0, c=0.0, m_b=-19.3):
    flux = band_flux(
        lam_min,
        lam_max,
        mjd,
        np.array([z]),
        np.array([t0]),
        np.array([x1]),
        np.array([c]),
        np.array([m_b - ALPHA * x1 + BETA * c]),
    )
    return float(njy_to_mag(flux)[0])


@pytest.mark.parametrize("z", [0.05, 0.3, 0.8])
@pytest.mark.parametrize(("x1", "c"), [(0.0, 0.0), (1.5, -0.1), (-2.0, 0.2)])
def test_peak_in_redshifted_b_band_is_mb_minus_k(z, x1, c):
    # a top-hat that is rest-frame B stretched by (1 + z): m = M_B - a x1 + b c + mu - 2.5 log(1+z)
    lo, hi = REST_B_BAND[0] * (1 + z), REST_B_BAND[1] * (1 + z)
    expected = -19.3 - ALPHA * x1 + BETA * c + distance_modulus(z) - 2.5 * np.log10(1 + z)
    assert _mag(lo, hi, 60000.0, z, x1=x1, c=c) == pytest.approx(expected, abs=1e-9)


def test_distance_modulus_is_flat_lcdm_h73():
    z = 0.5
    d_l = COSMOLOGY.luminosity_distance(z).to("pc").value
    assert distance_modulus(z) == pytest.approx(5 * np.log10(d_l / 10.0))
    assert COSMOLOGY.H0.value == 73.0 and COSMOLOGY.Om0 == 0.25


@pytest.mark.parametrize("band", list("ugrizy"))
def test_light_curves_peak_at_t0_in_every_band(band):
    z, t0 = 0.3, 60000.0
    bp = LSST_BANDS[band]
    mjd = t0 + np.arange(-40.0, 80.0, 0.25)
    flux = band_flux(
        bp.wavelength_min,
        bp.wavelength_max,
        mjd,
        np.full(len(mjd), z),
        np.full(len(mjd), t0),
        np.zeros(len(mjd)),
        np.zeros(len(mjd)),
        np.full(len(mjd), -19.3),
    )
    assert abs(mjd[np.argmax(flux)] - t0) <= 0.25
    assert flux[mjd < t0 - 22 * (1 + z)].max() == 0.0  # before the explosion
    assert flux[-1] < 0.15 * flux.max()  # faded after 80 observer-frame days


def test_decline_rate_and_stretch():
    lo, hi = REST_B_BAND
    peak = _mag(lo, hi, 60000.0, 0.01)
    dm15 = _mag(lo, hi, 60015.0 * 1.0 + 0.15, 0.01) - peak  # 15 rest-frame days (z = 0.01)
    assert 0.9 < dm15 < 1.4  # Delta m15(B) of a normal SN Ia is ~1.1
    slow = _mag(lo, hi, 60015.15, 0.01, x1=2.0) - _mag(lo, hi, 60000.0, 0.01, x1=2.0)
    fast = _mag(lo, hi, 60015.15, 0.01, x1=-2.0) - _mag(lo, hi, 60000.0, 0.01, x1=-2.0)
    assert slow < dm15 < fast  # broader is slower (and brighter through alpha)


def test_colour_c_reddens():
    z = 0.1
    g, i = LSST_BANDS["g"], LSST_BANDS["i"]
    blue = _mag(g.wavelength_min, g.wavelength_max, 6e4, z) - _mag(
        i.wavelength_min, i.wavelength_max, 6e4, z
    )
    red = _mag(g.wavelength_min, g.wavelength_max, 6e4, z, c=0.2) - _mag(
        i.wavelength_min, i.wavelength_max, 6e4, z, c=0.2
    )

    # the colour law is linear in 1/lambda, 0 at B and -1 at V: g - i reddens by
    # c (CL(g / 1.1) - CL(i / 1.1)) ~ 1.94 c at the bands' mean wavelengths
    def colour_law(lam):
        return (1 / lam - 1 / 4400) / (1 / 4400 - 1 / 5500)

    expected = 0.2 * (colour_law(g.wavelength_eff / 1.1) - colour_law(i.wavelength_eff / 1.1))
    assert red - blue == pytest.approx(expected, abs=0.03)


def test_make_supernovae_salt2_parameters():
    rng = np.random.default_rng(5)
    hosts = Table(
        {
            "id": np.arange(1, 201, dtype=np.int64),
            "ra": np.full(200, 53.0),
            "dec": np.full(200, -27.4),
            "redshift": rng.uniform(0.1, 0.9, 200),
            "disk_hlr": np.full(200, 1.0),
            "disk_q": np.full(200, 0.5),
            "position_angle": np.zeros(200),
        }
    )
    sne = make_supernovae(2000, hosts, np.array([60000.0, 60100.0]), rng)
    assert abs(np.mean(sne["x1"])) < 0.1 and abs(np.std(sne["x1"]) - 1.0) < 0.05
    assert abs(np.std(sne["c"]) - 0.1) < 0.01
    assert abs(np.std(sne["M_B"]) - 0.15) < 0.01
    np.testing.assert_allclose(
        sne["mB"],
        sne["M_B"] - ALPHA * sne["x1"] + BETA * sne["c"] + distance_modulus(sne["redshift"]),
    )
    # peaks within 20 d of a given epoch; offsets from the host follow its disk (arcsec scale)
    near = np.minimum(np.abs(sne["t0"] - 60000.0), np.abs(sne["t0"] - 60100.0))
    assert near.max() <= 20.0
    offset = np.hypot((sne["ra"] - 53.0) * np.cos(np.deg2rad(-27.4)), sne["dec"] + 27.4) * 3600
    assert 0.3 < np.median(offset) < 2.0
    # truth flux at peak in a band is finite and positive
    assert np.all(supernova_flux(sne[:10], "r", sne["t0"][:10]) > 0)
