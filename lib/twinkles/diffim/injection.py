"""Source injection: the difference imaging's efficiency from point sources of known flux.

Point sources are drawn with the visit's PSF model into a copy of the calexp (with their photon
noise, and their variance added to the variance plane), which is then differenced against the
template exactly as the calexp was. Whether a positive DIASource lies within the match radius
of each injection, against the injection's S/N on the difference image, is the efficiency
curve; the forced PSF flux at each injection, against its true flux, checks the photometry
where the injections lie (on galaxies, say). This is what LSST's ``source_injection`` package
does for the Science Pipelines and what DES did with its "fakes" (Kessler et al. 2015, AJ 150,
172); DC2's difference imaging reached 50% efficiency at S/N 5.8 (Sanchez et al. 2022,
arXiv:2111.06858).

Half the point of injecting is to place sources where real transients are: a configurable
fraction goes on galaxies of the run's Object table, the rest uniformly over the sensor.
"""

from __future__ import annotations

import itertools

import numpy as np
from astropy.table import Table
from scipy.optimize import minimize
from scipy.spatial import cKDTree

from twinkles.config import InjectionConfig
from twinkles.geometry import pixel_scale_arcsec
from twinkles.image.exposure import Exposure
from twinkles.measurement.psf_flux import psf_flux
from twinkles.units import njy_to_mag

__all__ = [
    "INJECTION_COLUMNS",
    "efficiency_curve",
    "fit_efficiency",
    "host_galaxies",
    "inject_point_sources",
    "match_injections",
    "plan_injections",
]

#: Columns of a visit's injection catalog once matched (:func:`match_injections`).
INJECTION_COLUMNS = (
    "injection_id",
    "visit",
    "x",
    "y",
    "ra",
    "dec",
    "flux",
    "mag",
    "on_galaxy",
    "found",
    "diaSourceId",
    "separation_arcsec",
    "forced_flux",
    "forced_flux_err",
    "expected_snr",
)


def host_galaxies(objects: Table, band: str, mag_max: float) -> Table:
    """Galaxies of the run's Object table (``deepCoadd_ref``) that can host injections.

    Parameters
    ----------
    objects : Table
        Objects with ``ra``, ``decl``, ``extendedness`` and ``{band}_apFlux`` (nJy).
    band : str
        The visit's band.
    mag_max : float
        Faintest host (AB, the Object's aperture magnitude in ``band``).

    Returns
    -------
    Table
        ``ra``, ``dec`` (deg) and ``mag`` of the extended Objects brighter than ``mag_max``.
    """
    flux_column = f"{band}_apFlux"
    if flux_column not in objects.colnames:
        return Table({"ra": np.zeros(0), "dec": np.zeros(0), "mag": np.zeros(0)})
    mag = njy_to_mag(np.asarray(objects[flux_column], float))
    keep = (np.asarray(objects["extendedness"], float) > 0.5) & (mag <= mag_max)
    return Table(
        {
            "ra": np.asarray(objects["ra"], float)[keep],
            "dec": np.asarray(objects["decl"], float)[keep],
            "mag": mag[keep],
        }
    )


