"""An OpSim-like visit table for one deep-drilling field.

Twinkles took its visits from OpSim (minion_1016): the Chandra Deep Field South observed at
most once per night and filter, at minimum airmass. This module makes an equivalent table from
a handful of documented models, fast and reproducible from a seed:

* **Site and seasons.** Cerro Pachon. For each night, the field's hour angle at local
  midnight and the length of the astronomical night (longer in the southern winter) give the
  window in which the field is below ``max_airmass``; a night belongs to the observing season
  when that window lasts at least ``min_window_hours``. A fraction ``weather_loss`` of nights
  is lost.
* **Visits.** Visits are shared among filters in proportion to the filter weights (Run 1 by
  default) and each filter's visits fall on distinct, randomly chosen season nights; u is
  scheduled away from bright moon when possible, as LSST swaps the u filter out near full moon.
  Each visit is taken as close to the meridian as the night allows (minimum airmass).
* **Seeing.** The atmospheric FWHM at 500 nm and zenith is log-normal per night; following
  OpSim (SMTN-002), ``FWHMeff = 1.16 sqrt(FWHMsys^2 + 1.04 FWHMatm^2)`` with
  ``FWHMsys = 0.4 X^0.6`` and ``FWHMatm = seeing (500 nm / lambda)^0.3 X^0.6``. Values outside
  ``[fwhm_eff_min, fwhm_eff_max]`` are redrawn. ``FWHMgeom`` is the half-maximum width of the
  PSF profile that is rendered (:mod:`twinkles.sim.psf`).
* **Sky.** Dark zenith sky per filter, brighter with airmass, plus moonlight that grows with
  the moon's illuminated fraction and altitude and towards the moon, strongest in the blue.
  Moon and sun positions use low-precision almanac formulae (accurate to ~1 deg).
* **Depth.** ``fiveSigmaDepth`` is the magnitude of a point source measured at 5 sigma with
  PSF-weighted photometry on this sky, PSF, exposure and zero point: the same numbers the
  renderer uses, so the depth is consistent with the images.

Fields are named as in OpSim: obsHistID, expMJD, night, filter, FWHMeff, FWHMgeom, airmass,
filtSkyBrightness, fiveSigmaDepth, rotSkyPos, fieldRA, fieldDec, visitExpTime, moonPhase,
moonAlt; plus ``year = night // 365``.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from twinkles.config import CadenceConfig, ConfigError, FieldConfig, RenderConfig, SensorConfig
from twinkles.sim.bands import LSST_BANDS, instrumental_zero_point, sky_counts_per_pixel
from twinkles.sim.psf import profile_fwhm_for_fwhm_eff
from twinkles.units import NEFF_PER_FWHM2

__all__ = [
    "CONDITION_TRUTH_COLUMNS",
    "SITE_LATITUDE",
    "SITE_LONGITUDE",
    "airmass_from_altitude",
    "altitude",
    "five_sigma_depth",
    "fwhm_eff",
    "make_visit_table",
    "moon_position",
    "sun_position",
]

#: Cerro Pachon (deg; longitude positive East).
SITE_LATITUDE = -30.2446
SITE_LONGITUDE = -70.7494
#: Days from UTC midnight to local mean midnight at the site.
LOCAL_MIDNIGHT_OFFSET = -SITE_LONGITUDE / 360.0
SIDEREAL_RATE = 1.00273790935
#: Columns of make_visit_table that a telescope would not know (they go to the truth).
CONDITION_TRUTH_COLUMNS = ("zeroPoint", "cloud", "skyCounts", "seeing500")
OBLIQUITY = 23.4393


def gmst_deg(mjd: np.ndarray) -> np.ndarray:
    """Greenwich mean sidereal time (deg)."""
    return (280.46061837 + 360.98564736629 * (np.asarray(mjd) - 51544.5)) % 360.0


def _ecliptic_to_equatorial(lon_deg: np.ndarray, lat_deg: np.ndarray) -> tuple:
    lon, lat, eps = np.deg2rad(lon_deg), np.deg2rad(lat_deg), np.deg2rad(OBLIQUITY)
    ra = np.arctan2(np.sin(lon) * np.cos(eps) - np.tan(lat) * np.sin(eps), np.cos(lon))
    dec = np.arcsin(np.sin(lat) * np.cos(eps) + np.cos(lat) * np.sin(eps) * np.sin(lon))
    return np.rad2deg(ra) % 360.0, np.rad2deg(dec)


def sun_position(mjd: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sun (RA, Dec, ecliptic longitude) in deg; Astronomical Almanac low precision."""
    d = np.asarray(mjd) - 51544.5
    g = np.deg2rad(357.528 + 0.9856003 * d)
    lon = (280.460 + 0.9856474 * d + 1.915 * np.sin(g) + 0.020 * np.sin(2 * g)) % 360.0
    ra, dec = _ecliptic_to_equatorial(lon, np.zeros_like(lon))
    return ra, dec, lon


