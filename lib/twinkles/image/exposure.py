"""The calibrated exposure: image, mask, variance, PSF, WCS, photometric calibration, metadata.

An LSST-style ``Exposure``. Pixels are electrons (eimages have gain 1); the variance plane is in
electrons^2; the mask plane holds one bit per condition (:class:`MaskPlane`). The photometric
calibration turns electrons into nJy; the WCS maps 0-based pixel positions to ICRS.

FITS layout (``write_fits`` / ``read_fits``)::

    HDU 0  PRIMARY   metadata (VISIT, FILTER, MJD-OBS, ...), photometric calibration (ZP, ZPERR)
    HDU 1  IMAGE     float32 electrons, with the WCS (TAN-SIP) keywords
    HDU 2  MASK      int16 bit mask (int32 in memory); MP_<NAME> = bit number for each plane
    HDU 3  VARIANCE  float32 electrons^2
    HDU 4  PSF       the PSF model (see :mod:`twinkles.image.psf`), when there is one
    HDU 5  PSFCOMP   a coadd's PSF: its inputs (see :mod:`twinkles.image.coadd_psf`)

The image, mask and variance HDUs may be tile-compressed (:mod:`twinkles.image.compression`);
they keep their names, and readers find them by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntFlag
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from twinkles.image.coadd_psf import CoaddPSF
from twinkles.image.compression import (
    ImageCompression,
    compressed_plane,
    restore_infinities,
    sky_noise,
)
from twinkles.image.psf import KernelPSF, PixelPSF
from twinkles.units import AB_MAG_OF_1_NJY

__all__ = ["Exposure", "MaskPlane", "PhotoCalib"]


class MaskPlane(IntFlag):
    """Mask bits (after the LSST mask planes)."""

    BAD = 1 << 0  #: unusable pixel
    SAT = 1 << 1  #: at or above the full well, or bled into
    INTRP = 1 << 2  #: value interpolated from neighbours
    CR = 1 << 3  #: cosmic ray (repaired)
    EDGE = 1 << 4  #: too close to the edge for the detection filter
    DETECTED = 1 << 5  #: part of a detected source's footprint
    DETECTED_NEGATIVE = 1 << 6  #: part of a negative detection (difference images)
    SUSPECT = 1 << 7  #: near saturation
    NO_DATA = 1 << 8  #: no data (outside the sensor after warping)

    @classmethod
    def header_cards(cls) -> dict[str, int]:
        """FITS header cards naming each mask plane's bit (``MP_SAT`` = 1, ...), as LSST's mask
        planes are written.
        """
        return {f"MP_{p.name}": int(p).bit_length() - 1 for p in cls}


#: Mask planes excluded from detection and measurement.
BAD_PLANES = MaskPlane.BAD | MaskPlane.NO_DATA

#: The mask plane's type in FITS files (signed: FITS has no unsigned 16-bit type).
MASK_DISK_DTYPE = np.int16
if max(int(p) for p in MaskPlane) >= np.iinfo(MASK_DISK_DTYPE).max:
    raise ImportError("MaskPlane has outgrown the 16-bit mask of the FITS files")


@dataclass(frozen=True)
class PhotoCalib:
    """Photometric calibration.

    Attributes
    ----------
    zero_point : float
        AB magnitude of a source giving one electron in the exposure.
    zero_point_err : float
        Its uncertainty (mag).
    """

    zero_point: float
    zero_point_err: float = 0.0

    @property
    def njy_per_electron(self) -> float:
        """nJy per electron."""
        return float(10.0 ** (-0.4 * (self.zero_point - AB_MAG_OF_1_NJY)))

    def to_njy(self, electrons: np.ndarray | float) -> np.ndarray:
        """Flux in nJy of ``electrons`` (any shape)."""
        return np.asarray(electrons) * self.njy_per_electron

    def to_njy_err(self, electrons: np.ndarray, electrons_err: np.ndarray) -> np.ndarray:
        """Flux error in nJy, the zero-point uncertainty included."""
        flux = np.asarray(electrons) * self.njy_per_electron
        rel_zp = 0.4 * np.log(10.0) * self.zero_point_err
        return np.hypot(np.asarray(electrons_err) * self.njy_per_electron, flux * rel_zp)


@dataclass
class Exposure:
    """Image, mask and variance planes with their PSF, WCS, calibration and metadata."""

    image: np.ndarray
    mask: np.ndarray
    variance: np.ndarray
    wcs: WCS | None = None
    psf: Any | None = None
    photo_calib: PhotoCalib | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shapes = {self.image.shape, self.mask.shape, self.variance.shape}
        if len(shapes) != 1 or self.image.ndim != 2:
            raise ValueError(f"image, mask and variance shapes differ: {sorted(shapes)}")

    @property
    def shape(self) -> tuple[int, int]:
        """Image shape (height, width) in pixels."""
        return self.image.shape

    @property
    def visit(self) -> int | None:
        """The visit number from the metadata, or None."""
        return self.metadata.get("visit")

    def masked(self, planes: MaskPlane) -> np.ndarray:
        """Boolean array: pixels with any of ``planes`` set."""
        return (self.mask & int(planes)) != 0

    def copy(self) -> Exposure:
        """A deep copy: new pixel planes and metadata (the WCS, PSF and calibration are shared)."""
        return replace(
            self,
            image=self.image.copy(),
            mask=self.mask.copy(),
            variance=self.variance.copy(),
            metadata=dict(self.metadata),
        )

    # --- FITS --------------------------------------------------------------------------------

    def to_hdulist(self, compression: ImageCompression | None = None) -> fits.HDUList:
        """The exposure as FITS HDUs (layout in the module docstring); with ``compression``,
        the image, mask and variance planes are tile-compressed HDUs of the same names
        (:mod:`twinkles.image.compression`; the image's step follows its variance plane's
        sky noise)."""
        primary = fits.PrimaryHDU()
        for key, value in self.metadata.items():
            # an unknown value (None, or NaN: an eimage without AIRMASS) is left out; FITS
            # headers cannot hold NaN, and a reader's .get(key, nan) gives it back
            if value is None or (isinstance(value, float) and not np.isfinite(value)):
                continue
            primary.header[_card_name(key)] = value
        if self.photo_calib is not None:
            primary.header["ZP"] = (self.photo_calib.zero_point, "AB mag of 1 electron")
            primary.header["ZPERR"] = (self.photo_calib.zero_point_err, "zero-point error (mag)")
        image_header = fits.Header()
        if self.wcs is not None:
            image_header.update(self.wcs.to_header(relax=True))
        mask_header = fits.Header()
        for key, bit in MaskPlane.header_cards().items():
            mask_header[key if len(key) <= 8 else f"HIERARCH {key}"] = bit
        variance = self.variance.astype(np.float32, copy=False)
        image_step = variance_step = None
        if compression is not None:
            noise = sky_noise(variance)
            image_step = compression.image_step * noise
            variance_step = compression.variance_step * noise**2
        hdus = [
            primary,
            compressed_plane(
                self.image.astype(np.float32, copy=False),
                "IMAGE",
                image_header,
                compression,
                image_step,
            ),
            # on disk as 16-bit integers: the planes fit, and a 4k calexp's file is 32 MB
            # (a sixth) smaller and faster to write; it is read back as int32
            compressed_plane(self.mask.astype(MASK_DISK_DTYPE), "MASK", mask_header, compression),
            compressed_plane(variance, "VARIANCE", None, compression, variance_step),
        ]
        if self.psf is not None:
            hdus.extend(self.psf.to_hdus())
        return fits.HDUList(hdus)

    def write_fits(self, path: str | Path, compression: ImageCompression | None = None) -> None:
        """Write the exposure to ``path`` (see :meth:`to_hdulist`)."""
        self.to_hdulist(compression).writeto(path, overwrite=True)

    @classmethod
    def from_hdulist(cls, hdul: fits.HDUList, copy: bool = True) -> Exposure:
        """The exposure written by `to_hdulist` (plain or tile-compressed planes; stored infinities
        restored). ``copy=False`` lets the planes be restored in place, for a caller that
        discards ``hdul`` afterwards.
        """
        primary = hdul[0].header
        metadata = {
            _meta_name(k): primary[k]
            for k in primary
            if k not in _STRUCTURAL and k not in ("ZP", "ZPERR")
        }
        calib = PhotoCalib(primary["ZP"], primary.get("ZPERR", 0.0)) if "ZP" in primary else None
        image_header = hdul["IMAGE"].header
        wcs = WCS(image_header, relax=True) if "CTYPE1" in image_header else None
        psf = _read_psf(hdul, wcs)
        return cls(
            image=restore_infinities(
                np.asarray(hdul["IMAGE"].data, dtype=np.float32), hdul["IMAGE"].header, copy
            ),
            mask=np.asarray(hdul["MASK"].data, dtype=np.int32),
            variance=restore_infinities(
                np.asarray(hdul["VARIANCE"].data, dtype=np.float32), hdul["VARIANCE"].header, copy
            ),
            wcs=wcs,
            psf=psf,
            photo_calib=calib,
            metadata=metadata,
        )

    @classmethod
    def read_fits(cls, path: str | Path) -> Exposure:
        """Read an exposure written by `write_fits`."""
        with fits.open(path, memmap=False) as hdul:
            return cls.from_hdulist(hdul, copy=False)


_STRUCTURAL = {"SIMPLE", "BITPIX", "NAXIS", "EXTEND", "COMMENT", "HISTORY", ""}
# metadata keys longer than 8 characters go through HIERARCH; keep common ones short
_SHORT = {
    "visit": "VISIT",
    "filter": "FILTER",
    "mjd": "MJD-OBS",
    "exptime": "EXPTIME",
    "airmass": "AIRMASS",
    "rotang": "ROTANG",
}
_LONG = {v: k for k, v in _SHORT.items()}


def _card_name(key: str) -> str:
    return _SHORT.get(key, key.upper() if len(key) <= 8 else f"HIERARCH {key}")


def _meta_name(card: str) -> str:
    return _LONG.get(card, card.lower())


def _read_psf(hdul: fits.HDUList, wcs: WCS | None) -> KernelPSF | None:
    """The PSF model a file holds (``None`` without a PSF HDU), by its PSF HDU's ``PSFTYPE``:
    ``pixel`` (:class:`PixelPSF`) or ``coadd`` (:class:`CoaddPSF`, which needs the WCS)."""
    if "PSF" not in hdul:
        return None
    kind = hdul["PSF"].header.get("PSFTYPE", "pixel")
    if kind == "pixel":
        return PixelPSF.from_hdu(hdul["PSF"])
    if kind == "coadd":
        if wcs is None:
            raise ValueError("a coadd PSF needs its coadd's WCS, and the file has none")
        return CoaddPSF.from_hdulist(hdul, wcs)
    raise ValueError(f"PSF HDU: unknown PSFTYPE {kind!r} (pixel or coadd)")