def plan_injections(
    calexp: Exposure,
    galaxies: Table,
    config: InjectionConfig,
    rng: np.random.Generator,
) -> Table:
    """Positions and fluxes of the point sources to inject into one calexp.

    Parameters
    ----------
    calexp : Exposure
        Electrons, with PSF, WCS and zero point.
    galaxies : Table
        ``ra``, ``dec`` (deg) of the galaxies that host a fraction ``galaxy_fraction`` of the
        injections (:func:`host_galaxies`); with none on the sensor, all are uniform.
    config : InjectionConfig
        How many, how bright, where.
    rng : numpy.random.Generator
        The draws (seed it per visit for a reproducible run).

    Returns
    -------
    Table
        ``injection_id``, ``x``, ``y`` (pixels), ``ra``, ``dec`` (deg), ``flux`` (nJy), ``mag``
        (AB), ``on_galaxy``: ``n_per_visit`` rows, fewer only where the sensor has no room for
        that many ``min_separation_arcsec`` apart. Each flux is a log-uniform draw of the S/N
        it would have on the calexp alone (its PSF-flux error there, from the variance plane)
        between ``snr_min`` and ``snr_max``; on the difference image, with the template's
        noise added, the S/N is lower, and measured after subtraction.
    """
    if calexp.psf is None or calexp.wcs is None or calexp.photo_calib is None:
        raise ValueError("plan_injections: the calexp has no PSF, WCS or zero point")
    h, w = calexp.shape
    margin = config.margin_px
    if min(h, w) <= 2 * margin:
        raise ValueError(
            f"plan_injections: a {w} x {h} px calexp leaves no room inside margin_px={margin}"
        )
    n = config.n_per_visit
    lo_x, hi_x, lo_y, hi_y = margin, w - 1 - margin, margin, h - 1 - margin
    n_gal = round(config.galaxy_fraction * n)
    # candidates, galaxies' first, each accepted if no accepted one is nearer than
    # min_separation (two injections in one PSF blend, and blends are missed for being blends)
    cand_x, cand_y = [], []
    if n_gal and len(galaxies):
        gx, gy = calexp.wcs.all_world2pix(
            np.asarray(galaxies["ra"], float), np.asarray(galaxies["dec"], float), 0
        )
        inside = (gx >= lo_x) & (gx <= hi_x) & (gy >= lo_y) & (gy <= hi_y)
        gx, gy = gx[inside], gy[inside]
        if len(gx):
            m = 20 * n_gal
            host = rng.integers(0, len(gx), m)
            # uniform over a disc of the offset radius around each host's centre
            radius = config.galaxy_offset_arcsec / pixel_scale_arcsec(calexp.wcs)
            r = radius * np.sqrt(rng.uniform(0.0, 1.0, m))
            phi = rng.uniform(0.0, 2.0 * np.pi, m)
            cand_x.append(np.clip(gx[host] + r * np.cos(phi), lo_x, hi_x))
            cand_y.append(np.clip(gy[host] + r * np.sin(phi), lo_y, hi_y))
    n_gal_cand = sum(len(c) for c in cand_x)
    cand_x.append(rng.uniform(lo_x, hi_x, 20 * n))
    cand_y.append(rng.uniform(lo_y, hi_y, 20 * n))
    cx, cy = np.concatenate(cand_x), np.concatenate(cand_y)
    min_sep = config.min_separation_arcsec / pixel_scale_arcsec(calexp.wcs)
    accepted: list[int] = []
    n_on_galaxy = 0
    for k in range(len(cx)):
        if len(accepted) == n:
            break
        galaxy_candidate = k < n_gal_cand
        if galaxy_candidate and n_on_galaxy == n_gal:
            continue
        if accepted and np.min(np.hypot(cx[accepted] - cx[k], cy[accepted] - cy[k])) < min_sep:
            continue
        accepted.append(k)
        n_on_galaxy += galaxy_candidate
    x, y = cx[accepted], cy[accepted]
    on_galaxy = np.asarray(accepted) < n_gal_cand
    n = len(x)
    snr = np.exp(rng.uniform(np.log(config.snr_min), np.log(config.snr_max), n))
    _, err_e, _ = psf_flux(calexp, x, y)
    # a position whose PSF footprint is all masked gets the median error: its S/N is measured
    # on the difference anyway
    err_e = np.where(np.isfinite(err_e), err_e, np.nanmedian(err_e))
    flux = snr * err_e * calexp.photo_calib.njy_per_electron
    ra, dec = calexp.wcs.all_pix2world(x, y, 0)
    return Table(
        {
            "injection_id": np.arange(n, dtype=np.int64),
            "x": x,
            "y": y,
            "ra": np.asarray(ra, float),
            "dec": np.asarray(dec, float),
            "flux": flux,
            "mag": njy_to_mag(flux),
            "on_galaxy": on_galaxy,
        }
    )