def moon_position(mjd: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moon (RA, Dec) in deg and illuminated fraction; Astronomical Almanac low precision."""
    d = np.asarray(mjd) - 51544.5
    m_anomaly = np.deg2rad(134.963 + 13.064993 * d)
    lon = (218.316 + 13.176396 * d + 6.289 * np.sin(m_anomaly)) % 360.0
    lat = 5.128 * np.sin(np.deg2rad(93.272 + 13.229350 * d))
    ra, dec = _ecliptic_to_equatorial(lon, lat)
    _, _, sun_lon = sun_position(mjd)
    cos_elong = np.cos(np.deg2rad(lat)) * np.cos(np.deg2rad(lon - sun_lon))
    return ra, dec, 0.5 * (1.0 - cos_elong)


def altitude(ha_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """Altitude (deg) at the site for hour angle and declination (deg)."""
    lat, dec, ha = np.deg2rad(SITE_LATITUDE), np.deg2rad(dec_deg), np.deg2rad(ha_deg)
    sin_alt = np.sin(lat) * np.sin(dec) + np.cos(lat) * np.cos(dec) * np.cos(ha)
    return np.rad2deg(np.arcsin(np.clip(sin_alt, -1, 1)))


def airmass_from_altitude(alt_deg: np.ndarray) -> np.ndarray:
    """Airmass (Kasten & Young 1989)."""
    alt = np.asarray(alt_deg, dtype=float)
    return 1.0 / (np.sin(np.deg2rad(alt)) + 0.50572 * (alt + 6.07995) ** -1.6364)


def _hour_angle_at_airmass(airmass: float, dec_deg: float) -> float:
    """|HA| (deg) at which the field reaches ``airmass`` (plane-parallel); 0 if never below."""
    sin_alt = 1.0 / airmass
    lat, dec = np.deg2rad(SITE_LATITUDE), np.deg2rad(dec_deg)
    cos_ha = (sin_alt - np.sin(lat) * np.sin(dec)) / (np.cos(lat) * np.cos(dec))
    if cos_ha >= 1.0:
        return 0.0
    return float(np.rad2deg(np.arccos(max(cos_ha, -1.0))))


def fwhm_eff(seeing_500: np.ndarray, band: np.ndarray, airmass: np.ndarray) -> np.ndarray:
    """OpSim's FWHMeff (arcsec) from zenith seeing at 500 nm, filter and airmass (SMTN-002)."""
    wavelength = np.array([LSST_BANDS[b].wavelength_eff for b in np.atleast_1d(band)])
    x06 = np.asarray(airmass) ** 0.6
    fwhm_sys = 0.4 * x06
    fwhm_atm = np.asarray(seeing_500) * (5000.0 / wavelength) ** 0.3 * x06
    return 1.16 * np.sqrt(fwhm_sys**2 + 1.04 * fwhm_atm**2)


def five_sigma_depth(
    zero_point: np.ndarray, sky_counts: np.ndarray, fwhm_eff_arcsec: np.ndarray, pixel_scale: float
) -> np.ndarray:
    """Point-source 5-sigma depth (AB mag) for PSF-weighted photometry.

    The source flux ``f`` (electrons) with ``f / sqrt(f + B n_eff) = 5`` on a sky of ``B``
    electrons per pixel, with ``n_eff = 2.266 (FWHMeff / pixel_scale)^2``.
    """
    neff = NEFF_PER_FWHM2 * (np.asarray(fwhm_eff_arcsec) / pixel_scale) ** 2
    background = np.asarray(sky_counts) * neff
    flux5 = 12.5 + np.sqrt(156.25 + 25.0 * background)
    return np.asarray(zero_point) - 2.5 * np.log10(flux5)


def _filter_counts(n_visits: int, weights: dict[str, float]) -> dict[str, int]:
    """Split n_visits among filters by weight (largest remainder)."""
    names = list(weights)
    w = np.array([weights[f] for f in names], dtype=float)
    exact = n_visits * w / w.sum()
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts))[: n_visits - counts.sum()]:
        counts[i] += 1
    return dict(zip(names, counts.tolist(), strict=True))


