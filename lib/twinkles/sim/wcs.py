"""World coordinate systems of a simulated sensor.

Conventions (those of OpSim and of a FITS image displayed with North up, East left at zero
rotation): ``rotSkyPos`` is the position angle of the sensor's +y axis, measured from North
through East. The intermediate world coordinates are ``xi`` (towards East, increasing RA) and
``eta`` (towards North); with pixel offsets ``(dx, dy)`` from the reference pixel::

    xi  = s * (-cos(rot) dx + sin(rot) dy)
    eta = s * ( sin(rot) dx + cos(rot) dy)

so ``CD = s * [[-cos rot, sin rot], [sin rot, cos rot]]``. The true WCS adds a radial optical
distortion as a SIP polynomial, ``dx' = dx + k dx (dx^2 + dy^2)`` (same for ``dy``).
"""

from __future__ import annotations

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS, Sip

__all__ = ["cd_matrix", "make_wcs", "wcs_from_header_dict", "wcs_to_header_dict"]


def cd_matrix(rotation_deg: float, pixel_scale: float) -> np.ndarray:
    """CD matrix (deg/pixel) for a sensor rotated by ``rotation_deg`` (rotSkyPos)."""
    rot = np.deg2rad(rotation_deg)
    s = pixel_scale / 3600.0
    return s * np.array([[-np.cos(rot), np.sin(rot)], [np.sin(rot), np.cos(rot)]])


def make_wcs(
    ra: float,
    dec: float,
    rotation_deg: float,
    pixel_scale: float,
    width: int,
    height: int,
    distortion_px: float = 0.0,
) -> WCS:
    """A TAN (or TAN-SIP) WCS with the sensor centre at (ra, dec).

    Parameters
    ----------
    ra, dec : float
        Sky position of the sensor centre (deg).
    rotation_deg : float
        rotSkyPos (deg).
    pixel_scale : float
        arcsec/pixel.
    width, height : int
        Sensor size (pixels).
    distortion_px : float
        Radial distortion displacement at the sensor corner (pixels); 0 gives a pure TAN WCS.
    """
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    # FITS pixels are 1-based: the centre of a 0-based (width x height) array
    w.wcs.crpix = [(width + 1) / 2.0, (height + 1) / 2.0]
    w.wcs.crval = [ra % 360.0, dec]
    w.wcs.cd = cd_matrix(rotation_deg, pixel_scale)
    w.wcs.radesys = "ICRS"
    w.pixel_shape = (width, height)
    if distortion_px:
        r_corner = 0.5 * np.hypot(width, height)
        k = distortion_px / r_corner**3
        a = np.zeros((4, 4))
        b = np.zeros((4, 4))
        a[3, 0] = a[1, 2] = k  # k * dx * (dx^2 + dy^2)
        b[0, 3] = b[2, 1] = k  # k * dy * (dx^2 + dy^2)
        w.wcs.ctype = ["RA---TAN-SIP", "DEC--TAN-SIP"]
        w.sip = Sip(a, b, None, None, w.wcs.crpix)
    w.wcs.set()
    return w


def wcs_to_header_dict(w: WCS) -> dict[str, object]:
    """The WCS as FITS keywords (a JSON-able dict)."""
    header = w.to_header(relax=True)
    out = {}
    for key, value in header.items():
        if key in ("COMMENT", "HISTORY", ""):
            continue
        out[key] = value
    return out


def wcs_from_header_dict(cards: dict[str, object]) -> WCS:
    """Inverse of :func:`wcs_to_header_dict`."""
    header = fits.Header()
    for key, value in cards.items():
        header[key] = value
    return WCS(header, relax=True)
