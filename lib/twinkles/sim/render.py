"""Drawing one visit into an eimage (the PhoSim stand-in), with GalSim.

For visit ``v`` the renderer:

1. builds the *true* WCS (true pointing and rotation, radial distortion) and the *nominal* one
   that goes into the header (OpSim pointing and rotSkyPos, no distortion);
2. converts every object's true flux at the visit's MJD to electrons with the true zero point
   (extinction and clouds included);
3. draws each point source (stars, supernovae, lensed-quasar images) as the PSF at its
   position, and each galaxy (bulge + disk Sersic) convolved with the PSF, on stamps of the
   local pixel grid, by discrete Fourier transform with the pixel response
   (:mod:`twinkles.sim.fourier`, objects in batches; the few stamps wider than its largest
   FFT by GalSim's ``drawImage``, the same drawing one object at a time);
4. adds the sky (``filtSkyBrightness`` through the zenith zero point, with a weak gradient);
5. draws Poisson noise on the total expectation (gain 1, no read noise, as eimages);
6. adds cosmic-ray tracks; 7. saturates at the full well, bleeding the excess charge up and
   down the column, as a CCD does.

Every random draw comes from the stream ``(seed, "render", visit)``: a visit's pixels do not
depend on which other visits are drawn, in what order or on how many processes.
"""

from __future__ import annotations

import datetime as dt
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import galsim
import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS

from twinkles import __version__
from twinkles.config import RunConfig
from twinkles.image.compression import ImageCompression, compressed_plane
from twinkles.sim.fourier import (
    StampBatch,
    draw_stamps,
    fft_size,
    quadratic_forms,
    reduced_shear_from_axis_ratio,
    reduced_shear_from_distortion,
    tabulated,
)
from twinkles.sim.galaxies import BULGE_TRUNCATION, DISK_TRUNCATION, component_fluxes
from twinkles.sim.psf import GSPARAMS, SimulatedPSF, unit_profile
from twinkles.sim.sky import Sky, random_stream
from twinkles.sim.wcs import make_wcs, wcs_to_header_dict
from twinkles.units import electrons_per_njy

__all__ = ["RenderedVisit", "eimage_hdulist", "nominal_header", "render_visit", "simulated_psf"]

#: Objects contributing less than this many electrons in total are not drawn.
MIN_ELECTRONS = 0.5
#: Largest stamp side (pixels) for one object.
MAX_STAMP = 1025
#: Mean cosmic-ray track length (pixels) and median deposit per pixel of track (electrons).
CR_MEAN_LENGTH = 8.0
CR_MEDIAN_DEPOSIT = 800.0


@dataclass
class RenderedVisit:
    """One drawn visit.

    Attributes
    ----------
    visit : int
        obsHistID.
    image : ndarray
        Pixels (electrons), float32, shape (height, width).
    header : astropy.io.fits.Header
        What a telescope knows: visit, time, filter, exposure, airmass, nominal pointing and WCS.
    true_wcs : astropy.wcs.WCS
        The WCS the image was drawn with.
    psf : SimulatedPSF
        The PSF it was drawn with.
    truth : dict
        JSON-able per-visit truth: zero point, sky level, PSF, true WCS, cosmic rays.
    objects : Table
        Every object drawn: id, x, y (0-based pixels, true WCS), flux (nJy and electrons).
    """

    visit: int
    image: np.ndarray
    header: fits.Header
    true_wcs: WCS
    psf: SimulatedPSF
    truth: dict[str, Any]
    objects: Table = field(repr=False)