def inject_point_sources(calexp: Exposure, injections: Table, rng: np.random.Generator) -> Exposure:
    """A copy of ``calexp`` with the point sources of ``injections`` drawn in.

    Each source is the PSF model at its position times its flux (nJy, converted to electrons
    with the calexp's zero point), with its photon noise (Gaussian, variance equal to the
    electrons drawn: the calexp is in electrons at unit gain) added to the pixels and its
    variance to the variance plane, as a real source's would be. The mask is unchanged.
    """
    if calexp.psf is None or calexp.photo_calib is None:
        raise ValueError("inject_point_sources: the calexp has no PSF or zero point")
    flux_e = np.asarray(injections["flux"], float) / calexp.photo_calib.njy_per_electron
    if np.any(~np.isfinite(flux_e) | (flux_e < 0)):
        raise ValueError("inject_point_sources: fluxes must be finite and non-negative")
    model = calexp.psf.render(
        calexp.shape, np.asarray(injections["x"], float), np.asarray(injections["y"], float), flux_e
    )
    noise = rng.standard_normal(model.shape) * np.sqrt(np.clip(model, 0.0, None))
    return Exposure(
        (calexp.image + model + noise).astype(calexp.image.dtype),
        calexp.mask.copy(),
        (calexp.variance + np.clip(model, 0.0, None)).astype(calexp.variance.dtype),
        calexp.wcs,
        calexp.psf,
        calexp.photo_calib,
        {**calexp.metadata, "n_injected": len(injections)},
    )


def match_injections(
    injections: Table,
    dia_sources: Table,
    difference: Exposure,
    match_arcsec: float,
    visit: int,
) -> Table:
    """Which injections a positive DIASource found, and their forced flux on the difference.

    Parameters
    ----------
    injections : Table
        From :func:`plan_injections`.
    dia_sources : Table
        DIASources of the difference of the injected calexp (``x``, ``y``, ``psFlux``,
        ``diaSourceId``).
    difference : Exposure
        That difference image (nJy), with ``metadata["psf_flux_err_scale"]``.
    match_arcsec : float
        Match radius: each injection takes the nearest positive DIASource this close, each
        DIASource at most one injection.
    visit : int
        The visit (a column of the result).

    Returns
    -------
    Table
        :data:`INJECTION_COLUMNS`: ``found``, the matched ``diaSourceId`` (-1 if none) and
        ``separation_arcsec``; ``forced_flux``, ``forced_flux_err`` (nJy, the error scaled as
        DIASources' are) and ``expected_snr`` = injected flux / that error.
    """
    out = injections.copy()
    n = len(out)
    out["visit"] = np.full(n, visit, dtype=np.int64)
    x, y = np.asarray(out["x"], float), np.asarray(out["y"], float)
    scale = float(difference.metadata.get("psf_flux_err_scale", 1.0))
    flux, err, _ = psf_flux(difference, x, y)
    out["forced_flux"] = flux
    out["forced_flux_err"] = err * scale
    with np.errstate(invalid="ignore", divide="ignore"):
        out["expected_snr"] = np.asarray(out["flux"], float) / out["forced_flux_err"]
    found = np.zeros(n, dtype=bool)
    source_id = np.full(n, -1, dtype=np.int64)
    separation = np.full(n, np.nan)
    positive = (
        np.asarray(dia_sources["psFlux"], float) > 0 if len(dia_sources) else np.zeros(0, bool)
    )
    if positive.any() and n:
        radius_px = match_arcsec / pixel_scale_arcsec(difference.wcs)
        sx = np.asarray(dia_sources["x"], float)[positive]
        sy = np.asarray(dia_sources["y"], float)[positive]
        ids = np.asarray(dia_sources["diaSourceId"], np.int64)[positive]
        dist, idx = cKDTree(np.column_stack([sx, sy])).query(
            np.column_stack([x, y]), distance_upper_bound=radius_px
        )
        # one DIASource for one injection: the nearest claim wins
        claimed: set[int] = set()
        for k in np.argsort(dist):
            if not np.isfinite(dist[k]) or int(idx[k]) in claimed:
                continue
            claimed.add(int(idx[k]))
            found[k] = True
            source_id[k] = ids[idx[k]]
            separation[k] = dist[k] * match_arcsec / radius_px
    out["found"] = found
    out["diaSourceId"] = source_id
    out["separation_arcsec"] = separation
    return out[list(INJECTION_COLUMNS)]


