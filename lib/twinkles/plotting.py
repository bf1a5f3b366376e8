"""Small display helpers shared by the recipes (matplotlib)."""

from __future__ import annotations

import numpy as np
from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval

__all__ = [
    "BAND_COLORS",
    "cutout",
    "image_norm",
    "plot_light_curve",
    "plot_pull_histogram",
    "show_image",
]


def image_norm(image: np.ndarray, contrast: float = 0.15) -> ImageNormalize:
    """zscale limits with an asinh stretch: faint galaxies and bright stars both visible."""
    finite = image[np.isfinite(image)]
    return ImageNormalize(
        finite, interval=ZScaleInterval(contrast=contrast), stretch=AsinhStretch()
    )


def show_image(ax, image: np.ndarray, title: str = "", contrast: float = 0.15, **kwargs):
    """Display an image with pixel (0, 0) at the lower left, in the recipes' standard scaling."""
    shown = ax.imshow(
        image,
        origin="lower",
        cmap="gray",
        norm=image_norm(image, contrast),
        interpolation="nearest",
        **kwargs,
    )
    ax.set_title(title)
    ax.set_xlabel("x (pixel)")
    ax.set_ylabel("y (pixel)")
    return shown


def cutout(exposure, ra: float, dec: float, size_px: int, frame=None) -> np.ndarray:
    """A ``size_px`` square of an exposure's image centred on (ra, dec) in degrees.

    With ``frame`` (another exposure), the stamp is sampled on ``frame``'s pixel grid (cubic
    spline), so a template on the sky map's grid lines up with a calexp's stamp: same
    orientation, same pixels. Pixels beyond the image are NaN, so stamps near an edge keep
    their size.
    """
    from astropy.nddata import Cutout2D, NoOverlapError
    from scipy.ndimage import map_coordinates

    for exp in (exposure, frame):
        if exp is not None and exp.wcs is None:
            raise ValueError("the exposure has no WCS: cannot cut out at a sky position")
    image = np.asarray(exposure.image, dtype=float)
    if frame is not None:
        x0, y0 = frame.wcs.all_world2pix(float(ra), float(dec), 0)
        offsets = np.arange(size_px) - (size_px - 1) / 2.0
        gx, gy = np.meshgrid(np.round(x0) + offsets, np.round(y0) + offsets)
        sky_ra, sky_dec = frame.wcs.all_pix2world(gx.ravel(), gy.ravel(), 0)
        px, py = exposure.wcs.all_world2pix(sky_ra, sky_dec, 0)
        values = map_coordinates(
            np.nan_to_num(image), [py, px], order=3, mode="constant", cval=np.nan
        )
        return values.reshape(size_px, size_px)
    x, y = exposure.wcs.all_world2pix(float(ra), float(dec), 0)
    try:
        return Cutout2D(
            image, (float(x), float(y)), size_px, mode="partial", fill_value=np.nan
        ).data
    except NoOverlapError:
        return np.full((size_px, size_px), np.nan)


#: Plot colours of the LSST bands (blue to red).
BAND_COLORS = {
    "u": "#56b4e9",
    "g": "#009e73",
    "r": "#f0e442",
    "i": "#e69f00",
    "z": "#d55e00",
    "y": "#cc79a7",
}


def plot_light_curve(
    ax,
    mjd: np.ndarray,
    flux: np.ndarray,
    flux_err: np.ndarray,
    bands: np.ndarray,
    truth: np.ndarray | None = None,
    title: str = "",
):
    """A light curve per band: points with 1-sigma errors (nJy), the truth as lines if given."""
    bands = np.asarray(bands).astype(str)
    for band in [b for b in BAND_COLORS if b in set(bands)]:
        sel = bands == band
        order = np.argsort(mjd[sel])
        color = BAND_COLORS[band]
        ax.errorbar(
            mjd[sel][order],
            flux[sel][order],
            flux_err[sel][order],
            fmt="o",
            ms=4,
            color=color,
            mec="k",
            mew=0.4,
            label=band,
        )
        if truth is not None:
            ax.plot(mjd[sel][order], truth[sel][order], "-", color=color, lw=1)
    ax.axhline(0.0, color="0.6", lw=0.5)
    ax.set_xlabel("MJD")
    ax.set_ylabel("flux (nJy)")
    ax.legend(ncol=6, fontsize="small")
    if title:
        ax.set_title(title)
    return ax


def plot_pull_histogram(
    ax,
    pulls: dict[str, np.ndarray],
    xlabel: str = "pull",
    limit: float = 6.0,
    bins: int = 60,
    ymin: float = 1e-4,
    title: str = "",
):
    """Histograms of pulls (deviation / its predicted sigma) against N(0, 1), log density.

    What a right error model looks like: every histogram on the dashed Gaussian, in the core
    and in the tails. Values beyond ``limit`` (in sigma) and non-finite ones are left out.

    Parameters
    ----------
    ax : matplotlib Axes
        Where to draw.
    pulls : dict of str to array
        Label (a band, a kind of pixel) -> pulls; one histogram each.
    xlabel, title : str
        Axis label and title.
    limit : float
        Range drawn, -limit to +limit (sigma).
    bins : int
        Number of bins over that range.
    ymin : float
        Lower limit of the density axis.
    """
    grid = np.linspace(-limit, limit, bins + 1)
    for label, values in pulls.items():
        values = np.asarray(values, dtype=float)
        shown = values[np.isfinite(values) & (np.abs(values) < limit)]
        ax.hist(shown, bins=grid, density=True, histtype="step", label=label)
    fine = np.linspace(-limit, limit, 241)
    ax.plot(fine, np.exp(-0.5 * fine**2) / np.sqrt(2 * np.pi), "k--", label="N(0, 1)")
    ax.set(yscale="log", ylim=(ymin, 1), xlabel=xlabel)
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax
