"""Scenes drawn with GalSim directly, not with ``twinkles.sim``: PSFs the project's simulator
does not make, for checks that must not only hold on our own pixels.

:func:`psf_pattern_exposure` draws isolated stars on a jittered grid under a PSF whose width
changes across the sensor as a gradient in a random direction or as a radial
(focal-plane-like) pattern, with a Moffat or a Kolmogorov-with-optics profile;
:func:`field_exposure` stars and galaxies on a known flat sky; :func:`saturated_stars_exposure`
stars whose cores saturate.
"""

from __future__ import annotations

from dataclasses import dataclass

import galsim
import numpy as np

from twinkles.image import Exposure
from twinkles.image.psf import PixelPSF

PIXEL_SCALE = 0.2  # arcsec
FULL_WELL = 100000.0


@dataclass
class PatternScene:
    """The exposure (sky included, as an eimage after ISR) and the truth of its stars."""

    exposure: Exposure
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    """True total flux of each star (electrons)."""
    width_scale: np.ndarray
    """The PSF's width at each star over the width at the sensor's centre."""


def _draw(image: galsim.Image, obj: galsim.GSObject, x: float, y: float, half: int) -> None:
    """Add ``obj`` centred at 0-based pixel (x, y), on a stamp of half-size ``half``."""
    ix, iy = round(x), round(y)
    bounds = (
        galsim.BoundsI(ix - half + 1, ix + half + 1, iy - half + 1, iy + half + 1) & image.bounds
    )
    if bounds.isDefined():
        obj.drawImage(image=image[bounds], add_to_image=True, center=galsim.PositionD(x + 1, y + 1))


def _noisy_exposure(
    truth: np.ndarray, sky: float, rng: np.random.Generator, seed: int, clip: bool = False
) -> Exposure:
    """Sky and Gaussian noise of the Poisson variance added to ``truth``, as an eimage after
    ISR; with ``clip`` the pixels are clipped at the full well."""
    variance = truth + sky
    pixels = truth + sky + rng.normal(size=truth.shape) * np.sqrt(variance)
    if clip:
        pixels = np.minimum(pixels, FULL_WELL)
    return Exposure(
        image=pixels.astype(np.float32),
        mask=np.zeros(truth.shape, dtype=np.int32),
        variance=variance.astype(np.float32),
        metadata={"visit": seed, "saturate": FULL_WELL, "filter": "r"},
    )


def psf_profile(profile: str, fwhm: float, beta: float = 3.0) -> galsim.GSObject:
    """A PSF of FWHM ``fwhm`` (arcsec): ``moffat`` (``beta``) or ``kolmogorov`` (atmosphere
    convolved with a 0.35" Gaussian optics term, whose wings reach far beyond a Moffat's
    core; the atmosphere's FWHM is set so that the total is about ``fwhm``)."""
    if profile == "moffat":
        return galsim.Moffat(beta=beta, fwhm=fwhm)
    if profile == "kolmogorov":
        atmosphere = np.sqrt(max(fwhm**2 - 0.35**2, 0.1**2))
        return galsim.Convolve(galsim.Kolmogorov(fwhm=atmosphere), galsim.Gaussian(fwhm=0.35))
    raise ValueError(f"profile: {profile!r} is not moffat or kolmogorov")


def psf_pattern_exposure(
    pattern: str = "linear",
    profile: str = "moffat",
    change: float = 0.12,
    fwhm: float = 0.8,
    seed: int = 1,
    size: int = 512,
    spacing: int = 34,
    flux_range: tuple[float, float] = (2.0e4, 8.0e5),
    sky: float = 800.0,
) -> PatternScene:
    """Stars under a PSF whose width changes over the sensor.

    Parameters
    ----------
    pattern : str
        ``linear``: the width grows along a random direction, by ``change`` from one corner
        to the opposite one; ``radial``: it grows with the square of the distance from the
        centre, by ``change`` from the centre to a corner.
    profile : str
        See :func:`psf_profile`.
    change : float
        Fractional change of the width (see ``pattern``).
    fwhm : float
        FWHM at the centre (arcsec).
    seed : int
        Positions, fluxes, the gradient's direction and the noise.
    size, spacing : int
        Sensor side and grid spacing (pixels).
    flux_range : tuple of float
        Stars' fluxes are log-uniform in this range (electrons).
    sky : float
        Sky level (electrons per pixel); noise is Gaussian with the Poisson variance.
    """
    rng = np.random.default_rng(seed)
    grid = np.arange(spacing, size - spacing + 1, spacing, dtype=float)
    xs, ys = np.meshgrid(grid, grid)
    x = xs.ravel() + rng.uniform(-0.2 * spacing, 0.2 * spacing, xs.size)
    y = ys.ravel() + rng.uniform(-0.2 * spacing, 0.2 * spacing, xs.size)
    flux = np.exp(rng.uniform(*np.log(flux_range), x.size))
    centre = 0.5 * (size - 1)
    half_diagonal = 0.5 * np.hypot(size, size)
    X, Y = (x - centre) / half_diagonal, (y - centre) / half_diagonal
    if pattern == "linear":
        angle = rng.uniform(0, 2 * np.pi)
        width_scale = 1.0 + 0.5 * change * (X * np.cos(angle) + Y * np.sin(angle))
    elif pattern == "radial":
        width_scale = 1.0 + change * (X**2 + Y**2)
    else:
        raise ValueError(f"pattern: {pattern!r} is not linear or radial")
    image = galsim.ImageD(size, size, scale=PIXEL_SCALE, init_value=0.0)
    half = 40
    for k in range(x.size):
        _draw(
            image, psf_profile(profile, fwhm * width_scale[k]).withFlux(flux[k]), x[k], y[k], half
        )
    exposure = _noisy_exposure(image.array, sky, rng, seed)
    return PatternScene(exposure, x, y, flux, width_scale)


