"""The sky map: one tract with one patch, a TAN projection covering every calexp.

LSST tiles the sky into tracts (a tangent-plane projection each) cut into patches; Twinkles'
single sensor fell inside one patch of one tract. Here the run's field needs one patch: its
WCS is a TAN projection at the field centre, North up and East left, at the sensor's pixel
scale, and its bounding box holds every calexp's corners plus a margin.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from astropy.wcs import WCS
from pydantic import Field

from twinkles.errors import TwinklesError
from twinkles.section import Section
from twinkles.sim.wcs import make_wcs

__all__ = ["SkyMap", "SkyMapConfig", "SkyMapError", "make_skymap", "patch_ids"]


def patch_ids() -> list[dict[str, int]]:
    """The data ids of the sky map's patches: one patch covers a run (module docstring).

    Returns
    -------
    list of dict
        ``[{"patch": 0}]``.
    """
    return [{"patch": 0}]


class SkyMapError(TwinklesError):
    """No calexp to cover, or a calexp without a WCS."""


class SkyMapConfig(Section):
    """The patch covering the run."""

    pixel_scale: float = Field(0.2, gt=0, description="Patch pixel scale (arcsec/pixel).")
    margin_px: int = Field(
        32, ge=0, description="Border (patch pixels) added around the calexps' corners."
    )


@dataclass
class SkyMap:
    """One tract, one patch: where coadds, templates and Objects live.

    Attributes
    ----------
    ra, dec : float
        Tangent point (deg), the patch centre.
    pixel_scale : float
        arcsec/pixel.
    width, height : int
        Patch size (pixels).
    """

    ra: float
    dec: float
    pixel_scale: float
    width: int
    height: int

    @property
    def shape(self) -> tuple[int, int]:
        """Coadd image shape (height, width) in pixels."""
        return (self.height, self.width)

    @property
    def wcs(self) -> WCS:
        """TAN WCS of the patch, 0-based pixel (0, 0) at the lower-left corner."""
        return make_wcs(self.ra, self.dec, 0.0, self.pixel_scale, self.width, self.height)

    def to_dict(self) -> dict[str, Any]:
        """The sky map's definition (centre in deg, pixel scale in arcsec, size in pixels) as a
        dict.
        """
        return {
            "ra": self.ra,
            "dec": self.dec,
            "pixel_scale": self.pixel_scale,
            "width": self.width,
            "height": self.height,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SkyMap:
        """The sky map written by `to_dict`."""
        return cls(**{k: data[k] for k in ("ra", "dec", "pixel_scale", "width", "height")})


def make_skymap(
    corners: list[tuple[np.ndarray, np.ndarray]],
    ra: float,
    dec: float,
    config: SkyMapConfig | None = None,
) -> SkyMap:
    """The patch centred on (ra, dec) that holds every footprint.

    Parameters
    ----------
    corners : list of (ra, dec) arrays
        Sky positions (deg) of each calexp's corners.
    ra, dec : float
        Field centre (deg): the tangent point.
    config : SkyMapConfig
        Pixel scale and margin.
    """
    cfg = config or SkyMapConfig()
    if not corners:
        raise SkyMapError("no calexp to cover: run process_eimage first")
    probe = make_wcs(ra, dec, 0.0, cfg.pixel_scale, 2, 2)
    ra_all = np.concatenate([np.atleast_1d(c[0]) for c in corners])
    dec_all = np.concatenate([np.atleast_1d(c[1]) for c in corners])
    # offsets from the tangent point in pixels; the patch is symmetric about it
    x, y = probe.wcs_world2pix(ra_all, dec_all, 0)
    x, y = x - 0.5, y - 0.5
    half_w = float(np.max(np.abs(x))) + cfg.margin_px
    half_h = float(np.max(np.abs(y))) + cfg.margin_px
    return SkyMap(
        ra=float(ra) % 360.0,
        dec=float(dec),
        pixel_scale=cfg.pixel_scale,
        width=2 * int(np.ceil(half_w)),
        height=2 * int(np.ceil(half_h)),
    )