def efficiency_curve(snr: np.ndarray, found: np.ndarray, edges: np.ndarray) -> Table:
    """Fraction found in bins of S/N (or of magnitude: any quantity binned by ``edges``).

    Returns
    -------
    Table
        ``lo``, ``hi``, ``n``, ``n_found``, ``efficiency`` and its binomial ``error`` (the
        Wilson interval's half width, so an empty or full bin is not given zero error).
    """
    snr, found = np.asarray(snr, float), np.asarray(found, bool)
    rows = []
    for lo, hi in itertools.pairwise(edges):
        sel = (snr >= lo) & (snr < hi)
        n, k = int(sel.sum()), int(found[sel].sum())
        # the Wilson score interval's half width at one sigma: an empty or a full bin
        # still has an error
        eff = k / n if n else np.nan
        err = np.sqrt(k * (n - k) / n + 0.25) / (n + 1.0) if n else np.nan
        rows.append((float(lo), float(hi), n, k, eff, err))
    return Table(rows=rows, names=("lo", "hi", "n", "n_found", "efficiency", "error"))


def fit_efficiency(snr: np.ndarray, found: np.ndarray) -> dict[str, float]:
    """The efficiency curve ``eps(s) = eps_max / (1 + exp(-(s - s0) / width))`` fitted to
    found/missed injections by maximum likelihood (binomial), and the S/N where it is 50%.

    Parameters
    ----------
    snr : array
        S/N of each injection on the difference image.
    found : array of bool

    Returns
    -------
    dict
        ``snr50`` (S/N of 50% efficiency; NaN if the plateau is below 50%), ``s0``,
        ``width``, ``eps_max``, ``n``.
    """
    snr, found = np.asarray(snr, float), np.asarray(found, bool)
    ok = np.isfinite(snr)
    snr, found = snr[ok], found[ok]
    nan = {"snr50": np.nan, "s0": np.nan, "width": np.nan, "eps_max": np.nan, "n": len(snr)}
    if len(snr) < 10 or found.all() or not found.any():
        return nan

    def curve(p: np.ndarray) -> np.ndarray:
        eps_max = 1.0 / (1.0 + np.exp(-p[2]))
        return eps_max / (1.0 + np.exp(-(snr - p[0]) / np.exp(p[1])))

    def nll(p: np.ndarray) -> float:
        e = np.clip(curve(p), 1e-9, 1 - 1e-9)
        return -float(np.sum(np.where(found, np.log(e), np.log1p(-e))))

    start = np.array([float(np.median(snr)), 0.0, 3.0])
    best = minimize(nll, start, method="Nelder-Mead", options={"xatol": 1e-4, "fatol": 1e-6})
    s0, width, eps_max = best.x[0], float(np.exp(best.x[1])), 1.0 / (1.0 + np.exp(-best.x[2]))
    # eps(s) = 0.5  <=>  exp(-(s - s0) / width) = 2 eps_max - 1
    snr50 = s0 - width * np.log(2 * eps_max - 1) if eps_max > 0.5 else np.nan
    return {
        "snr50": float(snr50),
        "s0": float(s0),
        "width": width,
        "eps_max": float(eps_max),
        "n": len(snr),
    }
