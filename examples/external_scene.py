#!/usr/bin/env python3
"""Write an external scene: eimages, a reference catalog and a truth catalog, with GalSim.

A scene made *without* twinkles (nothing here imports it), the way another project's
simulator would make one, for ``twinkles run`` on external inputs (``runs/external.yaml``):

* another field (ELAIS-S1 by default) and its own populations: stars with colours, Sersic
  galaxies, variable stars with sinusoidal light curves and transients with Bazin light
  curves (some on host galaxies, one without);
* a PSF unlike the twinkles simulator's: an elliptical Moffat whose beta (2.5-4.5), FWHM
  (0.6-1.05" at the centre) and ellipticity change from visit to visit, and whose FWHM grows
  linearly across the sensor in a random direction by 6-12% from one side to the other;
* the nominal header WCS off the true one by arcseconds and a tenth of a degree; sky with a
  gradient and grey clouds; Poisson noise; saturation at the full well *without* bleeding;
  a few cosmic rays;
* files in the documented formats (``docs/eimage-format.md``, ``docs/refcat-format.md``,
  ``docs/truth-format.md``): the reference catalog with Gaia/DC2-like column names
  (``source_id``, ``coord_ra``, ``mag_r``, ``mag_r_err``, ``is_extended``), which the run
  configuration maps.

Usage::

    python examples/external_scene.py OUTDIR [--preset tiny|demo] [--seed N]

writes ``OUTDIR/eimages/*.fits``, ``OUTDIR/refcat.parquet``, ``OUTDIR/truth_objects.parquet``,
``OUTDIR/truth_light_curves.parquet`` and ``OUTDIR/scene.json`` (what was drawn).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import galsim
import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

#: Magnitude of a source giving 1 electron per second (LSST, SMTN-002), and the dark sky.
ZP_1S = {"u": 26.52, "g": 28.51, "r": 28.36, "i": 28.17, "z": 27.78, "y": 26.82}
SKY_MAG = {"u": 22.96, "g": 22.26, "r": 21.20, "i": 20.48, "z": 19.60, "y": 18.61}
#: Colours of the populations relative to r (m_band - m_r).
STAR_COLOUR_SLOPE = {"u": 2.2, "g": 1.0, "r": 0.0, "i": -0.35, "z": -0.5, "y": -0.6}
GALAXY_COLOUR = {"u": 1.4, "g": 0.55, "r": 0.0, "i": -0.3, "z": -0.45, "y": -0.55}
FULL_WELL = 100000.0
EXPTIME = 30.0
PIXEL_SCALE = 0.2  # arcsec


@dataclass
class Preset:
    """The size of a scene."""

    size: int
    n_visits: int
    bands: tuple[str, ...]
    n_years: int
    star_density: float  # per deg^2, r 15-24.5
    galaxy_density: float  # per deg^2, r 18-25.5
    n_transients: int
    n_variable_stars: int


PRESETS = {
    "tiny": Preset(320, 12, ("g", "r", "i"), 1, 4.0e5, 1.2e5, 2, 2),
    "demo": Preset(1024, 30, ("g", "r", "i"), 2, 4.0e4, 1.5e5, 8, 6),
}


def nominal_cd(rotation_deg: float) -> np.ndarray:
    """CD matrix of a North-up sensor turned by rotSkyPos (docs/eimage-format.md)."""
    r = np.deg2rad(rotation_deg)
    s = PIXEL_SCALE / 3600.0
    return s * np.array([[-np.cos(r), np.sin(r)], [np.sin(r), np.cos(r)]])


def tan_header(ra: float, dec: float, rotation_deg: float, width: int, height: int) -> fits.Header:
    h = fits.Header()
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CRPIX1"], h["CRPIX2"] = 0.5 * (width + 1), 0.5 * (height + 1)
    h["CRVAL1"], h["CRVAL2"] = ra, dec
    cd = nominal_cd(rotation_deg)
    h["CD1_1"], h["CD1_2"], h["CD2_1"], h["CD2_2"] = cd[0, 0], cd[0, 1], cd[1, 0], cd[1, 1]
    return h


def bazin(t: np.ndarray, peak_flux: float, t0: float, rise: float, fall: float) -> np.ndarray:
    """A transient's flux: a Bazin et al. (2009) profile scaled to ``peak_flux`` at its top."""
    t = np.asarray(t, dtype=float)
    x = (t - t0) / fall
    with np.errstate(over="ignore"):
        f = np.exp(-x) / (1.0 + np.exp(-(t - t0) / rise))
    grid = np.linspace(t0 - 5 * rise, t0 + 5 * rise, 2001)
    top = np.max(np.exp(-(grid - t0) / fall) / (1.0 + np.exp(-(grid - t0) / rise)))
    return peak_flux * np.nan_to_num(f) / top


