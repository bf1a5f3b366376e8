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
