"""Reading an eimage and its instrument-signature removal (ISR).

An eimage (``docs/eimage-format.md``) has no instrument signature beyond saturation: no bias,
dark or flat. ISR here is what Twinkles' processEimage did:

* **reading with checks**: a file that is not readable FITS (truncated, say), lacks a required
  header key, or holds no usable pixels (all NaN, all zero) is refused with an
  :class:`EimageError` that names the visit and the cause; non-finite pixels are masked BAD;
* **variance** from the image: ``counts / gain + read_noise^2`` (gain 1 and no read noise for
  an eimage), never below the read noise;
* **saturation**: pixels at or above ``SATURATE`` (the full well, 100,000 e-) and the charge
  that bled from them are masked SAT, grown by ``saturation_grow`` pixels, and, for the benefit
  of measurement, interpolated along rows (a bleed trail runs along columns, so its row
  neighbours are the nearest unaffected pixels); interpolated pixels are masked INTRP.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.utils.exceptions import AstropyUserWarning
from astropy.wcs import WCS
from pydantic import Field
from scipy import ndimage

from twinkles.bands import BANDS
from twinkles.errors import TwinklesError
from twinkles.image import Exposure, MaskPlane
from twinkles.section import Section

__all__ = [
    "EimageError",
    "EimageIsrConfig",
    "EimageIsrTask",
    "IsrResult",
    "eimage_header_problems",
    "grow_diamond",
    "read_eimage",
]

#: Header keys an eimage must have (docs/eimage-format.md).
REQUIRED_KEYS = (
    "OBSID",
    "MJD-OBS",
    "FILTER",
    "EXPTIME",
    "CTYPE1",
    "CTYPE2",
    "CRPIX1",
    "CRPIX2",
    "CRVAL1",
    "CRVAL2",
    "CD1_1",
    "CD1_2",
    "CD2_1",
    "CD2_2",
)
CD_KEYS = ("CD1_1", "CD1_2", "CD2_1", "CD2_2")
#: Full well (electrons) of an eimage without a SATURATE key.
DEFAULT_SATURATION = 100000.0


class EimageError(TwinklesError):
    """An eimage that cannot be processed; the message names the visit and the cause."""


def eimage_header_problems(header: fits.Header) -> list[str]:
    """What makes an eimage header unusable (docs/eimage-format.md); empty if nothing.

    Each problem names the key: a missing required key, an ``OBSID`` that is not an
    integer, an ``MJD-OBS`` or ``EXPTIME`` that is not a number (or an exposure time that is
    not positive), a ``FILTER`` that is not an LSST band, a WCS that is not TAN or whose CD
    matrix is singular.
    """
    missing = [k for k in REQUIRED_KEYS if k not in header]
    if missing:
        return [f"lacks header keys {', '.join(missing)}"]
    problems = []
    obsid = header["OBSID"]
    if isinstance(obsid, bool) or not isinstance(obsid, (int, np.integer)):
        if not (isinstance(obsid, str) and obsid.strip().isdigit()):
            problems.append(f"OBSID {obsid!r} is not an integer")
    for key in ("MJD-OBS", "EXPTIME", "CRPIX1", "CRPIX2", "CRVAL1", "CRVAL2", *CD_KEYS):
        value = header[key]
        if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
            problems.append(f"{key} {value!r} is not a number")
        elif not np.isfinite(float(value)):
            problems.append(f"{key} is not finite")
    if not problems and float(header["EXPTIME"]) <= 0:
        problems.append(f"EXPTIME {header['EXPTIME']!r} is not positive")
    band = str(header["FILTER"]).strip()
    if band not in BANDS:
        problems.append(f"FILTER {band!r} is not one of {', '.join(BANDS)}")
    ctypes = (str(header["CTYPE1"]).strip(), str(header["CTYPE2"]).strip())
    if not (ctypes[0].startswith("RA---TAN") and ctypes[1].startswith("DEC--TAN")):
        problems.append(f"CTYPE1, CTYPE2 {ctypes} are not RA---TAN, DEC--TAN")
    if not problems:
        cd = np.array([[header["CD1_1"], header["CD1_2"]], [header["CD2_1"], header["CD2_2"]]])
        if abs(np.linalg.det(cd)) <= 0:
            problems.append("the CD matrix (CD1_1 ... CD2_2) is singular")
    return problems


def eimage_pixels(hdul: fits.HDUList) -> tuple[fits.Header, np.ndarray | None]:
    """The header and pixels of an eimage file: its primary HDU's, or, where the primary HDU
    has no data (a tile-compressed file, as fpack or ``storage.compression`` writes it), its
    first extension's, with the primary header's keywords under the extension's.

    Returns
    -------
    header : Header
    data : ndarray or None
        None if neither HDU holds pixels.
    """
    header = hdul[0].header.copy()
    if hdul[0].data is not None or len(hdul) < 2:
        return header, hdul[0].data
    extension = hdul[1]
    for card in extension.header.cards:
        if card.keyword not in _STRUCTURAL_KEYWORDS:
            header[card.keyword] = (card.value, card.comment)
    data = extension.data
    if data is not None:  # the pixels' axes, for a WCS read from the merged header
        header["NAXIS"] = data.ndim
        for axis, length in enumerate(reversed(data.shape), start=1):
            header[f"NAXIS{axis}"] = length
    return header, data


#: Keywords that describe an HDU's layout rather than the image.
_STRUCTURAL_KEYWORDS = {
    "SIMPLE",
    "XTENSION",
    "BITPIX",
    "NAXIS",
    "NAXIS1",
    "NAXIS2",
    "EXTEND",
    "PCOUNT",
    "GCOUNT",
    "EXTNAME",
    "COMMENT",
    "HISTORY",
    "",
}


def read_eimage(path: str | Path, visit: int | None = None) -> Exposure:
    """Read and check an eimage; the variance plane is filled in by :class:`EimageIsrTask`.

    Parameters
    ----------
    path : str or Path
        The eimage file.
    visit : int, optional
        The visit it should be (its ``OBSID`` is checked against it).

    Raises
    ------
    EimageError
        Unreadable or truncated file, a header :func:`eimage_header_problems` refuses, wrong
        visit, or no usable pixels.
    """
    path = Path(path)
    who = f"visit {visit}" if visit is not None else path.name
    try:
        with warnings.catch_warnings():
            # astropy only warns of a truncated file, then fails or pads the pixels
            warnings.simplefilter("error", AstropyUserWarning)
            with fits.open(path, memmap=False) as hdul:
                header, data = eimage_pixels(hdul)
                data = None if data is None else np.array(data, dtype=np.float32)
    except FileNotFoundError:
        raise EimageError(f"{who}: no eimage at {path}") from None
    except (OSError, ValueError, TypeError, IndexError, AstropyUserWarning) as exc:
        raise EimageError(f"{who}: {path.name} is not a readable FITS image ({exc})") from None
    if data is None or data.ndim != 2:
        raise EimageError(
            f"{who}: {path.name} has no 2-d image in its primary HDU or first extension"
        )
    problems = eimage_header_problems(header)
    if problems:
        raise EimageError(f"{who}: {path.name} {'; '.join(problems)}")
    if visit is not None and int(header["OBSID"]) != int(visit):
        raise EimageError(f"{who}: {path.name} is visit {header['OBSID']} (OBSID), not {visit}")
    band = str(header["FILTER"]).strip()
    mask = np.zeros(data.shape, dtype=np.int32)
    if not np.isfinite(data.sum()):  # one pass; only a non-finite pixel makes the sum so
        finite = np.isfinite(data)
        if not finite.any():
            raise EimageError(f"{who}: every pixel of {path.name} is NaN or infinite")
        mask[~finite] |= int(MaskPlane.BAD | MaskPlane.NO_DATA)
        data[~finite] = 0.0
    if not np.count_nonzero(data):
        raise EimageError(f"{who}: every pixel of {path.name} is zero")
    try:
        wcs = WCS(header, naxis=2)
    except Exception as exc:  # astropy raises several types for bad WCS keywords
        raise EimageError(f"{who}: the header WCS is not usable ({exc})") from None
    metadata = {
        "visit": int(header["OBSID"]),
        "filter": band,
        "mjd": float(header["MJD-OBS"]),
        "exptime": float(header["EXPTIME"]),
        "airmass": float(header.get("AIRMASS", np.nan)),
        "rotang": float(header.get("ROTANG", np.nan)),
        "saturate": float(header.get("SATURATE", DEFAULT_SATURATION)),
        "gain": float(header.get("GAIN", 1.0)),
        "rdnoise": float(header.get("RDNOISE", 0.0)),
    }
    return Exposure(image=data, mask=mask, variance=np.zeros_like(data), wcs=wcs, metadata=metadata)


class EimageIsrConfig(Section):
    """Instrument-signature removal of an eimage."""

    saturation: float | None = Field(
        None, gt=0, description="Full well (electrons); default: the header's SATURATE."
    )
    saturation_grow: int = Field(
        1, ge=0, le=10, description="Pixels by which the saturation mask is grown."
    )
    interpolate: bool = Field(
        True, description="Interpolate over saturated and bad pixels (masked INTRP)."
    )


@dataclass
class IsrResult:
    """What ISR did: the exposure (modified in place) and what it found."""

    exposure: Exposure
    n_saturated: int
    n_interpolated: int


def grow_diamond(mask: np.ndarray, radius: int, max_points: int = 5_000_000) -> np.ndarray:
    """``mask`` grown to every pixel within ``radius`` steps (|dy| + |dx| <= radius).

    The same as ``scipy.ndimage.binary_dilation(mask, iterations=radius)``, but done at the
    masked pixels only: saturated pixels are few, and a dilation of the whole 4k sensor costs
    0.08 s for them (it is kept for masks too large to do so).
    """
    ys, xs = np.nonzero(mask)
    if radius <= 0 or len(ys) == 0:
        return mask.astype(bool, copy=True)
    steps = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(steps, steps, indexing="ij")
    near = np.abs(dy) + np.abs(dx) <= radius
    dy, dx = dy[near], dx[near]
    if len(ys) * len(dy) > max_points:
        return ndimage.binary_dilation(mask, iterations=radius)
    h, w = mask.shape
    yy = (ys[:, None] + dy[None, :]).ravel()
    xx = (xs[:, None] + dx[None, :]).ravel()
    inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
    out = mask.astype(bool, copy=True)
    out[yy[inside], xx[inside]] = True
    return out


def interpolate_rows(image: np.ndarray, bad: np.ndarray) -> int:
    """Replace ``bad`` pixels by linear interpolation between the good pixels of their row.

    Returns the number of pixels replaced (rows without good pixels are left as they are).
    """
    replaced = 0
    columns = np.arange(image.shape[1])
    for row in np.flatnonzero(bad.any(axis=1)):
        good = ~bad[row]
        if not good.any():
            continue
        hit = ~good
        image[row, hit] = np.interp(columns[hit], columns[good], image[row, good])
        replaced += int(hit.sum())
    return replaced


class EimageIsrTask:
    """Variance, saturation mask and interpolation for an eimage (see the module docstring)."""

    def __init__(self, config: EimageIsrConfig | None = None):
        self.config = config or EimageIsrConfig()

    def run(self, exposure: Exposure) -> IsrResult:
        """Turn an eimage into a science exposure, in place.

        Parameters
        ----------
        exposure : Exposure
            The eimage's pixels (electrons), with ``gain`` (e-/ADU) and ``rdnoise`` (electrons)
            and optionally ``saturate`` in its metadata.

        Returns
        -------
        IsrResult
            The exposure with its variance plane set (Poisson plus read noise, electrons^2),
            saturated pixels (grown by ``saturation_grow``) masked SAT and, if ``interpolate``,
            interpolated along rows and masked INTRP; the counts of both.
        """
        meta = exposure.metadata
        gain, rdnoise = meta.get("gain", 1.0), meta.get("rdnoise", 0.0)
        image = exposure.image
        # in place: three sensor-size temporaries cost more than the arithmetic
        variance = exposure.variance
        np.maximum(image, 0.0, out=variance)
        if gain != 1.0:
            variance /= gain
        if rdnoise:
            variance += rdnoise**2
        full_well = self.config.saturation or meta.get("saturate", DEFAULT_SATURATION)
        saturated = image >= full_well
        if saturated.any() and self.config.saturation_grow:
            saturated = grow_diamond(saturated, self.config.saturation_grow)
        exposure.mask[saturated] |= int(MaskPlane.SAT)
        n_interp = 0
        if self.config.interpolate:
            bad = exposure.masked(MaskPlane.SAT | MaskPlane.BAD)
            if bad.any():
                n_interp = interpolate_rows(image, bad)
                exposure.mask[bad] |= int(MaskPlane.INTRP)
                # an interpolated pixel gets the typical (sky) variance; a sparse sample of
                # the plane estimates it without a pass over every pixel
                exposure.variance[bad] = np.median(exposure.variance[::8, ::8])
        return IsrResult(exposure, int(saturated.sum()), n_interp)