#: AB magnitude of 1 nJy.
AB_NJY = 2.5 * np.log10(3631.0e9)


def mag_to_njy(mag: np.ndarray) -> np.ndarray:
    return 10.0 ** (-0.4 * (np.asarray(mag, dtype=float) - AB_NJY))


def power_law(n: int, lo: float, hi: float, slope: float, rng: np.random.Generator) -> np.ndarray:
    """Magnitudes with dN/dm ~ 10^(slope m) between lo and hi."""
    a, b = 10 ** (slope * lo), 10 ** (slope * hi)
    return np.log10(a + rng.random(n) * (b - a)) / slope


def make_sky(preset: Preset, ra0: float, dec0: float, rng: np.random.Generator) -> dict:
    """The scene's objects, visits and light curves."""
    half_diag = 0.5 * np.hypot(preset.size, preset.size) * PIXEL_SCALE / 3600.0
    radius = half_diag + 20.0 / 3600.0
    area = np.pi * radius**2
    cos_dec = np.cos(np.deg2rad(dec0))

    def positions(n: int, r: float) -> tuple[np.ndarray, np.ndarray]:
        rr = r * np.sqrt(rng.random(n))
        th = rng.uniform(0, 2 * np.pi, n)
        return ra0 + rr * np.cos(th) / cos_dec, dec0 + rr * np.sin(th)

    n_star = rng.poisson(preset.star_density * area)
    sra, sdec = positions(n_star, radius)
    s_r = power_law(n_star, 15.0, 24.5, 0.12, rng)
    s_col = rng.uniform(0.2, 1.4, n_star)  # g - r
    stars = {"ra": sra, "dec": sdec}
    for b in ZP_1S:
        stars[b] = s_r + STAR_COLOUR_SLOPE[b] * s_col

    n_gal = rng.poisson(preset.galaxy_density * area)
    gra, gdec = positions(n_gal, radius)
    g_r = power_law(n_gal, 18.0, 25.5, 0.35, rng)
    galaxies = {
        "ra": gra,
        "dec": gdec,
        "hlr": np.clip(0.8 * 10 ** (-0.12 * (g_r - 20.0)) * rng.lognormal(0, 0.25, n_gal), 0.15, 4),
        "n": np.where(rng.random(n_gal) < 0.3, 4.0, 1.0),
        "q": rng.uniform(0.3, 1.0, n_gal),
        "beta": rng.uniform(0, 180, n_gal),
    }
    for b in ZP_1S:
        galaxies[b] = g_r + GALAXY_COLOUR[b] + rng.normal(0, 0.1, n_gal)

    # visits: nights in an autumn season each year, one band per visit
    start = 60300.0
    nights = np.sort(
        rng.choice(
            np.concatenate([np.arange(150) + 365 * y for y in range(preset.n_years)]),
            preset.n_visits,
            replace=False,
        )
    )
    visits = []
    for k, night in enumerate(nights):
        visits.append(
            {
                "obsid": 1001 + 3 * k,
                "mjd": start + night + 0.12 + 0.05 * rng.random(),
                "band": preset.bands[k % len(preset.bands)],
            }
        )
    t_lo, t_hi = visits[0]["mjd"], visits[-1]["mjd"]

    # transients: the first on no host, the others on galaxies near the centre
    inner = 0.3 * preset.size * PIXEL_SCALE / 3600.0
    gal_off = np.hypot((gra - ra0) * cos_dec, gdec - dec0)
    hosts = np.flatnonzero((gal_off < inner) & (g_r < 22.5))
    transients = []
    for k in range(preset.n_transients):
        if k == 0 or len(hosts) == 0:
            host = -1
            tra, tdec = positions(1, inner)
            tra, tdec = float(tra[0]), float(tdec[0])
        else:
            host = int(rng.choice(hosts))
            offset = galaxies["hlr"][host] * rng.uniform(0.2, 0.8) / 3600.0
            angle = rng.uniform(0, 2 * np.pi)
            tra = gra[host] + offset * np.cos(angle) / cos_dec
            tdec = gdec[host] + offset * np.sin(angle)
        r_peak = rng.uniform(20.3, 22.3)
        colour = {"g": rng.uniform(-0.1, 0.4), "i": rng.uniform(-0.3, 0.2)}  # m_band - m_r
        transients.append(
            {
                "ra": tra,
                "dec": tdec,
                "host": host,
                "t0": rng.uniform(t_lo + 10, t_hi - 10),
                "rise": rng.uniform(3.0, 8.0),
                "fall": rng.uniform(15.0, 40.0),
                "peak": {b: r_peak + colour.get(b, 0.0) for b in ZP_1S},
            }
        )
    # variable stars: some of the moderately bright stars pulsate
    candidates = np.flatnonzero((s_r > 17.0) & (s_r < 21.0))
    chosen = rng.choice(candidates, min(preset.n_variable_stars, len(candidates)), replace=False)
    variables = {
        int(i): {
            "period": rng.uniform(0.3, 20.0),
            "amplitude": rng.uniform(0.1, 0.4),
            "phase": rng.random(),
        }
        for i in chosen
    }
    return {
        "stars": stars,
        "galaxies": galaxies,
        "visits": visits,
        "transients": transients,
        "variables": variables,
    }