def simulated_psf(conditions: Any) -> SimulatedPSF:
    """The visit's PSF from its conditions-truth row."""
    return SimulatedPSF(
        profile=str(conditions["psf_profile"]),
        fwhm=float(conditions["psf_fwhm"]),
        beta=float(conditions["psf_beta"]),
        e1=float(conditions["psf_e1"]),
        e2=float(conditions["psf_e2"]),
        fwhm_gradient=(float(conditions["psf_fwhm_grad_x"]), float(conditions["psf_fwhm_grad_y"])),
        e1_gradient=(float(conditions["psf_e1_grad_x"]), float(conditions["psf_e1_grad_y"])),
        e2_gradient=(float(conditions["psf_e2_grad_x"]), float(conditions["psf_e2_grad_y"])),
        fwhm_radial=float(conditions["psf_fwhm_radial"])
        if "psf_fwhm_radial" in conditions.colnames
        else 0.0,
    )


def nominal_header(visit_row: Any, config: RunConfig) -> fits.Header:
    """The eimage header: what the telescope knows (see ``docs/eimage-format.md``)."""
    s = config.sensor
    nominal = make_wcs(
        float(visit_row["fieldRA"]),
        float(visit_row["fieldDec"]),
        float(visit_row["rotSkyPos"]),
        s.pixel_scale,
        s.width_px,
        s.height_px,
    )
    mjd = float(visit_row["expMJD"])
    date_obs = dt.datetime(1858, 11, 17) + dt.timedelta(days=mjd)
    h = fits.Header()
    h["OBSID"] = (int(visit_row["obsHistID"]), "visit id (OpSim obsHistID)")
    h["MJD-OBS"] = (mjd, "start of exposure, MJD (UTC)")
    h["DATE-OBS"] = (date_obs.isoformat(timespec="milliseconds"), "start of exposure (UTC)")
    h["FILTER"] = (str(visit_row["filter"]), "LSST filter")
    h["EXPTIME"] = (float(visit_row["visitExpTime"]), "exposure time (s)")
    h["AIRMASS"] = (float(visit_row["airmass"]), "airmass at the start")
    h["ROTANG"] = (float(visit_row["rotSkyPos"]), "rotSkyPos: PA of +y, N through E (deg)")
    h["RATEL"] = (float(visit_row["fieldRA"]), "nominal pointing RA (deg)")
    h["DECTEL"] = (float(visit_row["fieldDec"]), "nominal pointing Dec (deg)")
    h["BUNIT"] = ("electron", "pixel unit")
    h["GAIN"] = (1.0, "electrons per count")
    h["RDNOISE"] = (0.0, "read noise (electrons)")
    h["SATURATE"] = (s.saturation, "full well (electrons)")
    h["PIXSCALE"] = (s.pixel_scale, "nominal pixel scale (arcsec)")
    h["DETNAME"] = ("R22_S11", "sensor")
    h["TELESCOP"] = "LSST"
    h["INSTRUME"] = "twinkles-sim"
    h["CREATOR"] = (f"twinkles {__version__}", "simulated eimage")
    h["WCSAXES"] = 2
    h["CTYPE1"], h["CTYPE2"] = "RA---TAN", "DEC--TAN"
    h["CUNIT1"], h["CUNIT2"] = "deg", "deg"
    h["CRPIX1"], h["CRPIX2"] = float(nominal.wcs.crpix[0]), float(nominal.wcs.crpix[1])
    h["CRVAL1"], h["CRVAL2"] = float(nominal.wcs.crval[0]), float(nominal.wcs.crval[1])
    cd = nominal.wcs.cd
    h["CD1_1"], h["CD1_2"] = float(cd[0, 0]), float(cd[0, 1])
    h["CD2_1"], h["CD2_2"] = float(cd[1, 0]), float(cd[1, 1])
    h["RADESYS"] = "ICRS"
    h["EQUINOX"] = 2000.0
    return h


@lru_cache(maxsize=4)
def _unit_sersic(n: float, truncation: float) -> galsim.GSObject:
    """Unit half-light-radius Sersic; dilating it keeps GalSim's tables cached."""
    return galsim.Sersic(n=n, half_light_radius=1.0, trunc=truncation, gsparams=GSPARAMS)