@dataclass
class FieldScene:
    """A field of stars and galaxies on a known flat sky (as an eimage after ISR)."""

    exposure: Exposure
    sky: float
    """The true sky level (electrons per pixel)."""
    fwhm: float
    """The PSF's FWHM (pixels)."""


def field_exposure(
    seed: int = 1,
    size: int = 768,
    sky: float = 800.0,
    fwhm: float = 0.8,
    beta: float = 2.5,
    n_stars: int = 60,
    n_galaxies: int = 200,
) -> FieldScene:
    """Stars and galaxies of a realistic range of brightness under a Moffat PSF with wings.

    Stars' fluxes follow a power law (d N / d ln F ~ F^-0.4, 300 to 3e6 electrons; most are
    faint), galaxies are exponential disks of half-light radius 0.3-1.5" and 300-3e5
    electrons, sheared at random; a galaxy's light outside its stamp (beyond 6 half-light
    radii) and a star's beyond 25 pixels (60 above 1e5 electrons) are left out. Noise is
    Gaussian with the Poisson variance of sky and sources.
    """
    rng = np.random.default_rng(seed)
    psf = galsim.Moffat(beta=beta, fwhm=fwhm)
    image = galsim.ImageD(size, size, scale=PIXEL_SCALE, init_value=0.0)

    u = rng.uniform(size=n_stars)
    lo, hi, slope = 300.0, 3.0e6, -0.4
    star_flux = (lo**slope + u * (hi**slope - lo**slope)) ** (1.0 / slope)
    for flux, x, y in zip(star_flux, *rng.uniform(0, size, (2, n_stars)), strict=True):
        _draw(image, psf.withFlux(flux), x, y, 60 if flux > 1e5 else 25)
    for x, y in rng.uniform(0, size, (2, n_galaxies)).T:
        r_half = rng.uniform(0.3, 1.5)
        g1, g2 = rng.uniform(-0.3, 0.3, 2)
        disk = galsim.Exponential(
            half_light_radius=r_half, flux=np.exp(rng.uniform(*np.log([300, 3e5])))
        )
        galaxy = galsim.Convolve(disk.shear(g1=g1, g2=g2), psf)
        _draw(image, galaxy, x, y, int(6 * r_half / PIXEL_SCALE) + 10)
    return FieldScene(_noisy_exposure(image.array, sky, rng, seed), sky, fwhm / PIXEL_SCALE)


@dataclass
class SaturatedScene:
    """Stars bright enough to saturate their cores, clipped at the full well."""

    exposure: Exposure
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    """True total flux of each star (electrons)."""


def saturated_stars_exposure(
    seed: int = 1,
    profile: str = "moffat",
    fwhm: float = 0.7,
    size: int = 512,
    n: int = 12,
    sky: float = 800.0,
) -> SaturatedScene:
    """``n`` stars of 3e6-2e8 electrons (cores up to ~100 pixels above the full well), a little
    elliptical, on a jittered grid, clipped at ``FULL_WELL`` without bleeding."""
    rng = np.random.default_rng(seed)
    image = galsim.ImageD(size, size, scale=PIXEL_SCALE, init_value=0.0)
    grid = np.linspace(50, size - 50, 4)
    xs, ys = np.meshgrid(grid, grid)
    x = xs.ravel()[:n] + rng.uniform(-8, 8, n)
    y = ys.ravel()[:n] + rng.uniform(-8, 8, n)
    flux = np.exp(rng.uniform(np.log(3e6), np.log(2e8), n))
    half = 60
    for k in range(n):
        g1, g2 = rng.uniform(-0.05, 0.05, 2)
        star = psf_profile(profile, fwhm).shear(g1=g1, g2=g2).withFlux(flux[k])
        _draw(image, star, x[k], y[k], half)
    exposure = _noisy_exposure(image.array, sky, rng, seed, clip=True)
    return SaturatedScene(exposure, x, y, flux)