def star_flux(sky: dict, i: int, band: str, mjd: float) -> float:
    """True flux (nJy) of star ``i`` at ``mjd``."""
    mag = sky["stars"][band][i]
    var = sky["variables"].get(i)
    if var is not None:
        mag = mag + var["amplitude"] * np.sin(2 * np.pi * (mjd / var["period"] + var["phase"]))
    return float(mag_to_njy(mag))


def transient_flux(tr: dict, band: str, mjd: np.ndarray | float) -> np.ndarray:
    return bazin(mjd, float(mag_to_njy(tr["peak"][band])), tr["t0"], tr["rise"], tr["fall"])


def render_visit(
    sky: dict, visit: dict, preset: Preset, ra0: float, dec0: float, rng: np.random.Generator
) -> tuple[np.ndarray, fits.Header, dict]:
    """One eimage: (pixels in electrons, header, what it was drawn with)."""
    size = preset.size
    band, mjd = visit["band"], visit["mjd"]
    rotation = rng.uniform(0, 360)
    cos_dec = np.cos(np.deg2rad(dec0))
    true_ra = ra0 + rng.normal(0, 1.0) / 3600.0 / cos_dec
    true_dec = dec0 + rng.normal(0, 1.0) / 3600.0
    true_header = tan_header(true_ra, true_dec, rotation, size, size)
    true_wcs = WCS(true_header)
    nominal = tan_header(
        true_ra + rng.normal(0, 2.5) / 3600.0 / cos_dec,
        true_dec + rng.normal(0, 2.5) / 3600.0,
        rotation + rng.normal(0, 0.08),
        size,
        size,
    )

    cloud = rng.exponential(0.03)
    zp = ZP_1S[band] + 2.5 * np.log10(EXPTIME) - cloud  # AB mag of 1 electron
    e_per_njy = 10 ** (-0.4 * (AB_NJY - zp))
    sky_level = 10 ** (-0.4 * (SKY_MAG[band] + rng.normal(0, 0.1) - zp)) * PIXEL_SCALE**2

    fwhm0 = rng.uniform(0.6, 1.05)
    beta = rng.uniform(2.5, 4.5)
    grad = rng.uniform(0.03, 0.06)  # fractional FWHM change per half-diagonal
    phi = rng.uniform(0, 2 * np.pi)
    e_mag, e_angle = rng.uniform(0.0, 0.05), rng.uniform(0, np.pi)
    centre = 0.5 * (size - 1)
    half_diag = 0.5 * np.hypot(size, size)

    def psf_at(x: float, y: float) -> galsim.GSObject:
        u = ((x - centre) * np.cos(phi) + (y - centre) * np.sin(phi)) / half_diag
        fwhm = fwhm0 * (1.0 + grad * u)
        return galsim.Moffat(beta=beta, fwhm=fwhm).shear(e=e_mag, beta=e_angle * galsim.radians)

    gs_wcs = galsim.AstropyWCS(wcs=true_wcs)
    image = galsim.ImageF(size, size, wcs=gs_wcs, init_value=0.0)
    gsparams = galsim.GSParams(maximum_fft_size=16384)

    alpha = fwhm0 * (1.0 + grad) / PIXEL_SCALE / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))

    def point_half(electrons: float) -> int:
        """Half-size of a point source's stamp that leaves out under 1 electron or 1e-4 of
        its light (a Moffat's wings fall only as r^(2 - 2 beta)): a sky has all of it."""
        missed = max(1e-4, 1.0 / max(electrons, 1.0))
        radius = alpha * np.sqrt(missed ** (1.0 / (1.0 - beta)) - 1.0)
        return int(np.clip(np.ceil(radius), 8, 2 * size))

    def draw(obj: galsim.GSObject, x: float, y: float, half: int) -> None:
        ix, iy = round(x), round(y)
        bounds = galsim.BoundsI(ix - half + 1, ix + half + 1, iy - half + 1, iy + half + 1)
        bounds = bounds & image.bounds
        if not bounds.isDefined():
            return
        stamp = image[bounds]
        obj.drawImage(image=stamp, add_to_image=True, center=galsim.PositionD(x + 1, y + 1))

    margin = 60

    def near_sensor(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.flatnonzero(
            (x > -margin) & (x < size + margin) & (y > -margin) & (y < size + margin)
        )

    # stars
    sx, sy = true_wcs.all_world2pix(sky["stars"]["ra"], sky["stars"]["dec"], 0)
    for i in np.flatnonzero(
        (sx > -margin) & (sx < size + margin) & (sy > -margin) & (sy < size + margin)
    ):
        electrons = star_flux(sky, int(i), band, mjd) * e_per_njy
        draw(
            psf_at(sx[i], sy[i]).withFlux(electrons).withGSParams(gsparams),
            sx[i],
            sy[i],
            point_half(electrons),
        )
    # galaxies
    g = sky["galaxies"]
    gx, gy = true_wcs.all_world2pix(g["ra"], g["dec"], 0)
    for i in np.flatnonzero(
        (gx > -margin) & (gx < size + margin) & (gy > -margin) & (gy < size + margin)
    ):
        electrons = float(mag_to_njy(g[band][i])) * e_per_njy
        profile = galsim.Sersic(n=g["n"][i], half_light_radius=g["hlr"][i], gsparams=gsparams)
        profile = profile.shear(q=g["q"][i], beta=g["beta"][i] * galsim.degrees)
        obj = galsim.Convolve(
            [profile.withFlux(electrons), psf_at(gx[i], gy[i])], gsparams=gsparams
        )
        half = int(np.clip(6 * g["hlr"][i] / PIXEL_SCALE, 16, 96))
        draw(obj, gx[i], gy[i], half)
    # transients
    for tr in sky["transients"]:
        x, y = true_wcs.all_world2pix([tr["ra"]], [tr["dec"]], 0)
        electrons = float(transient_flux(tr, band, mjd)) * e_per_njy
        if electrons > 0:
            draw(psf_at(x[0], y[0]).withFlux(electrons), x[0], y[0], point_half(electrons))

    expected = image.array.astype(np.float64)
    yy, xx = np.mgrid[0:size, 0:size]
    sky_grad = rng.uniform(-0.01, 0.01, 2)
    expected += sky_level * (
        1 + sky_grad[0] * (xx - centre) / size + sky_grad[1] * (yy - centre) / size
    )
    pixels = rng.poisson(np.clip(expected, 0, None)).astype(np.float32)
    # a few cosmic rays: short straight tracks
    for _ in range(rng.poisson(size * size / 2.0e5)):
        x0, y0 = rng.uniform(0, size, 2)
        length, angle = rng.uniform(2, 12), rng.uniform(0, np.pi)
        for t in np.linspace(0, length, int(length * 2) + 1):
            px, py = int(x0 + t * np.cos(angle)), int(y0 + t * np.sin(angle))
            if 0 <= px < size and 0 <= py < size:
                pixels[py, px] += rng.uniform(1500, 6000)
    np.minimum(pixels, FULL_WELL, out=pixels)  # saturation, no bleeding

    header = fits.Header()
    header["OBSID"] = visit["obsid"]
    header["MJD-OBS"] = mjd
    header["FILTER"] = band
    header["EXPTIME"] = EXPTIME
    header.update(nominal)
    header["SATURATE"] = FULL_WELL
    header["ROTANG"] = rotation
    header["RATEL"], header["DECTEL"] = nominal["CRVAL1"], nominal["CRVAL2"]
    header["BUNIT"] = "electron"
    header["ORIGIN"] = "examples/external_scene.py (GalSim)"
    truth = {
        "visit": visit["obsid"],
        "band": band,
        "mjd": mjd,
        "zero_point": zp,
        "sky_level": sky_level,
        "psf": {
            "profile": "moffat",
            "beta": beta,
            "fwhm_centre_arcsec": fwhm0,
            "fwhm_gradient_per_half_diagonal": grad,
            "gradient_angle_deg": float(np.rad2deg(phi)),
            "e": e_mag,
        },
        "true_pointing": [true_ra, true_dec, rotation],
    }
    return pixels, header, truth


def write_scene(outdir: Path, preset: Preset, seed: int, ra0: float, dec0: float) -> dict:
    rng = np.random.default_rng(seed)
    sky = make_sky(preset, ra0, dec0, rng)
    (outdir / "eimages").mkdir(parents=True, exist_ok=True)
    drawn = []
    for visit in sky["visits"]:
        pixels, header, truth = render_visit(sky, visit, preset, ra0, dec0, rng)
        fits.PrimaryHDU(pixels, header=header).writeto(
            outdir / "eimages" / f"elais_{visit['obsid']}.fits", overwrite=True
        )
        drawn.append(truth)

    stars, gals = sky["stars"], sky["galaxies"]
    n_s, n_g = len(stars["ra"]), len(gals["ra"])
    star_ids = 500_000 + np.arange(n_s)
    gal_ids = 700_000 + np.arange(n_g)
    tr_ids = 900_000 + np.arange(len(sky["transients"]))
    kinds = np.array(
        ["variable_star" if i in sky["variables"] else "star" for i in range(n_s)]
        + ["galaxy"] * n_g
        + ["supernova"] * len(tr_ids)
    )
    objects = Table()
    objects["id"] = np.concatenate([star_ids, gal_ids, tr_ids]).astype(np.int64)
    objects["ra"] = np.concatenate([stars["ra"], gals["ra"], [t["ra"] for t in sky["transients"]]])
    objects["dec"] = np.concatenate(
        [stars["dec"], gals["dec"], [t["dec"] for t in sky["transients"]]]
    )
    objects["kind"] = kinds
    for b in preset.bands:
        objects[f"{b}_mag"] = np.concatenate([stars[b], gals[b], np.full(len(tr_ids), np.nan)])
    objects["host_id"] = np.concatenate(
        [
            np.full(n_s + n_g, -1),
            [gal_ids[t["host"]] if t["host"] >= 0 else -1 for t in sky["transients"]],
        ]
    ).astype(np.int64)
    objects.write(outdir / "truth_objects.parquet", overwrite=True)

    rows = {"id": [], "mjd": [], "band": [], "flux": []}
    t_visits = {
        b: np.array([v["mjd"] for v in sky["visits"] if v["band"] == b]) for b in preset.bands
    }
    grid = np.arange(sky["visits"][0]["mjd"] - 30, sky["visits"][-1]["mjd"] + 30, 1.0)
    for k, tr in enumerate(sky["transients"]):
        for b in preset.bands:
            t = np.sort(np.concatenate([grid, t_visits[b]]))
            rows["id"] += [tr_ids[k]] * len(t)
            rows["mjd"] += t.tolist()
            rows["band"] += [b] * len(t)
            rows["flux"] += transient_flux(tr, b, t).tolist()
    for i in sky["variables"]:
        for b in preset.bands:
            for t in t_visits[b]:
                rows["id"].append(star_ids[i])
                rows["mjd"].append(float(t))
                rows["band"].append(b)
                rows["flux"].append(star_flux(sky, i, b, float(t)))
    curves = Table(rows)
    curves["id"] = np.asarray(curves["id"], dtype=np.int64)
    curves.write(outdir / "truth_light_curves.parquet", overwrite=True)

    # the reference catalog: stars to r = 22 and bright galaxies, flagged, with errors
    ref_rng = np.random.default_rng(seed + 1)
    bright_s = np.flatnonzero(stars["r"] < 22.0)
    bright_g = np.flatnonzero(gals["r"] < 20.0)
    ref = Table()
    ref["source_id"] = np.concatenate([star_ids[bright_s], gal_ids[bright_g]]).astype(np.int64)
    ra = np.concatenate([stars["ra"][bright_s], gals["ra"][bright_g]])
    dec = np.concatenate([stars["dec"][bright_s], gals["dec"][bright_g]])
    r = np.concatenate([stars["r"][bright_s], gals["r"][bright_g]])
    pos_err = np.hypot(3.0, 15.0 * 10 ** (0.2 * (r - 22.0)))  # mas
    ref["coord_ra"] = ra + pos_err * ref_rng.standard_normal(len(ra)) / 3.6e6 / np.cos(
        np.deg2rad(dec)
    )
    ref["coord_dec"] = dec + pos_err * ref_rng.standard_normal(len(ra)) / 3.6e6
    for b in preset.bands:
        m = np.concatenate([stars[b][bright_s], gals[b][bright_g]])
        err = np.hypot(0.005, 0.2 * 10 ** (0.4 * (m - 24.5)))
        ref[f"mag_{b}"] = m + err * ref_rng.standard_normal(len(m))
        ref[f"mag_{b}_err"] = err
    ref["is_extended"] = np.concatenate(
        [np.zeros(len(bright_s), bool), np.ones(len(bright_g), bool)]
    )
    ref.write(outdir / "refcat.parquet", overwrite=True)

    scene = {
        "preset": asdict(preset),
        "seed": seed,
        "field": [ra0, dec0],
        "n_stars": int(n_s),
        "n_galaxies": int(n_g),
        "n_transients": len(tr_ids),
        "n_variable_stars": len(sky["variables"]),
        "visits": drawn,
    }
    (outdir / "scene.json").write_text(json.dumps(scene, indent=1))
    return scene


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--ra", type=float, default=9.45, help="field centre (deg)")
    parser.add_argument("--dec", type=float, default=-44.0, help="field centre (deg)")
    args = parser.parse_args(argv)
    if args.outdir.exists():
        parser.error(f"{args.outdir} exists; remove it or name another folder")
    # written beside and renamed at the end: a folder that exists is a complete scene
    partial = args.outdir.with_name(f".{args.outdir.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    scene = write_scene(partial, PRESETS[args.preset], args.seed, args.ra, args.dec)
    partial.rename(args.outdir)
    print(
        f"{args.outdir}: {len(scene['visits'])} eimages, {scene['n_stars']} stars, "
        f"{scene['n_galaxies']} galaxies, {scene['n_transients']} transients"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