def _stamp_size(radius_px: float) -> int:
    return int(min(2 * np.ceil(radius_px) + 1, MAX_STAMP))


def _normalised(x: np.ndarray, y: np.ndarray, width: int, height: int) -> tuple:
    half_diag = 0.5 * np.hypot(width, height)
    return (x - 0.5 * (width - 1)) / half_diag, (y - 0.5 * (height - 1)) / half_diag


def _cosmic_rays(
    shape: tuple[int, int], config: RunConfig, rng: np.random.Generator
) -> tuple[np.ndarray, list[list[float]]]:
    """Deposited charge of cosmic-ray tracks, and the tracks (x0, y0, x1, y1, e-/pixel)."""
    s = config.sensor
    area_cm2 = shape[0] * shape[1] * (s.pixel_size_um * 1e-4) ** 2
    n = rng.poisson(config.render.cosmic_ray_rate * area_cm2 * s.exposure_time / 60.0)
    deposit = np.zeros(shape, dtype=np.float32)
    tracks = []
    for _ in range(n):
        x0, y0 = rng.uniform(0, shape[1]), rng.uniform(0, shape[0])
        length = 1.0 + rng.exponential(CR_MEAN_LENGTH)
        angle = rng.uniform(0, 2 * np.pi)
        per_pixel = CR_MEDIAN_DEPOSIT * np.exp(0.5 * rng.standard_normal())
        x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
        t = np.linspace(0.0, 1.0, int(np.ceil(4 * length)) + 1)
        xs = np.rint(x0 + t * (x1 - x0)).astype(int)
        ys = np.rint(y0 + t * (y1 - y0)).astype(int)
        ok = (xs >= 0) & (xs < shape[1]) & (ys >= 0) & (ys < shape[0])
        np.add.at(deposit, (ys[ok], xs[ok]), per_pixel * length / len(t))
        tracks.append([x0, y0, x1, y1, per_pixel])
    return deposit, tracks


def bleed_saturation(image: np.ndarray, full_well: float) -> np.ndarray:
    """Clip at the full well and move the excess charge along the column, up and down.

    Charge is conserved except where a trail runs off the sensor.
    """
    cols = np.flatnonzero((image > full_well).any(axis=0))
    height = image.shape[0]
    for c in cols:
        col = image[:, c].astype(np.float64)
        over = np.flatnonzero(col > full_well)
        # contiguous runs of saturated pixels
        breaks = np.flatnonzero(np.diff(over) > 1)
        for run in np.split(over, breaks + 1):
            excess = float(np.sum(col[run] - full_well))
            col[run] = full_well
            up, down = run[-1] + 1, run[0] - 1
            half = 0.5 * excess
            for direction, start in ((1, up), (-1, down)):
                remaining, k = half, start
                while remaining > 0 and 0 <= k < height:
                    room = max(full_well - col[k], 0.0)
                    added = min(room, remaining)
                    col[k] += added
                    remaining -= added
                    k += direction
        image[:, c] = col
    return image


@dataclass
class _Stamper:
    """Draws GalSim profiles on stamps of the sensor's true pixel grid."""

    canvas: galsim.Image
    true_wcs: WCS
    local_wcs: galsim.JacobianWCS
    jacobian: np.ndarray
    psf: SimulatedPSF
    pixel_scale: float
    psf_cache: dict[tuple[float, float], galsim.GSObject] = field(default_factory=dict)

    @classmethod
    def for_visit(cls, true_wcs: WCS, psf: SimulatedPSF, width: int, height: int) -> _Stamper:
        cd = true_wcs.wcs.cd * 3600.0
        # GalSim world coordinates: u towards East (xi), v towards North (eta), in arcsec
        local = galsim.JacobianWCS(cd[0, 0], cd[0, 1], cd[1, 0], cd[1, 1])
        scale = float(np.sqrt(abs(np.linalg.det(cd))))
        return cls(galsim.ImageF(width, height, init_value=0.0), true_wcs, local, cd, psf, scale)

    def pixels(self, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """0-based pixel positions through the true WCS."""
        return self.true_wcs.all_world2pix(np.asarray(ra), np.asarray(dec), 0)

    def normalised(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        width, height = self.canvas.array.shape[1], self.canvas.array.shape[0]
        return _normalised(x, y, width, height)

    def on_canvas(self, x: np.ndarray, y: np.ndarray, reach: np.ndarray | float) -> np.ndarray:
        """Whether a stamp of ``reach`` pixels around (x, y) touches the sensor."""
        height, width = self.canvas.array.shape
        return (x > -reach) & (x < width - 1 + reach) & (y > -reach) & (y < height - 1 + reach)

    def psf_at(self, X: float, Y: float) -> galsim.GSObject:
        key = (0.0, 0.0) if self.psf.is_constant else (round(X, 3), round(Y, 3))
        if key not in self.psf_cache:
            self.psf_cache[key] = self.psf.at(X, Y)
        return self.psf_cache[key]

    def add(self, obj: galsim.GSObject, x: float, y: float, radius_px: float) -> None:
        """Draw ``obj`` centred at 0-based pixel (x, y) and add it to the canvas.

        FFT drawing, the pixel response included; GalSim would otherwise draw a lone
        truncated Moffat by real-space convolution, 30x slower.
        """
        size = _stamp_size(radius_px)
        stamp = obj.drawImage(
            nx=size,
            ny=size,
            wcs=self.local_wcs,
            center=galsim.PositionD(x + 1.0, y + 1.0),
            method="fft",
        )
        overlap = stamp.bounds & self.canvas.bounds
        if overlap.isDefined():
            self.canvas[overlap] += stamp[overlap]


def _psf_forms(stamper: _Stamper, X: np.ndarray, Y: np.ndarray) -> tuple:
    """The PSF's FWHM (arcsec) at normalised positions, and its Fourier quadratic forms."""
    fwhm, e1, e2 = stamper.psf.parameters_at(X, Y)
    fwhm = np.broadcast_to(fwhm, np.shape(X))
    g1, g2 = reduced_shear_from_distortion(e1, e2)
    return fwhm, quadratic_forms(fwhm, g1, g2, stamper.jacobian)


def _draw(stamper: _Stamper, batch: StampBatch, galsim_profile: Callable[[int], Any]) -> None:
    """Draw the objects of ``batch``: in Fourier space where the stamp fits a batch FFT,
    by GalSim otherwise (a few of the largest galaxies and brightest stars)."""
    batched = np.array([fft_size(int(s)) > 0 for s in batch.stamp], dtype=bool)
    psf = stamper.psf
    draw_stamps(
        stamper.canvas.array,
        batch.subset(np.flatnonzero(batched)),
        tabulated(unit_profile(psf.profile, psf.beta)),
        tabulated(_unit_sersic(1.0, DISK_TRUNCATION)),
        tabulated(_unit_sersic(4.0, BULGE_TRUNCATION)),
    )
    for k in np.flatnonzero(~batched):
        stamper.add(galsim_profile(k), batch.x[k], batch.y[k], 0.5 * (batch.stamp[k] - 1))


def _draw_point_sources(stamper: _Stamper, points: Table, gain: float) -> tuple:
    """Stars, supernovae and lensed-quasar images: the PSF at each position."""
    px, py = stamper.pixels(points["ra"], points["dec"])
    flux_e = np.asarray(points["flux"]) * gain
    psf, scale = stamper.psf, stamper.pixel_scale
    brightest = float(flux_e.max()) if len(flux_e) else 0.0
    on = np.flatnonzero(
        (flux_e > MIN_ELECTRONS)
        & stamper.on_canvas(px, py, psf.stamp_radius(psf.fwhm * 1.1, brightest) / scale)
    )
    X, Y = stamper.normalised(px[on], py[on])
    fwhm, psf_form = _psf_forms(stamper, X, Y)
    radius = [psf.stamp_radius(f, e) / scale for f, e in zip(fwhm, flux_e[on], strict=True)]
    stamp = np.array([_stamp_size(r) for r in radius], dtype=int)
    nothing = np.zeros(len(on))
    batch = StampBatch(
        px[on], py[on], stamp, flux_e[on], nothing, psf_form, nothing, psf_form, psf_form
    )
    _draw(stamper, batch, lambda k: stamper.psf_at(X[k], Y[k]) * batch.point_flux[k])
    return np.asarray(points["id"])[on], px[on], py[on], np.asarray(points["flux"])[on]


def _draw_galaxies(stamper: _Stamper, galaxies: Table, band: str, gain: float) -> tuple:
    """Bulge + disk Sersic galaxies convolved with the PSF at their positions."""
    bulge_njy, disk_njy = component_fluxes(galaxies, band)
    gx, gy = stamper.pixels(galaxies["ra"], galaxies["dec"])
    disk_hlr, bulge_hlr = np.asarray(galaxies["disk_hlr"]), np.asarray(galaxies["bulge_hlr"])
    disk_q, bulge_q = np.asarray(galaxies["disk_q"]), np.asarray(galaxies["bulge_q"])
    extent = np.maximum(
        np.where(disk_njy > 0, DISK_TRUNCATION * disk_hlr / np.sqrt(disk_q), 0.0),
        np.where(bulge_njy > 0, BULGE_TRUNCATION * bulge_hlr / np.sqrt(bulge_q), 0.0),
    )
    psf = stamper.psf
    radius_px = (extent + psf.stamp_radius(psf.fwhm * 1.1)) / stamper.pixel_scale
    on = np.flatnonzero(
        ((bulge_njy + disk_njy) * gain > MIN_ELECTRONS) & stamper.on_canvas(gx, gy, radius_px)
    )
    GX, GY = stamper.normalised(gx[on], gy[on])
    _, psf_form = _psf_forms(stamper, GX, GY)
    beta_rad = np.radians(90.0 - np.asarray(galaxies["position_angle"])[on])  # PA: N through E
    disk_flux = np.where(disk_njy[on] > 0, disk_njy[on] * gain, 0.0)
    bulge_flux = np.where(bulge_njy[on] > 0, bulge_njy[on] * gain, 0.0)
    batch = StampBatch(
        gx[on],
        gy[on],
        np.array([_stamp_size(r) for r in radius_px[on]], dtype=int),
        np.zeros(len(on)),
        disk_flux,
        quadratic_forms(
            disk_hlr[on], *reduced_shear_from_axis_ratio(disk_q[on], beta_rad), stamper.jacobian
        ),
        bulge_flux,
        quadratic_forms(
            bulge_hlr[on], *reduced_shear_from_axis_ratio(bulge_q[on], beta_rad), stamper.jacobian
        ),
        psf_form,
    )

    def galaxy(k: int) -> galsim.GSObject:
        i, beta = on[k], beta_rad[k] * galsim.radians
        parts = []
        if disk_flux[k] > 0:
            parts.append(
                _unit_sersic(1.0, DISK_TRUNCATION)
                .dilate(disk_hlr[i])
                .shear(q=disk_q[i], beta=beta)
                .withFlux(disk_flux[k])
            )
        if bulge_flux[k] > 0:
            parts.append(
                _unit_sersic(4.0, BULGE_TRUNCATION)
                .dilate(bulge_hlr[i])
                .shear(q=bulge_q[i], beta=beta)
                .withFlux(bulge_flux[k])
            )
        return galsim.Convolve([galsim.Add(parts), stamper.psf_at(GX[k], GY[k])])

    _draw(stamper, batch, galaxy)
    return np.asarray(galaxies["id"])[on], gx[on], gy[on], (bulge_njy + disk_njy)[on]


def render_visit(sky: Sky, config: RunConfig, visit: int) -> RenderedVisit:
    """Draw one visit of the run (see the module docstring)."""
    row, cond = sky.visit(visit)
    s = config.sensor
    band, mjd = str(row["filter"]), float(row["expMJD"])
    width, height = s.width_px, s.height_px
    true_wcs = make_wcs(
        float(cond["true_ra"]),
        float(cond["true_dec"]),
        float(cond["true_rotation"]),
        s.pixel_scale,
        width,
        height,
        float(cond["distortion_px"]),
    )
    psf = simulated_psf(cond)
    zero_point = float(cond["zeroPoint"])
    gain = float(electrons_per_njy(zero_point))
    rng = random_stream(config.seed, "render", int(visit))

    stamper = _Stamper.for_visit(true_wcs, psf, width, height)
    with warnings.catch_warnings():
        # truncated (hard-edged) profiles: GalSim suggests real-space convolution, which is
        # far slower at these sizes
        warnings.simplefilter("ignore", galsim.GalSimWarning)
        drawn = [
            _draw_point_sources(stamper, sky.truth.point_sources(band, mjd), gain),
            _draw_galaxies(stamper, sky.truth.galaxies, band, gain),
        ]
    canvas = stamper.canvas

    # sky, noise, cosmic rays, saturation
    sky_level = float(cond["skyCounts"])
    sx, sy = _normalised(np.arange(width), np.arange(height), width, height)
    expected = canvas.array.astype(np.float64)
    expected += sky_level * (
        1.0 + float(cond["sky_grad_x"]) * sx[None, :] + float(cond["sky_grad_y"]) * sy[:, None]
    )
    image = rng.poisson(np.maximum(expected, 0.0)).astype(np.float32)
    del expected
    deposit, tracks = _cosmic_rays(image.shape, config, rng)
    image += deposit
    image = bleed_saturation(image, s.saturation)

    objects = Table()
    objects["id"] = np.concatenate([d[0] for d in drawn]).astype(np.int64)
    objects["x"] = np.concatenate([d[1] for d in drawn])
    objects["y"] = np.concatenate([d[2] for d in drawn])
    objects["flux"] = np.concatenate([d[3] for d in drawn])
    objects["flux"].unit = "nJy"
    objects["electrons"] = objects["flux"] * gain

    truth = {
        "visit": int(visit),
        "filter": band,
        "mjd": mjd,
        "zero_point": zero_point,
        "electrons_per_njy": gain,
        "sky_level": sky_level,
        "sky_gradient": [float(cond["sky_grad_x"]), float(cond["sky_grad_y"])],
        "fwhm_eff": float(row["FWHMeff"]),
        "psf": psf.to_dict(),
        "true_wcs": wcs_to_header_dict(true_wcs),
        "cosmic_rays": tracks,
        "n_objects_drawn": len(objects),
    }
    return RenderedVisit(
        visit=int(visit),
        image=image,
        header=nominal_header(row, config),
        true_wcs=true_wcs,
        psf=psf,
        truth=truth,
        objects=objects,
    )


def eimage_hdulist(
    rendered: RenderedVisit, compression: ImageCompression | None = None
) -> fits.HDUList:
    """The eimage as FITS: float32 electrons in the primary HDU or, with ``compression``,
    the header in the primary HDU and the pixels tile-compressed in the first extension (as
    fpack writes it; the step follows the noise the FITS library estimates tile by tile)."""
    if compression is None or compression.mode == "none":
        return fits.HDUList([fits.PrimaryHDU(data=rendered.image, header=rendered.header)])
    pixels = compressed_plane(rendered.image, "EIMAGE", None, compression)
    return fits.HDUList([fits.PrimaryHDU(header=rendered.header), pixels])