@dataclass
class NeighbourScene:
    """Bright stars, each with a faint star beside it, and smooth galaxies, on a flat sky."""

    exposure: Exposure
    """Sky subtracted, with the PSF as a :class:`~twinkles.image.psf.PixelPSF`."""
    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    """True total flux of every object (electrons): the bright stars, their neighbours, then
    the galaxies."""
    kind: np.ndarray
    """``"bright"``, ``"neighbour"`` or ``"galaxy"``."""
    fwhm: float
    """The PSF's FWHM (pixels)."""


def neighbours_exposure(
    seed: int = 1,
    profile: str = "moffat",
    fwhm: float = 0.7,
    size: int = 640,
    n: int = 25,
    n_galaxies: int = 30,
    sky: float = 800.0,
    separation_arcsec: tuple[float, float] = (1.8, 3.2),
    ratio: tuple[float, float] = (100.0, 1000.0),
) -> NeighbourScene:
    """``n`` stars of 3e5-3e6 electrons on a jittered grid, each with a neighbour in a random
    direction, ``separation_arcsec`` away and ``ratio`` times fainter (log-uniform), and
    smooth galaxies (exponential disks, some with a de Vaucouleurs bulge; 1e4-3e5 electrons)
    between them. The sky is subtracted; the exposure's PSF is the true one drawn on the
    pixels."""
    rng = np.random.default_rng(seed)
    psf = psf_profile(profile, fwhm)
    image = galsim.ImageD(size, size, scale=PIXEL_SCALE, init_value=0.0)
    side = int(np.ceil(np.sqrt(n)))
    grid = np.linspace(60, size - 60, side)
    xs, ys = np.meshgrid(grid, grid)
    xb = xs.ravel()[:n] + rng.uniform(-10, 10, n)
    yb = ys.ravel()[:n] + rng.uniform(-10, 10, n)
    fb = np.exp(rng.uniform(np.log(3e5), np.log(3e6), n))
    separation = rng.uniform(*separation_arcsec, n) / PIXEL_SCALE
    angle = rng.uniform(0, 2 * np.pi, n)
    xn, yn = xb + separation * np.cos(angle), yb + separation * np.sin(angle)
    fn = fb / np.exp(rng.uniform(*np.log(ratio), n))
    for flux, x, y in zip(np.r_[fb, fn], np.r_[xb, xn], np.r_[yb, yn], strict=True):
        _draw(image, psf.withFlux(flux), x, y, 60)
    # galaxies midway between the grid's rows and columns, away from the bright stars
    step = grid[1] - grid[0]
    mid = grid[:-1] + 0.5 * step
    gx, gy = (g.ravel()[:n_galaxies] for g in np.meshgrid(mid, mid))
    gx = gx + rng.uniform(-5, 5, len(gx))
    gy = gy + rng.uniform(-5, 5, len(gy))
    fg = np.exp(rng.uniform(np.log(1e4), np.log(3e5), len(gx)))
    for flux, x, y in zip(fg, gx, gy, strict=True):
        disk = galsim.Exponential(half_light_radius=rng.uniform(0.4, 1.2))
        parts = [
            disk.withFlux(0.7 * flux),
            galsim.DeVaucouleurs(half_light_radius=0.3).withFlux(0.3 * flux),
        ]
        galaxy = galsim.Add(parts) if rng.uniform() < 0.5 else disk.withFlux(flux)
        g1, g2 = rng.uniform(-0.3, 0.3, 2)
        _draw(image, galsim.Convolve(galaxy.shear(g1=g1, g2=g2), psf), x, y, 50)
    exposure = _noisy_exposure(image.array, sky, rng, seed)
    exposure.image -= np.float32(sky)
    kernel = psf.drawImage(nx=25, ny=25, scale=PIXEL_SCALE).array
    exposure.psf = PixelPSF((kernel / kernel.sum())[None], 0, size / 2, size / 2, size / 2)
    kind = np.array(["bright"] * n + ["neighbour"] * n + ["galaxy"] * len(gx))
    return NeighbourScene(
        exposure,
        np.r_[xb, xn, gx],
        np.r_[yb, yn, gy],
        np.r_[fb, fn, fg],
        kind,
        fwhm / PIXEL_SCALE,
    )