def _half_night_hours(mjd: np.ndarray) -> np.ndarray:
    """Half the length of the astronomical night at the site (h), longest in June."""
    day_of_year = (np.asarray(mjd) - 51544.5) % 365.25
    return 4.65 + 0.95 * np.cos(2 * np.pi * (day_of_year - 172.0) / 365.25)


def make_visit_table(
    cadence: CadenceConfig,
    field: FieldConfig,
    sensor: SensorConfig,
    render: RenderConfig,
    rng: np.random.Generator,
) -> Table:
    """Make the visit table (see the module docstring for the models).

    Raises
    ------
    ConfigError
        When the seasons do not hold ``cadence.n_visits`` visits in the requested filters.
    """
    n_nights = int(np.floor(365.25 * cadence.n_years))
    night = np.arange(n_nights)
    midnight = np.floor(cadence.start_mjd) + night + 1.0 + LOCAL_MIDNIGHT_OFFSET

    # hour angle of the field at local midnight, wrapped to [-180, 180)
    ha_mid = (gmst_deg(midnight) + SITE_LONGITUDE - field.ra + 180.0) % 360.0 - 180.0
    half_night = 15.0 * _half_night_hours(midnight)
    ha_limit = _hour_angle_at_airmass(cadence.max_airmass, field.dec)
    window_lo = np.maximum(ha_mid - half_night, -ha_limit)
    window_hi = np.minimum(ha_mid + half_night, ha_limit)
    season = (window_hi - window_lo) >= 15.0 * cadence.min_window_hours
    clear = rng.random(n_nights) >= cadence.weather_loss
    usable = np.flatnonzero(season & clear)

    _, _, illumination_mid = moon_position(midnight)
    counts = _filter_counts(cadence.n_visits, cadence.weights())
    chosen_night, chosen_filter = [], []
    for band, n in counts.items():
        if n == 0:
            continue
        candidates = usable
        if band == "u":
            dark = usable[illumination_mid[usable] < 0.5]
            if len(dark) >= n:
                candidates = dark
        if len(candidates) < n:
            raise ConfigError(
                "cadence",
                [
                    f"cadence.n_visits: {cadence.n_visits} visits need {n} {band}-band nights, "
                    f"but {cadence.n_years} years of seasons hold only {len(candidates)} "
                    f"usable nights (lower n_visits or raise n_years)"
                ],
            )
        picked = rng.choice(candidates, size=n, replace=False)
        chosen_night.extend(picked.tolist())
        chosen_filter.extend([band] * n)

    v_night = np.array(chosen_night, dtype=int)
    v_filter = np.array(chosen_filter)
    n_vis = len(v_night)

    # observe as near the meridian as the night allows, with some scheduling jitter, and
    # separate the filters of a night by the exposure plus a filter change (2 min)
    lo, hi = window_lo[v_night], window_hi[v_night]
    ha = np.clip(0.0, lo, hi) + rng.uniform(-7.5, 7.5, n_vis)
    ha = np.clip(ha, lo, hi)
    order_in_night = np.zeros(n_vis)
    for n in np.unique(v_night):
        idx = np.flatnonzero(v_night == n)
        order_in_night[idx] = rng.permutation(len(idx))
    ha = ha + order_in_night * 2.0 / 60.0 * 15.0
    exp_mjd = midnight[v_night] + (ha - ha_mid[v_night]) / (360.0 * SIDEREAL_RATE)
    alt = altitude(ha, field.dec)
    airmass = airmass_from_altitude(alt)

    # moon
    moon_ra, moon_dec, illumination = moon_position(exp_mjd)
    lst = gmst_deg(exp_mjd) + SITE_LONGITUDE
    moon_alt = altitude(lst - moon_ra, moon_dec)
    cos_sep = np.sin(np.deg2rad(field.dec)) * np.sin(np.deg2rad(moon_dec)) + np.cos(
        np.deg2rad(field.dec)
    ) * np.cos(np.deg2rad(moon_dec)) * np.cos(np.deg2rad(field.ra - moon_ra))
    moon_sep = np.rad2deg(np.arccos(np.clip(cos_sep, -1, 1)))
    moon_up = np.sqrt(np.clip(np.sin(np.deg2rad(moon_alt)), 0.0, None))
    moon_geometry = illumination * moon_up * (1.0 + 3.0 * np.exp(-moon_sep / 15.0))

    # seeing: one draw per night, a little jitter per visit, redraw outside the allowed range
    unique_nights, night_index = np.unique(v_night, return_inverse=True)
    night_seeing = cadence.seeing_median * np.exp(
        cadence.seeing_log_sigma * rng.standard_normal(len(unique_nights))
    )
    seeing = night_seeing[night_index] * np.exp(0.05 * rng.standard_normal(n_vis))
    fwhm = fwhm_eff(seeing, v_filter, airmass)
    for _ in range(1000):
        bad = (fwhm < cadence.fwhm_eff_min) | (fwhm > cadence.fwhm_eff_max)
        if not bad.any():
            break
        seeing[bad] = cadence.seeing_median * np.exp(
            cadence.seeing_log_sigma * rng.standard_normal(bad.sum())
        )
        fwhm[bad] = fwhm_eff(seeing[bad], v_filter[bad], airmass[bad])
    else:
        raise ConfigError(
            "cadence",
            [
                "cadence.fwhm_eff_min: seeing_median and fwhm_eff_min/max leave no "
                "reachable FWHMeff at these airmasses"
            ],
        )

    sky = np.empty(n_vis)
    zero_point = np.empty(n_vis)
    sky_counts = np.empty(n_vis)
    cloud = rng.exponential(render.cloud_extinction_mean, n_vis)
    for band in np.unique(v_filter):
        sel = v_filter == band
        bp = LSST_BANDS[band]
        brightening = 1.0 + 0.5 * (airmass[sel] - 1.0) + bp.moon_factor * moon_geometry[sel]
        sky[sel] = (
            bp.dark_sky
            - 2.5 * np.log10(brightening)
            + render.airglow_sigma * rng.standard_normal(sel.sum())
        )
        zero_point[sel] = instrumental_zero_point(
            band, sensor.exposure_time, airmass[sel], cloud[sel]
        )
        sky_counts[sel] = sky_counts_per_pixel(
            band, sky[sel], sensor.exposure_time, sensor.pixel_scale
        )
    depth = five_sigma_depth(zero_point, sky_counts, fwhm, sensor.pixel_scale)
    # a run of mixed profiles reports the Moffat's (each visit's own is in its conditions)
    nominal_profile = "moffat" if render.psf_profile == "mixed" else render.psf_profile
    fwhm_geom = profile_fwhm_for_fwhm_eff(
        fwhm, sensor.pixel_scale, nominal_profile, render.moffat_beta
    )

    order = np.argsort(exp_mjd, kind="stable")
    table = Table()
    table["obsHistID"] = np.arange(1, n_vis + 1, dtype=np.int64)
    table["expMJD"] = exp_mjd[order]
    table["night"] = v_night[order].astype(np.int64)
    table["year"] = (v_night[order] // 365).astype(np.int64)
    table["filter"] = v_filter[order]
    table["FWHMeff"] = fwhm[order]
    table["FWHMgeom"] = np.atleast_1d(fwhm_geom)[order]
    table["airmass"] = airmass[order]
    table["filtSkyBrightness"] = sky[order]
    table["fiveSigmaDepth"] = depth[order]
    table["rotSkyPos"] = rng.uniform(0.0, 360.0, n_vis)
    table["fieldRA"] = np.full(n_vis, field.ra)
    table["fieldDec"] = np.full(n_vis, field.dec)
    table["visitExpTime"] = np.full(n_vis, sensor.exposure_time)
    table["moonPhase"] = 100.0 * illumination[order]
    table["moonAlt"] = moon_alt[order]
    table["moonDistance"] = moon_sep[order]
    # what the telescope does not know; make_sky keeps these apart, as the visit truth
    table["zeroPoint"] = zero_point[order]
    table["cloud"] = cloud[order]
    table["skyCounts"] = sky_counts[order]
    table["seeing500"] = seeing[order]
    for name, unit in [
        ("expMJD", "d"),
        ("FWHMeff", "arcsec"),
        ("FWHMgeom", "arcsec"),
        ("filtSkyBrightness", "mag / arcsec2"),
        ("fiveSigmaDepth", "mag"),
        ("rotSkyPos", "deg"),
        ("fieldRA", "deg"),
        ("fieldDec", "deg"),
        ("visitExpTime", "s"),
        ("moonAlt", "deg"),
        ("moonDistance", "deg"),
    ]:
        table[name].unit = unit
    return table
