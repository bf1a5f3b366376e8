"""Small display helpers shared by the recipes (matplotlib)."""

from __future__ import annotations

import numpy as np
from astropy.visualization import AsinhStretch, ImageNormalize, ZScaleInterval

__all__ = ["image_norm", "show_image"]


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
